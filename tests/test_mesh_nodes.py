"""T_global across nodes over Kafka (SPEC section 7): cells on two nodes plus an aggregating node give
the global rows of one node holding both cells."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from connectors.archive import open_dataset
from tests.conftest import BIN, WAIT, clean_env, read_topic, unique_topic

pytestmark = pytest.mark.slow  # brokers and whole flows: out of `make test-fast`

T0 = 1_735_689_600_000_000
RATE_HZ = 20


def cell_samples(cell: str, sensors: int, spread: float, seed: int, seconds: float = 40.0) -> pa.Table:
    """``sensors`` oscillators at 1 Hz around a common phase; ``spread`` = std of their phase noise (rad)."""
    rng = np.random.default_rng(seed)
    t = T0 + np.arange(int(seconds * RATE_HZ), dtype=np.int64) * (1_000_000 // RATE_HZ)
    names, times, phases = [], [], []
    offsets = rng.uniform(-spread, spread, sensors)
    for k in range(sensors):
        drift = np.cumsum(rng.normal(0, spread / 10, t.size))
        phase = 2 * np.pi * 1.0 * (t - T0) * 1e-6 + offsets[k] + drift
        names += [f"{cell}/s{k:02d}"] * t.size
        times.append(t)
        phases.append((phase + np.pi) % (2 * np.pi) - np.pi)
    return pa.table({"sensor": names, "t": pa.array(np.concatenate(times) * 1e-6),
                     "phase": np.concatenate(phases), "cell": [cell] * len(names)})


def run(config: dict, path, *extra: str) -> subprocess.CompletedProcess:
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.run([str(BIN), "run", "--config", str(path), "--no-recovery", *extra], capture_output=True,
                          text=True, env=clean_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc


def global_rows(root) -> list[dict]:
    table = open_dataset(root / "mesh_sync").to_table().drop_columns(["date", "hour"])
    table = table.filter(pa.compute.equal(table["scope"], "global")).sort_by("t")
    return table.to_pylist()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    base = tmp_path_factory.mktemp("cells")
    north, south = cell_samples("north", 12, 0.3, 1), cell_samples("south", 9, 3.0, 2)
    paths = {"north": base / "north.parquet", "south": base / "south.parquet", "both": base / "both.parquet"}
    pq.write_table(north, paths["north"])
    pq.write_table(south, paths["south"])
    # One flow holding both cells reads them interleaved in time, as one partition would carry them.
    both = pa.concat_tables([north, south])
    pq.write_table(both.take(pa.compute.sort_indices(both, [("t", "ascending")])), paths["both"])
    return paths


def base_config(root, source_path) -> dict:
    return {"source": {"kind": "file", "path": str(source_path)}, "sync": {"mesh_enabled": True},
            "memory": {"storage": {"path": str(root)}}, "metrics": {"enabled": False}}




def aggregator_config(root, bootstrap: str, mesh_topic: str) -> dict:
    """A node with no sensors of its own whose T_global is the cells north and south heard on ``mesh_topic``."""
    return {
        "becomingone": {"name": "aggregator"},
        "source": {"kind": "kafka", "topic": unique_topic(), "from_beginning": True, "stop_at_end": True},
        "kafka": {"bootstrap.servers": bootstrap},
        "sink": {"topics": {r: unique_topic(f"test.agg.{r}") for r in ("collapse", "witness", "sync", "dlq",
                                                                        "mesh")}},
        "sync": {"mesh_enabled": True, "mesh": {"cells": ["north", "south"],
                                                "peers": [{"bootstrap": bootstrap, "topic": mesh_topic}]}},
        "memory": {"storage": {"path": str(root)}}, "metrics": {"enabled": False},
    }


def test_two_cell_nodes_and_an_aggregator_give_the_global_rows_of_one_node(bootstrap, far, files, tmp_path):
    one = tmp_path / "one"
    run(base_config(one, files["both"]), tmp_path / "one.yaml")
    expected = global_rows(one)
    assert len(expected) == 40 and {r["n_sensors"] for r in expected} == {21}

    mesh_topic = unique_topic("test.mesh")
    topics = {r: unique_topic(f"test.{r}") for r in ("collapse", "witness", "sync", "dlq")}
    for cell in ("north", "south"):
        config = base_config(tmp_path / cell, files[cell])
        config |= {"kafka": {"bootstrap.servers": bootstrap}, "becomingone": {"name": f"node-{cell}"},
                   "sink": {"topics": {**topics, "mesh": mesh_topic}}}
        run(config, tmp_path / f"{cell}.yaml")
    heard = [json.loads(m.value()) for m in read_topic(bootstrap, mesh_topic)]
    assert {(m["cell"], m["node"]) for m in heard} == {("north", "node-north"), ("south", "node-south")}
    assert {m.key() for m in read_topic(bootstrap, mesh_topic)} == {b"north", b"south"}

    aggregator = tmp_path / "aggregator"
    run(aggregator_config(aggregator, bootstrap, mesh_topic), tmp_path / "aggregator.yaml")
    assert global_rows(aggregator) == expected

    # A relay carries the mesh topic to another cluster, where an aggregator computes the same T_global.
    relay = {"becomingone": {"name": "relay", "node": "relay"}, "metrics": {"enabled": False},
             "kafka": {"bootstrap.servers": bootstrap, "session.timeout.ms": 6000},
             "relay": {"target": {"bootstrap.servers": far}, "topics": [mesh_topic]}}
    (tmp_path / "relay.yaml").write_text(yaml.safe_dump(relay))
    proc = subprocess.Popen([str(BIN), "run", "--config", str(tmp_path / "relay.yaml")], env=clean_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + WAIT * 6
        while len(read_topic(far, mesh_topic)) < len(heard) and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=WAIT * 3)
    assert proc.returncode == 0, err
    assert sorted(m.value() for m in read_topic(far, mesh_topic)) == sorted(
        m.value() for m in read_topic(bootstrap, mesh_topic))
    far_side = tmp_path / "far-aggregator"
    run(aggregator_config(far_side, far, mesh_topic), tmp_path / "far-aggregator.yaml")
    assert global_rows(far_side) == expected


def test_a_mesh_peer_out_of_reach_is_one_line_at_start(tmp_path):
    config = {"sync": {"mesh_enabled": True, "mesh": {"peers": [{"host": "127.0.0.1", "port": 1}]}},
              "memory": {"storage": {"path": str(tmp_path / "archive")}}, "metrics": {"enabled": False}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    proc = subprocess.run([str(BIN), "run", "--config", str(tmp_path / "c.yaml"), "--timeout", "2"],
                          capture_output=True, text=True, env=clean_env(), timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.startswith("becomingone run: cannot reach Kafka at 127.0.0.1:1 within 2 s")
    assert len(proc.stderr.strip().splitlines()) == 1
