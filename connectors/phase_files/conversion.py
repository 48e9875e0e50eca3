"""Typed columns of a file to validated :class:`~connectors.phase_files.columns.PhaseColumns`.

Each column is checked and converted as a whole (Arrow compute and NumPy);
a problem raises :class:`~connectors.phase_files.columns.PhaseFileError`
naming the file, the row (counting from 1) and the column.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from connectors.phase_files.columns import PHASE_TYPE, RAW_COLUMN, PhaseColumns, PhaseFileError
from schemas.timebase import seconds_to_micros, to_micros

__all__ = ["object_times", "to_columns"]


def to_columns(batch: pa.RecordBatch, path: str, first_row: int, *, naive_is_utc: bool) -> PhaseColumns:
    """The phase columns of ``batch`` as validated :class:`PhaseColumns`; ``naive_is_utc``: a
    timestamp column without a zone is read as UTC instead of refused."""
    n = batch.num_rows
    names = batch.schema.names
    sensor = _text_column(batch.column(names.index("sensor")), path, "sensor", first_row, nullable=False)
    t_us = _time_column(batch.column(names.index("t")), path, first_row, naive_is_utc=naive_is_utc)
    field = RAW_COLUMN if RAW_COLUMN in names else "phase"
    phase = _phase_column(batch.column(names.index(field)), path, first_row, field)
    if "cell" in names:
        cell = _text_column(batch.column(names.index("cell")), path, "cell", first_row, nullable=True)
    else:
        cell = pa.nulls(n, pa.string())
    return PhaseColumns(sensor, t_us, phase, cell, path, first_row, raw=field == RAW_COLUMN)


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
                return object_times(path, col.to_pylist(), first_row)
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


def object_times(path: str, values: Sequence[object], first_row: int) -> np.ndarray:
    """Times one by one (epoch seconds as numbers or text, ISO-8601 text with a zone) as
    int64 microseconds; for what Arrow's own casts cannot read."""
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


def _phase_column(col: pa.Array, path: str, first_row: int, name: str = "phase") -> pa.Array:
    """The phase (or raw ``value``) column ``name`` as lists of float64."""
    typ = col.type
    _no_nulls(col, path, name, first_row)
    if pa.types.is_integer(typ) or pa.types.is_floating(typ):
        values = col.cast(pa.float64())
        return pa.ListArray.from_arrays(pa.array(np.arange(len(values) + 1, dtype=np.int32)), values)
    if pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_fixed_size_list(typ):
        inner = typ.value_type
        if not (pa.types.is_integer(inner) or pa.types.is_floating(inner)):
            raise PhaseFileError(path, f"column {name!r} is a list of {inner}; expected numbers", column=name)
        lists = col.cast(PHASE_TYPE)
        if lists.values.null_count:
            raise PhaseFileError(path, f"column {name!r} has an empty value inside a list", column=name)
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
                path, f"column {name!r} has text that is not a number or a list of numbers ({exc})", column=name
            ) from None
        offsets = np.concatenate([[0], np.cumsum(lengths.to_numpy(zero_copy_only=False))]).astype(np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), values)
    raise PhaseFileError(
        path, f"column {name!r} has type {typ}; expected a number or a list of numbers", column=name
    )
