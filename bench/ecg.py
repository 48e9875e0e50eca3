"""An ECG-like pulse train whose beats are known: a regular rhythm, then ectopic beats.

For the event phase (:mod:`operators.beat_phase`, SPEC section 9) and its
docs.  Each beat at time b_j is a QRS-like Gaussian pulse and a smaller,
wider T wave (millivolts, times in seconds)

    x(t) = sum_j [ A_j exp(-(t - b_j)^2 / (2 s_qrs^2)) + A_T exp(-(t - b_j - d_T)^2 / (2 s_T^2)) ]
           + w sin(2 pi f_w t) + noise,

with s_qrs = 12 ms (a QRS of about 60 ms between the 2-sigma points), A_T =
0.3 mV at d_T = 250 ms, s_T = 40 ms, a baseline wander of w = 0.15 mV at
f_w = 0.3 Hz (breathing) and white Gaussian noise.

Rhythm.  A regular stretch of beats at ``rr_s`` (60-75 bpm is 0.8-1.0 s)
with a small sinus variability (each interval times 1 + N(0, ``hrv``)), then
an ectopic stretch: each beat is, with probability ``ectopic_share``, a
premature beat at ``prematurity * rr_s`` after the one before (amplitude
``ectopic_gain`` times the normal one), followed by a full compensatory
pause, so that the two intervals around it sum to ``2 * rr_s`` (the classic
signature of a premature ventricular beat).  Two premature beats never
follow each other.

:func:`qrs_band` is an offline linear-phase FIR band-pass (``scipy.signal.firwin``,
odd length, applied centred, so without delay) of the band QRS detectors use
(5-30 Hz; Pan & Tompkins 1985 use 5-15 Hz): what the streaming band-pass
does, minus its delay, for tests and figures.

    python -m bench.ecg     # prints the beats and the events found in one record
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import firwin

__all__ = ["EcgRecord", "ecg_record", "qrs_band"]


@dataclass(frozen=True)
class EcgRecord:
    """A synthetic record: samples (t in int64 us, value in mV), the true beat times (us),
    whether each beat is ectopic, and when the ectopic stretch starts (us)."""

    t: np.ndarray
    value: np.ndarray
    beats: np.ndarray
    ectopic: np.ndarray
    ectopic_from: int


def ecg_record(*, fs: float = 360.0, rr_s: float = 0.857, regular_s: float = 60.0, ectopic_s: float = 60.0,
               ectopic_share: float = 0.3, prematurity: float = 0.6, ectopic_gain: float = 1.3,
               hrv: float = 0.01, noise_mv: float = 0.02, start_us: int = 1_764_115_200_000_000,
               seed: int = 0) -> EcgRecord:
    """A regular stretch of ``regular_s`` seconds, then ``ectopic_s`` seconds with ectopic beats."""
    if fs <= 0 or rr_s <= 0 or regular_s < 0 or ectopic_s < 0:
        raise ValueError("fs and rr_s must be positive, the stretches non-negative")
    if not 0.0 < prematurity < 1.0 or not 0.0 <= ectopic_share <= 1.0:
        raise ValueError("prematurity must be in (0, 1), ectopic_share in [0, 1]")
    rng = np.random.default_rng(seed)
    beats, ectopic = _rhythm(rng, rr_s, regular_s, ectopic_s, ectopic_share, prematurity, hrv)
    t_s = np.arange(round((regular_s + ectopic_s) * fs)) / fs
    amp = np.where(ectopic, ectopic_gain, 1.0)
    x = 0.15 * np.sin(2 * np.pi * 0.3 * t_s) + rng.normal(0.0, noise_mv, t_s.size)
    for b, a in zip(beats, amp):
        near = slice(max(0, int((b - 0.1) * fs)), int((b + 0.5) * fs) + 1)
        u = t_s[near]
        x[near] += a * np.exp(-0.5 * ((u - b) / 0.012) ** 2) + 0.3 * np.exp(-0.5 * ((u - b - 0.25) / 0.04) ** 2)
    t = start_us + np.round(t_s * 1e6).astype(np.int64)
    return EcgRecord(t, x, start_us + np.round(beats * 1e6).astype(np.int64), ectopic,
                     start_us + round(regular_s * 1e6))


def _rhythm(rng: np.random.Generator, rr_s: float, regular_s: float, ectopic_s: float, share: float,
            prematurity: float, hrv: float) -> tuple[np.ndarray, np.ndarray]:
    beats, ectopic = [0.5], [False]
    while True:
        last = beats[-1]
        if last >= regular_s and not ectopic[-1] and rng.random() < share:
            b, e = last + prematurity * rr_s, True
        elif ectopic[-1]:
            b, e = last + (2.0 - prematurity) * rr_s, False     # the compensatory pause
        else:
            b, e = last + rr_s * (1.0 + rng.normal(0.0, hrv)), False
        if b > regular_s + ectopic_s - 0.6:
            return np.array(beats), np.array(ectopic)
        beats.append(b)
        ectopic.append(e)


def qrs_band(value: np.ndarray, fs: float, band: tuple[float, float] = (5.0, 30.0), taps: int | None = None
             ) -> np.ndarray:
    """``value`` band-passed to ``band`` (Hz) by a linear-phase FIR of odd length ``taps``
    (default: about 0.2 s), applied centred (zero delay; the record's ends see zeros)."""
    lo, hi = band
    if not 0.0 < lo < hi < fs / 2:
        raise ValueError(f"band must satisfy 0 < f_lo < f_hi < fs / 2, got {band} at {fs} Hz")
    n = taps if taps is not None else int(0.2 * fs) | 1
    if n % 2 == 0:
        raise ValueError(f"taps must be odd, got {n}")
    return np.convolve(value, firwin(n, [lo, hi], pass_zero=False, fs=fs), mode="same")


if __name__ == "__main__":
    from operators.beat_phase import BeatRule, beat_phases_reference

    rec = ecg_record()
    _, _, events = beat_phases_reference(rec.t, qrs_band(rec.value, 360.0), BeatRule())
    print(f"{rec.beats.size} beats ({int(rec.ectopic.sum())} ectopic), {events.size} events")
