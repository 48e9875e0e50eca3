"""Event phase of pulse trains (operators/beat_phase.py, SPEC section 9 ``kairos.phase_method: events``).

The Numba pass equals the find_peaks/np.interp reference on every sensor of a
key group, whatever the split into calls; on the synthetic ECG of
bench/ecg.py it finds one event per beat and its phase advances 2 pi per
beat; through the per-sensor chain the beat phase collapses in the regular
stretch and dissipates at the first ectopic beat.
"""

from __future__ import annotations

import numpy as np
import pytest

from bench.ecg import ecg_record, qrs_band
from operators.beat_phase import BeatPhases, BeatRule, BeatTrack, beat_phases, beat_phases_reference
from operators.params import KairosParams
from operators.resonator import Resonator, ResonatorSettings
from operators.sync import COLLAPSE, DISSIPATE_COHERENCE, DISSIPATE_PHASE
from schemas.samples import SampleBatch

FS = 360.0
RULE = BeatRule(max_gap_us=1_000_000)


def _wrapped_gap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = a - b
    return np.abs(d - 2 * np.pi * np.round(d / (2 * np.pi)))


def _key_group() -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray, np.ndarray, np.ndarray]:
    """Five sensors, rows interleaved: ECGs at two noise levels, one with a 3 s gap
    (a new chain), a slow one at 250 Hz, and band-passed white noise."""
    records = []
    for seed, noise in ((0, 0.02), (1, 0.05), (2, 0.02)):
        rec = ecg_record(seed=seed, noise_mv=noise, regular_s=30.0, ectopic_s=20.0)
        records.append((rec.t, qrs_band(rec.value, FS)))
    t, x = records[2]
    cut = (t < t[0] + 20_000_000) | (t > t[0] + 23_000_000)
    records[2] = (t[cut], x[cut])
    slow = ecg_record(seed=3, fs=250.0, rr_s=1.0, regular_s=20.0, ectopic_s=20.0)
    records.append((slow.t, qrs_band(slow.value, 250.0)))
    rng = np.random.default_rng(9)
    records.append((records[0][0], qrs_band(rng.normal(size=records[0][0].size), FS)))
    sid = np.concatenate([np.full(t.size, s, np.int64) for s, (t, _) in enumerate(records)])
    t = np.concatenate([t for t, _ in records])
    x = np.concatenate([x for _, x in records])
    order = np.lexsort((sid, t))          # interleaved by time, as a key group receives them
    return records, sid[order], t[order], x[order]


def _per_sensor(outs: list[BeatPhases], s: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = np.concatenate([o.t[o.sid == s] for o in outs])
    phase = np.concatenate([o.phase[o.sid == s] for o in outs])
    events = np.concatenate([o.event_t[o.event_sid == s] for o in outs])
    return t, phase, events


def test_kernel_equals_reference_on_every_sensor():
    records, sid, t, x = _key_group()
    out = beat_phases(BeatTrack.empty(), RULE, sid, t, x)
    for s, (ts, xs) in enumerate(records):
        got_t, got_phase, got_events = _per_sensor([out], s)
        ref_t, ref_phase, ref_events = beat_phases_reference(ts, xs, RULE)
        np.testing.assert_array_equal(got_events, ref_events)
        np.testing.assert_array_equal(got_t, ref_t)
        assert _wrapped_gap(got_phase, ref_phase).max() < 1e-9
        assert got_phase.min() >= -np.pi and got_phase.max() < np.pi
    assert sum(_per_sensor([out], s)[2].size for s in range(4)) > 150


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_any_split_into_calls_gives_identical_output(seed):
    records, sid, t, x = _key_group()
    whole = beat_phases(BeatTrack.empty(), RULE, sid, t, x)
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.choice(np.arange(1, t.size), 300, replace=False))
    cuts = np.concatenate(([0], cuts[: 150], np.arange(cuts[150], cuts[150] + 40), cuts[151:], [t.size]))
    cuts = np.unique(cuts)                  # some calls of one row, some of thousands
    track = BeatTrack.empty()
    parts = [beat_phases(track, RULE, sid[a:b], t[a:b], x[a:b]) for a, b in zip(cuts[:-1], cuts[1:])]
    for s in range(len(records)):
        for got, want in zip(_per_sensor(parts, s), _per_sensor([whole], s)):
            np.testing.assert_array_equal(got, want)


def test_a_sensor_with_several_channels_detects_on_the_first():
    rec = ecg_record(regular_s=20.0, ectopic_s=0.0)
    x = qrs_band(rec.value, FS)
    sid = np.zeros(rec.t.size, np.int64)
    one = beat_phases(BeatTrack.empty(), RULE, sid, rec.t, x)
    two = beat_phases(BeatTrack.empty(), RULE, sid, rec.t, np.column_stack((x, -x)))
    np.testing.assert_array_equal(one.event_t, two.event_t)
    np.testing.assert_array_equal(one.phase, two.phase)


@pytest.mark.parametrize("seed, noise_mv", [(0, 0.02), (1, 0.02), (2, 0.05), (3, 0.05)])
def test_one_event_per_beat_and_two_pi_per_beat(seed, noise_mv):
    rec = ecg_record(seed=seed, noise_mv=noise_mv)
    out = beat_phases(BeatTrack.empty(), BeatRule(), np.zeros(rec.t.size, np.int64), rec.t,
                      qrs_band(rec.value, FS))
    beats = rec.beats[rec.beats - rec.t[0] >= BeatRule().learn_us]        # the learning phase only learns
    assert out.event_t.size == beats.size
    assert rec.ectopic[-beats.size:].sum() >= 10
    assert np.abs(out.event_t - beats).max() <= 1e6 / FS                  # within one sample
    # Stamped: every sample after the first event up to the last, once, in time order.
    stamped = rec.t[(rec.t > out.event_t[0]) & (rec.t <= out.event_t[-1])]
    np.testing.assert_array_equal(out.t, stamped)
    unwrapped = np.unwrap(out.phase)
    assert (np.diff(unwrapped) > 0).all()
    at_events = unwrapped[np.searchsorted(out.t, out.event_t[1:])]
    np.testing.assert_allclose(at_events - at_events[0], 2 * np.pi * np.arange(at_events.size), atol=1e-9)


def _chain_settings() -> ResonatorSettings:
    """The per-sensor chain for a 70 bpm rhythm: tau about half a beat, Emissary about six beats."""
    return ResonatorSettings(params=KairosParams.from_seconds(0.4, velocity_span=0.1, max_gap=1.0),
                             emissary_window_us=5_000_000, emissary_interval_us=100_000,
                             master_window_us=30_000_000, master_interval_us=100_000, threshold=0.95,
                             hysteresis=0.05, phase_threshold=0.1, min_span_us=10_000_000)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beat_phase_collapses_in_the_regular_stretch_and_dissipates_at_the_first_ectopic_beat(seed):
    rec = ecg_record(seed=seed, noise_mv=0.05, hrv=0.03)
    out = beat_phases(BeatTrack.empty(), BeatRule(), np.zeros(rec.t.size, np.int64), rec.t,
                      qrs_band(rec.value, FS))
    chain = Resonator("ecg", _chain_settings())
    runs = [chain.push(SampleBatch("ecg", out.t, out.phase[:, None]), 0), chain.flush()]
    t = np.concatenate([r.sync.t for r in runs])
    collapsed = np.concatenate([r.sync.collapsed for r in runs])
    event = np.concatenate([r.sync.event for r in runs])
    first = int(np.flatnonzero(rec.ectopic)[0])
    # The first irregular interval is the short one that ends at the first premature beat.
    irregular_from, first_ectopic = rec.beats[first - 1], rec.beats[first]
    regular = (t >= rec.t[0] + 15_000_000) & (t <= irregular_from)
    assert collapsed[regular].all()
    assert (event[t <= irregular_from] == COLLAPSE).sum() == 1
    dissipations = t[np.isin(event, (DISSIPATE_COHERENCE, DISSIPATE_PHASE))]
    assert irregular_from < dissipations[0] <= first_ectopic + 500_000
    assert collapsed[t > first_ectopic + 5_000_000].mean() < 0.2


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="refractory"):
        BeatRule(refractory_us=0)
    with pytest.raises(ValueError, match="fraction"):
        BeatRule(fraction=1.0)
    track = BeatTrack.empty()
    one = np.zeros(3, np.int64)
    with pytest.raises(ValueError, match="increasing"):
        beat_phases(track, RULE, one, np.array([0, 2, 1], np.int64), np.zeros(3))
    beat_phases(track, RULE, one, np.array([0, 1, 2], np.int64), np.zeros(3))
    empty = beat_phases(track, RULE, one[:0], one[:0], np.zeros(0))
    assert empty.t.size == empty.event_t.size == 0
    with pytest.raises(ValueError, match="increasing"):
        beat_phases(track, RULE, one[:1], np.array([2], np.int64), np.zeros(1))
    with pytest.raises(ValueError, match="finite"):
        beat_phases(track, RULE, one[:1], np.array([5], np.int64), np.array([np.nan]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beat_phase_of_band_passed_noise_never_collapses(seed):
    rng = np.random.default_rng(seed)
    t = 1_764_115_200_000_000 + np.round(np.arange(300 * 360) / FS * 1e6).astype(np.int64)
    out = beat_phases(BeatTrack.empty(), BeatRule(), np.zeros(t.size, np.int64), t,
                      qrs_band(rng.normal(size=t.size), FS))
    assert out.event_t.size > 1000          # noise peaks taken for beats, at about the refractory period
    chain = Resonator("noise", _chain_settings())
    runs = [chain.push(SampleBatch("noise", out.t, out.phase[:, None]), 0), chain.flush()]
    assert not np.concatenate([r.sync.collapsed for r in runs]).any()
