"""The dataflow's Kafka input: every partition read from its offset, polls that never wait."""

from __future__ import annotations

import time
from datetime import datetime, timezone

from confluent_kafka import OFFSET_BEGINNING, Producer

from connectors.kafka import MockBroker, TopicSource
from tests.conftest import unique_topic


def _drain(part, deadline_s: float = 20.0) -> list:
    """Poll until the partition ends (stop at end) or the deadline; what it gave."""
    got, end = [], time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            got.extend(part.next_batch())
        except StopIteration:
            return got
        time.sleep(0.001)
    raise AssertionError(f"the partition did not end; read {len(got)} messages")


def test_each_partition_is_read_from_its_resume_offset_to_its_end():
    with MockBroker() as broker:
        topic = unique_topic("test.source")
        source = TopicSource({"bootstrap.servers": broker.bootstrap, "group.id": "test"}, topic, OFFSET_BEGINNING,
                             batch_size=2, tail=False, create_topics=[topic])
        parts = source.list_parts()
        assert parts == [f"{p}-{topic}" for p in range(4)]
        producer = Producer({"bootstrap.servers": broker.bootstrap})
        for i in range(5):
            producer.produce(topic, key=b"k", value=f"m{i}".encode(), partition=1, headers=[("h", b"v")])
        producer.flush(10)

        resumed = source.build_part("in", f"1-{topic}", 2)  # recovery state: the next offset is 2
        messages = _drain(resumed)
        assert [(m.value(), m.offset(), m.partition(), m.topic()) for m in messages] == [
            (f"m{i}".encode(), i, 1, topic) for i in range(2, 5)]
        assert messages[0].headers() == [("h", b"v")] and messages[0].key() == b"k"
        assert resumed.snapshot() == 5
        resumed.close()

        fresh = source.build_part("in", f"1-{topic}", None)
        assert [m.offset() for m in _drain(fresh)] == list(range(5))
        fresh.close()
        empty = source.build_part("in", f"0-{topic}", None)
        assert _drain(empty) == [] and empty.snapshot() == OFFSET_BEGINNING
        empty.close()


def test_a_poll_with_nothing_new_returns_at_once_and_asks_to_be_polled_again_soon():
    with MockBroker() as broker:
        topic = unique_topic("test.source")
        source = TopicSource({"bootstrap.servers": broker.bootstrap, "group.id": "test"}, topic, OFFSET_BEGINNING,
                             batch_size=10, tail=True, create_topics=[topic])
        source.list_parts()
        part = source.build_part("in", f"3-{topic}", None)
        assert part.next_batch() == []
        awake = part.next_awake()
        assert awake is not None and awake > datetime(2000, 1, 1, tzinfo=timezone.utc)
        producer = Producer({"bootstrap.servers": broker.bootstrap})
        producer.produce(topic, value=b"late", partition=3)
        producer.flush(10)
        got, end = [], time.monotonic() + 20
        while not got and time.monotonic() < end:
            got = part.next_batch()
            time.sleep(0.001)
        assert [m.value() for m in got] == [b"late"] and part.next_awake() is None
        part.close()
