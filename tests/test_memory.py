"""The archive as memory: retrieve, reconstruct, verify, compact, replay; DuckDB reads it.

Two archives: a hand-built one spanning four hours (known rows, many small
files) for the query tests, and one written by a real run of the flow on the
synthetic sensors for verify, compact and replay.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml

from connectors.archive import MANIFEST, ArchiveWriter, compact_archive, listed_entries, meta_dir, open_dataset
from connectors.memory import SensorStates, TemporalMemory, as_micros
from flows.run import run_flow
from schemas.datasets import DATASETS, TIMESTAMP
from schemas.config import parse_config
from tests.conftest import BIN, clean_env

T0 = 1_735_689_600_000_000  # 2025-01-01T00:00:00Z
SECOND = 1_000_000
HOURS = 4
SENSORS = ("a", "b", "c")


def _table(dataset: str, columns: dict) -> pa.Table:
    schema = DATASETS[dataset]
    arrays = []
    for field in schema:
        value = columns[field.name]
        if field.type == TIMESTAMP:
            arrays.append(pa.array(np.asarray(value, np.int64), pa.int64()).cast(TIMESTAMP))
        else:
            arrays.append(pa.array(value, field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


@pytest.fixture(scope="module")
def hours(tmp_path_factory):
    """Four hours of 10 s rows for three sensors, written in 5-minute flushes (several files per hour).

    coherence_sync of sensor s at time t is a known function; sensor 'a'
    collapses at 01:00:00 and dissipates at 02:30:00.
    """
    root = tmp_path_factory.mktemp("hours")
    t = T0 + np.arange(0, HOURS * 3600, 10) * SECOND
    writers = {name: ArchiveWriter(root, name, flush_rows=10**9, flush_seconds=10**9)
               for name in ("coherence_history", "temporal_signatures", "events")}
    for lo in range(0, len(t), 30):  # 30 rows = 5 minutes
        chunk = t[lo:lo + 30]
        n = len(chunk)
        for k, s in enumerate(SENSORS):
            coh = ((chunk - T0) // SECOND % 1000) / 1000.0 * (k + 1) / 3
            writers["coherence_history"].write(_table("coherence_history", {
                "sensor": [s] * n, "t": chunk, "coherence_master": coh, "coherence_emissary": coh,
                "coherence_sync": coh, "delta_phase": np.zeros(n),
                "state": ["collapsed" if s == "a" and T0 + 3600 * SECOND <= x < T0 + 9000 * SECOND
                          else "dissipated" for x in chunk]}))
            for transducer in ("emissary", "master"):
                writers["temporal_signatures"].write(_table("temporal_signatures", {
                    "sensor": [s] * n, "cell": [None] * n, "transducer": [transducer] * n, "t": chunk,
                    "t_re": coh, "t_im": np.zeros(n), "coherence": coh ** 2,
                    "n_products": np.full(n, 100 if transducer == "emissary" else 1000)}))
        for w in writers.values():
            w.flush()
    writers["events"].write(_table("events", {
        "event_id": ["e1", "e2"], "event": ["collapse", "dissipate"], "reason": [None, "coherence"],
        "sensor": ["a", "a"], "cell": [None, None], "t": [T0 + 3600 * SECOND, T0 + 9000 * SECOND],
        "coherence_sync": [0.99, 0.5], "t_sync_re": [0.99, 0.7], "t_sync_im": [0.0, 0.0],
        "t_master_re": [0.99, 0.9], "t_master_im": [0.0, 0.0], "t_emissary_re": [0.99, 0.5],
        "t_emissary_im": [0.0, 0.0], "delta_phase": [0.0, 0.4]}))
    for w in writers.values():
        w.close()
    return root


def test_retrieve_a_minute_opens_only_that_hours_files(hours):
    memory = TemporalMemory(hours)
    all_files = memory.files("coherence_history")
    in_hour_2 = [f for f in all_files if "hour=02" in str(f)]
    assert len(all_files) == HOURS * 12 and len(in_hour_2) == 12  # many small files
    table = memory.retrieve("2025-01-01T02:10:00Z", "2025-01-01T02:11:00Z", sensors=["b"])
    assert memory.files_opened == 12  # the hour of the range, nothing else
    t = table["t"].cast(pa.int64()).to_numpy()
    np.testing.assert_array_equal(t, T0 + np.arange(7800, 7861, 10) * SECOND)  # 02:10:00 to 02:11:00 inclusive
    assert set(table["sensor"].to_pylist()) == {"b"}
    expected = ((t - T0) // SECOND % 1000) / 1000.0 * 2 / 3
    np.testing.assert_allclose(table["coherence_sync"].to_numpy(), expected)


def test_retrieve_accepts_epoch_seconds_and_names_bad_input(hours):
    memory = TemporalMemory(hours)
    a = memory.retrieve(T0 / 1e6 + 60, T0 / 1e6 + 120, dataset="temporal_signatures")
    assert a.num_rows == 7 * 3 * 2
    with pytest.raises(ValueError, match="unknown dataset"):
        memory.retrieve(0, 1, dataset="nope")
    with pytest.raises(ValueError, match="after end"):
        memory.retrieve(10, 5)


def test_reconstruct_between_two_signatures_returns_the_earlier(hours):
    memory = TemporalMemory(hours)
    at = T0 + 3600 * SECOND + 15 * SECOND  # between the rows of 01:00:10 and 01:00:20
    state = memory.reconstruct_coherence("2025-01-01T01:00:15Z", "c")
    assert state.at_us == at
    assert state.master.t_us == state.emissary.t_us == state.sync.t_us == T0 + 3610 * SECOND
    assert state.master.n_products == 1000 and state.emissary.n_products == 100
    assert state.T_sync == (state.master.T + state.emissary.T) / 2
    assert not state.collapsed and state.last_event is None


def test_reconstruct_knows_the_collapse_state_from_the_events(hours):
    memory = TemporalMemory(hours)
    assert not memory.reconstruct_coherence("2025-01-01T00:59:59Z", "a").collapsed
    inside = memory.reconstruct_coherence("2025-01-01T01:00:00Z", "a")
    assert inside.collapsed and inside.last_event["event"] == "collapse"
    after = memory.reconstruct_coherence("2025-01-01T03:00:00Z", "a")
    assert not after.collapsed and after.last_event["event"] == "dissipate"
    assert after.sync.state == "dissipated"


def test_rows_to_scan_counts_the_rows_of_the_range_hours_files_from_the_manifest(hours):
    memory = TemporalMemory(hours)
    assert memory.rows_to_scan("coherence_history", T0 + 7800 * SECOND, T0 + 7860 * SECOND) == 360 * 3
    assert memory.rows_to_scan("coherence_history") == HOURS * 360 * 3
    assert memory.files_opened == 0  # nothing read


def test_last_states_are_each_sensors_newest_row_and_a_second_call_opens_no_file(hours):
    cache = SensorStates()
    memory = TemporalMemory(hours, sensor_states=cache)
    table = memory.last_states()
    assert memory.files_opened == HOURS * 12
    assert table["sensor"].to_pylist() == list(SENSORS)
    assert table["t"].cast(pa.int64()).to_pylist() == [T0 + (HOURS * 3600 - 10) * SECOND] * 3
    everything = memory.retrieve(T0 / 1e6, T0 / 1e6 + HOURS * 3600)
    own = [everything.filter(pc.equal(everything["sensor"], s)) for s in SENSORS]
    assert table.equals(pa.concat_tables([rows.slice(rows.num_rows - 1) for rows in own]))
    again = TemporalMemory(hours, sensor_states=cache)
    assert again.last_states().equals(table) and again.files_opened == 0


def test_last_states_after_new_files_and_a_compaction(hours, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(hours, root)
    cache = SensorStates()
    first = TemporalMemory(root, sensor_states=cache).last_states()
    later = T0 + HOURS * 3600 * SECOND  # the next hour: a new file
    with ArchiveWriter(root, "coherence_history") as writer:
        writer.write(_table("coherence_history", {
            "sensor": ["b"], "t": [later], "coherence_master": [0.5], "coherence_emissary": [0.5],
            "coherence_sync": [0.25], "delta_phase": [0.0], "state": ["dissipated"]}))
    memory = TemporalMemory(root, sensor_states=cache)
    second = memory.last_states()
    assert memory.files_opened == 1  # only the new file
    assert second["coherence_sync"].to_pylist() == [first["coherence_sync"][0].as_py(), 0.25,
                                                    first["coherence_sync"][2].as_py()]
    compact_archive(root)  # every file merged into new ones: the answer is the same, from them
    memory = TemporalMemory(root, sensor_states=cache)
    assert memory.last_states().equals(second) and memory.files_opened == HOURS  # the new hour kept its one file
    assert set(cache.files) == {entry.name for entry in listed_entries(root / "coherence_history")}


def test_consistently_raises_a_damage_the_manifests_did_not_change_for(hours, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(hours, root)
    memory = TemporalMemory(root)
    memory.files("events")[0].unlink()
    calls = []

    def query():
        calls.append(1)
        return memory.retrieve(T0 / 1e6, T0 / 1e6 + 60, dataset="events")

    from connectors.archive import ArchiveError

    with pytest.raises(ArchiveError, match="listed in MANIFEST.jsonl but missing"):
        memory.consistently(query)
    assert len(calls) == 1  # no retry: nothing was compacted meanwhile


def test_as_micros_rejects_a_naive_datetime():
    import datetime as dt

    with pytest.raises(ValueError, match="no zone"):
        as_micros(dt.datetime(2025, 1, 1))


def test_duckdb_reads_the_archive(hours):
    duckdb = pytest.importorskip("duckdb", reason="duckdb is a test dependency (pyproject [test])")
    history = open_dataset(hours / "coherence_history")  # noqa: F841  (DuckDB finds it by name)
    rows = duckdb.sql(
        "select sensor, count(*) as n, max(coherence_sync) as top from history "
        "where hour = '02' group by sensor order by sensor"
    ).fetchall()
    assert [(s, n) for s, n, _ in rows] == [(s, 360) for s in SENSORS]


# --------------------------------------------------------------------------
# An archive written by the flow.


@pytest.fixture(scope="module")
def flow_archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("flow") / "archive"
    config = {
        "source": {"kind": "synthetic", "duration": 40.0, "sensors": [
            {"name": "steady-1", "kind": "steady"}, {"name": "switch-1", "kind": "switching", "freq_hz": 2.0},
            {"name": "noise-1", "kind": "noise", "channels": 2}]},
        "memory": {"storage": {"path": str(root)}, "flush_rows": 2000},  # several files per dataset
        "sync": {"mesh_enabled": True},
        "metrics": {"enabled": False},
    }
    import io

    run_flow(parse_config(config), out=io.StringIO(), progress=io.StringIO())
    return root, config


def _cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, env=clean_env(), cwd=cwd, timeout=300)


def _sorted(root, dataset: str) -> pa.Table:
    table = open_dataset(root / dataset).to_table().drop_columns(["date", "hour"])
    return table.sort_by([(c, "ascending") for c in table.column_names
                          if not pa.types.is_list(table.schema.field(c).type)])


def test_replay_through_the_flow_reproduces_events_and_signatures(flow_archive, tmp_path):
    root, config = flow_archive
    replayed = tmp_path / "replayed"
    cfg = tmp_path / "replay.yaml"
    cfg.write_text(yaml.safe_dump({**config, "memory": {"storage": {"path": str(replayed)}}}))
    proc = _cli("replay", str(root), "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    assert "event time 100.0%" in proc.stderr
    for dataset in ("events", "temporal_signatures", "coherence_history", "input"):
        assert _sorted(replayed, dataset).equals(_sorted(root, dataset)), dataset
    assert open_dataset(replayed / "events").count_rows() >= 3  # steady and switch collapse, switch dissipates


def test_replay_refuses_to_write_into_the_archive_it_reads(flow_archive, tmp_path):
    root, config = flow_archive
    cfg = tmp_path / "same.yaml"
    cfg.write_text(yaml.safe_dump(config))
    proc = _cli("replay", str(root), "--config", str(cfg))
    assert proc.returncode == 2 and "would write into the archive it replays" in proc.stderr


def test_replay_a_sensor_and_time_range_only(flow_archive, tmp_path):
    root, config = flow_archive
    replayed = tmp_path / "part"
    cfg = tmp_path / "part.yaml"
    cfg.write_text(yaml.safe_dump({**config, "memory": {"storage": {"path": str(replayed)}}}))
    proc = _cli("replay", str(root), "--config", str(cfg), "--sensor", "steady-1",
                "--start", "2025-01-01T00:00:05Z", "--end", "2025-01-01T00:00:25Z")
    assert proc.returncode == 0, proc.stderr
    rows = open_dataset(replayed / "input").to_table()
    assert set(rows["sensor"].to_pylist()) == {"steady-1"}
    assert rows.num_rows == 2001  # 5 s to 25 s inclusive at 100 Hz


def _copy(flow_archive, tmp_path):
    root, _ = flow_archive
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    return copy


def test_verify_passes_on_an_intact_archive(flow_archive):
    root, _ = flow_archive
    proc = _cli("memory", "verify", "--archive", str(root))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count(": ok") == len(DATASETS)


def _first_file(root, dataset="temporal_signatures"):
    line = (meta_dir(root / dataset) / MANIFEST).read_text().splitlines()[0]
    return json.loads(line)["file"]


def test_verify_names_a_changed_byte(flow_archive, tmp_path):
    root = _copy(flow_archive, tmp_path)
    name = _first_file(root)
    path = root / "temporal_signatures" / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    proc = _cli("memory", "verify", "--archive", str(root))
    assert proc.returncode == 1
    assert name in proc.stdout and "temporal_signatures" in proc.stdout


def test_verify_names_a_missing_file(flow_archive, tmp_path):
    root = _copy(flow_archive, tmp_path)
    name = _first_file(root, "input")
    (root / "input" / name).unlink()
    proc = _cli("memory", "verify", "--archive", str(root))
    assert proc.returncode == 1 and name in proc.stdout


def test_verify_names_an_extra_file(flow_archive, tmp_path):
    root = _copy(flow_archive, tmp_path)
    name = _first_file(root, "events")
    extra = (root / "events" / name).with_name("part-99999999.arrow")
    shutil.copy(root / "events" / name, extra)
    proc = _cli("memory", "verify", "--archive", str(root))
    assert proc.returncode == 1 and "part-99999999.arrow" in proc.stdout


def test_verify_names_reordered_manifest_lines(flow_archive, tmp_path):
    root = _copy(flow_archive, tmp_path)
    manifest = meta_dir(root / "input") / MANIFEST
    lines = manifest.read_text().splitlines()
    assert len(lines) >= 2
    lines[0], lines[1] = lines[1], lines[0]
    manifest.write_text("\n".join(lines) + "\n")
    proc = _cli("memory", "verify", "--archive", str(root))
    assert proc.returncode == 1
    assert json.loads(lines[0])["file"] in proc.stdout or json.loads(lines[1])["file"] in proc.stdout


def test_the_commands_read_an_archive_of_the_older_layout_and_compact_moves_it(flow_archive, tmp_path):
    import pyarrow.dataset as ds

    from tests.test_archive import to_older_layout

    root = _copy(flow_archive, tmp_path)
    datasets = sorted(d.name for d in root.iterdir() if d.name in DATASETS)
    before = {d: _sorted(root, d) for d in datasets}
    for dataset in datasets:
        to_older_layout(root / dataset)
    assert not (root / "_meta").exists() and (root / "input" / MANIFEST).exists()

    proc = _cli("memory", "verify", "--archive", str(root))
    assert proc.returncode == 0 and proc.stdout.count(": ok") == len(DATASETS), proc.stdout + proc.stderr
    proc = _cli("memory", "retrieve", "--archive", str(root), "--start", "2025-01-01T00:00:10Z",
                "--end", "2025-01-01T00:00:10Z", "--format", "json")
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 3, proc.stderr
    assert _cli("report", str(root), "--out", str(tmp_path / "older.png")).returncode == 0
    assert not (root / "_meta").exists()  # readers change nothing

    proc = _cli("memory", "compact", "--archive", str(root))
    assert proc.returncode == 0, proc.stderr
    for dataset in datasets:
        assert not (root / dataset / MANIFEST).exists() and (meta_dir(root / dataset) / MANIFEST).exists()
        assert _sorted(root, dataset).equals(before[dataset]), dataset
        assert ds.dataset(root / dataset, format="ipc", partitioning="hive").count_rows() == before[dataset].num_rows
    assert _cli("memory", "verify", "--archive", str(root)).returncode == 0


def test_compact_keeps_every_row_and_verifies(flow_archive, tmp_path):
    root = _copy(flow_archive, tmp_path)
    before = {d: _sorted(root, d) for d in DATASETS if (root / d).exists()}
    files_before = len(list(root.glob("*/date=*/hour=*/*.arrow")))
    proc = _cli("memory", "compact", "--archive", str(root))
    assert proc.returncode == 0, proc.stderr
    assert len(list(root.glob("*/date=*/hour=*/*.arrow"))) < files_before
    for dataset, table in before.items():
        assert _sorted(root, dataset).equals(table), dataset
    assert _cli("memory", "verify", "--archive", str(root)).returncode == 0


@pytest.mark.parametrize("dataset", ["input", "witnessing_logs"])
def test_a_rerun_over_an_archive_with_an_unreadable_file_stops_naming_the_file(flow_archive, tmp_path, dataset):
    """The writer's high-water marks (input) and the witness log's continuation
    (witnessing_logs) read committed files as a run starts: a damaged one is named."""
    root = _copy(flow_archive, tmp_path)
    _, config = flow_archive
    name = _first_file(root, dataset)
    (root / dataset / name).write_bytes(b"not an Arrow file")
    cfg = tmp_path / "rerun.yaml"
    cfg.write_text(yaml.safe_dump({**config, "memory": {**config["memory"], "storage": {"path": str(root)}}}))
    proc = _cli("run", "--config", str(cfg))
    assert proc.returncode == 1
    assert f"{dataset}/{name}" in proc.stderr
    assert "becomingone memory verify" in proc.stderr


def test_commands_reading_an_unreadable_file_name_it_and_exit_1(flow_archive, tmp_path):
    root = _copy(flow_archive, tmp_path)
    _, config = flow_archive
    damaged = {dataset: f"{dataset}/{_first_file(root, dataset)}" for dataset in ("coherence_history", "input")}
    for rel in damaged.values():
        (root / rel).write_bytes(b"not an Arrow file")
    cfg = tmp_path / "replay.yaml"
    cfg.write_text(yaml.safe_dump({**config, "memory": {"storage": {"path": str(tmp_path / "replayed")}}}))
    for args, rel in ((("memory", "retrieve", "--archive", str(root), "--start", "0", "--end", "2e9"),
                       damaged["coherence_history"]),
                      (("memory", "reconstruct", "--archive", str(root), "--at", "2e9", "--sensor", "steady-1"),
                       damaged["coherence_history"]),
                      (("report", str(root), "--out", str(tmp_path / "report.png")), damaged["coherence_history"]),
                      (("replay", str(root), "--config", str(cfg)), damaged["input"])):
        proc = _cli(*args)
        assert proc.returncode == 1, (args, proc.stderr)
        assert rel in proc.stderr and "becomingone memory verify" in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr, args
    name = damaged["input"].split("/", 1)[1]
    proc = _cli("memory", "verify", "--archive", str(root))
    assert proc.returncode == 1 and f"{name}: changed" in proc.stdout


def test_retrieve_and_reconstruct_commands(flow_archive):
    root, _ = flow_archive
    proc = _cli("memory", "retrieve", "--archive", str(root), "--start", "2025-01-01T00:00:10Z",
                "--end", "2025-01-01T00:00:12Z", "--sensor", "steady-1", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["t"] for r in rows] == ["2025-01-01T00:00:10Z", "2025-01-01T00:00:11Z", "2025-01-01T00:00:12Z"]
    table = pa.ipc.open_stream(_arrow_stdout(root, "1735689610", "1735689610.5")).read_all()
    assert table.num_rows == 3  # one row per sensor at 00:00:10 (epoch seconds work too)
    proc = _cli("memory", "reconstruct", "--archive", str(root), "--at", "2025-01-01T00:00:30.5Z",
                "--sensor", "steady-1")
    assert proc.returncode == 0, proc.stderr
    assert "master    t 2025-01-01T00:00:30.000000Z" in proc.stdout
    assert "collapsed (last transition: collapse" in proc.stdout
    proc = _cli("memory", "retrieve", "--archive", str(root), "--start", "soon", "--end", "later")
    assert proc.returncode == 2 and "--start 'soon'" in proc.stderr


def test_retrieve_writes_list_columns_as_csv(flow_archive):
    # input/ holds the phase as a list per row (noise-1 has two channels): CSV cannot hold a list,
    # so the cell is the list as JSON text, which reads back to the same numbers.
    import csv
    import io

    root, _ = flow_archive
    proc = _cli("memory", "retrieve", "--archive", str(root), "--dataset", "input", "--start", "2025-01-01T00:00:10Z",
                "--end", "2025-01-01T00:00:10.02Z", "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    expected = _sorted(root, "input").filter(pa.compute.and_(
        pa.compute.greater_equal(pa.compute.cast(_sorted(root, "input")["t"], pa.int64()), 1_735_689_610_000_000),
        pa.compute.less_equal(pa.compute.cast(_sorted(root, "input")["t"], pa.int64()), 1_735_689_610_020_000)))
    assert len(rows) == expected.num_rows == 9
    got = sorted((r["sensor"], r["t"], tuple(json.loads(r["phase"]))) for r in rows)
    want = sorted((r["sensor"], r["t"].strftime("%Y-%m-%dT%H:%M:%S.%fZ"), tuple(r["phase"]))
                  for r in expected.to_pylist())
    assert [(s, p) for s, _, p in got] == [(s, p) for s, _, p in want]
    assert {len(p) for s, _, p in got if s == "noise-1"} == {2}


def _arrow_stdout(root, start: str, end: str) -> bytes:
    proc = subprocess.run([str(BIN), "memory", "retrieve", "--archive", str(root), "--start", start, "--end", end,
                           "--format", "arrow"], capture_output=True, env=clean_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_report_command_writes_a_png_and_prints_its_path(flow_archive, tmp_path):
    root, _ = flow_archive
    out = tmp_path / "coherence.png"
    proc = _cli("report", str(root), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(out)
    assert "sensor switch-1" in proc.stdout and "collapses 1" in proc.stdout
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000


def test_replay_into_kafka_sends_every_archived_sample(flow_archive, bootstrap):
    from tests.conftest import read_topic, unique_topic

    root, _ = flow_archive
    topic = unique_topic()
    proc = _cli("replay", str(root), "--to-kafka", "--bootstrap", bootstrap, "--topic", topic, "--format", "json",
                "--sensor", "switch-1", "--end", "2025-01-01T00:00:09.995Z")
    assert proc.returncode == 0, proc.stderr
    assert "replayed 1,000 samples" in proc.stdout
    messages = read_topic(bootstrap, topic, expected=1000)
    values = [json.loads(m.value()) for m in messages]
    assert {v["sensor"] for v in values} == {"switch-1"}
    assert {m.key() for m in messages} == {b"switch-1"}


def test_replay_source_holds_each_slice_until_its_event_time_is_due(flow_archive, monkeypatch):
    import connectors.replay_source as sources

    root, _ = flow_archive
    clock = [100.0]
    monkeypatch.setattr(sources.time, "monotonic", lambda: clock[0])
    part = sources.ArchiveSlices(sources.ArchiveInput(str(root), speed=2.0), None)
    first = part.next_batch()  # the first slice sets the origin and is due at once
    assert first and min(int(b.t_us[0]) for b in first) == T0
    assert part.next_batch() == []  # the slice of event second 1 is due 0.5 s later at speed 2
    assert part.due == pytest.approx(100.5)
    clock[0] = 100.49
    assert part.next_batch() == []
    clock[0] = 100.5
    second = part.next_batch()
    assert min(int(b.t_us[0]) for b in second) == T0 + SECOND
