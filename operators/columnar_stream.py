"""The fleet pass of :mod:`operators.columnar` as a stream: state carried between calls (SPEC 2 and 3).

:func:`stream_resonance` takes one call's final samples of many sensors (the
columns of :func:`operators.columnar.fleet_resonance`: grouped by sensor, in
time order within a sensor, each sensor's rows strictly after its rows of
earlier calls) and a :class:`operators.columnar_state.FleetState`, and returns
the grid rows that became due.  Concatenated over the calls of a stream they
are the rows of ``fleet_resonance`` over the whole input, whatever the split.

When a grid point is due.  A sensor's watermark is its newest sample time
(lateness 0: the samples given are final).  Its pending grid point of a
transducer is ceil(t / I) I of its newest sample; it is emitted once the
watermark reaches it (a sample at g or later), or at ``final``.  At that
moment every product with t <= g has been integrated and none later, so the
window (g - W, g] is complete.  Points due together are emitted in time order,
a Master point before an Emissary point at the same time, so the sync at an
Emissary point g sees the Master of the latest Master point <= g, as offline.

Windows.  Each window is a ring of panes (:mod:`operators.columnar_panes`)
with running compensated sums of its closed panes; a pane is subtracted when
it leaves (its end <= g - W), as the same float64 it was added as.  Running
sums cost O(1) per product and per point, where summing the window at each
point would cost W / P.  A window whose products all have zero weight has
A = 0 exactly (T = 0), as offline: the newest time of a product with
|p| dt > 0 decides that, since a running sum after subtractions need not
return to exactly 0.

Light node.  With ``settings.light`` (``cfg_i[_LIGHT]``) no product enters a
Master window, no Master point is due, and no Master ring is ever grown (a
sensor's Master ring has capacity 0): the sync at each Emissary point is
decided on the Emissary alone (:mod:`operators.light_sync`).  The sensor's
``SPAN_IN`` column, the Master span in force on a full node, holds the start
of its Emissary run there, so the row's layout is the full node's.

Some rows only.  :func:`flush_rows` is the end of input for the given rows
(``final`` for every row), :func:`emit_upto` emits what is due up to each
row's own watermark, and :meth:`FleetState.release` then gives back the
memory of sensors that are done (their next sample starts a new chain).

Growth.  A full ring stops the kernel at that row; Python moves the ring to a
larger segment and the kernel resumes at the same row (the run's state is
stored back to the arrays before it stops), so growth is rare (doubling) and
nothing is per sample in Python.

Speed.  The kernel takes a sensor's run of rows at a time, with its chain,
point and sync state in local variables, and emits once per sample (the
points due before it, with those of the sample before it at its own time).
Its helpers are inlined with array arguments, which in Numba costs an atomic
reference count increment and decrement per array per call; the kernels are
compiled without reference counting (``_nrt=False``: they allocate nothing).
Its speed against the offline pass is measured in ``docs/pipeline.md``
(Limitations, speed at low rates).

A second call also pays the rings' growth (:meth:`FleetState.reserve`: the
Master's ring grows for its first hour) and the first touch of its output
columns.  The output columns are therefore one set per thread, reused from
call to call (the rows emitted are copied out): fresh columns cost a page
fault per page the 18 output streams touch.
"""

from __future__ import annotations

import threading

import numpy as np
from numba import njit

from operators.columnar import _ceil_grid
from operators.columnar_panes import pane_add, pane_value
from operators.columnar_rows import FleetResonance, FleetSyncValues, FleetWindowValues, fleet_columns
from operators.columnar_state import (CS, E_G, E_PEND, E_SUMS, E_WIN, H_CAP, H_LO, H_OFF, JP, LAST_PT, M_G,
                                      M_PEND, M_SUMS, M_WIN, MP, N_SEEN, SPAN_IN, T_LAST, COLLAPSED, W_CAP,
                                      W_LEN, NO_TIME, FleetState)
from operators.lag import _wrap, lag_product, phase_velocity, window_term
from operators.light_sync import emissary_mature, run_start_after
from operators.sync import sync_step

__all__ = ["FleetState", "emit_upto", "flush_rows", "stream_resonance"]

_GROW_HIST, _GROW_E, _GROW_M, _DONE = 1, 2, 3, 0
_MAX = np.iinfo(np.int64).max
# cfg_i: the estimator, the sync's min span, the intervals, each window's pane layout (P, W, bits), then
# 1 on a light node (no Master) else 0.
_TAU, _D, _MAX_GAP, _MIN_SPAN, _E_INTERVAL, _M_INTERVAL, _E_LAYOUT, _M_LAYOUT, _LIGHT = 0, 1, 2, 3, 4, 5, 6, 10, 14


@njit(cache=True, nogil=True, inline="always")
def _emit_points(ints, sums, r, sensor_id, wm, e_pend, e_g, m_pend, m_g, collapsed, span_in, T_in, last_pt,
                 ne, nm, e_ps, e_wd, m_ps, m_wd, cfg_i, cfg_f, e_i, e_c, e_f, m_i, m_c):
    """Emit the sensor's pending points at or before the watermark wm, in time order (Master first on a tie).

    The sensor's point and sync state comes in as values and goes out as the tuple (e_pend, m_pend,
    collapsed, span_in, T_in, ne, nm), so a run of the sensor's rows keeps it in registers.  Output
    columns are packed (few arguments: a call of a Numba function copies each array's descriptor):
    e_i rows sensor, t, products, span, mature, collapsed, event, Master span; e_c rows T_emissary,
    T_master, T_sync; e_f rows coherence, delta_phase; m_i rows sensor, t, products, span; m_c T.
    On a light node no Master point is ever pending, and ``span_in`` is the start of the Emissary's run.
    """
    m_due = m_pend and m_g <= wm
    e_due = e_pend and e_g <= wm
    for step in range(2):   # the Master before the Emissary, or after it when its point is later
        if m_due and (step == 1 or not e_due or m_g <= e_g):
            T, n, span = _value(ints, sums, r, M_WIN, M_SUMS, m_ps, m_wd, m_g, last_pt, cfg_i, _M_LAYOUT)
            m_i[0, nm], m_i[1, nm], m_i[2, nm], m_i[3, nm], m_c[nm] = sensor_id, m_g, n, span, T
            nm += 1
            T_in, span_in = T, span
            m_pend = m_due = False
        if step == 0 and e_due:
            te, n, span = _value(ints, sums, r, E_WIN, E_SUMS, e_ps, e_wd, e_g, last_pt, cfg_i, _E_LAYOUT)
            if cfg_i[_LIGHT]:   # the Emissary alone (operators.light_sync)
                T_m, ts, dphase, span_m = complex(np.nan, np.nan), te, 0.0, 0
                mature = emissary_mature(n, e_g, span_in, cfg_i[_E_LAYOUT + 1])
            else:
                T_m, ts, span_m = T_in, (T_in + te) / 2, span_in
                dphase = abs(abs(T_in) - abs(te))
                mature = span_in >= cfg_i[_MIN_SPAN]
            coh = ts.real * ts.real + ts.imag * ts.imag
            collapsed, event = sync_step(collapsed, coh, dphase, mature, cfg_f[1], cfg_f[2], cfg_f[3])
            e_i[0, ne], e_i[1, ne], e_i[2, ne], e_i[3, ne], e_c[0, ne] = sensor_id, e_g, n, span, te
            e_c[1, ne], e_c[2, ne], e_f[0, ne], e_f[1, ne] = T_m, ts, coh, dphase
            e_i[4, ne], e_i[5, ne], e_i[6, ne], e_i[7, ne] = mature, collapsed, event, span_m
            ne += 1
            e_pend = False
    return e_pend, m_pend, collapsed, span_in, T_in, ne, nm


@njit(cache=True, nogil=True, inline="always")
def _value(ints, sums, r, base, sb, ps, wd, g, last_pt, cfg_i, at):
    return pane_value(ints, sums, r, base, sb, ps, wd, g, last_pt, cfg_i[at], cfg_i[at + 1], cfg_i[at + 2],
                      cfg_i[at + 3])


# _nrt=False: no reference counting of the arrays passed to the inlined helpers (see Speed above).
@njit(cache=True, nogil=True, _nrt=False)
def _stream_kernel(rows, sensor, t, phase, start, ints, sums, t_master, h_t, h_phi, h_unw, h_v, h_hasv,
                   e_ps, e_wd, m_ps, m_wd, w, cfg_i, cfg_f, e_i, e_c, e_f, m_i, m_c, counts):
    """Rows start: of the call, a run of one sensor's rows at a time; returns (status, row): _DONE,
    or a ring to grow before row (the run's state is stored back first).

    Per sample k (SPEC 2 steps 1-4 as :func:`operators.columnar._chain_products`, with the history
    in a ring at positions off + k mod cap): emit points due before t_k, make the product, integrate
    it in both windows, set the pending points, emit those at t_k.  The sensor's chain, point and
    sync state is held in local variables over its run and stored back at the run's end.
    """
    n_chan = phase.shape[1]
    tau, d, max_gap = cfg_i[_TAU], cfg_i[_D], cfg_i[_MAX_GAP]
    e_interval, m_interval, ea, ma = cfg_i[_E_INTERVAL], cfg_i[_M_INTERVAL], _E_LAYOUT, _M_LAYOUT
    light = cfg_i[_LIGHT] != 0
    e_window = cfg_i[_E_LAYOUT + 1]
    omega = cfg_f[0]
    ne, nm = counts[0], counts[1]
    n_rows = t.shape[0]
    status = _DONE
    i = start
    while i < n_rows:
        r = rows[i]
        sid = sensor[i]
        off, cap = ints[r, H_OFF], ints[r, H_CAP]
        mask = cap - 1  # history capacities are powers of two: a mask, not a modulo
        k, cs, jp, mp, lo = ints[r, N_SEEN], ints[r, CS], ints[r, JP], ints[r, MP], ints[r, H_LO]
        last_pt, t_last = ints[r, LAST_PT], ints[r, T_LAST]
        e_pend, e_g, m_pend, m_g = ints[r, E_PEND] == 1, ints[r, E_G], ints[r, M_PEND] == 1, ints[r, M_G]
        collapsed, span_in, T_in = ints[r, COLLAPSED] == 1, ints[r, SPAN_IN], t_master[r]
        while True:
            # Points due before the sample (or, after the run's last one, at it): those of the sample
            # before it at its own time and any later ones before t_k are emitted together, in time
            # order, as they would be one after the other (one pending point per transducer).
            at_end = True
            if i == n_rows or rows[i] != r:
                pass
            elif k + 1 - lo > cap:
                status = _GROW_HIST
            elif ints[r, E_WIN + W_LEN] + 2 > ints[r, E_WIN + W_CAP]:   # a product may take two slots
                status = _GROW_E
            elif not light and ints[r, M_WIN + W_LEN] + 2 > ints[r, M_WIN + W_CAP]:
                status = _GROW_M
            else:
                at_end = False
            wm = t_last if at_end else t[i] - 1
            if (m_pend and m_g <= wm) or (e_pend and e_g <= wm):
                e_pend, m_pend, collapsed, span_in, T_in, ne, nm = _emit_points(
                    ints, sums, r, sid, wm, e_pend, e_g, m_pend, m_g, collapsed, span_in, T_in, last_pt,
                    ne, nm, e_ps, e_wd, m_ps, m_wd, cfg_i, cfg_f, e_i, e_c, e_f, m_i, m_c)
            if at_end:
                break
            tk = t[i]
            q = off + (k & mask)
            prev = off + ((k - 1) & mask)
            h_t[q] = tk
            if k == 0 or tk - t_last > max_gap:
                cs = k
                jp = mp = k - 1  # below the chain start: "none yet"
                for c in range(n_chan):
                    h_unw[q, c] = phase[i, c]
            else:
                for c in range(n_chan):
                    h_unw[q, c] = h_unw[prev, c] + _wrap(phase[i, c] - h_phi[prev, c])
            for c in range(n_chan):
                h_phi[q, c] = phase[i, c]
            while jp + 1 < k and tk - h_t[off + ((jp + 1) & mask)] >= d:
                jp += 1
            has_v = jp >= cs
            h_hasv[q] = has_v
            if has_v:
                qj = off + (jp & mask)
                span_s = (tk - h_t[qj]) * 1e-6
                for c in range(n_chan):
                    rate = (h_unw[q, c] - h_unw[qj, c]) / span_s
                    h_v[q, c] = phase_velocity(rate, phase[i, c])
            while mp + 1 < k and tk - h_t[off + ((mp + 1) & mask)] >= tau:
                mp += 1
            qm = off + (mp & mask)
            if has_v and mp >= cs and mp < jp and h_hasv[qm]:
                acc = lag_product(h_v, q, qm, w, n_chan)
                cterm, aterm = window_term(tk, acc, (tk - t_last) * 1e-6, omega)
                pane_add(ints, sums, r, E_WIN, E_SUMS, e_ps, e_wd, tk, cterm, aterm, cfg_i[ea], cfg_i[ea + 1],
                         cfg_i[ea + 2], cfg_i[ea + 3])
                if light:
                    span_in = run_start_after(span_in, last_pt, tk, e_window)
                else:
                    pane_add(ints, sums, r, M_WIN, M_SUMS, m_ps, m_wd, tk, cterm, aterm, cfg_i[ma], cfg_i[ma + 1],
                             cfg_i[ma + 2], cfg_i[ma + 3])
                last_pt = tk
            k += 1
            t_last = tk
            # Later samples look back no further than the older pointer (never before the chain start).
            lo = min(max(cs, min(jp, mp)), k - 1)
            if not e_pend:
                e_pend, e_g = True, _ceil_grid(tk, e_interval)
            if not m_pend and not light:
                m_pend, m_g = True, _ceil_grid(tk, m_interval)
            i += 1
        ints[r, N_SEEN], ints[r, CS], ints[r, JP], ints[r, MP], ints[r, H_LO] = k, cs, jp, mp, lo
        ints[r, LAST_PT], ints[r, T_LAST] = last_pt, t_last
        ints[r, E_PEND], ints[r, E_G], ints[r, M_PEND], ints[r, M_G] = e_pend, e_g, m_pend, m_g
        ints[r, COLLAPSED], ints[r, SPAN_IN], t_master[r] = collapsed, span_in, T_in
        if status != _DONE:
            break
    counts[0], counts[1] = ne, nm
    return status, i


@njit(cache=True, nogil=True, _nrt=False)
def _emit_kernel(rows, wms, ids, ints, sums, t_master, e_ps, e_wd, m_ps, m_wd, cfg_i, cfg_f,
                 e_i, e_c, e_f, m_i, m_c, counts):
    """Each row's pending points at or before its watermark wms[j], row after row."""
    ne, nm = counts[0], counts[1]
    for j in range(rows.shape[0]):
        r = rows[j]
        e_pend, m_pend, collapsed, span_in, T_in, ne, nm = _emit_points(
            ints, sums, r, ids[r], wms[j], ints[r, E_PEND] == 1, ints[r, E_G], ints[r, M_PEND] == 1, ints[r, M_G],
            ints[r, COLLAPSED] == 1, ints[r, SPAN_IN], t_master[r], ints[r, LAST_PT], ne, nm,
            e_ps, e_wd, m_ps, m_wd, cfg_i, cfg_f, e_i, e_c, e_f, m_i, m_c)
        ints[r, E_PEND], ints[r, M_PEND], ints[r, COLLAPSED], ints[r, SPAN_IN] = e_pend, m_pend, collapsed, span_in
        t_master[r] = T_in
    counts[0], counts[1] = ne, nm


def _kernel_args(state: FleetState):
    """The state's arrays (ints, sums, t_master, the history's five columns, each window's two) and
    the configuration as the kernels take them."""
    s, p = state.settings, state.settings.params
    head = (state.ints, state.sums, state.t_master, *state.hist.cols, *state.e_panes.cols, *state.m_panes.cols)
    cfg_i = np.array([p.tau_us, p.velocity_span_us, p.max_gap_us, s.min_span_us, s.emissary_interval_us,
                      s.master_interval_us, *state.e_layout.config(), *state.m_layout.config(), int(s.light)],
                     np.int64)
    cfg_f = np.array([p.omega, s.threshold, s.hysteresis, s.phase_threshold], np.float64)
    return head, cfg_i, cfg_f


# Output columns are sized for the most rows a call can emit (two per sample and transducer), several
# times what it usually does, and they are written as 18 streams: fresh arrays per call cost a page
# fault per page touched.  Each thread (a Bytewax worker) reuses one set; _unpack copies the rows out.
_scratch = threading.local()
SCRATCH_MAX_ROWS = 1 << 18      # 46 MB; a call needing more (one key group of a big call) gets its own


def _outputs(cap: int):
    out = getattr(_scratch, "out", None)
    if out is None or out[0].shape[1] < cap:
        size = max(cap, 1024)
        fresh = (np.empty((8, size), np.int64), np.empty((3, size), np.complex128), np.empty((2, size), np.float64),
                 np.empty((4, size), np.int64), np.empty(size, np.complex128), np.zeros(2, np.int64))
        if size > SCRATCH_MAX_ROWS:
            return fresh
        out = _scratch.out = fresh
    out[5][:] = 0
    return out


def _emit(state: FleetState, rows: np.ndarray, watermarks: np.ndarray, out) -> None:
    head, cfg_i, cfg_f = _kernel_args(state)
    # A copy of the watermarks, always writable: a broadcast view is read-only, another argument type to
    # Numba, so the kernel would be compiled twice, once only when a process first meets that case.
    _emit_kernel(np.ascontiguousarray(rows, np.int64), np.array(watermarks, np.int64), state.ids,
                 *head[:3], *head[8:], cfg_i, cfg_f, *out)


def stream_resonance(state: FleetState, sensor_index, t_us, phase, final: bool = False) -> FleetResonance:
    """One call: integrate the samples into ``state`` and return the grid rows now due.

    Args:
        state: the key group's carried state (updated in place).
        sensor_index, t_us, phase: as :func:`operators.columnar.fleet_resonance`, C = ``state.channels``;
            each sensor's first row strictly after its newest sample of earlier calls.
        final: end of input: every pending grid point of every sensor is emitted.

    Returns:
        The Emissary, Master and sync rows emitted by this call, grouped by sensor as the call's rows
        (``final`` adds the other sensors' last points after them); each sensor's in time order.

    >>> from operators.columnar import fleet_resonance
    >>> from operators.params import KairosParams
    >>> from operators.resonator import ResonatorSettings
    >>> settings = ResonatorSettings(KairosParams(tau_us=50_000, velocity_span_us=10_000), 200_000, 10_000,
    ...                              1_000_000, 100_000, 0.95, 0.05, 0.1, 300_000)
    >>> t = np.arange(1, 1001) * 1_000                    # 1 s of a 5 Hz oscillator at 1 kHz
    >>> phase = 2 * np.pi * 5.0 * t * 1e-6
    >>> state = FleetState(settings, channels=1)
    >>> calls = [stream_resonance(state, np.zeros(n, int), t[a:a + n], phase[a:a + n], final=a + n == 1000)
    ...          for a, n in ((0, 1), (1, 499), (500, 500))]
    >>> [len(c.emissary.t) for c in calls], [c.sync.event.tolist().count(1) for c in calls]   # 1 = collapse
    ([0, 50, 50], [0, 1, 0])
    >>> offline = fleet_resonance(np.zeros(1000, int), t, phase, settings)
    >>> bool(np.array_equal(np.concatenate([c.emissary.t for c in calls]), offline.emissary.t))
    True
    """
    sensor, t, ph = fleet_columns(sensor_index, t_us, phase)
    if ph.shape[1] != state.channels:
        raise ValueError(f"phase has {ph.shape[1]} channels, the state {state.channels}")
    n = t.shape[0]
    if n:
        starts = np.concatenate(([0], np.flatnonzero(sensor[1:] != sensor[:-1]) + 1))
        run_rows = state.rows_of(sensor[starts].astype(np.int64))
        newest = state.h_newest(run_rows)
        seen = newest != NO_TIME
        back = seen & (t[starts] <= newest)
        if back.any():
            b = int(np.argmax(back))
            raise ValueError(f"row {starts[b]}: sensor {sensor[starts[b]]} has t = {t[starts[b]]} us, not after "
                             f"its newest sample of an earlier call ({newest[b]} us)")
        run_lengths = np.diff(np.append(starts, n))
        state.reserve(run_rows, run_lengths, t[starts + run_lengths - 1] - t[starts])
        rows = np.repeat(run_rows, run_lengths)
    else:
        rows = np.empty(0, np.int64)
    # At most two points per transducer per sample (the one before it and its own) plus one per sensor at the end.
    out = _outputs(2 * n + (state.n if final else 0))
    i = 0
    while True:
        head, cfg_i, cfg_f = _kernel_args(state)
        status, i = _stream_kernel(rows, sensor, t, ph, i, *head, state.weights, cfg_i, cfg_f, *out)
        if status == _DONE:
            break
        r = int(rows[i])
        if status == _GROW_HIST:
            state.grow_history(r)
        else:
            state.grow_panes(r, E_WIN if status == _GROW_E else M_WIN)
    if final:
        _emit(state, np.arange(state.n), np.full(state.n, _MAX), out)
    return _unpack(*out)


def emit_upto(state: FleetState, rows, watermarks) -> FleetResonance:
    """Emit the pending grid points of ``rows`` (row numbers, as :meth:`FleetState.rows_of` gives) at or
    before each row's watermark, grouped by row; for a watermark behind the newest sample (lateness > 0):
    every sample at or before it has been given, so a pending point there is final."""
    rows = np.asarray(rows, np.int64)
    out = _outputs(2 * rows.shape[0])   # at most one pending point per transducer
    _emit(state, rows, np.broadcast_to(np.asarray(watermarks, np.int64), rows.shape), out)
    return _unpack(*out)


def flush_rows(state: FleetState, rows) -> FleetResonance:
    """End of input for some rows only: every pending point of ``rows`` (row numbers), whatever their
    watermark, as ``final=True`` does for every row.  Before :meth:`FleetState.release`; a sensor that
    goes on within the interval of a point flushed here gives that point again.

    >>> from operators.params import KairosParams
    >>> from operators.resonator import ResonatorSettings
    >>> s = ResonatorSettings(KairosParams(tau_us=20_000), 100_000, 10_000, 1_000_000, 100_000, 0.9, 0.05, 0.1, 0)
    >>> state = FleetState(s, channels=1)
    >>> t = np.arange(1, 146) * 1_000                 # two sensors, 145 ms at 1 kHz
    >>> _ = stream_resonance(state, np.repeat([5, 6], 145), np.r_[t, t], np.zeros(290))
    >>> rows = state.rows_of(np.array([6]))
    >>> out = flush_rows(state, rows)                 # sensor 6 is done; 5 goes on
    >>> out.emissary.sensor.tolist(), out.emissary.t.tolist(), out.master.t.tolist()
    ([6], [150000], [200000])
    >>> held = state.nbytes()
    >>> state.release(rows)
    >>> held - state.nbytes()                         # its rings: 32 lag samples of 41 bytes, 22 slots of 28
    1928
    """
    return emit_upto(state, rows, _MAX)


def _unpack(e_i, e_c, e_f, m_i, m_c, counts) -> FleetResonance:
    """The packed output columns as the row types of the offline pass."""
    ne, nm = int(counts[0]), int(counts[1])
    e_i, e_c, e_f, m_i, m_c = e_i[:, :ne], e_c[:, :ne].copy(), e_f[:, :ne].copy(), m_i[:, :nm], m_c[:nm].copy()
    emissary = FleetWindowValues(e_i[0].astype(np.int32), e_i[1].copy(), e_c[0], e_i[2].copy(), e_i[3].copy())
    master = FleetWindowValues(m_i[0].astype(np.int32), m_i[1].copy(), m_c, m_i[2].copy(), m_i[3].copy())
    sync = FleetSyncValues(emissary.sensor, emissary.t, e_c[1], emissary.T, e_c[2], e_f[0], e_f[1],
                           e_i[4].astype(np.bool_), e_i[5].astype(np.bool_), e_i[6].astype(np.int8), e_i[7].copy())
    return FleetResonance(emissary, master, sync)
