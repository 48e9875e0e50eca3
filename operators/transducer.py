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

from operators.grid import WindowValues, emission_points
from operators.lag import Products

__all__ = ["Transducer"]


class _Window(Protocol):
    def advance(self, products: Products, at: np.ndarray) -> WindowValues: ...


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
        due = emission_points(sample_t_us, self.interval_us)
        if self._pending.size:
            # Both sorted and unique; a plain join unless they overlap.
            if due.size and self._pending[-1] < due[0]:
                due = np.concatenate([self._pending, due])
            else:
                due = np.union1d(self._pending, due)
        split = due.size if watermark_us is None else int(np.searchsorted(due, watermark_us, side="right"))
        self._pending = due[split:]
        return self.window.advance(products, due[:split])

    def flush(self) -> WindowValues:
        """End of input: emit every pending grid point."""
        return self.push(Products.empty(), np.empty(0, np.int64), None)
