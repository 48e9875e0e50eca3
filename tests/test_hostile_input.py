"""Hostile input through the real broker (SPEC section 4): the flow keeps running, the good
samples around the bad ones give exactly the archive of a clean run, every bad message is a
dead letter with the right reason, and no dead letter outgrows its bounds.

One clean run (Arrow batches of several sensors over a 4-partition topic, as
`becomingone produce` sends them), one run of the same samples with hostile
messages in between, and one run of the clean archive replayed into Kafka.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pytest
from confluent_kafka import Producer

from connectors.kafka import (
    PhaseProducer,
    arrow_message,
    arrow_record_batch,
    producer_settings,
    sensor_partitions,
)
from connectors.phase_files import PhaseColumns
from flows.run import run_flow
from schemas.config import parse_config
from schemas.messages import ARROW_STREAM_CONTENT_TYPE, CONTENT_TYPE_HEADER, DeadLetter, from_json_bytes
from tests.conftest import (
    BIN,
    COMPARED_DATASETS,
    archive_rows,
    clean_env,
    fleet_samples,
    partitioned_topic,
    read_topic,
    unique_topic,
)

PARTITIONS = 4
ARROW = [(CONTENT_TYPE_HEADER, ARROW_STREAM_CONTENT_TYPE.encode())]


def _chunks(samples, start: float, stop: float) -> list[PhaseColumns]:
    """Every sensor's samples between the fractions ``start`` and ``stop`` of the run, interleaved."""
    out = []
    for name, (t, phase) in samples.items():
        lo, hi = int(len(t) * start), int(len(t) * stop)
        out.append(PhaseColumns.from_numpy(name, t[lo:hi], phase[lo:hi]))
    return out


def _config(bootstrap: str, topic: str, root, **source):
    prefix = unique_topic("test.out")
    return parse_config({
        "source": {"kind": "kafka", "topic": topic, "from_beginning": True, "stop_at_end": True,
                   "batch_size": 200, **source},
        "kafka": {"bootstrap.servers": bootstrap},
        "sink": {"topics": {role: f"{prefix}.{role}" for role in ("collapse", "witness", "sync", "dlq")}},
        "memory": {"storage": {"path": str(root)}},
        "metrics": {"enabled": False},
    })


@dataclass
class Runs:
    clean_topic: str
    samples: dict
    clean: dict
    clean_totals: tuple
    hostile: dict
    hostile_totals: tuple
    dead: list[DeadLetter]
    dead_sizes: list[int]
    poison: dict[str, bytes]


def _partition(sensor: str) -> int:
    return int(sensor_partitions(pa.array([sensor]), PARTITIONS)[0])


def _send_hostile(producer: Producer, topic: str, samples) -> dict[str, bytes]:
    """Hostile messages, each on the partition of the sensor it names (so it lands between that
    sensor's good samples), and what was sent."""
    poison = {
        "t_before_year_1": json.dumps({"sensor": "steady-1", "t": -1e11, "phase": 0.1}).encode(),
        "t_year_2286": json.dumps({"sensor": "steady-1", "t": 1e10, "phase": 0.1}).encode(),
        "t_iso_year_1": json.dumps({"sensor": "steady-1", "t": "0001-01-01T00:00:00Z", "phase": 0.1}).encode(),
        # Above max_message_bytes (1 MiB): too_large; and one under it that is not JSON: malformed.
        "oversized": b'{"sensor": "steady-1", "pad": "' + b"x" * 1_200_000 + b'"}',
        "large_malformed": b"{" + b"y" * 800_000,
    }
    for value in poison.values():
        producer.produce(topic, key=b"steady-1", value=value, partition=_partition("steady-1"))
    # 500,000 bad rows (NaN times), 1.7 kB zstd-compressed: too_large by what it decodes to.
    n = 500_000
    bomb = pa.table({"sensor": pa.array(["steady-1"] * n).dictionary_encode(),
                     "t": pa.array(np.full(n, np.nan)), "phase": pa.array(np.zeros(n))})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, bomb.schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as writer:
        writer.write_table(bomb)
    poison["bomb"] = sink.getvalue().to_pybytes()
    producer.produce(topic, key=b"steady-1", value=poison["bomb"], headers=ARROW, partition=_partition("steady-1"))
    # 5,000 bad rows within the limits: 100 row records and one summary.
    bad_rows = pa.table({"sensor": ["noise-1"] * 5_000, "t": pa.array(np.full(5_000, np.nan)),
                         "phase": pa.array(np.zeros(5_000))})
    poison["many_bad_rows"] = arrow_message(bad_rows.to_batches()[0])
    producer.produce(topic, key=b"noise-1", value=poison["many_bad_rows"], headers=ARROW,
                     partition=_partition("noise-1"))
    # 1,000 late rows of one sensor (its first 10 s, 5 ms off the grid) in one message, after the
    # sensor's first 12 s: decided downstream, per sensor.
    t, phase = samples["switch-1"]
    late = PhaseColumns.from_numpy("switch-1", t[:1_000] + 5_000, phase[:1_000])
    poison["late_rows"] = arrow_message(arrow_record_batch(late))
    producer.produce(topic, key=b"switch-1", value=poison["late_rows"], headers=ARROW,
                     partition=_partition("switch-1"))
    return poison


@pytest.fixture(scope="module")
def runs(bootstrap, tmp_path_factory) -> Runs:
    samples = fleet_samples(24_000_000, seed=3)
    producer = Producer(producer_settings(None, bootstrap=bootstrap))

    clean_topic = partitioned_topic(bootstrap, PARTITIONS)
    sender = PhaseProducer(producer, clean_topic, wire="arrow", batch_rows=700)
    for chunk in _chunks(samples, 0.0, 1.0):
        sender.send(chunk)
    sender.finish()
    assert sender.failed == 0

    hostile_topic = partitioned_topic(bootstrap, PARTITIONS)
    sender = PhaseProducer(producer, hostile_topic, wire="arrow", batch_rows=700)
    for chunk in _chunks(samples, 0.0, 0.5):
        sender.send(chunk)
    sender.finish()
    # A producer that sends what a careless or hostile one would: up to 3 MB per message.
    careless = Producer({**producer_settings(None, bootstrap=bootstrap), "message.max.bytes": 3_000_000})
    poison = _send_hostile(careless, hostile_topic, samples)
    assert careless.flush(30) == 0
    for chunk in _chunks(samples, 0.5, 1.0):
        sender.send(chunk)
    sender.finish()
    assert sender.failed == 0

    clean_root = tmp_path_factory.mktemp("clean")
    clean_totals = run_flow(_config(bootstrap, clean_topic, clean_root)).totals()
    clean = archive_rows(clean_root)
    hostile_root = tmp_path_factory.mktemp("hostile")
    config = _config(bootstrap, hostile_topic, hostile_root)
    hostile_totals = run_flow(config).totals()
    dlq = read_topic(bootstrap, config.sink.topics.dlq)
    return Runs(clean_topic, samples, clean, clean_totals, archive_rows(hostile_root), hostile_totals,
                [from_json_bytes(DeadLetter, m.value()) for m in dlq], [len(m.value()) for m in dlq], poison)


def test_arrow_produce_over_four_partitions_gives_no_late_sample(runs):
    accepted, rejected, _, _ = runs.clean_totals
    assert rejected == 0 and accepted == sum(len(t) for t, _ in runs.samples.values())
    assert len(runs.clean["input"]) == accepted
    assert {e["event"] for e in runs.clean["events"]} == {"collapse", "dissipate"}


def test_good_samples_around_hostile_ones_are_integrated_exactly_as_in_a_clean_run(runs):
    for name in COMPARED_DATASETS:
        assert runs.hostile[name] == runs.clean[name], name


def _sha(value: bytes) -> str:
    return hashlib.sha256(value).hexdigest()


def test_every_hostile_message_is_a_dead_letter_with_its_reason(runs):
    by_original = {d.original_sha256: d for d in runs.dead if d.omitted is None}
    sha = {name: _sha(value) for name, value in runs.poison.items()}
    for name in ("t_before_year_1", "t_year_2286", "t_iso_year_1"):
        assert by_original[sha[name]].reason == "schema", name
        assert "2262-04-11" in by_original[sha[name]].error
    assert by_original[sha["oversized"]].reason == "too_large"
    assert by_original[sha["large_malformed"]].reason == "malformed"
    bomb = by_original[sha["bomb"]]
    assert bomb.reason == "too_large" and "decodes to" in bomb.error and bomb.original_bytes == runs.poison["bomb"]


def test_one_message_yields_at_most_its_allowance_and_a_summary(runs):
    for name, reason, rows in (("many_bad_rows", "nan", 5_000), ("late_rows", "late", 1_000)):
        value = runs.poison[name]
        (summary,) = [d for d in runs.dead if d.omitted is not None and d.original_sha256 == _sha(value)]
        per_row = [d for d in runs.dead if d.omitted is None and (d.partition, d.offset) == (summary.partition,
                                                                                              summary.offset)]
        assert len(per_row) == 100 and {d.reason for d in per_row} == {reason}
        assert sorted(d.row for d in per_row) == list(range(100))
        # Each row record carries its own row as a one-row stream.
        assert pa.ipc.open_stream(per_row[0].original_bytes).read_all().num_rows == 1
        assert summary.omitted == {reason: rows - 100}
        assert summary.original_size == len(value)
    # Every rejected row is counted (metrics, summary) even when it has no record of its own.
    _, rejected, _, _ = runs.hostile_totals
    assert rejected == len(runs.poison) - 2 + 5_000 + 1_000


def test_dead_letters_stay_within_their_bounds(runs):
    assert max(runs.dead_sizes) < 100_000  # 65,536 bytes of original, base64, plus the fields
    large = [d for d in runs.dead if d.original_size > 65_536]
    # The oversized, the large malformed and the bomb messages, and the summary of the 5,000 bad rows.
    assert {d.reason for d in large} == {"too_large", "malformed", "nan"}
    for d in large:
        assert d.truncated and len(d.original_bytes) == 65_536
    assert len(runs.dead) < 250


def test_replay_into_kafka_over_four_partitions_gives_no_late_sample(runs, bootstrap, tmp_path):
    # The clean run's archive, replayed into a new 4-partition topic and run again.
    source_root = tmp_path / "source"
    topic = partitioned_topic(bootstrap, PARTITIONS)
    run_flow(_config(bootstrap, runs.clean_topic, source_root))
    proc = subprocess.run([str(BIN), "replay", str(source_root), "--to-kafka", "--bootstrap", bootstrap,
                           "--topic", topic, "--format", "arrow"], capture_output=True, text=True,
                          env=clean_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    root = tmp_path / "replayed"
    ledger = run_flow(_config(bootstrap, topic, root))
    accepted, rejected, _, _ = ledger.totals()
    assert rejected == 0 and accepted == len(runs.clean["input"])
    assert archive_rows(root) == runs.clean


_RSS_SCRIPT = textwrap.dedent("""
    import resource, sys
    import numpy as np, pyarrow as pa
    from flows.decoding import Decode
    from operators.decode import RawMessage
    from schemas.config import parse_config
    from schemas.messages import ARROW_STREAM_CONTENT_TYPE

    n = 500_000
    bomb = pa.table({"sensor": pa.array(["s"] * n).dictionary_encode(), "t": pa.array(np.full(n, np.nan)),
                     "phase": pa.array(np.zeros(n))})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, bomb.schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as w:
        w.write_table(bomb)
    value = sink.getvalue().to_pybytes()
    limit = int(sys.argv[1])
    decode = Decode(parse_config({"source": {"kind": "kafka", "max_message_bytes": limit},
                                  "kafka": {"bootstrap.servers": "127.0.0.1:9"}, "sink": {"archive": False}}))
    warm = RawMessage(b"s", b'{"sensor": "s", "t": 1e9, "phase": 0}', topic="in", partition=0, offset=0)
    decode([warm])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    message = RawMessage(b"s", value, [("content-type", ARROW_STREAM_CONTENT_TYPE.encode())], "in", 0, 1)
    out = decode([message])
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    records = sum(len(r.values) if hasattr(r, "values") else 1 for emitted in out for r in emitted.records
                  if r.role == "dlq")
    print(len(value), (after - before) * 1024, records)
""")


@pytest.mark.slow
@pytest.mark.parametrize("limit", [1_048_576, 100_000_000])
def test_a_compressed_message_of_500000_bad_rows_costs_little_memory(limit):
    # In a process of its own, so its peak RSS is this message's alone.  With the default
    # limit it is too_large unread; with a raised one its rows are decoded and summed up.
    proc = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(limit)], capture_output=True, text=True,
                          timeout=300, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0, proc.stderr
    size, extra_rss, records = (int(x) for x in proc.stdout.split())
    assert size < 4_000
    assert extra_rss < 200 * 1024 * 1024
    assert 1 <= records <= 101


# --------------------------------------------------------------------------
# The fuzz corpus: many kinds of bad message, a few dozen of each, between the good samples.


def _fuzz_corpus(samples, rng: np.random.Generator) -> list[tuple[str, bytes | None, list | None, str]]:
    """(sensor whose partition it goes to, value, headers, expected reason) per message."""
    t_steady, _ = samples["steady-1"]
    half = len(t_steady) // 2
    arrow_good = pa.table({"sensor": ["steady-1"], "t": [1.7e9], "phase": [0.0]})
    valid_stream = arrow_message(arrow_good.to_batches()[0])
    n = 200_000
    sink = pa.BufferOutputStream()
    bomb = pa.table({"sensor": pa.array(["steady-1"] * n).dictionary_encode(), "t": pa.array(np.full(n, 1.7e9)),
                     "phase": pa.array(np.zeros(n))})
    with pa.ipc.new_stream(sink, bomb.schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as writer:
        writer.write_table(bomb)
    bomb_value = sink.getvalue().to_pybytes()

    def js(obj) -> bytes:
        return json.dumps(obj).encode()

    def one(k: int):
        dup_t = int(t_steady[half - 1 - k % 40])  # accepted within the last 0.4 s before the cut: duplicate
        late_t = int(t_steady[k % 500]) + 5_000  # long before the cut, off the grid: late
        far = [-1e11, 1e10, 1e300, -9.3e9, "0001-01-01T00:00:00Z", "9999-01-01T00:00:00+05:00"][k % 6]
        # The development broker keeps only ~5 MB per partition: a few of the large kinds.
        large = [
            ("noise-1", js({"sensor": "x" * 100_000, "t": "yesterday", "phase": 0.0}), None, "schema"),
            ("steady-2", b'{"pad": "' + b"z" * 1_100_000 + b'"}', None, "too_large"),
            ("switch-1", bomb_value, ARROW, "too_large"),
            ("noise-1", b"[" * 100_000 + b"]" * 100_000, None, "malformed"),
        ] if k < 2 else []
        return large + [
            ("steady-1", rng.bytes(int(rng.integers(1, 200))), None, "malformed"),
            ("steady-1", rng.bytes(int(rng.integers(1, 200))), ARROW, "malformed"),
            ("steady-1", valid_stream[: int(rng.integers(1, len(valid_stream) - 1))], ARROW, "malformed"),
            ("steady-1", js({"sensor": 7, "t": 1.7e9, "phase": 0.0}), None, "schema"),
            ("steady-1", js({"sensor": "steady-1", "t": True, "phase": 0.0}), None, "schema"),
            ("steady-1", js({"sensor": "steady-1", "t": 1.7e9, "phase": "0.5"}), None, "schema"),
            ("steady-1", b'{"sensor": "steady-1", "t": 1.7e9, "phase": NaN}', None, "nan"),
            ("steady-1", b'{"sensor": "steady-1", "t": Infinity, "phase": 0.0}', None, "nan"),
            ("steady-1", b'{"sensor": "\xff\xfe", "t": 1.7e9, "phase": 0.0}', None, "malformed"),
            ("steady-1", js({"sensor": "steady-1", "t": far, "phase": 0.0}), None, "schema"),
            ("steady-1", js({"sensor": "steady-1", "t": dup_t / 1e6, "phase": 0.0}), None, "duplicate"),
            ("steady-1", js({"sensor": "steady-1", "t": late_t / 1e6, "phase": 0.0}), None, "late"),
            ("steady-1", js({"sensor": "steady-1", "t": dup_t / 1e6 + 0.0051, "phase": [0.0, 1.0]}), None,
             "channels"),
            ("steady-1", js({"sensor": "steady-1", "t": 1.7e9, "phase": []}), None, "channels"),
            ("steady-1", None, None, "malformed"),
            ("steady-1", js({"sensor": "steady-1", "t": 1.7e9, "phase": 0.0}), [("content-type", b"text/csv")],
             "malformed"),
            ("steady-1", arrow_message(pa.table({"sensor": ["steady-1"], "t": ["now"], "phase": [0.0]})
                                       .to_batches()[0]), ARROW, "schema"),
            ("steady-1", arrow_message(pa.table({"sensor": ["steady-1"], "phase": [0.0]}).to_batches()[0]),
             ARROW, "schema"),
            ("steady-1", arrow_message(pa.table({"sensor": pa.array([None], pa.string()), "t": [1.7e9],
                                                 "phase": [0.0]}).to_batches()[0]), ARROW, "schema"),
            ("steady-1", js({"sensor": "steady-1", "t": "2025-01-01T00:00:00", "phase": 0.0}), None, "schema"),
            ("steady-1", js({"sensor": "steady-1", "t": 4e9, "phase": 0.0}), None, "future"),
            ("steady-1", js({"sensor": "\x1b[31m\r\n", "t": 1.7e9, "phase": float("nan")}).replace(
                b"NaN", b"NaN"), None, "nan"),
        ]

    corpus = []
    for k in range(40):  # about 900 messages
        corpus.extend(one(k))
    order = rng.permutation(len(corpus))
    return [corpus[i] for i in order]


def test_the_fuzz_corpus_is_dead_lettered_message_by_message(bootstrap, tmp_path, runs):
    rng = np.random.default_rng(11)
    corpus = _fuzz_corpus(runs.samples, rng)
    topic = partitioned_topic(bootstrap, PARTITIONS)
    producer = Producer(producer_settings(None, bootstrap=bootstrap))
    sender = PhaseProducer(producer, topic, wire="arrow", batch_rows=700)
    for chunk in _chunks(runs.samples, 0.0, 0.5):
        sender.send(chunk)
    sender.finish()
    careless = Producer({**producer_settings(None, bootstrap=bootstrap), "message.max.bytes": 3_000_000})
    expected: dict[tuple[int, int], str] = {}

    def delivered(err, msg, reason):
        assert err is None, err
        expected[(msg.partition(), msg.offset())] = reason

    for sensor, value, headers, reason in corpus:
        careless.produce(topic, value=value, key=sensor.encode(), headers=headers, partition=_partition(sensor),
                         on_delivery=lambda err, msg, reason=reason: delivered(err, msg, reason))
        careless.poll(0)
    assert careless.flush(60) == 0 and len(expected) == len(corpus)
    for chunk in _chunks(runs.samples, 0.5, 1.0):
        sender.send(chunk)
    sender.finish()

    config = _config(bootstrap, topic, tmp_path)
    accepted, rejected, _, _ = run_flow(config).totals()
    dead = [from_json_bytes(DeadLetter, m.value()) for m in read_topic(bootstrap, config.sink.topics.dlq)]
    got = {(d.partition, d.offset): d.reason for d in dead}
    assert len(dead) == len(corpus) and got == expected
    assert collections.Counter(expected.values())["late"] == 40
    assert rejected == len(corpus) and accepted == len(runs.clean["input"])
    assert archive_rows(tmp_path) == runs.clean
