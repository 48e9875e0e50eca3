"""Phase extraction from raw samples (SPEC section 9): raw values in, phase samples out.

Per raw sensor and channel the analytic band-pass filter of :mod:`operators.phase_design`
(complex, N = 2M + 1 taps, designed for the sensor's rate and the band ``kairos.phase_band``)
runs causally over a chain of samples::

    z[n] = sum_{k=0}^{N-1} h[k] x[n - k],   phase = angle(z[n]),   amplitude = |z[n]|

stamped at t[n - M], the time of the filter's centre sample (delay compensation). A chain is
the SPEC section 2 chain: it starts at a sensor's first sample and after a gap longer than
``max_gap``. Its period is measured from its first two samples (int64 us) and picks the design
(:func:`~operators.phase_design.design_rate`); the samples of a chain are taken as regular,
so a sample jittered by dt reads as a phase error of about 2 pi f dt, and a sample whose
interval differs from the period by more than half a period (a dropped sample, a new rate)
starts a new chain, as a gap does. The first N - 1 samples of a chain are the warm-up: they
emit nothing. From the N-th on, each sample emits one phase sample per channel.

:func:`extract_phases` is the Numba pass over a call's rows of many sensors (each sensor's rows
in time order, any interleaving) with its state in :class:`PhaseTrack`: the last N samples of
each sensor (a ring) carried across calls, so any split of the rows into calls gives bitwise the
same output. :func:`extract_phases_reference` states the same for one sensor's whole record with
``np.convolve``, for the tests.

>>> track = PhaseTrack(8.0, 12.0)                          # the band, Hz
>>> t = np.arange(300, dtype=np.int64) * 4_000              # 250 Hz, us
>>> x = np.cos(2 * np.pi * 10.0 * t * 1e-6 + 1.0)[:, None]  # 10 Hz, phase 1 rad at t = 0
>>> out = extract_phases(track, np.zeros(300, np.int64), t, x, max_gap_us=5_000_000)
>>> len(track.designs[0].taps), len(out.t), int(out.t[0])   # 229 taps: 228 samples of warm-up
(229, 72, 456000)
>>> true = 2 * np.pi * 10.0 * out.t * 1e-6 + 1.0
>>> float(np.abs(np.angle(np.exp(1j * (out.phase[:, 0] - true)))).max()) < 1e-3
True
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numba import njit

from operators.phase_design import AnalyticFilter, design_analytic_filter, design_rate

__all__ = ["PhaseSamples", "PhaseTrack", "extract_phases", "extract_phases_reference"]

_NONE = np.iinfo(np.int64).min
_NO_DESIGN = -1     # design[s]: no filter chosen for the chain's period yet
_REFUSED = -2       # the band cannot be served at this sensor's rate: its samples emit nothing


@dataclass
class PhaseSamples:
    """Phase samples: sensor (sid), t (int64 us, the centre sample's), phase and amplitude (n, C)."""

    sid: np.ndarray
    t: np.ndarray
    phase: np.ndarray
    amplitude: np.ndarray


@dataclass
class PhaseTrack:
    """The filters of a band and, per sensor (by sid), its chain and the ring of its last N samples.

    Rings live in one pool: sensor s owns columns ``off[s] .. off[s] + cap[s] - 1`` of ``pool_x``
    (values, one row per channel) and ``pool_t`` (times). A ring of an N-tap filter has 2N slots and
    each sample is written at ``head`` and ``head + N``, so the last N samples always lie side by
    side (``head + 1 .. head + N``) and the filter's inner loop runs without a wrap.
    """

    f_lo: float
    f_hi: float
    designs: list[AnalyticFilter] = field(default_factory=list)
    by_rate: dict[float, int] = field(default_factory=dict)
    refused: dict[float, str] = field(default_factory=dict)      # rate -> why (for dead letters)
    t_last: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    period: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))    # 0: not measured
    count: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))     # samples in chain
    design: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    dperiod: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))   # period of design
    head: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))      # newest in ring
    off: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    cap: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    x_first: np.ndarray = field(default_factory=lambda: np.empty((0, 1)))        # chain's 1st value
    pool_x: np.ndarray = field(default_factory=lambda: np.empty((1, 0)))         # (channels, slots)
    pool_t: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    pool_used: int = 0
    taps_re: np.ndarray = field(default_factory=lambda: np.empty((0, 1)))        # (designs, N max)
    taps_im: np.ndarray = field(default_factory=lambda: np.empty((0, 1)))
    lengths: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))

    def reserve(self, sids: int, channels: int) -> None:
        """Room for sids ``0 .. sids - 1`` with up to ``channels`` channels."""
        n, c = self.x_first.shape
        if sids > n:
            size = max(sids, 2 * n, 64)
            grow = size - n
            self.t_last = np.concatenate((self.t_last, np.full(grow, _NONE, np.int64)))
            for name, fill in (("period", 0), ("count", 0), ("design", _NO_DESIGN), ("dperiod", 0),
                               ("head", 0), ("off", 0), ("cap", 0)):
                setattr(self, name, np.concatenate((getattr(self, name), np.full(grow, fill, np.int64))))
            self.x_first = np.vstack((self.x_first, np.zeros((grow, c))))
        if channels > self.x_first.shape[1]:
            self.x_first = np.hstack((self.x_first, np.zeros((len(self.x_first), channels - c))))
            self.pool_x = np.vstack((self.pool_x, np.zeros((channels - c, self.pool_x.shape[1]))))


def extract_phases(track: PhaseTrack, sids: np.ndarray, t: np.ndarray, values: np.ndarray,
                   max_gap_us: int) -> PhaseSamples:
    """The phase samples that the rows complete, in row order.

    Args:
        track: the band's filters and the sensors' state, updated.
        sids: int64 sensor per row; each sensor's rows in strictly increasing time (any interleaving).
        t: int64 event times, us.
        values: float64 (n, C) raw values (finite).
        max_gap_us: a larger step between two samples of a sensor starts a new chain.
    """
    n = len(t)
    channels = values.shape[1] if values.ndim == 2 else 1
    if n == 0:
        return PhaseSamples(np.empty(0, np.int64), np.empty(0, np.int64), np.empty((0, channels)),
                            np.empty((0, channels)))
    track.reserve(int(sids.max()) + 1, channels)
    sids = np.ascontiguousarray(sids, np.int64)
    t = np.ascontiguousarray(t, np.int64)
    x = np.ascontiguousarray(values.reshape(n, channels), np.float64)
    out_sid, out_t = np.empty(n, np.int64), np.empty(n, np.int64)
    out_phase, out_amp = np.empty((n, channels)), np.empty((n, channels))
    row, k = 0, 0
    while row < n:
        row, k = _extract(sids, t, x, row, k, np.int64(max_gap_us), track.t_last, track.period, track.count,
                          track.design, track.dperiod, track.head, track.off, track.cap, track.x_first,
                          track.pool_x, track.pool_t, track.taps_re, track.taps_im, track.lengths,
                          out_sid, out_t, out_phase, out_amp)
        if row < n:     # the kernel stopped at a chain whose period has no filter yet
            s = int(sids[row])
            _assign(track, s, int(t[row] - track.t_last[s]))
    return PhaseSamples(out_sid[:k], out_t[:k], out_phase[:k], out_amp[:k])


def _assign(track: PhaseTrack, s: int, period_us: int) -> None:
    """Give sensor s the filter for ``period_us`` (designed on first use) and a ring that fits it."""
    rate = design_rate(period_us)
    track.dperiod[s] = period_us
    if rate in track.refused:
        track.design[s] = _REFUSED
        return
    if rate not in track.by_rate:
        try:
            design = design_analytic_filter(rate, track.f_lo, track.f_hi)
        except ValueError as error:
            track.refused[rate] = str(error)
            track.design[s] = _REFUSED
            return
        _add_design(track, design)
        track.by_rate[rate] = len(track.designs) - 1
    d = track.by_rate[rate]
    track.design[s] = d
    need = 2 * int(track.lengths[d])
    if track.cap[s] < need:
        if track.pool_used + need > len(track.pool_t):
            size = max(track.pool_used + need, 2 * len(track.pool_t))
            pool_x = np.zeros((track.x_first.shape[1], size))
            pool_x[:, :track.pool_used] = track.pool_x[:, :track.pool_used]
            track.pool_x = pool_x
            track.pool_t = np.concatenate((track.pool_t, np.zeros(size - len(track.pool_t), np.int64)))
        track.off[s], track.cap[s] = track.pool_used, need
        track.pool_used += need


def _add_design(track: PhaseTrack, design: AnalyticFilter) -> None:
    track.designs.append(design)
    width = max(len(f.taps) for f in track.designs)
    track.taps_re = np.zeros((len(track.designs), width))
    track.taps_im = np.zeros((len(track.designs), width))
    for d, f in enumerate(track.designs):
        track.taps_re[d, :len(f.taps)] = f.taps.real
        track.taps_im[d, :len(f.taps)] = f.taps.imag
    track.lengths = np.array([len(f.taps) for f in track.designs], np.int64)


@njit(cache=True, nogil=True)
def _extract(sids, t, x, row, k, max_gap, t_last, period, count, design, dperiod, head, off, cap,
             x_first, pool_x, pool_t, taps_re, taps_im, lengths, out_sid, out_t, out_phase, out_amp):
    n, channels = x.shape
    for i in range(row, n):
        s = sids[i]
        a = t_last[s]
        if a != _NONE and t[i] <= a:
            raise ValueError("a sensor's samples must come in strictly increasing time")
        restart = a == _NONE or t[i] - a > max_gap
        if not restart and count[s] >= 2 and 2 * abs(t[i] - a - period[s]) > period[s]:
            restart = True
        if restart:
            count[s] = 1
            period[s] = 0
            t_last[s] = t[i]
            for c in range(channels):
                x_first[s, c] = x[i, c]
            continue
        if count[s] == 1:
            p = t[i] - a
            if dperiod[s] != p:
                return i, k          # the caller assigns a filter for p, then calls again from row i
            period[s] = p
            d = design[s]
            if d >= 0:
                o = off[s]
                size = lengths[d]
                for c in range(channels):
                    pool_x[c, o] = x_first[s, c]
                    pool_x[c, o + size] = x_first[s, c]
                pool_t[o] = a
                pool_t[o + size] = a
                head[s] = 0
        t_last[s] = t[i]
        count[s] += 1
        d = design[s]
        if d < 0:
            continue
        size = lengths[d]
        o = off[s]
        h = head[s] + 1
        if h == size:
            h = 0
        head[s] = h
        for c in range(channels):
            pool_x[c, o + h] = x[i, c]
            pool_x[c, o + h + size] = x[i, c]
        pool_t[o + h] = t[i]
        pool_t[o + h + size] = t[i]
        if count[s] < size:
            continue                 # warm-up
        # z = sum_k h[k] x[n-k]; h_re is even and h_im odd about M: pair x[n-k] with x[n-(N-1-k)].
        half = (size - 1) // 2
        newest = o + h + size        # x[n - k] at newest - k, for k = 0 .. N - 1
        oldest = newest - size + 1
        for c in range(channels):
            re = 0.0
            im = 0.0
            for q in range(half):
                u = pool_x[c, newest - q]
                v = pool_x[c, oldest + q]
                re += taps_re[d, q] * (u + v)
                im += taps_im[d, q] * (u - v)
            re += taps_re[d, half] * pool_x[c, newest - half]
            out_phase[k, c] = np.arctan2(im, re)
            out_amp[k, c] = np.hypot(re, im)
        out_sid[k] = s
        out_t[k] = pool_t[newest - half]     # the centre sample's time: delay compensation
        k += 1
    return n, k


def extract_phases_reference(t: np.ndarray, values: np.ndarray, f_lo: float, f_hi: float, max_gap_us: int
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One sensor's whole record: (t of the centre sample, phase, amplitude), each chain filtered
    with ``np.convolve`` and its output kept where the filter lies wholly inside the chain.

    Chains split as in :func:`extract_phases` (a gap over max_gap, or an interval off the chain's
    first one by more than half of it). Plain NumPy/SciPy, the statement of the tests.
    """
    x = values.reshape(len(t), -1).astype(np.float64)
    starts, period = [0], 0
    for i in range(1, len(t)):
        step = int(t[i] - t[i - 1])
        if step > max_gap_us or (period and 2 * abs(step - period) > period):
            starts.append(i)
            period = 0
        elif not period:
            period = step
    starts.append(len(t))
    ts, phases, amps = [], [], []
    for a, b in zip(starts[:-1], starts[1:]):
        if b - a < 2:
            continue
        try:
            f = design_analytic_filter(design_rate(int(t[a + 1] - t[a])), f_lo, f_hi)
        except ValueError:
            continue
        size, delay = len(f.taps), f.delay
        if b - a < size:
            continue
        z = np.stack([np.convolve(x[a:b, c], f.taps)[size - 1:b - a] for c in range(x.shape[1])], axis=1)
        ts.append(t[a + size - 1 - delay:b - delay])
        phases.append(np.angle(z))
        amps.append(np.abs(z))
    if not ts:
        return np.empty(0, np.int64), np.empty((0, x.shape[1])), np.empty((0, x.shape[1]))
    return np.concatenate(ts), np.concatenate(phases), np.concatenate(amps)
