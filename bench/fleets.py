"""Fleet shapes: the dataflow end to end against the one-pass compute ceiling, same samples, same run.

    python -m bench.fleets                       this section alone, tables on stdout
    python -m bench.fleets --update docs/benchmarks.md   ... and put it into an existing report
    make bench                                   bench.pipeline runs it inside the whole report

For each fleet shape (many sensors, each on a regular grid, the config
defaults; tau_scale 5 s at 1 Hz, where 1 s leaves no lag product) the same
generated samples go through

(a) **one pass**: :func:`operators.columnar.fleet_resonance` over the whole
    run's columns, grouped by sensor: the compute ceiling (the fastest of
    :data:`~bench.fleet_runs.KERNEL_REPEATS` runs, garbage collector paused);
(b) **the flow, archive off**: the samples written once, in time order, to an
    Arrow IPC file in a temporary directory; :func:`flows.kairos.build_flow`
    over a ``source.kind: file`` source of that file (``sink.archive: false``,
    no Kafka, metrics endpoint off, ``recovery=False`` as ``becomingone run
    --no-recovery``), run by ``bytewax.testing.run_main`` (one worker) in this
    process.  The clock runs around ``run_main``: reading the file, decode,
    resonate, witness and outputs, up to the end-of-input flush.  Whatever
    the flow's resonate step is at this commit is what is measured.  A run
    shorter than :data:`~bench.fleet_runs.FLOW_REPEAT_BELOW_S` is repeated (median rate);
(c) **the flow, archive on**: the same with the Arrow archive (every dataset,
    input included) in a temporary directory; ``run_main`` returns after the
    archive's files are committed.

Checks (a shape fails if one does not hold): (b) and (c) accepted every
sample and rejected none, and their collapses and dissipations (the run
ledger ``becomingone run`` prints) equal (a)'s; their meso witness records
(one per Emissary and Master row on the 1 s meso grid), where the flow builds
them, equal (a)'s rows on that grid; (c)'s archive holds (a)'s rows on the signature grid (temporal
signatures per transducer, coherence history), its events and every input
sample, counted with pyarrow.

Snapshot cost: a key group's state as the resonate step snapshots it
(:class:`operators.fleet.FleetTable`: names, each lane's event-time gate and
:class:`operators.columnar_state.FleetState`), one per key group
(``becomingone.key_groups``, sensors by :func:`flows.decoding.key_group`),
filled by :meth:`operators.fleet.Fleet.push` over the shape's samples in
time-ordered calls of about ``source.batch_rows`` rows, then pickled as
Bytewax pickles a snapshot; bytes and seconds per key group.

Where the parts live: :mod:`bench.fleet_shapes` (the shapes, their samples and
configs), :mod:`bench.fleet_runs` (one shape measured and checked) and
:mod:`bench.fleet_report` (the tables and the report section); this module is
the command line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.fleet_report import machine_description, resonate_engine, text_table, update_report
from bench.fleet_runs import run_all
from bench.fleet_shapes import FLEETS
from bench.kernels import progress


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fleets", description=__doc__.split("\n")[0])
    parser.add_argument("--fleets", nargs="+", choices=[s.key for s in FLEETS], help="shapes to run (default all)")
    parser.add_argument("--scale", type=float, default=1.0, help="event time of each shape times this (default 1)")
    parser.add_argument("--batch-rows", type=int, help="source.batch_rows of the flow runs (default: the config's)")
    parser.add_argument("--skip-flows", action="store_true", help="leave (b) and (c) out")
    parser.add_argument("--skip-snapshots", action="store_true", help="leave the snapshot cost out")
    parser.add_argument("--update", metavar="PATH", help="replace this section in the report at PATH")
    args = parser.parse_args(argv)
    if args.scale <= 0:
        parser.error("--scale must be positive")
    if args.batch_rows is not None and args.batch_rows < 1:
        parser.error("--batch-rows must be >= 1")
    machine = machine_description()
    progress(machine)
    progress(resonate_engine() or "the flow's resonate step: not recognised")
    runs = run_all(args.fleets, args.scale, flows=not args.skip_flows, snapshots=not args.skip_snapshots,
                   batch_rows=args.batch_rows)
    print(text_table(runs))
    if args.update:
        update_report(Path(args.update), runs, machine=machine)
        progress(f"updated {args.update}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
