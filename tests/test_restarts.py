"""Nothing accepted is lost across kill -9, SIGTERM and reruns of `becomingone run` (SPEC section 8).

`becomingone run` processes a Kafka topic that a paced producer fills; the
process is killed with SIGKILL at random moments and started again each
time.  At the end its archive must hold every produced sample once and the
events of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import yaml
from confluent_kafka import Producer

from connectors.archive import open_dataset
from connectors.kafka import PhaseProducer, producer_settings
from connectors.phase_files import PhaseColumns
from flows.run import run_flow
from schemas.config import parse_config
from tests.conftest import (
    BIN,
    COMPARED_DATASETS,
    WAIT,
    archive_rows,
    clean_env,
    fleet_samples,
    partitioned_topic,
    read_topic,
    unique_topic,
)

#: The compared datasets, the mesh's included (its state is in the snapshots too).
WITH_MESH = {**COMPARED_DATASETS, "mesh_sync": ["scope", "cell", "t"], "mesh_members": ["cell", "sensor", "t"]}


def _config_file(tmp_path, bootstrap: str, topic: str, root, **source) -> str:
    prefix = unique_topic("test.out")
    data = {
        "source": {"kind": "kafka", "topic": topic, "from_beginning": True, "batch_size": 100, **source},
        "kafka": {"bootstrap.servers": bootstrap},
        "sink": {"topics": {role: f"{prefix}.{role}" for role in ("collapse", "witness", "sync", "dlq", "mesh")}},
        "sync": {"mesh_enabled": True},
        "memory": {"storage": {"path": str(root)}, "flush_interval": 0.3},
        "metrics": {"enabled": False},
    }
    path = tmp_path / f"config-{root.name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _produce(bootstrap: str, topic: str, samples, seconds: float) -> threading.Thread:
    """Send the samples over about ``seconds`` of wall-clock time, in the background."""
    def send() -> None:
        producer = Producer(producer_settings(None, bootstrap=bootstrap))
        total = sum(len(t) for t, _ in samples.values())
        sender = PhaseProducer(producer, topic, wire="arrow", batch_rows=200, rate=total / seconds)
        n = len(next(iter(samples.values()))[0])
        for lo in range(0, n, 100):
            for name, (t, phase) in samples.items():
                sender.send(PhaseColumns.from_numpy(name, t[lo:lo + 100], phase[lo:lo + 100]))
        sender.finish()
        assert sender.failed == 0

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def _start(config: str, log, *args: str, **env) -> subprocess.Popen:
    return subprocess.Popen([str(BIN), "run", "--config", config, *args], stdout=log, stderr=subprocess.STDOUT,
                            env=clean_env(**env))


def _kill_loop(tmp_path, bootstrap: str, start) -> tuple[dict, dict, int]:
    """Run ``start(first, final, log)`` processes over a topic a paced producer fills, killing
    each with SIGKILL at a random moment (12 times), then one that reads to the end; the
    archives of that run and of an uninterrupted one, and the samples produced."""
    samples = fleet_samples(40_000_000, seed=9)  # 16,000 samples
    topic = partitioned_topic(bootstrap)
    producing = _produce(bootstrap, topic, samples, seconds=25.0)
    root = tmp_path / "killed"
    # Restarts do not read the topic from the beginning: what they read again comes from the
    # recovery snapshots (every second) alone.  Only the very first run starts at offset 0.
    config = _config_file(tmp_path, bootstrap, topic, root, from_beginning=False)
    rng = np.random.default_rng(17)
    kills = 0
    with open(tmp_path / "runs.log", "ab") as log:
        while kills < 12:
            proc = start(config, kills == 0, False, log)
            time.sleep(8.0 if kills == 0 else float(rng.uniform(1.5, 4.5)))  # the first lives to snapshot
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait(timeout=WAIT)
        producing.join(timeout=120)
        assert not producing.is_alive()
        final = start(config, False, True, log)  # reads to the end of the topic and stops
        assert final.wait(timeout=300) == 0, (tmp_path / "runs.log").read_text()[-3000:]
    clean_root = tmp_path / "clean"
    run_flow(parse_config(yaml.safe_load(open(_config_file(tmp_path, bootstrap, topic, clean_root,
                                                           stop_at_end=True)))), recovery=tmp_path / "rec")
    return (archive_rows(root, WITH_MESH), archive_rows(clean_root, WITH_MESH),
            sum(len(t) for t, _ in samples.values()))


def _assert_exact(killed: dict, clean: dict, produced: int) -> None:
    assert len(clean["input"]) == produced
    keys = [(r["sensor"], r["t"]) for r in killed["input"]]
    assert len(keys) == len(set(keys)) == produced  # every sample once
    for name in clean:
        assert killed[name] == clean[name], name


@pytest.mark.slow
def test_kill_9_loop_of_becomingone_run_loses_no_sample_and_writes_no_row_twice(bootstrap, tmp_path):
    def start(config: str, first: bool, final: bool, log) -> subprocess.Popen:
        env = {"BECOMINGONE__SOURCE__FROM_BEGINNING": "true"} if first else {}
        if final:
            env["BECOMINGONE__SOURCE__STOP_AT_END"] = "true"
        return _start(config, log, "--snapshot-interval", "1", **env)

    _assert_exact(*_kill_loop(tmp_path, bootstrap, start))


@pytest.mark.slow
def test_kill_9_loop_of_bytewax_run_keeps_one_witness_chain(bootstrap, tmp_path):
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(recovery), "4"], check=True, env=clean_env())

    def start(config: str, first: bool, final: bool, log) -> subprocess.Popen:
        env = {"BECOMINGONE_CONFIG": config}
        if first:
            env["BECOMINGONE__SOURCE__FROM_BEGINNING"] = "true"
        if final:
            env["BECOMINGONE__SOURCE__STOP_AT_END"] = "true"
        return subprocess.Popen([sys.executable, "-m", "bytewax.run", "flows.kairos", "-r", str(recovery),
                                 "-s", "1", "-b", "0"], stdout=log, stderr=subprocess.STDOUT, env=clean_env(**env),
                                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    killed, clean, produced = _kill_loop(tmp_path, bootstrap, start)
    _assert_exact(killed, clean, produced)
    verify = subprocess.run([str(BIN), "memory", "verify", "--archive", str(tmp_path / "killed")],
                            capture_output=True, text=True, env=clean_env())
    assert verify.returncode == 0, verify.stdout + verify.stderr
    seq = open_dataset(tmp_path / "killed" / "witnessing_logs").to_table()["seq"].to_pylist()
    assert sorted(seq) == list(range(len(seq)))  # one seq each, no gap


@pytest.mark.slow
def test_sigterm_drains_and_exits_0_with_the_archive_equal_to_the_topics(bootstrap, tmp_path):
    samples = fleet_samples(20_000_000, seed=9)
    topic = partitioned_topic(bootstrap)
    producing = _produce(bootstrap, topic, samples, seconds=6.0)
    root = tmp_path / "archive"
    config = _config_file(tmp_path, bootstrap, topic, root)
    data = yaml.safe_load(open(config))
    with open(tmp_path / "run.log", "wb") as log:
        proc = _start(config, log)
        producing.join(timeout=60)
        # Stop once the run has shown progress (its collapses come after 11 s of event time).
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and b"collapse    2" not in (tmp_path / "run.log").read_bytes():
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=WAIT) == 0, (tmp_path / "run.log").read_text()[-3000:]
    text = (tmp_path / "run.log").read_text()
    assert "stopping (SIGTERM)" in text
    events = open_dataset(root / "events").to_table()
    topic_events = [json.loads(m.value()) for m in read_topic(bootstrap, data["sink"]["topics"]["collapse"])]
    assert sorted(events["event_id"].to_pylist()) == sorted(e["event_id"] for e in topic_events)
    assert len(topic_events) >= 2
    # Everything the run accepted is archived.
    accepted = int(text.rsplit(" samples accepted", 1)[0].rsplit("\n", 1)[-1].replace(",", ""))
    assert open_dataset(root / "input").count_rows() == accepted > 0
    # The recovery state stays for the next run (a Kafka source resumes).
    assert any((root / "_recovery").glob("part-*.sqlite3"))


@pytest.mark.slow
def test_recovery_state_of_another_topic_is_refused_with_the_way_out(bootstrap, tmp_path):
    samples = fleet_samples(2_000_000, seed=1)
    topics = [partitioned_topic(bootstrap), partitioned_topic(bootstrap)]
    for topic in topics:
        _produce(bootstrap, topic, samples, seconds=0.1).join(timeout=60)
    root = tmp_path / "archive"
    first = _config_file(tmp_path, bootstrap, topics[0], root, stop_at_end=True)
    proc = subprocess.run([str(BIN), "run", "--config", first], capture_output=True, text=True, env=clean_env(),
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    # Another topic over the same memory root: Bytewax would fail deep inside ("not in this
    # worker's routing map"); the run says what differs and what to do, and starts nothing.
    data = yaml.safe_load(open(first))
    data["source"]["topic"] = topics[1]
    second = tmp_path / "second.yaml"
    second.write_text(yaml.safe_dump(data))
    before = sorted(p.name for p in (root / "input").rglob("*.arrow"))
    proc = subprocess.run([str(BIN), "run", "--config", str(second)], capture_output=True, text=True,
                          env=clean_env(), timeout=300)
    assert proc.returncode == 2
    assert f"input {topics[0]!r} -> {topics[1]!r}" in proc.stderr and "--no-recovery" in proc.stderr
    assert sorted(p.name for p in (root / "input").rglob("*.arrow")) == before
    proc = subprocess.run([str(BIN), "run", "--config", str(second), "--no-recovery"], capture_output=True,
                          text=True, env=clean_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
