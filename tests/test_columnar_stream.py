"""The streaming fleet pass (operators.columnar_stream) equals the offline pass over the whole input.

The oracle: a fleet's samples in event-time order (as a stream delivers them),
cut into calls at random points, each call's rows grouped by sensor; the rows
the calls emit, together, are those of :func:`operators.columnar.fleet_resonance`
over all samples: the same grid points, counts, spans, states and events, and
complex values within 1e-12 (|T| <= 1), widened where a window's sums are
small beside the running sums they come from (see window_conditioning).  Pickling the state between calls,
or flushing and releasing the sensors idle longer than every window and max_gap, changes nothing.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operators.columnar import fleet_resonance
from operators.columnar_rows import FleetResonance
from operators.columnar_state import E_WIN, H_CAP, M_WIN, STATE_VERSION, W_CAP, W_LEN, FleetState
from operators.columnar_stream import flush_rows, stream_resonance
from operators.params import NO_GAP_LIMIT, KairosParams
from operators.resonator import ResonatorSettings
from tests.test_columnar import tolerances

EPOCH_US = 1_764_115_200_000_000


@st.composite
def fleets(draw):
    """Sensors that start and stop at different times, irregular steps, pauses > max_gap, C channels."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    channels = draw(st.integers(1, 3))
    ids = rng.permutation(1000)[:draw(st.integers(1, 6))]
    tau_us = draw(st.sampled_from([20_000, 50_000, 150_000]))
    sensor, t, phase = [], [], []
    for s in ids:
        n = draw(st.integers(1, 300))
        step = draw(st.sampled_from([1_000, 4_000, 10_000, 33_333]))
        steps = rng.integers(1, 2 * step, n)
        pauses = rng.random(n) < draw(st.sampled_from([0.0, 0.03]))
        steps[pauses] += rng.integers(1, 1_500_000, pauses.sum())
        ts = EPOCH_US + int(rng.integers(0, 2_000_000)) + np.cumsum(steps)   # appears late, ends early
        kind = draw(st.sampled_from(["walk", "oscillator", "uniform", "constant"]))
        if kind == "uniform":
            ph = rng.uniform(-np.pi, np.pi, (n, channels))
        elif kind == "constant":                       # zero products: T = 0 exactly
            ph = np.full((n, channels), 0.5)
        else:
            freq = rng.uniform(0.2, 20.0, channels)
            ph = 2 * np.pi * freq * ((ts - ts[0]) * 1e-6)[:, None] + rng.uniform(-3, 3, channels)
            ph += rng.normal(0, 0.3, (n, channels)).cumsum(axis=0) * (kind == "walk")
            ph = np.mod(ph, 2 * np.pi) - np.pi
        sensor.append(np.full(n, s, np.int32))
        t.append(ts)
        phase.append(ph)
    params = KairosParams(tau_us=tau_us, velocity_span_us=draw(st.sampled_from([0, 5_000, tau_us // 2])),
                          max_gap_us=draw(st.sampled_from([NO_GAP_LIMIT, 100_000, 600_000])),
                          omega=draw(st.sampled_from([0.0, 2.0, -7.5])))
    s = ResonatorSettings(params=params, emissary_window_us=draw(st.sampled_from([200_000, 215_000, 1_000_000])),
                          emissary_interval_us=10_000, master_window_us=draw(st.sampled_from([500_000, 2_000_000])),
                          master_interval_us=draw(st.sampled_from([100_000, 30_000])), threshold=0.8,
                          hysteresis=0.05, phase_threshold=0.3, min_span_us=draw(st.sampled_from([0, 300_000])))
    return np.concatenate(sensor), np.concatenate(t), np.concatenate(phase), s


def _sorted(out: FleetResonance) -> list:
    parts = []
    for part in out:
        o = np.lexsort((part.t, part.sensor))
        parts.append({f: getattr(part, f)[o] for f in part._fields})
    return parts


def _concat(outs: list[FleetResonance]) -> FleetResonance:
    return FleetResonance(*(type(p[0])(*(np.concatenate(cols) for cols in zip(*p))) for p in zip(*outs)))


def _assert_same(got: FleetResonance, want: FleetResonance, fleet) -> None:
    """Equal rows; complex values within the tolerance of the offline pass's own rounding
    (tests/test_columnar.py: :func:`tolerances`), in the same (sensor, t) order."""
    allowed = tolerances(want, fleet)
    for (g, w), part in zip(zip(_sorted(got), _sorted(want)), ("emissary", "master", "sync")):
        o = np.lexsort((getattr(want, part).t, getattr(want, part).sensor))
        tol = allowed[part][o]
        for name, col in w.items():
            assert g[name].shape == col.shape, name
            if col.dtype.kind in "fc":
                off = np.abs(g[name] - col) > tol
                assert not off.any(), f"{name} rows {np.flatnonzero(off)[:5]}: {g[name][off][:3]} vs {col[off][:3]}"
            else:
                np.testing.assert_array_equal(g[name], col, err_msg=name)


def _stream(sensor, t, phase, s, cuts, rng=None, pickle_every=0) -> FleetResonance:
    """The fleet in time order, cut at ``cuts``, each call grouped by sensor (sensor order shuffled)."""
    order = np.lexsort((sensor, t))
    sensor, t, phase = sensor[order], t[order], phase[order]
    state = FleetState(s, phase.shape[1])
    outs = []
    bounds = [0, *cuts, len(t)]
    for call, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        cs, ct, cp = sensor[a:b], t[a:b], phase[a:b]
        key = cs if rng is None else rng.permutation(1000)[cs]
        o = np.lexsort((ct, key))
        outs.append(stream_resonance(state, cs[o], ct[o], cp[o], final=b == len(t)))
        if pickle_every and call % pickle_every == 0:
            state = pickle.loads(pickle.dumps(state))
    return _concat(outs)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleets(), st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 3]))
def test_any_split_gives_the_offline_rows(fleet, seed, pickle_every):
    sensor, t, phase, s = fleet
    want = fleet_resonance(sensor, t, phase, s)
    rng = np.random.default_rng(seed)
    n = len(t)
    cuts = sorted(set(rng.integers(1, max(n, 2), rng.integers(0, 12)).tolist()) - {n})
    _assert_same(_stream(sensor, t, phase, s, cuts, rng, pickle_every), want, fleet)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleets())
def test_one_call_and_one_row_per_call_give_the_offline_rows(fleet):
    sensor, t, phase, s = fleet
    want = fleet_resonance(sensor, t, phase, s)
    _assert_same(_stream(sensor, t, phase, s, []), want, fleet)
    _assert_same(_stream(sensor, t, phase, s, list(range(1, len(t))), pickle_every=7), want, fleet)


def _stream_releasing(sensor, t, phase, s, cuts, pickle_every) -> FleetResonance:
    """As _stream, and at each cut every sensor that is done, or idle from there on longer than every
    window and max_gap, is flushed and released."""
    order = np.lexsort((sensor, t))
    sensor, t, phase = sensor[order], t[order], phase[order]
    reach = max(s.emissary_window_us, s.master_window_us, s.params.max_gap_us)
    state = FleetState(s, phase.shape[1])
    outs = []
    bounds = [0, *cuts, len(t)]
    for call, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        if a:
            idle = []
            for x in np.unique(sensor[:a]):
                nxt = t[a:][sensor[a:] == x]
                if not nxt.size or nxt[0] - t[:a][sensor[:a] == x][-1] > reach:
                    idle.append(x)
            rows = state.rows_of(np.array(idle, np.int64))
            outs.append(flush_rows(state, rows))
            state.release(rows)
        o = a + np.lexsort((t[a:b], sensor[a:b]))
        outs.append(stream_resonance(state, sensor[o], t[o], phase[o], final=b == len(t)))
        if pickle_every and call % pickle_every == 0:
            state = pickle.loads(pickle.dumps(state))
    return _concat(outs)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleets(), st.integers(0, 2**32 - 1), st.sampled_from([0, 2]))
def test_releasing_idle_sensors_at_any_cut_gives_the_offline_rows(fleet, seed, pickle_every):
    sensor, t, phase, s = fleet
    rng = np.random.default_rng(seed)
    cuts = sorted(set(rng.integers(1, max(len(t), 2), rng.integers(1, 12)).tolist()) - {len(t)})
    _assert_same(_stream_releasing(sensor, t, phase, s, cuts, pickle_every), fleet_resonance(sensor, t, phase, s),
                 fleet)


def test_points_are_emitted_when_the_sensors_own_watermark_reaches_them():
    s = ResonatorSettings(KairosParams(tau_us=20_000), emissary_window_us=100_000, emissary_interval_us=10_000,
                          master_window_us=1_000_000, master_interval_us=100_000, threshold=0.9, hysteresis=0.05,
                          phase_threshold=0.1, min_span_us=0)
    state = FleetState(s, 1)
    out = stream_resonance(state, [1, 1], [5_000, 10_000], [0.0, 0.1])
    assert out.emissary.t.tolist() == [10_000] and out.master.t.tolist() == []   # 100_000 not reached yet
    out = stream_resonance(state, [2], [200_500], [0.0])                          # another sensor's time
    assert out.emissary.t.tolist() == [] and out.master.t.tolist() == []
    out = stream_resonance(state, [1], [100_001], [0.3])
    assert out.master.t.tolist() == [100_000] and out.emissary.t.tolist() == []
    out = stream_resonance(state, [], np.empty(0, np.int64), np.empty(0), final=True)
    assert sorted(zip(out.master.sensor.tolist(), out.master.t.tolist())) == [(1, 200_000), (2, 300_000)]
    assert sorted(zip(out.emissary.sensor.tolist(), out.emissary.t.tolist())) == [(1, 110_000), (2, 210_000)]


def test_a_sample_not_after_the_sensors_earlier_calls_is_refused():
    s = ResonatorSettings(KairosParams(tau_us=20_000), 100_000, 10_000, 1_000_000, 100_000, 0.9, 0.05, 0.1, 0)
    state = FleetState(s, 1)
    stream_resonance(state, [4, 4], [5, 9], [0.0, 0.1])
    with pytest.raises(ValueError, match="sensor 4 has t = 9 us, not after"):
        stream_resonance(state, [4], [9], [0.0])
    with pytest.raises(ValueError, match="channels"):
        stream_resonance(state, [4], [10], [[0.0, 1.0]])


@pytest.mark.parametrize("rate_hz", [100, 1000])
def test_a_sensors_memory_is_bounded_by_its_windows_and_lag_not_its_history(rate_hz):
    s = ResonatorSettings(KairosParams.from_seconds(1.0, velocity_span=0.1), emissary_window_us=1_000_000,
                          emissary_interval_us=10_000, master_window_us=20_000_000, master_interval_us=100_000,
                          threshold=0.95, hysteresis=0.05, phase_threshold=0.1, min_span_us=10_000_000)
    step = 1_000_000 // rate_hz
    t = EPOCH_US + step * np.arange(1, 60 * rate_hz + 1)
    phase = 2 * np.pi * 3.0 * (t - EPOCH_US) * 1e-6
    state = FleetState(s, 1)
    for a in range(0, t.size, 5_000):
        stream_resonance(state, np.zeros(len(t[a:a + 5_000]), np.int32), t[a:a + 5_000], phase[a:a + 5_000])
    caps = state.ints[0]
    assert caps[E_WIN + W_CAP] <= state.most_panes(E_WIN) == 104
    assert caps[M_WIN + W_CAP] <= state.most_panes(M_WIN) == 204
    assert caps[H_CAP] <= 2 * (1.1 * rate_hz + 2)            # samples within tau + d of the newest, doubled
    restored = pickle.loads(pickle.dumps(state))
    assert restored.nbytes() == state.nbytes() <= 28 * (104 + 204) + 41 * caps[H_CAP] + 416   # 28-byte panes


def test_a_pause_shorter_than_tau_after_a_full_window_takes_one_step_slot_within_the_bound():
    s = ResonatorSettings(KairosParams.from_seconds(1.0, velocity_span=0.1), 1_000_000, 10_000, 20_000_000, 100_000,
                          0.95, 0.05, 0.1, 0)
    t = EPOCH_US + 500 + 1_000 * np.arange(3_000)                      # every 0.01 s Emissary pane full ...
    t = np.r_[t, t[-1] + 500_000 + np.array([1_000, 2_000, 3_000])]    # ... then 0.5 s without samples
    state = FleetState(s, 1)
    stream_resonance(state, np.zeros(t.size, np.int32), t, np.mod(3.0 * (t - EPOCH_US) * 1e-6, 2 * np.pi))
    assert state.ints[0, E_WIN + W_LEN] == 102 and state.ints[0, E_WIN + W_CAP] <= state.most_panes(E_WIN)


def _default_windows(tau_s: float) -> ResonatorSettings:
    """Emissary 1 s at 0.01 s, Master 1 h at 0.1 s, velocity span 0.1 s."""
    return ResonatorSettings(KairosParams.from_seconds(tau_s, velocity_span=0.1), 1_000_000, 10_000,
                             3_600_000_000, 100_000, 0.95, 0.05, 0.1, 600_000_000)


@pytest.mark.parametrize("rate_hz, tau_s, most_bytes", [(10, 1.0, 1_050_000), (1, 5.0, 150_000)])
def test_an_hour_of_one_sensor_with_the_default_windows_fits_its_bytes(rate_hz, tau_s, most_bytes):
    step = 1_000_000 // rate_hz
    steps = np.random.default_rng(5).integers(step - step // 10, step + step // 10, 3_700 * rate_hz)
    steps[::600] += 2_000_000            # a pause of 2 s now and then: a step slot over it
    t = EPOCH_US + np.cumsum(steps)
    phase = np.mod(2 * np.pi * 0.7 * (t - EPOCH_US) * 1e-6, 2 * np.pi)
    state = FleetState(_default_windows(tau_s), 1)
    for a in range(0, t.size, 1_000):
        stream_resonance(state, np.zeros(len(t[a:a + 1_000]), np.int32), t[a:a + 1_000], phase[a:a + 1_000])
    assert state.ints[0, M_WIN + W_CAP] <= state.most_panes(M_WIN)
    assert state.nbytes() <= most_bytes


def test_a_fleet_of_one_hertz_sensors_holds_a_few_kilobytes_each():
    """The 60 KB peak per sensor (100,000 sensors, 60 s) counts the pools' doubling and abandoned
    segments too: measured at 2.5 times what nbytes() counts."""
    ids = np.arange(2_000, dtype=np.int32)
    offset = np.random.default_rng(2).integers(0, 1_000_000, ids.size)
    state = FleetState(_default_windows(5.0), 1)
    for k in range(1, 61):
        stream_resonance(state, ids, EPOCH_US + k * 1_000_000 + offset, np.full(ids.size, 0.1 * k))
    assert state.nbytes() / ids.size <= 60_000 / 4


def _fleet_of_rates(steps_us, seconds, rng):
    sensor, t, phase = [], [], []
    for s, (lo, hi) in enumerate(steps_us):
        ts = EPOCH_US + np.cumsum(rng.integers(lo, hi, int(seconds * 2e6 / (lo + hi))))
        sensor.append(np.full(ts.size, s, np.int32))
        t.append(ts)
        phase.append(np.mod(2 * np.pi * rng.uniform(1, 9) * (ts - EPOCH_US) * 1e-6 + rng.normal(0, 0.2, ts.size),
                            2 * np.pi))
    return np.concatenate(sensor), np.concatenate(t), np.concatenate(phase)[:, None]


@pytest.mark.parametrize("windows", [(200_000, 10_000, 2_000_000, 100_000),        # 32-bit words
                                     (2_000_000, 1_000_000, 10_000_000, 5_000_000)])  # 1 s and 5 s panes: 64-bit
def test_panes_of_many_products_steps_over_empty_panes_and_wide_panes_give_the_offline_rows(windows):
    """A 25 kHz sensor (more products in a 0.1 s pane than the count bits hold), one stepping 1.5 to 2.5 s
    (more empty panes than the step bits hold, or a ring that has left the window), one at 10 Hz."""
    s = ResonatorSettings(KairosParams(tau_us=20_000, velocity_span_us=5_000, max_gap_us=3_000_000), *windows,
                          0.8, 0.05, 0.3, 300_000)
    rng = np.random.default_rng(11)
    sensor, t, phase = _fleet_of_rates([(30, 50), (1_500_000, 2_500_000), (90_000, 110_000)], 12, rng)
    state = FleetState(s, 1)
    assert state.m_layout.word == (np.uint32 if windows[3] == 100_000 else np.int64)
    want = fleet_resonance(sensor, t, phase, s)
    cuts = sorted(rng.integers(1, len(t), 6).tolist())
    _assert_same(_stream(sensor, t, phase, s, cuts, rng, pickle_every=2), want, (sensor, t, phase, s))


def test_a_released_sensor_goes_on_as_a_new_chain_with_its_sync_state():
    s = ResonatorSettings(KairosParams(tau_us=50_000, velocity_span_us=10_000, max_gap_us=500_000), 200_000,
                          10_000, 2_000_000, 100_000, 0.8, 0.05, 0.3, 300_000)
    rng = np.random.default_rng(4)
    sensor, t, phase = _fleet_of_rates([(8_000, 12_000), (8_000, 12_000)], 30, rng)
    gone = (sensor == 0) & (t > EPOCH_US + 10_000_000) & (t <= EPOCH_US + 15_000_000)   # idle 5 s
    sensor, t, phase = sensor[~gone], t[~gone], phase[~gone]
    before, after = (sensor == 0) & (t <= EPOCH_US + 10_000_000), (sensor == 0) & (t > EPOCH_US + 15_000_000)
    order = np.lexsort((sensor, t))
    cut = int(np.searchsorted(t[order], EPOCH_US + 12_000_000))
    state = FleetState(s, 1)
    outs = []
    for a, b in ((0, 1_000), (1_000, cut), (cut, cut + 1_500), (cut + 1_500, len(t))):
        o = order[a:b][np.lexsort((t[order[a:b]], sensor[order[a:b]]))]
        if a == cut:   # sensor 0 has been idle 2 s: its last points, then its memory
            row = state.rows_of(np.array([0]))
            with pytest.raises(ValueError, match="sensor 0 .* pending"):
                state.release(row)
            outs.append(flush_rows(state, row))
            held = state.nbytes()
            state.release(row)
            assert state.nbytes() < held - 28 * 20
            state = pickle.loads(pickle.dumps(state))
            with pytest.raises(ValueError, match="not after its newest sample"):
                stream_resonance(state, [0], [t[before].max()], [0.0])
        outs.append(stream_resonance(state, sensor[o], t[o], phase[o], final=b == len(t)))
    got = _concat(outs)
    whole = fleet_resonance(sensor, t, phase, s)      # the gap exceeds every window and max_gap: same rows
    assert whole.sync.event[(whole.sync.sensor == 0) & (whole.sync.t < EPOCH_US + 10_000_000)].tolist().count(1)
    _assert_same(got, whole, (sensor, t, phase, s))
    # The windows after the release are those of a new sensor with the samples after it.
    fresh = fleet_resonance(sensor[after], t[after], phase[after], s)
    mine = [{k: v[(part.sensor == 0) & (part.t > EPOCH_US + 15_000_000)] for k, v in part._asdict().items()}
            for part in got]
    for part, want in (("emissary", fresh.emissary), ("master", fresh.master)):
        g = mine[0 if part == "emissary" else 1]
        for name in ("t", "n_products", "span_us"):
            np.testing.assert_array_equal(g[name], getattr(want, name))
        assert np.abs(g["T"] - want.T).max() < 1e-12


def test_released_rings_are_given_back_to_the_pools():
    """Six rounds of 20 s at 10 Hz, 80 s apart, each sensor released after each: the pools are compacted
    as they would grow, not stacked round on round, and the rows are still the offline ones."""
    s = ResonatorSettings(KairosParams(tau_us=1_000_000, velocity_span_us=100_000, max_gap_us=5_000_000),
                          1_000_000, 10_000, 10_000_000, 100_000, 0.8, 0.05, 0.3, 0)
    ids = np.arange(300, dtype=np.int32)
    freq = np.random.default_rng(8).uniform(0.1, 2.0, ids.size)
    state = FleetState(s, 1)
    outs, columns, most = [], [], 0
    for round_ in range(6):
        for k in range(1, 201, 50):
            t = EPOCH_US + round_ * 100_000_000 + np.arange(k, k + 50) * 100_000
            sensor, tt = np.repeat(ids, 50), np.tile(t, ids.size)
            columns.append((sensor, tt, np.mod(freq[sensor] * tt * 1e-6, 2 * np.pi)))
            outs.append(stream_resonance(state, *columns[-1]))
        most = max(most, state.nbytes())
        rows = state.rows_of(ids)
        outs.append(flush_rows(state, rows))
        state.release(rows)
        assert state.nbytes() == 416 * ids.size                      # the rows alone
        assert sum(len(p.cols[0]) * p.row_bytes() for p in (state.hist, state.e_panes, state.m_panes)) < 4 * most
    sensor, t, phase = (np.concatenate(c) for c in zip(*columns))
    order = np.lexsort((t, sensor))
    sensor, t, phase = sensor[order], t[order], phase[order][:, None]
    _assert_same(_concat(outs), fleet_resonance(sensor, t, phase, s), (sensor, t, phase, s))


def test_times_before_and_across_the_epoch_split_the_same():
    s = ResonatorSettings(KairosParams(tau_us=50_000, velocity_span_us=10_000), 215_000, 10_000, 500_000, 30_000,
                          0.8, 0.05, 0.3, 100_000)
    rng = np.random.default_rng(3)
    t = -3_000_000 + np.cumsum(rng.integers(1, 8_000, 2_000))
    phase = rng.uniform(-0.3, 0.3, (2_000, 2)) + np.outer(t * 1e-6, [30.0, 31.0])
    sensor = np.zeros(2_000, np.int32)
    _assert_same(_stream(sensor, t, phase, s, [1, 2, 500, 1_333, 1_999], pickle_every=1),
                 fleet_resonance(sensor, t, phase, s), (sensor, t, phase, s))


def test_a_snapshot_of_another_layout_is_refused_by_name():
    s = ResonatorSettings(KairosParams(tau_us=20_000), 100_000, 10_000, 1_000_000, 100_000, 0.9, 0.05, 0.1, 0)
    state = FleetState(s, 1)
    stream_resonance(state, [4, 4], [5, 9], [0.0, 0.1])
    snapshot = state.__getstate__()
    snapshot["version"] = 0
    with pytest.raises(ValueError, match=f"layout 0; this code reads layout {STATE_VERSION}"):
        FleetState.__new__(FleetState).__setstate__(snapshot)
