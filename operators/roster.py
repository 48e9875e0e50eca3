"""The sensors of one key group: live resonators, released ones, and the per-process cap (SPEC section 8).

Every new sensor id costs a :class:`~operators.resonator.Resonator` (tens of
kilobytes, a megabyte once its Master window fills), so a stream of
short-lived ids would grow memory without end.  A :class:`Roster` releases a
sensor's windows once it has been idle longer than they reach back, measured
in event time: its key group's newest watermark is more than
:func:`idle_horizon_us` past the sensor's own (or it never had a sample
accepted).  The sweep runs every half horizon of the group's event time.  By then nothing it
integrated can enter a window again and its next sample starts a new chain,
so a fresh resonator gives the same values.  What the next sample still
depends on is kept in a :class:`~operators.resonator.RetiredSensor` of a few
hundred bytes: the newest time seen (older samples stay ``late``), the
collapse state and the Master value in force, the channel count and the cell.

:class:`SensorCapacity` caps the live sensors of a process
(``becomingone.max_sensors``); samples of a sensor that would go beyond it
are dead letters ``capacity``.

>>> from operators.params import KairosParams
>>> from operators.resonator import ResonatorSettings
>>> settings = ResonatorSettings(KairosParams.from_seconds(0.05, velocity_span=0.01, max_gap=1.0),
...     emissary_window_us=200_000, emissary_interval_us=10_000, master_window_us=1_000_000,
...     master_interval_us=100_000, threshold=0.95, hysteresis=0.05, phase_threshold=0.1,
...     min_span_us=300_000)
>>> roster = Roster(settings, SensorCapacity(2))
>>> [roster.resonator(s) is not None for s in ("a", "b", "c")]    # the third is beyond the cap
[True, True, False]
>>> idle_horizon_us(settings)
1110000
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from operators.params import NO_GAP_LIMIT
from operators.resonator import GridRows, Resonance, Resonator, ResonatorSettings, RetiredSensor

__all__ = ["Roster", "RosterState", "SensorCapacity", "idle_horizon_us"]


def idle_horizon_us(settings: ResonatorSettings) -> int | None:
    """Event time a sensor must lag its key group before its windows are released (us):
    the longest window or ``max_gap``, whichever is longer, plus both emission intervals
    and the lateness (a light node has no Master: the Emissary's window and interval only).
    None when ``max_gap`` never splits a chain (nothing is released)."""
    if settings.params.max_gap_us >= NO_GAP_LIMIT:
        return None
    if settings.light:
        reach = max(settings.emissary_window_us, settings.params.max_gap_us)
        return reach + settings.emissary_interval_us + settings.lateness_us
    reach = max(settings.master_window_us, settings.emissary_window_us, settings.params.max_gap_us)
    return reach + settings.master_interval_us + settings.emissary_interval_us + settings.lateness_us


class SensorCapacity:
    """Live sensors of a process, up to ``limit`` (thread-safe: workers share a process)."""

    def __init__(self, limit: int) -> None:
        self.limit = int(limit)
        self.live = 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        """One more live sensor, if the cap allows it."""
        with self._lock:
            if self.live >= self.limit:
                return False
            self.live += 1
            return True

    def give_back(self, n: int = 1) -> None:
        with self._lock:
            self.live -= n

    def add_resumed(self, n: int) -> None:
        """Sensors resumed from a snapshot: they count, even beyond the cap."""
        with self._lock:
            self.live += n


@dataclass
class RosterState:
    """A key group's sensors as snapshotted: live resonators, released sensors, the
    group's newest watermark and the event time of the next sweep for idle sensors."""

    live: dict[str, Resonator] = field(default_factory=dict)
    retired: dict[str, RetiredSensor] = field(default_factory=dict)
    newest: int | None = None
    next_sweep: int | None = None


class Roster:
    """The sensors of one key group (state: :class:`RosterState`).

    Args:
        settings: the resonators' settings.
        capacity: the process's cap on live sensors.
        state: resumed state (a plain ``{sensor: Resonator}`` of earlier
            versions is taken as the live sensors).
    """

    def __init__(self, settings: ResonatorSettings, capacity: SensorCapacity,
                 state: RosterState | dict[str, Resonator] | None = None) -> None:
        if isinstance(state, dict):
            state = RosterState(live=state)
        self.state = state if state is not None else RosterState()
        self.settings = settings
        self.capacity = capacity
        self.horizon_us = idle_horizon_us(settings)
        # Resumed sensors count against the cap (beyond it they still run; nothing new is admitted).
        capacity.add_resumed(len(self.state.live))

    def resonator(self, sensor: str) -> Resonator | None:
        """The sensor's live resonator (revived or new if need be), or None beyond the cap."""
        r = self.state.live.get(sensor)
        if r is not None:
            return r
        if not self.capacity.take():
            return None
        retired = self.state.retired.pop(sensor, None)
        r = Resonator(sensor, self.settings) if retired is None else Resonator.revive(sensor, self.settings, retired)
        self.state.live[sensor] = r
        return r

    def observe(self, watermark: int | None) -> None:
        """A sensor's watermark after a call: the group's newest moves with it."""
        if watermark is not None and (self.state.newest is None or watermark > self.state.newest):
            self.state.newest = watermark

    def sweep_due(self) -> bool:
        """True when :meth:`release_idle` would look at the sensors (every half horizon of event time)."""
        s = self.state
        return (self.horizon_us is not None and s.newest is not None
                and (s.next_sweep is None or s.newest >= s.next_sweep))

    def release_idle(self, rows: GridRows | None) -> list[tuple[Resonator, Resonance]]:
        """Release the windows of every sensor idle beyond the horizon; what their last grid
        points became (written to ``rows``).  Sweeps only when :meth:`sweep_due`."""
        if not self.sweep_due():
            return []
        s, horizon = self.state, self.horizon_us
        s.next_sweep = s.newest + horizon // 2
        cutoff = s.newest - horizon
        # A sensor that never had a sample accepted holds nothing: it goes at any sweep.
        idle = [r for r in s.live.values() if r.intake.watermark is None or r.intake.watermark < cutoff]
        steps = []
        for r in sorted(idle, key=lambda r: r.sensor):
            res, retired = r.retire(rows)
            del s.live[r.sensor]
            s.retired[r.sensor] = retired
            steps.append((r, res))
        if steps:
            self.capacity.give_back(len(steps))
        return steps

    def close(self) -> None:
        """This roster's live sensors no longer count against the process's cap."""
        self.capacity.give_back(len(self.state.live))
