"""KAIROS resonance of a whole fleet of sensors in one Numba pass (SPEC sections 2 and 3), offline.

:func:`fleet_resonance` takes the final samples of many sensors as columns,

    sensor_index  int32 (n,)    which sensor a row belongs to (any ids >= 0)
    t_us          int64 (n,)    event time, microseconds since the epoch
    phase         float64 (n, C) radians, any wrapping; one channel count C for every row

with the rows grouped by sensor (each sensor's rows one contiguous run, in
any order of sensors) and strictly increasing in time within a sensor.  The
input is validated, not sorted: a row out of place is an error that names
it (``np.lexsort((t_us, sensor_index))`` orders such input).

One pass over the runs computes, for every sensor, what the per-sensor engine
(:class:`operators.resonator.Resonator`) emits for the same samples once the
input has ended (everything is final, nothing is late):

* SPEC 2 steps 1-4: chains (a gap > max_gap starts one), the unwrapped phase
  Phi, the velocity partner j(k) (velocity_span d), the lag partner m(k)
  (tau) with the rule m < j(k), the products
  p_k = sum_c w_c v_{k,c} conj(v_{m,c}) [rad^2/s^2] and their weights
  dt_k = t_k - t_{k-1} [s];
* SPEC 2 step 5 and 3: the Emissary and the Master at their emission grid
  points g = n * I (a point is emitted when the sensor has a sample in
  (g - I, g]): T = S / A over the products with g - W < t_k <= g,
  S = sum p_k exp(i omega t_k) dt_k, A = sum |p_k| dt_k (t_k in seconds,
  T = 0 when A = 0), the product count and the span (newest minus oldest
  product time, us) that Master maturity is judged on;
* SPEC 3 sync, at every Emissary point g with the Master of the latest Master
  point <= g (0 and span 0 before the first): T_sync = (T_master + T_emissary) / 2,
  coherence |T_sync|^2, delta_phase = ||T_master| - |T_emissary||, the
  hysteresis state machine and its events;
* on a light node (``settings.light``) no Master rows, and the sync on the
  Emissary alone (:mod:`operators.light_sync`).

Windows are two pointers over a sensor's products and differences of prefix
sums.  The prefix sums are compensated (each kept as a float64 pair by
error-free addition), so a window's sums carry about the rounding of summing
the window directly, however long the run before it; a plain prefix
difference loses digits as the run's total outgrows the window's (over one
hour at 1 kHz, a 1 s Emissary's T was off by 7.6e-12 with plain prefix sums,
by 2.4e-16 with these, against direct sums).  Products use the same
floating-point operations as :func:`operators.lag._lag_kernel`, so they equal
the engine's bit for bit; window values agree with the engine's pane sums to
rounding (about 1e-15).

``lateness`` and ``max_future`` of the settings play no part: offline, every
sample given is final and there is no wall clock.  The streaming replacement
of the per-sensor engine (intake, late and duplicate rows, state carried
across calls) is to be built on this pass; it is not part of this module.
"""

from __future__ import annotations


import numpy as np
from numba import njit

from operators.columnar_rows import (FleetProducts, FleetResonance, FleetSyncValues, FleetWindowValues,
                                     check_settings, fleet_columns)
from operators.lag import _wrap, lag_product, phase_velocity, window_term
from operators.light_sync import NO_PRODUCT, _light_sync_kernel
from operators.params import KairosParams
from operators.resonator import ResonatorSettings
from operators.sync import sync_step

__all__ = ["FleetProducts", "FleetResonance", "FleetSyncValues", "FleetWindowValues", "fleet_products",
           "fleet_resonance"]


# --- the pass ------------------------------------------------------------------------------------


@njit(cache=True, nogil=True, inline="always")
def _ceil_grid(t, interval):
    """The grid point n * interval with t in (g - interval, g] (exact for negative t too)."""
    return -((-t) // interval) * interval


@njit(cache=True, nogil=True)
def _layout(sensor, t, e_interval, m_interval):
    """Emissary rows, Master rows and the longest sensor run of the input: the output sizes."""
    n_e = n_m = longest = 0
    start = 0
    last_e = last_m = np.int64(0)
    for i in range(t.shape[0]):
        new = i == 0 or sensor[i] != sensor[i - 1]
        if new:
            longest = max(longest, i - start)
            start = i
        ge = _ceil_grid(t[i], e_interval)
        gm = _ceil_grid(t[i], m_interval)
        if new or ge != last_e:
            n_e += 1
        if new or gm != last_m:
            n_m += 1
        last_e, last_m = ge, gm
    return n_e, n_m, max(longest, t.shape[0] - start)


@njit(cache=True, nogil=True)
def _chain_products(t, phase, s0, s1, tau, d, max_gap, w, unw, v, hasv, out_t, out_p, out_dt):
    """Products of one sensor's rows s0:s1 (SPEC 2 steps 1-4) to out_* from index 0; returns their count.

    The operations of :func:`operators.lag._lag_kernel` in the same order, on
    scratch rows indexed from the run's first row, so the products are the
    engine's bit for bit.  j and m only move forward within a chain: two pointers.
    """
    n_chan = phase.shape[1]
    n_out = 0
    cs = jp = mp = 0
    for k in range(s1 - s0):
        i = s0 + k
        tk = t[i]
        if k == 0 or tk - t[i - 1] > max_gap:
            cs = k
            jp = mp = k - 1  # below the chain start: "none yet"
            for c in range(n_chan):
                unw[k, c] = phase[i, c]
        else:
            for c in range(n_chan):
                unw[k, c] = unw[k - 1, c] + _wrap(phase[i, c] - phase[i - 1, c])
        while jp + 1 < k and tk - t[s0 + jp + 1] >= d:
            jp += 1
        has_v = jp >= cs
        hasv[k] = has_v
        if has_v:
            span_s = (tk - t[s0 + jp]) * 1e-6
            for c in range(n_chan):
                rate = (unw[k, c] - unw[jp, c]) / span_s
                v[k, c] = phase_velocity(rate, phase[i, c])
        while mp + 1 < k and tk - t[s0 + mp + 1] >= tau:
            mp += 1
        if has_v and mp >= cs and mp < jp and hasv[mp]:
            acc = lag_product(v, k, mp, w, n_chan)
            out_t[n_out] = tk
            out_p[n_out] = acc
            out_dt[n_out] = (tk - t[i - 1]) * 1e-6
            n_out += 1
    return n_out


@njit(cache=True, nogil=True, inline="always")
def _two_sum(hi, lo, x):
    """(hi, lo) + x as a float64 pair: hi the rounded sum, lo every rounding error so far (Knuth's TwoSum)."""
    s = hi + x
    b = s - hi
    return s, lo + ((hi - (s - b)) + (x - b))


@njit(cache=True, nogil=True)
def _prefix_sums(pt, pp, pdt, n_prod, omega, pre):
    """pre[:, k] = compensated sums of the first k products' terms: S.re (hi, lo), S.im (hi, lo), A (hi, lo)."""
    for q in range(6):
        pre[q, 0] = 0.0
    for k in range(n_prod):
        c, a = window_term(pt[k], pp[k], pdt[k], omega)
        pre[0, k + 1], pre[1, k + 1] = _two_sum(pre[0, k], pre[1, k], c.real)
        pre[2, k + 1], pre[3, k + 1] = _two_sum(pre[2, k], pre[3, k], c.imag)
        pre[4, k + 1], pre[5, k + 1] = _two_sum(pre[4, k], pre[5, k], a)


@njit(cache=True, nogil=True)
def _window_rows(t, s0, s1, interval, window, pt, n_prod, pre, sensor_id,
                 out_sensor, out_t, out_T, out_n, out_span, at):
    """One sensor's transducer rows from ``at``: every grid point with a sample in (g - I, g],
    T over (g - W, g] from two pointers into the products.  Returns the next free row."""
    a = b = 0  # products before a are <= g - W; products before b are <= g
    last = np.int64(0)
    for i in range(s0, s1):
        g = _ceil_grid(t[i], interval)
        if i > s0 and g == last:
            continue
        last = g
        while b < n_prod and pt[b] <= g:
            b += 1
        while a < b and pt[a] <= g - window:
            a += 1
        s_re = (pre[0, b] - pre[0, a]) + (pre[1, b] - pre[1, a])
        s_im = (pre[2, b] - pre[2, a]) + (pre[3, b] - pre[3, a])
        a_sum = (pre[4, b] - pre[4, a]) + (pre[5, b] - pre[5, a])
        out_sensor[at] = sensor_id
        out_t[at] = g
        out_T[at] = complex(s_re, s_im) / a_sum if a_sum > 0.0 else 0j
        out_n[at] = b - a
        out_span[at] = pt[b - 1] - pt[a] if b > a else 0
        at += 1
    return at


@njit(cache=True, nogil=True)
def _sync_rows(e_t, e_T, e0, e1, m_t, m_T, m_span, m0, m1, threshold, hysteresis, phase_threshold,
               min_span, s_T_master, s_T_sync, s_coh, s_dphase, s_mature, s_collapsed, s_event, s_span):
    """One sensor's sync at its Emissary rows e0:e1 against its Master rows m0:m1 (SPEC 3);
    the arithmetic of :func:`operators.sync._sync_kernel` and ``_hysteresis``."""
    j = m0
    T_in = 0j
    span_in = np.int64(0)
    collapsed = False
    for k in range(e0, e1):
        while j < m1 and m_t[j] <= e_t[k]:
            T_in = m_T[j]
            span_in = m_span[j]
            j += 1
        te = e_T[k]
        ts = (T_in + te) / 2
        coh = ts.real * ts.real + ts.imag * ts.imag
        dphase = abs(abs(T_in) - abs(te))
        mature = span_in >= min_span
        collapsed, event = sync_step(collapsed, coh, dphase, mature, threshold, hysteresis, phase_threshold)
        s_T_master[k], s_T_sync[k], s_coh[k], s_dphase[k] = T_in, ts, coh, dphase
        s_mature[k], s_collapsed[k], s_event[k], s_span[k] = mature, collapsed, event, span_in


@njit(cache=True, nogil=True)
def _fleet_kernel(sensor, t, phase, longest, tau, d, max_gap, w, omega, e_window, e_interval, m_window,
                  m_interval, threshold, hysteresis, phase_threshold, min_span, light, e_sensor, e_t, e_T, e_n,
                  e_span, m_sensor, m_t, m_T, m_n, m_span, s_T_master, s_T_sync, s_coh, s_dphase, s_mature,
                  s_collapsed, s_event, s_span):
    """Every sensor run: products, Master rows (none on a light node), Emissary rows, sync rows, into the
    output columns."""
    n_chan = phase.shape[1]
    # Scratch for one run at a time, sized once for the longest.
    unw = np.empty((longest, n_chan), np.float64)
    v = np.zeros((longest, n_chan), np.complex128)
    hasv = np.zeros(longest, np.bool_)
    pt = np.empty(longest, np.int64)
    pp = np.empty(longest, np.complex128)
    pdt = np.empty(longest, np.float64)
    pre = np.empty((6, longest + 1), np.float64)
    n = t.shape[0]
    s0 = e_at = m_at = 0
    while s0 < n:
        s1 = s0 + 1
        while s1 < n and sensor[s1] == sensor[s0]:
            s1 += 1
        n_prod = _chain_products(t, phase, s0, s1, tau, d, max_gap, w, unw, v, hasv, pt, pp, pdt)
        _prefix_sums(pt, pp, pdt, n_prod, omega, pre)
        m0, e0 = m_at, e_at
        if not light:
            m_at = _window_rows(t, s0, s1, m_interval, m_window, pt, n_prod, pre, sensor[s0],
                                m_sensor, m_t, m_T, m_n, m_span, m_at)
        e_at = _window_rows(t, s0, s1, e_interval, e_window, pt, n_prod, pre, sensor[s0],
                            e_sensor, e_t, e_T, e_n, e_span, e_at)
        if light:
            _light_sync_kernel(e_t[e0:e_at], e_T[e0:e_at], e_n[e0:e_at], pt[:n_prod], e_window, NO_PRODUCT,
                               NO_PRODUCT, threshold, hysteresis, phase_threshold, False, s_T_master[e0:e_at],
                               s_T_sync[e0:e_at], s_coh[e0:e_at], s_dphase[e0:e_at], s_mature[e0:e_at],
                               s_collapsed[e0:e_at], s_event[e0:e_at], s_span[e0:e_at])
        else:
            _sync_rows(e_t, e_T, e0, e_at, m_t, m_T, m_span, m0, m_at, threshold, hysteresis, phase_threshold,
                       min_span, s_T_master, s_T_sync, s_coh, s_dphase, s_mature, s_collapsed, s_event, s_span)
        s0 = s1


@njit(cache=True, nogil=True)
def _products_kernel(sensor, t, phase, longest, tau, d, max_gap, w, out_sensor, out_t, out_p, out_dt):
    n_chan = phase.shape[1]
    unw = np.empty((longest, n_chan), np.float64)
    v = np.zeros((longest, n_chan), np.complex128)
    hasv = np.zeros(longest, np.bool_)
    n = t.shape[0]
    s0 = at = 0
    while s0 < n:
        s1 = s0 + 1
        while s1 < n and sensor[s1] == sensor[s0]:
            s1 += 1
        k = _chain_products(t, phase, s0, s1, tau, d, max_gap, w, unw, v, hasv,
                            out_t[at:], out_p[at:], out_dt[at:])
        out_sensor[at:at + k] = sensor[s0]
        at += k
        s0 = s1
    return at


# --- public functions ----------------------------------------------------------------------------


def fleet_products(sensor_index, t_us, phase, params: KairosParams) -> FleetProducts:
    """The lag products of every sensor (SPEC 2 steps 1-4), in input order; inputs as :func:`fleet_resonance`.

    >>> t = np.arange(1, 6) * 100_000                     # 10 Hz, two sensors of five samples
    >>> out = fleet_products(np.repeat([0, 1], 5), np.r_[t, t], np.r_[t, -t] * 1e-6, KairosParams(tau_us=200_000))
    >>> out.sensor.tolist(), out.t.tolist()               # m(k) = k - 2 needs a velocity: from sample 3 on
    ([0, 0, 1, 1], [400000, 500000, 400000, 500000])
    """
    sensor, t, ph = fleet_columns(sensor_index, t_us, phase)
    w = params.weight_vector(ph.shape[1])
    _, _, longest = _layout(sensor, t, 1, 1)
    n = t.shape[0]
    out = FleetProducts(np.empty(n, np.int32), np.empty(n, np.int64), np.empty(n, np.complex128),
                        np.empty(n, np.float64))
    k = _products_kernel(sensor, t, ph, longest, params.tau_us, params.velocity_span_us, params.max_gap_us, w,
                         *out)
    return FleetProducts(*(column[:k] for column in out))


def fleet_resonance(sensor_index, t_us, phase, settings: ResonatorSettings) -> FleetResonance:
    """Emissary, Master and sync rows of every sensor of ``sensor_index`` (see the module docstring).

    Args:
        sensor_index: int (n,), >= 0; each sensor's rows one contiguous run.
        t_us: int (n,) microseconds, strictly increasing within a sensor.
        phase: float (n,) or (n, C) radians, finite; C for every row.
        settings: estimator (``settings.params``), windows, grids and sync thresholds.

    Returns:
        Rows in the input's order of sensors, each sensor's in time order.

    Raises:
        ValueError: a column of the wrong shape or type, a non-finite phase, a
            sensor's rows not together or not increasing in time, channel
            weights for another channel count, or a non-positive window or interval.

    >>> settings = ResonatorSettings(KairosParams.from_seconds(0.05, velocity_span=0.01),
    ...     emissary_window_us=200_000, emissary_interval_us=10_000, master_window_us=1_000_000,
    ...     master_interval_us=100_000, threshold=0.95, hysteresis=0.05, phase_threshold=0.1,
    ...     min_span_us=300_000)
    >>> t = np.arange(1, 1001) * 1_000                    # 1 s at 1 kHz, two sensors
    >>> clean = 2 * np.pi * 5.0 * t * 1e-6                # a 5 Hz oscillator ...
    >>> noise = np.random.default_rng(7).uniform(-np.pi, np.pi, t.size)   # ... and noise
    >>> out = fleet_resonance(np.repeat([3, 9], t.size), np.r_[t, t], np.r_[clean, noise], settings)
    >>> for s in (3, 9):                                  # events (1 = collapse) per sensor
    ...     print(s, out.sync.event[(out.sync.sensor == s) & (out.sync.event != 0)].tolist())
    3 [1]
    9 []
    """
    sensor, t, ph = fleet_columns(sensor_index, t_us, phase)
    w = settings.params.weight_vector(ph.shape[1])
    check_settings(settings)
    return _fleet_resonance(sensor, t, ph, w, settings)


def _fleet_resonance(sensor: np.ndarray, t: np.ndarray, ph: np.ndarray, w: np.ndarray,
                     s: ResonatorSettings) -> FleetResonance:
    """The fast path: checked columns in, one kernel call, output columns of exactly the right size."""
    n_e, n_m, longest = _layout(sensor, t, s.emissary_interval_us, s.master_interval_us)
    if s.light:
        n_m = 0
    emissary = FleetWindowValues(np.empty(n_e, np.int32), np.empty(n_e, np.int64), np.empty(n_e, np.complex128),
                                 np.empty(n_e, np.int64), np.empty(n_e, np.int64))
    master = FleetWindowValues(np.empty(n_m, np.int32), np.empty(n_m, np.int64), np.empty(n_m, np.complex128),
                               np.empty(n_m, np.int64), np.empty(n_m, np.int64))
    sync = FleetSyncValues(emissary.sensor, emissary.t, np.empty(n_e, np.complex128), emissary.T,
                           np.empty(n_e, np.complex128), np.empty(n_e, np.float64), np.empty(n_e, np.float64),
                           np.empty(n_e, np.bool_), np.empty(n_e, np.bool_), np.empty(n_e, np.int8),
                           np.empty(n_e, np.int64))
    p = s.params
    _fleet_kernel(sensor, t, ph, longest, p.tau_us, p.velocity_span_us, p.max_gap_us, w, p.omega,
                  s.emissary_window_us, s.emissary_interval_us, s.master_window_us, s.master_interval_us,
                  float(s.threshold), float(s.hysteresis), float(s.phase_threshold), s.min_span_us, bool(s.light),
                  *emissary, *master, sync.T_master, sync.T_sync, sync.coherence_sync, sync.delta_phase,
                  sync.mature, sync.collapsed, sync.event, sync.master_span_us)
    return FleetResonance(emissary, master, sync)
