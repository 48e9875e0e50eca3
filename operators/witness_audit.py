"""Auditing another node's witness log as it is read (SPEC section 7: the witness node).

A full node's witness log is one sequence of records, each carried on the
witness topic with its position and the running digest including it (the
``seq`` and ``log_sha256`` headers, :mod:`schemas.messages`), where

    log_sha256(k) = sha256(bytes of log_sha256(k - 1) + record k's bytes)

from 64 zeros before seq 0 (:func:`schemas.messages.witness_log_digest`).
:class:`LogAudit` is fed one node's messages in the order the topic holds
them (one key, one partition) and reports every break as a :class:`Break`:

``removed``
    seqs never read: a gap that the next ``meta`` record (or the end of
    input) finds still open, so a removal is known within one meta interval;
``changed``
    a record whose digest does not follow from the digest before it and
    its bytes (or a meta record whose ``log_sha256`` is not that digest),
    or other bytes under a seq already read with the same digest;
``reordered``
    the seqs of a gap arriving after a later seq, or a seq already read
    arriving again with another digest (the log forks: the audit follows
    the new branch);
``rollback``
    a meta record whose manifest head of a dataset is behind the last one
    read (fewer lines, or as many with another hash), as
    :mod:`connectors.archive.anchor` checks an archive against an anchor;
``malformed``
    a message without a seq and digest, or whose bytes are no witness record.

After a break the audit goes on from what it read (the record's own digest,
the new branch, the new head), so one break is reported once.  An exact
repeat of a record read before (same seq, digest and bytes: Kafka's
at-least-once) is no break.  The records read are handed on in seq order
for the witness node's copy of the log; those behind an open gap wait until
it is filled or decided, so the copy is written in order.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from operators.witness import LoggedRecords
from schemas.messages import WITNESS_LOG_GENESIS, MetaWitness, parse_utc

__all__ = ["AuditState", "AuditedMessage", "AuditResult", "Break", "LogAudit"]

_GENESIS = bytes.fromhex(WITNESS_LOG_GENESIS)
_LAYERS = frozenset(("micro", "meso", "macro", "meta"))
#: Decided gaps kept, so a seq that arrives after it was reported removed is recognised.
_REMOVED_KEPT = 1000
#: Records of one stretch share few event times (a grid point's meso records): each text is parsed once.
_event_time = functools.lru_cache(maxsize=4096)(parse_utc)


@dataclass(frozen=True, slots=True)
class AuditedMessage:
    """One witness-topic message: its ``seq`` and ``log_sha256`` headers (None when absent or
    unreadable) and its value."""

    seq: int | None
    digest: bytes | None
    value: bytes | None


@dataclass(frozen=True, slots=True)
class Break:
    """A break of the audited log: its kind, the seq it is at, the newest seq read in order when it
    was decided (``read_seq``), the dataset of a rollback, and what was found."""

    kind: str
    seq: int | None
    read_seq: int | None
    detail: str
    dataset: str | None = None


@dataclass(slots=True)
class _Record:
    """A record read: its seq, digest, bytes and the fields of its archive row."""

    seq: int
    digest: bytes
    value: bytes
    layer: str
    t_us: int
    sensor: str | None


@dataclass(slots=True)
class _Gap:
    """Seqs skipped when ``stop`` was read: the ranges [lo, hi) still missing, and ``stop``'s
    record, against which the last of them is checked when it arrives."""

    first: int
    stop: int
    stop_value: bytes
    stop_digest: bytes
    missing: list[list[int]]
    filled: int = 0


@dataclass(slots=True)
class _Head:
    lines: int
    sha256: str
    seq: int


@dataclass
class AuditState:
    """What the audit of one log keeps between messages (its snapshot).

    Attributes:
        next_seq: the seq expected next; None before the first record.
        digest: the digest of ``next_seq - 1``.
        copied: the largest seq handed on for the copy (-1: none).
        remembered: seq -> digest of the newest records (at most the window).
        gaps: open gaps, oldest first.
        removed: [lo, hi) ranges reported removed (the newest :data:`_REMOVED_KEPT`).
        held: records read behind an open gap, not handed on yet.
        heads: dataset -> the newest manifest head read, with its meta record's seq.
    """

    next_seq: int | None = None
    digest: bytes = _GENESIS
    copied: int = -1
    remembered: dict[int, bytes] = field(default_factory=dict)
    gaps: list[_Gap] = field(default_factory=list)
    removed: list[list[int]] = field(default_factory=list)
    held: list[_Record] = field(default_factory=list)
    heads: dict[str, _Head] = field(default_factory=dict)

    @property
    def read_seq(self) -> int | None:
        """The newest seq read in order (None before the first record)."""
        return None if self.next_seq is None else self.next_seq - 1


@dataclass
class AuditResult:
    """What one call of the audit hands on: breaks, records for the copy (runs of consecutive
    seqs, in order), and counts of the records read by how they were taken."""

    breaks: list[Break] = field(default_factory=list)
    copies: list[LoggedRecords] = field(default_factory=list)
    checked: int = 0
    repeated: int = 0
    unchecked: int = 0


class LogAudit:
    """The audit of one node's witness log (module docstring); state in :class:`AuditState`.

    Args:
        window: records remembered, and the most held behind an open gap (then it is decided).
        state: the state to continue (a snapshot), default a fresh audit.

    >>> from operators.witness import WitnessLog, WitnessEntry
    >>> from schemas.messages import MicroWitness
    >>> log = WitnessLog(meta_every=3)
    >>> micro = WitnessEntry("micro", 0, None, MicroWitness(operator="decode", worker=0, items_in=1,
    ...                      items_out=1, drops=0, seconds=0.001))
    >>> messages = [AuditedMessage(r.seq, bytes.fromhex(r.digest), r.value) for r in log.append([micro] * 5)]
    >>> audit = LogAudit()
    >>> audit.read(messages).breaks, audit.state.read_seq
    ([], 5)
    >>> [(b.kind, b.seq) for b in LogAudit().read(messages[:2] + messages[3:]).breaks]
    [('removed', 2)]
    """

    def __init__(self, window: int = 10_000, state: AuditState | None = None) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self.window = int(window)
        self.state = AuditState() if state is None else state

    def read(self, messages: Iterable[AuditedMessage]) -> AuditResult:
        """Audit ``messages`` in order."""
        out = AuditResult()
        for message in messages:
            self._read(message, out)
        return out

    def end(self) -> AuditResult:
        """The end of input: every open gap is decided."""
        out = AuditResult()
        self._decide(None, out)
        self._release(out)
        return out

    # -- one message --------------------------------------------------------------------

    def _read(self, message: AuditedMessage, out: AuditResult) -> None:
        st = self.state
        s, d, value = message.seq, message.digest, message.value
        if s is None or d is None or value is None:
            out.breaks.append(Break("malformed", s, st.read_seq, "a message without its seq and log_sha256 "
                                    "headers (or without a value): it cannot be placed in the log"))
            return
        record, meta, problem = _parsed(s, d, value)
        expected = st.next_seq
        taken = True  # False: a repeat, or too old to compare
        if expected is None or s == expected:
            follows = _follows(st.digest if expected is not None else (_GENESIS if s == 0 else None), value, d)
            if follows is False:
                out.breaks.append(Break("changed", s, s, f"seq {s}: log_sha256 is not sha256(the digest of "
                                        f"{f'seq {s - 1}' if s else '64 zeros'} + its bytes): a changed record, "
                                        "or one put in the place of another"))
            elif meta is not None and expected is not None and meta.log_sha256 != st.digest.hex():
                out.breaks.append(Break("changed", s, s, f"seq {s}: the meta record's log_sha256 "
                                        f"{meta.log_sha256[:8]}… is not the digest of seq {s - 1} "
                                        f"({st.digest.hex()[:8]}…)"))
            self._accept(s, d, record, meta, out)
        elif s > expected:
            st.gaps.append(_Gap(expected, s, value, d, [[expected, s]]))
            self._accept(s, d, record, meta, out)
        else:
            taken = self._read_again(s, d, value, record, meta, out)
        if problem is not None and taken:
            out.breaks.append(Break("malformed", s, st.read_seq, f"seq {s}: {problem}; not in the copy"))
        if len(st.held) > self.window:  # no meta record comes: decide rather than hold without bound
            self._decide(None, out)
        self._release(out)

    def _read_again(self, s: int, d: bytes, value: bytes, record: _Record | None, meta: MetaWitness | None,
                    out: AuditResult) -> bool:
        """A seq below the one expected: a missing one, a repeat, a fork, or too old to tell.
        True when the record was taken (a missing one, or a new branch)."""
        st = self.state
        gap = next((g for g in st.gaps if _take(g.missing, s)), None)
        if gap is not None or _take(st.removed, s):
            self._fill(s, d, value, record, meta, gap, out)
            return True
        known = st.remembered.get(s)
        if known is None:
            out.unchecked += 1  # older than the window: read before, or never comparable
            return False
        if known == d:
            if _follows(_GENESIS if s == 0 else st.remembered.get(s - 1), value, d) is False:
                out.breaks.append(Break("changed", s, st.read_seq, f"seq {s} read again with the same "
                                        "log_sha256 but other bytes"))
            else:
                out.repeated += 1
            return False
        out.breaks.append(Break("reordered", s, st.read_seq, f"seq {s} again, with another log_sha256, after "
                                f"seq {st.read_seq}: the log forks here (a rewrite, or a restart of the node that "
                                "went on from an older state); the audit follows the new branch"))
        st.gaps.clear()  # the old branch is left: what it missed is no longer expected
        for head in st.heads.values():
            head.seq = -1  # written before the new branch's heads, whatever their seqs
        self._accept(s, d, record, meta, out)
        return True

    def _fill(self, s: int, d: bytes, value: bytes, record: _Record | None, meta: MetaWitness | None,
              gap: _Gap | None, out: AuditResult) -> None:
        """A missing seq arrives: checked against its neighbours where they are known."""
        st = self.state
        before = _GENESIS if s == 0 else st.remembered.get(s - 1)
        if _follows(before, value, d) is False:
            out.breaks.append(Break("changed", s, st.read_seq, f"seq {s} (read late): log_sha256 is not "
                                    f"sha256(the digest of seq {s - 1} + its bytes)"))
        elif gap is not None and s + 1 == gap.stop and _follows(d, gap.stop_value, gap.stop_digest) is False:
            out.breaks.append(Break("changed", s, st.read_seq, f"seq {s} (read late): seq {s + 1}'s log_sha256 "
                                    "does not follow from it"))
        self._remember(s, d)
        out.checked += 1
        if meta is not None:
            self._check_heads(s, meta, out)
        if gap is None:
            out.breaks.append(Break("reordered", s, st.read_seq, f"seq {s} arrived after it was reported removed "
                                    f"(read up to seq {st.read_seq})"))
        else:
            gap.filled += 1
            if not gap.missing:
                st.gaps.remove(gap)
                n = gap.stop - gap.first
                out.breaks.append(Break("reordered", gap.first, st.read_seq,
                                        f"seq {_span(gap.first, gap.stop)} arrived after seq {gap.stop}"
                                        f"{'' if n == 1 else f' ({n} records out of order)'}"))
        if record is not None and s > st.copied:
            st.held.append(record)

    def _accept(self, s: int, d: bytes, record: _Record | None, meta: MetaWitness | None,
                out: AuditResult) -> None:
        """Go on from record ``s`` (in order, after a gap, or on a new branch)."""
        st = self.state
        st.next_seq, st.digest = s + 1, d
        self._remember(s, d)
        out.checked += 1
        if record is not None and s > st.copied:
            st.held.append(record)
        if meta is not None:
            self._check_heads(s, meta, out)
            self._decide(s, out)

    def _check_heads(self, s: int, meta: MetaWitness, out: AuditResult) -> None:
        for name, head in sorted(meta.heads.items()):
            seen = self.state.heads.get(name)
            if seen is not None and seen.seq != s:
                older, newer = (seen, head) if seen.seq < s else (head, seen)
                if newer.lines < older.lines or (newer.lines == older.lines and newer.sha256 != older.sha256):
                    before = f"seq {min(s, seen.seq)}" if min(s, seen.seq) >= 0 else "the branch left at a fork"
                    out.breaks.append(Break(
                        "rollback", max(s, seen.seq), self.state.read_seq,
                        f"{name}: the manifest head at seq {max(s, seen.seq)} ({newer.lines:,} line(s) ending in "
                        f"{newer.sha256[:8]}…) is behind the one at {before} ({older.lines:,} "
                        f"line(s) ending in {older.sha256[:8]}…): rolled back, rewritten, or compacted", name))
            if seen is None or seen.seq < s:
                self.state.heads[name] = _Head(head.lines, head.sha256, s)

    def _decide(self, meta_seq: int | None, out: AuditResult) -> None:
        """Gaps opened at or before the meta record ``meta_seq`` (None: all) are removed seqs."""
        st = self.state
        for gap in [g for g in st.gaps if meta_seq is None or g.stop <= meta_seq]:
            st.gaps.remove(gap)
            missing = sum(hi - lo for lo, hi in gap.missing)
            late = f"; {gap.filled} of the gap arrived out of order" if gap.filled else ""
            where = ", ".join(_span(lo, hi) for lo, hi in gap.missing[:5]) + (", …" if len(gap.missing) > 5 else "")
            out.breaks.append(Break("removed", gap.missing[0][0], st.read_seq,
                                    f"{missing:,} seq(s) missing before seq {gap.stop}: {where}{late}"))
            st.removed.extend(gap.missing)
        del st.removed[:-_REMOVED_KEPT]

    def _remember(self, s: int, d: bytes) -> None:
        remembered = self.state.remembered
        remembered.pop(s, None)  # re-inserted: the newest to be forgotten last
        remembered[s] = d
        while len(remembered) > self.window:
            del remembered[next(iter(remembered))]

    def _release(self, out: AuditResult) -> None:
        """Hand on the held records (in seq order) once no gap is open before them."""
        st = self.state
        if st.gaps or not st.held:
            return
        held, st.held = sorted(st.held, key=lambda r: r.seq), []
        run = out.copies[-1] if out.copies else None
        for r in held:
            if r.seq <= st.copied:
                continue  # a repeat held twice, or a seq of a left branch
            if run is None or r.seq != run.seq + len(run):
                run = LoggedRecords(r.seq, [], [], [], [], [])
                out.copies.append(run)
            run.layers.append(r.layer)
            run.t_us.append(r.t_us)
            run.sensors.append(r.sensor)
            run.values.append(r.value)
            run.digests.append(r.digest)
            st.copied = r.seq


def _follows(previous: bytes | None, value: bytes, digest: bytes) -> bool | None:
    """True when ``digest`` is sha256(previous + value); None when ``previous`` is unknown."""
    if previous is None:
        return None
    return hashlib.sha256(previous + value).digest() == digest


def _take(ranges: list[list[int]], s: int) -> bool:
    """Remove ``s`` from the [lo, hi) ``ranges``; True when it was in one."""
    for i, (lo, hi) in enumerate(ranges):
        if lo <= s < hi:
            ranges[i:i + 1] = [r for r in ([lo, s], [s + 1, hi]) if r[0] < r[1]]
            return True
    return False


def _span(lo: int, hi: int) -> str:
    return f"{lo}" if hi - lo == 1 else f"{lo}..{hi - 1}"


def _parsed(s: int, d: bytes, value: bytes) -> tuple[_Record | None, MetaWitness | None, str | None]:
    """The record's archive row fields and its meta payload, or the reason its bytes are no witness record."""
    try:
        obj = json.loads(value)
        layer, payload = obj["layer"], obj["payload"]
        if layer not in _LAYERS or not isinstance(payload, dict):
            raise ValueError(f"layer {layer!r} with a payload that is not an object")
        t_us = _event_time(obj["t"])
        sensor = payload.get("sensor") if layer == "meso" else (
            payload.get("event", {}).get("sensor") if layer == "macro" else None)
        meta = MetaWitness.model_validate(payload) if layer == "meta" else None
        return _Record(s, d, value, layer, t_us, sensor), meta, None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return None, None, f"not a witness record ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
