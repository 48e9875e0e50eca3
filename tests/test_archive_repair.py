"""A lost manifest never costs data (SPEC section 5): a writer never reuses or overwrites a
file name, data files the manifest does not list stop it, and `memory verify --repair`
rebuilds the manifest from the files when asked."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import yaml

from connectors.archive import (
    MANIFEST,
    ArchiveError,
    ArchiveWriter,
    compact_dataset,
    meta_dir,
    open_dataset,
    verify_archive,
)
from connectors.archive.repair import repair_dataset
from tests.conftest import BIN, clean_env
from tests.test_archive import HOUR, T0, rows


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, env=clean_env(), timeout=300)


def _files(root, dataset: str) -> dict[str, bytes]:
    directory = root / dataset
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*.arrow"))}


@pytest.fixture(scope="module")
def run_config(tmp_path_factory):
    """A config of a short synthetic run, and the archive a first run of it wrote."""
    base = tmp_path_factory.mktemp("lost")
    root = base / "archive"
    cfg = base / "run.yaml"
    cfg.write_text(yaml.safe_dump({
        "source": {"kind": "synthetic", "duration": 40.0,
                   "sensors": [{"name": "s-1", "kind": "steady"}, {"name": "s-2", "kind": "noise"}]},
        "memory": {"storage": {"path": str(root)}, "flush_rows": 1000},
        "metrics": {"enabled": False},
    }))
    proc = _cli("run", "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    return cfg, root


@pytest.mark.slow
def test_a_lost_manifest_stops_the_next_run_and_repair_brings_every_row_back(run_config, tmp_path):
    import shutil

    cfg, template = run_config
    root = tmp_path / "archive"
    shutil.copytree(template, root)
    config = yaml.safe_load(cfg.read_text())
    config["memory"]["storage"]["path"] = str(root)
    cfg = tmp_path / "rerun.yaml"
    cfg.write_text(yaml.safe_dump(config))
    rows_before = open_dataset(root / "input").count_rows()
    files = _files(root, "input")
    assert len(files) > 1
    (meta_dir(root / "input") / MANIFEST).unlink()

    proc = _cli("run", "--config", str(cfg))
    assert proc.returncode == 1
    for name in files:
        assert f"input/{name}" in proc.stderr  # every unlisted file, relative to the root
    assert "memory verify" in proc.stderr and "--repair" in proc.stderr
    assert _files(root, "input") == files  # not one byte overwritten

    proc = _cli("memory", "verify", "--archive", str(root))
    assert proc.returncode == 1
    assert "input: MANIFEST.jsonl: missing" in proc.stdout

    proc = _cli("memory", "verify", "--archive", str(root), "--repair")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"input: repaired: MANIFEST.jsonl rebuilt from {len(files)} file(s) with {rows_before:,} rows" \
        in proc.stdout
    assert "input: ok (re-rooted: its chain starts at a rebuild by memory verify --repair)" in proc.stdout
    assert open_dataset(root / "input").count_rows() == rows_before
    assert _files(root, "input") == files
    lines = (meta_dir(root / "input") / MANIFEST).read_text().splitlines()
    assert json.loads(lines[0])["rerooted"] is True
    assert all("rerooted" not in json.loads(line) for line in lines[1:])

    # A rerun works again: no file is reused, nothing is written twice.
    proc = _cli("run", "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    assert open_dataset(root / "input").count_rows() == rows_before
    assert all(_files(root, "input")[name] == data for name, data in files.items())
    assert _cli("memory", "verify", "--archive", str(root)).returncode == 0


def _written(tmp_path, hours: int = 2, flushes: int = 2) -> None:
    with ArchiveWriter(tmp_path, "input") as writer:
        for k in range(flushes):
            writer.write(rows("input", [f"s{k}"] * hours, [T0 + h * HOUR + k for h in range(hours)]))
            writer.flush()


def test_a_writer_and_a_compaction_refuse_unlisted_files_naming_them(tmp_path):
    _written(tmp_path)
    (meta_dir(tmp_path / "input") / MANIFEST).unlink()
    for opener in (lambda: ArchiveWriter(tmp_path, "input"), lambda: compact_dataset(tmp_path / "input")):
        with pytest.raises(ArchiveError) as caught:
            opener()
        message = str(caught.value)
        assert "input/date=2025-11-26/hour=00/part-00000000.arrow" in message
        assert "input/date=2025-11-26/hour=01/part-00000003.arrow" in message
        assert "--repair" in message
    assert not (meta_dir(tmp_path / "input") / MANIFEST).exists()


def test_a_file_that_appears_under_a_writer_is_never_overwritten(tmp_path):
    _written(tmp_path, hours=1, flushes=1)
    writer = ArchiveWriter(tmp_path, "input")
    intruder = tmp_path / "input" / "date=2025-11-26/hour=00/part-00000001.arrow"
    intruder.write_bytes(b"someone else's file")
    writer.write(rows("input", ["s0"], [T0 + 5]))
    with pytest.raises(ArchiveError, match="part-00000001.arrow"):
        writer.flush()
    assert intruder.read_bytes() == b"someone else's file"
    assert len((meta_dir(tmp_path / "input") / MANIFEST).read_text().splitlines()) == 1  # nothing committed


def test_the_rename_into_place_never_replaces_a_file(tmp_path, monkeypatch):
    """Even when the file appears between the check and the rename."""
    _written(tmp_path, hours=1, flushes=1)
    writer = ArchiveWriter(tmp_path, "input")
    intruder = tmp_path / "input" / "date=2025-11-26/hour=00/part-00000001.arrow"
    real_link = os.link

    def link(src, dst):
        intruder.write_bytes(b"raced")
        return real_link(src, dst)

    monkeypatch.setattr(os, "link", link)
    writer.write(rows("input", ["s0"], [T0 + 5]))
    with pytest.raises(ArchiveError, match="appeared while it was written"):
        writer.flush()
    assert intruder.read_bytes() == b"raced"


def test_repair_lists_every_file_by_partition_then_number_with_fresh_hashes(tmp_path):
    _written(tmp_path, hours=2, flushes=2)  # part 0 (h00), 1 (h01), 2 (h00), 3 (h01)
    before = open_dataset(tmp_path / "input").to_table()
    manifest = meta_dir(tmp_path / "input") / MANIFEST
    manifest.write_text("this is not a manifest\n")
    result = repair_dataset(tmp_path / "input")
    assert (result.files, result.rows) == (4, before.num_rows)
    assert result.backup is not None and result.backup.read_text() == "this is not a manifest\n"
    entries = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert [e["file"] for e in entries] == [
        "date=2025-11-26/hour=00/part-00000000.arrow", "date=2025-11-26/hour=00/part-00000002.arrow",
        "date=2025-11-26/hour=01/part-00000001.arrow", "date=2025-11-26/hour=01/part-00000003.arrow"]
    assert [e["rows"] for e in entries] == [1, 1, 1, 1]
    assert verify_archive(tmp_path) == {"input": []}
    assert open_dataset(tmp_path / "input").count_rows() == before.num_rows
    # Compaction keeps the mark: the chain still starts at a rebuild.
    compact_dataset(tmp_path / "input")
    assert json.loads(manifest.read_text().splitlines()[0])["rerooted"] is True
    assert verify_archive(tmp_path) == {"input": []}
    # The next writer numbers on from the largest listed part.
    with ArchiveWriter(tmp_path, "input") as writer:
        writer.write(rows("input", ["s0"], [T0 + 2 * HOUR]))
        assert writer.flush() == ["date=2025-11-26/hour=02/part-00000006.arrow"]


def test_repair_refuses_an_unreadable_file_and_changes_nothing(tmp_path):
    _written(tmp_path, hours=1, flushes=2)
    manifest = meta_dir(tmp_path / "input") / MANIFEST
    manifest.unlink()
    bad = tmp_path / "input" / "date=2025-11-26/hour=00/part-00000001.arrow"
    bad.write_bytes(b"garbage")
    with pytest.raises(ArchiveError, match="input/date=2025-11-26/hour=00/part-00000001.arrow"):
        repair_dataset(tmp_path / "input")
    assert not manifest.exists() and bad.read_bytes() == b"garbage"


def test_repair_is_refused_while_a_writer_has_the_dataset(tmp_path):
    _written(tmp_path, hours=1, flushes=1)
    with ArchiveWriter(tmp_path, "input"):
        with pytest.raises(ArchiveError, match="in use"):
            repair_dataset(tmp_path / "input")
