"""The Kafka source's lag, as lag tools and the metrics endpoint show it.

A partition read part of the way shows messages waiting in
``becomingone_source_lag_messages`` (scraped over HTTP); read to its end, 0.
Its offsets are committed to the consumer group, where a separate consumer
sees them; an empty partition's is its end offset.
"""

from __future__ import annotations

import time
import urllib.request
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from connectors.endpoint import serve
from connectors.kafka import TopicSource
from tests.conftest import WAIT, free_port, unique_topic

MESSAGES = 200


def _gauge(port: int, name: str, **labels: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return None


def _committed(bootstrap: str, group: str, topic: str, partitions: list[int]) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        return {tp.partition: tp.offset
                for tp in consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=WAIT)}
    finally:
        consumer.close()


def test_lag_shows_waiting_messages_then_zero_and_offsets_reach_the_group(bootstrap):
    port = free_port()
    serve("127.0.0.1", port)
    topic, group = unique_topic("test.lag"), f"test-lag-{uuid.uuid4().hex[:8]}"
    source = TopicSource({"bootstrap.servers": bootstrap, "group.id": group}, topic, OFFSET_BEGINNING,
                         batch_size=1, tail=False, create_topics=[topic])
    parts = source.list_parts()
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(MESSAGES):
        producer.produce(topic, value=b"m%d" % i, partition=2)
    assert producer.flush(WAIT) == 0

    part = source.build_part("in", f"2-{topic}", None)
    labels = {"topic": topic, "partition": "2"}
    # One message per poll, a few polls a second: the gauge (refreshed about every
    # second from the consumer's statistics) sees most of the partition still waiting.
    read, lag, deadline = 0, None, time.monotonic() + WAIT
    while not lag and time.monotonic() < deadline:
        read += len(part.next_batch())
        part.snapshot()
        lag = _gauge(port, "becomingone_source_lag_messages", **labels)
        time.sleep(0.05)
    assert lag, f"no lag shown within {WAIT} s"
    assert MESSAGES - max(part.snapshot(), 0) <= lag <= MESSAGES
    assert read < MESSAGES

    while True:
        try:
            part.next_batch()
        except StopIteration:
            break
    assert part.snapshot() == MESSAGES
    part.close()
    assert _gauge(port, "becomingone_source_lag_messages", **labels) == 0
    assert _gauge(port, "becomingone_kafka_connected", client=f"consumer:{topic}/2") == 1

    empty = source.build_part("in", f"0-{topic}", None)
    while True:
        try:
            empty.next_batch()
        except StopIteration:
            break
        time.sleep(0.001)
    assert empty.snapshot() == OFFSET_BEGINNING  # resumption is unchanged: nothing was read
    empty.close()
    assert parts[:3] == [f"{p}-{topic}" for p in range(3)]
    assert _committed(bootstrap, group, topic, [0, 2]) == {0: 0, 2: MESSAGES}


def test_no_group_no_commits(bootstrap):
    topic = unique_topic("test.lag")
    source = TopicSource({"bootstrap.servers": bootstrap, "group.id": "unused"}, topic, OFFSET_BEGINNING,
                         batch_size=10, tail=False, create_topics=[topic], commit_offsets=False)
    assert source.committer is None
    source.list_parts()
    part = source.build_part("in", f"1-{topic}", None)
    while True:
        try:
            part.next_batch()
        except StopIteration:
            break
        time.sleep(0.001)
    part.close()
    assert _committed(bootstrap, "unused", topic, [1]) == {1: -1001}
