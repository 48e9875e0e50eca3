"""Event time as exact int64 microseconds since the Unix epoch (SPEC section 2).

Every comparison of times in BecomingONE (chains, lags, windows, grids,
lateness) is integer arithmetic on microseconds, so a producer's float noise
can never change which samples pair up.  This module is the one place where
outside representations become microseconds:

* float or int epoch seconds -> rounded to the nearest microsecond, whole and
  fractional seconds split first (a float64 near 1.7e9 s resolves ~0.24 us, and
  ``t * 1e6`` in one step would add its own rounding on top);
* ISO-8601 strings with a zone (``"2025-11-26T00:00:00.125Z"``);
* ``numpy.datetime64`` values and Arrow ``timestamp`` arrays of any unit.

Sub-microsecond digits (ISO strings, nanosecond datetime64 and Arrow
timestamps) round to the nearest microsecond, half up, so one instant gives
the same microsecond in every representation.

Durations from the config (seconds) are rounded to whole microseconds with
:func:`duration_to_micros`.

>>> to_micros([1764115200.125, 1764115200.135])
array([1764115200125000, 1764115200135000])
>>> int(to_micros("2025-11-26T00:00:00.125+00:00"))
1764115200125000
>>> duration_to_micros(0.01)
10000
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from typing import Any

import numpy as np

MICROS_PER_SECOND = 1_000_000

#: The event-time range in microseconds: what an Arrow ``timestamp[ns]`` holds
#: (1677-09-21T00:12:43.145225Z to 2262-04-11T23:47:16.854775Z).  A time outside
#: it cannot be archived, partitioned or formatted by every reader, so it is a
#: ``schema`` dead letter at decode (SPEC section 4).
MAX_T_US = (2**63 - 1) // 1000
MIN_T_US = -MAX_T_US
#: Largest |event time| in float seconds: one microsecond inside the range, so that
#: the rounding of any float up to it stays in the range (float64 resolves ~2 us there).
MAX_ABS_SECONDS = (MAX_T_US - 1) / 1e6
#: Largest |event time| in whole (integer) seconds.
MAX_ABS_WHOLE_SECONDS = MAX_T_US // 1_000_000

__all__ = [
    "MAX_ABS_SECONDS",
    "MAX_ABS_WHOLE_SECONDS",
    "MAX_T_US",
    "MICROS_PER_SECOND",
    "MIN_T_US",
    "duration_to_micros",
    "micros_to_seconds",
    "number_to_micros",
    "seconds_to_micros",
    "to_micros",
]


def seconds_to_micros(seconds: Any) -> np.ndarray:
    """Round epoch seconds (float or int array-like) to int64 microseconds.

    The whole seconds are split off before scaling, so the result is the
    microsecond nearest to the float's exact value (ties to even).

    Raises:
        ValueError: for NaN or infinite values, or values outside the event-time
            range (:data:`MIN_T_US` to :data:`MAX_T_US`, years 1677 to 2262).
    """
    arr = np.asarray(seconds)
    if arr.dtype.kind in "iu":
        _check_range(arr, MAX_ABS_WHOLE_SECONDS)
        return arr.astype(np.int64) * MICROS_PER_SECOND
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError("event time must be finite (got NaN or inf)")
    _check_range(arr, MAX_ABS_SECONDS)
    whole = np.floor(arr)
    frac = arr - whole  # exact in float64: whole and arr share the exponent range
    return whole.astype(np.int64) * MICROS_PER_SECOND + np.rint(frac * 1e6).astype(np.int64)


def number_to_micros(seconds: int | float) -> int:
    """:func:`seconds_to_micros` of one finite Python number in range, without NumPy
    (the same rounding: whole seconds split off, the fraction rounded half to even).

    >>> number_to_micros(1764115200.125), number_to_micros(-0.0000005), number_to_micros(3)
    (1764115200125000, 0, 3000000)
    """
    if isinstance(seconds, int):
        return seconds * MICROS_PER_SECOND
    whole = math.floor(seconds)
    return whole * MICROS_PER_SECOND + round((seconds - whole) * 1e6)


def _check_range(values: np.ndarray, limit: float) -> None:
    # Checked before scaling: int64 arithmetic would wrap around silently.
    if values.size and (np.max(values) > limit or np.min(values) < -limit):
        raise ValueError(f"event time out of range: {RANGE_TEXT}")


#: The event-time range as a person reads it, for error messages.
RANGE_TEXT = "it must lie between 1677-09-21T00:12:43.145225Z and 2262-04-11T23:47:16.854775Z"


def micros_in_range(t_us: Any) -> np.ndarray | bool:
    """True where ``t_us`` (int microseconds) lies in the event-time range.

    >>> micros_in_range(np.array([0, MAX_T_US, MAX_T_US + 1]))
    array([ True,  True, False])
    """
    arr = np.asarray(t_us)
    ok = (arr >= MIN_T_US) & (arr <= MAX_T_US)
    return bool(ok) if arr.ndim == 0 else ok


def duration_to_micros(seconds: float) -> int:
    """A config duration in seconds, rounded to whole microseconds."""
    if not np.isfinite(seconds):
        raise ValueError(f"duration must be finite, got {seconds!r}")
    return int(seconds_to_micros(np.float64(seconds)))


def micros_to_seconds(micros: Any) -> np.ndarray:
    """int64 microseconds to float64 seconds (for display and values only)."""
    return np.asarray(micros, dtype=np.int64) * 1e-6


_FRACTION = re.compile(r"(?<=\d)[.,](\d+)")


def _iso_to_micros(text: str) -> int:
    # datetime parses at most microseconds; digits beyond the sixth round
    # (half up) like every other representation, instead of being cut off.
    body = text.strip().replace("Z", "+00:00").replace("z", "+00:00")
    carry = 0
    match = _FRACTION.search(body)
    if match and len(match.group(1)) > 6:
        digits = match.group(1)
        carry = 1 if digits[6] >= "5" else 0
        body = body[: match.start(1)] + digits[:6] + body[match.end(1):]
    try:
        stamp = _dt.datetime.fromisoformat(body)
    except ValueError as exc:
        raise ValueError(f"not an ISO-8601 time: {text!r}") from exc
    if stamp.tzinfo is None:
        raise ValueError(f"ISO-8601 time needs a zone (e.g. 'Z' or '+00:00'): {text!r}")
    # Integer arithmetic from the epoch: no float on the way.
    delta = stamp - _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
    t_us = (delta.days * 86_400 + delta.seconds) * MICROS_PER_SECOND + delta.microseconds + carry
    if not MIN_T_US <= t_us <= MAX_T_US:
        raise ValueError(f"event time {text!r} out of range: {RANGE_TEXT}")
    return t_us


_NANOS_PER_UNIT = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}


def unit_limit(unit: str) -> int:
    """Largest |value| of a timestamp in ``unit`` (s, ms, us, ns) inside the event-time range.

    >>> unit_limit("s"), unit_limit("ns")
    (9223372036, 9223372036854775000)
    """
    return MAX_T_US * 1000 // _NANOS_PER_UNIT[unit]


def to_micros(t: Any) -> np.ndarray:
    """Any supported event-time representation to an int64 microsecond array.

    Args:
        t: epoch seconds (float/int scalar or array-like), ISO-8601 string(s)
            with a zone, ``numpy.datetime64`` array, or a pyarrow timestamp
            array / chunked array.

    Returns:
        1-D (or 0-D for a scalar) ``int64`` array of microseconds since the epoch.
    """
    mod = type(t).__module__
    if mod.startswith("pyarrow"):
        import pyarrow as pa
        import pyarrow.compute as pc

        typ = t.type
        if pa.types.is_timestamp(typ):
            if t.null_count:
                raise ValueError("event time must not be null")
            raw = np.asarray(pc.cast(t, pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)
            _check_range(raw, unit_limit(typ.unit))
            scale = {"s": -1_000_000, "ms": -1_000, "us": 1, "ns": 1_000}[typ.unit]
            if scale < 0:
                return raw * -scale
            return raw if scale == 1 else (raw + 500) // 1000  # ns: nearest us, half up
        return to_micros(t.to_numpy(zero_copy_only=False))
    if isinstance(t, str):
        return np.asarray(_iso_to_micros(t), dtype=np.int64)
    if isinstance(t, _dt.datetime):
        if t.tzinfo is None:
            raise ValueError(f"datetime event time needs a zone: {t!r}")
        return np.asarray(_iso_to_micros(t.isoformat()), dtype=np.int64)
    arr = np.asarray(t)
    if arr.dtype.kind == "M":
        if np.any(np.isnat(arr)):
            raise ValueError("event time must not be NaT")
        unit = np.datetime_data(arr.dtype)[0]
        if unit in _NANOS_PER_UNIT:
            _check_range(arr.astype(np.int64), unit_limit(unit))
        if unit in ("ns", "ps", "fs", "as"):
            # Nearest microsecond, half up, as for Arrow and ISO input.
            ns = arr.astype("datetime64[ns]").astype(np.int64)
            return (ns + 500) // 1000
        return arr.astype("datetime64[us]").astype(np.int64)
    if arr.dtype.kind in "OU":
        flat = [_iso_to_micros(x) if isinstance(x, str) else int(seconds_to_micros(x)) for x in arr.ravel()]
        return np.asarray(flat, dtype=np.int64).reshape(arr.shape)
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"unsupported event-time dtype {arr.dtype}")
    return seconds_to_micros(arr)
