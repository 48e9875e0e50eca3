"""The sync: join Emissary and Master by event time and decide collapse and dissipation.

SPEC section 3.  For each Emissary grid point g of a sensor, with the Master
state of the latest Master grid point G <= g:

    T_sync      = (T_master + T_emissary) / 2
    delta_phase = | |T_master| - |T_emissary| |

and a two-state machine with hysteresis:

* DISSIPATED -> COLLAPSED when the Master is mature (its products span at
  least ``master.min_span``), |T_sync|^2 >= I_c and delta_phase < phase_threshold;
* COLLAPSED -> DISSIPATED when |T_sync|^2 < I_c - hysteresis (reason
  ``coherence``) or delta_phase >= phase_threshold (reason ``phase``).

Emissary and Master values reach the sync as separate streams, and their
relative arrival order is not defined.  So the join is by event time: an
Emissary point g is decided only once the Master's watermark has reached g,
because after that no Master grid point <= g can still arrive.  Until then
it waits in a buffer.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from operators.grid import WindowValues, no_rows

__all__ = ["COLLAPSE", "DISSIPATE_COHERENCE", "DISSIPATE_PHASE", "SyncMachine", "SyncValues"]

NONE, COLLAPSE, DISSIPATE_COHERENCE, DISSIPATE_PHASE = 0, 1, 2, 3


@njit(cache=True, nogil=True)
def sync_step(collapsed, coh, dphase, mature, threshold, hysteresis, phase_threshold):
    """One point of the state machine: (state after it, event at it).  Every kernel that
    decides collapse calls this one, so the rule has one home."""
    if collapsed:
        if coh < threshold - hysteresis:
            return False, DISSIPATE_COHERENCE
        if dphase >= phase_threshold:
            return False, DISSIPATE_PHASE
        return True, NONE
    if mature and coh >= threshold and dphase < phase_threshold:
        return True, COLLAPSE
    return False, NONE


@njit(cache=True, nogil=True)
def _hysteresis(coh, dphase, mature, threshold, hysteresis, phase_threshold, collapsed, out_state, out_event):
    """Run the state machine over the points; returns the final state."""
    for k in range(coh.shape[0]):
        collapsed, event = sync_step(collapsed, coh[k], dphase[k], mature[k], threshold, hysteresis, phase_threshold)
        out_state[k] = collapsed
        out_event[k] = event
    return collapsed


@njit(cache=True, nogil=True)
def _sync_kernel(g, em_T, ma_t, ma_T, ma_span, carried_T, carried_span, threshold, hysteresis, phase_threshold,
                 min_span_us, collapsed, out_T_master, out_T_sync, out_coh, out_dphase, out_mature, out_state,
                 out_event, out_span):
    """Decide Emissary points ``g``: Master value in force (latest Master point <= g, else the
    one carried over), T_sync, coherence, delta_phase, maturity, then the state machine.

    Returns (Master points used up, the Master value and span now in force, the state).
    """
    j = 0  # Master points before j are <= the current g
    T_in, span_in = carried_T, carried_span
    for k in range(g.shape[0]):
        while j < ma_t.shape[0] and ma_t[j] <= g[k]:
            T_in = ma_T[j]
            span_in = ma_span[j]
            j += 1
        te = em_T[k]
        ts = (T_in + te) / 2
        out_T_master[k] = T_in
        out_T_sync[k] = ts
        out_coh[k] = ts.real * ts.real + ts.imag * ts.imag
        out_dphase[k] = abs(abs(T_in) - abs(te))
        out_mature[k] = span_in >= min_span_us
        out_span[k] = span_in
    collapsed = _hysteresis(out_coh, out_dphase, out_mature, threshold, hysteresis, phase_threshold, collapsed,
                            out_state, out_event)
    return j, T_in, span_in, collapsed


class SyncValues(NamedTuple):
    """The sync at a run of Emissary grid points.

    Attributes:
        t: int64 grid points g (us).
        T_master, T_emissary, T_sync: complex128.
        coherence_sync: |T_sync|^2.
        delta_phase: | |T_master| - |T_emissary| |.
        mature: bool, Master mature at g.
        collapsed: bool, state after g.
        event: int8, NONE / COLLAPSE / DISSIPATE_COHERENCE / DISSIPATE_PHASE at g.
        master_span_us: int64, newest minus oldest product time in the Master's window.
    """

    t: np.ndarray
    T_master: np.ndarray
    T_emissary: np.ndarray
    T_sync: np.ndarray
    coherence_sync: np.ndarray
    delta_phase: np.ndarray
    mature: np.ndarray
    collapsed: np.ndarray
    event: np.ndarray
    master_span_us: np.ndarray

    def __len__(self) -> int:
        return int(self.t.shape[0])

    @classmethod
    def empty(cls) -> "SyncValues":
        """No decided points (one shared, read-only instance).

        >>> len(SyncValues.empty()), SyncValues.empty().event.dtype.name
        (0, 'int8')
        """
        return _NO_DECISIONS

    def select(self, mask: np.ndarray) -> "SyncValues":
        """The grid points where ``mask`` is true (or at an index array / slice)."""
        return SyncValues(*(column[mask] for column in self))


# A call that decides no grid point returns this (shared, read-only) instead of new arrays.
_NO_DECISIONS = SyncValues(no_rows(np.int64), no_rows(np.complex128), no_rows(np.complex128),
                           no_rows(np.complex128), no_rows(np.float64), no_rows(np.float64), no_rows(np.bool_),
                           no_rows(np.bool_), no_rows(np.int8), no_rows(np.int64))


class SyncMachine:
    """One sensor's sync: Emissary/Master join by event time plus the collapse state machine.

    Args:
        threshold: I_c (``kairos.coherence_threshold``).
        hysteresis: ``sync.hysteresis``.
        phase_threshold: ``sync.phase_threshold``.
        min_span_us: ``master.min_span`` in microseconds.

    >>> import numpy as np
    >>> from operators.grid import WindowValues
    >>> sync = SyncMachine(threshold=0.95, hysteresis=0.05, phase_threshold=0.1, min_span_us=10)
    >>> em = WindowValues(np.array([10, 20]), np.array([1.0 + 0j, 0.5 + 0j]), np.array([5, 5]), np.array([9, 9]))
    >>> ma = WindowValues(np.array([10]), np.array([0.99 + 0j]), np.array([50]), np.array([40]))
    >>> out = sync.advance(em, ma, master_watermark=20)
    >>> out.event.tolist()                      # collapse at 10, dissipate (coherence) at 20
    [1, 2]
    """

    def __init__(self, threshold: float, hysteresis: float, phase_threshold: float, min_span_us: int) -> None:
        self.threshold = float(threshold)
        self.hysteresis = float(hysteresis)
        self.phase_threshold = float(phase_threshold)
        self.min_span_us = int(min_span_us)
        self.collapsed = False
        self._em = WindowValues.empty()  # Emissary points waiting for the Master watermark
        self._ma = WindowValues.empty()  # Master points not yet superseded
        # The Master state in force: latest Master point decided so far.
        self._ma_T = 0j
        self._ma_span = 0

    @property
    def waiting(self) -> int:
        """Emissary grid points buffered until the Master's watermark reaches them."""
        return len(self._em)

    def advance(self, emissary: WindowValues, master: WindowValues, master_watermark: int | None) -> SyncValues:
        """Add new Emissary and Master values; decide every Emissary point <= the Master watermark.

        Args:
            emissary: new Emissary values (time order, after earlier ones).
            master: new Master values (time order, after earlier ones).
            master_watermark: the Master's watermark (us); None means end of
                input, so every buffered point is decided.
        """
        em = emissary if not len(self._em) else WindowValues.concat([self._em, emissary])
        ma = master if not len(self._ma) else WindowValues.concat([self._ma, master])
        g = em.t
        cut = g.shape[0] if master_watermark is None else int(np.searchsorted(g, master_watermark, side="right"))
        if cut == 0:  # nothing to decide yet: keep what came, decide nothing
            self._em, self._ma = em, ma
            return _NO_DECISIONS
        self._em = em.select(slice(cut, None))
        out = SyncValues(g[:cut], np.empty(cut, np.complex128), em.T[:cut], np.empty(cut, np.complex128),
                         np.empty(cut, np.float64), np.empty(cut, np.float64), np.empty(cut, np.bool_),
                         np.empty(cut, np.bool_), np.empty(cut, np.int8), np.empty(cut, np.int64))
        used, self._ma_T, self._ma_span, self.collapsed = _sync_kernel(
            g[:cut], em.T, ma.t, ma.T, ma.span_us, self._ma_T, self._ma_span, self.threshold, self.hysteresis,
            self.phase_threshold, self.min_span_us, self.collapsed, out.T_master, out.T_sync, out.coherence_sync,
            out.delta_phase, out.mature, out.collapsed, out.event, out.master_span_us)
        # Keep only the Master points later decisions can still use.
        self._ma = ma if used == 0 else ma.select(slice(used, None))
        return out
