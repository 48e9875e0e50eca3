"""Signed manifest lines (SPEC section 5): with `memory.signing_key`, each manifest line
carries an HMAC-SHA256 that a rewrite without the key cannot forge; the key comes from an
environment variable or a file and is never printed."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess

import pyarrow as pa
import pytest
import yaml

from connectors.archive import (
    GENESIS,
    MANIFEST,
    ArchiveError,
    ArchiveWriter,
    compact_dataset,
    meta_dir,
    verify_dataset,
)
from flows.run import run_flow
from schemas.config import parse_config
from tests.conftest import BIN, clean_env
from tests.test_archive import T0, rows

KEY_ENV = "BECOMINGONE_TEST_SIGNING_KEY"
KEY = "k3y-that-must-never-be-printed-0123456789"
DATASETS = ("coherence_history", "events", "input", "mesh_members", "mesh_sync", "temporal_signatures",
            "witnessing_logs")


def _config(root, **memory) -> dict:
    return {
        "source": {"kind": "synthetic", "duration": 30.0, "sensors": [
            {"name": "steady-1", "kind": "steady"}, {"name": "switch-1", "kind": "switching", "freq_hz": 2.0}]},
        "memory": {"storage": {"path": str(root)}, "flush_rows": 1000, **memory},
        "witnessing": {"meta_every": 100},
        "sync": {"mesh_enabled": True},
        "metrics": {"enabled": False},
    }


def _run_twice(root, config: dict) -> None:
    """A run, and the same input again: the second run adds only witness records, and its meta
    records anchor everything the first one committed."""
    for _ in range(2):
        run_flow(parse_config(config), out=io.StringIO(), progress=io.StringIO())


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, env=clean_env(**env), timeout=300)


def _lines(root, dataset: str) -> list[str]:
    return (meta_dir(root / dataset) / MANIFEST).read_text().splitlines()


def _rewrite_consistently(root, dataset: str, *, keep_hmac: bool = True) -> None:
    """Change a value in the first file and recompute every sha256 and prev, as anyone who can
    write the archive can (without a signing key: an hmac stays as it was, or goes)."""
    lines = [json.loads(line) for line in _lines(root, dataset)]
    path = root / dataset / lines[0]["file"]
    table = pa.ipc.open_file(pa.py_buffer(path.read_bytes())).read_all()  # not mapped: rewritten below
    column = table.schema.get_field_index("t")
    table = table.set_column(column, "t", pa.array([v.value + 1 for v in table["t"]], pa.int64())
                             .cast(table.schema.field("t").type))
    with pa.ipc.new_file(str(path), table.schema) as writer:
        writer.write_table(table)
    prev, out = GENESIS, []
    for entry in lines:
        entry["sha256"] = hashlib.sha256((root / dataset / entry["file"]).read_bytes()).hexdigest()
        entry["prev"] = prev
        if not keep_hmac:
            entry.pop("hmac", None)
        text = json.dumps(entry, separators=(",", ":"))
        out.append(text)
        prev = hashlib.sha256(text.encode()).hexdigest()
    (meta_dir(root / dataset) / MANIFEST).write_text("".join(f"{line}\n" for line in out))


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    base = tmp_path_factory.mktemp("signed")
    root = base / "archive"
    config = _config(root, signing_key={"env": KEY_ENV})
    os.environ[KEY_ENV] = KEY
    try:
        _run_twice(root, config)
    finally:
        del os.environ[KEY_ENV]
    cfg = base / "signed.yaml"
    cfg.write_text(yaml.safe_dump(config))
    return root, cfg


def test_every_line_is_signed_and_verifies_with_the_key(signed):
    root, cfg = signed
    assert all("hmac" in json.loads(line) for d in DATASETS for line in _lines(root, d))
    proc = _cli("memory", "verify", "--config", str(cfg), **{KEY_ENV: KEY})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count(": ok\n") == len(DATASETS)
    unchecked = _cli("memory", "verify", "--archive", str(root))
    assert unchecked.returncode == 0
    assert "signed with an HMAC, unchecked: memory.signing_key is not set" in unchecked.stdout


@pytest.mark.parametrize("keep_hmac", [True, False])
def test_a_rewrite_without_the_key_fails_verify(signed, tmp_path, keep_hmac):
    root, cfg = signed
    copy = tmp_path / "archive"
    shutil.copytree(root, copy)
    _rewrite_consistently(copy, "input", keep_hmac=keep_hmac)
    proc = _cli("memory", "verify", "--config", str(cfg), "--archive", str(copy), **{KEY_ENV: KEY})
    assert proc.returncode == 1
    expected = "does not carry the HMAC that memory.signing_key gives" if keep_hmac else "line(s) not signed"
    assert expected in proc.stdout and proc.stdout.startswith("coherence_history: ok")
    wrong = _cli("memory", "verify", "--config", str(cfg), "--archive", str(copy), **{KEY_ENV: KEY[::-1]})
    assert wrong.returncode == 1


def test_the_key_is_never_printed(signed, tmp_path):
    root, cfg = signed
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    by_file = tmp_path / "by-file.yaml"
    by_file.write_text(yaml.safe_dump({"memory": {"signing_key": {"file": str(key_file)}}}))
    literal = tmp_path / "literal.yaml"
    literal.write_text(yaml.safe_dump({"memory": {"signing_key": KEY}}))
    runs = [
        _cli("config", "--config", str(cfg), **{KEY_ENV: KEY}),
        _cli("config", "--config", str(by_file)),
        _cli("config", "--config", str(literal)),  # refused: a key belongs in env or a file
        _cli("memory", "verify", "--config", str(cfg), **{KEY_ENV: KEY}),
    ]
    assert [p.returncode for p in runs] == [0, 0, 2, 0]
    assert f"env: {KEY_ENV}" in runs[0].stdout and f"file: {key_file}" in runs[1].stdout
    for proc in runs:
        assert KEY not in proc.stdout + proc.stderr
    assert "memory.signing_key (<redacted>) must be {env: NAME} or {file: PATH}" in runs[2].stderr


def test_a_signed_manifest_is_continued_and_compacted_only_with_its_key(tmp_path):
    key = KEY.encode()
    for k in range(3):
        with ArchiveWriter(tmp_path, "input", signing_key=key) as writer:
            writer.write(rows("input", ["a"], [T0 + k]))
    with pytest.raises(ArchiveError, match="signed"):
        ArchiveWriter(tmp_path, "input")
    with pytest.raises(ArchiveError, match="does not carry the HMAC"):
        ArchiveWriter(tmp_path, "input", signing_key=b"another key, 16 bytes or more")
    with pytest.raises(ArchiveError, match="signing_key"):
        compact_dataset(tmp_path / "input")
    compact_dataset(tmp_path / "input", signing_key=key)
    assert len(_lines(tmp_path, "input")) == 1
    assert verify_dataset(tmp_path / "input", key=key) == []
