"""The pipeline end to end on a real Kafka-protocol broker (`becomingone broker` over TCP).

One module-scoped run: JSON samples (one message per sample) and Arrow IPC
batch messages for several sensors, plus one crafted bad message per
dead-letter reason, go to an input topic; the dataflow runs in this process
until the input is consumed; then the four output topics, the Arrow archive
and the metrics endpoint (scraped over HTTP) are read back and checked.
"""

from __future__ import annotations

import collections
import hashlib
import json
import time
import urllib.request
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pytest
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from connectors.archive import open_dataset, verify_archive
from connectors.kafka import PhaseProducer, arrow_message, arrow_record_batch, producer_settings
from connectors.phase_files import PhaseColumns
from connectors.synthetic import SyntheticSensor, synthetic_batches
from flows.run import run_flow
from operators.grid import emission_points
from operators.params import kairos_params
from operators.reference import lag_products, window_values
from schemas.config import parse_config
from schemas.messages import (
    ARROW_STREAM_CONTENT_TYPE,
    CONTENT_TYPE_HEADER,
    WITNESS_LOG_GENESIS,
    CollapseEvent,
    DeadLetter,
    WitnessRecord,
    witness_log_digest,
)
from tests.conftest import free_port, read_topic, unique_topic

START_US = 1_735_689_600_000_000  # 2025-01-01T00:00:00Z
PERIOD_US = 10_000  # 100 Hz
DURATION_US = 30_000_000  # 30 s: the Master matures at 10 s, the switching sensor switches at 15 s
MAX_MESSAGE_BYTES = 100_000
ROLES = ("collapse", "witness", "sync", "dlq")


@dataclass
class Run:
    """What the module's run produced, read back."""

    bootstrap: str
    config: object
    root: object
    samples: dict[str, tuple[np.ndarray, np.ndarray]]  # the good samples sent, per sensor
    bad: dict[str, bytes] = field(default_factory=dict)  # reason -> the bad JSON value sent
    topics: dict[str, list] = field(default_factory=dict)  # role -> messages
    metrics_before: dict = field(default_factory=dict)
    metrics_after: dict = field(default_factory=dict)


def _generate(sensors: list[SyntheticSensor], seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    parts: dict[str, list] = collections.defaultdict(list)
    for name, t, phase in synthetic_batches(sensors, period_us=PERIOD_US, duration_us=DURATION_US,
                                            start_us=START_US, seed=seed):
        parts[name].append((t, phase))
    return {name: (np.concatenate([t for t, _ in p]), np.concatenate([ph for _, ph in p])) for name, p in parts.items()}


def _scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


@pytest.fixture(scope="module")
def run(bootstrap, tmp_path_factory) -> Run:
    root = tmp_path_factory.mktemp("archive")
    topic = unique_topic()
    json_sensors = _generate([SyntheticSensor("steady-j", "steady"), SyntheticSensor("noise-j", "noise")], seed=7)
    arrow_sensors = _generate([SyntheticSensor("steady-a", "steady", channels=2),
                               SyntheticSensor("switch-a", "switching"),
                               SyntheticSensor("noise-a", "noise")], seed=8)
    producer = Producer(producer_settings(None, bootstrap=bootstrap))

    # JSON: one message per sample, keyed by sensor; steady-j in two halves
    # with every kind of bad message between them (same key, same partition,
    # so they arrive after the first half and before the second).
    json_out = PhaseProducer(producer, topic, wire="json")
    half = len(json_sensors["steady-j"][0]) // 2
    for name, (t, phase) in json_sensors.items():
        stop = half if name == "steady-j" else len(t)
        json_out.send(PhaseColumns.from_numpy(name, t[:stop], phase[:stop]))
    t_j, ph_j = json_sensors["steady-j"]
    last = float(t_j[half - 1]) / 1e6
    bad = {
        "malformed": b"{this is not json",
        "schema": json.dumps({"sensor": "steady-j", "t": "yesterday", "phase": 1.0}).encode(),
        "nan": b'{"sensor": "steady-j", "t": %r, "phase": NaN}' % (last + 0.0001),
        "channels": json.dumps({"sensor": "steady-j", "t": last + 0.0002, "phase": []}).encode(),
        "duplicate": json.dumps({"sensor": "steady-j", "t": last, "phase": float(ph_j[half - 1, 0])}).encode(),
        "late": json.dumps({"sensor": "steady-j", "t": float(t_j[10]) / 1e6 + 0.005, "phase": 0.5}).encode(),
        "future": json.dumps({"sensor": "steady-j", "t": time.time() + 3600.0, "phase": 0.5}).encode(),
        "too_large": json.dumps({"sensor": "steady-j", "t": last, "phase": 0.5,
                                 "pad": "x" * MAX_MESSAGE_BYTES}).encode(),
    }
    for value in bad.values():
        producer.produce(topic, key=b"steady-j", value=value)
    json_out.send(PhaseColumns.from_numpy("steady-j", t_j[half:], ph_j[half:]))

    # Arrow: batches of 500 rows mixing sensors, all on partition 0 (no key
    # fits a mixed batch), then one late Arrow row.
    arrow_out = PhaseProducer(producer, topic, wire="arrow", batch_rows=500, partition=0)
    chunks = [PhaseColumns.from_numpy(name, t[i:i + 100], ph[i:i + 100])
              for i in range(0, len(next(iter(arrow_sensors.values()))[0]), 100)
              for name, (t, ph) in arrow_sensors.items()]
    for chunk in chunks:
        arrow_out.send(chunk)
    arrow_out.finish()
    t_a, ph_a = arrow_sensors["switch-a"]
    late_row = arrow_message(arrow_record_batch(PhaseColumns.from_numpy("switch-a", t_a[5:6] + 1, ph_a[5:6])))
    producer.produce(topic, value=late_row, partition=0,
                     headers=[(CONTENT_TYPE_HEADER, ARROW_STREAM_CONTENT_TYPE.encode())])
    json_out.finish()
    assert json_out.failed == 0 and arrow_out.failed == 0
    assert producer.flush(30) == 0
    bad["late_arrow"] = late_row

    port = free_port()
    prefix = unique_topic("test.out")
    config = parse_config({
        "source": {"kind": "kafka", "topic": topic, "from_beginning": True, "stop_at_end": True,
                   "max_message_bytes": MAX_MESSAGE_BYTES, "batch_size": 250},
        "kafka": {"bootstrap.servers": bootstrap},
        "sink": {"topics": {role: f"{prefix}.{role}" for role in ROLES}},
        "memory": {"storage": {"path": str(root)}},
        "witnessing": {"meta_every": 100},
        "metrics": {"port": port},
    })
    samples = {**json_sensors, **arrow_sensors}
    result = Run(bootstrap, config, root, samples, bad)
    from connectors.endpoint import serve
    from connectors.metrics import metrics

    metrics()
    serve("127.0.0.1", port)
    result.metrics_before = _scrape(port)
    run_flow(config)
    result.metrics_after = _scrape(port)
    result.topics = {role: read_topic(bootstrap, f"{prefix}.{role}") for role in ROLES}
    return result


def _events(run: Run) -> list[CollapseEvent]:
    return [CollapseEvent.model_validate_json(m.value()) for m in run.topics["collapse"]]


def test_coherent_sensors_collapse_and_noise_does_not(run):
    by_sensor = collections.defaultdict(list)
    for event in _events(run):
        by_sensor[event.sensor].append(event)
    assert [e.event for e in by_sensor["steady-j"]] == ["collapse"]
    assert [e.event for e in by_sensor["steady-a"]] == ["collapse"]
    assert "noise-j" not in by_sensor and "noise-a" not in by_sensor
    switch = by_sensor["switch-a"]
    assert [e.event for e in switch] == ["collapse", "dissipate"]
    assert switch[1].t_us > START_US + DURATION_US // 2  # after the switch to noise
    # No collapse before the Master has 10 s of products (maturity).
    assert all(e.t_us >= START_US + 10_000_000 for e in _events(run))
    for m in run.topics["collapse"]:
        assert m.key() == json.loads(m.value())["sensor"].encode()


def test_archive_events_equal_the_collapse_topic(run):
    table = open_dataset(run.root / "events").to_table()
    assert sorted(table["event_id"].to_pylist()) == sorted(e.event_id for e in _events(run))
    assert verify_archive(run.root) == {name: [] for name in verify_archive(run.root)}


def test_signatures_equal_the_reference_on_the_same_samples(run):
    sig = open_dataset(run.root / "temporal_signatures").to_table().to_pylist()
    params = kairos_params(run.config)
    checked = 0
    for sensor in ("steady-a", "switch-a", "noise-j", "steady-j"):
        t, phase = run.samples[sensor]
        products = lag_products(t, phase, params)
        for transducer, window in (("emissary", run.config.emissary.tau_max_us),
                                   ("master", run.config.master.tau_max_us)):
            rows = [r for r in sig if r["sensor"] == sensor and r["transducer"] == transducer]
            interval = getattr(run.config, transducer).witness_interval_us
            due = emission_points(t, interval)  # one row per due grid point on whole seconds
            assert [int(r["t"].timestamp() * 1e6) for r in rows] == due[due % 1_000_000 == 0].tolist()
            picked = rows[::7]  # sampled grid points
            at = np.array([int(r["t"].timestamp() * 1_000_000) for r in picked], np.int64)
            ref = window_values(products, params.omega, at, window)
            got = np.array([complex(r["t_re"], r["t_im"]) for r in picked])
            np.testing.assert_allclose(got, ref.T, rtol=1e-9, atol=1e-12)
            assert [r["n_products"] for r in picked] == ref.n_products.tolist()
            checked += len(picked)
    assert checked > 30


def test_every_dead_letter_reason_and_the_flow_keeps_going(run):
    letters = [DeadLetter.model_validate_json(m.value()) for m in run.topics["dlq"]]
    reasons = collections.Counter(letter.reason.value for letter in letters)
    assert reasons == {"malformed": 1, "schema": 1, "nan": 1, "channels": 1, "duplicate": 1, "late": 2,
                       "future": 1, "too_large": 1}
    # Found by the SHA-256 of the whole value: the too_large one carries only its first 65,536 bytes.
    by_original = {letter.original_sha256: letter for letter in letters}
    for reason, value in run.bad.items():
        if reason == "late_arrow":
            continue
        letter = by_original[hashlib.sha256(value).hexdigest()]
        assert letter.reason.value == reason
        assert letter.original_bytes == value[:65_536] and letter.truncated == (len(value) > 65_536)
        assert letter.partition is not None and letter.offset is not None
        assert letter.topic == run.config.source.topic
    # The Arrow row comes back as a one-row Arrow stream of its own message.
    arrow_late = [letter for letter in letters if letter.reason.value == "late" and letter.original_bytes != run.bad["late"]]
    table = pa.ipc.open_stream(arrow_late[0].original_bytes).read_all()
    assert table.num_rows == 1 and table["sensor"][0].as_py() == "switch-a"
    # Every good sample after the bad messages was still integrated.
    rows = open_dataset(run.root / "input").to_table()
    counts = collections.Counter(rows["sensor"].to_pylist())
    assert counts == {name: len(t) for name, (t, _) in run.samples.items()}


def test_late_and_future_samples_are_not_integrated(run):
    rows = open_dataset(run.root / "input").to_table()
    steady = rows.filter(pa.compute.equal(rows["sensor"], "steady-j"))
    t_us = steady["t"].cast(pa.int64()).to_numpy()
    np.testing.assert_array_equal(np.sort(t_us), run.samples["steady-j"][0])


def test_witness_layers_and_the_meta_hash_chain(run):
    records = [WitnessRecord.model_validate_json(m.value()) for m in run.topics["witness"]]
    layers = collections.Counter(r.layer for r in records)
    assert set(layers) == {"micro", "meso", "macro", "meta"}
    assert layers["macro"] == len(_events(run))
    assert len({m.partition() for m in run.topics["witness"]}) == 1  # one key: the log's order
    digest, counts = WITNESS_LOG_GENESIS, collections.Counter()
    for message, record in zip(run.topics["witness"], records):
        if record.layer == "meta":
            assert record.payload.log_sha256 == digest
            assert record.payload.records == {k: counts[k] for k in ("micro", "meso", "macro", "meta")}
        digest = witness_log_digest(digest, message.value())
        counts[record.layer] += 1
    assert records[-1].layer == "meta"  # the log observes itself at end of input
    archived = open_dataset(run.root / "witnessing_logs").to_table().sort_by("seq")
    assert archived["seq"].to_pylist() == list(range(len(records)))
    assert archived["payload"].to_pylist() == [m.value().decode() for m in run.topics["witness"]]
    assert archived["log_sha256"][-1].as_py() == digest


def test_sync_feed_every_publish_interval(run):
    feed = [json.loads(m.value()) for m in run.topics["sync"]]
    per_sensor = collections.Counter(r["sensor"] for r in feed)
    # Emissary points on whole seconds: 0 s to 29 s (the last sample, 29.99 s, is due at 29.99 s).
    assert per_sensor == {name: DURATION_US // 1_000_000 for name in run.samples}
    assert all(r["node"] == "becomingone" for r in feed)


def _delta(run: Run, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return run.metrics_after.get(key, 0.0) - run.metrics_before.get(key, 0.0)


def test_metrics_endpoint_matches_the_events(run):
    letters = collections.Counter(json.loads(m.value())["reason"] for m in run.topics["dlq"])
    for reason, n in letters.items():
        assert _delta(run, "becomingone_samples_total", result=reason) == n
    assert _delta(run, "becomingone_samples_total", result="accepted") == sum(len(t) for t, _ in run.samples.values())
    events = collections.Counter(e.event for e in _events(run))
    assert _delta(run, "becomingone_transitions_total", event="collapse") == events["collapse"]
    assert _delta(run, "becomingone_transitions_total", event="dissipate") == events["dissipate"]
    layers = collections.Counter(json.loads(m.value())["layer"] for m in run.topics["witness"])
    for layer, n in layers.items():
        assert _delta(run, "becomingone_witness_records_total", layer=layer) == n
    for step in ("decode", "resonate", "witness"):
        assert _delta(run, "becomingone_batch_seconds_count", step=step) > 0
    assert _delta(run, "becomingone_event_latency_seconds_count") == len(_events(run))
    assert ("becomingone_active_sensors", ()) in run.metrics_after
    assert ("becomingone_sensors_collapsed", ()) in run.metrics_after
    assert not any(name == "becomingone_sensor_coherence_sync" for name, _ in run.metrics_after)


def test_offsets_are_committed_to_the_group_and_the_lag_gauge_ends_at_zero(run):
    """After the run a separate consumer sees the group's committed offsets at the topic's end
    (what kafka-consumer-groups shows), and the scrape after the run shows no lag."""
    from confluent_kafka import Consumer, TopicPartition

    topic = run.config.source.topic
    consumer = Consumer({"bootstrap.servers": run.bootstrap, "group.id": run.config.source.group_id,
                         "enable.auto.commit": False})
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=30).topics[topic].partitions)
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in partitions}
        committed = {tp.partition: tp.offset
                     for tp in consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=30)}
    finally:
        consumer.close()
    assert sum(ends.values()) > 0 and committed == ends
    for p in partitions:
        labels = (("partition", str(p)), ("topic", topic))
        assert run.metrics_after[("becomingone_source_lag_messages", labels)] == 0
        assert run.metrics_after[("becomingone_kafka_connected", (("client", f"consumer:{topic}/{p}"),))] == 1
