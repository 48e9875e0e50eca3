"""The carried state of the streaming fleet pass (:mod:`operators.columnar_stream`): arrays, no logic.

A key group's sensors are rows of a structure of arrays.  Per sensor:

* ``ints[row]`` (int64, columns named below): chain state (samples seen, chain
  start, the velocity and lag pointers j and m as absolute sample numbers), the
  segment of the lag-history pool the sensor owns (offset, capacity, oldest
  sample kept), the newest product time, the pending Emissary and Master grid
  points, both pane windows (pool offset, capacity, head, length, products in
  the window, newest product with a nonzero weight) and the sync state
  (collapsed, span of the Master in force, us);
* ``sums[row]`` (float64): both windows' running sums S.re, S.im, A, each a
  compensated pair (hi, lo);
* ``t_master[row]`` (complex128): T of the Master point in force for the sync.

Variable-length parts live in pools, one contiguous ring segment per sensor:

* the lag history (t, phase, unwrapped phase, velocity, has-velocity): the
  samples from the older of the pointers j and m to the newest, which is all
  later products can look at (pointers only move forward within a chain);
* the panes of each window: a pane is the products with t in ((q - 1) P, q P],
  P = gcd(W, I), so every window (g - W, g] on the grid is a whole number of
  panes.  Only nonempty panes are stored: a slow sensor uses memory in
  proportion to its products, a fast one to W / P.  A pane keeps its first
  product time (the window span needs the oldest product), its product count
  and its compensated sums, 64 bytes.

Measured (one sensor, one channel, default windows: Emissary 1 s at 0.01 s,
Master 3600 s at 0.1 s, tau 1 s, d 0.1 s; after more than an hour, compacted):
10 Hz 2.31 MB and 1 kHz 2.35 MB, of which the Master's 36,001 panes (ring of
36,003) are 2.30 MB and the lag history 42 KB at 1 kHz (1,024 samples of 41
bytes); 1 Hz with tau 5 s 263 KB (3,601 panes in a ring of 4,096).  The pane's
compensated pair is what keeps a window exact after a large product leaves;
the rest of a sensor's row is 344 bytes.

A ring that is full is moved to a segment of twice its size at the end of its
pool; the abandoned segments of a sensor add up to less than its live one, so
a pool is at most about twice what is live.  :meth:`FleetState.__getstate__`
pickles the pools compacted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from operators.columnar_rows import check_settings
from operators.resonator import ResonatorSettings

# Columns of FleetState.ints.
N_SEEN, CS, JP, MP, H_OFF, H_CAP, H_LO, LAST_PT, E_PEND, E_G, M_PEND, M_G = range(12)
E_WIN, M_WIN = 12, 19           # a window's columns: base + OFF, CAP, HEAD, LEN, N, NZ_T, END
W_OFF, W_CAP, W_HEAD, W_LEN, W_N, W_NZ, W_END = range(7)
COLLAPSED, SPAN_IN = 26, 27
N_INTS = 28
E_SUMS, M_SUMS = 0, 6           # a window's six columns of FleetState.sums
NO_TIME = np.iinfo(np.int64).min
FIRST_CAP = 4                   # first ring capacity of a sensor (doubled as needed)
STATE_VERSION = 1               # of the pickled layout; a snapshot of another layout is refused by name


def pane_width(window_us: int, interval_us: int) -> int:
    """P = gcd(W, I) (us): windows (g - W, g] at grid points g = n I are whole panes of width P."""
    return math.gcd(int(window_us), int(interval_us))


@dataclass
class Pool:
    """A pool of ring segments: ``cols`` arrays with the same first axis; ``used`` rows handed out."""

    cols: list[np.ndarray]
    used: int = 0

    def take(self, n: int) -> int:
        """A fresh segment of n rows at the end (the arrays grow geometrically); returns its offset."""
        if self.used + n > self.cols[0].shape[0]:
            size = max(2 * self.cols[0].shape[0], self.used + n, 64)
            self.cols = [_resized(c, size) for c in self.cols]
        off = self.used
        self.used += n
        return off


def _resized(a: np.ndarray, rows: int) -> np.ndarray:
    out = np.zeros((rows,) + a.shape[1:], a.dtype)
    out[:min(rows, a.shape[0])] = a[:rows]
    return out


@dataclass
class FleetState:
    """Everything the streaming pass carries between calls for one key group.

    Args:
        settings: windows, grids, thresholds and the estimator (fixed for the state's life).
        channels: phase channels C (fixed).
    """

    settings: ResonatorSettings
    channels: int
    n: int = 0                                   # sensor rows in use
    ids: np.ndarray = field(default=None)        # sensor id of each row (int64)
    ints: np.ndarray = field(default=None)
    sums: np.ndarray = field(default=None)
    t_master: np.ndarray = field(default=None)
    hist: Pool = field(default=None)             # t, phase, unwrapped phase, velocity, has velocity
    e_panes: Pool = field(default=None)          # first product time, count, sums (6)
    m_panes: Pool = field(default=None)
    _sorted_ids: np.ndarray = field(default=None, repr=False)
    _sorted_rows: np.ndarray = field(default=None, repr=False)

    def __post_init__(self):
        check_settings(self.settings)
        if self.channels < 1:
            raise ValueError(f"channels must be >= 1, got {self.channels}")
        self.weights = self.settings.params.weight_vector(self.channels)
        c = self.channels
        if self.ids is None:
            self.ids = np.empty(0, np.int64)
            self.ints = np.empty((0, N_INTS), np.int64)
            self.sums = np.empty((0, 12), np.float64)
            self.t_master = np.empty(0, np.complex128)
            self.hist = Pool([np.empty(0, np.int64), np.empty((0, c)), np.empty((0, c)),
                              np.empty((0, c), np.complex128), np.empty(0, np.bool_)])
            self.e_panes = _pane_pool()
            self.m_panes = _pane_pool()
        self._index()

    def __repr__(self) -> str:
        return f"FleetState({self.n} sensors, {self.channels} channels, {self.nbytes():,} bytes)"

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
        ints = self.ints
        ints[rows] = 0
        ints[rows, LAST_PT] = NO_TIME
        for pool, col in ((self.hist, H_OFF), (self.e_panes, E_WIN + W_OFF), (self.m_panes, M_WIN + W_OFF)):
            ints[rows, col] = pool.take(k * FIRST_CAP) + FIRST_CAP * np.arange(k)
            ints[rows, col + 1] = FIRST_CAP
        ints[rows, E_WIN + W_NZ] = ints[rows, M_WIN + W_NZ] = NO_TIME
        self.sums[rows] = 0.0
        self.t_master[rows] = 0.0
        self.n += k
        return rows

    def h_newest(self, rows: np.ndarray) -> np.ndarray:
        """Each row's newest sample time (us); meaningless for a row with no samples yet."""
        i = self.ints[rows]
        return self.hist.cols[0][i[:, H_OFF] + (i[:, N_SEEN] - 1) % i[:, H_CAP]]

    # --- growing a ring ------------------------------------------------------------------------

    def grow_history(self, row: int) -> None:
        """Move the sensor's lag-history ring to a segment twice the size (positions are k mod cap)."""
        r = np.array([row])
        lo, n_seen = self.ints[r, H_LO], self.ints[r, N_SEEN]
        self._relocate(self.hist, r, H_OFF, 2 * self.ints[r, H_CAP], lo, n_seen - lo, modular=True)

    def most_panes(self, base: int) -> int:
        """The most panes a window (``base`` E_WIN or M_WIN) can hold: those of (g - W, g] and of the
        interval after g, whose samples arrive before g is due, (W + I) / P + 1, plus one to spare."""
        s = self.settings
        window, interval = ((s.emissary_window_us, s.emissary_interval_us) if base == E_WIN
                            else (s.master_window_us, s.master_interval_us))
        return (window + interval) // pane_width(window, interval) + 2

    def grow_panes(self, row: int, base: int) -> None:
        """Move a window's pane ring (``base`` E_WIN or M_WIN) to a segment twice the size (at most what the
        window can hold), head at 0."""
        r = np.array([row])
        cap = int(self.ints[row, base + W_CAP])
        new_cap = np.array([max(min(2 * cap, self.most_panes(base)), cap + 1)])
        self._relocate(self.e_panes if base == E_WIN else self.m_panes, r, base + W_OFF, new_cap,
                       self.ints[r, base + W_HEAD], self.ints[r, base + W_LEN], modular=False)
        self.ints[row, base + W_HEAD] = 0

    def reserve(self, rows: np.ndarray, counts: np.ndarray) -> None:
        """Before a call bringing counts[i] samples to rows[i]: grow, in one step for all rows, each
        ring that a short run of samples could overflow, doubling it (the kernel grows the rest one at
        a time, as it needs).  Saves a kernel exit per growth: a new fleet's rings all grow in its first calls."""
        i = self.ints
        n_seen, lo = i[rows, N_SEEN], i[rows, H_LO]
        cap = i[rows, H_CAP]
        # Only for short runs (a sensor's samples of a call fit in its ring): those are a fleet's, where
        # a kernel exit per growth costs most; live + counts overstates what a long run needs.
        grow = (n_seen - lo + counts > cap) & (counts <= cap)
        if grow.any():
            r = rows[grow]
            first, length = lo[grow], n_seen[grow] - lo[grow]
            self._relocate(self.hist, r, H_OFF, 2 * cap[grow], first, length, modular=True)
        for base, pool in ((E_WIN, self.e_panes), (M_WIN, self.m_panes)):
            most = self.most_panes(base)
            cap, length = i[rows, base + W_CAP], i[rows, base + W_LEN]
            grow = (length + counts > cap) & (counts <= cap) & (cap < most)
            if grow.any():
                r = rows[grow]
                self._relocate(pool, r, base + W_OFF, np.minimum(2 * cap[grow], most), i[r, base + W_HEAD],
                               length[grow], modular=False)
                i[r, base + W_HEAD] = 0

    def _relocate(self, pool: Pool, rows, off_col, new_caps, first, length, modular: bool) -> None:
        """Copy each row's ring to a new segment of new_caps: elements first .. first + length - 1 of the
        old ring (position off + e mod cap) to new_off + e mod new_cap (``modular``) or new_off + 0, 1, ..."""
        i = self.ints
        offs, caps = i[rows, off_col], i[rows, off_col + 1]
        base = pool.take(int(new_caps.sum()))
        new_offs = base + np.concatenate(([0], np.cumsum(new_caps)[:-1])).astype(np.int64)
        total = int(length.sum())
        if total:
            which = np.repeat(np.arange(len(rows)), length)
            j = np.arange(total) - np.repeat(np.cumsum(length) - length, length)
            e = first[which] + j
            src = offs[which] + e % caps[which]
            dst = new_offs[which] + (e % new_caps[which] if modular else j)
            for col in pool.cols:
                col[dst] = col[src]
        i[rows, off_col], i[rows, off_col + 1] = new_offs, new_caps

    # --- snapshots -----------------------------------------------------------------------------

    def __getstate__(self):
        """The live rows and ring segments only, compacted (abandoned segments are not pickled)."""
        self.compact()
        keep = ("settings", "channels", "n")
        state = {k: getattr(self, k) for k in keep}
        state["version"] = STATE_VERSION
        state.update(ids=self.ids[:self.n].copy(), ints=self.ints[:self.n].copy(), sums=self.sums[:self.n].copy(),
                     t_master=self.t_master[:self.n].copy(),
                     hist=[c[:self.hist.used] for c in self.hist.cols],
                     e_panes=[c[:self.e_panes.used] for c in self.e_panes.cols],
                     m_panes=[c[:self.m_panes.used] for c in self.m_panes.cols])
        return state

    def __setstate__(self, state):
        version = state.pop("version", None)
        if version != STATE_VERSION:
            raise ValueError(f"this snapshot holds fleet state of layout {version}; this code reads layout "
                             f"{STATE_VERSION}: replay the input from its start instead of restoring it")
        pools = {k: state.pop(k) for k in ("hist", "e_panes", "m_panes")}
        self.__dict__.update(state)
        for name, cols in pools.items():
            setattr(self, name, Pool(cols, len(cols[0])))
        self.__post_init__()

    def compact(self) -> None:
        """Copy every live segment to fresh pools, in row order (drops abandoned segments)."""
        for pool, base in ((self.hist, H_OFF), (self.e_panes, E_WIN + W_OFF), (self.m_panes, M_WIN + W_OFF)):
            old, caps = self.ints[:self.n, base], self.ints[:self.n, base + 1]
            new = np.cumsum(caps) - caps
            total = int(caps.sum())
            src = np.arange(total, dtype=np.int64) + np.repeat(old - new, caps)   # each segment's rows, in order
            pool.cols = [c[src] for c in pool.cols]
            pool.used = total
            self.ints[:self.n, base] = new

    def nbytes(self) -> int:
        """Bytes held by the live rows and ring segments (what a snapshot holds)."""
        per_row = self.ids.itemsize + self.ints[0:1].nbytes + self.sums[0:1].nbytes + self.t_master.itemsize \
            if self.ints.shape[0] else 0
        total = per_row * self.n
        for pool, base in ((self.hist, H_OFF), (self.e_panes, E_WIN + W_OFF), (self.m_panes, M_WIN + W_OFF)):
            row_bytes = sum(c[0:1].nbytes for c in pool.cols) if pool.cols[0].shape[0] else 0
            total += row_bytes * int(self.ints[:self.n, base + 1].sum())
        return total


def _pane_pool() -> Pool:
    return Pool([np.empty(0, np.int64), np.empty(0, np.int64), np.empty((0, 6), np.float64)])
