"""Reading an archive dataset: its committed files, as a pyarrow dataset (SPEC section 5).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from connectors.archive.layout import MANIFEST, ArchiveError, _committed_file, _damaged, _layout, _read_manifest
from connectors.archive.manifest_lines import parse_line as _parse_line
from schemas.datasets import DATASETS, PARTITION_SCHEMA, readable_as

__all__ = ["ListedFile", "last_witness_record", "listed_entries", "listed_files", "manifest_files", "open_dataset",
           "read_archive_file"]


@dataclass(frozen=True)
class ListedFile:
    """A committed file of a dataset: the manifest's name for it (relative to the dataset
    directory), the path holding its rows, and the row count its manifest line states."""

    name: str
    path: Path
    rows: int


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
    return [(entry.name, entry.path) for entry in listed_entries(dataset_dir)]


def listed_entries(dataset_dir: str | os.PathLike[str]) -> list[ListedFile]:
    """:func:`listed_files` with each line's row count (what a query of the file would scan,
    known before the file is opened)."""
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
        files.append(ListedFile(entry["file"], found, int(entry["rows"])))
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
    read from its temp name has them too).  A directory named as a dataset
    of :data:`schemas.datasets.DATASETS` whose files hold its rows
    (:func:`~schemas.datasets.readable_as`) gets that dataset's schema (plus
    ``date``/``hour``), so files an earlier version wrote read with nulls in
    a column added since; otherwise the schema is read from the first file.

    Raises:
        FileNotFoundError: ``path`` is not a directory.
        ArchiveError: as :func:`listed_files`.
    """
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"no archive dataset directory at {directory}")
    files = listed_files(directory)
    name = directory.name
    if files:
        data_schema = ds.dataset(os.fspath(files[0][1]), format="ipc").schema
        if name in DATASETS and readable_as(data_schema, name):
            # This version's schema: files of an earlier version (a column added since, a column now
            # nullable) read with nulls in its place, whichever file comes first.
            data_schema = DATASETS[name]
    elif name in DATASETS:
        data_schema = DATASETS[name]
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
