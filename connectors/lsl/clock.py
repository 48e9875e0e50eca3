"""LSL timestamps to epoch microseconds, strictly increasing (SPEC section 9).

An LSL timestamp is seconds on the *outlet's* ``lsl::local_clock`` (a
monotonic clock, counting from an arbitrary start).  The inlet's
``time_correction()`` is the offset from that clock to the inlet's own
``local_clock`` (liblsl measures it with NTP-like probes and keeps the one of
the shortest round trip), and ``time.time() - local_clock()`` is the offset
from the inlet's local clock to the Unix epoch, so

    t_epoch = lsl_timestamp + time_correction + (time.time() - local_clock())

The second offset is read as ``time.time()`` between two ``local_clock()``
reads, the tightest of a few tries, so it is good to a few microseconds; the
first is good to tens of microseconds on one host and to about a millisecond
on a LAN (liblsl's documentation); the epoch itself is as good as the host's
NTP.  Both offsets are measured at the start and again every few seconds
(clocks drift, NTP slews the wall clock).  A new offset that is smaller than
the old one would move times back: the times of a stream never go back and
strictly increase (:func:`epoch_micros` stamps a sample at least one
microsecond after the one before, so a step back is absorbed within the
next samples instead of reordering them).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["EpochClock", "epoch_micros", "wall_minus_local"]

#: Reads of the wall clock bracketed by the local clock; the tightest one counts.
_BRACKET_TRIES = 7


@dataclass
class EpochClock:
    """The offset in force and the last stamp given.

    Attributes:
        offset_us: ``time_correction + wall - local``, integer microseconds.
        last_us: the last epoch time stamped (None before the first sample).
        moved: samples stamped later than their timestamp says, to keep time order.
    """

    offset_us: int
    last_us: int | None = None
    moved: int = 0


def wall_minus_local(local_clock: Callable[[], float], wall: Callable[[], float] = time.time) -> float:
    """``time.time() - local_clock()`` in seconds, read within the shortest local-clock bracket of a few tries."""
    best_span, best = np.inf, 0.0
    for _ in range(_BRACKET_TRIES):
        before = local_clock()
        now = wall()
        after = local_clock()
        if after - before < best_span:
            best_span, best = after - before, now - (before + after) / 2.0
    return best


def epoch_micros(timestamps: np.ndarray, clock: EpochClock) -> np.ndarray:
    """Epoch microseconds (int64) of LSL ``timestamps`` (seconds), strictly increasing from ``clock.last_us``.

    ``round(timestamp * 1e6) + offset_us``: an LSL clock reads about 1e4 to
    1e7 s, which float64 carries to far below a microsecond, so the sum is
    exact to the rounding.  A stamp not after the one before becomes that one
    plus 1 us; ``clock`` is updated (last stamp, samples moved).

    >>> clock = EpochClock(offset_us=1_764_115_200_000_000)
    >>> epoch_micros(np.array([10.0, 10.004, 10.004, 10.001]), clock).tolist()
    [1764115210000000, 1764115210004000, 1764115210004001, 1764115210004002]
    >>> clock.moved
    2
    """
    ts = np.asarray(timestamps, dtype=np.float64)
    if ts.ndim != 1 or not np.isfinite(ts).all():
        raise ValueError("timestamps must be a 1-D array of finite seconds")
    if ts.size == 0:
        return np.zeros(0, np.int64)
    return _strictly_increasing(np.rint(ts * 1e6).astype(np.int64) + clock.offset_us, clock)


def _strictly_increasing(t_us: np.ndarray, clock: EpochClock) -> np.ndarray:
    # t'_k = max(t_k, t'_{k-1} + 1)  <=>  t'_k - k = running max of (t_j - j), seeded with last + 1.
    k = np.arange(t_us.size, dtype=np.int64)
    shifted = t_us - k
    if clock.last_us is not None:
        shifted[0] = max(shifted[0], clock.last_us + 1)
    out = np.maximum.accumulate(shifted) + k
    clock.moved += int(np.count_nonzero(out != t_us))
    clock.last_us = int(out[-1])
    return out
