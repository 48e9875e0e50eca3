"""What one call of a key group's :class:`~operators.fleet.Fleet` produced: the grid rows of its
sensors, the samples it released and the phases that entered the estimator, and the rows it refused;
with the joins that put the lanes' parts together."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from operators.columnar_gate import ACCEPTED, REASONS
from operators.columnar_rows import FleetResonance, FleetSyncValues, FleetWindowValues
from schemas.samples import SampleBatch

__all__ = ["EMPTY", "FleetStep", "Refusal", "joined", "refused_reasons", "regrouped", "with_sids"]


@dataclass
class Refusal:
    """Rows of one batch refused by the fleet: the batch, a status per row (ACCEPTED: kept) or one
    reason for all, and the watermark each ``late`` row met."""

    batch: SampleBatch
    reason: str | None = None                      # one reason for every row (capacity, channels)
    text: str | None = None
    status: np.ndarray | None = None               # else a gate status per row
    watermark_in: np.ndarray | None = None


@dataclass
class FleetStep:
    """What one call did.

    Attributes:
        resonance: grid rows of every sensor; ``sensor`` columns hold sids, rows grouped by sensor.
        released: the samples released now as (sid per row, t, phase) per lane, grouped by sensor;
            a raw lane's hold its raw values.
        phases: the phase samples that entered the estimator now, as (sid, t, phase) per lane: the
            released samples of phase lanes, the extracted phases of raw lanes.
        raw: per entry of ``released``, whether it holds raw values.
        refusals: the rejected rows, batch by batch.
        accepted: samples released now.
        watermark: the newest watermark of the call's sensors (us), or None.
        ingested: the earliest decode time (epoch s) of the call's rows.
    """

    resonance: FleetResonance
    released: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    accepted: int = 0
    watermark: int | None = None
    ingested: float = math.inf
    phases: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    raw: list[bool] = field(default_factory=list)


def refused_reasons(refusal: Refusal) -> tuple[np.ndarray, list[str]]:
    """(rows of the refusal's batch that were refused, the reason of each)."""
    if refusal.reason is not None:
        return np.arange(len(refusal.batch)), [refusal.reason] * len(refusal.batch)
    bad = np.flatnonzero(refusal.status != ACCEPTED)
    return bad, [REASONS[int(s)] for s in refusal.status[bad].tolist()]


def with_sids(res: FleetResonance, sids: np.ndarray) -> FleetResonance:
    """``res`` with its lane rows replaced by sensor ids."""
    e, m, s = res
    e_sid = sids[e.sensor]
    return FleetResonance(e._replace(sensor=e_sid), m._replace(sensor=sids[m.sensor]), s._replace(sensor=e_sid))


def regrouped(res: FleetResonance) -> FleetResonance:
    """``res`` with each sensor's rows together (stable: time order within a sensor stays)."""
    e, m, s = res
    eo, mo = np.argsort(e.sensor, kind="stable"), np.argsort(m.sensor, kind="stable")
    return FleetResonance(FleetWindowValues(*(c[eo] for c in e)), FleetWindowValues(*(c[mo] for c in m)),
                          FleetSyncValues(*(c[eo] for c in s)))


def joined(parts: list[FleetResonance]) -> FleetResonance:
    if len(parts) == 1:
        return parts[0]
    if not parts:
        return EMPTY
    return FleetResonance(FleetWindowValues(*(np.concatenate(c) for c in zip(*(p.emissary for p in parts)))),
                          FleetWindowValues(*(np.concatenate(c) for c in zip(*(p.master for p in parts)))),
                          FleetSyncValues(*(np.concatenate(c) for c in zip(*(p.sync for p in parts)))))


def _empty_window() -> FleetWindowValues:
    return FleetWindowValues(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.complex128),
                             np.empty(0, np.int64), np.empty(0, np.int64))


EMPTY = FleetResonance(_empty_window(), _empty_window(), FleetSyncValues(
    np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.complex128), np.empty(0, np.complex128),
    np.empty(0, np.complex128), np.empty(0), np.empty(0), np.empty(0, np.bool_), np.empty(0, np.bool_),
    np.empty(0, np.int8), np.empty(0, np.int64)))
