"""The sync joins by event time and runs the collapse state machine as SPEC section 3 states it."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.grid import WindowValues
from operators.sync import COLLAPSE, DISSIPATE_COHERENCE, DISSIPATE_PHASE, SyncMachine

IC, H, PHASE, MIN_SPAN = 0.95, 0.05, 0.1, 1_000


def _values(t, T, span):
    t = np.asarray(t, np.int64)
    return WindowValues(t, np.asarray(T, np.complex128), np.ones(t.size, np.int64), np.asarray(span, np.int64))


def spec_sync(em, ma):
    """Section 3 as a plain loop: each Emissary g with the latest Master G <= g."""
    collapsed, events = False, []
    for g, T_e in zip(em.t, em.T):
        prior = np.flatnonzero(ma.t <= g)
        T_m, span = (ma.T[prior[-1]], ma.span_us[prior[-1]]) if prior.size else (0j, 0)
        T_s = (T_m + T_e) / 2
        coh, dphase = abs(T_s) ** 2, abs(abs(T_m) - abs(T_e))
        if collapsed and coh < IC - H:
            collapsed, ev = False, DISSIPATE_COHERENCE
        elif collapsed and dphase >= PHASE:
            collapsed, ev = False, DISSIPATE_PHASE
        elif not collapsed and span >= MIN_SPAN and coh >= IC and dphase < PHASE:
            collapsed, ev = True, COLLAPSE
        else:
            ev = 0
        events.append(ev)
    return events


@st.composite
def streams(draw):
    n_em = draw(st.integers(1, 120))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    em_t = np.cumsum(rng.integers(1, 3, n_em)) * 10  # Emissary grid: multiples of 10
    ma_t = np.unique(em_t[rng.random(n_em) < 0.3] // 100 * 100 + 100)  # Master grid: multiples of 100
    ma_t = ma_t[ma_t <= em_t[-1]]
    # Magnitudes near the thresholds so every transition happens.
    mag = lambda n: np.clip(rng.normal(0.95, 0.06, n), 0, 1)
    em = _values(em_t, mag(n_em) * np.exp(1j * rng.normal(0, 0.05, n_em)), np.zeros(n_em))
    ma = _values(ma_t, mag(ma_t.size), np.cumsum(rng.integers(0, 600, ma_t.size)))
    return em, ma, draw(st.lists(st.integers(0, n_em), max_size=6))


@settings(max_examples=300, deadline=None)
@given(streams())
def test_sync_equals_section_3_whatever_the_arrival_interleaving(stream):
    em, ma, cuts = stream
    want = spec_sync(em, ma)
    sync = SyncMachine(IC, H, PHASE, MIN_SPAN)
    edges = [0, *sorted(cuts), len(em.t)]
    got, sent = [], 0
    # The Master arrives in pieces; its watermark trails the Emissary's, so
    # Emissary points wait for it; the end of input decides the rest.
    for a, b in zip(edges[:-1], edges[1:]):
        em_part = WindowValues(*(x[a:b] for x in em))
        wm = int(em.t[a]) - 1 if a < len(em.t) else None  # Master final up to just before em.t[a]
        upto = len(ma.t) if wm is None else int(np.count_nonzero(ma.t <= wm))
        got += sync.advance(em_part, WindowValues(*(x[sent:upto] for x in ma)), wm).event.tolist()
        sent = upto
    rest = WindowValues(*(x[sent:] for x in ma))
    got += sync.advance(_values([], [], []), rest, None).event.tolist()
    assert got == want


def test_collapse_needs_a_mature_master():
    sync = SyncMachine(IC, H, PHASE, MIN_SPAN)
    em = _values([10, 20, 30], [1.0, 1.0, 1.0], [0, 0, 0])
    ma = _values([10, 30], [1.0, 1.0], [MIN_SPAN - 1, MIN_SPAN])
    out = sync.advance(em, ma, master_watermark=30)
    assert out.mature.tolist() == [False, False, True]
    assert out.event.tolist() == [0, 0, COLLAPSE]
    assert out.collapsed.tolist() == [False, False, True]


def test_phase_disagreement_dissipates_with_reason_phase():
    sync = SyncMachine(IC, H, PHASE, MIN_SPAN)
    # |T_sync|^2 stays above I_c - h, but the Emissary's magnitude falls away from the Master's.
    em = _values([10, 20], [1.0, 0.898], [0, 0])
    ma = _values([10], [1.0], [MIN_SPAN])
    out = sync.advance(em, ma, master_watermark=20)
    assert out.event.tolist() == [COLLAPSE, DISSIPATE_PHASE]
    np.testing.assert_allclose(out.delta_phase, [0.0, 0.102])
    np.testing.assert_allclose(out.coherence_sync, [1.0, 0.949**2])  # still >= I_c - h


def test_emissary_points_wait_for_the_master_watermark():
    sync = SyncMachine(IC, H, PHASE, MIN_SPAN)
    out = sync.advance(_values([10, 20], [1.0, 1.0], [0, 0]), _values([], [], []), master_watermark=15)
    assert out.t.tolist() == [10] and sync.waiting == 1
    out = sync.advance(_values([], [], []), _values([20], [1.0], [MIN_SPAN]), master_watermark=20)
    assert out.t.tolist() == [20] and out.event.tolist() == [COLLAPSE]
