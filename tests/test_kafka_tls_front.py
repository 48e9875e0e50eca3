"""Kafka over TLS through `becomingone broker --tls-cert ...`: real librdkafka clients, certificates made here.

The end-to-end tests run the broker as a subprocess with three mock brokers
behind the TLS front and mutual TLS; the front's handling of bad peers is
tested in process against a stand-in broker.
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from connectors.kafka.tls_front import TlsFiles, TlsFront, _WarningGate
from tests.conftest import (BIN, WAIT, TlsBroker, clean_env, read_topic, start_tls_broker, stop_process,
                            write_tls_files)

MESSAGES = 1_000


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[TlsBroker]:
    """Three mock brokers behind the TLS front, mutual TLS."""
    proc, broker = start_tls_broker(tmp_path_factory.mktemp("tls-cluster"), brokers=3)
    try:
        yield broker
    finally:
        assert stop_process(proc) == 0, broker.log.read_text()


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory) -> dict[str, Path]:
    """Certificates of a CA the broker does not know."""
    return write_tls_files(tmp_path_factory.mktemp("other-ca"), name="other-")


def _ports(addresses) -> set[int]:
    return {int(a.rsplit(":", 1)[1]) for a in addresses}


def _connections(process: psutil.Process) -> list:
    """The process's TCP connections (psutil >= 6 calls it net_connections)."""
    return getattr(process, "net_connections", process.connections)(kind="tcp")


def test_a_group_consumes_everything_produced_and_clients_only_see_tls(cluster):
    topic = f"test.tls.{uuid.uuid4().hex[:12]}"
    producer = Producer(cluster.client_settings())
    for i in range(MESSAGES):
        producer.produce(topic, str(i).encode(), key=str(i % 16).encode())
    assert producer.flush(WAIT) == 0

    consumer = Consumer(cluster.client_settings(**{
        "group.id": f"test-tls-{uuid.uuid4().hex}", "auto.offset.reset": "earliest", "enable.auto.commit": False}))
    try:
        consumer.subscribe([topic])
        got: list[bytes] = []
        deadline = time.monotonic() + WAIT
        while len(got) < MESSAGES and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                got.append(msg.value())
        consumer.commit(asynchronous=False)  # through the group coordinator found with FindCoordinator
        committed = consumer.committed([TopicPartition(topic, p) for p in range(4)], timeout=WAIT)

        brokers = AdminClient(cluster.client_settings()).list_topics(timeout=WAIT).brokers
        # While every client is still connected: none of this process's connections goes to a plaintext
        # port, and every connection to one comes from the broker process itself (its TLS front).
        assert not {c.raddr.port for c in _connections(psutil.Process()) if c.raddr} & _ports(cluster.plaintext)
        in_broker = _connections(psutil.Process(cluster.pid))
        plaintext_peers = {c.raddr.port for c in in_broker if c.raddr and c.laddr.port in _ports(cluster.plaintext)}
        assert plaintext_peers and plaintext_peers <= {c.laddr.port for c in in_broker}
    finally:
        consumer.close()

    assert sorted(int(v) for v in got) == list(range(MESSAGES))
    assert sum(tp.offset for tp in committed) == MESSAGES
    assert len(committed) == 4
    assert sorted(f"{b.host}:{b.port}" for b in brokers.values()) == sorted(cluster.tls)
    assert not _ports(cluster.tls) & _ports(cluster.plaintext)


def _refusal(settings: dict) -> str:
    """What librdkafka logs when it cannot get metadata with ``settings`` (it must not)."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.getLogger(f"test.tls.client.{uuid.uuid4().hex}")
    logger.addHandler(Collect())
    logger.propagate = False
    logger.setLevel(logging.DEBUG)  # librdkafka reports connection failures at level info
    admin = AdminClient({**settings, "logger": logger})
    with pytest.raises(KafkaException, match="Failed to get metadata"):
        admin.list_topics(timeout=3)
    admin.poll(0.5)  # serves the queued log lines
    return "\n".join(lines)


def test_a_client_trusting_another_ca_fails_with_a_certificate_error(cluster, other_ca):
    log = _refusal(cluster.client_settings(**{"ssl.ca.location": str(other_ca["ca"])}))
    assert "SSL handshake failed" in log and "certificate verify failed" in log


def test_mutual_tls_without_a_client_certificate_fails(cluster):
    log = _refusal(cluster.client_settings(certificate=False))
    assert "alert certificate required" in log


def test_mutual_tls_with_a_certificate_from_another_ca_fails(cluster, other_ca):
    log = _refusal(cluster.client_settings(**{"ssl.certificate.location": str(other_ca["client_cert"]),
                                              "ssl.key.location": str(other_ca["client_key"])}))
    assert "alert unknown ca" in log


def test_a_plaintext_client_gets_nothing_from_a_tls_port(cluster):
    log = _refusal({"bootstrap.servers": cluster.bootstrap})
    assert "closed by peer" in log


def test_the_tls_broker_fixture_serves_mutual_tls(tls_broker):
    topic = f"test.tls.{uuid.uuid4().hex[:12]}"
    producer = Producer(tls_broker.client_settings())
    producer.produce(topic, b"over mutual TLS")
    assert producer.flush(WAIT) == 0
    brokers = producer.list_topics(timeout=WAIT).brokers
    assert [f"{b.host}:{b.port}" for b in brokers.values()] == [tls_broker.bootstrap]
    messages = read_topic(tls_broker.bootstrap, topic, expected=1, settings=tls_broker.client_settings())
    assert [m.value() for m in messages] == [b"over mutual TLS"]
    assert tls_broker.mutual and "client certificates required" in tls_broker.log.read_text()


def test_tls_without_client_certificates(tmp_path):
    proc, broker = start_tls_broker(tmp_path, mutual=False)
    try:
        topic = f"test.tls.{uuid.uuid4().hex[:12]}"
        producer = Producer(broker.client_settings())
        producer.produce(topic, b"over TLS, no client certificate")
        assert producer.flush(WAIT) == 0
        assert "no client certificates" in broker.log.read_text()
    finally:
        assert stop_process(proc) == 0, broker.log.read_text()


@pytest.mark.parametrize("args, message", [
    (["--tls-cert", "cert.pem"], "--tls-cert and --tls-key go together"),
    (["--tls-client-ca", "ca.pem"], "--tls-client-ca needs --tls-cert and --tls-key"),
    (["--tls-cert", "missing.pem", "--tls-key", "missing.key"], "cannot use the TLS files (missing.pem, missing.key)"),
])
def test_the_command_names_what_is_wrong_with_its_tls_files(tmp_path, args, message):
    done = subprocess.run([str(BIN), "broker", *args], cwd=tmp_path, env=clean_env(), capture_output=True,
                          text=True, timeout=WAIT)
    assert done.returncode == 2
    assert message in done.stderr


# --------------------------------------------------------------------------
# The front in process, before a stand-in broker: bad peers close their own connection only.

class StandInBroker:
    """A plaintext server that answers every request frame with ``reply`` (a whole frame, size included)."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                while conn.recv(65536):
                    conn.sendall(self.reply)


@pytest.fixture
def tls_files(tmp_path) -> dict[str, Path]:
    return write_tls_files(tmp_path)


def _front(files: dict[str, Path], reply: bytes, *, mutual: bool = False) -> TlsFront:
    broker = StandInBroker(reply)
    tls = TlsFiles(files["server_cert"], files["server_key"], files["ca"] if mutual else None)
    return TlsFront(tls, {1: broker.address})


def _client(files: dict[str, Path], front: TlsFront, *, certificate: bool = True) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=files["ca"])
    if certificate:
        context.load_cert_chain(files["client_cert"], files["client_key"])
    host, port = front.bootstrap.rsplit(":", 1)
    return context.wrap_socket(socket.create_connection((host, int(port)), timeout=WAIT), server_hostname=host)


def _metadata_request(correlation: int = 3) -> bytes:
    body = struct.pack(">hhih", 3, 1, correlation, 4) + b"test" + struct.pack(">i", -1)
    return struct.pack(">i", len(body)) + body


def _closed(sock: ssl.SSLSocket) -> bool:
    try:
        return sock.recv(65536) == b""
    except (ConnectionError, ssl.SSLError):
        return True


def _wait_for_log(caplog, text: str) -> str:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        lines = [r.getMessage() for r in caplog.records if text in r.getMessage()]
        if lines:
            return lines[0]
        time.sleep(0.05)
    pytest.fail(f"no log line with {text!r}: {caplog.text}")


#: A Metadata v1 response (correlation id 3): broker 1 at 127.0.0.1:40001, no rack, no controller, no topics.
METADATA_REPLY = struct.pack(">iiih", 3, 1, 1, 9) + b"127.0.0.1" + struct.pack(">ihii", 40001, -1, -1, 0)


def _reply(sock: ssl.SSLSocket) -> bytes:
    size = struct.unpack(">i", sock.recv(4))[0]
    data = b""
    while len(data) < size:
        data += sock.recv(size - len(data))
    return data


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def test_a_relayed_metadata_response_names_the_front(tls_files):
    front = _front(tls_files, struct.pack(">i", len(METADATA_REPLY)) + METADATA_REPLY)
    try:
        with _client(tls_files, front) as client:
            client.sendall(_metadata_request())
            answer = _reply(client)
        assert answer == METADATA_REPLY.replace(struct.pack(">i", 40001), struct.pack(">i", _port(front.bootstrap)))
    finally:
        front.close()


@pytest.mark.parametrize("sent, reason", [
    (struct.pack(">i", 200 * 2**20), "frame size 209715200 outside"),
    (struct.pack(">i", -1), "frame size -1 outside"),
    (struct.pack(">ihhi", 8, 3, 12, 1), "api key 3 v12, which this relay does not offer"),
])
def test_a_bad_request_closes_that_connection_only(tls_files, caplog, sent, reason):
    caplog.set_level(logging.WARNING, "becomingone.kafka.tls_front")
    front = _front(tls_files, struct.pack(">i", len(METADATA_REPLY)) + METADATA_REPLY)
    try:
        with _client(tls_files, front) as bad, _client(tls_files, front) as good:
            bad.sendall(sent)
            assert _closed(bad)
            assert reason in _wait_for_log(caplog, "closing the connection of")
            good.sendall(_metadata_request())
            assert _reply(good)[:4] == struct.pack(">i", 3)
        assert front.counters.connections_refused == 1
    finally:
        front.close()


def test_a_malformed_response_closes_the_connection_with_a_log_line(tls_files, caplog):
    caplog.set_level(logging.WARNING, "becomingone.kafka.tls_front")
    front = _front(tls_files, struct.pack(">ii", 6, 3) + b"\x00\x01")  # a broker array cut short
    try:
        with _client(tls_files, front) as client:
            client.sendall(_metadata_request())
            assert _closed(client)
        assert "bad response to api key 3 v1: field of 4 bytes at offset 4 runs past" in _wait_for_log(caplog, "closing the connection of")
    finally:
        front.close()


def test_a_failed_handshake_is_logged_naming_the_peer(tls_files, caplog):
    caplog.set_level(logging.WARNING, "becomingone.kafka.tls_front")
    front = _front(tls_files, b"", mutual=True)
    try:
        with _client(tls_files, front, certificate=False) as client:
            peer = "%s:%d" % client.getsockname()[:2]
            with pytest.raises(ssl.SSLError, match="CERTIFICATE_REQUIRED"):
                client.recv(1)
        line = _wait_for_log(caplog, "TLS handshake with")
        assert line == f"TLS front: TLS handshake with {peer} failed: PEER_DID_NOT_RETURN_A_CERTIFICATE"
    finally:
        front.close()


def test_failed_handshake_warnings_are_rate_limited():
    gate = _WarningGate(interval=1.0)
    assert [gate.admit(t) for t in (0.0, 0.2, 0.9, 1.0, 1.5, 5.0)] == [0, None, None, 2, None, 1]
