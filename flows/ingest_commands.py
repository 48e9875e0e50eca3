"""The ``becomingone ingest`` commands: field protocols to the input topic.

``ingest c37118 HOST:PORT`` reads a PMU or PDC speaking IEEE C37.118.2 (the
work is :mod:`flows.c37118_ingest`); ``ingest lsl NAME`` a Lab Streaming
Layer stream, such as an EEG amplifier's (:mod:`flows.lsl_ingest`).  Heavy modules load only when a command
runs, so the command line starts fast.
"""

from __future__ import annotations

import argparse
import logging

from flows.arguments import positive_int, positive_seconds

__all__ = ["add_parsers", "cmd_ingest_c37118", "cmd_ingest_lsl"]


def cmd_ingest_c37118(args: argparse.Namespace) -> int:
    """A PMU or PDC to the input topic until stopped; exit 0, 1 (PMU or Kafka failed) or 2 (usage, config)."""
    from flows.c37118_ingest import ingest_c37118

    _log_to_stderr("becomingone ingest c37118")
    return ingest_c37118(args)


def cmd_ingest_lsl(args: argparse.Namespace) -> int:
    """An LSL stream to the input topic until stopped; exit 0, 1 (stream or Kafka failed) or 2 (usage, config)."""
    from flows.lsl_ingest import ingest_lsl

    _log_to_stderr("becomingone ingest lsl")
    return ingest_lsl(args)


def _log_to_stderr(name: str) -> None:
    from flows.cli import _log_to_stderr as log_to_stderr

    log_to_stderr(name, level=logging.WARNING)


def _idcode(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65534:
        raise argparse.ArgumentTypeError(f"must be an IDCODE in 1..65534, got {value}")
    return value


def add_parsers(sub, config_help: str) -> None:
    """Register ``ingest c37118`` and ``ingest lsl`` on the sub-command parser ``sub``."""
    ingest = sub.add_parser("ingest", help="feed the input topic from a field protocol (IEEE C37.118.2, LSL)")
    isub = ingest.add_subparsers(dest="ingest_command", metavar="PROTOCOL", required=True)
    p = isub.add_parser(
        "c37118", help="a PMU or PDC over TCP: each phasor's angle as a phase sample (or a raw value)",
        description="Connect to a PMU or PDC speaking IEEE C37.118.2 over TCP, take its configuration frame "
        "(CFG-2), start its data stream and send each phasor's angle to the input topic (source.topic) as "
        "sensor STATION/PHASOR, with frequency and ROCOF as extra columns: as a phase sample (--as phase, the "
        "default), or as a raw value sample in radians unwrapped per sensor (--as value: for oscillation modes, "
        "with a config that band-passes them such as config/pmu-modes.yaml). Bad frames go to the dead-letter "
        "topic. Stops on SIGTERM or Ctrl-C (exit 0), after --limit data frames, or when the PMU closes; exit 1 "
        "when the PMU cannot be reached or stays silent for --timeout seconds.",
    )
    p.add_argument("address", metavar="HOST:PORT", help="the PMU's or PDC's TCP address (often port 4712)")
    p.add_argument("--config", metavar="FILE", default=None, help=config_help)
    p.add_argument("--as", dest="send_as", choices=("phase", "value"), default="phase",
                   help="send each angle as a phase sample (default), or as a raw value: radians, unwrapped per "
                   "sensor across frames (a jump over pi is a wrap; a gap over kairos.max_gap restarts it)")
    p.add_argument("--idcode", type=_idcode, default=1, metavar="N",
                   help="IDCODE of the data stream, sent in command frames (default 1)")
    p.add_argument("--limit", type=positive_int, default=None, metavar="FRAMES", help="stop after FRAMES data frames")
    p.add_argument("--timeout", type=positive_seconds, default=10.0, metavar="S",
                   help="seconds to wait for the connection, the cluster, and between frames (default 10)")
    p.add_argument("--bootstrap", default=None, metavar="HOST:PORT",
                   help="Kafka bootstrap servers (default: kafka.bootstrap.servers of the config)")
    p.set_defaults(func=cmd_ingest_c37118)

    p = isub.add_parser(
        "lsl", help="a Lab Streaming Layer stream: each channel's samples as raw value samples",
        description="Resolve the Lab Streaming Layer stream named NAME (and of --type TYPE), and send every "
        "sample of every channel to the input topic (source.topic) as a raw value sample of sensor "
        "NAME/LABEL (channel labels from the stream's description, ch0, ch1 ... where missing), timed by the "
        "LSL timestamp mapped to the epoch. String streams are refused. Stops on SIGTERM or Ctrl-C (exit 0), "
        "after --limit samples, or when the stream's outlet goes away (exit 0); exit 1 when no such stream "
        "is found within --timeout seconds.",
    )
    p.add_argument("name", metavar="NAME", help="the stream's name (its StreamInfo name)")
    p.add_argument("--config", metavar="FILE", default=None, help=config_help)
    p.add_argument("--type", default=None, metavar="TYPE", help="only a stream of this type (EEG, ECG ...)")
    p.add_argument("--limit", type=positive_int, default=None, metavar="SAMPLES",
                   help="stop after SAMPLES samples (each one value per channel)")
    p.add_argument("--timeout", type=positive_seconds, default=10.0, metavar="S",
                   help="seconds to wait for the stream to be found and answer, and for the cluster (default 10)")
    p.add_argument("--bootstrap", default=None, metavar="HOST:PORT",
                   help="Kafka bootstrap servers (default: kafka.bootstrap.servers of the config)")
    p.set_defaults(func=cmd_ingest_lsl)
