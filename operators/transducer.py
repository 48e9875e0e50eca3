"""A transducer: a window (Emissary or Master) driven by its emission grid and a watermark.

SPEC section 3: a transducer with witness interval I emits T at grid point
g = n * I for every g whose interval (g - I, g] holds a sample of the sensor,
once the sensor's watermark has reached g.  :class:`Transducer` keeps the grid
points that are due but not yet final, and hands the window every batch of
products together with the grid points that became final, so each emitted
value is exactly T over (g - W, g].
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from numba import njit

from operators.grid import WindowValues
from operators.lag import Products

__all__ = ["Transducer"]


_ALL = np.iinfo(np.int64).max  # "no watermark": every due point is final


@njit(cache=True, nogil=True)
def _due_points(sample_t, interval, pending, watermark):
    """The pending grid points merged with those of ``sample_t`` (sorted, unique:
    ``emission_points`` of the samples), and how many are <= ``watermark``."""
    out = np.empty(pending.shape[0] + sample_t.shape[0], np.int64)
    n = 0
    i = 0
    last = np.int64(0)
    for k in range(sample_t.shape[0] + 1):
        if k < sample_t.shape[0]:
            g = -((-sample_t[k]) // interval) * interval  # ceil to the grid, exact for negative t too
        # Pending points before g (all of them after the last sample) go first.
        while i < pending.shape[0] and (k == sample_t.shape[0] or pending[i] < g):
            if n == 0 or pending[i] != last:
                last = pending[i]
                out[n] = last
                n += 1
            i += 1
        if k < sample_t.shape[0] and (n == 0 or g != last):
            last = g
            out[n] = g
            n += 1
    split = 0
    while split < n and out[split] <= watermark:
        split += 1
    return out[:n], split


class _Window(Protocol):
    def advance(self, products: Products, at: np.ndarray, *, validate: bool = True) -> WindowValues: ...


class Transducer:
    """Drive ``window`` on the epoch-aligned grid of ``interval_us``.

    Args:
        window: an :class:`~operators.emissary.EmissaryWindow` or
            :class:`~operators.master.MasterWindow`.
        interval_us: witness interval I in microseconds.

    >>> import numpy as np
    >>> from operators.emissary import EmissaryWindow
    >>> from operators.lag import Products
    >>> em = Transducer(EmissaryWindow(1_000_000), interval_us=10_000)
    >>> out = em.push(Products.empty(), sample_t_us=np.array([5_000, 12_000]), watermark_us=12_000)
    >>> out.t.tolist(), em.flush().t.tolist()     # 20 ms is due but not final until flushed
    ([10000], [20000])
    """

    def __init__(self, window: _Window, interval_us: int) -> None:
        if interval_us <= 0:
            raise ValueError(f"interval must be positive, got {interval_us} us")
        self.window = window
        self.interval_us = int(interval_us)
        self._pending = np.empty(0, np.int64)

    @property
    def pending(self) -> np.ndarray:
        """Grid points that have samples but are later than the watermark."""
        return self._pending

    def push(self, products: Products, sample_t_us: np.ndarray, watermark_us: int | None) -> WindowValues:
        """Integrate products; emit every due grid point <= ``watermark_us``.

        Args:
            products: the products of the samples just integrated (all <= watermark).
            sample_t_us: times of those samples (sorted); they make grid points due.
            watermark_us: the sensor's watermark; grid points up to it are final.
                None: end of input, every due grid point is final.
        """
        limit = _ALL if watermark_us is None else watermark_us
        due, split = _due_points(np.asarray(sample_t_us, np.int64), self.interval_us, self._pending, limit)
        self._pending = due[split:]
        # Products come from LagState (strictly increasing, after earlier ones) and the
        # grid points from emission_points: the window need not check them again.
        return self.window.advance(products, due[:split], validate=False)

    def flush(self) -> WindowValues:
        """End of input: emit every pending grid point."""
        return self.push(Products.empty(), np.empty(0, np.int64), None)
