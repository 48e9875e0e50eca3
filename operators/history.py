"""A growable, compactable history buffer: parallel arrays with a live range [lo, hi).

Streaming states (lag history, the Emissary's window) append at ``hi`` and
drop from ``lo``.  :func:`make_room` keeps appends amortised O(1): it shifts
the live range to the front, and doubles the capacity only when the shift
would free less than half of it.
"""

from __future__ import annotations

import numpy as np

__all__ = ["live_copy", "make_room"]


def make_room(arrays: list[np.ndarray], lo: int, hi: int, n_new: int) -> int:
    """Ensure ``arrays`` (same first-axis length) can take ``n_new`` more rows at ``hi``.

    The list is updated in place (entries may be replaced by larger arrays).

    Returns:
        The shift applied to positions: subtract it from every stored index
        (``lo`` becomes ``lo - shift`` etc.).  0 when nothing moved.
    """
    cap = arrays[0].shape[0]
    if hi + n_new <= cap:
        return 0
    live = hi - lo
    new_cap = cap
    if live + n_new > cap // 2:
        new_cap = max(64, 2 * cap, 2 * (live + n_new))
    for i, src in enumerate(arrays):
        if new_cap != cap:
            dst = np.empty((new_cap,) + src.shape[1:], src.dtype)
            dst[:live] = src[lo:hi]
            arrays[i] = dst
        else:
            src[:live] = src[lo:hi]  # numpy copies overlapping ranges safely
    return lo


def live_copy(arrays: list[np.ndarray], lo: int, hi: int) -> list[np.ndarray]:
    """Compact copies of the live rows, for snapshots."""
    return [a[lo:hi].copy() for a in arrays]
