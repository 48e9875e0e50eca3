"""Each sensor's phasor on the mesh grid (SPEC section 7), for all sensors of a key group at once.

For sensor P and mesh grid point g = n * interval (epoch aligned), per channel c
the unwrapped phase Phi_c (SPEC section 2 step 1) is interpolated linearly
between the two samples a, b of one chain that bracket g (t_a <= g <= t_b)::

    Phi_c(g) = Phi_c(a) + (g - t_a) / (t_b - t_a) * wrap(phi_c(b) - phi_c(a)),
    u_P(g)   = sum_c w_c exp(i Phi_c(g))          (w: channel weights, sum 1)

A grid point bracketed by two pairs (a sample exactly on g) counts once; a
pair across a gap longer than ``max_gap`` brackets nothing.  Samples arrive
as the event-time gate releases them: per sensor in time order, in any split
into calls, so the phasors do not depend on how the input was batched.

:func:`mesh_phasors` is the Numba pass over a call's released samples of many
sensors (state: :class:`MeshTrack`); :func:`mesh_phasors_reference` states the
same for one sensor's whole record with NumPy, for the tests.

>>> track = MeshTrack.empty()
>>> t = np.array([0, 50_000, 100_000, 150_000], np.int64)          # 20 Hz, us
>>> phase = (2 * np.pi * 1.0 * t * 1e-6)[:, None]                    # 1 Hz rotation
>>> sid, g, u = mesh_phasors(track, np.zeros(4, np.int64), t, phase, None, 5_000_000, 100_000)
>>> g.tolist(), np.round(np.angle(u), 4).tolist()
([0, 100000], [0.0, 0.6283])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from schemas.mesh import MeshPhasors

__all__ = ["MeshFeed", "MeshTrack", "mesh_phasors", "mesh_phasors_reference"]

_NONE = np.iinfo(np.int64).min
_TWO_PI = 2.0 * np.pi


@dataclass
class MeshTrack:
    """Per sensor (by sid) of a key group: its last released sample and the next grid point due."""

    t_prev: np.ndarray      # int64, _NONE: no sample yet
    phi_prev: np.ndarray    # float64 (sids, channels): its phases
    g_next: np.ndarray      # int64: grid points below this were emitted

    @classmethod
    def empty(cls) -> MeshTrack:
        return cls(np.empty(0, np.int64), np.empty((0, 1)), np.empty(0, np.int64))

    def reserve(self, sids: int, channels: int) -> None:
        """Room for sids ``0 .. sids - 1`` with up to ``channels`` channels."""
        n, c = self.phi_prev.shape
        if sids <= n and channels <= c:
            return
        size, width = max(sids, 2 * n, 64), max(c, channels)
        phi = np.zeros((size, width))
        phi[:n, :c] = self.phi_prev
        self.phi_prev = phi
        self.t_prev = np.concatenate((self.t_prev, np.full(size - n, _NONE, np.int64)))
        self.g_next = np.concatenate((self.g_next, np.full(size - n, _NONE, np.int64)))


def mesh_phasors(track: MeshTrack, sids: np.ndarray, t: np.ndarray, phase: np.ndarray,
                 weights: tuple[float, ...] | None, max_gap_us: int, interval_us: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The grid phasors the released samples complete: (sid, g in us, u_P(g)) per grid point.

    Args:
        track: the sensors' state, updated.
        sids: int64 sensor per sample; each sensor's samples in time order (any interleaving).
        t: int64 event times, us.
        phase: float64 (n, C) phases, radians (any wrapping).
        weights: channel weights normalised to sum 1, or None for equal weights.
        max_gap_us: a pair further apart than this is not one chain.
        interval_us: mesh grid spacing, us (> 0).
    """
    n, channels = phase.shape if phase.ndim == 2 else (phase.shape[0], 1)
    if interval_us <= 0:
        raise ValueError(f"interval must be positive, got {interval_us} us")
    w = np.full(channels, 1.0 / channels) if weights is None else np.asarray(weights, np.float64)
    if w.shape[0] != channels:
        raise ValueError(f"{w.shape[0]} channel weights for {channels} channels")
    if n == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.complex128)
    track.reserve(int(sids.max()) + 1, channels)
    ph = np.ascontiguousarray(phase.reshape(n, channels), np.float64)
    return _phasors(np.ascontiguousarray(sids, np.int64), np.ascontiguousarray(t, np.int64), ph, w,
                    track.t_prev, track.phi_prev, track.g_next, np.int64(max_gap_us), np.int64(interval_us))


@njit(cache=True, nogil=True, inline="always")
def _first_at_or_after(t, interval):
    q = t // interval
    return q * interval if q * interval >= t else (q + 1) * interval


@njit(cache=True, nogil=True, inline="always")
def _bracketed(a, b, g_next, max_gap, interval):
    """The grid points (first, last) the pair of samples at a and b completes; last < first for none
    (no earlier sample, or a pair across a gap)."""
    if a == _NONE or b - a > max_gap:
        return 0, -1
    return max(g_next, _first_at_or_after(a, interval)), (b // interval) * interval


@njit(cache=True, nogil=True)
def _phasors(sids, t, ph, w, t_prev, phi_prev, g_next, max_gap, interval):
    n, channels = ph.shape
    # Pass 1: how many grid points each sample completes (state read, not written).
    last_t = t_prev.copy()
    next_g = g_next.copy()
    total = 0
    for i in range(n):
        s = sids[i]
        g0, g1 = _bracketed(last_t[s], t[i], next_g[s], max_gap, interval)
        if g1 >= g0:
            total += (g1 - g0) // interval + 1
            next_g[s] = g1 + interval
        last_t[s] = t[i]
    out_sid = np.empty(total, np.int64)
    out_g = np.empty(total, np.int64)
    out_u = np.empty(total, np.complex128)
    k = 0
    for i in range(n):
        s = sids[i]
        a = t_prev[s]
        g0, g1 = _bracketed(a, t[i], g_next[s], max_gap, interval)
        if g1 >= g0:
            span = float(t[i] - a)
            g = g0
            while g <= g1:
                frac = float(g - a) / span if span > 0.0 else 0.0
                re = 0.0
                im = 0.0
                for c in range(channels):
                    d = ph[i, c] - phi_prev[s, c]
                    d -= _TWO_PI * np.floor((d + np.pi) / _TWO_PI)    # wrap to [-pi, pi)
                    x = phi_prev[s, c] + frac * d
                    re += w[c] * np.cos(x)
                    im += w[c] * np.sin(x)
                out_sid[k] = s
                out_g[k] = g
                out_u[k] = complex(re, im)
                k += 1
                g += interval
            g_next[s] = g1 + interval
        t_prev[s] = t[i]
        for c in range(channels):
            phi_prev[s, c] = ph[i, c]
    return out_sid, out_g, out_u


def mesh_phasors_reference(t: np.ndarray, phase: np.ndarray, weights: tuple[float, ...] | None,
                           max_gap_us: int, interval_us: int) -> tuple[np.ndarray, np.ndarray]:
    """One sensor's whole record: (g, u_P(g)) at every grid point two samples of a chain bracket.

    Plain NumPy, the SPEC's statement: unwrap each chain (``np.unwrap``), interpolate with
    ``np.interp`` at the grid points inside the chain's time span.
    """
    phase = phase.reshape(len(t), -1)
    channels = phase.shape[1]
    w = np.full(channels, 1.0 / channels) if weights is None else np.asarray(weights, np.float64)
    starts = np.concatenate(([0], np.flatnonzero(np.diff(t) > max_gap_us) + 1, [len(t)]))
    gs, us, done = [], [], None
    for a, b in zip(starts[:-1], starts[1:]):
        if b - a < 2:
            continue
        tt = t[a:b]
        lo = -(-tt[0] // interval_us) * interval_us
        g = np.arange(lo, tt[-1] + 1, interval_us, dtype=np.int64)
        if done is not None:
            g = g[g > done]
        if not g.size:
            continue
        phi = np.unwrap(phase[a:b], axis=0, period=_TWO_PI)
        u = np.zeros(len(g), np.complex128)
        for c in range(channels):
            u += w[c] * np.exp(1j * np.interp(g.astype(np.float64), tt.astype(np.float64), phi[:, c]))
        gs.append(g)
        us.append(u)
        done = int(g[-1])
    if not gs:
        return np.empty(0, np.int64), np.empty(0, np.complex128)
    return np.concatenate(gs), np.concatenate(us)


class MeshFeed:
    """A key group's side of the mesh: its sensors' released samples -> their grid phasors.

    Args:
        track: resumed state, or None.
        weights: channel weights normalised to sum 1, or None (equal).
        max_gap_us, interval_us: as :func:`mesh_phasors`.
        sensor_weights: W_P by sensor (``sync.mesh.weights``); others weigh 1.
        default_cell: the cell of a sensor whose samples name none (``becomingone.name``).
    """

    def __init__(self, track: MeshTrack | None, weights: tuple[float, ...] | None, max_gap_us: int,
                 interval_us: int, sensor_weights: dict[str, float], default_cell: str) -> None:
        self.track = track if track is not None else MeshTrack.empty()
        self.weights, self.max_gap_us, self.interval_us = weights, max_gap_us, interval_us
        self.sensor_weights, self.default_cell = sensor_weights, default_cell

    def phasors(self, released: list[tuple[np.ndarray, np.ndarray, np.ndarray]], names: list[str],
                cells: list[str | None]) -> MeshPhasors | None:
        """The grid phasors the released samples (sid, t, phase per lane) complete, or None."""
        sids, gs, us = [], [], []
        for sid, t, phase in released:
            if sid.size:
                s, g, u = mesh_phasors(self.track, sid, t, phase, self.weights, self.max_gap_us, self.interval_us)
                sids.append(s)
                gs.append(g)
                us.append(u)
        if not gs or not sum(g.size for g in gs):
            return None
        sid = np.concatenate(sids)
        present, code = np.unique(sid, return_inverse=True)
        ids = present.tolist()
        sensors = [names[s] for s in ids]
        return MeshPhasors(sensors, [cells[s] or self.default_cell for s in ids],
                           np.array([self.sensor_weights.get(n, 1.0) for n in sensors], np.float64),
                           code.astype(np.int64), np.concatenate(gs), np.concatenate(us))
