"""The Arrow archive: writer, checker, compaction and Bytewax sink (SPEC section 5).

Layout under the archive root (``memory.storage.path``): one directory per
dataset of :data:`schemas.datasets.DATASETS` holding nothing but its committed
data files, and everything else of the dataset under ``_meta/``::

    <root>/<dataset>/date=YYYY-MM-DD/hour=HH/part-00000000.arrow
    <root>/<dataset>/date=YYYY-MM-DD/hour=HH/part-00000001.arrow
    ...
    <root>/_meta/<dataset>/MANIFEST.jsonl
    <root>/_meta/<dataset>/lock
    <root>/_meta/<dataset>/compaction.json          (during a compaction)
    <root>/_meta/<dataset>/part-00000002.arrow.tmp  (while a file is written)

* Any Arrow reader reads a dataset directory as it is, e.g.
  ``pyarrow.dataset.dataset(<root>/<dataset>, format="ipc",
  partitioning="hive")`` or ``polars.scan_ipc(<root>/<dataset>,
  hive_partitioning=True)``: there is no other file in it, not even for a
  moment (temp files are written under ``_meta`` and renamed into place).
* Files are Arrow IPC *files* (random access format) with the dataset's
  schema, metadata included; the partition of a row is the UTC date and hour
  of its event time ``t``.  The partition columns live in the directory names
  only.  The manifest lists the committed files: :func:`manifest_files` and
  :func:`open_dataset` read exactly those.  A reader of the directory reads
  the same rows, except during an interrupted compaction (below).
* ``part-{N:08d}.arrow``: ``N`` is one more than the largest number the
  manifest lists, so a name is never used twice within a dataset, even after
  a compaction removed lines.  Names sort in the order the files were
  created, which after a compaction is not manifest order (a merged file
  takes its partition's first line).
* ``MANIFEST.jsonl`` has one line per file, in write order, exactly::

      {"file":"date=2025-11-26/hour=00/part-00000000.arrow","rows":2,"sha256":"<hex>","prev":"<hex>"}

  ``file`` is relative to the dataset directory (``/`` separators), ``rows``
  the row count, ``sha256`` the hex SHA-256 of the file's bytes and ``prev``
  the hex SHA-256 of the previous line's text (UTF-8, without its newline;
  64 zeros on the first line).  The chain makes a changed, missing, extra or
  reordered file detectable: :func:`verify_dataset`, :func:`verify_archive`
  (``becomingone memory verify``).
* ``lock``: an :class:`ArchiveWriter` holds an exclusive ``flock`` on it for
  its whole life, and :func:`compact_dataset` while it runs; a second one
  gets :class:`ArchiveError`.  Readers do not lock.

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

The older layout kept the manifest (``MANIFEST.jsonl``), lock (``.lock``),
journal (``.compaction.json``) and temp files (``.part-N.arrow.tmp`` in the
partition directories) in the dataset directory.  Readers read such an
archive as it is, without changing it; writers and compaction move it.

Compaction (:func:`compact_dataset`, :func:`compact_archive`) merges each
hour partition's files into one, keeping every row, the row order within a
partition and a valid chain.  Its commit point is the atomic replacement of
the manifest; between the renaming of the merged files into place and the
deletion of the merged-away files, a reader of the dataset directory sees
those partitions' rows twice, while :func:`open_dataset` does not.

Idempotency: a restart that re-runs the same input must not duplicate rows.
The writer keeps a high-water mark per row key, the largest ``t`` already
archived (read from every listed file on open, then kept up to date), and
drops incoming rows with ``t <= high-water``.  Row keys (:data:`ROW_KEYS`):
``temporal_signatures`` by (sensor, transducer); ``events``,
``coherence_history``, ``mesh_sync`` and ``input`` by sensor.
``witnessing_logs`` is a log of observations, kept by ``seq`` instead: a row
whose seq is at or below the largest one archived is dropped, and a flush
commits the rows in seq order (one file per run of rows of one hour), so a
crash leaves seq 0..k without a gap.  :func:`verify_dataset` also checks the
log's own chain there (:mod:`connectors.witness_chain`).

>>> import tempfile
>>> import pyarrow as pa
>>> from schemas.datasets import TIMESTAMP
>>> rows = pa.table({
...     "sensor": ["s1", "s1"],
...     "cell": pa.nulls(2, pa.string()),
...     "t": pa.array([1764115200000000, 1764115201000000]).cast(TIMESTAMP),
...     "phase": [[0.1], [0.2]],
... })
>>> with tempfile.TemporaryDirectory() as root:
...     with ArchiveWriter(root, "input") as writer:
...         print(writer.write(rows), writer.write(rows))   # the repeat is already archived
...     print(writer.rows_written, verify_archive(root))
2 0
2 {'input': []}
"""

from __future__ import annotations

import collections
import errno
import fcntl
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from connectors.manifest_lines import GENESIS
from connectors.manifest_lines import check_rel as _check_rel
from connectors.manifest_lines import line_hash as _line_hash
from connectors.manifest_lines import manifest_line as _manifest_line
from connectors.manifest_lines import parse_line as _parse_line
from connectors.manifest_lines import signature_ok
from schemas.datasets import DATASETS, PARTITION_SCHEMA, partition_dir

__all__ = [
    "COMPACTION_STEPS",
    "GENESIS",
    "JOURNAL",
    "LOCK",
    "MANIFEST",
    "META",
    "ROW_KEYS",
    "ArchiveError",
    "ArchiveSink",
    "ArchiveWriter",
    "CompactionResult",
    "PendingRows",
    "compact_archive",
    "compact_dataset",
    "last_witness_record",
    "listed_files",
    "manifest_files",
    "meta_dir",
    "open_dataset",
    "read_archive_file",
    "verify_archive",
    "verify_dataset",
]

#: Directory under the archive root holding ``<dataset>/``: what is not a data file.
META = "_meta"
#: Name of a dataset's manifest file, in its ``_meta/<dataset>/`` directory.
MANIFEST = "MANIFEST.jsonl"
#: File in ``_meta/<dataset>/`` that writers and compaction ``flock``.
LOCK = "lock"
#: Journal of a compaction in progress, in ``_meta/<dataset>/``.
JOURNAL = "compaction.json"
_JOURNAL_STAGING = "compaction.json.tmp"
_MANIFEST_STAGING = "MANIFEST.jsonl.tmp"
# Version 2 journals leave the temp names out: they follow from the final names.
_JOURNAL_VERSION = 2
_OLDER_JOURNAL_VERSION = 1
# Names of the older layout, in the dataset directory itself.
_OLDER_LOCK = ".lock"
_OLDER_JOURNAL = ".compaction.json"
#: The points of :func:`compact_dataset` at which its ``fault`` hook is called, in order.
COMPACTION_STEPS = (
    "merged-written",  # merged temp files written and fsynced; no journal yet
    "journal-written",  # journal durable; the old manifest still stands
    "manifest-staged",  # new manifest written to its temp name
    "manifest-replaced",  # commit point passed: the new manifest is in place
    "renamed",  # merged temp files renamed to their final names
    "retired-deleted",  # merged-away files deleted; the journal remains
)
_PART_NUMBER = re.compile(r"part-(\d+)")
_MERGE_BATCH_ROWS = 1 << 16  # rows per record batch in a merged file

#: Columns identifying a row's series for deduplication (empty: never deduplicated).
ROW_KEYS: dict[str, tuple[str, ...]] = {
    "temporal_signatures": ("sensor", "transducer"),
    "coherence_history": ("sensor",),
    "witnessing_logs": (),
    "events": ("sensor",),
    "mesh_sync": ("sensor",),
    "input": ("sensor",),
}

_HOUR_US = 3_600_000_000
# What os.link fails with on a file system without hard links.
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EXDEV, errno.EMLINK})
_NO_ROWS = np.iinfo(np.int64).min  # high-water of a key never archived


class ArchiveError(RuntimeError):
    """The archive on disk is damaged in a way the writer will not guess around."""


# -- manifest lines, hashes and files ----------------------------------------


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    """Make a directory's entries (new files, renames) durable; a no-op where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def meta_dir(dataset_dir: str | os.PathLike[str]) -> Path:
    """``<root>/_meta/<dataset>``: where the manifest, lock, journal and temp files of
    the dataset directory ``<root>/<dataset>`` live."""
    data = Path(dataset_dir)
    return data.parent / META / data.name


@dataclass(frozen=True)
class _Layout:
    """Where one dataset's files are.

    ``data`` is the dataset directory, ``meta`` its ``_meta/<dataset>``.
    ``older`` is True for an archive of the older layout, not moved yet: its
    manifest and journal are still in ``data`` (only readers see one; writers
    and compaction move it first).
    """

    data: Path
    meta: Path
    older: bool = False

    @property
    def manifest(self) -> Path:
        return (self.data if self.older else self.meta) / MANIFEST

    @property
    def journal(self) -> Path:
        return self.data / _OLDER_JOURNAL if self.older else self.meta / JOURNAL

    def temp(self, rel: str) -> Path:
        """The temp file that a new file ``rel`` is written to before its rename."""
        return self.meta / f"{rel.rsplit('/', 1)[-1]}.tmp"

    def temps(self, rel: str) -> tuple[Path, Path]:
        """Where the temp file of ``rel`` may be: under ``_meta``, or where the older
        layout put it (until a writer moves it; readers look at both)."""
        final = self.data / rel
        return self.temp(rel), final.with_name(f".{final.name}.tmp")

    def name(self, path: Path) -> str:
        """``path`` relative to the archive root, for messages (as given if outside it)."""
        root = self.data.parent
        try:
            return path.relative_to(root).as_posix()
        except ValueError:
            return str(path)


def _layout(dataset_dir: str | os.PathLike[str]) -> _Layout:
    """The layout a reader finds: the older one only while its manifest is the only one."""
    data = Path(dataset_dir)
    meta = meta_dir(data)
    older = not (meta / MANIFEST).exists() and (data / MANIFEST).exists()
    return _Layout(data, meta, older)


def _makedirs(directory: Path) -> None:
    """Create missing directories, fsyncing each parent so the new entries last."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
        _fsync_dir(d.parent)


def _read_manifest(path: Path) -> tuple[list[str], int, bool]:
    """(complete lines without newlines, byte length of those lines, torn tail present)."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    # Undecodable bytes stay visible (as U+FFFD) so the line fails to parse.
    lines = data[:end].decode("utf-8", errors="replace").split("\n")[:-1]
    return lines, end, end < len(data)


def _committed_file(layout: _Layout, entry: dict[str, Any]) -> Path | None:
    """The file holding a manifest entry's rows: its final name, or its temp file
    when a crash came between the manifest append and the rename; None if neither."""
    final = layout.data / entry["file"]
    if final.is_file():
        return final
    for temp in layout.temps(entry["file"]):
        if temp.is_file() and _sha256_file(temp) == entry["sha256"]:
            return temp
    return None


def _ipc_bytes(table: pa.Table, schema: pa.Schema) -> pa.Buffer:
    # Sized first (nothing is copied), then written into one buffer of that size: a
    # growing BufferOutputStream took 69 ms for a 34 MB file, this 14 ms.
    size = pa.MockOutputStream()
    with pa.ipc.new_file(size, schema) as writer:
        writer.write_table(table)
    buffer = pa.allocate_buffer(size.size())
    with pa.ipc.new_file(pa.FixedSizeBufferWriter(buffer), schema) as writer:
        writer.write_table(table)
    return buffer


def _t_micros(table: pa.Table) -> np.ndarray:
    # The timestamps' int64 values as they are (a view, not a compute cast).
    return np.concatenate([c.view(pa.int64()).to_numpy(zero_copy_only=False) for c in table.column("t").chunks]
                          or [np.empty(0, np.int64)])


def _damaged(dataset_dir: Path, what: str) -> ArchiveError:
    return ArchiveError(
        f"archive dataset {dataset_dir} is damaged: {what}; "
        f"run `becomingone memory verify --archive {dataset_dir.parent}` to see what else is wrong"
    )


def read_archive_file(path: str | os.PathLike[str], root: str | os.PathLike[str],
                      columns: list[str] | None = None) -> pa.Table:
    """One of the archive's Arrow IPC files (memory-mapped), all columns or ``columns``.

    Raises:
        ArchiveError: the file cannot be read (damaged, or gone); the message
            names it relative to ``root`` and says to run ``memory verify``.
    """
    path = Path(path)
    try:
        with pa.memory_map(str(path)) as source:
            table = pa.ipc.open_file(source).read_all()
        return table if columns is None else table.select(columns)
    except (pa.ArrowException, OSError) as exc:
        # pyarrow's own message ("Not an Arrow file", "File is too small") names no file.
        try:
            name = path.relative_to(root).as_posix()
        except ValueError:
            name = str(path)
        raise ArchiveError(
            f"cannot read archive file {name} in {root} ({exc}): the archive is damaged; "
            f"run `becomingone memory verify --archive {root}` to see every damaged file"
        ) from None


def _largest_seq(dataset_dir: Path, entries: list[dict[str, Any]]) -> int:
    """The largest ``seq`` in the listed files of ``witnessing_logs``, -1 if none."""
    largest = -1
    for entry in entries:
        seq = read_archive_file(dataset_dir / entry["file"], dataset_dir.parent, ["seq"]).column("seq")
        if len(seq):
            largest = max(largest, pc.max(seq).as_py())
    return largest


def _next_part_number(entries: Iterable[dict[str, Any]]) -> int:
    """One more than the largest ``part-N`` number the manifest lists (0 if none).

    Compaction removes lines, so the line count could name an existing file;
    the largest number never shrinks (a merged file takes a larger one), so
    no number is used twice.
    """
    numbers = [int(m.group(1)) for e in entries if (m := _PART_NUMBER.match(e["file"].rsplit("/", 1)[-1]))]
    return max(numbers) + 1 if numbers else 0


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _data_files(dataset_dir: Path) -> list[str]:
    """The visible ``.arrow`` files of a dataset directory, relative to it, sorted
    (names starting with ``.`` or ``_``, which readers skip, are left out)."""
    found = []
    for file in dataset_dir.rglob("*.arrow"):
        rel = file.relative_to(dataset_dir)
        if not any(part[:1] in (".", "_") for part in rel.parts) and file.is_file():
            found.append(rel.as_posix())
    return sorted(found)


def _unlisted_error(layout: _Layout, unlisted: list[str]) -> ArchiveError:
    names = [layout.name(layout.data / rel) for rel in unlisted]
    shown = ", ".join(names[:10]) + (f" and {len(names) - 10:,} more" if len(names) > 10 else "")
    root = layout.data.parent
    return ArchiveError(
        f"archive dataset {layout.data} holds {len(names):,} data file(s) that {layout.name(layout.manifest)} "
        f"does not list: {shown}. The manifest was lost or damaged, or the files were put there; a writer "
        "never reuses or overwrites a file name, so nothing was written. Run `becomingone memory verify "
        f"--archive {root} --repair` to rebuild the manifest from the files, or move the files away"
    )


def _place(temp: Path, final: Path, layout: _Layout) -> None:
    """Rename ``temp`` to ``final`` without ever replacing a file there.

    A hard link then an unlink: the link fails if ``final`` exists, and both
    names are the same complete file meanwhile (a crash in between leaves a
    temp file that recovery deletes).  Where the file system has no hard
    links, it checks and renames.
    """
    try:
        os.link(temp, final)
    except FileExistsError:
        if not os.path.samefile(temp, final):  # else: linked before a crash, not unlinked yet
            raise ArchiveError(
                f"{layout.name(final)} appeared while it was written (another process writes the "
                f"archive without its lock?); the committed rows stay in {layout.name(temp)}"
            ) from None
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        if final.exists():
            raise ArchiveError(f"{layout.name(final)} appeared while it was written; the committed rows "
                               f"stay in {layout.name(temp)}") from None
        os.replace(temp, final)
        return
    temp.unlink()


class _DatasetLock:
    """An exclusive, non-blocking ``flock`` on the file ``path`` until :meth:`release`.

    The kernel drops the lock when its process dies, so a crash never leaves
    a dataset locked; a lock object dropped without release lets go when
    collected.
    """

    def __init__(self, path: Path, dataset_dir: Path, *, who: str = "another writer or a compaction") -> None:
        self._fd: int | None = None
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.release()
            raise ArchiveError(
                f"archive dataset {dataset_dir} is in use: {who} has the "
                "dataset open (only one may at a time)"
            ) from None
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Let go of the lock; calling it again does nothing."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the only descriptor releases the flock

    def __del__(self) -> None:
        self.release()


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


# -- compaction journal and recovery -----------------------------------------


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


# -- writer ----------------------------------------------------------------


class ArchiveWriter:
    """The single writer of one dataset directory ``<root>/<dataset>/``.

    Args:
        root: the archive root; the dataset directory and ``_meta/<dataset>/``
            are created if missing.
        dataset: a key of :data:`schemas.datasets.DATASETS`.
        flush_rows: flush once this many rows are buffered.
        flush_seconds: flush once the oldest buffered row has waited this long
            (by ``clock``).  Checked on :meth:`write` and :meth:`flush_if_due`
            only: nothing runs in the background.
        clock: seconds, monotonic; injectable for tests.

    Opening the writer takes the dataset lock (an exclusive ``flock`` on
    ``_meta/<dataset>/lock``, held until :meth:`close`), recovers the dataset
    (module docstring: move the older layout, finish or undo an interrupted
    compaction, cut a torn manifest line, finish an interrupted rename,
    delete stray ``*.tmp`` files) and reads the high-water mark of every row
    key from the listed files.  :meth:`write` buffers rows, dropping those at
    or below their key's high-water; :meth:`flush` writes one file per hive
    partition, each committed by its manifest line (write temp + fsync,
    append line + fsync, rename + fsync the directory).  A new file is numbered one above the
    largest ``part-N`` the manifest lists.

    Exactly one writer per dataset directory may be open at a time (the
    :class:`ArchiveSink` arranges that across a Bytewax cluster); the lock
    refuses a second one, and a manifest that grows under an open writer
    (a writer that bypassed the lock) raises :class:`ArchiveError`.

    Raises:
        ValueError: unknown dataset or bad flush limits.
        ArchiveError: the dataset is locked by another writer or a compaction;
            a manifest line or the compaction journal is unreadable; a listed
            file is missing with no complete temp file, or cannot be read
            (the message names it; run ``becomingone memory verify``).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        dataset: str,
        *,
        flush_rows: int = 100_000,
        flush_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        signing_key: bytes | None = None,
    ) -> None:
        if dataset not in DATASETS:
            raise ValueError(f"unknown archive dataset {dataset!r}; known: {', '.join(DATASETS)}")
        if flush_rows < 1:
            raise ValueError(f"flush_rows must be >= 1, got {flush_rows}")
        if not flush_seconds >= 0:  # also refuses NaN
            raise ValueError(f"flush_seconds must be >= 0, got {flush_seconds}")
        self.dataset = dataset
        self.schema: pa.Schema = DATASETS[dataset]
        self.path = Path(root) / dataset
        self.meta = meta_dir(self.path)
        self._layout = _Layout(self.path, self.meta)
        self.flush_rows = int(flush_rows)
        self.flush_seconds = float(flush_seconds)
        self._clock = clock
        self._key = signing_key
        self._keys = ROW_KEYS[dataset]
        self._manifest = self._layout.manifest

        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self._since: float | None = None  # clock() when the oldest buffered row arrived
        self._rows_written = 0
        self._files_written = 0
        self._closed = False

        self._next_part = 0  # number of the next file's name, part-NNNNNNNN
        self._prev = GENESIS
        self._manifest_size = 0
        self._high_water: dict[tuple[str, ...], int] = {}
        # witnessing_logs: the largest archived seq (rows at or below it are refused), -1 if none.
        self._log_order = dataset == "witnessing_logs"
        self._seq_high = -1

        _makedirs(self.path)
        _makedirs(self.meta)
        self._lock = _DatasetLock(self.meta / LOCK, self.path)
        try:
            lines, entries, self._manifest_size, _ = _recover_dataset(self._layout)
            self._next_part = _next_part_number(entries)
            self._prev = _line_hash(lines[-1]) if lines else GENESIS
            if entries and "hmac" in entries[-1]:
                self._check_signed_head(entries[-1])
            if self._keys:
                self._read_high_water(entries)
            if self._log_order:
                self._seq_high = _largest_seq(self.path, entries)
        except BaseException:
            self._lock.release()
            raise

    # -- public --------------------------------------------------------

    @property
    def rows_written(self) -> int:
        """Rows in the files this writer has committed."""
        return self._rows_written

    @property
    def files_written(self) -> int:
        """Files this writer has committed."""
        return self._files_written

    @property
    def buffered_rows(self) -> int:
        """Rows accepted but not yet in a file."""
        return self._buffered

    def high_water(self, *key: str) -> int | None:
        """The largest archived or accepted ``t`` (int64 us) of a row key, or None."""
        return self._high_water.get(tuple(key))

    def write(self, rows: pa.Table | pa.RecordBatch, *,
              key_runs: tuple[np.ndarray, list[tuple]] | None = None) -> int:
        """Buffer rows of this dataset; flush if a limit is reached.

        ``rows`` must have exactly the dataset's columns (any order); a column
        of another type is cast when the cast is lossless (e.g. int64
        microseconds to ``TIMESTAMP``).  ``key_runs`` = (first row of each run,
        its key) may tell where the rows' keys (:data:`ROW_KEYS`) change, when
        the caller built the rows run by run and knows: the rows are then not
        compared to find them.

        Returns:
            The number of rows accepted: rows at or below their key's
            high-water mark are already archived and are dropped.

        Raises:
            ValueError: a missing, extra or duplicate column, a type that does
                not cast, or a null in a non-nullable column (naming the column).
        """
        if self._closed:
            raise ValueError(f"ArchiveWriter for {self.dataset!r} is closed")
        table = self._conform(rows)
        if self._log_order and table.num_rows:
            table = self._drop_logged(table)
        if self._keys and table.num_rows:
            if key_runs is not None:
                table = self._drop_archived_runs(table, _t_micros(table), *key_runs)
            else:
                table = self._drop_archived(table)
        n = table.num_rows
        if n:
            if not self._buffer:
                self._since = self._clock()
            self._buffer.append(table)
            self._buffered += n
        self.flush_if_due()
        return n

    def flush_if_due(self) -> list[str]:
        """:meth:`flush` if flush_rows or flush_seconds is reached, else nothing."""
        if not self._buffered:
            return []
        assert self._since is not None
        if self._buffered >= self.flush_rows or self._clock() - self._since >= self.flush_seconds:
            return self.flush()
        return []

    def flush(self) -> list[str]:
        """Write the buffered rows, one file per ``date=/hour=`` partition of ``t``.

        Partitions are written in time order; rows keep their order within a
        partition.  Witness rows are written in seq order instead, one file
        per run of rows of one partition, so that the committed rows are
        always seq 0..k.  If a write fails, the rows not yet committed stay
        buffered.

        Returns:
            The committed files, relative to the dataset directory.
        """
        if not self._buffered:
            return []
        table = pa.concat_tables(self._buffer)
        hours = np.floor_divide(_t_micros(table), _HOUR_US)
        # The witness log is committed in seq order, a file per run of rows of one hour:
        # whatever a crash cuts off, the archive holds seq 0..k without a gap.
        if not self._log_order and np.any(hours[1:] < hours[:-1]):
            order = np.argsort(hours, kind="stable")  # stable: row order kept inside an hour
            hours = hours[order]
            table = table.take(pa.array(order))
        bounds = [0, *(np.flatnonzero(np.diff(hours)) + 1).tolist(), table.num_rows]

        since = self._since
        self._buffer, self._buffered, self._since = [], 0, None
        written: list[str] = []
        for start, end in zip(bounds[:-1], bounds[1:]):
            committed_before = self._files_written
            try:
                part = partition_dir(int(hours[start]) * _HOUR_US)
                written.append(self._write_file(part, table.slice(start, end - start)))
            except BaseException:
                # Rows whose manifest line was appended are committed; keep the rest.
                rest = table.slice(end if self._files_written > committed_before else start)
                if rest.num_rows:
                    self._buffer, self._buffered, self._since = [rest], rest.num_rows, since
                raise
        return written

    def close(self) -> None:
        """Flush, refuse further writes and release the dataset lock; calling it again does nothing.

        If the flush fails the writer stays open (and locked) with the
        uncommitted rows buffered, so that ``close`` can be tried again.
        """
        if not self._closed:
            self.flush()
            self._closed = True
            self._lock.release()

    def __enter__(self) -> "ArchiveWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -----------------------------------------------------

    def _read_high_water(self, entries: list[dict[str, Any]]) -> None:
        keys = list(self._keys)
        per_file: list[pa.Table] = []
        for entry in entries:
            # Memory-mapped: only the pages of the key and time columns are read.
            table = read_archive_file(self.path / entry["file"], self.path.parent, [*keys, "t"])
            if table.num_rows:
                table = table.set_column(len(keys), "t", pc.cast(table.column("t"), pa.int64()))
                per_file.append(table.group_by(keys).aggregate([("t", "max")]))
        if per_file:
            best = pa.concat_tables(per_file).group_by(keys).aggregate([("t_max", "max")])
            columns = [best.column(k).to_pylist() for k in keys]
            for *key, t in zip(*columns, best.column("t_max_max").to_pylist()):
                self._high_water[tuple(key)] = int(t)

    def _check_signed_head(self, last: dict[str, Any]) -> None:
        """A signed manifest is continued only with its key: lines appended without one
        (or with another) would fail ``memory verify`` for good."""
        name = self._layout.name(self._manifest)
        if self._key is None:
            raise ArchiveError(f"{name} is signed (its lines carry an HMAC) and memory.signing_key is not set: "
                               "set it to the key the archive was written with")
        if not signature_ok(last, self._key):
            raise ArchiveError(f"the last line of {name} does not carry the HMAC that memory.signing_key gives: "
                               "the key is another one, or the line was rewritten; run `becomingone memory verify "
                               f"--archive {self.path.parent}`")

    def _drop_logged(self, table: pa.Table) -> pa.Table:
        """Witness rows whose seq is above every seq archived or accepted before them
        (a replayed epoch's records are refused: the archive keeps one row per seq)."""
        seq = table.column("seq").to_numpy()
        before = np.maximum.accumulate(np.concatenate(([self._seq_high], seq[:-1])))
        keep = seq > before
        self._seq_high = max(self._seq_high, int(seq.max()))
        return table if keep.all() else table.filter(pa.array(keep))

    def _conform(self, rows: pa.Table | pa.RecordBatch) -> pa.Table:
        """Rows as a table of exactly the dataset schema, or ValueError naming the column."""
        if isinstance(rows, pa.RecordBatch):
            rows = pa.Table.from_batches([rows])
        elif not isinstance(rows, pa.Table):
            raise TypeError(f"rows must be a pyarrow Table or RecordBatch, got {type(rows).__name__}")
        names = rows.column_names
        expected = self.schema.names
        for name in names:
            if name not in expected:
                raise ValueError(
                    f"{self.dataset}: column {name!r} is not in the schema ({', '.join(expected)})"
                )
            if names.count(name) > 1:
                raise ValueError(f"{self.dataset}: column {name!r} appears more than once")
        columns = []
        for field in self.schema:
            if field.name not in names:
                raise ValueError(f"{self.dataset}: column {field.name!r} is missing")
            column = rows.column(field.name)
            if not column.type.equals(field.type):
                try:
                    column = pc.cast(column, field.type)  # safe cast: refuses lossy conversions
                except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
                    raise ValueError(
                        f"{self.dataset}: column {field.name!r} has type {column.type}, "
                        f"expected {field.type}: {exc}"
                    ) from None
            if not field.nullable and column.null_count:
                raise ValueError(
                    f"{self.dataset}: column {field.name!r} has {column.null_count} null(s) "
                    "but must not be null"
                )
            columns.append(column)
        return pa.Table.from_arrays(columns, schema=self.schema)

    def _drop_archived(self, table: pa.Table) -> pa.Table:
        """Drop rows at or below their key's high-water; raise it with the rest."""
        t = _t_micros(table)
        runs = self._key_runs(table)
        if runs is not None:
            return self._drop_archived_runs(table, t, *runs)
        # One integer code per row for its key: mixed-radix over each key
        # column's dictionary codes, so only the distinct keys touch Python.
        codes = np.zeros(table.num_rows, np.int64)
        dictionaries = []
        for name in self._keys:
            encoded = table.column(name).combine_chunks().dictionary_encode()
            values = encoded.dictionary.to_pylist()
            codes = codes * len(values) + encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
            dictionaries.append(values)
        unique, row_key = np.unique(codes, return_inverse=True)
        keys = []
        for code in unique.tolist():
            parts = []
            for values in reversed(dictionaries):
                code, index = divmod(code, len(values))
                parts.append(values[index])
            keys.append(tuple(reversed(parts)))

        high = np.array([self._high_water.get(k, _NO_ROWS) for k in keys], np.int64)
        keep = t > high[row_key]
        newest = np.full(len(keys), _NO_ROWS, np.int64)
        np.maximum.at(newest, row_key[keep], t[keep])
        for key, value in zip(keys, newest.tolist()):
            if value != _NO_ROWS:
                self._high_water[key] = value
        return table if keep.all() else table.filter(pa.array(keep))

    def _key_runs(self, table: pa.Table) -> tuple[np.ndarray, list[tuple]] | None:
        """(start of each run, its key) when rows come in runs of one key, as the
        dataflow writes them (one sensor's rows together); None when runs are short."""
        n = table.num_rows
        change = np.zeros(n, np.bool_)
        change[0] = True
        for name in self._keys:
            column = table.column(name).combine_chunks()
            if column.null_count:
                return None
            change[1:] |= pc.not_equal(column.slice(1), column.slice(0, n - 1)).to_numpy(zero_copy_only=False)
        starts = np.flatnonzero(change)
        if starts.size * 8 > n:  # short runs: the dictionary path is cheaper
            return None
        index = pa.array(starts)
        columns = [table.column(name).take(index).to_pylist() for name in self._keys]
        return starts, list(zip(*columns))

    def _drop_archived_runs(self, table: pa.Table, t: np.ndarray, starts: np.ndarray, keys: list[tuple]) -> pa.Table:
        run_of = np.repeat(np.arange(starts.size), np.diff(np.append(starts, t.shape[0])))
        high = np.array([self._high_water.get(k, _NO_ROWS) for k in keys], np.int64)
        keep = t > high[run_of]
        newest = np.maximum.reduceat(np.where(keep, t, _NO_ROWS), starts)
        for key, value in zip(keys, newest.tolist()):
            if value > self._high_water.get(key, _NO_ROWS):  # one key may form several runs
                self._high_water[key] = value
        return table if keep.all() else table.filter(pa.array(keep))

    def _write_file(self, part_dir: str, rows: pa.Table) -> str:
        """Commit one file: temp + fsync + fsync dir, manifest line + fsync, rename + fsync dir."""
        rel = f"{part_dir}/part-{self._next_part:08d}.arrow"
        final = self.path / rel
        temp = self._layout.temp(rel)
        # Made before the commit, so that finishing the rename needs nothing new.
        _makedirs(final.parent)

        # A few record batches per file are fine for readers; joining them is a full copy.
        data = _ipc_bytes(rows if rows.column(0).num_chunks <= 16 else rows.combine_chunks(), self.schema)
        digest = hashlib.sha256(data).hexdigest()
        if os.path.lexists(final):  # never committed over: checked before the line, placed without replacing
            raise _unlisted_error(self._layout, [rel])
        # O_EXCL: a temp name in use means another writer, which the lock should have refused.
        with open(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # The temp file's name must be durable before the manifest line commits it:
        # recovery finishes a commit from the temp file, so it must find one.
        _fsync_dir(temp.parent)

        size = self._manifest.stat().st_size if self._manifest.exists() else 0
        if size != self._manifest_size:
            temp.unlink()
            raise ArchiveError(
                f"{self._manifest} changed under this writer ({size} bytes, expected "
                f"{self._manifest_size}): only one writer per dataset may be open"
            )
        line = _manifest_line(rel, rows.num_rows, digest, self._prev, key=self._key)
        encoded = (line + "\n").encode("utf-8")
        with open(self._manifest, "ab") as f:
            f.write(encoded)
            f.flush()
            os.fsync(f.fileno())
        if size == 0:
            _fsync_dir(self.meta)  # the manifest itself may be new
        # Committed: from here on a crash is finished by the next writer's recovery.
        self._next_part += 1
        self._prev = _line_hash(line)
        self._manifest_size = size + len(encoded)
        self._rows_written += rows.num_rows
        self._files_written += 1

        _place(temp, final, self._layout)  # from _meta into the partition: same file system
        _fsync_dir(final.parent)
        _fsync_dir(temp.parent)
        return rel


# -- reading and checking ----------------------------------------------------


def listed_files(dataset_dir: str | os.PathLike[str]) -> list[tuple[str, Path]]:
    """The dataset's committed files, in manifest order: (the manifest's name for
    the file, relative to the dataset directory; the path holding its rows).

    The path is ``Path(dataset_dir) / name``, or the file's temp file when the
    rows are committed but not yet renamed (a crash, or a writer or compaction
    in between): the temp file stands in if its SHA-256 matches the line.
    Files on disk that the manifest does not list (a compaction's retired
    files, uncommitted temp files) are never returned.  A torn last line was
    never committed and is ignored.  Final files are not hashed: use
    :func:`verify_dataset` for that.  An archive of the older layout is read
    where it is.

    Returns:
        The files, or ``[]`` when the dataset has no manifest.

    Raises:
        ArchiveError: a manifest line is unreadable, or a listed file is
            missing with no complete temp file.
    """
    layout = _layout(dataset_dir)
    if not layout.manifest.exists():
        return []
    lines, _, _ = _read_manifest(layout.manifest)
    files = []
    for i, text in enumerate(lines, 1):
        try:
            entry = _parse_line(text)
        except ValueError as exc:
            raise _damaged(layout.data, f"{MANIFEST} line {i}: {exc}") from None
        final = layout.data / entry["file"]
        found = _committed_file(layout, entry)
        if found is None and final.is_file():
            found = final  # renamed between the two looks
        if found is None:
            raise _damaged(layout.data, f"{entry['file']} is listed in {MANIFEST} but missing")
        files.append((entry["file"], found))
    return files


def manifest_files(dataset_dir: str | os.PathLike[str]) -> list[Path]:
    """The paths of :func:`listed_files`: the files holding a dataset's committed rows."""
    return [path for _, path in listed_files(dataset_dir)]


def open_dataset(path: str | os.PathLike[str]) -> ds.Dataset:
    """``pyarrow.dataset`` over the committed files of one dataset directory.

    Reads exactly the files of :func:`listed_files`, in manifest order, so
    the rows are the manifest's, each once, even while an interrupted
    compaction leaves merged-away files on disk.  ``date`` and ``hour`` are
    string columns taken from the manifest's names of the files (so a file
    read from its temp name has them too).  With no file listed, a directory
    named as a dataset of :data:`schemas.datasets.DATASETS` gets that
    dataset's schema (plus ``date``/``hour``); otherwise the schema is read
    from the first file.

    Raises:
        FileNotFoundError: ``path`` is not a directory.
        ArchiveError: as :func:`listed_files`.
    """
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"no archive dataset directory at {directory}")
    files = listed_files(directory)
    if files:
        data_schema = ds.dataset(os.fspath(files[0][1]), format="ipc").schema
    elif directory.name in DATASETS:
        data_schema = DATASETS[directory.name]
    else:
        data_schema = pa.schema([])
    hive = ds.partitioning(PARTITION_SCHEMA, flavor="hive")
    return ds.FileSystemDataset.from_paths(
        [os.fspath(found) for _, found in files],
        schema=pa.unify_schemas([data_schema, PARTITION_SCHEMA]),
        format=ds.IpcFileFormat(),
        filesystem=pafs.LocalFileSystem(),
        partitions=[hive.parse(name) for name, _ in files],
    )


def last_witness_record(root: str | os.PathLike[str]) -> tuple[int, str] | None:
    """``(seq, log_sha256)`` of the newest archived witness record, or None if there is none.

    Witness rows are partitioned by event time, so file order is not log
    order: the newest record is the one with the largest ``seq`` over every
    file the manifest lists.  A run appending to the archive continues the
    log from there.  Rows still buffered in an open writer are not seen.

    Raises:
        ArchiveError: a listed file is missing or unreadable (named), or the
            manifest is unreadable.
    """
    best: tuple[int, str] | None = None
    for found in manifest_files(Path(root) / "witnessing_logs"):
        table = read_archive_file(found, root, ["seq", "log_sha256"])
        if table.num_rows:
            seq = table["seq"].to_numpy()
            i = int(np.argmax(seq))
            if best is None or int(seq[i]) > best[0]:
                best = (int(seq[i]), table["log_sha256"][i].as_py())
    return best


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
    (:func:`connectors.witness_chain.witness_log_problems`).
    With ``key`` (``memory.signing_key``), every line must carry the HMAC
    that the key gives (:mod:`connectors.manifest_lines`): a line without one,
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
        from connectors.witness_chain import witness_log_problems

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


def _dataset_dirs(root: str | os.PathLike[str]) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no archive directory at {root}")
    meta = root / META
    names = {
        d.name for d in root.iterdir()
        if d.is_dir() and d.name[:1] not in ("_", ".")
        and (d.name in DATASETS or (d / MANIFEST).exists() or (meta / d.name / MANIFEST).exists())
    }
    if meta.is_dir():
        names.update(d.name for d in meta.iterdir() if (d / MANIFEST).is_file())
    return [root / name for name in sorted(names)]


# -- compaction --------------------------------------------------------------


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


def _merge_into(dataset_dir: Path, group: list[dict[str, Any]], temp: Path) -> tuple[int, str]:
    """Write the rows of the listed files ``group``, in order, into one Arrow IPC file
    ``temp`` (the first file's schema), fsynced.

    Returns:
        (rows, hex SHA-256 of the written file).

    Raises:
        ArchiveError: a file is changed or unreadable (:func:`_read_checked`),
            or its schema differs from the first file's.
    """
    schema, batches = _read_checked(dataset_dir, group[0])
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    with open(temp, "wb") as raw:
        writer = pa.ipc.new_file(raw, schema)
        for index, entry in enumerate(group):
            if index:
                other, batches = _read_checked(dataset_dir, entry)
                if not other.equals(schema, check_metadata=True):
                    raise ArchiveError(
                        f"cannot merge {entry['file']} in {dataset_dir}: its schema differs from "
                        f"{group[0]['file']}'s"
                    )
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


# -- Bytewax sink ------------------------------------------------------------


@dataclass(frozen=True)
class PendingRows:
    """Rows of one dataset not built yet: ``builder(*args, pieces)`` returns their table.

    A dataflow step hands these to :class:`ArchiveSink` instead of a table, so
    the table is built on the dataset's writer thread.  Pending rows that
    follow each other with the same ``builder`` and ``args`` are *joined* there
    (their ``pieces`` concatenated, order kept), so the rows of many small
    batches become one table and cost one build and one conform.

    ``builder`` must be a module-level function (picklable) and build a table
    whose rows are those of the pieces in order.

    >>> def ints(name, pieces):
    ...     return pa.table({name: [x for piece in pieces for x in piece]})
    >>> a, b = PendingRows(ints, ("n",), [[1, 2]]), PendingRows(ints, ("n",), [[3]])
    >>> a.joins(b), a.join(b)()["n"].to_pylist()
    (True, [1, 2, 3])
    """

    builder: Callable[..., pa.Table]
    args: tuple[Any, ...]
    pieces: list[Any]
    #: Optional ``runs(pieces) -> (rows per piece, key per piece)``: each piece's
    #: rows share one row key (:data:`ROW_KEYS`), so the writer need not look.
    runs: Callable[[list[Any]], tuple[list[int], list[tuple]]] | None = None

    def __call__(self) -> pa.Table:
        return self.builder(*self.args, self.pieces)

    def key_runs(self) -> tuple[np.ndarray, list[tuple]] | None:
        """(first row of each piece with rows, its key), or None without ``runs``."""
        if self.runs is None:
            return None
        counts, keys = self.runs(self.pieces)
        sizes = np.asarray(counts, np.int64)
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1])) if sizes.size else sizes
        keep = sizes > 0
        return starts[keep], [k for k, n in zip(keys, counts) if n > 0]

    def joins(self, other: object) -> bool:
        """True when ``other`` builds rows the same way (same builder, equal args)."""
        return (isinstance(other, PendingRows) and other.builder is self.builder and other.runs is self.runs
                and (other.args is self.args or other.args == self.args))

    def join(self, other: "PendingRows") -> "PendingRows":
        """These rows followed by ``other``'s (which must :meth:`joins` them)."""
        return PendingRows(self.builder, self.args, [*self.pieces, *other.pieces], self.runs)


def _joined(values: list[Any]) -> list[Any]:
    """``values`` with runs of joinable :class:`PendingRows` joined into one each."""
    out: list[Any] = []
    for v in values:
        if out and isinstance(v, PendingRows) and isinstance(out[-1], PendingRows) and out[-1].joins(v):
            out[-1] = out[-1].join(v)
        else:
            out.append(v)
    return out


class _ArchivePartition(StatefulSinkPartition[pa.Table, None]):
    """One dataset's writer inside the sink, run on a thread of its own.

    Conforming, encoding, hashing and writing files mostly run outside the
    GIL, so the writer thread overlaps them with the dataflow's computing.
    Batches go into an inbox; the thread takes everything in it at once, in
    order, so while it is busy the batches that arrive gather and are written
    (and their :class:`PendingRows` built) together: many small batches cost
    one table, not one each.  At most ``_MAX_WAITING`` values wait in the
    inbox, so a slow disk slows the flow down instead of filling memory.
    ``snapshot`` (when ``durable``) and ``close`` wait for everything handed
    over, and a writer error is raised in the flow at the next batch, snapshot
    or close: nothing is dropped silently.  Without ``durable`` a snapshot
    starts writing what is buffered and returns at once.
    """

    _MAX_WAITING = 1024
    # The thread is handed the inbox once this many batches wait or the oldest has
    # waited this long (checked as batches arrive; snapshots and close hand it
    # over at once): a drain has a fixed cost, and a flow of small batches would
    # otherwise pay it hundreds of times a second.
    _DRAIN_BATCHES = 64
    _DRAIN_SECONDS = 0.1

    def __init__(self, writer: ArchiveWriter,
                 siblings: Callable[[], list["_ArchivePartition"]] | None = None, *, durable: bool = True) -> None:
        self.writer = writer
        self.durable = durable
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"archive-{writer.dataset}")
        self._pending: collections.deque[Future[Any]] = collections.deque()
        self._inbox: collections.deque[Any] = collections.deque()  # appends and pops are thread-safe
        # The other datasets' partitions of this process: a snapshot starts their
        # flushes too, so the epoch's flushes run side by side, not one after another.
        self._siblings = siblings or (lambda: [self])
        self._flush_lock = threading.Lock()
        self._flush: tuple[int, Future[Any]] | None = None   # (batches handed over before it, future)
        self._handed = 0
        self._closed = False
        self._waiting_since: float | None = None

    def _settle(self, keep: int) -> None:
        """Wait until at most ``keep`` calls are pending; raise the first failure."""
        while self._pending and (len(self._pending) > keep or self._pending[0].done()):
            self._pending.popleft().result()

    def _submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self._settle(1)
        self._pending.append(self._thread.submit(fn, *args))

    def write_batch(self, values: list[pa.Table | pa.RecordBatch | Callable[[], pa.Table]]) -> None:
        if not values:
            return
        self._inbox.extend(values)
        self._handed += 1
        self._settle(2)
        now = time.monotonic()
        if self._waiting_since is None:
            self._waiting_since = now
        if len(self._inbox) < self._DRAIN_BATCHES and now - self._waiting_since < self._DRAIN_SECONDS:
            return
        self._waiting_since = None
        # A drain that has not started yet will take these values too.
        if not self._pending or self._pending[-1].running() or self._pending[-1].done():
            self._pending.append(self._thread.submit(self._drain))
        if len(self._inbox) >= self._MAX_WAITING:
            self._settle(0)

    def _drain(self) -> None:
        values = []
        while self._inbox:
            values.append(self._inbox.popleft())
        if values:
            self._write(values)

    def _write(self, values: list[pa.Table | pa.RecordBatch | Callable[[], pa.Table]]) -> None:
        # On the writer thread: tables given as builders are built here.
        joined = _joined(values)
        tables = [v if isinstance(v, pa.Table) else pa.Table.from_batches([v]) if isinstance(v, pa.RecordBatch)
                  else v() for v in joined]
        if len(joined) == 1 and isinstance(joined[0], PendingRows):
            self.writer.write(tables[0], key_runs=joined[0].key_runs())
        elif all(t.schema.equals(tables[0].schema) for t in tables[1:]):
            self.writer.write(pa.concat_tables(tables))
        else:  # differently typed but castable inputs: conform one by one
            for table in tables:
                self.writer.write(table)

    def _drain_and_flush(self) -> None:
        self._drain()
        self.writer.flush()

    def start_flush(self) -> None:
        """Start writing everything handed over so far to disk, unless a flush that
        covers it has started already; :meth:`snapshot` waits for it."""
        with self._flush_lock:
            if self._closed:
                return
            if self._flush is None or self._flush[0] < self._handed:
                self._flush = (self._handed, self._thread.submit(self._drain_and_flush))

    def snapshot(self) -> None:
        # Bytewax snapshots at the end of every epoch (10 s by default, with or
        # without recovery); with recovery that epoch is never replayed, so
        # buffered rows go to disk now or a crash after it would lose them.
        # The archive itself is the state: a resumed writer re-reads its
        # high-water marks from disk.  Bytewax takes the datasets' snapshots one
        # after another: the first one starts every dataset's flush.
        if not self.durable:
            # Nothing is ever resumed from this snapshot: write the rows, but let the
            # flow go on meanwhile (waiting stalled it 20 to 35 ms every epoch at
            # 100,000 samples/s).  A failure is raised at the next batch, snapshot or close.
            self._settle(len(self._pending))  # raises a failure that has happened
            self._pending.append(self._thread.submit(self._drain_and_flush))
            return None
        for part in self._siblings():
            part.start_flush()
        self.start_flush()  # covers batches handed over since a sibling started it
        with self._flush_lock:
            flush, self._flush = self._flush, None
        assert flush is not None
        self._settle(0)
        flush[1].result()
        return None

    def close(self) -> None:
        with self._flush_lock:
            self._closed = True
            flush, self._flush = self._flush, None
        try:
            self._submit(self._drain)
            self._settle(0)
            if flush is not None:
                flush[1].result()
        finally:
            self._thread.shutdown(wait=True)
            self.writer.close()


class ArchiveSink(FixedPartitionedSink[pa.Table, None]):
    """Bytewax sink writing ``(dataset_name, pa.Table)`` items into the archive.

    The value may also be a picklable zero-argument callable returning the
    table, such as :class:`PendingRows`; it is called on the dataset's writer
    thread (see :func:`flows.emit.deferred`).

    Each enabled dataset is one partition, so Bytewax runs exactly one
    :class:`ArchiveWriter` per dataset in the whole cluster (on the worker it
    picks as primary).  Rows are flushed by ``flush_rows`` / ``flush_seconds``
    when items arrive, and at the end of the run (partition close).

    :meth:`list_parts` returns the enabled datasets sorted by name: Bytewax
    routes an item to ``sorted(all partitions)[part_fn(key) % n]``, so
    ``part_fn`` returns the index into that sorted list.

    Args:
        root: the archive root.
        datasets: names of the datasets to write (keys of
            :data:`schemas.datasets.DATASETS`); items for any other dataset
            are refused by :meth:`part_fn`.
        flush_rows, flush_seconds: passed to each :class:`ArchiveWriter`.
        durable_snapshots: True (for a flow that may run with Bytewax
            recovery): each epoch's snapshot returns only once the rows handed
            over before it are on disk, so a resume from it loses none.  False
            (no recovery): the snapshot starts writing them and the flow goes
            on; the end of the flow still waits for every row.

    Raises:
        ValueError: no dataset, or an unknown one.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        datasets: Iterable[str],
        *,
        flush_rows: int = 100_000,
        flush_seconds: float = 5.0,
        durable_snapshots: bool = True,
        signing_key: bytes | None = None,
    ) -> None:
        names = sorted(set(datasets))
        unknown = [n for n in names if n not in DATASETS]
        if unknown:
            raise ValueError(
                f"unknown archive dataset(s) {', '.join(map(repr, unknown))}; known: {', '.join(DATASETS)}"
            )
        if not names:
            raise ValueError("ArchiveSink needs at least one dataset")
        if flush_rows < 1 or not flush_seconds >= 0:
            raise ValueError(f"bad flush limits: flush_rows={flush_rows}, flush_seconds={flush_seconds}")
        self.root = root
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.durable_snapshots = durable_snapshots
        self.signing_key = signing_key
        self._parts = names
        self._init_runtime()

    def _init_runtime(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[str, _ArchivePartition] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"], state["_open"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    def _partitions(self) -> list[_ArchivePartition]:
        with self._lock:
            return list(self._open.values())

    def list_parts(self) -> list[str]:
        """The enabled dataset names, sorted (every worker can write every dataset)."""
        return list(self._parts)

    def part_fn(self, item_key: str) -> int:
        """Index of dataset ``item_key`` in the sorted partition list."""
        try:
            return self._parts.index(item_key)
        except ValueError:
            raise ValueError(
                f"archive dataset {item_key!r} is not enabled in this sink; enabled: {', '.join(self._parts)}"
            ) from None

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _ArchivePartition:
        """A partition wrapping a new :class:`ArchiveWriter` for dataset ``for_part``."""
        with self._lock:
            # Bytewax may rebuild a partition (on resume) before dropping the
            # old one; close it first so only one writer touches the directory.
            old = self._open.pop(for_part, None)
            if old is not None:
                old.close()
            writer = ArchiveWriter(
                self.root, for_part, flush_rows=self.flush_rows, flush_seconds=self.flush_seconds,
                signing_key=self.signing_key,
            )
            part = _ArchivePartition(writer, self._partitions, durable=self.durable_snapshots)
            self._open[for_part] = part
            return part
