"""One consumer run against the local broker: the broker, the measured child, the producer feeding it, the checks."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.child import BOARD_POLL_S, ProgressBoard
from bench.feeds import COMPRESSION, MAX_MESSAGE_BYTES, BackpressureFeed, Feed, new_producer
from bench.kernels import progress
from bench.markdown import si
from bench.workloads import WireMessages, Workload



STALL_S = 60.0                        # no progress for this long: the run is broken


READY_TIMEOUT_S = 300.0               # child start-up (imports, Numba cache load, flow build)


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


SOURCE_BATCH = {"arrow": 100, "json": 20_000}  # source.batch_size (messages per poll of a partition)


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
                                         env=_child_env(), cwd=repo_root())
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


def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def _child_env() -> dict[str, str]:
    """The environment without BECOMINGONE* overrides (the bench's configs are explicit)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("BECOMINGONE")}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        producer = new_producer(self.bootstrap, linger_ms=linger_ms, compression=COMPRESSION)
        if feed_factory is None:
            limit = messages.lead_limit()
            feed: Feed = BackpressureFeed(producer, topic, messages, limit)
        else:
            limit = 0
            feed = feed_factory(producer, topic)
        with open(log_path, "wb") as log:
            child = subprocess.Popen([sys.executable, "-m", "bench.pipeline", "--child", str(spec_path)],
                                     stdout=log, stderr=subprocess.STDOUT, env=_child_env(), cwd=repo_root())
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
        progress(f"  {label}: {run.samples:,} samples in {run.seconds:.2f} s = {si(run.rate)} samples/s "
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
