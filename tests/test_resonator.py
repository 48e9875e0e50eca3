"""The resonator's one-call chain equals its operators run one after the other.

With pane windows on both sides, :class:`operators.resonator.Resonator` runs
both transducers and the sync as one kernel call writing into shared
:class:`~operators.resonator.GridRows`.  These tests drive a twin sensor
through the operators themselves (``SensorIntake``, ``Transducer.push`` twice,
``SyncMachine.advance``) and hold every emitted value, bit for bit, and the
state afterwards to it.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from operators.master import MasterWindow
from operators.params import KairosParams
from operators.resonator import GridRows, Resonator, ResonatorSettings
from schemas.samples import SampleBatch


def _settings(**overrides) -> ResonatorSettings:
    base = dict(params=KairosParams.from_seconds(0.05, velocity_span=0.01, omega=3.0),
                emissary_window_us=200_000, emissary_interval_us=10_000, master_window_us=2_000_000,
                master_interval_us=100_000, threshold=0.8, hysteresis=0.05, phase_threshold=0.5,
                min_span_us=300_000, lateness_us=20_000)
    base.update(overrides)
    return ResonatorSettings(**base)


class _StepByStep:
    """The resonator's operators called one by one, as the chain is specified."""

    def __init__(self, sensor: str, settings: ResonatorSettings) -> None:
        self.r = Resonator(sensor, settings)

    def push(self, batch: SampleBatch | None):
        r = self.r
        b = (r.intake.flush() if batch is None else r.intake.push(batch, now_us=0)).batch
        if b is None:
            return None
        em = r.emissary.push(b.products, b.sample_t, b.watermark)
        ma = r.master.push(b.products, b.sample_t, b.watermark)
        return em, ma, r.sync.advance(em, ma, b.watermark)


def _stream(seed: int, n: int, rate_hz: float) -> tuple[np.ndarray, np.ndarray]:
    """A noisy oscillator, some rows swapped (out of order within the lateness) and repeated."""
    rng = np.random.default_rng(seed)
    t = 1_764_115_200_000_000 + np.cumsum(rng.integers(1, int(2e6 / rate_hz), n))
    phase = 2 * np.pi * 2.0 * (t - t[0]) * 1e-6 + rng.normal(0, 0.05 if seed % 2 else 1.5, n)
    swap = rng.choice(n - 1, n // 20, replace=False)
    t[swap], t[swap + 1] = t[swap + 1], t[swap].copy()
    dup = rng.choice(n, n // 50, replace=False)
    t[dup] = t[np.maximum(dup - 1, 0)]
    return t, phase[:, None]


def _assert_same(got, want) -> None:
    assert type(got).__name__ == type(want).__name__
    for name, a, b in zip(want._fields, got, want):
        assert a.dtype == b.dtype, name
        np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_one_call_chain_equals_the_operators_one_after_the_other(seed):
    settings = _settings()
    sensors = [f"s{i}" for i in range(3)]
    chains = {s: Resonator(s, settings) for s in sensors}
    twins = {s: _StepByStep(s, settings) for s in sensors}
    streams = {s: _stream(seed * 10 + i, 3000, 200.0 * (i + 1)) for i, s in enumerate(sensors)}
    rng = np.random.default_rng(seed)
    cuts = {s: np.sort(rng.choice(np.arange(1, 3000), 60, replace=False)) for s in sensors}
    events = 0
    for k in range(61):
        rows = GridRows(4)  # shared by every sensor of the "batch", grown as it fills
        for s in sensors:
            t, phase = streams[s]
            lo = 0 if k == 0 else cuts[s][k - 1]
            hi = len(t) if k == 60 else cuts[s][k]
            batch = SampleBatch(s, t[lo:hi], phase[lo:hi])
            got = chains[s].push(batch, now_us=0, rows=rows)
            want = twins[s].push(batch)
            if want is None:
                assert got.emissary_count == got.master_count == 0
                continue
            _assert_same(got.emissary, want[0])
            _assert_same(got.master, want[1])
            _assert_same(got.sync, want[2])
            events += int(np.count_nonzero(want[2].event))
    for s in sensors:  # end of input
        got, want = chains[s].flush(), twins[s].push(None)
        _assert_same(got.emissary, want[0])
        _assert_same(got.master, want[1])
        _assert_same(got.sync, want[2])
        a, b = chains[s], twins[s].r
        assert a.collapsed == b.collapsed
        assert a.master.window.last_emitted == b.master.window.last_emitted
        assert a.emissary.window.last_emitted == b.emissary.window.last_emitted
    assert events > 0  # the streams do collapse (odd seeds' sensors are clean oscillators)


def test_rows_of_many_calls_are_runs_in_call_order():
    settings = _settings(lateness_us=0)
    rows = GridRows(1)
    t = 1_764_115_200_000_000 + np.arange(1, 501) * 2_000
    calls = [Resonator(s, settings).push(SampleBatch(s, t, np.zeros((500, 1))), 0, rows) for s in ("a", "b")]
    assert rows.n_emissary == sum(c.emissary_count for c in calls) == 2 * 100
    assert [c.emissary_start for c in calls] == [0, 100] and [c.master_start for c in calls] == [0, 10]
    np.testing.assert_array_equal(rows.emissary.t[:100], rows.emissary.t[100:])
    np.testing.assert_array_equal(rows.sync.t, rows.emissary.t)  # sync row k decides Emissary row k


def test_a_pane_outgrowing_its_packed_count_widens_and_stays_exact():
    # 100,000 samples 1 us apart fill one 0.1 s Master pane with more products than its
    # 17-bit offset leaves count bits for (32,767): the window switches to 64-bit words first.
    settings = _settings(lateness_us=0)
    t = 1_764_115_200_000_000 + np.arange(1, 100_001)
    batch = SampleBatch("fast", t, np.linspace(0, 50, t.size)[:, None])
    chain, twin = Resonator("fast", settings), _StepByStep("fast", settings)
    pushed = chain.push(batch, 0)
    for got, want in ((pushed, twin.push(batch)), (chain.flush(), twin.push(None))):
        _assert_same(got.emissary, want[0])
        _assert_same(got.master, want[1])
        _assert_same(got.sync, want[2])
    assert chain.master.window._shift == 32 and int(pushed.master.n_products.max()) > 32_767


def test_the_sliding_emissary_takes_the_step_by_step_path_with_the_same_rows():
    # W not a multiple of the interval: the exact sliding window, not panes.
    settings = _settings(emissary_window_us=205_000)
    chain = Resonator("s", settings)
    assert not isinstance(chain.emissary.window, MasterWindow)
    twin = _StepByStep("s", settings)
    t, phase = _stream(5, 2000, 500.0)
    for lo in range(0, 2000, 250):
        batch = SampleBatch("s", t[lo:lo + 250], phase[lo:lo + 250])
        got, want = chain.push(batch, 0), twin.push(batch)
        if want is not None:
            _assert_same(got.emissary, want[0])
            _assert_same(got.sync, want[2])


def test_a_resonator_restored_mid_stream_continues_exactly():
    settings = _settings()
    t, phase = _stream(7, 4000, 1000.0)
    whole, half = Resonator("s", settings), Resonator("s", settings)
    whole.push(SampleBatch("s", t[:2000], phase[:2000]), 0)
    half.push(SampleBatch("s", t[:2000], phase[:2000]), 0)
    restored = pickle.loads(pickle.dumps(half))
    rest = SampleBatch("s", t[2000:], phase[2000:])
    got, want = restored.push(rest, 0), whole.push(rest, 0)
    _assert_same(got.emissary, want.emissary)
    _assert_same(got.master, want.master)
    _assert_same(got.sync, want.sync)
