"""Crash recovery of an archive dataset: what a writer or a compaction does first (SPEC section 5).

Crash safety: each file is written to a temp file ``_meta/<dataset>/part-N.arrow.tmp``
(part numbers are unique within a dataset, so the name is too), flushed and
fsynced; then its manifest line is appended and fsynced (this is the commit
point: the rows are in the archive); then the temp file is renamed into its
partition directory (``_meta`` is under the root, so on the same file system
and the rename is atomic) and the directory fsynced.  A writer opening the
dataset (and a compaction starting) first moves an archive of the older
layout into this one (:func:`_move_older_layout`), finishes or undoes an
interrupted compaction (journal ``compaction.json``, see
:func:`compact_dataset`), then cuts a torn (newline-less) last manifest line,
finishes an interrupted rename (temp file whose SHA-256 matches its manifest
line) and deletes every other ``*.tmp`` file: rows without a complete
manifest line were never committed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from connectors.archive.layout import (
    _JOURNAL_VERSION,
    _MANIFEST_STAGING,
    _OLDER_JOURNAL,
    _OLDER_JOURNAL_VERSION,
    _OLDER_LOCK,
    JOURNAL,
    MANIFEST,
    _committed_file,
    _damaged,
    _data_files,
    _DatasetLock,
    _fsync_dir,
    _Layout,
    _makedirs,
    _place,
    _read_manifest,
    _sha256_file,
    _unlisted_error,
)
from connectors.archive.manifest_lines import check_rel as _check_rel
from connectors.archive.manifest_lines import parse_line as _parse_line


def _move_older_layout(layout: _Layout) -> bool:
    """Move what the older layout kept in the dataset directory to ``_meta/<dataset>/``.

    Called by writers and compaction under the dataset's lock.  Temp files
    (``.NAME.tmp`` anywhere in the directory) become ``_meta/<dataset>/NAME.tmp``,
    then the journal and the manifest move; the manifest moves last, so until
    then the older layout still stands for readers, and a crash anywhere is
    finished by the next call (each step is a rename that is either done or
    not).  The older ``.lock`` is taken first (a writer of an older version
    holding it is refused) and deleted last.

    Returns:
        True if anything was moved or deleted.

    Raises:
        ArchiveError: a writer of an older version has the dataset open, or
            the dataset has both an older and a current manifest (nothing is
            changed then).
    """
    data, meta = layout.data, layout.meta
    older_manifest, older_journal, older_lock = data / MANIFEST, data / _OLDER_JOURNAL, data / _OLDER_LOCK
    # An older writer made its .lock before anything else and the move deletes it
    # last, so without one there is nothing to move (and no directory walk).
    if not (older_manifest.exists() or older_journal.exists() or older_lock.exists()):
        return False
    temps = [path for path in data.rglob(".*.tmp") if path.is_file()]
    if older_manifest.exists() and (meta / MANIFEST).exists():
        raise _damaged(
            data,
            f"it has two manifests, {layout.name(older_manifest)} (the older layout) and "
            f"{layout.name(meta / MANIFEST)}; something wrote the older layout after the archive "
            "was moved to the current one. Nothing was changed",
        )
    lock = _DatasetLock(older_lock, data, who="a writer of an older version") if older_lock.exists() else None
    try:
        for temp in temps:
            os.replace(temp, meta / temp.name[1:])  # ".part-N.arrow.tmp" -> "part-N.arrow.tmp"
        for directory in sorted({temp.parent for temp in temps}):
            _fsync_dir(directory)
        _fsync_dir(meta)  # the moved temp files before the manifest that may commit them
        if older_journal.exists():
            os.replace(older_journal, meta / JOURNAL)
            _fsync_dir(meta)
        if older_manifest.exists():
            os.replace(older_manifest, meta / MANIFEST)
            _fsync_dir(meta)
        _fsync_dir(data)
        older_lock.unlink(missing_ok=True)
        _fsync_dir(data)
    finally:
        if lock is not None:
            lock.release()
    return True


def _read_journal(layout: _Layout) -> dict[str, Any] | None:
    """The journal of an interrupted compaction, or None; ArchiveError if unreadable.

    A journal of the older layout (version 1) also names the merged files' temp
    names; they are not needed, as moving the older layout put those files
    where :meth:`_Layout.temp` says.
    """
    path = layout.journal
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        return None
    try:
        journal = json.loads(text)
        versions = (_JOURNAL_VERSION, _OLDER_JOURNAL_VERSION)
        if not isinstance(journal, dict) or journal.get("version") not in versions:
            raise ValueError(f"not a version {_JOURNAL_VERSION} or {_OLDER_JOURNAL_VERSION} journal")
        for key in ("old_manifest_sha256", "manifest_sha256"):
            if not isinstance(journal.get(key), str):
                raise ValueError(f"no {key}")
        if not isinstance(journal.get("manifest"), str):
            raise ValueError("no manifest text")
        merged, retired = journal.get("merged"), journal.get("retired")
        if not isinstance(merged, list) or not isinstance(retired, list):
            raise ValueError("no merged or retired list")
        for item in merged:
            # Recovery renames and deletes what the journal names: only paths inside the dataset.
            if not isinstance(item, dict) or not isinstance(item.get("sha256"), str):
                raise ValueError(f"bad merged item {item!r}")
            _check_rel(item.get("file"))
        for rel in retired:
            _check_rel(rel)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _damaged(layout.data, f"{path.name} is unreadable ({exc})") from None
    return journal


def _finish_compaction(layout: _Layout, journal: dict[str, Any], fault: Callable[[str], None]) -> None:
    """Steps after the commit point, each idempotent: rename the merged temp files,
    delete the retired files, delete the journal."""
    touched: set[Path] = set()
    for item in journal["merged"]:
        final = layout.data / item["file"]
        temp = next((t for t in layout.temps(item["file"]) if t.is_file()), None)
        if temp is not None:
            _makedirs(final.parent)
            _place(temp, final, layout)
            touched.add(final.parent)
        elif not final.is_file():
            raise _damaged(layout.data, f"{item['file']} (merged by a compaction) is missing")
    for directory in sorted(touched):
        _fsync_dir(directory)
    _fsync_dir(layout.meta)
    fault("renamed")
    touched.clear()
    for rel in journal["retired"]:
        retired = layout.data / rel
        retired.unlink(missing_ok=True)
        touched.add(retired.parent)
    for directory in sorted(touched):
        _fsync_dir(directory)
    fault("retired-deleted")
    layout.journal.unlink(missing_ok=True)
    _fsync_dir(layout.meta)


def _no_fault(step: str) -> None:
    pass


def _recover_compaction(layout: _Layout) -> str | None:
    """Finish or undo an interrupted compaction.

    Returns:
        ``"rolled forward"`` (the new manifest was in place: its files are
        completed), ``"rolled back"`` (the old manifest stood: the merged temp
        files are deleted) or None (no journal).

    Raises:
        ArchiveError: the journal is unreadable, or the manifest is neither the
            one before nor the one after the compaction (changed by something
            that ignored the lock); nothing is touched then.
    """
    journal = _read_journal(layout)
    if journal is None:
        return None
    manifest = layout.manifest
    current = _sha256_file(manifest) if manifest.exists() else None
    if current == journal["manifest_sha256"]:
        _finish_compaction(layout, journal, _no_fault)
        return "rolled forward"
    if current != journal["old_manifest_sha256"]:
        raise _damaged(
            layout.data,
            f"{MANIFEST} is neither the manifest before nor the one after the compaction in {JOURNAL}",
        )
    for item in journal["merged"]:
        for temp in layout.temps(item["file"]):
            temp.unlink(missing_ok=True)
    (layout.meta / _MANIFEST_STAGING).unlink(missing_ok=True)
    # The journal goes last: until then a crash repeats this roll-back.
    layout.journal.unlink()
    _fsync_dir(layout.meta)
    return "rolled back"


def _recover_dataset(layout: _Layout) -> tuple[list[str], list[dict[str, Any]], int, str | None]:
    """Bring a locked dataset to a committed state (module docstring).

    Order matters: the older layout is moved first, then an interrupted
    compaction (its pending temp files must not be taken for strays), then a
    torn manifest line, interrupted renames and stray ``*.tmp`` files.

    Returns:
        (manifest lines, their parsed entries, manifest size in bytes,
        what :func:`_recover_compaction` did).

    Raises:
        ArchiveError: an unreadable manifest line or journal, or a listed
            file missing with no complete temp file.
    """
    _move_older_layout(layout)
    recovered = _recover_compaction(layout)
    manifest = layout.manifest
    lines: list[str] = []
    entries: list[dict[str, Any]] = []
    size = 0
    if manifest.exists():
        lines, size, torn = _read_manifest(manifest)
        if torn:
            # The append was cut short, so that file was never committed:
            # drop the fragment; its temp file goes with the strays below.
            with open(manifest, "r+b") as f:
                f.truncate(size)
                f.flush()
                os.fsync(f.fileno())
        for i, text in enumerate(lines, 1):
            try:
                entries.append(_parse_line(text))
            except ValueError as exc:
                raise _damaged(layout.data, f"{MANIFEST} line {i}: {exc}") from None
        for entry in entries:
            final = layout.data / entry["file"]
            found = _committed_file(layout, entry)
            if found is None:
                raise _damaged(layout.data, f"{entry['file']} is listed in {MANIFEST} but missing")
            if found != final:
                # Crash between the manifest append and the rename: finish it.
                _makedirs(final.parent)
                _place(found, final, layout)
                _fsync_dir(final.parent)
    for stray in layout.meta.glob("*.tmp"):
        if stray.is_file():
            stray.unlink()
    _fsync_dir(layout.meta)
    listed = {entry["file"] for entry in entries}
    unlisted = [rel for rel in _data_files(layout.data) if rel not in listed]
    if unlisted:
        # A lost manifest would number new files from 0 again, over the old ones.
        raise _unlisted_error(layout, unlisted)
    return lines, entries, size, recovered
