"""The dataflow's Kafka input: one consumer per partition that never blocks the worker.

Offsets
    Bytewax keeps each partition's next offset in its snapshots; a restart
    resumes from there (or from ``starting_offset`` without one).  After
    each snapshot the offset is also committed to the consumer group
    (``group.id`` of the settings), without waiting for the answer, so
    ``kafka-consumer-groups --describe`` and Kafka UIs show the group's
    position and lag.  Those commits are for such tools only: nothing here
    reads them back.

Lag
    ``becomingone_source_lag_messages{topic,partition}``: the partition's
    high watermark minus the next offset to read, refreshed from the
    consumer's statistics (every second) and set to 0 at the partition's
    end.

Health
    Each consumer reports its connection state
    (``becomingone_kafka_connected{client="consumer:<topic>/<partition>"}``,
    see :mod:`connectors.kafka.health`), and a read raises
    :class:`~connectors.kafka.health.KafkaUnavailable` once the cluster has
    been unreachable longer than ``unavailable_timeout``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from datetime import datetime, timedelta, timezone
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, Message

from connectors.kafka.health import (
    DEFAULT_UNAVAILABLE_TIMEOUT,
    ConnectionHealth,
    cluster_unreachable,
    librdkafka_logger,
)
from connectors.kafka.topics import TopicSetupError, connect_admin, ensure_topics, topic_metadata
from connectors.metrics import metrics

__all__ = ["IDLE_POLL", "OffsetCommitter", "TopicSource"]

log = logging.getLogger("becomingone.kafka.connection")

#: After a poll that found nothing, a partition is polled again this much later.
IDLE_POLL = timedelta(milliseconds=1)
#: Seconds a closing partition waits for its last commit (only while the cluster is reachable).
FINAL_COMMIT_WAIT = 3.0


class OffsetCommitter:
    """Commits offsets of assigned partitions to a consumer group, never waiting for the answer.

    Through an admin client, not the reading consumers: a commit the
    consumer still owes when it closes holds ``close()`` until the group
    coordinator answers, which during an outage may not be for a long time.
    Failures are logged (repeats held back), never raised.

    Args:
        settings: admin-client settings.
        group_id: the consumer group.
    """

    def __init__(self, settings: Mapping[str, Any], group_id: str) -> None:
        self.settings = {**settings}
        self.settings.setdefault("logger", librdkafka_logger())
        self.group_id = group_id
        self._lock = threading.Lock()
        self._admin = None

    def commit(self, topic: str, partition: int, offset: int) -> Future | None:
        """Send ``offset`` as the group's position in the partition; the answer's future (None: not sent)."""
        from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
        from confluent_kafka.admin import AdminClient

        with self._lock:
            if self._admin is None:
                self._admin = AdminClient(self.settings)
            admin = self._admin
            admin.poll(0)  # serve its log lines
            try:
                futures = admin.alter_consumer_group_offsets(
                    [ConsumerGroupTopicPartitions(self.group_id, [TopicPartition(topic, partition, offset)])],
                    request_timeout=30)
            except (KafkaException, ValueError, TypeError) as exc:
                log.warning("cannot commit offsets to consumer group %s: %s", self.group_id, exc)
                return None
        future = next(iter(futures.values()))
        future.add_done_callback(self._answered)
        return future

    def poll(self) -> None:
        """Serve the admin client's queued log lines (also while no commit is sent)."""
        with self._lock:
            if self._admin is not None:
                self._admin.poll(0)

    def _answered(self, future: Future) -> None:
        try:
            result = future.result()
        except Exception as exc:  # noqa: BLE001 - any failure is only logged
            error = exc.args[0].str() if exc.args and hasattr(exc.args[0], "str") else str(exc)
            log.warning("cannot commit offsets to consumer group %s: %s", self.group_id, error)
            return
        for tp in result.topic_partitions or ():
            if tp.error is not None:
                log.warning("cannot commit offset %d of %s partition %d to consumer group %s: %s",
                            tp.offset, tp.topic, tp.partition, self.group_id, tp.error.str())


class _TopicPartitionReader(StatefulSourcePartition[Any, int]):
    """One partition of a topic, read from an offset Bytewax keeps (its recovery state).

    A poll takes what the client has fetched already and returns at once: a
    partition with nothing waiting must not hold up the worker, which also
    polls the other partitions and runs every step of the flow.  When a poll
    finds nothing, :meth:`next_awake` asks to be polled again after
    :data:`IDLE_POLL` instead.
    """

    def __init__(self, settings: dict[str, Any], topic: str, partition: int, offset: int, batch_size: int,
                 tail: bool, *, committer: OffsetCommitter | None = None,
                 unavailable_timeout: float = DEFAULT_UNAVAILABLE_TIMEOUT) -> None:
        from confluent_kafka import Consumer, TopicPartition

        self._topic, self._partition = topic, partition
        self._offset = offset
        self._start = offset
        self._batch_size = batch_size
        self._tail = tail
        self._eof = False
        self._awake: datetime | None = None
        self._end: int | None = None  # the partition's end offset when last reached
        self._committer = committer
        self._committed: int | None = None
        self._commit_future: Future | None = None
        self._lag = None  # the gauge's series, made at the first measured lag: no 0 before it is known
        self._health = ConnectionHealth(f"consumer:{topic}/{partition}", str(settings.get("bootstrap.servers")),
                                        unavailable_timeout, on_stats=self._on_stats)
        # Partition ends are reported in tail mode too: the end offset resolves the position
        # of a partition started at a logical offset with nothing read yet (lag, commits).
        self._consumer = Consumer(self._health.settings(
            {**settings, "enable.auto.commit": False, "enable.partition.eof": True}))
        # Know the partition's leader before the assignment: assigned without it,
        # librdkafka retries the first offset lookup only after its retry backoff.
        try:
            self._consumer.list_topics(topic, timeout=10)
        except KafkaException as exc:
            self._consumer.close()
            raise TopicSetupError(f"no metadata for Kafka topic {topic!r} within 10 s: {exc.args[0].str()}") from None
        self._consumer.assign([TopicPartition(topic, partition, offset)])

    def _set_lag(self, messages: int) -> None:
        if self._lag is None:
            self._lag = metrics().source_lag.labels(self._topic, str(self._partition))
        self._lag.set(messages)

    def next_batch(self) -> list[Message]:
        if self._eof:
            raise StopIteration
        health = self._health
        if health.down_since is not None:
            health.check()
        batch = self._consumer.consume(self._batch_size, 0)
        # Errors are rare: look at each message's error, touch nothing else.
        for i, msg in enumerate(batch):
            if msg.error() is not None:
                batch = self._without_events(batch, i)
                break
        if batch:
            self._offset = batch[-1].offset() + 1  # resume after the last message taken
            if health.down_since is not None:
                health.up()
        self._awake = None if batch or self._eof else datetime.now(timezone.utc) + IDLE_POLL
        return batch

    def _without_events(self, batch: list[Message], first: int) -> list[Message]:
        """The messages of ``batch`` without the partition-end events (from index ``first`` on);
        without tail, the batch ends at the partition's end."""
        kept = batch[:first]
        for msg in batch[first:]:
            error = msg.error()
            if error is None:
                kept.append(msg)
                continue
            if error.code() != KafkaError._PARTITION_EOF:
                raise RuntimeError(f"error consuming from Kafka topic {self._topic!r} partition "
                                   f"{self._partition}: {error}")
            self._end = msg.offset()
            self._set_lag(0)
            if not self._tail:
                self._eof = True  # end the partition after the messages before it
                break
        return kept

    def _position(self) -> int | None:
        """The next offset to read; None while a logical start has not been resolved."""
        if self._offset >= 0:
            return self._offset
        return self._end

    def _on_stats(self, stats: dict) -> None:
        part = (((stats.get("topics") or {}).get(self._topic) or {}).get("partitions") or {}).get(str(self._partition))
        if not part:
            return
        high, low = part.get("hi_offset", -1), part.get("lo_offset", -1)
        if high < 0:
            return
        position = self._position()
        if position is None:
            position = low if self._start == OFFSET_BEGINNING and low >= 0 else high
        self._set_lag(max(high - position, 0))

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> int:
        self._commit()
        return self._offset

    def _reachable(self) -> bool:
        return self._health.connected and not cluster_unreachable(self._health.bootstrap)

    def _commit(self) -> None:
        """Commit the position to the consumer group when it moved (not while the cluster is unreachable)."""
        if self._committer is None:
            return
        position = self._position()
        if position is None or position == self._committed or not self._reachable():
            self._committer.poll()
            return
        future = self._committer.commit(self._topic, self._partition, position)
        if future is not None:
            self._committed, self._commit_future = position, future
            future.add_done_callback(lambda f: self._commit_failed(position) if f.exception() else None)

    def _commit_failed(self, position: int) -> None:
        if self._committed == position:
            self._committed = None  # sent again after the next snapshot

    def close(self) -> None:
        self._commit()
        future = self._commit_future
        if future is not None and self._reachable():
            try:
                future.result(timeout=FINAL_COMMIT_WAIT)
            except Exception:  # noqa: BLE001 - logged by the committer; the close goes on
                pass
        self._consumer.close()


class TopicSource(FixedPartitionedSource[Any, int]):
    """Bytewax source over every partition of ``topic``: one consumer per partition,
    assigned (no consumer-group rebalancing), offsets kept by Bytewax's recovery
    and committed to ``group.id`` for lag tools (see the module's description).

    Emits the client's ``confluent_kafka.Message`` objects as they come (no
    copy per message; they cannot be pickled, so the step after the source
    turns them into its own values on the same worker, as a Bytewax
    ``map`` or ``flat_map_batch`` does).  Unlike
    Bytewax's own ``KafkaSource``, whose polls wait up to a millisecond for
    ``batch_size`` messages each, a poll here never waits (see
    :class:`_TopicPartitionReader`): with several partitions those waits
    came one after another on the worker, before any message was processed.

    Args:
        settings: consumer settings (``bootstrap.servers`` included; ``group.id``
            is the group the offsets are committed to).
        topic: the topic.
        starting_offset: ``OFFSET_BEGINNING`` or ``OFFSET_END``, when there is no
            resume state.
        batch_size: at most this many messages per poll of a partition.
        tail: keep waiting for new messages at the end (False: a partition ends
            at its end).
        admin: admin-client settings for listing the partitions and committing
            offsets (default: the ``bootstrap.servers`` of ``settings``).
        create_topics: topics to create first where the broker allows it
            (:func:`~connectors.kafka.topics.ensure_topics`).
        commit_offsets: commit each partition's position to ``group.id`` after
            each snapshot.
        unavailable_timeout: seconds the cluster may be unreachable before a
            read raises :class:`~connectors.kafka.health.KafkaUnavailable`; 0 = forever.

    >>> from confluent_kafka import OFFSET_BEGINNING
    >>> TopicSource({"bootstrap.servers": "localhost:9092"}, "phases", OFFSET_BEGINNING, 100).topic
    'phases'
    """

    def __init__(self, settings: Mapping[str, Any], topic: str, starting_offset: int, batch_size: int, *,
                 tail: bool = True, admin: Mapping[str, Any] | None = None,
                 create_topics: Iterable[str] = (), commit_offsets: bool = True,
                 unavailable_timeout: float = DEFAULT_UNAVAILABLE_TIMEOUT) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if unavailable_timeout < 0:
            raise ValueError(f"unavailable_timeout must be 0 (forever) or more seconds, got {unavailable_timeout}")
        self.settings = dict(settings)
        self.topic = topic
        self.starting_offset = starting_offset
        self.batch_size = batch_size
        self.tail = tail
        self.admin = dict(admin) if admin is not None else {"bootstrap.servers": self.settings["bootstrap.servers"]}
        self.create_topics = list(create_topics)
        self.unavailable_timeout = float(unavailable_timeout)
        group = self.settings.get("group.id")
        self.committer = OffsetCommitter(self.admin, str(group)) if commit_offsets and group else None

    def list_parts(self) -> list[str]:
        client = connect_admin(self.admin)
        if self.create_topics:
            ensure_topics(client, self.create_topics)
        metadata = topic_metadata(client, 10.0, self.topic)
        found = metadata.topics.get(self.topic)
        if found is None or found.error is not None:
            raise TopicSetupError(f"cannot list the partitions of Kafka topic {self.topic!r}: "
                                  f"{found.error if found is not None else 'no such topic'}")
        return [f"{p}-{self.topic}" for p in sorted(found.partitions)]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _TopicPartitionReader:
        index, topic = for_part.split("-", 1)
        if topic != self.topic:
            raise ValueError(f"resume state is for Kafka topic {topic!r}, this source reads {self.topic!r}")
        offset = self.starting_offset if resume_state is None else resume_state
        return _TopicPartitionReader(self.settings, topic, int(index), offset, self.batch_size, self.tail,
                                     committer=self.committer, unavailable_timeout=self.unavailable_timeout)
