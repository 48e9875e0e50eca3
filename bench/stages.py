"""The stages besides the three consumer runs: the compute ceiling (the one pass the flow's engine runs), the naive
per-sample recompute, the latency run and the Master's state per sensor."""

from __future__ import annotations

import json
import math
import pickle
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.feeds import Feed, PacedFeed
from bench.harness import ConsumerHarness, ConsumerRun
from bench.workloads import EPOCH_US, PARTITIONS, Workload, arrow_messages


LATENCY_SLICE_US = 10_000             # paced run: one message per partition and 10 ms


LATENCY_RATE = 100_000                # offered samples/s in the latency run (= w1 in real time)


LATENCY_FETCH_WAIT_MS = 5             # the latency run's consumers (input and collapse topic)


LATENCY_SOURCE_BATCH = 10


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
    from bench.fleet_runs import one_pass
    from operators.resonator import resonator_settings
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
    from operators.params import kairos_params

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
    from operators.emissary import EmissaryWindow
    from operators.lag import LagState
    from operators.master import MasterWindow
    from operators.params import kairos_params
    from operators.sync import SyncMachine
    from operators.transducer import Transducer

    p = kairos_params(config)
    c = config
    lag = LagState(p, channels=1)
    emissary = Transducer(EmissaryWindow(c.emissary.tau_max_us, p.omega), c.emissary.witness_interval_us)
    master = Transducer(MasterWindow(c.master.tau_max_us, c.master.witness_interval_us, p.omega),
                        c.master.witness_interval_us)
    sync = SyncMachine(c.kairos.coherence_threshold, c.sync.hysteresis, c.sync.phase_threshold, c.master.min_span_us)
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
