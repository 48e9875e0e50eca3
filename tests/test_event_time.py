"""Event-time rules per sensor: the vectorised gate equals the rules applied one sample at a time."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.event_time import EventTimeGate
from schemas.samples import SampleBatch

NOW = 1_000_000_000


def _batch(t, start=0):
    t = np.asarray(t, dtype=np.int64)
    return SampleBatch("s", t, np.arange(start, start + t.size, dtype=float).reshape(-1, 1))


def spec_rules(arrivals, lateness, max_future, now):
    """SPEC section 3 written as a plain loop over arrivals (no horizon: remembers all)."""
    max_t, accepted, pending, released, reasons = None, set(), [], [], []
    for t in arrivals:
        if max_future is not None and t > now + max_future:
            reasons.append("future")
            continue
        wm = None if max_t is None else max_t - lateness
        if t in accepted:
            reasons.append("duplicate")
            continue
        if wm is not None and t <= wm:
            reasons.append("late")
            continue
        accepted.add(t)
        pending.append(t)
        max_t = t if max_t is None else max(max_t, t)
        wm = max_t - lateness
        ready = sorted(x for x in pending if x <= wm)
        pending = [x for x in pending if x > wm]
        released += ready
        reasons.append("")
    return released, sorted(pending), [r for r in reasons if r]


@settings(max_examples=300, deadline=None)
@given(
    arrivals=st.lists(st.integers(0, 60), min_size=1, max_size=80),
    lateness=st.sampled_from([0, 1, 5, 20]),
    future=st.sampled_from([None, 30]),
    cuts=st.lists(st.integers(0, 80), max_size=6),
)
def test_gate_equals_spec_rules_for_any_batching(arrivals, lateness, future, cuts):
    arrivals_us = [NOW - 50 + a for a in arrivals]  # some beyond now + max_future
    want_released, want_pending, want_reasons = spec_rules(arrivals_us, lateness, future, NOW)
    gate = EventTimeGate(lateness_us=lateness, max_future_us=future, dedup_horizon_us=10_000)
    edges = [0, *sorted(c for c in cuts if c < len(arrivals)), len(arrivals)]
    released, reasons = [], []
    for a, b in zip(edges[:-1], edges[1:]):
        if a == b:
            continue
        res = gate.push(_batch(arrivals_us[a:b], start=a), now_us=NOW)
        if res.released is not None:
            released += res.released.t_us.tolist()
        reasons += res.reasons
    assert released == want_released
    assert reasons == want_reasons
    rest = gate.flush()
    assert ([] if rest is None else rest.t_us.tolist()) == want_pending


def test_released_samples_carry_their_rows_in_time_order():
    gate = EventTimeGate(lateness_us=10, max_future_us=None)
    res = gate.push(_batch([100, 95, 120, 111]), now_us=NOW)
    assert res.watermark == 110
    assert res.released.t_us.tolist() == [95, 100]
    assert res.released.phase[:, 0].tolist() == [1.0, 0.0]  # each row keeps its own phase
    assert gate.pending == 2
    assert gate.flush().t_us.tolist() == [111, 120]


def test_future_samples_do_not_move_the_watermark():
    gate = EventTimeGate(lateness_us=0, max_future_us=60_000_000)
    res = gate.push(_batch([NOW + 61_000_000, NOW - 5]), now_us=NOW)
    assert res.reasons == ["future"]
    assert res.watermark == NOW - 5
    assert res.rejected.t_us.tolist() == [NOW + 61_000_000]
