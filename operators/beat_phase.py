"""Event phase of pulse trains (SPEC section 9, ``kairos.phase_method: events``).

For a pulse train such as an ECG, the phase is not that of a band-passed
oscillation but the beat phase of cardiorespiratory synchronisation studies
(Schafer, Rosenblum, Kurths & Abel 1998, Nature 392, 239; Pikovsky, Rosenblum
& Kurths 2001, *Synchronization*, section 6.4.3): with events (beats) at
times t_k,

    phi(t) = 2 pi k + 2 pi (t - t_k) / (t_{k+1} - t_k),    t_k < t <= t_{k+1},

wrapped to [-pi, pi).  It advances by exactly 2 pi per beat and linearly in
between, so it is known for a sample only once the next event is seen: the
output lags the input by one beat.  It is stamped at the input's own sample
times (the samples after t_k up to and including t_{k+1}, whose phase is 0),
not on a grid of its own: the phase then reaches the estimator at the
sensor's regular rate, where the lag product pairs samples exactly tau apart
(SPEC section 2), and no resampling rule needs choosing.

Events.  The input is the band-passed signal x (e.g. a QRS band of about
5-30 Hz; the band-pass is not done here, so the detector does not depend on
which filter produced x).  A candidate is a strict local maximum,
x[i-1] < x[i] > x[i+1], decided when sample i+1 arrives.  The threshold
adapts as in Pan & Tompkins (1985, IEEE Trans. Biomed. Eng. 32(3), 230):
running estimates of the signal peak SPK and the noise peak NPK give

    THR = NPK + fraction * (SPK - NPK)                 (fraction 0.25)

and a candidate p above THR, at least ``refractory`` after the last event, is
an event (SPK <- (1 - a) SPK + a p); one below THR is noise
(NPK <- (1 - a) NPK + a p; a = 0.125); one inside the refractory period
counts as neither (one beat, one event).  The first ``learn`` of a chain
only learns: SPK starts at the largest candidate seen there, NPK at half
their mean (Pan & Tompkins' learning phase 1).  Pan & Tompkins' search-back
for missed beats is not done: it would revise an event already stamped.
A gap between samples over ``max_gap`` starts a new chain: the detector
forgets everything and the samples since the last event are never stamped.

The value is the first channel of a multi-channel sensor (a beat is one
event for the sensor; send the lead to detect on first).

:func:`beat_phases` is the Numba pass over a call's samples of many sensors
(state: :class:`BeatTrack`), identical under any split of the input into
calls; :func:`beat_phases_reference` states the same for one sensor's whole
record with ``scipy.signal.find_peaks`` and ``np.interp``, for the tests.

>>> t = np.arange(0, 6_000_000, 10_000, dtype=np.int64)              # 100 Hz, 6 s
>>> x = np.where(t % 1_000_000 == 500_000, 1.0, 0.0)                 # a pulse each second
>>> out = beat_phases(BeatTrack.empty(), BeatRule(learn_us=1_000_000), np.zeros(t.size, np.int64), t, x)
>>> out.event_t.tolist()
[1500000, 2500000, 3500000, 4500000, 5500000]
>>> np.round(out.phase[[0, 49, 99]], 4).tolist()                      # after 1.5 s: 0.01 s, 0.5 s, 1 s into the beat
[0.0628, -3.1416, 0.0]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit
from scipy.signal import find_peaks

__all__ = ["BeatPhases", "BeatRule", "BeatTrack", "beat_phases", "beat_phases_reference"]

_NONE = np.iinfo(np.int64).min
_TWO_PI = 2.0 * np.pi


@dataclass(frozen=True)
class BeatRule:
    """The detector's settings, durations in microseconds.

    Attributes:
        refractory_us: a candidate closer than this to the last event is ignored (Pan & Tompkins: 200 ms).
        learn_us: the first part of a chain only sets SPK and NPK (Pan & Tompkins: 2 s).
        fraction: THR = NPK + fraction * (SPK - NPK), in (0, 1).
        smoothing: weight a of a new peak in the running SPK and NPK, in (0, 1].
        max_gap_us: a longer gap between samples starts a new chain.
    """

    refractory_us: int = 200_000
    learn_us: int = 2_000_000
    fraction: float = 0.25
    smoothing: float = 0.125
    max_gap_us: int = np.iinfo(np.int64).max

    def __post_init__(self) -> None:
        if self.refractory_us <= 0:
            raise ValueError(f"refractory must be positive, got {self.refractory_us} us")
        if self.learn_us < 0:
            raise ValueError(f"learn must be >= 0, got {self.learn_us} us")
        if not 0.0 < self.fraction < 1.0:
            raise ValueError(f"fraction must be in (0, 1), got {self.fraction}")
        if not 0.0 < self.smoothing <= 1.0:
            raise ValueError(f"smoothing must be in (0, 1], got {self.smoothing}")
        if self.max_gap_us <= 0:
            raise ValueError(f"max_gap must be positive, got {self.max_gap_us} us")


@dataclass
class BeatTrack:
    """Per sensor (by sid) of a key group: the detector's state, and the samples since its last event.

    ``stage`` 0: learning (``peak_max``, ``peak_sum``, ``peak_count`` collect
    the candidates), 1: tracking (``spk``, ``npk``).  ``wait_sid``/``wait_t``:
    the samples after each sensor's last event, stamped once its next event is seen.
    """

    t_prev: np.ndarray       # int64, _NONE: no sample yet
    x_prev: np.ndarray       # float64: the last two values (NaN: none in this chain)
    x_prev2: np.ndarray
    chain_start: np.ndarray  # int64
    last_event: np.ndarray   # int64, _NONE: none in this chain
    stage: np.ndarray        # int8
    spk: np.ndarray
    npk: np.ndarray
    peak_max: np.ndarray
    peak_sum: np.ndarray
    peak_count: np.ndarray   # int64
    wait_sid: np.ndarray     # int64
    wait_t: np.ndarray       # int64

    @classmethod
    def empty(cls) -> BeatTrack:
        i, f = np.empty(0, np.int64), np.empty(0)
        return cls(i, f, f, i, i, np.empty(0, np.int8), f, f, f, f, i, i, i)

    def reserve(self, sids: int) -> None:
        """Room for sids ``0 .. sids - 1``."""
        n = self.t_prev.shape[0]
        if sids <= n:
            return
        more = max(sids, 2 * n, 64) - n

        def grow(a: np.ndarray, fill: float | int) -> np.ndarray:
            return np.concatenate((a, np.full(more, fill, a.dtype)))

        self.t_prev, self.chain_start, self.last_event = (grow(a, _NONE) for a in
                                                          (self.t_prev, self.chain_start, self.last_event))
        self.x_prev, self.x_prev2 = grow(self.x_prev, np.nan), grow(self.x_prev2, np.nan)
        self.stage, self.peak_count = grow(self.stage, 0), grow(self.peak_count, 0)
        self.spk, self.npk, self.peak_max, self.peak_sum = (grow(a, 0.0) for a in
                                                            (self.spk, self.npk, self.peak_max, self.peak_sum))


@dataclass(frozen=True)
class BeatPhases:
    """What one call stamped: phase samples (sid, t, phase in [-pi, pi)) grouped per sensor in
    time order, and the events it detected (event_sid, event_t)."""

    sid: np.ndarray
    t: np.ndarray
    phase: np.ndarray
    event_sid: np.ndarray
    event_t: np.ndarray


def beat_phases(track: BeatTrack, rule: BeatRule, sids: np.ndarray, t: np.ndarray,
                value: np.ndarray) -> BeatPhases:
    """The beat phases and events the samples complete, for many sensors at once.

    Args:
        track: the sensors' state, updated.
        sids: int64 sensor per sample; each sensor's samples in strictly increasing time (any interleaving).
        t: int64 event times, us, after the sensor's samples of earlier calls.
        value: float64 band-passed signal, shape (n,) or (n, C) (first channel used); finite.
    """
    sids, t = np.asarray(sids, np.int64), np.asarray(t, np.int64)
    x = np.asarray(value, np.float64)
    x = x[:, 0] if x.ndim == 2 else x
    if not sids.shape == t.shape == x.shape:
        raise ValueError(f"{sids.shape[0]} sids, {t.shape[0]} times and {x.shape[0]} values")
    if not np.isfinite(x).all():
        raise ValueError("values must be finite")
    if sids.size and sids.min() < 0:
        raise ValueError("sids must be >= 0")
    track.reserve(int(sids.max()) + 1 if sids.size else 0)
    # The waiting samples first, then this call's, grouped per sensor (stable: time order kept).
    all_sid = np.concatenate((track.wait_sid, sids))
    order = np.argsort(all_sid, kind="stable")
    g_sid, g_t = all_sid[order], np.concatenate((track.wait_t, t))[order]
    g_x = np.concatenate((np.zeros(track.wait_t.size), x))[order]
    new = order >= track.wait_t.size
    _check_time_order(track, g_sid[new], g_t[new])
    idx, phase, n_out, ev_sid, ev_t, keep = _beats(
        g_sid, g_t, g_x, new, track.t_prev, track.x_prev, track.x_prev2, track.chain_start, track.last_event,
        track.stage, track.spk, track.npk, track.peak_max, track.peak_sum, track.peak_count,
        np.int64(rule.refractory_us), np.int64(rule.learn_us), rule.fraction, rule.smoothing,
        np.int64(rule.max_gap_us))
    track.wait_sid, track.wait_t = g_sid[keep], g_t[keep]
    idx = idx[:n_out]
    return BeatPhases(g_sid[idx], g_t[idx], phase[:n_out], ev_sid, ev_t)


def _check_time_order(track: BeatTrack, sid: np.ndarray, t: np.ndarray) -> None:
    if not sid.size:
        return
    same = sid[1:] == sid[:-1]
    first = np.concatenate(([True], ~same))
    if (np.diff(t)[same] <= 0).any() or (t[first] <= track.t_prev[sid[first]]).any():
        raise ValueError("each sensor's samples must come in strictly increasing time")


@njit(cache=True, nogil=True)
def _beats(sid, t, x, new, t_prev, x_prev, x_prev2, chain_start, last_event, stage, spk, npk, peak_max,
           peak_sum, peak_count, refractory, learn, fraction, a, max_gap):
    """One pass over rows grouped per sensor (each group: its waiting rows, then its new rows).

    Returns the stamped rows (indices) and their phases, the events (sid, t),
    and which rows wait for the next event.
    """
    n = t.shape[0]
    out = np.empty(n, np.int64)
    phase = np.empty(n)
    ev_sid = np.empty(n, np.int64)
    ev_t = np.empty(n, np.int64)
    keep = np.zeros(n, np.bool_)
    n_out = 0
    n_ev = 0
    lo = 0
    while lo < n:
        s = sid[lo]
        hi = lo
        while hi < n and sid[hi] == s:
            hi += 1
        p = lo                           # first row after the sensor's last event
        for i in range(lo, hi):
            if not new[i]:
                continue
            if t_prev[s] == _NONE or t[i] - t_prev[s] > max_gap:     # a new chain
                chain_start[s] = t[i]
                last_event[s] = _NONE
                stage[s] = 0
                peak_max[s] = 0.0
                peak_sum[s] = 0.0
                peak_count[s] = 0
                x_prev[s] = np.nan
                x_prev2[s] = np.nan
                p = i
            tc = t_prev[s]
            xc = x_prev[s]
            if x_prev2[s] < xc and xc > x[i]:                        # a candidate at row i - 1
                if stage[s] == 0 and tc - chain_start[s] < learn:
                    peak_max[s] = max(peak_max[s], xc) if peak_count[s] else xc
                    peak_sum[s] += xc
                    peak_count[s] += 1
                else:
                    if stage[s] == 0:
                        stage[s] = 1
                        if peak_count[s]:
                            spk[s] = peak_max[s]
                            npk[s] = 0.5 * (peak_sum[s] / peak_count[s])
                        else:
                            spk[s] = xc
                            npk[s] = 0.0
                    k = last_event[s]
                    if k == _NONE or tc - k >= refractory:
                        if xc > npk[s] + fraction * (spk[s] - npk[s]):
                            spk[s] = (1.0 - a) * spk[s] + a * xc
                            ev_sid[n_ev] = s
                            ev_t[n_ev] = tc
                            n_ev += 1
                            if k != _NONE:
                                span = float(tc - k)
                                for r in range(p, i):
                                    f = _TWO_PI * (float(t[r] - k) / span)
                                    phase[n_out] = f - _TWO_PI * np.floor((f + np.pi) / _TWO_PI)
                                    out[n_out] = r
                                    n_out += 1
                            last_event[s] = tc
                            p = i
                        else:
                            npk[s] = (1.0 - a) * npk[s] + a * xc
            x_prev2[s] = x_prev[s]
            x_prev[s] = x[i]
            t_prev[s] = t[i]
        if last_event[s] != _NONE:
            keep[p:hi] = True
        lo = hi
    return out, phase, n_out, ev_sid[:n_ev], ev_t[:n_ev], keep


def beat_phases_reference(t: np.ndarray, value: np.ndarray, rule: BeatRule) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One sensor's whole record: (t, phase) of every stamped sample, and the event times.

    Plain NumPy/SciPy, the module's statement: per chain, the candidates are
    ``scipy.signal.find_peaks`` with plateau size 1 (strict maxima), the
    threshold rule runs over them in order, and the phase is ``np.interp`` of
    the unwrapped beat phase 2 pi k at the events, wrapped.
    """
    t = np.asarray(t, np.int64)
    x = np.asarray(value, np.float64)
    x = x[:, 0] if x.ndim == 2 else x
    starts = np.concatenate(([0], np.flatnonzero(np.diff(t) > rule.max_gap_us) + 1, [t.size]))
    ts, phases, events = [], [], []
    for a, b in zip(starts[:-1], starts[1:]):
        tt, xx = t[a:b], x[a:b]
        peaks = find_peaks(xx, plateau_size=(1, 1))[0]
        ev = _events_reference(tt[peaks], xx[peaks], int(tt[0]), rule)
        events.append(ev)
        if ev.size < 2:
            continue
        inside = (tt > ev[0]) & (tt <= ev[-1])
        unwrapped = np.interp(tt[inside].astype(np.float64), ev.astype(np.float64), _TWO_PI * np.arange(ev.size))
        ts.append(tt[inside])
        phases.append(unwrapped - _TWO_PI * np.floor((unwrapped + np.pi) / _TWO_PI))
    if not ts:
        return np.empty(0, np.int64), np.empty(0), np.concatenate(events) if events else np.empty(0, np.int64)
    return np.concatenate(ts), np.concatenate(phases), np.concatenate(events)


def _events_reference(t_peak: np.ndarray, x_peak: np.ndarray, chain_start: int, rule: BeatRule) -> np.ndarray:
    a = rule.smoothing
    learning = t_peak - chain_start < rule.learn_us
    learned = x_peak[learning]
    spk = learned.max() if learned.size else None
    npk = 0.5 * (sum(learned.tolist()) / learned.size) if learned.size else 0.0
    events: list[int] = []
    for tp, p in zip(t_peak[~learning].tolist(), x_peak[~learning].tolist()):
        if spk is None:
            spk = p
        if events and tp - events[-1] < rule.refractory_us:
            continue
        if p > npk + rule.fraction * (spk - npk):
            events.append(tp)
            spk = (1 - a) * spk + a * p
        else:
            npk = (1 - a) * npk + a * p
    return np.array(events, np.int64)
