"""``/healthz`` and ``/readyz`` on the metrics endpoint, through a flow's life.

A real ``becomingone run`` tails a topic of a broker this test starts: the
endpoint answers while the flow starts, turns ready once the sources are
assigned, names the broker when the test stops it (still alive), is ready
again once a broker is back on the same port, and after SIGTERM the process
exits 0 and the port refuses.  Waits are hang guards only.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from connectors.health import FlowHealth, flow_health, liveness, probe_app, readiness
from connectors.endpoint import serve
from connectors.metrics import metrics
from tests.conftest import (BIN, WAIT, clean_env, free_port, partitioned_topic, produce_steady_and_noise,
                            start_broker, stop_process,
                            unique_topic)

ROOT = Path(__file__).resolve().parent.parent  # `python -m bytewax.run flows.kairos` imports from here


def _get(port: int, path: str) -> tuple[int, dict] | None:
    """(status, JSON body) of ``GET path``, or None while nothing answers on the port."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
    except OSError:
        return None


def _all_four_built(port: int):
    """A probe for ``_poll``: the readiness answer once it is 200 with all four partitions built, else None."""
    def probe():
        got = _get(port, "/readyz")
        return got if got and got[0] == 200 and got[1]["checks"]["sources"]["state"] == "assigned: 4 partitions" \
            else None
    return probe


def _poll(what: str, probe, proc: subprocess.Popen, err: Path):
    """Poll ``probe()`` until it returns something true (hang guard: 3 * WAIT)."""
    deadline = time.monotonic() + 3 * WAIT
    while True:
        got = probe()
        if got:
            return got
        if proc.poll() is not None:
            pytest.fail(f"the flow exited ({proc.returncode}) before {what}: {err.read_text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"not {what} within {3 * WAIT} s: {err.read_text()}")
        time.sleep(0.2)


@pytest.mark.slow
def test_health_through_a_flows_life_starting_ready_broker_lost_and_back_stopped(tmp_path):
    broker, bootstrap = start_broker(stderr_path=tmp_path / "broker.txt")
    flow = None
    try:
        topic = unique_topic("test.health")
        produce_steady_and_noise(bootstrap, topic, seconds=2.0, seed=3)
        port = free_port()
        config = tmp_path / "config.yaml"
        config.write_text(
            f"source: {{kind: kafka, topic: {topic}, from_beginning: true, stop_at_end: false}}\n"
            f"kafka: {{bootstrap.servers: '{bootstrap}', unavailable_timeout: 0}}\n"
            f"memory: {{storage: {{path: '{tmp_path / 'archive'}'}}}}\n"
            f"metrics: {{port: {port}}}\n")
        err = tmp_path / "flow-stderr.txt"
        with open(err, "wb") as out:
            flow = subprocess.Popen([str(BIN), "run", "--config", str(config)], stdout=subprocess.DEVNULL,
                                    stderr=out, env=clean_env())

        # Starting: the first answer says alive; ready or not yet, the readiness body names every check.
        status, body = _poll("answering /healthz", lambda: _get(port, "/healthz"), flow, err)
        assert (status, body["checks"]["flow"]["ok"]) == (200, True), body
        status, body = _get(port, "/readyz")
        assert status in (200, 503) and set(body["checks"]) == {"flow", "sources", "archive", "broker"}, body

        # Ready: every check passes (Bytewax builds the four partitions one by one: ready from the first).
        status, body = _poll("ready", _all_four_built(port), flow, err)
        assert body == {"ok": True, "checks": {
            "flow": {"ok": True, "state": "running"},
            "sources": {"ok": True, "state": "assigned: 4 partitions"},
            "archive": {"ok": True, "state": "writable"},
            "broker": {"ok": True, "state": "reachable"}}}
        assert b"becomingone_samples_total" in urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read()

        # Broker lost: not ready, naming the broker check only; still alive.
        broker.kill()
        broker.wait(timeout=WAIT)
        status, body = _poll("not ready", lambda: (got := _get(port, "/readyz")) and got[0] == 503 and got,
                             flow, err)
        failing = {name for name, check in body["checks"].items() if not check["ok"]}
        assert failing == {"broker"} and body["checks"]["broker"]["state"].startswith("unreachable: "), body
        assert _get(port, "/healthz")[0] == 200

        # A broker back on the same address: ready again.
        broker, _ = start_broker("--port", bootstrap.rsplit(":", 1)[1], stderr_path=tmp_path / "broker2.txt")
        _poll("ready again", lambda: (got := _get(port, "/readyz")) and got[0] == 200, flow, err)

        # Stopped: SIGTERM drains, the process exits 0, and nothing answers on the port any more.
        assert stop_process(flow, signal.SIGTERM) == 0, err.read_text()
        assert _get(port, "/healthz") is None
    finally:
        if flow is not None and flow.poll() is None:
            flow.kill()
            flow.wait(timeout=WAIT)
        if broker.poll() is None:
            stop_process(broker)


@pytest.mark.slow
def test_under_bytewax_run_the_endpoint_is_up_and_ready_before_any_record(bootstrap, tmp_path):
    topic = partitioned_topic(bootstrap)  # empty: no record ever arrives
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        f"source: {{kind: kafka, topic: {topic}, stop_at_end: false}}\n"
        f"kafka: {{bootstrap.servers: '{bootstrap}'}}\n"
        f"memory: {{storage: {{path: '{tmp_path / 'archive'}'}}}}\n"
        f"metrics: {{port: {port}}}\n")
    err = tmp_path / "flow-stderr.txt"
    with open(err, "wb") as out:
        flow = subprocess.Popen([sys.executable, "-m", "bytewax.run", "flows.kairos"], stdout=subprocess.DEVNULL,
                                stderr=out, env=clean_env(BECOMINGONE_CONFIG=str(config)), cwd=ROOT)
    try:
        status, body = _poll("ready", _all_four_built(port), flow, err)
        assert body["checks"]["sources"] == {"ok": True, "state": "assigned: 4 partitions"}
        assert _get(port, "/healthz")[0] == 200
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        assert 'becomingone_samples_total{result="accepted"} 0.0' in text  # not one record read
        assert stop_process(flow, signal.SIGTERM) == 0, err.read_text()
        assert _get(port, "/healthz") is None
    finally:
        if flow.poll() is None:
            flow.kill()
            flow.wait(timeout=WAIT)


# --------------------------------------------------------------------------
# The checks themselves, and the endpoint in this process.


def test_liveness_fails_only_once_the_flow_ended():
    health = FlowHealth()
    assert liveness(health).ok  # the process is up, no flow yet
    health.begin(archive=None, kafka=False)
    assert liveness(health).ok and not readiness(health).ok
    stop = []
    health.running(lambda: bool(stop))
    health.partition_built()
    assert readiness(health).ok
    stop.append(True)  # draining after a stop request: alive, no longer ready
    assert liveness(health).ok
    assert json.loads(readiness(health).body())["checks"]["flow"] == {"ok": False, "state": "stopping"}
    for phase in ("stopped", "failed"):
        health.finish(phase)
        assert json.loads(liveness(health).body()) == {"ok": False, "checks": {"flow": {"ok": False, "state": phase}}}
    with pytest.raises(ValueError, match="phase must be one of"):
        health.finish("running")


def test_readiness_names_an_archive_it_cannot_write(tmp_path):
    health = FlowHealth()
    health.begin(archive=tmp_path / "not" / "made" / "yet", kafka=False)
    health.running(lambda: False)
    health.partition_built()
    assert readiness(health).ok  # the sink makes the directories: the nearest existing one counts
    blocker = tmp_path / "file"
    blocker.write_text("")
    health.begin(archive=blocker / "archive", kafka=False)
    health.running(lambda: False)
    health.partition_built()
    answer = json.loads(readiness(health).body())
    assert answer["ok"] is False and answer["checks"]["archive"] == {"ok": False, "state": "not writable"}
    assert answer["checks"]["sources"] == {"ok": True, "state": "assigned: 1 partition"}


def test_the_endpoint_serves_probes_as_json_and_metrics_unchanged():
    port = free_port()
    metrics()  # the pipeline's metrics registered in this process
    flow_health().begin(archive=None, kafka=False)  # a flow starting in this process
    assert serve("127.0.0.1", port) and not serve("127.0.0.1", port)
    status, body = _get(port, "/healthz")
    assert status == 200 and body["checks"]["flow"]["ok"] is True
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        assert b'becomingone_samples_total{result="accepted"}' in response.read()
    status, body = _get(port, "/readyz")
    assert status == 503 and body["ok"] is False


def test_the_probe_app_answers_head_without_a_body():
    started = []
    app = probe_app(lambda environ, start: [b"metrics"], health=FlowHealth)
    assert app({"PATH_INFO": "/healthz", "REQUEST_METHOD": "HEAD"}, lambda *a: started.append(a)) == []
    assert started[0][0] == "200 OK"
    assert app({"PATH_INFO": "/metrics", "REQUEST_METHOD": "GET"}, lambda *a: None) == [b"metrics"]
