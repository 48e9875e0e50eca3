"""The deploy manifests parse, agree with each other, and carry a valid config.

They also pass ``kubernetes-validate --strict`` (Kubernetes 1.27 and the newest
version it knows), the Pod Security Standards "restricted" profile, and, when
the ``checkov`` command is installed, checkov's Kubernetes checks.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import trustme
import yaml

from schemas.config import parse_config

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def _documents() -> dict[str, dict]:
    docs = {}
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return docs


def _raw_config(docs: dict | None = None) -> dict:
    return yaml.safe_load((docs or _documents())["ConfigMap/becomingone-config"]["data"]["config.yaml"])


@pytest.fixture(scope="module")
def pod_files(tmp_path_factory) -> dict[str, str]:
    """The TLS files the pod mounts, made here: their path in the pod -> a real file of that kind."""
    root = tmp_path_factory.mktemp("pod-tls")
    ca = trustme.CA()
    issued = ca.issue_cert("becomingone-metrics.becomingone.svc")
    ca.cert_pem.write_to_path(str(root / "ca.crt"))
    issued.cert_chain_pems[0].write_to_path(str(root / "tls.crt"))
    issued.private_key_pem.write_to_path(str(root / "tls.key"))
    security = _raw_config()["security"]
    return {security[key]: str(root / Path(security[key]).name) for key in ("ca_file", "cert_file", "key_file")}


def _config(pod_files: dict[str, str], docs: dict | None = None):
    """The ConfigMap's config, validated with its TLS files where this machine has them."""
    raw = _raw_config(docs)
    raw["security"] = {k: pod_files.get(v, v) if isinstance(v, str) else v for k, v in raw["security"].items()}
    return parse_config(raw)


def test_configmap_holds_a_valid_config(pod_files):
    config = _config(pod_files)
    assert config.source.kind == "kafka"
    assert config.metrics.bind == "0.0.0.0"  # reachable by the metrics service
    assert config.security.mutual  # Kafka and the endpoint: TLS both ways
    assert config.kafka.root["security.protocol"] == "SASL_SSL"


def test_dockerfile_runs_the_flow_the_bytewax_way():
    text = (DEPLOY / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["python", "-m", "bytewax.run", "flows.kairos"]' in text
    for package in ("flows", "operators", "connectors", "schemas"):
        assert f"COPY {package} ./{package}" in text


def test_statefulset_probes_use_the_health_endpoints_on_the_metrics_port(pod_files):
    docs = _documents()
    container = docs["StatefulSet/becomingone"]["spec"]["template"]["spec"]["containers"][0]
    paths = {kind: container[kind]["httpGet"]["path"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert paths == {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    config = _config(pod_files, docs)
    for kind in paths:
        probe = container[kind]
        assert ports[probe["httpGet"]["port"]] == config.metrics.port
        assert probe["httpGet"]["scheme"] == ("HTTPS" if config.security.tls else "HTTP")
        assert probe["timeoutSeconds"] <= probe["periodSeconds"]
    # A cold start (~7 s, plus up to 10 s of Kafka check) fits the startup probe's budget many times over.
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60
    # Peers find each other before they are ready; an unready pod's metrics stay scrapeable.
    assert docs["Service/becomingone-peers"]["spec"]["publishNotReadyAddresses"] is True
    assert docs["Service/becomingone-metrics"]["spec"]["publishNotReadyAddresses"] is True


def _statefulset() -> dict:
    return _documents()["StatefulSet/becomingone"]


def _container() -> dict:
    return _statefulset()["spec"]["template"]["spec"]["containers"][0]


def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


# --- Schema: kubernetes-validate --strict ------------------------------------------------------------------

@pytest.mark.parametrize("version", ["1.27.0", kubernetes_validate.latest_version()])
def test_every_manifest_is_valid_kubernetes_strictly(version):
    # Strict: an unknown field (a typo, a field of another version) is an error, not ignored.
    # monitoring/ holds the ServiceMonitor, a CRD the validator has no schema for (tested below).
    paths = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
    assert paths
    for path in paths:
        for doc in yaml.safe_load_all(path.read_text()):
            kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_refuses_an_unknown_field():
    sts = _statefulset()
    sts["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, "1.27.0", strict=True)


# --- Pod Security Standards "restricted" -------------------------------------------------------------------
# https://kubernetes.io/docs/concepts/security/pod-security-standards/ : the "restricted" profile is the
# "baseline" one plus the restricted controls.  Each function returns the violations of one pod spec.

_RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                            "projected", "secret"}


def _pod_security_violations(pod: dict) -> list[str]:
    problems = []
    for key in ("hostNetwork", "hostPID", "hostIPC"):                       # baseline: host namespaces
        if pod.get(key):
            problems.append(f"pod {key}")
    for volume in pod.get("volumes", []):                                   # restricted: volume types
        kinds = set(volume) - {"name"}
        if not kinds <= _RESTRICTED_VOLUME_TYPES:
            problems.append(f"volume {volume['name']}: {sorted(kinds)}")
    pod_context = pod.get("securityContext", {})
    for container in pod.get("initContainers", []) + pod["containers"]:
        name, context = container["name"], container.get("securityContext", {})
        merged = {**pod_context, **context}                                 # the container's fields win
        if context.get("privileged"):                                       # baseline: privileged
            problems.append(f"{name}: privileged")
        if any(p.get("hostPort") for p in container.get("ports", [])):      # baseline: host ports
            problems.append(f"{name}: hostPort")
        if context.get("procMount", "Default") != "Default":                # baseline: /proc mount
            problems.append(f"{name}: procMount")
        if context.get("allowPrivilegeEscalation") is not False:            # restricted
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        if merged.get("runAsNonRoot") is not True:                          # restricted
            problems.append(f"{name}: runAsNonRoot is not true")
        if merged.get("runAsUser") == 0:                                    # restricted
            problems.append(f"{name}: runAsUser 0")
        seccomp = merged.get("seccompProfile", {}).get("type")              # restricted
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile {seccomp}")
        capabilities = context.get("capabilities", {})                      # restricted
        if "ALL" not in capabilities.get("drop", []):
            problems.append(f"{name}: capabilities not dropping ALL")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: capabilities added {capabilities['add']}")
    return problems


def test_the_pod_meets_the_restricted_pod_security_profile():
    assert _pod_security_violations(_statefulset()["spec"]["template"]["spec"]) == []


def test_the_restricted_checker_sees_each_violation():
    pod = _statefulset()["spec"]["template"]["spec"]
    pod["hostNetwork"] = True
    pod["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    context = pod["containers"][0]["securityContext"]
    context.update(allowPrivilegeEscalation=True, privileged=True, capabilities={"add": ["SYS_ADMIN"]})
    context.pop("runAsNonRoot")
    pod["securityContext"].pop("runAsNonRoot")
    context["seccompProfile"] = {"type": "Unconfined"}
    found = " | ".join(_pod_security_violations(pod))
    for words in ("hostNetwork", "hostPath", "privileged", "allowPrivilegeEscalation", "runAsNonRoot",
                  "Unconfined", "not dropping ALL", "SYS_ADMIN"):
        assert words in found


def test_the_namespace_enforces_the_restricted_profile():
    labels = _documents()["Namespace/becomingone"]["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    namespaced = [d for key, d in _documents().items() if not key.startswith("Namespace/")]
    assert {d["metadata"]["namespace"] for d in namespaced} == {"becomingone"}


def test_the_container_runs_as_the_image_user_on_a_read_only_root_with_its_writable_paths_mounted(pod_files):
    container, pod = _container(), _statefulset()["spec"]["template"]["spec"]
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "--uid 10001" in dockerfile and container["securityContext"]["runAsUser"] == 10001
    assert pod["automountServiceAccountToken"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    writable = {path for path, m in mounts.items() if not m.get("readOnly")}
    config = _config(pod_files)
    env = _env(container)
    workdir = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("WORKDIR")][-1]
    numba_cache = dockerfile.split("NUMBA_CACHE_DIR=")[1].split()[0]
    for path in (env["NUMBA_CACHE_DIR"], numba_cache, "/tmp", workdir, config.memory.storage.path,
                 env["BYTEWAX_RECOVERY_DIRECTORY"]):
        assert path in writable, path
    resources = container["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind])


# --- Peers and recovery: the start script ------------------------------------------------------------------

def _run_start_script(tmp_path: Path, pod: str, replicas: int) -> list[list[str]]:
    """Run the container's shell script with a stand-in ``python`` logging its arguments."""
    calls = tmp_path / "calls"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "python"
    # `python -m bytewax.recovery DIR N` creates part-0 .. part-(N-1) like Bytewax does.
    fake.write_text('#!/bin/sh\necho "$*" >> "$CALLS"\n'
                    'if [ "$2" = bytewax.recovery ]; then for n in $(seq 0 $(($4 - 1))); do'
                    ' : > "$3/part-$n.sqlite3"; done; fi\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    container = _container()
    env = {**_env(container), "PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(calls),
           "BYTEWAX_POD_NAME": pod, "BYTEWAX_REPLICAS": str(replicas),
           "BYTEWAX_RECOVERY_DIRECTORY": str(tmp_path / "recovery")}
    (tmp_path / "recovery").mkdir(exist_ok=True)
    subprocess.run([*container["command"], *container["args"]], env=env, check=True, timeout=30)
    return [line.split() for line in calls.read_text().splitlines()]


def test_the_peer_list_follows_replicas_and_the_recovery_partition_is_made_once(tmp_path):
    sts = _statefulset()
    assert _env(_container())["BYTEWAX_REPLICAS"] == str(sts["spec"]["replicas"])
    calls = _run_start_script(tmp_path, "becomingone-2", replicas=3)
    recovery = tmp_path / "recovery"
    assert calls[0] == ["-m", "bytewax.recovery", f"{recovery}/.init", "3"]
    peers = ";".join(f"becomingone-{n}.{sts['spec']['serviceName']}:2101" for n in range(3))
    assert calls[1] == ["-m", "bytewax.run", "flows.kairos", "-i", "2", "-a", peers, "-r", str(recovery),
                        "-s", "10", "-b", "0"]
    # This process keeps its own partition of the set; a restart finds it and resumes.
    assert sorted(p.name for p in recovery.iterdir()) == ["part-2.sqlite3"]
    calls = _run_start_script(tmp_path, "becomingone-2", replicas=3)
    assert [c[1] for c in calls] == ["bytewax.recovery", "bytewax.run", "bytewax.run"]
    docs = _documents()
    assert docs[f"Service/{sts['spec']['serviceName']}"]["spec"]["clusterIP"] == "None"
    claim = next(v for v in sts["spec"]["template"]["spec"]["volumes"] if v["name"] == "archive")[
        "persistentVolumeClaim"]["claimName"]
    assert docs[f"PersistentVolumeClaim/{claim}"]["spec"]["accessModes"] == ["ReadWriteMany"]
    templates = {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
    assert "recovery" in templates


# --- Disruptions, secrets, monitoring ----------------------------------------------------------------------

def test_the_disruption_budget_covers_the_flow_s_pods_one_at_a_time():
    budget = _documents()["PodDisruptionBudget/becomingone"]["spec"]
    assert budget["selector"] == _statefulset()["spec"]["selector"]
    assert budget["maxUnavailable"] == 1


def test_the_tls_secret_is_mounted_read_only_and_named_in_the_config():
    docs, container = _documents(), _container()
    secret = docs["Secret/becomingone-tls"]
    pod = _statefulset()["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == "becomingone-tls")
    mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
    assert mount["readOnly"] is True
    files = {f"{mount['mountPath']}/{item['path']}" for item in volume["secret"]["items"]}
    assert {item["key"] for item in volume["secret"]["items"]} <= set(secret["stringData"])
    security = _raw_config(docs)["security"]
    assert {security[k] for k in ("ca_file", "cert_file", "key_file")} == files


def test_the_sasl_secret_reaches_the_config_through_the_environment():
    docs, container = _documents(), _container()
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e
            and "secretKeyRef" in e["valueFrom"]}
    # BECOMINGONE__KAFKA__SASL_PASSWORD sets kafka's sasl.password (schemas/config/loading.py).
    assert {name: ref["key"] for name, ref in refs.items()} == {
        "BECOMINGONE__KAFKA__SASL_USERNAME": "sasl.username", "BECOMINGONE__KAFKA__SASL_PASSWORD": "sasl.password"}
    assert {ref["name"] for ref in refs.values()} == {"becomingone-kafka"}
    assert {ref["key"] for ref in refs.values()} <= set(docs["Secret/becomingone-kafka"]["stringData"])


def test_the_service_monitor_scrapes_the_metrics_service_port():
    # kubernetes-validate has no schema for this CRD (monitoring.coreos.com/v1): checked against our services.
    monitor = yaml.safe_load((DEPLOY / "kubernetes" / "monitoring" / "servicemonitor.yaml").read_text())
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "ServiceMonitor")
    selected = [d for d in _documents().values() if d["kind"] == "Service"
                and monitor["spec"]["selector"]["matchLabels"].items() <= d["metadata"]["labels"].items()]
    ports = {p["name"] for service in selected for p in service["spec"]["ports"]}
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    assert "metrics" in ports
    annotations = _statefulset()["spec"]["template"]["metadata"]["annotations"]
    endpoint = monitor["spec"]["endpoints"][0]
    assert annotations["prometheus.io/path"] == endpoint["path"]
    # The endpoint speaks HTTPS and asks for a client certificate (the config's security section).
    assert endpoint["scheme"] == annotations["prometheus.io/scheme"] == "https"
    assert {"ca", "cert", "keySecret"} <= set(endpoint["tlsConfig"])


# --- checkov ---------------------------------------------------------------------------------------------

def test_checkov_passes_the_kubernetes_checks():
    tool = shutil.which("checkov")
    if tool is None:
        pytest.skip("checkov not installed (pip install checkov, in a separate environment: deploy/README.md)")
    result = subprocess.run([tool, "-d", str(DEPLOY / "kubernetes"), "--framework", "kubernetes", "--compact",
                             "--quiet", "--skip-download"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
