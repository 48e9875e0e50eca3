"""The witness log: blocks of encoded records log exactly like the same records one by one."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from flows.emit import witness_rows
from operators.witness import LoggedRecords, WitnessBlock, WitnessEntry, WitnessLog
from schemas.messages import (
    WITNESS_LOG_GENESIS,
    MicroWitness,
    meso_records_json,
    witness_log_digest,
)

T0 = 1764115200000000


def _meso(n: int, t0: int = T0) -> tuple[list[int], list[str], list[bytes]]:
    sensors = [f"s{i % 3}" for i in range(n)]
    t = t0 + 1_000_000 * np.arange(n, dtype=np.int64)
    values = [meso_records_json([s], [None], ["master"], [1], t[i:i + 1], np.array([0.1 * i]), np.array([-0.5]),
                                np.array([i]))[0] for i, s in enumerate(sensors)]
    return t.tolist(), sensors, values


def _micro(t: int) -> WitnessEntry:
    return WitnessEntry("micro", t, None, MicroWitness(operator="decode", worker=0, items_in=1, items_out=1, drops=0,
                                                       seconds=0.5))


def _rows(records: LoggedRecords) -> list[tuple]:
    return [(r.seq, r.layer, r.t_us, r.sensor, r.value, r.digest) for r in records]


@pytest.mark.parametrize("meta_every", [1, 3, 4, 1000])
def test_a_block_logs_like_its_records_one_by_one(meta_every):
    t, sensors, values = _meso(10)
    one_by_one, blocked = WitnessLog(meta_every), WitnessLog(meta_every)
    # Entries carry payloads that the log wraps; a block carries whole records.
    payloads = [v[v.index(b'"payload":') + len(b'"payload":'):-1] for v in values]
    a = one_by_one.append([_micro(T0)] + [WitnessEntry("meso", ti, s, p) for ti, s, p in zip(t, sensors, payloads)]
                          + [_micro(T0 + 1)])
    b = blocked.append([_micro(T0), WitnessBlock("meso", t, sensors, values), _micro(T0 + 1)])
    assert _rows(b) == _rows(a)
    assert vars(blocked) == vars(one_by_one)
    layers = [r.layer for r in b]
    assert layers.count("meta") == 12 // meta_every  # a meta record after every meta_every others
    assert [r.layer for r in b if r.layer != "meta"] == ["micro"] + ["meso"] * 10 + ["micro"]


def test_the_digests_are_the_documented_chain_and_the_archive_rows_hold_them():
    t, sensors, values = _meso(7)
    log = WitnessLog(meta_every=5)
    first = log.append([WitnessBlock("meso", t[:4], sensors[:4], values[:4])])
    second = log.append([WitnessBlock("meso", t[4:], sensors[4:], values[4:])])
    digest, seq = WITNESS_LOG_GENESIS, 0
    for record in list(first) + list(second):
        digest = witness_log_digest(digest, record.value)
        assert (record.seq, record.digest) == (seq, digest)
        seq += 1
    assert log.digest == digest and log.seq == seq == 8  # 7 meso and one meta
    table = witness_rows([first, second]).table
    assert table["seq"].to_pylist() == list(range(8))
    assert table["log_sha256"].to_pylist() == [r.digest for r in list(first) + list(second)]
    assert table["payload"].to_pylist() == [r.value.decode() for r in list(first) + list(second)]
    assert table["sensor"].to_pylist() == sensors[:5] + [None] + sensors[5:]


def test_meta_records_count_the_layers_and_hold_the_digest_before_them():
    t, sensors, values = _meso(3)
    log = WitnessLog(meta_every=3)
    records = list(log.append([WitnessBlock("meso", t, sensors, values)]))
    meta = records[-1]
    assert meta.layer == "meta" and meta.t_us == t[-1]
    assert b'"records":{"micro":0,"meso":3,"macro":0,"meta":0}' in meta.value
    assert f'"log_sha256":"{records[-2].digest}"'.encode() in meta.value


def test_disabled_layers_and_empty_blocks_log_nothing():
    t, sensors, values = _meso(3)
    log = WitnessLog(meta_every=2, enabled=("micro",))
    assert len(log.append([WitnessBlock("meso", t, sensors, values), WitnessBlock("micro", [], [], [])])) == 0
    assert (log.seq, log.digest) == (0, WITNESS_LOG_GENESIS)
    assert len(witness_rows([log.append([])]).table) == 0


def test_a_pickled_log_continues_its_chain():
    t, sensors, values = _meso(6)
    log = WitnessLog(meta_every=4)
    log.append([WitnessBlock("meso", t[:3], sensors[:3], values[:3])])
    restored = pickle.loads(pickle.dumps(log))
    assert _rows(restored.append([WitnessBlock("meso", t[3:], sensors[3:], values[3:])])) == \
        _rows(log.append([WitnessBlock("meso", t[3:], sensors[3:], values[3:])]))


def test_decodes_micro_record_has_the_newest_event_time_that_is_not_in_the_future(tmp_path):
    import json
    import time

    from flows.decoding import Decode
    from operators.decode import RawMessage
    from schemas.config import parse_config

    # The archive keeps the witness log (with neither it nor Kafka, no witness record is built).
    decode = Decode(parse_config({"memory": {"storage": {"path": str(tmp_path)}}, "metrics": {"enabled": False}}))
    now_s = float(int(time.time()))  # whole seconds: exact in JSON and in microseconds

    def micro_t(*times: float) -> int:
        messages = [RawMessage(b"k", json.dumps({"sensor": f"s{i}", "t": t, "phase": 0.5}).encode())
                    for i, t in enumerate(times)]
        entries = [e for emitted in decode(messages) for e in emitted.witness]
        (micro,) = [e for e in entries if e.layer == "micro"]
        return micro.t_us

    # The sample an hour ahead is refused later as `future`: it does not move the record's time.
    assert micro_t(now_s - 10, now_s - 5, now_s + 3600) == int(now_s - 5) * 1_000_000
    assert micro_t(now_s + 3600) == int(now_s - 5) * 1_000_000  # nothing usable: the newest so far


def test_no_witness_record_is_built_when_nothing_keeps_the_log():
    import json

    from flows.emit import witnessed
    from flows.decoding import Decode
    from operators.decode import RawMessage
    from schemas.config import parse_config

    config = parse_config({"sink": {"archive": False}, "metrics": {"enabled": False}})
    assert not any(witnessed(config, layer) for layer in ("micro", "meso", "macro"))
    out = Decode(config)([RawMessage(b"k", json.dumps({"sensor": "s", "t": 1_764_115_200, "phase": 0.5}).encode())])
    assert not [e for emitted in out for e in emitted.witness]
    kept = parse_config({"sink": {"archive": False}, "kafka": {"bootstrap.servers": "localhost:9092"},
                         "metrics": {"enabled": False}})
    assert all(witnessed(kept, layer) for layer in ("micro", "meso", "macro"))


class _FixedClock:
    """A clock that stands still at ``now_us``; each timer reading is 0.25 s after the one before."""

    def __init__(self, now_us: int) -> None:
        self.now_us_value = now_us
        self.ticks = 0

    def now_us(self) -> int:
        return self.now_us_value

    def now(self) -> float:
        return self.now_us_value / 1e6

    def timer(self) -> float:
        self.ticks += 1
        return self.ticks * 0.25


def _recording_observer(now_us: int):
    """An observer of its own: a private metrics registry, a fresh run ledger, a fixed clock."""
    from prometheus_client import CollectorRegistry

    from connectors.metrics import PipelineMetrics, RunLedger
    from flows.observer import FlowObserver

    registry = CollectorRegistry()
    return FlowObserver(metrics=PipelineMetrics(registry), ledger=RunLedger(), clock=_FixedClock(now_us)), registry


def test_the_decode_step_reports_to_its_observer_and_reads_its_clock(tmp_path):
    """The decode step driven directly: no Prometheus endpoint, no process-wide metrics, no flow."""
    import json

    from flows.decoding import Decode, key_group
    from operators.decode import RawMessage
    from schemas.config import parse_config

    now_us = T0 + 3_600_000_000
    observer, registry = _recording_observer(now_us)
    config = parse_config({"memory": {"storage": {"path": str(tmp_path)}}, "metrics": {"enabled": False},
                           "becomingone": {"key_groups": 4}})
    decode = Decode(config, observer)
    now_s = now_us // 1_000_000
    values = [json.dumps({"sensor": "a", "t": now_s - 2, "phase": 0.5}).encode(),
              json.dumps({"sensor": "b", "t": now_s - 1, "phase": 0.25}).encode(),
              json.dumps({"sensor": "b", "t": now_s + 3600, "phase": 0.25}).encode(),   # ahead of the fixed clock
              b'{"sensor": "c", "t": "not a time", "phase": 0.1}']                       # refused here
    out = decode([RawMessage(b"k", value, None, "in", 0, offset) for offset, value in enumerate(values)])

    (emitted,) = out                                          # one item a call, a field per stream
    groups = dict(emitted.keyed)
    assert set(groups) == {key_group("a", 4), key_group("b", 4)}
    assert sum(len(runs) for block in groups.values() for runs in block) == 3   # the future one is the intake's
    letters = emitted.records
    assert [r.role for r in letters] == ["dlq"] and b'"offset":3' in letters[0].value.replace(b" ", b"")
    assert observer.ledger.decode_rejected == 1
    assert registry.get_sample_value("becomingone_samples_total", {"result": "schema"}) == 1
    # The step's time is the observer's timer (0.25 s between its two readings), its micro record's t
    # the newest event time that is not ahead of the observer's clock, its worker the observer's.
    assert registry.get_sample_value("becomingone_batch_seconds_sum", {"step": "decode"}) == 0.25
    (micro,) = emitted.witness
    assert micro.t_us == (now_s - 1) * 1_000_000
    assert micro.payload.worker == 0 and micro.payload.items_in == 4 and micro.payload.items_out == 3


def test_the_witness_step_counts_its_records_and_snapshots_a_copy(tmp_path):
    """The witness step driven directly with a recording observer; its snapshot is state, not the live log."""
    import pickle

    from flows.emit import ArchiveRows
    from flows.witnessing import WitnessLogic
    from operators.witness import WitnessEntries
    from schemas.config import parse_config

    observer, registry = _recording_observer(T0)
    config = parse_config({"memory": {"storage": {"path": str(tmp_path)}}, "metrics": {"enabled": False},
                           "witnessing": {"meta_every": 3}})
    logic = WitnessLogic(config, None, observer)
    out, _ = logic.on_batch([WitnessEntries([_micro(T0 + k) for k in range(4)])])
    (emitted,) = out
    assert sum(len(block.values) for block in emitted.records) == 5          # 4 micro, 1 meta after the third
    assert [type(item) for item in emitted.archive] == [ArchiveRows]
    assert registry.get_sample_value("becomingone_witness_records_total", {"layer": "micro"}) == 4
    assert registry.get_sample_value("becomingone_witness_records_total", {"layer": "meta"}) == 1
    assert registry.get_sample_value("becomingone_batch_seconds_sum", {"step": "witness"}) == 0.25

    state = logic.snapshot()
    assert state is not logic.log and state.heads is None
    seq, digest = state.seq, state.digest
    logic.on_batch([WitnessEntries([_micro(T0 + 9)])])                      # the live log moves on
    assert (state.seq, state.digest) == (seq, digest) != (logic.log.seq, logic.log.digest)  # the snapshot does not
    assert pickle.loads(pickle.dumps(state)).seq == seq


def test_the_resonate_step_resumed_from_its_snapshot_ends_as_the_uninterrupted_one(tmp_path):
    """The resonate step driven directly with a recording observer: its snapshot is a copy of the
    group's state (later calls do not change it), and a logic resumed from it emits the rows and
    counts the samples the uninterrupted one does."""
    import pickle

    from connectors.synthetic import SyntheticSensor, synthetic_batches
    from flows.emit import ArchiveRows
    from flows.resonate import ResonateLogic
    from operators.params import dead_letter_limits
    from operators.resonator import resonator_settings
    from operators.roster import SensorCapacity
    from schemas.samples import SampleBatch, SampleRuns
    from schemas.config import parse_config

    config = parse_config({"memory": {"storage": {"path": str(tmp_path)}}, "metrics": {"enabled": False}})
    sensors = [SyntheticSensor("steady-1", "steady", freq_hz=2.0), SyntheticSensor("noise-1", "noise")]
    calls = [[[SampleRuns.of([SampleBatch(name, t, phase)])]]          # one item of one key group a call
             for name, t, phase in synthetic_batches(sensors, period_us=10_000, duration_us=30_000_000,
                                                     start_us=T0, seed=1)]

    def logic(resume=None):
        observer, registry = _recording_observer(T0 + 3_600_000_000)
        return ResonateLogic(config, resonator_settings(config, replay=True), dead_letter_limits(config), resume,
                             SensorCapacity(config.becomingone.max_sensors), True, observer), observer, registry

    def rows(outputs) -> dict[str, list]:
        out: dict[str, list] = {}
        for item in (rows for emitted in outputs for rows in emitted.archive):
            if type(item) is ArchiveRows:
                table = item.table if not callable(item.table) else item.table()
                out.setdefault(item.dataset, []).extend(table.to_pylist())
        return out

    whole, whole_observer, whole_registry = logic()
    expected = rows(o for values in calls for o in whole.on_batch(values)[0])
    for dataset, more in rows(whole.on_eof()[0]).items():
        expected.setdefault(dataset, []).extend(more)

    first, _, _ = logic()
    got = rows(o for values in calls[:len(calls) // 2] for o in first.on_batch(values)[0])
    state = first.snapshot()
    frozen = pickle.dumps(state)
    first.on_batch(calls[len(calls) // 2])                     # the live state moves on, the snapshot does not
    assert pickle.dumps(state) == frozen
    resumed, observer, registry = logic(pickle.loads(frozen))
    for dataset, more in rows(o for values in calls[len(calls) // 2:] for o in resumed.on_batch(values)[0]).items():
        got.setdefault(dataset, []).extend(more)
    for dataset, more in rows(resumed.on_eof()[0]).items():
        got.setdefault(dataset, []).extend(more)

    assert set(expected) >= {"input", "temporal_signatures", "coherence_history"} and got == expected
    # A flow built without recovery stores no snapshot, so the step builds none.
    unkept = ResonateLogic(config, resonator_settings(config, replay=True), dead_letter_limits(config), None,
                           SensorCapacity(config.becomingone.max_sensors), False, _recording_observer(T0)[0])
    unkept.on_batch(calls[0])
    assert unkept.snapshot() is None and isinstance(first.snapshot(), bytes)
    assert whole_observer.ledger.totals()[0] == 2 * 3_000
    assert whole_registry.get_sample_value("becomingone_samples_total", {"result": "accepted"}) == 2 * 3_000
    resumed_samples = observer.ledger.totals()[0]          # the resumed logic counts in its own observer only
    assert registry.get_sample_value("becomingone_samples_total", {"result": "accepted"}) == resumed_samples > 0


def test_witness_topic_messages_carry_their_seq_and_digest_as_headers(tmp_path):
    """So that a reader of the topic alone (a witness node) can place and check every record."""
    from flows.witnessing import WitnessLogic
    from operators.witness import WitnessEntries
    from schemas.config import parse_config

    config = parse_config({"kafka": {"bootstrap.servers": "k:9092"}, "sink": {"archive": False},
                           "metrics": {"enabled": False}, "witnessing": {"meta_every": 3}})
    logic = WitnessLogic(config, None)
    blocks = [out.records[0] for batch in range(2)
              for out in logic.on_batch([WitnessEntries([_micro(T0 + 10 * batch + k) for k in range(4)])])[0]]
    digest, seq = WITNESS_LOG_GENESIS, 0
    for block in blocks:
        assert len(block.headers) == len(block.values)
        for value, headers in zip(block.values, block.headers):
            digest = witness_log_digest(digest, value)
            assert headers == [("seq", str(seq).encode()), ("log_sha256", digest.encode())]
            seq += 1
    assert seq == 10  # 8 micro records and 2 meta records
