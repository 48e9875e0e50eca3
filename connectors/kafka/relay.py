"""A relay: topics copied from one Kafka cluster to another, at least once, repeats dropped.

One round (:meth:`Relay.step`) reads up to ``batch_size`` messages from the
source (a consumer in the relay's group), drops the repeats
(:class:`~connectors.kafka.dedup.DedupWindow`), sends the rest to the topic of
the same name on the target (:class:`~connectors.kafka.relay_target.RelayTarget`:
same key, value, headers and timestamp, partition by key), waits until the
target confirmed every one, and only then commits the source offsets.  So a
relay killed at any moment has committed only what the target holds: the
next start reads again from there and loses nothing.  What it reads again
was possibly delivered already; the window, filled from the newest messages
of the target when partitions are assigned, drops those repeats.

Order: a source partition is read in order and each message of one key goes
to one target partition, produced by an idempotent producer, so each key's
messages keep their order.

Metrics: ``becomingone_relay_messages_total{topic}`` (delivered),
``becomingone_relay_duplicates_total{topic}`` (dropped),
``becomingone_relay_lag_messages{topic,partition}`` (source messages not yet
confirmed: the high watermark minus the committed offset, from the
consumer's statistics about every second), and the connection gauges
``becomingone_kafka_connected{client="relay:source"|"relay:target"}``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from connectors.kafka.dedup import DedupWindow, message_digest
from connectors.kafka.health import DEFAULT_UNAVAILABLE_TIMEOUT, ConnectionHealth
from connectors.kafka.relay_target import RelayTarget
from connectors.kafka.topics import TopicSetupError, connect_admin, topic_metadata
from connectors.metrics import metrics

__all__ = ["Relay", "RelayCounts", "RelayError"]

log = logging.getLogger("becomingone.kafka.relay")


class RelayError(RuntimeError):
    """The source reported an error for a relayed partition."""


@dataclass
class RelayCounts:
    """What a relay did since it started."""

    copied: Counter[str] = field(default_factory=Counter)
    """Messages delivered to the target, by topic."""
    duplicates: Counter[str] = field(default_factory=Counter)
    """Repeats dropped, by topic."""
    started: float = field(default_factory=time.monotonic)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started


class Relay:
    """Copies ``topics`` from the source cluster to the ``target``.

    Args:
        settings: consumer settings of the source, ``group.id`` (the relay's group, whose committed
            offsets are where it resumes) and ``auto.offset.reset`` (where a group without offsets starts)
            included.
        admin: admin-client settings of the source.
        target: the side written to.
        topics: the relayed topics, each copied to the topic of the same name.
        batch_size: messages per round at most.
        dedup_window: digests remembered per target partition (0: no deduplication).
        unavailable_timeout: seconds the source may be unreachable before a round raises
            :class:`~connectors.kafka.health.KafkaUnavailable`; 0 = forever.
        timeout_key: the config key of ``unavailable_timeout``, for messages.

    Call :meth:`start`, then :meth:`step` until done, then :meth:`close`.  A round that
    raised leaves nothing committed that the target does not hold; the relay is not used
    again after it.
    """

    def __init__(self, settings: Mapping[str, Any], admin: Mapping[str, Any], target: RelayTarget,
                 topics: Sequence[str], *, batch_size: int = 1000, dedup_window: int = 10_000,
                 unavailable_timeout: float = DEFAULT_UNAVAILABLE_TIMEOUT, client: str = "relay:source",
                 timeout_key: str = "kafka.unavailable_timeout") -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.settings = dict(settings)
        self.admin = dict(admin)
        self.target = target
        self.topics = list(dict.fromkeys(topics))
        self.batch_size = batch_size
        self.window = DedupWindow(dedup_window)
        self.counts = RelayCounts()
        self.health = ConnectionHealth(client, str(self.settings.get("bootstrap.servers")), unavailable_timeout,
                                       on_stats=self._on_stats, timeout_key=timeout_key)
        self._consumer: Consumer | None = None
        self._delivered: dict[tuple[str, int], int] = {}  # next offset per partition, confirmed by the target

    @property
    def group_id(self) -> str:
        return str(self.settings.get("group.id"))

    def start(self, timeout: float = 10.0) -> None:
        """Reach both clusters, create the topics the target lacks, join the source's consumer group.

        Raises:
            KafkaUnreachable: a cluster did not answer within ``timeout`` seconds.
            TopicSetupError: a relayed topic does not exist on the source, or cannot be created on the target.
            KafkaSetupError: librdkafka refused the settings of a side.
        """
        partitions = self._source_partitions(timeout)
        self.target.prepare(partitions, timeout)
        m = metrics()
        for topic in self.topics:  # every series from the start, at 0
            m.relay_messages.labels(topic)
            m.relay_duplicates.labels(topic)
        self._consumer = Consumer(self.health.settings(
            {**self.settings, "enable.auto.commit": False, "on_commit": self._on_commit}))
        self._consumer.subscribe(self.topics, on_assign=self._assigned, on_revoke=self._revoked,
                                 on_lost=self._revoked)

    def _source_partitions(self, timeout: float) -> dict[str, int]:
        metadata = topic_metadata(connect_admin(self.admin, timeout=timeout), timeout)
        counts = {}
        for topic in self.topics:
            found = metadata.topics.get(topic)
            if found is None or found.error is not None or not found.partitions:
                why = found.error.str() if found is not None and found.error is not None else "no such topic"
                raise TopicSetupError(f"relay.topics: topic {topic!r} cannot be read from the source cluster "
                                      f"{self.health.bootstrap}: {why}")
            counts[topic] = len(found.partitions)
        return counts

    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Before any message of the new assignment: what the target holds already counts as seen,
        # including what another relay of the group (or this one, before a kill) delivered last.
        started = time.monotonic()
        read = self.target.recall(self.window)
        log.info("relay: %d partition(s) assigned; %d newest target message(s) read back in %.1f s",
                 len(partitions), read, time.monotonic() - started)

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Each round committed already; a later commit of these partitions would move back
        # the offsets of the relay that takes them over.
        for tp in partitions:
            self._delivered.pop((tp.topic, tp.partition), None)

    # -- a round

    def step(self, timeout: float = 0.5) -> int:
        """Copy one batch: read it, send what is new, wait for the target's confirmation, commit.

        Waits up to ``timeout`` seconds for messages; returns how many were read (repeats included).

        Raises:
            KafkaUnavailable: the source or the target stayed unreachable too long.
            DeliveryFailed: the target refused messages.
            RelayError: the source reported an error for a partition.
        """
        if self.health.down_since is not None:
            self.health.check()
        batch = self._consumer.consume(self.batch_size, timeout)
        self.target.poll()
        if not batch:
            return 0
        positions: dict[tuple[str, int], int] = {}
        copied: Counter[str] = Counter()
        dropped: Counter[str] = Counter()
        for msg in batch:
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                raise RelayError(f"error reading topic {msg.topic()!r} partition {msg.partition()} from "
                                 f"{self.health.bootstrap}: {error.str()}")
            topic, partition, key, value = msg.topic(), msg.partition(), msg.key(), msg.value()
            positions[(topic, partition)] = msg.offset() + 1
            to = self.target.partition_of(topic, key, partition)
            if not self.window.admit(topic, to, message_digest(topic, key, value)):
                dropped[topic] += 1
                continue
            self.target.send(topic, to, key, value, msg.headers(), msg.timestamp())
            copied[topic] += 1
        if copied:
            self.target.deliver()
        self._count(copied, dropped)
        if positions:
            self.health.up()
            self._delivered.update(positions)
            self._commit(positions, wait=False)
        return len(batch)

    def _count(self, copied: Counter[str], dropped: Counter[str]) -> None:
        m = metrics()
        for topic, n in copied.items():
            m.relay_messages.labels(topic).inc(n)
        for topic, n in dropped.items():
            m.relay_duplicates.labels(topic).inc(n)
        self.counts.copied.update(copied)
        self.counts.duplicates.update(dropped)

    def _commit(self, positions: Mapping[tuple[str, int], int], *, wait: bool) -> None:
        """Commit delivered positions to the group: in the background after each round (a commit that
        is lost only means messages read again, and dropped as repeats), waiting at the close."""
        offsets = [TopicPartition(t, p, o) for (t, p), o in positions.items()]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=not wait)
        except KafkaException as exc:
            log.warning("relay: cannot commit offsets to consumer group %s: %s", self.group_id, exc.args[0].str())

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        failed = [tp for tp in partitions or () if tp.error is not None]
        if err is not None or failed:
            why = err.str() if err is not None else failed[0].error.str()
            log.warning("relay: offsets not committed to consumer group %s (read again later, "
                        "dropped as repeats): %s", self.group_id, why)

    def _on_stats(self, stats: dict) -> None:
        gauge = metrics().relay_lag
        for topic, data in (stats.get("topics") or {}).items():
            for part, values in (data.get("partitions") or {}).items():
                lag = values.get("consumer_lag", -1)
                if part != "-1" and lag is not None and lag >= 0:
                    gauge.labels(topic, part).set(lag)

    def close(self) -> None:
        """Commit what the target confirmed (waiting, while the source answers), leave the group, stop."""
        consumer = self._consumer
        try:
            if consumer is not None and self._delivered and self.health.connected:
                self._commit(self._delivered, wait=True)
        finally:
            self._consumer = None
            if consumer is not None:
                consumer.close()
            self.target.close()
