"""The epoch-aligned emission grid and the values a transducer emits on it.

A transducer with witness interval I emits at g = n * I (n integer, epoch
aligned) for every grid point whose half-open interval (g - I, g] holds at
least one sample of the sensor (SPEC section 3).  The state emitted is T over
the window (g - W, g].
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from operators.lag import Products

__all__ = ["WindowValues", "check_advance", "emission_points", "no_rows"]


class WindowValues(NamedTuple):
    """A transducer's state at a run of grid points.

    Attributes:
        t: int64 grid points g in microseconds.
        T: complex128 resonance T = S / A over (g - W, g] (0 with no products).
        n_products: int64 number of products in the window.
        span_us: int64 newest minus oldest product time in the window (0 if
            fewer than two products) - what Master maturity is judged on.
    """

    t: np.ndarray
    T: np.ndarray
    n_products: np.ndarray
    span_us: np.ndarray

    @property
    def coherence(self) -> np.ndarray:
        """|T|^2, in [0, 1]."""
        return self.T.real ** 2 + self.T.imag ** 2

    def __len__(self) -> int:
        return int(self.t.shape[0])

    @classmethod
    def empty(cls) -> "WindowValues":
        """No grid points (one shared, read-only instance)."""
        return _NO_VALUES

    @classmethod
    def concat(cls, parts: "list[WindowValues]") -> "WindowValues":
        """The grid points of ``parts`` one after the other."""
        if not parts:
            return cls.empty()
        if len(parts) == 1:
            return parts[0]
        return cls(*(np.concatenate(column) for column in zip(*parts)))

    def select(self, mask: np.ndarray) -> "WindowValues":
        """The grid points where ``mask`` is true (or at an index array / slice)."""
        return WindowValues(*(column[mask] for column in self))


def emission_points(t_us: np.ndarray, interval_us: int) -> np.ndarray:
    """The grid points n * interval whose interval (g - I, g] holds a sample.

    Args:
        t_us: sample times, int64 microseconds, sorted ascending.
        interval_us: witness interval I in microseconds, > 0.

    Returns:
        Sorted unique int64 grid points, ceil(t / I) * I for each sample.

    >>> emission_points(np.array([5, 10, 11, 35]), 10).tolist()
    [10, 20, 40]
    """
    if interval_us <= 0:
        raise ValueError(f"interval must be positive, got {interval_us} us")
    t = np.asarray(t_us, dtype=np.int64)
    g = -((-t) // interval_us) * interval_us  # ceil division, exact for negative t too
    if g.size < 2:
        return g
    keep = np.empty(g.shape[0], np.bool_)
    keep[0] = True
    np.not_equal(g[1:], g[:-1], out=keep[1:])
    return g[keep]


def check_advance(products: "Products", at: np.ndarray, last_product: int | None,
                  last_at: int | None) -> np.ndarray:
    """Shared argument checks of the transducers' ``advance``: time order across calls."""
    g = np.ascontiguousarray(at, dtype=np.int64)
    if g.ndim != 1:
        raise ValueError(f"grid points must be 1-D, got shape {g.shape}")
    if g.size > 1 and np.any(np.diff(g) <= 0):
        raise ValueError("grid points must be strictly increasing")
    if g.size and last_at is not None and g[0] <= last_at:
        raise ValueError(f"grid point {g[0]} us is not after the last emitted one ({last_at} us)")
    if g.size and last_product is not None and g[0] < last_product:
        raise ValueError(
            f"grid point {g[0]} us is before an already integrated product ({last_product} us): "
            "products must be passed together with the grid points they precede"
        )
    pt = products.t
    if pt.size:
        if np.any(np.diff(pt) <= 0):
            raise ValueError("product times must be strictly increasing")
        if last_product is not None and pt[0] <= last_product:
            raise ValueError(f"product at {pt[0]} us is not after the last one ({last_product} us)")
        if last_at is not None and pt[0] <= last_at:
            raise ValueError(f"product at {pt[0]} us is not after the last emitted grid point ({last_at} us)")
    return g


def no_rows(dtype: type) -> np.ndarray:
    """A zero-length, read-only array: shared by the values of calls that produce nothing."""
    a = np.empty(0, dtype)
    a.flags.writeable = False
    return a


# Most calls of a transducer emit nothing: they share this value instead of allocating one each.
_NO_VALUES = WindowValues(no_rows(np.int64), no_rows(np.complex128), no_rows(np.int64), no_rows(np.int64))
