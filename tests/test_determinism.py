"""Determinism: the same input gives the same events and archive rows, whatever the
Kafka batch size, the number of workers, or the number of processes.

The input goes to a topic once (JSON samples keyed by sensor over the mock
broker's 4 partitions, mixed-sensor Arrow batches on partition 0, and a few
bad messages); the flow then runs the Bytewax way, ``python -m bytewax.run
flows.kairos`` with the config in ``$BECOMINGONE_CONFIG``, three times: one
worker with batch size 1000, two workers with batch size 7, and two
processes (``-i``/``-a``) with batch size 50.  Each run has its own output
topics and archive; all are compared as sorted tables.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow as pa
import pytest
import yaml
from confluent_kafka import Producer

from connectors.archive import open_dataset
from connectors.kafka import PhaseProducer, producer_settings
from connectors.phase_files import PhaseColumns
from connectors.synthetic import SyntheticSensor, synthetic_batches
from tests.conftest import clean_env, free_port, read_topic, unique_topic

pytestmark = pytest.mark.slow  # brokers and whole flows: out of `make test-fast`

START_US = 1_735_689_600_000_000
DATASETS = ("events", "temporal_signatures", "coherence_history", "mesh_sync", "mesh_members", "input")
RUNS = {  # name -> (bytewax.run arguments per process, source.batch_size)
    "one-worker": ([["-w", "1"]], 1000),
    "two-workers": ([["-w", "2"]], 7),
    "two-processes": ([["-i", "0"], ["-i", "1"]], 50),
}


@pytest.fixture(scope="module")
def input_topic(bootstrap) -> str:
    topic = unique_topic()
    producer = Producer(producer_settings(None, bootstrap=bootstrap))
    json_out = PhaseProducer(producer, topic, wire="json")
    arrow_out = PhaseProducer(producer, topic, wire="arrow", batch_rows=300, partition=0)
    as_json = [SyntheticSensor("steady-j", "steady"), SyntheticSensor("switch-j", "switching"),
               SyntheticSensor("noise-j", "noise")]
    as_arrow = [SyntheticSensor("steady-a", "steady", channels=3), SyntheticSensor("drift-a", "drifting")]
    for sensors, out in ((as_json, json_out), (as_arrow, arrow_out)):
        for name, t, phase in synthetic_batches(sensors, period_us=10_000, duration_us=24_000_000,
                                                start_us=START_US, seed=3, batch_us=700_000):
            out.send(PhaseColumns.from_numpy(name, t, phase))
    arrow_out.finish()
    producer.produce(topic, key=b"steady-j", value=b"not json")
    producer.produce(topic, key=b"steady-j", value=json.dumps(
        {"sensor": "steady-j", "t": START_US / 1e6 + 1.0005, "phase": 0.0}).encode())  # late
    json_out.finish()
    assert producer.flush(30) == 0 and json_out.failed == 0 and arrow_out.failed == 0
    return topic


def _run(bootstrap: str, topic: str, tmp_path, name: str) -> dict:
    processes, batch_size = RUNS[name]
    prefix = unique_topic(f"test.out.{name}")
    root = tmp_path / name
    config = {
        "source": {"kind": "kafka", "topic": topic, "from_beginning": True, "stop_at_end": True,
                   "batch_size": batch_size},
        "kafka": {"bootstrap.servers": bootstrap},
        "sink": {"topics": {r: f"{prefix}.{r}" for r in ("collapse", "witness", "sync", "dlq", "mesh")}},
        # All JSON samples are sent before the Arrow ones, so one partition runs 24 s out of event-time
        # order: the mesh waits that long (SPEC section 7: order within sync.mesh.lateness).
        "sync": {"mesh_enabled": True, "mesh": {"lateness": 30.0}},
        "memory": {"storage": {"path": str(root)}},
        "metrics": {"enabled": False},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = clean_env(BECOMINGONE_CONFIG=str(path))
    extra: list[str] = []
    if len(processes) > 1:
        extra = ["-a", ";".join(f"127.0.0.1:{free_port()}" for _ in processes)]
    procs = [subprocess.Popen([sys.executable, "-m", "bytewax.run", "flows.kairos", *args, *extra],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for args in processes]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    tables = {}
    for dataset in DATASETS:
        table = open_dataset(root / dataset).to_table().drop_columns(["date", "hour"])
        tables[dataset] = table.sort_by([(c, "ascending") for c in table.column_names
                                         if not pa.types.is_list(table.schema.field(c).type)])
    collapse = sorted(m.value() for m in read_topic(bootstrap, f"{prefix}.collapse"))
    dlq = sorted(m.value() for m in read_topic(bootstrap, f"{prefix}.dlq"))
    sync = sorted(m.value() for m in read_topic(bootstrap, f"{prefix}.sync"))
    mesh = sorted(m.value() for m in read_topic(bootstrap, f"{prefix}.mesh"))
    return {"tables": tables, "collapse": collapse, "dlq": dlq, "sync": sync, "mesh": mesh}


@pytest.fixture(scope="module")
def runs(bootstrap, input_topic, tmp_path_factory) -> dict[str, dict]:
    tmp_path = tmp_path_factory.mktemp("determinism")
    return {name: _run(bootstrap, input_topic, tmp_path, name) for name in RUNS}


def test_the_runs_did_real_work(runs):
    base = runs["one-worker"]
    events = [json.loads(v) for v in base["collapse"]]
    assert {e["sensor"] for e in events if e["event"] == "collapse"} >= {"steady-j", "steady-a", "switch-j"}
    assert any(e["sensor"] == "switch-j" and e["event"] == "dissipate" for e in events)
    assert sorted(json.loads(v)["reason"] for v in base["dlq"]) == ["late", "malformed"]
    assert base["tables"]["input"].num_rows == 5 * 2400


@pytest.mark.parametrize("name", ["two-workers", "two-processes"])
def test_same_events_and_archive_rows_as_one_worker(runs, name):
    base, other = runs["one-worker"], runs[name]
    assert other["collapse"] == base["collapse"]
    assert other["dlq"] == base["dlq"]
    assert other["sync"] == base["sync"]
    assert other["mesh"] == base["mesh"] and base["mesh"]
    for dataset in DATASETS:
        assert other["tables"][dataset].equals(base["tables"][dataset]), dataset
        assert other["tables"][dataset].num_rows > 0, dataset
