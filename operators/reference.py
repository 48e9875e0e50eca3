"""Plain NumPy statement of the KAIROS estimator, for tests and as documentation.

Each function here computes, vectorised and without any streaming state, what
a Numba kernel computes incrementally:

* :func:`lag_products`   <->  :class:`operators.lag.LagState`
* :func:`window_values`  <->  :class:`operators.emissary.EmissaryWindow`,
  :class:`operators.master.MasterWindow` (at grid points)
* :func:`resonance`      <->  :func:`operators.resonance.resonance`

The tests hold each pair equal (relative 1e-9).  The formulas follow SPEC
section 2 line by line; see ``docs/kairos.md`` for the derivation.
"""

from __future__ import annotations

import numpy as np

from operators.grid import WindowValues
from operators.lag import Products, validate_samples
from operators.params import KairosParams

__all__ = ["chain_starts", "lag_partners", "lag_products", "resonance", "unwrap", "window_values", "wrap"]


def chain_starts(t_us: np.ndarray, max_gap_us: int) -> np.ndarray:
    """For each sample, the index of the first sample of its chain."""
    n = t_us.shape[0]
    is_start = np.ones(n, np.bool_)
    if n > 1:
        is_start[1:] = np.diff(t_us) > max_gap_us
    return np.maximum.accumulate(np.where(is_start, np.arange(n), 0))


def wrap(x: np.ndarray) -> np.ndarray:
    """x wrapped into [-pi, pi)."""
    return x - 2.0 * np.pi * np.floor((x + np.pi) / (2.0 * np.pi))


def unwrap(phase: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Phi: phases unwrapped along each chain, Phi = phi at a chain start."""
    steps = np.zeros_like(phase)
    steps[1:] = wrap(phase[1:] - phase[:-1])
    unw = np.empty_like(phase)
    for s in np.unique(starts):
        e = s + int(np.searchsorted(starts[s:], s, side="right"))
        seg = steps[s:e].copy()
        seg[0] = phase[s]
        unw[s:e] = np.cumsum(seg, axis=0)
    return unw


def lag_partners(t_us: np.ndarray, params: KairosParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """j(k), m(k) and the chain start of every sample (SPEC section 2 steps 2-3).

    A j or m below the chain start means "none".  Pure integer arithmetic on
    microseconds: float noise in the producer's timestamps cannot move them.
    """
    t = np.asarray(t_us, dtype=np.int64)
    idx = np.arange(t.shape[0])
    cs = chain_starts(t, params.max_gap_us)
    # j(k): latest earlier sample with t_k - t_j >= d (d = 0 -> k - 1).
    j = np.minimum(np.searchsorted(t, t - params.velocity_span_us, side="right") - 1, idx - 1)
    # m(k): latest sample with t_k - t_m >= tau.
    m = np.searchsorted(t, t - params.tau_us, side="right") - 1
    return j, m, cs


def lag_products(t_us: np.ndarray, phase: np.ndarray, params: KairosParams) -> Products:
    """All lag products of one sensor's samples (SPEC section 2, steps 1-4).

    Args:
        t_us: int64 microseconds, strictly increasing.
        phase: radians, (n,) or (n, C).
        params: estimator parameters.
    """
    t, phi = validate_samples(t_us, phase)
    n = t.shape[0]
    if n == 0:
        return Products.empty()
    w = params.weight_vector(phi.shape[1])
    idx = np.arange(n)
    j, m, cs = lag_partners(t, params)
    unw = unwrap(phi, cs)

    has_v = j >= cs
    j_safe = np.where(has_v, j, idx)
    span_s = (t - t[j_safe]) * 1e-6
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = (unw - unw[j_safe]) / span_s[:, None]
    v = np.where(has_v[:, None], 1j * rate * np.exp(1j * phi), 0)

    # A product needs both velocities, m in the chain, and disjoint spans (m < j).
    ok = has_v & (m >= cs) & (m < j)
    ok &= has_v[np.maximum(m, 0)]
    k = idx[ok]
    p = (w * v[k] * np.conj(v[m[k]])).sum(axis=1)
    dt = (t[k] - t[k - 1]) * 1e-6
    return Products(t[k], p, dt)


def window_values(products: Products, omega: float, at_us: np.ndarray, window_us: int) -> WindowValues:
    """T, product count and span over (g - W, g] for each g in ``at_us``, summed directly."""
    t, p, dt = products
    g = np.asarray(at_us, dtype=np.int64)
    contrib = p * np.exp(1j * omega * (t * 1e-6)) * dt
    weight = np.abs(p) * dt
    T = np.zeros(g.shape[0], np.complex128)
    n = np.zeros(g.shape[0], np.int64)
    span = np.zeros(g.shape[0], np.int64)
    for i, gi in enumerate(g):
        a, b = np.searchsorted(t, gi - window_us, side="right"), np.searchsorted(t, gi, side="right")
        A = weight[a:b].sum()
        T[i] = contrib[a:b].sum() / A if A > 0 else 0
        n[i] = b - a
        span[i] = t[b - 1] - t[a] if b > a else 0
    return WindowValues(g, T, n, span)


def resonance(t_us: np.ndarray, phase: np.ndarray, params: KairosParams) -> complex:
    """T over all products of the input taken as one window."""
    t, p, dt = lag_products(t_us, phase, params)
    A = float(np.sum(np.abs(p) * dt))
    if A == 0.0:
        return 0j
    return complex(np.sum(p * np.exp(1j * params.omega * (t * 1e-6)) * dt) / A)
