"""Configs that would expand without bound are refused early, with the file named (SPEC section 8)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from schemas.config import MAX_CONFIG_NODES, ConfigError, load_config

HANG_GUARD = 60  # seconds: a guard against a hang, not a timing assertion


def _laughs(levels: int = 9, width: int = 10) -> str:
    """A billion-laughs document: each anchor lists the previous one ``width`` times."""
    lines = ['a0: &a0 ["lol"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    lines.append(f"becomingone:\n  name: *a{levels}")
    return "\n".join(lines) + "\n"


def _cli(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("becomingone")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "flows.cli"]
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("BECOMINGONE")}
    env.update(env_extra or {})
    return subprocess.run(command + list(args), capture_output=True, text=True, env=env, timeout=HANG_GUARD)


def test_cli_refuses_a_billion_laughs_config_with_exit_2_naming_the_file(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_laughs(), encoding="utf-8")
    done = _cli("config", "--check", "--config", str(bomb))
    assert done.returncode == 2, done.stderr
    assert str(bomb) in done.stderr
    assert "aliases" in done.stderr and f"{MAX_CONFIG_NODES:,}" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


def test_merge_keys_that_double_at_every_level_are_refused(tmp_path):
    lines = ["m0: &m0 {k0: 1}"]
    for i in range(1, 40):
        lines.append(f"m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}], k{i}: 1}}")
    path = tmp_path / "merge.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="aliases") as info:
        load_config(path, environ={})
    assert str(path) in str(info.value)


def test_a_recursive_alias_is_refused(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("becomingone: &me {name: x, again: *me}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="holds an alias to a node that contains it") as info:
        load_config(path, environ={})
    assert str(path) in str(info.value)


def test_an_environment_override_cannot_be_a_bomb():
    name = "BECOMINGONE__KAIROS__CHANNEL_WEIGHTS"
    with pytest.raises(ConfigError) as info:
        load_config(environ={name: _laughs()})
    assert f"{name}:" in str(info.value) and "aliases" in str(info.value)


def test_a_config_under_the_bound_with_aliases_still_loads(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text(
        "defaults: &d {tau_max: 600.0, witness_interval: 0.2}\n"
        "master: *d\n", encoding="utf-8")
    # `defaults` is not a section: the aliases are fine, the unknown key is not.
    with pytest.raises(ConfigError, match="defaults"):
        load_config(path, environ={})
    path.write_text("master: &d {tau_max: 600.0, witness_interval: 0.2}\n", encoding="utf-8")
    assert load_config(path, environ={}).master.tau_max == 600.0
