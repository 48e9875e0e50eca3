"""Liveness and readiness of this process's flow: what ``/healthz`` and ``/readyz`` answer.

Both are served beside ``/metrics`` on the metrics endpoint (:func:`connectors.endpoint.serve`),
each as ``200`` or ``503`` with a small JSON body naming every check and its state::

    {"ok": false, "checks": {"flow": {"ok": true, "state": "running"},
                             "sources": {"ok": true, "state": "assigned: 2 partitions"},
                             "archive": {"ok": true, "state": "writable"},
                             "broker": {"ok": false, "state": "unreachable: producer:0"}}}

``/healthz`` (liveness)
    ``flow``: the process is up and its flow was not stopped or ended by an error
    (``idle``, ``starting``, ``running`` and ``stopping`` pass; ``stopped`` and ``failed`` do not).

``/readyz`` (readiness): ``flow`` is ``running`` (not draining after a stop request), and
    ``sources``: at least one input partition was assigned to this process;
    ``archive`` (with ``sink.archive``): the archive root, or its nearest existing parent,
    is a directory this process may write to;
    ``broker`` (with ``kafka``): no Kafka client of this process finds its cluster
    unreachable (:mod:`connectors.kafka.health`, the gauge ``becomingone_kafka_connected``).

The state is process-wide (:func:`flow_health`): the run commands call
:meth:`FlowHealth.begin` before serving the endpoint, the sources report each partition
they build, and the checks are computed at each request.  No body holds an address, a
path or a setting.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Check", "FlowHealth", "Probe", "flow_health", "liveness", "readiness", "probe_app"]

#: Flow phases :meth:`FlowHealth.finish` may set; ``starting`` and ``running`` come before them.
ENDED = ("stopped", "failed")


@dataclass(frozen=True)
class Check:
    """One named check: whether it passes, and its state in a few words."""

    name: str
    ok: bool
    state: str


@dataclass(frozen=True)
class Probe:
    """A probe's answer: all its checks, passing only if each passes."""

    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def body(self) -> bytes:
        """The JSON body: ``{"ok": ..., "checks": {name: {"ok": ..., "state": ...}}}``."""
        checks = {c.name: {"ok": c.ok, "state": c.state} for c in self.checks}
        return json.dumps({"ok": self.ok, "checks": checks}).encode()


@dataclass
class FlowHealth:
    """What the probes of this process look at.

    Attributes:
        phase: ``idle`` (no flow yet), ``starting``, ``running``, ``stopped`` or ``failed``.
        partitions: input partitions built in this process since :meth:`begin`.
        archive: the archive root when the flow archives, else None.
        kafka: True when the flow uses Kafka (the broker check applies).
        stop_requested: tells whether the flow was asked to stop (draining).
    """

    phase: str = "idle"
    partitions: int = 0
    archive: Path | None = None
    kafka: bool = False
    stop_requested: Callable[[], bool] = field(default=lambda: False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def begin(self, *, archive: Path | None, kafka: bool) -> None:
        """A flow starts in this process: nothing assigned yet, not asked to stop."""
        with self._lock:
            self.phase, self.partitions, self.archive, self.kafka = "starting", 0, archive, kafka
            self.stop_requested = lambda: False

    def running(self, stop_requested: Callable[[], bool]) -> None:
        """The flow is built and about to run; ``stop_requested`` says when it drains."""
        with self._lock:
            self.phase, self.stop_requested = "running", stop_requested

    def partition_built(self) -> None:
        """A source partition was assigned to this process and built."""
        with self._lock:
            self.partitions += 1

    def finish(self, phase: str) -> None:
        """The flow ended: ``stopped`` (end of input or a drained stop) or ``failed``."""
        if phase not in ENDED:
            raise ValueError(f"phase must be one of {ENDED}, not {phase!r}")
        with self._lock:
            self.phase = phase

    def flow_state(self) -> str:
        """``running`` becomes ``stopping`` once a stop was requested."""
        with self._lock:
            phase, stopping = self.phase, self.stop_requested
        return "stopping" if phase == "running" and stopping() else phase


_health = FlowHealth()


def flow_health() -> FlowHealth:
    """The process's :class:`FlowHealth`."""
    return _health


def liveness(health: FlowHealth) -> Probe:
    """``/healthz``: the flow is alive (not stopped, not failed)."""
    state = health.flow_state()
    return Probe((Check("flow", state not in ENDED, state),))


def readiness(health: FlowHealth) -> Probe:
    """``/readyz``: running, sources assigned, archive writable (if on), broker reachable (if used)."""
    state = health.flow_state()
    n = health.partitions
    checks = [Check("flow", state == "running", state),
              Check("sources", n > 0, f"assigned: {n} partition{'s' if n != 1 else ''}" if n else "not assigned")]
    if health.archive is not None:
        writable = _writable(health.archive)
        checks.append(Check("archive", writable, "writable" if writable else "not writable"))
    if health.kafka:
        from connectors.kafka.health import unreachable_clients  # only a flow with Kafka loads the client

        down = unreachable_clients()
        checks.append(Check("broker", not down, f"unreachable: {', '.join(down)}" if down else "reachable"))
    return Probe(tuple(checks))


def _writable(root: Path) -> bool:
    """True when ``root`` (or, before the sink made it, its nearest existing parent) is a writable directory."""
    path = root.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


_STATUS = {True: "200 OK", False: "503 Service Unavailable"}


def probe_app(metrics_app: Callable[..., Iterable[bytes]],
              health: Callable[[], FlowHealth] = flow_health) -> Callable[..., Iterable[bytes]]:
    """A WSGI app: ``/healthz`` and ``/readyz`` from ``health()``, any other path by ``metrics_app``."""
    probes = {"/healthz": liveness, "/readyz": readiness}

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        probe = probes.get(environ.get("PATH_INFO", ""))
        if probe is None:
            return metrics_app(environ, start_response)
        answer = probe(health())
        body = answer.body()
        start_response(_STATUS[answer.ok], [("Content-Type", "application/json"), ("Cache-Control", "no-store"),
                                            ("Content-Length", str(len(body)))])
        return [body] if environ.get("REQUEST_METHOD") != "HEAD" else []

    return app
