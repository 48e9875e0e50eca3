"""One sensor's whole computation: intake, Emissary, Master and sync (SPEC sections 2 and 3).

A :class:`Resonator` chains, for one sensor,

    SampleBatch -> SensorIntake (channels, event-time gate, lag products)
                -> Transducer(EmissaryWindow)  \\
                -> Transducer(MasterWindow)    -> SyncMachine (collapse / dissipate)

in one call per batch.  On a light node (``settings.light``) there is no
Master: the Emissary goes to an :class:`~operators.light_sync.EmissarySync`,
which decides collapse on the Emissary alone.

Both transducers are driven by the same watermark in the same call, so
every Master grid point up to the watermark has been computed before the
sync decides the Emissary points up to it: the join by event time of SPEC
section 3 holds by construction, whatever order batches arrive in.  The dataflow keeps many resonators per key group and calls them
with whole arrays; nothing here runs per sample in Python.

With pane windows on both sides (the default), the two transducers and the
sync run as one Numba call that writes its grid values straight into
:class:`GridRows`, columns shared by every resonator called for one batch: a
sensor with a few samples per batch costs one call, not a dozen, and the
dataflow reads the values of all its sensors from one set of arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from numba import njit

from operators.dead_letters import DeadLetterBudget
from operators.emissary import emissary_window
from operators.grid import WindowValues
from operators.intake import IntakeResult, ProductBatch, SensorIntake
from operators.light_sync import EmissarySync
from operators.master import MasterWindow, _master_kernel
from operators.params import KairosParams, kairos_params
from schemas.samples import SampleBatch
from operators.sync import SyncMachine, SyncValues, _sync_kernel
from operators.transducer import _ALL, Transducer, _due_points
from schemas.messages import DeadLetter

if TYPE_CHECKING:
    from schemas.config import Config

__all__ = ["GridRows", "Resonance", "Resonator", "ResonatorSettings", "resonator_settings"]

_NO_VALUES = WindowValues.empty()


class GridRows:
    """The grid values of many resonator calls in one set of columns, one run of rows per call.

    Each call appends its Emissary values and its Master values (row counts
    in :class:`Resonance`).  The sync decides every Emissary point a call
    emits, so sync row k is Emissary row k: they share ``t`` and ``T_emissary``.

    Args:
        capacity: rows to allocate at first (the columns double when full).

    >>> rows = GridRows()
    >>> len(rows.emissary), len(rows.master), len(rows.sync)
    (0, 0, 0)
    """

    __slots__ = ("_e_int", "_e_T", "_m_int", "_m_T", "_s_cx", "_s_fl", "_s_b", "_s_ev", "_s_span",
                 "n_emissary", "n_master")

    def __init__(self, capacity: int = 1024) -> None:
        self.n_emissary = 0
        self.n_master = 0
        self._allocate_emissary(max(1, capacity))
        self._allocate_master(max(1, capacity))

    def _allocate_emissary(self, capacity: int) -> None:
        # One array per dtype, one row per column: the kernel takes 7 arrays, not 12.
        self._e_int = np.empty((3, capacity), np.int64)  # t, n_products, span_us
        self._e_T = np.empty(capacity, np.complex128)
        self._s_cx = np.empty((2, capacity), np.complex128)  # T_master, T_sync
        self._s_fl = np.empty((2, capacity), np.float64)  # coherence_sync, delta_phase
        self._s_b = np.empty((2, capacity), np.bool_)  # mature, collapsed
        self._s_ev = np.empty(capacity, np.int8)
        self._s_span = np.empty(capacity, np.int64)

    def _allocate_master(self, capacity: int) -> None:
        self._m_int = np.empty((3, capacity), np.int64)
        self._m_T = np.empty(capacity, np.complex128)

    def reserve(self, emissary: int, master: int) -> None:
        """Room for ``emissary`` and ``master`` more rows."""
        n = self.n_emissary
        if n + emissary > self._e_T.shape[0]:
            old = (self._e_int, self._e_T, self._s_cx, self._s_fl, self._s_b, self._s_ev, self._s_span)
            self._allocate_emissary(max(2 * self._e_T.shape[0], n + emissary))
            for new, was in zip((self._e_int, self._e_T, self._s_cx, self._s_fl, self._s_b, self._s_ev,
                                 self._s_span), old):
                new[..., :n] = was[..., :n]
        n = self.n_master
        if n + master > self._m_T.shape[0]:
            old_int, old_T = self._m_int, self._m_T
            self._allocate_master(max(2 * self._m_T.shape[0], n + master))
            self._m_int[:, :n], self._m_T[:n] = old_int[:, :n], old_T[:n]

    def append(self, emissary: WindowValues, master: WindowValues, sync: SyncValues) -> None:
        """Add one call's values computed elsewhere (``sync`` decides every point of ``emissary``)."""
        if len(sync) != len(emissary):
            raise ValueError(f"{len(sync)} sync rows for {len(emissary)} Emissary rows")
        self.reserve(len(emissary), len(master))
        e, m = self.n_emissary, self.n_master
        ne, nm = e + len(emissary), m + len(master)
        self._e_int[:, e:ne] = emissary.t, emissary.n_products, emissary.span_us
        self._e_T[e:ne] = emissary.T
        self._s_cx[:, e:ne] = sync.T_master, sync.T_sync
        self._s_fl[:, e:ne] = sync.coherence_sync, sync.delta_phase
        self._s_b[:, e:ne] = sync.mature, sync.collapsed
        self._s_ev[e:ne] = sync.event
        self._s_span[e:ne] = sync.master_span_us
        self._m_int[:, m:nm] = master.t, master.n_products, master.span_us
        self._m_T[m:nm] = master.T
        self.n_emissary, self.n_master = ne, nm

    def emissary_values(self, start: int = 0, stop: int | None = None) -> WindowValues:
        """Emissary rows ``start:stop`` (default all) as views."""
        stop = self.n_emissary if stop is None else stop
        e = self._e_int
        return WindowValues(e[0, start:stop], self._e_T[start:stop], e[1, start:stop], e[2, start:stop])

    def master_values(self, start: int = 0, stop: int | None = None) -> WindowValues:
        """Master rows ``start:stop`` (default all) as views."""
        stop = self.n_master if stop is None else stop
        m = self._m_int
        return WindowValues(m[0, start:stop], self._m_T[start:stop], m[1, start:stop], m[2, start:stop])

    def sync_values(self, start: int = 0, stop: int | None = None) -> SyncValues:
        """Sync rows ``start:stop`` (default all) as views."""
        stop = self.n_emissary if stop is None else stop
        cx, fl, b = self._s_cx, self._s_fl, self._s_b
        return SyncValues(self._e_int[0, start:stop], cx[0, start:stop], self._e_T[start:stop], cx[1, start:stop],
                          fl[0, start:stop], fl[1, start:stop], b[0, start:stop], b[1, start:stop],
                          self._s_ev[start:stop], self._s_span[start:stop])

    @property
    def emissary(self) -> WindowValues:
        """Every Emissary row."""
        return self.emissary_values()

    @property
    def master(self) -> WindowValues:
        """Every Master row."""
        return self.master_values()

    @property
    def sync(self) -> SyncValues:
        """Every sync row (row k decides Emissary row k)."""
        return self.sync_values()


@njit(cache=True, nogil=True)
def _pane_window_step(pt, pp, pdt, sample_t, limit, omega, pending, sre, sim, sa, meta, shift, ist, tot, pane,
                      out_int, out_T, at):
    """One pane window's ``Transducer.push``: its due grid points, then the window at the
    final ones, written to rows ``at:`` of ``out_int`` (t, n, span) and ``out_T``."""
    due, split = _due_points(sample_t, pane, pending, limit)
    end = at + split
    out_int[0, at:end] = due[:split]
    _master_kernel(sre, sim, sa, meta, shift, ist, tot, pane, pt, pp, pdt, omega, due[:split], out_T[at:end],
                   out_int[1, at:end], out_int[2, at:end])
    return due[split:], split


@njit(cache=True, nogil=True)
def _pane_chain_kernel(pt, pp, pdt, sample_t, limit, e_omega, m_omega,
                       e_pending, e_sre, e_sim, e_sa, e_meta, e_shift, e_ist, e_tot, e_pane,
                       m_pending, m_sre, m_sim, m_sa, m_meta, m_shift, m_ist, m_tot, m_pane,
                       ma_t, ma_T, ma_n, ma_span, carried_T, carried_span, threshold, hysteresis,
                       phase_threshold, min_span_us, collapsed,
                       e_int, e_T, s_cx, s_fl, s_b, s_ev, s_span, e_at, m_int, m_T, m_at):
    """Emissary and Master (both pane windows) and the sync, for one sensor's products.

    The same steps as ``Transducer.push`` for each window and
    ``SyncMachine.advance`` with no Emissary points waiting, in one call.  The
    values go to rows ``e_at:`` and ``m_at:`` of the :class:`GridRows` columns.
    """
    e_pending, e_split = _pane_window_step(pt, pp, pdt, sample_t, limit, e_omega, e_pending, e_sre, e_sim, e_sa,
                                           e_meta, e_shift, e_ist, e_tot, e_pane, e_int, e_T, e_at)
    m_pending, m_split = _pane_window_step(pt, pp, pdt, sample_t, limit, m_omega, m_pending, m_sre, m_sim, m_sa,
                                           m_meta, m_shift, m_ist, m_tot, m_pane, m_int, m_T, m_at)
    # The Master points not yet superseded, then the new ones.
    k0 = ma_t.shape[0]
    n_ma = k0 + m_split
    all_t = np.empty(n_ma, np.int64)
    all_T = np.empty(n_ma, np.complex128)
    all_n = np.empty(n_ma, np.int64)
    all_span = np.empty(n_ma, np.int64)
    all_t[:k0], all_T[:k0], all_n[:k0], all_span[:k0] = ma_t, ma_T, ma_n, ma_span
    m_end = m_at + m_split
    all_t[k0:], all_T[k0:] = m_int[0, m_at:m_end], m_T[m_at:m_end]
    all_n[k0:], all_span[k0:] = m_int[1, m_at:m_end], m_int[2, m_at:m_end]
    # Every Emissary point is <= the watermark, so all of them are decided now.
    used = 0
    if e_split:
        e = e_at + e_split
        used, carried_T, carried_span, collapsed = _sync_kernel(
            e_int[0, e_at:e], e_T[e_at:e], all_t, all_T, all_span, carried_T, carried_span, threshold,
            hysteresis, phase_threshold, min_span_us, collapsed, s_cx[0, e_at:e], s_cx[1, e_at:e],
            s_fl[0, e_at:e], s_fl[1, e_at:e], s_b[0, e_at:e], s_b[1, e_at:e], s_ev[e_at:e], s_span[e_at:e])
    return (e_pending, m_pending, e_split, m_split, all_t[used:], all_T[used:], all_n[used:], all_span[used:],
            carried_T, carried_span, collapsed)


@dataclass(frozen=True)
class ResonatorSettings:
    """Everything a resonator needs, in exact microseconds (from the ``kairos``,
    ``emissary``, ``master`` and ``sync`` config sections).

    ``light``: a light node (``becomingone.node: light``): no Master, collapse
    decided on the Emissary alone (:mod:`operators.light_sync`); the Master's
    settings and ``min_span_us`` then play no part.  ``phase_band`` and
    ``phase_method``: how raw ``value`` sensors' phase is made (SPEC section 9;
    None: raw samples are refused)."""

    params: KairosParams
    emissary_window_us: int
    emissary_interval_us: int
    master_window_us: int
    master_interval_us: int
    threshold: float
    hysteresis: float
    phase_threshold: float
    min_span_us: int
    lateness_us: int = 0
    max_future_us: int | None = None
    light: bool = False
    phase_band: tuple[float, float] | None = None
    phase_method: str = "hilbert"


def resonator_settings(config: Config, *, replay: bool = False) -> ResonatorSettings:
    """The per-sensor settings of ``config``; ``replay`` accepts any event time (no ``future``)."""
    em, ma, sync = config.emissary, config.master, config.sync
    return ResonatorSettings(
        kairos_params(config), em.tau_max_us, em.witness_interval_us, ma.tau_max_us, ma.witness_interval_us,
        config.kairos.coherence_threshold, sync.hysteresis, sync.phase_threshold, ma.min_span_us,
        lateness_us=sync.lateness_us, max_future_us=None if replay else sync.max_future_us,
        light=config.becomingone.node == "light",
        phase_band=config.kairos.phase_band, phase_method=config.kairos.phase_method,
    )


@dataclass(slots=True)
class Resonance:
    """What one call of a resonator produced.

    Attributes:
        dead: dead letters of the rows rejected now; ``reasons`` has one per rejected row.
        released: the samples integrated now (time order), or None.
        watermark: the sensor's watermark after the call (us); None at end of input.
        ingested: wall-clock epoch seconds the oldest integrated sample was decoded.
        rows: the :class:`GridRows` the call wrote its grid values to, or None (none written).
        emissary_start, emissary_count: its Emissary (and sync) rows there.
        master_start, master_count: its Master rows there.

    ``emissary``, ``master`` and ``sync`` are those rows as arrays.
    """

    dead: list[DeadLetter] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    released: SampleBatch | None = None
    watermark: int | None = None
    ingested: float = math.inf
    rows: GridRows | None = None
    emissary_start: int = 0
    emissary_count: int = 0
    master_start: int = 0
    master_count: int = 0

    @property
    def emissary(self) -> WindowValues:
        """The transducers' values at the Emissary grid points that became final."""
        if not self.emissary_count:
            return _NO_VALUES
        return self.rows.emissary_values(self.emissary_start, self.emissary_start + self.emissary_count)

    @property
    def master(self) -> WindowValues:
        """The Master's values at its grid points that became final."""
        if not self.master_count:
            return _NO_VALUES
        return self.rows.master_values(self.master_start, self.master_start + self.master_count)

    @property
    def sync(self) -> SyncValues:
        """The sync at the Emissary points decided now (events included)."""
        if not self.emissary_count:
            return SyncValues.empty()
        return self.rows.sync_values(self.emissary_start, self.emissary_start + self.emissary_count)


@dataclass(frozen=True, slots=True)
class RetiredSensor:
    """What a sensor keeps once its windows are released (see :mod:`operators.roster`):
    what its next samples still depend on, nothing of its windows or lag chain.

    Attributes:
        max_t: newest event time seen (us): older samples stay ``late``.
        recent: accepted times within the duplicate horizon (a repeat stays a ``duplicate``).
        watermark: the watermark last handed on (us).
        channels: the channel count fixed by its first samples.
        cell: its cell label.
        collapsed: the sync's state.
        master_T, master_span_us: the Master value in force for the next Emissary points.
        master_left: Master points not yet in force (rare), or None.
    """

    max_t: int
    recent: np.ndarray
    watermark: int | None
    channels: int | None
    cell: str | None
    collapsed: bool
    master_T: complex
    master_span_us: int
    master_left: WindowValues | None


class Resonator:
    """One sensor's intake, Emissary, Master and sync state.

    Args:
        sensor: the sensor id.
        settings: the estimator, window and sync settings.

    >>> import numpy as np
    >>> from operators.params import KairosParams
    >>> settings = ResonatorSettings(KairosParams.from_seconds(0.05, velocity_span=0.01),
    ...     emissary_window_us=200_000, emissary_interval_us=10_000, master_window_us=1_000_000,
    ...     master_interval_us=100_000, threshold=0.95, hysteresis=0.05, phase_threshold=0.1,
    ...     min_span_us=300_000)
    >>> r = Resonator("osc-1", settings)
    >>> t = np.arange(1, 1001) * 1_000                      # 1 s at 1 kHz
    >>> phase = (2 * np.pi * 5.0 * t * 1e-6)[:, None]       # a clean 5 Hz oscillator
    >>> out = r.push(SampleBatch("osc-1", t, phase), now_us=0)
    >>> [int(e) for e in out.sync.event if e], r.collapsed    # one collapse (1) once the Master is mature
    ([1], True)
    """

    def __init__(self, sensor: str, settings: ResonatorSettings) -> None:
        s = settings
        omega = s.params.omega
        self.sensor = sensor
        self.intake = SensorIntake(sensor, s.params, lateness_us=s.lateness_us, max_future_us=s.max_future_us)
        self.emissary = Transducer(emissary_window(s.emissary_window_us, s.emissary_interval_us, omega),
                                   s.emissary_interval_us)
        self.master: Transducer | None = None
        self.sync: SyncMachine | EmissarySync
        if s.light:  # no Master: nothing of it is allocated
            self.sync = EmissarySync(s.threshold, s.hysteresis, s.phase_threshold, s.emissary_window_us)
        else:
            self.master = Transducer(MasterWindow(s.master_window_us, s.master_interval_us, omega),
                                     s.master_interval_us)
            self.sync = SyncMachine(s.threshold, s.hysteresis, s.phase_threshold, s.min_span_us)

    @property
    def cell(self) -> str | None:
        """The sensor's cell label (the last one given), or None."""
        return self.intake.cell

    @property
    def collapsed(self) -> bool:
        """True while the sensor is in the collapsed state."""
        return self.sync.collapsed

    @property
    def master_state_bytes(self) -> int:
        """Bytes of the Master's pane state (fixed by tau_max / interval, not by the rate); 0 on a light node."""
        return 0 if self.master is None else self.master.window.state_bytes

    def push(self, batch: SampleBatch, now_us: int, rows: GridRows | None = None,
             budget: DeadLetterBudget | None = None) -> Resonance:
        """Take one batch of this sensor's samples (arrival order) and compute what became final.

        Args:
            batch: samples of this sensor.
            now_us: the wall clock (us), for ``future`` rejection.
            rows: where to write the grid values (shared by the resonators of
                one batch); None: new rows of this call's own.
            budget: bounds the dead letters per input message (shared by the
                resonators of one batch); None: a record per rejected row.
        """
        return self._run(self.intake.push(batch, now_us, budget), rows)

    def flush(self, rows: GridRows | None = None) -> Resonance:
        """End of input: integrate every pending sample and decide every grid point."""
        return self._run(self.intake.flush(), rows)

    def retire(self, rows: GridRows | None = None) -> tuple[Resonance, RetiredSensor]:
        """Decide every pending grid point (as :meth:`flush`) and keep only what the next
        samples depend on.  Exact when the next sample comes more than the windows and
        ``max_gap`` after the last: :meth:`revive` then gives the values this resonator would."""
        res = self.flush(rows)
        gate, sync = self.intake.gate, self.sync
        if isinstance(sync, EmissarySync):  # its run ends: the next product, after the horizon, starts one
            return res, RetiredSensor(gate._max_t, gate._recent(), self.intake.watermark, self.intake.channels,
                                      self.intake.cell, sync.collapsed, 0j, 0, None)
        left = sync._ma if len(sync._ma) else None
        return res, RetiredSensor(gate._max_t, gate._recent(), self.intake.watermark, self.intake.channels,
                                  self.intake.cell, sync.collapsed, sync._ma_T, sync._ma_span, left)

    @classmethod
    def revive(cls, sensor: str, settings: ResonatorSettings, retired: RetiredSensor) -> Resonator:
        """A resonator for a released sensor: fresh windows and lag chain, the rest as it was."""
        r = cls(sensor, settings)
        r.intake.gate._max_t = retired.max_t
        r.intake.gate._recent_parts = [retired.recent] if retired.recent.size else []
        r.intake._last_watermark = retired.watermark
        r.intake.channels, r.intake.cell = retired.channels, retired.cell
        sync = r.sync
        sync.collapsed = retired.collapsed
        if isinstance(sync, EmissarySync):
            return r
        sync._ma_T, sync._ma_span = retired.master_T, retired.master_span_us
        if retired.master_left is not None:
            sync._ma = retired.master_left
        return r

    def _run(self, step: IntakeResult, rows: GridRows | None) -> Resonance:
        b = step.batch
        if b is None:
            return Resonance(step.dead, step.reasons, step.released, self.intake.watermark)
        if rows is None:
            rows = GridRows(b.sample_t.shape[0] + 2)
        e_at, m_at = rows.n_emissary, rows.n_master
        if isinstance(self.sync, EmissarySync):
            emissary = self.emissary.push(b.products, b.sample_t, b.watermark)
            # Every Emissary point emitted is final, and no Master to wait for: all are decided now.
            rows.append(emissary, _NO_VALUES, self.sync.advance(emissary, b.products.t))
        elif isinstance(self.emissary.window, MasterWindow) and not self.sync.waiting:
            self._pane_chain(b, rows)
        else:
            emissary = self.emissary.push(b.products, b.sample_t, b.watermark)
            master = self.master.push(b.products, b.sample_t, b.watermark)
            # Every Master point <= the watermark exists now: decide the Emissary points up to it.
            rows.append(emissary, master, self.sync.advance(emissary, master, b.watermark))
        return Resonance(step.dead, step.reasons, step.released, b.watermark, b.ingested, rows,
                         e_at, rows.n_emissary - e_at, m_at, rows.n_master - m_at)

    def _pane_chain(self, b: ProductBatch, rows: GridRows) -> None:
        """``_run``'s transducers and sync as one kernel call, when both windows are pane
        windows: the same values, the same state afterwards."""
        e, m, sync = self.emissary, self.master, self.sync
        ew, mw = e.window, m.window
        p = b.products
        ew._fit_counts(p.t)
        mw._fit_counts(p.t)
        n = b.sample_t.shape[0]  # each sample makes at most one grid point due
        rows.reserve(e._pending.shape[0] + n, m._pending.shape[0] + n)
        e_at, m_at = rows.n_emissary, rows.n_master
        ma = sync._ma
        (e._pending, m._pending, e_split, m_split, ma_t, ma_T, ma_n, ma_span, sync._ma_T, sync._ma_span,
         sync.collapsed) = _pane_chain_kernel(
            p.t, p.p, p.dt, b.sample_t, _ALL if b.watermark is None else b.watermark, ew.omega, mw.omega,
            e._pending, ew._sre, ew._sim, ew._sa, ew._meta, ew._shift, ew._ist, ew._tot, ew.pane_us,
            m._pending, mw._sre, mw._sim, mw._sa, mw._meta, mw._shift, mw._ist, mw._tot, mw.pane_us,
            ma.t, ma.T, ma.n_products, ma.span_us, sync._ma_T, sync._ma_span, sync.threshold, sync.hysteresis,
            sync.phase_threshold, sync.min_span_us, sync.collapsed,
            rows._e_int, rows._e_T, rows._s_cx, rows._s_fl, rows._s_b, rows._s_ev, rows._s_span, e_at,
            rows._m_int, rows._m_T, m_at)
        sync._ma = WindowValues(ma_t, ma_T, ma_n, ma_span)
        if p.t.shape[0]:
            ew._last_product = mw._last_product = int(p.t[-1])
        if e_split:
            rows.n_emissary = e_at + e_split
            ew._last_at = int(rows._e_int[0, e_at + e_split - 1])
        if m_split:
            rows.n_master = m_at + m_split
            mw._last_at = int(rows._m_int[0, m_at + m_split - 1])
