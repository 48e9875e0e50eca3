"""End-to-end throughput, latency and memory of the BecomingONE pipeline, with the kernel benchmark.

    python -m bench.pipeline --write docs/benchmarks.md      (= ``make bench``)

One run, one process tree, one local broker (``becomingone broker``:
librdkafka's mock cluster in a subprocess, topics of
:data:`connectors.kafka.MOCK_PARTITIONS` partitions), and two generated
workloads of 6 million samples each:

* **w1**: 100 sensors at 1 kHz for 60 s of event time;
* **w2**: 10,000 sensors at 10 Hz for 60 s of event time.

Sensors are synthetic oscillators (:mod:`connectors.synthetic`): seven in ten
steady, one drifting, one noise, one switching from steady to noise halfway,
so collapses and dissipations happen.  Each workload is generated once
(seeded) and the same samples become JSON messages (one per sample, key =
sensor), Arrow IPC messages (one per partition and second of event time) and
the in-memory arrays of the compute ceiling.  Sensor ``i`` always goes to
partition ``i % 4``, so its samples stay in order.

Measured per workload (and wire format where it applies):

1. **I/O ceiling**: a plain confluent-kafka consumer reading the topic and
   doing nothing with the messages;
2. **engine ceiling**: :func:`flows.kairos.build_engine_flow` (Kafka source,
   decode, key-group routing, a step that only counts);
3. **full pipeline**: :func:`flows.kairos.build_flow` with Kafka output
   topics, the Arrow archive and the metrics endpoint on;
4. **compute ceiling**: the one-pass kernel
   :func:`operators.columnar.fleet_resonance` offline over the same samples in
   memory, every sensor in one call (the algorithm the flow's windows and sync
   compute, not the exact sliding Emissary);
5. **naive**: the per-sample full recompute of :mod:`bench.kernels`, run on a
   subsample and extrapolated (marked as such).

The JSON path is sent only the first ``--json-seconds`` (default
:data:`JSON_SECONDS`) of each workload's event time, and stages 4 and 5 are
measured again over that prefix, so its ratios compare the same samples: at
its present speed all of both workloads as JSON would take the benchmark far
past ten minutes.

Plus the end-to-end latency (produce to collapse event, p50/p99) at a fixed
offered rate of 100,000 samples/s, the Master's state bytes per sensor at
10 Hz and 10 kHz, the kernel benchmark of :mod:`bench.kernels`, the fleet
shapes of :mod:`bench.fleets` (the flow end to end over a file against the
one-pass compute ceiling), and the raw-sensor shapes of :mod:`bench.raw_lanes`
(phase extraction in the flow against the same flow fed the extracted phases).

How a consumer run (stages 1 to 3) works
    The measured consumer runs in its own child process (``python -m
    bench.pipeline --child SPEC``), so its peak RSS (``VmHWM``) is its own.
    The child warms Numba up, builds the flow, and says it is ready through a
    small shared-memory progress board.  The parent (the producer) then puts
    a lead of messages on the broker, and the child starts its clock and runs
    ``bytewax.testing.run_main(flow)`` (one worker).  The mock broker keeps
    only about the newest 5 MB or 100,000 messages of a partition and
    silently drops older ones, so nothing can be produced up front: the
    parent keeps producing while the child consumes, never more than
    :data:`bench.workloads.LEAD_BYTES_PER_PARTITION` bytes (as the broker stores them: Arrow
    is lz4-compressed) or :data:`~bench.workloads.LEAD_MESSAGES_PER_PARTITION` messages per
    partition ahead of the samples the child has counted
    (``becomingone_samples_total``, read in the child every millisecond and
    written to the board).  When the child has counted every sample it calls
    the flow's stop signal (:class:`flows.observer.FlowObserver`), the flow drains as at end of input,
    and the clock stops when ``run_main`` returns.  (``source.stop_at_end``
    would end a partition the first time the consumer catches up with the
    producer; with concurrent producing that can happen mid-run, so the flows
    follow the topic and stop on the count.)  A run whose child did not count
    exactly every sample produced is an error, not a number.

Where the parts live
    :mod:`bench.workloads` (the workloads and their JSON and Arrow
    messages), :mod:`bench.harness` (one consumer run: the broker, the child
    of :mod:`bench.child`, the producer of :mod:`bench.feeds`),
    :mod:`bench.stages` (compute ceiling, naive loop, latency, Master state),
    :mod:`bench.suite` (the whole run) and :mod:`bench.report` (stdout and
    ``docs/benchmarks.md``); this module is the command line.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.child import child_main
from bench.kernels import progress
from bench.report import render_markdown, render_stdout, scrub
from bench.suite import run_all
from bench.workloads import WORKLOADS


JSON_SECONDS = 15.0                   # event time of each workload sent as JSON (see --json-seconds)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__.split("\n")[0])
    parser.add_argument("--write", metavar="PATH", help="also write the Markdown report to PATH")
    parser.add_argument("--workloads", nargs="+", default=[w.key for w in WORKLOADS],
                        choices=[w.key for w in WORKLOADS], help="workloads to run (default all)")
    parser.add_argument("--wires", nargs="+", default=["json", "arrow"], choices=["json", "arrow"],
                        help="wire formats to run (default both)")
    parser.add_argument("--json-seconds", type=float, default=JSON_SECONDS,
                        help=f"event time of each workload sent as JSON (default {JSON_SECONDS:g}; 60 = all)")
    parser.add_argument("--naive-prefix", type=int, default=2_000,
                        help="samples the naive loop really runs over per measured sensor (default 2000)")
    parser.add_argument("--naive-sensors", type=int, default=20,
                        help="sensors the naive loop runs over where a sensor has few samples (default 20)")
    parser.add_argument("--skip-latency", action="store_true", help="leave the latency run out")
    parser.add_argument("--skip-kernels", action="store_true", help="leave the kernel benchmark out")
    parser.add_argument("--skip-fleets", action="store_true", help="leave the fleet shapes (bench.fleets) out")
    parser.add_argument("--skip-raw", action="store_true",
                        help="leave the raw-sensor shapes (bench.raw_lanes) out")
    parser.add_argument("--child", metavar="SPEC", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child_main(args.child)
    if args.json_seconds <= 0 or args.naive_prefix < 10 or args.naive_sensors < 1:
        parser.error("need --json-seconds > 0, --naive-prefix >= 10, --naive-sensors >= 1")
    # Stopped from outside: unwind, so the broker and the running child are stopped too.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    result = run_all(args)
    print(render_stdout(result))
    progress(f"done in {result.elapsed_s / 60:.1f} min")
    if args.write:
        command = "python -m bench.pipeline --write " + args.write   # MAKE_COMMAND with the default path
        extra = [a for a in (argv if argv is not None else sys.argv[1:]) if a not in ("--write", args.write)]
        if extra:
            command += " " + " ".join(extra)
        Path(args.write).write_text(render_markdown(result, scrub(command)), encoding="utf-8")
        progress(f"wrote {args.write}")
    if result.failures:
        progress(f"{len(result.failures)} measurement(s) failed: " + "; ".join(f.what for f in result.failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
