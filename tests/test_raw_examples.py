"""The example configs for raw sensors (SPEC section 9) do what docs/raw-signals.md says.

Each config's raw-sensor path (band-pass and Hilbert phase, or beat phase for ECG, then the
estimator and the sync state machine) runs on synthetic signals of known rhythm: the rhythm
collapses, noise, out-of-band tones and a wandering angle never do, and an ECG dissipates at
its first premature beat.  First through the resonate step's engine (a Fleet, many records and
call sizes in little time), then through `becomingone run` on a Parquet file of raw `value`
samples, whose events/ must equal the engine's.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from bench.ecg import ecg_record
from bench.raw_runs import SyncTrace, raw_settings, raw_sync
from bench.raw_signals import RawRecord, alpha_burst, pink_noise, pmu_mode, tone, white_noise
from operators.beat_phase import BeatRule, BeatTrack, beat_phases
from operators.phase_extraction import PhaseTrack, extract_phases

CONFIG = Path(__file__).resolve().parents[1] / "config"
COLLAPSE = 1
S = 1_000_000


def collapses(trace: SyncTrace) -> list[int]:
    return [t for t, code in trace.events() if code == COLLAPSE]


def dissipations(trace: SyncTrace) -> list[int]:
    return [t for t, code in trace.events() if code != COLLAPSE]


def never_collapses(trace: SyncTrace) -> bool:
    return trace.t.size > 0 and trace.mature.any() and not trace.collapsed.any()


@pytest.mark.parametrize("name", ["ecg-rhythm", "eeg-alpha", "pmu-modes"])
def test_example_config_has_a_band_and_a_method(name):
    raw = raw_settings(CONFIG / f"{name}.yaml")
    assert 0 < raw.phase_band[0] < raw.phase_band[1]
    assert raw.phase_method == ("events" if name == "ecg-rhythm" else "hilbert")


# --- ECG: beat phase --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_ecg_collapses_in_the_regular_stretch_and_dissipates_at_the_first_premature_beat(seed):
    rec = ecg_record(seed=seed, noise_mv=0.05, hrv=0.03)
    trace = raw_sync(raw_settings(CONFIG / "ecg-rhythm.yaml"),
                     {"ecg/II": RawRecord(rec.t, rec.value, rec.t[0], rec.ectopic_from)})["ecg/II"]
    first = collapses(trace)[0]
    assert first < rec.t[0] + 20 * S                        # once the Master is mature (10 s of products)
    assert trace.collapsed_share(first, rec.ectopic_from) == 1.0
    premature = rec.beats[rec.ectopic][0]
    before = rec.beats[np.flatnonzero(rec.ectopic)[0] - 1]
    gone = dissipations(trace)[0]
    assert before < gone <= premature + 100_000             # the interval ending at the premature beat
    assert trace.collapsed_share(gone, rec.t[-1]) < 0.25    # only short runs of normal beats re-collapse


@pytest.mark.parametrize("band, extra", [((5.0, 30.0), True), ((10.0, 30.0), False)])
def test_the_qrs_band_keeps_t_waves_out_of_the_beats(band, extra):
    """Why the ECG config's band starts at 10 Hz: at 5 Hz the filter's lower edge (2.5 Hz) lets T waves
    through, 0.25 s after each QRS, and the detector takes them for beats (the flow's composition:
    the analytic band-pass, then the detector on its real part)."""
    rec = ecg_record(seed=1, noise_mv=0.05, hrv=0.03)
    out = extract_phases(PhaseTrack(*band), np.zeros(rec.t.size, np.int64), rec.t, rec.value[:, None], S)
    events = beat_phases(BeatTrack.empty(), BeatRule(max_gap_us=S), out.sid, out.t,
                         out.amplitude[:, 0] * np.cos(out.phase[:, 0])).event_t
    nearest = np.abs(events[:, None] - rec.beats[None, :]).min(axis=1)
    assert (nearest > 20_000).any() == extra                 # an event 20 ms or more from every beat
    assert (nearest <= 20_000).sum() >= rec.beats.size - 3   # every beat after the 2 s learning phase


def test_ecg_config_never_collapses_on_noise_or_mains():
    recs = {"white": white_noise(fs=360.0, duration_s=120.0, rms=0.05, seed=3),
            "pink": pink_noise(fs=360.0, duration_s=120.0, rms=0.1, seed=3),
            "mains": tone(fs=360.0, f_hz=60.0, duration_s=120.0, amplitude=0.5, noise=0.02, seed=3)}
    traces = raw_sync(raw_settings(CONFIG / "ecg-rhythm.yaml"), recs)
    assert all(never_collapses(traces[name]) for name in recs)


# --- EEG alpha ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_alpha_burst_collapses_and_its_end_dissipates(seed):
    rec = alpha_burst(seed=seed)            # 20 s pink background, 30 s alpha, 20 s background
    trace = raw_sync(raw_settings(CONFIG / "eeg-alpha.yaml"), {"eeg/O1": rec})["eeg/O1"]
    assert len(collapses(trace)) == 1
    assert rec.rhythm_from < collapses(trace)[0] < rec.rhythm_from + 8 * S
    assert len(dissipations(trace)) == 1
    assert rec.rhythm_to - S < dissipations(trace)[0] < rec.rhythm_to + S


def test_eeg_config_never_collapses_on_noise_or_out_of_band_tones():
    recs = {"pink": pink_noise(duration_s=120.0, seed=5), "white": white_noise(duration_s=120.0, seed=5),
            "beta": tone(fs=250.0, f_hz=30.0, duration_s=120.0, amplitude=20.0, noise=1.0, seed=5),
            "mains": tone(fs=250.0, f_hz=50.0, duration_s=120.0, amplitude=20.0, noise=1.0, seed=5)}
    traces = raw_sync(raw_settings(CONFIG / "eeg-alpha.yaml"), recs)
    assert all(never_collapses(traces[name]) for name in recs)


def test_alpha_events_do_not_depend_on_the_call_size():
    raw, rec = raw_settings(CONFIG / "eeg-alpha.yaml"), alpha_burst(seed=2)
    one = raw_sync(raw, {"a": rec}, call_s=100.0)["a"]
    many = raw_sync(raw, {"a": rec}, call_s=0.37)["a"]
    assert one.events() == many.events()
    np.testing.assert_array_equal(one.coherence, many.coherence)


# --- PMU oscillation modes ----------------------------------------------------------------------


@pytest.mark.parametrize("fs", [30.0, 60.0])
def test_a_stable_mode_collapses(fs):
    rec = pmu_mode(fs=fs, quiet_s=60.0, duration_s=240.0, drift_deg=0.3, wander_hz=0.01, seed=1)
    trace = raw_sync(raw_settings(CONFIG / "pmu-modes.yaml"), {"pmu/VA": rec}, call_s=30.0)["pmu/VA"]
    assert len(collapses(trace)) >= 1
    assert rec.rhythm_from < collapses(trace)[0] < rec.rhythm_from + 40 * S     # the Master is 30 s
    assert trace.collapsed_share(rec.rhythm_from + 40 * S, rec.rhythm_to) > 0.9


def test_pmu_config_never_collapses_on_a_wandering_angle_noise_or_a_fast_tone():
    recs = {"wander": pmu_mode(mode_deg=0.0, duration_s=240.0, drift_deg=1.0, offset_hz=0.01, seed=2),
            "wander_fast": pmu_mode(mode_deg=0.0, duration_s=240.0, drift_deg=3.0, offset_hz=0.05, seed=2),
            "white": white_noise(fs=30.0, duration_s=240.0, rms=0.05, seed=2),
            "local": tone(fs=30.0, f_hz=3.0, duration_s=240.0, amplitude=2.0, noise=0.05, seed=2)}
    traces = raw_sync(raw_settings(CONFIG / "pmu-modes.yaml"), recs, call_s=30.0)
    assert all(never_collapses(traces[name]) for name in recs)


# --- Through the flow: `becomingone run` on a Parquet file of raw samples ------------------------


def run_flow(tmp_path: Path, name: str, records: dict[str, RawRecord]) -> dict[str, list[tuple[int, str]]]:
    """The config's flow on the records as raw `value` samples; each sensor's (time us, event) from events/."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from connectors.archive import open_dataset
    from tests.conftest import BIN, clean_env

    t = np.concatenate([r.t for r in records.values()])
    order = np.argsort(t, kind="stable")
    sensors = np.concatenate([np.full(r.t.size, k, object) for k, r in records.items()])
    pq.write_table(pa.table({"sensor": pa.array(sensors[order], pa.string()),
                             "t": pa.array(t[order], pa.timestamp("us", tz="UTC")),
                             "value": np.concatenate([r.value for r in records.values()])[order]}),
                   tmp_path / "raw.parquet")
    archive = tmp_path / "archive"
    proc = subprocess.run([str(BIN), "run", "--config", str(CONFIG / f"{name}.yaml")], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300,
                          env=clean_env(BECOMINGONE__SOURCE__PATH=str(tmp_path / "raw.parquet"),
                                        BECOMINGONE__MEMORY__STORAGE__PATH=str(archive)))
    assert proc.returncode == 0, proc.stderr
    assert f"{t.size:,} samples accepted, 0 rejected" in proc.stdout
    out: dict[str, list[tuple[int, str]]] = {k: [] for k in records}
    if (archive / "events").exists():
        for e in sorted(open_dataset(archive / "events").to_table().to_pylist(), key=lambda e: e["t"]):
            when = e["t"]
            out[e["sensor"]].append((round(when.timestamp() * 1e6), e["event"]))
    return out


def fleet_events(name: str, records: dict[str, RawRecord]) -> dict[str, list[tuple[int, str]]]:
    traces = raw_sync(raw_settings(CONFIG / f"{name}.yaml"), records)
    return {k: [(t, "collapse" if code == COLLAPSE else "dissipate") for t, code in tr.events()]
            for k, tr in traces.items()}


def test_ecg_config_through_the_flow(tmp_path):
    rec = ecg_record(seed=0, noise_mv=0.05, hrv=0.03)
    records = {"ecg/II": RawRecord(rec.t, rec.value, rec.t[0], rec.ectopic_from),
               "noise/white": white_noise(fs=360.0, duration_s=120.0, rms=0.05, seed=4)}
    events = run_flow(tmp_path, "ecg-rhythm", records)
    assert events == fleet_events("ecg-rhythm", records)
    ecg = events["ecg/II"]
    assert ecg[0][1] == "collapse" and ecg[0][0] < rec.t[0] + 20 * S
    premature = rec.beats[rec.ectopic][0]
    assert ecg[1][1] == "dissipate"
    assert rec.beats[np.flatnonzero(rec.ectopic)[0] - 1] < ecg[1][0] <= premature + 100_000
    assert events["noise/white"] == []


def test_eeg_config_through_the_flow(tmp_path):
    burst = alpha_burst(seed=3)
    records = {"eeg/O1": burst, "eeg/pink": pink_noise(duration_s=70.0, seed=3),
               "eeg/beta": tone(fs=250.0, f_hz=30.0, duration_s=70.0, amplitude=20.0, noise=1.0, seed=3)}
    events = run_flow(tmp_path, "eeg-alpha", records)
    assert events == fleet_events("eeg-alpha", records)
    (up, kind_up), (down, kind_down) = events["eeg/O1"]
    assert (kind_up, kind_down) == ("collapse", "dissipate")
    assert burst.rhythm_from < up < burst.rhythm_from + 8 * S
    assert burst.rhythm_to - S < down < burst.rhythm_to + S
    assert events["eeg/pink"] == events["eeg/beta"] == []


def test_pmu_config_through_the_flow(tmp_path):
    mode = pmu_mode(quiet_s=60.0, duration_s=180.0, drift_deg=0.3, wander_hz=0.01, seed=4)
    records = {"pmu/mode": mode,
               "pmu/wander": pmu_mode(mode_deg=0.0, duration_s=180.0, drift_deg=1.0, offset_hz=0.01, seed=4),
               "pmu/white": white_noise(fs=30.0, duration_s=180.0, rms=0.05, seed=4)}
    events = run_flow(tmp_path, "pmu-modes", records)
    assert events == fleet_events("pmu-modes", records)
    assert events["pmu/mode"][0][1] == "collapse"
    assert mode.rhythm_from < events["pmu/mode"][0][0] < mode.rhythm_from + 40 * S
    assert events["pmu/wander"] == events["pmu/white"] == []
