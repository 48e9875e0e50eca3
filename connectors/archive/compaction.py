"""Compaction of an archive dataset: one file per hour partition (SPEC section 5).

Compaction (:func:`compact_dataset`, :func:`compact_archive`) merges each
hour partition's files into one, keeping every row, the row order within a
partition and a valid chain.  Its commit point is the atomic replacement of
the manifest; between the renaming of the merged files into place and the
deletion of the merged-away files, a reader of the dataset directory sees
those partitions' rows twice, while :func:`open_dataset` does not.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from connectors.archive.layout import (
    _JOURNAL_STAGING,
    _JOURNAL_VERSION,
    _MANIFEST_STAGING,
    LOCK,
    MANIFEST,
    ArchiveError,
    _damaged,
    _dataset_dirs,
    _DatasetLock,
    _fsync_dir,
    _Layout,
    _makedirs,
    _next_part_number,
    _sha256_file,
    _write_durably,
    meta_dir,
)
from connectors.archive.manifest_lines import GENESIS, signature_ok
from connectors.archive.manifest_lines import line_hash as _line_hash
from connectors.archive.manifest_lines import manifest_line as _manifest_line
from connectors.archive.recovery import _finish_compaction, _no_fault, _recover_dataset
from schemas.datasets import DATASETS, readable_as

__all__ = ["COMPACTION_STEPS", "CompactionResult", "compact_archive", "compact_dataset"]

#: The points of :func:`compact_dataset` at which its ``fault`` hook is called, in order.
COMPACTION_STEPS = (
    "merged-written",  # merged temp files written and fsynced; no journal yet
    "journal-written",  # journal durable; the old manifest still stands
    "manifest-staged",  # new manifest written to its temp name
    "manifest-replaced",  # commit point passed: the new manifest is in place
    "renamed",  # merged temp files renamed to their final names
    "retired-deleted",  # merged-away files deleted; the journal remains
)
_MERGE_BATCH_ROWS = 1 << 16  # rows per record batch in a merged file


@dataclass(frozen=True)
class CompactionResult:
    """What :func:`compact_dataset` did to one dataset directory.

    Attributes:
        path: the dataset directory.
        files_before, files_after: manifest lines before and after.
        rows_before, rows_after: rows the manifest lists before and after
            (always equal: compaction keeps every row).
        hours_merged: partitions whose files were merged into one.
        recovered: what an earlier interrupted compaction found at the start
            needed: ``"rolled forward"``, ``"rolled back"`` or None (nothing).
    """

    path: Path
    files_before: int
    files_after: int
    rows_before: int
    rows_after: int
    hours_merged: int
    recovered: str | None = None


def _read_checked(dataset_dir: Path, entry: dict[str, Any]) -> tuple[pa.Schema, list[pa.RecordBatch]]:
    """A listed file's schema and batches, after checking its SHA-256 and row count
    against its manifest line (so compaction never launders a changed file into a
    freshly hashed one); ArchiveError naming the file if they differ or it is unreadable."""
    name = f"{dataset_dir.name}/{entry['file']}"  # relative to the archive root, like every message
    data = (dataset_dir / entry["file"]).read_bytes()
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise _damaged(dataset_dir, f"{name} changed (its SHA-256 is not the manifest's)")
    try:
        # The batches keep ``data`` alive, so they may outlive this call.
        reader = pa.ipc.open_file(pa.py_buffer(data))
        batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
    except pa.ArrowException as exc:
        raise _damaged(dataset_dir, f"{name} is not a readable Arrow IPC file: {exc}") from None
    rows = sum(batch.num_rows for batch in batches)
    if rows != entry["rows"]:
        raise _damaged(dataset_dir, f"{name} has {rows} rows, the manifest says {entry['rows']}")
    return reader.schema, batches


def _conformed(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """A batch of an earlier version's schema in ``schema`` (``readable_as``): added columns null."""
    columns = [batch.column(f.name) if f.name in batch.schema.names else pa.nulls(batch.num_rows, f.type)
               for f in schema]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _merge_into(dataset_dir: Path, group: list[dict[str, Any]], temp: Path) -> tuple[int, str]:
    """Write the rows of the listed files ``group``, in order, into one Arrow IPC file
    ``temp`` (the first file's schema), fsynced.

    Returns:
        (rows, hex SHA-256 of the written file).

    Raises:
        ArchiveError: a file is changed or unreadable (:func:`_read_checked`),
            or its schema differs from the first file's.
    """
    first, batches = _read_checked(dataset_dir, group[0])
    # A known dataset's files are merged into this version's schema, so files an earlier version
    # wrote (a column added since) merge with newer ones; other datasets keep the first file's.
    name = dataset_dir.name
    schema = DATASETS[name] if name in DATASETS and readable_as(first, name) else first
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    with open(temp, "wb") as raw:
        writer = pa.ipc.new_file(raw, schema)
        for index, entry in enumerate(group):
            other = first
            if index:
                other, batches = _read_checked(dataset_dir, entry)
            if not other.equals(schema, check_metadata=True):
                if schema is not DATASETS.get(name) or not readable_as(other, name):
                    raise ArchiveError(
                        f"cannot merge {entry['file']} in {dataset_dir}: its schema differs from "
                        f"{group[0]['file']}'s"
                    )
                batches = [_conformed(b, schema) for b in batches]
            for batch in batches:
                pending.append(batch)
                pending_rows += batch.num_rows
                # Small files' batches are joined: a few large batches read faster than many tiny ones.
                if pending_rows >= _MERGE_BATCH_ROWS:
                    writer.write_table(pa.Table.from_batches(pending, schema).combine_chunks())
                    pending, pending_rows = [], 0
        if pending:
            writer.write_table(pa.Table.from_batches(pending, schema).combine_chunks())
        writer.close()
        raw.flush()
        os.fsync(raw.fileno())
    return sum(entry["rows"] for entry in group), _sha256_file(temp)


def compact_dataset(
    path: str | os.PathLike[str], *, fault: Callable[[str], None] | None = None,
    signing_key: bytes | None = None,
) -> CompactionResult:
    """Merge each hour partition's files into one file; keep every row, its order and the chain.

    Under the dataset lock (:class:`ArchiveError` if a writer or another
    compaction has the dataset open), after recovering the directory as a
    writer does (which finishes or undoes an earlier interrupted compaction):

    1. For each partition directory with more than one manifest line, its
       files (checked against their lines) are written, in manifest order and
       with their rows in order, into one temp file
       ``_meta/<dataset>/part-N.arrow.tmp``, fsynced.  ``N`` continues above
       the largest number listed, so no name is used twice.
    2. The journal ``compaction.json`` (new manifest text and both manifests'
       SHA-256, the merged files, the retired files) is written and fsynced.
    3. The new manifest is written to ``MANIFEST.jsonl.tmp``, fsynced and
       renamed onto ``MANIFEST.jsonl`` (the commit point).  A merged file's
       line takes the place of its partition's first line, the other lines
       keep their order, and ``prev`` is recomputed from the first change on.
    4. The temp files are renamed to their final names, the retired files
       deleted, then the journal.

    A crash anywhere loses nothing: before step 3 the old manifest stands and
    recovery deletes the temp files; after it recovery completes step 4.  In
    between, :func:`verify_dataset` passes and :func:`open_dataset` reads
    every row once.  Readers of the dataset directory (instead of the
    manifest) can see a partition's rows twice between the renames and the
    deletions.

    Args:
        path: the dataset directory.
        fault: called with each name of :data:`COMPACTION_STEPS` as that
            step completes (tests raise there to simulate a crash).
        signing_key: ``memory.signing_key``: every line must carry its HMAC
            (checked before anything is merged), and the new lines are
            signed.  Without it, a signed manifest is refused.  A first line
            marked ``rerooted`` keeps the mark.

    Returns:
        The counts; nothing is written when no partition has two files.

    Raises:
        FileNotFoundError: ``path`` is not a directory.
        ArchiveError: the dataset is locked or damaged (an unreadable line or
            journal, a broken chain, a listed file missing or changed).
    """
    dataset_dir = Path(path)
    layout = _Layout(dataset_dir, meta_dir(dataset_dir))
    if not dataset_dir.is_dir():
        if layout.manifest.exists():
            raise _damaged(dataset_dir, f"the directory is gone, but {layout.name(layout.manifest)} lists files")
        raise FileNotFoundError(f"no archive dataset directory at {dataset_dir}")
    step = fault or _no_fault
    _makedirs(layout.meta)
    lock = _DatasetLock(layout.meta / LOCK, dataset_dir)
    try:
        lines, entries, _, recovered = _recover_dataset(layout)
        return _compact_locked(layout, lines, entries, recovered, step, signing_key)
    finally:
        lock.release()


def _compact_locked(
    layout: _Layout,
    lines: list[str],
    entries: list[dict[str, Any]],
    recovered: str | None,
    fault: Callable[[str], None],
    signing_key: bytes | None = None,
) -> CompactionResult:
    """:func:`compact_dataset` on a locked, recovered dataset with these manifest lines."""
    dataset_dir = layout.data
    rows_before = sum(e["rows"] for e in entries)
    # Recomputing prev would hide a tampered or reordered manifest: refuse instead.
    prev = GENESIS
    seen: set[str] = set()
    for i, (text, entry) in enumerate(zip(lines, entries), 1):
        if entry["prev"] != prev or entry["file"] in seen:
            raise _damaged(dataset_dir, f"{MANIFEST} line {i} ({entry['file']}) breaks the chain or repeats a file")
        # Nor is a line signed that does not carry a good signature now.
        if signing_key is None and "hmac" in entry:
            raise ArchiveError(f"{layout.name(layout.manifest)} is signed: set memory.signing_key to compact it "
                               "(the merged lines must be signed too)")
        if signing_key is not None and not signature_ok(entry, signing_key):
            raise _damaged(dataset_dir, f"{MANIFEST} line {i} ({entry['file']}) is not signed with "
                           "memory.signing_key; compaction signs no line it cannot check")
        prev = _line_hash(text)
        seen.add(entry["file"])

    groups: dict[str, list[int]] = {}
    for i, entry in enumerate(entries):
        groups.setdefault(entry["file"].rpartition("/")[0], []).append(i)
    merging = [members for members in groups.values() if len(members) > 1]
    if not merging:
        return CompactionResult(dataset_dir, len(entries), len(entries), rows_before, rows_before, 0, recovered)

    number = _next_part_number(entries)
    replaced: dict[int, dict[str, Any]] = {}  # first line of a group -> the merged file's entry
    merged: list[dict[str, Any]] = []
    retired: list[str] = []
    temps: list[Path] = []
    try:
        for members in merging:
            part_dir = entries[members[0]]["file"].rpartition("/")[0]
            rel = f"{part_dir}/part-{number:08d}.arrow" if part_dir else f"part-{number:08d}.arrow"
            number += 1
            temp = layout.temp(rel)
            temps.append(temp)
            rows, digest = _merge_into(dataset_dir, [entries[i] for i in members], temp)
            _fsync_dir(temp.parent)
            replaced[members[0]] = {"file": rel, "rows": rows, "sha256": digest}
            merged.append({"file": rel, "sha256": digest, "rows": rows})
            retired.extend(entries[i]["file"] for i in members)
    except Exception:
        # Nothing is committed yet: clean up now rather than at the next recovery.
        for temp in temps:
            temp.unlink(missing_ok=True)
        raise
    fault("merged-written")

    dropped = {i for members in merging for i in members[1:]}
    new_lines: list[str] = []
    prev, changed = GENESIS, False
    for i, (text, entry) in enumerate(zip(lines, entries)):
        if i in dropped:
            continue
        if i in replaced:
            entry, changed = replaced[i], True
        if changed:
            text = _manifest_line(entry["file"], entry["rows"], entry["sha256"], prev,
                                  rerooted=i == 0 and bool(entries[0].get("rerooted")), key=signing_key)
        new_lines.append(text)
        prev = _line_hash(text)
    new_text = "".join(f"{line}\n" for line in new_lines)
    rows_after = sum(json.loads(line)["rows"] for line in new_lines)

    manifest = layout.manifest
    journal = {
        "version": _JOURNAL_VERSION,
        "old_manifest_sha256": _sha256_file(manifest),
        "manifest_sha256": hashlib.sha256(new_text.encode("utf-8")).hexdigest(),
        "merged": merged,
        "retired": retired,
        "manifest": new_text,
    }
    # Staged and renamed, so a journal is either absent or complete.
    _write_durably(layout.meta / _JOURNAL_STAGING, json.dumps(journal, indent=1).encode("utf-8"))
    os.replace(layout.meta / _JOURNAL_STAGING, layout.journal)
    _fsync_dir(layout.meta)
    fault("journal-written")

    _write_durably(layout.meta / _MANIFEST_STAGING, new_text.encode("utf-8"))
    fault("manifest-staged")
    os.replace(layout.meta / _MANIFEST_STAGING, manifest)
    _fsync_dir(layout.meta)
    fault("manifest-replaced")

    _finish_compaction(layout, journal, fault)
    return CompactionResult(
        dataset_dir, len(entries), len(new_lines), rows_before, rows_after, len(merging), recovered
    )


def compact_archive(
    root: str | os.PathLike[str], *, fault: Callable[[str], None] | None = None,
    signing_key: bytes | None = None,
) -> dict[str, CompactionResult]:
    """:func:`compact_dataset` over every dataset directory under ``root`` (as :func:`verify_archive`).

    Datasets are compacted one after another, in name order; an error stops
    at that dataset, leaving the ones before it compacted.

    Raises:
        FileNotFoundError: ``root`` is not a directory.
        ArchiveError: as :func:`compact_dataset`.
    """
    return {d.name: compact_dataset(d, fault=fault, signing_key=signing_key) for d in _dataset_dirs(root)}
