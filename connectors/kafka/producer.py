"""The producer tool behind ``becomingone produce``: phase samples to the input topic, paced.

:class:`PhaseProducer` sends :class:`~connectors.phase_files.PhaseColumns`
to a topic in either input wire format of SPEC section 4 (one JSON message
per sample, or Arrow IPC stream messages of many samples), at a given rate,
and counts what was delivered.  The message encoders
(:func:`arrow_record_batch`, :func:`arrow_message`, :func:`json_messages`)
and the partition of a sensor (:func:`sensor_partitions`) are usable alone.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from confluent_kafka import KafkaError, Producer

from connectors.kafka.topics import TopicSetupError
from connectors.phase_files import PhaseColumns
from schemas.messages import ARROW_STREAM_CONTENT_TYPE, CONTENT_TYPE_HEADER, PhaseSample

__all__ = [
    "PHASE_BATCH_SCHEMA",
    "RAW_BATCH_SCHEMA",
    "MessageTooLarge",
    "PhaseProducer",
    "arrow_message",
    "arrow_record_batch",
    "json_messages",
    "produce_waiting",
    "sensor_partitions",
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
#: The same for raw samples (SPEC section 9): ``value`` in place of ``phase``.
RAW_BATCH_SCHEMA = PHASE_BATCH_SCHEMA.set(2, pa.field("value", pa.list_(pa.float64()), nullable=False))


class MessageTooLarge(ValueError):
    """One sample alone makes a message larger than the message limit."""


def arrow_record_batch(columns: PhaseColumns) -> pa.RecordBatch:
    """The rows as an Arrow record batch with :data:`PHASE_BATCH_SCHEMA`, then any extra columns.

    >>> import numpy as np
    >>> cols = PhaseColumns.from_numpy("pmu-7", np.array([1_764_115_200_125_000]), np.array([1.23]))
    >>> arrow_record_batch(cols).column("t")[0].value      # microseconds since the epoch
    1764115200125000
    """
    batch = pa.RecordBatch.from_arrays(
        [
            columns.sensor,
            pa.array(columns.t_us, pa.timestamp("us", tz="UTC")),
            columns.phase,
            columns.cell,
        ],
        schema=RAW_BATCH_SCHEMA if columns.raw else PHASE_BATCH_SCHEMA,
    )
    for name, values in columns.extra:  # after the four of the input format, which readers ignore
        batch = batch.append_column(pa.field(name, pa.float64()), pa.array(values, pa.float64()))
    return batch


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
        yield sensor.encode("utf-8"), PhaseSample(sensor, t_us, tuple(phase), cell, columns.raw).to_json_bytes()


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

