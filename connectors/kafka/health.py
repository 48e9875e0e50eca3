"""Kafka client health: librdkafka's log lines, the connection state, and a cluster that stays away.

Log lines
    librdkafka's own log lines go to the Python logger
    ``becomingone.kafka.librdkafka`` (the ``logger`` client setting), and
    this module's connection messages to ``becomingone.kafka.connection``.
    Both pass through :class:`RepeatFilter`: the same line (numbers aside,
    so ports, counts and client names do not make lines differ) at most once
    per :data:`REPEAT_WINDOW` seconds, the next one saying how many were
    left out.  A broker that is down makes each client retry many times a
    second; without this, an outage would bury every other line.

Connection state
    :class:`ConnectionHealth` follows one client through its ``error_cb``
    (``_ALL_BROKERS_DOWN``: unreachable) and its statistics (a broker ``UP``
    in two reports in a row: reachable), plus what its owner reports (a
    message read, a batch delivered).  Callbacks run when the client is
    polled, so the state is as fresh as the client's last poll.  It is the gauge
    ``becomingone_kafka_connected{client}`` (1 or 0), and
    :meth:`ConnectionHealth.check` raises :class:`KafkaUnavailable` once the
    cluster has been unreachable longer than ``kafka.unavailable_timeout``.

Stopping
    :func:`set_draining` tells the clients that the flow was asked to stop
    (first Ctrl-C, SIGTERM): output that cannot be delivered to an
    unreachable cluster then holds the stop for at most
    :data:`DRAIN_PATIENCE` seconds before the flow stops with an error
    saying what was not delivered.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import KafkaError
from connectors.metrics import metrics

from schemas.config import DEFAULT_UNAVAILABLE_TIMEOUT  # seconds (kafka.unavailable_timeout)

__all__ = [
    "DEFAULT_UNAVAILABLE_TIMEOUT",
    "DRAIN_PATIENCE",
    "REPEAT_WINDOW",
    "ConnectionHealth",
    "KafkaUnavailable",
    "RepeatFilter",
    "draining",
    "cluster_unreachable",
    "librdkafka_logger",
    "set_draining",
    "unreachable_clients",
]

#: Seconds a stopping flow still waits for output to reach an unreachable cluster.
DRAIN_PATIENCE = 5.0
#: The same log line at most once per this many seconds.
REPEAT_WINDOW = 60.0
#: librdkafka statistics (broker states, watermarks) this often, unless the config sets its own.
STATISTICS_INTERVAL_MS = 1000


class RepeatFilter(logging.Filter):
    """Lets the same line through at most once per ``window`` seconds; the next one
    that passes ends with how many were held back.

    Lines that differ only in numbers count as the same (ports, offsets,
    durations, client numbers).  Debug lines always pass: asking librdkafka
    for ``debug`` output means wanting all of it.
    """

    _NUMBERS = re.compile(r"\d+")

    def __init__(self, window: float = REPEAT_WINDOW, *, clock: Callable[[], float] = time.monotonic,
                 max_kinds: int = 1000) -> None:
        super().__init__()
        self.window = window
        self._clock = clock
        self._max_kinds = max_kinds
        self._lock = threading.Lock()
        self._seen: dict[tuple[int, str], list] = {}  # kind -> [last time let through, held back since]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.INFO:
            return True
        text = record.getMessage()
        kind = (record.levelno, self._NUMBERS.sub("#", text))
        now = self._clock()
        with self._lock:
            seen = self._seen.get(kind)
            if seen is not None and now - seen[0] < self.window:
                seen[1] += 1
                return False
            held = seen[1] if seen is not None else 0
            self._seen[kind] = [now, 0]
            if len(self._seen) > self._max_kinds:
                self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.window}
        if held:
            record.msg = f"{text} ({held} more like it in the last {self.window:g} s)"
            record.args = None
        return True


_repeats = RepeatFilter()


def _filtered_logger(name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    if _repeats not in logger.filters:
        logger.addFilter(_repeats)
    return logger


#: librdkafka's log lines (the ``logger`` setting of every client this project builds).
_librdkafka_log = _filtered_logger("becomingone.kafka.librdkafka")
log = _filtered_logger("becomingone.kafka.connection")


def librdkafka_logger() -> logging.Logger:
    """The logger for librdkafka's lines, with repeats held back (:class:`RepeatFilter`)."""
    return _librdkafka_log


class KafkaUnavailable(ConnectionError):
    """The cluster was unreachable longer than ``kafka.unavailable_timeout``.

    Attributes:
        bootstrap: the ``bootstrap.servers`` of the client.
        seconds: how long it had been unreachable.
        reason: librdkafka's last connection error.
    """

    def __init__(self, bootstrap: str, seconds: float, timeout: float, reason: str, prefix: str = "",
                 stopping: bool = False, key: str = "kafka.unavailable_timeout") -> None:
        self.bootstrap, self.seconds, self.reason = bootstrap, seconds, reason
        why = "while stopping" if stopping else f"({key}: {timeout:g} s)"
        super().__init__(f"{prefix}Kafka at {bootstrap} unreachable for {seconds:.1f} s {why}; "
                         f"last error: {reason or 'none reported'}")


_draining = threading.Event()


def set_draining(on: bool = True) -> None:
    """The flow was asked to stop (on) or runs again (off); see :data:`DRAIN_PATIENCE`."""
    if on:
        _draining.set()
    else:
        _draining.clear()


def draining() -> bool:
    """True while the flow drains after a stop request."""
    return _draining.is_set()


_clients: weakref.WeakSet[ConnectionHealth] = weakref.WeakSet()
_clients_lock = threading.Lock()


def cluster_unreachable(bootstrap: str) -> bool:
    """True while any client of this process with this ``bootstrap.servers`` finds no broker.

    A client's own state is only as fresh as its last poll; this answers for
    one that was not polled lately (a consumer while its worker waits on output).
    """
    with _clients_lock:
        clients = list(_clients)
    return any(c.bootstrap == bootstrap and c.down_since is not None for c in clients)


def unreachable_clients() -> list[str]:
    """The ``client`` names of this process's Kafka clients that find no broker now (sorted)."""
    with _clients_lock:
        clients = list(_clients)
    return sorted(c.client for c in clients if c.down_since is not None)


#: Errors that say why a broker cannot be reached; the last one is named when the flow stops.
_CONNECTION_ERRORS = {KafkaError._TRANSPORT, KafkaError._RESOLVE, KafkaError._SSL, KafkaError._AUTHENTICATION,
                      KafkaError._ALL_BROKERS_DOWN}


class ConnectionHealth:
    """Whether one Kafka client reaches its cluster, and since when it does not.

    Args:
        client: the ``client`` label of ``becomingone_kafka_connected``.
        bootstrap: ``bootstrap.servers``, for messages.
        unavailable_timeout: seconds unreachable before :meth:`check` raises;
            0 waits forever.
        on_stats: also given each parsed statistics report.
        timeout_key: the config key of ``unavailable_timeout``, for messages.
    """

    def __init__(self, client: str, bootstrap: str, unavailable_timeout: float = DEFAULT_UNAVAILABLE_TIMEOUT,
                 on_stats: Callable[[dict], None] | None = None,
                 timeout_key: str = "kafka.unavailable_timeout") -> None:
        self.client = client
        self.timeout_key = timeout_key
        self.bootstrap = bootstrap
        self.timeout = float(unavailable_timeout)
        self.down_since: float | None = None
        self.reason = ""
        self._on_stats = on_stats
        self._up_reports = 0  # statistics reports in a row with a broker up
        self._gauge = metrics().kafka_connected.labels(client)
        self._gauge.set(1)
        with _clients_lock:
            _clients.add(self)

    # -- client callbacks

    def settings(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """``settings`` with this object's ``error_cb`` and ``stats_cb``, statistics every
        :data:`STATISTICS_INTERVAL_MS` (unless set) and librdkafka's lines routed to Python logging."""
        out = dict(settings)
        out["error_cb"] = self.on_error
        out["stats_cb"] = self.on_stats
        out.setdefault("statistics.interval.ms", STATISTICS_INTERVAL_MS)
        out.setdefault("logger", librdkafka_logger())
        return out

    def on_error(self, error: KafkaError) -> None:
        """``error_cb``: all brokers down makes the client unreachable; other errors are logged."""
        code = error.code()
        if code in _CONNECTION_ERRORS:
            if code != KafkaError._ALL_BROKERS_DOWN or not self.reason:
                self.reason = error.str()
            if code == KafkaError._ALL_BROKERS_DOWN:
                self.down(error.str())
            return  # librdkafka logs the failed connection itself
        if error.fatal():
            log.error("Kafka client %s: fatal error: %s", self.client, error.str())
        else:
            log.warning("Kafka client %s: %s", self.client, error.str())

    def on_stats(self, text: str) -> None:
        """``stats_cb``: a broker connection up means the cluster is reachable."""
        try:
            stats = json.loads(text)
        except ValueError:
            return
        brokers = stats.get("brokers") or {}
        if any(b.get("state") == "UP" and b.get("source") != "internal" for b in brokers.values()):
            self._up_reports += 1
            # Two reports in a row: a connection that is up for a moment only (a reconnect to
            # a port that something else answers) is not the cluster coming back.
            if self._up_reports >= 2:
                self.up()
        else:
            self._up_reports = 0
        if self._on_stats is not None:
            self._on_stats(stats)

    # -- state

    def down(self, why: str = "") -> None:
        """No broker answers (from now, unless it was so already)."""
        if self.down_since is not None:
            return
        self.down_since = time.monotonic()
        self._up_reports = 0
        self._gauge.set(0)
        then = (f"the flow stops if it stays unreachable for {self.timeout:g} s ({self.timeout_key})"
                if self.timeout > 0 else f"waiting for it ({self.timeout_key}: 0)")
        log.warning("Kafka at %s unreachable: %s; %s", self.bootstrap, why or "no broker answers", then)

    def up(self) -> None:
        """A broker answered: the cluster is reachable again."""
        if self.down_since is None:
            return
        seconds = time.monotonic() - self.down_since
        self.down_since = None
        self.reason = ""
        self._gauge.set(1)
        log.warning("Kafka at %s reachable again after %.1f s", self.bootstrap, seconds)

    @property
    def connected(self) -> bool:
        return self.down_since is None

    def unreachable_for(self, since: float | None = None) -> float:
        """Seconds the cluster has been unreachable (0 while reachable), counted from
        ``since`` (a ``time.monotonic()``) at the earliest."""
        if self.down_since is None:
            return 0.0
        start = self.down_since if since is None else max(self.down_since, since)
        return max(time.monotonic() - start, 0.0)

    def patience(self) -> float | None:
        """Seconds an operation may wait on an unreachable cluster: ``kafka.unavailable_timeout``,
        at most :data:`DRAIN_PATIENCE` while the flow drains; None = forever."""
        limit = self.timeout if self.timeout > 0 else None
        if draining():
            limit = DRAIN_PATIENCE if limit is None else min(limit, DRAIN_PATIENCE)
        return limit

    def check(self) -> None:
        """Raise :class:`KafkaUnavailable` once the cluster has been unreachable longer than
        ``kafka.unavailable_timeout`` (never with 0)."""
        if self.down_since is not None and self.timeout > 0:
            seconds = time.monotonic() - self.down_since
            if seconds >= self.timeout:
                raise self.unavailable(seconds)

    def unavailable(self, seconds: float, prefix: str = "", stopping: bool = False) -> KafkaUnavailable:
        """The error to raise after ``seconds`` unreachable (``prefix``: what was lost)."""
        return KafkaUnavailable(self.bootstrap, seconds, self.timeout, self.reason, prefix, stopping,
                                self.timeout_key)
