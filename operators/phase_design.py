"""The analytic band-pass filter of phase extraction (SPEC section 9), designed once per sample rate.

A real signal x sampled at fs (Hz) has the analytic signal z = x + i H{x} (H: the Hilbert
transform); for x = A cos(2 pi f t + phi) in the band, z = A exp(i (2 pi f t + phi)), so
angle(z) is the phase and |z| the amplitude [Marple 1999; Oppenheim & Schafer 2010, 12.4].
One complex FIR filter of odd length N = 2M + 1 gives the band-passed analytic signal. Its
ideal impulse response, centred (m = -M..M), passes the positive band [w_1, w_2] (rad/sample)
with gain 2 and stops every negative frequency::

    g[m] = (exp(i w_2 m) - exp(i w_1 m)) / (i pi m),   g[0] = (w_2 - w_1) / pi
         = h_bp[m] + i * h_hilb[m]
    h_bp[m]   = (sin(w_2 m) - sin(w_1 m)) / (pi m)     the ideal band-pass (even in m)
    h_hilb[m] = (cos(w_1 m) - cos(w_2 m)) / (pi m)     its Hilbert transform (odd in m)

Both halves are windowed by one Kaiser window (``scipy.signal.kaiserord`` for N and beta,
``scipy.signal.firwin`` for the band-pass half, the same window times the ideal Hilbert half), so
the pair has the same length and the same group delay M samples: the output of the sample
n stands for the time of sample n - M, and stamping it there compensates the delay exactly
(the centred filter is zero-phase: its response G(w) is real). Then a constant and a ramp are
made to give exactly zero: sum_m h_bp[m] = 0 (the even half then ignores a ramp too) and
sum_m m h_hilb[m] = 0 (the odd half ignores a constant already), by subtracting multiples of the
window w[m] and of m w[m], whose spectra lie in the stop band near DC; raw signals often ride on
a level or a drift far larger than their rhythm (an electrode offset, a PMU angle that turns).

Accuracy. For x = A cos(w n + phi), z = A (B(w) cos phi + i Q(w) sin phi) with B, Q the
windowed responses of h_bp and of i h_hilb; the phase error is at most about |B - Q| / (B + Q),
the leak of the negative band into the positive one. The pass band [f_lo, f_hi] is kept clear of
the transitions: the cut-offs are f_lo - tw/2 and f_hi + tw/2, each transition tw wide, with
tw = min(f_lo, f_hi - f_lo, fs/2 - f_hi). Then every in-band frequency lies at least tw from the
negative band's transition (and from its alias beyond Nyquist), where the Kaiser window keeps the
leak below delta = 10^(-ATTENUATION_DB/20) = 0.001: phase error below about 0.001 rad, amplitude
within 0.15 %. Below f_lo - tw and above f_hi + tw (the stop bands) the amplitude is at most
2 delta = 0.002 of an in-band sinusoid's (-54 dB). Kaiser's rule [Kaiser 1974; O&S 7.6] gives
N = (ATTENUATION_DB - 7.95) / (2.285 * 2 pi tw / fs) + 1 (about 3.6 fs / tw): the filter spans
about 3.6 / tw seconds, several cycles of f_lo. Bands that need more than MAX_TAPS taps (a narrow
gap to DC, to Nyquist, or a narrow band at a high rate) are refused.

References: A. V. Oppenheim, R. W. Schafer, Discrete-Time Signal Processing, 3rd ed. (2010),
7.5-7.6 (window design, Kaiser's formulas) and 12.4 (FIR Hilbert transformers); S. L. Marple,
"Computing the discrete-time analytic signal via FFT", IEEE Trans. Signal Processing 47 (1999);
J. F. Kaiser, "Nonrecursive digital filter design using the I0-sinh window function" (1974);
scipy.signal.firwin, kaiserord and windows.kaiser.

>>> f = design_analytic_filter(250.0, 8.0, 12.0)            # EEG alpha at 250 Hz
>>> len(f.taps), f.delay, f.transition
(229, 114, 4.0)
>>> design_rate(2_778), design_rate(33_333)                 # measured periods, us
(360.0, 30.0)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import signal

__all__ = ["ATTENUATION_DB", "MAX_TAPS", "AnalyticFilter", "design_analytic_filter", "design_rate"]

ATTENUATION_DB = 60.0   # stop-band attenuation of each half; the negative band leaks below 0.001
MAX_TAPS = 16_385       # the longest filter accepted (2**14 + 1): 16 s of warm-up at 1 kHz


@dataclass(frozen=True)
class AnalyticFilter:
    """A designed filter: ``taps`` (complex, odd length N) for the rate ``fs`` and band (Hz)."""

    fs: float
    f_lo: float
    f_hi: float
    transition: float     # tw, Hz
    taps: np.ndarray      # complex128 (N,): h[k] = g[k - M], applied as y[n] = sum_k h[k] x[n - k]

    @property
    def delay(self) -> int:
        """Group delay M = (N - 1) / 2 samples: the output of sample n belongs to sample n - M."""
        return (len(self.taps) - 1) // 2


def design_rate(period_us: int) -> float:
    """The rate a filter is designed for, from a chain's measured period (us).

    1e6 / period rounded to 4 significant digits, so a 360 Hz stream with a 2,778 us period and a
    30 Hz stream with 33,333 us share the designs of 360 Hz and 30 Hz (the 0.01 % difference moves
    the band edges by 0.01 %, nothing a phase would show).
    """
    if period_us <= 0:
        raise ValueError(f"a sample period must be positive, got {period_us} us")
    rate = 1e6 / period_us
    return float(np.format_float_positional(rate, precision=4, unique=False, fractional=False, trim="-"))


def design_analytic_filter(fs: float, f_lo: float, f_hi: float) -> AnalyticFilter:
    """The analytic band-pass filter for the band [f_lo, f_hi] (Hz) at the rate fs (Hz).

    Raises ValueError (naming the band and the rate) when 0 < f_lo < f_hi < fs / 2 does not hold or
    the filter would need more than MAX_TAPS taps.
    """
    if not (np.isfinite(fs) and np.isfinite(f_lo) and np.isfinite(f_hi)):
        raise ValueError(f"phase band [{f_lo}, {f_hi}] Hz and rate {fs} Hz must be finite")
    if not 0.0 < f_lo < f_hi:
        raise ValueError(f"phase band [{f_lo:g}, {f_hi:g}] Hz: need 0 < f_lo < f_hi")
    if not f_hi < fs / 2.0:
        raise ValueError(f"phase band [{f_lo:g}, {f_hi:g}] Hz needs a rate above {2 * f_hi:g} Hz "
                         f"(twice f_hi), got {fs:g} Hz")
    return _design(float(fs), float(f_lo), float(f_hi))


def _design(fs: float, f_lo: float, f_hi: float) -> AnalyticFilter:
    nyquist = fs / 2.0
    tw = min(f_lo, f_hi - f_lo, nyquist - f_hi)
    numtaps, beta = signal.kaiserord(ATTENUATION_DB, tw / nyquist)
    numtaps += 1 - numtaps % 2                     # odd: an integer group delay
    if numtaps > MAX_TAPS:
        raise ValueError(
            f"phase band [{f_lo:g}, {f_hi:g}] Hz at {fs:g} Hz needs a {numtaps:,}-tap filter "
            f"(transition {tw:g} Hz = min(f_lo, f_hi - f_lo, fs/2 - f_hi)); at most {MAX_TAPS:,}: "
            f"raise f_lo, widen the band or lower the rate")
    cut_lo, cut_hi = f_lo - tw / 2.0, f_hi + tw / 2.0
    window = ("kaiser", beta)
    h_bp = signal.firwin(numtaps, [cut_lo, cut_hi], window=window, pass_zero=False, scale=False, fs=fs)
    m = np.arange(numtaps) - (numtaps - 1) // 2
    w1, w2 = 2.0 * np.pi * cut_lo / fs, 2.0 * np.pi * cut_hi / fs
    safe_m = np.where(m == 0, 1, m)
    h_hilb = np.where(m == 0, 0.0, (np.cos(w1 * m) - np.cos(w2 * m)) / (np.pi * safe_m))
    w = signal.get_window(window, numtaps, fftbins=False)
    h_hilb *= w
    # A level and a steady drift pass the windowed halves at about the stop band's 0.001, which is no
    # small share of a rhythm riding on a large offset (an electrode's millivolts under microvolts of
    # alpha, a PMU angle near 180 degrees under a 2 degree mode). Projected out exactly: the band-pass
    # (even) loses its sum, which also kills its response to a ramp; the Hilbert half (odd, sum 0)
    # loses its first moment. What is subtracted is the window and m times the window, whose spectra
    # lie within the stop band near DC.
    h_bp = h_bp - w * (h_bp.sum() / w.sum())
    h_hilb = h_hilb - m * w * ((m * h_hilb).sum() / (m * m * w).sum())
    return AnalyticFilter(fs, f_lo, f_hi, tw, h_bp + 1j * h_hilb)
