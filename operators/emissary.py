"""The Emissary: an exact sliding window over lag products (SPEC section 2 step 5, section 3).

At each grid point g the Emissary reports

    T(g) = S / A,  S = sum p_k exp(i omega t_k) dt_k,  A = sum |p_k| dt_k

over the products with g - W < t_k <= g (t_k in seconds since the epoch for
the kernel phase, W = ``emissary.tau_max``).  It holds the products of one
window (about W * sample rate of them) and keeps S and A as running sums.

Running sums drift when values are added and later subtracted.  The kernel
re-sums the live window from scratch after as many evictions as the window
holds, so every value carries the rounding of at most two windows' worth of
updates (amortised O(1) per product); the tests hold it to full recomputation
within 1e-9 after 10^7 products.  The rebuild points depend only on the data,
never on batch boundaries, so the values are bit-identical for any batching.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from operators.grid import WindowValues, check_advance
from operators.history import live_copy, make_room
from operators.lag import Products, window_term
from operators.master import MasterWindow

__all__ = ["EmissaryWindow", "emissary_window"]

_NO_LIMIT = np.iinfo(np.int64).max


@njit(cache=True, nogil=True)
def _evict(bt, bc, ba, lo, hi, limit, s_re, s_im, a_sum, evicted):
    """Drop products with t <= limit; re-sum after a window's worth of evictions."""
    while lo < hi and bt[lo] <= limit:
        s_re -= bc[lo].real
        s_im -= bc[lo].imag
        a_sum -= ba[lo]
        lo += 1
        evicted += 1
    if lo == hi:
        s_re = 0.0
        s_im = 0.0
        a_sum = 0.0
        evicted = 0
    elif evicted >= max(hi - lo, 64):
        s_re = 0.0
        s_im = 0.0
        a_sum = 0.0
        for k in range(lo, hi):
            s_re += bc[k].real
            s_im += bc[k].imag
            a_sum += ba[k]
        evicted = 0
    return lo, s_re, s_im, a_sum, evicted


@njit(cache=True, nogil=True)
def _emissary_kernel(bt, bc, ba, ist, fst, pt, pp, pdt, omega, window, grid,
                     out_T, out_n, out_span):
    """Merge products and grid points in time order (a product at t == g is in g's window).

    ``ist`` = [lo, hi, evictions since rebuild], ``fst`` = [S.re, S.im, A]; both updated.
    """
    lo, hi, evicted = ist[0], ist[1], ist[2]
    s_re, s_im, a_sum = fst[0], fst[1], fst[2]
    n_prod = pt.shape[0]
    n_grid = grid.shape[0]
    i = 0
    for q in range(n_grid + 1):
        limit = grid[q] if q < n_grid else _NO_LIMIT
        while i < n_prod and pt[i] <= limit:
            tk = pt[i]
            # No later grid point can see a product older than tk - W.
            lo, s_re, s_im, a_sum, evicted = _evict(bt, bc, ba, lo, hi, tk - window,
                                                    s_re, s_im, a_sum, evicted)
            c, a = window_term(tk, pp[i], pdt[i], omega)
            bt[hi] = tk
            bc[hi] = c
            ba[hi] = a
            hi += 1
            s_re += c.real
            s_im += c.imag
            a_sum += a
            i += 1
        if q == n_grid:
            break
        g = grid[q]
        lo, s_re, s_im, a_sum, evicted = _evict(bt, bc, ba, lo, hi, g - window,
                                                s_re, s_im, a_sum, evicted)
        n = hi - lo
        out_n[q] = n
        out_span[q] = bt[hi - 1] - bt[lo] if n > 0 else 0
        out_T[q] = complex(s_re, s_im) / a_sum if a_sum > 0.0 else 0j
    ist[0], ist[1], ist[2] = lo, hi, evicted
    fst[0], fst[1], fst[2] = s_re, s_im, a_sum


def emissary_window(window_us: int, interval_us: int, omega: float = 0.0) -> "EmissaryWindow | MasterWindow":
    """The Emissary's window for ``emissary.tau_max`` and ``emissary.witness_interval``.

    When W is a whole multiple of the interval (the default: 1 s and 0.01 s),
    every window (g - W, g] at a grid point g is exactly a union of W / I
    intervals, so the pane window of the Master gives the same sums, counts
    and spans as the exact sliding window (values agree to rounding, about
    1e-15) at about half the cost per product.  Otherwise the exact sliding
    window is used.

    >>> type(emissary_window(1_000_000, 10_000)).__name__, type(emissary_window(1_000_000, 30_000)).__name__
    ('MasterWindow', 'EmissaryWindow')
    """
    if window_us > 0 and interval_us > 0 and window_us % interval_us == 0:
        return MasterWindow(window_us, interval_us, omega)
    return EmissaryWindow(window_us, omega)


class EmissaryWindow:
    """Exact sliding-window resonance over a sensor's lag products.

    Args:
        window_us: window length W in microseconds (``emissary.tau_max``).
        omega: kernel angular frequency in rad/s (``kairos.omega``).

    Call :meth:`advance` with each new batch of products and the grid points
    that are now final; products after the last grid point are kept for the
    next call.  State is plain arrays: it pickles with only the live window.

    >>> import numpy as np
    >>> from operators.lag import Products, window_term
    >>> em = EmissaryWindow(window_us=1_000_000)
    >>> t = np.arange(1, 201) * 10_000                   # products every 10 ms
    >>> p = np.full(200, 2.0 + 0j)
    >>> out = em.advance(Products(t, p, np.full(200, 0.01)), at=np.array([1_000_000, 2_000_000]))
    >>> out.coherence.round(12).tolist(), out.n_products.tolist()
    ([1.0, 1.0], [100, 100])
    """

    def __init__(self, window_us: int, omega: float = 0.0) -> None:
        if window_us <= 0:
            raise ValueError(f"window must be positive, got {window_us} us")
        self.window_us = int(window_us)
        self.omega = float(omega)
        self._t = np.empty(64, np.int64)
        self._c = np.empty(64, np.complex128)
        self._a = np.empty(64, np.float64)
        self._ist = np.zeros(3, np.int64)  # lo, hi, evictions since rebuild
        self._fst = np.zeros(3, np.float64)  # S.re, S.im, A
        self._last_product: int | None = None
        self._last_at: int | None = None

    @property
    def n_products(self) -> int:
        """Products currently held (those a future window can still contain)."""
        return int(self._ist[1] - self._ist[0])

    @property
    def last_emitted(self) -> int | None:
        """The newest grid point reported so far (us), or None."""
        return self._last_at

    def advance(self, products: Products, at: np.ndarray, *, validate: bool = True) -> WindowValues:
        """Integrate ``products`` and report the window at each grid point of ``at``.

        Args:
            products: new products, later than every earlier one.
            at: grid points (int64 us), strictly increasing, after the last
                reported one and not before any product of earlier calls.

        Returns:
            The window values at ``at``; each includes exactly the products
            (earlier or in this batch) with g - W < t_k <= g.
        """
        g = check_advance(products, at, self._last_product, self._last_at) if validate else at
        n = len(products)
        arrays = [self._t, self._c, self._a]
        shift = make_room(arrays, int(self._ist[0]), int(self._ist[1]), n)
        self._t, self._c, self._a = arrays
        self._ist[0] -= shift
        self._ist[1] -= shift
        out_T = np.empty(g.shape[0], np.complex128)
        out_n = np.empty(g.shape[0], np.int64)
        out_span = np.empty(g.shape[0], np.int64)
        _emissary_kernel(self._t, self._c, self._a, self._ist, self._fst,
                         np.ascontiguousarray(products.t, np.int64),
                         np.ascontiguousarray(products.p, np.complex128),
                         np.ascontiguousarray(products.dt, np.float64),
                         self.omega, self.window_us, g, out_T, out_n, out_span)
        if n:
            self._last_product = int(products.t[-1])
        if g.size:
            self._last_at = int(g[-1])
        return WindowValues(g, out_T, out_n, out_span)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        lo, hi = int(self._ist[0]), int(self._ist[1])
        state["_t"], state["_c"], state["_a"] = live_copy([self._t, self._c, self._a], lo, hi)
        state["_ist"] = np.array([0, hi - lo, self._ist[2]], np.int64)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
