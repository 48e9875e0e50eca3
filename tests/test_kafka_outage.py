"""The broker goes away under a running flow (`becomingone broker` killed mid-run).

The flow says so in a few lines instead of thousands, shows it in
``becomingone_kafka_connected``, stops with one error line naming the
address once ``kafka.unavailable_timeout`` has passed, and a first Ctrl-C
still stops it, reporting the output it could not deliver.  Waits are hang
guards only.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from connectors.kafka.health import RepeatFilter
from schemas.config import ConfigError, parse_config
from tests.conftest import (BIN, WAIT, clean_env, free_port, produce_steady_and_noise, start_broker, stop_process,
                            unique_topic)

pytestmark = pytest.mark.slow  # brokers and whole flows: out of `make test-fast`

PARTITIONS = 4  # the development broker's partitions per topic
MAX_LINES = 50  # stderr lines a whole run with an outage may take (it took ~2,600 in 30 s before)


def _scrape(port: int) -> dict[tuple[str, tuple], float]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return {}  # not serving yet
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _wait_for(what: str, check, proc: subprocess.Popen, err: Path) -> None:
    deadline = time.monotonic() + 3 * WAIT
    while not check():
        if proc.poll() is not None:
            pytest.fail(f"the flow exited ({proc.returncode}) before {what}: {err.read_text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"not {what} within {3 * WAIT} s: {err.read_text()}")
        time.sleep(0.2)


class Outage:
    """A broker, a topic with samples, and `becomingone run` tailing it; :meth:`kill_broker` ends the broker."""

    def __init__(self, tmp_path: Path, unavailable_timeout: float) -> None:
        self.broker, self.bootstrap = start_broker(stderr_path=tmp_path / "broker.txt")
        self.topic = unique_topic("test.outage")
        produce_steady_and_noise(self.bootstrap, self.topic, seconds=3.0, seed=5)
        self.port = free_port()
        config = tmp_path / "config.yaml"
        config.write_text(
            f"source: {{kind: kafka, topic: {self.topic}, from_beginning: true, stop_at_end: false}}\n"
            f"kafka: {{bootstrap.servers: '{self.bootstrap}', unavailable_timeout: {unavailable_timeout}}}\n"
            f"memory: {{storage: {{path: '{tmp_path / 'archive'}'}}}}\n"
            f"metrics: {{port: {self.port}}}\n")
        self.err = tmp_path / "flow-stderr.txt"
        # Without RUST_BACKTRACE: with it, Bytewax adds a backtrace of ~80 lines to any error.
        env = clean_env()
        env.pop("RUST_BACKTRACE", None)
        with open(self.err, "wb") as err:
            self.flow = subprocess.Popen([str(BIN), "run", "--config", str(config)], stdout=subprocess.DEVNULL,
                                         stderr=err, env=env)

    def lag(self, partition: int) -> float | None:
        return _scrape(self.port).get(("becomingone_source_lag_messages",
                                       (("partition", str(partition)), ("topic", self.topic))))

    def connected(self) -> dict[str, float]:
        """``becomingone_kafka_connected`` by client."""
        return {dict(labels)["client"]: value for (name, labels), value in _scrape(self.port).items()
                if name == "becomingone_kafka_connected"}

    def read_to_the_end(self) -> None:
        _wait_for("every partition read", lambda: all(self.lag(p) == 0 for p in range(PARTITIONS)),
                  self.flow, self.err)

    def kill_broker(self) -> None:
        self.broker.kill()
        self.broker.wait(timeout=WAIT)

    def lines(self) -> list[str]:
        return self.err.read_text().splitlines()

    def close(self) -> None:
        if self.flow.poll() is None:
            self.flow.kill()
            self.flow.wait(timeout=WAIT)
        if self.broker.poll() is None:
            stop_process(self.broker)


@pytest.fixture
def outage(request, tmp_path):
    made: list[Outage] = []

    def make(unavailable_timeout: float) -> Outage:
        made.append(Outage(tmp_path, unavailable_timeout))
        return made[-1]

    yield make
    for o in made:
        o.close()


def test_a_broker_gone_longer_than_the_timeout_stops_the_flow_with_one_error_line(outage):
    o = outage(3)
    o.read_to_the_end()
    o.kill_broker()
    code = o.flow.wait(timeout=3 * WAIT)  # hang guard
    lines = o.lines()
    assert code == 1, lines
    errors = [line for line in lines if line.startswith("becomingone: error: ")]
    assert len(errors) == 1, lines
    # Raised by whichever client waited on the cluster first: a source partition, or the
    # sink with output to deliver (then the line also says how many messages were not).
    assert errors[0].startswith("becomingone: error: KafkaUnavailable: ")
    assert f"Kafka at {o.bootstrap} unreachable for " in errors[0]
    assert "(kafka.unavailable_timeout: 3 s)" in errors[0] and "Connection refused" in errors[0]
    assert len(lines) < MAX_LINES, "\n".join(lines)
    # librdkafka's lines come through Python logging, never raw ("%3|1700000000.123|FAIL|...").
    assert not [line for line in lines if line.startswith("%")], "\n".join(lines)


def test_during_an_outage_the_state_is_a_metric_and_the_first_ctrl_c_stops_the_flow(outage):
    o = outage(0)  # wait for the cluster forever
    o.read_to_the_end()
    clients = [f"consumer:{o.topic}/{p}" for p in range(PARTITIONS)] + ["producer:0"]
    assert o.connected() == dict.fromkeys(clients, 1.0)
    o.kill_broker()
    # The producer is polled whatever the flow does; the consumers only while the worker reads
    # (not while it waits for the sink, which a batch of output in flight at the kill makes it do).
    _wait_for("the producer disconnected", lambda: o.connected().get("producer:0") == 0.0, o.flow, o.err)
    lines = o.lines()
    assert any(f"Kafka at {o.bootstrap} unreachable: " in line and "kafka.unavailable_timeout: 0" in line
               for line in lines), lines
    o.flow.send_signal(signal.SIGINT)
    code = o.flow.wait(timeout=3 * WAIT)  # hang guard: it used to wait for librdkafka's message timeout
    lines = o.lines()
    # The drain ends with (at least) the witness log's closing record, which the dead broker
    # cannot take: the stop reports it, with the epoch left open for a resumed run to publish again.
    assert code == 1, lines
    errors = [line for line in lines if line.startswith("becomingone: error: ")]
    assert len(errors) == 1, lines
    assert errors[0].startswith("becomingone: error: KafkaUnavailable: ")
    assert "output message(s) not delivered (" in errors[0]
    assert f"Kafka at {o.bootstrap} unreachable for " in errors[0] and " while stopping; " in errors[0]
    assert len(lines) < MAX_LINES, "\n".join(lines)
    assert not [line for line in lines if line.startswith("%")], "\n".join(lines)


# --------------------------------------------------------------------------
# The parts: repeated log lines, the config key.


def test_the_same_line_passes_once_per_window_then_says_how_many_were_held_back():
    now = [0.0]
    repeats = RepeatFilter(60.0, clock=lambda: now[0])

    def record(text: str, *args, level: int = logging.ERROR) -> logging.LogRecord:
        return logging.LogRecord("becomingone.kafka.librdkafka", level, __file__, 1, text, args, None)

    line = "%s [%s] %s"
    refused = "127.0.0.1:%d/bootstrap: Connect to ipv4#127.0.0.1:%d failed: Connection refused (after %dms in state CONNECT)"
    passed = []
    for i in range(1000):
        now[0] = i * 0.05  # 20 a second, for 50 s, from five clients
        r = record(line, "FAIL", f"becomingone#consumer-{i % 5}", refused % (40000 + i % 3, 40000 + i % 3, i % 7))
        if repeats.filter(r):
            passed.append(r.getMessage())
    assert len(passed) == 1
    other = record(line, "FAIL", "becomingone#producer-1", "Disconnected: connection refused")
    assert repeats.filter(other)
    now[0] = 61.0
    r = record(line, "FAIL", "becomingone#consumer-2", refused % (40000, 40000, 0))
    assert repeats.filter(r)
    assert r.getMessage().endswith("(999 more like it in the last 60 s)")
    debug = record(line, "FAIL", "x", "y", level=logging.DEBUG)
    assert repeats.filter(debug) and repeats.filter(debug)


def test_unavailable_timeout_is_this_projects_key_and_is_validated():
    config = parse_config({"kafka": {"bootstrap.servers": "127.0.0.1:9092", "unavailable_timeout": 3}})
    assert config.kafka.unavailable_timeout == 3.0
    assert "unavailable_timeout" not in config.kafka.client_settings()
    assert parse_config({"kafka": {"bootstrap.servers": "h:1"}}).kafka.unavailable_timeout == 300.0
    for bad in (-1, "soon", True, None):
        with pytest.raises(ConfigError, match=r"kafka\.unavailable_timeout .* must be a number of seconds, 0 or more"):
            parse_config({"kafka": {"bootstrap.servers": "h:1", "unavailable_timeout": bad}})
