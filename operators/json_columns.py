"""Many JSON input messages as columns in one parse, when every one of them is a plain, valid sample.

A Kafka JSON stream is one sample per message; checking each with Python's
``json`` and :func:`schemas.messages.sample_from_object` cost about 8 us a
message, most of the decode step.  :func:`json_columns` hands a run of
messages to Arrow's JSON reader as one newline-delimited document and checks
the columns as a whole.  It answers only when the result is certainly what
the message-by-message path would give: one object per message, no escapes
or line breaks inside a value (so text is read byte for byte alike), the
fields of the wire format with their types (``sensor`` non-empty text, ``t``
epoch seconds as a number in range, ``phase`` -- or ``value`` in every
message, for raw samples -- a number or a non-empty list of numbers,
``cell`` text or null), nothing missing, nothing out of range.
Otherwise it returns None and the caller takes the messages one by one, so
every bad message still gets its own dead letter with its own reason.
"""

from __future__ import annotations

import io
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from schemas.timebase import MAX_ABS_SECONDS, MAX_ABS_WHOLE_SECONDS, seconds_to_micros

__all__ = ["JsonColumns", "json_columns"]


class JsonColumns(NamedTuple):
    """The samples of a run of JSON messages, row i from message i.

    Attributes:
        sensor: the sensor ids (Arrow strings).
        t_us: int64 event times.
        length: int64 channel count per row.
        flat: float64 phase values (raw values when ``raw``), row i at flat[start[i]:start[i] + length[i]].
        start: int64 offsets into flat.
        cell: the cells (Arrow strings, null where none).
        raw: every message is a raw ``value`` sample.
    """

    sensor: pa.StringArray
    t_us: np.ndarray
    length: np.ndarray
    flat: np.ndarray
    start: np.ndarray
    cell: pa.Array
    raw: bool = False


def json_columns(values: list[bytes]) -> JsonColumns | None:
    """The messages' samples as columns, or None when any message needs a closer look.

    >>> cols = json_columns([b'{"sensor":"a","t":1.5,"phase":[0.25]}', b'{"sensor":"b","t":2,"phase":[1,2],"cell":"c"}'])
    >>> cols.sensor.to_pylist(), cols.t_us.tolist(), cols.length.tolist(), cols.flat.tolist(), cols.cell.to_pylist()
    (['a', 'b'], [1500000, 2000000], [1, 2], [0.25, 1.0, 2.0], [None, 'c'])
    >>> json_columns([b'{"sensor":"a","t":1,"phase":0.5}', b'{"sensor":"a","t":2,"phase":[1]}']) is None  # types differ
    True
    >>> json_columns([b'{"sensor":"a","t":1,"phase":NaN}']) is None      # the message path gives its reason
    True
    """
    n = len(values)
    if n == 0:
        return None
    doc = b"\n".join(values)
    # One line per message, read byte for byte: no line breaks inside a value, no escapes.  No blank
    # value either: then n rows can only come from one object per line (a blank line gives none).
    if doc.count(b"\n") != n - 1 or b"\r" in doc or b"\\" in doc or not all(v.strip() for v in values):
        return None
    try:
        table = pj.read_json(io.BytesIO(doc), read_options=pj.ReadOptions(block_size=max(1 << 20, len(doc) + 1)))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, UnicodeDecodeError, ValueError):
        return None
    names = set(table.column_names)
    field = "value" if "value" in names else "phase"
    if table.num_rows != n or not {"sensor", "t", field} <= names or {"phase", "value"} <= names:
        return None
    try:
        table.validate(full=True)   # the reader passes bytes that are not UTF-8 through into strings
    except pa.ArrowInvalid:
        return None
    sensor, t, phase = (table.column(k).combine_chunks() for k in ("sensor", "t", field))
    if sensor.null_count or t.null_count or phase.null_count or not pa.types.is_string(sensor.type):
        return None
    if pc.min(pc.utf8_length(sensor)).as_py() < 1:
        return None
    t_us = _times(t)
    if t_us is None:
        return None
    phases = _phases(phase)
    if phases is None:
        return None
    if "cell" in table.column_names:
        cell = table.column("cell").combine_chunks()
        if pa.types.is_null(cell.type):
            cell = pa.nulls(n, pa.string())
        elif not pa.types.is_string(cell.type):
            return None
    else:
        cell = pa.nulls(n, pa.string())
    return JsonColumns(sensor, t_us, *phases, cell, raw=field == "value")


def _times(t: pa.Array) -> np.ndarray | None:
    """Epoch seconds (int64 or double, in range) to microseconds as the message path rounds them."""
    if pa.types.is_int64(t.type):
        values = t.to_numpy()
        if np.abs(values).max() > MAX_ABS_WHOLE_SECONDS:
            return None
    elif pa.types.is_float64(t.type):
        values = t.to_numpy()
        if not np.isfinite(values).all() or np.abs(values).max() > MAX_ABS_SECONDS:
            return None
    else:
        return None
    return seconds_to_micros(values)


def _phases(phase: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(length, flat, start) of a number column or a list-of-numbers column, all values finite."""
    n = len(phase)
    if pa.types.is_int64(phase.type) or pa.types.is_float64(phase.type):
        flat = phase.to_numpy().astype(np.float64)
        length = np.ones(n, np.int64)
    elif pa.types.is_list(phase.type) and (pa.types.is_int64(phase.type.value_type)
                                           or pa.types.is_float64(phase.type.value_type)):
        items = phase.values
        offsets = phase.offsets.to_numpy()
        if items.null_count or offsets[0] != 0 or offsets[-1] != len(items):
            return None
        length = np.diff(offsets).astype(np.int64)
        if n and length.min() < 1:
            return None   # an empty list: the message path names it (channels)
        flat = items.to_numpy().astype(np.float64)
    else:
        return None
    if not np.isfinite(flat).all():
        return None
    start = np.zeros(n, np.int64)
    np.cumsum(length[:-1], out=start[1:])
    return length, flat, start
