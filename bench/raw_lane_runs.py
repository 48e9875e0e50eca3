"""One raw-sensor shape measured: the extraction kernel against np.convolve (a), the Fleet (b) and the flow (c)
fed the raw samples against the same fed the phases of (a); checked, or the shape fails."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.kernels import no_gc, progress
from bench.markdown import si
from bench.raw_shapes import (
    BATCH_ROWS, SHAPES, KernelRun, PairRun, Phases, RawRun, RawShape, config_for, generate, sensor_names,
    settings_for, write_rows,
)

REPEATS = 3                               # runs of each measurement: (a) keeps the fastest, (b) and (c) the median
#: The kernel and the np.convolve reference agree to this (rad): both sum the same products, in another order.
AGREEMENT_RAD = 1e-9


def _time_ordered_rows(t: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The run's rows as a stream carries them: every sensor at a time, then the next time (sid, t, x (n, 1))."""
    sensors, n = values.shape
    return (np.tile(np.arange(sensors, dtype=np.int64), n), np.repeat(t, sensors),
            np.ascontiguousarray(values.T).reshape(-1, 1))


def _by_sensor(sid: np.ndarray, *columns: np.ndarray) -> tuple[np.ndarray, ...]:
    order = np.argsort(sid, kind="stable")
    return (sid[order], *(c[order] for c in columns))


def kernel_pass(settings, t: np.ndarray, values: np.ndarray, repeats: int = REPEATS,
                batch_rows: int = BATCH_ROWS) -> KernelRun:
    """(a): :func:`~operators.phase_extraction.extract_phases` (and for ``events``
    :func:`~operators.beat_phase.beat_phases` on its band-passed real part, as
    :class:`~operators.raw_phase.RawPhase` chains them) over the whole run's rows in one call each, the
    fastest of ``repeats``; against ``np.convolve`` of each sensor's record with the same taps.
    ``beat_phases`` is also timed over the same rows in calls of ``batch_rows`` rows (as a Fleet calls it)."""
    from operators.beat_phase import BeatRule, BeatTrack, beat_phases
    from operators.phase_design import design_analytic_filter, design_rate
    from operators.phase_extraction import PhaseTrack, extract_phases

    (f_lo, f_hi), method, max_gap = settings.phase_band, settings.phase_method, settings.params.max_gap_us
    sid, tt, x = _time_ordered_rows(t, values)
    filter_s, beats_s, beats_calls_s = [], [], []
    out = beats = None
    for _ in range(repeats):
        track = PhaseTrack(f_lo, f_hi)
        with no_gc():
            begin = time.perf_counter()
            out = extract_phases(track, sid, tt, x, max_gap)
            filter_s.append(time.perf_counter() - begin)
        if method == "events":
            band_passed = out.amplitude[:, 0] * np.cos(out.phase[:, 0])
            with no_gc():
                begin = time.perf_counter()
                beats = beat_phases(BeatTrack.empty(), BeatRule(max_gap_us=max_gap), out.sid, out.t, band_passed)
                beats_s.append(time.perf_counter() - begin)
            track_b = BeatTrack.empty()
            with no_gc():
                begin = time.perf_counter()
                for a in range(0, len(out.t), batch_rows):
                    b = a + batch_rows
                    beat_phases(track_b, BeatRule(max_gap_us=max_gap), out.sid[a:b], out.t[a:b], band_passed[a:b])
                beats_calls_s.append(time.perf_counter() - begin)
    taps = design_analytic_filter(design_rate(int(t[1] - t[0])), f_lo, f_hi).taps
    reference_s, z = reference_pass(taps, values, repeats)
    k_sid, k_phase = _by_sensor(out.sid, out.phase[:, 0])
    if k_phase.size != z.size:
        raise RuntimeError(f"the kernel gave {k_phase.size:,} phase samples, np.convolve {z.size:,}")
    worst = float(np.abs(np.angle(np.exp(1j * (k_phase - np.angle(z).reshape(-1))))).max()) if z.size else 0.0
    if not worst <= AGREEMENT_RAD:
        raise RuntimeError(f"the kernel's phases differ from np.convolve's by up to {worst:.3g} rad")
    if method == "events":
        phases = Phases(beats.sid, beats.t, beats.phase.reshape(-1))
    else:
        phases = Phases(*_by_sensor(out.sid, out.t, out.phase[:, 0]))
    return KernelRun(len(taps), filter_s, beats_s, beats_calls_s, reference_s, phases, worst)


def reference_pass(taps: np.ndarray, values: np.ndarray, repeats: int) -> tuple[list[float], np.ndarray]:
    """The baseline: per sensor ``np.convolve`` of its whole record with the complex taps (the outputs
    where the filter lies inside the record), then the phase and the amplitude; seconds and z (sensors, n')."""
    seconds, z = [], np.empty(0)
    for _ in range(repeats):
        with no_gc():
            begin = time.perf_counter()
            z = np.stack([np.convolve(row, taps, mode="valid") for row in values])
            np.angle(z), np.abs(z)
            seconds.append(time.perf_counter() - begin)
    return seconds, z


def _calls(shape: RawShape, t: np.ndarray, batch_rows: int) -> list[tuple[int, int]]:
    """Time steps [k0, k1) of each call: about ``batch_rows`` rows of all sensors."""
    step = max(1, batch_rows // shape.sensors)
    return [(k0, min(k0 + step, len(t))) for k0 in range(0, len(t), step)]


def fleet_batches(shape: RawShape, t: np.ndarray, values: np.ndarray, phases: Phases, batch_rows: int):
    """The calls of (b): raw ``SampleBatch`` es (one per sensor and call), and the phases of (a) in calls
    over the same spans of event time (a phase is stamped at its filter's centre: earlier calls)."""
    from schemas.samples import SampleBatch

    names = sensor_names(shape)
    calls = _calls(shape, t, batch_rows)
    raw = [[SampleBatch(names[i], t[k0:k1], values[i, k0:k1, None], raw=True) for i in range(shape.sensors)]
           for k0, k1 in calls]
    starts = np.searchsorted(phases.sid, np.arange(shape.sensors + 1))
    bounds = [t[k0] for k0, _ in calls[1:]]
    cuts = [starts[i] + np.searchsorted(phases.t[starts[i]:starts[i + 1]], bounds) for i in range(shape.sensors)]
    fed = []
    for c in range(len(calls)):
        call = []
        for i in range(shape.sensors):
            a = cuts[i][c - 1] if c else starts[i]
            b = cuts[i][c] if c < len(bounds) else starts[i + 1]
            if b > a:
                call.append(SampleBatch(names[i], phases.t[a:b], phases.phase[a:b, None]))
        fed.append(call)
    return raw, fed


def fleet_once(settings, sensors: int, calls) -> tuple[float, int, tuple[int, int], Phases, int]:
    """The calls through one new Fleet, then its flush: seconds, samples accepted, (collapses, dissipations),
    the phase samples that entered the estimator, batches with refused rows."""
    from operators.fleet import Fleet
    from operators.roster import SensorCapacity

    fleet = Fleet(settings, SensorCapacity(sensors))
    now = time.time_ns() // 1000
    steps = []
    with no_gc():
        begin = time.perf_counter()
        for batches in calls:
            steps.append(fleet.push(batches, now))
        steps.append(fleet.flush())
        seconds = time.perf_counter() - begin
    event = np.concatenate([s.resonance.sync.event for s in steps])
    entered = [p for s in steps for p in s.phases]
    sid = np.concatenate([p[0] for p in entered])
    t = np.concatenate([p[1] for p in entered])
    phase = np.concatenate([p[2][:, 0] if p[2].ndim == 2 else p[2] for p in entered])
    refused = sum(len(s.refusals) for s in steps)
    return (seconds, sum(s.accepted for s in steps), (int(np.count_nonzero(event == 1)),
            int(np.count_nonzero(event > 1))), Phases(*_by_sensor(sid, t, phase)), refused)


def fleet_pair(shape: RawShape, settings, t: np.ndarray, values: np.ndarray, phases: Phases, batch_rows: int,
               repeats: int = REPEATS) -> PairRun:
    """(b): the raw calls and the phase calls through a new Fleet each, alternated ``repeats`` times."""
    raw_calls, phase_calls = fleet_batches(shape, t, values, phases, batch_rows)
    run = PairRun([], [], shape.samples, phases.t.size, (0, 0), len(raw_calls))
    for r in range(repeats):
        for fed_raw, calls in ((True, raw_calls), (False, phase_calls)):
            seconds, accepted, events, entered, refused = fleet_once(settings, shape.sensors, calls)
            want = run.raw_samples if fed_raw else run.phase_samples
            what = f"raw {shape.key} (b) Fleet fed {'raw samples' if fed_raw else 'the phases of (a)'}"
            if accepted != want or refused:
                raise RuntimeError(f"{what}: accepted {accepted:,} of {want:,} samples, {refused:,} batches with "
                                   "refused rows")
            if fed_raw and r == 0:
                same = (np.array_equal(entered.sid, phases.sid) and np.array_equal(entered.t, phases.t)
                        and np.array_equal(entered.phase, phases.phase))
                if not same:
                    raise RuntimeError(f"{what}: the phases that entered the estimator are not those of (a)")
            if fed_raw and r == 0:
                run.events = events
            elif events != run.events:
                raise RuntimeError(f"{what}: {events[0]:,} collapses and {events[1]:,} dissipations, the Fleet fed "
                                   f"raw samples {run.events[0]:,} and {run.events[1]:,}")
            (run.raw_s if fed_raw else run.phase_s).append(seconds)
    return run


def flow_pair(shape: RawShape, t: np.ndarray, values: np.ndarray, phases: Phases, batch_rows: int,
              scratch: Path, repeats: int = REPEATS) -> PairRun:
    """(c): ``flows.kairos.build_flow`` over an Arrow file of the raw samples and over one of the phases of
    (a) (archive off, recovery off, one worker), alternated ``repeats`` times."""
    from bench.fleet_runs import run_flow_once

    names = sensor_names(shape)
    sid, tt, x = _time_ordered_rows(t, values)
    raw_path, phase_path = scratch / "raw.arrow", scratch / "phases.arrow"
    write_rows(raw_path, names, sid, tt, x[:, 0], "value")
    order = phases.time_ordered()
    write_rows(phase_path, names, phases.sid[order], phases.t[order], phases.phase[order], "phase")
    run = PairRun([], [], shape.samples, phases.t.size, (0, 0))
    for r in range(repeats):
        for fed_raw, path in ((True, raw_path), (False, phase_path)):
            config = config_for(shape, path, root=scratch / "memory", batch_rows=batch_rows)
            want = run.raw_samples if fed_raw else run.phase_samples
            flow = run_flow_once(config, want)
            what = f"raw {shape.key} (c) flow over {'the raw samples' if fed_raw else 'the phases of (a)'}"
            if flow.accepted != want or flow.rejected:
                raise RuntimeError(f"{what}: accepted {flow.accepted:,} and rejected {flow.rejected:,} of {want:,}")
            if fed_raw and r == 0:
                run.events = flow.events
            elif flow.events != run.events:
                raise RuntimeError(f"{what}: {flow.events[0]:,} collapses and {flow.events[1]:,} dissipations, the "
                                   f"flow over the raw samples {run.events[0]:,} and {run.events[1]:,}")
            (run.raw_s if fed_raw else run.phase_s).append(flow.seconds)
    return run


def run_shape(shape: RawShape, repeats: int = REPEATS, *, flows: bool = True, batch_rows: int = BATCH_ROWS,
              quiet: bool = False) -> RawRun:
    """One shape: (a), (b) and (c) over the same samples; raises if a check fails."""
    say = (lambda _m: None) if quiet else progress
    say(f"raw {shape.key}: {shape.label} for {shape.seconds:g} s = {shape.samples:,} samples")
    settings = settings_for(shape)
    t, values = generate(shape)
    kernel = kernel_pass(settings, t, values, repeats, batch_rows)
    run = RawRun(shape, tuple(settings.phase_band), settings.phase_method, batch_rows, kernel)
    say(f"  (a) {kernel.taps} taps: extract_phases {si(shape.samples / min(kernel.filter_s))} samples/s, "
        f"np.convolve {si(shape.samples / min(kernel.reference_s))} samples/s"
        + (f", beat_phases {min(kernel.beats_s):.2f} s in one call, {min(kernel.beats_calls_s):.2f} s in calls"
           if kernel.beats_s else ""))
    run.fleet = fleet_pair(shape, settings, t, values, kernel.phases, batch_rows, repeats)
    say(f"  (b) Fleet: raw {si(run.fleet.raw_rate)}, phases {si(run.fleet.phase_rate)} samples/s, "
        f"events {run.fleet.events}")
    if flows:
        scratch = Path(tempfile.mkdtemp(prefix="becomingone-raw-"))
        try:
            run.flow = flow_pair(shape, t, values, kernel.phases, batch_rows, scratch, repeats)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        if run.flow.events != run.fleet.events:
            raise RuntimeError(f"raw {shape.key}: the flow gave {run.flow.events} collapses and dissipations, "
                               f"the Fleet {run.fleet.events}")
        say(f"  (c) flow: raw {si(run.flow.raw_rate)}, phases {si(run.flow.phase_rate)} samples/s")
    return run


def scaled(shape: RawShape, scale: float, sensors: float = 1.0) -> RawShape:
    """The shape with its event time times ``scale`` and its sensors times ``sensors`` (at least 2)."""
    return RawShape(shape.key, shape.kind, shape.config, max(2, round(shape.sensors * sensors)), shape.rate_hz,
                    shape.seconds * scale, shape.seed)


def warm_up() -> None:
    """Compile every kernel and import the flow once, on small versions of the shapes (not measured)."""
    for shape in SHAPES:
        run_shape(scaled(shape, 0.25, 0.05), repeats=1, batch_rows=2_000, quiet=True)


def run_all(keys: Sequence[str] | None = None, scale: float = 1.0, **options) -> list[RawRun]:
    """Every shape of :data:`SHAPES` (or those of ``keys``), event time scaled by ``scale``."""
    warm_up()
    return [run_shape(scaled(s, scale), **options) for s in SHAPES if keys is None or s.key in keys]
