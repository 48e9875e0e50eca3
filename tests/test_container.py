"""The container image: its recipe (deploy/Dockerfile, .dockerignore, deploy/requirements.lock), the
kernel cache it compiles at build time (``becomingone warm``) and its health check
(``python -m flows.health_probe``).

No image is built here (that needs a Docker engine): the tests read the recipe and run what its
steps run.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import BIN, clean_env

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DOCKERFILE = (DEPLOY / "Dockerfile").read_text()
LOCK = DEPLOY / "requirements.lock"


# --- the recipe ------------------------------------------------------------------------------------------

def _instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions (keyword, arguments), continuation lines joined, comments dropped."""
    lines, out = [], []
    for line in DOCKERFILE.splitlines():
        if line.lstrip().startswith("#"):
            continue
        lines.append(line.rstrip())
        if not line.rstrip().endswith("\\"):
            text = " ".join(part.rstrip("\\").strip() for part in lines).strip()
            lines = []
            if text:
                keyword, _, rest = text.partition(" ")
                out.append((keyword.upper(), rest.strip()))
    return out


def _one(keyword: str) -> list[str]:
    return [rest for k, rest in _instructions() if k == keyword]


def test_the_base_image_is_pinned_by_digest_and_can_be_overridden():
    (arg,) = [a for a in _one("ARG") if a.startswith("PYTHON_IMAGE=")]
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", arg), arg
    assert _one("FROM") == ["${PYTHON_IMAGE}"]
    assert "docker buildx imagetools inspect python:3.11-slim-bookworm" in DOCKERFILE  # how to refresh it


def test_dependencies_come_from_the_lock_with_their_hashes_and_the_project_brings_none():
    runs = _one("RUN")
    (locked,) = [r for r in runs if "-r deploy/requirements.lock" in r]
    assert {"--require-hashes", "--no-deps"} <= set(locked.split())
    (project,) = [r for r in runs if re.search(r"pip install [^&]* \.( |$)", r)]
    assert {"--no-deps", "--no-build-isolation"} <= set(project.split()) and "pip check" in project
    # The lock is copied before the sources, so a change of code does not reinstall the dependencies.
    copies = _one("COPY")
    assert copies.index("deploy/requirements.lock ./deploy/requirements.lock") < copies.index("flows ./flows")


def _locked() -> dict[str, tuple[str, int]]:
    """The lock's packages: canonical name -> (version, number of hashes)."""
    out: dict[str, tuple[str, int]] = {}
    name = None
    for line in LOCK.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^ \\]+)", line)
        if m:
            name = canonicalize_name(m.group(1))
            out[name] = (m.group(2), 0)
        elif name and line.strip().startswith("--hash=sha256:"):
            assert re.fullmatch(r"--hash=sha256:[0-9a-f]{64}( \\)?", line.strip()), line
            out[name] = (out[name][0], out[name][1] + 1)
    return out


def test_the_lock_pins_every_runtime_dependency_with_hashes_and_nothing_of_the_tests():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    locked = _locked()
    for text in project["dependencies"]:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in locked, f"{req.name} is not in {LOCK.name}: make lock"
        assert req.specifier.contains(locked[name][0]), f"{name}=={locked[name][0]} does not meet {req}: make lock"
    assert all(hashes >= 1 for _, hashes in locked.values()), locked
    for text in project["optional-dependencies"]["test"]:
        assert canonicalize_name(Requirement(text).name) not in locked
    assert "file:" not in LOCK.read_text() and "--find-links" not in LOCK.read_text()


def _ignore_rules() -> list[tuple[bool, re.Pattern]]:
    """.dockerignore as (excluded, pattern) in file order: Go's filepath.Match with ``**``, as Docker reads it."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        for part in re.split(r"(\*\*/?|\*|\?|\[[^\]]*\])", pattern):
            if part in ("**", "**/"):
                regex += "(.*/)?" if part == "**/" else ".*"
            elif part == "*":
                regex += "[^/]*"
            elif part == "?":
                regex += "[^/]"
            elif part.startswith("["):
                regex += part
            else:
                regex += re.escape(part)
        rules.append((not keep, re.compile(regex + r"\Z")))
    return rules


def _ignored(path: str, rules: list[tuple[bool, re.Pattern]]) -> bool:
    """Whether the build context leaves ``path`` out: the last rule matching it or a parent directory decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[:k]) for k in range(1, len(parts) + 1)]
    excluded = False
    for exclude, regex in rules:
        if any(regex.match(c) for c in candidates):
            excluded = exclude
    return excluded


def _tracked_files() -> list[str]:
    result = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    return result.stdout.split()


def test_the_build_context_holds_what_the_image_copies_and_leaves_local_state_out():
    rules = _ignore_rules()
    sources = [c.split()[0] for c in _one("COPY")] + [c.split()[1] for c in _one("COPY") if len(c.split()) > 2]
    sources = [s for s in sources if not s.startswith("./") and s != "."]
    files = _tracked_files()
    for source in sources:
        inside = [f for f in files if f == source or f.startswith(source + "/")]
        assert inside, f"COPY {source}: nothing tracked there"
        assert not [f for f in inside if _ignored(f, rules)], f"COPY {source}: left out by .dockerignore"
    for path in (".git/config", ".venv/bin/python", "flows/__pycache__/cli.cpython-311.pyc",
                 "operators/__pycache__/lag._wrap-102.py311.nbi", "becomingone-data/input/part-0.arrow",
                 "tests/test_container.py", "docs/architecture.md", "becomingone.egg-info/PKG-INFO",
                 "deploy/kubernetes/secret.yaml", "tls.key"):
        assert _ignored(path, rules), path


def test_the_dockerignore_reading_follows_docker_s_rules():
    rules = _ignore_rules()
    assert _ignored("deploy/Dockerfile", rules) and not _ignored("deploy/requirements.lock", rules)  # ! re-includes
    assert _ignored("operators/decode/__pycache__/x.pyc", rules)                                   # ** at any depth
    assert not _ignored("testsuite/x.py", rules) and _ignored("tests/x.py", rules)                # whole names


# --- the kernel cache ------------------------------------------------------------------------------------

def test_image_and_statefulset_agree_on_the_kernel_cache_and_the_pod_starts_with_the_image_s():
    env = dict(line.split("=", 1) for line in re.findall(r"\b(NUMBA_[A-Z_]+=\S+)", DOCKERFILE))
    assert env["NUMBA_CPU_NAME"] == "generic"
    docs = [d for d in yaml.safe_load_all((DEPLOY / "kubernetes" / "statefulset.yaml").read_text()) if d]
    pod = docs[0]["spec"]["template"]["spec"]
    (main,) = pod["containers"]
    main_env = {e["name"]: e.get("value") for e in main["env"]}
    assert main_env["NUMBA_CACHE_DIR"] == env["NUMBA_CACHE_DIR"]
    assert main_env["NUMBA_CPU_NAME"] == env["NUMBA_CPU_NAME"]
    volume = next(m["name"] for m in main["volumeMounts"] if m["mountPath"] == env["NUMBA_CACHE_DIR"])
    (seed,) = [c for c in pod["initContainers"] if c["name"] == "kernel-cache"]
    assert seed["image"] == main["image"]
    target = next(m["mountPath"] for m in seed["volumeMounts"] if m["name"] == volume)
    # The init container copies the image's cache directory (its own, not a volume) into that volume.
    assert seed["command"] == ["cp", "-R", env["NUMBA_CACHE_DIR"] + "/.", target + "/"]
    assert "RUN becomingone warm && becomingone warm --check" in DOCKERFILE
    warm_at = DOCKERFILE.index("RUN becomingone warm")
    assert DOCKERFILE.rindex("USER becomingone", 0, warm_at) > DOCKERFILE.rindex("chown -R becomingone", 0, warm_at)


def _cache_files(cache: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(cache)): (p.stat().st_size, p.stat().st_mtime_ns) for p in cache.rglob("*") if p.is_file()}


def _env(cache: Path, **extra: str) -> dict[str, str]:
    return clean_env(NUMBA_CACHE_DIR=str(cache), NUMBA_CPU_NAME="generic", **extra)


@pytest.fixture(scope="module")
def warmed(tmp_path_factory) -> Path:
    """A kernel cache filled by ``becomingone warm`` (as the image's build step does)."""
    cache = tmp_path_factory.mktemp("kernels") / "numba"
    cache.mkdir()
    result = subprocess.run([str(BIN), "warm"], env=_env(cache), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert re.search(r"; [1-9]\d* kernel compilation\(s\) .* for CPU generic; kernel cache: " + re.escape(str(cache)),
                     result.stdout), result.stdout
    return cache


def _inputs(tmp_path: Path) -> tuple[Path, Path]:
    """Three seconds of two phase sensors and of two raw sensors in two cells, as JSON-lines files
    (a file holds phase samples or raw values, not both)."""
    phase, raw = tmp_path / "phase.jsonl", tmp_path / "raw.jsonl"
    with open(phase, "w") as p, open(raw, "w") as r:
        for k in range(300):
            t = 1_764_115_200 + k / 100
            for j in range(2):
                p.write(json.dumps({"sensor": f"p{j}", "cell": "a", "t": t, "phase": (0.6 * k + j) % 6.28 - 3.14}) + "\n")
                r.write(json.dumps({"sensor": f"r{j}", "cell": "b", "t": t, "value": (k % 10) - 4.5 + j}) + "\n")
    return phase, raw


def _produce(bootstrap: str, topic: str, path: Path, wire: str) -> None:
    done = subprocess.run([str(BIN), "produce", str(path), "--bootstrap", bootstrap, "--topic", topic,
                           "--format", wire, "--partitions", "4", "--batch-rows", "256"],
                          env=clean_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("wire, lateness", [("json", 0.0), ("arrow", 0.5)])
def test_after_warming_a_run_of_the_flow_from_kafka_compiles_nothing(warmed, bootstrap, tmp_path, wire, lateness):
    """What a pod does: the flow reads a topic (JSON or Arrow messages, four partitions), the mesh on, with
    raw sensors, and writes its output topics, from the kernel cache the image was built with."""
    from tests.conftest import unique_topic

    topic = unique_topic()
    for path in _inputs(tmp_path):
        _produce(bootstrap, topic, path, wire)
    before = _cache_files(warmed)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "source": {"kind": "kafka", "topic": topic, "from_beginning": True, "stop_at_end": True},
        "kafka": {"bootstrap.servers": bootstrap},
        "sink": {"topics": {role: unique_topic(f"test.{role}") for role in ("collapse", "witness", "sync", "dlq")}},
        "kairos": {"tau_scale": 0.1, "velocity_span": 0.02, "phase_band": [8.0, 12.0]},
        "sync": {"mesh_enabled": True, "lateness": lateness}, "metrics": {"enabled": False},
        "memory": {"storage": {"path": str(tmp_path / "archive")}}}))
    run = subprocess.run([str(BIN), "run", "--config", str(config), "--no-recovery", "--workers", "2"],
                         env=_env(warmed), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "1,200 samples accepted, 0 rejected" in run.stdout, run.stdout      # every sample went through
    assert _cache_files(warmed) == before          # nothing compiled, so nothing added to the cache or rewritten


@pytest.mark.slow
def test_the_check_finds_every_kernel_in_a_warmed_cache(warmed):
    before = _cache_files(warmed)
    check = subprocess.run([str(BIN), "warm", "--check"], env=_env(warmed), capture_output=True, text=True,
                           timeout=300)
    assert check.returncode == 0, check.stderr
    assert " 0 kernel compilation(s) (0 with Numba's own helpers)" in check.stdout
    assert _cache_files(warmed) == before


_CACHE_USE = """
import json
import numpy as np
from operators.decode.grouping import _group_rows
_group_rows(np.array([1, 0, 1], np.int32), 2)
stats = _group_rows.stats
print(json.dumps([sum(stats.cache_hits.values()), sum(stats.cache_misses.values())]))
"""


@pytest.mark.slow
def test_a_cache_made_for_another_cpu_name_is_not_used(warmed):
    """Numba keys its cache to the CPU: without NUMBA_CPU_NAME=generic this machine's own CPU is asked for,
    and the image's kernels (compiled for generic) are not used. One kernel stands for all (a whole
    ``warm --check`` would compile every kernel again, 20 s, to say the same)."""
    generic = subprocess.run([sys.executable, "-c", _CACHE_USE], env=_env(warmed), capture_output=True, text=True,
                             timeout=120, cwd=ROOT)
    assert generic.returncode == 0, generic.stderr
    assert json.loads(generic.stdout) == [1, 0]  # loaded from the cache
    env = {k: v for k, v in _env(warmed).items() if k != "NUMBA_CPU_NAME"}
    host = subprocess.run([sys.executable, "-c", _CACHE_USE], env=env, capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert host.returncode == 0, host.stderr
    assert json.loads(host.stdout) == [0, 1]  # compiled again


_WHERE_CACHED = """
import json, os
from operators.decode.grouping import _group_rows
print(json.dumps(_group_rows.stats.cache_path))
"""


def _read_only(paths: list[Path], command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """``command`` with ``paths`` mounted read-only in a private mount namespace (as on a read-only root)."""
    script = ('for p in $READ_ONLY; do mount --bind "$p" "$p" && mount -o remount,bind,ro "$p" "$p" || exit 99; done; '
              'exec "$@"')
    return subprocess.run(["unshare", "--map-root-user", "--mount", "sh", "-c", script, "sh", *command],
                          env={**env, "READ_ONLY": " ".join(str(p) for p in paths)},
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_numba_passes_over_a_kernel_cache_it_cannot_write(warmed):
    """Why the StatefulSet copies the image's cache into a writable volume: a read-only NUMBA_CACHE_DIR is
    not read at all (Numba checks the directory is writable before it uses it), so every kernel would be
    compiled again, into the next place Numba finds writable (here the source tree; in the pod the home
    directory's ~/.cache, on the working-directory volume), and with none the import fails."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "--map-root-user", "--mount", "true"],
                                                          capture_output=True).returncode != 0:
        pytest.skip("no unprivileged mount namespaces here (unshare --map-root-user --mount)")
    writable = subprocess.run([sys.executable, "-c", _WHERE_CACHED], env=_env(warmed), capture_output=True,
                              text=True, timeout=120, cwd=ROOT)
    assert writable.returncode == 0, writable.stderr
    assert json.loads(writable.stdout).startswith(str(warmed))
    probe = _read_only([warmed], [sys.executable, "-c", _WHERE_CACHED], _env(warmed))
    assert probe.returncode == 0, probe.stderr
    assert not json.loads(probe.stdout).startswith(str(warmed))
    # With no writable place at all (cache, source tree, home), importing a kernel's module fails.
    home = warmed.parent / "home"
    home.mkdir(exist_ok=True)
    nowhere = _read_only([warmed, ROOT, home], [sys.executable, "-c", _WHERE_CACHED], _env(warmed, HOME=str(home)))
    assert nowhere.returncode == 1 and "RuntimeError: cannot cache function" in nowhere.stderr


# --- the health check ------------------------------------------------------------------------------------

def _endpoint(security: dict | None = None) -> int:
    """This process's real metrics and health endpoint (connectors.endpoint) on a free loopback port."""
    from connectors.endpoint import endpoint_tls, serve
    from schemas.config import parse_config
    from tests.conftest import free_port

    port = free_port()
    assert serve("127.0.0.1", port, endpoint_tls(parse_config({"security": security or {}}).security))
    return port


def _probe(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.health_probe", *args], env=clean_env(**env),
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


@pytest.fixture
def flow_phase():
    """Sets this process's flow phase (what /healthz reports) for a test, and puts it back after."""
    from connectors.health import flow_health

    health = flow_health()
    phase = health.phase

    def set_phase(value: str) -> None:
        health.phase = value

    yield set_phase
    health.phase = phase


def test_the_health_check_passes_while_the_flow_lives_and_fails_once_it_failed(flow_phase):
    port = _endpoint()
    flow_phase("running")
    ok = _probe(BECOMINGONE__METRICS__PORT=str(port))  # no scheme: https is tried, then this plain endpoint
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("health: 200 ") and '"flow": {"ok": true, "state": "running"}' in ok.stdout
    flow_phase("failed")
    failed = _probe(f"http://127.0.0.1:{port}/healthz")
    assert failed.returncode == 1 and failed.stderr.startswith("health: 503 ")


def test_the_health_check_fails_when_nothing_answers_or_the_scheme_is_wrong():
    from tests.conftest import free_port

    refused = _probe(BECOMINGONE__METRICS__PORT=str(free_port()))
    assert refused.returncode == 1 and "refused" in refused.stderr.lower()
    wrong = _probe(BECOMINGONE_HEALTH_SCHEME="ftp")
    assert wrong.returncode == 1 and "http, https or auto" in wrong.stderr


def test_the_health_check_passes_over_mutual_tls_without_a_client_certificate(tmp_path, flow_phase):
    """security.transport: tls with node_auth: mutual_tls: /healthz answers without a client certificate,
    and the probe does not verify the endpoint's certificate (its own process, over loopback)."""
    import trustme
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    cert, key, ca_file = tmp_path / "node.crt", tmp_path / "node.key", tmp_path / "ca.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    port = _endpoint({"transport": "tls", "node_auth": "mutual_tls", "ca_file": str(ca_file),
                      "cert_file": str(cert), "key_file": str(key)})
    flow_phase("running")
    ok = _probe(BECOMINGONE_HEALTH_SCHEME="https", BECOMINGONE__METRICS__PORT=str(port))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("health: 200 ")
    plain = _probe(BECOMINGONE_HEALTH_SCHEME="http", BECOMINGONE__METRICS__PORT=str(port))  # http to HTTPS
    assert plain.returncode == 1
    found = _probe(BECOMINGONE__METRICS__PORT=str(port))  # no scheme: https first, as this endpoint speaks
    assert found.returncode == 0 and found.stdout.startswith("health: 200 "), found.stderr
    metrics = _probe(f"https://127.0.0.1:{port}/metrics")      # the metrics themselves still need a certificate
    assert metrics.returncode == 1 and metrics.stderr.startswith("health: 403 ")


def test_the_image_s_health_check_is_the_probe_on_the_metrics_port():
    (check,) = _one("HEALTHCHECK")
    assert check.endswith('CMD ["python", "-m", "flows.health_probe"]')
    assert "--timeout=5s" in check and "9108" in " ".join(_one("EXPOSE"))


def test_the_check_fails_naming_what_had_to_be_compiled(monkeypatch, capsys):
    """``warm --check`` when the runs compiled something (a cache of another CPU, or a kernel no run reached
    at build time): exit 1, naming the kernels. The runs themselves are the build's; here their report."""
    import argparse

    import flows.warm
    from flows.cli import cmd_warm

    compiled = ["operators.columnar_stream._stream_kernel", "numba.np.arrayobj.impl"]
    monkeypatch.setattr(flows.warm, "warm_kernels", lambda progress=None: flows.warm.WarmReport(
        runs=5, compiled=compiled, seconds=1.0))
    assert cmd_warm(argparse.Namespace(check=True)) == 1
    err = capsys.readouterr().err
    assert "becomingone warm: 2 compilation(s) not found in the kernel cache: " \
           "operators.columnar_stream._stream_kernel" in err
    assert cmd_warm(argparse.Namespace(check=False)) == 0
