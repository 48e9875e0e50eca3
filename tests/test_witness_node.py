"""The witness node end to end on a real Kafka-protocol broker (`becomingone broker` over TCP).

A full node's flow writes its witness topic (and its own archive). Its log is
then copied into other topics, untouched or with one record removed, one
changed, or two swapped, and a witness node (`becomingone.node: witness`)
audits each copy to its end: the break event on its collapse topic (kind and
seq, decided before it read past the next meta record after the tampered
one), the metric, and its archive's copy of the log.

Both ways of starting a node are used: `becomingone run --node witness` and
`python -m bytewax.run flows.kairos` with BECOMINGONE__BECOMINGONE__NODE=witness,
besides `run_flow` in this process.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from confluent_kafka import Producer
from prometheus_client import REGISTRY

from connectors.archive import open_dataset, verify_archive
from flows.run import run_flow
from schemas.config import parse_config
from schemas.messages import WITNESS_DIGEST_HEADER, WITNESS_SEQ_HEADER, WitnessBreak
from tests.conftest import BIN, WAIT, clean_env, read_topic, unique_topic

pytestmark = pytest.mark.slow

NODE = "pmu-cell-3"  # the audited node's name: the key of its witness records
START = "2025-01-01T00:00:00Z"
META_EVERY = 25


@dataclass
class Audited:
    """The full node's log as its witness topic holds it, and its archive."""

    bootstrap: str
    messages: list  # (headers dict, value) in topic order
    root: Path

    def seq(self, i: int) -> int:
        return int(self.messages[i][0][WITNESS_SEQ_HEADER])

    def layer(self, i: int) -> str:
        return json.loads(self.messages[i][1])["layer"]

    def next_meta(self, seq: int) -> int:
        return next(self.seq(i) for i in range(len(self.messages)) if self.seq(i) > seq and self.layer(i) == "meta")


@pytest.fixture(scope="module")
def audited(bootstrap, tmp_path_factory) -> Audited:
    root = tmp_path_factory.mktemp("full-node")
    prefix = unique_topic("test.full")
    config = parse_config({
        "becomingone": {"name": NODE},
        "source": {"kind": "synthetic", "duration": 20.0, "rate_hz": 50.0, "start": START,
                   "sensors": [{"name": "steady-1", "kind": "steady"}, {"name": "switch-1", "kind": "switching"},
                               {"name": "noise-1", "kind": "noise"}]},
        "kafka": {"bootstrap.servers": bootstrap},
        "sink": {"topics": {role: f"{prefix}.{role}" for role in ("collapse", "witness", "sync", "dlq")}},
        "memory": {"storage": {"path": str(root)}},
        "witnessing": {"meta_every": META_EVERY},
        "metrics": {"enabled": False},
    })
    run_flow(config, out=io.StringIO(), progress=io.StringIO())
    messages = read_topic(bootstrap, f"{prefix}.witness")
    assert {m.key() for m in messages} == {NODE.encode()}
    return Audited(bootstrap, [(dict(m.headers()), m.value()) for m in messages], root)


def _copy(audited: Audited, messages: list) -> str:
    """A new topic holding ``messages`` (headers, value) under the audited node's key, in order."""
    topic = unique_topic("test.copy")
    producer = Producer({"bootstrap.servers": audited.bootstrap, "enable.idempotence": True})
    for headers, value in messages:
        producer.produce(topic, value, NODE.encode(), headers=list(headers.items()))
    assert producer.flush(WAIT) == 0
    return topic


def _witness_config(audited: Audited, topic: str, root: Path) -> dict:
    return {
        "becomingone": {"name": "auditor-1", "node": "witness"},
        "kafka": {"bootstrap.servers": audited.bootstrap},
        "witness_node": {"topic": topic, "node": NODE, "stop_at_end": True},
        "sink": {"topics": {"collapse": f"{topic}.breaks"}},
        "memory": {"storage": {"path": str(root)}},
        "metrics": {"enabled": False},
    }


def _breaks_metric() -> dict[str, float]:
    return {kind: REGISTRY.get_sample_value("becomingone_witness_breaks_total", {"kind": kind}) or 0.0
            for kind in ("removed", "changed", "reordered", "rollback", "malformed")}


def _audit_here(audited: Audited, messages: list, root: Path) -> tuple[list[WitnessBreak], dict[str, float]]:
    """Run the witness node in this process on a copy of ``messages``; its events and metric deltas."""
    topic = _copy(audited, messages)
    before = _breaks_metric()
    run_flow(parse_config(_witness_config(audited, topic, root)), out=io.StringIO(), progress=io.StringIO())
    after = _breaks_metric()
    events = [WitnessBreak.model_validate_json(m.value()) for m in read_topic(audited.bootstrap, f"{topic}.breaks")]
    return events, {k: after[k] - before[k] for k in after if after[k] != before[k]}


def _tampered_at(audited: Audited, layer: str = "micro") -> int:
    """Index of a record of ``layer`` in the middle of the log, with a meta record after it."""
    middle = len(audited.messages) // 2
    return next(i for i in range(middle, len(audited.messages)) if audited.layer(i) == layer
                and audited.layer(i + 1) != "meta")


def test_the_full_node_puts_seq_and_digest_headers_on_its_witness_records(audited):
    archived = open_dataset(audited.root / "witnessing_logs").to_table().sort_by("seq").to_pylist()
    assert len(archived) == len(audited.messages) > 4 * META_EVERY
    for (headers, value), row in zip(audited.messages, archived):
        assert int(headers[WITNESS_SEQ_HEADER]) == row["seq"]
        assert headers[WITNESS_DIGEST_HEADER].decode() == row["log_sha256"]
        assert value.decode() == row["payload"]


def test_an_untouched_log_gives_no_break_and_the_copy_equals_the_original(audited, tmp_path):
    """Run as `becomingone run --node witness --config FILE`."""
    topic = _copy(audited, audited.messages)
    config = _witness_config(audited, topic, tmp_path / "witness")
    del config["becomingone"]["node"]
    path = tmp_path / "witness.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.run([str(BIN), "run", "--node", "witness", "--config", str(path)], capture_output=True,
                          text=True, env=clean_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert read_topic(audited.bootstrap, f"{topic}.breaks") == []
    copy = open_dataset(tmp_path / "witness" / "witnessing_logs").to_table()
    original = open_dataset(audited.root / "witnessing_logs").to_table()
    assert copy.sort_by("seq").to_pylist() == original.sort_by("seq").to_pylist()
    assert verify_archive(tmp_path / "witness") == {"witnessing_logs": []}


def test_a_removed_record_is_reported_before_the_next_meta_record_is_read_past(audited, tmp_path):
    """Run as `python -m bytewax.run flows.kairos` with the node type from the environment."""
    i = _tampered_at(audited)
    seq = audited.seq(i)
    topic = _copy(audited, audited.messages[:i] + audited.messages[i + 1:])
    config = _witness_config(audited, topic, tmp_path / "witness")
    del config["becomingone"]["node"]
    path = tmp_path / "witness.yaml"
    path.write_text(yaml.safe_dump(config))
    env = clean_env(BECOMINGONE_CONFIG=str(path), BECOMINGONE__BECOMINGONE__NODE="witness")
    proc = subprocess.run([sys.executable, "-m", "bytewax.run", "flows.kairos"], capture_output=True, text=True,
                          env=env, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr
    events = [WitnessBreak.model_validate_json(m.value()) for m in read_topic(audited.bootstrap, f"{topic}.breaks")]
    assert [(e.event, e.kind, e.seq, e.node, e.witness) for e in events] == [
        ("witness_break", "removed", seq, NODE, "auditor-1")]
    assert events[0].read_seq <= audited.next_meta(seq)
    assert f"witness log of node {NODE!r} breaks (removed) at seq {seq}" in proc.stderr
    # The copy holds every other record; its own verification shows the hole.
    copy = open_dataset(tmp_path / "witness" / "witnessing_logs").to_table()
    assert sorted(copy["seq"].to_pylist()) == [audited.seq(k) for k in range(len(audited.messages)) if k != i]
    assert f"seq {seq}: missing" in verify_archive(tmp_path / "witness")["witnessing_logs"][0]


def test_a_changed_record_is_reported_at_its_seq(audited, tmp_path):
    i = _tampered_at(audited, "meso")
    headers, value = audited.messages[i]
    changed = value.replace(b'"n_products":', b'"n_products":1')
    assert changed != value
    messages = list(audited.messages)
    messages[i] = (headers, changed)
    events, metric = _audit_here(audited, messages, tmp_path / "witness")
    assert [(e.kind, e.seq) for e in events] == [("changed", audited.seq(i))]
    assert events[0].read_seq <= audited.next_meta(audited.seq(i))
    assert metric == {"changed": 1.0}


def test_two_swapped_records_are_reported_as_reordered(audited, tmp_path):
    i = _tampered_at(audited)
    j = i + 2
    assert audited.layer(j) != "meta" and audited.layer(i + 1) != "meta"
    messages = list(audited.messages)
    messages[i], messages[j] = messages[j], messages[i]
    events, metric = _audit_here(audited, messages, tmp_path / "witness")
    assert [(e.kind, e.seq) for e in events] == [("reordered", audited.seq(i))]
    assert events[0].read_seq <= audited.next_meta(audited.seq(j))
    assert metric == {"reordered": 1.0}
    # Read out of order, copied in order: the copy is the whole log.
    copy = open_dataset(tmp_path / "witness" / "witnessing_logs").to_table()
    original = open_dataset(audited.root / "witnessing_logs").to_table()
    assert copy.sort_by("seq").to_pylist() == original.sort_by("seq").to_pylist()


def test_repeated_messages_are_no_break_and_the_gauge_shows_the_last_seq(audited, tmp_path):
    """Kafka's at-least-once: a stretch of the log delivered twice."""
    i = _tampered_at(audited)
    messages = audited.messages[:i + 10] + audited.messages[i - 10:]
    events, metric = _audit_here(audited, messages, tmp_path / "witness")
    assert events == [] and metric == {}
    assert REGISTRY.get_sample_value("becomingone_witness_audited_seq", {"node": NODE}) == audited.seq(-1)


def test_a_manifest_head_going_back_is_a_rollback_event(audited, tmp_path):
    """A log made by the full node's WitnessLog whose meta records anchor an archive that is rolled back
    (a dataset's manifest loses its last lines) between two of them."""
    from flows.witnessing import log_headers
    from operators.witness import WitnessEntry, WitnessLog
    from schemas.messages import MicroWitness

    heads = iter([{"events": {"lines": n, "sha256": h * 64}, "input": {"lines": n, "sha256": h * 64}}
                  for n, h in [(1, "a"), (2, "b"), (4, "c"), (3, "d"), (5, "e")]])
    log = WitnessLog(meta_every=5)
    log.heads = lambda: next(heads)
    records = log.append([WitnessEntry("micro", 1_735_689_600_000_000 + k, None, MicroWitness(
        operator="decode", worker=0, items_in=k, items_out=k, drops=0, seconds=0.001)) for k in range(24)])
    messages = [(dict(h), v) for h, v in zip(log_headers(records), records.values)]
    metas = [r.seq for r in records if r.layer == "meta"]
    events, metric = _audit_here(audited, messages, tmp_path / "witness")
    assert sorted((e.kind, e.seq, e.dataset) for e in events) == [("rollback", metas[3], "events"),
                                                                 ("rollback", metas[3], "input")]
    assert len({e.event_id for e in events}) == 2
    assert metric == {"rollback": 2.0}
