"""Every window implementation through the same checks.

Two levels, each a tiny protocol and one list of implementations (the way
River's ``test_stats`` enumerates every statistic):

* a **window** takes lag products and the grid points now final, and reports
  T, the product count and the span over (g - W, g] at each:
  :class:`~operators.emissary.EmissaryWindow` (exact sliding) and
  :class:`~operators.master.MasterWindow` (panes); the reference is
  :func:`operators.reference.window_values`, summed directly;
* an **engine** takes calls of samples of many sensors and gives the
  Emissary, Master and sync rows of SPEC sections 2 and 3: one
  :class:`~operators.resonator.Resonator` per sensor, the key group's
  :class:`~operators.fleet.Fleet`, and the one pass
  :func:`~operators.columnar.fleet_resonance`; the reference is
  :func:`operators.columnar_reference.fleet_resonance_reference`.

Every implementation must equal the reference, give the same values however
the input is split into calls, and give the same values when its state is
pickled and restored between calls (what a recovery snapshot does).
"""

from __future__ import annotations

import pickle
from typing import Protocol

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operators.columnar import fleet_resonance
from operators.columnar_reference import fleet_resonance_reference
from operators.columnar_rows import FleetResonance, FleetSyncValues, FleetWindowValues
from operators.emissary import EmissaryWindow
from operators.fleet import Fleet
from operators.lag import Products
from operators.master import MasterWindow
from operators.params import KairosParams
from operators.reference import lag_products, window_values
from operators.resonator import Resonator, ResonatorSettings
from operators.roster import SensorCapacity
from schemas.samples import SampleBatch
from tests.test_columnar import EPOCH_US, _assert_same, fleets, tolerances

# ---------------------------------------------------------------------------
# Windows: products in, values at final grid points out.


class Window(Protocol):
    def advance(self, products: Products, at: np.ndarray): ...


WINDOWS = {  # name -> (factory(window_us, interval_us, omega), grid interval it needs)
    "sliding": lambda w, i, omega: EmissaryWindow(w, omega),
    "panes": lambda w, i, omega: MasterWindow(w, i, omega),
}


@st.composite
def window_cases(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = draw(st.integers(2, 600))
    t = EPOCH_US + np.cumsum(rng.integers(1, 2 * draw(st.sampled_from([1_000, 10_000, 40_000])), n))
    phase = np.mod(2 * np.pi * rng.uniform(0.2, 9.0) * (t - t[0])[:, None] * 1e-6
                   + rng.normal(0, draw(st.sampled_from([0.0, 0.3])), (n, 1)).cumsum(axis=0), 2 * np.pi)
    params = KairosParams(tau_us=draw(st.sampled_from([20_000, 50_000])), velocity_span_us=5_000)
    interval = draw(st.sampled_from([10_000, 100_000]))
    window = interval * draw(st.integers(1, 30))
    omega = draw(st.sampled_from([0.0, 3.0]))
    products = lag_products(t, phase, params)
    calls = sorted(set(rng.integers(1, len(products), int(rng.integers(0, 6))).tolist())) if len(products) > 1 else []
    return products, window, interval, omega, calls


def _grid(products: Products, interval: int) -> np.ndarray:
    if not len(products):
        return np.empty(0, np.int64)
    first = -(-int(products.t[0]) // interval) * interval
    return np.arange(first, int(products.t[-1]) + 1, interval, dtype=np.int64)


def _feed(make, products: Products, grid: np.ndarray, cuts: list[int], pickled: bool):
    """Products in calls split at ``cuts``; each call reports the grid points its products made final."""
    window, parts = make(), []
    bounds = [0, *cuts, len(products)]
    done = 0
    for a, b in zip(bounds, bounds[1:]):
        chunk = Products(products.t[a:b], products.p[a:b], products.dt[a:b])
        final = len(grid) if b == len(products) else int(np.searchsorted(grid, products.t[b], side="left"))
        parts.append(window.advance(chunk, grid[done:final]))
        done = max(done, final)
        if pickled:
            window = pickle.loads(pickle.dumps(window))
    return [np.concatenate([getattr(p, f) for p in parts]) for f in ("t", "T", "n_products", "span_us")]


@pytest.mark.parametrize("name", WINDOWS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=window_cases(), pickled=st.booleans())
def test_a_window_equals_the_reference_in_any_split_and_across_pickling(name, case, pickled):
    products, window, interval, omega, cuts = case
    grid = _grid(products, interval)
    make = lambda: WINDOWS[name](window, interval, omega)
    whole = _feed(make, products, grid, [], False)
    want = window_values(products, omega, grid, window)
    np.testing.assert_array_equal(whole[0], want.t)
    np.testing.assert_array_equal(whole[2], want.n_products)
    np.testing.assert_array_equal(whole[3], want.span_us)
    np.testing.assert_allclose(whole[1], want.T, rtol=0, atol=1e-9)
    split = _feed(make, products, grid, cuts, pickled)
    for got, ref in zip(split, whole):   # the split changes the order of additions only
        if got.dtype.kind == "c":
            np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)
        else:
            np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("name", WINDOWS)
def test_a_window_refuses_grid_points_out_of_order(name):
    window = WINDOWS[name](1_000_000, 100_000, 0.0)
    window.advance(Products.empty(), np.array([200_000]))
    with pytest.raises(ValueError):
        window.advance(Products.empty(), np.array([100_000]))


# ---------------------------------------------------------------------------
# Engines: calls of samples of many sensors in, Emissary / Master / sync rows out.


class Engine(Protocol):
    def push(self, sensor: np.ndarray, t: np.ndarray, phase: np.ndarray) -> None: ...
    def finish(self) -> FleetResonance: ...
    def snapshot(self) -> object: ...


def _batches(sensor, t, phase) -> list[SampleBatch]:
    return [SampleBatch(str(s), t[sensor == s], phase[sensor == s]) for s in dict.fromkeys(sensor.tolist())]


class PerSensor:
    """One Resonator per sensor (the per-sensor reference chain)."""

    def __init__(self, s: ResonatorSettings, state=None) -> None:
        self.s, (self.resonators, self.rows) = s, state or ({}, [])

    def push(self, sensor, t, phase) -> None:
        for b in _batches(sensor, t, phase):
            r = self.resonators.setdefault(b.sensor, Resonator(b.sensor, self.s))
            self.rows.append((int(b.sensor), r.push(b, now_us=0)))

    def finish(self) -> FleetResonance:
        self.rows += [(int(name), r.flush()) for name, r in self.resonators.items()]
        return _joined([(np.full(len(getattr(res, f)), s, np.int32), getattr(res, f))
                        for s, res in self.rows] for f in ("emissary", "master", "sync"))

    def snapshot(self) -> object:
        return self.resonators, self.rows


class KeyGroup:
    """The key group's columnar engine (what the flow runs)."""

    def __init__(self, s: ResonatorSettings, state=None) -> None:
        self.s = s
        table, self.parts = state or (None, [])
        self.fleet = Fleet(s, SensorCapacity(100), table) if table is not None else Fleet(s, SensorCapacity(100))

    def _keep(self, step) -> None:
        ids = np.array([int(n) for n in self.fleet.names] or [0], np.int32)
        self.parts.append([(ids[v.sensor], v) for v in step.resonance])

    def push(self, sensor, t, phase) -> None:
        self._keep(self.fleet.push(_batches(sensor, t, phase), now_us=0))

    def finish(self) -> FleetResonance:
        self._keep(self.fleet.flush())
        return _joined([p[k] for p in self.parts] for k in range(3))

    def snapshot(self) -> object:
        return self.fleet.table, self.parts


class OnePass:
    """The offline pass over everything at once (calls are gathered until the end)."""

    def __init__(self, s: ResonatorSettings, state=None) -> None:
        self.s, self.calls = s, state or []

    def push(self, sensor, t, phase) -> None:
        self.calls.append((sensor, t, phase))

    def finish(self) -> FleetResonance:
        sensor, t, phase = (np.concatenate(c) for c in zip(*self.calls))
        order = np.lexsort((t, _first_seen(sensor)))
        return fleet_resonance(sensor[order], t[order], phase[order], self.s)

    def snapshot(self) -> object:
        return self.calls


ENGINES = {"per-sensor": PerSensor, "key-group": KeyGroup, "one-pass": OnePass}


def _first_seen(sensor: np.ndarray) -> np.ndarray:
    rank = {s: k for k, s in enumerate(dict.fromkeys(sensor.tolist()))}
    return np.array([rank[s] for s in sensor.tolist()], np.int64)


def _joined(parts) -> FleetResonance:
    """Rows of (sensor ids, values) pieces as one FleetResonance, the pieces' columns concatenated."""
    out = []
    for kind, pieces in zip((FleetWindowValues, FleetWindowValues, FleetSyncValues), parts):
        pieces = list(pieces)
        fields = kind._fields[1:]
        cols = [np.concatenate([ids for ids, _ in pieces])]
        cols += [np.concatenate([getattr(v, f) for _, v in pieces]) for f in fields]
        out.append(kind(*cols))
    return FleetResonance(*out)


def _canonical(res: FleetResonance, order: dict[int, int]) -> FleetResonance:
    """Rows sorted by (sensor in order of first appearance, grid point): streaming engines emit
    sensors interleaved call by call, the passes sensor by sensor."""
    parts = []
    for part in res:
        rank = np.array([order[int(s)] for s in part.sensor], np.int64)
        k = np.lexsort((part.t, rank))
        parts.append(type(part)(*(np.asarray(c)[k] for c in part)))
    return FleetResonance(*parts)


def _run(engine_type, s, sensor, t, phase, calls: np.ndarray, pickled: bool) -> FleetResonance:
    engine: Engine = engine_type(s)
    for k in np.unique(calls):
        rows = calls == k
        engine.push(sensor[rows], t[rows], phase[rows])
        if pickled:
            engine = engine_type(s, pickle.loads(pickle.dumps(engine.snapshot())))
    return engine.finish()


@pytest.mark.parametrize("name", ENGINES)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleet=fleets(), seed=st.integers(0, 2**32 - 1), pickled=st.booleans())
def test_an_engine_equals_the_reference_in_any_split_and_across_pickling(name, fleet, seed, pickled):
    _conforms(name, fleet, seed, pickled)


@pytest.mark.parametrize("name", ENGINES)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleet=fleets(light=True), seed=st.integers(0, 2**32 - 1), pickled=st.booleans())
def test_a_light_node_engine_equals_the_reference_in_any_split_and_across_pickling(name, fleet, seed, pickled):
    # A light node's settings: no Master rows, the sync on the Emissary alone.
    _conforms(name, fleet, seed, pickled)


def _conforms(name: str, fleet, seed: int, pickled: bool) -> None:
    """The engine equals the reference on the whole input in one call, and itself in a random split
    into calls (each sensor's rows in nondecreasing calls), its state pickled between calls or not."""
    sensor, t, phase, s = fleet
    order = {sid: k for k, sid in enumerate(dict.fromkeys(sensor.tolist()))}
    want = _canonical(fleet_resonance_reference(sensor, t, phase, s), order)
    tol = tolerances(want, fleet)
    whole = _canonical(_run(ENGINES[name], s, sensor, t, phase, np.zeros(len(t), int), False), order)
    _assert_same(whole, want, tol)
    # Each sensor's rows go to nondecreasing calls; the calls interleave sensors.
    rng = np.random.default_rng(seed)
    calls = np.empty(len(t), int)
    for sid in order:
        rows = np.flatnonzero(sensor == sid)
        calls[rows] = np.sort(rng.integers(0, 6, len(rows)))
    split = _canonical(_run(ENGINES[name], s, sensor, t, phase, calls, pickled), order)
    _assert_same(split, whole, tol)
