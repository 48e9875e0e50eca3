"""The benchmark's report: the tables on stdout and ``docs/benchmarks.md`` as a whole."""

from __future__ import annotations

import datetime as _dt
import math
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.harness import CONSUMER_TUNING, SOURCE_BATCH, ConsumerRun, repo_root
from bench.markdown import mib, ms, pct, rate_text, ratio, si, table
from bench.stages import COMPUTE_REPEATS, LATENCY_FETCH_WAIT_MS, LATENCY_RATE, LATENCY_SLICE_US, LATENCY_SOURCE_BATCH
from bench.suite import REPEATS, REPEAT_BELOW_S, STAGES, BenchResult, WireResult, WorkloadResult
from bench.workloads import ARROW_SLICE_US, LEAD_BYTES_PER_PARTITION, LEAD_MESSAGES_PER_PARTITION, PARTITIONS, WORKLOADS


MAKE_COMMAND = "python -m bench.pipeline --write docs/benchmarks.md"


# Targets of the issue this benchmark implements.
TARGET_JSON_SHARE_OF_ENGINE = 0.50


TARGET_ARROW_RATE = 5_000_000


TARGET_ARROW_SHARE_OF_COMPUTE = 0.25


TARGET_MASTER_BYTES = 1024 * 1024


TARGET_LATENCY_P99_S = 0.050


STAGE_NAMES = {"io": "1. I/O ceiling (plain consumer)", "engine": "2. engine ceiling (decode + key)",
               "full": "3. full pipeline"}


EXTRAPOLATED = " (extrapolated)"


def _wire_label(w: WorkloadResult, r: WireResult) -> str:
    name = {"json": "JSON", "arrow": "Arrow"}[r.wire]
    return name if r.span_s >= w.spec.duration_s else f"{name}, first {r.span_s:g} s"


def throughput_rows(res: BenchResult) -> list[list[str]]:
    rows = []
    for w in res.workloads:
        for r in w.wires.values():
            wire, span = {"json": "JSON", "arrow": "Arrow"}[r.wire], f"{r.span_s:g} s"
            for stage in STAGES:
                run = r.runs.get(stage)
                if run is None:
                    rows.append([w.spec.key, span, wire, STAGE_NAMES[stage], f"{r.samples:,}", "**failed** (see "
                                 "Failures)", "-", "-", "-", "-", "-"])
                    continue
                spread = (f" (median of {len(run.repeat_rates)}: {si(run.repeat_rates[0])} to "
                          f"{si(run.repeat_rates[-1])})" if run.repeat_rates else "")
                rows.append([w.spec.key, span, wire, STAGE_NAMES[stage], f"{run.samples:,}", f"{run.seconds:.2f} s",
                             si(run.rate) + spread, f"{run.first_sample_s:.2f} s", si(run.steady_rate),
                             mib(run.peak_rss_bytes), f"{run.starved_s:.2f} s"
                             + (f" (idle {run.idle_s:.2f} s)" if math.isfinite(run.idle_s) else "")])
        for r in {r.span_s: r for r in w.wires.values()}.values():     # stages 4 and 5 once per span
            span = f"{r.span_s:g} s"
            rows.append([w.spec.key, span, "memory", "4. compute ceiling (one pass offline)",
                         f"{r.compute.samples:,}", f"{r.compute.seconds:.2f} s", si(r.compute.rate),
                         "-", "-", "-", "-"])
            rows.append([w.spec.key, span, "memory", "5. naive per-sample recompute", f"{r.naive.samples:,}",
                         si(r.naive.total_s, "s") + EXTRAPOLATED, si(r.naive.rate) + EXTRAPOLATED,
                         "-", "-", "-", "-"])
    return rows


THROUGHPUT_HEADER = ["workload", "event time", "wire", "stage", "samples", "time", "samples/s", "first sample after",
                     "samples/s after first", "peak RSS", "consumer caught up"]


RATIO_HEADER = ["workload", "wire", "3/2 (full / engine)", "3/1 (full / I/O)", "3/4 (full / compute)",
                "3/5 (full / naive)"]


def _share(run: ConsumerRun | None, base: float | None, text: Callable[[float], str] = pct) -> str:
    return "n/a" if run is None or base is None else text(run.rate / base)


def ratio_rows(res: BenchResult) -> list[list[str]]:
    rows = []
    for w in res.workloads:
        for r in w.wires.values():
            full, engine, io = (r.runs.get(s) for s in ("full", "engine", "io"))
            rows.append([w.spec.key, _wire_label(w, r), _share(full, engine and engine.rate),
                         _share(full, io and io.rate), _share(full, r.compute.rate),
                         _share(full, r.naive.rate, lambda x: ratio(x) + EXTRAPOLATED)])
    return rows


@dataclass
class TargetRow:
    target: str
    measured: str
    ok: bool | None                   # None: not measured (its stage failed)

    @property
    def verdict(self) -> str:
        return "not measured" if self.ok is None else ("pass" if self.ok else "miss")


def target_rows(res: BenchResult) -> list[TargetRow]:
    """The issue's targets, each against the number measured in this run."""
    failed = "not measured: a stage failed (see Failures)"
    rows = []
    for w in res.workloads:
        if "json" in w.wires:
            r = w.wires["json"]
            full, engine = r.runs.get("full"), r.runs.get("engine")
            target = f"{w.spec.key} JSON: full pipeline >= {TARGET_JSON_SHARE_OF_ENGINE:.0%} of the engine ceiling"
            if full is None or engine is None:
                rows.append(TargetRow(target, failed, None))
            else:
                share = full.rate / engine.rate
                rows.append(TargetRow(target, f"{pct(share)} ({si(full.rate)} / {si(engine.rate)} samples/s)",
                                      share >= TARGET_JSON_SHARE_OF_ENGINE))
        if "arrow" in w.wires:
            r = w.wires["arrow"]
            full = r.runs.get("full")
            rate_target = f"{w.spec.key} Arrow: full pipeline >= {si(TARGET_ARROW_RATE)} samples/s end to end"
            share_target = (f"{w.spec.key} Arrow: full pipeline >= {TARGET_ARROW_SHARE_OF_COMPUTE:.0%} of the "
                            "compute ceiling")
            if full is None:
                rows += [TargetRow(rate_target, failed, None), TargetRow(share_target, failed, None)]
            else:
                rows.append(TargetRow(rate_target, f"{si(full.rate)} samples/s ({si(full.steady_rate)} after the "
                                      "first sample)", full.rate >= TARGET_ARROW_RATE))
                share = full.rate / r.compute.rate
                rows.append(TargetRow(share_target, f"{pct(share)} ({si(full.rate)} / {si(r.compute.rate)} "
                                      "samples/s)", share >= TARGET_ARROW_SHARE_OF_COMPUTE))
    for m in res.master:
        worst = max(m.state_bytes, m.pickled_bytes)
        rows.append(TargetRow(f"Master state <= 1 MiB ({TARGET_MASTER_BYTES:,} B) per sensor, tau_max "
                              f"{res.defaults['tau_max_master_s']:g} s, {rate_text(m.rate_hz)} input",
                              f"{m.state_bytes:,} B ({m.pickled_bytes:,} B pickled)", worst <= TARGET_MASTER_BYTES))
    target = (f"latency p99 <= {TARGET_LATENCY_P99_S * 1e3:.0f} ms at {LATENCY_RATE:,} samples/s offered")
    lat = res.latency
    if lat is not None:
        p99 = lat.percentile(99)
        rows.append(TargetRow(target, f"{ms(p99)} (p50 {ms(lat.percentile(50))}, {len(lat.latencies_s)} events)",
                              bool(lat.latencies_s) and p99 <= TARGET_LATENCY_P99_S))
    elif any(f.what == "latency run" for f in res.failures):
        rows.append(TargetRow(target, failed, None))
    return rows


def render_stdout(res: BenchResult) -> str:
    return "\n\n".join([
        table(THROUGHPUT_HEADER, throughput_rows(res), text_columns=(0, 2, 3)),
        table(RATIO_HEADER, ratio_rows(res), text_columns=(0, 1)),
        table(["target", "measured", "result"], [[t.target, t.measured, t.verdict.upper() if t.ok is not True
                                                   else t.verdict] for t in target_rows(res)], text_columns=(0, 1, 2)),
        *([_fleets_text(res)] if res.fleets else []),
        *([_raw_text(res)] if res.raw else []),
        *([_failures_text(res)] if res.failures else []),
    ])


def _fleets_text(res: BenchResult) -> str:
    from bench import fleet_report

    return fleet_report.text_table(res.fleets)


def _raw_text(res: BenchResult) -> str:
    from bench import raw_lane_report

    return raw_lane_report.text_table(res.raw)


def _failures_text(res: BenchResult) -> str:
    return "Failures (no number was taken from these):\n" + "\n".join(
        f"- {f.what}: {f.headline}" for f in res.failures)


def _workload_lines(res: BenchResult) -> list[str]:
    lines = []
    for w in res.workloads:
        kinds = ", ".join(f"{n:,} {k}" for k, n in w.kinds.items())
        parts = [f"- **{w.spec.key}**: {w.spec.label} for {w.spec.duration_s} s of event time = "
                 f"{w.spec.samples:,} samples, one channel ({kinds}; oscillators at {min(w.spec.freq_hz):g} to "
                 f"{max(w.spec.freq_hz):g} Hz)."]
        for r in w.wires.values():
            if r.wire == "arrow":
                parts.append(f"Arrow: {r.messages:,} messages, each one partition's sensors over "
                             f"{ARROW_SLICE_US / 1e6:g} s of event time ({r.samples // r.messages:,} rows, "
                             f"{r.nbytes / r.messages / 1e3:,.0f} kB).")
            else:
                span = "" if r.span_s >= w.spec.duration_s else f" of the first {r.span_s:g} s of event time"
                parts.append(f"JSON: {r.messages:,} messages{span} ({r.samples:,} samples; "
                             f"{r.nbytes / r.messages:.0f} bytes per message with its key).")
        lines.append(" ".join(parts))
    return lines


def _events_text(res: BenchResult) -> str:
    parts = []
    for w in res.workloads:
        for r in w.wires.values():
            full = r.runs.get("full")
            if full is None:
                continue
            parts.append(f"{w.spec.key} {_wire_label(w, r)}: {full.transitions.get('collapse', 0):,} collapses and "
                         f"{full.transitions.get('dissipate', 0):,} dissipations")
    return "; ".join(parts)


def _latency_lines(res: BenchResult) -> list[str]:
    lat = res.latency
    if lat is None:
        failed = any(f.what == "latency run" for f in res.failures)
        return ["Not measured: the latency run failed (see Failures)." if failed
                else "Not run in this invocation (`--skip-latency`)."]
    flow = lat.run.flow_event_latency
    in_flow = flow["sum"] / flow["count"] if flow.get("count") else math.nan
    return [
        f"{WORKLOADS[0].label} ({lat.offered_rate:,.0f} samples/s) in real time: the producer sends one Arrow "
        f"message per partition and {LATENCY_SLICE_US / 1e3:g} ms of event time as soon as that slice has passed "
        f"on the wall clock (achieved {lat.achieved_rate:,.0f} samples/s; at worst "
        f"{lat.producer_late_max_s * 1e3:.1f} ms behind its schedule), while the full pipeline consumes "
        f"(`source.batch_size` {LATENCY_SOURCE_BATCH}, `fetch.wait.max.ms` {LATENCY_FETCH_WAIT_MS} for its consumer "
        "and for the event reader, producer `linger.ms` 0). A thread of the benchmark process reads the collapse "
        "topic and notes when each event arrives. The latency of an event at grid time g of sensor s is that "
        "arrival time minus the produce time of the first message carrying a sample of s with t >= g (the "
        "message that makes g final: watermark = newest t, lateness 0). Every event the flow counted was read "
        "back; none is left out.",
        "",
        table(["events", "decided only at end of input", "p50", "p99", "max",
                "p50 to the flow's producer", "flow's own mean (decode to event)", "peak RSS of the flow"],
               [[f"{lat.events:,}", f"{lat.end_of_input_events:,}", ms(lat.percentile(50)),
                 ms(lat.percentile(99)), ms(max(lat.latencies_s) if lat.latencies_s else math.nan),
                 ms(float(np.median(lat.to_output_s)) if lat.to_output_s else math.nan), ms(in_flow),
                 mib(lat.run.peak_rss_bytes)]]),
        "",
        "\"To the flow's producer\": the event's Kafka CreateTime (set when the flow's output producer takes "
        "it, millisecond resolution) minus the same produce time; the rest of the latency is the hop through "
        "the broker to the reader. \"Flow's own mean\": the flow's `becomingone_event_latency_seconds` "
        "(from decoding the oldest sample of the batch to building the event). The collapses cluster in "
        f"time (every steady sensor collapses once the Master spans `master.min_span`, "
        f"{res.defaults['min_span_s']:g} s after the start), so the percentiles describe a few bursts, not a "
        "smooth stream of events.",
    ]


def scrub(text: str) -> str:
    """``text`` without this machine's directories (the repository, the interpreter, temporary files, home)."""
    places = [(str(repo_root()) + os.sep, ""), (sys.prefix, "<python>"), (sys.base_prefix, "<python>"),
              (tempfile.gettempdir(), "<tmp>"), (str(Path.home()), "~")]
    for place, name in sorted(places, key=lambda pn: -len(pn[0])):
        if place and place != os.sep:
            text = text.replace(place, name)
    return text


def _json_projection(res: BenchResult) -> str:
    """Why the JSON path is cut, in numbers from this run: stages 2 and 3 over whole workloads at these rates."""
    seconds = 0.0
    for w in res.workloads:
        r = w.wires.get("json")
        if r is None or any(s not in r.runs for s in ("engine", "full")):
            return ""
        seconds += sum(w.spec.samples / r.runs[s].rate for s in ("engine", "full"))
    return (f": at the JSON rates measured here, stages 2 and 3 over all {WORKLOADS[0].samples:,} samples of each "
            f"workload would take about {seconds / 60:.0f} min")


def _failure_section(res: BenchResult) -> list[str]:
    if not res.failures:
        return []
    out = ["### Failures", "", "These measurements gave no valid number; nothing above is taken from them.", ""]
    for f in res.failures:
        tail = scrub("\n".join(f.error.strip().splitlines()[-12:]))
        out += [f"- **{f.what}**: {scrub(f.headline)}", "", "  ```", *("  " + line for line in tail.splitlines()),
                "  ```", ""]
    return out


def render_markdown(res: BenchResult, command: str) -> str:
    today = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
    json_prefix = any(r.wire == "json" and r.span_s < w.spec.duration_s for w in res.workloads
                      for r in w.wires.values())
    d = res.defaults
    out = [
        "# Benchmarks",
        "",
        f"Generated by `{command}`{' (the `make bench` target)' if command == MAKE_COMMAND else ''} on {today} "
        "(UTC); this run took "
        f"{res.elapsed_s / 60:.1f} min. The file is regenerated as a whole, so edit the modules of "
        "`bench/` (`bench/report.py` writes this page) rather than this page. No test asserts any of these times.",
        "",
        f"**Machine:** {res.machine}.",
        "",
        *([f"**Flow:** {res.engine}.", ""] if res.engine else []),
        "## Targets",
        "",
        table(["target", "measured", "result"],
               [[t.target, t.measured, f"**{t.verdict}**"] for t in target_rows(res)],
               text_columns=(0, 1, 2)),
        "",
        "## End-to-end pipeline",
        "",
        "### Workloads",
        "",
        *_workload_lines(res),
        "",
        "The samples come from `connectors.synthetic` (steady: an oscillator with 0.01 rad noise; drifting: plus "
        "a phase random walk; noise: uniform random phases; switching: steady, then noise from halfway), seeded, "
        "on one regular time grid from 2025-11-26T00:00:00Z. Each workload is generated once; the same samples "
        "are sent as JSON (one message per sample, `{\"sensor\", \"t\" (epoch seconds, six decimals), "
        "\"phase\"}`, key = sensor) and as Arrow IPC stream messages (columns sensor utf8, t timestamp[us, UTC], "
        "phase float64; rows in time order; header `content-type: application/vnd.apache.arrow.stream`), and "
        f"are held in memory for stages 4 and 5. Sensor i always goes to partition i % {PARTITIONS} (set per "
        "message), so its samples stay in order. Estimator and sync parameters are the config defaults (tau 1 s, "
        f"velocity span 0.1 s, Emissary {d['tau_max_emissary_s']:g} s on a {d['grid_emissary_s']:g} s grid, "
        f"Master {d['tau_max_master_s']:g} s in {d['pane_s']:g} s panes, min span {d['min_span_s']:g} s).",
        "",
    ]
    if json_prefix:
        out += [
            f"**The JSON path runs on the first {res.json_seconds:g} s of event time of each workload** (the same "
            "samples, the first part of them)" + _json_projection(res) + "; `--json-seconds 60` sends all of it. "
            "Its ratios compare runs over those same samples: stages 4 and 5 are measured again over that prefix.",
            "",
        ]
    out += [
        "### Method",
        "",
        "- **Broker**: `becomingone broker` (librdkafka's mock cluster, 4 partitions per topic) in a subprocess on "
        "this machine; every run gets new topics. The mock keeps only the newest ~5 MB / ~100,000 messages of a "
        "partition and silently drops older ones, so the data cannot be produced first. The benchmark's own "
        "process is the producer: it produces while the consumer under test runs, never more than "
        f"{LEAD_BYTES_PER_PARTITION / 1e6:g} MB (as stored on the broker) or {LEAD_MESSAGES_PER_PARTITION:,} "
        "messages per partition ahead of the samples the consumer has counted, and that lead is on the broker "
        "before the consumer's clock starts. The producer compresses with lz4 (the broker holds compressed "
        "batches, so ~2.5 times the Arrow samples and ~4 times the JSON samples fit in the lead; the lead "
        "bounds how many samples a consumer can take in one poll). \"Consumer caught up\" is the time during "
        "a run in which the consumer had counted every sample delivered to the broker while more was still to "
        "come, i.e. it waited for the producer; for the plain consumer, \"idle\" is the time its polls found "
        "nothing.",
        "- **Each measured consumer runs in its own child process** (one Bytewax worker, "
        "`bytewax.testing.run_main`), so the peak RSS is that consumer's own (`VmHWM` of `/proc/self/status`; "
        "`ru_maxrss` would not do: on Linux it survives `execve` and reports the benchmark process's peak). "
        "Before its clock "
        "starts, the child runs the pipeline's Numba kernels and decoder once on a few samples (JIT cache load). "
        "The time is from the start of `run_main` (or of the plain consumer's loop) to its end, in the child. It "
        "includes the Kafka clients' start (\"first sample after\": librdkafka waits ~0.5 s before looking up the "
        "start offset of a partition whose leader it does not know yet) and the drain at the end; \"samples/s "
        "after first\" leaves the start out.",
        "- **End of input**: the flows follow the topic (`source.stop_at_end: false`) and are stopped with "
        "the flow's stop signal (`FlowObserver.stop.request()`) once `becomingone_samples_total` (read in the child every millisecond) "
        "counts every sample produced; the flow then drains as at end of input. (`stop_at_end: true` would end a "
        "partition the first time the consumer catches up with the producer, which can happen mid-run.) A run "
        "gives a number only if it counted exactly every sample produced, all of them decoded or accepted (the "
        "generated data has no dead letters), and, for the full pipeline, if its metrics endpoint, scraped over "
        "HTTP, agrees with that count; otherwise it is listed under Failures.",
        f"- **Repeats**: a consumer run shorter than {REPEAT_BELOW_S:g} s is run {REPEATS} times (new topics, new "
        "child each time) and the median rate is reported with the range; those are the runs a stray process "
        "on two shared cores moves most. Longer runs are run once.",
        "- **1. I/O ceiling**: a plain confluent-kafka consumer (one client, all partitions assigned from the "
        "beginning, `consume(10000, 1 ms)` like the Bytewax source's poll) that reads every message and does "
        "nothing with it.",
        "- **2. engine ceiling**: `flows.kairos.build_engine_flow`: the Kafka source, the pipeline's decode step "
        "and key-group routing, and a step that only counts the decoded samples.",
        "- **3. full pipeline**: `flows.kairos.build_flow` (`recovery=False`, as `becomingone run` builds it: "
        "no Bytewax recovery, so epoch snapshots do not wait for the archive): decode, per-sensor event time and "
        "lag products, "
        "Emissary, Master, sync, the collapse, witness, sync and dead-letter topics, the Arrow archive (every "
        "dataset, input included) in a temporary directory, and the metrics endpoint; `source.batch_size` "
        f"{SOURCE_BATCH['arrow']} (Arrow) and {SOURCE_BATCH['json']:,} (JSON) messages per poll of a partition. "
        "Its collapse and dissipate counts must equal stage 4's over the same samples, or the run fails.",
        "- Consumer settings of stages 1 to 3: " + ", ".join(f"`{k}: {v}`" for k, v in CONSUMER_TUNING.items())
        + ". At librdkafka's default `fetch.wait.max.ms` of 500 ms the mock broker holds every fetch that long "
        "and a consumer of large messages mostly waits; at the default `fetch.queue.backoff.ms` of 1 s a client "
        "that has prefetched 100,000 messages stops fetching for a second, and with a lead of small JSON "
        "messages the plain consumer sat idle most of its run.",
        "- **4. compute ceiling**: the one-pass kernel `operators.columnar.fleet_resonance` offline over the "
        "same samples held in memory, all sensors in one call as columns grouped by sensor (end of input: "
        "everything final; the kernel's input checks included, the columns built before the clock starts): "
        "every sensor's lag products, Emissary and Master at their grid points and the sync, the rows the flow "
        "emits. Earlier reports ran the per-sensor operators here, one sensor at a time with the exact sliding "
        "Emissary (an algorithm the flow does not run); their stage 4 numbers are not comparable. Median of "
        f"{COMPUTE_REPEATS} runs, garbage collector paused, after one warm-up call.",
        "- **5. naive per-sample recompute**: `bench.kernels`' prototype loop (recompute T from scratch over the "
        "whole history on every sample; see the kernel section), measured on a subsample and extrapolated. "
        "Where a sensor has many samples (w1), one sensor's first samples run for real, its step cost is probed "
        "at larger histories up to the sensor's whole record and summed, and that is scaled by the number of "
        "sensors; where a sensor has few (w2), the loop runs for real over whole sensors of an evenly spread "
        "subset, scaled by the number of sensors. Marked **(extrapolated)**.",
        "",
        "### Throughput",
        "",
        table(THROUGHPUT_HEADER, throughput_rows(res), text_columns=(0, 2, 3)),
        "",
        "### Ratios (same run, same samples)",
        "",
        table(RATIO_HEADER, ratio_rows(res), text_columns=(0, 1)),
        "",
        "### Collapses and dissipations",
        "",
        table(["workload", "event time", "kind", "sensors", "collapses", "dissipations", "collapsed at end",
                "median final coherence"],
               [[w.spec.key, f"{span:g} s", k.kind, f"{k.sensors:,}", f"{k.collapses:,}", f"{k.dissipations:,}",
                 f"{k.collapsed_at_end:,}", f"{k.median_final_coherence:.4f}"]
                for w in res.workloads
                for span, compute in {r.span_s: r.compute for r in w.wires.values()}.items()
                for k in compute.kinds], text_columns=(0, 2)),
        "",
        "From stage 4; coherence is |T_sync|^2 at the last Emissary grid point. The full pipeline's events over "
        f"the same samples ({_events_text(res)}) equal stage 4's"
        + (", except where Failures says otherwise." if res.failures else "."),
        "",
        "### Latency",
        "",
        *_latency_lines(res),
        "",
        "### Master state per sensor",
        "",
        "A steady oscillator fed through `LagState` and both transducers in one-second batches; then the Master's "
        "`state_bytes` (its numeric arrays) and its pickled size (what a Bytewax snapshot holds), and for scale "
        "the pickled size of the sensor's whole chain (lag history, Emissary window, Master, sync).",
        "",
        table(["input rate", "fed", "products", "Master state_bytes", "Master pickled", "whole chain pickled"],
               [[rate_text(m.rate_hz), f"{m.seconds_fed:,} s ({m.samples_fed:,} samples)", f"{m.products:,}",
                 f"{m.state_bytes:,} B", f"{m.pickled_bytes:,} B", f"{m.sensor_chain_pickled_bytes:,} B"]
                for m in res.master]),
        "",
        *_failure_section(res),
        "### What limits these numbers",
        "",
        "- The machine has 2 cores. The broker subprocess, the producer (the benchmark's own process) and the "
        "consumer under test share them, so every rate here is below what the consumer would reach alone, and "
        "the I/O ceiling is largely the mock broker's own speed.",
        "- Runs of one stage differ from run to run (see the ranges of the repeated runs); a ratio of two "
        "single runs close to each other, such as full / engine on JSON, can land either side of 100%.",
        "- The mock broker's ~5 MB per partition bounds how far the producer can be ahead, and so how many "
        "samples a consumer can take in one poll; a real cluster would not. A pipeline whose cost has a part per "
        "sensor and poll pays that part more often here than it would there.",
        "",
    ]
    if res.fleets:
        from bench import fleet_report

        out.append(fleet_report.markdown_section(res.fleets, level=2, machine=res.machine))  # ends with its blank line
    if res.raw:
        from bench import raw_lane_report

        out.append(raw_lane_report.markdown_section(res.raw, level=2, machine=res.machine))  # ends with its blank line
    if res.kernel_cases:
        from bench import kernels

        out += ["## KAIROS kernels", "", kernels.markdown_sections(res.kernel_cases, level=3), ""]
    return "\n".join(out)
