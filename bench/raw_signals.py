"""Synthetic raw signals of known phase and frequency wander, for the example configs (SPEC section 9).

Each generator returns a :class:`RawRecord`: regular int64 microsecond times, values (one
channel) and the stretch ``[rhythm_from, rhythm_to)`` (us) in which the signal carries the
rhythm the config is meant to find (empty for signals that never do).  Times in seconds below.

- :func:`alpha_burst`: an EEG-like channel (microvolts) at ``fs`` Hz: pink (1/f) background
  of ``noise_uv`` rms, and between ``quiet_s`` and ``quiet_s + burst_s`` an alpha rhythm of
  ``alpha_uv`` amplitude at ``f_hz`` whose frequency wanders (a random walk of the
  instantaneous frequency, ``wander_hz`` rms, kept within 1 Hz of ``f_hz``) under a smooth
  0.5 s on/off ramp.
- :func:`pink_noise` / :func:`white_noise`: the background alone.
- :func:`tone`: a sinusoid of ``f_hz`` plus white noise (for out-of-band tones).
- :func:`pmu_mode`: a PMU voltage angle (degrees) at ``fs`` frames/s: a wandering operating
  point (a random walk of ``drift_deg`` rms per sqrt(s), the load following the system) plus,
  from ``quiet_s`` on, an oscillation mode of ``mode_deg`` amplitude at ``f_hz`` with a
  slowly wandering frequency (``wander_hz``), and measurement noise ``noise_deg``; with
  ``offset_hz`` the system runs that far off nominal, so the angle also turns steadily by
  ``360 * offset_hz`` degrees per second (unwrapped).  ``mode_deg = 0`` is the wandering angle
  without any oscillation.

The ECG-like pulse train is :func:`bench.ecg.ecg_record`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["RawRecord", "alpha_burst", "pink_noise", "pmu_mode", "tone", "white_noise"]

START_US = 1_764_115_200_000_000


@dataclass(frozen=True)
class RawRecord:
    """Regular samples (t int64 us, value float64 (n,)) and the stretch [rhythm_from, rhythm_to) (us)."""

    t: np.ndarray
    value: np.ndarray
    rhythm_from: int
    rhythm_to: int


def _times(fs: float, duration_s: float) -> np.ndarray:
    if fs <= 0 or duration_s <= 0:
        raise ValueError(f"fs and duration must be positive, got {fs} Hz, {duration_s} s")
    n = round(duration_s * fs)
    return START_US + np.round(np.arange(n) * (1e6 / fs)).astype(np.int64)


def _pink(rng: np.random.Generator, n: int) -> np.ndarray:
    """Unit-rms noise of power spectral density 1/f (f > 0), shaped in the frequency domain."""
    spectrum = np.fft.rfft(rng.normal(size=n))
    f = np.arange(spectrum.size, dtype=float)
    f[0] = 1.0
    x = np.fft.irfft(spectrum / np.sqrt(f), n)
    return x / x.std()


def _wandering_phase(rng: np.random.Generator, n: int, fs: float, f_hz: float, wander_hz: float,
                     limit_hz: float) -> np.ndarray:
    """Phase (rad) of a tone whose frequency random-walks about f_hz (rms wander_hz after 10 s),
    reflected to stay within limit_hz of it."""
    step = wander_hz / np.sqrt(10.0 * fs)
    df = np.cumsum(rng.normal(0.0, step, n))
    df = limit_hz - np.abs((df + limit_hz) % (4 * limit_hz) - 2 * limit_hz)    # reflect into [-limit, limit]
    return 2 * np.pi * np.cumsum(f_hz + df) / fs + rng.uniform(0, 2 * np.pi)


def _ramp(s: np.ndarray, on: float, off: float, rise: float) -> np.ndarray:
    """0 outside [on, off], 1 inside, raised-cosine edges of ``rise`` seconds."""
    up = np.clip((s - on) / rise, 0.0, 1.0)
    down = np.clip((off - s) / rise, 0.0, 1.0)
    return 0.5 - 0.5 * np.cos(np.pi * np.minimum(up, down))


def alpha_burst(*, fs: float = 250.0, quiet_s: float = 20.0, burst_s: float = 30.0, after_s: float = 20.0,
                f_hz: float = 10.0, alpha_uv: float = 20.0, noise_uv: float = 10.0, wander_hz: float = 0.3,
                seed: int = 0) -> RawRecord:
    """Pink background, then an alpha burst of ``burst_s`` seconds, then the background again."""
    rng = np.random.default_rng(seed)
    t = _times(fs, quiet_s + burst_s + after_s)
    s = (t - t[0]) * 1e-6
    phase = _wandering_phase(rng, t.size, fs, f_hz, wander_hz, 1.0)
    x = noise_uv * _pink(rng, t.size) + alpha_uv * _ramp(s, quiet_s, quiet_s + burst_s, 0.5) * np.cos(phase)
    return RawRecord(t, x, t[0] + round(quiet_s * 1e6), t[0] + round((quiet_s + burst_s) * 1e6))


def pink_noise(*, fs: float = 250.0, duration_s: float = 60.0, rms: float = 10.0, seed: int = 0) -> RawRecord:
    """1/f noise of ``rms``: no rhythm."""
    t = _times(fs, duration_s)
    return RawRecord(t, rms * _pink(np.random.default_rng(seed), t.size), t[0], t[0])


def white_noise(*, fs: float = 250.0, duration_s: float = 60.0, rms: float = 10.0, seed: int = 0) -> RawRecord:
    """White Gaussian noise of ``rms``: no rhythm."""
    t = _times(fs, duration_s)
    return RawRecord(t, np.random.default_rng(seed).normal(0.0, rms, t.size), t[0], t[0])


def tone(*, fs: float, f_hz: float, duration_s: float = 60.0, amplitude: float = 1.0, noise: float = 0.01,
         seed: int = 0) -> RawRecord:
    """A steady sinusoid plus white noise; its rhythm covers the whole record."""
    rng = np.random.default_rng(seed)
    t = _times(fs, duration_s)
    s = (t - t[0]) * 1e-6
    x = amplitude * np.cos(2 * np.pi * f_hz * s + rng.uniform(0, 2 * np.pi)) + rng.normal(0.0, noise, t.size)
    return RawRecord(t, x, t[0], t[-1] + 1)


def pmu_mode(*, fs: float = 30.0, quiet_s: float = 0.0, duration_s: float = 240.0, f_hz: float = 0.5,
             mode_deg: float = 2.0, wander_hz: float = 0.02, drift_deg: float = 1.0, noise_deg: float = 0.05,
             offset_hz: float = 0.0, seed: int = 0) -> RawRecord:
    """A wandering angle, with an oscillation mode from ``quiet_s`` on (none if ``mode_deg`` is 0)."""
    rng = np.random.default_rng(seed)
    t = _times(fs, duration_s)
    s = (t - t[0]) * 1e-6
    walk = np.cumsum(rng.normal(0.0, drift_deg / np.sqrt(fs), t.size))
    phase = _wandering_phase(rng, t.size, fs, f_hz, wander_hz, 0.2 * f_hz)
    mode = mode_deg * _ramp(s, quiet_s, np.inf, 2.0 / f_hz) * np.cos(phase)
    x = 10.0 + 360.0 * offset_hz * s + walk + mode + rng.normal(0.0, noise_deg, t.size)
    on = t[0] + round(quiet_s * 1e6)
    return RawRecord(t, x, on if mode_deg else t[0], t[-1] + 1 if mode_deg else t[0])
