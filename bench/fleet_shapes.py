"""The fleet shapes of :mod:`bench.fleets`, their generated samples (in memory and as an Arrow file), their configs
and what a run of one measures."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.workloads import EPOCH_US, KIND_PATTERN


FILE_RECORD_BATCH = 65_536                # rows per record batch of the written Arrow file


@dataclass(frozen=True)
class FleetShape:
    """A fleet: ``sensors`` sensors sampled at ``rate_hz`` for ``seconds`` of event time."""

    key: str
    sensors: int
    rate_hz: int
    seconds: int
    tau_scale_s: float = 1.0
    seed: int = 0

    @property
    def samples(self) -> int:
        return self.sensors * self.rate_hz * self.seconds

    @property
    def label(self) -> str:
        rate = f"{self.rate_hz // 1000} kHz" if self.rate_hz >= 1000 else f"{self.rate_hz} Hz"
        return f"{self.sensors:,} sensors x {rate}"


# Event-time spans long enough that the flow makes at least 7 calls of source.batch_rows rows (a
# stream registers its sensors once and runs for hours: the first call, where every sensor is new,
# is a small part of the run) and each run takes a few seconds or more here.
FLEETS = (
    FleetShape("f1", 100, 1_000, 600, seed=1),
    FleetShape("f2", 2_000, 60, 100, seed=2),
    FleetShape("f3", 10_000, 10, 200, seed=3),
    FleetShape("f4", 50_000, 1, 144, tau_scale_s=5.0, seed=4),
)


@dataclass
class FlowRun:
    """One run of the flow over the file: (b) archive off or (c) archive on."""

    archive: bool
    seconds: float
    samples: int
    accepted: int
    rejected: int
    events: tuple[int, int]               # collapses, dissipations (the run ledger)
    meso: int | None                      # meso witness records logged (None: not built, nothing keeps the log)
    steps: dict[str, float]               # seconds inside each step's batches: decode, resonate, witness
    archive_rows: dict[str, int] = field(default_factory=dict)   # (c): rows per dataset (signatures per transducer)
    repeat_rates: list[float] = field(default_factory=list)      # every run's rate when repeated (this is the median)

    @property
    def rate(self) -> float:
        return self.samples / self.seconds


@dataclass
class SnapshotRun:
    """The resonate step's key-group states after the shape's samples, pickled."""

    groups: int
    sensors: list[int]                    # per key group
    nbytes: list[int]                     # pickled bytes per key group
    seconds: list[float]                  # median seconds of one pickle per key group
    fill_seconds: float                   # the Fleet.push calls that filled them (all groups)
    calls: int                            # Fleet.push calls per key group

    @property
    def total_bytes(self) -> int:
        return sum(self.nbytes)

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds)


@dataclass
class FleetRun:
    """One shape measured: the one pass (a), the flow without (b) and with (c) the archive, the snapshots."""

    shape: FleetShape
    kernel_s: list[float]
    rows: tuple[int, int]                 # Emissary and Master rows of the one pass
    events: tuple[int, int]               # collapses and dissipations of the one pass
    batch_rows: int                       # source.batch_rows of the flow runs
    file_bytes: int
    off: FlowRun | None
    on: FlowRun | None
    snapshot: SnapshotRun | None
    expected: dict[str, int] = field(default_factory=dict)   # (a)'s rows as the flow's outputs show them
    mesh: dict[str, list[FlowRun]] = field(default_factory=dict)  # "off"/"on" x archive: runs, mesh off and on

    @property
    def kernel_rate(self) -> float:
        return self.shape.samples / float(np.min(self.kernel_s))

    @property
    def per_sensor_call(self) -> float:
        return min(self.batch_rows, self.shape.samples) / self.shape.sensors


def config_for(shape: FleetShape, path: Path | None = None, *, archive: bool = False, root: Path | None = None,
               batch_rows: int | None = None, mesh: bool = False):
    """The config defaults with the shape's tau_scale, a file source of ``path``, no metrics endpoint;
    ``mesh``: ``sync.mesh_enabled`` (every sensor in the default cell)."""
    from schemas.config import parse_config

    data: dict = {"kairos": {"tau_scale": shape.tau_scale_s}, "sink": {"archive": archive},
                  "metrics": {"enabled": False}, "sync": {"mesh_enabled": mesh}}
    if path is not None:
        data["source"] = {"kind": "file", "path": str(path), "format": "arrow"}
        if batch_rows is not None:
            data["source"]["batch_rows"] = batch_rows
    if root is not None:
        data["memory"] = {"storage": {"path": str(root)}}
    return parse_config(data, source="the config defaults")


def settings_for(shape: FleetShape):
    """The resonator settings of :func:`config_for` (no ``future`` check: offline)."""
    from operators.resonator import resonator_settings

    return resonator_settings(config_for(shape), replay=True)


def sensor_names(sensors: int) -> list[str]:
    return [f"s{i:05d}" for i in range(sensors)]


def generate(shape: FleetShape) -> tuple[np.ndarray, np.ndarray]:
    """Times (n,) and wrapped phases (sensors, n): oscillators at 1 % to 9 % of the rate, 0.01 rad noise;
    drifting adds a random walk of 0.6 rad/sqrt(s), noise is uniform, switching turns to noise halfway."""
    rng = np.random.default_rng(shape.seed)
    n = shape.rate_hz * shape.seconds
    t = EPOCH_US + np.arange(1, n + 1, dtype=np.int64) * 1_000_000 // shape.rate_hz
    seconds = (t - EPOCH_US) * 1e-6
    phase = np.empty((shape.sensors, n))
    for i in range(shape.sensors):     # one row at a time keeps the temporaries to one sensor's size
        kind = KIND_PATTERN[i % len(KIND_PATTERN)]
        freq = shape.rate_hz * (0.01 + 0.01 * (i % 9))
        row = 2 * np.pi * freq * seconds + rng.uniform(-np.pi, np.pi) + rng.normal(0.0, 0.01, n)
        if kind == "drifting":
            row += np.cumsum(rng.normal(0.0, 0.6 / np.sqrt(shape.rate_hz), n))
        elif kind == "noise":
            row = rng.uniform(-np.pi, np.pi, n)
        elif kind == "switching":
            row[n // 2:] = rng.uniform(-np.pi, np.pi, n - n // 2)
        phase[i] = np.mod(row + np.pi, 2 * np.pi) - np.pi
    return t, phase


def write_arrow_file(path: Path, t: np.ndarray, phase: np.ndarray) -> int:
    """The samples as an Arrow IPC file (sensor utf8, t timestamp[us, UTC], phase float64), rows in time
    order (all sensors at a time, then the next time), record batches of :data:`FILE_RECORD_BATCH` rows.
    Returns the file's size in bytes."""
    import pyarrow as pa

    sensors, n = phase.shape
    names = pa.array(sensor_names(sensors), pa.string())
    schema = pa.schema([pa.field("sensor", pa.string(), nullable=False),
                        pa.field("t", pa.timestamp("us", tz="UTC"), nullable=False),
                        pa.field("phase", pa.float64(), nullable=False)])
    total = sensors * n
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        for first in range(0, total, FILE_RECORD_BATCH):
            r = np.arange(first, min(first + FILE_RECORD_BATCH, total))
            k, i = r // sensors, r % sensors          # row = k * sensors + i
            writer.write_batch(pa.RecordBatch.from_arrays(
                [names.take(pa.array(i.astype(np.int32))), pa.array(t[k], pa.timestamp("us", tz="UTC")),
                 pa.array(phase[i, k])], schema=schema))
    return path.stat().st_size
