"""The carried state of the streaming fleet pass (:mod:`operators.columnar_stream`): arrays, no logic.

A key group's sensors are rows of a structure of arrays.  Per sensor:

* ``ints[row]`` (int64, columns named below): chain state (samples seen, chain
  start, the velocity and lag pointers j and m as absolute sample numbers), the
  segment of the lag-history pool the sensor owns (offset, capacity, oldest
  sample kept), the newest product time, the pending Emissary and Master grid
  points, both pane windows (pool offset, capacity, head, length, products in
  the window, newest product with a nonzero weight, pane numbers of the oldest
  and newest slot), the sync state (collapsed, span of the Master in force, us)
  and the newest sample time (on a light node, ``settings.light``, the span
  column holds the start of the Emissary's run instead: :mod:`operators.light_sync`);
* ``sums[row]`` (float64): each window's running sums S.re, S.im, A of its
  closed panes, a compensated pair (hi, lo) each, and its open pane's three
  rounding errors;
* ``t_master[row]`` (complex128): T of the Master point in force for the sync.

Variable-length parts live in pools, one contiguous ring segment per sensor:

* the lag history (t, phase, unwrapped phase, velocity, has-velocity): the
  samples from the older of the pointers j and m to the newest, which is all
  later products can look at (pointers only move forward within a chain);
* the panes of each window, 28-byte slots of nonempty panes
  (:mod:`operators.columnar_panes`).

Measured (one channel, default windows: Emissary 1 s at 0.01 s, Master 3600 s
at 0.1 s, tau 1 s, d 0.1 s; after more than an hour, compacted; ``nbytes()``):
10 Hz 1,009,632 bytes, of which the Master's ring of 36,004 slots is
1,008,112, the Emissary's 16 slots 448, the lag history 656 (16 samples of 41
bytes) and the row 416; 1 kHz 1,053,424 (a lag history of 1,024 samples,
41,984; the Emissary's 104 slots); 1 Hz with tau 5 s 115,544 (3,601 panes in a
ring of 4,096 slots).  100,000 sensors at 1 Hz with tau 5 s for 60 s, a call
per second: 2,760 bytes per sensor by ``nbytes()``, and the process's peak
resident memory grew by 6.9 KB per sensor (pools doubling, abandoned
segments); pickled (highest protocol) 226 MB in 0.23 s, loaded in 0.21 s.
A light node (no Master ring) at 10 Hz after an hour, calls of one second:
1,744 bytes per sensor (docs/pipeline.md compares the two).

A ring that is full is moved to a segment of twice its size at the end of its
pool; the abandoned segments of a sensor add up to less than its live one.
Rings that grow together (:meth:`FleetState.reserve` grows a call's rings in
one step) and hold half the pool's live capacity or more rebuild the pool
instead: one fresh array, every live element copied once by a kernel, nothing
abandoned.  A pool that would have to grow while less than half of it is live
is compacted instead (live segments copied to a fresh pool, in row order), so
a pool stays within about twice what is live, also when sensors are released
and come back.
A snapshot (:meth:`FleetState.__getstate__`) holds the rows and, of each ring,
only its live elements (the lag samples still looked at, the window's slots);
restoring gives every ring its capacity back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numba import njit

from operators.columnar_panes import (NO_TIME, W_CAP, W_HEAD, W_HQ, W_INTS, W_LEN, W_N, W_NZ, W_OFF, W_SUMS,
                                      W_TQ, PaneLayout)
from operators.columnar_rows import check_settings
from operators.resonator import ResonatorSettings

# Columns of FleetState.ints.
N_SEEN, CS, JP, MP, H_OFF, H_CAP, H_LO, LAST_PT, E_PEND, E_G, M_PEND, M_G = range(12)
E_WIN, M_WIN = 12, 12 + W_INTS  # a window's columns: base + W_OFF, W_CAP, W_HEAD, W_LEN, W_N, W_NZ, W_HQ, W_TQ
COLLAPSED, SPAN_IN, T_LAST = M_WIN + W_INTS, M_WIN + W_INTS + 1, M_WIN + W_INTS + 2
N_INTS = T_LAST + 1
E_SUMS, M_SUMS = 0, W_SUMS      # a window's columns of FleetState.sums
N_SUMS = 2 * W_SUMS
FIRST_CAP = 4                   # first ring capacity of a sensor (doubled as needed); a power of two
STATE_VERSION = 2               # of the pickled layout; a snapshot of another layout is refused by name


@dataclass
class Pool:
    """A pool of ring segments: ``cols`` arrays with the same first axis; ``used`` rows handed out."""

    cols: list[np.ndarray]
    used: int = 0

    def take(self, n: int) -> int:
        """A fresh segment of n rows at the end (the arrays grow geometrically); returns its offset."""
        if self.used + n > self.cols[0].shape[0]:
            size = max(2 * self.cols[0].shape[0], self.used + n, 64)
            self.cols = [_resized(c, size, self.used) for c in self.cols]
        off = self.used
        self.used += n
        return off

    def row_bytes(self) -> int:
        return sum(c.itemsize * int(np.prod(c.shape[1:])) for c in self.cols)

    # The owner's rows say where their segments are: ints[r, off_col] the offset, ints[r, off_col + 1]
    # the capacity; ``ints`` below is the owner's rows in use (a view: offsets are written through it).

    def segment(self, ints: np.ndarray, off_col: int, n: int) -> int:
        """A fresh segment of n rows, compacting the pool first if it is full and less than half of it
        is live (abandoned segments are the rest)."""
        if self.used + n > self.cols[0].shape[0] and 2 * int(ints[:, off_col + 1].sum()) < self.used:
            self.compact(ints, off_col, n)
        return self.take(n)

    def relocate(self, ints: np.ndarray, rows, off_col: int, new_caps, first, length) -> None:
        """Move each row's ring to a new segment of new_caps: elements first .. first + length - 1 of the
        old ring (position off + e mod cap) to new_off + e mod new_cap (a head or oldest index stays valid).

        Rows holding half the pool's live capacity or more (a fleet's rings grow together) rebuild the
        pool instead: one fresh array of what is live, each element copied once, where new segments at
        the end would double the pool and leave the old ones behind for a later compaction."""
        rows = np.asarray(rows, np.int64)
        new_caps, first, length = (np.asarray(a, np.int64) for a in (new_caps, first, length))
        caps = ints[:, off_col + 1]
        if 2 * int(caps[rows].sum()) >= int(caps.sum()):
            all_caps, all_first, all_length = caps.copy(), np.zeros(len(caps), np.int64), caps.copy()
            all_caps[rows], all_first[rows], all_length[rows] = new_caps, first, length
            self._rebuild(ints, off_col, all_caps, all_first, all_length, room=int(all_caps.sum()) // 8)
            return
        base = self.segment(ints, off_col, int(new_caps.sum()))   # may compact: offsets are read after it
        new_offs = base + np.cumsum(new_caps) - new_caps
        old_offs, old_caps = ints[rows, off_col], ints[rows, off_col + 1]
        for col in self.cols:   # the new segments are fresh: they overlap no live one
            _move_rings(_as_rows(col), _as_rows(col), _width(col), old_offs, old_caps, new_offs, new_caps, first, length)
        ints[rows, off_col], ints[rows, off_col + 1] = new_offs, new_caps

    def compact(self, ints: np.ndarray, off_col: int, room: int = 0) -> None:
        """Copy every row's segment to fresh arrays, in row order (drops abandoned segments), leaving
        room for ``room`` more rows (while growing: twice what is live, as a pool grows)."""
        caps = ints[:, off_col + 1].copy()
        total = int(caps.sum())
        self._rebuild(ints, off_col, caps, np.zeros(len(caps), np.int64), caps,
                      room=max(total, room, 64) if room else 0)

    def _rebuild(self, ints, off_col, caps, first, length, room) -> None:
        """Fresh arrays holding every row's ring at capacity caps[r] (its elements first .. first +
        length - 1 kept at the same ring index mod cap), in row order, then ``room`` free rows."""
        old_offs, old_caps = ints[:, off_col].copy(), ints[:, off_col + 1].copy()
        offs = np.cumsum(caps) - caps
        total = int(caps.sum())
        fresh = []
        for c in self.cols:
            out = np.zeros((total + room,) + c.shape[1:], c.dtype)
            _move_rings(_as_rows(c), _as_rows(out), _width(c), old_offs, old_caps, offs, caps, first, length)
            fresh.append(out)
        self.cols = fresh
        self.used = total
        ints[:, off_col], ints[:, off_col + 1] = offs, caps


def check_layout(version, expected: int, what: str) -> None:
    """Refuse a snapshot of another layout by name, with the way out."""
    if version != expected:
        raise ValueError(f"this snapshot holds {what} of layout {version}; this code reads layout {expected}: "
                         "replay the input from its start instead of restoring it")


def _resized(a: np.ndarray, rows: int, used: int | None = None) -> np.ndarray:
    """``a`` with ``rows`` rows: its first ``used`` rows (default all that fit) copied, zeros after.
    Only what is used is copied: the zeros of a fresh array cost no page until written."""
    out = np.zeros((rows,) + a.shape[1:], a.dtype)
    keep = min(rows, a.shape[0]) if used is None else used
    out[:keep] = a[:keep]
    return out


def _width(col: np.ndarray) -> int:
    """Values per row of a pool column."""
    return int(np.prod(col.shape[1:]))


def _as_rows(col: np.ndarray) -> np.ndarray:
    """A pool column flattened (a view); :func:`_move_rings` copies ``width`` values per row."""
    return col.reshape(-1)


@njit(cache=True, nogil=True)
def _move_rings(src, dst, width, offs, caps, new_offs, new_caps, first, length):
    """Copy elements first .. first + length - 1 of each ring (element e at off + e mod cap in ``src``)
    to new_off + e mod new_cap in ``dst``: no index arrays, no temporaries, and a ring's elements in
    at most three contiguous blocks (each ring wraps at most once)."""
    for r in range(offs.shape[0]):
        left = length[r]
        if left == 0:
            continue
        off, cap, new_off, new_cap = offs[r], caps[r], new_offs[r], new_caps[r]
        s, d = first[r] % cap, first[r] % new_cap
        while left > 0:
            n = min(left, cap - s, new_cap - d)
            a, b = (new_off + d) * width, (off + s) * width
            dst[a:a + n * width] = src[b:b + n * width]
            left -= n
            s += n
            if s == cap:
                s = 0
            d += n
            if d == new_cap:
                d = 0


def _ring_index(offs, caps, first, length) -> np.ndarray:
    """Pool positions of elements first .. first + length - 1 of each ring (element e at off + e mod cap)."""
    out = np.empty(int(length.sum()), np.int64)
    _ring_positions(*(np.ascontiguousarray(a, np.int64) for a in (offs, caps, first, length)), out)
    return out


@njit(cache=True, nogil=True)
def _ring_positions(offs, caps, first, length, out):
    k = 0
    for r in range(offs.shape[0]):
        for j in range(length[r]):
            out[k] = offs[r] + (first[r] + j) % caps[r]
            k += 1


@dataclass
class FleetState:
    """Everything the streaming pass carries between calls for one key group.

    Args:
        settings: windows, grids, thresholds and the estimator (fixed for the state's life).
        channels: phase channels C (fixed).

    >>> from operators.params import KairosParams
    >>> s = ResonatorSettings(KairosParams(tau_us=1_000_000), 1_000_000, 10_000, 3_600_000_000, 100_000,
    ...                       0.95, 0.05, 0.1, 0)
    >>> state = FleetState(s, channels=1)
    >>> state.rows_of(np.array([70, 3])).tolist(), state.rows_of(np.array([3])).tolist()
    ([0, 1], [1])
    >>> state.m_layout.slot_bytes, state.most_panes(M_WIN)
    (28, 36004)
    """

    settings: ResonatorSettings
    channels: int
    n: int = 0                                   # sensor rows in use
    ids: np.ndarray = field(default=None)        # sensor id of each row (int64)
    ints: np.ndarray = field(default=None)
    sums: np.ndarray = field(default=None)
    t_master: np.ndarray = field(default=None)
    hist: Pool = field(default=None)             # t, phase, unwrapped phase, velocity, has velocity
    e_panes: Pool = field(default=None)          # S.re, S.im, A (n, 3); packed word
    m_panes: Pool = field(default=None)
    _sorted_ids: np.ndarray = field(default=None, repr=False)
    _sorted_rows: np.ndarray = field(default=None, repr=False)

    def __post_init__(self):
        check_settings(self.settings)
        if self.channels < 1:
            raise ValueError(f"channels must be >= 1, got {self.channels}")
        self.weights = self.settings.params.weight_vector(self.channels)
        s, c = self.settings, self.channels
        self.e_layout = PaneLayout.of(s.emissary_window_us, s.emissary_interval_us)
        self.m_layout = PaneLayout.of(s.master_window_us, s.master_interval_us)
        if self.ids is None:
            self.ids = np.empty(0, np.int64)
            self.ints = np.empty((0, N_INTS), np.int64)
            self.sums = np.empty((0, N_SUMS), np.float64)
            self.t_master = np.empty(0, np.complex128)
            self.hist = Pool([np.empty(0, np.int64), np.empty((0, c)), np.empty((0, c)),
                              np.empty((0, c), np.complex128), np.empty(0, np.bool_)])
            self.e_panes = Pool([np.empty((0, 3)), np.empty(0, self.e_layout.word)])
            self.m_panes = Pool([np.empty((0, 3)), np.empty(0, self.m_layout.word)])
        self._index()

    def __repr__(self) -> str:
        return f"FleetState({self.n} sensors, {self.channels} channels, {self.nbytes():,} bytes)"

    def _rings(self):
        """(pool, offset column) of each ring: the lag history, the Emissary's and the Master's panes."""
        return ((self.hist, H_OFF), (self.e_panes, E_WIN + W_OFF), (self.m_panes, M_WIN + W_OFF))

    # --- sensor rows ---------------------------------------------------------------------------

    def _index(self) -> None:
        order = np.argsort(self.ids[:self.n], kind="stable")
        self._sorted_ids, self._sorted_rows = self.ids[:self.n][order], order.astype(np.int64)

    def rows_of(self, sensor_ids: np.ndarray) -> np.ndarray:
        """The row of each id (distinct ids), adding rows for ids not seen before."""
        pos = np.searchsorted(self._sorted_ids, sensor_ids)
        pos_c = np.minimum(pos, max(self.n - 1, 0))
        known = (pos < self.n) & (self._sorted_ids[pos_c] == sensor_ids) if self.n else np.zeros(len(sensor_ids), bool)
        rows = np.empty(len(sensor_ids), np.int64)
        rows[known] = self._sorted_rows[pos_c[known]]
        new = np.flatnonzero(~known)
        if new.size:
            rows[new] = self._add(sensor_ids[new])
            self._index()
        return rows

    def _add(self, new_ids: np.ndarray) -> np.ndarray:
        k = len(new_ids)
        if self.n + k > self.ids.shape[0]:
            size = max(2 * self.ids.shape[0], self.n + k, 64)   # rows grow in chunks
            self.ids, self.ints, self.sums, self.t_master = (
                _resized(a, size) for a in (self.ids, self.ints, self.sums, self.t_master))
        rows = np.arange(self.n, self.n + k)
        self.ids[rows] = new_ids
        self.n += k
        ints = self.ints
        ints[rows] = 0
        ints[rows, LAST_PT] = ints[rows, T_LAST] = ints[rows, E_WIN + W_NZ] = ints[rows, M_WIN + W_NZ] = NO_TIME
        self.sums[rows] = 0.0
        self.t_master[rows] = 0.0
        for pool, col in self._rings():
            first = 0 if pool is self.m_panes and self.settings.light else FIRST_CAP   # a light node: no Master
            ints[rows, col] = pool.segment(ints[:self.n], col, k * first) + first * np.arange(k)
            ints[rows, col + 1] = first
        return rows

    def release(self, rows: np.ndarray) -> None:
        """Forget the lag chains and windows of sensors the caller is done with, keeping their rows.

        Each row's rings go to capacity 0 (their segments are dropped at the next compaction); its
        id, newest sample time and sync state (collapsed, the Master value and span in force) stay.
        Its next sample starts a new chain, as after a gap over ``max_gap``, with empty windows: for a
        sensor idle longer than every window and ``max_gap``, what comes out is what would have
        without the release.  Sooner, its windows lack the products from before the release.

        Raises:
            ValueError: a row with a grid point still pending (emit it first:
                :func:`operators.columnar_stream.flush_rows`).
        """
        rows = np.asarray(rows, np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.n):
            raise ValueError(f"rows must be in [0, {self.n}), got {rows.min()} .. {rows.max()}")
        i = self.ints
        pending = (i[rows, E_PEND] == 1) | (i[rows, M_PEND] == 1)
        if pending.any():
            r = int(rows[np.argmax(pending)])
            raise ValueError(f"sensor {self.ids[r]} (row {r}) has a grid point pending: flush_rows first")
        for _, col in self._rings():
            i[rows, col] = i[rows, col + 1] = 0
        for col in (N_SEEN, CS, JP, MP, H_LO):
            i[rows, col] = 0
        i[rows, LAST_PT] = NO_TIME
        for base in (E_WIN, M_WIN):
            for col in (W_HEAD, W_LEN, W_N, W_HQ, W_TQ):
                i[rows, base + col] = 0
            i[rows, base + W_NZ] = NO_TIME
        self.sums[rows] = 0.0

    def h_newest(self, rows: np.ndarray) -> np.ndarray:
        """Each row's newest sample time (us); NO_TIME for a row with no samples yet."""
        return self.ints[rows, T_LAST]

    # --- growing a ring ------------------------------------------------------------------------

    def grow_history(self, row: int) -> None:
        """Move the sensor's lag-history ring to a segment twice the size (positions are k mod cap)."""
        r = np.array([row])
        lo, n_seen = self.ints[r, H_LO], self.ints[r, N_SEEN]
        self.hist.relocate(self.ints[:self.n], r, H_OFF, np.maximum(2 * self.ints[r, H_CAP], FIRST_CAP), lo, n_seen - lo)

    def most_panes(self, base: int) -> int:
        """The most slots a window (``base`` E_WIN or M_WIN) needs: (W + I) / P + 3 (PaneLayout.most_slots)."""
        return (self.e_layout if base == E_WIN else self.m_layout).most_slots

    def grow_panes(self, row: int, base: int) -> None:
        """Move a window's ring (``base`` E_WIN or M_WIN) to a segment with room for two more slots: twice
        the size up to what the window can hold, by an eighth past that (a pane may take several slots)."""
        r = np.array([row])
        cap, length = int(self.ints[row, base + W_CAP]), int(self.ints[row, base + W_LEN])
        new_cap = min(max(2 * cap, FIRST_CAP), self.most_panes(base))
        if new_cap < length + 2:
            new_cap = length + 2 + cap // 8
        pool = self.e_panes if base == E_WIN else self.m_panes
        pool.relocate(self.ints[:self.n], r, base + W_OFF, np.array([new_cap]), self.ints[r, base + W_HEAD],
                      self.ints[r, base + W_LEN])

    def reserve(self, rows: np.ndarray, counts: np.ndarray, spans: np.ndarray | None = None) -> None:
        """Before a call bringing counts[i] samples over spans[i] us of event time to rows[i]: grow, in one
        step for all rows, each ring those samples could overflow, to about what they will need: the lag
        history the samples within max(tau, d) of the newest (estimated from the run's rate), a window one
        slot per product up to the panes its span covers.  The kernel grows what the estimate missed.
        Saves a kernel exit and a relocation per growth: a new fleet's rings all grow in its first calls."""
        i = self.ints
        p = self.settings.params
        spans = np.zeros(len(rows), np.int64) if spans is None else np.maximum(spans, 1)
        n_seen, lo, cap = i[rows, N_SEEN], i[rows, H_LO], i[rows, H_CAP]
        reach = max(p.tau_us, p.velocity_span_us)
        in_reach = np.where(spans > reach, np.ceil(counts * (reach / np.maximum(spans, 1))).astype(np.int64) + 3,
                            counts)
        # The ring holds the samples within reach of the newest: about what it holds now, or the run's last ones.
        target = np.maximum(n_seen - lo, np.minimum(counts, in_reach)) + 1
        grow = target > cap
        if grow.any():
            new_cap = 1 << np.ceil(np.log2(np.maximum(target[grow], FIRST_CAP))).astype(np.int64)  # powers of two
            self.hist.relocate(self.ints[:self.n], rows[grow], H_OFF, new_cap, lo[grow], n_seen[grow] - lo[grow])
        windows = ((E_WIN, self.e_panes, self.e_layout), (M_WIN, self.m_panes, self.m_layout))
        for base, pool, layout in windows[:1] if self.settings.light else windows:
            most = layout.most_slots
            cap, length = i[rows, base + W_CAP], i[rows, base + W_LEN]
            # A product opens at most one slot (a jump one more); a run opens at most the panes it spans.
            target = np.minimum(length + np.minimum(counts, spans // layout.pane_us + 2) + 2, most)
            grow = target > cap
            if grow.any():
                r = rows[grow]
                new_cap = np.maximum(target[grow], np.minimum(2 * cap[grow], most))
                pool.relocate(self.ints[:self.n], r, base + W_OFF, new_cap, i[r, base + W_HEAD], length[grow])

    # --- snapshots -----------------------------------------------------------------------------

    def _live(self, off_col: int) -> tuple[np.ndarray, np.ndarray]:
        """Each row's live elements of a ring: the first (as e of off + e mod cap) and how many."""
        i = self.ints[:self.n]
        if off_col == H_OFF:
            return i[:, H_LO], i[:, N_SEEN] - i[:, H_LO]
        return i[:, off_col - W_OFF + W_HEAD], i[:, off_col - W_OFF + W_LEN]

    def __getstate__(self):
        """The rows and each ring's live elements (not its free capacity, not abandoned segments)."""
        state = {k: getattr(self, k) for k in ("settings", "channels", "n")}
        state["version"] = STATE_VERSION
        state.update(ids=self.ids[:self.n].copy(), ints=self.ints[:self.n].copy(), sums=self.sums[:self.n].copy(),
                     t_master=self.t_master[:self.n].copy())
        for name, (pool, col) in zip(("hist", "e_panes", "m_panes"), self._rings()):
            src = _ring_index(self.ints[:self.n, col], self.ints[:self.n, col + 1], *self._live(col))
            state[name] = [c[src] for c in pool.cols]
        return state

    def __setstate__(self, state):
        check_layout(state.pop("version", None), STATE_VERSION, "fleet state")
        live = {k: state.pop(k) for k in ("hist", "e_panes", "m_panes")}
        self.__dict__.update(state)
        for name, col in (("hist", H_OFF), ("e_panes", E_WIN + W_OFF), ("m_panes", M_WIN + W_OFF)):
            caps = self.ints[:, col + 1]
            offs = np.cumsum(caps) - caps
            total = int(caps.sum())
            cols = [np.zeros((total,) + c.shape[1:], c.dtype) for c in live[name]]
            dst = _ring_index(offs, caps, *self._live(col))
            for c, values in zip(cols, live[name]):
                c[dst] = values
            self.ints[:, col] = offs
            setattr(self, name, Pool(cols, total))
        self.__post_init__()

    def compact(self) -> None:
        """Copy every live segment to fresh pools, in row order (drops abandoned segments)."""
        for pool, col in self._rings():
            pool.compact(self.ints[:self.n], col)

    def nbytes(self) -> int:
        """Bytes held by the rows and the live ring segments (capacity, not only live elements)."""
        per_row = (self.ids.itemsize + N_INTS * 8 + N_SUMS * 8 + self.t_master.itemsize)
        total = per_row * self.n
        for pool, col in self._rings():
            total += pool.row_bytes() * int(self.ints[:self.n, col + 1].sum())
        return total
