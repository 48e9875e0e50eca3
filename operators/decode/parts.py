"""The accepted-so-far rows of one Arrow message or of one run of consecutive JSON messages,
before the rows of the whole call are grouped by sensor (:mod:`operators.decode.grouping`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from schemas.raw_messages import RawMessage

__all__ = ["Part", "origin"]


@dataclass
class Part:
    """Rows of one Arrow message or one run of JSON messages, all phase samples or all raw ``value`` samples;
    rows already rejected have code -1."""

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
    raw_values: bool = False  # flat holds raw values (``value`` samples, SPEC section 9), not phases
    cells: pa.Array | None = None  # utf8 cell per row (null where none); None when no row names a cell

    def starts(self) -> np.ndarray:
        if self.start is not None:
            return self.start
        width = self.dense.shape[1] if self.dense is not None else 0
        return np.arange(self.code.shape[0], dtype=np.int64) * width


def origin(message: RawMessage) -> tuple[int, int]:
    partition = -1 if message.partition is None else int(message.partition)
    offset = -1 if message.offset is None else int(message.offset)
    return partition, offset
