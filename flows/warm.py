"""``becomingone warm``: compile the flow's Numba kernels into the kernel cache before the first run.

Every kernel of the flow is ``@njit(cache=True)``: Numba compiles it at its first call, for the
types of that call's arguments, and writes the machine code to ``$NUMBA_CACHE_DIR``; a later
process finds it there and loads it in milliseconds instead of compiling it (a small run of the
flow with raw sensors and the mesh: about 20 s from an empty cache, under 2 s from a warm one).
The container image runs this command at build time, so a pod starts warm.

What it runs is the real flow (:func:`flows.run.run_flow`), in this process, over a few seconds
of generated input in a scratch directory (archive included), removed afterwards.  The variants
of :data:`WARM_RUNS` reach every kernel a deployment can reach, with the argument types it will
see: phase sensors of one and two channels and raw ``value`` sensors, through both decoders
(JSON lines, Arrow IPC), the mesh on, lateness (the reordering gate), the
analytic phase (``hilbert``) and the beat phase (``events``) of raw sensors, a full and a light
node, input and outputs through Kafka topics of an in-process mock cluster (the output topics'
JSON encoders) and recovery snapshots.  Compilations are counted through Numba's
``numba:compile`` events (only a real compilation fires one; a kernel loaded from the cache does
not).  Kernels the flow never calls stay out: the per-sensor chain (``operators/resonator.py``
and the windows it drives) and the one-call estimator of ``operators/columnar.py``, which the
tests hold the flow's engine equal to.

Numba keys a cached kernel to the CPU it was compiled for: a cache built on one machine is
used on another only if both set ``NUMBA_CPU_NAME=generic`` (the image does), which trades the
host's vector extensions for portability (deploy/README.md, "Container").
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["WARM_RUNS", "WarmReport", "WarmRun", "kernel_compilations", "warm_kernels"]

#: Start of the generated input (2025-11-26T00:00:00Z), epoch seconds.
_T0 = 1_764_115_200.0
#: Samples per second per sensor, and seconds of input per run.
_RATE_HZ = 100.0
_SECONDS = 4.0


@dataclass(frozen=True)
class WarmRun:
    """One tiny run of the flow: its input file's format, which sensors it holds, the config keys
    it changes (beside the scratch paths and the short windows every run shares)."""

    name: str
    suffix: str                       # ".jsonl" or ".arrow"
    phase: bool                       # phase sensors (one and two channels; Arrow: one)
    raw: bool                         # raw `value` sensors
    config: dict[str, Any] = field(default_factory=dict)
    kafka: bool = False               # input and outputs through Kafka topics of an in-process mock cluster
    recovery: bool = False            # Bytewax recovery: the state is snapshotted (pickled) as it runs


#: The runs of ``becomingone warm``: together they reach every kernel of the flow.
WARM_RUNS: tuple[WarmRun, ...] = (
    # The production path: JSON messages from a topic (four partitions); enough sync and meso rows per
    # call for the columnar JSON encoders of the output topics (64 rows and more).
    WarmRun("kafka, phase and raw, mesh, recovery", ".jsonl", phase=True, raw=True,
            config={"sync": {"publish_interval": 0.1}, "witnessing": {"meso_interval": 0.1}},
            kafka=True, recovery=True),
    # With lateness the event-time gate reorders (another kernel than the in-order one).
    WarmRun("arrow, phase, mesh, lateness", ".arrow", phase=True, raw=False, config={"sync": {"lateness": 0.5}}),
    WarmRun("arrow, raw, mesh", ".arrow", phase=False, raw=True),
    WarmRun("json, raw, event phase", ".jsonl", phase=False, raw=True, config={"kairos": {"phase_method": "events"}}),
    WarmRun("json, phase and raw, light node", ".jsonl", phase=True, raw=True,
            config={"becomingone": {"node": "light"}}),
)


@dataclass
class WarmReport:
    """What a warm-up did: the kernels compiled (qualified names, once per signature), the runs, the seconds."""

    compiled: list[str] = field(default_factory=list)
    runs: int = 0
    seconds: float = 0.0


@contextmanager
def kernel_compilations() -> Iterator[list[str]]:
    """The qualified names of the Numba functions compiled inside the block (one per compiled signature).

    A function loaded from the on-disk cache is not compiled, so an empty list after a run means
    every kernel it called came from the cache (or was compiled earlier in this process).
    """
    from numba.core import event

    names: list[str] = []

    class _Listener(event.Listener):
        def on_start(self, ev: event.Event) -> None:
            dispatcher = ev.data["dispatcher"]
            names.append(f"{dispatcher.py_func.__module__}.{dispatcher.py_func.__qualname__}")

        def on_end(self, ev: event.Event) -> None:
            pass

    with event.install_listener("numba:compile", _Listener()):
        yield names


def warm_kernels(runs: tuple[WarmRun, ...] = WARM_RUNS, *,
                 progress: Callable[[str], None] | None = None) -> WarmReport:
    """Run each of ``runs`` through the flow in a scratch directory; the kernels they compile are
    written to Numba's cache (``$NUMBA_CACHE_DIR`` if set)."""
    report = WarmReport()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="becomingone-warm-") as scratch, kernel_compilations() as compiled:
        for k, run in enumerate(runs):
            before = len(compiled)
            _run_once(run, Path(scratch) / f"run-{k}")
            report.runs += 1
            if progress is not None:
                progress(f"{run.name}: {len(our_kernels(compiled[before:]))} kernel compilation(s)")
        report.compiled = list(compiled)
    report.seconds = time.perf_counter() - start
    return report


def _run_once(run: WarmRun, root: Path) -> None:
    from flows.run import run_flow
    from schemas.config import parse_config

    root.mkdir(parents=True)
    data = root / f"input{run.suffix}"
    _write_input(data, run)
    config = _merged(_base_config(data, root / "archive"), run.config)
    with _mock_cluster(run.kafka) as kafka:
        if kafka is not None:
            config["kafka"] = kafka
            config["source"] = {"kind": "kafka", "topic": _produced(kafka, data), "from_beginning": True,
                                "stop_at_end": True}
        run_flow(parse_config(config), out=io.StringIO(), progress=io.StringIO(),
                 recovery=root / "recovery" if run.recovery else None, snapshot_interval=0.2)


def _produced(kafka: dict[str, str], data: Path) -> str:
    """The topic the JSON lines of ``data`` were sent to, one message per line keyed by its sensor."""
    from confluent_kafka import Producer

    topic = "warm.input"
    producer = Producer(dict(kafka))
    for line in data.read_text().splitlines():
        producer.produce(topic, key=json.loads(line)["sensor"].encode(), value=line.encode())
        producer.poll(0)
    if producer.flush(30.0):
        raise RuntimeError(f"the mock cluster did not take the warm-up input within 30 s ({topic})")
    return topic


@contextmanager
def _mock_cluster(wanted: bool) -> Iterator[dict[str, str] | None]:
    """The ``kafka`` section of an in-process mock cluster (librdkafka's), closed afterwards; None if not ``wanted``."""
    if not wanted:
        yield None
        return
    from connectors.kafka import MockBroker

    broker = MockBroker(1)
    broker.start()
    try:
        yield {"bootstrap.servers": broker.bootstrap}
    finally:
        broker.close()


def _base_config(data: Path, archive: Path) -> dict[str, Any]:
    """Short windows, so that a few seconds of input reach collapses, the mesh's decisions and the sync."""
    return {
        "source": {"kind": "file", "path": str(data)},
        "metrics": {"enabled": False},
        "logging": {"level": "WARNING"},
        "kairos": {"tau_scale": 0.1, "velocity_span": 0.02, "phase_band": [8.0, 12.0]},
        "master": {"tau_max": 1.0, "min_span": 0.5},
        "emissary": {"tau_max": 0.5},
        "sync": {"mesh_enabled": True, "mesh": {"window": 1.0, "lateness": 0.1}},
        "memory": {"storage": {"path": str(archive)}, "flush_interval": 0.5},
    }


def _merged(base: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in change.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _rows(run: WarmRun) -> list[dict[str, Any]]:
    """Rows of the run's sensors in time order: steady 10 Hz rhythms (they collapse), a noise sensor."""
    t = _T0 + np.arange(int(_RATE_HZ * _SECONDS)) / _RATE_HZ
    w = 2 * math.pi * 10.0 * (t - _T0)
    noise = np.random.default_rng(20251126)
    rows: list[dict[str, Any]] = []
    for k, ti in enumerate(t):
        if run.phase:
            rows.append({"sensor": "phase-1", "cell": "phases", "t": ti, "phase": _wrap(w[k])})
            rows.append({"sensor": "phase-2", "cell": "phases", "t": ti, "phase": _wrap(w[k] + 0.2)})
            rows.append({"sensor": "phase-noise", "cell": "phases", "t": ti,
                         "phase": float(noise.uniform(-math.pi, math.pi))})
            if run.suffix == ".jsonl":
                rows.append({"sensor": "phase-two-channels", "cell": "phases", "t": ti,
                             "phase": [_wrap(w[k]), _wrap(w[k] + 0.1)]})
        if run.raw:
            # A pulse train (a narrow peak per cycle) is a rhythm for both phase methods.
            pulse = float(40.0 * math.cos(w[k]) ** 16)
            rows.append({"sensor": "raw-1", "cell": "raw", "t": ti, "value": pulse})
            rows.append({"sensor": "raw-2", "cell": "raw", "t": ti, "value": float(40.0 * math.cos(w[k] + 0.3) ** 16)})
            rows.append({"sensor": "raw-noise", "cell": "raw", "t": ti, "value": float(noise.normal())})
    return rows


def _wrap(x: float) -> float:
    return float((x + math.pi) % (2 * math.pi) - math.pi)


def _write_input(path: Path, run: WarmRun) -> None:
    rows = _rows(run)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return
    import pyarrow as pa

    kind = "phase" if run.phase else "value"
    table = pa.table({"sensor": [r["sensor"] for r in rows], "t": [r["t"] for r in rows],
                      kind: [r[kind] for r in rows], "cell": [r["cell"] for r in rows]})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def kernel_cache() -> str | None:
    """Where Numba writes its cache: ``$NUMBA_CACHE_DIR``, or None (beside each source file)."""
    return os.environ.get("NUMBA_CACHE_DIR") or None


def cpu_target() -> str:
    """The CPU the kernels are compiled for: ``generic`` (any of the architecture) or this machine's."""
    from numba.core import config

    if config.CPU_NAME:
        return str(config.CPU_NAME)
    import llvmlite.binding as ll

    return f"{ll.get_host_cpu_name()} (this machine's; NUMBA_CPU_NAME=generic for any)"


def our_kernels(compiled: list[str]) -> list[str]:
    """The compilations of the flow's own kernels among ``compiled`` (not Numba's helpers they pull in)."""
    return [name for name in compiled if not name.startswith("numba.")]
