"""Reading phase files: CSV, Parquet, Arrow IPC (file or stream) and JSON lines.

Every format is read with pyarrow's own readers, batch by batch
(:func:`phase_record_batches`), and each batch becomes a
:class:`~connectors.phase_files.columns.PhaseColumns` chunk
(:func:`phase_columns`, through :mod:`connectors.phase_files.conversion`).
:func:`check_phase_file` looks at a file's header or schema only.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa

from connectors.phase_files.columns import (
    PHASE_COLUMNS,
    PHASE_TYPE,
    RAW_COLUMN,
    REQUIRED_COLUMNS,
    PhaseColumns,
    PhaseFileError,
)
from connectors.phase_files.conversion import object_times, to_columns
from schemas.config import FILE_FORMATS, FILE_SUFFIXES

__all__ = [
    "check_phase_file",
    "count_file_rows",
    "file_format",
    "phase_columns",
    "phase_record_batches",
    "read_phase_file",
]


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
    return to_columns(batch, os.fspath(path), first_row, naive_is_utc=format in ("parquet", "arrow"))


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
    """The input columns present (``value`` in place of ``phase`` in a file of raw samples); raises for a
    missing required one, or for both ``phase`` and ``value``."""
    raw = RAW_COLUMN in names
    if raw and "phase" in names:
        raise PhaseFileError(path, "columns 'phase' and 'value' both given: a file holds phase samples or raw "
                                   "values, not both", column=RAW_COLUMN)
    wanted = [RAW_COLUMN if c == "phase" and raw else c for c in PHASE_COLUMNS]
    missing = [c for c in REQUIRED_COLUMNS if c not in names and not (c == "phase" and raw)]
    if missing:
        found = ", ".join(names) if names else "none"
        raise PhaseFileError(
            path,
            f"missing column {missing[0]!r} (found: {found}); "
            "the columns are sensor, t, phase (or value, for raw samples) and optional cell",
            column=missing[0],
        )
    return [c for c in wanted if c in names]


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
        for col in columns[1:3]:   # t, and phase or value
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
    field = None       # "phase", or "value" in a file of raw samples: one for the whole file
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
            field = field or (RAW_COLUMN if RAW_COLUMN in obj else "phase")
            missing = [c if c != "phase" else field for c in REQUIRED_COLUMNS if (c if c != "phase" else field) not in obj]
            if missing:
                raise PhaseFileError(path, f"line {line_no}: missing field {missing[0]!r}", column=missing[0])
            value = obj[field]
            if isinstance(value, list):
                ok = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value)
            else:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
                value = [value]
            if not ok:
                raise PhaseFileError(
                    path, f"line {line_no}: field {field!r} must be a number or a list of numbers", column=field
                )
            sensor.append(obj["sensor"])
            t.append(obj["t"])
            phase.append([float(x) for x in value])
            cell.append(obj.get("cell"))
    for name, values in (("sensor", sensor), ("cell", cell)):
        bad = next((i for i, v in enumerate(values) if v is not None and not isinstance(v, str)), None)
        if bad is not None:
            raise PhaseFileError(path, f"field {name!r} must be text (row {bad + 1})", column=name)
    t_us = object_times(path, t, first_row=0)
    columns = {
        "sensor": pa.array(sensor, pa.string()),
        "t": pa.array(t_us, pa.timestamp("us", tz="UTC")),
        field or "phase": pa.array(phase, PHASE_TYPE),
    }
    if "cell" in seen:
        columns["cell"] = pa.array(cell, pa.string())
    return pa.table(columns)
