"""The raw-sensor shapes of :mod:`bench.raw_lanes`: their generated samples, their configs (the example
configs of ``config/``), their Arrow files and what a run of one measures."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.ecg import ecg_record
from bench.raw_signals import alpha_burst, pmu_mode

FILE_RECORD_BATCH = 65_536                # rows per record batch of the written Arrow files
#: ``source.batch_rows`` of the flow runs and the rows per call of the Fleet runs: a file source's default
#: (1,048,576) would give these runs a few calls of a million rows, where a stream's are smaller.
BATCH_ROWS = 65_536
CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"


@dataclass(frozen=True)
class RawShape:
    """``sensors`` raw sensors (one channel each) at ``rate_hz`` for ``seconds`` of event time, whose signal
    is ``kind`` (``eeg``, ``ecg`` or ``pmu``), run with the example config ``config``."""

    key: str
    kind: str
    config: str
    sensors: int
    rate_hz: float
    seconds: float
    seed: int = 0

    @property
    def n(self) -> int:
        """Samples per sensor."""
        return round(self.rate_hz * self.seconds)

    @property
    def samples(self) -> int:
        return self.sensors * self.n

    @property
    def label(self) -> str:
        what = {"eeg": "EEG channels", "ecg": "ECG leads", "pmu": "PMU angles"}[self.kind]
        return f"{self.sensors:,} {what} x {self.rate_hz:g} Hz"


# Sizes: each run of (b) and (c) takes a few seconds here, and the Fleet gets dozens of calls.
SHAPES = (
    RawShape("eeg", "eeg", "eeg-alpha.yaml", 64, 250.0, 600.0, seed=1),
    RawShape("ecg", "ecg", "ecg-rhythm.yaml", 12, 360.0, 1800.0, seed=2),
    RawShape("pmu", "pmu", "pmu-modes.yaml", 200, 30.0, 1200.0, seed=3),
)


def generate(shape: RawShape) -> tuple[np.ndarray, np.ndarray]:
    """Times (n,) int64 us, shared by every sensor, and raw values (sensors, n): per sensor (seeded)
    an alpha burst in pink noise (EEG: the first sixth quiet, the burst over the next half, then quiet
    again; uV),
    a regular rhythm then ectopic beats (ECG, half and half; mV), or an angle wandering 0.3 deg/sqrt(s) with
    a 0.5 Hz mode of 2 deg from a sixth of the run on (PMU, one in four without the mode; degrees)."""
    values = np.empty((shape.sensors, shape.n))
    t = None
    for i in range(shape.sensors):
        seed = 1000 * shape.seed + i
        if shape.kind == "eeg":
            quiet, burst = shape.seconds / 6, shape.seconds / 2
            rec = alpha_burst(fs=shape.rate_hz, quiet_s=quiet, burst_s=burst, after_s=shape.seconds - quiet - burst,
                              seed=seed)
            ti, x = rec.t, rec.value
        elif shape.kind == "ecg":
            half = shape.seconds / 2
            rec = ecg_record(fs=shape.rate_hz, regular_s=half, ectopic_s=half, seed=seed)
            ti, x = rec.t, rec.value
        elif shape.kind == "pmu":
            rec = pmu_mode(fs=shape.rate_hz, quiet_s=shape.seconds / 6, duration_s=shape.seconds, drift_deg=0.3,
                           wander_hz=0.01, mode_deg=0.0 if i % 4 == 3 else 2.0, seed=seed)
            ti, x = rec.t, rec.value
        else:
            raise ValueError(f"unknown raw shape kind {shape.kind!r}")
        if t is None:
            t = ti
        elif not np.array_equal(t, ti):
            raise RuntimeError(f"raw shape {shape.key}: the sensors' sample times differ")
        values[i] = x
    return t, values


def config_for(shape: RawShape, path: Path | None = None, *, root: Path | None = None,
               batch_rows: int = BATCH_ROWS):
    """The shape's example config with a file source of ``path`` (Arrow IPC, ``batch_rows``), archive off,
    no Kafka, no metrics endpoint; ``root``: where the memory would be (nothing is written there)."""
    import yaml

    from schemas.config import parse_config

    file = CONFIG_DIR / shape.config
    data = yaml.safe_load(file.read_text(encoding="utf-8"))
    data["sink"] = {"archive": False}
    data["kafka"] = None
    data["metrics"] = {"enabled": False}
    if path is not None:
        data["source"] = {"kind": "file", "path": str(path), "format": "arrow", "batch_rows": batch_rows}
    if root is not None:
        data.setdefault("memory", {}).setdefault("storage", {})["path"] = str(root)
    return parse_config(data, source=f"config/{shape.config}")


def settings_for(shape: RawShape):
    """The resonator settings of the shape's example config (no ``future`` check: offline)."""
    from operators.resonator import resonator_settings

    return resonator_settings(config_for(shape), replay=True)


def sensor_names(shape: RawShape) -> list[str]:
    return [f"{shape.kind}/{i:03d}" for i in range(shape.sensors)]


def write_rows(path: Path, names: list[str], sid: np.ndarray, t: np.ndarray, x: np.ndarray, column: str) -> int:
    """Samples as an Arrow IPC file (sensor utf8, t timestamp[us, UTC], ``column`` float64) in the rows'
    order, record batches of :data:`FILE_RECORD_BATCH` rows; returns the file's size in bytes."""
    import pyarrow as pa

    labels = pa.array(names, pa.string())
    schema = pa.schema([pa.field("sensor", pa.string(), nullable=False),
                        pa.field("t", pa.timestamp("us", tz="UTC"), nullable=False),
                        pa.field(column, pa.float64(), nullable=False)])
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        for a in range(0, len(t), FILE_RECORD_BATCH):
            b = min(a + FILE_RECORD_BATCH, len(t))
            writer.write_batch(pa.RecordBatch.from_arrays(
                [labels.take(pa.array(sid[a:b].astype(np.int32))), pa.array(t[a:b], pa.timestamp("us", tz="UTC")),
                 pa.array(x[a:b])], schema=schema))
    return path.stat().st_size


@dataclass
class Phases:
    """Phase samples grouped by sensor in time order: sid, t (us), phase (rad)."""

    sid: np.ndarray
    t: np.ndarray
    phase: np.ndarray

    def time_ordered(self) -> np.ndarray:
        """The row order of a stream: by time, then sensor."""
        return np.lexsort((self.sid, self.t))


@dataclass
class KernelRun:
    """(a): the extraction over the whole run's rows, and the np.convolve reference of its filter."""

    taps: int
    filter_s: list[float]                 # extract_phases, every repeat
    beats_s: list[float]                  # beat_phases (events only) over the run in one call, every repeat
    beats_calls_s: list[float]            # ... over the same rows in calls of the Fleet's size, every repeat
    reference_s: list[float]              # np.convolve per sensor, every repeat
    phases: Phases
    worst_error: float                    # the kernel against the reference, rad

    @property
    def kernel_s(self) -> float:
        """extract_phases and (events) beat_phases over the run, the fastest run of each."""
        return float(np.min(self.filter_s)) + (float(np.min(self.beats_s)) if self.beats_s else 0.0)


@dataclass
class PairRun:
    """(b) or (c): the raw samples and the phases of (a) through the same Fleet or flow."""

    raw_s: list[float]
    phase_s: list[float]
    raw_samples: int
    phase_samples: int
    events: tuple[int, int]               # collapses, dissipations (equal in both, checked)
    calls: int = 0                        # (b): Fleet.push calls

    @property
    def raw_rate(self) -> float:
        return self.raw_samples / float(np.median(self.raw_s))

    @property
    def phase_rate(self) -> float:
        return self.phase_samples / float(np.median(self.phase_s))


@dataclass
class RawRun:
    """One shape measured."""

    shape: RawShape
    band: tuple[float, float]
    method: str
    batch_rows: int
    kernel: KernelRun
    fleet: PairRun | None = None
    flow: PairRun | None = None
    notes: list[str] = field(default_factory=list)
