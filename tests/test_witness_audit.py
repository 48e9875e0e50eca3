"""The audit of another node's witness log, driven directly (no Kafka): operators.witness_audit.

The logs are made by the full node's own operators.witness.WitnessLog; each
test tampers with the messages as someone between the node and the witness
could, and checks the breaks the audit reports (kind, seq, and how far it had
read when it decided), and the records it hands on for the copy.
"""

from __future__ import annotations

import hashlib
import pickle

import pytest

from operators.witness import WitnessBlock, WitnessEntry, WitnessLog
from operators.witness_audit import AuditedMessage, LogAudit
from schemas.messages import MesoWitness, MicroWitness

T0 = 1_735_689_600_000_000  # 2025-01-01T00:00:00Z
META_EVERY = 10


def _micro(k: int, seconds: float = 0.001) -> WitnessEntry:
    return WitnessEntry("micro", T0 + k, None, MicroWitness(operator="decode", worker=0, items_in=k, items_out=k,
                                                             drops=0, seconds=seconds))


def _meso(k: int) -> WitnessEntry:
    return WitnessEntry("meso", T0 + k, f"s-{k % 3}", MesoWitness(sensor=f"s-{k % 3}", transducer="emissary",
                                                                  t_re=0.5, t_im=-0.25, coherence=0.3125,
                                                                  n_products=k))


def _messages(records) -> list[AuditedMessage]:
    return [AuditedMessage(r.seq, bytes.fromhex(r.digest), r.value) for r in records]


def _log(n: int, meta_every: int = META_EVERY, heads=None) -> tuple[WitnessLog, list]:
    """A log of ``n`` micro and meso entries (and its meta records), as logged records."""
    log = WitnessLog(meta_every=meta_every)
    log.heads = heads
    records = list(log.append([_micro(k) if k % 2 else _meso(k) for k in range(n)]))
    return log, records


def _audit(messages, window: int = 10_000, end: bool = True):
    audit = LogAudit(window)
    result = audit.read(messages)
    if end:
        tail = audit.end()
        result.breaks += tail.breaks
        result.copies += tail.copies
    return audit, result


def _copied(result) -> list[tuple[int, bytes, str]]:
    return [(r.seq, r.value, r.digest) for run in result.copies for r in run]


def _next_meta(records, after: int) -> int:
    return next(r.seq for r in records if r.seq > after and r.layer == "meta")


def test_an_untouched_log_has_no_break_and_is_copied_whole_in_order():
    _, records = _log(95)
    audit, result = _audit(_messages(records))
    assert result.breaks == []
    assert _copied(result) == [(r.seq, r.value, r.digest) for r in records]
    assert audit.state.read_seq == records[-1].seq
    assert result.checked == len(records) and result.repeated == result.unchecked == 0
    # The copy's rows are the audited node's own archive rows.
    run = result.copies[0]
    assert (run.layers, run.t_us, run.sensors) == ([r.layer for r in records], [r.t_us for r in records],
                                                   [r.sensor for r in records])


@pytest.mark.parametrize("removed", [0, 13, 21, 10])  # the first record, a meso, a micro, a meta record
def test_a_removed_record_is_reported_once_within_one_meta_interval(removed):
    _, records = _log(95)
    messages = _messages(records)
    del messages[removed]
    meta = _next_meta(records, removed)
    audit = LogAudit()
    # Read up to (not including) the next meta record after the removed one: nothing decided yet ...
    before = audit.read(m for m in messages if m.seq < meta)
    # ... the meta record decides it.
    at_meta = audit.read(m for m in messages if m.seq == meta)
    rest = audit.read(m for m in messages if m.seq > meta)
    tail = audit.end()
    breaks = before.breaks + at_meta.breaks + rest.breaks + tail.breaks
    if removed == 0:
        # A log read from seq 1 on: where a topic's retention may have left it; nothing to report.
        assert breaks == []
        return
    assert [(b.kind, b.seq) for b in breaks] == [("removed", removed)]
    assert before.breaks == [] and at_meta.breaks[0].read_seq == meta
    runs = before.copies + at_meta.copies + rest.copies + tail.copies
    copied = [s for run in runs for s in range(run.seq, run.seq + len(run))]
    assert copied == [r.seq for r in records if r.seq != removed]


def test_a_changed_record_is_reported_at_its_seq_and_the_chain_goes_on():
    _, records = _log(95)
    messages = _messages(records)
    k = next(r.seq for r in records if r.seq > 30 and r.layer == "micro")
    changed = messages[k].value.replace(b'"drops":0', b'"drops":1')
    assert changed != messages[k].value
    messages[k] = AuditedMessage(k, messages[k].digest, changed)
    _, result = _audit(messages)
    assert [(b.kind, b.seq, b.read_seq) for b in result.breaks] == [("changed", k, k)]
    assert len(_copied(result)) == len(records)  # the copy holds what was read, the changed bytes included


def test_a_changed_record_with_its_digest_recomputed_is_caught_at_the_next_record():
    _, records = _log(95)
    messages = _messages(records)
    k = next(r.seq for r in records if r.seq > 30 and r.layer == "meso")
    value = messages[k].value.replace(b'"coherence":0.3125', b'"coherence":0.5')
    assert value != messages[k].value
    digest = hashlib.sha256(messages[k - 1].digest + value).digest()
    messages[k] = AuditedMessage(k, digest, value)
    _, result = _audit(messages)
    assert [(b.kind, b.seq) for b in result.breaks] == [("changed", k + 1)]


def test_a_rewritten_meta_digest_is_a_changed_record():
    _, records = _log(25)
    messages = _messages(records)
    k = 10
    assert records[k].layer == "meta"
    value = messages[k].value.replace(records[k - 1].digest.encode(), b"f" * 64)
    digest = hashlib.sha256(messages[k - 1].digest + value).digest()  # the header chain itself is consistent
    messages[k:] = [AuditedMessage(k, digest, value)]
    _, result = _audit(messages)
    assert [(b.kind, b.seq) for b in result.breaks] == [("changed", k)]


@pytest.mark.parametrize(("i", "j"), [(40, 41), (32, 47), (45, 55)])  # adjacent; a meta between; a meta swapped
def test_two_swapped_records_are_reordered_and_copied_in_order(i, j):
    _, records = _log(95)
    messages = _messages(records)
    messages[i], messages[j] = messages[j], messages[i]
    _, result = _audit(messages)
    if records[j].layer == "meta":
        # The meta record read first decides the gap before it: a removal, then the record comes late.
        assert [(b.kind, b.seq) for b in result.breaks] == [("removed", i), ("reordered", i)]
        assert [s for s, _, _ in _copied(result)] == [r.seq for r in records if r.seq != i]
    else:
        assert [(b.kind, b.seq) for b in result.breaks] == [("reordered", i)]
        assert result.breaks[0].read_seq <= _next_meta(records, j)
        assert _copied(result) == [(r.seq, r.value, r.digest) for r in records]


def test_exact_repeats_are_no_break():
    _, records = _log(60)
    messages = _messages(records)
    # A producer retry and a replay of a stretch: the same seqs with the same bytes.
    again = messages[:30] + messages[25:30] + messages[30:45] + messages[5:45] + messages[45:]
    _, result = _audit(again)
    assert result.breaks == []
    assert result.repeated == 45
    assert _copied(result) == [(r.seq, r.value, r.digest) for r in records]


def test_a_seq_again_with_other_bytes_and_the_same_digest_is_changed():
    _, records = _log(30)
    messages = _messages(records)
    k = 12
    forged = AuditedMessage(k, messages[k].digest, messages[k].value.replace(b'"items_in"', b'"items_in" '))
    _, result = _audit(messages[:20] + [forged] + messages[20:])
    assert [(b.kind, b.seq, b.read_seq) for b in result.breaks] == [("changed", k, 19)]


def test_a_fork_is_reported_once_and_the_audit_follows_the_new_branch():
    """A node restarted from an older state: the topic holds the abandoned records, then the
    same seqs again with other records (measured times differ)."""
    log = WitnessLog(meta_every=META_EVERY)
    first = list(log.append([_micro(k) for k in range(20)]))
    snapshot = pickle.dumps(log)
    abandoned = list(log.append([_micro(k) for k in range(20, 40)]))
    resumed = pickle.loads(snapshot)
    branch = list(resumed.append([_micro(k, seconds=0.002) for k in range(20, 60)]))
    _, result = _audit(_messages(first + abandoned + branch))
    fork = branch[0].seq
    assert [(b.kind, b.seq, b.read_seq) for b in result.breaks] == [("reordered", fork, abandoned[-1].seq)]
    # The copy keeps what it took first, and the new branch from where the old one ended.
    expected = first + abandoned + [r for r in branch if r.seq > abandoned[-1].seq]
    assert _copied(result) == [(r.seq, r.value, r.digest) for r in expected]


def test_a_manifest_head_going_back_is_a_rollback_reported_once():
    heads = iter([{"events": {"lines": n, "sha256": h * 64}} for n, h in
                  [(1, "a"), (3, "b"), (3, "b"), (2, "c"), (2, "c"), (4, "d"), (4, "e"), (5, "f")]])
    _, records = _log(75, heads=lambda: next(heads))
    _, result = _audit(_messages(records))
    metas = [r.seq for r in records if r.layer == "meta"]
    found = [(b.kind, b.seq, b.dataset) for b in result.breaks]
    # 3 lines -> 2: fewer lines; 4 lines ending in d -> 4 lines ending in e: the same count, another hash.
    assert found == [("rollback", metas[3], "events"), ("rollback", metas[6], "events")]
    assert "3 line(s)" in result.breaks[0].detail and "2 line(s)" in result.breaks[0].detail


def test_malformed_messages():
    log = WitnessLog(meta_every=META_EVERY)
    # Bytes that are no witness record, in the chain: malformed, not a removal; not copied.
    records = list(log.append([_micro(k) for k in range(14)] + [WitnessBlock("micro", [T0], [None], [b"junk"])]
                              + [_micro(k) for k in range(15, 30)]))
    k = next(r.seq for r in records if r.value == b"junk")
    messages = _messages(records)
    # A message without headers cannot be placed.
    messages.insert(20, AuditedMessage(None, None, records[3].value))
    _, result = _audit(messages)
    assert [(b.kind, b.seq) for b in result.breaks] == [("malformed", k), ("malformed", None)]
    assert [s for s, _, _ in _copied(result)] == [r.seq for r in records if r.seq != k]


def test_a_gap_at_the_end_of_input_is_decided_there():
    _, records = _log(25)
    messages = _messages(records)
    k = records[-2].seq
    assert all(r.layer != "meta" for r in records[k:])
    audit = LogAudit()
    result = audit.read(messages[:k] + messages[k + 1:])  # no meta record after the missing one
    assert result.breaks == []
    assert [(b.kind, b.seq) for b in audit.end().breaks] == [("removed", k)]


def test_a_window_of_held_records_decides_a_gap_without_meta_records():
    log = WitnessLog(meta_every=1000, enabled=("micro",))
    records = list(log.append([_micro(k) for k in range(50)]))
    messages = _messages(records)
    del messages[5]
    audit, result = _audit(messages, window=10, end=False)
    assert [(b.kind, b.seq, b.read_seq) for b in result.breaks] == [("removed", 5, 16)]
    assert [s for s, _, _ in _copied(result)] == [r.seq for r in records if r.seq != 5]


def test_records_older_than_the_window_are_unchecked():
    _, records = _log(60)
    messages = _messages(records)
    _, result = _audit(messages + messages[:10], window=20)
    assert result.breaks == [] and result.unchecked == 10


def test_a_resumed_audit_ends_as_the_uninterrupted_one():
    _, records = _log(95)
    messages = _messages(records)
    messages[50], messages[51] = messages[51], messages[50]
    del messages[20]
    whole, expected = _audit(messages)
    for cut in (21, 51, 70):
        first = LogAudit()
        part = first.read(messages[:cut])
        resumed = LogAudit(state=pickle.loads(pickle.dumps(first.state)))
        rest = resumed.read(messages[cut:])
        tail = resumed.end()
        assert part.breaks + rest.breaks + tail.breaks == expected.breaks
        assert _copied(part) + _copied(rest) + _copied(tail) == _copied(expected)
