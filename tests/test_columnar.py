"""The fleet pass (operators.columnar) equals its NumPy reference and today's per-sensor engine.

Three implementations over the same samples: the one Numba pass over all
sensors, the plain NumPy reference sensor by sensor, and the engine
(:class:`operators.resonator.Resonator`: all of a sensor's samples in one
``push``, then ``flush``).  Times, counts, spans, states and events must be
equal; products equal the engine's bit for bit (same operations) and the
reference's to 1e-12 of their scale; complex values (|T| <= 1) agree to 1e-12.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operators.columnar import fleet_products, fleet_resonance
from operators.columnar_reference import fleet_products_reference, fleet_resonance_reference, window_conditioning
from operators.columnar_rows import FleetResonance, FleetSyncValues, FleetWindowValues
from operators.lag import LagState
from operators.params import NO_GAP_LIMIT, KairosParams
from operators.resonator import Resonator, ResonatorSettings
from schemas.samples import SampleBatch
from operators.sync import COLLAPSE

EPOCH_US = 1_764_115_200_000_000  # 2025-11-26: epoch-sized times
VALUES = 1e-12                     # |T| <= 1: absolute agreement of complex values
EPS = float(np.finfo(np.float64).eps)
EXACT_WINDOW = ("sensor", "t", "n_products", "span_us")
EXACT_SYNC = ("sensor", "t", "mature", "collapsed", "event", "master_span_us")


def _settings(params: KairosParams, **overrides) -> ResonatorSettings:
    base = dict(params=params, emissary_window_us=200_000, emissary_interval_us=10_000,
                master_window_us=2_000_000, master_interval_us=100_000, threshold=0.8, hysteresis=0.05,
                phase_threshold=0.3, min_span_us=300_000)
    base.update(overrides)
    return ResonatorSettings(**base)


@st.composite
def fleets(draw, light: bool = False):
    """A few sensors (ids not dense, in any order) with irregular sampling, gaps, one channel count;
    ``light``: the settings of a light node (no Master)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    channels = draw(st.integers(1, 3))
    n_sensors = draw(st.integers(1, 5))
    ids = rng.permutation(1000)[:n_sensors]
    tau_us = draw(st.sampled_from([20_000, 50_000, 150_000]))
    sensor, t, phase = [], [], []
    for s in ids:
        n = draw(st.integers(1, 500))
        step = draw(st.sampled_from([1_000, 4_000, 10_000, 33_333]))
        steps = rng.integers(1, 2 * step, n)
        pauses = rng.random(n) < draw(st.sampled_from([0.0, 0.02]))
        steps[pauses] += rng.integers(1, 1_500_000, pauses.sum())   # some longer than max_gap
        ts = EPOCH_US + int(rng.integers(0, 500_000)) + np.cumsum(steps)
        kind = draw(st.sampled_from(["walk", "oscillator", "uniform"]))
        if kind == "uniform":
            ph = rng.uniform(-np.pi, np.pi, (n, channels))
        else:
            freq = rng.uniform(0.2, 20.0, channels)
            ph = 2 * np.pi * freq * ((ts - ts[0]) * 1e-6)[:, None] + rng.uniform(-3, 3, channels)
            ph += rng.normal(0, 0.3, (n, channels)).cumsum(axis=0) * (kind == "walk")
            ph = np.mod(ph, 2 * np.pi) - np.pi * draw(st.booleans())
        sensor.append(np.full(n, s, np.int32))
        t.append(ts)
        phase.append(ph)
    weights = draw(st.none() | st.lists(st.floats(0.0, 5.0), min_size=channels, max_size=channels)
                   .filter(lambda w: sum(w) > 0))
    params = KairosParams(tau_us=tau_us, velocity_span_us=draw(st.sampled_from([0, 5_000, tau_us // 2, tau_us - 1])),
                          max_gap_us=draw(st.sampled_from([NO_GAP_LIMIT, 100_000, 600_000])),
                          omega=draw(st.sampled_from([0.0, 2.0, -7.5])),
                          weights=None if weights is None else tuple(weights))
    # An Emissary window off its grid runs the engine's exact sliding window, on it the pane window.
    overrides = dict(emissary_window_us=draw(st.sampled_from([200_000, 215_000, 1_000_000])),
                     master_window_us=draw(st.sampled_from([500_000, 2_000_000])),
                     min_span_us=draw(st.sampled_from([0, 300_000])), light=light)
    return (np.concatenate(sensor), np.concatenate(t), np.concatenate(phase), _settings(params, **overrides))


def _engine(sensor: np.ndarray, t: np.ndarray, phase: np.ndarray, settings: ResonatorSettings) -> FleetResonance:
    """Today's engine over the same samples: a Resonator per sensor, one push, then flush."""
    em, ma, sy = [], [], []
    for s in dict.fromkeys(sensor.tolist()):
        rows = sensor == s
        r = Resonator(str(s), settings)
        steps = [r.push(SampleBatch(str(s), t[rows], phase[rows]), now_us=0), r.flush()]
        for out, field in ((em, "emissary"), (ma, "master"), (sy, "sync")):
            values = [getattr(step, field) for step in steps]
            n = sum(len(v) for v in values)
            out.append((np.full(n, s, np.int32), *(np.concatenate(c) for c in zip(*values))))
    join = lambda parts: [np.concatenate(c) for c in zip(*parts)]
    return FleetResonance(FleetWindowValues(*join(em)), FleetWindowValues(*join(ma)), FleetSyncValues(*join(sy)))


def tolerances(got: FleetResonance, fleet) -> dict[str, np.ndarray]:
    """Per part, the allowed difference of each row's values: :data:`VALUES`, widened where the
    window's sums come from running sums much larger than the window's (window_conditioning)."""
    sensor, t, phase, s = fleet
    products = fleet_products(sensor, t, phase, s.params)
    tol = {}
    for part, window in (("emissary", s.emissary_window_us), ("master", s.master_window_us)):
        values = getattr(got, part)
        tol[part] = VALUES + 64 * EPS * window_conditioning(products, values.sensor, values.t, window)
    # A sync row mixes its Emissary value with the Master value in force: the sensor's widest.
    worst = {int(x): tol["master"][got.master.sensor == x].max(initial=VALUES) for x in np.unique(sensor)}
    tol["sync"] = np.maximum(tol["emissary"], [worst[int(x)] for x in got.sync.sensor])
    return tol


def _assert_same(got: FleetResonance, want: FleetResonance, tol: dict[str, np.ndarray]) -> None:
    for part, exact in (("emissary", EXACT_WINDOW), ("master", EXACT_WINDOW), ("sync", EXACT_SYNC)):
        a, b = getattr(got, part), getattr(want, part)
        for name in a._fields:
            x, y = getattr(a, name), getattr(b, name)
            assert x.dtype == y.dtype and x.shape == y.shape, f"{part}.{name}"
            if name in exact:
                np.testing.assert_array_equal(x, y, err_msg=f"{part}.{name}")
            else:
                # NaN (T_master of a light node) where the other has NaN, within tolerance elsewhere.
                np.testing.assert_array_equal(np.isnan(x), np.isnan(y), err_msg=f"{part}.{name} NaN")
                off = np.abs(x - y) > tol[part]
                assert not off.any(), (f"{part}.{name} rows {np.flatnonzero(off)[:5]}: {x[off][:3]} vs {y[off][:3]}"
                                       f" (allowed {tol[part][off][:3]})")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleets())
def test_the_pass_equals_the_reference_and_the_engine(fleet):
    sensor, t, phase, s = fleet
    got = fleet_resonance(sensor, t, phase, s)
    tol = tolerances(got, fleet)
    _assert_same(got, fleet_resonance_reference(sensor, t, phase, s), tol)
    _assert_same(got, _engine(sensor, t, phase, s), tol)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleets(light=True))
def test_a_light_node_pass_equals_the_reference_and_the_engine(fleet):
    # No Master: no Master rows, T_master NaN, T_sync = T_emissary, delta_phase 0, maturity from the
    # Emissary's runs of products; the same in the Numba pass, the NumPy reference and the Resonator.
    sensor, t, phase, s = fleet
    got = fleet_resonance(sensor, t, phase, s)
    assert len(got.master.t) == 0
    assert np.isnan(got.sync.T_master).all() and not got.sync.delta_phase.any()
    np.testing.assert_array_equal(got.sync.T_sync, got.emissary.T)
    tol = tolerances(got, fleet)
    _assert_same(got, fleet_resonance_reference(sensor, t, phase, s), tol)
    _assert_same(got, _engine(sensor, t, phase, s), tol)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleets())
def test_products_equal_the_engines_bit_for_bit_and_the_reference(fleet):
    sensor, t, phase, s = fleet
    got = fleet_products(sensor, t, phase, s.params)
    for who in np.unique(sensor):
        rows = sensor == who
        lag = LagState(s.params, channels=phase.shape[1]).push(t[rows], phase[rows])
        mine = got.sensor == who
        for a, b in zip((got.t[mine], got.p[mine], got.dt[mine]), lag):
            np.testing.assert_array_equal(a, b)
    want = fleet_products_reference(sensor, t, phase, s.params)
    for name in ("sensor", "t", "dt"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
    scale = float(np.abs(want.p).max(initial=1.0))
    np.testing.assert_allclose(got.p, want.p, rtol=0, atol=1e-12 * scale)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleets(), st.randoms(use_true_random=False))
def test_each_sensor_is_computed_alone_whatever_else_is_in_the_call(fleet, random):
    """A sensor's rows are a function of its own samples only: alone, or with the others in another order."""
    sensor, t, phase, s = fleet
    whole = fleet_resonance(sensor, t, phase, s)
    ids = list(dict.fromkeys(sensor.tolist()))
    random.shuffle(ids)
    order = np.concatenate([np.flatnonzero(sensor == i) for i in ids])
    shuffled = fleet_resonance(sensor[order], t[order], phase[order], s)
    for who in ids:
        rows = sensor == who
        alone = fleet_resonance(sensor[rows], t[rows], phase[rows], s)
        for run in (whole, shuffled):
            for part in ("emissary", "master", "sync"):
                mine = getattr(run, part).sensor == who
                for a, b in zip(getattr(run, part), getattr(alone, part)):
                    np.testing.assert_array_equal(a[mine], b)


def test_times_before_the_epoch_use_the_same_grid():
    """Grid points are ceil(t / I) * I for negative times too (exact integer arithmetic)."""
    rng = np.random.default_rng(3)
    t = np.cumsum(rng.integers(1_000, 9_000, 600)) - 2_000_000          # from -2 s to about +1 s
    sensor = np.repeat(np.array([4, 2], np.int32), 300)
    t = np.r_[t[:300], t[:300] + 7]
    phase = np.mod(2 * np.pi * 4.0 * t * 1e-6 + rng.normal(0, 0.05, 600), 2 * np.pi)
    s = _settings(KairosParams.from_seconds(0.05, velocity_span=0.01, omega=2.0), min_span_us=0)
    got = fleet_resonance(sensor, t, phase, s)
    assert got.emissary.t.min() < 0 and np.all(got.emissary.t % s.emissary_interval_us == 0)
    tol = tolerances(got, (sensor, t, phase[:, None], s))
    _assert_same(got, fleet_resonance_reference(sensor, t, phase, s), tol)
    _assert_same(got, _engine(sensor, t, phase[:, None], s), tol)


# --- SPEC section 2 properties, over many sensors in one call ------------------------------------


def _fleet_of(records: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    sensor = np.concatenate([np.full(len(t), i, np.int32) for i, (t, _) in enumerate(records)])
    return sensor, np.concatenate([t for t, _ in records]), np.concatenate([p for _, p in records])


def test_noiseless_oscillators_on_a_regular_grid_have_coherence_one():
    """Any frequency below Nyquist and any rate (omega = 0): every window with products has |T|^2 = 1."""
    records = []
    for rate, freq in ((1000, 3.0), (1000, 470.0), (100, 1.0), (100, 49.0), (60, 7.5), (10, 0.3), (10, 4.9)):
        t = EPOCH_US + np.arange(1, rate * 4 + 1, dtype=np.int64) * (1_000_000 // rate)
        records.append((t, np.mod(2 * np.pi * freq * (t - EPOCH_US) * 1e-6 + 0.7, 2 * np.pi)))
    s = _settings(KairosParams.from_seconds(0.5, velocity_span=0.1), emissary_window_us=1_000_000,
                  master_window_us=3_000_000, min_span_us=1_000_000)
    out = fleet_resonance(*_fleet_of(records), s)
    for values in (out.emissary, out.master):
        has = values.n_products > 0
        assert has.sum() > 100
        np.testing.assert_allclose(np.abs(values.T[has]) ** 2, 1.0, atol=1e-9)
    # Each sensor collapses once its Master is mature, and stays collapsed.
    assert np.bincount(out.sync.sensor[out.sync.event == COLLAPSE]).tolist() == [1] * len(records)
    assert np.all(out.sync.event[out.sync.event != COLLAPSE] == 0)


def test_iid_uniform_phases_give_coherence_of_order_one_over_n():
    rng = np.random.default_rng(11)
    t = EPOCH_US + np.arange(1, 20_001, dtype=np.int64) * 1_000       # 20 s at 1 kHz
    records = [(t, rng.uniform(-np.pi, np.pi, t.size)) for _ in range(8)]
    s = _settings(KairosParams.from_seconds(0.05, velocity_span=0.01), emissary_window_us=1_000_000,
                  master_window_us=20_000_000, threshold=0.95)
    out = fleet_resonance(*_fleet_of(records), s)
    last = np.flatnonzero(np.diff(np.r_[out.master.sensor, -1]))       # each sensor's final Master point
    n = out.master.n_products[last]
    assert np.all(n > 15_000)
    coherence = np.abs(out.master.T[last]) ** 2
    assert np.all(coherence < 20.0 / n)                                 # of order 1/N ...
    assert np.all(out.sync.coherence_sync < 0.5) and not out.sync.event.any()   # ... never near I_c


@pytest.mark.parametrize("change", ["2 pi n", "offset"])
def test_whole_turns_and_constant_offsets_change_nothing(change):
    rng = np.random.default_rng(5)
    records = []
    for _ in range(6):
        t = EPOCH_US + np.cumsum(rng.integers(2_000, 18_000, 800))
        drift = rng.normal(0, 0.03, (800, 2)).cumsum(axis=0)
        records.append((t, np.mod(2 * np.pi * 3.0 * (t - t[0])[:, None] * 1e-6 + drift, 2 * np.pi)))
    sensor, t, phase = _fleet_of(records)
    if change == "2 pi n":
        moved = phase + 2 * np.pi * rng.integers(-3, 4, phase.shape)
    else:
        moved = phase + np.array([1.234, -2.5])  # one offset per channel
    s = _settings(KairosParams.from_seconds(0.05, velocity_span=0.01, omega=2.0), min_span_us=0)
    a, b = fleet_resonance(sensor, t, phase, s), fleet_resonance(sensor, t, moved, s)
    for part in ("emissary", "master", "sync"):
        for name, x, y in zip(getattr(a, part)._fields, getattr(a, part), getattr(b, part)):
            if x.dtype.kind == "c" or x.dtype.kind == "f":
                np.testing.assert_allclose(x, y, rtol=0, atol=1e-9, err_msg=f"{part}.{name}")
            else:
                np.testing.assert_array_equal(x, y, err_msg=f"{part}.{name}")


# --- arguments -----------------------------------------------------------------------------------


def test_an_empty_input_gives_empty_columns_of_the_right_types():
    s = _settings(KairosParams(tau_us=50_000))
    got = fleet_resonance(np.empty(0, np.int32), np.empty(0, np.int64), np.empty((0, 2)), s)
    empty = (np.empty(0, np.int32), np.empty(0, np.int64), np.empty((0, 2)), s)
    _assert_same(got, fleet_resonance_reference(*empty), tolerances(got, empty))
    assert len(got.emissary.t) == len(got.master.t) == len(got.sync.event) == 0


@pytest.mark.parametrize("sensor, t, phase, message", [
    ([0, 0, 1], [1, 1, 2], [0.0, 0.1, 0.2], "row 1: sensor 0 has t = 1 us after t = 1 us"),
    ([0, 1, 0], [1, 2, 3], [0.0, 0.1, 0.2], "sensor 0 has rows from row 0 and again from row 2"),
    ([0, 0], [1.0, 2.0], [0.0, 0.1], "t_us must be integer microseconds"),
    ([0.0, 0.0], [1, 2], [0.0, 0.1], "sensor_index must be integers"),
    ([-1, -1], [1, 2], [0.0, 0.1], r"sensor_index must be in \[0, 2\^31\)"),
    ([0, 0], [1, 2, 3], [0.0, 0.1], "sensor_index has 2 rows, t_us has 3"),
    ([0, 0], [1, 2], [0.0, 0.1, 0.2], "phase must have shape"),
    ([0, 0], [1, 2], [0.0, np.nan], r"phase must be finite; row 1 has \[nan\]"),
])
def test_bad_columns_are_refused_with_the_row_named(sensor, t, phase, message):
    s = _settings(KairosParams(tau_us=50_000))
    for function in (fleet_resonance, fleet_resonance_reference):
        with pytest.raises(ValueError, match=message):
            function(np.asarray(sensor), np.asarray(t), np.asarray(phase), s)


def test_bad_settings_are_refused():
    t = np.arange(3)
    with pytest.raises(ValueError, match="weights has 2 entries but the phase has 1 channels"):
        fleet_resonance(np.zeros(3, int), t, np.zeros(3), _settings(KairosParams(tau_us=5, weights=(1.0, 1.0))))
    with pytest.raises(ValueError, match="master_interval_us must be positive"):
        fleet_resonance(np.zeros(3, int), t, np.zeros(3), _settings(KairosParams(tau_us=5), master_interval_us=0))
