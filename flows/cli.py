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
import threading
import time
from collections.abc import Iterator
from typing import Sequence, TextIO

from flows.arguments import config_or_report, positive_int

__all__ = ["main"]


def cmd_run(args: argparse.Namespace) -> int:
    """The dataflow in this process until its input ends; progress on stderr, summary on stdout."""
    config = config_or_report(args)
    if config is None:
        return 2
    _log_to_stderr("becomingone run", level=logging.WARNING)
    from connectors.kafka import KafkaSetupError
    from flows.run import RecoveryMismatch, Stopped, recovery_dir, run_flow

    try:
        run_flow(config, workers=args.workers, out=sys.stdout, progress=sys.stderr, kafka_timeout=args.timeout,
                 recovery=None if args.no_recovery else recovery_dir(config), snapshot_interval=args.snapshot_interval)
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


def cmd_broker(args: argparse.Namespace) -> int:
    """A local mock Kafka cluster until SIGINT/SIGTERM; prints ``bootstrap=HOST:PORT`` when ready."""
    from connectors.kafka import MOCK_PARTITIONS, MockBroker

    _log_to_stderr("becomingone broker")
    stop = threading.Event()
    # Both signals end the broker cleanly (exit 0), whoever sends them.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    broker = MockBroker(args.brokers, port=args.port)
    try:
        broker.start()
    except OSError as exc:
        print(f"becomingone broker: cannot listen on 127.0.0.1:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        print(f"becomingone broker: {exc}", file=sys.stderr)
        return 1
    try:
        print(f"bootstrap={broker.bootstrap}", flush=True)
        logging.getLogger("becomingone.broker").info(
            "%d mock broker(s) up (%s); topics are created on first use with %d partitions; "
            "data lives in memory until this process stops",
            args.brokers, ", ".join(broker.broker_addresses), MOCK_PARTITIONS,
        )
        while not stop.wait(0.5):
            pass
    finally:
        broker.close()
    logging.getLogger("becomingone.broker").info("stopped")
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

    _log_to_stderr("becomingone produce", level=logging.WARNING)
    config = config_or_report(args)
    if config is None:
        return 2
    try:
        topic = _produce_topic(config, args.topic)
        plan = _produce_plan(config, args)
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
    bar = _ProduceProgress(sys.stderr, total)
    sender = PhaseProducer(
        producer, topic, wire=args.format, batch_rows=args.batch_rows, rate=args.rate,
        max_message_bytes=_message_limit(settings), partition=args.partition, on_progress=bar,
    )
    status = 0
    try:
        for columns in _limited(plan.chunks, args.limit):
            columns.check_values()
            sender.send(columns)
    except KeyboardInterrupt:
        status = 130
    except (PhaseFileError, MessageTooLarge) as exc:
        bar.close()
        print(f"becomingone produce: {exc}", file=sys.stderr)
        status = 2
    # Whatever stopped the input, what was queued is flushed and accounted for.
    sender.finish(timeout=_delivery_wait(settings))
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


# --------------------------------------------------------------------------
# `produce`: where the samples come from, and how progress shows.


class _ProducePlan:
    """The samples to send: chunks, their total if known, and a description for the summary."""

    def __init__(self, chunks: Iterator, total: int | None, description: str) -> None:
        self.chunks, self.total, self.description = chunks, total, description


def _produce_topic(config, topic: str | None) -> str:
    from pydantic import ValidationError

    from schemas.config import KafkaSource

    if topic is None:
        source = config.source
        return source.topic if isinstance(source, KafkaSource) else KafkaSource.model_fields["topic"].default
    try:
        return KafkaSource(topic=topic).topic
    except ValidationError as exc:
        raise ValueError(f"--topic {topic!r}: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None


def _produce_plan(config, args: argparse.Namespace) -> _ProducePlan:
    """Files (arguments, else the config's file source) or the synthetic generator."""
    from connectors.phase_files import check_phase_file, count_file_rows, read_phase_file
    from schemas.config import FileSource, KafkaSource

    synthetic_flags = any(
        v is not None for v in (args.sensor, args.sample_rate, args.duration, args.start, args.seed)
    )
    if args.files and (args.synthetic or synthetic_flags):
        raise ValueError("give input FILEs or --synthetic (and its options), not both")
    files = [(f, args.file_format) for f in args.files]
    if not files and not (args.synthetic or synthetic_flags):
        if isinstance(config.source, FileSource):
            files = [(config.source.path, config.source.format)]
        elif isinstance(config.source, KafkaSource):
            raise ValueError(
                "the config's source is Kafka, which produce cannot read from; "
                "give input FILEs or --synthetic"
            )
    if files:
        formats = [check_phase_file(path, fmt) for path, fmt in files]  # every file, before any is sent
        counts = [count_file_rows(path, fmt) for (path, _), fmt in zip(files, formats)]
        total = None if None in counts else sum(counts)  # type: ignore[arg-type]

        def chunks() -> Iterator:
            for (path, _), fmt in zip(files, formats):
                yield from read_phase_file(path, fmt)

        names = ", ".join(path for path, _ in files)
        return _ProducePlan(chunks(), total, names)
    return _synthetic_plan(config, args)


def _synthetic_plan(config, args: argparse.Namespace) -> _ProducePlan:
    from pydantic import ValidationError

    from connectors.phase_files import PhaseColumns
    from connectors.synthetic import SyntheticSensor, synthetic_batches
    from schemas.config import SyntheticSource

    base = config.source if isinstance(config.source, SyntheticSource) else SyntheticSource()
    data = base.model_dump()
    if args.sensor is not None:
        data["sensors"] = [_sensor_flag(text) for text in args.sensor]
    for flag, key in (("sample_rate", "rate_hz"), ("duration", "duration"), ("seed", "seed"), ("start", "start")):
        value = getattr(args, flag)
        if value is not None:
            data[key] = value
    if isinstance(data.get("start"), str):
        try:
            data["start"] = float(data["start"])  # epoch seconds given as text
        except ValueError:
            pass
    try:
        src = SyntheticSource.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"source.{'.'.join(str(p) for p in e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors(include_url=False)
        )
        raise ValueError(f"synthetic source: {problems}") from None
    names = [s.name for s in src.sensors]
    if len(set(names)) != len(names):
        raise ValueError(f"synthetic source: sensor names must differ, got {', '.join(names)}")
    sensors = [SyntheticSensor(s.name, s.kind, freq_hz=s.freq_hz, channels=s.channels) for s in src.sensors]
    cells = {s.name: s.cell for s in src.sensors}

    def chunks() -> Iterator:
        for name, t_us, phase in synthetic_batches(
            sensors, period_us=src.period_us, duration_us=src.duration_us, start_us=src.start_us, seed=src.seed
        ):
            yield PhaseColumns.from_numpy(name, t_us, phase, cells[name], origin="synthetic")

    per_sensor = -(-src.duration_us // src.period_us)
    description = f"synthetic source ({len(sensors)} sensors, {src.rate_hz:g} Hz, {src.duration:g} s)"
    return _ProducePlan(chunks(), per_sensor * len(sensors), description)


def _sensor_flag(text: str) -> dict:
    """``NAME:KIND[:FREQ_HZ[:CHANNELS[:CELL]]]`` as a synthetic sensor mapping."""
    parts = text.split(":")
    if len(parts) < 2 or len(parts) > 5 or not all(parts[:2]):
        raise ValueError(f"--sensor {text!r}: expected NAME:KIND[:FREQ_HZ[:CHANNELS[:CELL]]]")
    sensor: dict = {"name": parts[0], "kind": parts[1]}
    try:
        if len(parts) > 2:
            sensor["freq_hz"] = float(parts[2])
        if len(parts) > 3:
            sensor["channels"] = int(parts[3])
    except ValueError:
        raise ValueError(f"--sensor {text!r}: FREQ_HZ must be a number and CHANNELS a whole number") from None
    if len(parts) > 4 and parts[4]:
        sensor["cell"] = parts[4]
    return sensor


def _limited(chunks: Iterator, limit: int | None) -> Iterator:
    """The chunks, cut after ``limit`` samples (None: all)."""
    if limit is None:
        yield from chunks
        return
    left = limit
    for columns in chunks:
        if left <= 0:
            return
        if len(columns) > left:
            columns = columns.slice(0, left)
        left -= len(columns)
        yield columns


def _message_limit(settings: dict) -> int:
    # An Arrow value must leave room for the key, headers and record overhead
    # inside librdkafka's message.max.bytes.
    return int(settings.get("message.max.bytes", 1_000_000)) - 4096


def _delivery_wait(settings: dict) -> float:
    # By message.timeout.ms every queued message is delivered or failed.
    return float(settings.get("message.timeout.ms", 300_000)) / 1000.0 + 5.0


class _ProduceProgress:
    """One live line on a terminal; a line every 5 s otherwise (logs stay readable)."""

    def __init__(self, stream: TextIO, total: int | None, period: float = 5.0) -> None:
        self.stream, self.total, self.period = stream, total, period
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self.last_line = self.started
        self.drawn = False

    def _line(self, sender) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        share = f" ({sender.samples / self.total:6.1%})" if self.total else ""
        return (
            f"sent {sender.messages:>10,} messages  {sender.samples:>10,} samples{share}  "
            f"{sender.samples / elapsed:>10,.0f} samples/s  delivered {sender.delivered:,}"
        )

    def __call__(self, sender) -> None:
        if self.tty:
            self.stream.write("\r" + self._line(sender))
            self.stream.flush()
            self.drawn = True
        elif time.monotonic() - self.last_line >= self.period:
            self.last_line = time.monotonic()
            print(self._line(sender), file=self.stream, flush=True)

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False


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


def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number in 1..65535, got {value}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
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
    p.add_argument("--timeout", type=_seconds, default=10.0, metavar="SECONDS",
                   help="with Kafka in the config: how long to wait for the cluster to answer at start (default 10)")
    p.add_argument("--snapshot-interval", type=_seconds, default=10.0, metavar="SECONDS",
                   help="how often the state is snapshotted for recovery (default 10); a resumed run reads "
                   "again at most about this much of its input")
    p.add_argument("--no-recovery", action="store_true",
                   help="keep no recovery state: a killed run starts over (Kafka: per source.from_beginning)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("config", help="print the effective config (file + environment) as YAML")
    p.add_argument("--config", metavar="FILE", default=None, help=config_help)
    p.add_argument("--check", action="store_true", help="only validate; print 'config ok'")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser(
        "broker",
        help="a local Kafka-protocol broker for development and tests (librdkafka's mock cluster)",
        description="Start librdkafka's mock Kafka cluster on 127.0.0.1, print one line "
        "'bootstrap=HOST:PORT' on stdout when it is ready, and run until SIGINT or SIGTERM. "
        "Topics are created on first use; data is kept in memory only.",
    )
    p.add_argument("--brokers", type=positive_int, default=1, metavar="N", help="number of brokers (default 1)")
    p.add_argument(
        "--port", type=_port, default=None, metavar="PORT",
        help="fixed bootstrap port on 127.0.0.1 (default: the first broker's own, chosen by the system)",
    )
    p.set_defaults(func=cmd_broker)

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
        "--timeout", type=_seconds, default=10.0, metavar="SECONDS",
        help="how long to wait for the cluster to answer at start (default 10)",
    )
    p.set_defaults(func=cmd_produce)

    from flows.memory_commands import add_parsers

    add_parsers(sub, config_help)
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
