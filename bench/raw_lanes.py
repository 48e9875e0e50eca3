"""Raw sensors: the phase extraction in the flow against the same flow fed the extracted phases, same run.

    python -m bench.raw_lanes                                 this section alone, tables on stdout
    python -m bench.raw_lanes --update docs/benchmarks.md     ... and put it into an existing report
    make bench                                                bench.pipeline runs it inside the whole report

A raw ``value`` sensor (SPEC section 9) enters the resonate step's engine
(:class:`operators.fleet.Fleet`) in a lane of raw sensors, whose released
samples become phase samples (:mod:`operators.raw_phase`: the analytic FIR
band-pass of :mod:`operators.phase_extraction`, a Numba kernel of O(taps) per
sample and channel, and for ``kairos.phase_method: events`` the beat detector
of :mod:`operators.beat_phase`) before the estimator.  For each shape (EEG
alpha, ECG rhythm, PMU modes; :data:`bench.raw_shapes.SHAPES`, each with its
example config of ``config/``) the same generated samples go through

(a) **the extraction kernel alone**: ``extract_phases`` (and ``beat_phases``)
    over the whole run's rows in one call, the fastest of
    :data:`~bench.raw_lane_runs.REPEATS`: samples/s and multiply-adds/s (taps x
    samples), against ``np.convolve`` of each sensor's record with the same
    taps (the baseline; the phases must agree);
(b) **the Fleet**: fed the raw samples in time-ordered calls of about
    :data:`~bench.raw_shapes.BATCH_ROWS` rows, against a new Fleet fed the
    phases (a) produced, as phase batches over the same spans of event time:
    the difference is the extraction's share;
(c) **the flow**: :func:`flows.kairos.build_flow` over a ``source.kind: file``
    Arrow file of the raw samples (archive off, no Kafka, metrics endpoint
    off, ``recovery=False``, one worker, ``source.batch_rows`` as (b)),
    against the same flow over a file of (a)'s phases.

Checks (a shape fails if one does not hold): every sample accepted in (b)
and (c); the phases that entered the raw Fleet's estimator equal (a)'s bit
for bit; collapses and dissipations equal between the raw and phase-fed runs
and between (b) and (c).

Where the parts live: :mod:`bench.raw_shapes` (shapes, samples, configs,
files), :mod:`bench.raw_lane_runs` (one shape measured and checked) and
:mod:`bench.raw_lane_report` (the tables and the report section); this module
is the command line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.fleet_report import machine_description
from bench.kernels import progress
from bench.raw_lane_report import text_table, update_report
from bench.raw_lane_runs import REPEATS, run_all
from bench.raw_shapes import BATCH_ROWS, SHAPES


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.raw_lanes", description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", nargs="+", choices=[s.key for s in SHAPES], help="shapes to run (default all)")
    parser.add_argument("--scale", type=float, default=1.0, help="event time of each shape times this (default 1)")
    parser.add_argument("--repeats", type=int, default=REPEATS, help=f"runs of each measurement (default {REPEATS})")
    parser.add_argument("--batch-rows", type=int, default=BATCH_ROWS,
                        help=f"rows per call of (b) and source.batch_rows of (c) (default {BATCH_ROWS:,})")
    parser.add_argument("--skip-flows", action="store_true", help="leave (c) out")
    parser.add_argument("--update", metavar="PATH", help="replace this section in the report at PATH")
    args = parser.parse_args(argv)
    if args.scale <= 0 or args.repeats < 1 or args.batch_rows < 1:
        parser.error("need --scale > 0, --repeats >= 1 and --batch-rows >= 1")
    machine = machine_description()
    progress(machine)
    runs = run_all(args.shapes, args.scale, repeats=args.repeats, flows=not args.skip_flows,
                   batch_rows=args.batch_rows)
    print(text_table(runs))
    if args.update:
        update_report(Path(args.update), runs, machine=machine)
        progress(f"updated {args.update}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
