"""Where an archive dataset's files live, how they are named, and its lock (SPEC section 5).

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

The older layout kept the manifest (``MANIFEST.jsonl``), lock (``.lock``),
journal (``.compaction.json``) and temp files (``.part-N.arrow.tmp`` in the
partition directories) in the dataset directory.  Readers read such an
archive as it is, without changing it; writers and compaction move it.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas.datasets import DATASETS

__all__ = ["JOURNAL", "LOCK", "MANIFEST", "META", "ArchiveError", "meta_dir"]

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
_PART_NUMBER = re.compile(r"part-(\d+)")
# What os.link fails with on a file system without hard links.
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EXDEV, errno.EMLINK})


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


def _damaged(dataset_dir: Path, what: str) -> ArchiveError:
    return ArchiveError(
        f"archive dataset {dataset_dir} is damaged: {what}; "
        f"run `becomingone memory verify --archive {dataset_dir.parent}` to see what else is wrong"
    )


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
