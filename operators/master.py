"""The Master: a pane-based window over lag products whose memory does not grow with the rate.

The Master integrates the same sums as the Emissary (SPEC section 2 step 5)
over a long window W (``master.tau_max``, default one hour) and reports them on
its grid g = n * P (P = ``master.witness_interval``).  Holding an hour of
samples at 10 kHz would take gigabytes per sensor, so it keeps one *pane* per
emission interval instead (SPEC section 3): pane q holds the partial sums of
the products with qP - P < t_k <= qP,

    S_re, S_im, A  (float64, 24 bytes)  +  product count and first-product
    offset packed in one uint32 (4 bytes)  =  28 bytes per pane,

in a ring of K = W / P panes (W must be a whole multiple of P).  A window
(g - W, g] with g on the grid is then exactly the union of the K newest panes,
so the Master equals the exact sliding window at every grid point; it only
gives up answering between grid points.

The sum over closed panes is kept as a running total: a pane is added once
when the next pane opens and subtracted once when it leaves the ring; the
total is re-summed from the ring after K evictions, which bounds the rounding
drift at amortised O(1) cost.  The first-product offset gives the exact
oldest product time for the maturity rule (``master.min_span``).

Packing: the offset of the first product in its pane is in (0, P], so it
needs ``b = P.bit_length()`` bits (17 for the default 0.1 s pane); the count
takes the other 32 - b bits (up to 32,767 products per 0.1 s pane, i.e.
327 kHz).  Should a pane ever need more, the window switches once to a
64-bit word per pane (count in the high 32 bits), before the kernel runs, so
counts are always exact.  An hour of 0.1 s panes is 1,008,000 bytes
(0.96 MiB) packed.
"""

from __future__ import annotations

import mmap

import numpy as np
from numba import njit

from operators.grid import WindowValues, check_advance
from operators.lag import Products, window_term

__all__ = ["MasterWindow"]

_NONE = -(2 ** 62)  # "no pane" sentinel for head and oldest pane ids


def _ring(k: int, meta_dtype: type) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Zeroed pane arrays (S_re, S_im, A float64; meta words) whose memory is only backed once written.

    They are carved from one anonymous memory map: the operating system hands
    out zero pages lazily, so a ring costs only the pages of the panes a sensor
    has used so far (still at most its fixed size), and thousands of sensors
    with short histories fit in memory.  ``np.zeros`` of this size may instead
    come from the heap and be cleared byte by byte, all of it, at once.
    """
    words = np.dtype(meta_dtype).itemsize
    size = 3 * 8 * k + words * k
    if size < 1 << 16:  # a few pages: the heap is cheaper than a map of its own
        return np.zeros(k), np.zeros(k), np.zeros(k), np.zeros(k, meta_dtype)
    buffer = mmap.mmap(-1, size)
    sre, sim, sa = (np.frombuffer(buffer, np.float64, k, offset=i * 8 * k) for i in range(3))
    return sre, sim, sa, np.frombuffer(buffer, meta_dtype, k, offset=3 * 8 * k)
_NO_LIMIT = np.iinfo(np.int64).max
_NO_VALUES = WindowValues.empty()
# Zero-length (so never written) but writable: what the kernel gets when no grid point is due.
_NO_OUTPUT = (np.empty(0, np.int64), np.empty(0, np.complex128), np.empty(0, np.int64), np.empty(0, np.int64))

# ist layout: [head pane id, oldest non-empty pane id, products in window,
#              newest product t, panes evicted since the last re-sum]
_HEAD, _OLDEST, _COUNT, _NEWEST, _EVICTED = 0, 1, 2, 3, 4


@njit(cache=True, nogil=True)
def _open_pane(q, n_panes, sre, sim, sa, meta, shift, ist, tot):
    """Make pane ``q`` the head: close the old head, evict panes that leave (q - K, q]."""
    head = ist[_HEAD]
    if head == _NONE:
        ist[_HEAD] = q
        return
    if q <= head:
        return
    s = head % n_panes
    if q - head >= n_panes:
        # The whole ring leaves the window: an exact reset.
        sre[:] = 0.0
        sim[:] = 0.0
        sa[:] = 0.0
        meta[:] = 0
        tot[0] = 0.0
        tot[1] = 0.0
        tot[2] = 0.0
        ist[_COUNT] = 0
        ist[_OLDEST] = _NONE
        ist[_EVICTED] = 0
        ist[_HEAD] = q
        return
    # Close the old head: from now on it is part of the running total.
    tot[0] += sre[s]
    tot[1] += sim[s]
    tot[2] += sa[s]
    for qid in range(head + 1, q + 1):
        s = qid % n_panes  # this slot held pane qid - K, which now leaves the window
        if meta[s] != 0:  # a pane with products has count >= 1, so a non-zero word
            tot[0] -= sre[s]
            tot[1] -= sim[s]
            tot[2] -= sa[s]
            ist[_COUNT] -= np.int64(meta[s]) >> shift
            ist[_EVICTED] += 1
            sre[s] = 0.0
            sim[s] = 0.0
            sa[s] = 0.0
            meta[s] = 0
    ist[_HEAD] = q
    oldest = ist[_OLDEST]
    if oldest != _NONE and oldest <= q - n_panes:
        oldest = _NONE
        for qid in range(q - n_panes + 1, q + 1):
            if meta[qid % n_panes] != 0:
                oldest = qid
                break
        ist[_OLDEST] = oldest
    if ist[_COUNT] == 0:
        tot[0] = 0.0
        tot[1] = 0.0
        tot[2] = 0.0
        ist[_EVICTED] = 0
    elif ist[_EVICTED] >= n_panes:
        tot[0] = 0.0
        tot[1] = 0.0
        tot[2] = 0.0
        hs = q % n_panes
        for k in range(n_panes):
            if k != hs:
                tot[0] += sre[k]
                tot[1] += sim[k]
                tot[2] += sa[k]
        ist[_EVICTED] = 0


@njit(cache=True, nogil=True)
def _master_kernel(sre, sim, sa, meta, shift, ist, tot, pane, pt, pp, pdt, omega, grid,
                   out_T, out_n, out_span):
    mask = (np.int64(1) << shift) - 1
    n_panes = sre.shape[0]
    n_prod = pt.shape[0]
    n_grid = grid.shape[0]
    i = 0
    # The open pane (pid*P - P, pid*P]: products inside it skip the division and the ring update.
    pid = np.int64(_NONE)
    pane_end = np.int64(_NONE)
    s = 0
    for q in range(n_grid + 1):
        limit = grid[q] if q < n_grid else _NO_LIMIT
        while i < n_prod and pt[i] <= limit:
            tk = pt[i]
            if tk > pane_end or tk <= pane_end - pane:
                pid = -((-tk) // pane)  # ceil(t / P)
                pane_end = pid * pane
                _open_pane(pid, n_panes, sre, sim, sa, meta, shift, ist, tot)
                s = pid % n_panes
            c, a = window_term(tk, pp[i], pdt[i], omega)
            sre[s] += c.real
            sim[s] += c.imag
            sa[s] += a
            word = np.int64(meta[s])
            if word == 0:
                word = tk - (pid * pane - pane)  # first product: its offset in (0, P]
                if ist[_OLDEST] == _NONE:
                    ist[_OLDEST] = pid
            meta[s] = word + (np.int64(1) << shift)  # count + 1
            ist[_COUNT] += 1
            ist[_NEWEST] = tk
            i += 1
        if q == n_grid:
            break
        gid = grid[q] // pane
        _open_pane(gid, n_panes, sre, sim, sa, meta, shift, ist, tot)
        pane_end = np.int64(_NONE)  # the ring may have moved: look the next pane up again
        hs = gid % n_panes
        s_re = tot[0] + sre[hs]
        s_im = tot[1] + sim[hs]
        a_sum = tot[2] + sa[hs]
        n = ist[_COUNT]
        out_n[q] = n
        if n > 0:
            oq = ist[_OLDEST]
            out_span[q] = ist[_NEWEST] - (oq * pane - pane + (np.int64(meta[oq % n_panes]) & mask))
        else:
            out_span[q] = 0
        out_T[q] = complex(s_re, s_im) / a_sum if a_sum > 0.0 else 0j


class MasterWindow:
    """Pane-based long-window resonance with memory O(W / P), independent of sample rate.

    Args:
        window_us: window W in microseconds (``master.tau_max``).
        pane_us: pane width P = emission interval in microseconds
            (``master.witness_interval``); W must be a whole multiple of P.
        omega: kernel angular frequency in rad/s (``kairos.omega``).

    Grid points passed to :meth:`advance` must be multiples of P.  State is
    plain arrays (28 bytes per pane), picklable for recovery.

    >>> import numpy as np
    >>> from operators.lag import Products, window_term
    >>> master = MasterWindow(window_us=3_600_000_000, pane_us=100_000)
    >>> master.state_bytes // master.n_panes
    28
    >>> t = np.arange(1, 101) * 10_000
    >>> out = master.advance(Products(t, np.full(100, 1j), np.full(100, 0.01)), at=np.array([1_000_000]))
    >>> round(float(out.coherence[0]), 12), int(out.n_products[0]), int(out.span_us[0])
    (1.0, 100, 990000)
    """

    def __init__(self, window_us: int, pane_us: int, omega: float = 0.0) -> None:
        if pane_us <= 0 or pane_us > np.iinfo(np.int32).max:
            raise ValueError(f"pane width must be in (0, 2^31) us, got {pane_us}")
        if window_us <= 0 or window_us % pane_us:
            raise ValueError(
                f"window ({window_us} us) must be a positive whole multiple of the pane width ({pane_us} us)"
            )
        self.window_us = int(window_us)
        self.pane_us = int(pane_us)
        self.omega = float(omega)
        k = self.window_us // self.pane_us
        # S_re, S_im, A per pane, and count << shift | first-product offset in one word
        # per pane (see the module docstring).
        self._shift = max(1, self.pane_us.bit_length())
        self._sre, self._sim, self._sa, self._meta = _ring(k, np.uint32 if self._shift < 32 else np.uint64)
        self._ist = np.array([_NONE, _NONE, 0, 0, 0], np.int64)
        self._tot = np.zeros(3, np.float64)
        self._last_product: int | None = None
        self._last_at: int | None = None

    @property
    def n_panes(self) -> int:
        """K = W / P, the number of panes in the ring."""
        return int(self._sre.shape[0])

    @property
    def state_bytes(self) -> int:
        """Bytes of numeric state held: fixed by W / P, not by the sample rate."""
        arrays = (self._sre, self._sim, self._sa, self._meta, self._ist, self._tot)
        return int(sum(a.nbytes for a in arrays))

    @property
    def last_emitted(self) -> int | None:
        """The newest grid point reported so far (us), or None."""
        return self._last_at

    def _fit_counts(self, t_us: np.ndarray) -> None:
        """Widen the pane words once, before any pane's count could outgrow its bits."""
        if self._shift == 32 or not t_us.shape[0]:  # 64-bit words already, or nothing new
            return
        capacity = (2 ** 32 - 1) >> self._shift
        head = int(self._ist[_HEAD])
        held = 0 if head == _NONE else int(self._meta[head % self._meta.shape[0]]) >> self._shift
        # New products go to the head pane or later ones, so no count can exceed
        # held + n: the common case needs no look at the times at all.
        if held + len(t_us) <= capacity:
            return
        pid = -((-np.asarray(t_us, np.int64)) // self.pane_us)
        # Products are in time order: the largest count is the longest run of one pane id.
        edges = np.flatnonzero(np.diff(pid)) + 1
        runs = np.diff(np.concatenate(([0], edges, [pid.size])))
        if pid[0] != head:
            held = 0
        if max(int(runs.max()), int(runs[0]) + held) > capacity:
            first = self._meta.astype(np.uint64) & np.uint64((1 << self._shift) - 1)
            count = self._meta.astype(np.uint64) >> np.uint64(self._shift)
            self._meta = (count << np.uint64(32)) | first
            self._shift = 32

    def advance(self, products: Products, at: np.ndarray, *, validate: bool = True) -> WindowValues:
        """Integrate ``products`` and report the window at each grid point of ``at``.

        Same contract as :meth:`operators.emissary.EmissaryWindow.advance`; in
        addition every grid point must be a multiple of the pane width.
        ``validate=False`` skips the checks, for callers whose inputs hold by
        construction (a :class:`~operators.transducer.Transducer`).
        """
        if not validate:
            g = at
        else:
            g = check_advance(products, at, self._last_product, self._last_at)
        if validate and g.size and np.any(g % self.pane_us):
            bad = int(g[np.argmax(g % self.pane_us != 0)])
            raise ValueError(f"grid point {bad} us is not a multiple of the pane width {self.pane_us} us")
        self._fit_counts(products.t)
        if g.shape[0]:
            out_T = np.empty(g.shape[0], np.complex128)
            out_n = np.empty(g.shape[0], np.int64)
            out_span = np.empty(g.shape[0], np.int64)
        else:  # most calls reach no grid point: nothing to allocate
            g, out_T, out_n, out_span = _NO_OUTPUT
        if validate:
            products = Products(np.ascontiguousarray(products.t, np.int64),
                                np.ascontiguousarray(products.p, np.complex128),
                                np.ascontiguousarray(products.dt, np.float64))
        _master_kernel(self._sre, self._sim, self._sa, self._meta, self._shift, self._ist, self._tot,
                       self.pane_us, products.t, products.p, products.dt, self.omega, g, out_T, out_n, out_span)
        if len(products):
            self._last_product = int(products.t[-1])
        if not g.shape[0]:
            return _NO_VALUES
        self._last_at = int(g[-1])
        return WindowValues(g, out_T, out_n, out_span)

    def _live_slots(self) -> np.ndarray:
        """Ring slots of panes oldest..head: every other slot is all zeros."""
        head, oldest = int(self._ist[_HEAD]), int(self._ist[_OLDEST])
        if head == _NONE:
            return np.empty(0, np.int64)
        first = head if oldest == _NONE else oldest
        return np.arange(first, head + 1, dtype=np.int64) % self._meta.shape[0]

    def __getstate__(self) -> dict:
        # A snapshot holds the panes from the oldest one with products to the head,
        # not the whole ring: a sensor an hour old pickles its ~1 MB, a young one little.
        state = self.__dict__.copy()
        slots = self._live_slots()
        state["_ring_panes"] = self._meta.shape[0]
        state["_meta_dtype"] = self._meta.dtype.str
        for name in ("_sre", "_sim", "_sa", "_meta"):
            state[name] = getattr(self, name)[slots]
        return state

    def __setstate__(self, state: dict) -> None:
        if "_ring_panes" not in state:  # a snapshot of the whole ring (earlier versions)
            self.__dict__.update(state)
            return
        k = state.pop("_ring_panes")
        dtype = np.dtype(state.pop("_meta_dtype"))
        live = {name: state.pop(name) for name in ("_sre", "_sim", "_sa", "_meta")}
        self.__dict__.update(state)
        self._sre, self._sim, self._sa, self._meta = _ring(k, dtype.type)
        slots = self._live_slots()
        for name, values in live.items():
            getattr(self, name)[slots] = values
