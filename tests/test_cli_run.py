"""`becomingone run` on the embedded default: the streaming flow, its summary, its archive, its exit codes."""

from __future__ import annotations

import collections

from connectors.archive import open_dataset, verify_archive
from tests.conftest import BIN, clean_env, free_port

import subprocess


def _run(*args: str, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, env=clean_env(**(env or {})),
                          cwd=cwd, timeout=300)


def _table(stdout: str) -> dict[str, list[str]]:
    rows = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 8 and parts[1] in {"steady", "drifting", "noise", "switching"}:
            rows[parts[0]] = parts
    return rows


def test_run_on_embedded_default_collapses_coherent_sensors_only(tmp_path):
    proc = _run("run", cwd=tmp_path, env={"BECOMINGONE__METRICS__PORT": str(free_port())})
    assert proc.returncode == 0, proc.stderr
    rows = _table(proc.stdout)
    assert set(rows) == {"steady-1", "drift-1", "noise-1", "switch-1"}
    assert all(r[2] == "12,000" and r[3] == "0" for r in rows.values())  # samples, rejected
    collapses = {name: int(r[4]) for name, r in rows.items()}
    dissipations = {name: int(r[5]) for name, r in rows.items()}
    assert collapses["steady-1"] == 1 and dissipations["steady-1"] == 0
    assert collapses["noise-1"] == 0
    assert collapses["switch-1"] == 1 and dissipations["switch-1"] == 1
    assert rows["steady-1"][7] == "collapsed" and rows["switch-1"][7] == "dissipated"
    assert "event time 100.0%" in proc.stderr  # progress reached the end

    # The archive it wrote says the same, and verifies.
    root = tmp_path / "becomingone-data"
    assert verify_archive(root) == {name: [] for name in verify_archive(root)}
    events = open_dataset(root / "events").to_table().to_pylist()
    by_sensor = collections.defaultdict(list)
    for e in events:
        by_sensor[e["sensor"]].append(e)
    assert [e["event"] for e in by_sensor["switch-1"]] == ["collapse", "dissipate"]
    switch = by_sensor["switch-1"][1]["t"]
    assert (switch.minute, switch.second) >= (1, 0)  # after the switch at 60 s of event time
    assert "noise-1" not in by_sensor
    assert open_dataset(root / "input").count_rows() == 48_000
    assert not (root / "dead-letters").exists()  # nothing was rejected


def test_run_rejects_a_bad_config_with_key_path_and_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("kairos:\n  tau_scale: 1.0\n  velocity_span: 1.5\n")
    proc = _run("run", "--config", str(bad))
    assert proc.returncode == 2
    assert "kairos.velocity_span (1.5) must be smaller than kairos.tau_scale (1.0)" in proc.stderr


def test_run_names_a_metrics_port_in_use_and_exits_1(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _run("run", cwd=tmp_path, env={"BECOMINGONE__METRICS__PORT": str(port)})
    assert proc.returncode == 1
    assert f"cannot serve metrics on 127.0.0.1:{port}" in proc.stderr


def test_run_from_a_file_source_dead_letters_bad_rows(tmp_path):
    data = tmp_path / "samples.jsonl"
    lines = [f'{{"sensor": "s1", "t": {1735689600 + k * 0.01:.2f}, "phase": {0.1 * k}}}' for k in range(300)]
    lines.insert(100, '{"sensor": "s1", "t": 1735689600.505, "phase": 1.0}')  # late: behind the watermark
    data.write_text("\n".join(lines) + "\n")
    cfg = tmp_path / "file.yaml"
    cfg.write_text(f"source:\n  kind: file\n  path: {data}\nmetrics:\n  enabled: false\n"
                   f"memory:\n  storage:\n    path: {tmp_path / 'archive'}\n")
    proc = _run("run", "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    assert "300 samples accepted, 1 rejected (dead letters)" in proc.stdout
    letters = (tmp_path / "archive" / "dead-letters" / "worker-0.jsonl").read_text().splitlines()
    assert len(letters) == 1 and '"reason":"late"' in letters[0]


def test_a_stopped_run_does_not_stop_the_next_one_in_the_same_process(tmp_path):
    import io

    from connectors.kafka.health import draining
    from connectors.stopping import StopSignal
    from flows.run import run_flow
    from schemas.config import parse_config

    StopSignal().request()  # as the first Ctrl-C of an earlier run would
    assert draining()       # what outlives a run: Kafka output no longer waits for the cluster
    config = parse_config({"source": {"kind": "synthetic", "duration": 5.0}, "sink": {"archive": False},
                           "metrics": {"enabled": False}})
    book = run_flow(config, out=io.StringIO(), progress=io.StringIO())
    assert book.totals()[0] == 4 * 500
    assert not draining()   # the new run waits for the cluster again


def test_a_rerun_on_the_same_input_adds_no_archive_rows_and_continues_the_witness_chain(tmp_path):
    import io

    from flows.run import run_flow
    from schemas.config import parse_config
    from schemas.messages import witness_log_digest

    config = parse_config({"source": {"kind": "synthetic", "duration": 20.0}, "metrics": {"enabled": False},
                           "sync": {"mesh_enabled": True}, "memory": {"storage": {"path": str(tmp_path / "archive")}}})
    root = tmp_path / "archive"
    datasets = ("events", "input", "temporal_signatures", "coherence_history", "mesh_sync", "mesh_members")
    run_flow(config, out=io.StringIO(), progress=io.StringIO())
    first = {d: open_dataset(root / d).to_table() for d in datasets}
    log_1 = open_dataset(root / "witnessing_logs").to_table().sort_by("seq")
    run_flow(config, out=io.StringIO(), progress=io.StringIO())  # a restart replaying the same input
    for d in datasets:
        assert open_dataset(root / d).to_table().equals(first[d]), d
    assert verify_archive(root) == {name: [] for name in verify_archive(root)}
    log_2 = open_dataset(root / "witnessing_logs").to_table().sort_by("seq")
    assert log_2["seq"].to_pylist() == list(range(log_2.num_rows)) and log_2.num_rows > log_1.num_rows
    # The second run's first record chains onto the first run's last digest.
    n = log_1.num_rows
    assert log_2["log_sha256"][n].as_py() == witness_log_digest(
        log_1["log_sha256"][n - 1].as_py(), log_2["payload"][n].as_py().encode())
