"""Plain NumPy statement of the fleet pass of :mod:`operators.columnar`, sensor by sensor, for tests.

For each sensor, in the input's order of sensors:

* products: :func:`operators.reference.lag_products` (SPEC 2 steps 1-4);
* grid points: :func:`operators.grid.emission_points` of the sensor's samples (SPEC 3);
* windows: :func:`operators.reference.window_values`, each window summed directly (SPEC 2 step 5);
* sync: :func:`sync_reference`, the Master in force found by ``searchsorted``
  and the state machine as a loop (SPEC 3); on a light node no Master and
  :func:`light_sync_reference`, the runs of :mod:`operators.light_sync` from
  the gaps between products.

Nothing here is fast, and nothing is shared with the kernel but the input checks.
"""

from __future__ import annotations

import numpy as np

from operators import reference
from operators.columnar_rows import (FleetProducts, FleetResonance, FleetSyncValues, FleetWindowValues,
                                     check_settings, fleet_columns)
from operators.grid import WindowValues, emission_points
from operators.params import KairosParams
from operators.resonator import ResonatorSettings
from operators.sync import COLLAPSE, DISSIPATE_COHERENCE, DISSIPATE_PHASE, NONE, SyncValues

__all__ = ["fleet_products_reference", "fleet_resonance_reference", "light_sync_reference", "sync_reference",
           "window_conditioning"]


def _runs(sensor: np.ndarray) -> list[slice]:
    """Each sensor's rows (a contiguous run, checked by ``fleet_columns``)."""
    edges = np.concatenate(([0], np.flatnonzero(np.diff(sensor)) + 1, [sensor.shape[0]]))
    return [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def sync_reference(emissary: WindowValues, master: WindowValues, settings: ResonatorSettings) -> SyncValues:
    """One sensor's sync at each Emissary point g, with the Master of the latest Master point <= g
    (T = 0 and span 0 before the first), SPEC section 3."""
    g, T_e = emissary.t, emissary.T
    latest = np.searchsorted(master.t, g, side="right") - 1
    known = latest >= 0
    T_m = np.where(known, master.T[np.maximum(latest, 0)] if len(master) else 0j, 0j)
    span = np.where(known, master.span_us[np.maximum(latest, 0)] if len(master) else 0, 0).astype(np.int64)
    T_sync = (T_m + T_e) / 2
    coherence = T_sync.real ** 2 + T_sync.imag ** 2
    delta_phase = np.abs(np.abs(T_m) - np.abs(T_e))
    mature = span >= settings.min_span_us
    collapsed, event = _state_machine(coherence, delta_phase, mature, settings)
    return SyncValues(g, T_m, T_e, T_sync, coherence, delta_phase, mature, collapsed, event, span)


def _state_machine(coherence: np.ndarray, delta_phase: np.ndarray, mature: np.ndarray,
                   settings: ResonatorSettings) -> tuple[np.ndarray, np.ndarray]:
    """The hysteresis state machine as a loop: (state after each point, event at each point)."""
    collapsed = np.zeros(coherence.shape[0], np.bool_)
    event = np.zeros(coherence.shape[0], np.int8)
    state = False
    for k in range(coherence.shape[0]):
        e = NONE
        if state and coherence[k] < settings.threshold - settings.hysteresis:
            state, e = False, DISSIPATE_COHERENCE
        elif state and delta_phase[k] >= settings.phase_threshold:
            state, e = False, DISSIPATE_PHASE
        elif not state and mature[k] and coherence[k] >= settings.threshold \
                and delta_phase[k] < settings.phase_threshold:
            state, e = True, COLLAPSE
        collapsed[k], event[k] = state, e
    return collapsed, event


def light_sync_reference(emissary: WindowValues, product_t: np.ndarray, settings: ResonatorSettings) -> SyncValues:
    """One sensor's sync on a light node at each Emissary point g (SPEC section 7, node types): T_sync =
    T_emissary, delta_phase 0, T_master NaN; mature where the window holds a product and the run of
    products (consecutive products at most W apart) in force at g started at least W before it."""
    g, T_e, window = emissary.t, emissary.T, settings.emissary_window_us
    pt = np.asarray(product_t, np.int64)
    starts = np.flatnonzero(np.r_[True, np.diff(pt) > window]) if pt.size else np.empty(0, np.int64)
    # The run of the newest product at or before each g, and where it started.
    newest = np.searchsorted(pt, g, side="right") - 1
    run = np.searchsorted(starts, np.maximum(newest, 0), side="right") - 1
    run_start = pt[starts[np.maximum(run, 0)]] if pt.size else np.zeros(g.shape[0], np.int64)
    mature = (emissary.n_products > 0) & (newest >= 0) & (g - run_start >= window)
    coherence = T_e.real ** 2 + T_e.imag ** 2
    T_m = np.full(g.shape[0], complex(np.nan, np.nan))
    delta_phase = np.zeros(g.shape[0])
    collapsed, event = _state_machine(coherence, delta_phase, mature, settings)
    return SyncValues(g, T_m, T_e, T_e.copy(), coherence, delta_phase, mature, collapsed, event,
                      np.zeros(g.shape[0], np.int64))


def fleet_products_reference(sensor_index, t_us, phase, params: KairosParams) -> FleetProducts:
    """What :func:`operators.columnar.fleet_products` computes, one sensor at a time."""
    sensor, t, ph = fleet_columns(sensor_index, t_us, phase)
    parts = []
    for run in _runs(sensor):
        p = reference.lag_products(t[run], ph[run], params)
        parts.append((np.full(len(p), sensor[run.start], np.int32), *p))
    if not parts:
        return FleetProducts(np.empty(0, np.int32), np.empty(0, np.int64), np.empty(0, np.complex128),
                             np.empty(0, np.float64))
    return FleetProducts(*(np.concatenate(column) for column in zip(*parts)))


def fleet_resonance_reference(sensor_index, t_us, phase, settings: ResonatorSettings) -> FleetResonance:
    """What :func:`operators.columnar.fleet_resonance` computes, one sensor at a time, windows summed directly.

    >>> from operators.params import KairosParams
    >>> settings = ResonatorSettings(KairosParams.from_seconds(0.05, velocity_span=0.01),
    ...     emissary_window_us=200_000, emissary_interval_us=10_000, master_window_us=1_000_000,
    ...     master_interval_us=100_000, threshold=0.95, hysteresis=0.05, phase_threshold=0.1,
    ...     min_span_us=300_000)
    >>> t = np.arange(1, 1001) * 1_000
    >>> out = fleet_resonance_reference(np.zeros(t.size, int), t, 2 * np.pi * 5.0 * t * 1e-6, settings)
    >>> len(out.emissary.t), len(out.master.t), out.sync.event[out.sync.event != 0].tolist()
    (100, 10, [1])
    """
    sensor, t, ph = fleet_columns(sensor_index, t_us, phase)
    settings.params.weight_vector(ph.shape[1])  # the kernel's check: weights for C channels
    check_settings(settings)
    omega = settings.params.omega
    em_parts, ma_parts, sy_parts = [], [], []
    for run in _runs(sensor):
        ts = t[run]
        products = reference.lag_products(ts, ph[run], settings.params)
        em = reference.window_values(products, omega, emission_points(ts, settings.emissary_interval_us),
                                     settings.emissary_window_us)
        if settings.light:
            ma = WindowValues.empty()
            sy = light_sync_reference(em, products.t, settings)
        else:
            ma = reference.window_values(products, omega, emission_points(ts, settings.master_interval_us),
                                         settings.master_window_us)
            sy = sync_reference(em, ma, settings)
        who = sensor[run.start]
        em_parts.append(FleetWindowValues(np.full(len(em), who, np.int32), *em))
        ma_parts.append(FleetWindowValues(np.full(len(ma), who, np.int32), *ma))
        sy_parts.append(FleetSyncValues(em_parts[-1].sensor, *sy))
    return FleetResonance(_concat(FleetWindowValues, em_parts, _WINDOW_DTYPES),
                          _concat(FleetWindowValues, ma_parts, _WINDOW_DTYPES),
                          _concat(FleetSyncValues, sy_parts, _SYNC_DTYPES))


# The kernel's column types, for an input without rows.
_WINDOW_DTYPES = (np.int32, np.int64, np.complex128, np.int64, np.int64)
_SYNC_DTYPES = (np.int32, np.int64, np.complex128, np.complex128, np.complex128, np.float64, np.float64, np.bool_,
                np.bool_, np.int8, np.int64)


def _concat(kind, parts: list, dtypes: tuple):
    if not parts:
        return kind(*(np.empty(0, d) for d in dtypes))
    return kind(*(np.concatenate(column) for column in zip(*parts)))


def window_conditioning(products: FleetProducts, sensor: np.ndarray, t: np.ndarray, window_us: int) -> np.ndarray:
    """Per row (``sensor``, grid point ``t``): the sensor's sum of |p| dt over every product up to t,
    divided by A, the sum over the window (t - window, t] (1 where A = 0).

    The one pass takes a window's sums as differences of running sums over the whole stream, so
    its rounding error is about ``eps * conditioning`` relative to A, where the engine's panes sum
    only the window: the two agree to 1e-12 on well-scaled data, but a window of small products
    after large ones (rates that jump by orders of magnitude) loses digits.  Tests allow that.
    """
    out = np.ones(t.shape[0])
    for s in np.unique(sensor):
        mine = products.sensor == s
        tp = products.t[mine]
        cum = np.concatenate([[0.0], np.cumsum(np.abs(products.p[mine]) * products.dt[mine])])
        rows = np.flatnonzero(sensor == s)
        hi = np.searchsorted(tp, t[rows], side="right")
        lo = np.searchsorted(tp, t[rows] - window_us, side="right")
        a = cum[hi] - cum[lo]
        out[rows] = np.where(a > 0, cum[hi] / np.where(a > 0, a, 1.0), 1.0)
    return out
