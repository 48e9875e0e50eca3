"""End-to-end throughput, latency and memory of the BecomingONE pipeline, with the kernel benchmark.

    python -m bench.pipeline --write docs/benchmarks.md      (= ``make bench``)

One run, one process tree, one local broker (``becomingone broker``:
librdkafka's mock cluster in a subprocess, topics of
:data:`connectors.kafka.MOCK_PARTITIONS` partitions), and two generated
workloads of 6 million samples each:

* **w1**: 100 sensors at 1 kHz for 60 s of event time;
* **w2**: 10,000 sensors at 10 Hz for 60 s of event time.

Sensors are synthetic oscillators (:mod:`connectors.synthetic`): seven in ten
steady, one drifting, one noise, one switching from steady to noise halfway,
so collapses and dissipations happen.  Each workload is generated once
(seeded) and the same samples become JSON messages (one per sample, key =
sensor), Arrow IPC messages (one per partition and second of event time) and
the in-memory arrays of the compute ceiling.  Sensor ``i`` always goes to
partition ``i % 4``, so its samples stay in order.

Measured per workload (and wire format where it applies):

1. **I/O ceiling**: a plain confluent-kafka consumer reading the topic and
   doing nothing with the messages;
2. **engine ceiling**: :func:`flows.kairos.build_engine_flow` (Kafka source,
   decode, key-group routing, a step that only counts);
3. **full pipeline**: :func:`flows.kairos.build_flow` with Kafka output
   topics, the Arrow archive and the metrics endpoint on;
4. **compute ceiling**: the one-pass kernel
   :func:`operators.columnar.fleet_resonance` offline over the same samples in
   memory, every sensor in one call (the algorithm the flow's windows and sync
   compute, not the exact sliding Emissary);
5. **naive**: the per-sample full recompute of :mod:`bench.kernels`, run on a
   subsample and extrapolated (marked as such).

The JSON path is sent only the first ``--json-seconds`` (default
:data:`JSON_SECONDS`) of each workload's event time, and stages 4 and 5 are
measured again over that prefix, so its ratios compare the same samples: at
its present speed all of both workloads as JSON would take the benchmark far
past ten minutes.

Plus the end-to-end latency (produce to collapse event, p50/p99) at a fixed
offered rate of 100,000 samples/s, the Master's state bytes per sensor at
10 Hz and 10 kHz, the kernel benchmark of :mod:`bench.kernels`, and the fleet
shapes of :mod:`bench.fleets` (the flow end to end over a file against the
one-pass compute ceiling).

How a consumer run (stages 1 to 3) works
    The measured consumer runs in its own child process (``python -m
    bench.pipeline --child SPEC``), so its peak RSS (``VmHWM``) is its own.
    The child warms Numba up, builds the flow, and says it is ready through a
    small shared-memory progress board.  The parent (the producer) then puts
    a lead of messages on the broker, and the child starts its clock and runs
    ``bytewax.testing.run_main(flow)`` (one worker).  The mock broker keeps
    only about the newest 5 MB or 100,000 messages of a partition and
    silently drops older ones, so nothing can be produced up front: the
    parent keeps producing while the child consumes, never more than
    :data:`LEAD_BYTES_PER_PARTITION` bytes (as the broker stores them: Arrow
    is lz4-compressed) or :data:`LEAD_MESSAGES_PER_PARTITION` messages per
    partition ahead of the samples the child has counted
    (``becomingone_samples_total``, read in the child every millisecond and
    written to the board).  When the child has counted every sample it calls
    :func:`flows.sources.request_stop`, the flow drains as at end of input,
    and the clock stops when ``run_main`` returns.  (``source.stop_at_end``
    would end a partition the first time the consumer catches up with the
    producer; with concurrent producing that can happen mid-run, so the flows
    follow the topic and stop on the count.)  A run whose child did not count
    exactly every sample produced is an error, not a number.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import mmap
import os
import pickle
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from bench.kernels import progress

if TYPE_CHECKING:
    from bench.kernels import SensorRecord

# --- the fixed workloads and settings -----------------------------------------------------

EPOCH_US = 1_764_115_200_000_000      # 2025-11-26T00:00:00Z: event time in the past, real epoch magnitude
PARTITIONS = 4                        # = connectors.kafka.MOCK_PARTITIONS (checked at start)
KIND_PATTERN = ("steady",) * 7 + ("drifting", "noise", "switching")   # sensor i has kind i % 10
ARROW_SLICE_US = 1_000_000            # one Arrow message per partition and second of event time
LATENCY_SLICE_US = 10_000             # paced run: one message per partition and 10 ms
LATENCY_RATE = 100_000                # offered samples/s in the latency run (= w1 in real time)
JSON_CHUNK = 1_000                    # JSON messages produced per partition turn
MAKE_COMMAND = "python -m bench.pipeline --write docs/benchmarks.md"
JSON_SECONDS = 15.0                   # event time of each workload sent as JSON (see --json-seconds)

# How far the producer may run ahead of the consumer's count, per partition.
# The mock broker keeps only its newest ~5 MB / ~100,000 messages per partition.
LEAD_BYTES_PER_PARTITION = 3_000_000
LEAD_MESSAGES_PER_PARTITION = 80_000
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
# Kafka-level compression of the producer.  The broker holds (and its ~5 MB
# per partition counts) compressed batches: lz4 puts ~2.5 times the Arrow
# samples and ~4 times the JSON samples in the same lead.
COMPRESSION = "lz4"
BATCH_OVERHEAD_BYTES = 100            # Kafka record batch framing, for the lead estimate

STALL_S = 60.0                        # no progress for this long: the run is broken
READY_TIMEOUT_S = 300.0               # child start-up (imports, Numba cache load, flow build)
BOARD_POLL_S = 0.001
# The flow child's count watcher: it reads the metrics in the flow's process and
# takes the GIL each time, so it looks only every 10 ms (at 1 ms it took about
# an eighth of the flow's thread); the time marks are that much coarser.
WATCH_POLL_S = 0.01

# Consumer tuning shared by every measured consumer (the plain one and the flows).
# fetch.wait.max.ms: the mock broker holds an unfilled fetch this long; at the
# librdkafka default of 500 ms a consumer of large messages mostly waits.
# fetch.queue.backoff.ms: once a client has queued.min.messages (100,000)
# prefetched, it stops fetching for this long (default 1 s) - with a lead of
# many small messages the consumer then sat idle while the broker held data.
CONSUMER_TUNING: dict[str, Any] = {
    "fetch.wait.max.ms": 10,
    "fetch.queue.backoff.ms": 10,
    "max.partition.fetch.bytes": MAX_MESSAGE_BYTES,
    "fetch.max.bytes": 4 * MAX_MESSAGE_BYTES,
    "receive.message.max.bytes": 4 * MAX_MESSAGE_BYTES + 1024,
    "message.max.bytes": MAX_MESSAGE_BYTES,
}
LATENCY_FETCH_WAIT_MS = 5             # the latency run's consumers (input and collapse topic)
SOURCE_BATCH = {"arrow": 100, "json": 20_000}  # source.batch_size (messages per poll of a partition)
LATENCY_SOURCE_BATCH = 10
REPEAT_BELOW_S = 30.0                 # a consumer run shorter than this is repeated ...
REPEATS = 3                           # ... to this many runs, and the median rate reported

# Targets of the issue this benchmark implements.
TARGET_JSON_SHARE_OF_ENGINE = 0.50
TARGET_ARROW_RATE = 5_000_000
TARGET_ARROW_SHARE_OF_COMPUTE = 0.25
TARGET_MASTER_BYTES = 1024 * 1024
TARGET_LATENCY_P99_S = 0.050


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


# --- data -----------------------------------------------------------------------------------


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


# --- messages -------------------------------------------------------------------------------


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


# --- the shared progress board --------------------------------------------------------------


class ProgressBoard:
    """A few int64 slots in a shared file mapping: how the parent and a measured child talk.

    The child writes READY once it can start and CONSUMED as it counts samples;
    the parent writes GO once its lead is on the broker.  Aligned 8-byte
    stores, polled every millisecond: no locks, no system calls per update.
    """

    READY, GO, CONSUMED, SLOTS = 0, 1, 2, 8

    def __init__(self, path: Path, *, create: bool = False) -> None:
        if create:
            path.write_bytes(bytes(8 * self.SLOTS))
        self._file = open(path, "r+b")
        self._map = mmap.mmap(self._file.fileno(), 8 * self.SLOTS)
        self._slots = np.frombuffer(self._map, dtype=np.int64)

    def __getitem__(self, slot: int) -> int:
        return int(self._slots[slot])

    def __setitem__(self, slot: int, value: int) -> None:
        self._slots[slot] = value

    def close(self) -> None:
        del self._slots
        self._map.close()
        self._file.close()


# --- the measured child process -------------------------------------------------------------


class SampleCounter:
    """This process's ``becomingone_samples_total``, by ``result`` label, read in process."""

    def __init__(self) -> None:
        from connectors.metrics import metrics

        self._counter = metrics().samples
        self._transitions = metrics().transitions

    @staticmethod
    def _read(counter: Any, label: str) -> dict[str, int]:
        return {s.labels[label]: int(s.value) for family in counter.collect() for s in family.samples
                if s.name.endswith("_total")}

    def by_result(self) -> dict[str, int]:
        return self._read(self._counter, "result")

    def transitions(self) -> dict[str, int]:
        return self._read(self._transitions, "event")

    def total(self) -> int:
        return sum(self.by_result().values())


def _scrape_samples(port: int) -> dict[str, int]:
    """``becomingone_samples_total`` by result, over HTTP from the flow's metrics endpoint."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {s.labels["result"]: int(s.value) for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == "becomingone_samples_total"}


def _flow_event_latency() -> dict[str, float]:
    """The flow's own ``becomingone_event_latency_seconds`` (decode of the samples to the event): sum, count."""
    from connectors.metrics import metrics

    values = {s.name.rsplit("_", 1)[-1]: s.value for family in metrics().event_latency.collect()
              for s in family.samples if not s.name.endswith("_bucket") and not s.name.endswith("_created")}
    return {"sum": float(values.get("sum", 0.0)), "count": float(values.get("count", 0.0))}


def _warm_up(config: Any) -> float:
    """Load (or compile) every Numba kernel of the flow before the clock starts; seconds taken."""
    import pyarrow as pa

    from connectors.kafka import arrow_message
    from flows.kairos import resonator_settings
    from operators.decode import RawMessage, decode_messages
    from operators.resonator import Resonator
    from operators.samples import SampleBatch
    from schemas.messages import ARROW_STREAM_CONTENT_TYPE, CONTENT_TYPE_HEADER

    begin = time.perf_counter()
    t = EPOCH_US + np.arange(30_000, dtype=np.int64) * 1_000
    phase = np.mod(2 * np.pi * 3.0 * (t - EPOCH_US) * 1e-6, 2 * np.pi) - np.pi
    resonator = Resonator("warm-up", resonator_settings(config))
    resonator.push(SampleBatch("warm-up", t, phase[:, None]), now_us=time.time_ns() // 1000)
    resonator.flush()
    batch = pa.RecordBatch.from_arrays([pa.array(["warm-up"] * 3), pa.array(t[:3], pa.timestamp("us", tz="UTC")),
                                        pa.array(phase[:3])], names=["sensor", "t", "phase"])
    decode_messages([
        RawMessage(None, arrow_message(batch), [(CONTENT_TYPE_HEADER, ARROW_STREAM_CONTENT_TYPE.encode())]),
        RawMessage(b"warm-up", b'{"sensor": "warm-up", "t": 1764115200.5, "phase": 0.25}'),
    ])
    return time.perf_counter() - begin


def _child_flow(spec: dict[str, Any], board: ProgressBoard) -> dict[str, Any]:
    """Stages 2 and 3 (and the latency run): one Bytewax flow, one worker, timed around ``run_main``."""
    from bytewax.testing import run_main

    from flows.kairos import build_engine_flow, build_flow
    from flows.sources import request_stop
    from schemas.config import parse_config

    config = parse_config(spec["config"], source="bench")
    warm_s = _warm_up(config)
    # run_main below runs it without recovery, as `becomingone run` does.
    flow = build_flow(config, recovery=False) if spec["stage"] == "full" else build_engine_flow(config)
    counter = SampleCounter()
    baseline = counter.by_result()
    base_total = sum(baseline.values())
    base_transitions = counter.transitions()
    expected = int(spec["expected_samples"])
    marks: dict[str, float] = {}
    finished = threading.Event()

    def watch() -> None:
        while not finished.is_set():
            n = counter.total() - base_total
            board[ProgressBoard.CONSUMED] = n
            if n and "first" not in marks:
                marks["first"] = time.perf_counter()
            if n >= expected:
                marks["all_counted"] = time.perf_counter()
                request_stop()
                return
            time.sleep(WATCH_POLL_S)

    board[ProgressBoard.READY] = 1
    while not board[ProgressBoard.GO]:
        time.sleep(BOARD_POLL_S)
    watcher = threading.Thread(target=watch, name="bench-watch", daemon=True)
    begin = time.perf_counter()
    watcher.start()
    try:
        run_main(flow)
    finally:
        end = time.perf_counter()
        finished.set()
        watcher.join()
    results = {k: v - baseline.get(k, 0) for k, v in counter.by_result().items()}
    transitions = {k: v - base_transitions.get(k, 0) for k, v in counter.transitions().items()}
    board[ProgressBoard.CONSUMED] = sum(results.values())
    out: dict[str, Any] = {
        "seconds": end - begin,
        "first_sample_s": marks.get("first", end) - begin,
        "all_counted_s": marks.get("all_counted", end) - begin,
        "warm_up_s": warm_s,
        "results": {k: v for k, v in results.items() if v},
        "samples": sum(results.values()),
        "transitions": transitions,
    }
    if spec["stage"] == "full":
        out["flow_event_latency"] = _flow_event_latency()
    if config.metrics.enabled:
        scraped = _scrape_samples(config.metrics.port)
        out["scraped"] = {k: v - baseline.get(k, 0) for k, v in scraped.items() if v - baseline.get(k, 0)}
    return out


def _child_plain_consumer(spec: dict[str, Any], board: ProgressBoard) -> dict[str, Any]:
    """Stage 1: a plain confluent-kafka consumer that reads every message and does nothing with it."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    settings = {**spec["kafka"], "group.id": f"bench-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
                "enable.partition.eof": False}
    rows: list[list[int]] | None = spec.get("rows")
    expected = int(spec["expected_samples"])
    board[ProgressBoard.READY] = 1
    while not board[ProgressBoard.GO]:
        time.sleep(BOARD_POLL_S)
    begin = time.perf_counter()
    consumer = Consumer(settings)
    # The leader known before assign(): otherwise librdkafka's first offset lookup waits 500 ms.
    consumer.list_topics(spec["topic"], timeout=10)
    consumer.assign([TopicPartition(spec["topic"], p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    samples = messages = 0
    first: float | None = None
    idle = 0.0                        # after the first message: time in polls that found nothing
    clock = time.perf_counter
    try:
        while samples < expected:
            polled = clock()
            batch = consumer.consume(10_000, 0.001)   # as the Bytewax source polls: at most 1 ms wait
            for message in batch:
                error = message.error()
                if error is not None and error.code() != KafkaError._PARTITION_EOF:
                    raise RuntimeError(f"consumer error: {error.str()}")
            if not batch:
                if first is not None:
                    idle += clock() - polled
                continue
            if first is None:
                first = time.perf_counter()
            messages += len(batch)
            if rows is None:
                samples += len(batch)
            else:
                samples += sum(rows[m.partition()][m.offset()] for m in batch)
            board[ProgressBoard.CONSUMED] = samples
    finally:
        consumer.close()
    end = time.perf_counter()
    return {"seconds": end - begin, "first_sample_s": (first or end) - begin, "all_counted_s": end - begin,
            "warm_up_s": 0.0, "samples": samples, "messages": messages, "results": {"read": samples},
            "idle_s": idle}


def child_main(spec_path: str) -> int:
    """Entry of a measured child: run the spec's stage, write the result JSON with the peak RSS."""
    spec = json.loads(Path(spec_path).read_text())
    board = ProgressBoard(Path(spec["board"]))
    try:
        result = (_child_plain_consumer if spec["stage"] == "io" else _child_flow)(spec, board)
    finally:
        board.close()
    result["peak_rss_bytes"] = peak_rss_bytes()
    Path(spec["result"]).write_text(json.dumps(result))
    return 0


def peak_rss_bytes() -> int:
    """This process's peak resident set size.

    ``VmHWM`` of ``/proc/self/status``: it belongs to the address space, which
    ``execve`` replaces.  ``getrusage(RUSAGE_SELF).ru_maxrss`` does not start
    afresh at ``execve`` on Linux: a child forked from the benchmark's big
    process would report the parent's peak.  (``ru_maxrss`` where there is no
    ``/proc``.)
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --- the broker and the producer (parent side) ----------------------------------------------


class LocalBroker:
    """``becomingone broker`` in a subprocess; :attr:`bootstrap` once it answers."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.proc: subprocess.Popen[str] | None = None
        self.bootstrap = ""

    def __enter__(self) -> "LocalBroker":
        import selectors

        command = [sys.executable, "-c", "import sys; from flows.cli import main; sys.exit(main(['broker']))"]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True,
                                         env=_child_env(), cwd=_repo_root())
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout=60):
                self.__exit__()
                raise RuntimeError(f"the broker printed nothing within 60 s: {self.log_path.read_text()}")
        line = self.proc.stdout.readline()
        if not line.startswith("bootstrap="):
            self.__exit__()
            raise RuntimeError(f"unexpected broker output {line!r}: {self.log_path.read_text()}")
        self.bootstrap = line.strip().removeprefix("bootstrap=")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def _child_env() -> dict[str, str]:
    """The environment without BECOMINGONE* overrides (the bench's configs are explicit)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("BECOMINGONE")}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _producer(bootstrap: str, *, linger_ms: int, compression: str) -> Any:
    from confluent_kafka import Producer

    from connectors.kafka import producer_settings

    settings = producer_settings(None, bootstrap=bootstrap, client_id="bench-producer")
    settings.update({"linger.ms": str(linger_ms), "message.max.bytes": str(MAX_MESSAGE_BYTES),
                     "compression.type": compression,
                     "queue.buffering.max.messages": "1000000", "queue.buffering.max.kbytes": "1048576",
                     "delivery.report.only.error": True, "log_level": 4})
    return Producer(settings)


class Feed(Protocol):
    """How the parent sends a workload while the child consumes."""

    finished: bool
    produced_samples: int

    def delivered_samples(self) -> int: ...

    def prime(self) -> None: ...

    def step(self, consumed: int) -> None: ...


class BackpressureFeed:
    """As fast as the consumer allows: never more than ``limit`` samples ahead of its count."""

    def __init__(self, producer: Any, topic: str, messages: WireMessages, limit: int) -> None:
        from schemas.messages import ARROW_STREAM_CONTENT_TYPE, CONTENT_TYPE_HEADER

        self.producer, self.topic, self.messages, self.limit = producer, topic, messages, limit
        self.headers = [(CONTENT_TYPE_HEADER, ARROW_STREAM_CONTENT_TYPE.encode("ascii"))]
        self.next = 0
        self.produced_samples = 0
        self.finished = False
        self.errors: list[str] = []

    def _send(self, chunk: Chunk) -> None:
        from connectors.kafka import produce_waiting

        produce = self.producer.produce
        if chunk.arrow is not None:
            produce_waiting(self.producer, self.topic, value=chunk.arrow, headers=self.headers,
                            partition=chunk.partition, on_delivery=self._on_delivery)
        else:
            p, topic = chunk.partition, self.topic
            for value, key in zip(chunk.json_values or (), chunk.json_keys or ()):
                produce(topic, value, key, p, on_delivery=self._on_delivery)
        self.producer.poll(0)

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self.errors.append(err.str())

    def delivered_samples(self) -> int:
        """Samples on the broker: produced minus those of messages still in the producer's queue
        (exact for JSON, one sample per message; for Arrow a lower bound counting queued messages as full)."""
        queued = len(self.producer)
        if not queued:
            return self.produced_samples
        per_message = max(c.samples // c.messages for c in self.messages.chunks[max(self.next - 1, 0):self.next])
        return max(self.produced_samples - queued * per_message, 0)

    def prime(self) -> None:
        """The initial lead, delivered to the broker before the consumer's clock starts."""
        self.step(0)
        self.producer.flush(60)

    def step(self, consumed: int) -> None:
        chunks = self.messages.chunks
        while self.next < len(chunks) and self.produced_samples + chunks[self.next].samples - consumed <= self.limit:
            self._send(chunks[self.next])
            self.produced_samples += chunks[self.next].samples
            self.next += 1
        if self.next == len(chunks) and not self.finished:
            remaining = self.producer.flush(60)
            if remaining:
                self.errors.append(f"{remaining} message(s) not delivered within 60 s")
            self.finished = True
        else:
            self.producer.poll(0)
        if self.errors:
            raise RuntimeError(f"the producer failed: {self.errors[0]}")


class PacedFeed:
    """In real time: each chunk (one slice of event time per partition) produced when its slice has passed.

    Records the wall-clock time (epoch seconds) just before each chunk's
    ``produce`` call, by partition, for the latency run.
    """

    def __init__(self, producer: Any, topic: str, messages: WireMessages, start_us: int, period_us: int) -> None:
        from schemas.messages import ARROW_STREAM_CONTENT_TYPE, CONTENT_TYPE_HEADER

        self.producer, self.topic, self.messages = producer, topic, messages
        self.headers = [(CONTENT_TYPE_HEADER, ARROW_STREAM_CONTENT_TYPE.encode("ascii"))]
        # A chunk is due when the wall clock has passed its newest sample by one period
        # (event time start_us is wall-clock time wall0).
        self.start_us, self.period_us = start_us, period_us
        self.next = 0
        self.produced_samples = 0
        self.finished = False
        self.wall0 = 0.0
        self.sent_at = np.zeros(len(messages.chunks))
        self.late_s = 0.0             # how far behind its deadline the producer ever was
        self.errors: list[str] = []

    def prime(self) -> None:
        self.wall0 = time.time() + 0.05

    def delivered_samples(self) -> int:
        return self.produced_samples

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self.errors.append(err.str())

    def step(self, consumed: int) -> None:
        chunks = self.messages.chunks
        now = time.time()
        while self.next < len(chunks):
            chunk = chunks[self.next]
            due = self.wall0 + (chunk.t_max_us - self.start_us + self.period_us) * 1e-6
            if due > now:
                break
            self.late_s = max(self.late_s, now - due)
            self.sent_at[self.next] = time.time()
            self.producer.produce(self.topic, value=chunk.arrow, headers=self.headers, partition=chunk.partition,
                                  on_delivery=self._on_delivery)
            self.produced_samples += chunk.samples
            self.next += 1
            now = time.time()
        self.producer.poll(0)
        if self.next == len(chunks) and not self.finished:
            self.producer.flush(60)
            self.finished = True
        if self.errors:
            raise RuntimeError(f"the producer failed: {self.errors[0]}")


# --- one consumer run (parent side) ---------------------------------------------------------


@dataclass
class ConsumerRun:
    """One measured consumer (stage io, engine or full) over one workload in one wire format."""

    workload: str
    wire: str
    stage: str
    samples: int
    messages: int
    seconds: float                    # run_main (or the plain loop) start to end, in the child
    first_sample_s: float             # from the start until the first sample was counted
    all_counted_s: float              # from the start until every sample was counted (then: drain)
    peak_rss_bytes: int
    warm_up_s: float
    results: dict[str, int]
    transitions: dict[str, int] = field(default_factory=dict)
    scraped: dict[str, int] = field(default_factory=dict)
    flow_event_latency: dict[str, float] = field(default_factory=dict)
    idle_s: float = math.nan          # plain consumer: time its polls found nothing (after the first message)
    repeat_rates: list[float] = field(default_factory=list)   # every run's rate when repeated (this is the median)
    starved_s: float = 0.0            # time the consumer had counted all that was produced, more to come
    lead_limit: int = 0

    @property
    def rate(self) -> float:
        return self.samples / self.seconds

    @property
    def steady_rate(self) -> float:
        """Samples per second after the first sample was counted (the Kafka client's start-up excluded)."""
        return self.samples / max(self.seconds - self.first_sample_s, 1e-9)


class ConsumerHarness:
    """Runs measured children against the broker and feeds them."""

    def __init__(self, bootstrap: str, scratch: Path) -> None:
        from connectors.kafka import admin_settings, connect_admin

        self.bootstrap = bootstrap
        self.scratch = scratch
        self.admin = connect_admin(admin_settings(None, bootstrap=bootstrap))

    def kafka_settings(self, *, fetch_wait_ms: int | None = None) -> dict[str, Any]:
        settings = {"bootstrap.servers": self.bootstrap, **CONSUMER_TUNING}
        if fetch_wait_ms is not None:
            settings["fetch.wait.max.ms"] = fetch_wait_ms
        return settings

    def flow_config(self, topic: str, *, batch_size: int, fetch_wait_ms: int | None = None) -> dict[str, Any]:
        """The full pipeline's config (the engine flow reads the same)."""
        name = topic.rsplit(".", 1)[-1]
        return {
            "source": {"kind": "kafka", "topic": topic, "group_id": f"bench-{name}", "from_beginning": True,
                       "stop_at_end": False, "batch_size": batch_size, "max_message_bytes": MAX_MESSAGE_BYTES},
            "kafka": self.kafka_settings(fetch_wait_ms=fetch_wait_ms),
            "sink": {"archive": True, "topics": {role: f"{topic}.{role}" for role in
                                                  ("collapse", "witness", "sync", "dlq")}},
            "memory": {"storage": {"path": str(self.scratch / f"archive-{name}")}},
            "metrics": {"enabled": True, "port": _free_port()},
        }

    def run(self, stage: str, workload: Workload, messages: WireMessages, *,
            feed_factory: Callable[[Any, str], Feed] | None = None, batch_size: int | None = None,
            fetch_wait_ms: int | None = None, linger_ms: int = 5,
            on_start: Callable[[dict[str, Any]], None] | None = None, label: str | None = None) -> ConsumerRun:
        """Start the child, prime the lead, let it run, feed it, check it saw every sample."""
        from connectors.kafka import ensure_topics

        label = label or f"{workload.spec.key} {messages.wire} {stage}"
        name = f"{workload.spec.key}-{messages.wire}-{stage}-{uuid.uuid4().hex[:8]}"
        topic = f"bench.{name}"
        spec: dict[str, Any] = {"stage": stage, "topic": topic, "expected_samples": messages.samples,
                                "board": str(self.scratch / f"{name}.board"),
                                "result": str(self.scratch / f"{name}.json")}
        topics = [topic]
        if stage == "io":
            spec["kafka"] = self.kafka_settings(fetch_wait_ms=fetch_wait_ms)
            if messages.wire == "arrow":
                spec["rows"] = messages.rows_per_message()
        else:
            spec["config"] = self.flow_config(topic, fetch_wait_ms=fetch_wait_ms,
                                              batch_size=batch_size or SOURCE_BATCH[messages.wire])
            topics += list(spec["config"]["sink"]["topics"].values())
        ensure_topics(self.admin, topics)
        spec_path = self.scratch / f"{name}.spec.json"
        spec_path.write_text(json.dumps(spec))
        board = ProgressBoard(Path(spec["board"]), create=True)
        log_path = self.scratch / f"{name}.log"
        producer = _producer(self.bootstrap, linger_ms=linger_ms, compression=COMPRESSION)
        if feed_factory is None:
            limit = messages.lead_limit()
            feed: Feed = BackpressureFeed(producer, topic, messages, limit)
        else:
            limit = 0
            feed = feed_factory(producer, topic)
        with open(log_path, "wb") as log:
            child = subprocess.Popen([sys.executable, "-m", "bench.pipeline", "--child", str(spec_path)],
                                     stdout=log, stderr=subprocess.STDOUT, env=_child_env(), cwd=_repo_root())
        try:
            deadline = time.monotonic() + READY_TIMEOUT_S
            while not board[ProgressBoard.READY]:
                if child.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{label}: the child did not get ready:\n{_tail(log_path)}")
                time.sleep(0.01)
            feed.prime()
            if on_start is not None:
                on_start(spec)
            board[ProgressBoard.GO] = 1
            starved = 0.0
            last_change, last_consumed, last_report = time.monotonic(), -1, time.monotonic()
            previous = time.monotonic()
            while child.poll() is None:
                consumed = board[ProgressBoard.CONSUMED]
                now = time.monotonic()
                if not feed.finished and consumed >= feed.delivered_samples():
                    starved += now - previous
                previous = now
                feed.step(consumed)
                if consumed != last_consumed:
                    last_change, last_consumed = now, consumed
                elif now - last_change > STALL_S:
                    child.kill()
                    raise RuntimeError(
                        f"{label}: no progress for {STALL_S:.0f} s at {consumed:,} of {messages.samples:,} samples "
                        f"({feed.produced_samples:,} produced): data was lost at the broker or the consumer hung; "
                        f"this run is invalid\n{_tail(log_path)}")
                if now - last_report > 5.0:
                    last_report = now
                    progress(f"  {label}: {consumed:,} of {messages.samples:,} samples "
                              f"({consumed / messages.samples:.0%}), {feed.produced_samples:,} produced")
                time.sleep(BOARD_POLL_S)
            if child.returncode != 0:
                raise RuntimeError(f"{label}: the child failed (exit {child.returncode}):\n{_tail(log_path)}")
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            board.close()
            producer.flush(10)
        result = json.loads(Path(spec["result"]).read_text())
        run = ConsumerRun(
            workload=workload.spec.key, wire=messages.wire, stage=stage, samples=int(result["samples"]),
            messages=int(result.get("messages", messages.messages)), seconds=float(result["seconds"]),
            first_sample_s=float(result["first_sample_s"]), all_counted_s=float(result["all_counted_s"]),
            peak_rss_bytes=int(result["peak_rss_bytes"]), warm_up_s=float(result["warm_up_s"]),
            results=dict(result["results"]), transitions=dict(result.get("transitions", {})),
            scraped=dict(result.get("scraped", {})), flow_event_latency=dict(result.get("flow_event_latency", {})),
            idle_s=float(result.get("idle_s", math.nan)), starved_s=starved, lead_limit=limit)
        self._check(label, run, messages, feed)
        shutil.rmtree(self.scratch / f"archive-{topic.rsplit('.', 1)[-1]}", ignore_errors=True)
        progress(f"  {label}: {run.samples:,} samples in {run.seconds:.2f} s = {_si(run.rate)} samples/s "
                  f"(first sample after {run.first_sample_s:.2f} s), peak RSS {run.peak_rss_bytes / 2**20:.0f} MiB")
        return run

    @staticmethod
    def _check(label: str, run: ConsumerRun, messages: WireMessages, feed: Feed) -> None:
        """Every sample produced was seen exactly once, and (flows) accepted: otherwise no number."""
        if feed.produced_samples != messages.samples:
            raise RuntimeError(f"{label}: produced {feed.produced_samples:,} of {messages.samples:,} samples")
        if run.samples != messages.samples:
            raise RuntimeError(f"{label}: the consumer counted {run.samples:,} samples, {messages.samples:,} were "
                               "produced: data was lost (or duplicated); this run is invalid")
        if run.stage == "io" and run.messages != messages.messages:
            raise RuntimeError(f"{label}: read {run.messages:,} messages, {messages.messages:,} were produced")
        good = {"io": "read", "engine": "decoded", "full": "accepted"}[run.stage]
        bad = {k: v for k, v in run.results.items() if k != good}
        if bad:
            raise RuntimeError(f"{label}: samples not {good}: {bad}; the generated data should have none")
        if run.stage == "full" and run.scraped != run.results:
            raise RuntimeError(f"{label}: metrics endpoint says {run.scraped}, the process counted {run.results}")


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- stage 4: compute ceiling ---------------------------------------------------------------


@dataclass
class KindSummary:
    kind: str
    sensors: int
    collapses: int
    dissipations: int
    collapsed_at_end: int
    median_final_coherence: float


@dataclass
class ComputeRun:
    """The one-pass kernel offline over a whole workload (all sensors' samples in one call)."""

    workload: str
    span_s: float
    samples: int
    seconds: float
    rows: tuple[int, int]             # Emissary and Master rows
    collapses: int
    dissipations: int
    kinds: list[KindSummary]

    @property
    def rate(self) -> float:
        return self.samples / self.seconds


COMPUTE_REPEATS = 3                   # stage 4 is short: the median of this many runs


def compute_ceiling(workload: Workload, config: Any, repeats: int = COMPUTE_REPEATS) -> ComputeRun:
    """Stage 4: :func:`operators.columnar.fleet_resonance` over every sensor's samples held in memory, as
    columns grouped by sensor, in one call (end of input: everything final); the median of ``repeats``
    runs with the garbage collector paused, after a warm-up call; sanity per sensor kind after.

    The columns are built before the clock starts; the kernel's input checks are timed.
    """
    from bench.fleets import one_pass
    from flows.kairos import resonator_settings
    from operators.columnar import fleet_resonance

    settings = resonator_settings(config, replay=True)
    sensors, n = workload.phase.shape
    warm = min(n, 5_000)
    # Warm-up: Numba's cache load, on the first sensor's first samples.
    fleet_resonance(np.zeros(warm, np.int32), workload.t_us[:warm], workload.phase[0, :warm], settings)
    runs, out = one_pass(workload.t_us, workload.phase, settings, repeats)
    assert out is not None
    sync = out.sync
    last = np.searchsorted(sync.sensor, np.arange(sensors), side="right") - 1   # each sensor's last sync row
    kinds = []
    kind_of = np.array(workload.kinds)
    for kind in dict.fromkeys(workload.kinds):
        mine = np.isin(sync.sensor, np.flatnonzero(kind_of == kind))
        ends = last[kind_of == kind]
        kinds.append(KindSummary(kind, int(np.count_nonzero(kind_of == kind)),
                                 int(np.count_nonzero(mine & (sync.event == 1))),
                                 int(np.count_nonzero(mine & (sync.event > 1))),
                                 int(np.count_nonzero(sync.collapsed[ends])),
                                 float(np.median(sync.coherence_sync[ends]))))
    return ComputeRun(workload.spec.key, workload.span_s, workload.samples, float(np.median(runs)),
                      (len(out.emissary.t), len(out.master.t)), sum(k.collapses for k in kinds),
                      sum(k.dissipations for k in kinds), kinds)


# --- stage 5: naive per-sample recompute ------------------------------------------------------


@dataclass
class NaiveRun:
    """The naive loop's time for a whole workload: measured on a subsample, extrapolated."""

    workload: str
    span_s: float
    samples: int
    sensors_measured: int
    samples_looped: int               # samples the loop really ran over (all measured sensors)
    per_sensor_s: float               # mean time for one sensor's whole record
    per_sensor_extrapolated: bool     # the per-sensor time itself is extrapolated (prefix + probes)
    total_s: float

    @property
    def rate(self) -> float:
        return self.samples / self.total_s


def naive_estimate(workload: Workload, config: Any, *, prefix: int, sensors: int) -> NaiveRun:
    """Run :func:`bench.kernels.run_naive` on ``sensors`` evenly spread sensors, scale to all of them.

    Each measured sensor runs the real loop over its first ``prefix`` samples;
    beyond that its cost curve is probed and summed (bench.kernels' method).
    Every sensor of a workload has the same number of samples, and the loop's
    cost depends on that number, not on the phases; the workload's total is
    the mean per sensor times the number of sensors.
    """
    from bench import kernels
    from flows.kairos import kairos_params

    params = kairos_params(config)
    chosen = np.linspace(0, workload.spec.sensors - 1, sensors).round().astype(int)
    totals, looped, extrapolated = [], 0, False
    for i in chosen:
        run = kernels.run_naive(workload.record(int(i)), params, prefix, repeats=3)
        totals.append(run.total_s)
        looped += run.prefix
        extrapolated = extrapolated or run.extrapolated
    per_sensor = float(np.mean(totals))
    return NaiveRun(workload.spec.key, workload.span_s, workload.samples, len(chosen), looped, per_sensor,
                    extrapolated, per_sensor * workload.spec.sensors)


# --- latency -----------------------------------------------------------------------------------


@dataclass
class LatencyRun:
    """Produce-to-event latency of collapse/dissipate events at a fixed offered rate."""

    offered_rate: float
    achieved_rate: float              # samples over the wall time the paced producer took
    producer_late_max_s: float        # worst lateness of the paced producer against its schedule
    events: int
    end_of_input_events: int          # events at grid points no sample reached (decided by the final flush)
    latencies_s: list[float]
    to_output_s: list[float]          # produce to the flow handing the event to its Kafka producer (ms clock)
    run: ConsumerRun

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q)) if self.latencies_s else math.nan


class EventListener:
    """Reads a collapse topic in a thread and records each event's arrival time (epoch seconds)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex[:8]}",
                                  "enable.auto.commit": False, "fetch.wait.max.ms": LATENCY_FETCH_WAIT_MS})
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
        self.events: list[tuple[float, float, bytes]] = []   # (arrived, created, value)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-events", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        # poll, not consume(n, timeout): consume waits out its timeout for n messages to gather.
        while not self._stop.is_set():
            message = self.consumer.poll(0.05)
            if message is not None and message.error() is None:
                # The message's CreateTime: when the flow's producer was handed the event (ms).
                self.events.append((time.time(), message.timestamp()[1] / 1e3, message.value()))

    def stop(self, expected: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.events) < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        self._stop.set()
        self._thread.join()
        self.consumer.close()


def latency_run(harness: ConsumerHarness, workload: Workload) -> LatencyRun:
    """Workload 1 in real time (Arrow, 10 ms slices) through the full pipeline; events timed on arrival.

    Latency of an event at grid time g of sensor s: its arrival on the collapse
    topic minus the produce time of the first message carrying a sample of s
    with t >= g (that sample moves s's watermark to g, which makes g final).
    """
    from schemas.messages import parse_utc

    messages = arrow_messages(workload, LATENCY_SLICE_US)
    feeds: list[PacedFeed] = []
    listeners: list[EventListener] = []

    def make_feed(producer: Any, topic: str) -> Feed:
        feed = PacedFeed(producer, topic, messages, int(workload.t_us[0]), 1_000_000 // workload.spec.rate_hz)
        feeds.append(feed)
        return feed

    def on_start(spec: dict[str, Any]) -> None:
        listeners.append(EventListener(harness.bootstrap, spec["config"]["sink"]["topics"]["collapse"]))

    run = harness.run("full", workload, messages, feed_factory=make_feed, batch_size=LATENCY_SOURCE_BATCH,
                      fetch_wait_ms=LATENCY_FETCH_WAIT_MS, linger_ms=0, on_start=on_start,
                      label="latency run (w1 arrow full, paced)")
    feed, listener = feeds[0], listeners[0]
    expected = sum(run.transitions.values())
    listener.stop(expected)
    if len(listener.events) != expected:
        raise RuntimeError(f"latency run: {len(listener.events)} events read from the collapse topic, the flow "
                           f"counted {expected}")
    # Per partition: the newest sample time of each message in produce order, and when it was produced.
    chunk_partition = np.array([c.partition for c in messages.chunks])
    chunk_t_max = np.array([c.t_max_us for c in messages.chunks])
    partition_of = {name: workload.partition_of(i) for i, name in enumerate(workload.names)}
    latencies, to_output, end_of_input = [], [], 0
    for arrived, created, value in listener.events:
        event = json.loads(value)
        g = parse_utc(event["t"])
        mine = np.flatnonzero(chunk_partition == partition_of[event["sensor"]])
        k = int(np.searchsorted(chunk_t_max[mine], g, side="left"))
        if k == mine.shape[0]:
            end_of_input += 1
            continue
        latencies.append(arrived - float(feed.sent_at[mine[k]]))
        to_output.append(created - float(feed.sent_at[mine[k]]))
    span = float(feed.sent_at[-1] - feed.sent_at[0]) + LATENCY_SLICE_US * 1e-6
    return LatencyRun(LATENCY_RATE, messages.samples / span, feed.late_s, expected, end_of_input, latencies,
                      to_output, run)


# --- Master state per sensor ----------------------------------------------------------------


@dataclass
class MasterStateRow:
    rate_hz: int
    seconds_fed: int
    samples_fed: int
    products: int
    state_bytes: int
    pickled_bytes: int
    sensor_chain_pickled_bytes: int   # LagState + both transducers + sync, pickled


def master_state(config: Any, rate_hz: int, seconds: int) -> MasterStateRow:
    """Feed a steady 1 Hz oscillator at ``rate_hz`` for ``seconds`` through LagState and both
    transducers in one-second batches, then measure the Master (``master.tau_max`` window in
    ``master.witness_interval`` panes) and the whole per-sensor chain."""
    from flows.kairos import kairos_params
    from operators.emissary import EmissaryWindow
    from operators.lag import LagState
    from operators.master import MasterWindow
    from operators.sync import SyncState
    from operators.transducer import Transducer

    p = kairos_params(config)
    c = config
    lag = LagState(p, channels=1)
    emissary = Transducer(EmissaryWindow(c.emissary.tau_max_us, p.omega), c.emissary.witness_interval_us)
    master = Transducer(MasterWindow(c.master.tau_max_us, c.master.witness_interval_us, p.omega),
                        c.master.witness_interval_us)
    sync = SyncState(c.kairos.coherence_threshold, c.sync.hysteresis, c.sync.phase_threshold, c.master.min_span_us)
    period = 1_000_000 // rate_hz
    products = 0
    for second in range(seconds):
        t = EPOCH_US + second * 1_000_000 + np.arange(rate_hz, dtype=np.int64) * period
        phase = np.mod(2 * np.pi * 1.0 * (t - EPOCH_US) * 1e-6 + np.pi, 2 * np.pi) - np.pi
        prods = lag.push(t, phase[:, None])
        products += len(prods)
        watermark = int(t[-1])
        sync.advance(emissary.push(prods, t, watermark), master.push(prods, t, watermark), watermark)
    window = master.window
    return MasterStateRow(rate_hz, seconds, seconds * rate_hz, products, window.state_bytes,
                          len(pickle.dumps(window, protocol=pickle.HIGHEST_PROTOCOL)),
                          len(pickle.dumps((lag, emissary, master, sync), protocol=pickle.HIGHEST_PROTOCOL)))


# --- the whole run -----------------------------------------------------------------------------

STAGES = ("io", "engine", "full")


@dataclass
class WireResult:
    """One wire format over one workload: the three consumers, and stages 4 and 5 over the same samples."""

    wire: str
    span_s: float                     # event time sent (JSON: a prefix of the workload, see --json-seconds)
    samples: int
    messages: int
    nbytes: int
    runs: dict[str, ConsumerRun]      # stage -> run
    compute: ComputeRun
    naive: NaiveRun


@dataclass
class WorkloadResult:
    spec: WorkloadSpec
    kinds: dict[str, int]
    wires: dict[str, WireResult]


@dataclass
class Failure:
    """A measurement that gave no valid number, and why."""

    what: str
    error: str

    @property
    def headline(self) -> str:
        """The error's first line (without the repeated label) and, for a child's log, its last."""
        lines = [line for line in self.error.strip().splitlines() if line.strip()] or ["(no message)"]
        first = lines[0].removeprefix(f"{self.what}: ")
        return first if len(lines) == 1 else f"{first} {lines[-1].strip()}"


@dataclass
class BenchResult:
    workloads: list[WorkloadResult]
    latency: LatencyRun | None
    master: list[MasterStateRow]
    kernel_cases: list[Any]
    machine: str
    elapsed_s: float
    json_seconds: float
    defaults: dict[str, float]
    failures: list[Failure] = field(default_factory=list)
    fleets: list[Any] = field(default_factory=list)
    engine: str = ""                  # what the flow's resonate step ran (bench.fleets.resonate_engine)


def check_events(label: str, full: ConsumerRun, compute: ComputeRun) -> None:
    """The full pipeline must emit exactly the collapses and dissipations the offline operators find."""
    got = (full.transitions.get("collapse", 0), full.transitions.get("dissipate", 0))
    if got != (compute.collapses, compute.dissipations):
        raise RuntimeError(f"{label}: the pipeline emitted {got[0]} collapses and {got[1]} dissipations, the "
                           f"offline operators {compute.collapses} and {compute.dissipations} over the same "
                           "samples: the pipeline's results are wrong")


def measure(harness: ConsumerHarness, stage: str, workload: Workload, messages: WireMessages) -> ConsumerRun:
    """One consumer run; a short one (under :data:`REPEAT_BELOW_S`) is repeated and the median rate kept.

    Short runs are the ones a stray process on two shared cores moves most.
    Every repetition gets new topics and a new child, and must count every sample.
    """
    runs = [harness.run(stage, workload, messages)]
    if runs[0].seconds < REPEAT_BELOW_S:
        runs += [harness.run(stage, workload, messages) for _ in range(REPEATS - 1)]
    if len(runs) == 1:
        return runs[0]
    runs.sort(key=lambda r: r.rate)
    median = runs[(len(runs) - 1) // 2]
    median.repeat_rates = [r.rate for r in runs]
    return median


def run_workload(harness: ConsumerHarness, spec: WorkloadSpec, config: Any, *, wires: Sequence[str],
                 json_seconds: float, naive_prefix: int, naive_sensors: int,
                 failures: list["Failure"]) -> WorkloadResult:
    """Stages 1 to 3 per wire format against the broker, then 4 and 5 over the same samples.

    A stage that fails (a child error, lost data, events that differ from
    stage 4's) gives no number: it is added to ``failures`` and the run goes on.
    """
    progress(f"{spec.key}: generating {spec.label} for {spec.duration_s} s ({spec.samples:,} samples)")
    workload = generate_workload(spec)
    offline: dict[float, tuple[ComputeRun, NaiveRun]] = {}
    out: dict[str, WireResult] = {}
    for wire in wires:
        part = workload.head(json_seconds) if wire == "json" else workload
        messages = arrow_messages(part, ARROW_SLICE_US) if wire == "arrow" else json_messages(part)
        progress(f"{spec.key} {wire}: {part.span_s:g} s of event time, {part.samples:,} samples in "
                  f"{messages.messages:,} messages ({messages.nbytes / 1e6:,.0f} MB); the producer stays at most "
                  f"{messages.lead_limit():,} samples ahead")
        runs: dict[str, ConsumerRun] = {}
        for stage in STAGES:
            try:
                runs[stage] = measure(harness, stage, part, messages)
            except RuntimeError as exc:     # no number for this stage; the others still count
                failures.append(Failure(f"{spec.key} {wire} {stage}", str(exc)))
                progress(f"  FAILED: {failures[-1].what}: {failures[-1].headline}")
        sizes = (messages.messages, messages.nbytes)
        del messages
        if part.span_s not in offline:
            progress(f"{spec.key}: compute ceiling over {part.span_s:g} s (one pass offline, in memory)")
            compute = compute_ceiling(part, config)
            progress(f"  {spec.key} compute: {part.samples:,} samples in {compute.seconds:.2f} s = "
                      f"{_si(compute.rate)} samples/s; {compute.collapses:,} collapses, "
                      f"{compute.dissipations:,} dissipations")
            # A sensor longer than the prefix is extrapolated (one is enough); short ones run whole.
            sensors = 1 if part.t_us.shape[0] > naive_prefix else naive_sensors
            progress(f"{spec.key}: naive per-sample recompute over {part.span_s:g} s on {sensors} sensor(s)")
            offline[part.span_s] = (compute, naive_estimate(part, config, prefix=naive_prefix, sensors=sensors))
        compute, naive = offline[part.span_s]
        if "full" in runs:
            try:
                check_events(f"{spec.key} {wire}", runs["full"], compute)
            except RuntimeError as exc:
                failures.append(Failure(f"{spec.key} {wire} full: events", str(exc)))
                progress(f"  FAILED: {failures[-1].what}: {failures[-1].headline}")
        out[wire] = WireResult(wire, part.span_s, part.samples, *sizes, runs, compute, naive)
    kinds = {k: workload.kinds.count(k) for k in dict.fromkeys(workload.kinds)}
    return WorkloadResult(spec, kinds, out)


def machine_description() -> str:
    """CPU, cores, OS and the versions that matter here."""
    from importlib.metadata import version

    import confluent_kafka

    from bench import kernels

    return (f"{kernels.machine_description()}, Bytewax {version('bytewax')}, PyArrow {version('pyarrow')}, "
            f"confluent-kafka {version('confluent-kafka')}, librdkafka {confluent_kafka.libversion()[0]}")


def run_all(args: argparse.Namespace) -> BenchResult:
    """Everything, in one process tree: the broker, the consumer children, the offline stages, the kernels."""
    from bench import kernels
    from connectors.kafka import MOCK_PARTITIONS
    from schemas.config import parse_config

    if MOCK_PARTITIONS != PARTITIONS:
        raise RuntimeError(f"the mock broker makes {MOCK_PARTITIONS} partitions, this benchmark assumes {PARTITIONS}")
    begin = time.perf_counter()
    machine = machine_description()
    progress(machine)
    config = parse_config({"sink": {"archive": False}}, source="the config defaults")
    scratch = Path(tempfile.mkdtemp(prefix="becomingone-bench-"))
    latency = None
    failures: list[Failure] = []
    try:
        with LocalBroker(scratch / "broker.log") as broker:
            progress(f"broker at {broker.bootstrap}")
            harness = ConsumerHarness(broker.bootstrap, scratch)
            results = [run_workload(harness, s, config, wires=args.wires, json_seconds=args.json_seconds,
                                    naive_prefix=args.naive_prefix, naive_sensors=args.naive_sensors,
                                    failures=failures)
                       for s in WORKLOADS if s.key in args.workloads]
            if not args.skip_latency:
                progress(f"latency: {WORKLOADS[0].label}, Arrow, paced at {LATENCY_RATE:,} samples/s for "
                          f"{WORKLOADS[0].duration_s} s")
                try:
                    latency = latency_run(harness, generate_workload(WORKLOADS[0]))
                    progress(f"  latency: {len(latency.latencies_s)} events, p50 {_ms(latency.percentile(50))}, "
                              f"p99 {_ms(latency.percentile(99))}")
                except RuntimeError as exc:
                    failures.append(Failure("latency run", str(exc)))
                    progress(f"  FAILED: latency run: {failures[-1].headline}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    progress("Master state per sensor at 10 Hz and 10 kHz")
    master = [master_state(config, 10, 3_700), master_state(config, 10_000, 120)]
    cases = []
    if not args.skip_kernels:
        progress("kernel benchmark (bench.kernels)")
        cases = [kernels.run_case(100_000, c, 5, 5_000) for c in (1, 3)]
        bad = [c for c in cases if not c.agreement.worst <= kernels.AGREEMENT_TOLERANCE]
        if bad:
            raise RuntimeError(f"kernel results disagree with the reference: {[c.agreement for c in bad]}")
    fleet_runs = []
    if not args.skip_fleets:
        from bench import fleets

        progress("fleet shapes (bench.fleets)")
        try:
            fleet_runs = fleets.run_all()
        except RuntimeError as exc:
            failures.append(Failure("fleet shapes", str(exc)))
    defaults = {"tau_max_master_s": config.master.tau_max, "pane_s": config.master.witness_interval,
                "tau_max_emissary_s": config.emissary.tau_max, "grid_emissary_s": config.emissary.witness_interval,
                "min_span_s": config.master.min_span}
    from bench.fleets import resonate_engine

    return BenchResult(results, latency, master, cases, machine, time.perf_counter() - begin, args.json_seconds,
                       defaults, failures, fleet_runs, resonate_engine())


# --- reporting -----------------------------------------------------------------------------------


def _si(x: float, unit: str = "") -> str:
    from bench.kernels import _si as si

    return si(x, unit)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], text_columns: Sequence[int] = (0,)) -> str:
    from bench.kernels import _table as table

    return table(header, rows, text_columns)


def _ratio(x: float) -> str:
    from bench.kernels import _ratio as ratio

    return ratio(x)


def _mib(x: float) -> str:
    return f"{x / 2**20:,.0f} MiB"


def _ms(x: float) -> str:
    return f"{x * 1e3:.1f} ms" if math.isfinite(x) else "n/a"


def _pct(x: float) -> str:
    return f"{x:.0%}" if x >= 0.1 else f"{x:.1%}"


def _rate_text(hz: int) -> str:
    return f"{hz // 1000} kHz" if hz >= 1000 else f"{hz} Hz"


STAGE_NAMES = {"io": "1. I/O ceiling (plain consumer)", "engine": "2. engine ceiling (decode + key)",
               "full": "3. full pipeline"}
EXTRAPOLATED = " (extrapolated)"


def _wire_label(w: WorkloadResult, r: WireResult) -> str:
    name = {"json": "JSON", "arrow": "Arrow"}[r.wire]
    return name if r.span_s >= w.spec.duration_s else f"{name}, first {r.span_s:g} s"


def throughput_rows(res: BenchResult) -> list[list[str]]:
    rows = []
    for w in res.workloads:
        for r in w.wires.values():
            wire, span = {"json": "JSON", "arrow": "Arrow"}[r.wire], f"{r.span_s:g} s"
            for stage in STAGES:
                run = r.runs.get(stage)
                if run is None:
                    rows.append([w.spec.key, span, wire, STAGE_NAMES[stage], f"{r.samples:,}", "**failed** (see "
                                 "Failures)", "-", "-", "-", "-", "-"])
                    continue
                spread = (f" (median of {len(run.repeat_rates)}: {_si(run.repeat_rates[0])} to "
                          f"{_si(run.repeat_rates[-1])})" if run.repeat_rates else "")
                rows.append([w.spec.key, span, wire, STAGE_NAMES[stage], f"{run.samples:,}", f"{run.seconds:.2f} s",
                             _si(run.rate) + spread, f"{run.first_sample_s:.2f} s", _si(run.steady_rate),
                             _mib(run.peak_rss_bytes), f"{run.starved_s:.2f} s"
                             + (f" (idle {run.idle_s:.2f} s)" if math.isfinite(run.idle_s) else "")])
        for r in {r.span_s: r for r in w.wires.values()}.values():     # stages 4 and 5 once per span
            span = f"{r.span_s:g} s"
            rows.append([w.spec.key, span, "memory", "4. compute ceiling (one pass offline)",
                         f"{r.compute.samples:,}", f"{r.compute.seconds:.2f} s", _si(r.compute.rate),
                         "-", "-", "-", "-"])
            rows.append([w.spec.key, span, "memory", "5. naive per-sample recompute", f"{r.naive.samples:,}",
                         _si(r.naive.total_s, "s") + EXTRAPOLATED, _si(r.naive.rate) + EXTRAPOLATED,
                         "-", "-", "-", "-"])
    return rows


THROUGHPUT_HEADER = ["workload", "event time", "wire", "stage", "samples", "time", "samples/s", "first sample after",
                     "samples/s after first", "peak RSS", "consumer caught up"]
RATIO_HEADER = ["workload", "wire", "3/2 (full / engine)", "3/1 (full / I/O)", "3/4 (full / compute)",
                "3/5 (full / naive)"]


def _share(run: ConsumerRun | None, base: float | None, text: Callable[[float], str] = _pct) -> str:
    return "n/a" if run is None or base is None else text(run.rate / base)


def ratio_rows(res: BenchResult) -> list[list[str]]:
    rows = []
    for w in res.workloads:
        for r in w.wires.values():
            full, engine, io = (r.runs.get(s) for s in ("full", "engine", "io"))
            rows.append([w.spec.key, _wire_label(w, r), _share(full, engine and engine.rate),
                         _share(full, io and io.rate), _share(full, r.compute.rate),
                         _share(full, r.naive.rate, lambda x: _ratio(x) + EXTRAPOLATED)])
    return rows


@dataclass
class TargetRow:
    target: str
    measured: str
    ok: bool | None                   # None: not measured (its stage failed)

    @property
    def verdict(self) -> str:
        return "not measured" if self.ok is None else ("pass" if self.ok else "miss")


def target_rows(res: BenchResult) -> list[TargetRow]:
    """The issue's targets, each against the number measured in this run."""
    failed = "not measured: a stage failed (see Failures)"
    rows = []
    for w in res.workloads:
        if "json" in w.wires:
            r = w.wires["json"]
            full, engine = r.runs.get("full"), r.runs.get("engine")
            target = f"{w.spec.key} JSON: full pipeline >= {TARGET_JSON_SHARE_OF_ENGINE:.0%} of the engine ceiling"
            if full is None or engine is None:
                rows.append(TargetRow(target, failed, None))
            else:
                share = full.rate / engine.rate
                rows.append(TargetRow(target, f"{_pct(share)} ({_si(full.rate)} / {_si(engine.rate)} samples/s)",
                                      share >= TARGET_JSON_SHARE_OF_ENGINE))
        if "arrow" in w.wires:
            r = w.wires["arrow"]
            full = r.runs.get("full")
            rate_target = f"{w.spec.key} Arrow: full pipeline >= {_si(TARGET_ARROW_RATE)} samples/s end to end"
            share_target = (f"{w.spec.key} Arrow: full pipeline >= {TARGET_ARROW_SHARE_OF_COMPUTE:.0%} of the "
                            "compute ceiling")
            if full is None:
                rows += [TargetRow(rate_target, failed, None), TargetRow(share_target, failed, None)]
            else:
                rows.append(TargetRow(rate_target, f"{_si(full.rate)} samples/s ({_si(full.steady_rate)} after the "
                                      "first sample)", full.rate >= TARGET_ARROW_RATE))
                share = full.rate / r.compute.rate
                rows.append(TargetRow(share_target, f"{_pct(share)} ({_si(full.rate)} / {_si(r.compute.rate)} "
                                      "samples/s)", share >= TARGET_ARROW_SHARE_OF_COMPUTE))
    for m in res.master:
        worst = max(m.state_bytes, m.pickled_bytes)
        rows.append(TargetRow(f"Master state <= 1 MiB ({TARGET_MASTER_BYTES:,} B) per sensor, tau_max "
                              f"{res.defaults['tau_max_master_s']:g} s, {_rate_text(m.rate_hz)} input",
                              f"{m.state_bytes:,} B ({m.pickled_bytes:,} B pickled)", worst <= TARGET_MASTER_BYTES))
    target = (f"latency p99 <= {TARGET_LATENCY_P99_S * 1e3:.0f} ms at {LATENCY_RATE:,} samples/s offered")
    lat = res.latency
    if lat is not None:
        p99 = lat.percentile(99)
        rows.append(TargetRow(target, f"{_ms(p99)} (p50 {_ms(lat.percentile(50))}, {len(lat.latencies_s)} events)",
                              bool(lat.latencies_s) and p99 <= TARGET_LATENCY_P99_S))
    elif any(f.what == "latency run" for f in res.failures):
        rows.append(TargetRow(target, failed, None))
    return rows


def render_stdout(res: BenchResult) -> str:
    return "\n\n".join([
        _table(THROUGHPUT_HEADER, throughput_rows(res), text_columns=(0, 2, 3)),
        _table(RATIO_HEADER, ratio_rows(res), text_columns=(0, 1)),
        _table(["target", "measured", "result"], [[t.target, t.measured, t.verdict.upper() if t.ok is not True
                                                   else t.verdict] for t in target_rows(res)], text_columns=(0, 1, 2)),
        *([_fleets_text(res)] if res.fleets else []),
        *([_failures_text(res)] if res.failures else []),
    ])


def _fleets_text(res: BenchResult) -> str:
    from bench import fleets

    return fleets.text_table(res.fleets)


def _failures_text(res: BenchResult) -> str:
    return "Failures (no number was taken from these):\n" + "\n".join(
        f"- {f.what}: {f.headline}" for f in res.failures)


def _workload_lines(res: BenchResult) -> list[str]:
    lines = []
    for w in res.workloads:
        kinds = ", ".join(f"{n:,} {k}" for k, n in w.kinds.items())
        parts = [f"- **{w.spec.key}**: {w.spec.label} for {w.spec.duration_s} s of event time = "
                 f"{w.spec.samples:,} samples, one channel ({kinds}; oscillators at {min(w.spec.freq_hz):g} to "
                 f"{max(w.spec.freq_hz):g} Hz)."]
        for r in w.wires.values():
            if r.wire == "arrow":
                parts.append(f"Arrow: {r.messages:,} messages, each one partition's sensors over "
                             f"{ARROW_SLICE_US / 1e6:g} s of event time ({r.samples // r.messages:,} rows, "
                             f"{r.nbytes / r.messages / 1e3:,.0f} kB).")
            else:
                span = "" if r.span_s >= w.spec.duration_s else f" of the first {r.span_s:g} s of event time"
                parts.append(f"JSON: {r.messages:,} messages{span} ({r.samples:,} samples; "
                             f"{r.nbytes / r.messages:.0f} bytes per message with its key).")
        lines.append(" ".join(parts))
    return lines


def _events_text(res: BenchResult) -> str:
    parts = []
    for w in res.workloads:
        for r in w.wires.values():
            full = r.runs.get("full")
            if full is None:
                continue
            parts.append(f"{w.spec.key} {_wire_label(w, r)}: {full.transitions.get('collapse', 0):,} collapses and "
                         f"{full.transitions.get('dissipate', 0):,} dissipations")
    return "; ".join(parts)


def _latency_lines(res: BenchResult) -> list[str]:
    lat = res.latency
    if lat is None:
        failed = any(f.what == "latency run" for f in res.failures)
        return ["Not measured: the latency run failed (see Failures)." if failed
                else "Not run in this invocation (`--skip-latency`)."]
    flow = lat.run.flow_event_latency
    in_flow = flow["sum"] / flow["count"] if flow.get("count") else math.nan
    return [
        f"{WORKLOADS[0].label} ({lat.offered_rate:,.0f} samples/s) in real time: the producer sends one Arrow "
        f"message per partition and {LATENCY_SLICE_US / 1e3:g} ms of event time as soon as that slice has passed "
        f"on the wall clock (achieved {lat.achieved_rate:,.0f} samples/s; at worst "
        f"{lat.producer_late_max_s * 1e3:.1f} ms behind its schedule), while the full pipeline consumes "
        f"(`source.batch_size` {LATENCY_SOURCE_BATCH}, `fetch.wait.max.ms` {LATENCY_FETCH_WAIT_MS} for its consumer "
        "and for the event reader, producer `linger.ms` 0). A thread of the benchmark process reads the collapse "
        "topic and notes when each event arrives. The latency of an event at grid time g of sensor s is that "
        "arrival time minus the produce time of the first message carrying a sample of s with t >= g (the "
        "message that makes g final: watermark = newest t, lateness 0). Every event the flow counted was read "
        "back; none is left out.",
        "",
        _table(["events", "decided only at end of input", "p50", "p99", "max",
                "p50 to the flow's producer", "flow's own mean (decode to event)", "peak RSS of the flow"],
               [[f"{lat.events:,}", f"{lat.end_of_input_events:,}", _ms(lat.percentile(50)),
                 _ms(lat.percentile(99)), _ms(max(lat.latencies_s) if lat.latencies_s else math.nan),
                 _ms(float(np.median(lat.to_output_s)) if lat.to_output_s else math.nan), _ms(in_flow),
                 _mib(lat.run.peak_rss_bytes)]]),
        "",
        "\"To the flow's producer\": the event's Kafka CreateTime (set when the flow's output producer takes "
        "it, millisecond resolution) minus the same produce time; the rest of the latency is the hop through "
        "the broker to the reader. \"Flow's own mean\": the flow's `becomingone_event_latency_seconds` "
        "(from decoding the oldest sample of the batch to building the event). The collapses cluster in "
        f"time (every steady sensor collapses once the Master spans `master.min_span`, "
        f"{res.defaults['min_span_s']:g} s after the start), so the percentiles describe a few bursts, not a "
        "smooth stream of events.",
    ]


def _scrub(text: str) -> str:
    """``text`` without this machine's directories (the repository, the interpreter, temporary files, home)."""
    places = [(str(_repo_root()) + os.sep, ""), (sys.prefix, "<python>"), (sys.base_prefix, "<python>"),
              (tempfile.gettempdir(), "<tmp>"), (str(Path.home()), "~")]
    for place, name in sorted(places, key=lambda pn: -len(pn[0])):
        if place and place != os.sep:
            text = text.replace(place, name)
    return text


def _json_projection(res: BenchResult) -> str:
    """Why the JSON path is cut, in numbers from this run: stages 2 and 3 over whole workloads at these rates."""
    seconds = 0.0
    for w in res.workloads:
        r = w.wires.get("json")
        if r is None or any(s not in r.runs for s in ("engine", "full")):
            return ""
        seconds += sum(w.spec.samples / r.runs[s].rate for s in ("engine", "full"))
    return (f": at the JSON rates measured here, stages 2 and 3 over all {WORKLOADS[0].samples:,} samples of each "
            f"workload would take about {seconds / 60:.0f} min")


def _failure_section(res: BenchResult) -> list[str]:
    if not res.failures:
        return []
    out = ["### Failures", "", "These measurements gave no valid number; nothing above is taken from them.", ""]
    for f in res.failures:
        tail = _scrub("\n".join(f.error.strip().splitlines()[-12:]))
        out += [f"- **{f.what}**: {_scrub(f.headline)}", "", "  ```", *("  " + line for line in tail.splitlines()),
                "  ```", ""]
    return out


def render_markdown(res: BenchResult, command: str) -> str:
    today = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
    json_prefix = any(r.wire == "json" and r.span_s < w.spec.duration_s for w in res.workloads
                      for r in w.wires.values())
    d = res.defaults
    out = [
        "# Benchmarks",
        "",
        f"Generated by `{command}`{' (the `make bench` target)' if command == MAKE_COMMAND else ''} on {today} "
        "(UTC); this run took "
        f"{res.elapsed_s / 60:.1f} min. The file is regenerated as a whole, so edit `bench/pipeline.py`, "
        "`bench/fleets.py` and `bench/kernels.py` rather than this page. No test asserts any of these times.",
        "",
        f"**Machine:** {res.machine}.",
        "",
        *([f"**Flow:** {res.engine}.", ""] if res.engine else []),
        "## Targets",
        "",
        _table(["target", "measured", "result"],
               [[t.target, t.measured, f"**{t.verdict}**"] for t in target_rows(res)],
               text_columns=(0, 1, 2)),
        "",
        "## End-to-end pipeline",
        "",
        "### Workloads",
        "",
        *_workload_lines(res),
        "",
        "The samples come from `connectors.synthetic` (steady: an oscillator with 0.01 rad noise; drifting: plus "
        "a phase random walk; noise: uniform random phases; switching: steady, then noise from halfway), seeded, "
        "on one regular time grid from 2025-11-26T00:00:00Z. Each workload is generated once; the same samples "
        "are sent as JSON (one message per sample, `{\"sensor\", \"t\" (epoch seconds, six decimals), "
        "\"phase\"}`, key = sensor) and as Arrow IPC stream messages (columns sensor utf8, t timestamp[us, UTC], "
        "phase float64; rows in time order; header `content-type: application/vnd.apache.arrow.stream`), and "
        f"are held in memory for stages 4 and 5. Sensor i always goes to partition i % {PARTITIONS} (set per "
        "message), so its samples stay in order. Estimator and sync parameters are the config defaults (tau 1 s, "
        f"velocity span 0.1 s, Emissary {d['tau_max_emissary_s']:g} s on a {d['grid_emissary_s']:g} s grid, "
        f"Master {d['tau_max_master_s']:g} s in {d['pane_s']:g} s panes, min span {d['min_span_s']:g} s).",
        "",
    ]
    if json_prefix:
        out += [
            f"**The JSON path runs on the first {res.json_seconds:g} s of event time of each workload** (the same "
            "samples, the first part of them)" + _json_projection(res) + "; `--json-seconds 60` sends all of it. "
            "Its ratios compare runs over those same samples: stages 4 and 5 are measured again over that prefix.",
            "",
        ]
    out += [
        "### Method",
        "",
        "- **Broker**: `becomingone broker` (librdkafka's mock cluster, 4 partitions per topic) in a subprocess on "
        "this machine; every run gets new topics. The mock keeps only the newest ~5 MB / ~100,000 messages of a "
        "partition and silently drops older ones, so the data cannot be produced first. The benchmark's own "
        "process is the producer: it produces while the consumer under test runs, never more than "
        f"{LEAD_BYTES_PER_PARTITION / 1e6:g} MB (as stored on the broker) or {LEAD_MESSAGES_PER_PARTITION:,} "
        "messages per partition ahead of the samples the consumer has counted, and that lead is on the broker "
        "before the consumer's clock starts. The producer compresses with lz4 (the broker holds compressed "
        "batches, so ~2.5 times the Arrow samples and ~4 times the JSON samples fit in the lead; the lead "
        "bounds how many samples a consumer can take in one poll). \"Consumer caught up\" is the time during "
        "a run in which the consumer had counted every sample delivered to the broker while more was still to "
        "come, i.e. it waited for the producer; for the plain consumer, \"idle\" is the time its polls found "
        "nothing.",
        "- **Each measured consumer runs in its own child process** (one Bytewax worker, "
        "`bytewax.testing.run_main`), so the peak RSS is that consumer's own (`VmHWM` of `/proc/self/status`; "
        "`ru_maxrss` would not do: on Linux it survives `execve` and reports the benchmark process's peak). "
        "Before its clock "
        "starts, the child runs the pipeline's Numba kernels and decoder once on a few samples (JIT cache load). "
        "The time is from the start of `run_main` (or of the plain consumer's loop) to its end, in the child. It "
        "includes the Kafka clients' start (\"first sample after\": librdkafka waits ~0.5 s before looking up the "
        "start offset of a partition whose leader it does not know yet) and the drain at the end; \"samples/s "
        "after first\" leaves the start out.",
        "- **End of input**: the flows follow the topic (`source.stop_at_end: false`) and are stopped with "
        "`flows.sources.request_stop()` once `becomingone_samples_total` (read in the child every millisecond) "
        "counts every sample produced; the flow then drains as at end of input. (`stop_at_end: true` would end a "
        "partition the first time the consumer catches up with the producer, which can happen mid-run.) A run "
        "gives a number only if it counted exactly every sample produced, all of them decoded or accepted (the "
        "generated data has no dead letters), and, for the full pipeline, if its metrics endpoint, scraped over "
        "HTTP, agrees with that count; otherwise it is listed under Failures.",
        f"- **Repeats**: a consumer run shorter than {REPEAT_BELOW_S:g} s is run {REPEATS} times (new topics, new "
        "child each time) and the median rate is reported with the range; those are the runs a stray process "
        "on two shared cores moves most. Longer runs are run once.",
        "- **1. I/O ceiling**: a plain confluent-kafka consumer (one client, all partitions assigned from the "
        "beginning, `consume(10000, 1 ms)` like the Bytewax source's poll) that reads every message and does "
        "nothing with it.",
        "- **2. engine ceiling**: `flows.kairos.build_engine_flow`: the Kafka source, the pipeline's decode step "
        "and key-group routing, and a step that only counts the decoded samples.",
        "- **3. full pipeline**: `flows.kairos.build_flow` (`recovery=False`, as `becomingone run` builds it: "
        "no Bytewax recovery, so epoch snapshots do not wait for the archive): decode, per-sensor event time and "
        "lag products, "
        "Emissary, Master, sync, the collapse, witness, sync and dead-letter topics, the Arrow archive (every "
        "dataset, input included) in a temporary directory, and the metrics endpoint; `source.batch_size` "
        f"{SOURCE_BATCH['arrow']} (Arrow) and {SOURCE_BATCH['json']:,} (JSON) messages per poll of a partition. "
        "Its collapse and dissipate counts must equal stage 4's over the same samples, or the run fails.",
        "- Consumer settings of stages 1 to 3: " + ", ".join(f"`{k}: {v}`" for k, v in CONSUMER_TUNING.items())
        + ". At librdkafka's default `fetch.wait.max.ms` of 500 ms the mock broker holds every fetch that long "
        "and a consumer of large messages mostly waits; at the default `fetch.queue.backoff.ms` of 1 s a client "
        "that has prefetched 100,000 messages stops fetching for a second, and with a lead of small JSON "
        "messages the plain consumer sat idle most of its run.",
        "- **4. compute ceiling**: the one-pass kernel `operators.columnar.fleet_resonance` offline over the "
        "same samples held in memory, all sensors in one call as columns grouped by sensor (end of input: "
        "everything final; the kernel's input checks included, the columns built before the clock starts): "
        "every sensor's lag products, Emissary and Master at their grid points and the sync, the rows the flow "
        "emits. Earlier reports ran the per-sensor operators here, one sensor at a time with the exact sliding "
        "Emissary (an algorithm the flow does not run); their stage 4 numbers are not comparable. Median of "
        f"{COMPUTE_REPEATS} runs, garbage collector paused, after one warm-up call.",
        "- **5. naive per-sample recompute**: `bench.kernels`' prototype loop (recompute T from scratch over the "
        "whole history on every sample; see the kernel section), measured on a subsample and extrapolated. "
        "Where a sensor has many samples (w1), one sensor's first samples run for real, its step cost is probed "
        "at larger histories up to the sensor's whole record and summed, and that is scaled by the number of "
        "sensors; where a sensor has few (w2), the loop runs for real over whole sensors of an evenly spread "
        "subset, scaled by the number of sensors. Marked **(extrapolated)**.",
        "",
        "### Throughput",
        "",
        _table(THROUGHPUT_HEADER, throughput_rows(res), text_columns=(0, 2, 3)),
        "",
        "### Ratios (same run, same samples)",
        "",
        _table(RATIO_HEADER, ratio_rows(res), text_columns=(0, 1)),
        "",
        "### Collapses and dissipations",
        "",
        _table(["workload", "event time", "kind", "sensors", "collapses", "dissipations", "collapsed at end",
                "median final coherence"],
               [[w.spec.key, f"{span:g} s", k.kind, f"{k.sensors:,}", f"{k.collapses:,}", f"{k.dissipations:,}",
                 f"{k.collapsed_at_end:,}", f"{k.median_final_coherence:.4f}"]
                for w in res.workloads
                for span, compute in {r.span_s: r.compute for r in w.wires.values()}.items()
                for k in compute.kinds], text_columns=(0, 2)),
        "",
        "From stage 4; coherence is |T_sync|^2 at the last Emissary grid point. The full pipeline's events over "
        f"the same samples ({_events_text(res)}) equal stage 4's"
        + (", except where Failures says otherwise." if res.failures else "."),
        "",
        "### Latency",
        "",
        *_latency_lines(res),
        "",
        "### Master state per sensor",
        "",
        "A steady oscillator fed through `LagState` and both transducers in one-second batches; then the Master's "
        "`state_bytes` (its numeric arrays) and its pickled size (what a Bytewax snapshot holds), and for scale "
        "the pickled size of the sensor's whole chain (lag history, Emissary window, Master, sync).",
        "",
        _table(["input rate", "fed", "products", "Master state_bytes", "Master pickled", "whole chain pickled"],
               [[_rate_text(m.rate_hz), f"{m.seconds_fed:,} s ({m.samples_fed:,} samples)", f"{m.products:,}",
                 f"{m.state_bytes:,} B", f"{m.pickled_bytes:,} B", f"{m.sensor_chain_pickled_bytes:,} B"]
                for m in res.master]),
        "",
        *_failure_section(res),
        "### What limits these numbers",
        "",
        "- The machine has 2 cores. The broker subprocess, the producer (the benchmark's own process) and the "
        "consumer under test share them, so every rate here is below what the consumer would reach alone, and "
        "the I/O ceiling is largely the mock broker's own speed.",
        "- Runs of one stage differ from run to run (see the ranges of the repeated runs); a ratio of two "
        "single runs close to each other, such as full / engine on JSON, can land either side of 100%.",
        "- The mock broker's ~5 MB per partition bounds how far the producer can be ahead, and so how many "
        "samples a consumer can take in one poll; a real cluster would not. A pipeline whose cost has a part per "
        "sensor and poll pays that part more often here than it would there.",
        "",
    ]
    if res.fleets:
        from bench import fleets

        out.append(fleets.markdown_section(res.fleets, level=2, machine=res.machine))  # ends with its blank line
    if res.kernel_cases:
        from bench import kernels

        out += ["## KAIROS kernels", "", kernels.markdown_sections(res.kernel_cases, level=3), ""]
    return "\n".join(out)


# --- command line ----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__.split("\n")[0])
    parser.add_argument("--write", metavar="PATH", help="also write the Markdown report to PATH")
    parser.add_argument("--workloads", nargs="+", default=[w.key for w in WORKLOADS],
                        choices=[w.key for w in WORKLOADS], help="workloads to run (default all)")
    parser.add_argument("--wires", nargs="+", default=["json", "arrow"], choices=["json", "arrow"],
                        help="wire formats to run (default both)")
    parser.add_argument("--json-seconds", type=float, default=JSON_SECONDS,
                        help=f"event time of each workload sent as JSON (default {JSON_SECONDS:g}; 60 = all)")
    parser.add_argument("--naive-prefix", type=int, default=2_000,
                        help="samples the naive loop really runs over per measured sensor (default 2000)")
    parser.add_argument("--naive-sensors", type=int, default=20,
                        help="sensors the naive loop runs over where a sensor has few samples (default 20)")
    parser.add_argument("--skip-latency", action="store_true", help="leave the latency run out")
    parser.add_argument("--skip-kernels", action="store_true", help="leave the kernel benchmark out")
    parser.add_argument("--skip-fleets", action="store_true", help="leave the fleet shapes (bench.fleets) out")
    parser.add_argument("--child", metavar="SPEC", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child_main(args.child)
    if args.json_seconds <= 0 or args.naive_prefix < 10 or args.naive_sensors < 1:
        parser.error("need --json-seconds > 0, --naive-prefix >= 10, --naive-sensors >= 1")
    # Stopped from outside: unwind, so the broker and the running child are stopped too.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    result = run_all(args)
    print(render_stdout(result))
    progress(f"done in {result.elapsed_s / 60:.1f} min")
    if args.write:
        command = "python -m bench.pipeline --write " + args.write   # MAKE_COMMAND with the default path
        extra = [a for a in (argv if argv is not None else sys.argv[1:]) if a not in ("--write", args.write)]
        if extra:
            command += " " + " ".join(extra)
        Path(args.write).write_text(render_markdown(result, _scrub(command)), encoding="utf-8")
        progress(f"wrote {args.write}")
    if result.failures:
        progress(f"{len(result.failures)} measurement(s) failed: " + "; ".join(f.what for f in result.failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
