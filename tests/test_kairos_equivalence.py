"""The Numba kernels equal the NumPy reference, for any input and any batching."""

from __future__ import annotations

import pickle

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operators import reference
from operators.emissary import EmissaryWindow
from operators.grid import emission_points
from operators.lag import LagState, Products
from operators.master import MasterWindow
from operators.params import KairosParams

EPOCH_US = 1_764_115_200_000_000  # 2025-11-26: real epoch-sized times, not small ints
EMISSARY_I, MASTER_I = 10_000, 100_000  # witness intervals, us


@st.composite
def sensor_streams(draw):
    """Irregular multi-channel phase records with gaps, and parameters to match."""
    n = draw(st.integers(30, 400) | st.integers(2, 30))
    channels = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    base_step = draw(st.sampled_from([1_000, 5_000, 10_000, 33_333]))
    steps = rng.integers(1, 2 * base_step, n)
    # Occasional pauses, some longer than max_gap (new chain), some shorter.
    pauses = rng.random(n) < draw(st.sampled_from([0.0, 0.01, 0.05]))
    steps[pauses] += rng.integers(1, 3_000_000, pauses.sum())
    t = EPOCH_US + np.cumsum(steps)
    kind = draw(st.sampled_from(["walk", "oscillator", "uniform"]))
    if kind == "uniform":
        phase = rng.uniform(-np.pi, np.pi, (n, channels))
    else:
        freq = rng.uniform(0.1, 20.0, channels)
        phase = 2 * np.pi * freq * ((t - t[0]) * 1e-6)[:, None]
        phase += rng.normal(0, 0.3, (n, channels)).cumsum(axis=0) * (kind == "walk")
        phase = np.mod(phase, 2 * np.pi) - np.pi * draw(st.booleans())
    # Lags from a few samples to half the record, so most examples have products;
    # pauses (up to 3 s) are then both shorter and longer than the lag.
    tau_us = int(base_step * n * draw(st.sampled_from([0.01, 0.05, 0.2, 0.5]))) + 2 * base_step
    d_us = int(draw(st.sampled_from([0, 0, base_step, tau_us // 3, tau_us // 2, tau_us - 1])))
    max_gap_us = int(draw(st.sampled_from([np.iinfo(np.int64).max, 3 * base_step, 10 * base_step, 2_000_000])))
    weights = draw(st.none() | st.lists(st.floats(0.0, 5.0), min_size=channels, max_size=channels)
                   .filter(lambda w: sum(w) > 0))
    omega = draw(st.sampled_from([0.0, 2.0, -7.5, 31.4]))
    params = KairosParams(tau_us=tau_us, velocity_span_us=d_us, max_gap_us=max_gap_us,
                          omega=omega, weights=None if weights is None else tuple(weights))
    cuts = sorted(set(draw(st.lists(st.integers(0, n), max_size=8))))
    return t, phase, params, cuts


def _split(n: int, cuts: list[int]) -> list[slice]:
    edges = [0, *cuts, n]
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:])]


def _assert_products_close(got: Products, want: Products) -> None:
    assert np.array_equal(got.t, want.t)
    assert np.array_equal(got.dt, want.dt)
    scale = max(float(np.abs(want.p).max(initial=0.0)), 1e-300)
    np.testing.assert_allclose(got.p, want.p, rtol=1e-9, atol=1e-9 * scale)


def _run_stream(t, phase, params, cuts):
    """Feed a LagState + both windows batch by batch, as the pipeline will."""
    lag = LagState(params, channels=phase.shape[1])
    em = EmissaryWindow(window_us=1_000_000, omega=params.omega)
    ma = MasterWindow(window_us=3_000_000, pane_us=MASTER_I, omega=params.omega)
    products, em_out, ma_out = [], [], []
    for sl in _split(len(t), cuts):
        prod = lag.push(t[sl], phase[sl])
        products.append(prod)
        if sl.stop > sl.start:
            # grid points that are final once this batch is in: g <= newest sample
            last = t[sl.stop - 1]
            em_g = emission_points(t[: sl.stop], EMISSARY_I)
            ma_g = emission_points(t[: sl.stop], MASTER_I)
            em_new = em_g[(em_g <= last) & (em_g > (em.last_emitted if em.last_emitted is not None else -1))]
            ma_new = ma_g[(ma_g <= last) & (ma_g > (ma.last_emitted if ma.last_emitted is not None else -1))]
            em_out.append(em.advance(prod, em_new))
            ma_out.append(ma.advance(prod, ma_new))
    join = lambda outs: tuple(np.concatenate([getattr(o, f) for o in outs]) for f in ("t", "T", "n_products", "span_us"))
    return Products.concat(products), join(em_out), join(ma_out)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sensor_streams())
def test_numba_equals_numpy_reference(stream):
    t, phase, params, cuts = stream
    products, em, ma = _run_stream(t, phase, params, cuts)
    want = reference.lag_products(t, phase, params)
    _assert_products_close(products, want)

    for (g, T, n, span), window in ((em, 1_000_000), (ma, 3_000_000)):
        ref = reference.window_values(want, params.omega, g, window)
        np.testing.assert_array_equal(n, ref.n_products)
        np.testing.assert_array_equal(span, ref.span_us)
        np.testing.assert_allclose(T, ref.T, rtol=1e-9, atol=1e-12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sensor_streams())
def test_any_batch_split_gives_identical_results(stream):
    t, phase, params, cuts = stream
    whole = _run_stream(t, phase, params, [])
    split = _run_stream(t, phase, params, cuts)
    one_by_one = _run_stream(t, phase, params, list(range(1, len(t))))
    for other in (split, one_by_one):
        for a, b in zip(whole[0], other[0]):
            assert np.array_equal(a, b)  # bit-identical, not merely close
        for wa, wb in zip(whole[1:], other[1:]):
            for a, b in zip(wa, wb):
                assert np.array_equal(a, b)


def test_state_survives_pickling_mid_stream():
    rng = np.random.default_rng(7)
    n = 3000
    t = EPOCH_US + np.cumsum(rng.integers(5_000, 15_000, n))
    phase = np.cumsum(rng.normal(0.3, 0.1, (n, 2)), axis=0)
    params = KairosParams.from_seconds(1.0, velocity_span=0.1, omega=2.0)
    straight = _run_stream(t, phase, params, [1000, 2000])

    lag = LagState(params, channels=2)
    em = EmissaryWindow(1_000_000, omega=2.0)
    ma = MasterWindow(3_000_000, MASTER_I, omega=2.0)
    outs = []
    for sl in _split(n, [1000, 2000]):
        prod = lag.push(t[sl], phase[sl])
        last = t[sl.stop - 1]
        em_g = emission_points(t[: sl.stop], EMISSARY_I)
        outs.append((prod, em.advance(prod, em_g[(em_g <= last) & (em_g > (em.last_emitted or -1))])))
        ma_g = emission_points(t[: sl.stop], MASTER_I)
        ma.advance(prod, ma_g[(ma_g <= last) & (ma_g > (ma.last_emitted or -1))])
        lag, em, ma = (pickle.loads(pickle.dumps(x)) for x in (lag, em, ma))
    got_p = Products.concat([o[0] for o in outs])
    got_T = np.concatenate([o[1].T for o in outs])
    assert np.array_equal(got_p.p, straight[0].p)
    assert np.array_equal(got_T, straight[1][1])
    # The snapshot holds only the live history (about tau of samples), not the run.
    assert lag.retained <= 120


def test_a_pickled_master_holds_only_its_live_panes_and_continues_exactly():
    """A young sensor's Master snapshot is small (not the whole hour's ring), and a
    Master restored from it reports exactly what the original does from then on."""
    t = np.arange(1, 30_001, dtype=np.int64) * 1_000          # 30 s at 1 kHz
    phase = np.mod(2 * np.pi * 3.0 * t * 1e-6, 2 * np.pi)
    params = KairosParams.from_seconds(1.0, velocity_span=0.1, omega=2.0)
    lag = LagState(params, channels=1)
    master = MasterWindow(3_600_000_000, MASTER_I, omega=2.0)
    first, rest = lag.push(t[:20_000], phase[:20_000, None]), lag.push(t[20_000:], phase[20_000:, None])
    master.advance(first, emission_points(t[:20_000], MASTER_I))
    blob = pickle.dumps(master)
    assert len(blob) < master.state_bytes // 20              # 20 s of panes, not 3600 s
    restored = pickle.loads(blob)
    grid = emission_points(t[20_000:], MASTER_I)
    grid = grid[grid > master.last_emitted]
    a, b = master.advance(rest, grid), restored.advance(rest, grid)
    assert np.array_equal(a.T, b.T) and np.array_equal(a.n_products, b.n_products)
    assert np.array_equal(a.span_us, b.span_us)
    assert restored.state_bytes == master.state_bytes
