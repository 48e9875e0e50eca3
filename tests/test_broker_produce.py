"""`becomingone broker` and `becomingone produce` end to end, over real TCP.

A broker subprocess is started for the module; every produce test writes to
its own topic through a `becomingone produce` subprocess and reads the topic
back with a confluent-kafka Consumer.  Every wait is bounded; nothing is
left running.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from confluent_kafka import Message

from connectors.kafka import (
    PHASE_BATCH_SCHEMA,
    KafkaSetupError,
    KafkaUnreachable,
    MockBroker,
    admin_settings,
    connect_admin,
    consumer_settings,
    ensure_topics,
    producer_settings,
)
from connectors.phase_files import PhaseColumns, PhaseFileError, read_phase_file
from connectors.synthetic import SyntheticSensor, synthetic_batches
from schemas.config import parse_config
from schemas.messages import ARROW_STREAM_CONTENT_TYPE, parse_sample

from tests.conftest import BIN, WAIT, clean_env, free_port, read_topic, start_broker, stop_process, unique_topic


def _produce(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN), "produce", *args], capture_output=True, text=True, env=clean_env(), timeout=timeout
    )


_topic = unique_topic
_consume = read_topic
_start_broker = start_broker
_stop = stop_process
_env = clean_env
_free_port = free_port


def _samples(messages: list[Message]) -> list[tuple[str, int, tuple[float, ...], str | None]]:
    """JSON messages as (sensor, t_us, phase, cell), checking each key is its sensor."""
    out = []
    for msg in messages:
        sample = parse_sample(msg.value())
        assert msg.key() == sample.sensor.encode()
        assert json.loads(msg.value())["sensor"] == sample.sensor
        out.append((sample.sensor, sample.t_us, sample.phase, sample.cell))
    return out


def _in_order_per_sensor(messages: list[Message], samples: list[tuple]) -> bool:
    """Each sensor's samples sit in one partition, in event-time order."""
    by_sensor: dict[str, list[tuple[int, int]]] = {}
    for msg, (sensor, t_us, _, _) in zip(messages, samples):
        by_sensor.setdefault(sensor, []).append((msg.partition(), t_us))
    return all(
        len({p for p, _ in rows}) == 1 and [t for _, t in rows] == sorted(t for _, t in rows)
        for rows in by_sensor.values()
    )


# --------------------------------------------------------------------------
# produce: files and synthetic data, JSON and Arrow messages.


def test_produce_csv_sends_one_json_message_per_row(bootstrap, tmp_path):
    csv = tmp_path / "samples.csv"
    # Float seconds and ISO text in one column, a scalar and a list phase, an empty cell.
    csv.write_text(
        "sensor,t,phase,cell\n"
        "pmu-1,1764115200.125,1.25,north\n"
        'pmu-2,2025-11-26T00:00:00.130Z,"[0.5, -0.25]",\n'
        "pmu-1,1764115200.135,-3.0,north\n"
        'pmu-2,2025-11-26T01:00:00.140+01:00,"[0.75, 1.5]",\n'
    )
    topic = _topic()
    proc = _produce(str(csv), "--bootstrap", bootstrap, "--topic", topic)
    assert proc.returncode == 0, proc.stderr
    assert "produced 4 messages (4 samples, json)" in proc.stdout

    messages = _consume(bootstrap, topic, 4)
    samples = _samples(messages)
    assert sorted(samples) == sorted([
        ("pmu-1", 1764115200125000, (1.25,), "north"),
        ("pmu-2", 1764115200130000, (0.5, -0.25), None),
        ("pmu-1", 1764115200135000, (-3.0,), "north"),
        ("pmu-2", 1764115200140000, (0.75, 1.5), None),
    ])
    assert _in_order_per_sensor(messages, samples)
    assert all(m.headers() is None for m in messages)


def test_produce_parquet_as_arrow_batches(bootstrap, tmp_path):
    n = 10
    t_us = 1764115200000000 + np.arange(n) * 10_000
    sensors = ["pmu-a"] * 6 + ["pmu-b"] * 4
    phases = [[0.1 * i, -0.2 * i] for i in range(n)]
    cells = [None] * 6 + ["cell-9"] * 4
    table = pa.table({
        "sensor": sensors,
        "t": pa.array(t_us, pa.timestamp("us", tz="UTC")),
        "phase": pa.array(phases, pa.list_(pa.float64())),
        "cell": pa.array(cells, pa.string()),
        "ignored": np.arange(n),
    })
    path = tmp_path / "samples.parquet"
    pq.write_table(table, path)
    topic = _topic()
    proc = _produce(str(path), "--bootstrap", bootstrap, "--topic", topic, "--format", "arrow", "--batch-rows", "4")
    assert proc.returncode == 0, proc.stderr
    # 4 + 4 + 2 rows; the second batch mixes both sensors, which live on different
    # partitions of the broker's 4, so it goes as one message per partition.
    assert "produced 4 messages (10 samples, arrow)" in proc.stdout

    messages = _consume(bootstrap, topic, 4)
    rows = []
    for msg in messages:
        assert dict(msg.headers())["content-type"] == ARROW_STREAM_CONTENT_TYPE.encode()
        batch = pa.ipc.open_stream(msg.value()).read_all()
        assert batch.schema.equals(PHASE_BATCH_SCHEMA)
        names = set(batch.column("sensor").to_pylist())
        assert msg.key() == (names.pop().encode() if len(names) == 1 else None)
        rows += zip(
            batch.column("sensor").to_pylist(),
            batch.column("t").cast(pa.int64()).to_pylist(),
            batch.column("phase").to_pylist(),
            batch.column("cell").to_pylist(),
        )
    assert sorted(rows) == sorted(zip(sensors, t_us.tolist(), phases, cells))
    assert sorted(m.key() for m in messages) == [b"pmu-a", b"pmu-a", b"pmu-b", b"pmu-b"]
    # Each sensor on one partition.
    assert len({m.partition() for m in messages if m.key() == b"pmu-a"}) == 1
    assert len({m.partition() for m in messages if m.key() == b"pmu-b"}) == 1
    assert len({m.partition() for m in messages}) == 2


def test_produce_json_lines_with_varying_field_types(bootstrap, tmp_path):
    path = tmp_path / "samples.jsonl"
    lines = [
        {"sensor": "eeg-1", "t": 1764115200.5, "phase": 0.25},
        {"sensor": "eeg-2", "t": "2025-11-26T00:00:00.600Z", "phase": [1.0, 2.0, 3.0], "cell": "lab"},
        {"sensor": "eeg-1", "t": 1764115200.75, "phase": -0.5, "extra": True},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    topic = _topic()
    proc = _produce(str(path), "--bootstrap", bootstrap, "--topic", topic)
    assert proc.returncode == 0, proc.stderr

    samples = _samples(_consume(bootstrap, topic, 3))
    assert sorted(samples) == sorted([
        ("eeg-1", 1764115200500000, (0.25,), None),
        ("eeg-2", 1764115200600000, (1.0, 2.0, 3.0), "lab"),
        ("eeg-1", 1764115200750000, (-0.5,), None),
    ])


def _expected_synthetic(duration_us: int, period_us: int) -> list[tuple[str, int, tuple[float, ...], str | None]]:
    sensors = [SyntheticSensor("osc-1", "steady", 2.0, 1), SyntheticSensor("rand-2", "noise", 1.0, 2)]
    cells = {"osc-1": None, "rand-2": "c7"}
    out = []
    for name, t_us, phase in synthetic_batches(
        sensors, period_us=period_us, duration_us=duration_us, start_us=1735689600000000, seed=7
    ):
        out += [(name, int(t), tuple(float(x) for x in row), cells[name]) for t, row in zip(t_us, phase)]
    return out


SYNTHETIC_FLAGS = (
    "--sensor", "osc-1:steady:2", "--sensor", "rand-2:noise:1:2:c7",
    "--sample-rate", "50", "--duration", "2", "--start", "2025-01-01T00:00:00Z", "--seed", "7",
)


def test_produce_synthetic_json_equals_the_generator(bootstrap):
    topic = _topic()
    proc = _produce("--synthetic", *SYNTHETIC_FLAGS, "--bootstrap", bootstrap, "--topic", topic)
    assert proc.returncode == 0, proc.stderr
    assert "produced 200 messages (200 samples, json)" in proc.stdout

    messages = _consume(bootstrap, topic, 200)
    samples = _samples(messages)
    assert sorted(samples) == sorted(_expected_synthetic(2_000_000, 20_000))
    assert _in_order_per_sensor(messages, samples)


def test_produce_synthetic_arrow_with_limit_and_rate(bootstrap):
    topic = _topic()
    proc = _produce(
        "--synthetic", *SYNTHETIC_FLAGS, "--bootstrap", bootstrap, "--topic", topic,
        "--format", "arrow", "--batch-rows", "64", "--limit", "150", "--rate", "5000",
    )
    assert proc.returncode == 0, proc.stderr
    assert "produced 3 messages (150 samples, arrow)" in proc.stdout

    rows = []
    for msg in _consume(bootstrap, topic, 3):
        batch = pa.ipc.open_stream(msg.value()).read_all()
        rows += [
            (s, t, tuple(p), c)
            for s, t, p, c in zip(
                batch.column("sensor").to_pylist(), batch.column("t").cast(pa.int64()).to_pylist(),
                batch.column("phase").to_pylist(), batch.column("cell").to_pylist(),
            )
        ]
    # The generator yields 1 s per sensor at a time: the first 150 samples
    # are osc-1's first 50, rand-2's first 50, then osc-1's next 50.
    expected = _expected_synthetic(2_000_000, 20_000)
    first = [r for r in expected if r[0] == "osc-1"][:100] + [r for r in expected if r[0] == "rand-2"][:50]
    assert sorted(rows) == sorted(first)


# --------------------------------------------------------------------------
# produce: refusals.


def test_produce_refuses_a_file_with_a_missing_column_before_connecting(tmp_path):
    csv = tmp_path / "no_phase.csv"
    csv.write_text("sensor,t,amplitude\npmu-1,1764115200.0,1.0\n")
    # Nothing listens at the bootstrap: the file is refused before any connection.
    proc = _produce(str(csv), "--bootstrap", f"127.0.0.1:{_free_port()}", timeout=60)
    assert proc.returncode == 2
    assert "missing column 'phase'" in proc.stderr
    assert "no_phase.csv" in proc.stderr


def test_produce_refuses_a_nan_phase_with_its_row(bootstrap, tmp_path):
    csv = tmp_path / "nan.csv"
    csv.write_text("sensor,t,phase\npmu-1,1764115200.0,1.0\npmu-1,1764115201.0,nan\n")
    proc = _produce(str(csv), "--bootstrap", bootstrap, "--topic", _topic())
    assert proc.returncode == 2
    assert "nan.csv: row 2 has a phase that is nan" in proc.stderr


def test_produce_to_an_unreachable_bootstrap_fails_within_its_timeout():
    address = f"127.0.0.1:{_free_port()}"
    proc = _produce("--synthetic", "--duration", "1", "--bootstrap", address, "--timeout", "2", timeout=60)
    assert proc.returncode == 1
    assert f"cannot reach Kafka at {address} within 2 s" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_produce_without_any_bootstrap_is_a_usage_error():
    proc = _produce("--synthetic", "--duration", "1", timeout=60)
    assert proc.returncode == 2
    assert "no Kafka bootstrap address" in proc.stderr


def test_produce_rejects_a_bad_synthetic_flag_with_exit_2():
    proc = _produce("--synthetic", "--sensor", "x:wobbly", "--bootstrap", "127.0.0.1:9", timeout=60)
    assert proc.returncode == 2
    assert "source.sensors.0.kind" in proc.stderr


# --------------------------------------------------------------------------
# broker: the command's own contract.


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_broker_prints_one_bootstrap_line_and_exits_0_on_signal(tmp_path, signum):
    port = _free_port()
    proc, address = _start_broker("--brokers", "2", "--port", str(port), stderr_path=tmp_path / "err.txt")
    try:
        assert address == f"127.0.0.1:{port}"
        # The fixed port relays to the cluster: its metadata names both brokers.
        admin = connect_admin(admin_settings(None, bootstrap=address), timeout=WAIT)
        metadata = admin.list_topics(timeout=WAIT)
        assert len(metadata.brokers) == 2
        assert all(b.host == "127.0.0.1" for b in metadata.brokers.values())
    finally:
        rc = _stop(proc, signum)
    assert rc == 0, (tmp_path / "err.txt").read_text()
    assert "stopped" in (tmp_path / "err.txt").read_text()


def test_broker_refuses_a_port_in_use(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [str(BIN), "broker", "--port", str(port)], capture_output=True, text=True, env=_env(), timeout=60
        )
    assert proc.returncode == 1
    assert f"127.0.0.1:{port}" in proc.stderr
    assert proc.stdout == ""


# --------------------------------------------------------------------------
# The library pieces in-process.


def test_mock_broker_in_process_ensure_topics_tolerates_existing_ones():
    with MockBroker() as broker:
        admin = connect_admin(admin_settings(None, bootstrap=broker.bootstrap), timeout=WAIT)
        assert ensure_topics(admin, ["a.one", "a.two"], timeout=WAIT) == ["a.one", "a.two"]
        assert ensure_topics(admin, ["a.one", "a.two", "a.one"], timeout=WAIT) == []
        assert {"a.one", "a.two"} <= set(admin.list_topics(timeout=WAIT).topics)
    with pytest.raises(RuntimeError):
        broker.bootstrap  # closed


def test_connect_admin_names_the_bootstrap_when_nothing_answers():
    address = f"127.0.0.1:{_free_port()}"
    started = time.monotonic()
    with pytest.raises(KafkaUnreachable) as info:
        connect_admin(admin_settings(None, bootstrap=address), timeout=1.0)
    assert info.value.bootstrap == address
    assert address in str(info.value)
    assert time.monotonic() - started < WAIT


def test_kafka_settings_pass_the_config_through_over_the_defaults():
    config = parse_config({
        "kafka": {
            "bootstrap.servers": "kafka-1:9093,kafka-2:9093",
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": "becomingone",
            "sasl.password": "s3cret",
            "ssl.ca.location": "/etc/ssl/ca.pem",
            "linger.ms": 5,
            "enable.idempotence": False,
        }
    })
    produce = producer_settings(config.kafka)
    assert produce["security.protocol"] == "SASL_SSL"
    assert produce["sasl.password"] == "s3cret"
    assert produce["ssl.ca.location"] == "/etc/ssl/ca.pem"
    assert produce["linger.ms"] == "5"  # the config wins over the default
    assert produce["enable.idempotence"] == "false"
    assert produce["acks"] == "all"  # a default the config did not touch
    assert producer_settings(config.kafka, bootstrap="127.0.0.1:1")["bootstrap.servers"] == "127.0.0.1:1"
    consume = consumer_settings(config.kafka, "flow", from_beginning=True)
    assert consume["group.id"] == "flow" and consume["auto.offset.reset"] == "earliest"
    assert consume["sasl.mechanism"] == "SCRAM-SHA-512"
    assert admin_settings(config.kafka)["security.protocol"] == "SASL_SSL"
    with pytest.raises(KafkaSetupError, match="bootstrap"):
        producer_settings(None)


# --------------------------------------------------------------------------
# The file reader.


def test_reader_reads_an_arrow_stream_and_refuses_zoneless_times(tmp_path):
    table = pa.table({
        "t": pa.array([1764115200.25, 1764115200.5]),
        "sensor": pa.array([7, 7]),  # integer ids read as text
        "phase": pa.array([1.0, 2.0], pa.float32()),
    })
    stream = tmp_path / "samples.arrows"
    with pa.ipc.new_stream(stream, table.schema) as writer:
        writer.write_table(table)
    (chunk,) = read_phase_file(stream, "arrow")
    assert chunk.sensor.to_pylist() == ["7", "7"]
    assert chunk.t_us.tolist() == [1764115200250000, 1764115200500000]
    assert chunk.phase.to_pylist() == [[1.0], [2.0]]
    assert chunk.cell.null_count == 2

    naive = tmp_path / "naive.csv"
    naive.write_text("sensor,t,phase\na,2025-11-26T00:00:00,1.0\n")
    with pytest.raises(PhaseFileError, match="without a time zone") as info:
        list(read_phase_file(naive))
    assert info.value.column == "t"

    # A zone-less Arrow timestamp column holds epoch counts: read as UTC, as the decoder does.
    typed = tmp_path / "naive.arrows"
    naive_table = pa.table({"sensor": ["a"], "t": pa.array([1764115200250000], pa.timestamp("us")),
                            "phase": [1.0]})
    with pa.ipc.new_stream(typed, naive_table.schema) as writer:
        writer.write_table(naive_table)
    (chunk,) = read_phase_file(typed, "arrow")
    assert chunk.t_us.tolist() == [1764115200250000]


def test_reader_chunks_keep_their_row_numbers(tmp_path):
    csv = tmp_path / "rows.csv"
    csv.write_text("sensor,t,phase\n" + "".join(f"s,{1764115200 + i},{i}\n" for i in range(10)))
    chunks = list(read_phase_file(csv, chunk_rows=4))
    assert [len(c) for c in chunks] == [4, 4, 2]
    assert [c.first_row for c in chunks] == [0, 4, 8]
    assert np.concatenate([c.t_us for c in chunks]).tolist() == [(1764115200 + i) * 1_000_000 for i in range(10)]
    whole = PhaseColumns.concat(chunks)
    assert whole.phase.to_pylist() == [[float(i)] for i in range(10)]
