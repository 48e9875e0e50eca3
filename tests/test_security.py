"""The ``security`` section: config errors, Kafka client settings, and the metrics endpoint over TLS.

Certificates are made here (``trustme``); the endpoint is a real HTTPS server on
loopback scraped with Python's ``ssl``, with and without client certificates,
and with a client that trusts another CA.
"""

from __future__ import annotations

import logging
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import trustme
import yaml

from connectors import endpoint
from connectors.endpoint import MAX_CONNECTIONS, endpoint_tls, serve
from connectors.server_tls import ServerTLS
from connectors.metrics import metrics
from flows.startup import ConfigOrigin, log_startup, plaintext_traffic
from schemas.config import ConfigError, parse_config
from tests.conftest import BIN, WAIT, clean_env, free_port, stop_process


class Certs:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, written as PEM files."""

    def __init__(self, root: Path, name: str = "ca") -> None:
        self.ca = trustme.CA()
        root.mkdir(parents=True, exist_ok=True)
        self.ca_file = root / f"{name}.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.cert_file, self.key_file = self._issue(root, f"{name}-server", "127.0.0.1", "localhost")
        self.client_cert, self.client_key = self._issue(root, f"{name}-client", "becomingone-scraper")

    def _issue(self, root: Path, stem: str, *names: str) -> tuple[Path, Path]:
        issued = self.ca.issue_cert(*names)
        cert, key = root / f"{stem}.crt", root / f"{stem}.key"
        cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
        issued.private_key_pem.write_to_path(str(key))
        return cert, key

    def security(self, mutual: bool = False) -> dict:
        return {"transport": "tls", "node_auth": "mutual_tls" if mutual else "none", "ca_file": str(self.ca_file),
                "cert_file": str(self.cert_file), "key_file": str(self.key_file)}


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    return Certs(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def other_certs(tmp_path_factory) -> Certs:
    return Certs(tmp_path_factory.mktemp("tls-other"), "other")


def _problems(data: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    return str(caught.value)


# --------------------------------------------------------------------------
# Config errors name the keys.


def test_tls_without_files_names_the_keys():
    text = _problems({"security": {"transport": "tls"}})
    assert "security.cert_file: required: security.transport 'tls' needs security.cert_file and " \
           "security.key_file" in text
    assert "security.key_file: required" in text
    text = _problems({"security": {"transport": "tls", "node_auth": "mutual_tls", "cert_file": "x", "key_file": "y"}})
    assert "security.ca_file: required: security.node_auth 'mutual_tls' needs security.cert_file, " \
           "security.key_file and security.ca_file" in text


def test_unreadable_and_unusable_files_are_named(certs, tmp_path):
    missing = tmp_path / "nope.pem"
    text = _problems({"security": {**certs.security(mutual=True), "ca_file": str(missing)}})
    assert f"security.ca_file: cannot read {str(missing)!r}: no such file" in text

    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    text = _problems({"security": {**certs.security(), "cert_file": str(garbage)}})
    assert "security.cert_file, security.key_file: cannot load the certificate and its key" in text

    # A key that is not the certificate's.
    text = _problems({"security": {**certs.security(), "key_file": str(certs.client_key)}})
    assert "cannot load the certificate and its key: KEY_VALUES_MISMATCH" in text

    text = _problems({"security": {**certs.security(mutual=True), "ca_file": str(garbage)}})
    assert "security.ca_file: not a PEM CA certificate" in text


def test_encrypted_key_needs_its_password(certs, tmp_path):
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(certs.key_file.read_bytes(), password=None)
    locked = tmp_path / "locked.key"
    locked.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.BestAvailableEncryption(b"s3cret-pass")))
    sec = {**certs.security(), "key_file": str(locked)}
    # Never a prompt on the terminal: a clear error instead.
    assert "(the key is encrypted: set security.key_password)" in _problems({"security": sec})
    assert "security.key_password does not open the key" in _problems({"security": {**sec, "key_password": "no"}})
    config = parse_config({"security": {**sec, "key_password": "s3cret-pass"}})
    assert "s3cret-pass" not in config.to_yaml(redact_secrets=True)
    assert "key_password: <redacted>" in config.to_yaml(redact_secrets=True)


def test_mutual_tls_still_needs_tls():
    text = _problems({"security": {"node_auth": "mutual_tls"}})
    assert "security.node_auth ('mutual_tls') needs security.transport 'tls', not 'plaintext'" in text
    assert "ca_file" not in text  # the files would only repeat it


# --------------------------------------------------------------------------
# Kafka client settings.


def test_tls_goes_into_every_kafka_client(certs):
    data = {"security": certs.security(mutual=True), "kafka": {"bootstrap.servers": "k:9093"},
            "sync": {"mesh_enabled": True, "mesh": {"peers": [{"bootstrap": "far:9093", "kafka": {"sasl.mechanism": "PLAIN"}}]}},
            "relay": {"target": {"bootstrap.servers": "t:9093", "ssl.ca.location": "/other/ca.pem"}}}
    config = parse_config(data)
    kafka = config.kafka.root
    assert kafka["security.protocol"] == "SSL"
    assert kafka["ssl.ca.location"] == str(certs.ca_file)
    assert kafka["ssl.certificate.location"] == str(certs.cert_file)
    assert kafka["ssl.key.location"] == str(certs.key_file)
    assert config.sync.mesh.peers[0].kafka["security.protocol"] == "SASL_SSL"  # SASL over TLS
    assert config.relay.target.root["ssl.ca.location"] == "/other/ca.pem"  # a side's own setting wins
    # The effective config round-trips: applying the section again changes nothing.
    assert parse_config(yaml.safe_load(config.to_yaml())) == config


def test_plaintext_kafka_under_tls_is_an_error(certs):
    text = _problems({"security": certs.security(), "kafka": {"bootstrap.servers": "k:9092",
                                                               "security.protocol": "sasl_plaintext"}})
    assert "kafka.security.protocol 'SASL_PLAINTEXT' is plaintext but security.transport is 'tls' " \
           "(drop it, or set SASL_SSL)" in text


def test_plaintext_is_the_default_and_is_named():
    config = parse_config({"kafka": {"bootstrap.servers": "k:9092"}})
    assert config.kafka.root == {"bootstrap.servers": "k:9092"}
    assert plaintext_traffic(config) == ["metrics and health endpoint http://127.0.0.1:9108", "Kafka at k:9092"]
    sasl = parse_config({"kafka": {"bootstrap.servers": "k:9092", "security.protocol": "SASL_PLAINTEXT"},
                         "metrics": {"enabled": False}})
    assert plaintext_traffic(sasl) == ["Kafka at k:9092 (SASL_PLAINTEXT: the SASL credentials too, unless the "
                                       "mechanism hides them)"]
    peers = parse_config({"metrics": {"enabled": False}, "sync": {"mesh_enabled": True, "mesh": {"peers": [
        {"bootstrap": "far:9093", "kafka": {"security.protocol": "SSL"}}, {"host": "near", "port": 9092}]}}})
    assert plaintext_traffic(peers) == ["mesh peer Kafka at near:9092"]  # the TLS peer is not named


def test_startup_warns_about_plaintext_only(certs, caplog):
    caplog.set_level(logging.INFO, logger="becomingone.flow")
    log_startup(parse_config({}), ConfigOrigin(None))
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == ["plaintext traffic: metrics and health endpoint http://127.0.0.1:9108; security.transport: "
                      "tls with security.cert_file and security.key_file encrypts it (docs/security.md)"]
    caplog.clear()
    log_startup(parse_config({"security": certs.security(mutual=True), "kafka": {"bootstrap.servers": "k:9093"}}),
                ConfigOrigin(None))
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


# --------------------------------------------------------------------------
# The metrics endpoint over TLS, for real on loopback.


def _client(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


def _fetch(port: int, path: str, context: ssl.SSLContext) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"https://127.0.0.1:{port}{path}", timeout=WAIT, context=context) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _serve(security: dict) -> int:
    metrics()  # the pipeline's metrics registered, as in a flow
    port = free_port()
    assert serve("127.0.0.1", port, endpoint_tls(parse_config({"security": security}).security))
    return port


def test_metrics_over_tls(certs, other_certs, caplog):
    port = _serve(certs.security())
    status, body = _fetch(port, "/metrics", _client(certs.ca_file))
    assert status == 200 and "becomingone_samples_total" in body
    status, body = _fetch(port, "/healthz", _client(certs.ca_file))
    assert status in (200, 503) and '"checks"' in body

    # A client that trusts another CA refuses the server.
    with pytest.raises(urllib.error.URLError) as caught:
        _fetch(port, "/metrics", _client(other_certs.ca_file))
    assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value)

    # Plain HTTP to the HTTPS port gets no metrics, and the log says why.
    caplog.set_level(logging.WARNING, logger="becomingone.metrics")
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=WAIT).read()
    deadline = time.monotonic() + WAIT
    while not any("sent plain HTTP to this HTTPS endpoint" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
        time.sleep(0.05)


def test_mutual_tls_asks_for_a_client_certificate(certs, other_certs, caplog):
    port = _serve(certs.security(mutual=True))
    # With a certificate of the CA: metrics.
    status, body = _fetch(port, "/metrics", _client(certs.ca_file, certs.client_cert, certs.client_key))
    assert status == 200 and "becomingone_samples_total" in body
    # Without one: 403 naming what is missing; the kubelet's probes still answer.
    status, body = _fetch(port, "/metrics", _client(certs.ca_file))
    assert status == 403
    assert "needs a client certificate signed by the CA of security.ca_file" in body
    assert _fetch(port, "/healthz", _client(certs.ca_file))[0] in (200, 503)
    assert _fetch(port, "/readyz", _client(certs.ca_file))[0] in (200, 503)
    # A certificate of another CA fails the handshake, and the server logs the peer and the reason.
    caplog.set_level(logging.WARNING, logger="becomingone.metrics")
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        _fetch(port, "/metrics", _client(certs.ca_file, other_certs.client_cert, other_certs.client_key))
    deadline = time.monotonic() + WAIT
    while not any("TLS handshake with 127.0.0.1:" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert any("its certificate was refused (unable to get local issuer certificate): not one security.ca_file "
               "signed" in r.getMessage() for r in caplog.records)


def test_a_stalled_client_blocks_nobody(certs):
    port = _serve(certs.security())
    # Connected, never says hello: with the handshake in the accept loop this would hang every scrape.
    stalled = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    try:
        assert _fetch(port, "/metrics", _client(certs.ca_file))[0] == 200
    finally:
        for s in stalled:
            s.close()


def test_a_burst_of_connections_fits_the_listen_queue(certs):
    # socketserver listens with a queue of 5: connections beyond it waited for TCP's SYN retries
    # (64 connections opened together took 8 s to get through, here).
    port = _serve(certs.security())
    assert endpoint._servers[("127.0.0.1", port)].request_queue_size >= MAX_CONNECTIONS


def test_connections_beyond_the_bound_are_closed_not_queued(certs, caplog, monkeypatch):
    # The stalled connections must keep their slots while the test looks, however slow the machine.
    monkeypatch.setattr(endpoint._QuietHandler, "timeout", 10 * WAIT)
    caplog.set_level(logging.WARNING, logger="becomingone.metrics")
    port = _serve(certs.security())
    stalled = [socket.create_connection(("127.0.0.1", port)) for _ in range(MAX_CONNECTIONS)]
    try:
        one_more = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        assert one_more.recv(1) == b""  # closed by the server, not left waiting
        one_more.close()
        assert any(f"{MAX_CONNECTIONS} connections open already" in r.getMessage() for r in caplog.records)
    finally:
        for s in stalled:
            s.close()
    deadline = time.monotonic() + WAIT  # the stalled ones' threads see the close and free their slots
    while True:
        try:
            assert _fetch(port, "/metrics", _client(certs.ca_file))[0] == 200
            break
        except (urllib.error.URLError, ConnectionError):
            assert time.monotonic() < deadline
            time.sleep(0.1)


def _served_serial(port: int, ca: Path) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw:
        with _client(ca).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return int(tls.getpeercert()["serialNumber"], 16)


def test_a_rotated_certificate_is_served_without_a_restart(tmp_path, caplog):
    certs = Certs(tmp_path / "rotating")
    security = parse_config({"security": certs.security()}).security
    port = free_port()
    assert serve("127.0.0.1", port, ServerTLS(security, recheck=0.0))
    first = _served_serial(port, certs.ca_file)
    # cert-manager renews: new files at the same paths.
    renewed = certs.ca.issue_cert("127.0.0.1", "localhost")
    certs.cert_file.write_bytes(b"".join(blob.bytes() for blob in renewed.cert_chain_pems))
    renewed.private_key_pem.write_to_path(str(certs.key_file))
    second = _served_serial(port, certs.ca_file)
    assert second != first
    # Half-written files: the previous certificate stays, and the log says so.
    caplog.set_level(logging.WARNING, logger="becomingone.metrics")
    certs.key_file.write_text("-----BEGIN PRIVATE KEY-----\n")
    assert _served_serial(port, certs.ca_file) == second
    assert any("TLS files changed but cannot be loaded" in r.getMessage() for r in caplog.records)


def test_a_ca_taken_out_is_no_longer_trusted(tmp_path, other_certs):
    certs = Certs(tmp_path / "ca-rotation")
    security = parse_config({"security": certs.security(mutual=True)}).security
    port = free_port()
    assert serve("127.0.0.1", port, ServerTLS(security, recheck=0.0))
    old_client = _client(certs.ca_file, certs.client_cert, certs.client_key)
    new_client = _client(certs.ca_file, other_certs.client_cert, other_certs.client_key)
    assert _fetch(port, "/metrics", old_client)[0] == 200
    # The scrapers move to another CA: ca_file now holds only that one.
    certs.ca_file.write_bytes(other_certs.ca_file.read_bytes())
    assert _fetch(port, "/metrics", new_client)[0] == 200
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        _fetch(port, "/metrics", old_client)


# --------------------------------------------------------------------------
# Through `becomingone run`.


@pytest.mark.slow
def test_run_serves_metrics_over_mutual_tls(certs, tmp_path):
    port = free_port()
    config = tmp_path / "tls.yaml"
    config.write_text(yaml.safe_dump({
        "security": certs.security(mutual=True),
        "metrics": {"port": port},
        "memory": {"storage": {"path": str(tmp_path / "archive")}},
        "source": {"kind": "synthetic", "duration": 36000.0},  # longer than the test
        "logging": {"format": "text"},
    }))
    err = tmp_path / "err.txt"
    with err.open("w") as stderr:
        proc = subprocess.Popen([str(BIN), "run", "--config", str(config)], env=clean_env(),
                                stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        client = _client(certs.ca_file, certs.client_cert, certs.client_key)
        deadline = time.monotonic() + 3 * WAIT
        while True:
            try:
                status, body = _fetch(port, "/metrics", client)
                if "becomingone_samples_total" in body:
                    break
            except (urllib.error.URLError, OSError):
                pass
            assert proc.poll() is None, err.read_text()
            assert time.monotonic() < deadline, err.read_text()
            time.sleep(0.2)
        assert status == 200
        assert _fetch(port, "/metrics", _client(certs.ca_file))[0] == 403
    finally:
        stop_process(proc)
    assert "plaintext traffic" not in err.read_text()

