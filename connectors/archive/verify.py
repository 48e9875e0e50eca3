"""Checking an archive against its manifests: ``becomingone memory verify`` (SPEC section 5).
"""

from __future__ import annotations

import os
from typing import Any

import pyarrow as pa

from connectors.archive.layout import (
    MANIFEST,
    ArchiveError,
    _committed_file,
    _data_files,
    _dataset_dirs,
    _Layout,
    _layout,
    _read_manifest,
    _sha256_file,
)
from connectors.archive.manifest_lines import GENESIS, signature_ok
from connectors.archive.manifest_lines import line_hash as _line_hash
from connectors.archive.manifest_lines import parse_line as _parse_line
from connectors.archive.recovery import _read_journal
from connectors.archive.witness_chain import witness_log_problems

__all__ = ["verify_archive", "verify_dataset"]

def _check_file(layout: _Layout, entry: dict[str, Any], pending: set[str]) -> list[str]:
    """Problems of one listed file; a name in ``pending`` (a committed compaction's
    merged file) may still be at its complete temp name."""
    rel = entry["file"]
    path = layout.data / rel
    if not path.is_file():
        found = _committed_file(layout, entry)
        if found is None:
            return [f"{rel}: missing"]
        if rel not in pending:
            return [f"{rel}: missing (its complete temp file exists; opening a writer on the dataset finishes it)"]
        path = found
    reasons = []
    digest = _sha256_file(path)
    if digest != entry["sha256"]:
        reasons.append(f"sha256 {digest}, manifest says {entry['sha256']}")
    try:
        with pa.memory_map(str(path)) as source:
            rows = pa.ipc.open_file(source).count_rows()
    except (pa.ArrowException, OSError) as exc:
        reasons.append(f"not a readable Arrow IPC file: {exc}")
    else:
        if rows != entry["rows"]:
            reasons.append(f"{rows} rows, manifest says {entry['rows']}")
    return [f"{rel}: changed ({'; '.join(reasons)})"] if reasons else []


def _committed_compaction(layout: _Layout) -> tuple[set[str], set[str], list[str]]:
    """What an interrupted compaction past its commit point excuses in verification.

    Returns:
        (merged files that may still be at their temp names, retired files
        that may still be on disk, problems with the journal itself).  Both
        sets are empty without a journal or before the commit point (the old
        manifest stands and the compaction's files are temp files).
    """
    journal_name = layout.journal.name
    try:
        journal = _read_journal(layout)
    except ArchiveError:
        return set(), set(), [f"{journal_name}: unreadable journal of an interrupted compaction"]
    manifest = layout.manifest
    if journal is None or not manifest.exists():
        return set(), set(), []
    current = _sha256_file(manifest)
    if current == journal["manifest_sha256"]:
        return {item["file"] for item in journal["merged"]}, set(journal["retired"]), []
    if current == journal["old_manifest_sha256"]:
        return set(), set(), []
    return set(), set(), [
        f"{journal_name}: an interrupted compaction whose manifests (before and after) both differ from {MANIFEST}"
    ]


def verify_dataset(path: str | os.PathLike[str], *, key: bytes | None = None) -> list[str]:
    """Check one dataset directory against its manifest; return the problems.

    An empty list means intact.  Each problem starts with the relative file it
    concerns (or ``MANIFEST.jsonl``): a line that is not a manifest entry, a
    broken ``prev`` chain (lines reordered, edited, inserted or removed),
    a file listed twice, a missing file, a changed file (SHA-256 or row count
    differs, or unreadable) and an ``.arrow`` file not in the manifest (extra).
    When the files of ``witnessing_logs`` are intact, the log they hold is
    checked too (one row per seq from 0 on, the digest chain recomputed):
    those problems start with ``seq N:``, the first bad seq
    (:func:`connectors.archive.witness_chain.witness_log_problems`).
    With ``key`` (``memory.signing_key``), every line must carry the HMAC
    that the key gives (:mod:`connectors.archive.manifest_lines`): a line without one,
    or with another, is a problem.  Without a key, signatures are not
    checked.  ``rerooted`` may mark the first line only.
    Hidden names (``.``/``_``), which readers skip, are not checked.  The
    manifest and journal are read from ``_meta/<dataset>/``, or from the
    dataset directory in an archive of the older layout; a manifest in both
    places is a problem.

    An interrupted compaction (journal ``compaction.json`` present) is not a
    problem.  Before its commit point the old manifest stands and its files
    are temp files.  After it, a merged file still at its temp name counts as
    present when the temp file's SHA-256 matches, and the files it merged away
    are not extra.  A journal that is unreadable, or that matches neither the
    manifest before nor after its compaction, is a problem (``compaction.json``).
    """
    layout = _layout(path)
    manifest = layout.manifest
    pending, retired, problems = _committed_compaction(layout)
    if not layout.older and (layout.data / MANIFEST).exists():
        problems.append(
            f"{MANIFEST}: a manifest of the older layout in the dataset directory, besides "
            f"{layout.name(manifest)} (written after the archive was moved?); readers of the directory fail on it"
        )
    listed: set[str] = set()
    unsigned: list[int] = []
    if manifest.exists():
        lines, _, torn = _read_manifest(manifest)
        expected_prev = GENESIS
        for i, text in enumerate(lines, 1):
            this_hash = _line_hash(text)
            try:
                entry = _parse_line(text)
            except ValueError as exc:
                problems.append(f"{MANIFEST}: line {i}: {exc}")
                expected_prev = this_hash
                continue
            rel = entry["file"]
            if entry["prev"] != expected_prev:
                what = "prev of line 1 must be 64 zeros" if i == 1 else f"prev is not the hash of line {i - 1}"
                problems.append(
                    f"{rel}: manifest line {i} breaks the chain ({what}): "
                    "lines reordered, edited, inserted or removed"
                )
            expected_prev = this_hash
            if entry.get("rerooted") and i > 1:
                problems.append(f"{rel}: manifest line {i} is marked rerooted, which only the first line may be")
            if key is not None and "hmac" not in entry:
                unsigned.append(i)
            elif key is not None and not signature_ok(entry, key):
                problems.append(f"{rel}: manifest line {i} does not carry the HMAC that memory.signing_key gives: "
                                "rewritten without the key, or signed with another key")
            if rel in listed:
                problems.append(f"{rel}: listed twice in {MANIFEST} (again on line {i})")
                continue
            listed.add(rel)
            problems.extend(_check_file(layout, entry, pending))
        if unsigned:
            problems.append(f"{MANIFEST}: {len(unsigned):,} line(s) not signed, the first on line {unsigned[0]} "
                            "(memory.signing_key is set: written without the key, or with it removed)")
        if torn:
            problems.append(
                f"{MANIFEST}: line {len(lines) + 1} is incomplete (an interrupted append; "
                "opening a writer on the dataset removes it)"
            )
    extras = [f"{rel}: extra (not in {MANIFEST})" for rel in _data_files(layout.data)
              if rel not in listed and rel not in retired]
    if extras and not manifest.exists():
        problems.append(f"{MANIFEST}: missing")
    problems += extras
    if layout.data.name == "witnessing_logs" and manifest.exists() and not problems:
        problems += witness_log_problems(layout.data)  # the files are intact: is the log one log?
    return problems


def verify_archive(root: str | os.PathLike[str], *, key: bytes | None = None) -> dict[str, list[str]]:
    """:func:`verify_dataset` over every dataset present under ``root``.

    A dataset is a subdirectory named as a dataset of
    :data:`schemas.datasets.DATASETS`, or one with a manifest (in
    ``_meta/<name>/``, or in the directory itself in the older layout), or a
    ``_meta/<name>/`` with a manifest even if the directory itself is gone.

    Raises:
        FileNotFoundError: ``root`` is not a directory.
    """
    return {d.name: verify_dataset(d, key=key) for d in _dataset_dirs(root)}
