"""JSON messages (one sample each) as a part: read as columns in one parse
(:func:`operators.json_columns.json_columns`) or sample by sample."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from operators.decode.parts import Part, origin
from schemas.raw_messages import RawMessage
from operators.json_columns import JsonColumns
from schemas.messages import PhaseSample

__all__ = ["json_columns_part", "json_part"]


def json_part(messages: list[RawMessage], samples: list[PhaseSample]) -> Part:
    """Samples parsed one by one, all phase samples or all raw ones."""
    names: dict[str, int] = {}
    code = np.fromiter((names.setdefault(s.sensor, len(names)) for s in samples), np.int32, len(samples))
    length = np.fromiter((len(s.phase) for s in samples), np.int64, len(samples))
    flat = np.fromiter((x for s in samples for x in s.phase), np.float64, int(length.sum()))
    start = np.zeros(len(samples), np.int64)
    np.cumsum(length[:-1], out=start[1:])
    origins = np.array([origin(m) for m in messages], dtype=np.int64).reshape(-1, 2)
    cells = [s.cell for s in samples]
    values = [bytes(m.value) for m in messages]  # type: ignore[arg-type]  # accepted => value present
    return Part(
        names=pa.array(list(names), pa.string()),
        code=code,
        t_us=np.fromiter((s.t_us for s in samples), np.int64, len(samples)),
        length=length,
        flat=flat,
        start=start,
        dense=None,
        cell_valid=np.array([c is not None for c in cells], dtype=bool),
        cell_at=cells.__getitem__,
        cells=pa.array(cells, pa.string()) if any(c is not None for c in cells) else None,
        partition=origins[:, 0].astype(np.int32),
        offset=origins[:, 1],
        row=np.zeros(len(samples), np.int32),
        raw=values,
        original_at=values.__getitem__,
        message_at=messages.__getitem__,
        raw_values=samples[0].raw,
    )


def json_columns_part(messages: list[RawMessage], cols: JsonColumns) -> Part:
    """A run of JSON messages read as columns (:func:`operators.json_columns.json_columns`)."""
    n = len(messages)
    enc = pc.dictionary_encode(cols.sensor)
    origins = np.array([origin(m) for m in messages], dtype=np.int64).reshape(-1, 2)
    values = [bytes(m.value) for m in messages]  # type: ignore[arg-type]  # accepted => value present
    cell = cols.cell
    dense = cols.flat.reshape(n, -1) if cols.flat.shape[0] == n or bool((cols.length == cols.length[0]).all()) \
        else None
    return Part(
        names=enc.dictionary,
        code=enc.indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False),
        t_us=cols.t_us,
        length=cols.length,
        flat=cols.flat,
        start=None if dense is not None else cols.start,
        dense=dense,
        cell_valid=cell.is_valid().to_numpy(zero_copy_only=False),
        cell_at=lambda i: cell[i].as_py(),
        cells=cell.cast(pa.string()) if cell.null_count < len(cell) else None,
        partition=origins[:, 0].astype(np.int32),
        offset=origins[:, 1],
        row=np.zeros(n, np.int32),
        raw=values,
        original_at=values.__getitem__,
        message_at=messages.__getitem__,
        raw_values=cols.raw,
    )
