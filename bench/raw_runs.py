"""Raw samples through the estimator of a config, as the flow's resonate step runs them (SPEC section 9).

A raw sensor's ``value`` samples go through an :class:`~operators.fleet.Fleet` whose settings
carry ``kairos.phase_band`` and ``kairos.phase_method``: after the event-time gate its lane
extracts the phase (:mod:`operators.raw_phase`: the analytic band-pass of the band, and for
``events`` the beat phase of its real part) and runs the estimator and the sync state machine
on it.  :func:`raw_sync` runs records of several sensors in calls of ``call_s`` seconds of event
time and returns each sensor's sync rows, for the example configs' docs, figures and tests;
:func:`raw_settings` reads a config file's settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.raw_signals import RawRecord
from operators.fleet import Fleet
from operators.resonator import ResonatorSettings, resonator_settings
from operators.roster import SensorCapacity
from schemas.config import load_config
from schemas.samples import SampleBatch

__all__ = ["SyncTrace", "raw_settings", "raw_sync"]


@dataclass(frozen=True)
class SyncTrace:
    """One sensor's sync rows: Emissary grid times (us), |T_sync|^2, whether the Master was mature,
    collapsed (0/1), event codes (0 none, 1 collapse, 2 dissipate: coherence, 3 dissipate: phase),
    and the Emissary's and the Master's |T|^2."""

    t: np.ndarray
    coherence: np.ndarray
    mature: np.ndarray
    collapsed: np.ndarray
    event: np.ndarray
    emissary: np.ndarray
    master: np.ndarray

    def events(self) -> list[tuple[int, int]]:
        """(time us, code) of every collapse and dissipation."""
        at = np.flatnonzero(self.event)
        return [(int(self.t[i]), int(self.event[i])) for i in at]

    def collapsed_share(self, t_from: int, t_to: int) -> float:
        """The share of grid points in [t_from, t_to) at which the sensor was collapsed."""
        inside = (self.t >= t_from) & (self.t < t_to)
        return float(self.collapsed[inside].mean()) if inside.any() else 0.0


def raw_settings(path: str | Path) -> ResonatorSettings:
    """The estimator's settings of a config file (no environment overrides), band and method included."""
    settings = resonator_settings(load_config(path, environ={}), replay=True)
    if settings.phase_band is None:
        raise ValueError(f"{path}: kairos.phase_band is not set, so raw samples would be refused")
    return settings


def raw_sync(settings: ResonatorSettings, records: dict[str, RawRecord], call_s: float = 10.0
             ) -> dict[str, SyncTrace]:
    """Each record as raw samples through one Fleet, in calls of ``call_s`` seconds of event time."""
    if call_s <= 0:
        raise ValueError(f"call_s must be positive, got {call_s}")
    fleet = Fleet(settings, SensorCapacity(len(records)))
    start = min(int(r.t[0]) for r in records.values())
    end = max(int(r.t[-1]) for r in records.values())
    steps = []
    for lo in range(start, end + 1, round(call_s * 1e6)):
        hi = lo + round(call_s * 1e6)
        batches = []
        for name, rec in records.items():
            a, b = np.searchsorted(rec.t, [lo, hi])
            if b > a:
                batches.append(SampleBatch(name, rec.t[a:b], rec.value[a:b, None], raw=True))
        steps.append(fleet.push(batches, now_us=hi))
    steps.append(fleet.flush())
    return {name: _trace(fleet, steps, name) for name in records}


def _trace(fleet: Fleet, steps: list, name: str) -> SyncTrace:
    fields = ("t", "coherence_sync", "mature", "collapsed", "event", "T_emissary", "T_master")
    if name not in fleet.names:
        return SyncTrace(*(np.empty(0) for _ in fields))
    s = fleet.sid_of(name)
    parts = [step.resonance.sync for step in steps]
    col = {f: np.concatenate([getattr(p, f)[p.sensor == s] for p in parts]) for f in fields}
    return SyncTrace(col["t"], col["coherence_sync"], col["mature"].astype(bool), col["collapsed"].astype(np.int8),
                     col["event"].astype(np.int8), np.abs(col["T_emissary"]) ** 2, np.abs(col["T_master"]) ** 2)
