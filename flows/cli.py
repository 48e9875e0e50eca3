"""The ``becomingone`` command line.

Each sub-command is one function ``cmd_<name>(args) -> int`` returning the
process exit code; :func:`main` parses the arguments and dispatches.
Exit codes: 0 success, 1 the work failed, 2 bad usage or bad config.
"""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
from typing import Sequence

from flows.arguments import config_or_report, positive_int, positive_seconds
from flows.broker_command import add_parser as add_broker_parser

__all__ = ["main"]


def cmd_run(args: argparse.Namespace) -> int:
    """The dataflow in this process until its input ends; progress on stderr, summary on stdout."""
    config = config_or_report(args)
    if config is None:
        return 2
    from flows.log_context import set_flow
    from flows.logs import configure_logging, log_format
    from flows.startup import ConfigOrigin

    configure_logging(config.logging, "becomingone run",
                      format=log_format(config.logging, sys.stderr, at_terminal_as_text=True))
    set_flow(config.becomingone.name)
    origin = ConfigOrigin.of(args.config)
    if args.node:
        origin = ConfigOrigin(origin.file, (*origin.overrides, "--node"))
    if config.becomingone.node == "relay":
        from flows.relay import relay_command

        return relay_command(config, args, origin)
    from connectors.kafka import KafkaSetupError
    from flows.run import RecoveryMismatch, Stopped, recovery_dir, run_flow

    try:
        run_flow(config, workers=args.workers, out=sys.stdout, progress=sys.stderr, kafka_timeout=args.timeout,
                 recovery=None if args.no_recovery else recovery_dir(config), snapshot_interval=args.snapshot_interval,
                 origin=origin)
    except Stopped as stop:
        # SIGTERM (how Kubernetes stops a pod) after a complete drain is a clean exit.
        if stop.signum == signal.SIGTERM:
            return 0
        print("becomingone run: interrupted", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("becomingone run: interrupted", file=sys.stderr)
        return 130
    except (KafkaSetupError, RecoveryMismatch) as exc:
        print(f"becomingone run: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the metrics port, or a Kafka cluster out of reach
        print(f"becomingone run: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    config = config_or_report(args)
    if config is None:
        return 2
    if args.check:
        print("config ok")
    else:
        sys.stdout.write(config.to_yaml(redact_secrets=True))
    return 0


def cmd_produce(args: argparse.Namespace) -> int:
    """Feed the input topic from files or the synthetic generator."""
    from confluent_kafka import Producer, KafkaException

    from connectors.kafka import (
        MessageTooLarge,
        KafkaSetupError,
        KafkaUnreachable,
        PhaseProducer,
        TopicSetupError,
        admin_settings,
        connect_admin,
        ensure_topics,
        producer_settings,
        settings_rejected,
    )
    from connectors.phase_files import PhaseFileError
    from flows.produce_command import (
        ProduceProgress,
        delivery_wait,
        limited,
        message_limit,
        produce_plan,
        produce_topic,
    )

    _log_to_stderr("becomingone produce", level=logging.WARNING)
    config = config_or_report(args)
    if config is None:
        return 2
    try:
        topic = produce_topic(config, args.topic)
        plan = produce_plan(config, args)
        client_id = f"{config.becomingone.name}-produce"
        settings = producer_settings(config.kafka, bootstrap=args.bootstrap, client_id=client_id)
        admin_conf = admin_settings(config.kafka, bootstrap=args.bootstrap, client_id=client_id)
    except (ValueError, PhaseFileError, KafkaSetupError) as exc:
        print(f"becomingone produce: {exc}", file=sys.stderr)
        return 2

    try:
        admin = connect_admin(admin_conf, timeout=args.timeout)
        ensure_topics(admin, [topic], args.partitions, timeout=args.timeout)
    except KafkaSetupError as exc:
        print(f"becomingone produce: {exc}", file=sys.stderr)
        return 2
    except (KafkaUnreachable, TopicSetupError) as exc:
        print(f"becomingone produce: {exc}", file=sys.stderr)
        return 1

    try:
        producer = Producer(settings)
    except KafkaException as exc:
        print(f"becomingone produce: {settings_rejected(exc, settings)}", file=sys.stderr)
        return 2
    total = plan.total if args.limit is None else min(plan.total or args.limit, args.limit)
    bar = ProduceProgress(sys.stderr, total)
    sender = PhaseProducer(
        producer, topic, wire=args.format, batch_rows=args.batch_rows, rate=args.rate,
        max_message_bytes=message_limit(settings), partition=args.partition, on_progress=bar,
    )
    status = 0
    try:
        for columns in limited(plan.chunks, args.limit):
            columns.check_values()
            sender.send(columns)
    except KeyboardInterrupt:
        status = 130
    except (PhaseFileError, MessageTooLarge) as exc:
        bar.close()
        print(f"becomingone produce: {exc}", file=sys.stderr)
        status = 2
    # Whatever stopped the input, what was queued is flushed and accounted for.
    sender.finish(timeout=delivery_wait(settings))
    bar.close()
    print(
        f"produced {sender.messages:,} messages ({sender.samples:,} samples, {args.format}) "
        f"from {plan.description} to {topic} in {sender.seconds:.2f} s; "
        f"delivered {sender.delivered:,}, failed {sender.failed:,}"
    )
    if sender.failed:
        print(
            f"becomingone produce: {sender.failed:,} message(s) not delivered to {topic}: {sender.first_error}",
            file=sys.stderr,
        )
        return status or 1
    if status == 130:
        print("becomingone produce: interrupted", file=sys.stderr)
    return status


def cmd_warm(args: argparse.Namespace) -> int:
    """Compile the flow's Numba kernels into the kernel cache; with ``--check``, fail if any was not there."""
    from flows.warm import cpu_target, kernel_cache, our_kernels, warm_kernels

    report = warm_kernels(progress=lambda line: print(f"becomingone warm: {line}", file=sys.stderr))
    ours = our_kernels(report.compiled)
    where = kernel_cache() or "beside each source file (NUMBA_CACHE_DIR is not set)"
    print(f"{report.runs} runs of the flow in {report.seconds:.1f} s; {len(ours)} kernel compilation(s) "
          f"({len(report.compiled)} with Numba's own helpers) for CPU {cpu_target()}; kernel cache: {where}")
    if args.check and report.compiled:
        names = ", ".join(sorted(set(ours or report.compiled)))
        print(f"becomingone warm: {len(report.compiled)} compilation(s) not found in the kernel cache: {names}",
              file=sys.stderr)
        return 1
    return 0


def _log_to_stderr(name: str, level: int = logging.INFO) -> None:
    """Log lines (ours and librdkafka's) to stderr, prefixed with the command."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{name}: %(message)s"))
    root = logging.getLogger("becomingone")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _rate(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be 0 (as fast as possible) or a positive number, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="becomingone",
        description="Coherence events from live phase streams (KAIROS resonance).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    config_help = (
        "YAML config file (default: $BECOMINGONE_CONFIG, else the embedded default); "
        "BECOMINGONE__SECTION__KEY environment variables override single keys"
    )

    p = sub.add_parser(
        "run", help="run the main job (no config: embedded default)",
        description="Run the dataflow in this process: live progress on stderr, a summary per sensor "
        "on stdout. Recovery state is kept under <memory root>/_recovery, so a run killed at any moment "
        "resumes where it was when run again. The first SIGINT or SIGTERM drains what was read; a second "
        "one aborts. Exit 0 when the input ended or after a drain on SIGTERM, 1 when the run failed, 2 on "
        "a bad config, 130 on Ctrl-C.",
    )
    p.add_argument("--config", metavar="FILE", default=None, help=config_help)
    p.add_argument("--workers", type=positive_int, default=1, metavar="N",
                   help="Bytewax worker threads (default 1); the results do not depend on it")
    p.add_argument("--timeout", type=positive_seconds, default=10.0, metavar="SECONDS",
                   help="with Kafka in the config: how long to wait for the cluster to answer at start (default 10)")
    p.add_argument("--snapshot-interval", type=positive_seconds, default=10.0, metavar="SECONDS",
                   help="how often the state is snapshotted for recovery (default 10); a resumed run reads "
                   "again at most about this much of its input")
    p.add_argument("--no-recovery", action="store_true",
                   help="keep no recovery state: a killed run starts over (Kafka: per source.from_beginning)")
    p.add_argument("--node", choices=("full", "light", "witness", "relay"), default=None,
                   help="what this node runs (overrides becomingone.node): full, light (no Master), "
                   "witness (audits another node's witness topic), relay (copies topics between clusters)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("config", help="print the effective config (file + environment) as YAML")
    p.add_argument("--config", metavar="FILE", default=None, help=config_help)
    p.add_argument("--check", action="store_true", help="only validate; print 'config ok'")
    p.set_defaults(func=cmd_config)

    add_broker_parser(sub)

    p = sub.add_parser(
        "produce",
        help="feed the input topic from CSV, Parquet, Arrow or JSON-lines files, or the synthetic generator",
        description="Send phase samples to Kafka. Input: FILEs (columns sensor, t, phase, optional cell), "
        "else the config's source (file or synthetic), or --synthetic. Exit 0 when every message "
        "was delivered, 1 when Kafka failed, 2 on bad usage, config or input.",
    )
    p.add_argument("files", nargs="*", metavar="FILE", help="input files: .csv, .parquet, .arrow/.feather, .jsonl")
    p.add_argument("--config", metavar="FILE", default=None, help=config_help)
    p.add_argument(
        "--file-format", choices=("csv", "parquet", "arrow", "jsonl"), default=None,
        help="format of the input FILEs (default: from each suffix)",
    )
    g = p.add_argument_group("synthetic input (defaults: the config's synthetic source, else the built-in one)")
    g.add_argument("--synthetic", action="store_true", help="send generated samples instead of files")
    g.add_argument(
        "--sensor", action="append", metavar="NAME:KIND[:FREQ_HZ[:CHANNELS[:CELL]]]",
        help="a generated sensor (repeatable; KIND: steady, drifting, noise, switching); replaces the config's",
    )
    g.add_argument("--sample-rate", type=float, default=None, metavar="HZ", help="samples per second per sensor")
    g.add_argument("--duration", type=float, default=None, metavar="SECONDS", help="event time covered")
    g.add_argument("--start", default=None, metavar="TIME", help="first event time: ISO-8601 with a zone, or epoch seconds")
    g.add_argument("--seed", type=int, default=None, metavar="N", help="random seed")
    g = p.add_argument_group("Kafka")
    g.add_argument(
        "--bootstrap", default=None, metavar="HOST:PORT",
        help="bootstrap servers (default: kafka.bootstrap.servers of the config)",
    )
    g.add_argument("--topic", default=None, help="input topic (default: source.topic, becomingone.phases)")
    g.add_argument(
        "--format", choices=("json", "arrow"), default="json",
        help="json: one message per sample (key = sensor); arrow: one Arrow IPC stream message per batch",
    )
    g.add_argument(
        "--batch-rows", type=positive_int, default=4096, metavar="N",
        help="samples per Arrow message (default 4096; larger batches are split to fit message.max.bytes)",
    )
    g.add_argument("--rate", type=_rate, default=0.0, metavar="R", help="samples per second over all sensors (0 = as fast as possible)")
    g.add_argument("--limit", type=_non_negative_int, default=None, metavar="N", help="stop after N samples")
    g.add_argument(
        "--partitions", type=positive_int, default=1, metavar="N",
        help="partitions of the topic if it has to be created (default 1)",
    )
    g.add_argument(
        "--partition", type=_non_negative_int, default=None, metavar="P",
        help="send everything to partition P (default: by key)",
    )
    g.add_argument(
        "--timeout", type=positive_seconds, default=10.0, metavar="SECONDS",
        help="how long to wait for the cluster to answer at start (default 10)",
    )
    p.set_defaults(func=cmd_produce)

    p = sub.add_parser(
        "warm", help="compile the flow's Numba kernels into the kernel cache ($NUMBA_CACHE_DIR)",
        description="Run the flow over a few seconds of generated input (phase and raw sensors, JSON and Arrow, "
        "the mesh, both phase methods, a light node, input and outputs through topics of an in-process mock "
        "cluster) in a scratch directory, so every kernel it uses is compiled and written to Numba's cache: a later process loads "
        "them instead of compiling. The container image runs it at build time. A cache is used on another "
        "machine only if both set NUMBA_CPU_NAME=generic. Exit 0 when done; with --check, 1 if anything had "
        "to be compiled (the cache was incomplete or made for another CPU).",
    )
    p.add_argument("--check", action="store_true",
                   help="fail (exit 1) if any kernel had to be compiled instead of loaded from the cache")
    p.set_defaults(func=cmd_warm)

    from flows.ingest_commands import add_parsers as add_ingest_parsers
    from flows.memory_commands import add_parsers
    from flows.serve_command import add_parser as add_serve_parser

    add_ingest_parsers(sub, config_help)
    add_parsers(sub, config_help)
    add_serve_parser(sub, config_help)
    _add_debug(parser)
    return parser


DEBUG_ENV = "BECOMINGONE_DEBUG"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("becomingone")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _add_debug(parser: argparse.ArgumentParser) -> None:
    """``--debug`` on ``parser`` and every sub-command's parser: it may come before or after the command."""
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help=f"let an unexpected error show its full traceback (or set {DEBUG_ENV}=1)")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in {id(p): p for p in action.choices.values()}.values():
                _add_debug(sub)


def _error_line(exc: BaseException) -> str:
    """One line for an unexpected exception: its type and message, the cause Bytewax wrapped it in unwrapped."""
    from schemas.printable import printable

    while type(exc).__module__.startswith("bytewax") and exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc)
    return printable(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; exit code 0, 1 (the work failed), 2 (bad usage or config) or 130 (interrupted).

    An exception the command does not handle itself is one line on stderr
    (exit 1); with ``--debug`` or ``BECOMINGONE_DEBUG=1`` it propagates with
    its traceback.
    """
    import os

    args = build_parser().parse_args(argv)
    if getattr(args, "debug", False) or os.environ.get(DEBUG_ENV, "").strip() not in ("", "0"):
        return args.func(args)
    from schemas.config import ConfigError

    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("becomingone: interrupted", file=sys.stderr)
        return 130
    except ConfigError as exc:
        print(f"becomingone: invalid config:\n{exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`| head`): nothing more to say, and nowhere to say it.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except BaseException as exc:  # the last resort (Rust panics surface as BaseException): one line, no traceback
        if isinstance(exc, (SystemExit, GeneratorExit)):
            raise
        print(f"becomingone: error: {_error_line(exc)} (--debug shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
