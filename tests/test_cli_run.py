"""`becomingone run` on the embedded default: real numbers, real exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).with_name("becomingone")


def _run(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BECOMINGONE")}
    full_env.update(env or {})
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=300)


def _table(stdout: str) -> dict[str, list[str]]:
    rows = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 8 and parts[1] in {"steady", "drifting", "noise", "switching"}:
            rows[parts[0]] = parts
    return rows


def test_run_on_embedded_default_separates_coherent_from_noise(tmp_path):
    proc = _run("run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = _table(proc.stdout)
    assert set(rows) == {"steady-1", "drift-1", "noise-1", "switch-1"}
    master = {name: float(r[4]) for name, r in rows.items()}
    emissary_last = {name: float(r[5]) for name, r in rows.items()}
    assert master["steady-1"] > 0.99
    assert master["noise-1"] < 0.01
    assert 0.05 < master["drift-1"] < 0.95  # partly coherent: between the two
    # The switching sensor is coherent first, noise at the end.
    assert emissary_last["switch-1"] < 0.1
    share_above = float(rows["switch-1"][7].rstrip("%"))
    assert 40.0 < share_above < 60.0  # about half the run above I_c
    assert "event time 100.0%" in proc.stderr  # progress reached the end


def test_run_rejects_a_bad_config_with_key_path_and_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("kairos:\n  tau_scale: 1.0\n  velocity_span: 1.5\n")
    proc = _run("run", "--config", str(bad))
    assert proc.returncode == 2
    assert "kairos.velocity_span (1.5) must be smaller than kairos.tau_scale (1.0)" in proc.stderr


def test_run_refuses_a_source_it_cannot_run_yet(tmp_path):
    cfg = tmp_path / "kafka.yaml"
    cfg.write_text("source:\n  kind: kafka\nkafka:\n  bootstrap.servers: 127.0.0.1:9092\n")
    proc = _run("run", "--config", str(cfg))
    assert proc.returncode == 2
    assert "source.kind is 'kafka'" in proc.stderr
