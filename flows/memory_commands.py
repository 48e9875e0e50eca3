"""The archive commands: ``memory retrieve|reconstruct|compact``, ``replay`` and ``report``
(``memory verify`` and ``export-witness``: :mod:`flows.verify_commands`).

Each is a function ``cmd_<name>(args) -> int`` (the exit code), registered
on the ``becomingone`` parser by :func:`add_parsers`.  The archive defaults to
the config's ``memory.storage.path``.  Times are epoch seconds or ISO-8601
with a zone.  Exit codes: 0 success, 1 the work failed (a damaged archive:
problems found by ``verify``, or a file the command could not read, named in
the message), 2 bad usage, config or arguments.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows.arguments import config_or_report, positive_int

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["add_parsers"]


def _fail(command: str, message: str, code: int = 2) -> int:
    print(f"becomingone {command}: {message}", file=sys.stderr)
    return code


def _memory(args: argparse.Namespace, command: str):
    """(TemporalMemory, None) or (None, exit code after a message)."""
    from connectors.memory import TemporalMemory

    root = args.archive
    if root is None:
        config = config_or_report(args)
        if config is None:
            return None, 2
        root = config.memory.storage.path
    try:
        return TemporalMemory(root), None
    except FileNotFoundError as exc:
        return None, _fail(command, str(exc))


def _csv_ready(table: pa.Table) -> pa.Table:
    """``table`` with each list column (``input``'s phase) as JSON text: CSV has no lists."""
    import pyarrow as pa

    for i, field in enumerate(table.schema):
        if pa.types.is_list(field.type) or pa.types.is_large_list(field.type):
            text = pa.array([None if v is None else json.dumps(v) for v in table.column(i).to_pylist()], pa.string())
            table = table.set_column(i, field.name, text)
    return table


def _time(value: str | None, flag: str) -> int | None:
    from connectors.memory import as_micros

    if value is None:
        return None
    try:
        return as_micros(value)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{flag} {value!r}: {exc}") from None


# --------------------------------------------------------------------------
# memory retrieve | reconstruct | compact


def cmd_memory_retrieve(args: argparse.Namespace) -> int:
    import pyarrow as pa

    from connectors.archive import ArchiveError

    memory, code = _memory(args, "memory retrieve")
    if memory is None:
        return code
    try:
        _time(args.start, "--start"), _time(args.end, "--end")  # named errors for bad times
        table = memory.consistently(lambda: memory.retrieve(args.start, args.end, sensors=args.sensor,
                                                            dataset=args.dataset, cells=args.cell))
    except ArchiveError as exc:  # before ValueError: pyarrow's read errors are ValueErrors too
        return _fail("memory retrieve", str(exc), code=1)
    except ValueError as exc:
        return _fail("memory retrieve", str(exc))
    if args.format == "arrow":
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        sys.stdout.buffer.write(sink.getvalue().to_pybytes())
        sys.stdout.buffer.flush()
    elif args.format == "csv":
        import pyarrow.csv as pcsv

        sink = pa.BufferOutputStream()
        pcsv.write_csv(_csv_ready(table), sink)
        sys.stdout.write(sink.getvalue().to_pybytes().decode("utf-8"))
    elif args.format == "json":
        from connectors.row_json import rows_as_json

        for row in rows_as_json(table):
            print(json.dumps(row))
    else:
        _print_table(table)
    print(f"{table.num_rows:,} rows of {args.dataset} from {memory.files_opened} file(s)", file=sys.stderr)
    return 0


def _print_table(table) -> None:
    names = table.column_names
    rows = [[_cell(v) for v in row.values()] for row in table.to_pylist()]
    widths = [max([len(n)] + [len(r[i]) for r in rows]) for i, n in enumerate(names)]
    print("  ".join(n.ljust(w) for n, w in zip(names, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


def _cell(value: Any) -> str:
    """A value as text for the terminal (control characters of ids as visible escapes)."""
    from schemas.printable import printable

    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    if hasattr(value, "isoformat"):
        return value.isoformat().replace("+00:00", "Z")
    return printable(str(value))


def cmd_memory_reconstruct(args: argparse.Namespace) -> int:
    from connectors.archive import ArchiveError
    from schemas.messages import format_utc

    memory, code = _memory(args, "memory reconstruct")
    if memory is None:
        return code
    try:
        at = _time(args.at, "--at")
        state = memory.consistently(lambda: memory.reconstruct_coherence(args.at, args.sensor))
    except ArchiveError as exc:
        return _fail("memory reconstruct", str(exc), code=1)
    except ValueError as exc:
        return _fail("memory reconstruct", str(exc))
    if not state.found:
        return _fail("memory reconstruct", f"no archived state of sensor {args.sensor!r} at or before "
                     f"{format_utc(at)}", code=1)
    if args.format == "json":
        print(json.dumps(state.as_json()))
        return 0
    print(f"sensor {_cell(state.sensor)} at {format_utc(state.at_us)}")
    for name, sig in (("master", state.master), ("emissary", state.emissary)):
        if sig is None:
            print(f"  {name:<9} -")
        else:
            print(f"  {name:<9} t {format_utc(sig.t_us)}  T {sig.T.real:+.6f}{sig.T.imag:+.6f}i  "
                  f"|T|^2 {sig.coherence:.6f}  products {sig.n_products:,}")
    if state.sync is not None:
        s = state.sync
        print(f"  {'sync':<9} t {format_utc(s.t_us)}  |T_sync|^2 {s.coherence_sync:.6f}  "
              f"delta_phase {s.delta_phase:.6f}  state {s.state}")
    event = state.last_event
    last = "none" if event is None else f"{event['event']} at {_cell(event['t'])}"
    print(f"  {'collapsed' if state.collapsed else 'dissipated'} (last transition: {last})")
    return 0


def cmd_memory_compact(args: argparse.Namespace) -> int:
    from connectors.archive import ArchiveError, compact_archive

    memory, code = _memory(args, "memory compact")
    if memory is None:
        return code
    config = config_or_report(args)  # also with --archive: memory.signing_key signs the merged lines
    if config is None:
        return 2
    try:
        results = compact_archive(memory.root, signing_key=config.memory.signing_key_bytes)
    except ArchiveError as exc:
        return _fail("memory compact", str(exc), code=1)
    for dataset, result in results.items():
        recovered = f" (an interrupted compaction was {result.recovered} first)" if result.recovered else ""
        print(f"{dataset}: {result.files_before:,} -> {result.files_after:,} files, "
              f"{result.rows_before:,} rows kept, {result.hours_merged:,} hour(s) merged{recovered}")
    return 0


# --------------------------------------------------------------------------
# replay


def cmd_replay(args: argparse.Namespace) -> int:
    from connectors.archive import ArchiveError
    from connectors.memory import TemporalMemory
    from connectors.replay_source import ArchiveInput

    config = config_or_report(args)
    if config is None:
        return 2
    try:
        memory = TemporalMemory(args.archive)
        start, end = _time(args.start, "--start"), _time(args.end, "--end")
    except (FileNotFoundError, ValueError) as exc:
        return _fail("replay", str(exc))
    try:
        files = memory.files("input", start, end)
    except ArchiveError as exc:
        return _fail("replay", str(exc), code=1)
    if not files:
        return _fail("replay", f"{args.archive} has no archived input in that range (memory.archive_input)", code=1)
    if not math.isfinite(args.speed) or args.speed < 0:
        return _fail("replay", f"--speed must be 0 (as fast as possible) or positive, got {args.speed}")
    if args.to_kafka:
        return _replay_to_kafka(args, config, memory, start, end)
    out_root = Path(config.memory.storage.path).resolve()
    if config.sink.archive and out_root == Path(args.archive).resolve():
        return _fail("replay", f"the flow would write into the archive it replays ({out_root}): set "
                     "memory.storage.path (e.g. BECOMINGONE__MEMORY__STORAGE__PATH) to another directory")
    from connectors.kafka import KafkaSetupError
    from flows.run import run_flow

    source = ArchiveInput(str(args.archive), start_us=start, end_us=end, sensors=args.sensor, speed=args.speed)
    try:
        span = _input_span(memory, start, end)  # reads every file in range: a damaged one is named here
    except ArchiveError as exc:
        return _fail("replay", str(exc), code=1)
    try:
        run_flow(config, workers=args.workers, replay=True, source=source, span=span)
    except KeyboardInterrupt:
        return _fail("replay", "interrupted", code=130)
    except KafkaSetupError as exc:
        return _fail("replay", str(exc))
    except OSError as exc:  # the metrics port, or a Kafka cluster out of reach
        return _fail("replay", str(exc), code=1)
    return 0


def _input_span(memory, start: int | None, end: int | None) -> tuple[int, int] | None:
    """(first, duration) of the archived input in range, for the progress line."""
    import pyarrow.compute as pc

    times = [table["t"].cast("int64") for table in memory.scan("input", start, end, columns=["t"])]
    times = [t for t in times if len(t)]
    if not times:
        return None
    lo, hi = min(pc.min(t).as_py() for t in times), max(pc.max(t).as_py() for t in times)
    return lo, max(hi - lo, 1)


def _replay_to_kafka(args, config, memory, start, end) -> int:
    import time

    from confluent_kafka import Producer

    from connectors.archive import ArchiveError
    from connectors.kafka import (
        KafkaSetupError,
        KafkaUnreachable,
        PhaseProducer,
        TopicSetupError,
        admin_settings,
        connect_admin,
        ensure_topics,
        producer_settings,
    )
    from connectors.phase_files import PhaseColumns
    from connectors.replay_source import ArchiveInput, ArchiveSlices
    from schemas.config import KafkaSource

    topic = args.topic or (config.source.topic if isinstance(config.source, KafkaSource)
                           else KafkaSource.model_fields["topic"].default)
    try:
        settings = producer_settings(config.kafka, bootstrap=args.bootstrap, client_id=f"{config.becomingone.name}-replay")
        admin = connect_admin(admin_settings(config.kafka, bootstrap=args.bootstrap))
        ensure_topics(admin, [topic])
    except KafkaSetupError as exc:
        return _fail("replay", str(exc))
    except (KafkaUnreachable, TopicSetupError) as exc:
        return _fail("replay", str(exc), code=1)
    sender = PhaseProducer(Producer(settings), topic, wire=args.format)
    part = ArchiveSlices(ArchiveInput(str(args.archive), start_us=start, end_us=end, sensors=args.sensor,
                                          speed=args.speed), None)
    total = 0
    started = time.monotonic()
    last_line = 0.0
    try:
        while True:
            try:
                batches = part.next_batch()
            except StopIteration:
                break
            if not batches:  # paced: the next slice is not due yet
                time.sleep(min(max(part.due - time.monotonic(), 0.0), 0.25))
                continue
            for batch in batches:
                sender.send(PhaseColumns.from_numpy(batch.sensor, batch.t_us, batch.phase, batch.cell,
                                                    origin=str(args.archive)))
                total += len(batch)
            if args.speed > 0:
                sender.send_held()  # a paced slice leaves now, not when a batch is full
            if time.monotonic() - last_line >= (0.25 if sys.stderr.isatty() else 5.0):
                last_line = time.monotonic()
                end_char = "\r" if sys.stderr.isatty() else "\n"
                sys.stderr.write(f"replayed {total:>12,} samples  file {part.done}/{len(part.files)}{end_char}")
                sys.stderr.flush()
    except KeyboardInterrupt:
        sender.finish(timeout=30.0)
        return _fail("replay", f"interrupted after {total:,} samples", code=130)
    except ArchiveError as exc:
        sender.finish(timeout=30.0)
        return _fail("replay", f"stopped after {total:,} samples: {exc}", code=1)
    sender.finish(timeout=60.0)
    print(f"replayed {total:,} samples ({sender.messages:,} {args.format} messages) from {args.archive} to {topic} "
          f"in {time.monotonic() - started:.2f} s; delivered {sender.delivered:,}, failed {sender.failed:,}")
    if sender.failed:
        return _fail("replay", f"{sender.failed:,} message(s) not delivered: {sender.first_error}", code=1)
    return 0


# --------------------------------------------------------------------------
# report


def cmd_report(args: argparse.Namespace) -> int:
    from connectors.archive import ArchiveError
    from flows.report import write_report

    config = config_or_report(args)
    if config is None:
        return 2
    try:
        result = write_report(args.archive, args.out, threshold=config.kairos.coherence_threshold,
                              hysteresis=config.sync.hysteresis, sensors=args.sensor,
                              mesh_threshold=config.sync.mesh.threshold,
                              phase_band=config.kairos.phase_band, phase_method=config.kairos.phase_method,
                              start_us=_time(args.start, "--start"), end_us=_time(args.end, "--end"))
    except ArchiveError as exc:
        return _fail("report", str(exc), code=1)
    except (ValueError, FileNotFoundError) as exc:
        return _fail("report", str(exc))
    for row in result.rows:
        print("  ".join(f"{k} {_cell(v)}" for k, v in row.items()))
    print(result.path)
    return 0


# --------------------------------------------------------------------------
# Parsers.


def add_parsers(sub, config_help: str) -> None:
    """Register ``memory``, ``replay`` and ``report`` on the sub-command parser ``sub``."""
    time_help = "epoch seconds or ISO-8601 with a zone"
    archive_help = "archive root (default: memory.storage.path of the config)"

    memory = sub.add_parser("memory", help="query, verify and compact the Arrow archive")
    msub = memory.add_subparsers(dest="memory_command", metavar="SUBCOMMAND", required=True)

    p = msub.add_parser("retrieve", help="rows of one dataset in a time range",
                        description="Print the rows of one archive dataset with START <= t <= END. Only the "
                        "hour partitions that overlap the range are read.")
    p.add_argument("--start", required=True, metavar="TIME", help=time_help)
    p.add_argument("--end", required=True, metavar="TIME", help=time_help)
    p.add_argument("--sensor", action="append", metavar="ID", help="only this sensor (repeatable)")
    p.add_argument("--cell", action="append", metavar="NAME",
                   help="only rows of this cell (repeatable; the global mesh is '*')")
    p.add_argument("--dataset", default="coherence_history",
                   choices=("temporal_signatures", "coherence_history", "witnessing_logs", "events", "mesh_sync",
                            "mesh_members", "input"), help="dataset (default coherence_history)")
    p.add_argument("--format", choices=("table", "csv", "json", "arrow"), default="table",
                   help="table (default), csv, json (one object per line) or arrow (an IPC stream on stdout)")
    p.add_argument("--archive", metavar="DIR", default=None, help=archive_help)
    p.add_argument("--config", metavar="FILE", default=None, help=config_help)
    p.set_defaults(func=cmd_memory_retrieve)

    p = msub.add_parser("reconstruct", help="the state of a sensor in force at a time",
                        description="The newest Master and Emissary signatures, sync row and collapse state of "
                        "SENSOR at or before TIME.")
    p.add_argument("--at", required=True, metavar="TIME", help=time_help)
    p.add_argument("--sensor", required=True, metavar="ID")
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="text (default) or json (one object, as the HTTP API's state endpoint)")
    p.add_argument("--archive", metavar="DIR", default=None, help=archive_help)
    p.add_argument("--config", metavar="FILE", default=None, help=config_help)
    p.set_defaults(func=cmd_memory_reconstruct)

    from flows.verify_commands import add_parsers as add_verify_parsers

    add_verify_parsers(msub, archive_help, config_help)  # verify, export-witness

    p = msub.add_parser("compact", help="merge each hour's files into one",
                        description="Merge the files of each hour partition into one, keeping every row, the "
                        "row order and a valid manifest chain. Safe to interrupt: a later compact or writer "
                        "finishes or undoes it. Not while a flow writes the archive. An archive of the older "
                        "layout (manifests in the dataset directories) is moved to _meta/ first.")
    p.add_argument("--archive", metavar="DIR", default=None, help=archive_help)
    p.add_argument("--config", metavar="FILE", default=None, help=config_help)
    p.set_defaults(func=cmd_memory_compact)

    p = sub.add_parser("replay", help="archived input back through the flow or into Kafka",
                       description="Read ARCHIVE/input (rows the flow accepted) and run them through the "
                       "dataflow of --config (results go to its memory.storage.path and topics; future-time "
                       "checks off), or with --to-kafka send them to a topic.")
    p.add_argument("archive", metavar="ARCHIVE", help="archive root to read")
    p.add_argument("--config", metavar="FILE", default=None, help=config_help)
    p.add_argument("--start", metavar="TIME", default=None, help=time_help)
    p.add_argument("--end", metavar="TIME", default=None, help=time_help)
    p.add_argument("--sensor", action="append", metavar="ID", help="only this sensor (repeatable)")
    p.add_argument("--speed", type=float, default=0.0, metavar="X",
                   help="event seconds per wall-clock second (1 = as recorded); 0 = as fast as possible (default)")
    p.add_argument("--workers", type=positive_int, default=1, metavar="N", help="Bytewax worker threads (default 1)")
    g = p.add_argument_group("into Kafka")
    g.add_argument("--to-kafka", action="store_true", help="send to a topic instead of running the flow")
    g.add_argument("--topic", default=None, help="topic (default: source.topic, becomingone.phases)")
    g.add_argument("--bootstrap", default=None, metavar="HOST:PORT", help="bootstrap servers")
    g.add_argument("--format", choices=("json", "arrow"), default="arrow", help="wire format (default arrow)")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("report", help="PNG plots of coherence and collapse events",
                       description="Plot coherence_sync per sensor with collapsed spans shaded and the threshold, "
                       "and a summary table; prints the summary and the PNG's path.")
    p.add_argument("archive", metavar="ARCHIVE", help="archive root to read")
    p.add_argument("--out", metavar="FILE.png", default=None, help="output (default ARCHIVE/report.png)")
    p.add_argument("--sensor", action="append", metavar="ID", help="only this sensor (repeatable)")
    p.add_argument("--start", metavar="TIME", default=None, help=time_help)
    p.add_argument("--end", metavar="TIME", default=None, help=time_help)
    p.add_argument("--config", metavar="FILE", default=None,
                   help="config for the threshold and hysteresis lines (default as for every command)")
    p.set_defaults(func=cmd_report)
