"""A window of the streaming fleet pass as a ring of panes: the pane layout and its two kernels.

A window (g - W, g] on the grid g = n I is a whole number of panes: pane q
holds the products with t in ((q - 1) P, q P], P = gcd(W, I).  A sensor's
window is a ring of slots (a segment of a pool, see
:mod:`operators.columnar_state`), oldest first, and only panes with products
have a slot: a slow sensor uses memory in proportion to its products, a fast
one to W / P.  A slot is 28 bytes:

* S.re, S.im, A of its products (float64 each);
* one uint32 word: the product count (low ``count_bits``), the number of panes
  from the slot before it (``delta_bits``) and the first product's offset in
  its pane, t - (q - 1) P in [1, P] (the high bits(P) bits), from which the
  window's oldest product time is rebuilt (the span Master maturity is judged on).

The window's columns keep the pane numbers q of the oldest and of the newest
slot.  A step of more panes than ``delta_bits`` hold takes one more slot, with
count 0 and the step in all its bits above the count; a pane with more
products than ``count_bits`` hold continues in a slot with step 0.  Neither
happens at rates between about 0.7 Hz and 20 kHz with 0.1 s panes.  Where the
pane width leaves fewer than 11 bits of a uint32 for the count, the word is an
int64 (32-byte slots).

Sums.  The newest slot is the open pane: its products are added with
error-free addition, the rounded part in the slot and the error in the
window's columns; when the next slot opens, the pane is rounded to one float64
per sum (its error folded in) and added to the window's running sums (a
float64 pair each, error-free addition).  A pane that leaves is subtracted as
the same float64 it was added as, so adding and subtracting cancel to about
eps^2 of what has passed, however long the stream: a window's value carries
only the rounding of its own panes (half an ulp each), not of the panes
before it.  A window whose ring empties is reset to exact zeros.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from operators.columnar import _two_sum

# A window's columns of FleetState.ints (from its base column) and of FleetState.sums.
W_OFF, W_CAP, W_HEAD, W_LEN, W_N, W_NZ, W_HQ, W_TQ = range(8)   # W_N products, W_NZ newest with |p| dt > 0
W_INTS = 8
W_SUMS = 9          # S.re, S.im, A of the closed panes as pairs (hi, lo), then the open pane's three errors
NO_TIME = np.iinfo(np.int64).min
MIN_COUNT_BITS, DELTA_BITS = 11, 4


def pane_width(window_us: int, interval_us: int) -> int:
    """P = gcd(W, I) (us): windows (g - W, g] at grid points g = n I are whole panes of width P."""
    return math.gcd(int(window_us), int(interval_us))


@dataclass(frozen=True)
class PaneLayout:
    """How one window's slots are packed (fixed by the settings).

    >>> m = PaneLayout.of(3_600_000_000, 100_000)       # a Master of 1 h at 0.1 s
    >>> m.pane_us, m.most_slots, m.word.__name__, m.count_bits, m.slot_bytes
    (100000, 36004, 'uint32', 11, 28)
    >>> PaneLayout.of(86_400_000_000, 3_600_000_000).word.__name__   # hour-wide panes: 32 bits do not fit
    'int64'
    """

    window_us: int
    interval_us: int
    pane_us: int
    word: type                 # np.uint32 or np.int64
    count_bits: int
    delta_bits: int

    @classmethod
    def of(cls, window_us: int, interval_us: int) -> "PaneLayout":
        pane = pane_width(window_us, interval_us)
        offset_bits = pane.bit_length()
        for bits, word in ((32, np.uint32), (63, np.int64)):
            count_bits = min(bits - offset_bits - DELTA_BITS, 24)
            # A step between slots is at most W / P panes (an older ring is dropped first): the bits
            # above the count must hold it.
            if count_bits >= MIN_COUNT_BITS and window_us // pane < 2 ** (bits - count_bits):
                return cls(int(window_us), int(interval_us), pane, word, count_bits, DELTA_BITS)
        raise ValueError(f"a window of {window_us} us on a grid of {interval_us} us has panes of {pane} us: "
                         "too many or too wide to number in 63 bits")

    @property
    def most_slots(self) -> int:
        """The most slots a window needs (unless a pane overflows its count): the panes of (g - W, g]
        and of the interval whose samples arrive before its point is due, (W + I) / P, a step slot
        between them (after a pause), and one spare (room for two is checked before each sample)."""
        return (self.window_us + self.interval_us) // self.pane_us + 3

    @property
    def slot_bytes(self) -> int:
        return 3 * 8 + np.dtype(self.word).itemsize

    def config(self) -> tuple[int, int, int, int]:
        """What the kernels take: P, W, count bits, delta bits."""
        return self.pane_us, self.window_us, self.count_bits, self.delta_bits


@njit(cache=True, nogil=True, inline="always")
def _slot(ints, r, base, k):
    """Ring position of the window's k-th slot from its oldest (a compare, not a modulo, wraps it)."""
    pos = ints[r, base + W_HEAD] + k
    if pos >= ints[r, base + W_CAP]:
        pos -= ints[r, base + W_CAP]
    return ints[r, base + W_OFF] + pos


@njit(cache=True, nogil=True, inline="always")
def _append(ints, ps, wd, r, base, word):
    """A new newest slot holding ``word`` and zero sums (the caller made room); its position."""
    q = _slot(ints, r, base, ints[r, base + W_LEN])
    wd[q] = word
    for x in range(3):
        ps[q, x] = 0.0
    ints[r, base + W_LEN] += 1
    return q


@njit(cache=True, nogil=True, inline="always")
def _close(sums, r, sb, ps, q):
    """The open pane (slot q) rounded to one float64 per sum and added to the running sums."""
    for x in range(3):
        v = ps[q, x] + sums[r, sb + 6 + x]
        ps[q, x] = v
        sums[r, sb + 6 + x] = 0.0
        sums[r, sb + 2 * x], sums[r, sb + 2 * x + 1] = _two_sum(sums[r, sb + 2 * x], sums[r, sb + 2 * x + 1], v)


@njit(cache=True, nogil=True, inline="always")
def _clear(ints, sums, r, base, sb):
    ints[r, base + W_HEAD] = ints[r, base + W_LEN] = ints[r, base + W_N] = 0
    for x in range(W_SUMS):
        sums[r, sb + x] = 0.0


@njit(cache=True, nogil=True, inline="always")
def pane_add(ints, sums, r, base, sb, ps, wd, tk, c, a, pane, window, count_bits, delta_bits):
    """Integrate one product at tk (terms c = p e^{i omega t} dt, a = |p| dt) into the window.
    Needs room for two slots (a step slot and the pane's); products come in time order."""
    length = ints[r, base + W_LEN]
    count_max = (np.int64(1) << count_bits) - 1
    if length > 0 and tk <= ints[r, base + W_TQ] * pane:   # the open pane
        q = _slot(ints, r, base, length - 1)
        word = np.int64(wd[q])
        if word & count_max == count_max:   # its count is full: it goes on in a slot of step 0
            _close(sums, r, sb, ps, q)
            q = _append(ints, ps, wd, r, base, np.int64(1))
        else:
            wd[q] = word + 1
    else:
        qn = -((-tk) // pane)
        first = (tk - (qn - 1) * pane) << (count_bits + delta_bits)
        tq = ints[r, base + W_TQ]
        if length > 0 and tq * pane <= tk - window:
            # Every grid point still to come is >= tk: the whole ring leaves at the next one.
            _clear(ints, sums, r, base, sb)
            length = 0
        if length == 0:
            ints[r, base + W_HQ] = qn
            q = _append(ints, ps, wd, r, base, first | 1)
        else:
            _close(sums, r, sb, ps, _slot(ints, r, base, length - 1))
            step = qn - tq
            if step >= np.int64(1) << delta_bits:
                _append(ints, ps, wd, r, base, (step - 1) << count_bits)   # count 0: a step only
                step = 1
            q = _append(ints, ps, wd, r, base, first | (step << count_bits) | 1)
        ints[r, base + W_TQ] = qn
    ints[r, base + W_N] += 1
    if a > 0.0:
        ints[r, base + W_NZ] = tk
    vals = (c.real, c.imag, a)
    for x in range(3):
        ps[q, x], sums[r, sb + 6 + x] = _two_sum(ps[q, x], sums[r, sb + 6 + x], vals[x])


@njit(cache=True, nogil=True, inline="always")
def pane_value(ints, sums, r, base, sb, ps, wd, g, last_pt, pane, window, count_bits, delta_bits):
    """Drop the panes ending at or before g - W; return (T, products, span us) over (g - W, g].
    ``last_pt``: the sensor's newest product time (every product up to g is in, none later)."""
    count_max = (np.int64(1) << count_bits) - 1
    delta_max = (np.int64(1) << delta_bits) - 1
    cut = g - window
    length, hq = ints[r, base + W_LEN], ints[r, base + W_HQ]
    while length > 0:
        q = _slot(ints, r, base, 0)
        n = np.int64(wd[q]) & count_max
        if n > 0:
            if hq * pane > cut:   # cut is a multiple of P: the pane ends after it, so do the later ones
                break
            if length == 1:   # the open pane leaves: the window is empty
                length = 0
                break
            for x in range(3):
                sums[r, sb + 2 * x], sums[r, sb + 2 * x + 1] = _two_sum(sums[r, sb + 2 * x],
                                                                        sums[r, sb + 2 * x + 1], -ps[q, x])
            ints[r, base + W_N] -= n
        ints[r, base + W_HEAD] = 0 if ints[r, base + W_HEAD] + 1 == ints[r, base + W_CAP] \
            else ints[r, base + W_HEAD] + 1
        length -= 1
        ints[r, base + W_LEN] = length
        if length > 0:   # the next slot's pane: a step slot's step has every bit above the count
            word = np.int64(wd[_slot(ints, r, base, 0)])
            hq += word >> count_bits if word & count_max == 0 else (word >> count_bits) & delta_max
    if length == 0:
        _clear(ints, sums, r, base, sb)
        return 0j, np.int64(0), np.int64(0)
    ints[r, base + W_HQ] = hq
    span = last_pt - ((hq - 1) * pane + (np.int64(wd[_slot(ints, r, base, 0)]) >> (count_bits + delta_bits)))
    if ints[r, base + W_NZ] <= cut:   # every product in the window has zero weight
        return 0j, ints[r, base + W_N], span
    q = _slot(ints, r, base, length - 1)
    a = _total(sums, r, sb, ps, q, 2)
    T = complex(_total(sums, r, sb, ps, q, 0), _total(sums, r, sb, ps, q, 1)) / a if a > 0.0 else 0j
    return T, ints[r, base + W_N], span


@njit(cache=True, nogil=True, inline="always")
def _total(sums, r, sb, ps, q, x):
    """Sum x (0 S.re, 1 S.im, 2 A) of the window: the closed panes' pair plus the open pane (slot q)."""
    hi, lo = _two_sum(sums[r, sb + 2 * x], sums[r, sb + 2 * x + 1], ps[q, x])
    return hi + (lo + sums[r, sb + 6 + x])
