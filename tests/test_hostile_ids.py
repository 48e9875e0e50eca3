"""Sensor ids are data, never markup or terminal commands (issue: bad input cannot stop or flood the flow).

One run over a JSON-lines file whose sensor ids hold a matplotlib mathtext
fragment and terminal control characters writes an archive; the run's
summary, ``memory retrieve`` and ``report`` are then read back.  Text for a
terminal shows the control characters as visible escapes; machine formats
(CSV, JSON, Arrow) keep the exact ids; the report's PNG is written.
"""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess

import pyarrow as pa
import pytest

from tests.conftest import BIN, clean_env

T0 = 1_764_115_200  # 2025-11-26T00:00:00Z
HOSTILE = {
    "$\\frac{1}{$": "$\\frac{1}{$",  # mathtext that does not parse
    "red\x1b[31mX": "red\\x1b[31mX",
    "cr\rlf\nend": "cr\\rlf\\nend",
    "bell\x07": "bell\\x07",
}
# What a terminal must never receive: C0 controls other than the line ends of
# the output itself, DEL and the C1 controls.
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def _cli(*args: str, binary: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN), *args], capture_output=True, text=not binary, env=clean_env(), timeout=300)


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    """(archive root, finished `becomingone run`) over 4 s of 50 Hz samples of each hostile sensor."""
    tmp = tmp_path_factory.mktemp("hostile")
    data = tmp / "samples.jsonl"
    with data.open("w", encoding="utf-8") as f:
        for k in range(200):
            for i, sensor in enumerate(HOSTILE):
                f.write(json.dumps({"sensor": sensor, "t": T0 + k * 0.02, "phase": 0.3 * k + i}) + "\n")
    cfg = tmp / "cfg.yaml"
    cfg.write_text(f"source:\n  kind: file\n  path: {data}\nmetrics:\n  enabled: false\n"
                   f"memory:\n  storage:\n    path: {tmp / 'archive'}\n")
    proc = _cli("run", "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    return tmp / "archive", proc


def _lines_without_raw_controls(text: str) -> str:
    lines = text.split("\n")  # only \n may end a line; a \r would move the cursor
    assert not any(RAW_CONTROL.search(line) for line in lines), [line for line in lines if RAW_CONTROL.search(line)]
    return text


def test_run_summary_shows_escaped_ids(hostile_run):
    _, proc = hostile_run
    out = _lines_without_raw_controls(proc.stdout)
    for shown in HOSTILE.values():
        assert shown in out
    assert "800 samples accepted" in out


def test_retrieve_table_escapes_and_machine_formats_keep_exact_ids(hostile_run):
    archive, _ = hostile_run
    span = ("--start", str(T0), "--end", str(T0 + 10), "--archive", str(archive), "--dataset", "coherence_history")
    table = _cli("memory", "retrieve", *span)
    assert table.returncode == 0, table.stderr
    for shown in HOSTILE.values():
        assert shown in _lines_without_raw_controls(table.stdout)

    as_json = _cli("memory", "retrieve", *span, "--format", "json")
    assert as_json.returncode == 0, as_json.stderr
    assert {json.loads(line)["sensor"] for line in as_json.stdout.splitlines()} == set(HOSTILE)

    as_csv = _cli("memory", "retrieve", *span, "--format", "csv", binary=True)
    assert as_csv.returncode == 0, as_csv.stderr
    rows = csv.DictReader(io.StringIO(as_csv.stdout.decode("utf-8"), newline=""))
    assert {row["sensor"] for row in rows} == set(HOSTILE)

    as_arrow = _cli("memory", "retrieve", *span, "--format", "arrow", binary=True)
    assert as_arrow.returncode == 0, as_arrow.stderr
    assert set(pa.ipc.open_stream(as_arrow.stdout).read_all()["sensor"].to_pylist()) == set(HOSTILE)


def test_reconstruct_escapes_the_sensor(hostile_run):
    archive, _ = hostile_run
    done = _cli("memory", "reconstruct", "--at", str(T0 + 10), "--sensor", "red\x1b[31mX", "--archive", str(archive))
    assert done.returncode == 0, done.stderr
    assert "sensor red\\x1b[31mX at" in _lines_without_raw_controls(done.stdout)


def test_report_writes_its_png_and_escapes_the_summary(hostile_run):
    archive, _ = hostile_run
    out = archive.parent / "report.png"
    done = _cli("report", str(archive), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for shown in HOSTILE.values():
        assert f"sensor {shown}" in _lines_without_raw_controls(done.stdout)
    assert "Traceback" not in done.stderr and "Glyph" not in done.stderr


def test_plot_texts_are_plain_text():
    from flows.report.figure import _plain

    assert _plain("$\\frac{1}{$") == "$\\frac{1}{$"
    assert _plain("a\x1bb\nc") == "a\\x1bb\\nc"


# --------------------------------------------------------------------------
# Bounded ids: a sensor id or cell name longer than 256 bytes, and a cell named as the global mesh.


def _bounded_rows() -> list[dict]:
    ok_id = "é" * 128  # 256 bytes of UTF-8: the most an id may have
    rows = []
    for k in range(20):
        t = T0 + k * 0.1
        rows += [{"sensor": ok_id, "t": t, "phase": 0.1, "cell": "c" * 256},
                 {"sensor": "x" * 257, "t": t, "phase": 0.1},
                 {"sensor": "good", "t": t, "phase": 0.1, "cell": "*"},
                 {"sensor": "other", "t": t, "phase": 0.1, "cell": "c" * 300}]
    return rows


@pytest.mark.parametrize("fmt", ["jsonl", "jsonl-with-a-bad-line", "arrow"])
def test_ids_are_bounded_and_no_cell_takes_the_global_name(tmp_path, fmt):
    # JSON lines are read as columns in one parse; one line that is not a plain sample (a time that does not
    # parse) makes the decoder read them one by one.
    rows = _bounded_rows()
    data = tmp_path / f"samples.{fmt.split('-')[0]}"
    if fmt.startswith("jsonl"):
        bad = '{"sensor": "z", "t": "not a time", "phase": 0.0}\n' if fmt != "jsonl" else ""
        data.write_text(bad + "".join(json.dumps(r) + "\n" for r in rows))
    else:
        table = pa.table({"sensor": [r["sensor"] for r in rows], "t": [float(r["t"]) for r in rows],
                          "phase": [r["phase"] for r in rows], "cell": [r.get("cell") for r in rows]})
        with pa.ipc.new_file(data, table.schema) as writer:
            writer.write_table(table)
    config = tmp_path / "c.yaml"
    config.write_text(f"source: {{kind: file, path: '{data}'}}\nmetrics: {{enabled: false}}\n"
                      f"memory: {{storage: {{path: '{tmp_path / 'archive'}'}}}}\n")
    proc = subprocess.run([str(BIN), "run", "--config", str(config)], capture_output=True, text=True,
                          env=clean_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    letters = [json.loads(line) for line in
               (tmp_path / "archive" / "dead-letters" / "worker-0.jsonl").read_text().splitlines()]
    errors = [letter["error"] for letter in letters]
    assert {letter["reason"] for letter in letters} == {"schema"}
    assert sum("sensor id of 257 bytes; at most 256 bytes of UTF-8" in e for e in errors) == 20
    assert sum("cell '*' is the name of the global mesh (T_global)" in e for e in errors) == 20
    assert sum("cell name of 300 bytes; at most 256 bytes of UTF-8" in e for e in errors) == 20
    got = subprocess.run([str(BIN), "memory", "retrieve", "--start", str(T0 - 1), "--end", str(T0 + 10),
                          "--dataset", "input", "--format", "json", "--config", str(config)],
                         capture_output=True, text=True, env=clean_env(), timeout=300)
    assert got.returncode == 0, got.stderr
    kept = {json.loads(line)["sensor"] for line in got.stdout.splitlines() if line.strip()}
    assert kept == {"é" * 128}  # the 256-byte id with its 256-byte cell: the only rows within the bounds


def test_bounds_hold_on_json_read_as_columns():
    """Plain ASCII JSON messages take the columnar parse (a path of its own); the same bounds hold there."""
    from operators.decode import decode_messages
    from schemas.raw_messages import RawMessage

    values = [{"sensor": "a", "t": T0, "phase": 0.1, "cell": "north"},
              {"sensor": "b", "t": T0, "phase": 0.1, "cell": "*"},
              {"sensor": "c", "t": T0, "phase": 0.1, "cell": "c" * 257},
              {"sensor": "d" * 300, "t": T0, "phase": 0.1}]
    messages = [RawMessage(None, json.dumps(v).encode(), None, "in", 0, k) for k, v in enumerate(values)]
    out = decode_messages(messages)
    assert [b.sensor for b in out.batches] == ["a"]
    assert out.counts == {"schema": 3}
    assert sorted(d.error for d in out.dead) == [
        "cell '*' is the name of the global mesh (T_global)",
        "cell name of 257 bytes; at most 256 bytes of UTF-8",
        "sensor id of 300 bytes; at most 256 bytes of UTF-8"]
