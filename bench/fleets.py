"""Fleet shapes: one pass over all sensors against the per-sensor engine, same samples, same run.

    python -m bench.fleets                       this section alone, tables on stdout
    python -m bench.fleets --update docs/benchmarks.md   ... and put it into an existing report
    make bench                                   bench.pipeline runs it inside the whole report

For each fleet shape (many sensors, each on a regular grid, the config
defaults; tau_scale 5 s at 1 Hz, where 1 s leaves no lag product) the same
generated samples go through

(a) **one pass**: :func:`operators.columnar.fleet_resonance` over the whole
    run's columns, grouped by sensor: the compute ceiling;
(b) **per-sensor engine**: the flow's resonate step in process: the rows in
    time order, as a file source hands them on (65,536 rows per call), each
    call's rows grouped into one ``SampleBatch`` per sensor, then
    ``Resonator.push`` per sensor (a ``Roster`` of resonators, one
    ``GridRows`` per call), and ``flush`` at the end.  The clock runs over
    the pushes, the ``GridRows`` and the flush; building the batches (the
    decode step's work) and the outputs (topics, archive) are left out, so
    (b) is what the engine's compute costs, not a whole ``becomingone run``.

Both must agree on the number of Emissary and Master rows and of collapses and
dissipations, or the shape fails.  The garbage collector is paused in both.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.kernels import _si, no_gc, progress

EPOCH_US = 1_764_115_200_000_000          # 2025-11-26T00:00:00Z
FILE_CHUNK_ROWS = 65_536                  # rows per call of the file source (connectors.files)
KINDS = ("steady",) * 7 + ("drifting", "noise", "switching")   # sensor i has kind i % 10
KERNEL_REPEATS = 3                        # the one pass is short: median of this many runs
SECTION_TITLE = "Fleets: one pass over all sensors against the per-sensor engine"


@dataclass(frozen=True)
class FleetShape:
    """A fleet: ``sensors`` sensors sampled at ``rate_hz`` for ``seconds`` of event time."""

    key: str
    sensors: int
    rate_hz: int
    seconds: int
    tau_scale_s: float = 1.0
    seed: int = 0

    @property
    def samples(self) -> int:
        return self.sensors * self.rate_hz * self.seconds

    @property
    def label(self) -> str:
        rate = f"{self.rate_hz // 1000} kHz" if self.rate_hz >= 1000 else f"{self.rate_hz} Hz"
        return f"{self.sensors:,} sensors x {rate}"


# Event-time spans sized so each shape takes about 10 to 30 s here, most of it in (b).
FLEETS = (
    FleetShape("f1", 100, 1_000, 600, seed=1),
    FleetShape("f2", 2_000, 60, 100, seed=2),
    FleetShape("f3", 10_000, 10, 25, seed=3),
    FleetShape("f4", 50_000, 1, 18, tau_scale_s=5.0, seed=4),
)


@dataclass
class FleetRun:
    """One shape measured: the one pass (a) and the engine (b) over the same samples."""

    shape: FleetShape
    kernel_s: list[float]
    engine_s: float
    calls: int
    rows: tuple[int, int]                 # Emissary and Master rows (equal in both)
    events: tuple[int, int]               # collapses and dissipations (equal in both)

    @property
    def kernel_rate(self) -> float:
        return self.shape.samples / float(np.median(self.kernel_s))

    @property
    def engine_rate(self) -> float:
        return self.shape.samples / self.engine_s

    @property
    def per_sensor_call(self) -> float:
        return self.shape.samples / self.calls / self.shape.sensors


def settings_for(shape: FleetShape):
    """The config defaults (archive off, no ``future`` check), tau_scale of the shape."""
    from flows.kairos import resonator_settings
    from schemas.config import parse_config

    config = parse_config({"kairos": {"tau_scale": shape.tau_scale_s}, "sink": {"archive": False}},
                          source="the config defaults")
    return resonator_settings(config, replay=True)


def generate(shape: FleetShape) -> tuple[np.ndarray, np.ndarray]:
    """Times (n,) and wrapped phases (sensors, n): oscillators at 1 % to 9 % of the rate, 0.01 rad noise;
    drifting adds a random walk of 0.6 rad/sqrt(s), noise is uniform, switching turns to noise halfway."""
    rng = np.random.default_rng(shape.seed)
    n = shape.rate_hz * shape.seconds
    t = EPOCH_US + np.arange(1, n + 1, dtype=np.int64) * 1_000_000 // shape.rate_hz
    seconds = (t - EPOCH_US) * 1e-6
    phase = np.empty((shape.sensors, n))
    for i in range(shape.sensors):     # one row at a time keeps the temporaries to one sensor's size
        kind = KINDS[i % len(KINDS)]
        freq = shape.rate_hz * (0.01 + 0.01 * (i % 9))
        row = 2 * np.pi * freq * seconds + rng.uniform(-np.pi, np.pi) + rng.normal(0.0, 0.01, n)
        if kind == "drifting":
            row += np.cumsum(rng.normal(0.0, 0.6 / np.sqrt(shape.rate_hz), n))
        elif kind == "noise":
            row = rng.uniform(-np.pi, np.pi, n)
        elif kind == "switching":
            row[n // 2:] = rng.uniform(-np.pi, np.pi, n - n // 2)
        phase[i] = np.mod(row + np.pi, 2 * np.pi) - np.pi
    return t, phase


def one_pass(t: np.ndarray, phase: np.ndarray, settings, repeats: int):
    """(a): the whole run as columns grouped by sensor, ``repeats`` times; the seconds and the last result."""
    from operators.columnar import fleet_resonance

    sensors, n = phase.shape
    sensor = np.repeat(np.arange(sensors, dtype=np.int32), n)
    times = np.tile(t, sensors)
    flat = phase.reshape(-1)
    seconds, out = [], None
    for _ in range(repeats):
        out = None
        with no_gc():
            begin = time.perf_counter()
            out = fleet_resonance(sensor, times, flat, settings)
            seconds.append(time.perf_counter() - begin)
    return seconds, out


def engine(t: np.ndarray, phase: np.ndarray, settings) -> tuple[float, int, tuple[int, int], tuple[int, int]]:
    """(b): the resonate step's per-sensor path over the rows in time order, in file-source calls.

    Returns the seconds timed, the calls, (Emissary, Master) rows and (collapses, dissipations).
    """
    from operators.resonator import GridRows
    from operators.roster import Roster, SensorCapacity
    from operators.samples import SampleBatch
    from operators.sync import COLLAPSE

    sensors, n = phase.shape
    names = [f"s{i:05d}" for i in range(sensors)]
    roster = Roster(settings, SensorCapacity(sensors))
    total = sensors * n
    elapsed, calls = 0.0, 0
    rows_e = rows_m = collapses = dissipations = 0

    def count(rows: GridRows) -> None:
        nonlocal rows_e, rows_m, collapses, dissipations
        event = rows.sync.event
        rows_e, rows_m = rows_e + rows.n_emissary, rows_m + rows.n_master
        collapses += int(np.count_nonzero(event == COLLAPSE))
        dissipations += int(np.count_nonzero(event > COLLAPSE))

    with no_gc():
        for first in range(0, total, FILE_CHUNK_ROWS):
            r = np.arange(first, min(first + FILE_CHUNK_ROWS, total))
            k, i = r // sensors, r % sensors       # file rows in time order: row = k * sensors + i
            order = np.argsort(i, kind="stable")
            k, i = k[order], i[order]
            cuts = np.flatnonzero(np.diff(i)) + 1
            batches = [SampleBatch(names[int(ii[0])], t[kk], phase[int(ii[0]), kk][:, None])
                       for kk, ii in zip(np.split(k, cuts), np.split(i, cuts))]
            begin = time.perf_counter()
            rows = GridRows(sum(len(b) + 2 for b in batches))
            for b in batches:
                res = roster.resonator(b.sensor).push(b, 0, rows)
                roster.observe(res.watermark)
            elapsed += time.perf_counter() - begin
            calls += 1
            count(rows)
        begin = time.perf_counter()
        rows = GridRows()
        for _, resonator in sorted(roster.state.live.items()):
            resonator.flush(rows)
        elapsed += time.perf_counter() - begin
        count(rows)
    return elapsed, calls, (rows_e, rows_m), (collapses, dissipations)


def warm_up(settings) -> None:
    """Load both paths' compiled kernels before any clock starts."""
    shape = FleetShape("warm-up", 3, 100, 3)
    t, phase = generate(shape)
    one_pass(t, phase, settings, 1)
    engine(t, phase, settings)


def run_shape(shape: FleetShape, repeats: int = KERNEL_REPEATS) -> FleetRun:
    settings = settings_for(shape)
    warm_up(settings)
    progress(f"fleet {shape.key}: {shape.label} for {shape.seconds} s = {shape.samples:,} samples")
    t, phase = generate(shape)
    kernel_s, out = one_pass(t, phase, settings, repeats)
    event = out.sync.event
    want = ((len(out.emissary.t), len(out.master.t)),
            (int(np.count_nonzero(event == 1)), int(np.count_nonzero(event > 1))))
    del out
    progress(f"  one pass: {_si(shape.samples / float(np.median(kernel_s)))} samples/s")
    engine_s, calls, rows, events = engine(t, phase, settings)
    if (rows, events) != want:
        raise RuntimeError(f"fleet {shape.key}: the engine gave {rows} rows and {events} events, the one pass "
                           f"{want[0]} and {want[1]}: the two disagree")
    run = FleetRun(shape, kernel_s, engine_s, calls, rows, events)
    progress(f"  engine: {_si(run.engine_rate)} samples/s in {engine_s:.1f} s ({calls} calls), "
             f"{run.engine_rate / run.kernel_rate:.1%} of the one pass")
    return run


def run_all(keys: Sequence[str] | None = None, scale: float = 1.0) -> list[FleetRun]:
    """Every shape of :data:`FLEETS` (or those of ``keys``), event time scaled by ``scale``."""
    shapes = [s for s in FLEETS if keys is None or s.key in keys]
    return [run_shape(FleetShape(s.key, s.sensors, s.rate_hz, max(1, round(s.seconds * scale)), s.tau_scale_s,
                                 s.seed)) for s in shapes]


# --- report --------------------------------------------------------------------------------------


HEADER = ["fleet", "event time", "samples", "samples per sensor per call (b)", "(a) one pass, samples/s",
          "(b) per-sensor engine, samples/s", "(b) / (a)", "Emissary / Master rows", "collapses / dissipations"]


def table_rows(runs: Sequence[FleetRun]) -> list[list[str]]:
    return [[f"{r.shape.label}" + (f" (tau_scale {r.shape.tau_scale_s:g} s)" if r.shape.tau_scale_s != 1 else ""),
             f"{r.shape.seconds} s", f"{r.shape.samples:,}", f"{r.per_sensor_call:,.1f}",
             f"{_si(r.kernel_rate)} ({min(r.kernel_s):.2f} to {max(r.kernel_s):.2f} s)",
             f"{_si(r.engine_rate)} ({r.engine_s:.1f} s)", f"{r.engine_rate / r.kernel_rate:.1%}",
             f"{r.rows[0]:,} / {r.rows[1]:,}", f"{r.events[0]:,} / {r.events[1]:,}"] for r in runs]


def text_table(runs: Sequence[FleetRun]) -> str:
    """The measurements as one Markdown table."""
    return _table(HEADER, table_rows(runs))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def markdown_section(runs: Sequence[FleetRun], level: int = 2) -> str:
    """The report's section, headed at Markdown ``level``."""
    h = "#" * level
    return "\n".join([
        f"{h} {SECTION_TITLE}",
        "",
        "Each fleet is sensors on one regular grid from 2025-11-26T00:00:00Z (seven in ten steady oscillators "
        "at 1 % to 9 % of the sample rate with 0.01 rad noise, one drifting, one uniform noise, one switching "
        "to noise halfway; seeded), one channel, the config defaults (tau_scale 1 s, velocity span 0.1 s, "
        "Emissary 1 s on a 0.01 s grid, Master 3600 s in 0.1 s panes, min span 10 s; at 1 Hz tau_scale 5 s, "
        "where 1 s pairs no samples). The same samples go through both columns in one run (`python -m "
        "bench.fleets` runs this section alone); garbage collector paused in both.",
        "",
        "- **(a) one pass**: `operators.columnar.fleet_resonance` over the whole run as columns grouped by "
        "sensor (input checks included): every sensor's products, Emissary and Master at their grid points and "
        f"the sync in one Numba call; the median of {KERNEL_REPEATS} runs (range in brackets). The compute "
        "ceiling.",
        "- **(b) per-sensor engine**: the flow's resonate step in process: rows in time order in calls of "
        f"{FILE_CHUNK_ROWS:,} (the file source's chunk), one `SampleBatch` per sensor and call, "
        "`Resonator.push` per sensor into one `GridRows` per call, `flush` at the end. Timed: the pushes, the "
        "rows and the flush; not timed: building the batches (decode) and the outputs (topics, archive), so a "
        "whole `becomingone run` is slower still.",
        "- **(b) / (a)**: the share of the compute ceiling the per-sensor engine reaches. Both give the same "
        "Emissary and Master rows and the same events (checked in the run).",
        "",
        text_table(runs),
        "",
        "At 1 Hz the default Emissary window (1 s) holds at most one product, so |T_emissary| is 1 wherever it "
        "has one; the events there are what the estimator gives at these settings, the same in both columns.",
        "",
    ])


def update_report(path: Path, runs: Sequence[FleetRun]) -> None:
    """Put this section into an existing report in place of its previous one (or at its end)."""
    text = path.read_text(encoding="utf-8")
    section = markdown_section(runs, level=2)
    pattern = re.compile(rf"^## {re.escape(SECTION_TITLE)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    path.write_text(text, encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fleets", description=__doc__.split("\n")[0])
    parser.add_argument("--fleets", nargs="+", choices=[s.key for s in FLEETS], help="shapes to run (default all)")
    parser.add_argument("--scale", type=float, default=1.0, help="event time of each shape times this (default 1)")
    parser.add_argument("--update", metavar="PATH", help="replace this section in the report at PATH")
    args = parser.parse_args(argv)
    if args.scale <= 0:
        parser.error("--scale must be positive")
    runs = run_all(args.fleets, args.scale)
    print(text_table(runs))
    if args.update:
        update_report(Path(args.update), runs)
        progress(f"updated {args.update}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
