"""The stream processor's own sections: ``source``, ``sink``, ``kafka`` and ``metrics``."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BeforeValidator, ConfigDict, Field, RootModel, model_validator

from schemas.config.values import (
    FILE_SUFFIXES,
    Micros,
    NonEmptyStr,
    Number,
    Port,
    PositiveSeconds,
    TopicName,
    _reject_bool,
    _Section,
)
from schemas.timebase import duration_to_micros, to_micros


SensorKind = Literal["steady", "drifting", "noise", "switching"]


class SyntheticSensor(_Section):
    """One generated sensor of the synthetic source.

    Kinds: ``steady`` a noiseless oscillator (coherent); ``drifting`` an
    oscillator whose phase random-walks (partial coherence); ``noise`` i.i.d.
    uniform random phases (never coherent); ``switching`` coherent, then
    noise, so it both collapses and dissipates.
    """

    name: NonEmptyStr
    """Sensor id."""
    kind: SensorKind
    freq_hz: Annotated[Number, Field(gt=0.0)] = 1.0
    """Oscillation frequency of the coherent kinds, Hz; below source.rate_hz / 2."""
    channels: Annotated[int, BeforeValidator(_reject_bool), Field(ge=1, le=1024)] = 1
    """Phase channels C."""
    cell: str | None = None
    """Cell label carried on the samples and events."""


def _default_sensors() -> tuple[SyntheticSensor, ...]:
    return (
        SyntheticSensor(name="steady-1", kind="steady"),
        SyntheticSensor(name="drift-1", kind="drifting"),
        SyntheticSensor(name="noise-1", kind="noise"),
        SyntheticSensor(name="switch-1", kind="switching"),
    )


def _utc_text(value: Any) -> Any:
    """Accept epoch seconds, an aware datetime or an ISO-8601 string with a zone."""
    if isinstance(value, bool):
        raise ValueError("must be an ISO-8601 time with a zone or epoch seconds")
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            raise ValueError("needs a zone (e.g. 'Z' or '+00:00')")
        value = value.isoformat()
    elif isinstance(value, _dt.date):
        raise ValueError("needs a time of day and a zone, e.g. '2025-01-01T00:00:00Z'")
    try:
        t_us = int(to_micros(value))
    except (ValueError, TypeError, OverflowError) as exc:
        raise ValueError(str(exc)) from None
    return _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc) + _dt.timedelta(microseconds=t_us)


def _epoch_micros(t: _dt.datetime) -> int:
    return int(to_micros(t))


def _period_micros(rate_hz: float) -> int:
    return duration_to_micros(1.0 / rate_hz)


class SyntheticSource(_Section):
    """``source.kind: synthetic``: generated phase streams (the demo)."""

    kind: Literal["synthetic"] = "synthetic"
    sensors: Annotated[tuple[SyntheticSensor, ...], Field(min_length=1)] = Field(
        default_factory=_default_sensors
    )
    rate_hz: Annotated[Number, Field(gt=0.0, le=1_000_000.0)] = 100.0
    """Samples per second per sensor (Hz)."""
    duration: PositiveSeconds = 120.0
    """Event time covered, seconds."""
    start: Annotated[_dt.datetime, BeforeValidator(_utc_text)] = _dt.datetime(
        2025, 1, 1, tzinfo=_dt.timezone.utc
    )
    """Event time of the first sample: ISO-8601 with a zone, or epoch seconds."""
    seed: Annotated[int, BeforeValidator(_reject_bool), Field(ge=0)] = 20250101
    """Random seed; the same seed gives the same samples."""

    start_us = Micros("start", _epoch_micros, doc="start in microseconds since the epoch.")
    duration_us = Micros("duration")
    period_us = Micros("rate_hz", _period_micros, doc="Sample period 1/rate_hz, rounded to whole microseconds.")


class KafkaSource(_Section):
    """``source.kind: kafka``: phase samples from a Kafka topic."""

    kind: Literal["kafka"] = "kafka"
    topic: TopicName = "becomingone.phases"
    group_id: NonEmptyStr = "becomingone"
    """Consumer group id."""
    from_beginning: bool = False
    """With no committed offset, start at the earliest offset (else the latest)."""
    max_message_bytes: Annotated[int, BeforeValidator(_reject_bool), Field(ge=1)] = 1_048_576
    """Larger message values, and Arrow messages that decompress to more, go to the
    dead-letter topic as `too_large`, bytes."""
    max_dead_letters_per_message: Annotated[int, BeforeValidator(_reject_bool), Field(ge=0)] = 100
    """Per-row dead letters of one message; its further bad rows are summed up in one record."""
    batch_size: Annotated[int, BeforeValidator(_reject_bool), Field(ge=1, le=1_000_000)] = 1000
    """Messages taken per poll of a partition (larger: more throughput, more latency)."""
    stop_at_end: bool = False
    """Stop when the end of every partition is reached (finite runs, tests); false = tail the topic."""


#: ``source.batch_rows`` of a file source by default (see docs/configuration.md).
FILE_BATCH_ROWS = 1_048_576


class FileSource(_Section):
    """``source.kind: file``: samples from a CSV, Parquet, Arrow IPC or JSON-lines file."""

    kind: Literal["file"] = "file"
    path: NonEmptyStr
    format: Literal["csv", "parquet", "arrow", "jsonl"] | None = None
    """File format; omitted = from the suffix of path."""
    batch_rows: Annotated[int, BeforeValidator(_reject_bool), Field(ge=1, le=16_777_216)] = FILE_BATCH_ROWS
    """Rows (JSON lines: lines) handed to the flow per call of the source.  Larger: more samples per
    sensor and call (a fleet's per-call costs shrink), more memory per call; results do not depend on it."""

    @model_validator(mode="before")
    @classmethod
    def _format_from_suffix(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("format") is None and isinstance(data.get("path"), str):
            guessed = FILE_SUFFIXES.get(Path(data["path"]).suffix.lower())
            if guessed is not None:
                data = {**data, "format": guessed}
        return data


_SOURCE_KINDS: dict[str, type[_Section]] = {
    "synthetic": SyntheticSource,
    "kafka": KafkaSource,
    "file": FileSource,
}

#: ``source``: one of the three kinds, chosen by ``source.kind``.
Source = Annotated[Union[SyntheticSource, KafkaSource, FileSource], Field(discriminator="kind")]


class SinkTopics(_Section):
    """``sink.topics``: output Kafka topics (SPEC section 4)."""

    collapse: TopicName = "becomingone.collapse"
    witness: TopicName = "becomingone.witness"
    sync: TopicName = "becomingone.sync"
    dlq: TopicName = "becomingone.dlq"
    mesh: TopicName = "becomingone.mesh"
    """Cell partial sums per mesh grid point (key = cell), when the mesh is on."""


class SinkSection(_Section):
    """``sink``: where results go.  Kafka topics are used when ``kafka`` is set."""

    topics: SinkTopics = Field(default_factory=SinkTopics)
    archive: bool = True
    """Write the Arrow archive (memory.*) at all."""
    dlq_max_original_bytes: Annotated[int, BeforeValidator(_reject_bool), Field(ge=0, le=16_777_216)] = 65_536
    """Bytes of the original value (and key) a dead letter carries at most; longer ones are cut."""


class KafkaSection(RootModel[dict[str, Any]]):
    """``kafka``: librdkafka client settings, passed through verbatim.

    ``bootstrap.servers`` is required; any other librdkafka property
    (``security.protocol``, ``ssl.*``, ``sasl.*``, ...) may be given with its
    dotted name as a plain key.  Set the section to null (the default) to run
    without Kafka.

    The keys of :data:`KAFKA_OWN_KEYS` are this project's, not librdkafka's,
    and are not passed on: ``unavailable_timeout`` (seconds, default 300; 0 =
    wait forever) is how long the flow keeps running while no broker answers.
    """

    model_config = ConfigDict(frozen=True)

    @property
    def bootstrap_servers(self) -> str:
        """The ``bootstrap.servers`` setting."""
        return str(self.root.get("bootstrap.servers", ""))

    @property
    def unavailable_timeout(self) -> float:
        """``unavailable_timeout``: seconds the flow waits for an unreachable cluster (0 = forever)."""
        return float(self.root.get("unavailable_timeout", DEFAULT_UNAVAILABLE_TIMEOUT))

    def client_settings(self) -> dict[str, str]:
        """A fresh librdkafka settings dict (values as strings, as librdkafka expects)."""
        return {k: _kafka_value_text(v) for k, v in self.root.items() if k not in KAFKA_OWN_KEYS}


#: Keys of the ``kafka`` section that are this project's settings, not librdkafka's.
KAFKA_OWN_KEYS = frozenset({"unavailable_timeout"})
DEFAULT_UNAVAILABLE_TIMEOUT = 300.0


def _kafka_value_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class WitnessNodeSection(_Section):
    """``witness_node``: what a ``becomingone.node: witness`` audits (SPEC section 7)."""

    topic: TopicName = "becomingone.witness"
    """The audited node's witness topic."""
    kafka: dict[str, Any] | None = None
    """librdkafka settings of the audited cluster; None = the node's own ``kafka`` section."""
    group_id: NonEmptyStr = "becomingone-witness"
    """Consumer group of the auditor."""
    node: NonEmptyStr = "becomingone"
    """The audited node: its ``becomingone.name``, the key of its witness-topic messages.
    Messages of other keys on the topic (other nodes' logs) are skipped."""
    from_beginning: bool = True
    """Without recovery state, read the topic from its oldest message (False: only new ones)."""
    stop_at_end: bool = False
    """End the run at the topic's end (an audit of what the topic holds) instead of tailing it."""
    window: Annotated[int, BeforeValidator(_reject_bool), Field(ge=1, le=10_000_000)] = 10_000
    """Records of the log remembered (their digests) to tell an exact repeat (Kafka's at-least-once)
    from another record under the same seq; also the most records held back behind a missing seq."""


class RelaySection(_Section):
    """``relay``: what a ``becomingone.node: relay`` copies, from one Kafka cluster to another.

    Each side has client settings of its own, in the shape of the ``kafka``
    section (librdkafka properties with their dotted names, plus
    ``unavailable_timeout``), so each side has its own TLS and SASL.
    """

    source: KafkaSection | None = None
    """librdkafka settings of the side read from; None = the node's own ``kafka`` section."""
    target: KafkaSection = Field(default_factory=lambda: KafkaSection({}))
    """librdkafka settings of the side written to (``bootstrap.servers`` required for a relay)."""
    topics: Annotated[tuple[TopicName, ...], Field(min_length=1)] = ("becomingone.mesh",)
    """Topics copied, each to the topic of the same name on the other side."""
    group_id: NonEmptyStr = "becomingone-relay"
    """Consumer group of the relay on the source side; its committed offsets are where a restart resumes."""
    from_beginning: bool = True
    """With no committed offset, start at the earliest offset (else the latest)."""
    batch_size: Annotated[int, BeforeValidator(_reject_bool), Field(ge=1, le=100_000)] = 1000
    """Messages copied per round: delivered to the target, then their offsets committed."""
    dedup_window: Annotated[int, BeforeValidator(_reject_bool), Field(ge=0, le=10_000_000)] = 10_000
    """Recent messages remembered per target partition to drop repeats (SHA-256 of topic, key, value); 0 = off."""


class MetricsSection(_Section):
    """``metrics``: the Prometheus endpoint."""

    enabled: bool = True
    bind: NonEmptyStr = "127.0.0.1"
    """Listen address (0.0.0.0 to expose outside the host or pod)."""
    port: Port = 9108
    per_sensor_labels: bool = False
    """Label series per sensor id; off by default because series grow with sensors."""


class ApiSection(_Section):
    """``api``: ``becomingone serve``, the read-only HTTP API over the archive."""

    bind: NonEmptyStr = "127.0.0.1"
    """Listen address (loopback by default; 0.0.0.0 to serve outside the host or pod)."""
    port: Port = 9110
    max_scan_rows: Annotated[int, BeforeValidator(_reject_bool), Field(ge=1)] = 5_000_000
    """A range query whose files hold more rows than this is refused (413) before a file is read."""
