"""The relay node: mesh records copied between two development brokers (SPEC section 7, node types).

Side A is the ``bootstrap`` broker of the module, side B a second one
(``far``); both are `becomingone broker` processes reached over TCP.  What
is checked is what a user sees: the messages on B (keys, values, headers,
timestamps, per-key order, each once), the relay's exit codes and lines, and
its metrics.  Waits are hang guards only.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import yaml
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from connectors.kafka import target_partition
from flows.relay import relay_of
from schemas.config import parse_config
from tests.conftest import BIN, WAIT, clean_env, free_port, read_topic, start_broker, stop_process, unique_topic

CELLS = [f"c{i}" for i in range(1, 7)]




def mesh_record(cell: str, i: int) -> bytes:
    """The mesh wire format: one cell's partial sums at one grid point."""
    return json.dumps({"cell": cell, "node": "n1", "t": round(1764115200.1 + 0.1 * i, 1),
                       "z_sum": [float(np.cos(i)), float(np.sin(i))], "weight": 200.0, "n": 200}).encode()


def mesh_messages(count: int, start: int = 0) -> list[dict]:
    """``count`` mesh messages, key = cell, round-robin over :data:`CELLS`, each with two headers."""
    out = []
    for i in range(start, start + count):
        cell = CELLS[i % len(CELLS)]
        out.append({"key": cell.encode(), "value": mesh_record(cell, i // len(CELLS)),
                    "headers": [("origin", b"node-a"), ("seq", str(i).encode())],
                    "timestamp": 1764115200000 + i})
    return out


def produce(bootstrap: str, topic: str, messages: list[dict], partition_by: int | None = None) -> None:
    """Send ``messages`` (librdkafka's default partitioner; or on ``target_partition`` over ``partition_by``)."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for m in messages:
        where = {} if partition_by is None else {"partition": target_partition(m["key"], 0, partition_by)}
        producer.produce(topic, **m, **where)
    assert producer.flush(WAIT) == 0


def topic_size(bootstrap: str, topic: str) -> int:
    """Messages in ``topic`` (0 while it does not exist)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"size-{uuid.uuid4().hex}"})
    try:
        found = consumer.list_topics(topic, timeout=WAIT).topics.get(topic)
        if found is None or found.error is not None:
            return 0
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=WAIT)[1]
                   for p in found.partitions)
    finally:
        consumer.close()


def wait_for_size(bootstrap: str, topic: str, n: int, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + 3 * WAIT
    while (size := topic_size(bootstrap, topic)) < n:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the relay exited ({proc.returncode}) with {size} of {n} messages on the target: "
                        f"{log.read_text() if log else ''}")
        if time.monotonic() > deadline:
            pytest.fail(f"{size} of {n} messages on the target within {3 * WAIT} s")
        time.sleep(0.2)


def by_key(messages) -> dict[bytes, list[tuple]]:
    """Each key's (value, headers, timestamp) in the order of its partition."""
    out: dict[bytes, list[tuple]] = defaultdict(list)
    for m in sorted(messages, key=lambda m: (m.partition(), m.offset())):
        out[m.key()].append((m.value(), m.headers(), m.timestamp()[1]))
    return dict(out)


def config_file(tmp_path: Path, near: str, far: str, topics: list[str], *, metrics_port: int | None = None,
                **relay) -> Path:
    # A relay that stops leaves its group, but the development broker lets the group wait for the member's
    # session to time out anyway (librdkafka's default: 45 s) before the next relay gets the partitions.
    data = {
        "relay": {"source": {"bootstrap.servers": near, "session.timeout.ms": 6000},
                  "target": {"bootstrap.servers": far}, "topics": topics, "group_id": f"relay-{uuid.uuid4().hex}",
                  **relay},
        "metrics": {"enabled": metrics_port is not None, "port": metrics_port or 9108},
    }
    path = tmp_path / f"relay-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def start_relay(config: Path, log: Path, *, bytewax: bool = False) -> subprocess.Popen:
    out = open(log, "ab")
    if bytewax:
        cmd = [sys.executable, "-m", "bytewax.run", "flows.kairos"]
        env = clean_env(BECOMINGONE_CONFIG=str(config), BECOMINGONE__BECOMINGONE__NODE="relay")
    else:
        cmd, env = [str(BIN), "run", "--node", "relay", "--config", str(config)], clean_env()
    env.pop("RUST_BACKTRACE", None)
    try:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    finally:
        out.close()


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return {}
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


# --------------------------------------------------------------------------


def test_keyed_messages_go_where_librdkafkas_default_partitioner_puts_ours(bootstrap):
    topic = unique_topic("test.mesh")
    messages = mesh_messages(60)
    produce(bootstrap, topic, messages)
    for m in read_topic(bootstrap, topic, expected=60):
        assert m.partition() == target_partition(m.key(), 99, 4)


def test_mesh_records_arrive_on_the_far_side_with_keys_values_headers_timestamps_and_per_key_order(
        bootstrap, far, tmp_path):
    topic = unique_topic("test.mesh")
    sent = mesh_messages(300)
    produce(bootstrap, topic, sent)
    port = free_port()
    log = tmp_path / "relay.txt"
    relay = start_relay(config_file(tmp_path, bootstrap, far, [topic], metrics_port=port), log)
    try:
        wait_for_size(far, topic, 300, relay, log)
        copied = ("becomingone_relay_messages_total", (("topic", topic),))
        lag = [("becomingone_relay_lag_messages", (("partition", str(p)), ("topic", topic))) for p in range(4)]
        deadline = time.monotonic() + WAIT
        # Everything copied, and every offset committed: no source message left unconfirmed.
        while not (scrape(port).get(copied) == 300 and [scrape(port).get(k) for k in lag] == [0] * 4):
            assert time.monotonic() < deadline, scrape(port)
            time.sleep(0.2)
        metrics = scrape(port)
        assert metrics[("becomingone_relay_duplicates_total", (("topic", topic),))] == 0
        assert metrics[("becomingone_kafka_connected", (("client", "relay:target"),))] == 1
        assert metrics[("becomingone_kafka_connected", (("client", "relay:source"),))] == 1
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            assert json.loads(response.read())["checks"] == {
                "flow": {"ok": True, "state": "running"}, "sources": {"ok": True, "state": "assigned: 1 partition"},
                "broker": {"ok": True, "state": "reachable"}}
    finally:
        code = stop_process(relay)
    text = log.read_text()
    assert code == 0, text
    assert f"relayed 300 message(s) ({topic} 300) from {bootstrap} to {far}" in text
    assert "0 repeat(s) dropped" in text
    near_side, far_side = read_topic(bootstrap, topic, expected=300), read_topic(far, topic, expected=300)
    assert by_key(far_side) == by_key(near_side)
    assert sorted(by_key(far_side)) == sorted(c.encode() for c in CELLS)
    assert [m.value() for m in far_side if m.key() == b"c1"] == [m["value"] for m in sent if m["key"] == b"c1"]
    for m in far_side:
        assert m.partition() == target_partition(m.key(), 0, 4)


def test_repeats_are_dropped_also_those_the_far_side_held_before_the_relay_started(bootstrap, far):
    """As after a kill between a delivery and its commit: the far side holds the first 40
    messages already, and the source holds two of them twice (an at-least-once publisher)."""
    from connectors.metrics import metrics

    topic = unique_topic("test.mesh")
    sent = mesh_messages(120)
    produce(bootstrap, topic, sent + [sent[5], sent[77]])
    produce(far, topic, sent[:40], partition_by=4)
    config = parse_config({"becomingone": {"node": "relay"}, "kafka": {"bootstrap.servers": bootstrap},
                           "relay": {"target": {"bootstrap.servers": far}, "topics": [topic],
                                     "group_id": f"relay-{uuid.uuid4().hex}"}})
    relay = relay_of(config)
    relay.start()
    try:
        deadline = time.monotonic() + 3 * WAIT
        while sum(relay.counts.copied.values()) + sum(relay.counts.duplicates.values()) < 122:
            assert time.monotonic() < deadline, relay.counts
            relay.step(0.2)
    finally:
        relay.close()
    assert (relay.counts.copied[topic], relay.counts.duplicates[topic]) == (80, 42)
    assert metrics().relay_duplicates.labels(topic)._value.get() == 42
    far_side = read_topic(far, topic, expected=120)
    values = [(m.key(), m.value()) for m in far_side]
    assert len(set(values)) == len(values) == 120
    per_key = defaultdict(list)
    for m in sent:
        per_key[m["key"]].append(m["value"])
    assert {k: [v for v, _, _ in seq] for k, seq in by_key(far_side).items()} == dict(per_key)


def test_a_relay_without_a_target_cluster_exits_2_naming_the_key(bootstrap, tmp_path):
    config = tmp_path / "relay.yaml"
    config.write_text(yaml.safe_dump({"kafka": {"bootstrap.servers": bootstrap}, "metrics": {"enabled": False}}))
    expected = ("relay.target.bootstrap.servers: required (e.g. 'localhost:9092') by becomingone.node 'relay' "
                "(the cluster it writes to)")
    done = subprocess.run([str(BIN), "run", "--node", "relay", "--config", str(config)], capture_output=True,
                          text=True, env=clean_env(), timeout=WAIT)
    assert done.returncode == 2 and expected in done.stderr, done.stderr
    done = subprocess.run([sys.executable, "-m", "bytewax.run", "flows.kairos"], capture_output=True, text=True,
                          env=clean_env(BECOMINGONE_CONFIG=str(config), BECOMINGONE__BECOMINGONE__NODE="relay"),
                          timeout=WAIT)
    assert done.returncode == 2 and expected in done.stderr, done.stderr


def test_a_target_out_of_reach_or_a_topic_missing_at_start_is_one_line_naming_it(bootstrap, far, tmp_path):
    port = free_port()
    missing = unique_topic("test.mesh")

    def run(target: str) -> subprocess.CompletedProcess:
        config = config_file(tmp_path, bootstrap, target, [missing])
        return subprocess.run([str(BIN), "run", "--node", "relay", "--timeout", "2", "--config", str(config)],
                              capture_output=True, text=True, env=clean_env(), timeout=WAIT)

    done = run(f"127.0.0.1:{port}")
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(f"becomingone run: cannot reach Kafka at 127.0.0.1:{port} within 2 s")
    done = run(far)
    assert done.returncode == 1, done.stderr
    assert done.stderr == (f"becomingone run: relay.topics: topic {missing!r} cannot be read from the source "
                           f"cluster {bootstrap}: no such topic\n")


@pytest.mark.slow
def test_bytewax_run_relays_drains_on_sigterm_and_resumes_from_the_committed_offsets(bootstrap, far, tmp_path):
    topic = unique_topic("test.mesh")
    produce(bootstrap, topic, mesh_messages(100))
    config = config_file(tmp_path, bootstrap, far, [topic])
    log = tmp_path / "bytewax.txt"
    relay = start_relay(config, log, bytewax=True)
    try:
        wait_for_size(far, topic, 100, relay, log)
    finally:
        code = stop_process(relay)
    assert code == 0, log.read_text()
    produce(bootstrap, topic, mesh_messages(50, start=100))
    relay = start_relay(config, log, bytewax=True)
    try:
        wait_for_size(far, topic, 150, relay, log)
        time.sleep(2.0)  # anything read again would show up meanwhile
    finally:
        code = stop_process(relay)
    assert code == 0, log.read_text()
    far_side = read_topic(far, topic, expected=150)
    assert by_key(far_side) == by_key(read_topic(bootstrap, topic, expected=150))


@pytest.mark.slow
def test_a_relay_killed_with_sigkill_again_and_again_delivers_everything_once_in_key_order(bootstrap, far, tmp_path):
    """A publisher feeds side A for about 40 s; relays are killed at random moments while they copy
    (4 times), then one runs to the end."""
    topic = unique_topic("test.mesh")
    sent = mesh_messages(2400)
    produce(bootstrap, topic, sent[:1])  # the topic exists before the first relay starts

    def paced() -> None:
        producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
        for i, m in enumerate(sent[1:], 1):
            producer.produce(topic, **m)
            if i % 30 == 0:
                producer.poll(0)
                time.sleep(0.5)  # bursts of 30 messages, 60 per second
        assert producer.flush(WAIT) == 0

    feeder = threading.Thread(target=paced, daemon=True)
    config = config_file(tmp_path, bootstrap, far, [topic], batch_size=20)
    log = tmp_path / "kills.txt"
    rng = np.random.default_rng(3)
    feeder.start()
    for _ in range(4):
        relay = start_relay(config, log)
        # Its start takes seconds (joining the group): killed once it copies, at a random moment after that.
        before = topic_size(far, topic)
        deadline = time.monotonic() + 3 * WAIT
        while topic_size(far, topic) == before:
            assert relay.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        time.sleep(float(rng.uniform(0.2, 2.0)))
        relay.send_signal(signal.SIGKILL)
        relay.wait(timeout=WAIT)
    assert feeder.is_alive(), "the relays were killed after the feed had ended"
    feeder.join(timeout=3 * WAIT)
    relay = start_relay(config, log)
    try:
        wait_for_size(far, topic, len(sent), relay, log)
        time.sleep(2.0)  # a repeat sent late would show up meanwhile
    finally:
        assert stop_process(relay) == 0, log.read_text()
    far_side = read_topic(far, topic)
    pairs = [(m.key(), m.value()) for m in far_side]
    assert len(pairs) == len(set(pairs)) == len(sent)  # every message, once
    assert by_key(far_side) == by_key(read_topic(bootstrap, topic, expected=len(sent)))  # and in key order


@pytest.mark.slow
def test_a_target_gone_longer_than_its_timeout_stops_the_relay_and_what_it_did_not_deliver_comes_later(
        bootstrap, tmp_path):
    topic = unique_topic("test.mesh")
    sent = mesh_messages(100)
    produce(bootstrap, topic, sent[:50])
    broker, gone = start_broker(stderr_path=tmp_path / "gone.txt")
    group = f"relay-{uuid.uuid4().hex}"
    config = config_file(tmp_path, bootstrap, gone, [topic], group_id=group)
    data = yaml.safe_load(config.read_text())
    data["relay"]["target"]["unavailable_timeout"] = 3
    config.write_text(yaml.safe_dump(data))
    log = tmp_path / "relay.txt"
    relay = start_relay(config, log)
    try:
        wait_for_size(gone, topic, 50, relay, log)
        broker.kill()
        broker.wait(timeout=WAIT)
        produce(bootstrap, topic, sent[50:])
        code = relay.wait(timeout=3 * WAIT)
    finally:
        if relay.poll() is None:
            relay.kill()
        stop_process(broker)
    text = log.read_text()
    assert code == 1, text
    assert "their source offsets not committed" in text and "(relay.target.unavailable_timeout: 3 s)" in text
    # The second half was never confirmed: a relay to a new target cluster copies exactly that.
    broker, back = start_broker(stderr_path=tmp_path / "back.txt")
    try:
        data["relay"]["target"]["bootstrap.servers"] = back
        config.write_text(yaml.safe_dump(data))
        relay = start_relay(config, log)
        try:
            wait_for_size(back, topic, 50, relay, log)
            time.sleep(1.0)
        finally:
            assert stop_process(relay) == 0, log.read_text()
        assert {m.value() for m in read_topic(back, topic, expected=50)} == {m["value"] for m in sent[50:]}
    finally:
        stop_process(broker)
