"""The Arrow archive: writer, checker and Bytewax sink (SPEC section 5).

Layout under the archive root (``memory.storage.path``), one directory per
dataset of :data:`schemas.archive.DATASETS`::

    <root>/<dataset>/MANIFEST.jsonl
    <root>/<dataset>/date=YYYY-MM-DD/hour=HH/part-00000000.arrow
    <root>/<dataset>/date=YYYY-MM-DD/hour=HH/part-00000001.arrow
    ...

* Files are Arrow IPC *files* (random access format) with the dataset's
  schema, metadata included; the partition of a row is the UTC date and hour
  of its event time ``t``.  The partition columns live in the directory names
  only.  Readers take the ``.arrow`` files: a glob ``**/*.arrow`` (DuckDB,
  Polars), or ``pyarrow.dataset`` told to skip the manifest, which is not an
  Arrow file: ``ignore_prefixes=[".", "_", "MANIFEST.jsonl"]``, as
  :func:`open_dataset` does.
* ``part-{seq:08d}.arrow``: ``seq`` is the number of manifest lines before the
  file's own line, so names are unique within a dataset and sort in write order.
* ``MANIFEST.jsonl`` has one line per file, in write order, exactly::

      {"file":"date=2025-11-26/hour=00/part-00000000.arrow","rows":2,"sha256":"<hex>","prev":"<hex>"}

  ``file`` is relative to the dataset directory (``/`` separators), ``rows``
  the row count, ``sha256`` the hex SHA-256 of the file's bytes and ``prev``
  the hex SHA-256 of the previous line's text (UTF-8, without its newline;
  64 zeros on the first line).  The chain makes a changed, missing, extra or
  reordered file detectable: :func:`verify_dataset`, :func:`verify_archive`
  (``becomingone memory verify``).

Crash safety: each file is written to a hidden temp file in its partition
directory (``.part-00000003.arrow.tmp``; readers skip names starting with
``.``), flushed and fsynced; then its manifest line is appended and fsynced
(this is the commit point: the rows are in the archive); then the temp file
is renamed to its final name and the directory fsynced.  A writer opening the
dataset finishes an interrupted rename (temp file whose SHA-256 matches the
last manifest line), cuts a torn (newline-less) last manifest line and deletes
every other ``.*.tmp`` file: rows without a complete manifest line were never
committed.

Idempotency: a restart that re-runs the same input must not duplicate rows.
The writer keeps a high-water mark per row key, the largest ``t`` already
archived (read from every listed file on open, then kept up to date), and
drops incoming rows with ``t <= high-water``.  Row keys (:data:`ROW_KEYS`):
``temporal_signatures`` by (sensor, transducer); ``events``,
``coherence_history``, ``mesh_sync`` and ``input`` by sensor;
``witnessing_logs`` is a log of observations and is never deduplicated.

>>> import tempfile
>>> import pyarrow as pa
>>> from schemas.archive import TIMESTAMP
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

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from schemas.archive import DATASETS, PARTITION_SCHEMA, partition_dir

__all__ = [
    "GENESIS",
    "MANIFEST",
    "READER_IGNORE_PREFIXES",
    "ROW_KEYS",
    "ArchiveError",
    "ArchiveSink",
    "ArchiveWriter",
    "last_witness_record",
    "open_dataset",
    "verify_archive",
    "verify_dataset",
]

#: Name of the manifest file in every dataset directory.
MANIFEST = "MANIFEST.jsonl"
#: ``prev`` of the first manifest line.
GENESIS = "0" * 64
_MANIFEST_KEYS = ("file", "rows", "sha256", "prev")

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
_NO_ROWS = np.iinfo(np.int64).min  # high-water of a key never archived
_HEX = frozenset("0123456789abcdef")


class ArchiveError(RuntimeError):
    """The archive on disk is damaged in a way the writer will not guess around."""


# -- helpers ---------------------------------------------------------------


def _line_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


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


def _temp_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.tmp")


def _read_manifest(path: Path) -> tuple[list[str], int, bool]:
    """(complete lines without newlines, byte length of those lines, torn tail present)."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    # Undecodable bytes stay visible (as U+FFFD) so the line fails to parse.
    lines = data[:end].decode("utf-8", errors="replace").split("\n")[:-1]
    return lines, end, end < len(data)


def _parse_line(text: str) -> dict[str, Any]:
    """One manifest line as a dict, or ValueError saying what is wrong with it."""
    try:
        entry = json.loads(text)
    except ValueError:
        raise ValueError("not JSON") from None
    if not isinstance(entry, dict) or set(entry) != set(_MANIFEST_KEYS):
        raise ValueError(f"not an object with exactly the keys {', '.join(_MANIFEST_KEYS)}")
    rel, rows = entry["file"], entry["rows"]
    if not isinstance(rel, str) or not rel or rel.startswith("/") or ".." in rel.split("/"):
        raise ValueError(f"bad file {rel!r} (must be a path inside the dataset directory)")
    if not isinstance(rows, int) or isinstance(rows, bool) or rows < 0:
        raise ValueError(f"bad rows {rows!r}")
    for key in ("sha256", "prev"):
        value = entry[key]
        if not isinstance(value, str) or len(value) != 64 or not set(value) <= _HEX:
            raise ValueError(f"bad {key} {value!r} (must be 64 lowercase hex digits)")
    return entry


def _committed_file(dataset_dir: Path, entry: dict[str, Any]) -> Path | None:
    """The file holding a manifest entry's rows: its final name, or its temp file
    when a crash came between the manifest append and the rename; None if neither."""
    final = dataset_dir / entry["file"]
    if final.is_file():
        return final
    temp = _temp_path(final)
    if temp.is_file() and _sha256_file(temp) == entry["sha256"]:
        return temp
    return None


def _ipc_bytes(table: pa.Table, schema: pa.Schema) -> pa.Buffer:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def _t_micros(table: pa.Table) -> np.ndarray:
    return pc.cast(table.column("t"), pa.int64()).to_numpy()


# -- writer ----------------------------------------------------------------


class ArchiveWriter:
    """The single writer of one dataset directory ``<root>/<dataset>/``.

    Args:
        root: the archive root; the dataset directory is created if missing.
        dataset: a key of :data:`schemas.archive.DATASETS`.
        flush_rows: flush once this many rows are buffered.
        flush_seconds: flush once the oldest buffered row has waited this long
            (by ``clock``).  Checked on :meth:`write` and :meth:`flush_if_due`
            only: nothing runs in the background.
        clock: seconds, monotonic; injectable for tests.

    Opening the writer recovers the directory (module docstring: finish an
    interrupted rename, cut a torn manifest line, delete stray ``.*.tmp``
    files) and reads the high-water mark of every row key from the listed
    files.  :meth:`write` buffers rows, dropping those at or below their key's
    high-water; :meth:`flush` writes one file per hive partition, each
    committed by its manifest line (write temp + fsync, append line + fsync,
    rename + fsync the directory).

    Exactly one writer per dataset directory may be open at a time (the
    :class:`ArchiveSink` arranges that across a Bytewax cluster); a manifest
    that grows under an open writer raises :class:`ArchiveError`.

    Raises:
        ValueError: unknown dataset or bad flush limits.
        ArchiveError: a manifest line is unreadable, or a listed file is
            missing with no complete temp file (run ``becomingone memory verify``).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        dataset: str,
        *,
        flush_rows: int = 100_000,
        flush_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
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
        self.flush_rows = int(flush_rows)
        self.flush_seconds = float(flush_seconds)
        self._clock = clock
        self._keys = ROW_KEYS[dataset]
        self._manifest = self.path / MANIFEST

        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self._since: float | None = None  # clock() when the oldest buffered row arrived
        self._rows_written = 0
        self._files_written = 0
        self._closed = False

        self._seq = 0
        self._prev = GENESIS
        self._manifest_size = 0
        self._high_water: dict[tuple[str, ...], int] = {}

        self.path.mkdir(parents=True, exist_ok=True)
        entries = self._recover()
        if self._keys:
            self._read_high_water(entries)

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

    def write(self, rows: pa.Table | pa.RecordBatch) -> int:
        """Buffer rows of this dataset; flush if a limit is reached.

        ``rows`` must have exactly the dataset's columns (any order); a column
        of another type is cast when the cast is lossless (e.g. int64
        microseconds to ``TIMESTAMP``).

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
        if self._keys and table.num_rows:
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
        partition.  If a write fails, the rows not yet committed stay buffered.

        Returns:
            The committed files, relative to the dataset directory.
        """
        if not self._buffered:
            return []
        table = pa.concat_tables(self._buffer)
        hours = np.floor_divide(_t_micros(table), _HOUR_US)
        if np.any(hours[1:] < hours[:-1]):
            order = np.argsort(hours, kind="stable")  # stable: row order kept inside an hour
            hours = hours[order]
            table = table.take(pa.array(order))
        bounds = [0, *(np.flatnonzero(np.diff(hours)) + 1).tolist(), table.num_rows]

        since = self._since
        self._buffer, self._buffered, self._since = [], 0, None
        written: list[str] = []
        for start, end in zip(bounds[:-1], bounds[1:]):
            seq_before = self._seq
            try:
                part = partition_dir(int(hours[start]) * _HOUR_US)
                written.append(self._write_file(part, table.slice(start, end - start)))
            except BaseException:
                # Rows whose manifest line was appended are committed; keep the rest.
                rest = table.slice(end if self._seq > seq_before else start)
                if rest.num_rows:
                    self._buffer, self._buffered, self._since = [rest], rest.num_rows, since
                raise
        return written

    def close(self) -> None:
        """Flush and refuse further writes; calling it again does nothing."""
        if not self._closed:
            self.flush()
            self._closed = True

    def __enter__(self) -> "ArchiveWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -----------------------------------------------------

    def _damaged(self, what: str) -> ArchiveError:
        return ArchiveError(
            f"archive dataset {self.path} is damaged: {what}; run `becomingone memory verify`"
        )

    def _recover(self) -> list[dict[str, Any]]:
        """Bring the directory to a committed state; return the manifest entries."""
        entries: list[dict[str, Any]] = []
        if self._manifest.exists():
            lines, size, torn = _read_manifest(self._manifest)
            if torn:
                # The append was cut short, so that file was never committed:
                # drop the fragment; its temp file goes with the strays below.
                with open(self._manifest, "r+b") as f:
                    f.truncate(size)
                    f.flush()
                    os.fsync(f.fileno())
            for i, text in enumerate(lines, 1):
                try:
                    entries.append(_parse_line(text))
                except ValueError as exc:
                    raise self._damaged(f"{MANIFEST} line {i}: {exc}") from None
            for entry in entries:
                final = self.path / entry["file"]
                found = _committed_file(self.path, entry)
                if found is None:
                    raise self._damaged(f"{entry['file']} is listed in {MANIFEST} but missing")
                if found != final:
                    # Crash between the manifest append and the rename: finish it.
                    os.replace(found, final)
                    _fsync_dir(final.parent)
            self._seq = len(lines)
            self._prev = _line_hash(lines[-1]) if lines else GENESIS
            self._manifest_size = size
        for stray in self.path.rglob(".*.tmp"):
            if stray.is_file():
                stray.unlink()
        return entries

    def _read_high_water(self, entries: list[dict[str, Any]]) -> None:
        keys = list(self._keys)
        per_file: list[pa.Table] = []
        for entry in entries:
            # Memory-mapped: only the pages of the key and time columns are read.
            with pa.memory_map(str(self.path / entry["file"])) as source:
                table = pa.ipc.open_file(source).read_all().select([*keys, "t"])
                if table.num_rows:
                    table = table.set_column(len(keys), "t", pc.cast(table.column("t"), pa.int64()))
                    per_file.append(table.group_by(keys).aggregate([("t", "max")]))
        if per_file:
            best = pa.concat_tables(per_file).group_by(keys).aggregate([("t_max", "max")])
            columns = [best.column(k).to_pylist() for k in keys]
            for *key, t in zip(*columns, best.column("t_max_max").to_pylist()):
                self._high_water[tuple(key)] = int(t)

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

    def _makedirs(self, directory: Path) -> None:
        """Create missing directories, fsyncing each parent so the new entries last."""
        missing = []
        while not directory.exists():
            missing.append(directory)
            directory = directory.parent
        for d in reversed(missing):
            d.mkdir(exist_ok=True)
            _fsync_dir(d.parent)

    def _write_file(self, part_dir: str, rows: pa.Table) -> str:
        """Commit one file: temp + fsync, manifest line + fsync, rename + fsync dir."""
        seq = self._seq
        rel = f"{part_dir}/part-{seq:08d}.arrow"
        final = self.path / rel
        temp = _temp_path(final)
        self._makedirs(final.parent)

        data = _ipc_bytes(rows.combine_chunks(), self.schema)
        digest = hashlib.sha256(data).hexdigest()
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

        size = self._manifest.stat().st_size if self._manifest.exists() else 0
        if size != self._manifest_size:
            temp.unlink()
            raise ArchiveError(
                f"{self._manifest} changed under this writer ({size} bytes, expected "
                f"{self._manifest_size}): only one writer per dataset may be open"
            )
        line = json.dumps(
            {"file": rel, "rows": rows.num_rows, "sha256": digest, "prev": self._prev},
            separators=(",", ":"),
        )
        encoded = (line + "\n").encode("utf-8")
        with open(self._manifest, "ab") as f:
            f.write(encoded)
            f.flush()
            os.fsync(f.fileno())
        if size == 0:
            _fsync_dir(self.path)  # the manifest itself may be new
        # Committed: from here on a crash is finished by the next writer's recovery.
        self._seq += 1
        self._prev = _line_hash(line)
        self._manifest_size = size + len(encoded)
        self._rows_written += rows.num_rows
        self._files_written += 1

        os.replace(temp, final)
        _fsync_dir(final.parent)
        return rel


# -- reading and checking ----------------------------------------------------


#: Names a reader of a dataset directory must skip: temp files, ``_``-names and the manifest.
READER_IGNORE_PREFIXES = (".", "_", MANIFEST)


def open_dataset(path: str | os.PathLike[str]) -> ds.Dataset:
    """``pyarrow.dataset`` over one dataset directory, ``date``/``hour`` as strings.

    The manifest is not an Arrow file, and pyarrow skips only names starting
    with ``.`` or ``_`` by default, so it is excluded here by name
    (:data:`READER_IGNORE_PREFIXES`).
    """
    return ds.dataset(
        os.fspath(path),
        format="ipc",
        partitioning=ds.partitioning(PARTITION_SCHEMA, flavor="hive"),
        ignore_prefixes=list(READER_IGNORE_PREFIXES),
    )


def last_witness_record(root: str | os.PathLike[str]) -> tuple[int, str] | None:
    """``(seq, log_sha256)`` of the newest archived witness record, or None if there is none.

    Witness rows are partitioned by event time, so file order is not log
    order: the newest record is the one with the largest ``seq`` over every
    file the manifest lists.  A run appending to the archive continues the
    log from there.  Rows still buffered in an open writer are not seen.

    Raises:
        ArchiveError: a listed file is missing or the manifest is unreadable.
    """
    path = Path(root) / "witnessing_logs"
    manifest = path / MANIFEST
    if not manifest.exists():
        return None
    lines, _, _ = _read_manifest(manifest)  # a torn tail was never committed
    best: tuple[int, str] | None = None
    for text in lines:
        try:
            entry = _parse_line(text)
        except ValueError as exc:
            raise ArchiveError(f"{manifest}: {exc}; run `becomingone memory verify`") from None
        found = _committed_file(path, entry)
        if found is None:
            raise ArchiveError(
                f"{path / entry['file']} is listed in {MANIFEST} but missing; run `becomingone memory verify`"
            )
        with pa.memory_map(str(found)) as source:
            table = pa.ipc.open_file(source).read_all().select(["seq", "log_sha256"])
        if table.num_rows:
            seq = table["seq"].to_numpy()
            i = int(np.argmax(seq))
            if best is None or int(seq[i]) > best[0]:
                best = (int(seq[i]), table["log_sha256"][i].as_py())
    return best


def _check_file(dataset_dir: Path, entry: dict[str, Any]) -> list[str]:
    rel = entry["file"]
    path = dataset_dir / rel
    if not path.is_file():
        found = _committed_file(dataset_dir, entry)
        if found is not None:
            return [f"{rel}: missing (its complete temp file exists; opening a writer on the dataset finishes it)"]
        return [f"{rel}: missing"]
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


def verify_dataset(path: str | os.PathLike[str]) -> list[str]:
    """Check one dataset directory against its manifest; return the problems.

    An empty list means intact.  Each problem starts with the relative file it
    concerns (or ``MANIFEST.jsonl``): a line that is not a manifest entry, a
    broken ``prev`` chain (lines reordered, edited, inserted or removed),
    a file listed twice, a missing file, a changed file (SHA-256 or row count
    differs, or unreadable) and an ``.arrow`` file not in the manifest (extra).
    Hidden names (``.``/``_``), which readers skip, are not checked.
    """
    path = Path(path)
    manifest = path / MANIFEST
    problems: list[str] = []
    listed: set[str] = set()
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
            if rel in listed:
                problems.append(f"{rel}: listed twice in {MANIFEST} (again on line {i})")
                continue
            listed.add(rel)
            problems.extend(_check_file(path, entry))
        if torn:
            problems.append(
                f"{MANIFEST}: line {len(lines) + 1} is incomplete (an interrupted append; "
                "opening a writer on the dataset removes it)"
            )
    extras = []
    for file in sorted(path.rglob("*.arrow")):
        rel_path = file.relative_to(path)
        if any(part[:1] in (".", "_") for part in rel_path.parts) or not file.is_file():
            continue
        if rel_path.as_posix() not in listed:
            extras.append(f"{rel_path.as_posix()}: extra (not in {MANIFEST})")
    if extras and not manifest.exists():
        problems.append(f"{MANIFEST}: missing")
    return problems + extras


def verify_archive(root: str | os.PathLike[str]) -> dict[str, list[str]]:
    """:func:`verify_dataset` over every dataset directory present under ``root``.

    A dataset directory is a subdirectory named as a dataset of
    :data:`schemas.archive.DATASETS` or holding a ``MANIFEST.jsonl``.

    Raises:
        FileNotFoundError: ``root`` is not a directory.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no archive directory at {root}")
    return {
        d.name: verify_dataset(d)
        for d in sorted(root.iterdir())
        if d.is_dir() and (d.name in DATASETS or (d / MANIFEST).exists())
    }


# -- Bytewax sink ------------------------------------------------------------


class _ArchivePartition(StatefulSinkPartition[pa.Table, None]):
    """One dataset's writer inside the sink."""

    def __init__(self, writer: ArchiveWriter) -> None:
        self.writer = writer

    def write_batch(self, values: list[pa.Table]) -> None:
        tables = [v if isinstance(v, pa.Table) else pa.Table.from_batches([v]) for v in values]
        if not tables:
            return
        if all(t.schema.equals(tables[0].schema) for t in tables[1:]):
            self.writer.write(pa.concat_tables(tables))
        else:  # differently typed but castable inputs: conform one by one
            for table in tables:
                self.writer.write(table)

    def snapshot(self) -> None:
        # Bytewax snapshots (recovery on) at the end of an epoch it will not
        # replay: buffered rows go to disk now, or a crash after the epoch
        # would lose them.  The archive itself is the state: a resumed writer
        # re-reads its high-water marks from disk.
        self.writer.flush()
        return None

    def close(self) -> None:
        self.writer.close()


class ArchiveSink(FixedPartitionedSink[pa.Table, None]):
    """Bytewax sink writing ``(dataset_name, pa.Table)`` items into the archive.

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
            :data:`schemas.archive.DATASETS`); items for any other dataset
            are refused by :meth:`part_fn`.
        flush_rows, flush_seconds: passed to each :class:`ArchiveWriter`.

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
                self.root, for_part, flush_rows=self.flush_rows, flush_seconds=self.flush_seconds
            )
            part = _ArchivePartition(writer)
            self._open[for_part] = part
            return part
