"""Decode and validate raw input messages into per-sensor sample batches (SPEC section 4).

This is the stateless first step of the dataflow.  It takes the raw Kafka
messages of one poll and returns one :class:`~operators.samples.SampleBatch`
per sensor plus the dead letters of everything that cannot be a sample.
Nothing here depends on earlier messages, so it may run on any worker; the
checks that need a sensor's history (``duplicate``, ``late``, ``future``, a
channel count that differs from earlier batches) belong to the per-sensor
operators downstream.

Two encodings, chosen by the ``content-type`` header:

* JSON (no header, or ``application/json``): one sample per message, parsed
  by :func:`schemas.messages.parse_sample` so the dead-letter reasons are the
  same everywhere in the project.
* Arrow IPC stream (``application/vnd.apache.arrow.stream``): any number of
  rows of any number of sensors.  This is the fast path: columns become NumPy
  arrays without copying where the layout allows, validation and grouping by
  sensor are array operations, and no Python runs per row except for rows
  that are dead-lettered.

Reasons decided here: ``too_large`` (value longer than the limit, checked
before anything is parsed), ``malformed`` (not JSON / not an object / not
UTF-8 / not a readable IPC stream / unknown content type / no value),
``schema`` (missing or mistyped field or column, null sensor or time, time out
of range), ``nan`` (non-finite time or phase) and ``channels`` (empty phase
list, or a channel count that differs from the one most of the sensor's rows
in this call have).  When several apply to one row, the first in the order
schema, nan, channels wins, as in :func:`schemas.messages.sample_from_object`.

Original bytes of Arrow rows.  Serialising every row of a high-rate message
just in case it is rejected later would cost more than the decoding itself,
so batches built from Arrow rows carry ``raw = None``.  A downstream operator
that rejects such a row rebuilds its bytes with :func:`arrow_row_bytes` (or
:func:`original_row_bytes`) from the message value, found by the row's
partition and offset; an operator that may reject rows must therefore keep a
reference to the messages it has not finished with.  Rows rejected here get
their one-row IPC stream directly.

>>> msg = RawMessage(key=b"pmu-7", value=b'{"sensor": "pmu-7", "t": 1764115200.125, "phase": 1.23}',
...                  topic="becomingone.phases", partition=0, offset=41)
>>> out = decode_messages([msg])
>>> out.batches[0].sensor, out.batches[0].t_us.tolist(), out.batches[0].phase.tolist()
('pmu-7', [1764115200125000], [[1.23]])
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numba import njit

from operators.arrow_bounds import decoded_size
from operators.json_columns import JsonColumns, json_columns
from operators.dead_letters import DeadLetterBudget
from operators.samples import Origins, SampleBatch, SampleRuns
from schemas.messages import (
    ARROW_STREAM_CONTENT_TYPE,
    CONTENT_TYPE_HEADER,
    JSON_CONTENT_TYPE,
    DeadLetter,
    DeadLetterLimits,
    DeadLetterReason,
    InvalidSample,
    PhaseSample,
    parse_sample,
)
from schemas.timebase import MAX_ABS_SECONDS, MAX_ABS_WHOLE_SECONDS, RANGE_TEXT, to_micros, unit_limit

__all__ = [
    "Decoded",
    "RawMessage",
    "arrow_row_bytes",
    "decode_messages",
    "original_row_bytes",
]


# Row status codes of the Arrow path, in precedence order (lowest wins).
_OK, _SCHEMA, _NAN, _CHANNELS = 0, 1, 2, 3
_STATUS_REASON = {
    _SCHEMA: DeadLetterReason.SCHEMA,
    _NAN: DeadLetterReason.NAN,
    _CHANNELS: DeadLetterReason.CHANNELS,
}


# --------------------------------------------------------------------------
# Public types.


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One input message as the Kafka source delivers it.

    Attributes:
        key: message key (the sensor id by convention; not used for decoding).
        value: message value, or None for a tombstone.
        headers: Kafka headers as (name, value) pairs, or None.
        topic: source topic (or file path for a file source).
        partition: source partition, or None when not from Kafka.
        offset: source offset (or row index in a file), or None.
    """

    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | str | None]] | None = None
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None

    @property
    def content_type(self) -> str | None:
        """The media type of the ``content-type`` header, lower case, without
        parameters (``; charset=...``); None when there is no such header.
        Header names are case-insensitive; the last such header wins."""
        found: str | None = None
        for name, value in self.headers or ():
            if name.lower() != CONTENT_TYPE_HEADER:
                continue
            text = value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else (value or "")
            found = text.split(";", 1)[0].strip().lower() or None
        return found


@dataclass
class Decoded:
    """What one call of :func:`decode_messages` produced.

    Attributes:
        batches: one batch per sensor with accepted samples, in order of the
            sensor's first accepted row; rows in arrival order (message order,
            then row order inside a message).
        dead: dead letters, one per rejected row (or per message when the
            whole message is unreadable), plus one summary per message with
            more bad rows than ``DeadLetterLimits.max_per_message``.
        counts: rejected rows per reason (reasons with none absent).
        rows: rows seen: accepted rows plus rejected rows.
    """

    batches: list[SampleBatch] = field(default_factory=list)
    runs: list[SampleRuns] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    counts: dict[DeadLetterReason, int] = field(default_factory=dict)
    rows: int = 0

    @property
    def accepted(self) -> int:
        """Number of accepted rows over all batches (or runs)."""
        return sum(len(b) for b in self.batches) + sum(len(r) for r in self.runs)


# --------------------------------------------------------------------------
# Internal: the accepted-so-far rows of one Arrow message or of one run of
# consecutive JSON messages, before rows of the whole call are grouped.


@dataclass
class _Part:
    names: pa.StringArray  # local sensor names; code indexes this
    code: np.ndarray  # int32, local sensor code per row, -1 for rows already dead
    t_us: np.ndarray  # int64
    length: np.ndarray  # int64 channel count per row
    flat: np.ndarray  # float64 phase values; row i is flat[start[i]:start[i] + length[i]]
    start: np.ndarray | None  # int64; None when the phase is dense (see dense)
    dense: np.ndarray | None  # (n, C) when every row has the same C: a view, no gather needed
    cell_valid: np.ndarray  # bool per row
    cell_at: Callable[[int], str]
    partition: np.ndarray  # int32
    offset: np.ndarray  # int64
    row: np.ndarray  # int32
    raw: list[bytes] | None  # per row (JSON) or None (Arrow)
    original_at: Callable[[int], bytes]
    message_at: Callable[[int], RawMessage]

    def starts(self) -> np.ndarray:
        if self.start is not None:
            return self.start
        width = self.dense.shape[1] if self.dense is not None else 0
        return np.arange(self.code.shape[0], dtype=np.int64) * width


def _dead_letter(message: RawMessage, original: bytes, reason: DeadLetterReason, error: str,
                 limits: DeadLetterLimits, row: int | None = None) -> DeadLetter:
    # DeadLetter allows only non-negative partitions and offsets; -1 means
    # "not from Kafka" in SampleBatch and None here.
    partition = message.partition if message.partition is not None and message.partition >= 0 else None
    offset = message.offset if message.offset is not None and message.offset >= 0 else None
    return DeadLetter.create(
        original=original, reason=reason, error=error, topic=message.topic,
        partition=partition, offset=offset, row=row, key=message.key,
        max_original_bytes=limits.max_original_bytes,
    )


def _origin(message: RawMessage) -> tuple[int, int]:
    partition = -1 if message.partition is None else int(message.partition)
    offset = -1 if message.offset is None else int(message.offset)
    return partition, offset


# --------------------------------------------------------------------------
# JSON.


def _json_part(messages: list[RawMessage], samples: list[PhaseSample]) -> _Part:
    names: dict[str, int] = {}
    code = np.fromiter((names.setdefault(s.sensor, len(names)) for s in samples), np.int32, len(samples))
    length = np.fromiter((len(s.phase) for s in samples), np.int64, len(samples))
    flat = np.fromiter((x for s in samples for x in s.phase), np.float64, int(length.sum()))
    start = np.zeros(len(samples), np.int64)
    np.cumsum(length[:-1], out=start[1:])
    origins = np.array([_origin(m) for m in messages], dtype=np.int64).reshape(-1, 2)
    cells = [s.cell for s in samples]
    values = [bytes(m.value) for m in messages]  # type: ignore[arg-type]  # accepted => value present
    return _Part(
        names=pa.array(list(names), pa.string()),
        code=code,
        t_us=np.fromiter((s.t_us for s in samples), np.int64, len(samples)),
        length=length,
        flat=flat,
        start=start,
        dense=None,
        cell_valid=np.array([c is not None for c in cells], dtype=bool),
        cell_at=cells.__getitem__,
        partition=origins[:, 0].astype(np.int32),
        offset=origins[:, 1],
        row=np.zeros(len(samples), np.int32),
        raw=values,
        original_at=values.__getitem__,
        message_at=messages.__getitem__,
    )


def _json_columns_part(messages: list[RawMessage], cols: JsonColumns) -> _Part:
    """A run of JSON messages read as columns (:func:`operators.json_columns.json_columns`)."""
    n = len(messages)
    enc = pc.dictionary_encode(cols.sensor)
    origins = np.array([_origin(m) for m in messages], dtype=np.int64).reshape(-1, 2)
    values = [bytes(m.value) for m in messages]  # type: ignore[arg-type]  # accepted => value present
    cell = cols.cell
    dense = cols.flat.reshape(n, -1) if cols.flat.shape[0] == n or bool((cols.length == cols.length[0]).all()) \
        else None
    return _Part(
        names=enc.dictionary,
        code=enc.indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False),
        t_us=cols.t_us,
        length=cols.length,
        flat=cols.flat,
        start=None if dense is not None else cols.start,
        dense=dense,
        cell_valid=cell.is_valid().to_numpy(zero_copy_only=False),
        cell_at=lambda i: cell[i].as_py(),
        partition=origins[:, 0].astype(np.int32),
        offset=origins[:, 1],
        row=np.zeros(n, np.int32),
        raw=values,
        original_at=values.__getitem__,
        message_at=messages.__getitem__,
    )


# --------------------------------------------------------------------------
# Arrow IPC.


class _WholeMessageError(Exception):
    """The Arrow message as a whole cannot be used: one dead letter for all of it."""

    def __init__(self, reason: DeadLetterReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class TableValue:
    """An Arrow table handed over in process as a message value (a file source's chunk), so it is not
    written to an IPC stream only to be read back.  It behaves as the stream's bytes where bytes are
    needed (a dead letter's original: ``bytes()``; the size limit: ``len()``, its buffers' size)."""

    __slots__ = ("table",)

    def __init__(self, table: pa.Table) -> None:
        self.table = table

    def __len__(self) -> int:
        return int(self.table.nbytes)

    def __bytes__(self) -> bytes:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, self.table.schema) as writer:
            writer.write_table(self.table)
        return sink.getvalue().to_pybytes()


def _read_stream(value: bytes | bytearray | memoryview | TableValue) -> pa.Table:
    """All record batches of an IPC stream as one table (buffers stay in ``value``)."""
    if isinstance(value, TableValue):
        table = value.table
        try:
            table.validate(full=True)
        except (pa.ArrowException, ValueError) as exc:
            raise _WholeMessageError(DeadLetterReason.MALFORMED, f"not a valid Arrow table: {exc}") from None
        return table
    try:
        with pa.ipc.open_stream(pa.py_buffer(value)) as reader:
            table = reader.read_all()
        # Full validation (offsets in range, UTF-8) before any kernel or NumPy
        # gather touches the buffers: a corrupt producer must give a dead
        # letter, not a crash of the worker.
        table.validate(full=True)
    except (pa.ArrowException, ValueError, OSError) as exc:
        raise _WholeMessageError(DeadLetterReason.MALFORMED, f"not a readable Arrow IPC stream: {exc}") from None
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
    except _WholeMessageError as exc:
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


def _check_schema(schema: pa.Schema) -> None:
    """Whole-message ``schema`` errors: missing, duplicated or mistyped columns."""
    for name in ("sensor", "t", "phase", "cell"):
        count = schema.get_all_field_indices(name)
        if len(count) > 1:
            raise _WholeMessageError(DeadLetterReason.SCHEMA, f"column {name!r} appears {len(count)} times")
        if not count and name != "cell":
            raise _WholeMessageError(DeadLetterReason.SCHEMA, f"missing column {name!r}")
    sensor = schema.field("sensor").type
    if not _is_text_column(sensor):
        raise _WholeMessageError(DeadLetterReason.SCHEMA, f"column 'sensor' must be utf8 (or a dictionary of it), not {sensor}")
    t = schema.field("t").type
    # Not float32: near 1.7e9 s it resolves about two minutes.
    if not (pa.types.is_timestamp(t) or pa.types.is_integer(t) or pa.types.is_float64(t)):
        raise _WholeMessageError(DeadLetterReason.SCHEMA, f"column 't' must be float64 seconds or a timestamp, not {t}")
    phase = schema.field("phase").type
    if not (_is_number(phase) or ((_is_var_list(phase) or _is_fixed_list(phase)) and _is_number(phase.value_type))):
        raise _WholeMessageError(DeadLetterReason.SCHEMA, f"column 'phase' must be float64 or a list of float64, not {phase}")
    if "cell" in schema.names:
        cell = schema.field("cell").type
        if not (_is_text_column(cell) or pa.types.is_null(cell)):
            raise _WholeMessageError(DeadLetterReason.SCHEMA, f"column 'cell' must be utf8 or null, not {cell}")


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
    arr: pa.Array, status: np.ndarray, why: dict[int, str]
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray]:
    """Phase storage of the phase column: (flat values, row starts or None,
    dense (n, C) view or None, channel count per row); bad rows get a status."""
    n = len(arr)
    valid = _valid(arr)
    _mark(status, why, ~valid, _SCHEMA, "phase is null")
    typ = arr.type
    if _is_number(typ):
        values = _float64(arr)
        _mark(status, why, valid & ~np.isfinite(values), _NAN, "phase holds NaN or infinity")
        dense = values.reshape(n, 1)
        return values, None, dense, np.ones(n, np.int64)
    if _is_fixed_list(typ):
        width = typ.list_size
        child = arr.values.slice(arr.offset * width, n * width)  # .values ignores the slice offset
        values = _float64(child).reshape(n, width)
        if child.null_count:
            elem_null = ~_valid(child).reshape(n, width)
            _mark(status, why, valid & elem_null.any(axis=1), _SCHEMA, "phase list holds null")
        nonfinite = ~np.isfinite(values)
        if nonfinite.any():  # a row-wise reduction only when some element is bad
            _mark(status, why, valid & nonfinite.any(axis=1), _NAN, "phase holds NaN or infinity")
        if width == 0:
            _mark(status, why, valid, _CHANNELS, "phase is an empty list")
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
        (~_valid(child.slice(lo, hi - lo)), _SCHEMA, "phase list holds null"),
        (~np.isfinite(values[lo:hi]), _NAN, "phase holds NaN or infinity"),
    ):
        if not bad.any():
            continue
        csum = np.zeros(hi - lo + 1, np.int64)
        np.cumsum(bad, out=csum[1:])
        _mark(status, why, valid & (csum[offsets[1:] - lo] > csum[offsets[:-1] - lo]), code, text)
    _mark(status, why, valid & (length == 0), _CHANNELS, "phase is an empty list")
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


def _arrow_part(message: RawMessage, value: bytes | bytearray | memoryview,
                budget: DeadLetterBudget) -> tuple[_Part, list[DeadLetter]]:
    table = _read_stream(value)
    _check_schema(table.schema)
    n = table.num_rows
    status = np.zeros(n, np.int8)
    why: dict[int, str] = {}

    names, code = _sensor_codes(table.column("sensor"))
    _mark(status, why, code == -1, _SCHEMA, "sensor is null")
    _mark(status, why, code == -2, _SCHEMA, "sensor is an empty string")
    t_us = _times(table.column("t").combine_chunks(), status, why)
    flat, start, dense, length = _phases(table.column("phase").combine_chunks(), status, why)

    if "cell" in table.schema.names:
        cell_column = table.column("cell")
        cell_valid = np.concatenate([_valid(c) for c in cell_column.chunks]) if cell_column.num_chunks else np.zeros(0, bool)
        cell_at: Callable[[int], str] = lambda i: cell_column[i].as_py()  # noqa: E731
    else:
        cell_valid = np.zeros(n, dtype=bool)
        cell_at = lambda i: ""  # noqa: E731  # never called: no valid cell

    dead: list[DeadLetter] = []
    rejected = np.flatnonzero(status)
    for i in rejected.tolist():
        reason = _STATUS_REASON[int(status[i])]
        # Past the message's allowance a bad row is only counted (its one-row stream is never built).
        if budget.admit(message, reason):
            dead.append(_dead_letter(message, _one_row_stream(table, i), reason, f"row {i}: {why[i]}",
                                     budget.limits, row=i))
    if rejected.size:
        code = np.where(status == _OK, code, -1).astype(np.int32)

    partition, offset = _origin(message)
    part = _Part(
        names=names,
        code=code,
        t_us=t_us,
        length=length,
        flat=flat,
        start=start,
        dense=dense,
        cell_valid=cell_valid,
        cell_at=cell_at,
        partition=np.full(n, partition, np.int32),
        offset=np.full(n, offset, np.int64),
        row=np.arange(n, dtype=np.int32),
        raw=None,
        original_at=lambda i: _one_row_stream(table, i),
        message_at=lambda i: message,
    )
    return part, dead


# --------------------------------------------------------------------------
# The whole call: channel agreement per sensor, grouping, batches.


def _join(arrays: list[np.ndarray]) -> np.ndarray:
    # np.concatenate copies even a single array; the common call has one part.
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


@njit(cache=True, nogil=True)
def _group_rows(code, n_codes):
    """A counting sort of rows by code, arrival order kept within a code; rows with
    code < 0 (rejected) are left out.  Returns (row order, start of each code's
    rows in it; n_codes + 1 entries)."""
    start = np.zeros(n_codes + 1, np.int64)
    for c in code:
        if c >= 0:
            start[c + 1] += 1
    for k in range(n_codes):
        start[k + 1] += start[k]
    fill = start[:n_codes].copy()
    order = np.empty(start[n_codes], np.int64)
    for i in range(code.shape[0]):
        c = code[i]
        if c >= 0:
            order[fill[c]] = i
            fill[c] += 1
    return order, start


def _majority_width(code: np.ndarray, length: np.ndarray, n_sensors: int) -> np.ndarray:
    """Per sensor, the channel count most of its rows have (ties: the count
    that arrived first).  ``code`` and ``length`` cover accepted rows only."""
    chosen = np.full(n_sensors, -1, np.int64)
    if code.size == 0:
        return chosen
    span = int(length.max()) + 1
    key = code.astype(np.int64) * span + length
    keys, first, counts = np.unique(key, return_index=True, return_counts=True)
    sensor, width = keys // span, keys % span
    best = np.lexsort((first, -counts, sensor))  # by sensor, most rows first, then earliest
    sensor, width = sensor[best], width[best]
    lead = np.ones(sensor.size, dtype=bool)
    lead[1:] = sensor[1:] != sensor[:-1]
    chosen[sensor[lead]] = width[lead]
    return chosen


def _batches(parts: list[_Part], out: Decoded, ingested: float, budget: DeadLetterBudget, as_runs: bool = False) -> None:
    # One code per distinct sensor over all parts, found in Arrow: the parts' names
    # are joined and encoded once, so only the distinct names become Python strings.
    if len(parts) == 1:
        names = parts[0].names
        global_code = np.arange(len(names), dtype=np.int32)
    else:
        enc = pc.dictionary_encode(pa.concat_arrays([p.names for p in parts]))
        names = enc.dictionary
        global_code = enc.indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    names_list = names.to_pylist()
    codes, part_of = [], []
    first = 0
    for k, part in enumerate(parts):
        lookup = np.empty(len(part.names) + 1, np.int32)
        lookup[:-1] = global_code[first:first + len(part.names)]
        lookup[-1] = -1  # -1 (already dead) picks the last slot, which is -1 again
        first += len(part.names)
        codes.append(lookup[part.code])
        part_of.append(np.full(part.code.shape[0], k, np.int32))
    code = _join(codes)

    # A sensor has one channel count; rows that disagree with the majority of
    # the sensor's rows in this call are rejected as `channels`.  Parts that
    # all hold one dense width cannot disagree: no per-row look needed.
    widths = {p.dense.shape[1] if p.dense is not None else -1 for p in parts}
    uniform = len(widths) == 1 and -1 not in widths
    if not uniform:
        length = _join([p.length for p in parts])
        accepted = np.flatnonzero(code >= 0)
        acc_length = length[accepted]
        if acc_length.size and acc_length.min() != acc_length.max():
            chosen = _majority_width(code[accepted], acc_length, len(names))
            wrong = accepted[acc_length != chosen[code[accepted]]]
            if wrong.size:
                part_id, local_row = _join(part_of), _join([np.arange(p.code.shape[0]) for p in parts])
                for i in wrong.tolist():
                    part, r = parts[int(part_id[i])], int(local_row[i])
                    message = part.message_at(r)
                    if part.raw is None and not budget.admit(message, DeadLetterReason.CHANNELS):
                        continue  # counted for the message's summary
                    width = int(chosen[code[i]])
                    text = f"{int(length[i])} channels where sensor {names_list[code[i]]!r} has {width} in this batch"
                    row = None
                    if part.raw is None:
                        row = int(part.row[r])
                        text = f"row {row}: {text}"
                    _add(out, _dead_letter(message, part.original_at(r), DeadLetterReason.CHANNELS, text,
                                           budget.limits, row=row))
                code[wrong] = -1

    # Group rows by sensor, arrival order kept inside a sensor.
    order, group_start = _group_rows(code, len(names_list))
    out.rows += int(order.size)
    if order.size == 0:
        return
    group_codes = np.flatnonzero(np.diff(group_start))
    starts, ends = group_start[group_codes], group_start[group_codes + 1]
    identity = order.size == code.size and group_codes.size == 1  # one sensor, nothing rejected

    t_us = _join([p.t_us for p in parts])
    # Source positions are joined and gathered only for rows rejected later (SampleBatch origins).
    positions = functools.cache(lambda: (_join([p.partition for p in parts]), _join([p.offset for p in parts]),
                                         _join([p.row for p in parts])))
    cell_valid = _join([p.cell_valid for p in parts])
    with_cells = bool(cell_valid.any())
    if not identity:
        # np.take is markedly faster than fancy indexing for these gathers.
        t_us = np.take(t_us, order)
        if with_cells:
            cell_valid = np.take(cell_valid, order)

    # Phase: Arrow messages with scalar, fixed-size-list or uniformly long
    # list columns of one width gather whole rows of their (n, C) views; otherwise each
    # sensor's rows are gathered from the flat values through their starts.
    if uniform:  # every part has one (n, C) view of one width
        dense = _join([p.dense for p in parts])
        phase_all = dense if identity else np.take(dense, order, axis=0)
        flat = start = None
    else:
        phase_all = None
        flat = _join([p.flat for p in parts])
        shift = np.cumsum([0] + [p.flat.shape[0] for p in parts[:-1]])
        start = _join([p.starts() + s for p, s in zip(parts, shift)])

    need_raw = any(p.raw is not None for p in parts)
    all_raw = need_raw and all(p.raw is not None for p in parts)
    raw_in_order = None
    if all_raw:
        # Every row has its own bytes (JSON only): one list in row order, sliced per sensor.
        flat_raw = parts[0].raw if len(parts) == 1 else [x for p in parts for x in p.raw]
        raw_in_order = flat_raw if identity else [flat_raw[i] for i in order.tolist()]
    part_of_row = _join(part_of)
    if need_raw:
        part_id, local_row = part_of_row[order], _join([np.arange(p.code.shape[0]) for p in parts])[order]
    else:
        # Which messages each sensor's rows came from, for all sensors at once.
        ok = slice(None) if order.size == code.size else code >= 0
        present = functools.cache(lambda: _presence(code[ok], part_of_row[ok], len(names_list), len(parts)))
    # Per message, once: its topic and its (partition, offset) -> message entry.
    part_topic = [p.message_at(0).topic if p.code.shape[0] else None for p in parts]
    part_source = [(_origin(p.message_at(0)), p.message_at(0)) if p.raw is None and p.code.shape[0] else None
                   for p in parts]
    # Sensors whose rows come from the same messages share one (read-only) sources dict.
    shared_sources: dict[tuple[int, ...], dict[tuple[int, int], Any]] = {}
    first_part = part_of_row[order[starts]].tolist()

    def batch(sensor_code: int, b0: int, b1: int, first: int) -> SampleBatch:
        if phase_all is not None:
            phase = phase_all[b0:b1]
        else:
            rows = order[b0:b1]
            width = int(length[rows[0]])
            phase = np.take(flat, start[rows][:, None] + np.arange(width))
        raw = None
        if raw_in_order is not None:
            raw = raw_in_order[b0:b1]
        elif need_raw and all(parts[k].raw is not None for k in np.unique(part_id[b0:b1]).tolist()):
            raw = [parts[k].raw[r] for k, r in zip(part_id[b0:b1].tolist(), local_row[b0:b1].tolist())]
        sources = None
        if raw is None:
            # Arrow rows: keep a reference to their messages for late dead letters.
            part_ids = tuple((np.unique(part_id[b0:b1]) if need_raw else present()[sensor_code]).tolist())
            sources = shared_sources.get(part_ids)
            if sources is None:
                sources = shared_sources[part_ids] = dict(e for k in part_ids if (e := part_source[k]) is not None)
        return SampleBatch(
            names_list[sensor_code], t_us[b0:b1], phase, cell_of(b0, b1), raw=raw, topic=part_topic[first],
            sources=sources or None, ingested=ingested, origins=Origins(order[b0:b1], positions),
        )

    def cell_of(b0: int, b1: int) -> str | None:
        with_cell = np.flatnonzero(cell_valid[b0:b1]) if with_cells else ()
        if not len(with_cell):
            return None
        k, r = _locate(parts, int(order[b0 + with_cell[-1]]))
        return parts[k].cell_at(r)

    codes_l, starts_l, ends_l = group_codes.tolist(), starts.tolist(), ends.tolist()
    if as_runs:
        # The sensors' rows as they are (grouped by sensor, arrival order within), one block per channel count.
        counts = ends - starts
        cells = [cell_of(b0, b1) for b0, b1 in zip(starts_l, ends_l)] if with_cells else None
        make = lambda j: batch(codes_l[j], starts_l[j], ends_l[j], first_part[j])  # noqa: E731
        if phase_all is not None:
            out.runs.append(SampleRuns([names_list[c] for c in codes_l], counts, t_us, phase_all, cells, ingested,
                                       make))
            return
        widths = length[order[starts]]
        whole = SampleRuns([names_list[c] for c in codes_l], counts, t_us, np.zeros((t_us.shape[0], 1)), cells,
                           ingested, make)
        for width in np.unique(widths).tolist():
            runs = np.flatnonzero(widths == width)
            part = whole.select(runs)
            rows = np.repeat(starts[runs] - (np.cumsum(counts[runs]) - counts[runs]), counts[runs]) + \
                np.arange(int(counts[runs].sum()))
            part.phase = np.take(flat, start[order[rows]][:, None] + np.arange(width))
            out.runs.append(part)
        return
    batches = []
    for sensor_code, b0, b1, first in zip(codes_l, starts_l, ends_l, first_part):
        batches.append((int(order[b0]), batch(sensor_code, b0, b1, first)))
    batches.sort(key=lambda item: item[0])  # order of the sensor's first accepted row
    out.batches.extend(b for _, b in batches)


def _presence(code: np.ndarray, part: np.ndarray, n_codes: int, n_parts: int) -> list[np.ndarray]:
    """Per code, the sorted distinct parts its rows are in."""
    if n_parts == 1:  # one message: every code is in it
        return [_ONLY_PART] * n_codes
    if n_codes * n_parts <= 1 << 24:  # a bit matrix and one scatter
        matrix = np.zeros((n_codes, n_parts), np.bool_)
        matrix[code, part] = True
        rows, cols = np.nonzero(matrix)
        return np.split(cols, np.searchsorted(rows, np.arange(1, n_codes)))
    pairs = np.unique(code.astype(np.int64) * n_parts + part)
    cuts = np.searchsorted(pairs // n_parts, np.arange(1, n_codes))
    return [chunk % n_parts for chunk in np.split(pairs, cuts)]


_ONLY_PART = np.zeros(1, np.int64)


def _locate(parts: list[_Part], index: int) -> tuple[int, int]:
    """(part, row in part) of a row index over the concatenated parts."""
    for k, part in enumerate(parts):
        n = part.code.shape[0]
        if index < n:
            return k, index
        index -= n
    raise IndexError(index)


def _add(out: Decoded, letter: DeadLetter) -> None:
    out.dead.append(letter)
    out.counts[letter.reason] = out.counts.get(letter.reason, 0) + 1
    out.rows += 1


def _add_summaries(out: Decoded, budget: DeadLetterBudget) -> None:
    # A summary stands for many rows: they are counted, the record is not a row of its own.
    for letter in budget.summaries():
        out.dead.append(letter)
        for reason, n in (letter.omitted or {}).items():
            out.counts[reason] = out.counts.get(reason, 0) + n
            out.rows += n


def decode_messages(
    messages: Iterable[RawMessage], *, max_message_bytes: int | None = None, ingested: float | None = None,
    limits: DeadLetterLimits | None = None, as_runs: bool = False,
) -> Decoded:
    """Decode and validate raw messages into per-sensor batches and dead letters.

    Args:
        messages: the messages of one poll, in arrival order.
        max_message_bytes: values longer than this, or Arrow streams that
            decompress to more than this, are ``too_large`` (None: no limit).
        ingested: wall-clock time (epoch seconds) stamped on the batches as
            their ingest time; None: now.
        limits: bounds on the dead letters (default :class:`DeadLetterLimits`()):
            their copy of the original bytes, and per-row records per message
            (the message's further bad rows go into one summary record).
        as_runs: hand the accepted rows on as :class:`SampleRuns` (one block per channel count,
            one run per sensor, no object per sensor) in ``runs`` instead of ``batches``.

    Returns:
        The batches (one per sensor) or runs, the dead letters and the rejected rows
        per reason.  Never raises for bad input: every row ends up accepted or
        counted as rejected (``accepted + sum(counts.values()) == rows``).
    """
    out = Decoded()
    budget = DeadLetterBudget(limits or DeadLetterLimits())
    parts: list[_Part] = []
    json_messages: list[RawMessage] = []

    def close_json_run() -> None:
        # Consecutive JSON messages form one part, so parts (and dead letters) stay in arrival order.
        if not json_messages:
            return
        columns = json_columns([bytes(m.value) for m in json_messages]) if len(json_messages) > 1 else None
        if columns is not None:  # every message a plain valid sample: read as columns in one parse
            parts.append(_json_columns_part(list(json_messages), columns))
        else:
            messages, samples = [], []
            for message in json_messages:
                try:
                    samples.append(parse_sample(message.value))
                except InvalidSample as exc:
                    _add(out, _dead_letter(message, message.value, exc.reason, exc.detail, budget.limits))
                    continue
                messages.append(message)
            if samples:
                parts.append(_json_part(messages, samples))
        json_messages.clear()

    for message in messages:
        value = message.value
        if value is None:
            close_json_run()
            _add(out, _dead_letter(message, b"", DeadLetterReason.MALFORMED, "message has no value", budget.limits))
            continue
        size = len(value) if not isinstance(value, memoryview) else value.nbytes
        if max_message_bytes is not None and size > max_message_bytes:
            close_json_run()
            _add(out, _dead_letter(message, value, DeadLetterReason.TOO_LARGE, f"{size} bytes, limit {max_message_bytes}",
                                   budget.limits))
            continue
        content_type = message.content_type
        if content_type is None or content_type == JSON_CONTENT_TYPE:
            json_messages.append(message)
        elif content_type == ARROW_STREAM_CONTENT_TYPE:
            close_json_run()
            try:
                if max_message_bytes is not None:
                    _check_decoded_size(value, max_message_bytes)
                part, dead = _arrow_part(message, value, budget)
            except _WholeMessageError as exc:
                _add(out, _dead_letter(message, value, exc.reason, exc.detail, budget.limits))
                continue
            for letter in dead:
                _add(out, letter)
            parts.append(part)
        else:
            close_json_run()
            _add(out, _dead_letter(message, value, DeadLetterReason.MALFORMED,
                                   f"unsupported content-type {content_type!r}", budget.limits))
    close_json_run()
    if parts:
        _batches(parts, out, time.time() if ingested is None else ingested, budget, as_runs)
    _add_summaries(out, budget)
    return out


def _check_decoded_size(value: bytes | bytearray | memoryview, limit: int) -> None:
    """A compressed stream is too_large by what it would decompress to, before it is decompressed."""
    if isinstance(value, TableValue):
        size = len(value)   # already in memory, uncompressed
        if size > limit:
            raise _WholeMessageError(DeadLetterReason.TOO_LARGE, f"decodes to {size:,} bytes, limit {limit:,}")
        return
    try:
        size = decoded_size(value)
    except ValueError as exc:
        raise _WholeMessageError(DeadLetterReason.MALFORMED, str(exc)) from None
    if size > limit:
        raise _WholeMessageError(DeadLetterReason.TOO_LARGE, f"decodes to {size:,} bytes, limit {limit:,}")
