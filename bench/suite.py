"""The whole run: every workload, wire format and stage, the latency run, the kernels, the fleet and raw-sensor
shapes, with the measurements that gave no number kept as failures."""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import ConsumerHarness, ConsumerRun, LocalBroker
from bench.kernels import progress
from bench.markdown import ms, si
from bench.stages import (
    LATENCY_RATE, ComputeRun, LatencyRun, MasterStateRow, NaiveRun, compute_ceiling, latency_run, master_state,
    naive_estimate,
)
from bench.workloads import (
    ARROW_SLICE_US, PARTITIONS, WORKLOADS, WireMessages, Workload, WorkloadSpec, arrow_messages, generate_workload,
    json_messages,
)



REPEAT_BELOW_S = 30.0                 # a consumer run shorter than this is repeated ...


REPEATS = 3                           # ... to this many runs, and the median rate reported


STAGES = ("io", "engine", "full")


@dataclass
class WireResult:
    """One wire format over one workload: the three consumers, and stages 4 and 5 over the same samples."""

    wire: str
    span_s: float                     # event time sent (JSON: a prefix of the workload, see --json-seconds)
    samples: int
    messages: int
    nbytes: int
    runs: dict[str, ConsumerRun]      # stage -> run
    compute: ComputeRun
    naive: NaiveRun


@dataclass
class WorkloadResult:
    spec: WorkloadSpec
    kinds: dict[str, int]
    wires: dict[str, WireResult]


@dataclass
class Failure:
    """A measurement that gave no valid number, and why."""

    what: str
    error: str

    @property
    def headline(self) -> str:
        """The error's first line (without the repeated label) and, for a child's log, its last."""
        lines = [line for line in self.error.strip().splitlines() if line.strip()] or ["(no message)"]
        first = lines[0].removeprefix(f"{self.what}: ")
        return first if len(lines) == 1 else f"{first} {lines[-1].strip()}"


@dataclass
class BenchResult:
    workloads: list[WorkloadResult]
    latency: LatencyRun | None
    master: list[MasterStateRow]
    kernel_cases: list[Any]
    machine: str
    elapsed_s: float
    json_seconds: float
    defaults: dict[str, float]
    failures: list[Failure] = field(default_factory=list)
    fleets: list[Any] = field(default_factory=list)
    engine: str = ""                  # what the flow's resonate step ran (bench.fleet_report.resonate_engine)
    raw: list[Any] = field(default_factory=list)     # the raw-sensor shapes (bench.raw_lanes)


def check_events(label: str, full: ConsumerRun, compute: ComputeRun) -> None:
    """The full pipeline must emit exactly the collapses and dissipations the offline operators find."""
    got = (full.transitions.get("collapse", 0), full.transitions.get("dissipate", 0))
    if got != (compute.collapses, compute.dissipations):
        raise RuntimeError(f"{label}: the pipeline emitted {got[0]} collapses and {got[1]} dissipations, the "
                           f"offline operators {compute.collapses} and {compute.dissipations} over the same "
                           "samples: the pipeline's results are wrong")


def measure(harness: ConsumerHarness, stage: str, workload: Workload, messages: WireMessages) -> ConsumerRun:
    """One consumer run; a short one (under :data:`REPEAT_BELOW_S`) is repeated and the median rate kept.

    Short runs are the ones a stray process on two shared cores moves most.
    Every repetition gets new topics and a new child, and must count every sample.
    """
    runs = [harness.run(stage, workload, messages)]
    if runs[0].seconds < REPEAT_BELOW_S:
        runs += [harness.run(stage, workload, messages) for _ in range(REPEATS - 1)]
    if len(runs) == 1:
        return runs[0]
    runs.sort(key=lambda r: r.rate)
    median = runs[(len(runs) - 1) // 2]
    median.repeat_rates = [r.rate for r in runs]
    return median


def run_workload(harness: ConsumerHarness, spec: WorkloadSpec, config: Any, *, wires: Sequence[str],
                 json_seconds: float, naive_prefix: int, naive_sensors: int,
                 failures: list["Failure"]) -> WorkloadResult:
    """Stages 1 to 3 per wire format against the broker, then 4 and 5 over the same samples.

    A stage that fails (a child error, lost data, events that differ from
    stage 4's) gives no number: it is added to ``failures`` and the run goes on.
    """
    progress(f"{spec.key}: generating {spec.label} for {spec.duration_s} s ({spec.samples:,} samples)")
    workload = generate_workload(spec)
    offline: dict[float, tuple[ComputeRun, NaiveRun]] = {}
    out: dict[str, WireResult] = {}
    for wire in wires:
        part = workload.head(json_seconds) if wire == "json" else workload
        messages = arrow_messages(part, ARROW_SLICE_US) if wire == "arrow" else json_messages(part)
        progress(f"{spec.key} {wire}: {part.span_s:g} s of event time, {part.samples:,} samples in "
                  f"{messages.messages:,} messages ({messages.nbytes / 1e6:,.0f} MB); the producer stays at most "
                  f"{messages.lead_limit():,} samples ahead")
        runs: dict[str, ConsumerRun] = {}
        for stage in STAGES:
            try:
                runs[stage] = measure(harness, stage, part, messages)
            except RuntimeError as exc:     # no number for this stage; the others still count
                failures.append(Failure(f"{spec.key} {wire} {stage}", str(exc)))
                progress(f"  FAILED: {failures[-1].what}: {failures[-1].headline}")
        sizes = (messages.messages, messages.nbytes)
        del messages
        if part.span_s not in offline:
            progress(f"{spec.key}: compute ceiling over {part.span_s:g} s (one pass offline, in memory)")
            compute = compute_ceiling(part, config)
            progress(f"  {spec.key} compute: {part.samples:,} samples in {compute.seconds:.2f} s = "
                      f"{si(compute.rate)} samples/s; {compute.collapses:,} collapses, "
                      f"{compute.dissipations:,} dissipations")
            # A sensor longer than the prefix is extrapolated (one is enough); short ones run whole.
            sensors = 1 if part.t_us.shape[0] > naive_prefix else naive_sensors
            progress(f"{spec.key}: naive per-sample recompute over {part.span_s:g} s on {sensors} sensor(s)")
            offline[part.span_s] = (compute, naive_estimate(part, config, prefix=naive_prefix, sensors=sensors))
        compute, naive = offline[part.span_s]
        if "full" in runs:
            try:
                check_events(f"{spec.key} {wire}", runs["full"], compute)
            except RuntimeError as exc:
                failures.append(Failure(f"{spec.key} {wire} full: events", str(exc)))
                progress(f"  FAILED: {failures[-1].what}: {failures[-1].headline}")
        out[wire] = WireResult(wire, part.span_s, part.samples, *sizes, runs, compute, naive)
    kinds = {k: workload.kinds.count(k) for k in dict.fromkeys(workload.kinds)}
    return WorkloadResult(spec, kinds, out)


def machine_description() -> str:
    """CPU, cores, OS and the versions that matter here."""
    from importlib.metadata import version

    import confluent_kafka

    from bench import kernels

    return (f"{kernels.machine_description()}, Bytewax {version('bytewax')}, PyArrow {version('pyarrow')}, "
            f"confluent-kafka {version('confluent-kafka')}, librdkafka {confluent_kafka.libversion()[0]}")


def run_all(args: argparse.Namespace) -> BenchResult:
    """Everything, in one process tree: the broker, the consumer children, the offline stages, the kernels."""
    from bench import kernels
    from connectors.kafka import MOCK_PARTITIONS
    from schemas.config import parse_config

    if MOCK_PARTITIONS != PARTITIONS:
        raise RuntimeError(f"the mock broker makes {MOCK_PARTITIONS} partitions, this benchmark assumes {PARTITIONS}")
    begin = time.perf_counter()
    machine = machine_description()
    progress(machine)
    config = parse_config({"sink": {"archive": False}}, source="the config defaults")
    scratch = Path(tempfile.mkdtemp(prefix="becomingone-bench-"))
    latency = None
    failures: list[Failure] = []
    try:
        with LocalBroker(scratch / "broker.log") as broker:
            progress(f"broker at {broker.bootstrap}")
            harness = ConsumerHarness(broker.bootstrap, scratch)
            results = [run_workload(harness, s, config, wires=args.wires, json_seconds=args.json_seconds,
                                    naive_prefix=args.naive_prefix, naive_sensors=args.naive_sensors,
                                    failures=failures)
                       for s in WORKLOADS if s.key in args.workloads]
            if not args.skip_latency:
                progress(f"latency: {WORKLOADS[0].label}, Arrow, paced at {LATENCY_RATE:,} samples/s for "
                          f"{WORKLOADS[0].duration_s} s")
                try:
                    latency = latency_run(harness, generate_workload(WORKLOADS[0]))
                    progress(f"  latency: {len(latency.latencies_s)} events, p50 {ms(latency.percentile(50))}, "
                              f"p99 {ms(latency.percentile(99))}")
                except RuntimeError as exc:
                    failures.append(Failure("latency run", str(exc)))
                    progress(f"  FAILED: latency run: {failures[-1].headline}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    progress("Master state per sensor at 10 Hz and 10 kHz")
    master = [master_state(config, 10, 3_700), master_state(config, 10_000, 120)]
    cases = []
    if not args.skip_kernels:
        progress("kernel benchmark (bench.kernels)")
        cases = [kernels.run_case(100_000, c, 5, 5_000) for c in (1, 3)]
        bad = [c for c in cases if not c.agreement.worst <= kernels.AGREEMENT_TOLERANCE]
        if bad:
            raise RuntimeError(f"kernel results disagree with the reference: {[c.agreement for c in bad]}")
    fleet_results = []
    if not args.skip_fleets:
        from bench import fleet_runs

        progress("fleet shapes (bench.fleets)")
        try:
            fleet_results = fleet_runs.run_all()
        except RuntimeError as exc:
            failures.append(Failure("fleet shapes", str(exc)))
    raw_results = []
    if not args.skip_raw:
        from bench import raw_lane_runs

        progress("raw-sensor shapes (bench.raw_lanes)")
        try:
            raw_results = raw_lane_runs.run_all()
        except RuntimeError as exc:
            failures.append(Failure("raw-sensor shapes", str(exc)))
    defaults = {"tau_max_master_s": config.master.tau_max, "pane_s": config.master.witness_interval,
                "tau_max_emissary_s": config.emissary.tau_max, "grid_emissary_s": config.emissary.witness_interval,
                "min_span_s": config.master.min_span}
    from bench.fleet_report import resonate_engine

    return BenchResult(results, latency, master, cases, machine, time.perf_counter() - begin, args.json_seconds,
                       defaults, failures, fleet_results, resonate_engine(), raw_results)
