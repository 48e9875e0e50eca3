"""Starting ``becomingone serve`` for the API tests: a real process on a free port, stopped after."""

from __future__ import annotations

import contextlib
import selectors
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import BIN, WAIT, clean_env, stop_process


@contextlib.contextmanager
def serving(*args: str, stderr_path: Path) -> Iterator[str]:
    """``becomingone serve --port 0 ARGS``: yields the URL it prints once listening; stops it (exit 0) after."""
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen([str(BIN), "serve", "--port", "0", *args], stdout=subprocess.PIPE, stderr=err,
                                env=clean_env(), text=True)
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            ready = sel.select(timeout=WAIT)
        line = proc.stdout.readline() if ready else ""
        if not line.startswith("serving "):
            pytest.fail(f"serve printed {line!r}: {stderr_path.read_text()}")
        yield line.rsplit(" on ", 1)[1].strip()
    finally:
        code = stop_process(proc)
    assert code == 0, stderr_path.read_text()
