"""Phase samples from files: CSV, Parquet, Arrow IPC (file or stream) and JSON lines.

Every format is read with pyarrow's own readers and turned into
:class:`PhaseColumns` chunks: whole columns, never per-row Python objects
(except for the few cases pyarrow cannot type, noted where they happen).

Columns (JSON lines: fields)

``sensor``
    sensor id; text (integers are accepted and read as text).
``t``
    event time: epoch seconds (float or int), ISO-8601 text with a zone
    (``2025-01-01T00:00:00.125Z``, ``...+02:00``), or an Arrow timestamp with
    or without a zone (Parquet/Arrow: read as UTC, like the Kafka decoder).
    Times become exact int64 microseconds (SPEC section 2).  ISO text
    without a zone (CSV, JSON lines) is refused rather than guessed.
``phase``
    radians: a number (one channel) or a list of numbers.  In CSV a list is
    written as text, ``"[1.23, -0.4]"`` (brackets optional, ``,`` or ``;``
    between values).
``cell``
    optional cell label; empty or missing means none.

Any other columns are ignored.  A problem with the file (missing file,
missing column, a column of the wrong type, a null where a value is needed)
raises :class:`PhaseFileError`, which names the file and the column.

>>> from connectors.files import read_phase_file
>>> for chunk in read_phase_file("samples.csv"):          # doctest: +SKIP
...     print(chunk.sensor[0], chunk.t_us[:3], chunk.channels())
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.config import FILE_FORMATS, FILE_SUFFIXES
from schemas.timebase import seconds_to_micros, to_micros

__all__ = [
    "FILE_FORMATS",
    "PHASE_COLUMNS",
    "PhaseColumns",
    "PhaseFileError",
    "check_phase_file",
    "count_file_rows",
    "file_format",
    "phase_columns",
    "phase_record_batches",
    "read_phase_file",
]

#: Required columns, then the optional one.
PHASE_COLUMNS: tuple[str, ...] = ("sensor", "t", "phase", "cell")
_REQUIRED = ("sensor", "t", "phase")
_PHASE_TYPE = pa.list_(pa.float64())


class PhaseFileError(ValueError):
    """A file that cannot be read as phase samples.

    Attributes:
        path: the file.
        column: the column at fault, or None when the problem is the file itself.
    """

    def __init__(self, path: str | os.PathLike[str], problem: str, column: str | None = None) -> None:
        self.path = os.fspath(path)
        self.column = column
        super().__init__(f"{self.path}: {problem}")


@dataclass(frozen=True)
class PhaseColumns:
    """A chunk of phase samples as columns, in the order they were read.

    Attributes:
        sensor: utf8 array, no nulls.
        t_us: int64 event times, microseconds since the Unix epoch.
        phase: ``list<float64>`` array, radians, one list per sample (no nulls).
        cell: utf8 array; null where a sample has no cell.
        origin: where the rows came from (file path, ``synthetic``), for messages.
        first_row: index of the first row within ``origin`` (0-based).
    """

    sensor: pa.Array
    t_us: np.ndarray
    phase: pa.Array
    cell: pa.Array
    origin: str = ""
    first_row: int = 0

    def __post_init__(self) -> None:
        n = len(self.t_us)
        if not (len(self.sensor) == len(self.phase) == len(self.cell) == n):
            raise ValueError(
                f"columns differ in length: sensor {len(self.sensor)}, t_us {n}, "
                f"phase {len(self.phase)}, cell {len(self.cell)}"
            )

    def __len__(self) -> int:
        return int(len(self.t_us))

    @classmethod
    def from_numpy(
        cls,
        sensor: str,
        t_us: np.ndarray,
        phase: np.ndarray,
        cell: str | None = None,
        *,
        origin: str = "",
        first_row: int = 0,
    ) -> PhaseColumns:
        """One sensor's samples from arrays: ``t_us`` shape (n,), ``phase`` shape (n,) or (n, C).

        >>> cols = PhaseColumns.from_numpy("pmu-7", np.array([1, 2]), np.zeros((2, 3)))
        >>> len(cols), cols.channels().tolist()
        (2, [3, 3])
        """
        t = np.ascontiguousarray(t_us, dtype=np.int64)
        values = np.asarray(phase, dtype=np.float64)
        if values.ndim == 1:
            values = values[:, None]
        if values.ndim != 2 or values.shape[0] != t.shape[0]:
            raise ValueError(f"phase must have shape (n,) or (n, C) with n = {t.shape[0]}, got {values.shape}")
        n, channels = values.shape
        lists = pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), channels).cast(_PHASE_TYPE)
        return cls(
            sensor=pa.repeat(pa.scalar(sensor, pa.string()), n),
            t_us=t,
            phase=lists,
            cell=pa.repeat(pa.scalar(cell, pa.string()), n),
            origin=origin,
            first_row=first_row,
        )

    def slice(self, offset: int, length: int | None = None) -> PhaseColumns:
        """Rows ``offset`` to ``offset + length`` (zero-copy for the Arrow columns)."""
        end = len(self) if length is None else min(len(self), offset + length)
        return PhaseColumns(
            self.sensor.slice(offset, end - offset),
            self.t_us[offset:end],
            self.phase.slice(offset, end - offset),
            self.cell.slice(offset, end - offset),
            self.origin,
            self.first_row + offset,
        )

    def take(self, rows: np.ndarray) -> PhaseColumns:
        """The rows at the indices ``rows``, in that order (origin and first row kept)."""
        indices = pa.array(rows, pa.int64())
        return PhaseColumns(self.sensor.take(indices), self.t_us[rows], self.phase.take(indices),
                            self.cell.take(indices), self.origin, self.first_row)

    @staticmethod
    def concat(chunks: Sequence[PhaseColumns]) -> PhaseColumns:
        """The rows of several chunks, in order (origin and first row of the first)."""
        if not chunks:
            raise ValueError("concat needs at least one chunk")
        if len(chunks) == 1:
            return chunks[0]
        return PhaseColumns(
            pa.concat_arrays([c.sensor for c in chunks]),
            np.concatenate([c.t_us for c in chunks]),
            pa.concat_arrays([c.phase for c in chunks]),
            pa.concat_arrays([c.cell for c in chunks]),
            chunks[0].origin,
            chunks[0].first_row,
        )

    def channels(self) -> np.ndarray:
        """Number of phase channels of each row (int32 array)."""
        return pc.list_value_length(self.phase).to_numpy(zero_copy_only=False)

    def sensors(self) -> list[str]:
        """The distinct sensor ids, in order of first appearance."""
        return list(dict.fromkeys(pc.unique(self.sensor).to_pylist()))

    def check_values(self) -> None:
        """Refuse rows no consumer could use: an empty phase list, a NaN or infinite phase.

        The readers only check structure; this is for producers, which should
        not publish such rows (JSON cannot even carry NaN).

        Raises:
            PhaseFileError: naming :attr:`origin`, the column and the row (counting from 1).
        """
        lengths = self.channels()
        empty = np.flatnonzero(lengths == 0)
        values = pc.list_flatten(self.phase).to_numpy(zero_copy_only=False)
        bad_values = np.flatnonzero(~np.isfinite(values))
        bad_rows = []
        if empty.size:
            bad_rows.append((int(empty[0]), "has no phase values (an empty list)"))
        if bad_values.size:
            # The flat index back to its row: the row whose offsets span it.
            offsets = self.phase.offsets.to_numpy(zero_copy_only=False) - self.phase.offsets[0].as_py()
            row = int(np.searchsorted(offsets, bad_values[0], side="right") - 1)
            bad_rows.append((row, f"has a phase that is {float(values[bad_values[0]])!r}"))
        if bad_rows:
            row, why = min(bad_rows)
            raise PhaseFileError(self.origin, f"row {self.first_row + row + 1} {why}", column="phase")


# --------------------------------------------------------------------------
# Formats.


def file_format(path: str | os.PathLike[str], format: str | None = None) -> str:
    """The format of ``path``: ``format`` if given, else from the suffix.

    Raises:
        PhaseFileError: unknown format, or a suffix that names none.
    """
    if format is not None:
        if format not in FILE_FORMATS:
            raise PhaseFileError(path, f"unknown format {format!r}; one of {', '.join(FILE_FORMATS)}")
        return format
    guessed = FILE_SUFFIXES.get(Path(path).suffix.lower())
    if guessed is None:
        raise PhaseFileError(
            path, f"cannot tell the format from the suffix; name it ({', '.join(FILE_FORMATS)})"
        )
    return guessed


def read_phase_file(
    path: str | os.PathLike[str],
    format: str | None = None,
    *,
    chunk_rows: int = 65_536,
) -> Iterator[PhaseColumns]:
    """Yield the samples of a file as :class:`PhaseColumns` chunks of at most ``chunk_rows`` rows.

    Args:
        path: the file.
        format: ``csv``, ``parquet``, ``arrow`` (IPC file or stream) or
            ``jsonl``; None = from the suffix.
        chunk_rows: upper bound of the rows per chunk.

    Raises:
        PhaseFileError: naming the file and, where it applies, the column.
    """
    fmt = file_format(path, format)
    name = os.fspath(path)
    for part, row in phase_record_batches(name, fmt, chunk_rows=chunk_rows):
        yield phase_columns(part, name, row, fmt)


def phase_record_batches(
    path: str | os.PathLike[str],
    format: str | None = None,
    *,
    chunk_rows: int = 65_536,
    fill: bool = False,
) -> Iterator[tuple[pa.RecordBatch, int]]:
    """The file's rows as raw record batches (phase columns only, types as read), with
    the index of each batch's first row; :func:`phase_columns` validates one.

    Lets a reader that must not stop at a bad row (the dataflow's file
    source) validate chunk by chunk and fall back to single rows where a
    chunk fails.

    Args:
        chunk_rows: the most rows of a batch; larger batches of the file are cut.
        fill: also join the file's smaller batches (an Arrow file written in
            small record batches, CSV blocks), so that every batch but the
            last has exactly ``chunk_rows`` rows.

    Raises:
        PhaseFileError: the file cannot be read at all (missing, not of its
            format, a required column missing).
    """
    fmt = file_format(path, format)
    name = os.fspath(path)
    if not os.path.exists(name):
        raise PhaseFileError(name, "no such file")
    if os.path.isdir(name):
        raise PhaseFileError(name, "is a directory, not a file")
    readers = {"csv": _csv_batches, "parquet": _parquet_batches, "arrow": _arrow_batches, "jsonl": _jsonl_batches}
    row = 0
    pending: list[pa.RecordBatch] = []  # fill: the parts of the next batch, fewer than chunk_rows rows
    held = 0
    for batch in readers[fmt](name, chunk_rows):
        start = 0
        while start < batch.num_rows:
            part = batch.slice(start, chunk_rows - held)
            start += part.num_rows
            if fill and held + part.num_rows < chunk_rows:
                pending.append(part)
                held += part.num_rows
                continue
            if pending:
                part = pa.concat_batches([*pending, part])
                pending, held = [], 0
            yield part, row
            row += part.num_rows
    if pending:
        yield pa.concat_batches(pending), row


def phase_columns(batch: pa.RecordBatch, path: str | os.PathLike[str], first_row: int, format: str) -> PhaseColumns:
    """One batch of :func:`phase_record_batches` as validated :class:`PhaseColumns`.

    Raises:
        PhaseFileError: naming the file, the row and the column at fault.
    """
    # A typed timestamp column in Parquet/Arrow holds epoch counts: without
    # a zone it is read as UTC, as the Kafka decoder does.  In CSV and JSON
    # lines it was zone-less text: refused.
    return _to_columns(batch, os.fspath(path), first_row, naive_is_utc=format in ("parquet", "arrow"))


def check_phase_file(path: str | os.PathLike[str], format: str | None = None) -> str:
    """Check that a file exists and names the phase columns, reading only its header or schema.

    For JSON lines the first object stands for the file.  Lets a command
    refuse a bad file before it connects anywhere or sends anything.

    Returns:
        The file's format.

    Raises:
        PhaseFileError: as :func:`read_phase_file` would for the same problem.
    """
    fmt = file_format(path, format)
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise PhaseFileError(name, "is a directory, not a file" if os.path.isdir(name) else "no such file")
    if fmt == "csv":
        with open(name, newline="", encoding="utf-8-sig") as f:
            names = next(csv.reader(f), None) or []
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            names = pq.read_schema(name).names
        except (pa.ArrowException, OSError) as exc:
            raise PhaseFileError(name, f"not a Parquet file: {exc}") from None
    elif fmt == "arrow":
        with pa.memory_map(name) as source:
            try:
                names = pa.ipc.open_file(source).schema.names
            except pa.ArrowInvalid:
                source.seek(0)
                try:
                    names = pa.ipc.open_stream(source).schema.names
                except pa.ArrowInvalid as exc:
                    raise PhaseFileError(name, f"not an Arrow IPC file or stream: {exc}") from None
    else:
        names = []
        with open(name, encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        obj = json.loads(line)
                    except ValueError as exc:
                        raise PhaseFileError(name, f"line {line_no}: not JSON ({exc})") from None
                    names = list(obj) if isinstance(obj, dict) else []
                    break
    _check_columns(name, names)
    return fmt


def count_file_rows(path: str | os.PathLike[str], format: str | None = None) -> int | None:
    """Rows in the file when the format records it (Parquet, Arrow IPC file), else None."""
    fmt = file_format(path, format)
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return int(pq.ParquetFile(os.fspath(path)).metadata.num_rows)
        if fmt == "arrow":
            with pa.memory_map(os.fspath(path)) as source:
                return int(pa.ipc.open_file(source).count_rows())
    except (OSError, pa.ArrowException):
        return None
    return None


def _check_columns(path: str, names: Sequence[str]) -> list[str]:
    """The phase columns present; raises for a missing required one."""
    missing = [c for c in _REQUIRED if c not in names]
    if missing:
        found = ", ".join(names) if names else "none"
        raise PhaseFileError(
            path,
            f"missing column {missing[0]!r} (found: {found}); "
            "the columns are sensor, t, phase and optional cell",
            column=missing[0],
        )
    return [c for c in PHASE_COLUMNS if c in names]


def _csv_batches(path: str, chunk_rows: int) -> Iterator[pa.RecordBatch]:
    import pyarrow.csv as pcsv

    with open(path, newline="", encoding="utf-8-sig") as f:
        header = next(csv.reader(f), None)
    columns = _check_columns(path, header or [])
    types = {"sensor": pa.string(), "cell": pa.string()}
    read = pcsv.ReadOptions(block_size=1 << 22)
    # Only empty cells are nulls (an empty `cell` means "no cell"): pyarrow's
    # default would also null "NA" (a fine sensor id) and "nan" (a NaN phase,
    # which must be reported as such).
    convert = dict(include_columns=columns, strings_can_be_null=True, null_values=[""])
    try:
        # pyarrow infers types from the first block only; integers there and a
        # fraction later would fail mid-file, so numbers are read as float64.
        with pcsv.open_csv(path, read_options=read, convert_options=pcsv.ConvertOptions(
                column_types=types, **convert)) as probe:
            inferred = probe.schema
        for col in ("t", "phase"):
            if pa.types.is_integer(inferred.field(col).type):
                types[col] = pa.float64()
        with pcsv.open_csv(path, read_options=read, convert_options=pcsv.ConvertOptions(
                column_types=types, **convert)) as reader:
            yield from reader
    except pa.ArrowInvalid as exc:
        raise PhaseFileError(path, f"not readable as CSV: {exc}") from None


def _parquet_batches(path: str, chunk_rows: int) -> Iterator[pa.RecordBatch]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise PhaseFileError(path, f"not a Parquet file: {exc}") from None
    columns = _check_columns(path, pf.schema_arrow.names)
    yield from pf.iter_batches(batch_size=chunk_rows, columns=columns)


def _arrow_batches(path: str, chunk_rows: int) -> Iterator[pa.RecordBatch]:
    with pa.memory_map(path) as source:
        try:
            reader: pa.ipc.RecordBatchFileReader | pa.ipc.RecordBatchStreamReader = pa.ipc.open_file(source)
            batches: Iterator[pa.RecordBatch] = (reader.get_batch(i) for i in range(reader.num_record_batches))
        except pa.ArrowInvalid:
            source.seek(0)
            try:
                reader = pa.ipc.open_stream(source)
            except pa.ArrowInvalid as exc:
                raise PhaseFileError(path, f"not an Arrow IPC file or stream: {exc}") from None
            batches = iter(reader)
        columns = _check_columns(path, reader.schema.names)
        for batch in batches:
            yield batch.select(columns)


def _jsonl_batches(path: str, chunk_rows: int) -> Iterator[pa.RecordBatch]:
    import pyarrow.json as pj

    try:
        table = pj.read_json(path, parse_options=pj.ParseOptions(newlines_in_values=False))
    except pa.ArrowInvalid as exc:
        if "changed from" not in str(exc):
            raise PhaseFileError(path, f"not readable as JSON lines: {exc}") from None
        # A field whose JSON type varies between lines (a phase that is a
        # number for one sensor and a list for another, times as numbers and
        # as text) has no single Arrow type: read those files line by line.
        table = _jsonl_by_line(path)
    columns = _check_columns(path, table.column_names)
    yield from table.select(columns).to_batches(max_chunksize=chunk_rows)


def _jsonl_by_line(path: str) -> pa.Table:
    sensor: list[object] = []
    t: list[object] = []
    phase: list[list[float]] = []
    cell: list[object] = []
    seen: set[str] = set()
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise PhaseFileError(path, f"line {line_no}: not JSON ({exc})") from None
            if not isinstance(obj, dict):
                raise PhaseFileError(path, f"line {line_no}: not a JSON object")
            seen.update(obj)
            missing = [c for c in _REQUIRED if c not in obj]
            if missing:
                raise PhaseFileError(path, f"line {line_no}: missing field {missing[0]!r}", column=missing[0])
            value = obj["phase"]
            if isinstance(value, list):
                ok = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value)
            else:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
                value = [value]
            if not ok:
                raise PhaseFileError(
                    path, f"line {line_no}: field 'phase' must be a number or a list of numbers", column="phase"
                )
            sensor.append(obj["sensor"])
            t.append(obj["t"])
            phase.append([float(x) for x in value])
            cell.append(obj.get("cell"))
    for name, values in (("sensor", sensor), ("cell", cell)):
        bad = next((i for i, v in enumerate(values) if v is not None and not isinstance(v, str)), None)
        if bad is not None:
            raise PhaseFileError(path, f"field {name!r} must be text (row {bad + 1})", column=name)
    t_us = _object_times(path, t, first_row=0)
    columns = {
        "sensor": pa.array(sensor, pa.string()),
        "t": pa.array(t_us, pa.timestamp("us", tz="UTC")),
        "phase": pa.array(phase, _PHASE_TYPE),
    }
    if "cell" in seen:
        columns["cell"] = pa.array(cell, pa.string())
    return pa.table(columns)


# --------------------------------------------------------------------------
# Columns to PhaseColumns.


def _to_columns(batch: pa.RecordBatch, path: str, first_row: int, *, naive_is_utc: bool) -> PhaseColumns:
    n = batch.num_rows
    names = batch.schema.names
    sensor = _text_column(batch.column(names.index("sensor")), path, "sensor", first_row, nullable=False)
    t_us = _time_column(batch.column(names.index("t")), path, first_row, naive_is_utc=naive_is_utc)
    phase = _phase_column(batch.column(names.index("phase")), path, first_row)
    if "cell" in names:
        cell = _text_column(batch.column(names.index("cell")), path, "cell", first_row, nullable=True)
    else:
        cell = pa.nulls(n, pa.string())
    return PhaseColumns(sensor, t_us, phase, cell, path, first_row)


def _first_null(col: pa.Array) -> int:
    return int(pc.index(pc.is_null(col), True).as_py())


def _no_nulls(col: pa.Array, path: str, name: str, first_row: int) -> None:
    if col.null_count:
        row = first_row + _first_null(col) + 1
        raise PhaseFileError(path, f"column {name!r} is empty at row {row}; every sample needs one", column=name)


def _text_column(col: pa.Array, path: str, name: str, first_row: int, *, nullable: bool) -> pa.Array:
    typ = col.type
    if pa.types.is_dictionary(typ):
        col, typ = col.dictionary_decode(), typ.value_type
    if pa.types.is_null(typ):
        col = pa.nulls(len(col), pa.string())
    elif pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_string_view(typ) \
            or pa.types.is_integer(typ):
        col = col.cast(pa.string())
    else:
        raise PhaseFileError(path, f"column {name!r} has type {typ}; expected text", column=name)
    if not nullable:
        _no_nulls(col, path, name, first_row)
    return col


def _time_column(col: pa.Array, path: str, first_row: int, *, naive_is_utc: bool) -> np.ndarray:
    typ = col.type
    _no_nulls(col, path, "t", first_row)
    try:
        if pa.types.is_timestamp(typ):
            if typ.tz is None and not naive_is_utc:
                raise PhaseFileError(
                    path,
                    f"column 't' is a timestamp without a time zone ({typ}); times must say their zone "
                    "(write them with one, e.g. '...Z', or cast the column to timestamp[us, tz=UTC])",
                    column="t",
                )
            return to_micros(col)
        if pa.types.is_integer(typ) or pa.types.is_floating(typ):
            values = col.to_numpy(zero_copy_only=False)
            bad = ~np.isfinite(values) if values.dtype.kind == "f" else np.zeros(len(values), bool)
            if bad.any():
                row = first_row + int(np.flatnonzero(bad)[0]) + 1
                raise PhaseFileError(path, f"column 't' is not a finite number at row {row}", column="t")
            return seconds_to_micros(values)
        if pa.types.is_string(typ) or pa.types.is_large_string(typ):
            try:
                # Arrow parses ISO-8601 with 'Z' or an offset in C; only text it
                # cannot parse (more than 6 decimals, epoch seconds as text) goes
                # through the Python parser.
                return to_micros(col.cast(pa.timestamp("us", tz="UTC")))
            except pa.ArrowInvalid:
                return _object_times(path, col.to_pylist(), first_row)
    except ValueError as exc:
        if isinstance(exc, PhaseFileError):
            raise
        raise PhaseFileError(path, f"column 't': {exc}", column="t") from None
    raise PhaseFileError(
        path,
        f"column 't' has type {typ}; expected epoch seconds (a number), ISO-8601 text with a zone, "
        "or a timestamp with a time zone",
        column="t",
    )


def _object_times(path: str, values: Sequence[object], first_row: int) -> np.ndarray:
    out = np.empty(len(values), dtype=np.int64)
    for i, value in enumerate(values):
        try:
            if isinstance(value, str):
                text = value.strip()
                try:
                    value = float(text)  # epoch seconds written as text
                except ValueError:
                    out[i] = int(to_micros(text))
                    continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{value!r} is neither epoch seconds nor ISO-8601 text")
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{value!r} is not a finite number")
            out[i] = int(seconds_to_micros(value))
        except (ValueError, OverflowError) as exc:
            raise PhaseFileError(path, f"column 't' at row {first_row + i + 1}: {exc}", column="t") from None
    return out


def _phase_column(col: pa.Array, path: str, first_row: int) -> pa.Array:
    typ = col.type
    _no_nulls(col, path, "phase", first_row)
    if pa.types.is_integer(typ) or pa.types.is_floating(typ):
        values = col.cast(pa.float64())
        return pa.ListArray.from_arrays(pa.array(np.arange(len(values) + 1, dtype=np.int32)), values)
    if pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_fixed_size_list(typ):
        inner = typ.value_type
        if not (pa.types.is_integer(inner) or pa.types.is_floating(inner)):
            raise PhaseFileError(path, f"column 'phase' is a list of {inner}; expected numbers", column="phase")
        lists = col.cast(_PHASE_TYPE)
        if lists.values.null_count:
            raise PhaseFileError(path, "column 'phase' has an empty value inside a list", column="phase")
        return lists
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        # "[1.23, -0.4]", "1.23;-0.4" or "1.23": split and cast as columns.
        text = pc.utf8_trim(col.cast(pa.string()), "[] \t")
        parts = pc.split_pattern_regex(text, r"\s*[,;]\s*")
        # "" (from "[]") splits to [""]: it is an empty list, not a number.
        parts = pc.if_else(pc.equal(text, ""), pa.scalar([], pa.list_(pa.string())), parts)
        lengths = pc.list_value_length(parts)
        try:
            values = pc.list_flatten(parts).cast(pa.float64())
        except pa.ArrowInvalid as exc:
            raise PhaseFileError(
                path, f"column 'phase' has text that is not a number or a list of numbers ({exc})", column="phase"
            ) from None
        offsets = np.concatenate([[0], np.cumsum(lengths.to_numpy(zero_copy_only=False))]).astype(np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), values)
    raise PhaseFileError(
        path, f"column 'phase' has type {typ}; expected a number or a list of numbers", column="phase"
    )
