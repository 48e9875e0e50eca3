"""One fleet shape measured: the one pass, the flow archive off and on (checked against the one pass), the snapshot
cost per key group."""

from __future__ import annotations

import gc
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.fleet_shapes import (
    FLEETS, FleetRun, FleetShape, FlowRun, SnapshotRun, config_for, generate, sensor_names, settings_for,
    write_arrow_file,
)
from bench.kernels import no_gc, progress
from bench.markdown import si


# The one pass writes every row of the run at once (gigabytes at 20 M samples); how fast the machine
# maps that memory varied its time by up to 4x from run to run here. The fastest run is the ceiling.
KERNEL_REPEATS = 5


SNAPSHOT_REPEATS = 3                      # pickles per key group; the median is reported


FLOW_REPEAT_BELOW_S = 10.0                # a flow run shorter than this is repeated ...


FLOW_REPEATS = 3                          # ... to this many runs, and the median rate reported
#: Shapes whose flow also runs with the mesh on (``sync.mesh_enabled``), against the same flow with it off.
MESH_SHAPES = ("f2",)
#: Runs of each (mesh off, mesh on) pair, alternated, so that a slow spell of the machine hits both.
MESH_PAIRS = 3


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


def expected_outputs(out, config) -> dict[str, int]:
    """(a)'s rows as the flow's outputs show them: on the meso grid (witness records) and on the
    signature grid (archive)."""
    meso_us = config.witnessing.meso_interval_us
    sig_us = config.memory.signature_interval_us
    e_t, m_t, s_t = out.emissary.t, out.master.t, out.sync.t
    return {
        "meso": int(np.count_nonzero(e_t % meso_us == 0) + np.count_nonzero(m_t % meso_us == 0)),
        "signatures emissary": int(np.count_nonzero(e_t % sig_us == 0)),
        "signatures master": int(np.count_nonzero(m_t % sig_us == 0)),
        "coherence_history": int(np.count_nonzero(s_t % sig_us == 0)),
        "events": int(np.count_nonzero(out.sync.event)),
    }


def _step_seconds() -> dict[str, float]:
    """Seconds summed over ``becomingone_batch_seconds`` per step, this process so far."""
    from connectors.metrics import metrics

    return {s.labels["step"]: float(s.value) for family in metrics().batch_seconds.collect()
            for s in family.samples if s.name.endswith("_sum")}


def _meso_records() -> int:
    from connectors.metrics import metrics

    return sum(int(s.value) for family in metrics().witness_records.collect() for s in family.samples
               if s.name.endswith("_total") and s.labels.get("layer") == "meso")


def _archive_rows(root: Path) -> dict[str, int]:
    """Rows per dataset of the archive at ``root`` (temporal signatures per transducer), read with pyarrow."""
    import pyarrow.compute as pc

    from connectors.archive import open_dataset

    out: dict[str, int] = {}
    for name in ("input", "coherence_history", "events"):
        out[name] = open_dataset(root / name).count_rows() if (root / name).is_dir() else 0
    if (root / "temporal_signatures").is_dir():
        kinds = open_dataset(root / "temporal_signatures").to_table(columns=["transducer"])["transducer"]
        for item in pc.value_counts(kinds).to_pylist():
            out[f"signatures {item['values']}"] = int(item["counts"])
    for kind in ("emissary", "master"):
        out.setdefault(f"signatures {kind}", 0)
    if (root / "events").is_dir():
        events = open_dataset(root / "events").to_table(columns=["event"])["event"].to_pylist()
        out["collapse"], out["dissipate"] = events.count("collapse"), events.count("dissipate")
    return out


def run_flow_once(config, samples: int) -> FlowRun:
    """The flow of ``config`` (its file source) run by ``run_main`` in this process, timed around it."""
    from bytewax.testing import run_main

    from connectors.metrics import ledger
    from flows.kairos import build_flow

    book = ledger()
    book.reset()
    flow = build_flow(config, recovery=False)
    steps0, meso0 = _step_seconds(), _meso_records()
    gc.collect()
    begin = time.perf_counter()
    run_main(flow)
    seconds = time.perf_counter() - begin
    accepted, rejected, collapses, dissipations = book.totals()
    steps = {k: v - steps0.get(k, 0.0) for k, v in _step_seconds().items()}
    meso: int | None = _meso_records() - meso0
    # Without the witness topic or the archive's witnessing_logs nothing keeps the log, and a flow may
    # build no witness records at all: then the rows cannot be counted there.
    kept = config.kafka is not None or (config.sink.archive and config.memory.witness_logs)
    if not meso and not kept:
        meso = None
    run = FlowRun(config.sink.archive, seconds, samples, accepted, rejected, (collapses, dissipations), meso,
                  steps)
    if config.sink.archive:
        run.archive_rows = _archive_rows(Path(config.memory.root))
    return run


def check_flow(label: str, run: FlowRun, fleet: FleetRun) -> None:
    """The flow's outputs must be the one pass's where they can be seen, or the shape fails."""
    want = fleet.expected
    problems = []
    if run.accepted != fleet.shape.samples or run.rejected:
        problems.append(f"accepted {run.accepted:,} and rejected {run.rejected:,} of {fleet.shape.samples:,} samples")
    if run.events != fleet.events:
        problems.append(f"{run.events[0]:,} collapses and {run.events[1]:,} dissipations, the one pass "
                        f"{fleet.events[0]:,} and {fleet.events[1]:,}")
    if run.meso is not None and run.meso != want["meso"]:
        problems.append(f"{run.meso:,} meso witness records, the one pass has {want['meso']:,} rows on that grid")
    if run.archive:
        rows = run.archive_rows
        for name in ("signatures emissary", "signatures master", "coherence_history", "events"):
            if rows.get(name) != want[name]:
                problems.append(f"archive {name}: {rows.get(name, 0):,} rows, the one pass {want[name]:,}")
        if (rows.get("collapse"), rows.get("dissipate")) != fleet.events:
            problems.append(f"archive events: {rows.get('collapse'):,} collapses and {rows.get('dissipate'):,} "
                            "dissipations")
        if rows.get("input") != fleet.shape.samples:
            problems.append(f"archive input: {rows.get('input', 0):,} rows of {fleet.shape.samples:,} samples")
    if problems:
        raise RuntimeError(f"fleet {fleet.shape.key} {label}: the flow differs from the one pass: "
                           + "; ".join(problems))


def snapshot_cost(t: np.ndarray, phase: np.ndarray, settings, key_groups: int, batch_rows: int,
                  repeats: int = SNAPSHOT_REPEATS) -> SnapshotRun:
    """Each key group's state as the resonate step snapshots it (:class:`operators.fleet.FleetTable`:
    the sensors' names, each lane's event-time gate and :class:`operators.columnar_state.FleetState`),
    after the samples pushed through :class:`operators.fleet.Fleet` in calls of about ``batch_rows`` rows
    in time order (one ``SampleBatch`` per sensor and call, as the decode step hands them on; not
    flushed: a state between epochs), pickled."""
    import pickle

    from flows.decoding import key_group
    from operators.fleet import Fleet
    from operators.roster import SensorCapacity
    from schemas.samples import SampleBatch

    sensors, n = phase.shape
    names = sensor_names(sensors)
    group = np.array([int(key_group(name, key_groups).rsplit("-", 1)[1]) for name in names])
    members = [np.flatnonzero(group == g) for g in range(key_groups)]
    capacity = SensorCapacity(max(sensors, 1))
    fleets = [Fleet(settings, capacity) for _ in range(key_groups)]
    step = max(1, batch_rows // sensors)          # time steps per call
    calls = 0
    fill = 0.0
    with no_gc():
        for k0 in range(0, n, step):
            k1 = min(k0 + step, n)
            calls += 1
            for fleet, idx in zip(fleets, members):
                if not idx.size:
                    continue
                batches = [SampleBatch(names[i], t[k0:k1], phase[i, k0:k1, None]) for i in idx.tolist()]
                begin = time.perf_counter()
                fleet.push(batches, time.time_ns() // 1000)
                fill += time.perf_counter() - begin
    nbytes, seconds = [], []
    for fleet in fleets:
        times = []
        for _ in range(repeats):
            with no_gc():
                begin = time.perf_counter()
                blob = pickle.dumps(fleet.table, protocol=pickle.HIGHEST_PROTOCOL)
                times.append(time.perf_counter() - begin)
        nbytes.append(len(blob))
        seconds.append(float(np.median(times)))
        del blob
    return SnapshotRun(key_groups, [int(m.size) for m in members], nbytes, seconds, fill, calls)


_warm = False


def warm_up() -> None:
    """Load every compiled kernel and import of both paths and of the flow (archive on and off) once."""
    global _warm
    if _warm:
        return
    shape = FleetShape("warm-up", 30, 10, 12)
    scratch = Path(tempfile.mkdtemp(prefix="becomingone-fleets-"))
    try:
        t, phase = generate(shape)
        settings = settings_for(shape)
        one_pass(t, phase, settings, 1)
        snapshot_cost(t, phase, settings, 4, 100, repeats=1)
        write_arrow_file(scratch / "warm.arrow", t, phase)
        for archive in (False, True):
            run_flow_once(config_for(shape, scratch / "warm.arrow", archive=archive, root=scratch / f"a{archive}"),
                          shape.samples)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    _warm = True


def run_shape(shape: FleetShape, repeats: int = KERNEL_REPEATS, *, flows: bool = True, snapshots: bool = True,
              batch_rows: int | None = None, mesh: bool | None = None) -> FleetRun:
    """One shape: (a), (b), (c) and the snapshot cost, over the same samples; raises if the flow's
    outputs differ from the one pass's.  ``mesh``: also the flow with the mesh off and on (None: for
    the shapes of :data:`MESH_SHAPES`)."""
    warm_up()
    progress(f"fleet {shape.key}: {shape.label} for {shape.seconds} s = {shape.samples:,} samples")
    settings = settings_for(shape)
    t, phase = generate(shape)
    kernel_s, out = one_pass(t, phase, settings, repeats)
    event = out.sync.event
    scratch = Path(tempfile.mkdtemp(prefix="becomingone-fleets-"))
    try:
        path = scratch / "samples.arrow"
        base = config_for(shape, path, batch_rows=batch_rows)
        fleet = FleetRun(shape, kernel_s, (len(out.emissary.t), len(out.master.t)),
                         (int(np.count_nonzero(event == 1)), int(np.count_nonzero(event > 1))),
                         base.source.batch_rows, 0, None, None, None, expected_outputs(out, base))
        del out, event
        progress(f"  (a) one pass: {si(fleet.kernel_rate)} samples/s")
        if flows:
            fleet.file_bytes = write_arrow_file(path, t, phase)
            for archive in (False, True):
                config = config_for(shape, path, archive=archive, root=scratch / "archive", batch_rows=batch_rows)
                label = "(c) flow, archive on" if archive else "(b) flow, archive off"
                runs: list[FlowRun] = []
                while not runs or (len(runs) < FLOW_REPEATS and runs[0].seconds < FLOW_REPEAT_BELOW_S):
                    runs.append(run_flow_once(config, shape.samples))
                    shutil.rmtree(scratch / "archive", ignore_errors=True)
                    check_flow(label, runs[-1], fleet)
                    progress(f"  {label}: {si(runs[-1].rate)} samples/s in {runs[-1].seconds:.1f} s, "
                             f"{runs[-1].rate / fleet.kernel_rate:.1%} of the one pass")
                runs.sort(key=lambda r: r.rate)
                run = runs[(len(runs) - 1) // 2]
                if len(runs) > 1:
                    run.repeat_rates = [r.rate for r in runs]
                if archive:
                    fleet.on = run
                else:
                    fleet.off = run
            if mesh or (mesh is None and shape.key in MESH_SHAPES):
                mesh_pairs(fleet, shape, path, scratch, batch_rows)
            path.unlink()
        if snapshots:
            fleet.snapshot = snapshot_cost(t, phase, settings, base.becomingone.key_groups, fleet.batch_rows)
            s = fleet.snapshot
            progress(f"  snapshot: {s.groups} key groups, {s.total_bytes / 1e6:,.1f} MB in {s.total_seconds:.3f} s "
                     f"(Fleet.push {si(shape.samples / s.fill_seconds)} samples/s)")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return fleet


def mesh_pairs(fleet: FleetRun, shape: FleetShape, path: Path, scratch: Path, batch_rows: int | None) -> None:
    """The flow with the mesh off and on, archive off and on, :data:`MESH_PAIRS` times alternated
    (``fleet.mesh``: ``"off archive off"`` ... -> runs)."""
    for archive in (False, True):
        where = "archive on" if archive else "archive off"
        for _ in range(MESH_PAIRS):
            for mesh in (False, True):
                config = config_for(shape, path, archive=archive, root=scratch / "archive", batch_rows=batch_rows,
                                    mesh=mesh)
                run = run_flow_once(config, shape.samples)
                shutil.rmtree(scratch / "archive", ignore_errors=True)
                label = f"mesh {'on' if mesh else 'off'}, {where}"
                check_flow(label, run, fleet)
                fleet.mesh.setdefault(label, []).append(run)
                progress(f"  {label}: {si(run.rate)} samples/s in {run.seconds:.1f} s")


def run_all(keys: Sequence[str] | None = None, scale: float = 1.0, **options) -> list[FleetRun]:
    """Every shape of :data:`FLEETS` (or those of ``keys``), event time scaled by ``scale``."""
    shapes = [s for s in FLEETS if keys is None or s.key in keys]
    return [run_shape(FleetShape(s.key, s.sensors, s.rate_hz, max(1, round(s.seconds * scale)), s.tau_scale_s,
                                 s.seed), **options) for s in shapes]
