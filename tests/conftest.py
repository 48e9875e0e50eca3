"""Shared test fixtures: the `becomingone broker` subprocess (plaintext or behind TLS) and reading topics back.

Every wait is bounded by :data:`WAIT`; nothing is left running.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

BIN = Path(sys.executable).with_name("becomingone")
WAIT = 30.0  # upper bound of any single wait, seconds


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any BECOMINGONE* variable of the caller, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BECOMINGONE")}
    env.update(extra)
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_broker(*args: str, stderr_path: Path) -> tuple[subprocess.Popen, str]:
    """Start `becomingone broker`; return it and its bootstrap address (bounded wait)."""
    err = open(stderr_path, "wb")
    proc = subprocess.Popen(
        [str(BIN), "broker", *args], stdout=subprocess.PIPE, stderr=err, env=clean_env(), text=True
    )
    err.close()
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout=WAIT):
            stop_process(proc)
            pytest.fail(f"broker printed nothing within {WAIT} s: {stderr_path.read_text()}")
    line = proc.stdout.readline()
    if not line.startswith("bootstrap="):
        stop_process(proc)
        pytest.fail(f"unexpected first line {line!r}: {stderr_path.read_text()}")
    return proc, line.strip().removeprefix("bootstrap=")


def stop_process(proc: subprocess.Popen, signum: int = signal.SIGTERM) -> int:
    """Signal the process and wait (bounded); kill it if it does not go."""
    if proc.poll() is None:
        proc.send_signal(signum)
    try:
        return proc.wait(timeout=WAIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=WAIT)
        raise
    finally:
        if proc.stdout is not None:
            proc.stdout.close()


def _broker_for_module(tmp_path_factory, name: str) -> Iterator[str]:
    log = tmp_path_factory.mktemp(name) / "stderr.txt"
    proc, address = start_broker(stderr_path=log)
    try:
        yield address
    finally:
        assert stop_process(proc) == 0, log.read_text()


@pytest.fixture(scope="module")
def bootstrap(tmp_path_factory) -> Iterator[str]:
    """A `becomingone broker` subprocess for the test module; its bootstrap address."""
    yield from _broker_for_module(tmp_path_factory, "broker")


@pytest.fixture(scope="module")
def far(tmp_path_factory) -> Iterator[str]:
    """A second `becomingone broker` for the module (the far side of a relay); its bootstrap address."""
    yield from _broker_for_module(tmp_path_factory, "far")


@dataclass(frozen=True)
class TlsBroker:
    """A `becomingone broker --tls-cert ...` subprocess: its TLS bootstrap address and PEM files.

    ``ca_file`` signed the broker's certificate (SAN 127.0.0.1 and localhost)
    and the client certificate ``cert_file``/``key_file``. ``plaintext`` are
    the mock brokers' own addresses, which clients must never see.
    """

    bootstrap: str
    ca_file: Path
    cert_file: Path
    key_file: Path
    plaintext: tuple[str, ...]
    tls: tuple[str, ...]
    mutual: bool
    log: Path
    pid: int

    def client_settings(self, *, certificate: bool | None = None, **extra) -> dict:
        """librdkafka settings for this broker over TLS (with the client certificate when ``certificate``;
        default: when the broker requires one), plus ``extra``."""
        settings = {
            "bootstrap.servers": self.bootstrap,
            "security.protocol": "SSL",
            "ssl.ca.location": str(self.ca_file),
            "ssl.endpoint.identification.algorithm": "https",
        }
        if self.mutual if certificate is None else certificate:
            settings |= {"ssl.certificate.location": str(self.cert_file), "ssl.key.location": str(self.key_file)}
        return settings | extra


def write_tls_files(directory: Path, *, name: str = "") -> dict[str, Path]:
    """A new test CA (trustme) and two certificates it signed, as PEM files in ``directory``:
    ``ca``, ``server_cert``/``server_key`` (SAN 127.0.0.1, localhost), ``client_cert``/``client_key``
    (SAN 127.0.0.1, localhost, client.becomingone.test)."""
    import trustme

    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    # The client's certificate also names 127.0.0.1 and localhost, so a node under test can serve its
    # metrics endpoint with the same files it shows Kafka (as docs/security.md's tls.crt).
    client = ca.issue_cert("127.0.0.1", "localhost", "client.becomingone.test")
    files = {kind: directory / f"{name}{kind}.pem" for kind in
             ("ca", "server_cert", "server_key", "client_cert", "client_key")}
    ca.cert_pem.write_to_path(files["ca"])
    server.cert_chain_pems[0].write_to_path(files["server_cert"])
    server.private_key_pem.write_to_path(files["server_key"])
    client.cert_chain_pems[0].write_to_path(files["client_cert"])
    client.private_key_pem.write_to_path(files["client_key"])
    return files


def start_tls_broker(directory: Path, *, mutual: bool = True, brokers: int = 1) -> tuple[subprocess.Popen, TlsBroker]:
    """Certificates in ``directory`` and a `becomingone broker` behind TLS (mutual TLS when ``mutual``)."""
    files = write_tls_files(directory)
    args = ["--brokers", str(brokers), "--tls-cert", str(files["server_cert"]), "--tls-key", str(files["server_key"])]
    if mutual:
        args += ["--tls-client-ca", str(files["ca"])]
    log = directory / "broker-stderr.txt"
    proc, address = start_broker(*args, stderr_path=log)
    found = re.search(r"mock broker\(s\) up \(([^)]*)\), each behind a TLS listener \(([^;]*);", log.read_text())
    if found is None:
        stop_process(proc)
        pytest.fail(f"the broker did not say where its brokers and TLS listeners are: {log.read_text()}")
    return proc, TlsBroker(
        bootstrap=address, ca_file=files["ca"], cert_file=files["client_cert"], key_file=files["client_key"],
        plaintext=tuple(found[1].split(", ")), tls=tuple(found[2].split(", ")), mutual=mutual, log=log, pid=proc.pid,
    )


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory) -> Iterator[TlsBroker]:
    """A `becomingone broker` behind TLS that requires client certificates (mutual TLS), for the test module.

    ``tls_broker.client_settings()`` are the librdkafka settings of a client
    with the CA and the client certificate; ``ca_file``, ``cert_file`` and
    ``key_file`` are the PEM files themselves.
    """
    proc, broker = start_tls_broker(tmp_path_factory.mktemp("tls-broker"))
    try:
        yield broker
    finally:
        assert stop_process(proc) == 0, broker.log.read_text()


def unique_topic(prefix: str = "test.phases") -> str:
    return f"{prefix}.{uuid.uuid4().hex[:12]}"


def read_topic(bootstrap: str, topic: str, expected: int | None = None, settings: dict | None = None) -> list[Message]:
    """Every message of ``topic`` (all partitions, from the start), in (partition, offset) order.

    ``expected``: the number of messages the topic must hold (None: whatever
    its end offsets say). ``settings``: more client settings, e.g.
    ``tls_broker.client_settings()`` to read over TLS.
    """
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"test-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, **(settings or {})})
    try:
        metadata = consumer.list_topics(topic, timeout=WAIT)
        partitions = sorted(metadata.topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=WAIT)[1] for p in partitions}
        total = sum(ends.values())
        if expected is not None:
            assert total == expected, f"topic holds {total} messages, expected {expected}"
        got: list[Message] = []
        deadline = time.monotonic() + WAIT
        while len(got) < total and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                got.append(msg)
        assert len(got) == total, f"read {len(got)} of {total} messages of {topic} within {WAIT} s"
        return sorted(got, key=lambda m: (m.partition(), m.offset()))
    finally:
        consumer.close()


def arrow_rows(messages: list[Message]) -> list[dict]:
    """The rows of Arrow input messages, each with its message's ``partition``; checks each message's
    content type and key (the sensor when the message holds one, else none)."""
    import pyarrow as pa

    from schemas.messages import ARROW_STREAM_CONTENT_TYPE

    rows = []
    for msg in messages:
        assert dict(msg.headers())["content-type"] == ARROW_STREAM_CONTENT_TYPE.encode()
        table = pa.ipc.open_stream(msg.value()).read_all()
        names = set(table.column("sensor").to_pylist())
        assert msg.key() == (names.pop().encode() if len(names) == 1 else None)
        for row in table.to_pylist():
            row["partition"] = msg.partition()
            rows.append(row)
    return rows


# --------------------------------------------------------------------------
# Shared by the end-to-end tests: samples, topics, archives.

#: Four synthetic sensors of every kind the end-to-end tests need (one with two channels).
FLEET = (("steady-1", "steady", 1), ("switch-1", "switching", 1), ("noise-1", "noise", 1), ("steady-2", "steady", 2))
START_US = 1_735_689_600_000_000  # 2025-01-01T00:00:00Z

#: The datasets a run's results are compared on, and the keys that order their rows.
COMPARED_DATASETS = {"input": ["sensor", "t"], "temporal_signatures": ["sensor", "transducer", "t"],
                     "coherence_history": ["sensor", "t"], "events": ["sensor", "t"]}


def fleet_samples(duration_us: int, seed: int) -> dict:
    """Each :data:`FLEET` sensor's (t_us, phase) at 100 Hz from :data:`START_US`."""
    import collections

    import numpy as np

    from connectors.synthetic import SyntheticSensor, synthetic_batches

    sensors = [SyntheticSensor(name, kind, channels=channels) for name, kind, channels in FLEET]
    parts: dict[str, list] = collections.defaultdict(list)
    for name, t, phase in synthetic_batches(sensors, period_us=10_000, duration_us=duration_us,
                                            start_us=START_US, seed=seed):
        parts[name].append((t, phase))
    return {n: (np.concatenate([t for t, _ in p]), np.concatenate([ph for _, ph in p])) for n, p in parts.items()}


def produce_steady_and_noise(bootstrap: str, topic: str, *, seconds: float, seed: int, cell: str | None = None) -> None:
    """A steady and a noise sensor at 100 Hz from :data:`START_US` for ``seconds``, sent to ``topic`` (all
    delivered, or the test fails)."""
    from confluent_kafka import Producer

    from connectors.kafka import PhaseProducer, producer_settings
    from connectors.phase_files import PhaseColumns
    from connectors.synthetic import SyntheticSensor, synthetic_batches

    sender = PhaseProducer(Producer(producer_settings(None, bootstrap=bootstrap)), topic)
    sensors = [SyntheticSensor("steady-1", "steady"), SyntheticSensor("noise-1", "noise")]
    for name, t, phase in synthetic_batches(sensors, period_us=10_000, duration_us=int(seconds * 1_000_000),
                                            start_us=START_US, seed=seed):
        sender.send(PhaseColumns.from_numpy(name, t, phase, cell))
    sender.finish(WAIT)
    assert sender.failed == 0


def partitioned_topic(bootstrap: str, partitions: int = 4) -> str:
    """A new topic with ``partitions`` partitions."""
    from confluent_kafka.admin import AdminClient

    from connectors.kafka import ensure_topics

    topic = unique_topic()
    ensure_topics(AdminClient({"bootstrap.servers": bootstrap}), [topic], partitions)
    return topic


def archive_rows(root: Path, datasets: dict[str, list[str]] = COMPARED_DATASETS) -> dict[str, list[dict]]:
    """Each dataset's rows, ordered by its keys, without the partition columns."""
    from connectors.archive import open_dataset

    out = {}
    for name, keys in datasets.items():
        table = open_dataset(root / name).to_table()
        table = table.drop_columns([c for c in ("date", "hour") if c in table.column_names])
        out[name] = table.sort_by([(k, "ascending") for k in keys]).to_pylist()
    return out
