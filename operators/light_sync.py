"""The light node's sync: collapse decided on the Emissary alone (SPEC section 7, node types).

A ``light`` node (``becomingone.node: light``) runs the intake and the
Emissary but no Master: no Master panes are allocated or integrated, which
is what makes it fit an edge device (a full node's Master holds about 1 MB
per sensor, a light node's whole state is under 2 KB at 10 Hz; see
docs/pipeline.md).  Without a Master the sync of SPEC section 3 is decided
on the Emissary alone, on each Emissary grid point g:

* ``T_sync = T_emissary``, coherence ``|T_emissary|^2``;
* ``delta_phase = 0``: the phase rule compares two transducers, and with
  one there is nothing to disagree.  It is also the value of the full
  formula with the Master replaced by the Emissary itself,
  ``||T_e| - |T_e|| = 0`` (as ``(T_e + T_e) / 2 = T_e`` is T_sync), so the
  state machine (:func:`operators.sync.sync_step`) is the full node's, and
  the value stays a finite number where the wire formats need one.  A light
  node therefore never dissipates with reason ``phase``;
* ``T_master`` is NaN (``coherence_history/``'s ``coherence_master`` holds
  NaN; the topics' ``t_master`` and ``events/``' ``t_master_re/_im`` are
  null), and the span of the Master in force is 0.

Maturity.  The full node waits until the Master's products span
``master.min_span``.  The light node waits until the Emissary *spans its
window*, which needs a definition: a window of length W holds the products
with g - W < t_k <= g, so newest minus oldest is always below W.  Instead:

* the Emissary's products fall into *runs*: a product starts a new run
  when it is the sensor's first or comes more than W after the product
  before it: a run breaks exactly where the window ran empty (SPEC 2's
  chains play no part).  Within a run, every window ending between its
  first and its last product holds a product;
* the Emissary is **mature at g** when its window holds a product and the
  current run started at least W before g: ``n_products > 0`` and
  ``g - run_start >= W``.  The window (g - W, g] then lies wholly inside
  the run: it has been full once, and it has not run empty since.

So the first products after a start or a pause (one product alone always
has |T| = 1) cannot collapse the sensor.  Every engine computes the run
start from the product times only (:func:`run_start_after`), so the
per-sensor chain, the key group's columnar engine and the offline pass give
the same maturity whatever the split into calls.

>>> import numpy as np
>>> from operators.grid import WindowValues
>>> sync = EmissarySync(threshold=0.9, hysteresis=0.05, phase_threshold=0.1, window_us=100)
>>> em = WindowValues(np.array([100, 150, 200]), np.array([1.0 + 0j, 1.0 + 0j, 0.5 + 0j]),
...                   np.array([3, 4, 4]), np.array([60, 80, 80]))
>>> out = sync.advance(em, product_t=np.array([40, 80, 120, 140, 190]))
>>> out.mature.tolist(), out.event.tolist()     # mature at 150 (run from 40); collapse, then dissipate
([False, True, True], [0, 1, 2])
>>> out.delta_phase.tolist(), bool(np.isnan(out.T_master).all())
([0.0, 0.0, 0.0], True)
"""

from __future__ import annotations

import numpy as np
from numba import njit

from operators.grid import WindowValues
from operators.sync import SyncValues, sync_step

__all__ = ["NO_PRODUCT", "EmissarySync", "emissary_mature", "run_start_after"]

#: "No product yet": the newest product time of a sensor that has none (int64 microseconds).
NO_PRODUCT = np.iinfo(np.int64).min


@njit(cache=True, nogil=True, inline="always")
def run_start_after(run_start, last_product, t, window):
    """The start of the Emissary's current run once a product at ``t`` is integrated
    (``last_product``: the product before it, or :data:`NO_PRODUCT`; ``window``: W, us)."""
    if last_product == NO_PRODUCT or t - last_product > window:
        return t
    return run_start


@njit(cache=True, nogil=True, inline="always")
def emissary_mature(n_products, g, run_start, window):
    """A light node's maturity at grid point g: the window holds a product and its run started
    at least W before g (see the module docstring)."""
    return n_products > 0 and g - run_start >= window


@njit(cache=True, nogil=True)
def _light_sync_kernel(g, em_T, em_n, pt, window, run_start, last_product, threshold, hysteresis, phase_threshold,
                       collapsed, out_T_master, out_T_sync, out_coh, out_dphase, out_mature, out_state, out_event,
                       out_span):
    """Decide Emissary points ``g`` (all final) with the products ``pt`` of the same call merged in
    time order; returns (run start, newest product, state) after every product of the call."""
    no_master = complex(np.nan, np.nan)
    j = 0
    for k in range(g.shape[0]):
        while j < pt.shape[0] and pt[j] <= g[k]:
            run_start = run_start_after(run_start, last_product, pt[j], window)
            last_product = pt[j]
            j += 1
        te = em_T[k]
        coh = te.real * te.real + te.imag * te.imag
        mature = emissary_mature(em_n[k], g[k], run_start, window)
        collapsed, event = sync_step(collapsed, coh, 0.0, mature, threshold, hysteresis, phase_threshold)
        out_T_master[k] = no_master
        out_T_sync[k] = te
        out_coh[k] = coh
        out_dphase[k] = 0.0
        out_mature[k] = mature
        out_state[k] = collapsed
        out_event[k] = event
        out_span[k] = 0
    while j < pt.shape[0]:   # products after the last point decided now: points to come see them
        run_start = run_start_after(run_start, last_product, pt[j], window)
        last_product = pt[j]
        j += 1
    return run_start, last_product, collapsed


class EmissarySync:
    """One sensor's sync on a light node: the state machine on the Emissary alone.

    Args:
        threshold: I_c (``kairos.coherence_threshold``).
        hysteresis: ``sync.hysteresis``.
        phase_threshold: ``sync.phase_threshold`` (never reached: delta_phase is 0).
        window_us: W, ``emissary.tau_max`` in microseconds (maturity, runs).
    """

    def __init__(self, threshold: float, hysteresis: float, phase_threshold: float, window_us: int) -> None:
        self.threshold = float(threshold)
        self.hysteresis = float(hysteresis)
        self.phase_threshold = float(phase_threshold)
        self.window_us = int(window_us)
        self.collapsed = False
        self.run_start = NO_PRODUCT
        self.last_product = NO_PRODUCT

    @property
    def waiting(self) -> int:
        """Emissary points held back: none, there is no Master to wait for."""
        return 0

    def advance(self, emissary: WindowValues, product_t: np.ndarray) -> SyncValues:
        """Decide the Emissary points of a call (final, time order) given the call's products
        (their times, all after earlier calls' products and at or before the call's watermark)."""
        n = len(emissary)
        out = SyncValues(emissary.t, np.empty(n, np.complex128), emissary.T, np.empty(n, np.complex128),
                         np.empty(n, np.float64), np.empty(n, np.float64), np.empty(n, np.bool_),
                         np.empty(n, np.bool_), np.empty(n, np.int8), np.empty(n, np.int64))
        self.run_start, self.last_product, self.collapsed = _light_sync_kernel(
            np.ascontiguousarray(emissary.t, np.int64), np.ascontiguousarray(emissary.T, np.complex128),
            np.ascontiguousarray(emissary.n_products, np.int64), np.ascontiguousarray(product_t, np.int64),
            self.window_us, self.run_start, self.last_product, self.threshold, self.hysteresis,
            self.phase_threshold, self.collapsed, out.T_master, out.T_sync, out.coherence_sync, out.delta_phase,
            out.mature, out.collapsed, out.event, out.master_span_us)
        return out
