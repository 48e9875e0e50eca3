"""The benchmark's fixed workloads, generated once (seeded), and the same samples as JSON and Arrow IPC messages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np


if TYPE_CHECKING:
    from bench.kernels import SensorRecord



EPOCH_US = 1_764_115_200_000_000      # 2025-11-26T00:00:00Z: event time in the past, real epoch magnitude


PARTITIONS = 4                        # = connectors.kafka.MOCK_PARTITIONS (checked at start)


KIND_PATTERN = ("steady",) * 7 + ("drifting", "noise", "switching")   # sensor i has kind i % 10


ARROW_SLICE_US = 1_000_000            # one Arrow message per partition and second of event time


JSON_CHUNK = 1_000                    # JSON messages produced per partition turn


# How far the producer may run ahead of the consumer's count, per partition.
# The mock broker keeps only its newest ~5 MB / ~100,000 messages per partition.
LEAD_BYTES_PER_PARTITION = 3_000_000


LEAD_MESSAGES_PER_PARTITION = 80_000


BATCH_OVERHEAD_BYTES = 100            # Kafka record batch framing, for the lead estimate


@dataclass(frozen=True)
class WorkloadSpec:
    """A generated workload: every sensor sampled on one regular grid."""

    key: str
    sensors: int
    rate_hz: int
    duration_s: int
    freq_hz: tuple[float, ...]        # oscillator frequency of sensor i: freq_hz[i % len]
    seed: int

    @property
    def samples(self) -> int:
        return self.sensors * self.rate_hz * self.duration_s

    @property
    def label(self) -> str:
        rate = f"{self.rate_hz // 1000} kHz" if self.rate_hz >= 1000 else f"{self.rate_hz} Hz"
        return f"{self.sensors:,} sensors x {rate}"


WORKLOADS = (
    WorkloadSpec("w1", 100, 1_000, 60, tuple(float(f) for f in range(1, 10)), seed=20251126),
    WorkloadSpec("w2", 10_000, 10, 60, tuple(round(0.2 + 0.1 * k, 1) for k in range(9)), seed=20251127),
)


@dataclass
class Workload:
    """The samples of a workload: one shared time grid, one phase row per sensor."""

    spec: WorkloadSpec
    names: list[str]
    kinds: list[str]
    t_us: np.ndarray                  # (n,) int64, the common sample times
    phase: np.ndarray                 # (sensors, n) float64 radians, wrapped

    @property
    def samples(self) -> int:
        return int(self.phase.size)

    @property
    def span_s(self) -> float:
        """Event time covered, seconds."""
        return self.t_us.shape[0] / self.spec.rate_hz

    def head(self, seconds: float) -> "Workload":
        """The same sensors over the first ``seconds`` of event time (views, no copy)."""
        n = min(self.t_us.shape[0], int(round(seconds * self.spec.rate_hz)))
        return Workload(self.spec, self.names, self.kinds, self.t_us[:n], self.phase[:, :n])

    def partition_of(self, sensor: int) -> int:
        return sensor % PARTITIONS

    def sensors_of(self, partition: int) -> np.ndarray:
        return np.arange(partition, self.spec.sensors, PARTITIONS)

    def record(self, sensor: int) -> SensorRecord:
        from bench.kernels import SensorRecord

        return SensorRecord(self.t_us, self.phase[sensor][:, None])


def generate_workload(spec: WorkloadSpec) -> Workload:
    """The workload's samples from the synthetic generator (deterministic for the seed)."""
    from connectors.synthetic import SyntheticSensor, synthetic_batches

    kinds = [KIND_PATTERN[i % len(KIND_PATTERN)] for i in range(spec.sensors)]
    names = [f"{kind}-{i:05d}" for i, kind in enumerate(kinds)]
    sensors = [SyntheticSensor(name, kind, freq_hz=spec.freq_hz[i % len(spec.freq_hz)])  # type: ignore[arg-type]
               for i, (name, kind) in enumerate(zip(names, kinds))]
    duration_us = spec.duration_s * 1_000_000
    n = spec.rate_hz * spec.duration_s
    phase = np.empty((spec.sensors, n), np.float64)
    t_us = None
    row = {name: i for i, name in enumerate(names)}
    for name, t, ph in synthetic_batches(sensors, period_us=1_000_000 // spec.rate_hz, duration_us=duration_us,
                                         start_us=EPOCH_US, seed=spec.seed, batch_us=duration_us):
        t_us = t if t_us is None else t_us
        phase[row[name]] = ph[:, 0]
    assert t_us is not None and t_us.shape[0] == n
    return Workload(spec, names, kinds, np.asarray(t_us, np.int64), phase)


@dataclass
class Chunk:
    """What the producer sends in one turn to one partition: one Arrow message or a run of JSON messages."""

    partition: int
    samples: int
    nbytes: int                       # message values and keys as produced
    wire_bytes: int                   # estimated size on the broker (compressed, framed)
    t_max_us: int                     # newest sample time carried
    arrow: bytes | None = None
    json_values: list[bytes] | None = None
    json_keys: list[bytes] | None = None

    @property
    def messages(self) -> int:
        return 1 if self.arrow is not None else len(self.json_values or ())


@dataclass
class WireMessages:
    """A workload in one wire format, in production order (partitions interleaved by event time)."""

    wire: str
    chunks: list[Chunk]

    @property
    def samples(self) -> int:
        return sum(c.samples for c in self.chunks)

    @property
    def messages(self) -> int:
        return sum(c.messages for c in self.chunks)

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.chunks)

    def rows_per_message(self) -> list[list[int]]:
        """Samples of each message, per partition in offset order (the plain consumer's bookkeeping)."""
        rows: list[list[int]] = [[] for _ in range(PARTITIONS)]
        for c in self.chunks:
            rows[c.partition].extend([c.samples] if c.arrow is not None else [1] * c.messages)
        return rows

    @property
    def wire_bytes(self) -> int:
        return sum(c.wire_bytes for c in self.chunks)

    def lead_limit(self) -> int:
        """Samples the producer may be ahead of the consumer's count (all partitions)."""
        per_sample = self.wire_bytes / self.samples
        per_message = self.samples / self.messages
        per_partition = min(LEAD_BYTES_PER_PARTITION / per_sample, LEAD_MESSAGES_PER_PARTITION * per_message)
        biggest = max(c.samples for c in self.chunks)
        return int(max(per_partition * PARTITIONS, 2 * biggest))


def arrow_messages(workload: Workload, slice_us: int) -> WireMessages:
    """One Arrow IPC stream message per partition and ``slice_us`` of event time (SPEC section 4).

    Columns sensor (utf8), t (timestamp us UTC), phase (float64, one channel);
    rows in time order, the partition's sensors at each time.  The size on
    the broker is estimated with the producer's codec (lz4 frame).
    """
    import pyarrow as pa

    from connectors.kafka import arrow_message

    schema = pa.schema([pa.field("sensor", pa.string(), nullable=False),
                        pa.field("t", pa.timestamp("us", tz="UTC"), nullable=False),
                        pa.field("phase", pa.float64(), nullable=False)])
    codec = pa.Codec("lz4")
    per_slice = slice_us * workload.spec.rate_hz // 1_000_000
    n = workload.t_us.shape[0]
    parts = []
    for p in range(PARTITIONS):
        idx = workload.sensors_of(p)
        names = pa.array([workload.names[i] for i in idx], pa.string())
        phase = workload.phase[idx]
        out = []
        for lo in range(0, n, per_slice):
            hi = min(lo + per_slice, n)
            k = hi - lo
            sensor = pa.DictionaryArray.from_arrays(
                pa.array(np.tile(np.arange(idx.shape[0], dtype=np.int32), k)), names).cast(pa.string())
            t = pa.array(np.repeat(workload.t_us[lo:hi], idx.shape[0]), pa.timestamp("us", tz="UTC"))
            ph = pa.array(np.ascontiguousarray(phase[:, lo:hi].T).ravel())
            value = arrow_message(pa.RecordBatch.from_arrays([sensor, t, ph], schema=schema))
            wire = len(codec.compress(value, asbytes=True))
            out.append(Chunk(p, k * idx.shape[0], len(value), wire + BATCH_OVERHEAD_BYTES,
                             int(workload.t_us[hi - 1]), arrow=value))
        parts.append(out)
    return WireMessages("arrow", [c for group in zip(*parts) for c in group])


def json_messages(workload: Workload) -> WireMessages:
    """One JSON message per sample, ``{"sensor": ..., "t": <epoch seconds>, "phase": ...}``, key = sensor.

    ``t`` is written with exactly six decimals, so it parses back to the same microsecond.
    The size on the broker is estimated with the producer's codec (lz4 frame)
    over each chunk's keys and values.
    """
    import pyarrow as pa

    codec = pa.Codec("lz4")
    t_text = [b"%d.%06d" % divmod(int(t), 1_000_000) for t in workload.t_us.tolist()]
    parts = []
    for p in range(PARTITIONS):
        idx = workload.sensors_of(p)
        keys = [workload.names[i].encode() for i in idx]
        heads = [b'{"sensor": "' + k + b'", "t": ' for k in keys]
        rows = np.ascontiguousarray(workload.phase[idx].T).tolist()    # time-major
        values = [b'%s%s, "phase": %r}' % (head, tt, v)
                  for tt, row in zip(t_text, rows) for head, v in zip(heads, row)]
        all_keys = keys * len(t_text)
        times = np.repeat(workload.t_us, idx.shape[0])
        out = []
        for lo in range(0, len(values), JSON_CHUNK):
            vs = values[lo:lo + JSON_CHUNK]
            ks = all_keys[lo:lo + JSON_CHUNK]
            size = sum(map(len, vs)) + sum(map(len, ks))
            wire = len(codec.compress(b"".join(ks + vs), asbytes=True)) + BATCH_OVERHEAD_BYTES
            out.append(Chunk(p, len(vs), size, wire, int(times[lo + len(vs) - 1]), json_values=vs, json_keys=ks))
        parts.append(out)
    return WireMessages("json", [c for group in zip(*parts) for c in group])
