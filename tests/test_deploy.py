"""The deploy manifests parse, agree with each other, and carry a valid config."""

from __future__ import annotations

from pathlib import Path

import yaml

from schemas.config import parse_config

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def _documents() -> dict[str, dict]:
    docs = {}
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return docs


def test_configmap_holds_a_valid_config():
    config = parse_config(yaml.safe_load(_documents()["ConfigMap/becomingone-config"]["data"]["config.yaml"]))
    assert config.source.kind == "kafka"
    assert config.metrics.bind == "0.0.0.0"  # reachable by the metrics service


def test_statefulset_addresses_every_replica_through_the_headless_service():
    docs = _documents()
    sts = docs["StatefulSet/becomingone"]
    args = " ".join(sts["spec"]["template"]["spec"]["containers"][0]["args"])
    addresses = args.split('-a "')[1].split('"')[0].split(";")
    replicas = sts["spec"]["replicas"]
    assert addresses == [f"becomingone-{i}.{sts['spec']['serviceName']}:2101" for i in range(replicas)]
    assert docs[f"Service/{sts['spec']['serviceName']}"]["spec"]["clusterIP"] == "None"
    claim = sts["spec"]["template"]["spec"]["volumes"][1]["persistentVolumeClaim"]["claimName"]
    assert docs[f"PersistentVolumeClaim/{claim}"]["spec"]["accessModes"] == ["ReadWriteMany"]


def test_dockerfile_runs_the_flow_the_bytewax_way():
    text = (DEPLOY / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["python", "-m", "bytewax.run", "flows.kairos"]' in text
    for package in ("flows", "operators", "connectors", "schemas"):
        assert f"COPY {package} ./{package}" in text


def test_statefulset_probes_use_the_health_endpoints_on_the_metrics_port():
    docs = _documents()
    container = docs["StatefulSet/becomingone"]["spec"]["template"]["spec"]["containers"][0]
    paths = {kind: container[kind]["httpGet"]["path"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert paths == {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    config = parse_config(yaml.safe_load(docs["ConfigMap/becomingone-config"]["data"]["config.yaml"]))
    for kind in paths:
        probe = container[kind]
        assert ports[probe["httpGet"]["port"]] == config.metrics.port
        assert probe["timeoutSeconds"] <= probe["periodSeconds"]
    # A cold start (~7 s, plus up to 10 s of Kafka check) fits the startup probe's budget many times over.
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60
    # Peers find each other before they are ready; an unready pod's metrics stay scrapeable.
    assert docs["Service/becomingone-peers"]["spec"]["publishNotReadyAddresses"] is True
    assert docs["Service/becomingone-metrics"]["spec"]["publishNotReadyAddresses"] is True
