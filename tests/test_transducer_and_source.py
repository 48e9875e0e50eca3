"""The transducer's grid/watermark rules and the synthetic source."""

from __future__ import annotations

import numpy as np
import pytest

from connectors.synthetic import SyntheticSensor, synthetic_batches
from operators import reference
from operators.emissary import EmissaryWindow
from operators.lag import LagState, Products
from operators.master import MasterWindow
from operators.params import KairosParams
from operators.transducer import Transducer

START = 1_764_115_200_000_000


def test_grid_points_wait_for_the_watermark_and_flush_at_end():
    em = Transducer(EmissaryWindow(1_000_000), interval_us=10_000)
    # Samples at 5 ms and 12 ms make 10 ms and 20 ms due; the watermark is 12 ms.
    out = em.push(Products.empty(), np.array([5_000, 12_000]), watermark_us=12_000)
    assert out.t.tolist() == [10_000]
    assert em.pending.tolist() == [20_000]
    # No sample lands in (20, 30] ms, yet 20 ms is emitted once the watermark passes it.
    out = em.push(Products.empty(), np.array([31_000]), watermark_us=31_000)
    assert out.t.tolist() == [20_000]
    assert em.flush().t.tolist() == [40_000]
    assert em.flush().t.tolist() == []


def test_transducers_emit_exact_windows_under_lateness():
    """Driven with a lagging watermark, each value is still T over (g - W, g]."""
    rng = np.random.default_rng(1)
    n = 4000
    t = START + np.cumsum(rng.integers(2_000, 9_000, n))
    phase = np.cumsum(rng.normal(0.4, 0.2, n))
    params = KairosParams.from_seconds(0.5, velocity_span=0.05, omega=1.0)
    lag = LagState(params)
    em = Transducer(EmissaryWindow(1_000_000, 1.0), 10_000)
    ma = Transducer(MasterWindow(5_000_000, 100_000, 1.0), 100_000)
    lateness = 250_000
    em_out, ma_out, seen = [], [], 0
    for chunk in np.array_split(np.arange(n), 23):
        # Integrate only samples <= watermark (as the dataflow does); hold the rest.
        wm = int(t[chunk[-1]]) - lateness
        upto = int(np.searchsorted(t, wm, side="right"))
        if upto <= seen:
            continue
        prods = lag.push(t[seen:upto], phase[seen:upto])
        em_out.append(em.push(prods, t[seen:upto], wm))
        ma_out.append(ma.push(prods, t[seen:upto], wm))
        seen = upto
    prods = lag.push(t[seen:], phase[seen:])
    em_out += [em.push(prods, t[seen:], int(t[-1])), em.flush()]
    ma_out += [ma.push(prods, t[seen:], int(t[-1])), ma.flush()]
    want = reference.lag_products(t, phase, params)
    for outs, window, interval in ((em_out, 1_000_000, 10_000), (ma_out, 5_000_000, 100_000)):
        g = np.concatenate([o.t for o in outs])
        T = np.concatenate([o.T for o in outs])
        expected_grid = np.unique(-((-t) // interval) * interval)
        assert np.array_equal(g, expected_grid)  # every due grid point, once, in order
        np.testing.assert_allclose(T, reference.window_values(want, 1.0, g, window).T, rtol=1e-9, atol=1e-12)


def _collect(batch_us):
    sensors = [SyntheticSensor("a", "drifting", channels=2), SyntheticSensor("b", "switching")]
    parts = {}
    for name, t, phase in synthetic_batches(sensors, period_us=10_000, duration_us=10_000_000,
                                            start_us=START, seed=3, batch_us=batch_us):
        parts.setdefault(name, []).append((t, phase))
    return {k: (np.concatenate([x[0] for x in v]), np.concatenate([x[1] for x in v])) for k, v in parts.items()}


def test_synthetic_source_is_deterministic_and_independent_of_batching():
    a, b, c = _collect(1_000_000), _collect(370_000), _collect(1_000_000)
    for name in a:
        assert np.array_equal(a[name][0], b[name][0])
        np.testing.assert_allclose(a[name][1], b[name][1], rtol=0, atol=1e-12)
        assert np.array_equal(a[name][1], c[name][1])
    t, phase = a["a"]
    assert t[0] == START and np.all(np.diff(t) == 10_000) and phase.shape == (1000, 2)
    assert np.all((phase >= -np.pi) & (phase < np.pi))


def test_synthetic_rejects_unknown_kind():
    with pytest.raises(ValueError, match="unknown synthetic sensor kind 'sine'"):
        SyntheticSensor("x", "sine")


def test_due_points_kernel_equals_emission_points_merged_with_pending():
    """The transducer's Numba merge of pending and new grid points, held to the NumPy
    statement: union of ``emission_points`` and the pending points, split at the watermark."""
    from operators.grid import emission_points
    from operators.transducer import _due_points

    rng = np.random.default_rng(3)
    for _ in range(5_000):
        t = np.sort(rng.choice(np.arange(-60, 200), rng.integers(0, 8), replace=False)).astype(np.int64)
        interval = int(rng.integers(1, 25))
        pending = np.unique(rng.integers(-3, 12, rng.integers(0, 4)) * interval).astype(np.int64)
        watermark = int(rng.integers(-70, 220))
        due = np.union1d(pending, emission_points(t, interval)) if pending.size else emission_points(t, interval)
        got, split = _due_points(t, interval, pending, watermark)
        assert got.tolist() == due.tolist()
        assert split == int(np.searchsorted(due, watermark, side="right"))
