"""The properties SPEC section 2 demands of any implementation of the estimator."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from operators import reference
from operators.emissary import EmissaryWindow
from operators.grid import emission_points
from operators.resonance import resonance
from operators.lag import LagState, Products
from operators.master import MasterWindow
from operators.params import KairosParams
from schemas.timebase import to_micros

T0 = 1_764_115_200.0  # epoch seconds, 2025-11-26T00:00:00Z


@pytest.mark.parametrize("rate_hz", [100.0, 1000.0])
@pytest.mark.parametrize("freq_hz", [0.3, 1.0, 7.0, 31.0, 49.0])  # all below Nyquist at 100 Hz
@pytest.mark.parametrize("span", [0.0, 0.05])
def test_noiseless_oscillator_on_regular_grid_has_coherence_one(rate_hz, freq_hz, span):
    n = int(rate_hz * 20)
    t_us = int(T0 * 1e6) + np.arange(n) * int(1e6 / rate_hz)
    phase = np.mod(2 * np.pi * freq_hz * (t_us - t_us[0]) * 1e-6 + 0.4, 2 * np.pi)
    T = resonance(t_us * 1e-6, phase, tau=1.0, velocity_span=span)
    assert abs(abs(T) ** 2 - 1.0) < 1e-9


def test_irregular_sampling_lowers_coherence():
    rng = np.random.default_rng(3)
    t = T0 + np.cumsum(rng.uniform(0.002, 0.018, 4000))
    phase = 2 * np.pi * 5.0 * (t - T0)
    coh = abs(resonance(t, phase, tau=1.0)) ** 2
    assert 0.0 < coh < 0.99


@pytest.mark.parametrize("span_samples", [0, 4])
def test_uniform_random_phases_sit_at_the_noise_floor(span_samples):
    """i.i.d. uniform phases: coherence < 20 * D / N in at least 99 of 100 seeds."""
    rate = 100
    n_samples = 1500
    t_us = int(T0 * 1e6) + np.arange(n_samples) * (1_000_000 // rate)
    span = span_samples / rate
    params = KairosParams.from_seconds(1.0, velocity_span=span)
    d = max(span_samples, 1)
    passed = 0
    for seed in range(100):
        phase = np.random.default_rng(seed).uniform(-np.pi, np.pi, n_samples)
        prods = LagState(params).push(t_us, phase)
        n = len(prods)
        assert n >= 1000
        T = resonance(t_us * 1e-6, phase, tau=1.0, velocity_span=span)
        passed += abs(T) ** 2 < 20 * d / n
    assert passed >= 99


def test_adding_2pi_multiples_and_constant_offsets_changes_nothing():
    rng = np.random.default_rng(11)
    n = 3000
    t = T0 + np.cumsum(rng.uniform(0.005, 0.015, n))
    phase = np.cumsum(rng.normal(0.2, 0.15, (n, 2)), axis=0)
    kw = dict(tau=0.8, velocity_span=0.05, omega=2.0, weights=[2.0, 1.0])
    base = resonance(t, phase, **kw)
    wrapped = resonance(t, phase + 2 * np.pi * rng.integers(-50, 50, phase.shape), **kw)
    offset = resonance(t, phase + np.array([1.234, -0.5]), **kw)
    assert abs(wrapped - base) < 1e-9
    assert abs(offset - base) < 1e-9


def test_float_producer_noise_cannot_change_lag_pairing():
    """100 Hz with float timestamps carrying rounding noise: k pairs with k - 100 at tau = 1 s."""
    n = 2000
    rng = np.random.default_rng(5)
    exact_us = int(T0 * 1e6) + np.arange(n) * 10_000
    # What a producer computing t0 + k * 0.01 in float64 (plus sub-us jitter) sends.
    noisy = T0 + np.arange(n) * 0.01 + rng.uniform(-3e-7, 3e-7, n)
    assert np.any(noisy * 1e6 != exact_us)  # the floats really are off the grid
    t_us = to_micros(noisy)
    assert np.array_equal(t_us, exact_us)
    j, m, _ = reference.lag_partners(t_us, KairosParams.from_seconds(1.0, velocity_span=0.1))
    k = np.arange(100, n)
    assert np.array_equal(m[k], k - 100)
    assert np.array_equal(j[k], k - 10)
    phase = rng.uniform(-np.pi, np.pi, n)
    assert resonance(noisy, phase, tau=1.0, velocity_span=0.1) == resonance(
        exact_us * 1e-6, phase, tau=1.0, velocity_span=0.1
    )


def test_float_iso_and_arrow_times_give_identical_results():
    n = 800
    rng = np.random.default_rng(9)
    t_us = int(T0 * 1e6) + np.cumsum(rng.integers(8_000, 12_000, n))
    phase = np.cumsum(rng.normal(0.5, 0.1, n))
    floats = t_us / 1e6
    iso = [
        (dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=int(x))).isoformat()
        for x in t_us
    ]
    iso_other_zone = [
        (dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=int(x)))
        .astimezone(dt.timezone(dt.timedelta(hours=-5)))
        .isoformat()
        for x in t_us
    ]
    arrow_ns = pa.array(t_us * 1000, pa.timestamp("ns", tz="UTC"))
    arrow_us = pa.array(t_us, pa.timestamp("us", tz="UTC"))
    datetimes = t_us.astype("datetime64[us]")
    results = {
        name: resonance(t, phase, tau=1.0, velocity_span=0.1, omega=2.0)
        for name, t in {
            "float": floats, "iso": iso, "iso-05:00": iso_other_zone,
            "arrow-ns": arrow_ns, "arrow-us": arrow_us, "datetime64": datetimes,
        }.items()
    }
    assert len(set(results.values())) == 1, results


def test_sliding_window_does_not_drift_over_ten_million_products():
    """Running sums with add/subtract agree with recomputation after 10^7 products."""
    rng = np.random.default_rng(2)
    window_us, step_us, chunk = 1_000_000, 1_000, 1_000_000
    em = EmissaryWindow(window_us, omega=2.0)
    t_start = int(T0 * 1e6)
    last = None
    for c in range(10):
        t = t_start + (c * chunk + np.arange(1, chunk + 1)) * step_us
        # Partly coherent products of widely varying size: the hard case for cancellation.
        p = rng.lognormal(0, 2, chunk) * np.exp(1j * (0.3 * rng.standard_normal(chunk)))
        dt_s = np.full(chunk, step_us * 1e-6)
        grid = emission_points(t, 10_000)
        last = (Products(t, p, dt_s), em.advance(Products(t, p, dt_s), grid))
    prods, out = last
    check = out.t[-50:]
    ref = reference.window_values(prods, 2.0, check, window_us)
    np.testing.assert_allclose(out.T[-50:], ref.T, rtol=1e-9)
    np.testing.assert_array_equal(out.n_products[-50:], ref.n_products)


def test_master_pane_window_does_not_drift_either():
    rng = np.random.default_rng(4)
    ma = MasterWindow(window_us=60_000_000, pane_us=100_000, omega=0.5)
    t_start, step = int(T0 * 1e6), 1_000
    for c in range(10):
        t = t_start + (c * 1_000_000 + np.arange(1, 1_000_001)) * step
        p = rng.lognormal(0, 2, t.size) * np.exp(1j * 0.3 * rng.standard_normal(t.size))
        prods = Products(t, p, np.full(t.size, 1e-3))
        out = ma.advance(prods, emission_points(t, 100_000))
    ref = reference.window_values(prods, 0.5, out.t[-20:], 60_000_000)
    np.testing.assert_allclose(out.T[-20:], ref.T, rtol=1e-9)
    np.testing.assert_array_equal(out.span_us[-20:], ref.span_us)


def test_master_memory_does_not_depend_on_sample_rate():
    params = KairosParams.from_seconds(1.0, velocity_span=0.1)
    sizes = {}
    for rate in (10, 10_000):
        lag = LagState(params)
        master = MasterWindow(window_us=3_600_000_000, pane_us=100_000)
        before = master.state_bytes
        n = rate * 30
        t = int(T0 * 1e6) + np.arange(n) * (1_000_000 // rate)
        phase = 2 * np.pi * 2.0 * (t - t[0]) * 1e-6
        for chunk in np.array_split(np.arange(n), 10):
            prods = lag.push(t[chunk], phase[chunk])
            g = emission_points(t[chunk], 100_000)
            master.advance(prods, g[g <= t[chunk][-1]] if master.last_emitted is None
                           else g[(g <= t[chunk][-1]) & (g > master.last_emitted)])
        assert master.state_bytes == before
        sizes[rate] = master.state_bytes
        # The lag history is bounded by tau, not by the run length.
        assert lag.retained <= rate * 1 + 2
    assert sizes[10] == sizes[10_000]
    assert sizes[10] <= 36_000 * 28 + 256  # 28 bytes per 0.1 s pane for an hour
    assert sizes[10] <= 2 ** 20  # at most 1 MiB per sensor


def test_master_counts_stay_exact_past_the_packed_capacity():
    # A 2^20 us pane leaves 11 bits of count (2047) in the packed word; 5,000
    # products in one pane, arriving over two calls, widen the words once.
    pane = 2 ** 20
    master = MasterWindow(window_us=4 * pane, pane_us=pane)
    packed = master.state_bytes
    t = pane + np.arange(1, 5001) * 100
    p = np.exp(1j * 0.01 * np.arange(5000))
    prods = Products(t, p, np.full(5000, 1e-4))
    master.advance(Products(t[:1500], p[:1500], prods.dt[:1500]), np.empty(0, np.int64))
    out = master.advance(Products(t[1500:], p[1500:], prods.dt[1500:]), np.array([2 * pane]))
    assert master.state_bytes == packed + 4 * 4  # one 8-byte word per pane instead of 4
    ref = reference.window_values(prods, 0.0, np.array([2 * pane]), 4 * pane)
    assert out.n_products.tolist() == ref.n_products.tolist() == [5000]
    np.testing.assert_array_equal(out.span_us, ref.span_us)
    np.testing.assert_allclose(out.T, ref.T, rtol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "t", "phase", "message"),
    [
        ({"tau": 1.0, "velocity_span": 1.5}, [0.0, 1.0], [0.0, 1.0], "velocity_span (1.5 s) must be smaller than tau (1 s)"),
        ({"tau": 1.0}, [0.0, 2.0, 1.0], [0.0, 1.0, 2.0], "strictly increasing"),
        ({"tau": 1.0}, [0.0, 0.0000001, 1.0], [0.0, 1.0, 2.0], "after rounding to microseconds"),
        ({"tau": 1.0}, [0.0, 1.0], [0.0, float("nan")], "phase must be finite"),
        ({"tau": 1.0}, [0.0, float("inf")], [0.0, 1.0], "finite"),
        ({"tau": 1.0}, [0.0, 1.0, 2.0], [0.0, 1.0], "phase must have shape"),
        ({"tau": 0.0}, [0.0, 1.0], [0.0, 1.0], "tau must be positive"),
        ({"tau": 1.0, "weights": [1.0, -1.0]}, [0.0, 1.0], [[0, 0], [1, 1]], "weights must be finite and >= 0"),
        ({"tau": 1.0, "weights": [1.0]}, [0.0, 1.0], [[0, 0], [1, 1]], "weights has 1 entries but the phase has 2 channels"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, t, phase, message):
    with pytest.raises(ValueError) as info:
        resonance(np.asarray(t), np.asarray(phase, dtype=float), **kwargs)
    assert message in str(info.value)


def test_lag_state_rejects_time_going_backwards_across_batches():
    lag = LagState(KairosParams.from_seconds(1.0))
    lag.push(np.array([10, 20]), np.array([0.0, 0.1]))
    with pytest.raises(ValueError, match="not after the previous sample at t = 20 us"):
        lag.push(np.array([20, 30]), np.array([0.2, 0.3]))


def test_windows_reject_grid_points_out_of_order():
    em = EmissaryWindow(1_000_000)
    em.advance(Products(np.array([5]), np.array([1j]), np.array([0.01])), np.array([10]))
    with pytest.raises(ValueError, match="not after the last emitted one"):
        em.advance(Products.empty(), np.array([10]))
    master = MasterWindow(1_000_000, 100_000)
    with pytest.raises(ValueError, match="not a multiple of the pane width"):
        master.advance(Products.empty(), np.array([150_000]))
    with pytest.raises(ValueError, match="whole multiple of the pane width"):
        MasterWindow(1_050_000, 100_000)
