"""The measured child process (``python -m bench.pipeline --child SPEC``): a plain consumer or the product's flow,
timed around its run, talking to the parent through a small shared-memory progress board."""

from __future__ import annotations

import json
import mmap
import resource
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from bench.workloads import EPOCH_US, PARTITIONS


BOARD_POLL_S = 0.001


# The flow child's count watcher: it reads the metrics in the flow's process and
# takes the GIL each time, so it looks only every 10 ms (at 1 ms it took about
# an eighth of the flow's thread); the time marks are that much coarser.
WATCH_POLL_S = 0.01


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
    from operators.resonator import resonator_settings
    from operators.decode import RawMessage, decode_messages
    from operators.resonator import Resonator
    from schemas.samples import SampleBatch
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
    from flows.observer import FlowObserver
    from schemas.config import parse_config

    config = parse_config(spec["config"], source="bench")
    warm_s = _warm_up(config)
    # run_main below runs it without recovery, as `becomingone run` does.
    observer = FlowObserver.of(config)
    flow = (build_flow(config, recovery=False, observer=observer) if spec["stage"] == "full"
            else build_engine_flow(config, observer=observer))
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
                observer.stop.request()
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
