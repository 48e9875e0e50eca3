"""Rebuilding a dataset's manifest from its files: ``becomingone memory verify --repair``.

A writer refuses a dataset whose directory holds data files that the
manifest does not list (a lost or damaged ``_meta/<dataset>/MANIFEST.jsonl``):
numbering new files from the manifest would reuse, and overwrite, their
names.  :func:`repair_dataset` settles it when the user asks: it lists every
data file of the directory in a new manifest and re-roots the chain.

* Order: by partition directory, then by part number (then by name), which
  is the order the files were written within each hour.
* Each line's ``rows`` and ``sha256`` are computed from the file as it is
  now.  A file that is not a readable Arrow IPC file of the dataset's schema
  stops the repair (named), with nothing changed: move it away first.
* The first line carries ``"rerooted":true`` (:mod:`connectors.archive.manifest_lines`):
  the chain starts over there, so a copy of the old manifest's hashes, or an
  anchor in a witness log, no longer matches, and ``memory verify`` says so.
* The manifest it replaces, if any, is kept as
  ``_meta/<dataset>/MANIFEST.jsonl.before-repair`` (``-2``, ``-3``, ... when
  that name is taken).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from connectors.archive.layout import (
    LOCK,
    MANIFEST,
    ArchiveError,
    _committed_file,
    _data_files,
    _DatasetLock,
    _fsync_dir,
    _Layout,
    _makedirs,
    _place,
    _write_durably,
    meta_dir,
)
from connectors.archive.manifest_lines import GENESIS, line_hash, manifest_line, parse_line
from connectors.archive.recovery import _move_older_layout, _recover_compaction
from schemas.datasets import DATASETS, readable_as

__all__ = ["RepairResult", "repair_dataset"]

_STAGING = "MANIFEST.jsonl.repair.tmp"
_NUMBER = re.compile(r"part-(\d+)\.arrow$")


@dataclass(frozen=True)
class RepairResult:
    """What :func:`repair_dataset` did.

    Attributes:
        path: the dataset directory.
        files, rows: the files and rows the new manifest lists.
        unlisted: files the old manifest did not list (all, without one).
        gone: files the old manifest listed that no longer exist.
        changed: files the old manifest listed whose SHA-256 or row count differs.
        backup: where the old manifest was kept, or None (there was none).
    """

    path: Path
    files: int
    rows: int
    unlisted: list[str] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    backup: Path | None = None


def _order(rel: str) -> tuple[str, float, str]:
    directory, _, name = rel.rpartition("/")
    number = _NUMBER.search(name)
    return directory, int(number.group(1)) if number else float("inf"), name


def _describe(path: Path, dataset: str) -> tuple[int, str]:
    """(rows, sha256) of a data file; ValueError if it is not one of the dataset's files."""
    data = path.read_bytes()
    try:
        reader = pa.ipc.open_file(pa.py_buffer(data))
        rows = sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
    except pa.ArrowException as exc:
        raise ValueError(f"not a readable Arrow IPC file: {exc}") from None
    if dataset in DATASETS and not readable_as(reader.schema, dataset):
        raise ValueError(f"its schema is not the {dataset} schema")
    return rows, hashlib.sha256(data).hexdigest()


def repair_dataset(path: str | os.PathLike[str], *, signing_key: bytes | None = None) -> RepairResult | None:
    """Rebuild the manifest of one dataset directory from its data files (module docstring).

    Under the dataset lock, after the recovery a writer does (the older
    layout moved, an interrupted compaction finished or undone, a torn line
    cut, pending renames finished, stray temp files deleted).

    Args:
        path: the dataset directory.
        signing_key: sign the new lines (``memory.signing_key``).

    Returns:
        What was done, or None when the directory holds no data file and no
        manifest (nothing to repair).

    Raises:
        ArchiveError: the dataset is locked (a flow or compaction has it
            open), its compaction journal is unreadable, or a data file is
            unreadable or of another schema (named; nothing changed).
    """
    layout = _Layout(Path(path), meta_dir(path))
    if not layout.data.is_dir():
        raise FileNotFoundError(f"no archive dataset directory at {layout.data}")
    _makedirs(layout.meta)
    lock = _DatasetLock(layout.meta / LOCK, layout.data)
    try:
        _move_older_layout(layout)
        _recover_compaction(layout)
        old = _old_entries(layout)
        for stray in layout.meta.glob("*.tmp"):
            if stray.is_file():
                stray.unlink()
        files = sorted(_data_files(layout.data), key=_order)
        if not files and not layout.manifest.exists():
            return None
        described, bad = [], []
        for rel in files:
            try:
                described.append((rel, *_describe(layout.data / rel, layout.data.name)))
            except (ValueError, OSError) as exc:
                bad.append(f"{layout.name(layout.data / rel)} ({exc})")
        if bad:
            raise ArchiveError(f"cannot rebuild the manifest of {layout.data}: {'; '.join(bad)}. Nothing was "
                               "changed; move the file(s) away (or restore them) and repair again")
        lines, prev = [], GENESIS
        for i, (rel, rows, digest) in enumerate(described):
            lines.append(manifest_line(rel, rows, digest, prev, rerooted=i == 0, key=signing_key))
            prev = line_hash(lines[-1])
        staged = layout.meta / _STAGING
        _write_durably(staged, "".join(f"{line}\n" for line in lines).encode("utf-8"))
        backup = None
        if layout.manifest.exists():
            backup = _free_name(layout.meta / f"{MANIFEST}.before-repair")
            os.replace(layout.manifest, backup)
        os.replace(staged, layout.manifest)
        _fsync_dir(layout.meta)
    finally:
        lock.release()
    now = {rel: (rows, digest) for rel, rows, digest in described}
    return RepairResult(
        layout.data, len(described), sum(rows for _, rows, _ in described),
        unlisted=[rel for rel in files if rel not in old],
        gone=[rel for rel in old if rel not in now],
        changed=[rel for rel, line in old.items() if rel in now and now[rel] != line],
        backup=backup,
    )


def _old_entries(layout) -> dict[str, tuple[int, str]]:
    """{file: (rows, sha256)} of the readable lines of the current manifest; a pending
    rename (a committed temp file) is finished first, so its file counts as present."""
    if not layout.manifest.exists():
        return {}
    text = layout.manifest.read_bytes().decode("utf-8", errors="replace")
    old = {}
    for line in text.split("\n"):
        try:
            entry = parse_line(line)
        except ValueError:
            continue  # a damaged line (or the torn last one): the files decide
        final = layout.data / entry["file"]
        found = _committed_file(layout, entry)
        if found is not None and found != final:
            _makedirs(final.parent)
            _place(found, final, layout)
            _fsync_dir(final.parent)
        old[entry["file"]] = (entry["rows"], entry["sha256"])
    return old


def _free_name(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate
