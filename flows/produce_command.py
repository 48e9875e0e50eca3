"""What ``becomingone produce`` sends and how its progress shows.

:func:`produce_plan` turns the command's arguments and the config into a
:class:`ProducePlan`: the input files (checked before anything is sent) or
the synthetic generator, as chunks of
:class:`~connectors.phase_files.PhaseColumns`.  :class:`ProduceProgress`
draws the progress line; :func:`limited`, :func:`message_limit` and
:func:`delivery_wait` are the command's limits.  The command itself, its
messages and exit codes are :func:`flows.cli.cmd_produce`.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from typing import TextIO

__all__ = [
    "ProducePlan",
    "ProduceProgress",
    "delivery_wait",
    "limited",
    "message_limit",
    "produce_plan",
    "produce_topic",
]


class ProducePlan:
    """The samples to send: chunks, their total if known, and a description for the summary."""

    def __init__(self, chunks: Iterator, total: int | None, description: str) -> None:
        self.chunks, self.total, self.description = chunks, total, description


def produce_topic(config, topic: str | None) -> str:
    """``--topic`` (checked as ``source.topic`` is), else the config's ``source.topic`` or its default."""
    from pydantic import ValidationError

    from schemas.config import KafkaSource

    if topic is None:
        source = config.source
        return source.topic if isinstance(source, KafkaSource) else KafkaSource.model_fields["topic"].default
    try:
        return KafkaSource(topic=topic).topic
    except ValidationError as exc:
        raise ValueError(f"--topic {topic!r}: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None


def produce_plan(config, args: argparse.Namespace) -> ProducePlan:
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
        return ProducePlan(chunks(), total, names)
    return _synthetic_plan(config, args)


def _synthetic_plan(config, args: argparse.Namespace) -> ProducePlan:
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
    return ProducePlan(chunks(), per_sensor * len(sensors), description)


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


def limited(chunks: Iterator, limit: int | None) -> Iterator:
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


def message_limit(settings: dict) -> int:
    # An Arrow value must leave room for the key, headers and record overhead
    # inside librdkafka's message.max.bytes.
    return int(settings.get("message.max.bytes", 1_000_000)) - 4096


def delivery_wait(settings: dict) -> float:
    # By message.timeout.ms every queued message is delivered or failed.
    return float(settings.get("message.timeout.ms", 300_000)) / 1000.0 + 5.0


class ProduceProgress:
    """One live line on a terminal; a line every ``period`` seconds otherwise (logs stay readable)."""

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
