"""Event time for a whole key group at once: watermark, reorder buffer, late / duplicate / future (SPEC 3).

:class:`FleetGate` is :class:`operators.event_time.EventTimeGate` for many
sensors of one channel count, as a structure of arrays, with one Numba pass
per call over the call's rows.  The rules are the same, row by row in arrival
order within a sensor:

* ``future``: t more than ``sync.max_future`` ahead of the wall clock (not in
  replay); such a row never moves the watermark;
* ``late``: t at or before the watermark in force (newest t seen before it
  minus ``sync.lateness``), unless the time was accepted before, then
  ``duplicate``;
* ``duplicate``: t equals a sample the sensor already accepted (waiting in
  the reorder buffer, or released within ``dedup_horizon`` of the watermark);
* otherwise accepted into the sensor's reorder buffer (sorted by t).

At the end of a call each sensor's buffered samples up to its watermark are
released, in time order, as columns grouped by sensor: what
:func:`operators.columnar_stream.stream_resonance` takes.  Equal to
EventTimeGate fed the same rows per sensor (tests hold them equal), except
that a repeated time more than the horizon behind the watermark is always
``late`` here, where the per-sensor gate may still call it ``duplicate`` until
it prunes its memory; both reject it.

State per sensor row (``ints``): newest non-future t, the reorder buffer
(pool offset, capacity, head, length; a sorted ring) and the ring of recently
released times (pool offset, capacity, oldest kept, count).  Rings grow by
doubling when full, between rows: the kernel stops at the row, Python moves
the ring, the kernel resumes there.  Released times more than the horizon
behind the watermark are dropped before each call, so that ring holds about a
horizon of samples plus a call's.

At lateness 0 (the default) a sample is final as soon as it is accepted; a
call whose rows come sensor by sensor (as :class:`operators.fleet.Fleet`
hands them) with nothing buffered is classified and released in one pass
that skips the reorder buffer, with the same statuses and columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numba import njit

from operators.columnar_state import Pool, _resized, check_layout

__all__ = ["ACCEPTED", "DUPLICATE", "FUTURE", "FleetGate", "GateStep", "LATE", "REASONS"]

ACCEPTED, FUTURE, LATE, DUPLICATE = 0, 1, 2, 3
REASONS = {FUTURE: "future", LATE: "late", DUPLICATE: "duplicate"}

MAX_T, P_OFF, P_CAP, P_HEAD, P_LEN, R_OFF, R_CAP, R_LO, R_N = range(9)
N_INTS = 9
NEG = np.iinfo(np.int64).min
_BIG = np.iinfo(np.int64).max
FIRST_CAP = 4
_DONE, _GROW_P, _GROW_R = 0, 1, 2
GATE_VERSION = 1


@njit(cache=True, nogil=True, inline="always")
def _in_pending(gi, p_t, r, tk):
    off, cap, head, n = gi[r, P_OFF], gi[r, P_CAP], gi[r, P_HEAD], gi[r, P_LEN]
    lo, hi = 0, n  # sorted ring: binary search on logical positions
    while lo < hi:
        mid = (lo + hi) // 2
        q = head + mid
        if q >= cap:
            q -= cap
        if p_t[off + q] < tk:
            lo = mid + 1
        else:
            hi = mid
    if lo == n:
        return False
    q = head + lo
    if q >= cap:
        q -= cap
    return p_t[off + q] == tk


@njit(cache=True, nogil=True, inline="always")
def _in_recent(gi, r_t, r, tk, keep_from):
    if tk < keep_from:
        return False
    off, cap, lo_k, n_k = gi[r, R_OFF], gi[r, R_CAP], gi[r, R_LO], gi[r, R_N]
    mask = cap - 1
    lo, hi = lo_k, n_k
    while lo < hi:
        mid = (lo + hi) // 2
        if r_t[off + (mid & mask)] < tk:
            lo = mid + 1
        else:
            hi = mid
    return lo < n_k and r_t[off + (lo & mask)] == tk


@njit(cache=True, nogil=True, inline="always")
def _forget(gi, r_t, r, keep_from):
    """Drop the row's released times before ``keep_from`` (oldest first)."""
    off, mask = gi[r, R_OFF], gi[r, R_CAP] - 1
    while gi[r, R_LO] < gi[r, R_N] and r_t[off + (gi[r, R_LO] & mask)] < keep_from:
        gi[r, R_LO] += 1


@njit(cache=True, nogil=True, inline="always")
def _remember(gi, r_t, r, tk, keep_from):
    """Add a released time to the row's ring, forgetting those before ``keep_from`` if it is full;
    False (nothing added) when it is still full: the ring must grow first."""
    if gi[r, R_N] - gi[r, R_LO] == gi[r, R_CAP]:
        _forget(gi, r_t, r, keep_from)
        if gi[r, R_N] - gi[r, R_LO] == gi[r, R_CAP]:
            return False
    r_t[gi[r, R_OFF] + (gi[r, R_N] & (gi[r, R_CAP] - 1))] = tk
    gi[r, R_N] += 1
    return True


@njit(cache=True, nogil=True)
def _gate_kernel(rows, t, phase, start, future_limit, lateness, horizon, gi, p_t, p_ph, r_t, status, wm_in):
    """Classify rows start: in order; returns (_DONE, n) or (_GROW_P, i): a full buffer before row i."""
    n_chan = phase.shape[1]
    for i in range(start, t.shape[0]):
        r, tk = rows[i], t[i]
        if tk > future_limit:
            status[i] = FUTURE
            continue
        before = gi[r, MAX_T]
        wm = before - lateness if before != NEG else NEG
        keep_from = wm - horizon if before != NEG else NEG
        # Newer than every time seen: in neither the buffer nor the released times (the usual row).
        known = tk <= before and (_in_pending(gi, p_t, r, tk) or _in_recent(gi, r_t, r, tk, keep_from))
        if before != NEG and tk <= wm:
            status[i] = DUPLICATE if known else LATE
            wm_in[i] = wm
        elif known:
            status[i] = DUPLICATE
        else:
            off, cap, head, n = gi[r, P_OFF], gi[r, P_CAP], gi[r, P_HEAD], gi[r, P_LEN]
            if n == cap:
                return _GROW_P, i
            # Insert sorted: shift the newer samples up by one (arrival is mostly in order: none).
            j = n
            while j > 0:
                q = head + j - 1
                if q >= cap:
                    q -= cap
                if p_t[off + q] < tk:
                    break
                q1 = q + 1
                if q1 >= cap:
                    q1 -= cap
                p_t[off + q1] = p_t[off + q]
                for c in range(n_chan):
                    p_ph[off + q1, c] = p_ph[off + q, c]
                j -= 1
            q = head + j
            if q >= cap:
                q -= cap
            p_t[off + q] = tk
            for c in range(n_chan):
                p_ph[off + q, c] = phase[i, c]
            gi[r, P_LEN] = n + 1
            status[i] = ACCEPTED
        if tk > before:
            gi[r, MAX_T] = tk
    return _DONE, t.shape[0]


@njit(cache=True, nogil=True)
def _release_kernel(touched, start, everything, lateness, horizon, gi, p_t, p_ph, r_t, out_row, out_t, out_ph,
                    count):
    """Release each touched row's buffered samples up to its watermark (all of them with ``everything``),
    in time order, into the out columns; remember their times.  Returns (_DONE, n) or (_GROW_R, j)."""
    n_chan = p_ph.shape[1]
    k = count[0]
    for j in range(start, touched.shape[0]):
        r = touched[j]
        if gi[r, MAX_T] == NEG:
            continue
        wm = _BIG if everything else gi[r, MAX_T] - lateness
        off, cap = gi[r, P_OFF], gi[r, P_CAP]
        keep_from = gi[r, MAX_T] - lateness - horizon
        while gi[r, P_LEN] > 0:
            head = gi[r, P_HEAD]
            tk = p_t[off + head]
            if tk > wm:
                break
            if not _remember(gi, r_t, r, tk, keep_from):
                count[0] = k
                return _GROW_R, j
            out_row[k], out_t[k] = r, tk
            for c in range(n_chan):
                out_ph[k, c] = p_ph[off + head, c]
            k += 1
            gi[r, P_HEAD] = 0 if head + 1 == cap else head + 1
            gi[r, P_LEN] -= 1
    count[0] = k
    return _DONE, touched.shape[0]


@njit(cache=True, nogil=True)
def _in_order_kernel(rows, t, phase, start, future_limit, horizon, gi, r_t, status, wm_in, out_row, out_t, out_ph,
                     count):
    """Lateness 0, rows grouped by sensor row: classify rows start: and release each accepted row at once
    (its watermark is its own time, so nothing waits in the reorder buffer).  Returns (_DONE, n) or
    (_GROW_R, i): the recent-times ring of row i's sensor is full."""
    n_chan = phase.shape[1]
    k = count[0]
    for i in range(start, t.shape[0]):
        r, tk = rows[i], t[i]
        if tk > future_limit:
            status[i] = FUTURE
            continue
        before = gi[r, MAX_T]
        if before != NEG and tk <= before:
            status[i] = DUPLICATE if _in_recent(gi, r_t, r, tk, before - horizon) else LATE
            wm_in[i] = before
            continue
        if not _remember(gi, r_t, r, tk, tk - horizon):
            count[0] = k
            return _GROW_R, i
        gi[r, MAX_T] = tk
        status[i] = ACCEPTED
        out_row[k], out_t[k] = r, tk
        for c in range(n_chan):
            out_ph[k, c] = phase[i, c]
        k += 1
    count[0] = k
    return _DONE, t.shape[0]


@njit(cache=True, nogil=True)
def _prune_recent(rows, gi, r_t, lateness, horizon):
    """Forget each row's released times more than ``horizon`` behind its watermark: no later lookup
    can match them (the watermark only moves forward), so a ring holds about a horizon of samples."""
    for j in range(rows.shape[0]):
        r = rows[j]
        if gi[r, MAX_T] != NEG:
            _forget(gi, r_t, r, gi[r, MAX_T] - lateness - horizon)


class GateStep:
    """One call of :meth:`FleetGate.push`: a status per input row and the released columns.

    Attributes:
        status: int8 per input row: ACCEPTED, FUTURE, LATE or DUPLICATE.
        watermark_in: int64 per input row: the watermark in force when a LATE row arrived (us).
        rows, t, phase: the released samples, grouped by sensor row (in the order of ``touched``),
            time order within a row.
    """

    __slots__ = ("status", "watermark_in", "rows", "t", "phase")

    def __init__(self, status, watermark_in, rows, t, phase):
        self.status, self.watermark_in, self.rows, self.t, self.phase = status, watermark_in, rows, t, phase


@dataclass
class FleetGate:
    """The event-time state of many sensors with ``channels`` phase channels (rows 0 .. n - 1).

    Args:
        channels: phase channels C.
        lateness_us: ``sync.lateness`` (us, >= 0).
        max_future_us: ``sync.max_future`` (us), or None to accept any future time (replay).
        dedup_horizon_us: how far behind the watermark released times are remembered.

    >>> gate = FleetGate(1, lateness_us=20, max_future_us=None)
    >>> gate.add(1).tolist()
    [0]
    >>> step = gate.push(np.array([0, 0, 0, 0, 0]), np.array([10, 30, 20, 30, 5]), np.zeros((5, 1)), now_us=0)
    >>> step.status.tolist(), step.t.tolist(), gate.watermark(np.array([0])).tolist()
    ([0, 0, 0, 3, 2], [10], [10])
    """

    channels: int
    lateness_us: int
    max_future_us: int | None
    dedup_horizon_us: int = 1_000_000
    n: int = 0
    ints: np.ndarray = field(default=None)
    pending: Pool = field(default=None)     # t, phase (C)
    recent: Pool = field(default=None)      # t

    def __post_init__(self):
        if self.lateness_us < 0:
            raise ValueError(f"lateness must be >= 0, got {self.lateness_us} us")
        self.dedup_horizon_us = max(int(self.dedup_horizon_us), int(self.lateness_us))
        if self.ints is None:
            self.ints = np.empty((0, N_INTS), np.int64)
            self.pending = Pool([np.empty(0, np.int64), np.empty((0, self.channels), np.float64)])
            self.recent = Pool([np.empty(0, np.int64)])

    def add(self, k: int) -> np.ndarray:
        """k new sensor rows; returns their numbers."""
        if self.n + k > self.ints.shape[0]:
            self.ints = _resized(self.ints, max(2 * self.ints.shape[0], self.n + k, 64))
        rows = np.arange(self.n, self.n + k)
        gi = self.ints
        gi[rows] = 0
        gi[rows, MAX_T] = NEG
        self.n += k
        for pool, col in ((self.pending, P_OFF), (self.recent, R_OFF)):
            gi[rows, col + 1] = 0
            gi[rows, col] = pool.segment(gi[:self.n], col, k * FIRST_CAP) + FIRST_CAP * np.arange(k)
            gi[rows, col + 1] = FIRST_CAP
        return rows

    def watermark(self, rows: np.ndarray) -> np.ndarray:
        """Each row's watermark (us), NEG before any accepted sample."""
        m = self.ints[rows, MAX_T]
        return np.where(m == NEG, NEG, m - self.lateness_us)

    def buffered(self, rows: np.ndarray | None = None) -> int:
        """Samples waiting for the watermark."""
        return int(self.ints[:self.n, P_LEN].sum() if rows is None else self.ints[rows, P_LEN].sum())

    def push(self, rows: np.ndarray, t_us: np.ndarray, phase: np.ndarray, now_us: int) -> GateStep:
        """Classify rows (arrival order within each sensor row) and release what became final."""
        rows = np.ascontiguousarray(rows, np.int64)
        t = np.ascontiguousarray(t_us, np.int64)
        ph = np.ascontiguousarray(phase, np.float64).reshape(t.shape[0], self.channels)
        if rows.size and (int(rows.min()) < 0 or int(rows.max()) >= self.n):
            raise ValueError(f"rows must be in 0 .. {self.n - 1} (add them first)")
        status = np.empty(t.shape[0], np.int8)
        wm_in = np.zeros(t.shape[0], np.int64)
        future = _BIG if self.max_future_us is None else min(_BIG - self.max_future_us, now_us) + self.max_future_us
        if rows.size:
            # Room in each buffer for all of the call's rows, in one step for all rows (no kernel exits).
            counts = np.bincount(rows, minlength=self.n)
            touched = np.flatnonzero(counts)
            if self.lateness_us == 0 and _grouped(rows, touched.size) and not self.ints[touched, P_LEN].any():
                return self._in_order(rows, t, ph, future, status, wm_in, touched, counts[touched])
            self._reserve(self.pending, P_OFF, touched, self.ints[touched, P_LEN] + counts[touched])
        i = 0
        while True:
            state, i = _gate_kernel(rows, t, ph, i, future, self.lateness_us, self.dedup_horizon_us, self.ints,
                                    *self.pending.cols, self.recent.cols[0], status, wm_in)
            if state == _DONE:
                break
            self._grow(self.pending, P_OFF, int(rows[i]))
        touched = _first_seen(rows)
        return GateStep(status, wm_in, *self.release(touched))

    def _in_order(self, rows, t, ph, future, status, wm_in, touched, counts) -> GateStep:
        """:meth:`push` at lateness 0 with nothing buffered and each sensor's rows together (the usual
        call): the same statuses and released columns in one pass, without the reorder buffer."""
        self._room_to_remember(touched, counts)
        total = t.shape[0]
        out = (np.empty(total, np.int64), np.empty(total, np.int64), np.empty((total, self.channels)))
        count = np.zeros(1, np.int64)
        i = 0
        while True:
            state, i = _in_order_kernel(rows, t, ph, i, future, self.dedup_horizon_us, self.ints,
                                        self.recent.cols[0], status, wm_in, *out, count)
            if state == _DONE:
                break
            self._grow(self.recent, R_OFF, int(rows[i]))
        k = int(count[0])
        return GateStep(status, wm_in, out[0][:k], out[1][:k], out[2][:k])

    def release(self, touched: np.ndarray, everything: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Release the rows' samples up to their watermarks (all of them with ``everything``: end of
        input); columns (row, t, phase) grouped as ``touched``."""
        touched = np.ascontiguousarray(touched, np.int64)
        if touched.size and (int(touched.min()) < 0 or int(touched.max()) >= self.n):
            raise ValueError(f"rows must be in 0 .. {self.n - 1} (add them first)")
        total = int(self.ints[touched, P_LEN].sum()) if touched.size else 0
        out = (np.empty(total, np.int64), np.empty(total, np.int64), np.empty((total, self.channels)))
        if not total:
            return out
        self._room_to_remember(touched, self.ints[touched, P_LEN])
        count = np.zeros(1, np.int64)
        j = 0
        while True:
            state, j = _release_kernel(touched, j, everything, self.lateness_us, self.dedup_horizon_us, self.ints,
                                       *self.pending.cols, self.recent.cols[0], *out, count)
            if state == _DONE:
                break
            self._grow(self.recent, R_OFF, int(touched[j]))
        k = int(count[0])
        return out[0][:k], out[1][:k], out[2][:k]

    def _room_to_remember(self, touched: np.ndarray, incoming: np.ndarray) -> None:
        """Before releasing up to ``incoming`` samples of each touched row: drop the times beyond the
        horizon, then grow each ring to hold the rest and the new ones (up to 4,096; the kernels make
        room beyond that by forgetting, or stop to grow)."""
        _prune_recent(touched, self.ints, self.recent.cols[0], self.lateness_us, self.dedup_horizon_us)
        live = self.ints[touched, R_N] - self.ints[touched, R_LO]
        self._reserve(self.recent, R_OFF, touched,
                      np.minimum(live + incoming, np.maximum(self.ints[touched, R_CAP], 4096)))

    def forget(self, rows: np.ndarray) -> None:
        """Drop the rows' buffers (after releasing everything): their rings go to capacity 0 (the
        segments are dropped at the next compaction); their newest time stays (older samples stay ``late``)."""
        gi = self.ints
        gi[rows, P_OFF] = gi[rows, P_CAP] = gi[rows, R_OFF] = gi[rows, R_CAP] = 0
        gi[rows, P_HEAD] = gi[rows, P_LEN] = gi[rows, R_LO] = gi[rows, R_N] = 0

    def _reserve(self, pool: Pool, off_col: int, rows: np.ndarray, need: np.ndarray) -> None:
        """Grow the rings of ``rows`` whose capacity is below ``need``, all in one relocation: at least
        doubled; the recent times to a power of two (their positions are k & (cap - 1))."""
        gi = self.ints
        grow = need > gi[rows, off_col + 1]
        if not grow.any():
            return
        rows, need = rows[grow], need[grow]
        caps = np.maximum(need, np.maximum(2 * gi[rows, off_col + 1], FIRST_CAP))
        if off_col == R_OFF:
            caps = 1 << np.ceil(np.log2(caps)).astype(np.int64)
            first, length = gi[rows, R_LO], gi[rows, R_N] - gi[rows, R_LO]
        else:  # the buffer's head stays where it is: positions are head + j mod cap
            first, length = gi[rows, P_HEAD], gi[rows, P_LEN]
        pool.relocate(gi[:self.n], rows, off_col, caps, first, length)

    def _grow(self, pool: Pool, off_col: int, row: int) -> None:
        """Make room for one more element of one row's ring (a kernel stopped before it)."""
        self._reserve(pool, off_col, np.array([row]), self.ints[[row], off_col + 1] + 1)

    def compact(self) -> None:
        """Copy the live segments to fresh pools (drops abandoned ones)."""
        for pool, base in ((self.pending, P_OFF), (self.recent, R_OFF)):
            pool.compact(self.ints[:self.n], base)

    def __getstate__(self):
        self.compact()
        state = {k: getattr(self, k) for k in ("channels", "lateness_us", "max_future_us", "dedup_horizon_us", "n")}
        state.update(version=GATE_VERSION, ints=self.ints[:self.n].copy(),
                     pending=[c[:self.pending.used] for c in self.pending.cols],
                     recent=[c[:self.recent.used] for c in self.recent.cols])
        return state

    def __setstate__(self, state):
        check_layout(state.pop("version", None), GATE_VERSION, "event-time state")
        pending, recent = state.pop("pending"), state.pop("recent")
        self.__dict__.update(state)
        self.pending, self.recent = Pool(pending, len(pending[0])), Pool(recent, len(recent[0]))
        self.__post_init__()

    def nbytes(self) -> int:
        """Bytes of the live rows and their ring segments."""
        per_pending = 8 + 8 * self.channels
        return self.n * N_INTS * 8 + int(self.ints[:self.n, P_CAP].sum()) * per_pending + \
            int(self.ints[:self.n, R_CAP].sum()) * 8


def _grouped(rows: np.ndarray, distinct: int) -> bool:
    """Each value of ``rows`` in one run of consecutive entries (``distinct`` values in all)."""
    return int(np.count_nonzero(rows[1:] != rows[:-1])) + 1 == distinct


def _first_seen(rows: np.ndarray) -> np.ndarray:
    """The distinct values of ``rows`` in order of first appearance."""
    if rows.size == 0:
        return rows
    if rows.size == 1 or bool((rows[1:] >= rows[:-1]).all()):  # grouped and sorted: the common call
        keep = np.ones(rows.size, np.bool_)
        keep[1:] = rows[1:] != rows[:-1]
        return rows[keep]
    _, first = np.unique(rows, return_index=True)
    return rows[np.sort(first)]
