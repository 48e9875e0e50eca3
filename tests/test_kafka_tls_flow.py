"""`becomingone produce` and `becomingone run` over TLS and mutual TLS, driven by the `security` section alone.

The development broker sits behind its TLS front (the ``tls_broker`` fixture:
mutual TLS, client certificates required, only TLS addresses advertised).
The configs name no librdkafka TLS setting: ``security.transport: tls`` and
``security.node_auth: mutual_tls`` with the CA, certificate and key files
must give the Kafka clients TLS, and the metrics endpoint serves HTTPS with
the same files. A wrong CA and a missing client certificate fail with the
reason in the output.
"""

from __future__ import annotations

import ssl
import subprocess
import urllib.request
from pathlib import Path

import pyarrow.dataset as ds
import pytest
import trustme
import yaml

from tests.conftest import BIN, WAIT, clean_env, free_port, read_topic, stop_process, unique_topic

SENSORS = ("steady-1:steady", "noise-1:noise")


def _security(broker, **changes) -> dict:
    return {"transport": "tls", "node_auth": "mutual_tls", "ca_file": str(broker.ca_file),
            "cert_file": str(broker.cert_file), "key_file": str(broker.key_file), **changes}


def _config(tmp_path: Path, broker, topic: str, *, security: dict, metrics_port: int | None = None) -> Path:
    config = {
        "security": security,
        "kafka": {"bootstrap.servers": broker.bootstrap},
        "source": {"kind": "kafka", "topic": topic, "from_beginning": True, "stop_at_end": True},
        "sink": {"topics": {"collapse": f"{topic}.collapse", "witness": f"{topic}.witness",
                            "sync": f"{topic}.sync", "dlq": f"{topic}.dlq"}},
        "memory": {"storage": {"path": str(tmp_path / "archive")}},
        "metrics": {"enabled": metrics_port is not None, "port": metrics_port or 9108},
        "logging": {"format": "text"},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _becomingone(*args: str, timeout: float = 10 * WAIT) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN), *args], env=clean_env(), capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_produce_and_run_over_mutual_tls(tls_broker, tmp_path):
    topic = unique_topic("tls-flow")
    config = _config(tmp_path, tls_broker, topic, security=_security(tls_broker))
    sent = _becomingone("produce", "--config", str(config), "--topic", topic, "--synthetic", "--duration", "20",
                        *[arg for s in SENSORS for arg in ("--sensor", s)])
    assert sent.returncode == 0, sent.stderr
    assert "plaintext" not in sent.stderr

    port = free_port()
    config = _config(tmp_path, tls_broker, topic, security=_security(tls_broker), metrics_port=port)
    proc = subprocess.Popen([str(BIN), "run", "--config", str(config)], env=clean_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=10 * WAIT)
    finally:
        stop_process(proc)
    assert proc.returncode == 0, err
    assert "plaintext traffic" not in err
    # Every produced sample went through the flow and into the archive ...
    rows = ds.dataset(tmp_path / "archive" / "input", format="arrow", partitioning="hive").count_rows()
    assert rows == 2 * 20 * 100
    # ... and the events came out on the collapse topic, read back over TLS.
    events = read_topic(tls_broker.bootstrap, f"{topic}.collapse", settings=tls_broker.client_settings())
    assert any(b"steady-1" in m.value() for m in events)
    assert "steady-1" in out


def _endpoint_scraped_over_mutual_tls(port: int, broker) -> str:
    context = ssl.create_default_context(cafile=str(broker.ca_file))
    context.load_cert_chain(str(broker.cert_file), str(broker.key_file))
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", timeout=WAIT, context=context) as answer:
        return answer.read().decode()


@pytest.mark.slow
def test_a_tailing_flow_serves_its_metrics_over_mutual_tls(tls_broker, tmp_path):
    topic = unique_topic("tls-tail")
    port = free_port()
    config = _config(tmp_path, tls_broker, topic, security=_security(tls_broker), metrics_port=port)
    raw = yaml.safe_load(config.read_text())
    raw["source"]["stop_at_end"] = False
    config.write_text(yaml.safe_dump(raw))
    sent = _becomingone("produce", "--config", str(config), "--topic", topic, "--synthetic", "--duration", "5",
                        "--sensor", "steady-1:steady")
    assert sent.returncode == 0, sent.stderr
    err = tmp_path / "err.txt"
    with err.open("w") as stderr:
        proc = subprocess.Popen([str(BIN), "run", "--config", str(config)], env=clean_env(),
                                stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        import time

        deadline = time.monotonic() + 3 * WAIT
        while True:
            try:
                text = _endpoint_scraped_over_mutual_tls(port, tls_broker)
                if 'becomingone_samples_total{result="accepted"} 500.0' in text:
                    break
            except OSError:
                pass
            assert proc.poll() is None, err.read_text()
            assert time.monotonic() < deadline, err.read_text()
            time.sleep(0.2)
        assert 'becomingone_kafka_connected' in text
    finally:
        assert stop_process(proc) == 0, err.read_text()


def test_a_wrong_ca_fails_with_the_reason(tls_broker, tmp_path):
    other = trustme.CA()
    other_ca = tmp_path / "other-ca.pem"
    other.cert_pem.write_to_path(str(other_ca))
    topic = unique_topic("tls-wrong-ca")
    config = _config(tmp_path, tls_broker, topic, security=_security(tls_broker, ca_file=str(other_ca)))
    result = _becomingone("run", "--config", str(config), "--timeout", "3", "--no-recovery")
    assert result.returncode != 0
    assert f"cannot reach Kafka at {tls_broker.bootstrap} within 3 s" in result.stderr
    assert "certificate verify failed" in result.stderr


def test_no_client_certificate_fails_with_the_reason(tls_broker, tmp_path):
    # TLS without mutual authentication: the clients show no certificate, and this broker wants one.
    topic = unique_topic("tls-no-cert")
    config = _config(tmp_path, tls_broker, topic, security=_security(tls_broker, node_auth="none"))
    result = _becomingone("run", "--config", str(config), "--timeout", "3", "--no-recovery")
    assert result.returncode != 0
    assert f"cannot reach Kafka at {tls_broker.bootstrap} within 3 s" in result.stderr
    assert "certificate required" in result.stderr
