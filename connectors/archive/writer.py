"""The single writer of one archive dataset (SPEC section 5).

:class:`ArchiveWriter` buffers rows, drops those already archived
(:mod:`connectors.archive.high_water`) and commits one file per hour
partition, each by its manifest line (:mod:`connectors.archive.layout`),
after recovering the dataset (:mod:`connectors.archive.recovery`).
``witnessing_logs`` is committed in seq order (one file per run of rows of
one hour), so a crash leaves seq 0..k without a gap;
:func:`connectors.archive.verify.verify_dataset` also checks the log's own
chain there (:mod:`connectors.archive.witness_chain`).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from connectors.archive.high_water import ROW_KEYS, _HighWaterMarks, _largest_seq, _t_micros
from connectors.archive.layout import (
    LOCK,
    ArchiveError,
    _DatasetLock,
    _fsync_dir,
    _Layout,
    _makedirs,
    _next_part_number,
    _place,
    _unlisted_error,
    meta_dir,
)
from connectors.archive.manifest_lines import GENESIS, signature_ok
from connectors.archive.manifest_lines import line_hash as _line_hash
from connectors.archive.manifest_lines import manifest_line as _manifest_line
from connectors.archive.recovery import _recover_dataset
from connectors.archive.retired import retire_old_schema
from schemas.datasets import DATASETS, partition_dir

__all__ = ["ArchiveWriter"]

_HOUR_US = 3_600_000_000


def _ipc_bytes(table: pa.Table, schema: pa.Schema) -> pa.Buffer:
    # Sized first (nothing is copied), then written into one buffer of that size: a
    # growing BufferOutputStream copies the file again each time it reallocates.
    size = pa.MockOutputStream()
    with pa.ipc.new_file(size, schema) as writer:
        writer.write_table(table)
    buffer = pa.allocate_buffer(size.size())
    with pa.ipc.new_file(pa.FixedSizeBufferWriter(buffer), schema) as writer:
        writer.write_table(table)
    return buffer


class ArchiveWriter(_HighWaterMarks):
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
    (:mod:`connectors.archive.recovery`: move the older layout, finish or undo an interrupted
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

        retire_old_schema(root, dataset)
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

    def _conform(self, rows: pa.Table | pa.RecordBatch) -> pa.Table:
        """Rows as a table of exactly the dataset schema (a nullable column they lack is null), or ValueError
        naming the column."""
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
                if not field.nullable:
                    raise ValueError(f"{self.dataset}: column {field.name!r} is missing")
                # A nullable column added to the schema since the caller's rows were shaped: null.
                columns.append(pa.nulls(rows.num_rows, field.type))
                continue
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
