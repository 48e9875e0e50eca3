"""Errors a user can act on: one clear line each, the traceback only behind --debug.

Covers `becomingone run` against a broker that does not answer, a bad config
under `python -m bytewax.run flows.kairos`, librdkafka refusing a CA file,
and what any unexpected exception of a command looks like.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import BIN, clean_env, free_port

GUARD = 120  # seconds: a guard against a hang, not a timing assertion


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, env=clean_env(**(env or {})),
                          timeout=GUARD)


def _kafka_config(tmp_path, **kafka: str):
    lines = "".join(f"  {k}: {v}\n" for k, v in kafka.items())
    path = tmp_path / "kafka.yaml"
    path.write_text(f"source:\n  kind: kafka\nsink:\n  archive: false\nmetrics:\n  enabled: false\nkafka:\n{lines}")
    return path


# --------------------------------------------------------------------------
# Kafka at start.


def test_run_against_an_unreachable_broker_fails_in_one_line(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    proc = _cli("run", "--config", str(_kafka_config(tmp_path, **{"bootstrap.servers": address})), "--timeout", "2")
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert f"cannot reach Kafka at {address} within 2 s" in proc.stderr
    assert "Connection refused" in proc.stderr
    assert "Traceback" not in proc.stderr and "panicked" not in proc.stderr


def test_a_missing_ca_file_is_named_with_its_key(tmp_path):
    missing = tmp_path / "no-such-ca.pem"
    config = _kafka_config(tmp_path, **{"bootstrap.servers": f"127.0.0.1:{free_port()}",
                                        "security.protocol": "SSL", "ssl.ca.location": str(missing)})
    for proc in (_cli("run", "--config", str(config), "--timeout", "2"),
                 _cli("produce", "--synthetic", "--duration", "1", "--config", str(config), "--timeout", "2")):
        assert proc.returncode == 2, proc.stderr
        assert f"kafka.ssl.ca.location {missing}" in proc.stderr
        assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


# --------------------------------------------------------------------------
# The Bytewax way.


def test_bytewax_run_with_a_bad_config_exits_2_naming_the_key_paths(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("kairos:\n  velocity_span: 1.5\n  tau_scal: 2\n")
    proc = subprocess.run([sys.executable, "-m", "bytewax.run", "flows.kairos"], capture_output=True, text=True,
                          env=clean_env(BECOMINGONE_CONFIG=str(bad)), timeout=GUARD)
    assert proc.returncode == 2, proc.stderr
    assert "kairos.velocity_span (1.5) must be smaller than kairos.tau_scale (1.0)" in proc.stderr
    assert "kairos.tau_scal" in proc.stderr and str(bad) in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_bytewax_run_against_an_unreachable_broker_fails_in_one_line(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    config = _kafka_config(tmp_path, **{"bootstrap.servers": address})
    env = clean_env(BECOMINGONE_CONFIG=str(config))
    env.pop("RUST_BACKTRACE", None)
    proc = subprocess.run([sys.executable, "-m", "bytewax.run", "flows.kairos"], capture_output=True, text=True,
                          env=env, timeout=GUARD)
    assert proc.returncode == 1, proc.stderr
    assert f"cannot reach Kafka at {address}" in proc.stderr and "Connection refused" in proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "panicked" not in proc.stderr


# --------------------------------------------------------------------------
# Any other failure of a command.


def _boom(args):
    raise RuntimeError("the disk said no\nsecond line")


def test_an_unexpected_exception_is_one_line_and_exit_1(monkeypatch, capsys):
    from flows import cli

    monkeypatch.delenv("BECOMINGONE_DEBUG", raising=False)
    monkeypatch.setattr(cli, "cmd_config", _boom)
    assert cli.main(["config"]) == 1
    err = capsys.readouterr().err
    assert err == "becomingone: error: RuntimeError: the disk said no\\nsecond line (--debug shows the traceback)\n"


@pytest.mark.parametrize("how", ["flag-before", "flag-after", "environment"])
def test_debug_lets_the_traceback_through(monkeypatch, how):
    from flows import cli

    monkeypatch.setattr(cli, "cmd_config", _boom)
    monkeypatch.delenv("BECOMINGONE_DEBUG", raising=False)
    argv = {"flag-before": ["--debug", "config"], "flag-after": ["config", "--debug"], "environment": ["config"]}[how]
    if how == "environment":
        monkeypatch.setenv("BECOMINGONE_DEBUG", "1")
    with pytest.raises(RuntimeError, match="the disk said no"):
        cli.main(argv)


def test_a_config_error_keeps_exit_2_and_debug_parses_anywhere(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("kairos:\n  velocity_span: 1.5\n")
    proc = _cli("memory", "verify", "--debug", "--config", str(bad))
    assert proc.returncode == 2
    assert "kairos.velocity_span" in proc.stderr
