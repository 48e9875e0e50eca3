"""Kafka: client settings, topics, a local mock cluster, and a paced phase-sample producer.

Settings
    :func:`producer_settings`, :func:`consumer_settings` and
    :func:`admin_settings` build confluent-kafka configs from the config's
    ``kafka`` section.  Every librdkafka property in that section
    (``security.protocol``, ``ssl.*``, ``sasl.*``, ...) is passed through
    verbatim and wins over the defaults chosen here.

Reaching the cluster
    :func:`connect_admin` fetches cluster metadata with a bounded wait and
    raises :class:`KafkaUnreachable`, naming the bootstrap address and what
    librdkafka reported, instead of retrying forever.
    :func:`ensure_topics` creates missing topics.

A local cluster
    :class:`MockBroker` hosts librdkafka's mock cluster (the documented
    ``test.mock.num.brokers`` client property) in this process: real Kafka
    protocol over TCP on loopback, for development and tests.

Producing samples
    :class:`PhaseProducer` sends :class:`~connectors.files.PhaseColumns` to a
    topic in either input wire format of SPEC section 4 (one JSON message per
    sample, or Arrow IPC stream messages of many samples), at a given rate,
    and counts what was delivered.

The dataflow's source and sink
    :class:`~connectors.topic_source.TopicSource` and
    :class:`~connectors.topic_sink.TopicSink` (importable from here too);
    the clients' log lines, connection state and outage timeout are
    :mod:`connectors.kafka_health`.

>>> with MockBroker() as broker:                                 # doctest: +SKIP
...     admin = connect_admin(admin_settings(None, bootstrap=broker.bootstrap))
...     ensure_topics(admin, ["becomingone.phases"])
"""

from __future__ import annotations

import logging
import socket
import zlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, ClusterMetadata, NewTopic

from connectors.files import PhaseColumns
from connectors.kafka_health import librdkafka_logger
from schemas.config import KafkaSection
from schemas.messages import ARROW_STREAM_CONTENT_TYPE, CONTENT_TYPE_HEADER, PhaseSample

__all__ = [
    "MOCK_PARTITIONS",
    "PHASE_BATCH_SCHEMA",
    "MessageTooLarge",
    "KafkaSetupError",
    "KafkaUnreachable",
    "MockBroker",
    "PhaseProducer",
    "TopicSetupError",
    "DeliveryFailed",
    "TopicMessages",
    "TopicSink",
    "TopicSource",
    "admin_settings",
    "arrow_message",
    "arrow_record_batch",
    "connect_admin",
    "consumer_settings",
    "ensure_topics",
    "produce_waiting",
    "json_messages",
    "producer_settings",
]

#: Columns of an Arrow input message as this producer writes them.
PHASE_BATCH_SCHEMA = pa.schema(
    [
        pa.field("sensor", pa.string(), nullable=False),
        pa.field("t", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("phase", pa.list_(pa.float64()), nullable=False),
        pa.field("cell", pa.string(), nullable=True),
    ]
)
#: Partitions of a topic that librdkafka's mock cluster creates on first use.
MOCK_PARTITIONS = 4

log = logging.getLogger("becomingone.kafka")


class KafkaSetupError(ValueError):
    """Kafka settings that cannot work (no bootstrap address, a bad value)."""


class KafkaUnreachable(ConnectionError):
    """No Kafka broker answered within the wait.

    Attributes:
        bootstrap: the ``bootstrap.servers`` tried.
        reason: what librdkafka reported last (refused, unresolvable, TLS, SASL ...).
    """

    def __init__(self, bootstrap: str, timeout: float, reason: str) -> None:
        self.bootstrap = bootstrap
        self.reason = reason
        super().__init__(f"cannot reach Kafka at {bootstrap} within {timeout:g} s: {reason}")


class TopicSetupError(RuntimeError):
    """A topic could not be found or created."""


class DeliveryFailed(RuntimeError):
    """Output messages the cluster did not take (after librdkafka's own retries)."""


class MessageTooLarge(ValueError):
    """One sample alone makes a message larger than the message limit."""


# --------------------------------------------------------------------------
# Settings.


def _base_settings(kafka: KafkaSection | None, bootstrap: str | None, client_id: str | None) -> dict[str, Any]:
    settings: dict[str, Any] = kafka.client_settings() if kafka is not None else {}
    if bootstrap:
        settings["bootstrap.servers"] = bootstrap
    if not str(settings.get("bootstrap.servers", "")).strip():
        raise KafkaSetupError(
            "no Kafka bootstrap address: pass --bootstrap HOST:PORT or set kafka.bootstrap.servers in the config"
        )
    if client_id:
        settings.setdefault("client.id", client_id)
    # librdkafka's own log lines go to Python logging, where the caller decides what shows,
    # with repeats held back (a broker that is down makes every client retry many times a second).
    settings.setdefault("logger", librdkafka_logger())
    return settings


def producer_settings(
    kafka: KafkaSection | None,
    *,
    bootstrap: str | None = None,
    client_id: str | None = "becomingone-produce",
) -> dict[str, Any]:
    """Producer config: the ``kafka`` section verbatim over safe defaults.

    Defaults: ``acks=all`` with idempotence (no duplicates or reordering on
    retries, so a sensor's samples stay in order within a partition),
    ``linger.ms=20`` (batches form under load), and ``message.timeout.ms=30000``
    so a message the cluster never takes fails in 30 s instead of librdkafka's
    five minutes.

    Args:
        kafka: the config's ``kafka`` section, or None.
        bootstrap: overrides ``bootstrap.servers`` (e.g. from ``--bootstrap``).
        client_id: ``client.id`` unless the section sets one.

    Raises:
        KafkaSetupError: no bootstrap address at all.

    >>> producer_settings(None, bootstrap="127.0.0.1:9092")["acks"]
    'all'
    """
    defaults = {"acks": "all", "enable.idempotence": "true", "linger.ms": "20", "message.timeout.ms": "30000"}
    return {**defaults, **_base_settings(kafka, bootstrap, client_id)}


def consumer_settings(
    kafka: KafkaSection | None,
    group_id: str,
    *,
    bootstrap: str | None = None,
    from_beginning: bool = False,
    client_id: str | None = "becomingone",
) -> dict[str, Any]:
    """Consumer config: the ``kafka`` section verbatim plus the group.

    Args:
        group_id: consumer group (``source.group_id``).
        from_beginning: with no committed offset, start at the earliest offset
            (else the latest), i.e. ``auto.offset.reset``.

    Raises:
        KafkaSetupError: no bootstrap address at all.
    """
    defaults = {"auto.offset.reset": "earliest" if from_beginning else "latest"}
    settings = {**defaults, **_base_settings(kafka, bootstrap, client_id)}
    settings["group.id"] = group_id
    return settings


def admin_settings(
    kafka: KafkaSection | None,
    *,
    bootstrap: str | None = None,
    client_id: str | None = "becomingone-admin",
) -> dict[str, Any]:
    """AdminClient config: the ``kafka`` section verbatim (TLS/SASL apply to admin requests too).

    Raises:
        KafkaSetupError: no bootstrap address at all.
    """
    return _base_settings(kafka, bootstrap, client_id)


# --------------------------------------------------------------------------
# Reaching the cluster, topics.


def settings_rejected(exc: KafkaException, settings: Mapping[str, Any]) -> KafkaSetupError:
    """librdkafka's refusal of the settings as a :class:`KafkaSetupError`; when a file
    setting (``ssl.ca.location``, ``ssl.key.location``, ...) is the cause, the
    message names the key, the path and what is wrong with the file."""
    import os
    import re

    text = exc.args[0].str() if exc.args and hasattr(exc.args[0], "str") else str(exc)
    found = re.search(r"([a-z0-9_]+(?:\.[a-z0-9_]+)*\.location) failed", text)
    if found is None or found.group(1) not in settings:
        return KafkaSetupError(f"Kafka settings rejected: {text}")
    key = found.group(1)
    path = str(settings[key])
    if not os.path.exists(path):
        why = "no such file"
    elif not os.access(path, os.R_OK):
        why = "not readable"
    else:
        why = "not a certificate or key librdkafka can use"
    return KafkaSetupError(f"Kafka settings rejected: kafka.{key} {path}: {why} ({text})")


def connect_admin(settings: Mapping[str, Any], *, timeout: float = 10.0) -> AdminClient:
    """An AdminClient whose cluster answered a metadata request within ``timeout`` seconds.

    Raises:
        KafkaUnreachable: naming ``bootstrap.servers`` and librdkafka's last
            error (connection refused, name not resolved, TLS or SASL failure).
        KafkaSetupError: librdkafka rejected a setting.
    """
    # Bounded: the client lives on, and a flapping cluster would keep reporting.
    errors: deque[KafkaError] = deque(maxlen=16)
    quiet = {k: v for k, v in settings.items() if k != "logger"}
    # The connection errors are reported once, in the exception; librdkafka
    # would otherwise log every reconnect attempt while we wait.
    quiet.update({"error_cb": errors.append, "log_level": 0})
    try:
        admin = AdminClient(quiet)
    except KafkaException as exc:
        raise settings_rejected(exc, settings) from None
    try:
        admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        admin.poll(0)  # serves error_cb: the cause behind "transport failure"
        causes = [e.str() for e in errors if e.code() != KafkaError._ALL_BROKERS_DOWN]
        reason = causes[-1] if causes else exc.args[0].str()
        raise KafkaUnreachable(str(settings.get("bootstrap.servers")), timeout, reason) from None
    return admin


def ensure_topics(
    admin: AdminClient,
    names: Iterable[str],
    partitions: int = 1,
    *,
    replication_factor: int = -1,
    timeout: float = 10.0,
) -> list[str]:
    """Create the topics of ``names`` that do not exist yet; return the ones created.

    A topic created meanwhile by someone else ("already exists") is fine.
    ``replication_factor=-1`` takes the broker's ``default.replication.factor``.

    librdkafka's mock cluster has no controller and no CreateTopics request;
    there (recognised by metadata naming no live controller) topics are
    created the way the mock allows, by asking for their metadata, and get
    :data:`MOCK_PARTITIONS` partitions whatever ``partitions`` says.

    Raises:
        TopicSetupError: a topic could not be created (naming it and why), or
            the cluster stopped answering.
    """
    wanted = list(dict.fromkeys(names))
    metadata = _metadata(admin, timeout)
    missing = [n for n in wanted if n not in metadata.topics]
    if not missing:
        return []
    if metadata.controller_id not in metadata.brokers:
        for name in missing:
            topic = _metadata(admin, timeout, topic=name).topics.get(name)
            if topic is None or topic.error is not None:
                why = topic.error.str() if topic is not None and topic.error is not None else "not created"
                raise TopicSetupError(f"cannot create topic {name!r}: {why}")
        if partitions != MOCK_PARTITIONS:
            log.info("the mock cluster created %s with %d partitions", ", ".join(missing), MOCK_PARTITIONS)
        return missing
    futures = admin.create_topics(
        [NewTopic(n, num_partitions=partitions, replication_factor=replication_factor) for n in missing],
        request_timeout=timeout,
        operation_timeout=timeout,
    )
    created = []
    for name, future in futures.items():
        try:
            future.result(timeout=timeout + 5.0)
            created.append(name)
        except KafkaException as exc:
            err = exc.args[0]
            if err.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise TopicSetupError(f"cannot create topic {name!r}: {err.str()}") from None
        except FutureTimeout:
            raise TopicSetupError(f"cannot create topic {name!r}: no answer within {timeout + 5.0:g} s") from None
    return created


def _metadata(admin: AdminClient, timeout: float, topic: str | None = None) -> ClusterMetadata:
    try:
        return admin.list_topics(topic=topic, timeout=timeout)
    except KafkaException as exc:
        raise TopicSetupError(f"no topic metadata within {timeout:g} s: {exc.args[0].str()}") from None


# --------------------------------------------------------------------------
# The mock cluster.


class MockBroker:
    """librdkafka's mock Kafka cluster, hosted by a client in this process.

    The mock speaks the Kafka protocol over TCP on 127.0.0.1 only. Producers
    and consumers in any process reach it through :attr:`bootstrap`; topics
    are created on first use (:data:`MOCK_PARTITIONS` partitions), consumer
    groups and idempotent producers work.  It keeps its data in memory until
    :meth:`close`.

    It is started with librdkafka's documented ``test.mock.num.brokers``
    property on a long-lived producer: librdkafka then creates the brokers,
    listening on ports the kernel assigns.  ``port`` adds a fixed bootstrap
    port: a relay on 127.0.0.1:port to the first broker.  Clients only
    bootstrap through it; the cluster metadata then sends them to the brokers'
    own ports, also on loopback.

    Args:
        brokers: number of brokers (1 or more).
        port: fixed loopback bootstrap port, or None for the first broker's own.
        timeout: seconds to wait for the cluster to answer at start.

    >>> with MockBroker(brokers=3) as broker:                    # doctest: +SKIP
    ...     print(broker.bootstrap)                              # 127.0.0.1:41729
    """

    def __init__(self, brokers: int = 1, *, port: int | None = None, timeout: float = 10.0) -> None:
        if brokers < 1:
            raise ValueError(f"brokers must be at least 1, got {brokers}")
        if port is not None and not 1 <= port <= 65535:
            raise ValueError(f"port must be in 1..65535, got {port}")
        self.brokers = brokers
        self.port = port
        self.timeout = timeout
        self._host: Producer | None = None
        self._relay: _BootstrapRelay | None = None
        self._bootstrap = ""
        self._addresses: tuple[str, ...] = ()

    @property
    def bootstrap(self) -> str:
        """``HOST:PORT`` for ``bootstrap.servers``."""
        if not self._bootstrap:
            raise RuntimeError("the mock broker is not started")
        return self._bootstrap

    @property
    def broker_addresses(self) -> tuple[str, ...]:
        """``HOST:PORT`` of every mock broker, by broker id."""
        return self._addresses

    def start(self) -> MockBroker:
        """Create the cluster and wait until it answers.

        Raises:
            OSError: ``port`` cannot be bound (e.g. in use).
            RuntimeError: the cluster did not come up within ``timeout``.
        """
        if self._host is not None:
            return self
        self._host = Producer({
            "test.mock.num.brokers": self.brokers,
            "client.id": "becomingone-mock-cluster",
            "logger": log,
            # Warnings and errors only: at notice level librdkafka announces
            # that it ignores the (unset) bootstrap.servers of the host client.
            "log_level": 4,
        })
        try:
            metadata = self._host.list_topics(timeout=self.timeout)
            found = sorted(metadata.brokers.values(), key=lambda b: b.id)
            if len(found) != self.brokers:
                raise RuntimeError(f"the mock cluster reports {len(found)} of {self.brokers} brokers")
            self._addresses = tuple(f"{b.host}:{b.port}" for b in found)
            if self.port is not None:
                self._relay = _BootstrapRelay(self.port, (found[0].host, found[0].port))
                self._bootstrap = f"127.0.0.1:{self.port}"
            else:
                self._bootstrap = self._addresses[0]
        except KafkaException as exc:
            self.close()
            raise RuntimeError(f"the mock cluster did not answer within {self.timeout:g} s: {exc}") from None
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop the relay and destroy the cluster (its data is gone). Idempotent."""
        if self._relay is not None:
            self._relay.close()
            self._relay = None
        if self._host is not None:
            host, self._host = self._host, None
            host.close()  # destroys the client and with it the mock cluster
        self._bootstrap = ""

    def __enter__(self) -> MockBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class _BootstrapRelay:
    """A fixed loopback port whose connections are relayed, byte for byte, to one broker.

    librdkafka's mock cluster cannot be told its ports; this gives clients a
    bootstrap address known in advance.
    """

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self._target = target
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener = socket.create_server(("127.0.0.1", port))
        # accept() wakes up now and then to notice close(): closing a socket
        # from another thread does not interrupt a blocked accept() on Linux.
        self._listener.settimeout(0.2)
        self._thread = threading.Thread(target=self._accept_loop, name=f"bootstrap-relay-{port}", daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            try:
                upstream = socket.create_connection(self._target, timeout=5.0)
            except OSError as exc:
                log.warning("bootstrap relay: cannot reach broker %s:%d: %s", *self._target, exc)
                client.close()
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            with self._lock:
                self._sockets.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            # Kafka clients never half-close: when one side ends, the pair ends.
            for s in (src, dst):
                with self._lock:
                    self._sockets.discard(s)
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=2.0)
        self._listener.close()
        with self._lock:
            open_sockets, self._sockets = list(self._sockets), set()
        for s in open_sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


# --------------------------------------------------------------------------
# Wire formats of the input topic.


def arrow_record_batch(columns: PhaseColumns) -> pa.RecordBatch:
    """The rows as an Arrow record batch with :data:`PHASE_BATCH_SCHEMA`.

    >>> import numpy as np
    >>> cols = PhaseColumns.from_numpy("pmu-7", np.array([1_764_115_200_125_000]), np.array([1.23]))
    >>> arrow_record_batch(cols).column("t")[0].value      # microseconds since the epoch
    1764115200125000
    """
    return pa.RecordBatch.from_arrays(
        [
            columns.sensor,
            pa.array(columns.t_us, pa.timestamp("us", tz="UTC")),
            columns.phase,
            columns.cell,
        ],
        schema=PHASE_BATCH_SCHEMA,
    )


def arrow_message(batch: pa.RecordBatch) -> bytes:
    """One Arrow IPC stream (schema, the batch, end of stream): one Kafka message value."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def json_messages(columns: PhaseColumns) -> Iterator[tuple[bytes, bytes]]:
    """``(key, value)`` per sample: key = sensor id, value = the JSON input format.

    ``t`` is epoch seconds (``t_us / 1e6``), which parses back to the same
    microsecond; a one-channel phase is a number, more channels a list.

    Raises:
        ValueError: a phase is NaN or infinite (JSON has no such numbers).
    """
    sensors = columns.sensor.to_pylist()
    times = columns.t_us.tolist()
    phases = columns.phase.to_pylist()
    cells = columns.cell.to_pylist()
    for sensor, t_us, phase, cell in zip(sensors, times, phases, cells):
        yield sensor.encode("utf-8"), PhaseSample(sensor, t_us, tuple(phase), cell).to_json_bytes()


# --------------------------------------------------------------------------
# The producer.


def produce_waiting(producer: Producer, topic: str, **message: Any) -> None:
    """``producer.produce``, waiting for deliveries to make room while the local queue is full.

    Bounded: queued messages fail after ``message.timeout.ms``, which frees the queue.
    """
    while True:
        try:
            producer.produce(topic, **message)
            return
        except BufferError:
            producer.poll(0.1)


def sensor_partitions(sensors: pa.Array, partitions: int) -> np.ndarray:
    """The partition of each row's sensor: CRC-32 of its UTF-8 id modulo ``partitions``
    (librdkafka's default for keyed messages), computed once per distinct sensor.

    >>> sensor_partitions(pa.array(["pmu-7", "pmu-8", "pmu-7"]), 4).tolist()
    [3, 2, 3]
    """
    encoded = pc.dictionary_encode(sensors)
    per_name = np.array([zlib.crc32(name.encode("utf-8")) % partitions
                         for name in encoded.dictionary.to_pylist()], np.int32)
    return per_name[encoded.indices.to_numpy(zero_copy_only=False)] if len(per_name) else np.zeros(0, np.int32)


class PhaseProducer:
    """Send phase samples to a topic, paced, counting deliveries.

    Every sensor's samples go to one partition, in the order given, so a
    consumer sees each sensor in time order (SPEC section 6): the partition
    is :func:`sensor_partitions` of the sensor over the topic's partitions.

    ``wire="json"``: one message per sample, key = sensor id.
    ``wire="arrow"``: one Arrow IPC stream message per ``batch_rows`` samples,
    split by partition (several sensors possible in each), header
    ``content-type: application/vnd.apache.arrow.stream``, key = the sensor
    when the message holds one sensor, else null.  A message that would exceed
    ``max_message_bytes`` is split in halves until it fits.

    ``rate`` paces the samples (per second, over all sensors; 0 = as fast as
    possible): sample k leaves no earlier than k / rate seconds after the
    first.  Sleeps are short and serve delivery reports meanwhile.

    Args:
        producer: a confluent-kafka Producer (see :func:`producer_settings`).
        topic: the input topic.
        partition: send everything to this partition (None: by sensor).
        partitions: the topic's partition count (None: asked of the cluster at the first send).
        on_progress: called with this producer about every
            ``progress_interval`` seconds while sending.

    Attributes:
        messages / samples: queued so far.
        delivered / failed: delivery reports so far (messages).
        first_error: the first delivery error, if any.
    """

    def __init__(
        self,
        producer: Producer,
        topic: str,
        *,
        wire: Literal["json", "arrow"] = "json",
        batch_rows: int = 4096,
        rate: float = 0.0,
        max_message_bytes: int = 1_000_000,
        partition: int | None = None,
        partitions: int | None = None,
        on_progress: Callable[[PhaseProducer], None] | None = None,
        progress_interval: float = 0.2,
    ) -> None:
        if wire not in ("json", "arrow"):
            raise ValueError(f"wire must be 'json' or 'arrow', not {wire!r}")
        if batch_rows < 1:
            raise ValueError(f"batch_rows must be at least 1, got {batch_rows}")
        if rate < 0:
            raise ValueError(f"rate must be 0 (as fast as possible) or positive, got {rate}")
        self._producer = producer
        self.topic = topic
        self.wire = wire
        self.batch_rows = batch_rows
        self.rate = rate
        self.max_message_bytes = max_message_bytes
        self._partition = partition
        self._partitions = partitions
        self._on_progress = on_progress
        self._progress_interval = progress_interval
        self._pending: list[PhaseColumns] = []
        self._pending_rows = 0
        self._started: float | None = None
        self._last_progress = 0.0
        self.messages = 0
        self.samples = 0
        self.delivered = 0
        self.failed = 0
        self.first_error: str | None = None

    # -- public

    def send(self, columns: PhaseColumns) -> None:
        """Queue the rows (arrow: whole batches now, the rest with later rows or :meth:`finish`)."""
        if not len(columns):
            return
        if self._started is None:
            self._started = time.monotonic()
        if self.wire == "json":
            n = self._partition_count()
            for key, value in json_messages(columns):
                self._pace()
                self._produce(key, value, None, 1, zlib.crc32(key) % n if self._partition is None else None)
            return
        self._pending.append(columns)
        self._pending_rows += len(columns)
        if self._pending_rows >= self.batch_rows:
            rows = PhaseColumns.concat(self._pending)
            full = len(rows) - len(rows) % self.batch_rows
            for start in range(0, full, self.batch_rows):
                self._send_arrow(rows.slice(start, self.batch_rows))
            rest = rows.slice(full)
            self._pending = [rest] if len(rest) else []
            self._pending_rows = len(rest)

    def finish(self, timeout: float = 60.0) -> None:
        """Send the rows still held back, then wait up to ``timeout`` s for every delivery report.

        Messages with no report by then count as failed.
        """
        self.send_held()
        remaining = self._producer.flush(timeout)
        if remaining:
            self.failed += remaining
            if self.first_error is None:
                self.first_error = f"{remaining} message(s) not delivered within {timeout:g} s"
        self._report_progress(force=True)

    def send_held(self) -> None:
        """Send the Arrow rows held back for a full batch now (paced senders call it per slice)."""
        if self._pending_rows:
            rows = PhaseColumns.concat(self._pending)
            self._pending, self._pending_rows = [], 0
            self._send_arrow(rows)

    @property
    def seconds(self) -> float:
        """Wall-clock seconds since the first sample was queued."""
        return 0.0 if self._started is None else time.monotonic() - self._started

    # -- internals

    def _partition_count(self) -> int:
        if self._partitions is None and self._partition is None:
            found = self._producer.list_topics(self.topic, timeout=30).topics.get(self.topic)
            if found is None or found.error is not None or not found.partitions:
                raise TopicSetupError(f"cannot list the partitions of Kafka topic {self.topic!r}: "
                                      f"{found.error if found is not None else 'no such topic'}")
            self._partitions = len(found.partitions)
        return self._partitions or 1

    def _send_arrow(self, rows: PhaseColumns) -> None:
        if self._partition is not None or self._partition_count() == 1:
            self._send_arrow_part(rows, self._partition)
            return
        part = sensor_partitions(rows.sensor, self._partition_count())
        if (part == part[0]).all():
            self._send_arrow_part(rows, int(part[0]))
            return
        order = np.argsort(part, kind="stable")  # each sensor's rows keep their order
        bounds = np.flatnonzero(np.diff(part[order])) + 1
        for group in np.split(order, bounds):
            self._send_arrow_part(rows.take(group), int(part[group[0]]))

    def _send_arrow_part(self, rows: PhaseColumns, partition: int | None) -> None:
        value = arrow_message(arrow_record_batch(rows))
        if len(value) > self.max_message_bytes:
            if len(rows) == 1:
                raise MessageTooLarge(
                    f"one sample ({rows.origin} row {rows.first_row + 1}) makes an Arrow message of "
                    f"{len(value):,} bytes, above the limit of {self.max_message_bytes:,}"
                )
            half = len(rows) // 2
            self._send_arrow_part(rows.slice(0, half), partition)
            self._send_arrow_part(rows.slice(half), partition)
            return
        sensors = pc.unique(rows.sensor)
        key = sensors[0].as_py().encode("utf-8") if len(sensors) == 1 else None
        self._pace()
        self._produce(key, value, [(CONTENT_TYPE_HEADER, ARROW_STREAM_CONTENT_TYPE.encode("ascii"))], len(rows),
                      partition)

    def _pace(self) -> None:
        if self.rate > 0 and self._started is not None:
            due = self._started + self.samples / self.rate
            while (wait := due - time.monotonic()) > 0:
                # Short naps keep delivery reports and progress flowing.
                self._producer.poll(min(wait, 0.1))
                self._report_progress()

    def _produce(self, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]] | None, n: int,
                 partition: int | None) -> None:
        partition = self._partition if partition is None else partition
        where = {} if partition is None else {"partition": partition}
        produce_waiting(self._producer, self.topic, value=value, key=key, headers=headers,
                        on_delivery=self._on_delivery, **where)
        self.messages += 1
        self.samples += n
        self._producer.poll(0)
        self._report_progress()

    def _on_delivery(self, err: KafkaError | None, _msg: Any) -> None:
        if err is None:
            self.delivered += 1
            return
        self.failed += 1
        if self.first_error is None:
            self.first_error = err.str()

    def _report_progress(self, force: bool = False) -> None:
        if self._on_progress is None:
            return
        now = time.monotonic()
        if force or now - self._last_progress >= self._progress_interval:
            self._last_progress = now
            self._on_progress(self)


# --------------------------------------------------------------------------
# The dataflow's source and sink live in their own modules; their names stay importable from here.

_MOVED = {"TopicSource": "connectors.topic_source", "IDLE_POLL": "connectors.topic_source",
          "_TopicPartitionReader": "connectors.topic_source", "TopicSink": "connectors.topic_sink",
          "TopicMessages": "connectors.topic_sink", "Shrink": "connectors.topic_sink",
          "_TopicSinkPartition": "connectors.topic_sink"}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
