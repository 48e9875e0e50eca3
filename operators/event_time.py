"""Per-sensor event time: watermark, out-of-order buffer, and late/duplicate/future rejection.

SPEC section 3: a sensor's watermark is ``max t seen - sync.lateness``.
Samples up to the watermark are final and are integrated in time order;
newer ones wait in a buffer, sorted.  A sample whose t equals an accepted
one is a ``duplicate``; any other sample arriving with t <= the watermark is
``late``; a sample more than ``sync.max_future`` ahead of the wall clock is
``future`` (except in replay).  All three are rejected, and the caller sends
them to the dead-letter topic.

:class:`EventTimeGate` classifies a whole batch with array operations, and
the result equals feeding the rows one at a time in arrival order.  That is
what makes the output independent of how Kafka cut the stream into batches:
each row is judged against the running maximum of the rows before it, an
exclusive prefix maximum.

Duplicates are recognised against every sample still pending and against
the accepted times of the last ``dedup_horizon_us`` before the watermark.
An older repeated time is reported as ``late``, and it is rejected either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from schemas.samples import SampleBatch

__all__ = ["EventTimeGate", "GateResult"]

_NEG = np.iinfo(np.int64).min


class GateResult(NamedTuple):
    """What one batch did to a sensor's event time.

    Attributes:
        released: samples now final (t <= watermark), sorted by time, or None.
        rejected: the rejected rows of the input batch (arrival order), or None.
        reasons: one reason per rejected row: ``duplicate``, ``late``, ``future``.
        watermark: the sensor's watermark after the batch (us), or None
            before any sample was accepted.
        watermarks: one per rejected row: the watermark in force when it
            arrived (us), for the text of a ``late`` dead letter; meaningless
            for the other reasons.
    """

    released: SampleBatch | None
    rejected: SampleBatch | None
    reasons: list[str]
    watermark: int | None
    watermarks: Sequence[int] = ()


class EventTimeGate:
    """One sensor's watermark and reorder buffer.

    Args:
        lateness_us: ``sync.lateness`` in microseconds (>= 0).
        max_future_us: ``sync.max_future`` in microseconds, or None to accept
            any future time (replay mode).
        dedup_horizon_us: how far behind the watermark accepted times are
            remembered for duplicate detection.

    >>> import numpy as np
    >>> from schemas.samples import SampleBatch
    >>> gate = EventTimeGate(lateness_us=20, max_future_us=None)
    >>> res = gate.push(SampleBatch("s", np.array([10, 30, 20, 30, 5]), np.zeros((5, 1))), now_us=0)
    >>> res.released.t_us.tolist(), res.reasons, res.watermark
    ([10], ['duplicate', 'late'], 10)
    """

    def __init__(self, lateness_us: int, max_future_us: int | None, dedup_horizon_us: int = 1_000_000) -> None:
        if lateness_us < 0:
            raise ValueError(f"lateness must be >= 0, got {lateness_us} us")
        self.lateness_us = int(lateness_us)
        self.max_future_us = None if max_future_us is None else int(max_future_us)
        self.dedup_horizon_us = int(dedup_horizon_us)
        self._max_t = _NEG
        self._pending: SampleBatch | None = None  # sorted by time, all > watermark
        self._recent_parts: list[np.ndarray] = []  # accepted & released times, sorted, joined when needed

    @property
    def watermark(self) -> int | None:
        return None if self._max_t == _NEG else self._max_t - self.lateness_us

    @property
    def pending(self) -> int:
        """Samples waiting for the watermark."""
        return 0 if self._pending is None else len(self._pending)

    def push(self, batch: SampleBatch, now_us: int) -> GateResult:
        """Classify ``batch`` (arrival order) and release what became final.

        Args:
            batch: samples of this sensor in arrival order.
            now_us: wall-clock time in microseconds, for the ``future`` rule.
        """
        t = batch.t_us
        n = t.shape[0]
        if self._in_order(t, now_us):
            return self._accept_all(batch)
        reasons = np.full(n, "", dtype=object)
        future = np.zeros(n, np.bool_)
        if self.max_future_us is not None:
            future = t > now_us + self.max_future_us
        reasons[future] = "future"

        # Running max of everything before each row (future rows never count).
        masked = np.where(future, _NEG, t)
        before = np.full(n, self._max_t, np.int64)
        if n > 1:
            before[1:] = np.maximum.accumulate(np.maximum(masked[:-1], self._max_t))
        old_or_equal = ~future & (before != _NEG) & (t <= before - self.lateness_us)

        # Duplicates: same t as an accepted sample (pending, recent, or an
        # earlier accepted row of this batch).
        recent = self._recent()
        known = recent if self._pending is None else np.union1d(recent, self._pending.t_us)
        in_known = np.isin(t, known)
        candidates = ~future & ~old_or_equal & ~in_known
        cand_idx = np.flatnonzero(candidates)
        _, first = np.unique(t[cand_idx], return_index=True)
        accepted = np.zeros(n, np.bool_)
        accepted[cand_idx[first]] = True
        # A candidate that repeats an earlier accepted row of the batch: duplicate.
        reasons[candidates & ~accepted] = "duplicate"
        # Old rows: duplicate if the time was accepted before them, else late.
        old_idx = np.flatnonzero(old_or_equal)
        if old_idx.size:
            acc_idx = np.flatnonzero(accepted)
            acc_t = t[acc_idx]
            for i in old_idx:  # rare path: only rows already behind the watermark
                same = acc_idx[acc_t == t[i]]
                dup = in_known[i] or (same.size > 0 and same[0] < i)
                reasons[i] = "duplicate" if dup else "late"
        reasons[in_known & ~old_or_equal & ~future] = "duplicate"

        if n and np.any(~future):
            self._max_t = max(self._max_t, int(masked.max()))
        new = batch.take(accepted)
        if len(new):
            pool = new if self._pending is None else SampleBatch.concat([self._pending, new])
            self._pending = pool.take(np.argsort(pool.t_us, kind="stable"))
        released = None
        wm = self.watermark
        if self._pending is not None and wm is not None:
            cut = int(np.searchsorted(self._pending.t_us, wm, side="right"))
            if cut:
                released = self._pending.take(np.arange(cut))
                rest = self._pending.take(np.arange(cut, len(self._pending)))
                self._pending = rest if len(rest) else None
                self._remember(released.t_us)
        rejected_mask = reasons != ""
        if not rejected_mask.any():
            return GateResult(released, None, [], wm)
        return GateResult(released, batch.take(rejected_mask), reasons[rejected_mask].tolist(), wm,
                          (before[rejected_mask] - self.lateness_us).tolist())

    def _in_order(self, t: np.ndarray, now_us: int) -> bool:
        """True when every row is new, in strictly increasing time and not in the future:
        the usual case, which needs none of the duplicate bookkeeping below."""
        return (self._pending is None and t.shape[0] > 0 and int(t[0]) > self._max_t
                and (self.max_future_us is None or int(t[-1]) <= now_us + self.max_future_us)
                and (t.shape[0] == 1 or bool((t[1:] > t[:-1]).all())))

    def _accept_all(self, batch: SampleBatch) -> GateResult:
        self._max_t = int(batch.t_us[-1])
        wm = self.watermark
        cut = int(np.searchsorted(batch.t_us, wm, side="right"))
        released = batch if cut == len(batch) else batch.take(np.arange(cut))
        if cut < len(batch):
            self._pending = batch.take(np.arange(cut, len(batch)))
        if cut == 0:
            return GateResult(None, None, [], wm)
        self._remember(released.t_us)
        return GateResult(released, None, [], wm)

    def flush(self) -> SampleBatch | None:
        """End of input: release everything pending, in time order."""
        released, self._pending = self._pending, None
        if released is not None:
            self._remember(released.t_us)
        return released

    def _remember(self, times: np.ndarray) -> None:
        # Joined and cut only now and then (or when a duplicate check needs them):
        # in-order batches need nothing but the append.
        self._recent_parts.append(times)
        if len(self._recent_parts) >= 64:
            self._recent()

    def _recent(self) -> np.ndarray:
        """Accepted times within dedup_horizon of the watermark (sorted; older ones may remain)."""
        keep_from = (self.watermark or 0) - self.dedup_horizon_us
        parts = self._recent_parts
        joined = parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else np.empty(0, np.int64)
        joined = joined[np.searchsorted(joined, keep_from):]
        self._recent_parts = [joined]
        return joined
