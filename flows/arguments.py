"""What every ``becomingone`` command shares: loading the config, and argument types.

Config problems are printed to stderr, one per line with the key path, and
the command exits with 2; argument types raise ``argparse`` errors that name
the value, so bad usage also exits with 2.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

__all__ = ["config_or_report", "port_number", "port_or_zero", "positive_int", "positive_seconds"]


def config_or_report(args: argparse.Namespace):
    """The validated config of ``args.config``, or None after printing every problem to stderr.

    ``args.node`` (``becomingone run --node``), when given, overrides ``becomingone.node`` as its
    environment variable would, so the rules that depend on the node type see it.
    """
    from schemas.config import ConfigError, load_config

    environ = None
    if getattr(args, "node", None):
        environ = {**os.environ, "BECOMINGONE__BECOMINGONE__NODE": args.node}
    try:
        return load_config(args.config, environ)
    except ConfigError as exc:
        print(f"becomingone: invalid config:\n{exc}", file=sys.stderr)
        return None


def positive_int(text: str) -> int:
    """An argument that must be a whole number >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_seconds(text: str) -> float:
    """An argument that must be a finite number of seconds > 0."""
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def port_number(text: str) -> int:
    """An argument that must be a TCP port, 1 to 65535."""
    return _port(text, 1, "a port number in 1..65535")


def port_or_zero(text: str) -> int:
    """A TCP port to listen on, or 0 for any free one."""
    return _port(text, 0, "0 (any free port) to 65535")


def _port(text: str, lowest: int, what: str) -> int:
    value = int(text)
    if not lowest <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be {what}, got {value}")
    return value
