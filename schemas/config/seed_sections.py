"""The sections of the seed project's configuration reference.

``becomingone``, ``kairos``, ``master``, ``emissary``, ``sync``, ``memory``,
``witnessing``, ``security`` and ``logging``, hoisted to the top level so
every key has a short dotted path (``kairos.tau_scale``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from schemas.config.errors import _suggestion
from schemas.config.values import (
    WITNESS_LAYERS,
    Micros,
    NonEmptyStr,
    NonNegativeSeconds,
    Number,
    Port,
    PositiveSeconds,
    TopicName,
    _reject_bool,
    _Section,
)


class BecomingOneSection(_Section):
    """``becomingone``: the node's identity."""

    name: str = "becomingone"
    """Node name; labels metrics, Kafka client ids and mesh records; the default cell."""
    node: Literal["full", "light", "witness", "relay"] = "full"
    """What this node runs (SPEC section 7): ``full`` everything; ``light`` intake, Emissary and
    mesh; ``witness`` audits another node's witness topic; ``relay`` copies topics between
    clusters."""
    max_sensors: Annotated[int, BeforeValidator(_reject_bool), Field(ge=1)] = 100_000
    """Live sensors per process; samples of sensors beyond it are dead letters `capacity`.
    Idle sensors' windows are released and stop counting (docs/pipeline.md)."""
    key_groups: Annotated[int, BeforeValidator(_reject_bool), Field(ge=1, le=65_536)] = 16
    """Sensors are hashed into this many key groups, the unit of state placed on a worker.
    More groups spread sensors more evenly over workers; fewer mean fewer, larger
    activations (each has a fixed cost).  Keep it fixed for the life of a
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
    phase_band: tuple[Annotated[Number, Field(gt=0.0)], Annotated[Number, Field(gt=0.0)]] | None = None
    """[f_lo, f_hi], Hz: the band raw ``value`` sensors' phase is extracted from (SPEC section 9), one
    band per flow; null: raw samples are dead letters ``schema``.  A sensor must be sampled faster
    than 2 f_hi."""
    phase_method: Literal["hilbert", "events"] = "hilbert"
    """How a raw sensor's phase is made: ``hilbert``, the analytic signal of the band; ``events``, 2 pi
    per detected peak of the band-passed signal, linear in between (pulse trains: ECG, spikes)."""

    @field_validator("phase_band")
    @classmethod
    def _band_rises(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not value[0] < value[1]:
            raise ValueError(f"f_lo must be below f_hi, got [{value[0]}, {value[1]}] Hz")
        return value

    tau_us = Micros("tau_scale")
    velocity_span_us = Micros("velocity_span")
    max_gap_us = Micros("max_gap")


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

    tau_max_us = Micros("tau_max")
    witness_interval_us = Micros("witness_interval", doc="witness_interval (the pane length) in microseconds.")
    min_span_us = Micros("min_span")

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

    tau_max_us = Micros("tau_max")
    witness_interval_us = Micros("witness_interval")


class MeshPeer(_Section):
    """One Kafka cluster a node reads the mesh from (``sync.mesh.peers[i]``).

    The seed's ``{host, port}`` names the cluster's bootstrap address; ``bootstrap`` (a
    ``bootstrap.servers`` list) may be given instead.  ``kafka`` holds further librdkafka settings
    of that side (TLS, SASL), merged over the node's own ``kafka`` section.
    """

    host: NonEmptyStr | None = None
    port: Port | None = None
    bootstrap: NonEmptyStr | None = None
    """``bootstrap.servers`` of the peer cluster (instead of host and port)."""
    topic: TopicName = "becomingone.mesh"
    """The topic the peer's cells publish their partial sums to."""
    kafka: dict[str, Any] = Field(default_factory=dict)
    """librdkafka settings of this side, over the node's ``kafka`` section."""

    @model_validator(mode="after")
    def _one_address(self) -> MeshPeer:
        if self.bootstrap is None and (self.host is None or self.port is None):
            raise ValueError("a peer needs host and port, or bootstrap")
        if self.bootstrap is not None and (self.host is not None or self.port is not None):
            raise ValueError("give host and port, or bootstrap, not both")
        return self

    @property
    def bootstrap_servers(self) -> str:
        """The peer cluster's ``bootstrap.servers``."""
        return self.bootstrap if self.bootstrap is not None else f"{self.host}:{self.port}"


class MeshSection(_Section):
    """``sync.mesh``: the mesh order parameter per cell and across cells (SPEC section 7)."""

    interval: PositiveSeconds = 0.1
    """Mesh grid spacing (epoch aligned), seconds: each sensor's phasor is interpolated onto it."""
    window: PositiveSeconds = 10.0
    """R2 = mean of r^2 over this much event time; the lock's window too, seconds."""
    publish_interval: PositiveSeconds = 1.0
    """Event-time interval of the ``mesh_sync/`` and ``mesh_members/`` rows, seconds."""
    threshold: Annotated[Number, Field(gt=0.0, le=1.0)] | None = None
    """A cell collapses when R2 reaches this; None = kairos.coherence_threshold."""
    lock_threshold: Annotated[Number, Field(gt=0.0, le=1.0)] = 0.9
    """A sensor is locked to its cell's mean field when its lock reaches this."""
    lateness: NonNegativeSeconds = 1.0
    """Mesh grid points wait this much more event time than the input watermark, seconds: at least
    how far apart in event time a partition's sensors may run (a producer sending one sensor's
    batch after another's), and the sample interval of the slowest sensor."""
    idle_timeout: PositiveSeconds = 60.0
    """A source partition whose newest event time has not grown for this long (wall clock) is not
    waited for while another one moves, seconds."""
    weights: dict[str, Annotated[Number, Field(ge=0.0, le=10_000.0)]] = Field(default_factory=dict)
    """Sensor weight W_P by sensor id, 0 to 10,000; sensors not listed weigh 1.  (The cells' sums are
    integers in units of 2**-32: bounded weights keep them far inside int64.)"""
    cells: tuple[NonEmptyStr, ...] = ()
    """The cells T_global waits for; empty = every cell heard within cell_timeout."""
    cell_timeout: PositiveSeconds = 30.0
    """A cell not heard for this long (wall clock) is no longer waited for, seconds."""
    peers: tuple[MeshPeer, ...] = ()
    """Kafka clusters (and topics) this node reads other cells' partial sums from; empty = its own
    cells only."""

    interval_us = Micros("interval")
    window_us = Micros("window")
    publish_interval_us = Micros("publish_interval")
    lateness_us = Micros("lateness")
    cell_timeout_us = Micros("cell_timeout")


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
    """Compute the mesh (SPEC section 7): cell order parameters, member locks and T_global."""
    mesh: MeshSection = Field(default_factory=MeshSection)

    lateness_us = Micros("lateness")
    max_future_us = Micros("max_future")
    publish_interval_us = Micros("publish_interval")


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
    """Archive ``mesh_sync/`` (the cells' and the global order parameter, when the mesh is on)."""
    mesh_members: bool = True
    """Archive ``mesh_members/`` (each sensor's lock to its cell, when the mesh is on)."""
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

    signature_interval_us = Micros("signature_interval")

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
            ("mesh_members", self.mesh_members),
            ("input", self.archive_input)) if on)

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

    meso_interval_us = Micros("meso_interval")

    def layer_enabled(self, layer: str) -> bool:
        """True when records of ``layer`` (micro|meso|macro|meta) are emitted."""
        if layer not in WITNESS_LAYERS:
            raise ValueError(f"unknown witness layer {layer!r}")
        return self.enabled and bool(getattr(self.layers, layer))


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
