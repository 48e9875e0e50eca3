"""The dataflow's Kafka output: messages land on their topics, and a failed delivery stops the flow."""

from __future__ import annotations

import pytest

from connectors.kafka import DeliveryFailed, MockBroker, TopicSink, producer_settings
from tests.conftest import read_topic, unique_topic


def test_topic_sink_creates_topics_and_delivers_in_order():
    with MockBroker() as broker:
        topics = [unique_topic("test.sink"), unique_topic("test.sink")]
        sink = TopicSink(producer_settings(None, bootstrap=broker.bootstrap), topics)
        part = sink.build("out", 0, 1)
        part.write_batch([(topics[0], b"k", f"m{i}".encode()) for i in range(50)] + [(topics[1], None, b"x")])
        part.close()
        assert [m.value() for m in read_topic(broker.bootstrap, topics[0], expected=50)] == [
            f"m{i}".encode() for i in range(50)]
        assert len(read_topic(broker.bootstrap, topics[1], expected=1)) == 1


def test_a_message_the_cluster_does_not_take_stops_the_flow_with_its_topic_named():
    with MockBroker() as broker:
        topic = unique_topic("test.sink")
        settings = producer_settings(None, bootstrap=broker.bootstrap)
        settings.update({"message.timeout.ms": "1500", "enable.idempotence": "false", "retries": "0"})
        part = TopicSink(settings, [topic]).build("out", 0, 1)
        broker.close()  # the cluster is gone: nothing can be delivered
        with pytest.raises(DeliveryFailed, match=topic):
            part.write_batch([(topic, b"k", b"lost?")])


def test_many_messages_of_one_topic_go_as_one_item_in_order_among_the_others():
    from connectors.kafka import TopicMessages

    with MockBroker() as broker:
        topics = [unique_topic("test.sink"), unique_topic("test.sink")]
        # A small local queue: the sink waits for deliveries to make room, and loses nothing.
        settings = {**producer_settings(None, bootstrap=broker.bootstrap), "queue.buffering.max.messages": "50"}
        part = TopicSink(settings, topics).build("out", 0, 1)
        keys = [f"s{i % 7}".encode() for i in range(300)]
        part.write_batch([(topics[0], b"k", b"first"),
                          TopicMessages(topics[0], keys, [f"m{i}".encode() for i in range(300)]),
                          TopicMessages(topics[1], [None], [b"x"]), (topics[0], b"k", b"last")])
        part.close()
        got = read_topic(broker.bootstrap, topics[0], expected=302)
        by_key: dict[bytes, list[bytes]] = {}
        for m in got:
            by_key.setdefault(m.key(), []).append(m.value())
        assert by_key[b"k"] == [b"first", b"last"]
        for k in range(7):  # each key's messages in the order given
            assert by_key[f"s{k}".encode()] == [f"m{i}".encode() for i in range(k, 300, 7)]
        assert [m.value() for m in read_topic(broker.bootstrap, topics[1], expected=1)] == [b"x"]
