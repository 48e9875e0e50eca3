"""Streaming lag products p_k of the KAIROS estimator (SPEC section 2, steps 1-4).

For one sensor, samples (t_k in int64 microseconds, phi_k in radians, C
channels) arrive in batches of strictly increasing time.  :class:`LagState`
turns each batch into the lag products it completes:

1. chains: a sample starts a new chain when t_k - t_{k-1} > max_gap; inside a
   chain Phi_k = Phi_{k-1} + wrap(phi_k - phi_{k-1}), wrap into [-pi, pi);
2. velocity: j(k) is the latest earlier sample of the chain with
   t_k - t_j >= d; rate_k = (Phi_k - Phi_j) / (t_k - t_j) [rad/s] and
   v_k = i * rate_k * exp(i phi_k), the time derivative of exp(i phi);
3. lag: m(k) is the latest sample of the chain with t_k - t_m >= tau; the
   product exists iff v_k and v_m exist and m < j(k) (disjoint spans), and
   p_k = sum_c w_c v_{k,c} conj(v_{m,c})   [rad^2 / s^2];
4. weight dt_k = t_k - t_{k-1} in seconds.

The state keeps only the samples a future product can still reach (those from
m(last) on, at most ~tau of history), in one growable buffer that is compacted
in place, so the cost is amortised O(1) per sample whatever the batch sizes.
The products of a sample never depend on how the input was split: the kernel
does the same floating-point operations on the same values either way.

The hot loop is :func:`_lag_kernel` (Numba); :func:`operators.reference.lag_products`
is the plain NumPy statement of the same math that the tests hold it to.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit

from operators.history import live_copy, make_room
from operators.params import KairosParams

__all__ = ["LagState", "Products", "validate_samples", "window_term"]

_TWO_PI = 2.0 * math.pi


class Products(NamedTuple):
    """A batch of lag products, in time order.

    Attributes:
        t: int64 microseconds, the time t_k of the sample that completed each product.
        p: complex128 lag product p_k [rad^2/s^2].
        dt: float64 weight dt_k = t_k - t_{k-1} in seconds.
    """

    t: np.ndarray
    p: np.ndarray
    dt: np.ndarray

    @classmethod
    def empty(cls) -> "Products":
        return cls(np.empty(0, np.int64), np.empty(0, np.complex128), np.empty(0, np.float64))

    def __len__(self) -> int:  # a batch's length is its product count
        return int(self.t.shape[0])

    @staticmethod
    def concat(parts: "list[Products]") -> "Products":
        if not parts:
            return Products.empty()
        return Products(*(np.concatenate([getattr(x, f) for x in parts]) for f in Products._fields))


def validate_samples(t_us: np.ndarray, phase: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Check and normalise one sensor's batch: int64 times, (n, C) float64 phases.

    Raises:
        ValueError: shape mismatch, non-finite phase, or time not strictly increasing.
    """
    t = np.ascontiguousarray(t_us, dtype=np.int64)
    ph = np.asarray(phase, dtype=np.float64)
    if t.ndim != 1:
        raise ValueError(f"t must be 1-D, got shape {t.shape}")
    if ph.ndim == 1:
        ph = ph.reshape(-1, 1)
    if ph.ndim != 2 or ph.shape[0] != t.shape[0]:
        raise ValueError(
            f"phase must have shape (n,) or (n, C) with n = len(t) = {t.shape[0]}, got {np.shape(phase)}"
        )
    if ph.shape[1] == 0:
        raise ValueError("phase must have at least one channel")
    if not np.all(np.isfinite(ph)):
        bad = int(np.argmax(~np.isfinite(ph).all(axis=1)))
        raise ValueError(f"phase must be finite; sample {bad} has {ph[bad].tolist()}")
    if t.shape[0] > 1:
        steps = np.diff(t)
        if np.any(steps <= 0):
            bad = int(np.argmax(steps <= 0)) + 1
            raise ValueError(
                "event time must be strictly increasing (after rounding to microseconds); "
                f"sample {bad} has t = {t[bad]} us after t = {t[bad - 1]} us"
            )
    return t, np.ascontiguousarray(ph)


@njit(cache=True, nogil=True)
def _wrap(x: float) -> float:
    """x wrapped into [-pi, pi)."""
    return x - _TWO_PI * math.floor((x + math.pi) / _TWO_PI)


@njit(cache=True, nogil=True)
def _lag_kernel(t_buf, phi_buf, unw_buf, v_buf, hasv_buf, lo, hi, cs, jp, mp,
                t_new, phi_new, d, tau, max_gap, w, out_t, out_p, out_dt):
    """Append ``t_new``/``phi_new`` at buffer position ``hi`` and emit their products.

    Buffer positions are absolute; [lo, hi) holds the retained history,
    ``cs`` is the current chain's first position, ``jp``/``mp`` the latest
    j(k)/m(k) (a value < cs means "none yet").  Returns (n_out, cs, jp, mp).
    """
    n_chan = phi_new.shape[1]
    n_out = 0
    for i in range(t_new.shape[0]):
        k = hi + i
        tk = t_new[i]
        t_buf[k] = tk
        if k == lo or tk - t_buf[k - 1] > max_gap:
            cs = k
            jp = k - 1
            mp = k - 1
            for c in range(n_chan):
                unw_buf[k, c] = phi_new[i, c]
        else:
            for c in range(n_chan):
                unw_buf[k, c] = unw_buf[k - 1, c] + _wrap(phi_new[i, c] - phi_buf[k - 1, c])
        for c in range(n_chan):
            phi_buf[k, c] = phi_new[i, c]

        # j(k), m(k) only move forward inside a chain: two monotone pointers.
        while jp + 1 < k and tk - t_buf[jp + 1] >= d:
            jp += 1
        has_v = jp >= cs
        hasv_buf[k] = has_v
        if has_v:
            span_s = (tk - t_buf[jp]) * 1e-6
            for c in range(n_chan):
                rate = (unw_buf[k, c] - unw_buf[jp, c]) / span_s
                v_buf[k, c] = phase_velocity(rate, phi_new[i, c])
        while mp + 1 < k and tk - t_buf[mp + 1] >= tau:
            mp += 1
        if has_v and mp >= cs and mp < jp and hasv_buf[mp]:
            acc = lag_product(v_buf, k, mp, w, n_chan)
            out_t[n_out] = tk
            out_p[n_out] = acc
            out_dt[n_out] = (tk - t_buf[k - 1]) * 1e-6
            n_out += 1
    return n_out, cs, jp, mp


@njit(cache=True, nogil=True, inline="always")
def phase_velocity(rate, ph):
    """v = i * rate * exp(i phi) = rate * (-sin phi + i cos phi): the time derivative of
    exp(i phi) (SPEC section 2, step 2), rate in rad/s."""
    return complex(-rate * math.sin(ph), rate * math.cos(ph))


@njit(cache=True, nogil=True, inline="always")
def lag_product(v, k, m, w, n_chan):
    """p_k = sum_c w_c v_{k,c} conj(v_{m,c}) over rows k and m of ``v`` (SPEC section 2, step 3).
    Every kernel that makes products calls this one, so they agree bit for bit."""
    acc = 0j
    for c in range(n_chan):
        acc += w[c] * (v[k, c] * v[m, c].conjugate())
    return acc


@njit(cache=True, nogil=True)
def window_term(tk, p, dt, omega):
    """A product's terms of the window sums (SPEC section 2 step 5).

    Returns (p exp(i omega t) dt, |p| dt) with t = tk * 1e-6 seconds since the
    epoch; omega == 0 skips the rotation (exp(0) = 1 exactly, same result).
    """
    c = p * dt
    if omega != 0.0:
        ph = omega * (tk * 1e-6)
        c = p * complex(math.cos(ph), math.sin(ph)) * dt
    # |p| as sqrt(re^2 + im^2): hypot's overflow guard is not needed for rad^2/s^2 values.
    return c, math.sqrt(p.real * p.real + p.imag * p.imag) * dt


class LagState:
    """Per-sensor streaming state that turns sample batches into lag products.

    Args:
        params: the estimator parameters (:class:`operators.params.KairosParams`).
        channels: number of phase channels C, fixed for the sensor.

    The state is plain NumPy arrays and ints, so it pickles (Bytewax snapshots
    it for recovery); pickling stores only the live history.

    >>> import numpy as np
    >>> from operators.params import KairosParams
    >>> state = LagState(KairosParams.from_seconds(1.0), channels=1)
    >>> t = np.arange(300) * 10_000                    # 100 Hz, in microseconds
    >>> phase = 2 * np.pi * 1.5 * t * 1e-6             # a 1.5 Hz oscillator
    >>> first = state.push(t[:150], phase[:150])
    >>> rest = state.push(t[150:], phase[150:])
    >>> len(first) + len(rest)                         # samples 101..299 have a lag partner
    199
    """

    def __init__(self, params: KairosParams, channels: int = 1) -> None:
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        self.params = params
        self.channels = channels
        self._w = params.weight_vector(channels)
        self._alloc(64)
        self._lo = self._hi = 0
        self._cs = 0
        self._jp = self._mp = -1
        self.samples_seen = 0

    def _alloc(self, capacity: int) -> None:
        c = self.channels
        self._t = np.empty(capacity, np.int64)
        self._phi = np.empty((capacity, c), np.float64)
        self._unw = np.empty((capacity, c), np.float64)
        self._v = np.zeros((capacity, c), np.complex128)
        self._hasv = np.zeros(capacity, np.bool_)

    @property
    def last_t(self) -> int | None:
        """Time of the newest sample pushed, or None before the first."""
        return int(self._t[self._hi - 1]) if self._hi > self._lo else None

    @property
    def retained(self) -> int:
        """Samples of history currently held (bounded by ~tau * rate)."""
        return self._hi - self._lo

    def _make_room(self, n_new: int) -> None:
        if self._hi + n_new <= self._t.shape[0]:
            return  # the usual call: room at the end already
        arrays = [self._t, self._phi, self._unw, self._v, self._hasv]
        shift = make_room(arrays, self._lo, self._hi, n_new)
        self._t, self._phi, self._unw, self._v, self._hasv = arrays
        self._lo -= shift
        self._hi -= shift
        self._cs -= shift
        self._jp -= shift
        self._mp -= shift

    def push(self, t_us: np.ndarray, phase: np.ndarray, *, validate: bool = True) -> Products:
        """Append a batch and return the lag products it completes.

        Args:
            t_us: int64 event times in microseconds, strictly increasing and
                later than every earlier sample of this state.
            phase: radians, shape (n,) or (n, C).
            validate: check the above (False: the caller guarantees it, as the
                event-time gate does, and passes (n, C) float64 phases).

        Raises:
            ValueError: bad shapes, non-finite phases, time not increasing, or a
                channel count different from the state's.
        """
        if validate:
            t, ph = validate_samples(t_us, phase)
        else:
            t, ph = t_us, phase
        if ph.shape[1] != self.channels:
            raise ValueError(f"sensor has {self.channels} channels, batch has {ph.shape[1]}")
        n = t.shape[0]
        if n == 0:
            return Products.empty()
        last = self.last_t if validate else None
        if last is not None and t[0] <= last:
            raise ValueError(
                f"event time must be strictly increasing: batch starts at t = {t[0]} us, "
                f"not after the previous sample at t = {last} us"
            )
        self._make_room(n)
        out_t = np.empty(n, np.int64)
        out_p = np.empty(n, np.complex128)
        out_dt = np.empty(n, np.float64)
        p = self.params
        n_out, self._cs, self._jp, self._mp = _lag_kernel(
            self._t, self._phi, self._unw, self._v, self._hasv,
            self._lo, self._hi, self._cs, self._jp, self._mp,
            t, ph, p.velocity_span_us, p.tau_us, p.max_gap_us, self._w,
            out_t, out_p, out_dt,
        )
        self._hi += n
        self.samples_seen += n
        # Keep from m(last) on: every later m(k) and j(k) is at or after it.
        self._lo = max(self._cs, self._mp)
        return Products(out_t[:n_out], out_p[:n_out], out_dt[:n_out])

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        names = ("_t", "_phi", "_unw", "_v", "_hasv")
        for name, arr in zip(names, live_copy([getattr(self, n) for n in names], self._lo, self._hi)):
            state[name] = arr
        shift = self._lo
        state.update(_lo=0, _hi=self._hi - shift, _cs=self._cs - shift,
                     _jp=self._jp - shift, _mp=self._mp - shift)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
