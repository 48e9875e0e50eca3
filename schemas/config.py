"""The BecomingONE configuration: one YAML file, validated by pydantic.

The sections and keys follow the seed project's configuration reference
(``becomingone``, ``kairos``, ``master``, ``emissary``, ``sync``, ``memory``,
``witnessing``, ``security``, ``logging``), hoisted to the top level so every
key has a short dotted path (``kairos.tau_scale``), plus the stream
processor's own sections ``source``, ``sink``, ``kafka`` and ``metrics``.

All durations are seconds in the file and exact integer microseconds at run
time: every section exposes ``*_us`` properties, and every rule that compares
or divides durations does so on whole microseconds (SPEC section 2), so a
config that passes here pairs samples and aligns grids exactly.

Entry points:

* :func:`load_config` - file (or ``$BECOMINGONE_CONFIG``, or the embedded
  default) plus ``BECOMINGONE__SECTION__KEY`` environment overrides;
* :func:`parse_config` - an in-memory mapping, no environment;
* :meth:`Config.to_yaml` - the effective config as YAML (round-trips).

Every problem is reported at once in one :class:`ConfigError`, one line per
problem, each naming the full key path and the reason.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import math
import os
import re
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    RootModel,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from schemas.timebase import duration_to_micros, to_micros

__all__ = [
    "CONFIG_ENV",
    "ENV_PREFIX",
    "MAX_CONFIG_NODES",
    "BecomingOneSection",
    "Config",
    "ConfigError",
    "EmissarySection",
    "FILE_BATCH_ROWS",
    "FileSource",
    "KafkaSection",
    "KafkaSource",
    "KairosSection",
    "LoggingSection",
    "MasterSection",
    "MemorySection",
    "MeshPeer",
    "MeshSection",
    "MetricsSection",
    "SecuritySection",
    "SinkSection",
    "SinkTopics",
    "Source",
    "StorageSection",
    "SyncSection",
    "SyntheticSensor",
    "SyntheticSource",
    "WitnessLayers",
    "WitnessingSection",
    "default_config_text",
    "load_config",
    "parse_config",
]

#: Environment variable naming the config file when no path is given.
CONFIG_ENV = "BECOMINGONE_CONFIG"
#: Prefix of per-key overrides: ``BECOMINGONE__KAIROS__TAU_SCALE=2.0``.
ENV_PREFIX = "BECOMINGONE__"
#: A config (or an override's value) may expand into at most this many YAML
#: nodes, an alias counted at every use: alias bombs are refused before they grow.
MAX_CONFIG_NODES = 100_000

WITNESS_LAYERS = ("micro", "meso", "macro", "meta")
#: Phase file formats (``source.format``) and the suffixes that name them.
FILE_FORMATS: tuple[str, ...] = ("csv", "parquet", "arrow", "jsonl")
FILE_SUFFIXES: dict[str, str] = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".arrow": "arrow",
    ".ipc": "arrow",
    ".feather": "arrow",
    ".arrows": "arrow",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
# Kafka's own rule for topic names (legal characters, at most 249 of them).
_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
# librdkafka property names: lower case words joined by dots or underscores.
_KAFKA_KEY_RE = re.compile(r"^[a-z][a-z0-9]*(?:[._][a-z0-9]+)*$")
# Settings whose values must not be printed by `becomingone config`.
_SECRET_KEY_RE = re.compile(r"password|secret|token|^ssl\.key\.pem$|^sasl\.oauthbearer\.config$")
REDACTED = "<redacted>"


# --------------------------------------------------------------------------
# Value types.  Durations are float seconds in the file; each must map to
# whole microseconds without collapsing to zero where zero is meaningless.


def _reject_bool(value: Any) -> Any:
    # YAML `yes`/`true` would otherwise become 1.0 seconds without a word.
    if isinstance(value, bool):
        raise ValueError("must be a number, not true/false")
    return value


def _in_time_base(value: float) -> int:
    try:
        return duration_to_micros(value)
    except ValueError:
        raise ValueError("is out of range for the microsecond time base") from None


def _positive_seconds(value: float) -> float:
    if value <= 0:
        raise ValueError("must be greater than 0 seconds")
    if _in_time_base(value) == 0:
        raise ValueError("rounds to 0 microseconds; durations resolve to whole microseconds")
    return value


def _non_negative_seconds(value: float) -> float:
    if value < 0:
        raise ValueError("must be 0 or greater (seconds)")
    _in_time_base(value)
    return value


#: A finite number (YAML booleans rejected).
Number = Annotated[float, BeforeValidator(_reject_bool), Field(allow_inf_nan=False)]
#: A duration in seconds that must be > 0 and at least 1 us after rounding.
PositiveSeconds = Annotated[Number, AfterValidator(_positive_seconds)]
#: A duration in seconds that may be 0.
NonNegativeSeconds = Annotated[Number, AfterValidator(_non_negative_seconds)]
Port = Annotated[int, BeforeValidator(_reject_bool), Field(ge=1, le=65535)]
NonEmptyStr = Annotated[str, Field(min_length=1)]


def _topic_name(value: str) -> str:
    if not _TOPIC_RE.match(value):
        raise ValueError("must be a Kafka topic name: 1-249 of letters, digits, '.', '_', '-'")
    return value


TopicName = Annotated[str, AfterValidator(_topic_name)]


class _Section(BaseModel):
    """Base of every config model: unknown keys are errors, values immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------
# Sections from the seed's configuration reference.


class BecomingOneSection(_Section):
    """``becomingone``: the node's identity."""

    name: str = "becomingone"
    """Node name; labels metrics, Kafka client ids and mesh sync records."""
    max_sensors: Annotated[int, BeforeValidator(_reject_bool), Field(ge=1)] = 100_000
    """Live sensors per process; samples of sensors beyond it are dead letters `capacity`.
    Idle sensors' windows are released and stop counting (docs/pipeline.md)."""
    key_groups: Annotated[int, BeforeValidator(_reject_bool), Field(ge=1, le=65_536)] = 16
    """Sensors are hashed into this many key groups, the unit of state placed on a worker.
    More groups spread sensors more evenly over workers; fewer mean fewer, larger
    activations (each costs a fixed ~0.1 ms).  Keep it fixed for the life of a
    recovery store."""

    @field_validator("name")
    @classmethod
    def _name_is_label(cls, value: str) -> str:
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", value):
            raise ValueError(
                "must start with a letter or digit and use only letters, digits, '.', '_', '-' "
                "(it names Kafka clients and metrics)"
            )
        return value


class KairosSection(_Section):
    """``kairos``: the resonance estimator T_tau (SPEC section 2)."""

    tau_scale: PositiveSeconds = 1.0
    """Lag tau_bar between the two velocities of a product, seconds."""
    velocity_span: NonNegativeSeconds = 0.1
    """Span d of the phase-velocity difference, seconds; 0 = previous sample."""
    omega: Number = 0.0
    """Kernel angular frequency, rad/s; selects the lag-product component rotating at omega."""
    coherence_threshold: Annotated[Number, Field(gt=0.0, le=1.0)] = 0.95
    """I_c: collapse when |T_sync|^2 reaches it; dimensionless in (0, 1]."""
    max_gap: PositiveSeconds = 5.0
    """A sample more than this after its predecessor starts a new chain, seconds."""
    channel_weights: tuple[Annotated[Number, Field(ge=0.0)], ...] | None = None
    """Weights of the phase channels (normalised to sum 1); null = uniform."""

    @property
    def tau_us(self) -> int:
        """tau_scale in microseconds."""
        return duration_to_micros(self.tau_scale)

    @property
    def velocity_span_us(self) -> int:
        """velocity_span in microseconds."""
        return duration_to_micros(self.velocity_span)

    @property
    def max_gap_us(self) -> int:
        """max_gap in microseconds."""
        return duration_to_micros(self.max_gap)


class MasterSection(_Section):
    """``master``: the slow transducer (long window, pane memory)."""

    enabled: bool = True
    """Kept from the seed; must be true (the sync joins both transducers)."""
    tau_max: PositiveSeconds = 3600.0
    """Window length W, seconds; a whole multiple of witness_interval."""
    witness_interval: PositiveSeconds = 0.1
    """Emission grid spacing (and pane length), seconds."""
    min_span: NonNegativeSeconds = 10.0
    """Maturity: product time span the Master needs before any collapse, seconds."""

    @property
    def tau_max_us(self) -> int:
        """tau_max in microseconds."""
        return duration_to_micros(self.tau_max)

    @property
    def witness_interval_us(self) -> int:
        """witness_interval (the pane length) in microseconds."""
        return duration_to_micros(self.witness_interval)

    @property
    def min_span_us(self) -> int:
        """min_span in microseconds."""
        return duration_to_micros(self.min_span)

    @property
    def n_panes(self) -> int:
        """Panes in the Master's window: tau_max / witness_interval (exact once validated)."""
        return self.tau_max_us // self.witness_interval_us


class EmissarySection(_Section):
    """``emissary``: the fast transducer."""

    enabled: bool = True
    """Kept from the seed; must be true (the sync joins both transducers)."""
    tau_max: PositiveSeconds = 1.0
    """Window length W, seconds."""
    witness_interval: PositiveSeconds = 0.01
    """Emission grid spacing, seconds; the sync runs on this grid."""

    @property
    def tau_max_us(self) -> int:
        """tau_max in microseconds."""
        return duration_to_micros(self.tau_max)

    @property
    def witness_interval_us(self) -> int:
        """witness_interval in microseconds."""
        return duration_to_micros(self.witness_interval)


class MeshPeer(_Section):
    """One mesh peer: ``{host, port}``."""

    host: NonEmptyStr
    port: Port


class MeshSection(_Section):
    """``sync.mesh``: peers exchanging T_sync."""

    peers: tuple[MeshPeer, ...] = ()


class SyncSection(_Section):
    """``sync``: collapse decision and event time (SPEC section 3)."""

    phase_threshold: Annotated[Number, Field(gt=0.0)] = 0.1
    """Collapse needs delta_phase = ||T_master| - |T_emissary|| below this (dimensionless)."""
    hysteresis: Annotated[Number, Field(ge=0.0)] = 0.05
    """Dissipate only when |T_sync|^2 < coherence_threshold - hysteresis."""
    lateness: NonNegativeSeconds = 0.0
    """Watermark = newest event time - lateness, seconds."""
    max_future: PositiveSeconds = 60.0
    """Samples further than this ahead of wall-clock time are rejected (`future`), seconds."""
    publish_interval: PositiveSeconds = 1.0
    """Event-time interval of the T_sync feed (sync topic, mesh_sync), seconds."""
    mesh_enabled: bool = False
    """Exchange T_sync with the mesh peers."""
    mesh: MeshSection = Field(default_factory=MeshSection)

    @property
    def lateness_us(self) -> int:
        """lateness in microseconds."""
        return duration_to_micros(self.lateness)

    @property
    def max_future_us(self) -> int:
        """max_future in microseconds."""
        return duration_to_micros(self.max_future)

    @property
    def publish_interval_us(self) -> int:
        """publish_interval in microseconds."""
        return duration_to_micros(self.publish_interval)


class StorageSection(_Section):
    """``memory.storage``: where the Arrow archive lives."""

    type: Literal["arrow"] = "arrow"
    """Archive format: hive-partitioned Arrow IPC files (the seed's temporal store)."""
    path: NonEmptyStr = "./becomingone-data"
    """Archive root directory (relative paths: to the working directory)."""


#: Fewest bytes a ``memory.signing_key`` may have.
SIGNING_KEY_MIN_BYTES = 16


class SigningKeySource(_Section):
    """``memory.signing_key``: where the archive's HMAC key comes from, never the key itself.

    Exactly one of ``env`` (the name of an environment variable holding the
    key: its UTF-8 bytes) or ``file`` (a file holding the key: its bytes,
    less one trailing newline).  The key is read when it is used and never
    kept in the config, so ``becomingone config`` cannot print it.
    """

    env: NonEmptyStr | None = None
    file: NonEmptyStr | None = None

    @model_validator(mode="after")
    def _one_readable_source(self) -> SigningKeySource:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of env (an environment variable's name) or file (a path)")
        self.resolve()  # a key that cannot be read is a config error at start
        return self

    def resolve(self) -> bytes:
        """The key's bytes; ValueError (saying where, never what) if it cannot be read or is too short."""
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise ValueError(f"environment variable {self.env} is not set")
            key, where = value.encode("utf-8"), f"environment variable {self.env}"
        else:
            try:
                key = Path(self.file).read_bytes()
            except OSError as exc:
                raise ValueError(f"cannot read {self.file}: {exc.strerror or exc}") from None
            key, where = key[:-1] if key.endswith(b"\n") else key, self.file
        if len(key) < SIGNING_KEY_MIN_BYTES:
            raise ValueError(f"{where} holds {len(key)} bytes; a signing key needs at least {SIGNING_KEY_MIN_BYTES}")
        return key


class MemorySection(_Section):
    """``memory``: the Arrow archive (SPEC section 5)."""

    temporal_signatures: bool = True
    """Archive ``temporal_signatures/`` (per sensor and transducer, every signature_interval)."""
    coherence_history: bool = True
    """Archive ``coherence_history/``."""
    witness_logs: bool = True
    """Archive ``witnessing_logs/``."""
    events: bool = True
    """Archive ``events/`` (collapse and dissipate transitions)."""
    mesh_sync: bool = True
    """Archive ``mesh_sync/`` (the T_sync feed)."""
    archive_input: bool = True
    """Archive the accepted raw samples in ``input/`` (what replay reads)."""
    signature_interval: PositiveSeconds = 1.0
    """Event-time grid of temporal_signatures and coherence_history, seconds."""
    flush_rows: Annotated[int, BeforeValidator(_reject_bool), Field(ge=1)] = 100_000
    """Write a dataset's buffered rows to a file once this many are waiting."""
    flush_interval: PositiveSeconds = 5.0
    """... or once the oldest buffered row has waited this long (checked when rows arrive), seconds."""
    storage: StorageSection = Field(default_factory=StorageSection)
    signing_key: SigningKeySource | None = None
    """HMAC key of the manifest lines: ``{env: NAME}`` or ``{file: PATH}``; None: lines are not signed."""

    @property
    def signing_key_bytes(self) -> bytes | None:
        """The key of ``signing_key``, read now, or None without one."""
        return None if self.signing_key is None else self.signing_key.resolve()

    @property
    def datasets(self) -> tuple[str, ...]:
        """The archive datasets switched on here (``sink.archive`` decides whether anything is archived)."""
        return tuple(name for name, on in (
            ("temporal_signatures", self.temporal_signatures), ("coherence_history", self.coherence_history),
            ("witnessing_logs", self.witness_logs), ("events", self.events), ("mesh_sync", self.mesh_sync),
            ("input", self.archive_input)) if on)

    @property
    def signature_interval_us(self) -> int:
        """signature_interval in microseconds."""
        return duration_to_micros(self.signature_interval)

    @property
    def root(self) -> Path:
        """The archive root directory."""
        return Path(self.storage.path)


class WitnessLayers(_Section):
    """``witnessing.layers``: one switch per layer.

    The seed's list form (``layers: [micro, meso, macro, meta]``) is accepted
    too: listed layers are on, the others off.
    """

    micro: bool = True
    """Per operator batch: items in/out, seconds, drops."""
    meso: bool = True
    """Per transducer emission, sampled every witnessing.meso_interval."""
    macro: bool = True
    """Per collapse event: the full sync snapshot."""
    meta: bool = True
    """The witness observing itself: records per layer, running SHA-256."""

    @model_validator(mode="before")
    @classmethod
    def _from_seed_list(cls, data: Any) -> Any:
        if not isinstance(data, (list, tuple)):
            return data
        names = [str(x) for x in data]
        unknown = [x for x in names if x not in WITNESS_LAYERS]
        if unknown:
            hints = [_suggestion(x, WITNESS_LAYERS) for x in unknown]
            raise ValueError(
                "names unknown layer(s) "
                + ", ".join(f"{x!r}{h}" for x, h in zip(unknown, hints))
                + "; the layers are micro, meso, macro, meta"
            )
        return {layer: layer in names for layer in WITNESS_LAYERS}


class WitnessingSection(_Section):
    """``witnessing``: the witness topic and log."""

    enabled: bool = True
    """Master switch: false emits no witness records at all."""
    layers: WitnessLayers = Field(default_factory=WitnessLayers)
    meso_interval: PositiveSeconds = 1.0
    """Meso sampling: a transducer emission is witnessed when its grid time is a
    multiple of this, seconds; a whole multiple of emissary.witness_interval."""
    meta_every: Annotated[int, BeforeValidator(_reject_bool), Field(ge=1)] = 1000
    """A meta record (the witness observing itself) after this many records, and at end of input."""

    @property
    def meso_interval_us(self) -> int:
        """meso_interval in microseconds."""
        return duration_to_micros(self.meso_interval)

    def layer_enabled(self, layer: str) -> bool:
        """True when records of ``layer`` (micro|meso|macro|meta) are emitted."""
        if layer not in WITNESS_LAYERS:
            raise ValueError(f"unknown witness layer {layer!r}")
        return self.enabled and bool(getattr(self.layers, layer))


class SecuritySection(_Section):
    """``security``: transport security of mesh peer connections.

    Kafka's own TLS/SASL settings live in the ``kafka`` section.
    """

    intrinsic: bool = True
    """The seed's 'thermodynamic security' flag; recorded, no effect on the pipeline."""
    transport: Literal["tls", "plaintext"] = "tls"
    node_auth: Literal["mutual_tls", "none"] = "mutual_tls"


class LoggingSection(_Section):
    """``logging``."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    format: Literal["structured", "text"] = "structured"
    """structured = one JSON object per line; text = human-readable lines."""
    witness_logs: bool = False
    """Also write witness records to the log."""

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


# --------------------------------------------------------------------------
# Source, sink, Kafka and metrics.

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

    @property
    def start_us(self) -> int:
        """start in microseconds since the epoch."""
        return int(to_micros(self.start))

    @property
    def duration_us(self) -> int:
        """duration in microseconds."""
        return duration_to_micros(self.duration)

    @property
    def period_us(self) -> int:
        """Sample period 1/rate_hz, rounded to whole microseconds."""
        return duration_to_micros(1.0 / self.rate_hz)


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


class MetricsSection(_Section):
    """``metrics``: the Prometheus endpoint."""

    enabled: bool = True
    bind: NonEmptyStr = "127.0.0.1"
    """Listen address (0.0.0.0 to expose outside the host or pod)."""
    port: Port = 9108
    per_sensor_labels: bool = False
    """Label series per sensor id; off by default because series grow with sensors."""


# --------------------------------------------------------------------------
# The whole config.


class Config(_Section):
    """The whole BecomingONE configuration (immutable once validated)."""

    becomingone: BecomingOneSection = Field(default_factory=BecomingOneSection)
    kairos: KairosSection = Field(default_factory=KairosSection)
    master: MasterSection = Field(default_factory=MasterSection)
    emissary: EmissarySection = Field(default_factory=EmissarySection)
    sync: SyncSection = Field(default_factory=SyncSection)
    memory: MemorySection = Field(default_factory=MemorySection)
    witnessing: WitnessingSection = Field(default_factory=WitnessingSection)
    security: SecuritySection = Field(default_factory=SecuritySection)
    logging: LoggingSection = Field(default_factory=LoggingSection)
    source: Source = Field(default_factory=SyntheticSource)
    sink: SinkSection = Field(default_factory=SinkSection)
    kafka: KafkaSection | None = None
    metrics: MetricsSection = Field(default_factory=MetricsSection)

    @model_validator(mode="after")
    def _cross_field_rules(self) -> Config:
        problems = _rule_problems({name: getattr(self, name) for name in type(self).model_fields})
        if problems:
            raise _RuleViolations(problems)
        return self

    def to_yaml(self, *, redact_secrets: bool = False) -> str:
        """The effective config as YAML; ``load_config`` of it gives an equal Config.

        Args:
            redact_secrets: replace Kafka passwords, secrets, tokens and private
                keys by ``<redacted>`` (for display; the result no longer
                round-trips those values).
        """
        data = self.model_dump(mode="json")
        if redact_secrets and data.get("kafka"):
            data["kafka"] = {
                k: (REDACTED if _SECRET_KEY_RE.search(k) else v) for k, v in data["kafka"].items()
            }
        return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)


# --------------------------------------------------------------------------
# Problems and the error that carries them.


class ConfigError(ValueError):
    """Every problem of a config at once, one line each.

    Attributes:
        problems: one message per problem; each names the full key path (or
            the file, or the environment variable) and the reason.
        source: where the config came from (file path, environment, default).
    """

    def __init__(self, problems: Iterable[str], source: str | None = None) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        self.source = source
        n = len(self.problems)
        if source is not None and n > 1:
            text = f"{source}: {n} problems\n" + "\n".join(f"  {p}" for p in self.problems)
        elif source is not None and n == 1 and not self.problems[0].startswith(source):
            text = f"{source}: {self.problems[0]}"
        else:
            text = "\n".join(self.problems)
        super().__init__(text)


class _RuleViolations(ValueError):
    """Cross-field problems raised from inside pydantic validation."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("\n".join(text for _, text in problems))
        self.problems = problems


def _fmt(value: Any) -> str:
    """A config value as the user wrote it, short."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, _dt.datetime):
        return value.isoformat()
    if isinstance(value, (int, float)):
        return repr(value)
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _suggestion(word: str, candidates: Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


# --------------------------------------------------------------------------
# Cross-field rules.  Each rule names the keys it reads and runs whenever those
# keys are valid, even if other keys of the same file are not, so one report
# shows every problem.  All duration arithmetic is on whole microseconds.

_Rule = Callable[[Any], Iterator[tuple[str, str]]]
_RULES: list[tuple[tuple[str, ...], _Rule]] = []


def _rule(*keys: str) -> Callable[[_Rule], _Rule]:
    """Register a rule reading ``keys`` (dotted paths) of the config ``c``."""

    def register(fn: _Rule) -> _Rule:
        _RULES.append((keys, fn))
        return fn

    return register


def _blocked(key: str, failed: Iterable[str]) -> bool:
    """True when ``key``, a parent or a child of it has a problem already."""
    for bad in failed:
        if bad == key or bad.startswith((key + ".", key + "[")) or key.startswith(bad + "."):
            return True
    return False


def _rule_problems(sections: Mapping[str, Any], failed: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    """Problems found by the rules whose keys are all valid.

    Args:
        sections: section name -> validated section (absent when invalid).
        failed: key paths that already have a problem.
    """
    c = types.SimpleNamespace(**sections)
    problems: list[tuple[str, str]] = []
    for keys, rule in _RULES:
        if all(k.split(".")[0] in sections and not _blocked(k, failed) for k in keys):
            problems.extend(rule(c))
    return problems


def _smaller(a_path: str, a: float, b_path: str, b: float) -> Iterator[tuple[str, str]]:
    a_us, b_us = duration_to_micros(a), duration_to_micros(b)
    if a_us >= b_us:
        why = f" (both are {a_us} us)" if a < b else ""
        yield a_path, f"{a_path} ({_fmt(a)}) must be smaller than {b_path} ({_fmt(b)}){why}"


def _whole_multiple(a_path: str, a: float, b_path: str, b: float, why: str) -> Iterator[tuple[str, str]]:
    a_us, b_us = duration_to_micros(a), duration_to_micros(b)
    if a_us % b_us:
        yield a_path, f"{a_path} ({_fmt(a)}) must be a whole multiple of {b_path} ({_fmt(b)}): {why}"


@_rule("kairos.velocity_span", "kairos.tau_scale")
def _velocity_span_below_tau(c: Any) -> Iterator[tuple[str, str]]:
    # The two velocity spans of a lag product must not share a sample.
    yield from _smaller("kairos.velocity_span", c.kairos.velocity_span, "kairos.tau_scale", c.kairos.tau_scale)


@_rule("kairos.channel_weights")
def _channel_weights_usable(c: Any) -> Iterator[tuple[str, str]]:
    w = c.kairos.channel_weights
    if w is not None and (len(w) == 0 or sum(w) <= 0):
        yield (
            "kairos.channel_weights",
            f"kairos.channel_weights ({_fmt(list(w))}) must be null or a non-empty list with a positive sum",
        )


@_rule("master.tau_max", "master.witness_interval")
def _master_window_is_panes(c: Any) -> Iterator[tuple[str, str]]:
    yield from _whole_multiple(
        "master.tau_max", c.master.tau_max, "master.witness_interval", c.master.witness_interval,
        "the Master keeps one pane per emission interval, so its window must be a union of panes",
    )


@_rule("master.min_span", "master.tau_max")
def _master_can_mature(c: Any) -> Iterator[tuple[str, str]]:
    # Products in the window (g - W, g] span strictly less than W, so a
    # min_span of W or more could never be reached.
    if c.master.min_span_us >= c.master.tau_max_us:
        yield (
            "master.min_span",
            f"master.min_span ({_fmt(c.master.min_span)}) must be smaller than master.tau_max "
            f"({_fmt(c.master.tau_max)}): products in a window of length tau_max span less than "
            "tau_max, so the Master would never mature",
        )


@_rule("master.witness_interval", "emissary.witness_interval")
def _grids_nest(c: Any) -> Iterator[tuple[str, str]]:
    yield from _whole_multiple(
        "master.witness_interval", c.master.witness_interval,
        "emissary.witness_interval", c.emissary.witness_interval,
        "every Master grid point must be an Emissary grid point",
    )


@_rule("master.enabled")
def _master_on(c: Any) -> Iterator[tuple[str, str]]:
    if not c.master.enabled:
        yield "master.enabled", "master.enabled (false) is not supported: the sync joins the Master and the Emissary"


@_rule("emissary.enabled")
def _emissary_on(c: Any) -> Iterator[tuple[str, str]]:
    if not c.emissary.enabled:
        yield "emissary.enabled", "emissary.enabled (false) is not supported: the sync joins the Master and the Emissary"


@_rule("memory.signature_interval", "master.witness_interval")
def _signatures_on_master_grid(c: Any) -> Iterator[tuple[str, str]]:
    yield from _whole_multiple(
        "memory.signature_interval", c.memory.signature_interval,
        "master.witness_interval", c.master.witness_interval,
        "signatures are taken on Master grid points",
    )


@_rule("sync.hysteresis", "kairos.coherence_threshold")
def _hysteresis_below_threshold(c: Any) -> Iterator[tuple[str, str]]:
    if not c.sync.hysteresis < c.kairos.coherence_threshold:
        yield (
            "sync.hysteresis",
            f"sync.hysteresis ({_fmt(c.sync.hysteresis)}) must be smaller than "
            f"kairos.coherence_threshold ({_fmt(c.kairos.coherence_threshold)})",
        )


@_rule("sync.publish_interval", "emissary.witness_interval")
def _publish_on_emissary_grid(c: Any) -> Iterator[tuple[str, str]]:
    yield from _whole_multiple(
        "sync.publish_interval", c.sync.publish_interval,
        "emissary.witness_interval", c.emissary.witness_interval,
        "T_sync exists only on Emissary grid points",
    )


@_rule("witnessing.meso_interval", "emissary.witness_interval")
def _meso_on_emissary_grid(c: Any) -> Iterator[tuple[str, str]]:
    yield from _whole_multiple(
        "witnessing.meso_interval", c.witnessing.meso_interval,
        "emissary.witness_interval", c.emissary.witness_interval,
        "meso samples are taken on Emissary grid points",
    )


@_rule("security.node_auth", "security.transport")
def _mutual_tls_needs_tls(c: Any) -> Iterator[tuple[str, str]]:
    if c.security.node_auth == "mutual_tls" and c.security.transport != "tls":
        yield (
            "security.node_auth",
            f"security.node_auth ('mutual_tls') needs security.transport 'tls', not {c.security.transport!r}",
        )


@_rule("kafka")
def _kafka_settings(c: Any) -> Iterator[tuple[str, str]]:
    if c.kafka is None:
        return
    settings = c.kafka.root
    for key, value in settings.items():
        path = f"kafka.{key}"
        if not _KAFKA_KEY_RE.match(key):
            yield path, f"{path}: not a librdkafka property name (lower case words joined by '.')"
        elif key == "group.id":
            yield path, f"{path}: set source.group_id instead (the consumer group belongs to the source)"
        elif key == "unavailable_timeout":
            yield from _unavailable_timeout_problems(path, value)
        elif isinstance(value, (dict, list, tuple)) or value is None:
            yield path, f"{path} ({_fmt(value)}) must be a string, number or true/false"
    servers = settings.get("bootstrap.servers")
    if not isinstance(servers, str) or not servers.strip():
        yield "kafka.bootstrap.servers", "kafka.bootstrap.servers: required (e.g. 'localhost:9092') when kafka is set"


def _unavailable_timeout_problems(path: str, value: Any) -> Iterator[tuple[str, str]]:
    try:
        seconds = None if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        seconds = None
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        yield path, (f"{path} ({_fmt(value)}) must be a number of seconds, 0 or more "
                     "(how long the flow runs while no Kafka broker answers; 0 = wait forever)")


@_rule("source.kind", "kafka")
def _kafka_source_needs_kafka(c: Any) -> Iterator[tuple[str, str]]:
    if isinstance(c.source, KafkaSource) and c.kafka is None:
        yield "kafka", "kafka: required when source.kind is 'kafka' (set kafka.bootstrap.servers)"


@_rule("source.kind", "source.topic", "sink.topics")
def _topics_distinct(c: Any) -> Iterator[tuple[str, str]]:
    seen: dict[str, str] = {}
    if isinstance(c.source, KafkaSource):
        seen[c.source.topic] = "source.topic"
    for name in SinkTopics.model_fields:
        topic = getattr(c.sink.topics, name)
        path = f"sink.topics.{name}"
        if topic in seen:
            yield path, f"{path} ({topic!r}) is already used by {seen[topic]}"
        else:
            seen[topic] = path


@_rule("source.kind", "source.sensors")
def _synthetic_sensor_names_unique(c: Any) -> Iterator[tuple[str, str]]:
    if not isinstance(c.source, SyntheticSource):
        return
    seen: set[str] = set()
    for i, sensor in enumerate(c.source.sensors):
        if sensor.name in seen:
            path = f"source.sensors[{i}].name"
            yield path, f"{path} ({sensor.name!r}) is used by an earlier sensor"
        seen.add(sensor.name)


@_rule("source.kind", "source.sensors", "source.rate_hz")
def _synthetic_below_nyquist(c: Any) -> Iterator[tuple[str, str]]:
    if not isinstance(c.source, SyntheticSource):
        return
    for i, sensor in enumerate(c.source.sensors):
        if not sensor.freq_hz < c.source.rate_hz / 2:
            path = f"source.sensors[{i}].freq_hz"
            yield path, (
                f"{path} ({_fmt(sensor.freq_hz)}) must be below half of source.rate_hz "
                f"({_fmt(c.source.rate_hz)}), the Nyquist frequency"
            )


@_rule("source.kind", "source.rate_hz", "kairos.max_gap")
def _synthetic_rate_keeps_chains(c: Any) -> Iterator[tuple[str, str]]:
    if isinstance(c.source, SyntheticSource) and c.source.period_us > c.kairos.max_gap_us:
        yield (
            "source.rate_hz",
            f"source.rate_hz ({_fmt(c.source.rate_hz)}) gives a sample period longer than "
            f"kairos.max_gap ({_fmt(c.kairos.max_gap)}): every sample would start a new chain",
        )


@_rule("source.kind", "source.sensors", "kairos.channel_weights")
def _synthetic_channels_match_weights(c: Any) -> Iterator[tuple[str, str]]:
    if not isinstance(c.source, SyntheticSource) or c.kairos.channel_weights is None:
        return
    n = len(c.kairos.channel_weights)
    for i, sensor in enumerate(c.source.sensors):
        if sensor.channels != n:
            path = f"source.sensors[{i}].channels"
            yield path, f"{path} ({sensor.channels}) must equal the number of kairos.channel_weights ({n})"


@_rule("source.kind", "source.path", "source.format")
def _file_format_known(c: Any) -> Iterator[tuple[str, str]]:
    if isinstance(c.source, FileSource) and c.source.format is None:
        yield (
            "source.format",
            f"source.format: cannot tell from the suffix of source.path ({c.source.path!r}); "
            f"set it to one of {', '.join(FILE_FORMATS)}",
        )


# --------------------------------------------------------------------------
# Walking the model: pydantic error locations and environment variable names
# both become dotted key paths by descending the same annotations.


def _shape(annotation: Any) -> tuple[str, Any]:
    """Classify an annotation: model, union (tag -> model), mapping, sequence or leaf."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _shape(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return _shape(members[0])
        if all(isinstance(m, type) and issubclass(m, _Section) and "kind" in m.model_fields for m in members):
            return "union", {get_args(m.model_fields["kind"].annotation)[0]: m for m in members}
        return "leaf", annotation
    if isinstance(annotation, type) and issubclass(annotation, RootModel):
        return "mapping", annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "model", annotation
    if origin is tuple:
        return "sequence", get_args(annotation)[0]
    return "leaf", annotation


def _join(parts: list[str]) -> str:
    out = ""
    for part in parts:
        out += part if part.startswith("[") or not out else "." + part
    return out


def _locate(loc: tuple[Any, ...]) -> tuple[str, type[BaseModel] | None]:
    """A pydantic error location as a dotted key path, and the model owning its last key."""
    shape, target = "model", Config
    parts: list[str] = []
    owner: type[BaseModel] | None = None
    for item in loc:
        if shape == "union" and item in target:
            shape, target = "model", target[item]  # the discriminator tag, not a key
            continue
        owner = target if shape == "model" else None
        parts.append(f"[{item}]" if isinstance(item, int) else str(item))
        if shape == "model" and item in target.model_fields:
            shape, target = _shape(target.model_fields[item].annotation)
        elif shape == "sequence" and isinstance(item, int):
            shape, target = _shape(target)
        else:
            shape, target = "leaf", None
    return _join(parts), owner


_PLAIN_REASONS = {
    "missing": "required key is missing",
    "model_type": "must be a mapping of keys",
    "model_attributes_type": "must be a mapping of keys",
    "dict_type": "must be a mapping of keys",
    "tuple_type": "must be a list",
    "list_type": "must be a list",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "string_type": "must be a string",
    "finite_number": "must be a finite number",
}


def _too_short(err: Mapping[str, Any]) -> str:
    n = (err.get("ctx") or {}).get("min_length", 1)
    return f"must have at least {n} item{'s' if n != 1 else ''}"


def _pydantic_problems(exc: ValidationError) -> tuple[list[tuple[str, str]], bool]:
    """(path, message) per error, and whether the cross-field rules ran."""
    problems: list[tuple[str, str]] = []
    rules_ran = False
    for err in exc.errors(include_url=False):
        error = (err.get("ctx") or {}).get("error")
        if isinstance(error, _RuleViolations):
            problems.extend(error.problems)
            rules_ran = True
            continue
        path, owner = _locate(tuple(err["loc"]))
        kind = err["type"]
        if kind == "extra_forbidden":
            key = str(err["loc"][-1])
            if owner is BecomingOneSection and key in Config.model_fields:
                hint = f" (sections are top level here: move {key!r} out of 'becomingone')"
            elif owner in _SOURCE_KINDS.values() and key not in owner.model_fields and any(
                key in other.model_fields for other in _SOURCE_KINDS.values()
            ):
                kinds = [k for k, other in _SOURCE_KINDS.items() if key in other.model_fields]
                own = get_args(owner.model_fields["kind"].annotation)[0]
                hint = f" (a key of source.kind {kinds[0]!r}, but source.kind is {own!r})"
            else:
                hint = _suggestion(key, owner.model_fields if owner else ())
            problems.append((path, f"{path}: unknown key{hint}"))
            continue
        if kind == "missing":
            problems.append((path, f"{path}: required key is missing"))
            continue
        if kind in ("union_tag_invalid", "union_tag_not_found"):
            tags = (err.get("ctx") or {}).get("expected_tags") or "'synthetic', 'kafka', 'file'"
            if kind == "union_tag_invalid":
                tag = err["ctx"]["tag"]
                problems.append((f"{path}.kind", f"{path}.kind ({tag!r}) must be one of {tags}"))
            else:
                problems.append((f"{path}.kind", f"{path}.kind: required key is missing (one of {tags})"))
            continue
        if kind == "value_error" and error is not None:
            reason = str(error)
        elif kind == "literal_error":
            reason = f"must be one of {err['ctx']['expected']}"
        elif kind == "too_short":
            reason = _too_short(err)
        elif kind in _PLAIN_REASONS:
            reason = _PLAIN_REASONS[kind]
        else:
            reason = re.sub(r"^Input should (?:be )?", "must be ", err["msg"])
        if kind in ("model_type", "dict_type") and isinstance(err.get("input"), (list, tuple)) and owner:
            reason = "must be a mapping of keys, not a list"
        shown = _fmt(err.get("input"))
        if path.startswith("memory.signing_key") and not isinstance(err.get("input"), Mapping):
            # Perhaps the key itself, put where its source belongs: never echoed.
            shown = REDACTED
            if kind in ("model_type", "dict_type"):
                reason = "must be {env: NAME} or {file: PATH}; the key itself never goes in the config"
        problems.append((path, f"{path} ({shown}) {reason}"))
    return problems, rules_ran


# --------------------------------------------------------------------------
# Validation of a raw mapping, with problems collected across sections.

_SECTION_ADAPTERS: dict[str, TypeAdapter[Any]] = {}


def _section_adapter(name: str) -> TypeAdapter[Any]:
    if name not in _SECTION_ADAPTERS:
        field = Config.model_fields[name]
        annotation = field.annotation
        if field.discriminator:
            annotation = Annotated[annotation, Field(discriminator=field.discriminator)]
        _SECTION_ADAPTERS[name] = TypeAdapter(annotation)
    return _SECTION_ADAPTERS[name]


def _validate(raw: Mapping[str, Any], source: str, origins: Mapping[str, str]) -> Config:
    # A section left empty in YAML (`kairos:` with every key commented out)
    # is null: read it as "all defaults".  `kafka: null` keeps its meaning.
    raw = {k: v for k, v in raw.items() if v is not None or k == "kafka" or k not in Config.model_fields}
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        problems, rules_ran = _pydantic_problems(exc)
    # pydantic skips the cross-field rules when any field failed; run them on
    # the keys that are valid so that every problem shows in one report.
    if not rules_ran:
        failed = frozenset(path for path, _ in problems)
        sections = _salvage_sections(raw, failed)
        seen = {text for _, text in problems}
        problems.extend(p for p in _rule_problems(sections, failed) if p[1] not in seen)
    raise ConfigError([_with_origin(path, text, origins) for path, text in problems], source)


def _salvage_sections(raw: Mapping[str, Any], failed: frozenset[str]) -> dict[str, Any]:
    """Each section validated without its failing keys (those fall back to defaults).

    Rules reading a failing key are skipped by :func:`_blocked`, so the
    defaults only stand in for keys that no running rule looks at.
    """
    sections: dict[str, Any] = {}
    for name, field in Config.model_fields.items():
        if name not in raw:
            sections[name] = field.get_default(call_default_factory=True)
            continue
        value = raw[name]
        bad = [p[len(name):] for p in failed if p == name or p.startswith((name + ".", name + "["))]
        if "" in bad:
            continue  # the section itself is unusable
        if bad:
            if name == "kafka" or not isinstance(value, Mapping):
                continue
            drop = {re.split(r"[.\[]", rest[1:])[0] for rest in bad if rest.startswith(".")}
            value = {k: v for k, v in value.items() if k not in drop}
        try:
            sections[name] = _section_adapter(name).validate_python(value)
        except ValidationError:
            continue
    return sections


def _with_origin(path: str, text: str, origins: Mapping[str, str]) -> str:
    """Name the environment variable that set a key (or one of its parents)."""
    probe = path
    while probe:
        if probe in origins:
            return f"{text} (set by {origins[probe]})"
        probe = probe.rpartition(".")[0]
    return text


def parse_config(data: Mapping[str, Any], source: str = "<mapping>") -> Config:
    """Validate an in-memory config mapping (no file, no environment).

    Raises:
        ConfigError: listing every problem.
    """
    if not isinstance(data, Mapping):
        raise ConfigError([f"the top level must be a mapping of sections, not {type(data).__name__}"], source)
    return _validate(data, source, {})


# --------------------------------------------------------------------------
# YAML.


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader that reports duplicate keys instead of keeping the last one."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self.duplicates: list[str] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                line = key_node.start_mark.line + 1
                if key_node.value in first_line:
                    self.duplicates.append(
                        f"duplicate key {key_node.value!r} at line {line} "
                        f"(first at line {first_line[key_node.value]})"
                    )
                else:
                    first_line[key_node.value] = line
        return super().construct_mapping(node, deep=deep)


def _bounded_data(loader: yaml.SafeLoader, limit: int = MAX_CONFIG_NODES) -> Any:
    """The document of ``loader``, built only once its aliases are known to expand into at most ``limit`` nodes.

    Raises:
        ValueError: the document expands beyond ``limit`` nodes, or an alias refers to a node containing it.
        RecursionError: nesting deeper than Python's recursion limit.
        yaml.YAMLError: not YAML.
    """
    root = loader.get_single_node()  # aliases are shared nodes here: composing does not expand them
    if root is None:
        return None
    sizes: dict[int, int] = {}  # node id -> nodes once expanded
    open_ids: set[int] = set()  # nodes whose children are being counted
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        children = node.value if isinstance(node, yaml.SequenceNode) else (
            [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else [])
        if children_done:
            open_ids.discard(key)
            sizes[key] = total = 1 + sum(sizes[id(child)] for child in children)
            if total > limit:
                raise ValueError(
                    f"expands into more than {limit:,} YAML nodes (aliases counted at every use); "
                    "a config has a few hundred"
                )
        elif key in open_ids:
            mark = node.start_mark
            raise ValueError(f"holds an alias to a node that contains it (line {mark.line + 1}, column {mark.column + 1})")
        elif key not in sizes:
            open_ids.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in children)
    return loader.construct_document(root)


def _parse_yaml(text: str, source: str) -> dict[str, Any]:
    loader = _ConfigLoader(text)
    try:
        data = _bounded_data(loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"invalid YAML{where}: {problem}"], source) from None
    except ValueError as exc:
        raise ConfigError([str(exc)], source) from None
    except RecursionError:
        raise ConfigError(["invalid YAML: nested too deeply"], source) from None
    finally:
        loader.dispose()
    if loader.duplicates:
        raise ConfigError(loader.duplicates, source)
    if data is None:  # an empty file (or only comments): every key at its default
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            [f"the top level must be a mapping of sections (kairos:, master:, ...), not a {type(data).__name__}"],
            source,
        )
    return data


def default_config_text() -> str:
    """The embedded default config (``schemas/default.yaml``) as text."""
    return resources.files("schemas").joinpath("default.yaml").read_text(encoding="utf-8")


def _read_file(path: str | os.PathLike[str]) -> str:
    name = os.fspath(path)
    try:
        return Path(name).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(["no such file"], name) from None
    except IsADirectoryError:
        raise ConfigError(["is a directory, not a config file"], name) from None
    except UnicodeDecodeError:
        raise ConfigError(["is not UTF-8 text"], name) from None
    except OSError as exc:
        raise ConfigError([exc.strerror or str(exc)], name) from None


# --------------------------------------------------------------------------
# Environment overrides.


def _env_target(parts: list[str], raw: Mapping[str, Any]) -> tuple[list[str], bool]:
    """Resolve lower-cased name parts to a key path.

    Returns:
        (key path, True when the value is a plain string and must not be YAML-parsed).

    Raises:
        ValueError: the parts do not name a config key.
    """
    shape, target = "model", Config
    path: list[str] = []
    node: Any = raw
    for i, part in enumerate(parts):
        here = _join(path) or "the top level"
        if shape == "union":
            kind = node.get("kind") if isinstance(node, Mapping) else None
            shape, target = "model", target.get(kind, SyntheticSource)
        if shape == "mapping":
            # librdkafka names use dots; environment names cannot, so '_' stands for '.'
            # (except in this project's own keys).
            if i != len(parts) - 1:
                raise ValueError(f"{_join(path)} settings have no sub-keys")
            return path + [part if part in KAFKA_OWN_KEYS else part.replace("_", ".")], True
        if shape != "model":
            raise ValueError(f"{here} is a value, not a section; set it as a whole")
        if part not in target.model_fields:
            raise ValueError(f"{_join(path + [part])} is not a config key{_suggestion(part, target.model_fields)}")
        path.append(part)
        node = node.get(part) if isinstance(node, Mapping) else None
        annotation = target.model_fields[part].annotation
        shape, target = _shape(annotation)
    return path, shape == "leaf" and target is str


def _env_overrides(
    raw: dict[str, Any], environ: Mapping[str, str]
) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """Apply ``BECOMINGONE__...`` variables to a copy of ``raw``.

    Returns:
        (new raw mapping, dotted key path -> variable name, problems)
    """
    raw = _deep_copy(raw)
    origins: dict[str, str] = {}
    problems: list[str] = []
    items = [(name, value) for name, value in environ.items() if name.upper().startswith(ENV_PREFIX)]
    # Shallow keys first, so `..._SOURCE__KIND` is applied before keys that depend on it.
    items.sort(key=lambda item: (item[0].count("__"), not item[0].upper().endswith("__KIND"), item[0].upper()))
    for name, value in items:
        parts = name[len(ENV_PREFIX):].lower().split("__")
        if not all(parts):
            problems.append(f"{name}: empty key between '__' separators")
            continue
        try:
            path, keep_text = _env_target(parts, raw)
        except ValueError as exc:
            problems.append(f"{name}: {exc}")
            continue
        if keep_text:
            parsed: Any = value
        else:
            try:
                parsed = _bounded_data(yaml.SafeLoader(value)) if value.strip() else None
            except yaml.YAMLError as exc:
                problems.append(f"{name}: value is not a YAML value ({getattr(exc, 'problem', exc)})")
                continue
            except ValueError as exc:
                problems.append(f"{name}: the value {exc}")
                continue
            except RecursionError:
                problems.append(f"{name}: the value is nested too deeply")
                continue
        if path == ["source", "kind"] and isinstance(raw.get("source"), dict) and raw["source"].get("kind") != parsed:
            # The file describes another kind of source: its keys do not apply.
            raw["source"] = {}
        node = raw
        for key in path[:-1]:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        node[path[-1]] = parsed
        origins[".".join(path)] = name
    return raw, origins, problems


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


# --------------------------------------------------------------------------
# The entry point.


def load_config(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Load, override and validate the config.

    Args:
        path: YAML file.  None: ``$BECOMINGONE_CONFIG`` if set and not empty,
            else the embedded default (``schemas/default.yaml``).
        environ: environment to read ``BECOMINGONE_CONFIG`` and the
            ``BECOMINGONE__SECTION__KEY[__SUBKEY]=value`` overrides from
            (default ``os.environ``).  Names are case-insensitive, values are
            YAML (``true``, ``2.5``, ``[1, 2]``); string keys take the text as
            is; in ``kafka`` an ``_`` in the key stands for ``.``
            (``BECOMINGONE__KAFKA__SASL_PASSWORD`` sets ``sasl.password``).

    Raises:
        ConfigError: every problem found, one line each.
    """
    env = os.environ if environ is None else environ
    if path is None and env.get(CONFIG_ENV):
        path = env[CONFIG_ENV]
    if path is None:
        source, text = "embedded default config", default_config_text()
    else:
        source, text = os.fspath(path), _read_file(path)
    raw = _parse_yaml(text, source)
    raw, origins, env_problems = _env_overrides(raw, env)
    if env_problems:
        # Validate anyway, so that problems in the file show in the same report.
        try:
            _validate(raw, source, origins)
        except ConfigError as exc:
            env_problems.extend(exc.problems)
        raise ConfigError(env_problems, source)
    return _validate(raw, source, origins)
