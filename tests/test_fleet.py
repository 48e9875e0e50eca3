"""The key group's columnar engine (operators.fleet) against the per-sensor engine (operators.resonator).

The oracle: the same batches, the same calls, through one :class:`Resonator`
per sensor and through one :class:`Fleet`; per sensor, the same rows refused
with the same reasons, the same samples released, and the same Emissary,
Master and sync rows (grid points, counts, spans, states and events equal,
complex values within 1e-9), whatever the arrival order, the lateness, the
channel counts and the split into calls.  Pickling the fleet between calls
changes nothing.
"""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operators.columnar_gate import R_CAP, FleetGate
from operators.event_time import EventTimeGate
from operators.fleet import Fleet, FleetTable, refused_reasons
from operators.params import NO_GAP_LIMIT, KairosParams
from operators.resonator import GridRows, Resonator, ResonatorSettings
from operators.roster import SensorCapacity
from schemas.samples import SampleBatch

EPOCH_US = 1_764_115_200_000_000


def _arrivals(rng, n: int, step: int, disorder: float) -> np.ndarray:
    """n times on a jittered grid, some swapped, repeated or sent again late."""
    t = EPOCH_US + np.cumsum(rng.integers(1, 2 * step, n))
    order = np.arange(n)
    for i in np.flatnonzero(rng.random(n) < disorder):      # swap with a near neighbour
        j = min(n - 1, i + int(rng.integers(1, 6)))
        order[i], order[j] = order[j], order[i]
    t = t[order]
    extra = rng.random(n) < disorder / 2                    # duplicates and stragglers
    if extra.any():
        back = t[extra] - rng.integers(0, 3, extra.sum()) * step
        t = np.insert(t, np.flatnonzero(extra) + 1, back)
    return t


@st.composite
def workloads(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    lateness = draw(st.sampled_from([0, 0, 25_000, 200_000]))
    params = KairosParams(tau_us=draw(st.sampled_from([20_000, 50_000])), velocity_span_us=5_000,
                          max_gap_us=draw(st.sampled_from([NO_GAP_LIMIT, 300_000])))
    s = ResonatorSettings(params, 200_000, 10_000, draw(st.sampled_from([500_000, 1_000_000])), 100_000, 0.8, 0.05,
                          0.3, 200_000, lateness_us=lateness, max_future_us=None)
    batches = []
    for k in range(draw(st.integers(1, 5))):
        n = draw(st.integers(1, 400))
        step = draw(st.sampled_from([2_000, 10_000]))
        t = _arrivals(rng, n, step, draw(st.sampled_from([0.0, 0.02, 0.1])))
        channels = 1 + k % 2
        freq = rng.uniform(0.5, 8.0)
        phase = np.mod(2 * np.pi * freq * (t - EPOCH_US)[:, None] * 1e-6 + rng.normal(0, 0.05, (len(t), channels)),
                       2 * np.pi) - np.pi
        cuts = np.sort(rng.choice(np.arange(1, len(t)), min(len(t) - 1, int(rng.integers(0, 8))), replace=False)) \
            if len(t) > 1 else np.array([], int)
        for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(t)]):
            batches.append(SampleBatch(f"s{k}", t[a:b], phase[a:b]))
    # Calls: the sensors' batches interleaved, each sensor's in order.
    per_sensor: dict[str, list] = {}
    for b in batches:
        per_sensor.setdefault(b.sensor, []).append(b)
    stream = []
    while any(per_sensor.values()):
        name = list(per_sensor)[int(rng.integers(0, len(per_sensor)))]
        if per_sensor[name]:
            stream.append(per_sensor[name].pop(0))
    calls, i = [], 0
    while i < len(stream):
        k = int(rng.integers(1, 6))
        calls.append(stream[i:i + k])
        i += k
    return s, calls, draw(st.booleans())


def _per_sensor(s: ResonatorSettings, calls) -> dict:
    out: dict[str, dict] = {}
    resonators: dict[str, Resonator] = {}
    for call in calls:
        for b in call:
            r = resonators.setdefault(b.sensor, Resonator(b.sensor, s))
            _add(out, b.sensor, r.push(b, 0, GridRows()))
    for name, r in sorted(resonators.items()):
        _add(out, name, r.flush(GridRows()))
    return out


def _add(out: dict, name: str, res) -> None:
    o = out.setdefault(name, {"reasons": [], "released": [], "e": [], "m": [], "s": []})
    o["reasons"].extend(res.reasons)
    if res.released is not None:
        o["released"].append(res.released.t_us)
    e, m, sv = res.emissary, res.master, res.sync
    o["e"].append((e.t, e.T, e.n_products, e.span_us))
    o["m"].append((m.t, m.T, m.n_products, m.span_us))
    o["s"].append((sv.t, sv.T_master, sv.T_sync, sv.mature, sv.collapsed, sv.event, sv.master_span_us))


def _fleet(s: ResonatorSettings, calls, pickled: bool) -> dict:
    out: dict[str, dict] = {}
    fleet = Fleet(s, SensorCapacity(100))
    for call in calls:
        step = fleet.push(call, 0)
        _add_step(out, fleet, step)
        if pickled:
            fleet = Fleet(s, SensorCapacity(100), pickle.loads(pickle.dumps(fleet.table)))
    _add_step(out, fleet, fleet.flush())
    return out


def _add_step(out: dict, fleet: Fleet, step) -> None:
    names = fleet.names
    for refusal in step.refusals:
        _, reasons = refused_reasons(refusal)
        out.setdefault(refusal.batch.sensor, {"reasons": [], "released": [], "e": [], "m": [], "s": []})
        out[refusal.batch.sensor]["reasons"].extend(reasons)
    for sid, t, _ in step.released:
        for k in np.unique(sid).tolist():
            out.setdefault(names[k], {"reasons": [], "released": [], "e": [], "m": [], "s": []})
            out[names[k]]["released"].append(t[sid == k])
    e, m, sv = step.resonance
    for k in np.unique(np.r_[e.sensor, m.sensor]).tolist():
        o = out.setdefault(names[k], {"reasons": [], "released": [], "e": [], "m": [], "s": []})
        ie, im = e.sensor == k, m.sensor == k
        o["e"].append((e.t[ie], e.T[ie], e.n_products[ie], e.span_us[ie]))
        o["m"].append((m.t[im], m.T[im], m.n_products[im], m.span_us[im]))
        o["s"].append((sv.t[ie], sv.T_master[ie], sv.T_sync[ie], sv.mature[ie], sv.collapsed[ie], sv.event[ie],
                       sv.master_span_us[ie]))


def _cat(parts):
    if not parts:
        return []
    return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]


def _assert_same(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for name in want:
        g, w = got[name], want[name]
        assert g["reasons"] == w["reasons"], name
        np.testing.assert_array_equal(np.concatenate(g["released"] or [[]]), np.concatenate(w["released"] or [[]]))
        for part in ("e", "m", "s"):
            for gc, wc in zip(_cat(g[part]), _cat(w[part])):
                if wc.dtype.kind == "c":
                    np.testing.assert_allclose(gc, wc, rtol=0, atol=1e-9, err_msg=f"{name} {part}")
                else:
                    np.testing.assert_array_equal(gc, wc, err_msg=f"{name} {part}")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(workloads())
def test_a_fleet_gives_the_per_sensor_engines_rows_and_rejections(work):
    s, calls, pickled = work
    _assert_same(_fleet(s, calls, pickled), _per_sensor(s, calls))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(workloads())
def test_a_light_node_fleet_gives_the_per_sensor_engines_rows_and_rejections(work):
    # A light node (no Master): the same arrival orders, lateness and splits; Master rows there are none.
    s, calls, pickled = work
    light = dataclasses.replace(s, light=True)
    got = _fleet(light, calls, pickled)
    _assert_same(got, _per_sensor(light, calls))
    assert not any(len(m[0]) for o in got.values() for m in o["m"])


def test_a_snapshot_of_the_other_node_type_is_refused_by_name():
    s = ResonatorSettings(KairosParams(tau_us=50_000), 200_000, 10_000, 1_000_000, 100_000, 0.8, 0.05, 0.3, 0)
    t = EPOCH_US + np.arange(1, 101) * 10_000
    for held, wanted in ((s, dataclasses.replace(s, light=True)), (dataclasses.replace(s, light=True), s)):
        fleet = Fleet(held, SensorCapacity(10))
        fleet.push([SampleBatch("a", t, np.zeros((100, 1)))], 0)
        table = pickle.loads(pickle.dumps(fleet.table))
        kind = "light" if held.light else "full"
        with pytest.raises(ValueError, match=f"state of a {kind} node.*run it as a {kind} node, or replay"):
            Fleet(wanted, SensorCapacity(10), table)


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([0, 30, 500]), st.booleans())
def test_the_fleet_gate_classifies_as_the_per_sensor_gate(seed, lateness, grouped):
    # grouped: each call's rows sensor by sensor, as the fleet hands them (at lateness 0 the gate then
    # releases without its reorder buffer); otherwise interleaved.
    rng = np.random.default_rng(seed)
    sensors = int(rng.integers(1, 4))
    gate = FleetGate(1, lateness, max_future_us=1_000, dedup_horizon_us=10**9)
    rows = gate.add(sensors)
    want = [EventTimeGate(lateness, 1_000, dedup_horizon_us=10**9) for _ in range(sensors)]
    for _ in range(int(rng.integers(1, 12))):
        n = int(rng.integers(1, 30))
        r = rng.integers(0, sensors, n)
        t = rng.integers(0, 1_200, n)       # some beyond now + max_future (1,000)
        if grouped:
            order = np.argsort(r, kind="stable")
            r, t = r[order], t[order]
        step = gate.push(rows[r], t, t[:, None] * 1.0, now_us=0)
        for k in range(sensors):
            mine = r == k
            res = want[k].push(SampleBatch("x", t[mine], t[mine][:, None] * 1.0), now_us=0)
            got = [{0: "", 1: "future", 2: "late", 3: "duplicate"}[c] for c in step.status[mine].tolist()]
            assert [x for x in got if x] == res.reasons
            released = res.released.t_us.tolist() if res.released is not None else []
            assert step.t[step.rows == k].tolist() == released


def test_a_snapshot_of_the_per_sensor_engine_is_refused_by_name():
    from operators.roster import RosterState

    s = ResonatorSettings(KairosParams(tau_us=50_000), 200_000, 10_000, 1_000_000, 100_000, 0.8, 0.05, 0.3, 0)
    with pytest.raises(ValueError, match="another layout .*RosterState.*replay the input"):
        Fleet(s, SensorCapacity(10), RosterState())
    assert Fleet(s, SensorCapacity(10), FleetTable()).names == []


def test_a_recovery_store_of_another_state_layout_is_refused_with_the_way_out(tmp_path):
    import json

    from flows.run import RecoveryMismatch, _recovery_config
    from operators.fleet import STATE_LAYOUT
    from schemas.config import parse_config

    config = parse_config({"memory": {"storage": {"path": str(tmp_path)}}})
    store = tmp_path / "_recovery"
    _recovery_config(store, config)
    stamp = json.loads((store / "input.json").read_text())
    assert stamp["state_layout"] == STATE_LAYOUT
    del stamp["state_layout"]                    # as a store of the per-sensor engine was stamped
    (store / "input.json").write_text(json.dumps(stamp))
    with pytest.raises(RecoveryMismatch, match=f"state_layout None -> '{STATE_LAYOUT}'.*--no-recovery"):
        _recovery_config(store, config)


@pytest.mark.parametrize("lateness", [0, 200_000])
def test_the_gate_remembers_about_a_dedup_horizon_of_released_times(lateness):
    # An hour of a 10 Hz sensor in calls of 10 s: the ring of released times (kept to tell a repeat
    # from a late sample) holds about the horizon's samples plus a call's, not thousands per sensor.
    gate = FleetGate(1, lateness, max_future_us=None, dedup_horizon_us=1_000_000)
    rows = gate.add(1)
    for call in range(360):
        t = (call * 100 + np.arange(1, 101)) * 100_000
        step = gate.push(np.repeat(rows, 100), t, np.zeros((100, 1)), now_us=0)
        assert not step.status.any()
    assert int(gate.ints[0, R_CAP]) <= 256    # the ring's capacity in samples
    repeat = gate.push(rows, np.array([t[-1]]), np.zeros((1, 1)), now_us=0)
    assert repeat.status.tolist() == [3]      # still told a duplicate
