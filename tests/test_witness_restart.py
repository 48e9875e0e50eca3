"""The witness log never forks (SPEC section 8): one seq, one chain, across restarts.

A run with Bytewax recovery resumes the witness step from its last snapshot,
while the archive may already hold witness rows of the epochs after it. The
resumed log continues from what the archive holds, the writer keeps one row
per seq, and `memory verify` checks the log's own chain.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from connectors.archive import GENESIS, MANIFEST, ArchiveWriter, meta_dir, open_dataset, verify_archive
from flows.emit import witness_rows
from operators.witness import WitnessEntries, WitnessEntry, WitnessLog
from schemas.config import parse_config
from schemas.messages import WITNESS_LOG_GENESIS, MicroWitness
from tests.conftest import BIN, WAIT, clean_env

T0 = 1_735_689_600_000_000  # 2025-01-01T00:00:00Z
SECOND = 1_000_000


def _micro(t_us: int, seconds: float) -> WitnessEntry:
    return WitnessEntry("micro", t_us, None, MicroWitness(operator="resonate", worker=0, items_in=10, items_out=3,
                                                          drops=0, seconds=seconds))


def _batch(k: int, seconds: float) -> list[WitnessEntries]:
    """The witness entries of the k-th batch; ``seconds`` stands for a measured time."""
    return [WitnessEntries([_micro(T0 + k * SECOND, seconds), _micro(T0 + k * SECOND + 1, seconds)])]


def _archive(writer: ArchiveWriter, out) -> None:
    """What the flow's archive sink does with the witness step's output."""
    for item in (rows for emitted in out for rows in emitted.archive):
        if item.dataset == "witnessing_logs":
            table = item.table() if callable(item.table) else item.table
            writer.write(table)
    writer.flush()


def chain_problems(table: pa.Table) -> list[str]:
    """The documented rule, recomputed here: seq 0, 1, 2, ... each once, and
    log_sha256 = sha256(previous digest + payload) from 64 zeros."""
    table = table.sort_by("seq")
    seqs = table["seq"].to_pylist()
    if seqs != list(range(len(seqs))):
        return [f"seqs are not 0..{len(seqs) - 1} each once"]
    digest = GENESIS
    for seq, payload, logged in zip(seqs, table["payload"].to_pylist(), table["log_sha256"].to_pylist()):
        digest = hashlib.sha256(bytes.fromhex(digest) + payload.encode("utf-8")).hexdigest()
        if digest != logged:
            return [f"chain breaks at seq {seq}"]
    return []


def _config(root: Path):
    return parse_config({"memory": {"storage": {"path": str(root)}}, "metrics": {"enabled": False},
                         "witnessing": {"meta_every": 5}})


def test_a_log_resumed_from_an_older_snapshot_continues_from_what_the_archive_holds(tmp_path):
    from flows.witnessing import WitnessLogic

    config = _config(tmp_path)
    writer = ArchiveWriter(tmp_path, "witnessing_logs")
    logic = WitnessLogic(config, None)
    for k in range(3):
        _archive(writer, logic.on_batch(_batch(k, 0.001))[0])
    snapshot = pickle.dumps(logic.snapshot())  # the last epoch Bytewax will resume from
    for k in range(3, 6):  # the next epoch: archived, then the process is killed
        _archive(writer, logic.on_batch(_batch(k, 0.002))[0])
    writer.close()
    abandoned = open_dataset(tmp_path / "witnessing_logs").to_table()

    # The restart: the same input again from the snapshot, with other measured times.
    writer = ArchiveWriter(tmp_path, "witnessing_logs")
    resumed = WitnessLogic(config, pickle.loads(snapshot))
    for k in range(3, 8):
        _archive(writer, resumed.on_batch(_batch(k, 0.003))[0])
    _archive(writer, resumed.on_eof()[0])
    writer.close()

    log = open_dataset(tmp_path / "witnessing_logs").to_table()
    assert chain_problems(log) == []
    # Nothing archived before the restart was replaced: its rows are the log's first ones.
    assert log.sort_by("seq").slice(0, abandoned.num_rows).equals(abandoned.sort_by("seq"))
    assert verify_archive(tmp_path) == {"witnessing_logs": []}


def test_the_writer_keeps_one_row_per_seq(tmp_path):
    log = WitnessLog(meta_every=100)
    records = log.append([_micro(T0 + k, 0.001) for k in range(4)])
    table = witness_rows([records]).table
    with ArchiveWriter(tmp_path, "witnessing_logs") as writer:
        assert writer.write(table) == 4
    with ArchiveWriter(tmp_path, "witnessing_logs") as writer:
        assert writer.write(table) == 0  # seq 0..3 are archived: a replayed epoch's rows are refused
        assert writer.write(witness_rows([log.append([_micro(T0 + 9, 0.001)])]).table) == 1
    assert open_dataset(tmp_path / "witnessing_logs").to_table()["seq"].to_pylist() == [0, 1, 2, 3, 4]


def test_a_crash_inside_a_flush_leaves_a_gapless_log(tmp_path, monkeypatch):
    """Witness rows of one flush spread over two hours, interleaved in seq: whichever
    file commits first, the archive never holds a seq without the ones before it."""
    log = WitnessLog(meta_every=100)
    hours = [T0 + (k % 2) * 3600 * SECOND + k for k in range(8)]  # hour 00, 01, 00, 01, ...
    table = witness_rows([log.append([_micro(t, 0.001) for t in hours])]).table
    writer = ArchiveWriter(tmp_path, "witnessing_logs")
    writer.write(table)
    commits = 0
    write_file = ArchiveWriter._write_file

    def crash_after_first(self, part_dir, rows):
        nonlocal commits
        if commits == 1:
            raise OSError("killed")
        commits += 1
        return write_file(self, part_dir, rows)

    monkeypatch.setattr(ArchiveWriter, "_write_file", crash_after_first)
    with pytest.raises(OSError):
        writer.flush()
    writer._lock.release()  # the process is gone
    monkeypatch.undo()
    seqs = sorted(open_dataset(tmp_path / "witnessing_logs").to_table()["seq"].to_pylist())
    assert seqs == list(range(len(seqs))) and seqs
    assert verify_archive(tmp_path) == {"witnessing_logs": []}


# -- memory verify checks the log itself ---------------------------------------


def _append_file(root: Path, table: pa.Table) -> None:
    """Add a file and its manifest line the way an older version's writer did (no seq check)."""
    directory = root / "witnessing_logs"
    manifest = meta_dir(directory) / MANIFEST
    lines = manifest.read_text("utf-8").splitlines() if manifest.exists() else []
    rel = f"date=2025-01-01/hour=00/part-{90 + len(lines):08d}.arrow"
    (directory / rel).parent.mkdir(parents=True, exist_ok=True)
    with pa.ipc.new_file(str(directory / rel), table.schema) as w:
        w.write_table(table)
    data = (directory / rel).read_bytes()
    prev = hashlib.sha256(lines[-1].encode()).hexdigest() if lines else GENESIS
    line = json.dumps({"file": rel, "rows": table.num_rows, "sha256": hashlib.sha256(data).hexdigest(),
                       "prev": prev}, separators=(",", ":"))
    manifest.parent.mkdir(parents=True, exist_ok=True)
    with open(manifest, "a") as f:
        f.write(line + "\n")


def _logged(log: WitnessLog, n: int, seconds: float) -> pa.Table:
    return witness_rows([log.append([_micro(T0 + k, seconds) for k in range(n)])]).table


def test_verify_reports_the_first_seq_of_a_fork(tmp_path):
    log = WitnessLog(meta_every=1000)
    _append_file(tmp_path, _logged(log, 6, 0.001))
    fork = WitnessLog(meta_every=1000)
    fork.append([_micro(T0 + k, 0.001) for k in range(4)])
    _append_file(tmp_path, _logged(fork, 4, 0.5))  # seq 4..7, forked from seq 3: 4 and 5 twice
    problems = verify_archive(tmp_path)["witnessing_logs"]
    assert any(p.startswith("seq 4:") and "2 rows" in p for p in problems), problems
    proc = subprocess.run([str(BIN), "memory", "verify", "--archive", str(tmp_path)], capture_output=True,
                          text=True, env=clean_env(), timeout=120)
    assert proc.returncode == 1
    assert "witnessing_logs: seq 4:" in proc.stdout


def test_verify_reports_a_broken_chain_and_a_missing_seq(tmp_path):
    log = WitnessLog(meta_every=1000)
    _append_file(tmp_path, _logged(log, 5, 0.001))
    other = WitnessLog(meta_every=1000, digest="1" * 64, seq=5)  # continues from a digest the log never had
    _append_file(tmp_path, _logged(other, 3, 0.001))
    assert [p for p in verify_archive(tmp_path)["witnessing_logs"] if p.startswith("seq ")][0].startswith(
        "seq 5: log_sha256")
    gap = WitnessLog(meta_every=1000, digest=other.digest, seq=10)  # seq 8, 9 never written
    _append_file(tmp_path, _logged(gap, 2, 0.001))
    problems = verify_archive(tmp_path)["witnessing_logs"]
    assert any(p.startswith("seq 8: missing") for p in problems), problems


def test_verify_passes_a_log_that_starts_at_the_genesis_digest(tmp_path):
    log = WitnessLog(meta_every=3)
    _append_file(tmp_path, _logged(log, 7, 0.001))
    assert verify_archive(tmp_path) == {"witnessing_logs": []}
    assert log.digest != WITNESS_LOG_GENESIS


# -- the real thing: kill -9 in a loop -----------------------------------------


KILLS = 4
DURATION = 6000.0  # event seconds of the synthetic source: 2.4 M samples over hour 00 to 01


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


@pytest.mark.slow
def test_kill_9_in_a_loop_keeps_one_witness_chain_and_every_sample_once(tmp_path):
    root, recovery = tmp_path / "archive", tmp_path / "recovery"
    recovery.mkdir()
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(recovery), "1"], check=True, timeout=WAIT,
                   capture_output=True)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(json.dumps({
        "memory": {"storage": {"path": str(root)}, "flush_interval": 0.1},
        "metrics": {"enabled": False},
        "source": {"kind": "synthetic", "duration": DURATION},
        "witnessing": {"meta_every": 200},
    }))
    env = clean_env(BECOMINGONE_CONFIG=str(cfg))
    command = [sys.executable, "-m", "bytewax.run", "flows.kairos", "-s", "1", "-b", "1", "-r", str(recovery)]
    witness_manifest = meta_dir(root / "witnessing_logs") / MANIFEST
    rng = np.random.default_rng(7)
    killed = 0
    for attempt in range(KILLS + 1):
        err = open(tmp_path / f"stderr-{attempt}.txt", "wb")
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=err,
                                cwd=Path(__file__).resolve().parents[1])
        err.close()
        if attempt < KILLS:
            # Kill once this attempt has committed a few witness files past its start, and a
            # little later: after a snapshot or in the middle of the next epoch.
            start, need = _lines(witness_manifest), 2 + int(rng.integers(0, 4))
            deadline = time.monotonic() + WAIT
            while proc.poll() is None and _lines(witness_manifest) < start + need and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(float(rng.uniform(0.0, 0.5)))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                killed += 1
        assert proc.wait(timeout=300) in (0, -signal.SIGKILL), (tmp_path / f"stderr-{attempt}.txt").read_text()
    assert proc.returncode == 0
    assert killed >= 2, "the run ended before the process could be killed"

    log = open_dataset(root / "witnessing_logs").to_table()
    assert chain_problems(log) == []
    assert open_dataset(root / "input").count_rows() == int(DURATION * 100) * 4  # every sample once
    proc = subprocess.run([str(BIN), "memory", "verify", "--archive", str(root)], capture_output=True, text=True,
                          env=clean_env(), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
