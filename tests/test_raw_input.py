"""Raw `value` samples (SPEC section 9) from the wire to the archive: the decoders, a key group's raw lanes
(phase extraction before the estimator, any split of the input), the flow, the archive's `value` column
beside older files, and replay."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json

import numpy as np
import pyarrow as pa
import pytest

from connectors.archive import ArchiveWriter, compact_archive, open_dataset, verify_archive
from connectors.archive.manifest_lines import GENESIS, manifest_line
from connectors.archive.reading import listed_files
from connectors.archive.repair import repair_dataset
from flows.run import run_flow
from operators.decode import RawMessage, decode_messages
from operators.fleet import Fleet
from operators.params import KairosParams
from operators.resonator import ResonatorSettings
from operators.roster import SensorCapacity
from schemas.config import parse_config
from schemas.datasets import INPUT
from schemas.messages import ARROW_STREAM_CONTENT_TYPE, CONTENT_TYPE_HEADER
from schemas.samples import SampleBatch

T0 = 1_764_115_200_000_000   # 2025-11-26, us


def _json(obj: dict, offset: int) -> RawMessage:
    return RawMessage(obj.get("sensor", "").encode(), json.dumps(obj).encode(), None, "in", 0, offset)


def _arrow(table: pa.Table, offset: int) -> RawMessage:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return RawMessage(None, sink.getvalue().to_pybytes(), [(CONTENT_TYPE_HEADER, ARROW_STREAM_CONTENT_TYPE.encode())],
                      "in", 0, offset)


def _settings(band=(8.0, 12.0), method="hilbert", lateness_us=0) -> ResonatorSettings:
    return ResonatorSettings(KairosParams(tau_us=25_000, velocity_span_us=4_000, max_gap_us=1_000_000),
                             2_000_000, 10_000, 20_000_000, 100_000, 0.95, 0.05, 0.1, 1_000_000,
                             lateness_us=lateness_us, phase_band=band, phase_method=method)


def _wrap(x: np.ndarray) -> np.ndarray:
    return (x + np.pi) % (2 * np.pi) - np.pi


# --- decoding ----------------------------------------------------------------------------------------


def test_json_and_arrow_value_samples_decode_as_raw_and_phase_samples_stay_phase():
    msgs = [_json({"sensor": "eeg/Fz", "t": 1764115200.004, "value": 12.5}, 0),
            _json({"sensor": "eeg/Fz", "t": 1764115200.008, "value": [13.0]}, 1),
            _json({"sensor": "pmu", "t": 1764115200.0, "phase": 0.5}, 2),
            _arrow(pa.table({"sensor": ["ecg", "ecg"], "t": [1764115200.0, 1764115200.5],
                             "value": pa.array([[0.1, 0.2], [0.3, 0.4]], pa.list_(pa.float64()))}), 3)]
    out = decode_messages(msgs)
    got = {b.sensor: (b.raw, b.phase.tolist()) for b in out.batches}
    assert got == {"eeg/Fz": (True, [[12.5], [13.0]]), "pmu": (False, [[0.5]]),
                   "ecg": (True, [[0.1, 0.2], [0.3, 0.4]])}
    runs = decode_messages(msgs, as_runs=True).runs
    assert sorted((r.raw, r.channels, sorted(r.names)) for r in runs) == [
        (False, 1, ["pmu"]), (True, 1, ["eeg/Fz"]), (True, 2, ["ecg"])]


def test_a_sample_with_both_phase_and_value_and_a_sensor_of_both_kinds_are_schema_dead_letters():
    msgs = [_json({"sensor": "a", "t": 1.0, "value": 1.0}, 0),
            _json({"sensor": "a", "t": 2.0, "value": 2.0}, 1),
            _json({"sensor": "a", "t": 3.0, "phase": 0.1}, 2),          # the minority kind of sensor a
            _json({"sensor": "b", "t": 1.0, "phase": 1.0, "value": 2.0}, 3),
            _json({"sensor": "c", "t": 1.0}, 4)]
    out = decode_messages(msgs)
    letters = {d.offset: (d.reason.value, d.error) for d in out.dead}
    assert letters == {
        2: ("schema", "a phase where sensor 'a' sends raw values in this batch"),
        3: ("schema", "fields 'phase' and 'value' both given: a sample is a phase or a raw value, not both"),
        4: ("schema", "missing field(s) 'phase' (or 'value' for a raw sample)"),
    }
    assert [(b.sensor, len(b), b.raw) for b in out.batches] == [("a", 2, True)]


def test_an_arrow_message_with_both_columns_is_refused_whole_naming_them():
    table = pa.table({"sensor": ["a"], "t": [1.0], "phase": [0.1], "value": [2.0]})
    out = decode_messages([_arrow(table, 7)])
    assert [(d.reason.value, d.error) for d in out.dead] == [
        ("schema", "columns 'phase' and 'value' both given: a message holds phase samples or raw values, not both")]


def test_arrow_raw_rows_are_checked_like_phase_rows_and_named_value():
    table = pa.table({"sensor": ["a", "a"], "t": [1.0, 2.0], "value": [1.0, float("nan")]})
    out = decode_messages([_arrow(table, 0)])
    assert [(d.reason.value, d.error) for d in out.dead] == [("nan", "row 1: value holds NaN or infinity")]


# --- a key group's raw lanes -------------------------------------------------------------------------


def _push_in_pieces(fleet: Fleet, batches: list[SampleBatch], pieces: int, seed: int):
    """Push the batches cut at random rows into ``pieces`` calls; the phases that entered and the grid rows."""
    rng = np.random.default_rng(seed)
    n = len(batches[0])
    cuts = np.sort(rng.choice(np.arange(1, n), pieces - 1, replace=False)) if pieces > 1 else np.array([], int)
    phases, rows = [], []
    for a, b in zip(np.r_[0, cuts], np.r_[cuts, n]):
        step = fleet.push([bt.take(np.arange(a, b)) for bt in batches], now_us=T0 + 10**12)
        assert not step.refusals
        phases.extend(step.phases)
        rows.append(step.resonance)
    step = fleet.flush()
    phases.extend(step.phases)
    rows.append(step.resonance)
    sid = np.concatenate([p[0] for p in phases])
    order = np.argsort(sid, kind="stable")
    joined = [np.concatenate([p[k] for p in phases])[order] for k in range(3)]
    sensor, t, T = (np.concatenate([getattr(r.emissary, k) for r in rows]) for k in ("sensor", "t", "T"))
    return joined, T[np.lexsort((t, sensor))]          # calls cut the rows of sensors apart differently


@pytest.mark.parametrize("rate, band", [(30.0, (1.0, 14.0)), (100.0, (2.0, 6.0)), (250.0, (8.0, 12.0)),
                                        (1000.0, (40.0, 60.0)), (1000.0, (100.0, 450.0))])
def test_in_band_sinusoids_enter_the_estimator_with_their_true_phase(rate, band):
    """30 Hz to 1 kHz: a raw sinusoid in band reaches the estimator as phase samples stamped at the
    filter's centre sample, within 0.01 rad of its true phase, for two sensors of one lane at once."""
    seconds = 12.0
    t = T0 + np.round(np.arange(int(rate * seconds)) * 1e6 / rate).astype(np.int64)
    f = {"a": band[0] + 0.3 * (band[1] - band[0]), "b": band[1] - 0.1 * (band[1] - band[0])}
    fleet = Fleet(dataclasses.replace(_settings(band), params=KairosParams(tau_us=25_000, velocity_span_us=4_000,
                                                                           max_gap_us=5_000_000)), SensorCapacity(10))
    batches = [SampleBatch(s, t, (3.0 * np.cos(2 * np.pi * f[s] * (t - T0) * 1e-6 + 0.4) - 1.0)[:, None], raw=True)
               for s in ("a", "b")]
    (sid, ts, phase), _ = _push_in_pieces(fleet, batches, 5, seed=int(rate))
    for name in ("a", "b"):
        mine = sid == fleet.sid_of(name)
        assert mine.sum() > rate * 2                            # whatever the warm-up, seconds of output
        truth = 2 * np.pi * f[name] * (ts[mine] - T0) * 1e-6 + 0.4
        assert np.abs(_wrap(phase[mine, 0] - truth)).max() < 0.01


@pytest.mark.parametrize("method", ["hilbert", "events"])
def test_any_split_of_raw_input_gives_identical_phases_and_grid_rows(method):
    rng = np.random.default_rng(3)
    t = T0 + np.arange(360 * 20, dtype=np.int64) * 2_778           # about 360 Hz, 20 s
    beat = np.zeros(t.size)
    beat[::300] = 1.0                                            # a pulse every 0.83 s
    x = np.convolve(beat, np.hanning(9), "same")[:, None] + 0.01 * rng.normal(size=(t.size, 1))
    batches = [SampleBatch("ecg", t, x, raw=True), SampleBatch("eeg", t, np.cos(t * 2e-5)[:, None], raw=True)]
    band = (5.0, 30.0)
    results = [_push_in_pieces(Fleet(_settings(band, method), SensorCapacity(10)), batches, k, seed=k)
               for k in (1, 3, 17)]
    (sid, ts, ph), emissary = results[0]
    assert ts.size > 1000 and emissary.size > 1000
    for (s2, t2, p2), e2 in results[1:]:
        assert np.array_equal(sid, s2) and np.array_equal(ts, t2) and np.array_equal(ph, p2)
        assert np.array_equal(emissary, e2)


def test_the_event_method_gives_one_phase_channel_and_2_pi_per_beat():
    t = T0 + np.arange(250 * 12, dtype=np.int64) * 4_000           # 250 Hz, 12 s
    beat = np.zeros((t.size, 2))
    beat[::200, 0] = 1.0                                         # one beat per 0.8 s on the first lead
    fleet = Fleet(_settings((5.0, 30.0), "events"), SensorCapacity(10))
    (sid, ts, ph), _ = _push_in_pieces(fleet, [SampleBatch("ecg", t, beat, raw=True)], 2, seed=1)
    assert ph.shape[1] == 1
    period = np.diff(ts[np.flatnonzero(ph[:, 0] == 0.0)])        # the beats are where the phase is 0
    assert period.size >= 8 and set(period.tolist()) == {800_000}


def test_raw_samples_without_a_band_and_a_change_of_kind_are_refused_as_schema():
    t = T0 + np.arange(10, dtype=np.int64) * 4_000
    fleet = Fleet(_settings(band=None), SensorCapacity(10))
    step = fleet.push([SampleBatch("a", t, np.zeros((10, 1)), raw=True)], now_us=T0)
    assert [(r.reason, r.text) for r in step.refusals] == [
        ("schema", "raw value samples need kairos.phase_band, the band their phase is extracted from "
                   "(docs/raw-signals.md)")]
    fleet = Fleet(_settings(), SensorCapacity(10))
    assert not fleet.push([SampleBatch("a", t, np.zeros((10, 1)), raw=True)], now_us=T0).refusals
    step = fleet.push([SampleBatch("a", t + 100_000, np.zeros((10, 1)))], now_us=T0)
    assert [(r.reason, r.text) for r in step.refusals] == [("schema", "phases where the sensor sends raw values")]


# --- the flow and the archive -------------------------------------------------------------------------


def _raw_file(path, rate=250.0, seconds=30.0):
    t = np.arange(int(rate * seconds)) / rate
    rng = np.random.default_rng(5)
    with open(path, "w") as f:
        for k, s in enumerate(t):
            f.write(json.dumps({"sensor": "alpha", "t": 1764115200 + s,
                                "value": float(40 * np.cos(2 * np.pi * 10.0 * s + 0.3) + 5 * rng.normal())}) + "\n")
            f.write(json.dumps({"sensor": "noise", "t": 1764115200 + s, "value": float(rng.normal())}) + "\n")


def _config(tmp_path, data, **kairos):
    return parse_config({"source": {"kind": "file", "path": str(data)}, "metrics": {"enabled": False},
                         "kairos": {"tau_scale": 0.1, "velocity_span": 0.02, **kairos},
                         "master": {"tau_max": 20.0, "min_span": 5.0},
                         "memory": {"storage": {"path": str(tmp_path / "archive")}}})


def test_a_raw_file_through_the_flow_collapses_the_rhythm_not_the_noise_and_archives_the_values(tmp_path):
    data = tmp_path / "raw.jsonl"
    _raw_file(data)
    book = run_flow(_config(tmp_path, data, phase_band=[8, 12]), out=io.StringIO(), progress=io.StringIO())
    assert book.totals()[0] == 2 * 7500
    root = tmp_path / "archive"
    events = open_dataset(root / "events").to_table().to_pylist()
    assert {(e["sensor"], e["event"]) for e in events} == {("alpha", "collapse")}
    stored = open_dataset(root / "input").to_table().sort_by([("sensor", "ascending"), ("t", "ascending")])
    assert stored["phase"].null_count == stored.num_rows                 # raw rows: values, no phase
    sent = [json.loads(line) for line in data.read_text().splitlines()]
    want = sorted((s["sensor"], s["value"]) for s in sent)
    assert sorted(zip(stored["sensor"].to_pylist(), (v[0] for v in stored["value"].to_pylist()))) == want
    assert not any(verify_archive(root).values())


def test_raw_samples_without_a_band_are_dead_letters_that_say_so(tmp_path):
    data = tmp_path / "raw.jsonl"
    _raw_file(data, seconds=1.0)
    run_flow(_config(tmp_path, data), out=io.StringIO(), progress=io.StringIO())
    letters = [json.loads(x) for x in (tmp_path / "archive" / "dead-letters" / "worker-0.jsonl").read_text().splitlines()]
    assert {x["reason"] for x in letters} == {"schema"}
    assert all("kairos.phase_band" in x["error"] for x in letters)
    assert sum(1 if x["omitted"] is None else 1 + x["omitted"] for x in letters) >= 2 * 250


def test_older_input_files_without_value_read_verify_and_compact_beside_new_ones(tmp_path):
    root = tmp_path / "archive"
    old_schema = pa.schema([f.with_nullable(f.name == "cell") for f in INPUT if f.name != "value"],
                           metadata=INPUT.metadata)
    old = pa.table({"sensor": ["a"], "cell": [None], "t": pa.array([T0], pa.timestamp("us", tz="UTC")),
                    "phase": [[0.5]]}, schema=old_schema)
    new = pa.table({"sensor": ["b"], "cell": [None], "t": pa.array([T0 + 1], pa.timestamp("us", tz="UTC")),
                    "phase": pa.array([None], pa.list_(pa.float64())), "value": [[7.0]]}, schema=INPUT)
    # The older file as an earlier version wrote it: its own schema, listed in the manifest.
    rel = "date=2025-11-26/hour=00/part-00000000.arrow"
    (root / "input" / rel).parent.mkdir(parents=True)
    with pa.ipc.new_file(str(root / "input" / rel), old.schema) as writer:
        writer.write_table(old)
    digest = hashlib.sha256((root / "input" / rel).read_bytes()).hexdigest()
    (root / "_meta" / "input").mkdir(parents=True)
    (root / "_meta" / "input" / "MANIFEST.jsonl").write_text(manifest_line(rel, 1, digest, GENESIS) + "\n")
    writer = ArchiveWriter(root, "input")
    writer.write(new)
    writer.close()
    rows = open_dataset(root / "input").to_table().sort_by("t").select(["sensor", "phase", "value"]).to_pylist()
    assert rows == [{"sensor": "a", "phase": [0.5], "value": None}, {"sensor": "b", "phase": None, "value": [7.0]}]
    assert not any(verify_archive(root).values())
    (root / "_meta" / "input" / "MANIFEST.jsonl").unlink()      # a lost manifest is rebuilt from both files
    repair_dataset(root / "input")
    assert not any(verify_archive(root).values())
    compact_archive(root)
    (merged,) = listed_files(root / "input")                   # one file now, of this version's schema
    assert pa.ipc.open_file(str(merged[1])).schema.equals(INPUT)
    assert open_dataset(root / "input").to_table().sort_by("t").select(["sensor", "phase", "value"]).to_pylist() == rows
    assert not any(verify_archive(root).values())


def test_replay_sends_raw_rows_back_as_raw_samples(tmp_path):
    from connectors.replay_source import ArchiveInput, ArchiveSlices

    data = tmp_path / "raw.jsonl"
    _raw_file(data, seconds=2.0)
    run_flow(_config(tmp_path, data, phase_band=[8, 12]), out=io.StringIO(), progress=io.StringIO())
    slices = ArchiveSlices(ArchiveInput(str(tmp_path / "archive")), None)
    batches = []
    while True:
        try:
            batches.extend(slices.next_batch())
        except StopIteration:
            break
    assert batches and all(b.raw for b in batches)
    assert sum(len(b) for b in batches) == 2 * 500


def test_the_run_summary_and_the_report_show_raw_sensors_with_their_rate_and_band(tmp_path):
    from flows.report import write_report

    data = tmp_path / "raw.jsonl"
    with open(data, "w") as f:
        for k in range(250 * 12):
            f.write(json.dumps({"sensor": "alpha", "t": 1764115200 + k / 250,
                                "value": float(np.cos(2 * np.pi * 10.0 * k / 250))}) + "\n")
            if k % 25 == 0:     # 10 Hz: too slow for the band
                f.write(json.dumps({"sensor": "slow", "t": 1764115200 + k / 250, "value": 1.0}) + "\n")
    out = io.StringIO()
    run_flow(_config(tmp_path, data, phase_band=[8, 12]), out=out, progress=io.StringIO())
    text = out.getvalue()
    assert [line.split()[:4] for line in text.splitlines() if line.startswith(("alpha ", "slow "))] == [
        ["alpha", "raw", "250", "Hz"], ["slow", "raw", "10", "Hz"]]
    assert ("raw sensors (2): phase from the analytic signal of the band 8 to 12 Hz (kairos.phase_band), "
            "stamped at the filter's centre sample") in text
    assert "  slow: no phase at 10 Hz: phase band [8, 12] Hz needs a rate above 24 Hz (twice f_hi), got 10 Hz" in text
    result = write_report(tmp_path / "archive", tmp_path / "report.png", phase_band=(8.0, 12.0))
    assert [(r["sensor"], r["kind"]) for r in result.rows] == [("alpha", "raw 250 Hz")]


def test_raw_sensors_join_the_mesh_with_their_extracted_phases(tmp_path):
    """Four 10 Hz sinusoids 0.3 rad apart in one cell: the cell's r is that of their phase offsets."""
    data = tmp_path / "cell.jsonl"
    offsets = 0.3 * np.arange(4)
    with open(data, "w") as f:
        for k in range(250 * 20):
            for j, phi in enumerate(offsets):
                f.write(json.dumps({"sensor": f"eeg/{j}", "cell": "head", "t": 1764115200 + k / 250,
                                    "value": float(50 * np.cos(2 * np.pi * 10.0 * k / 250 + phi))}) + "\n")
    config = parse_config({"source": {"kind": "file", "path": str(data)}, "metrics": {"enabled": False},
                           "kairos": {"tau_scale": 0.1, "velocity_span": 0.02, "phase_band": [8, 12]},
                           "master": {"tau_max": 20.0, "min_span": 5.0},
                           "sync": {"mesh_enabled": True, "mesh": {"window": 2.0}},
                           "memory": {"storage": {"path": str(tmp_path / "archive")}}})
    run_flow(config, out=io.StringIO(), progress=io.StringIO())
    rows = open_dataset(tmp_path / "archive" / "mesh_sync").to_table()
    r = np.array([x["r"] for x in rows.to_pylist() if x["cell"] == "head" and x["n_sensors"] == 4])
    assert r.size >= 15                  # one row per sync.mesh.publish_interval (1 s) after the warm-up
    np.testing.assert_allclose(r, abs(np.exp(1j * offsets).mean()), atol=1e-3)


@pytest.mark.parametrize("method", ["hilbert", "events"])
def test_a_key_group_resumed_from_its_snapshot_mid_stream_ends_as_the_uninterrupted_one(method):
    """A restart: the raw lanes' filters, rings and beat detectors are in the snapshot, so phases and grid
    rows after the resume equal the uninterrupted run's, bit for bit."""
    import pickle

    t = T0 + np.arange(360 * 16, dtype=np.int64) * 2_778
    beat = np.zeros(t.size)
    beat[::290] = 1.0
    x = np.convolve(beat, np.hanning(9), "same")[:, None]
    batches = [SampleBatch("ecg", t, x, raw=True)]
    settings = _settings((10.0, 30.0), method)
    (_, _, whole), e_whole = _push_in_pieces(Fleet(settings, SensorCapacity(10)), batches, 1, seed=0)

    first = Fleet(settings, SensorCapacity(10))
    half = t.size // 2 + 17
    s1 = first.push([b.take(np.arange(half)) for b in batches], now_us=T0 + 10**12)
    resumed = Fleet(settings, SensorCapacity(10), pickle.loads(pickle.dumps(first.table)))
    s2 = resumed.push([b.take(np.arange(half, t.size)) for b in batches], now_us=T0 + 10**12)
    s3 = resumed.flush()
    phases = np.concatenate([p[2] for s in (s1, s2, s3) for p in s.phases])
    emissary = np.concatenate([s.resonance.emissary.T for s in (s1, s2, s3)])
    assert np.array_equal(phases, whole) and np.array_equal(emissary, e_whole)


def test_a_light_node_takes_raw_sensors_too():
    t = T0 + np.arange(250 * 20, dtype=np.int64) * 4_000
    x = np.cos(2 * np.pi * 10.0 * (t - T0) * 1e-6)[:, None]
    settings = dataclasses.replace(_settings(), light=True)
    runs = [_push_in_pieces(Fleet(settings, SensorCapacity(10)), [SampleBatch("a", t, x, raw=True)], k, seed=k)
            for k in (1, 5)]
    (_, _, phases), emissary = runs[0]
    assert phases.shape[0] > 4000 and abs(emissary[-1]) > 0.999     # a pure rhythm: |T| near 1
    assert np.array_equal(emissary, runs[1][1])


def test_raw_samples_out_of_order_within_the_lateness_give_the_in_order_phases_in_any_split():
    rng = np.random.default_rng(1)
    t = T0 + np.arange(250 * 20, dtype=np.int64) * 4_000
    x = np.cos(2 * np.pi * 10.0 * (t - T0) * 1e-6)[:, None] + 0.1 * rng.normal(size=(t.size, 1))
    arrival = np.arange(t.size).reshape(-1, 5)       # shuffled within 20 ms; sync.lateness 50 ms
    for block in arrival:
        rng.shuffle(block)
    arrival = arrival.ravel()
    shuffled = [SampleBatch("a", t[arrival], x[arrival], raw=True)]
    in_order = _push_in_pieces(Fleet(_settings(), SensorCapacity(10)), [SampleBatch("a", t, x, raw=True)], 1, 0)
    for pieces in (1, 13, 200):
        got = _push_in_pieces(Fleet(_settings(lateness_us=50_000), SensorCapacity(10)), shuffled, pieces, pieces)
        assert np.array_equal(got[0][2], in_order[0][2]) and np.array_equal(got[1], in_order[1])


def test_resuming_raw_sensors_with_another_band_or_method_is_refused_naming_both():
    import pickle

    t = T0 + np.arange(500, dtype=np.int64) * 4_000
    fleet = Fleet(_settings(), SensorCapacity(10))
    fleet.push([SampleBatch("a", t, np.cos(t * 1e-4)[:, None], raw=True)], now_us=T0)
    table = pickle.loads(pickle.dumps(fleet.table))
    for other in (_settings(band=(7.0, 13.0)), _settings(method="events"), _settings(band=None)):
        with pytest.raises(ValueError, match=r"from 8 to 12 Hz \(hilbert\), and the config asks for kairos.phase_band"):
            Fleet(other, SensorCapacity(10), pickle.loads(pickle.dumps(table)))
    assert Fleet(_settings(), SensorCapacity(10), table).names == ["a"]
