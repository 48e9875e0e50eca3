"""What the flow's steps report to and read the time from: one :class:`FlowObserver` per flow.

The build module creates it once and hands it to every step, so a step has
no module-level state of its own: a test drives a step's logic directly with
an observer of its own (a private metrics registry, a fresh ledger, a fixed
clock) and reads what it recorded, without Prometheus' endpoint or a running
flow.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from connectors.endpoint import endpoint_tls, serve
from connectors.metrics import PipelineMetrics, RunLedger, ledger, metrics
from connectors.server_tls import ServerTLS
from connectors.stopping import StopSignal
from schemas.config import Config

__all__ = ["Clock", "FlowObserver"]

log = logging.getLogger("becomingone.flow")


class Clock:
    """The times the steps read: wall time (event-time rules, latencies) and a timer (step durations)."""

    def now_us(self) -> int:
        """Wall time in microseconds since the epoch (the ``future`` rule and its dead letters' text)."""
        return time.time_ns() // 1000

    def now(self) -> float:
        """Wall time in seconds since the epoch (ingest times and event latencies)."""
        return time.time()

    def timer(self) -> float:
        """A monotonic timer in seconds, for how long a step's call took."""
        return time.perf_counter()


@dataclass
class FlowObserver:
    """The metrics, the run ledger, the clock and the stop signal of one flow.

    Attributes:
        metrics: where the steps count (the process's Prometheus metrics by default).
        ledger: the run summary's counts (the process's :class:`~connectors.metrics.RunLedger` by default).
        stop: ends the flow's input when requested (graceful stop).
        clock: the times the steps read.
        endpoint: ``(bind, port, tls)`` of the metrics endpoint the first step starts, or None.
    """

    metrics: PipelineMetrics = field(default_factory=metrics)
    ledger: RunLedger = field(default_factory=ledger)
    stop: StopSignal = field(default_factory=StopSignal)
    clock: Clock = field(default_factory=Clock)
    endpoint: tuple[str, int, ServerTLS | None] | None = None
    _workers: dict[int, int] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _started: threading.Event = field(default_factory=threading.Event, init=False, repr=False)

    @classmethod
    def of(cls, config: Config) -> FlowObserver:
        """The observer of a flow of ``config``: the process's metrics and ledger, a new stop signal."""
        m = config.metrics
        return cls(endpoint=(m.bind, m.port, endpoint_tls(config.security)) if m.enabled else None)

    def worker(self) -> int:
        """This worker thread's index within the process, in order of first activity."""
        ident = threading.get_ident()
        with self._lock:
            return self._workers.setdefault(ident, len(self._workers))

    def start(self) -> None:
        """Serve the metrics endpoint, from the first worker that builds a step (``bytewax.run`` path)."""
        if self.endpoint is None or self._started.is_set():
            return
        self._started.set()
        try:
            serve(*self.endpoint)
        except OSError as exc:
            log.warning("%s; this process runs without a metrics endpoint", exc)
