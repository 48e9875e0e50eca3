"""The dataflow's Kafka output: one producer per worker, every batch delivered before the next.

A batch waits for its delivery reports; a failed delivery stops the flow
with :class:`DeliveryFailed`.  While the cluster is
unreachable (see :mod:`connectors.kafka.health`), the wait is bounded by
``unavailable_timeout``: then the undelivered messages are given up and the
flow stops with :class:`~connectors.kafka.health.KafkaUnavailable` naming
how many.  A flow that was asked to stop waits at most
:data:`~connectors.kafka.health.DRAIN_PATIENCE` seconds for such a cluster.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import KafkaError, KafkaException, Producer

from connectors.kafka.health import DEFAULT_UNAVAILABLE_TIMEOUT, ConnectionHealth, draining
from connectors.kafka.topics import connect_admin, ensure_topics
from connectors.metrics import metrics

__all__ = ["DeliveryFailed", "Shrink", "TopicMessages", "TopicSink"]

log = logging.getLogger("becomingone.kafka")

#: Seconds between looks at the connection state while waiting for deliveries.
FLUSH_SLICE = 0.5
#: Seconds between polls of an idle producer (connection state, statistics, log lines).
IDLE_POLL_SECONDS = 1.0
_PURGED = (KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT)


class DeliveryFailed(RuntimeError):
    """Output messages the cluster did not take (after librdkafka's own retries)."""


@dataclass(frozen=True, slots=True)
class TopicMessages:
    """Many messages for one topic as one :class:`TopicSink` item: message i is
    ``keys[i]`` (bytes or None) and ``values[i]``, with the Kafka headers
    ``headers[i]`` (``(name, value)`` pairs) when ``headers`` is given, in order.

    One item instead of a ``(topic, key, value)`` tuple per message: a
    dataflow item costs Python calls at every step it passes.
    """

    topic: str
    keys: Sequence[bytes | None]
    values: Sequence[bytes]
    headers: Sequence[Sequence[tuple[str, bytes]]] | None = None


#: A smaller stand-in for a message its topic refused (None: nothing left to drop).
Shrink = Callable[[bytes], "bytes | None"]


class _TopicSinkPartition(StatelessSinkPartition["tuple[str, bytes | None, bytes] | TopicMessages"]):
    def __init__(self, settings: Mapping[str, Any], timeout: float | None, shrink: Mapping[str, Shrink],
                 health: ConnectionHealth) -> None:
        self._health = health
        # Only failures are reported: a Python callback per delivered message cost more
        # than producing it, and the flush at the end of each batch waits for all of them.
        # One callback for the producer: none is passed per message.
        self._producer = Producer(health.settings(
            {**settings, "delivery.report.only.error": True, "on_delivery": self._on_delivery}))
        self._timeout = timeout
        self._failures = 0  # delivery reports with an error so far
        self._errors: list[str] = []
        self._shrink = dict(shrink)
        self._refused: list[tuple[str, bytes, str]] = []
        self._purged: Counter[str] = Counter()
        self._sent = 0  # messages produced since the last complete flush
        # Between batches a thread polls the producer, so its connection state, statistics and
        # log lines stay current; never during a batch (the lock), whose flush serves them.
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._poller = threading.Thread(target=self._poll_while_idle, name=f"kafka-sink-{health.client}",
                                        daemon=True)
        self._poller.start()

    def _poll_while_idle(self) -> None:
        while not self._closed.wait(IDLE_POLL_SECONDS):
            with self._lock:
                if not self._closed.is_set():
                    self._producer.poll(0)

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            self._failures += 1
            if err.code() in _PURGED:
                self._purged[msg.topic()] += 1
            elif msg.topic() in self._shrink:
                self._refused.append((msg.topic(), msg.value(), err.str()))
            else:
                self._errors.append(f"{msg.topic()}: {err.str()}")

    def _resend_refused(self) -> None:
        """Messages of a topic with a stand-in (the dead letters) never stop the flow: a refused one
        is sent again as its smaller stand-in, and one refused again is logged and dropped."""
        m = metrics()
        while self._refused:
            refused, self._refused = self._refused, []
            for topic, value, why in refused:
                smaller = self._shrink[topic](value) if value is not None else None
                if smaller is None:
                    m.dead_letter_refusals.labels("dropped").inc()
                    log.error("topic %s refused a record again (%s); dropped: %s", topic, why,
                              (value or b"")[:300].decode("utf-8", "replace"))
                    continue
                m.dead_letter_refusals.labels("resent_without_original").inc()
                log.warning("topic %s refused a record of %d bytes (%s); sent again without the original bytes",
                            topic, len(value), why)
                self._produce(topic, (None,), (smaller,))
            self._flush()

    def write_batch(self, items: list[tuple[str, bytes | None, bytes] | TopicMessages]) -> None:
        with self._lock:
            for item in items:
                if type(item) is TopicMessages:
                    self._produce(item.topic, item.keys, item.values, item.headers)
                else:
                    topic, key, value = item
                    self._produce(topic, (key,), (value,))
            # Every message of the batch is delivered (or failed) before the
            # dataflow moves on: nothing is lost silently.
            self._flush()
            self._resend_refused()
            if self._errors:
                errors, self._errors = self._errors, []
                outage = (f"; Kafka at {self._health.bootstrap} unreachable for "
                          f"{self._health.unreachable_for():.1f} s" if not self._health.connected else "")
                raise DeliveryFailed(f"{len(errors)} output message(s) failed; first: {errors[0]}{outage}")

    def _flush(self) -> None:
        """Wait for every delivery report (librdkafka fails a message after ``message.timeout.ms``);
        while the cluster is unreachable at most its patience (:meth:`ConnectionHealth.patience`),
        then the rest is given up."""
        started = time.monotonic()
        failures = self._failures
        while True:
            remaining = self._producer.flush(FLUSH_SLICE)
            if not remaining:
                if self._sent and self._failures == failures:
                    self._health.up()  # delivered: the cluster answers
                self._sent = 0
                return
            if self._timeout is not None and time.monotonic() - started >= self._timeout:
                self._drop()
                self._errors.append(f"{remaining} message(s) not delivered within {self._timeout:g} s")
                return
            patience = self._health.patience()
            if patience is not None and self._health.unreachable_for(since=started) >= patience:
                self._give_up(remaining, self._health.unreachable_for(since=started))

    def _drop(self) -> Counter[str]:
        """Purge the undelivered messages; how many of each topic."""
        self._producer.purge()
        self._producer.flush(0)  # serves the reports of the purged messages
        self._sent = 0
        purged, self._purged = self._purged, Counter()
        return purged

    def _give_up(self, remaining: int, seconds: float) -> None:
        """Drop what the unreachable cluster did not take and stop the flow, saying how much it was.

        Raised, not logged, also while the flow stops: the epoch then stays open, so a
        run that resumes from the last snapshot (Bytewax recovery) publishes the
        messages again (at least once), as after any failure.
        """
        purged = self._drop()
        topics = ", ".join(f"{topic}: {n}" for topic, n in sorted(purged.items()))
        what = f"{remaining} output message(s) not delivered{f' ({topics})' if topics else ''}: "
        raise self._health.unavailable(seconds, prefix=what, stopping=draining())

    def _produce(self, topic: str, keys: Sequence[bytes | None], values: Sequence[bytes],
                 headers: Sequence[Sequence[tuple[str, bytes]]] | None = None) -> None:
        produce = self._producer.produce
        for i, (key, value) in enumerate(zip(keys, values, strict=True)):
            while True:
                try:
                    if headers is None:
                        produce(topic, value, key)
                    else:
                        produce(topic, value, key, headers=headers[i])
                    break
                except KafkaException as exc:  # refused before queueing, e.g. above message.max.bytes
                    if topic not in self._shrink:
                        raise
                    self._refused.append((topic, value, exc.args[0].str()))
                    break
                except BufferError:
                    # The local queue is full: wait for deliveries.  Not poll(): with reports
                    # for failures only it has no event to wake it and sleeps out the linger;
                    # flush() returns as soon as the queue has drained, and gives up as a batch does.
                    self._flush()
        self._sent += len(values)

    def close(self) -> None:
        with self._lock:
            self._closed.set()
            try:
                self._flush()
            finally:
                if self._errors:
                    log.error("%d output message(s) not delivered at the end; first: %s", len(self._errors),
                              self._errors[0])
        self._poller.join(timeout=IDLE_POLL_SECONDS * 2)


class TopicSink(DynamicSink["tuple[str, bytes | None, bytes] | TopicMessages"]):
    """A Bytewax sink for ``(topic, key, value)`` items (or :class:`TopicMessages`
    for many messages of one topic), one producer per worker.

    Unlike a fire-and-forget producer, each batch waits for its delivery
    reports, and a failed delivery stops the dataflow with
    :class:`DeliveryFailed` naming the topic and librdkafka's
    error.  Each worker first creates the missing ``topics`` where the cluster
    allows it.  A cluster unreachable longer than ``unavailable_timeout`` stops
    it with :class:`~connectors.kafka.health.KafkaUnavailable` (see the module's
    description); each producer's connection state is
    ``becomingone_kafka_connected{client="producer:<worker>"}``.

    Messages of a topic in ``shrink`` never stop the dataflow: one the
    topic refuses (too large, say) is sent again as ``shrink[topic](value)``
    without a key; one refused again, or with no stand-in, is logged and
    counted (``becomingone_dead_letter_refusals_total``).  The flow gives the
    dead-letter topic :func:`schemas.messages.without_original`.

    Args:
        settings: producer settings (:func:`~connectors.kafka.settings.producer_settings`).
        topics: the output topics.
        admin: admin client settings for creating them (None: ``settings``).
        shrink: per topic, the smaller stand-in of a refused message.
        unavailable_timeout: seconds a batch may wait on an unreachable cluster; 0 = forever
            (the messages still fail after librdkafka's ``message.timeout.ms``).
    """

    def __init__(self, settings: Mapping[str, Any], topics: Iterable[str], *,
                 admin: Mapping[str, Any] | None = None, shrink: Mapping[str, Shrink] | None = None,
                 unavailable_timeout: float = DEFAULT_UNAVAILABLE_TIMEOUT) -> None:
        if unavailable_timeout < 0:
            raise ValueError(f"unavailable_timeout must be 0 (forever) or more seconds, got {unavailable_timeout}")
        self.settings = dict(settings)
        self.topics = list(topics)
        self.admin = dict(admin) if admin is not None else dict(settings)
        self.shrink = dict(shrink or {})
        # A batch waits for librdkafka's message timeout (0: none), and a little longer.
        timeout_ms = float(self.settings.get("message.timeout.ms", 300_000))
        self.timeout = timeout_ms / 1000.0 + 5.0 if timeout_ms > 0 else None
        self.unavailable_timeout = float(unavailable_timeout)

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _TopicSinkPartition:
        # Every worker, not only the first: none may produce before the topics
        # exist, and "already exists" is fine.
        ensure_topics(connect_admin(self.admin), self.topics)
        health = ConnectionHealth(f"producer:{worker_index}", str(self.settings.get("bootstrap.servers")),
                                  self.unavailable_timeout)
        return _TopicSinkPartition(self.settings, self.timeout, self.shrink, health)
