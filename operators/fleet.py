"""All sensors of one key group as columns: the resonate step's engine (SPEC sections 2, 3 and 8).

A :class:`Fleet` takes a call's :class:`~schemas.samples.SampleBatch` es of
any sensors of its key group and runs, for all of them at once,

1. the sensor table: a sensor id becomes an index (``sid``) the first time it
   is seen; sensors beyond the process's cap (``becomingone.max_sensors``,
   :class:`~operators.roster.SensorCapacity`) are refused (``capacity``);
2. the channel check: a sensor's channel count is fixed by its first batch
   (even one whose rows are all refused later); a batch of another count (or one that does not match
   ``kairos.channel_weights``) is refused (``channels``);
3. per channel count and kind (a *lane*), the event-time gate
   (:class:`~operators.columnar_gate.FleetGate`) and the streaming pass
   (:func:`~operators.columnar_stream.stream_resonance`), one Numba pass each
   over the call's rows; a lane of raw ``value`` sensors (SPEC section 9) has
   its released samples turned into phase samples first
   (:class:`~operators.raw_phase.RawPhase`); a sensor's kind is fixed by its
   first batch, like its channel count;
4. idle release: a sensor whose watermark lags the group's newest by more
   than its windows reach (:func:`~operators.roster.idle_horizon_us`) has its
   last grid points decided and its memory given back; its newest time, sync
   state and cell stay, so it resumes as the per-sensor engine would.

Nothing per sample is Python; per call, only a dictionary lookup per batch
and the rare rejections.  Values equal the per-sensor engine's
(:class:`~operators.resonator.Resonator`; the tests hold them equal).

>>> import numpy as np
>>> from operators.params import KairosParams
>>> from operators.resonator import ResonatorSettings
>>> from operators.roster import SensorCapacity
>>> from schemas.samples import SampleBatch, SampleRuns
>>> settings = ResonatorSettings(KairosParams(tau_us=50_000, velocity_span_us=10_000), 200_000, 10_000,
...                              1_000_000, 100_000, 0.95, 0.05, 0.1, 300_000)
>>> fleet = Fleet(settings, SensorCapacity(10))
>>> t = np.arange(1, 1001) * 1_000
>>> step = fleet.push([SampleBatch("a", t, 2 * np.pi * 5.0 * t[:, None] * 1e-6)], now_us=0)
>>> len(step.resonance.emissary.t), fleet.names
(100, ['a'])
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from operators.columnar_gate import ACCEPTED, GATE_VERSION, NEG, FleetGate, GateStep
from operators.columnar_rows import FleetResonance
from operators.columnar_state import COLLAPSED, STATE_VERSION, FleetState
from operators.columnar_stream import emit_upto, flush_rows, stream_resonance
from operators.fleet_step import EMPTY, FleetStep, Refusal, joined, refused_reasons, regrouped, with_sids
from operators.raw_phase import RawPhase, phase_channels
from operators.resonator import ResonatorSettings
from operators.roster import SensorCapacity, idle_horizon_us
from schemas.samples import SampleBatch, SampleRuns

# FleetStep, Refusal and refused_reasons are what a call hands back (operators.fleet_step), named here too.
__all__ = ["STATE_LAYOUT", "Fleet", "FleetStep", "FleetTable", "Lane", "Refusal", "refused_reasons", "state_layout"]

#: 2: the snapshot's classes moved module (samples, provenance and raw messages to ``schemas``,
#: ``SyncState`` became ``SyncMachine``): a pickle of version 1 names modules that are gone.
FLEET_VERSION = 2
#: The layout of a key group's snapshot (table, streaming state, gate): a recovery store written
#: with another layout cannot be resumed.
STATE_LAYOUT = f"fleet {FLEET_VERSION}.{STATE_VERSION}.{GATE_VERSION}"


def state_layout(light: bool) -> str:
    """The layout a recovery store is stamped with: a light node's key-group state (no Master
    rings, its run starts where a full node keeps the Master's span) is not a full node's.

    >>> state_layout(False) == STATE_LAYOUT, state_layout(True) == STATE_LAYOUT + " light"
    (True, True)
    """
    return f"{STATE_LAYOUT} light" if light else STATE_LAYOUT


@dataclass
class Lane:
    """The sensors of one channel count and kind: their gate and their streaming state, row by row;
    for raw sensors, their phase extraction (``raw``)."""

    gate: FleetGate
    state: FleetState
    sids: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # lane row -> sid
    raw: RawPhase | None = None

    def add(self, sids: np.ndarray) -> np.ndarray:
        rows = self.gate.add(len(sids))
        self.sids = np.concatenate((self.sids, sids))
        return rows


@dataclass
class FleetTable:
    """A key group's sensors as snapshotted: what a resumed :class:`Fleet` continues from."""

    names: list[str] = field(default_factory=list)
    cells: list[str | None] = field(default_factory=list)
    lane: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))      # lane key, 0: none yet
    row: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))       # row in its lane
    live: np.ndarray = field(default_factory=lambda: np.empty(0, np.bool_))      # counted against the cap
    lanes: dict[int, Lane] = field(default_factory=dict)
    newest: int | None = None
    next_sweep: int | None = None
    version: int = FLEET_VERSION


class Fleet:
    """The sensors of one key group (state: :class:`FleetTable`).

    Args:
        settings: windows, grids, thresholds, event-time rules.
        capacity: the process's cap on live sensors (shared by its key groups).
        table: a resumed state.
    """

    def __init__(self, settings: ResonatorSettings, capacity: SensorCapacity, table: FleetTable | None = None):
        if table is not None and getattr(table, "version", None) != FLEET_VERSION:
            raise ValueError(f"this snapshot holds key-group state of another layout "
                             f"({type(table).__name__}, version {getattr(table, 'version', None)}); this code "
                             f"reads layout {FLEET_VERSION}: replay the input from its start instead")
        if table is not None and any(lane.state.settings.light != settings.light for lane in table.lanes.values()):
            held, wanted = ("light", "full") if not settings.light else ("full", "light")
            raise ValueError(f"this snapshot holds the key-group state of a {held} node, and becomingone.node is "
                             f"{wanted!r}: run it as a {held} node, or replay the input from its start instead")
        if table is not None:
            _check_raw_lanes(table, settings)
        self.table = table if table is not None else FleetTable()
        self.settings = settings
        self.capacity = capacity
        self.horizon_us = idle_horizon_us(settings)
        self._index = {name: sid for sid, name in enumerate(self.table.names)}
        weights = settings.params.weights
        self._weights = None if weights is None else len(weights)
        capacity.add_resumed(int(self.table.live.sum()))

    @property
    def names(self) -> list[str]:
        return self.table.names

    def sid_of(self, name: str) -> int:
        """The index of a sensor seen before."""
        return self._index[name]

    def live_count(self) -> int:
        return int(self.table.live[:len(self.table.names)].sum())

    def collapsed(self, sids: np.ndarray) -> np.ndarray:
        """Whether each sensor is collapsed now."""
        out = np.zeros(len(sids), np.bool_)
        t = self.table
        for channels, lane in t.lanes.items():
            mine = t.lane[sids] == channels
            if mine.any():
                frows = lane.state.rows_of(t.row[sids[mine]])
                out[mine] = lane.state.ints[frows, COLLAPSED] == 1
        return out

    def raw_rates(self) -> dict[int, tuple[float | None, str | None]]:
        """Raw sensors (sid): the sampling rate (Hz) each one's current chain measured (None: not yet), and
        why it gives no phase at that rate (None: it does)."""
        t, out = self.table, {}
        for key, lane in t.lanes.items():
            if lane.raw is not None:
                sids = np.flatnonzero(t.lane[:len(t.names)] == key)
                out.update(zip(sids.tolist(), lane.raw.rates(t.row[sids])))
        return out

    def refused_rates(self) -> dict[float, str]:
        """Sampling rates (Hz) whose raw sensors give no phase (the band does not fit), and why."""
        out: dict[float, str] = {}
        for lane in self.table.lanes.values():
            if lane.raw is not None:
                out.update(lane.raw.refused())
        return out

    # --- a call ------------------------------------------------------------------------------------

    def push(self, batches: list[SampleBatch], now_us: int) -> FleetStep:
        """Integrate a call's batches (arrival order within each sensor)."""
        return self.push_runs(SampleRuns.blocks(batches), now_us)

    def push_runs(self, blocks: list[SampleRuns], now_us: int) -> FleetStep:
        """Integrate a call's blocks of runs (a run: rows of one sensor, arrival order; blocks in arrival order)."""
        t = self.table
        blocks = [b for b in blocks if len(b.names)]
        if not blocks:
            return FleetStep(EMPTY)
        names = [n for b in blocks for n in b.names] if len(blocks) > 1 else blocks[0].names
        try:    # known sensors (every call after the first): one C-level lookup each
            sids = np.fromiter(map(self._index.__getitem__, names), np.int64, len(names))
        except KeyError:
            sids = np.fromiter((self._sid(n) for n in names), np.int64, len(names))
        per_block = [len(b.names) for b in blocks]
        block_of = np.repeat(np.arange(len(blocks)), per_block)
        local = np.arange(len(names)) - np.repeat(np.cumsum(per_block) - per_block, per_block)
        keys = [_lane_key(b.channels, b.raw) for b in blocks]
        widths = np.repeat(np.array(keys, np.int64), per_block)
        counts = np.concatenate([b.counts for b in blocks]) if len(blocks) > 1 else blocks[0].counts

        def batch(k: int) -> SampleBatch:
            return blocks[int(block_of[k])].batch(int(local[k]))

        refusals: list[Refusal] = []
        keep = np.ones(len(names), np.bool_)
        self._admit(sids, batch, keep, refusals)
        base = 0
        for b in blocks:
            if b.cells is not None:
                for k, cell in enumerate(b.cells):
                    if cell is not None:
                        t.cells[int(sids[base + k])] = cell
            base += len(b.names)
        self._lanes_of(sids, widths, keep, batch, refusals)
        parts, released, phases, newest, accepted = [], [], [], None, 0
        for key in np.unique(widths[keep]).tolist():
            lane = t.lanes[key]
            mine = keep & (widths == key)
            runs = np.flatnonzero(mine)
            if len(blocks) == 1 and mine.all():   # the usual call: every run kept, the columns as they are
                tt, ph = blocks[0].t_us, blocks[0].phase
            elif len(blocks) == 1:
                rows_mask = np.repeat(mine, counts)
                tt, ph = blocks[0].t_us[rows_mask], blocks[0].phase[rows_mask]
            else:
                tt = np.concatenate([b.t_us for b in blocks])[np.repeat(mine, counts)]
                ph = np.concatenate([b.phase for b, k in zip(blocks, keys) if k == key])
                ph = ph[np.repeat(mine[widths == key], counts[widths == key])]
            rows = np.repeat(t.row[sids[runs]], counts[runs])
            step = lane.gate.push(rows, tt, ph, now_us)
            self._gate_refusals(step, runs, counts[runs], batch, refusals)
            touched = np.flatnonzero(np.bincount(rows, minlength=lane.gate.n))
            wm = lane.gate.watermark(touched)
            fixed = wm != NEG
            if fixed.any():
                newest = max(newest if newest is not None else NEG, int(wm[fixed].max()))
            part, entered = self._stream(lane, step.rows, step.t, step.phase)
            # A raw lane's phases lag its input (the filter's half length): its points are decided by
            # the phase samples as they come, never ahead of them by the input's watermark.
            if self.settings.lateness_us and fixed.any() and lane.raw is None:
                # The watermark trails the newest sample: points up to it are final before a sample reaches them.
                ids, marks = touched[fixed], wm[fixed]
                late = with_sids(emit_upto(lane.state, lane.state.rows_of(ids), marks), lane.sids)
                part = regrouped(joined([part, late]))
            parts.append(part)
            released.append((lane.sids[step.rows], step.t, step.phase))
            phases.append(entered)
            accepted += int(step.t.shape[0])
        if newest is not None and (t.newest is None or newest > t.newest):
            t.newest = newest
        return FleetStep(joined(parts), released, refusals, accepted, newest, min(b.ingested for b in blocks),
                         phases, [key < 0 for key in np.unique(widths[keep]).tolist()])

    def flush(self) -> FleetStep:
        """End of input: release every buffered sample and decide every pending grid point."""
        return self._finish(np.flatnonzero(self.table.lane[:len(self.table.names)] != 0), release=False)

    def sweep_due(self) -> bool:
        """True when :meth:`release_idle` would look at the sensors (every half horizon of event time)."""
        t = self.table
        return (self.horizon_us is not None and t.newest is not None
                and (t.next_sweep is None or t.newest >= t.next_sweep))

    def release_idle(self) -> FleetStep | None:
        """Decide the last grid points of every sensor idle beyond the horizon and give back its
        memory; None when no sweep is due or no sensor is idle."""
        if not self.sweep_due():
            return None
        t, horizon = self.table, self.horizon_us
        t.next_sweep = t.newest + horizon // 2
        cutoff = t.newest - horizon
        n = len(t.names)
        wm = np.full(n, NEG, np.int64)
        for channels, lane in t.lanes.items():
            mine = np.flatnonzero(t.lane[:n] == channels)
            wm[mine] = lane.gate.watermark(t.row[mine])
        idle = np.flatnonzero(t.live[:n] & (wm < cutoff))   # never accepted (NEG) is idle too
        if not idle.size:
            return None
        step = self._finish(idle, release=True)
        t.live[idle] = False
        self.capacity.give_back(int(idle.size))
        return step

    def close(self) -> None:
        """This group's live sensors no longer count against the process's cap."""
        self.capacity.give_back(self.live_count())

    # --- parts -------------------------------------------------------------------------------------

    def _sid(self, name: str) -> int:
        sid = self._index.get(name)
        if sid is None:
            t = self.table
            sid = self._index[name] = len(t.names)
            t.names.append(name)
            t.cells.append(None)
            if sid >= t.lane.shape[0]:
                size = max(64, 2 * t.lane.shape[0])
                t.lane = _grown(t.lane, size, 0)
                t.row = _grown(t.row, size, -1)
                t.live = _grown(t.live, size, False)
        return sid

    def _admit(self, sids: np.ndarray, batch, keep: np.ndarray, refusals: list[Refusal]) -> None:
        """Sensors not live take a place under the cap, in order of their first run; the others' runs
        are refused (``capacity``)."""
        t = self.table
        waiting = ~t.live[sids]
        if not waiting.any():
            return
        for k in np.flatnonzero(waiting).tolist():
            sid = int(sids[k])
            if t.live[sid]:
                continue  # admitted by an earlier run of this call
            if self.capacity.take():
                t.live[sid] = True
            else:
                keep[k] = False
                refusals.append(Refusal(batch(k), "capacity",
                                        f"sensor {t.names[sid]!r} would go beyond becomingone.max_sensors "
                                        f"({self.capacity.limit:,} live sensors in this process)"))

    def _lanes_of(self, sids: np.ndarray, widths: np.ndarray, keep: np.ndarray, batch,
                  refusals: list[Refusal]) -> None:
        """The kind and channel check: a sensor's first run fixes its lane (``widths``: lane keys, see
        :func:`_lane_key`); runs of another kind are refused (``schema``), as are raw runs when no
        ``kairos.phase_band`` is set; runs of another count, or of a count other than
        ``kairos.channel_weights``', are refused (``channels``)."""
        t = self.table
        if self.settings.phase_band is None and (widths < 0).any():
            for k in np.flatnonzero(keep & (widths < 0)).tolist():
                keep[k] = False
                refusals.append(Refusal(batch(k), "schema", "raw value samples need kairos.phase_band, the band "
                                        "their phase is extracted from (docs/raw-signals.md)"))
        joined: dict[int, list[int]] = {}
        for k in np.flatnonzero(keep & (t.lane[sids] == 0)).tolist():   # new sensors, in arrival order
            sid, w = int(sids[k]), int(widths[k])
            if t.lane[sid] == 0 and (self._weights is None or self._phase_width(w) == self._weights):
                t.lane[sid] = w
                joined.setdefault(w, []).append(sid)
        for w, new in joined.items():
            self._assign(np.array(new, np.int64), w)
        lane = t.lane[sids]
        bad = keep & ((lane != widths) | (self._weights is not None and
                                          np.array([self._phase_width(w) for w in widths.tolist()]) != self._weights))
        for k in np.flatnonzero(bad).tolist():
            keep[k] = False
            fixed, w = int(lane[k]), int(widths[k])
            if fixed and (fixed < 0) != (w < 0):
                kind = "raw values where the sensor sends phases" if w < 0 else \
                    "phases where the sensor sends raw values"
                refusals.append(Refusal(batch(k), "schema", kind))
            else:
                refusals.append(Refusal(batch(k), "channels", self._channel_problem(int(sids[k]), w)))

    def _phase_width(self, key: int) -> int:
        """The phase channels a sensor of lane ``key`` gives the estimator."""
        return key if key > 0 else phase_channels(self.settings.phase_method, -key)

    def _channel_problem(self, sid: int, key: int) -> str | None:
        fixed, channels = int(self.table.lane[sid]), abs(key)
        if fixed and key != fixed:
            return f"{channels} channels where the sensor has {abs(fixed)}"
        if self._weights is not None and self._phase_width(key) != self._weights:
            return f"{self._phase_width(key)} phase channels where kairos.channel_weights has {self._weights} weights"
        return None

    def _assign(self, sids: np.ndarray, key: int) -> None:
        """Rows in the lane ``key`` for sensors that join it (their lane is set already)."""
        t = self.table
        lane = t.lanes.get(key)
        if lane is None:
            s = self.settings
            raw = None if key > 0 else RawPhase.for_band(s.phase_band, s.phase_method, s.params.max_gap_us)
            # Duplicates are told from late samples within max(1 s, lateness) of the watermark, as the per-sensor gate.
            lane = t.lanes[key] = Lane(FleetGate(abs(key), s.lateness_us, s.max_future_us),
                                       FleetState(s, self._phase_width(key)), raw=raw)
        t.row[sids] = lane.add(sids)

    def _gate_refusals(self, step: GateStep, runs: np.ndarray, counts: np.ndarray, batch,
                       refusals: list[Refusal]) -> None:
        """Refusals of the rows the gate rejected: ``runs`` (call run numbers) hold ``counts`` rows each."""
        bad = np.flatnonzero(step.status != ACCEPTED)
        if not bad.size:
            return
        ends = np.cumsum(counts)
        for k in np.unique(np.searchsorted(ends, bad, side="right")).tolist():
            a, b = int(ends[k] - counts[k]), int(ends[k])
            refusals.append(Refusal(batch(int(runs[k])), status=step.status[a:b],
                                    watermark_in=step.watermark_in[a:b]))

    def _stream(self, lane: Lane, rows: np.ndarray, t: np.ndarray, phase: np.ndarray,
                final_rows: np.ndarray | None = None
                ) -> tuple[FleetResonance, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """The lane's grid rows for the released samples, and the phase samples that entered (sid, t, phase)."""
        if lane.raw is not None:
            rows, t, phase = lane.raw.phases(rows, t, phase)
        res = stream_resonance(lane.state, rows, t, phase)
        if final_rows is not None and final_rows.size:
            res = joined([res, flush_rows(lane.state, lane.state.rows_of(final_rows))])
        return with_sids(res, lane.sids), (lane.sids[rows], t, phase)

    def _finish(self, sids: np.ndarray, release: bool) -> FleetStep:
        """Release everything the sensors buffer and decide their pending grid points; with ``release``,
        give their chains and windows back."""
        t = self.table
        parts, released, phases, raw, accepted = [], [], [], [], 0
        for key, lane in t.lanes.items():
            mine = sids[t.lane[sids] == key]
            if not mine.size:
                continue
            rows = t.row[mine]
            r, tt, ph = lane.gate.release(rows, everything=True)
            part, entered = self._stream(lane, r, tt, ph, final_rows=rows)
            parts.append(part)
            released.append((lane.sids[r], tt, ph))
            phases.append(entered)
            raw.append(key < 0)
            accepted += int(tt.shape[0])
            if release:
                lane.gate.forget(rows)
                lane.state.release(lane.state.rows_of(rows))
                if lane.raw is not None:
                    lane.raw.forget(rows)
        return FleetStep(joined(parts), released, [], accepted, None, phases=phases, raw=raw)


def _check_raw_lanes(table: FleetTable, settings: ResonatorSettings) -> None:
    """A resumed key group's raw sensors must go on with the band and method they started with: their
    filters' rings and detectors are of that band, and a phase from two bands is no one phase."""
    for lane in table.lanes.values():
        raw = getattr(lane, "raw", None)
        if raw is None:
            continue
        held = ((raw.track.f_lo, raw.track.f_hi), raw.method)
        wanted = (None if settings.phase_band is None else tuple(float(f) for f in settings.phase_band),
                  settings.phase_method)
        if held != wanted:
            raise ValueError(
                f"this snapshot's raw sensors extract their phase from {held[0][0]:g} to {held[0][1]:g} Hz "
                f"({held[1]}), and the config asks for kairos.phase_band {settings.phase_band} "
                f"({settings.phase_method}): run with the band and method of the snapshot, or replay the "
                f"input from its start (without the recovery store) instead")


def _lane_key(channels: int, raw: bool) -> int:
    """A lane's key in :attr:`FleetTable.lanes`: its channel count, negative for raw sensors.

    >>> _lane_key(3, False), _lane_key(3, True)
    (3, -3)
    """
    return -channels if raw else channels


def _grown(a: np.ndarray, size: int, fill) -> np.ndarray:
    out = np.full(size, fill, a.dtype)
    out[:a.shape[0]] = a
    return out
