"""Raw samples through phase extraction and the estimator, as the flow composes them (SPEC section 9).

Per raw sensor, after the event-time gate:

- ``kairos.phase_method: hilbert`` - :func:`~operators.phase_extraction.extract_phases` with
  the band ``kairos.phase_band`` and ``kairos.max_gap``; its phases are the phase samples;
- ``kairos.phase_method: events`` - the same analytic band-pass, then
  :func:`~operators.beat_phase.beat_phases` on its real part (``amplitude * cos(phase)``, the
  band-passed signal, first channel) with ``BeatRule(max_gap_us=kairos.max_gap)``;

and the phase samples go through an :class:`~operators.fleet.Fleet` (windows, sync state
machine).  :func:`raw_sync` runs records of several sensors in calls of ``call_s`` seconds of
event time and returns each sensor's sync rows, for the example configs' docs, figures and tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from bench.raw_signals import RawRecord
from operators.beat_phase import BeatRule, BeatTrack, beat_phases
from operators.fleet import Fleet
from operators.phase_extraction import PhaseTrack, extract_phases
from operators.resonator import ResonatorSettings, resonator_settings
from operators.roster import SensorCapacity
from schemas.config import parse_config
from schemas.samples import SampleBatch

__all__ = ["RawSettings", "SyncTrace", "raw_settings", "raw_sync"]


@dataclass(frozen=True)
class RawSettings:
    """A raw sensor's path: the band (Hz), the method, max_gap (us) and the estimator's settings."""

    band: tuple[float, float]
    method: str
    max_gap_us: int
    resonator: ResonatorSettings


@dataclass(frozen=True)
class SyncTrace:
    """One sensor's sync rows: Emissary grid times (us), |T_sync|^2, whether the Master was mature,
    collapsed (0/1), event codes (0 none, 1 collapse, 2 dissipate: coherence, 3 dissipate: phase),
    Emissary and Master |T|^2, and the times of the phase samples that reached the estimator (us)."""

    t: np.ndarray
    coherence: np.ndarray
    mature: np.ndarray
    collapsed: np.ndarray
    event: np.ndarray
    emissary: np.ndarray
    master: np.ndarray
    phase_t: np.ndarray

    def events(self) -> list[tuple[int, int]]:
        """(time us, code) of every collapse and dissipation."""
        at = np.flatnonzero(self.event)
        return [(int(self.t[i]), int(self.event[i])) for i in at]

    def collapsed_share(self, t_from: int, t_to: int) -> float:
        """The share of grid points in [t_from, t_to) at which the sensor was collapsed."""
        inside = (self.t >= t_from) & (self.t < t_to)
        return float(self.collapsed[inside].mean()) if inside.any() else 0.0


def raw_settings(path: str | Path) -> RawSettings:
    """The raw-sensor settings of a config file (``kairos.phase_band``, ``kairos.phase_method``)."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    kairos = dict(data.get("kairos") or {})
    band = kairos.pop("phase_band")
    method = kairos.pop("phase_method", "hilbert")
    if method not in ("hilbert", "events"):
        raise ValueError(f"kairos.phase_method must be hilbert or events, got {method!r}")
    config = parse_config({**data, "kairos": kairos})
    return RawSettings((float(band[0]), float(band[1])), method, config.kairos.max_gap_us,
                       resonator_settings(config, replay=True))


def raw_sync(raw: RawSettings, records: dict[str, RawRecord], call_s: float = 10.0) -> dict[str, SyncTrace]:
    """Each record through extraction (and the beat detector) and one Fleet, in calls of ``call_s``."""
    names = list(records)
    sid = np.concatenate([np.full(r.t.size, i, np.int64) for i, r in enumerate(records.values())])
    t = np.concatenate([r.t for r in records.values()])
    x = np.concatenate([r.value for r in records.values()])
    order = np.argsort(t, kind="stable")
    sid, t, x = sid[order], t[order], x[order]
    track, beats = PhaseTrack(*raw.band), BeatTrack.empty()
    rule = BeatRule(max_gap_us=raw.max_gap_us)
    fleet = Fleet(raw.resonator, SensorCapacity(len(names)))
    steps, stamped = [], [[] for _ in names]
    edges = np.arange(t[0], t[-1] + 1, round(call_s * 1e6))
    for lo, hi in zip(np.searchsorted(t, edges), np.append(np.searchsorted(t, edges[1:]), t.size)):
        out = extract_phases(track, sid[lo:hi], t[lo:hi], x[lo:hi, None], raw.max_gap_us)
        if raw.method == "events":
            b = beat_phases(beats, rule, out.sid, out.t, out.amplitude[:, 0] * np.cos(out.phase[:, 0]))
            s_sid, s_t, s_phase = b.sid, b.t, b.phase[:, None]
        else:
            s_sid, s_t, s_phase = out.sid, out.t, out.phase
        batches = []
        for i, name in enumerate(names):
            mine = s_sid == i
            if mine.any():
                batches.append(SampleBatch(name, s_t[mine], s_phase[mine]))
                stamped[i].append(s_t[mine])
        if batches:
            steps.append(fleet.push(batches, now_us=int(t[hi - 1])))
    steps.append(fleet.flush())
    return {name: _trace(fleet, steps, name, stamped[i]) for i, name in enumerate(names)}


def _trace(fleet: Fleet, steps: list, name: str, stamped: list[np.ndarray]) -> SyncTrace:
    if name not in fleet.names:
        e = np.empty(0)
        return SyncTrace(e.astype(np.int64), e, e.astype(bool), e.astype(np.int8), e.astype(np.int8), e, e,
                         e.astype(np.int64))
    s = fleet.sid_of(name)
    parts = [step.resonance.sync for step in steps]
    pick = [p.sensor == s for p in parts]
    col = {f: np.concatenate([getattr(p, f)[m] for p, m in zip(parts, pick)])
           for f in ("t", "coherence_sync", "mature", "collapsed", "event", "T_emissary", "T_master")}
    return SyncTrace(col["t"], col["coherence_sync"], col["mature"].astype(bool), col["collapsed"].astype(np.int8), col["event"].astype(np.int8),
                     np.abs(col["T_emissary"]) ** 2, np.abs(col["T_master"]) ** 2,
                     np.concatenate(stamped) if stamped else np.empty(0, np.int64))
