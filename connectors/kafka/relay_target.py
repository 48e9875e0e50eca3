"""The side a relay writes to: its topics, its partitioner, one producer whose every round is confirmed.

:class:`RelayTarget` creates the relayed topics that the target lacks (with
the source's partition count), places each message on a partition by its key
(:func:`target_partition`, the partitioner of this project's producers),
sends it with its key, value, headers and timestamp, and waits for every
delivery report of a round before the relay may commit the source offsets.
While the target is unreachable a round waits at most its
``unavailable_timeout`` (:meth:`~connectors.kafka.health.ConnectionHealth.patience`,
as the dataflow's Kafka sink does), then gives the messages up and raises
:class:`~connectors.kafka.health.KafkaUnavailable`: nothing is committed,
so the next start reads them again.

:meth:`RelayTarget.recall` fills a :class:`~connectors.kafka.dedup.DedupWindow`
from the newest messages of every target partition: what a relay killed
after a delivery and before its commit sends again is there already.
"""

from __future__ import annotations

import logging
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaError, KafkaException, Producer, TopicPartition

from connectors.kafka.dedup import DedupWindow, message_digest
from connectors.kafka.health import DEFAULT_UNAVAILABLE_TIMEOUT, ConnectionHealth, draining
from connectors.kafka.sink import FLUSH_SLICE, DeliveryFailed
from connectors.kafka.topics import TopicSetupError, connect_admin, ensure_topics, topic_metadata

__all__ = ["RelayTarget", "target_partition"]

log = logging.getLogger("becomingone.kafka.relay")

_PURGED = (KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT)


def target_partition(key: bytes | None, source_partition: int, partitions: int) -> int:
    """The target partition of a message: CRC-32 of its key modulo the partition count, as librdkafka's
    default partitioner places our producers' keyed messages (:func:`~connectors.kafka.producer.sensor_partitions`);
    a message without a key stays on its source partition's number (modulo the count), so keyless
    messages keep their order and a repeat lands where its first copy did.

    >>> target_partition(b"pmu-7", 0, 4), target_partition(None, 6, 4)
    (3, 2)
    """
    if key:
        return zlib.crc32(key) % partitions
    return source_partition % partitions


class RelayTarget:
    """The target cluster of a relay.

    Args:
        settings: producer settings (:func:`~connectors.kafka.settings.producer_settings` of ``relay.target``).
        admin: admin-client settings of the same cluster.
        unavailable_timeout: seconds a round may wait for an unreachable cluster; 0 = forever.
        client: names the connection gauge, ``becomingone_kafka_connected{client=...}``.
    """

    def __init__(self, settings: Mapping[str, Any], admin: Mapping[str, Any], *,
                 unavailable_timeout: float = DEFAULT_UNAVAILABLE_TIMEOUT, client: str = "relay:target") -> None:
        self.settings = dict(settings)
        self.admin = dict(admin)
        self.health = ConnectionHealth(client, str(self.settings.get("bootstrap.servers")), unavailable_timeout,
                                       timeout_key="relay.target.unavailable_timeout")
        self.partitions: dict[str, int] = {}
        self._producer: Producer | None = None
        self._errors: list[str] = []
        self._purged: Counter[str] = Counter()
        self._failures = 0
        self._sent = 0

    @property
    def bootstrap(self) -> str:
        return self.health.bootstrap

    def prepare(self, source_partitions: Mapping[str, int], timeout: float = 10.0) -> None:
        """Create the topics the target lacks with the source's partition count, learn each topic's
        partition count, and start the producer.

        Raises:
            KafkaUnreachable: the target did not answer within ``timeout`` seconds.
            TopicSetupError: a topic could not be created or described.
        """
        admin = connect_admin(self.admin, timeout=timeout)
        for topic, count in source_partitions.items():
            ensure_topics(admin, [topic], count, timeout=timeout)
        metadata = topic_metadata(admin, timeout)
        for topic in source_partitions:
            found = metadata.topics.get(topic)
            if found is None or found.error is not None or not found.partitions:
                raise TopicSetupError(f"cannot list the partitions of topic {topic!r} on the target cluster "
                                      f"{self.bootstrap}: {found.error if found is not None else 'no such topic'}")
            self.partitions[topic] = len(found.partitions)
        # Failures only: the round's flush waits for all reports, a callback per message would cost more.
        self._producer = Producer(self.health.settings(
            {**self.settings, "delivery.report.only.error": True, "on_delivery": self._on_delivery}))

    def partition_of(self, topic: str, key: bytes | None, source_partition: int) -> int:
        return target_partition(key, source_partition, self.partitions[topic])

    # -- a round

    def send(self, topic: str, partition: int, key: bytes | None, value: bytes | None,
             headers: Sequence[tuple[str, bytes]] | None, timestamp: tuple[int, int]) -> None:
        """Queue one message; its source timestamp is kept (librdkafka stamps ``now`` when there is none)."""
        kind, ms = timestamp
        message: dict[str, Any] = {"value": value, "key": key, "partition": partition,
                                   "timestamp": ms if kind != TIMESTAMP_NOT_AVAILABLE and ms > 0 else 0}
        if headers:
            message["headers"] = headers
        while True:
            try:
                self._producer.produce(topic, **message)
                break
            except BufferError:
                self._wait(time.monotonic())  # the local queue is full: let deliveries make room
            except KafkaException as exc:  # refused before queueing, e.g. above message.max.bytes
                raise DeliveryFailed(f"the target cluster {self.bootstrap} refuses a message of topic {topic!r} "
                                     f"({len(value or b'')} bytes): {exc.args[0].str()}") from None
        self._sent += 1

    def deliver(self) -> None:
        """Wait until every queued message is confirmed by the target.

        Raises:
            KafkaUnavailable: the target stayed unreachable longer than its ``unavailable_timeout``
                (while stopping: :data:`~connectors.kafka.health.DRAIN_PATIENCE`); the messages are given up.
            DeliveryFailed: the target refused messages (naming the first reason).
        """
        failures = self._failures
        self._wait(time.monotonic())
        if self._sent and self._failures == failures:
            self.health.up()  # delivered: the cluster answers
        self._sent = 0
        if self._errors:
            errors, self._errors = self._errors, []
            raise DeliveryFailed(f"{len(errors)} relayed message(s) not delivered to {self.bootstrap}; "
                                 f"first: {errors[0]}")

    def _wait(self, started: float) -> None:
        while True:
            remaining = self._producer.flush(FLUSH_SLICE)
            if not remaining:
                return
            patience = self.health.patience()
            if patience is not None and self.health.unreachable_for(since=started) >= patience:
                self._give_up(remaining, self.health.unreachable_for(since=started))

    def _give_up(self, remaining: int, seconds: float) -> None:
        self._producer.purge()
        self._producer.flush(0)  # serves the reports of the purged messages
        self._sent = 0
        purged, self._purged = self._purged, Counter()
        topics = ", ".join(f"{topic}: {n}" for topic, n in sorted(purged.items()))
        what = (f"{remaining} relayed message(s) not delivered{f' ({topics})' if topics else ''}, "
                "their source offsets not committed: ")
        raise self.health.unavailable(seconds, prefix=what, stopping=draining())

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            self._failures += 1
            if err.code() in _PURGED:
                self._purged[msg.topic()] += 1
            else:
                self._errors.append(f"{msg.topic()} partition {msg.partition()}: {err.str()}")

    def poll(self) -> None:
        """Serve the producer's callbacks (connection state, statistics) between rounds."""
        if self._producer is not None:
            self._producer.poll(0)

    def close(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            producer.flush(0)

    # -- what the target holds

    def recall(self, window: DedupWindow, timeout: float = 30.0) -> int:
        """Remember the newest ``window.size`` messages of every partition of the relayed topics
        in ``window``; how many were read.

        Raises:
            TopicSetupError: the partitions could not be read to their end within ``timeout`` seconds.
        """
        if not window.size or not self.partitions:
            return 0
        consumer = Consumer({**self.admin, "group.id": f"becomingone-relay-recall-{uuid.uuid4().hex[:8]}",
                             "enable.auto.commit": False, "enable.partition.eof": True})
        try:
            return self._read_tails(consumer, window, timeout)
        finally:
            consumer.close()

    def _read_tails(self, consumer: Consumer, window: DedupWindow, timeout: float) -> int:
        starts = []
        for topic, count in self.partitions.items():
            for p in range(count):
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
                if high > low:
                    starts.append(TopicPartition(topic, p, max(low, high - window.size)))
        if not starts:
            return 0
        consumer.assign(starts)
        open_parts = {(tp.topic, tp.partition) for tp in starts}
        deadline = time.monotonic() + timeout
        read = 0
        while open_parts:
            if time.monotonic() >= deadline:
                raise TopicSetupError(f"cannot read back the newest messages of the target cluster "
                                      f"{self.bootstrap} within {timeout:g} s ({len(open_parts)} partition(s) left)")
            for msg in consumer.consume(1000, 0.5):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        open_parts.discard((msg.topic(), msg.partition()))
                    continue
                window.remember(msg.topic(), msg.partition(), message_digest(msg.topic(), msg.key(), msg.value()))
                read += 1
        return read
