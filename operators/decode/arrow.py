"""Arrow IPC stream messages (SPEC section 4): read and checked as whole columns, one part per message,
and one row of a message cut out again as a one-row stream for its dead letter."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from operators.arrow_bounds import decoded_size
from operators.dead_letters import DeadLetterBudget
from operators.decode.output import WholeMessageError, dead_letter
from operators.decode.parts import Part, origin
from schemas.raw_messages import RawMessage, TableValue
from schemas.messages import ARROW_STREAM_CONTENT_TYPE, DeadLetter, DeadLetterReason
from schemas.timebase import MAX_ABS_SECONDS, MAX_ABS_WHOLE_SECONDS, RANGE_TEXT, to_micros, unit_limit

__all__ = ["arrow_part", "arrow_row_bytes", "check_decoded_size", "original_row_bytes"]


# Row status codes of the Arrow path, in precedence order (lowest wins).
_OK, _SCHEMA, _NAN, _CHANNELS = 0, 1, 2, 3
_STATUS_REASON = {
    _SCHEMA: DeadLetterReason.SCHEMA,
    _NAN: DeadLetterReason.NAN,
    _CHANNELS: DeadLetterReason.CHANNELS,
}


def _read_stream(value: bytes | bytearray | memoryview | TableValue) -> pa.Table:
    """All record batches of an IPC stream as one table (buffers stay in ``value``)."""
    if isinstance(value, TableValue):
        table = value.table
        try:
            table.validate(full=True)
        except (pa.ArrowException, ValueError) as exc:
            raise WholeMessageError(DeadLetterReason.MALFORMED, f"not a valid Arrow table: {exc}") from None
        return table
    try:
        with pa.ipc.open_stream(pa.py_buffer(value)) as reader:
            table = reader.read_all()
        # Full validation (offsets in range, UTF-8) before any kernel or NumPy
        # gather touches the buffers: a corrupt producer must give a dead
        # letter, not a crash of the worker.
        table.validate(full=True)
    except (pa.ArrowException, ValueError, OSError) as exc:
        raise WholeMessageError(DeadLetterReason.MALFORMED, f"not a readable Arrow IPC stream: {exc}") from None
    return table


def _one_row_stream(table: pa.Table, row: int) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table.slice(row, 1))
    return sink.getvalue().to_pybytes()


def arrow_row_bytes(message_value: bytes | bytearray | memoryview, row: int) -> bytes:
    """Row ``row`` of an Arrow IPC stream message, as a one-row IPC stream.

    Rows are numbered across all record batches of the stream, as in
    ``SampleBatch.row``.  The result has the message's full schema (extra
    columns included), so it is what the producer would have sent for that
    row alone, and it decodes with :func:`decode_messages` like the original.

    Raises:
        ValueError: the value is not a readable IPC stream.
        IndexError: ``row`` is outside the message.
    """
    try:
        table = _read_stream(message_value)
    except WholeMessageError as exc:
        raise ValueError(exc.detail) from None
    if not 0 <= row < table.num_rows:
        raise IndexError(f"row {row} outside a message of {table.num_rows} rows")
    return _one_row_stream(table, row)


def original_row_bytes(message: RawMessage, row: int) -> bytes:
    """The original bytes of one row of a decoded message, for its dead letter:
    the value itself for JSON, the one-row IPC stream for Arrow."""
    if message.content_type == ARROW_STREAM_CONTENT_TYPE:
        if isinstance(message.value, TableValue):
            return _one_row_stream(message.value.table, row)
        return arrow_row_bytes(message.value or b"", row)
    if row != 0:
        raise IndexError(f"a JSON message has one row, not row {row}")
    return bytes(message.value or b"")


def _is_text(typ: pa.DataType) -> bool:
    return pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_string_view(typ)


def _is_text_column(typ: pa.DataType) -> bool:
    return _is_text(typ) or (pa.types.is_dictionary(typ) and _is_text(typ.value_type))


def _is_number(typ: pa.DataType) -> bool:
    # float16 has no NumPy-compatible cast in older pyarrow and carries ~3
    # digits: a producer sending it is sending the wrong thing.
    return pa.types.is_integer(typ) or pa.types.is_float32(typ) or pa.types.is_float64(typ)


def _is_fixed_list(typ: pa.DataType) -> bool:
    return pa.types.is_fixed_size_list(typ)


def _is_var_list(typ: pa.DataType) -> bool:
    return pa.types.is_list(typ) or pa.types.is_large_list(typ)


def _check_schema(schema: pa.Schema) -> str:
    """Whole-message ``schema`` errors: missing, duplicated or mistyped columns.  Returns the column that
    holds the samples: ``phase``, or ``value`` for raw samples (SPEC section 9)."""
    for name in ("sensor", "t", "phase", "value", "cell"):
        count = schema.get_all_field_indices(name)
        if len(count) > 1:
            raise WholeMessageError(DeadLetterReason.SCHEMA, f"column {name!r} appears {len(count)} times")
    names = set(schema.names)
    if {"phase", "value"} <= names:
        raise WholeMessageError(DeadLetterReason.SCHEMA, "columns 'phase' and 'value' both given: a message holds "
                                                         "phase samples or raw values, not both")
    field = "value" if "value" in names else "phase"
    for name in ("sensor", "t", field):
        if name not in names:
            hint = " (or 'value' for raw samples)" if name == "phase" else ""
            raise WholeMessageError(DeadLetterReason.SCHEMA, f"missing column {name!r}{hint}")
    sensor = schema.field("sensor").type
    if not _is_text_column(sensor):
        raise WholeMessageError(DeadLetterReason.SCHEMA, f"column 'sensor' must be utf8 (or a dictionary of it), not {sensor}")
    t = schema.field("t").type
    # Not float32: near 1.7e9 s it resolves about two minutes.
    if not (pa.types.is_timestamp(t) or pa.types.is_integer(t) or pa.types.is_float64(t)):
        raise WholeMessageError(DeadLetterReason.SCHEMA, f"column 't' must be float64 seconds or a timestamp, not {t}")
    phase = schema.field(field).type
    if not (_is_number(phase) or ((_is_var_list(phase) or _is_fixed_list(phase)) and _is_number(phase.value_type))):
        raise WholeMessageError(DeadLetterReason.SCHEMA, f"column {field!r} must be float64 or a list of float64, not {phase}")
    if "cell" in schema.names:
        cell = schema.field("cell").type
        if not (_is_text_column(cell) or pa.types.is_null(cell)):
            raise WholeMessageError(DeadLetterReason.SCHEMA, f"column 'cell' must be utf8 or null, not {cell}")
    return field


def _valid(arr: pa.Array) -> np.ndarray:
    """Validity of ``arr`` as a bool array."""
    if arr.null_count == 0:
        return np.ones(len(arr), dtype=bool)
    return arr.is_valid().to_numpy(zero_copy_only=False)


def _float64(arr: pa.Array) -> np.ndarray:
    """Values as float64, zero-copy when ``arr`` already is float64 without
    nulls (null slots become NaN; callers mask them with :func:`_valid`)."""
    if not pa.types.is_float64(arr.type):
        arr = pc.cast(arr, pa.float64())
    return arr.to_numpy(zero_copy_only=False)


def _sensor_codes(column: pa.ChunkedArray) -> tuple[pa.StringArray, np.ndarray]:
    """Group ids of the sensor column: (names, int32 code per row into names).

    Code -1: null sensor, -2: empty string.  The column is dictionary encoded
    in Arrow (record batches of one stream may carry different dictionaries:
    they are unified first), so no name becomes a Python object here.
    """
    chunks = [c.cast(pa.string()) if pa.types.is_string_view(c.type) else c for c in column.chunks]
    if not chunks:
        return pa.array([], pa.string()), np.zeros(0, np.int32)
    if all(pa.types.is_dictionary(c.type) for c in chunks):
        enc = pa.chunked_array(chunks).unify_dictionaries()
        dictionary = enc.chunk(0).dictionary
        indices = pa.chunked_array([c.indices for c in enc.chunks]).combine_chunks()
    else:
        enc = pc.dictionary_encode(pa.chunked_array(
            [c.dictionary_decode() if pa.types.is_dictionary(c.type) else c for c in chunks]).combine_chunks())
        dictionary, indices = enc.dictionary, enc.indices
    dictionary = dictionary.cast(pa.string())
    lookup = np.arange(len(dictionary) + 1, dtype=np.int32)
    empty = pc.binary_length(dictionary).fill_null(1).to_numpy(zero_copy_only=False) == 0
    lookup[:-1][empty] = -2
    lookup[:-1][~_valid(dictionary)] = -1
    lookup[-1] = -1  # slot for null indices
    raw = indices.to_numpy(zero_copy_only=False) if not indices.null_count else \
        np.where(_valid(indices), indices.fill_null(0).to_numpy(zero_copy_only=False), len(lookup) - 1)
    # A null in the dictionary is a name no accepted row has (its rows are dead): "" keeps the array null-free.
    return dictionary.fill_null(""), lookup[raw]


def _strings(column: pa.ChunkedArray) -> pa.StringArray:
    """A text column (utf8, large, view or dictionary) as one utf8 array."""
    chunks = [c.dictionary_decode() if pa.types.is_dictionary(c.type) else c for c in column.chunks]
    return pa.chunked_array([c.cast(pa.string()) for c in chunks], pa.string()).combine_chunks()


def _times(arr: pa.Array, status: np.ndarray, why: dict[int, str]) -> np.ndarray:
    """int64 microseconds of the t column; rows with a bad time get a status."""
    valid = _valid(arr)
    typ = arr.type
    if pa.types.is_timestamp(typ):
        # Time zone or not, the stored values are UTC epoch counts.
        # The same 64-bit values reinterpreted (a view, not a compute cast).
        raw = (arr.fill_null(0) if arr.null_count else arr).view(pa.int64()).to_numpy(zero_copy_only=False)
        limit = unit_limit(typ.unit)
        out_of_range = valid & ((raw > limit) | (raw < -limit))
        ok = valid & ~out_of_range
        clean = np.where(ok, raw, 0) if not ok.all() else raw
        # Microseconds already (the usual unit): nothing to convert.
        t_us = clean if typ.unit == "us" else to_micros(clean.view(f"datetime64[{typ.unit}]"))
        nonfinite = np.zeros(len(raw), dtype=bool)
    elif pa.types.is_integer(typ):
        raw = (arr.fill_null(0) if arr.null_count else arr).to_numpy(zero_copy_only=False)
        out_of_range = valid & ((raw > MAX_ABS_WHOLE_SECONDS) | (raw < -MAX_ABS_WHOLE_SECONDS))
        ok = valid & ~out_of_range
        t_us = to_micros(np.where(ok, raw, 0).astype(np.int64))
        nonfinite = np.zeros(len(raw), dtype=bool)
    else:
        raw = _float64(arr)
        nonfinite = valid & ~np.isfinite(raw)
        out_of_range = valid & ~nonfinite & (np.abs(raw) > MAX_ABS_SECONDS)
        ok = valid & ~nonfinite & ~out_of_range
        t_us = to_micros(np.where(ok, raw, 0.0) if not ok.all() else raw)
    _mark(status, why, ~valid, _SCHEMA, "t is null")
    _mark(status, why, out_of_range, _SCHEMA, f"t is out of range: {RANGE_TEXT}")
    _mark(status, why, nonfinite, _NAN, "t is NaN or infinite")
    return np.asarray(t_us, dtype=np.int64)


def _phases(
    arr: pa.Array, status: np.ndarray, why: dict[int, str], name: str = "phase"
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray]:
    """Storage of the phase (or raw ``value``) column ``name``: (flat values, row starts or None,
    dense (n, C) view or None, channel count per row); bad rows get a status."""
    n = len(arr)
    valid = _valid(arr)
    _mark(status, why, ~valid, _SCHEMA, f"{name} is null")
    typ = arr.type
    if _is_number(typ):
        values = _float64(arr)
        _mark(status, why, valid & ~np.isfinite(values), _NAN, f"{name} holds NaN or infinity")
        dense = values.reshape(n, 1)
        return values, None, dense, np.ones(n, np.int64)
    if _is_fixed_list(typ):
        width = typ.list_size
        child = arr.values.slice(arr.offset * width, n * width)  # .values ignores the slice offset
        values = _float64(child).reshape(n, width)
        if child.null_count:
            elem_null = ~_valid(child).reshape(n, width)
            _mark(status, why, valid & elem_null.any(axis=1), _SCHEMA, f"{name} list holds null")
        nonfinite = ~np.isfinite(values)
        if nonfinite.any():  # a row-wise reduction only when some element is bad
            _mark(status, why, valid & nonfinite.any(axis=1), _NAN, f"{name} holds NaN or infinity")
        if width == 0:
            _mark(status, why, valid, _CHANNELS, f"{name} is an empty list")
        return values.reshape(-1), None, values, np.full(n, width, np.int64)
    # list / large_list: the offsets index into the child values.
    offsets = arr.offsets.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    start, length = offsets[:-1], np.diff(offsets)
    child = arr.values
    values = _float64(child)
    lo, hi = int(offsets[0]), int(offsets[-1])
    # Per-row "any bad element" through prefix sums: no per-row loop, and
    # empty rows need no special case (unlike np.add.reduceat).
    for bad, code, text in (
        (~_valid(child.slice(lo, hi - lo)), _SCHEMA, f"{name} list holds null"),
        (~np.isfinite(values[lo:hi]), _NAN, f"{name} holds NaN or infinity"),
    ):
        if not bad.any():
            continue
        csum = np.zeros(hi - lo + 1, np.int64)
        np.cumsum(bad, out=csum[1:])
        _mark(status, why, valid & (csum[offsets[1:] - lo] > csum[offsets[:-1] - lo]), code, text)
    _mark(status, why, valid & (length == 0), _CHANNELS, f"{name} is an empty list")
    if n and (length == length[0]).all() and hi - lo == n * int(length[0]):
        # Every row has the same width and rows are packed: a dense view.
        width = int(length[0])
        dense = values[lo:hi].reshape(n, width)
        return values, start, dense, length
    return values, start, None, length


def _mark(status: np.ndarray, why: dict[int, str], mask: np.ndarray, code: int, text: str) -> None:
    """Give ``code`` to rows in ``mask`` whose status is not already a stronger reason."""
    if not mask.any():  # the usual case: nothing to mark
        return
    hit = mask & ((status == _OK) | (status > code))
    if hit.any():
        status[hit] = code
        for i in np.flatnonzero(hit).tolist():  # only rejected rows: rare
            why[i] = text


def arrow_part(message: RawMessage, value: bytes | bytearray | memoryview,
                budget: DeadLetterBudget) -> tuple[Part, list[DeadLetter]]:
    table = _read_stream(value)
    field = _check_schema(table.schema)
    n = table.num_rows
    status = np.zeros(n, np.int8)
    why: dict[int, str] = {}

    names, code = _sensor_codes(table.column("sensor"))
    _mark(status, why, code == -1, _SCHEMA, "sensor is null")
    _mark(status, why, code == -2, _SCHEMA, "sensor is an empty string")
    t_us = _times(table.column("t").combine_chunks(), status, why)
    flat, start, dense, length = _phases(table.column(field).combine_chunks(), status, why, field)

    if "cell" in table.schema.names:
        cell_column = table.column("cell")
        cell_valid = np.concatenate([_valid(c) for c in cell_column.chunks]) if cell_column.num_chunks else np.zeros(0, bool)
        cell_at: Callable[[int], str] = lambda i: cell_column[i].as_py()  # noqa: E731
        cells = _strings(cell_column) if cell_valid.any() else None
    else:
        cell_valid = np.zeros(n, dtype=bool)
        cell_at = lambda i: ""  # noqa: E731  # never called: no valid cell
        cells = None

    dead: list[DeadLetter] = []
    rejected = np.flatnonzero(status)
    for i in rejected.tolist():
        reason = _STATUS_REASON[int(status[i])]
        # Past the message's allowance a bad row is only counted (its one-row stream is never built).
        if budget.admit(message, reason):
            dead.append(dead_letter(message, _one_row_stream(table, i), reason, f"row {i}: {why[i]}",
                                     budget.limits, row=i))
    if rejected.size:
        code = np.where(status == _OK, code, -1).astype(np.int32)

    partition, offset = origin(message)
    part = Part(
        names=names,
        code=code,
        t_us=t_us,
        length=length,
        flat=flat,
        start=start,
        dense=dense,
        cell_valid=cell_valid,
        cell_at=cell_at,
        cells=cells,
        partition=np.full(n, partition, np.int32),
        offset=np.full(n, offset, np.int64),
        row=np.arange(n, dtype=np.int32),
        raw=None,
        original_at=lambda i: _one_row_stream(table, i),
        message_at=lambda i: message,
        raw_values=field == "value",
    )
    return part, dead


def check_decoded_size(value: bytes | bytearray | memoryview, limit: int) -> None:
    """A compressed stream is too_large by what it would decompress to, before it is decompressed."""
    if isinstance(value, TableValue):
        size = len(value)   # already in memory, uncompressed
        if size > limit:
            raise WholeMessageError(DeadLetterReason.TOO_LARGE, f"decodes to {size:,} bytes, limit {limit:,}")
        return
    try:
        size = decoded_size(value)
    except ValueError as exc:
        raise WholeMessageError(DeadLetterReason.MALFORMED, str(exc)) from None
    if size > limit:
        raise WholeMessageError(DeadLetterReason.TOO_LARGE, f"decodes to {size:,} bytes, limit {limit:,}")
