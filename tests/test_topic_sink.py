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
