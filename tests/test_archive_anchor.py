"""The archive's hash chains are anchored outside it (SPEC section 5).

Meta witness records carry every dataset's manifest head; `memory verify
--anchor FILE` checks the archive against a witness log kept elsewhere and
finds what the manifests alone cannot show: a consistently rewritten chain, a
rollback, a deleted dataset.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from connectors.archive.anchor import ManifestHeads
from connectors.archive import GENESIS, MANIFEST, ArchiveWriter, meta_dir
from tests.test_archive import HOUR, T0, rows
from tests.test_archive_signing import DATASETS, _cli, _config, _lines, _rewrite_consistently, _run_twice


@pytest.fixture(scope="module")
def anchored(tmp_path_factory):
    """An archive of two runs and its witness log exported outside it."""
    base = tmp_path_factory.mktemp("anchored")
    root = base / "archive"
    _run_twice(root, _config(root))
    anchor = base / "witness.jsonl"
    proc = _cli("memory", "export-witness", "--archive", str(root), "--out", str(anchor))
    assert proc.returncode == 0, proc.stderr
    return root, anchor


def _copy(anchored, tmp_path):
    root, anchor = anchored
    copy = tmp_path / "archive"
    shutil.copytree(root, copy)
    return copy, anchor


def test_meta_records_carry_every_dataset_head_and_verify_accepts_its_own_anchor(anchored):
    root, anchor = anchored
    metas = [json.loads(line) for line in anchor.read_text().splitlines() if json.loads(line)["layer"] == "meta"]
    assert metas and all(set(m["payload"]["heads"]) == set(DATASETS) for m in metas)
    for dataset in DATASETS:
        lines = _lines(root, dataset)
        head = metas[-1]["payload"]["heads"][dataset]
        assert 0 < head["lines"] <= len(lines)
        assert hashlib.sha256(lines[head["lines"] - 1].encode()).hexdigest() == head["sha256"]
    proc = _cli("memory", "verify", "--archive", str(root), "--anchor", str(anchor))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count(": ok") == len(DATASETS)


def test_a_consistent_rewrite_passes_the_manifest_but_not_the_anchor(anchored, tmp_path):
    root, anchor = _copy(anchored, tmp_path)
    _rewrite_consistently(root, "input")
    assert _cli("memory", "verify", "--archive", str(root)).returncode == 0  # why the anchor is needed
    proc = _cli("memory", "verify", "--archive", str(root), "--anchor", str(anchor))
    assert proc.returncode == 1
    assert "input: MANIFEST.jsonl: rewritten: line " in proc.stdout and "The chain was rewritten" in proc.stdout
    assert "coherence_history: ok" in proc.stdout


def test_a_rollback_is_reported(anchored, tmp_path):
    root, anchor = _copy(anchored, tmp_path)
    lines = _lines(root, "events")
    (root / "events" / json.loads(lines[-1])["file"]).unlink()
    (meta_dir(root / "events") / MANIFEST).write_text("".join(f"{line}\n" for line in lines[:-1]))
    assert _cli("memory", "verify", "--archive", str(root)).returncode == 0
    proc = _cli("memory", "verify", "--archive", str(root), "--anchor", str(anchor))
    assert proc.returncode == 1
    assert f"events: MANIFEST.jsonl: rolled back: {len(lines) - 1:,} line(s); the witness log anchored " \
           f"{len(lines):,} line(s)" in proc.stdout


def test_a_deleted_dataset_is_reported(anchored, tmp_path):
    root, anchor = _copy(anchored, tmp_path)
    shutil.rmtree(root / "mesh_sync")
    shutil.rmtree(meta_dir(root / "mesh_sync"))
    assert _cli("memory", "verify", "--archive", str(root)).returncode == 0
    proc = _cli("memory", "verify", "--archive", str(root), "--anchor", str(anchor))
    assert proc.returncode == 1
    assert "mesh_sync: MANIFEST.jsonl: missing dataset" in proc.stdout


def test_an_anchor_that_is_not_a_witness_log_is_bad_usage(anchored, tmp_path):
    root, _ = anchored
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"layer": "micro"}\nnot json\n')
    proc = _cli("memory", "verify", "--archive", str(root), "--anchor", str(bad))
    assert proc.returncode == 2 and "line 2 is not JSON" in proc.stderr
    bad.write_text('{"layer": "micro", "payload": {}}\n')
    proc = _cli("memory", "verify", "--archive", str(root), "--anchor", str(bad))
    assert proc.returncode == 2 and "no meta witness record with manifest heads" in proc.stderr


# -- the heads a meta record carries -------------------------------------------


def test_manifest_heads_follow_appends_and_replacements(tmp_path):
    heads = ManifestHeads(tmp_path, ["input", "events"])
    assert heads() == {"events": {"lines": 0, "sha256": GENESIS}, "input": {"lines": 0, "sha256": GENESIS}}
    with ArchiveWriter(tmp_path, "input", flush_rows=1) as writer:
        for k in range(3):
            writer.write(rows("input", ["a"], [T0 + k * HOUR]))
            lines = _lines(tmp_path, "input")
            assert heads()["input"] == {"lines": len(lines),
                                        "sha256": hashlib.sha256(lines[-1].encode()).hexdigest()}
    manifest = meta_dir(tmp_path / "input") / MANIFEST
    with open(manifest, "a") as f:
        f.write('{"file": "torn')  # an append cut short is not committed
    assert heads()["input"]["lines"] == 3
    replaced = _lines(tmp_path, "input")[:1]  # a manifest replaced by a shorter one (as a compaction does)
    manifest.write_text(replaced[0] + "\n")
    assert heads()["input"] == {"lines": 1, "sha256": hashlib.sha256(replaced[0].encode()).hexdigest()}
