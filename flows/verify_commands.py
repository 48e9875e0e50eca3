"""``becomingone memory verify`` (with ``--repair`` and ``--anchor``) and ``memory export-witness``.

``verify`` checks every dataset against its manifest (files, hash chain,
signatures with ``memory.signing_key``, and the witness log's own chain),
optionally against an anchor (a witness log kept outside the archive,
:mod:`connectors.archive.anchor`), and with ``--repair`` first rebuilds the manifest
of each dataset whose files do not match it (:mod:`connectors.archive.repair`).
``export-witness`` writes the archive's witness log as JSON lines, the form
an anchor takes.  Exit codes: 0 intact (or written), 1 a problem found or a
file that cannot be read, 2 bad usage or config.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from flows.arguments import config_or_report

__all__ = ["add_parsers", "cmd_memory_export_witness", "cmd_memory_verify"]


def _fail(command: str, message: str, code: int) -> int:
    print(f"becomingone memory {command}: {message}", file=sys.stderr)
    return code


def _root_and_key(args: argparse.Namespace, command: str) -> tuple[Path | None, bytes | None, int]:
    """(archive root, signing key or None, 0), or (None, None, exit code) after a message.
    The config is read even with ``--archive``: it holds the signing key."""
    config = config_or_report(args)
    if config is None:
        return None, None, 2
    root = Path(args.archive if args.archive is not None else config.memory.storage.path)
    if not root.is_dir():
        return None, None, _fail(command, f"no archive directory at {root}", 2)
    return root, config.memory.signing_key_bytes, 0


def _repair(root: Path, problems: dict[str, list[str]], key: bytes | None) -> int:
    """Rebuild the manifest of each dataset with problems of its files; print what was done.
    Returns the number of datasets that could not be repaired."""
    from connectors.archive import MANIFEST, ArchiveError
    from connectors.archive.repair import repair_dataset

    failed = 0
    for dataset, found in problems.items():
        if not [p for p in found if not p.startswith("seq ")]:
            continue  # intact files (the witness log's own chain is not the manifest's to fix)
        for problem in found:
            print(f"{dataset}: {problem}")
        try:
            result = repair_dataset(root / dataset, signing_key=key)
        except (ArchiveError, OSError) as exc:
            print(f"{dataset}: not repaired: {exc}")
            failed += 1
            continue
        if result is None:
            continue
        what = [f"{len(result.unlisted):,} of them not listed before"] if result.unlisted else []
        what += [f"{len(result.gone):,} listed file(s) are gone ({', '.join(result.gone[:3])})"] if result.gone else []
        what += ([f"{len(result.changed):,} listed file(s) differ from their lines and are taken as they are now "
                  f"({', '.join(result.changed[:3])})"] if result.changed else [])
        kept = f"; the old manifest is kept as {result.backup.name}" if result.backup else ""
        print(f"{dataset}: repaired: {MANIFEST} rebuilt from {result.files:,} file(s) with {result.rows:,} rows"
              f"{' (' + '; '.join(what) + ')' if what else ''}, its chain re-rooted{kept}")
    return failed


def cmd_memory_verify(args: argparse.Namespace) -> int:
    from connectors.archive.anchor import anchor_problems, read_anchors
    from connectors.archive import ArchiveError, verify_archive
    from connectors.archive.manifest_lines import manifest_notes

    root, key, code = _root_and_key(args, "verify")
    if root is None:
        return code
    anchors = None
    if args.anchor is not None:
        try:
            anchors = read_anchors(args.anchor)
        except ValueError as exc:
            return _fail("verify", f"--anchor: {exc}", 2)
    try:
        problems = verify_archive(root, key=key)
        failed = _repair(root, problems, key) if args.repair else 0
        if args.repair:
            problems = verify_archive(root, key=key)
    except ArchiveError as exc:
        return _fail("verify", str(exc), 1)
    if anchors is not None:
        for dataset, found in anchor_problems(root, anchors, source=os.fspath(args.anchor)).items():
            problems.setdefault(dataset, []).extend(found)
    if not problems:
        return _fail("verify", f"{root} holds no dataset", 1)
    bad = 0
    for dataset, found in sorted(problems.items()):
        bad += len(found)
        for problem in found:
            print(f"{dataset}: {problem}")
        if not found:
            notes = manifest_notes(root / dataset, key)
            print(f"{dataset}: ok" + (f" ({'; '.join(notes)})" if notes else ""))
    if bad or failed:
        print(f"becomingone memory verify: {bad} problem(s) in {root}", file=sys.stderr)
        return 1
    return 0


def cmd_memory_export_witness(args: argparse.Namespace) -> int:
    from connectors.archive.anchor import export_witness_log
    from connectors.archive import ArchiveError

    root, _, code = _root_and_key(args, "export-witness")
    if root is None:
        return code
    try:
        if args.out is None:
            n, last = export_witness_log(root, sys.stdout.buffer)
            sys.stdout.buffer.flush()
        else:
            out = Path(args.out)
            staged = out.with_name(f".{out.name}.tmp")
            with open(staged, "wb") as f:
                n, last = export_witness_log(root, f)
            os.replace(staged, out)  # a complete export or none
    except ArchiveError as exc:
        return _fail("export-witness", str(exc), 1)
    except OSError as exc:
        return _fail("export-witness", f"{args.out}: {exc.strerror or exc}", 1)
    if not n:
        return _fail("export-witness", f"{root} holds no witness record", 1)
    print(f"{n:,} witness records (seq 0 to {last:,}) from {root}" + (f" to {args.out}" if args.out else ""),
          file=sys.stderr)
    return 0


def add_parsers(msub, archive_help: str, config_help: str) -> None:
    """Register ``verify`` and ``export-witness`` on the ``memory`` sub-command parser ``msub``."""
    p = msub.add_parser(
        "verify", help="check every dataset against its manifest's hash chain (_meta/DATASET/MANIFEST.jsonl)",
        description="Exit 0 when every dataset matches its manifest; otherwise exit 1 and name each changed, "
        "missing, extra or reordered file, each line whose HMAC does not match memory.signing_key, and the "
        "first bad seq of the witness log. --anchor checks the manifests against the heads a witness log "
        "recorded (a rollback, a rewritten chain, a missing dataset); --repair first rebuilds the manifest of "
        "each dataset whose files do not match it, from its files (the chain is re-rooted).")
    p.add_argument("--anchor", metavar="FILE", default=None,
                   help="a witness log kept outside the archive (JSON lines, e.g. from memory export-witness or "
                   "the witness topic)")
    p.add_argument("--repair", action="store_true",
                   help="rebuild the manifest of each dataset whose files do not match it (not while a flow runs)")
    p.add_argument("--archive", metavar="DIR", default=None, help=archive_help)
    p.add_argument("--config", metavar="FILE", default=None, help=config_help)
    p.set_defaults(func=cmd_memory_verify)

    p = msub.add_parser(
        "export-witness", help="the archive's witness log as JSON lines (an anchor for verify --anchor)",
        description="Write every record of witnessing_logs, in seq order, one per line: byte for byte the "
        "witness topic's values. Keep it outside the archive to anchor it (memory verify --anchor).")
    p.add_argument("--out", metavar="FILE", default=None, help="write to FILE instead of stdout")
    p.add_argument("--archive", metavar="DIR", default=None, help=archive_help)
    p.add_argument("--config", metavar="FILE", default=None, help=config_help)
    p.set_defaults(func=cmd_memory_export_witness)
