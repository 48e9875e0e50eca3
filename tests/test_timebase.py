"""Event time as exact int64 microseconds, whatever representation it arrives in."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from schemas.timebase import duration_to_micros, seconds_to_micros, to_micros

T_US = 1_764_115_200_123_457  # 2025-11-26T00:00:00.123457Z


def test_float_seconds_round_to_the_nearest_microsecond_without_loss():
    # t * 1e6 in one step is off for many epoch-sized floats; the split is not.
    t = 1_764_115_200.0 + np.arange(100_000) * 0.01
    got = seconds_to_micros(t)
    want = 1_764_115_200_000_000 + np.arange(100_000) * 10_000
    assert np.array_equal(got, want)
    assert int(to_micros(1764115200.125)) == 1_764_115_200_125_000
    assert int(to_micros(-0.0000004)) == 0
    assert int(to_micros(-1.5)) == -1_500_000


def test_one_instant_gives_one_microsecond_in_every_representation():
    ns = T_US * 1000 - 300  # ...123456.700 us -> rounds up to ...123457
    iso = "2025-11-26T00:00:00.1234567Z"
    forms = {
        "iso 7 digits": to_micros(iso),
        "iso 9 digits": to_micros("2025-11-26T00:00:00.123456700+00:00"),
        "iso other zone": to_micros("2025-11-25T19:00:00.123457-05:00"),
        "datetime64[ns]": to_micros(np.array([ns], dtype="datetime64[ns]"))[0],
        "arrow ns": to_micros(pa.array([ns], pa.timestamp("ns", tz="UTC")))[0],
        "arrow us": to_micros(pa.array([T_US], pa.timestamp("us", tz="UTC")))[0],
        "datetime": to_micros(dt.datetime(2025, 11, 26, 0, 0, 0, 123457, tzinfo=dt.timezone.utc)),
    }
    assert {k: int(v) for k, v in forms.items()} == {k: T_US for k in forms}
    assert int(to_micros(pa.array([1_764_115_200], pa.timestamp("s", tz="UTC")))[0]) == 1_764_115_200_000_000
    assert int(to_micros(pa.array([1_764_115_200_123], pa.timestamp("ms")))[0]) == 1_764_115_200_123_000


def test_durations_round_to_whole_microseconds():
    assert duration_to_micros(0.01) == 10_000
    assert duration_to_micros(0.1) == 100_000
    assert duration_to_micros(3600) == 3_600_000_000
    assert duration_to_micros(1e-7) == 0


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("2025-11-26T00:00:00", "needs a zone"),
        ("yesterday", "not an ISO-8601 time"),
        (float("nan"), "finite"),
        (np.array(["NaT"], dtype="datetime64[us]"), "NaT"),
        (dt.datetime(2025, 1, 1), "needs a zone"),
    ],
)
def test_bad_times_are_rejected_with_a_reason(value, message):
    with pytest.raises(ValueError, match=message):
        to_micros(value)


def test_integer_seconds_out_of_range_raise_instead_of_wrapping():
    with pytest.raises(ValueError, match="out of range"):
        to_micros(np.array([10**13]))
    with pytest.raises(ValueError, match="out of range"):
        to_micros(pa.array([10**13], pa.timestamp("s", tz="UTC")))
