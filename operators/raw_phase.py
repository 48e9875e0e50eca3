"""Raw sensors' phase inside a key group (SPEC section 9): the samples a lane's event-time gate
releases, in, the phase samples that enter the estimator, out.

A raw sensor sends ``value`` samples (microvolts, millivolts, ...).  Per lane of raw sensors a
:class:`RawPhase` holds the state of the method ``kairos.phase_method`` picks:

* ``hilbert``: :func:`~operators.phase_extraction.extract_phases`, the phase of the analytic
  signal in ``kairos.phase_band``, one phase per channel, stamped at the filter's centre sample;
* ``events``: the same analytic band-pass, whose real part (the band-passed signal, also stamped
  at the centre sample) feeds :func:`~operators.beat_phase.beat_phases`, 2 pi per detected peak
  of the first channel, linear in between: one phase channel whatever the sensor's count.

Both are causal and carry their state across calls by sensor, so the phase samples do not
depend on how the input is split into calls; they lag the input by the filter's half length
(and, for events, until the next event), which the grid rows therefore lag too.

>>> rp = RawPhase.for_band((8.0, 12.0), "hilbert", max_gap_us=5_000_000)
>>> t = np.arange(300, dtype=np.int64) * 4_000                         # 250 Hz
>>> rows, ts, ph = rp.phases(np.zeros(300, np.int64), t, np.cos(2 * np.pi * 10.0 * t * 1e-6)[:, None])
>>> len(ts), int(ts[0]), ph.shape, rp.rates(np.array([0]))
(72, 456000, (72, 1), [(250.0, None)])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from operators.beat_phase import BeatRule, BeatTrack, beat_phases
from operators.phase_design import design_rate
from operators.phase_extraction import PhaseTrack, extract_phases

__all__ = ["RawPhase", "phase_channels"]

_NONE = np.iinfo(np.int64).min


def phase_channels(method: str, channels: int) -> int:
    """Phase channels the estimator gets from a raw sensor of ``channels`` channels.

    >>> phase_channels("hilbert", 3), phase_channels("events", 3)
    (3, 1)
    """
    return 1 if method == "events" else channels


@dataclass
class RawPhase:
    """The phase state of one lane of raw sensors, by lane row.

    Attributes:
        track: the analytic filters and each row's ring of its last samples.
        method: ``hilbert`` or ``events``.
        max_gap_us: a longer step between two samples restarts the filter (and the detector).
        beats: the event detector's state (``events`` only).
        rule: the detector's settings (``events`` only).
    """

    track: PhaseTrack
    method: str
    max_gap_us: int
    beats: BeatTrack | None = None
    rule: BeatRule | None = None

    @classmethod
    def for_band(cls, band: tuple[float, float], method: str, max_gap_us: int) -> RawPhase:
        if method not in ("hilbert", "events"):
            raise ValueError(f"phase method must be 'hilbert' or 'events', got {method!r}")
        track = PhaseTrack(float(band[0]), float(band[1]))
        if method == "hilbert":
            return cls(track, method, max_gap_us)
        return cls(track, method, max_gap_us, BeatTrack.empty(), BeatRule(max_gap_us=max_gap_us))

    def phases(self, rows: np.ndarray, t: np.ndarray, values: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row, t, phase (n, C')) of the phase samples the released samples complete, grouped by row
        in time order.  ``rows``: the lane row of each sample, each row's samples in increasing time."""
        out = extract_phases(self.track, rows, t, values, self.max_gap_us)
        if self.beats is None:
            return out.sid, out.t, out.phase
        band_passed = out.amplitude[:, 0] * np.cos(out.phase[:, 0])
        beats = beat_phases(self.beats, self.rule, out.sid, out.t, band_passed)
        return beats.sid, beats.t, beats.phase.reshape(-1, 1)

    def forget(self, rows: np.ndarray) -> None:
        """The rows' sensors start afresh (a released idle sensor): a new chain and warm-up next time."""
        tr = self.track
        mine = rows[rows < tr.t_last.shape[0]]
        tr.t_last[mine], tr.count[mine], tr.period[mine] = _NONE, 0, 0
        if self.beats is not None:
            b = self.beats
            mine = rows[rows < b.t_prev.shape[0]]
            b.t_prev[mine] = _NONE
            waiting = ~np.isin(b.wait_sid, rows)
            b.wait_sid, b.wait_t = b.wait_sid[waiting], b.wait_t[waiting]

    def rates(self, rows: np.ndarray) -> list[tuple[float | None, str | None]]:
        """Each row's sampling rate as its current chain measured it (Hz; None before two samples), and why
        no phase comes from it when the band cannot be extracted at that rate (else None)."""
        tr = self.track
        out: list[tuple[float | None, str | None]] = []
        for r in rows.tolist():
            period = int(tr.dperiod[r]) if r < tr.dperiod.shape[0] else 0
            if period <= 0:
                out.append((None, None))
            else:
                rate = design_rate(period)      # 4 significant digits: 360 Hz, not 359.97
                out.append((rate, tr.refused.get(rate)))
        return out

    def refused(self) -> dict[float, str]:
        """Sampling rates (Hz) at which the band cannot be extracted, and why: their samples give no phase."""
        return dict(self.track.refused)
