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


def _dead_letter_record(size: int) -> bytes:
    from schemas.messages import DeadLetter, to_json_bytes

    return to_json_bytes(DeadLetter.create(original=b"x" * size, reason="malformed", error="not JSON",
                                           topic="in", partition=0, offset=9, key=b"pmu-7",
                                           max_original_bytes=size))


def test_a_dead_letter_the_topic_refuses_is_sent_again_without_its_original():
    from schemas.messages import DeadLetter, from_json_bytes, without_original

    with MockBroker() as broker:
        dlq, other = unique_topic("test.dlq"), unique_topic("test.sink")
        # The client refuses records above 20 kB, as a topic with a small max.message.bytes would.
        settings = {**producer_settings(None, bootstrap=broker.bootstrap), "message.max.bytes": "20000"}
        part = TopicSink(settings, [dlq, other], shrink={dlq: without_original}).build("out", 0, 1)
        part.write_batch([(dlq, b"pmu-7", _dead_letter_record(100_000)), (dlq, b"pmu-7", _dead_letter_record(10)),
                          (other, None, b"after")])
        part.close()
        got = [from_json_bytes(DeadLetter, m.value()) for m in read_topic(broker.bootstrap, dlq, expected=2)]
        by_size = {d.original_size: d for d in got}
        assert by_size[10].original_bytes == b"x" * 10 and not by_size[10].truncated
        big = by_size[100_000]
        assert big.original_bytes == b"" and big.truncated and big.key is None
        assert (big.reason, big.offset, big.original_sha256) == ("malformed", 9, from_json_bytes(
            DeadLetter, _dead_letter_record(100_000)).original_sha256)
        assert [m.value() for m in read_topic(broker.bootstrap, other, expected=1)] == [b"after"]


def test_a_dead_letter_that_cannot_be_written_at_all_does_not_stop_the_flow(caplog):
    from schemas.messages import without_original

    with MockBroker() as broker:
        dlq = unique_topic("test.dlq")
        settings = producer_settings(None, bootstrap=broker.bootstrap)
        settings.update({"message.timeout.ms": "1500", "enable.idempotence": "false", "retries": "0"})
        part = TopicSink(settings, [dlq], shrink={dlq: without_original}).build("out", 0, 1)
        broker.close()
        part.write_batch([(dlq, b"k", _dead_letter_record(100))])  # no exception
    assert any("dropped" in r.getMessage() and dlq in r.getMessage() for r in caplog.records)
