"""KAIROS temporal resonance of a whole phase record: :func:`resonance`.

This is the one-call form of the estimator of SPEC section 2: the whole input
is one window.  The streaming pieces it is built from are
:class:`operators.lag.LagState` (lag products),
:class:`operators.emissary.EmissaryWindow` and
:class:`operators.master.MasterWindow` (windowed sums); the pipeline uses
those directly.  The math is written out in ``docs/kairos.md``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from numba import njit

from operators.lag import LagState, Products, validate_samples, window_term
from operators.params import KairosParams
from schemas.timebase import to_micros

__all__ = ["coherence", "resonance", "window_total"]


@njit(cache=True, nogil=True)
def _total_kernel(t, p, dt, omega):
    s = 0j
    a = 0.0
    for k in range(t.shape[0]):
        c, w = window_term(t[k], p[k], dt[k], omega)
        s += c
        a += w
    return s, a


def window_total(products: Products, omega: float = 0.0) -> complex:
    """T = S / A over every product given (0 when A = 0 or there are none).

    S = sum p_k exp(i omega t_k) dt_k and A = sum |p_k| dt_k, t_k in seconds
    since the Unix epoch.
    """
    if len(products) == 0:
        return 0j
    s, a = _total_kernel(np.ascontiguousarray(products.t, np.int64),
                         np.ascontiguousarray(products.p, np.complex128),
                         np.ascontiguousarray(products.dt, np.float64), float(omega))
    return complex(s / a) if a > 0.0 else 0j


def coherence(T: complex | np.ndarray) -> float | np.ndarray:
    """|T|^2: 1 for a perfectly phase-locked lag product, ~1/N for noise."""
    return np.abs(T) ** 2


def resonance(
    t: Any,
    phase: Any,
    *,
    tau: float,
    velocity_span: float = 0.0,
    omega: float = 0.0,
    max_gap: float = math.inf,
    weights: Sequence[float] | None = None,
) -> complex:
    """KAIROS temporal resonance T of one sensor's phase record, as one window.

    Implements SPEC section 2 exactly: chains split at gaps > ``max_gap``,
    phases unwrapped within a chain, phase velocity over the latest sample at
    least ``velocity_span`` earlier, lag partner the latest sample at least
    ``tau`` earlier with a disjoint velocity span, channel-weighted lag
    product, dt-weighted and normalised:

        T = sum_k p_k exp(i omega t_k) dt_k / sum_k |p_k| dt_k,   |T| <= 1.

    Args:
        t: event times: epoch seconds (float or int), ISO-8601 strings with a
            zone, ``datetime64`` or an Arrow timestamp array.  Rounded to whole
            microseconds; must then be strictly increasing.
        phase: radians, shape (n,) or (n, C); any wrapping.
        tau: lag tau_bar in seconds (``kairos.tau_scale``), > 0.
        velocity_span: d in seconds, 0 <= d < tau; 0 differentiates
            consecutive samples.
        omega: kernel angular frequency in rad/s; 0 measures how constant the
            lag product is, omega != 0 selects its component rotating at omega.
        max_gap: seconds; a longer pause between samples starts a new chain.
        weights: per-channel weights >= 0 (normalised to sum 1); default uniform.

    Returns:
        Complex T; coherence is ``abs(T) ** 2``.  0 when there is no product.

    Raises:
        ValueError: non-increasing time, NaN/inf, shape mismatch, or
            ``velocity_span >= tau`` (and other out-of-range parameters).

    >>> import numpy as np
    >>> t = np.arange(1000) / 100.0                    # 10 s at 100 Hz
    >>> T = resonance(t, 2 * np.pi * 3.0 * t, tau=1.0, velocity_span=0.1)
    >>> round(abs(T) ** 2, 9)
    1.0
    """
    params = KairosParams.from_seconds(tau, velocity_span=velocity_span, max_gap=max_gap,
                                       omega=omega, weights=weights)
    t_us, ph = validate_samples(to_micros(t), phase)
    state = LagState(params, channels=ph.shape[1])
    return window_total(state.push(t_us, ph), params.omega)
