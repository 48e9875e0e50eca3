"""The ``becomingone`` command line.

Each sub-command is one function ``cmd_<name>(args) -> int`` returning the
process exit code; :func:`main` parses the arguments and dispatches.
Exit codes: 0 success, 1 the work failed, 2 bad usage or bad config.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

__all__ = ["main"]


def _load_config(args: argparse.Namespace):
    """The validated config, or None after printing every problem to stderr."""
    from schemas.config import ConfigError, load_config

    try:
        return load_config(args.config)
    except ConfigError as exc:
        print(f"becomingone: invalid config:\n{exc}", file=sys.stderr)
        return None


def cmd_run(args: argparse.Namespace) -> int:
    from flows.offline import run_offline

    config = _load_config(args)
    if config is None:
        return 2
    try:
        run_offline(config, out=sys.stdout, progress=sys.stderr)
    except ValueError as exc:
        print(f"becomingone run: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    config = _load_config(args)
    if config is None:
        return 2
    if args.check:
        print("config ok")
    else:
        sys.stdout.write(config.to_yaml(redact_secrets=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="becomingone",
        description="Coherence events from live phase streams (KAIROS resonance).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    config_help = (
        "YAML config file (default: $BECOMINGONE_CONFIG, else the embedded default); "
        "BECOMINGONE__SECTION__KEY environment variables override single keys"
    )

    p = sub.add_parser("run", help="run the main job (no config: embedded default)")
    p.add_argument("--config", metavar="FILE", default=None, help=config_help)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("config", help="print the effective config (file + environment) as YAML")
    p.add_argument("--config", metavar="FILE", default=None, help=config_help)
    p.add_argument("--check", action="store_true", help="only validate; print 'config ok'")
    p.set_defaults(func=cmd_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
