"""The mesh's sequential passes over final grid points (SPEC section 7), as Numba kernels.

* :func:`scan_cells`: per cell (or the global mesh), in grid order, the
  windowed mesh coherence R2(g) = mean of r^2 over (g - window, g] and the
  collapse state machine with hysteresis (SPEC section 3's rule on R2): a
  cell collapses when its rows span the window (its first grid point is at
  least ``window - interval`` before g) and R2 >= threshold; it dissipates
  when R2 < threshold - hysteresis.
* :func:`scan_locks`: per sensor, in grid order, the unit phasor of its
  phase relative to the cell's mean field, u_P conj(Z) / |u_P conj(Z)|,
  summed in panes of ``publish`` length, and at each publish point the lock
  |mean over the window| (SPEC section 7).

Both keep their state in arrays (a ring of window slots per cell, a ring of
panes per sensor), so a batch of grid points split into any calls ends in
the same values.  :func:`scan_cells_reference` and :func:`scan_locks_reference`
state the same with NumPy over a whole record.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["NO_EVENT", "MESH_COLLAPSE", "MESH_DISSIPATE", "scan_cells", "scan_cells_reference", "scan_locks",
           "scan_locks_reference"]

NO_EVENT, MESH_COLLAPSE, MESH_DISSIPATE = 0, 1, 2
_NONE = np.iinfo(np.int64).min


@njit(cache=True, nogil=True)
def scan_cells(idx, g, r2, ring_g, ring_v, first_g, collapsed, window, interval, threshold, hysteresis):
    """R2 and transitions of rows (cell index, grid point, r^2), each cell's rows in grid order.

    State (updated): ``ring_g``/``ring_v`` (cells, window // interval) the last window's r^2 by slot,
    ``first_g`` (cells) each cell's first grid point, ``collapsed`` (cells) int8.
    Returns (R2 per row, event per row, collapsed after the row).
    """
    n = idx.shape[0]
    slots = ring_g.shape[1]
    r2w = np.empty(n)
    event = np.zeros(n, np.int8)
    state = np.zeros(n, np.int8)
    for i in range(n):
        c = idx[i]
        slot = (g[i] // interval) % slots
        ring_g[c, slot] = g[i]
        ring_v[c, slot] = r2[i]
        if first_g[c] == _NONE:
            first_g[c] = g[i]
        total = 0.0
        count = 0
        for k in range(slots):
            if ring_g[c, k] > g[i] - window and ring_g[c, k] <= g[i]:
                total += ring_v[c, k]
                count += 1
        mean = total / count
        r2w[i] = mean
        if collapsed[c] == 0:
            if g[i] - first_g[c] >= window - interval and mean >= threshold:
                collapsed[c] = 1
                event[i] = MESH_COLLAPSE
        elif mean < threshold - hysteresis:
            collapsed[c] = 0
            event[i] = MESH_DISSIPATE
        state[i] = collapsed[c]
    return r2w, event, state


@njit(cache=True, nogil=True)
def scan_locks(sidx, g, rel, pane_id, pane_sum, pane_n, publish, publish_only):
    """Each row's lock at publish points (NaN elsewhere): rows (sensor index, grid point, unit phasor),
    each sensor's rows in grid order.

    State (updated): ``pane_id``/``pane_sum``/``pane_n`` (sensors, window // publish): pane j holds the
    phasors of grid points in (j * publish - publish, j * publish].
    """
    n = sidx.shape[0]
    panes = pane_id.shape[1]
    lock = np.full(n, np.nan)
    for i in range(n):
        s = sidx[i]
        j = -((-g[i]) // publish)        # ceil(g / publish): the pane ending at or after g
        slot = j % panes
        if pane_id[s, slot] != j:
            pane_id[s, slot] = j
            pane_sum[s, slot] = 0.0
            pane_n[s, slot] = 0
        pane_sum[s, slot] += rel[i]
        pane_n[s, slot] += 1
        if g[i] % publish == 0 or not publish_only:
            total = 0.0 + 0.0j
            count = 0
            for k in range(panes):
                if pane_id[s, k] > j - panes and pane_id[s, k] <= j:
                    total += pane_sum[s, k]
                    count += pane_n[s, k]
            lock[i] = abs(total) / count
    return lock


def scan_cells_reference(g: np.ndarray, r2: np.ndarray, window: int, interval: int, threshold: float,
                         hysteresis: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One cell's whole record (grid points ascending): R2 by direct window means, then the state machine."""
    r2w = np.array([r2[(g > x - window) & (g <= x)].mean() for x in g])
    event = np.zeros(len(g), np.int8)
    state = np.zeros(len(g), np.int8)
    on = False
    for i, x in enumerate(g):
        if not on and x - g[0] >= window - interval and r2w[i] >= threshold:
            on, event[i] = True, MESH_COLLAPSE
        elif on and r2w[i] < threshold - hysteresis:
            on, event[i] = False, MESH_DISSIPATE
        state[i] = on
    return r2w, event, state


def scan_locks_reference(g: np.ndarray, rel: np.ndarray, window: int, publish: int) -> np.ndarray:
    """One sensor's whole record: at each publish point g, |mean of rel over the panes of (g - window, g]|."""
    lock = np.full(len(g), np.nan)
    pane = -((-g) // publish)
    for i, x in enumerate(g):
        if x % publish == 0:
            inside = (pane > pane[i] - window // publish) & (pane <= pane[i]) & (g <= x)
            lock[i] = abs(rel[inside].mean())
    return lock
