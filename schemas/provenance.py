"""Where accepted rows came from, and the bytes they arrived as (SPEC section 4).

A row refused after decoding (``duplicate``, ``late``, ``future``,
``channels``) still reaches the dead-letter topic with its original bytes and
its source position.  The decoder builds one :class:`Provenance` per batch of
accepted rows; the per-sensor operators carry it along with the rows
(:meth:`Provenance.take`, :meth:`Provenance.concat`) and, for a refused row
only, ask it for :meth:`Provenance.origin` and :meth:`Provenance.original_bytes`.
They never read a wire format themselves: how a row's bytes are cut out of
its message is the decoder's ``rebuild`` function, handed in with the rows.

Nothing is serialised in advance.  JSON rows keep a reference to their
message value; Arrow rows keep a reference to their message (one per message,
never a copy), and a refused row's one-row stream is built when it is asked
for.  Source positions may be lazy: the decoder shares one set of position
columns among all batches of a call and hands each batch only the index of
its rows, gathered on first use (rejections are rare).

>>> p = Provenance(np.array([0, 0]), np.array([7, 8]), np.array([0, 0]), raw=[b"x", b"y"])
>>> p.take(np.array([1])).original_bytes(0), p.origin(1)
(b'y', RowOrigin(message=None, partition=0, offset=8, row=None))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

__all__ = ["Provenance", "RowOrigin"]

Positions = tuple[np.ndarray, np.ndarray, np.ndarray]


class RowOrigin(NamedTuple):
    """Where one row came from, as a dead letter states it.

    Attributes:
        message: the input message the row is a row of (its key, and the unit
            of :class:`~operators.dead_letters.DeadLetterBudget`), or None when
            no message is kept for it (JSON rows, generated rows).
        partition: source partition, or None when not from Kafka.
        offset: source offset, or None when not from Kafka.
        row: the row inside a many-row message, or None.
    """

    message: Any
    partition: int | None
    offset: int | None
    row: int | None


class Provenance:
    """The origins of the rows of one batch, row i for batch row i.

    Args:
        partition: int32 source partition per row (-1: not from Kafka).
        offset: int64 source offset per row (-1: not from Kafka).
        row: int32 row inside the source message (0 for one-row messages).
        raw: the bytes of each row (a JSON message value), or None.
        sources: the many-row messages the rows came from, by (partition,
            offset), when ``raw`` is None; a reference per message, never a copy.
        rebuild: (message, row) -> that row's bytes alone, for rows found in
            ``sources``.

    Use :meth:`gathered` for positions shared among batches and gathered on
    first use.
    """

    __slots__ = ("raw", "sources", "rebuild", "_index", "_shared", "_columns")

    def __init__(self, partition: Any, offset: Any, row: Any, *, raw: list[bytes] | None = None,
                 sources: dict[tuple[int, int], Any] | None = None,
                 rebuild: Callable[[Any, int], bytes] | None = None) -> None:
        self.raw, self.sources, self.rebuild = raw, sources, rebuild
        self._index: np.ndarray | None = None
        self._shared: Callable[[], Positions] | None = None
        columns = (np.asarray(partition, np.int32), np.asarray(offset, np.int64), np.asarray(row, np.int32))
        n = columns[0].shape[0]
        for name, column in zip(("offset", "row"), columns[1:]):
            if column.shape[0] != n:
                raise ValueError(f"{name} has {column.shape[0]} rows, partition has {n}")
        self._columns: Positions | None = columns
        self._check_raw()

    @classmethod
    def gathered(cls, index: np.ndarray, positions: Callable[[], Positions], *, raw: list[bytes] | None = None,
                 sources: dict[tuple[int, int], Any] | None = None,
                 rebuild: Callable[[Any, int], bytes] | None = None) -> Provenance:
        """Rows whose positions are ``partition[index]``, ``offset[index]``, ``row[index]`` of
        ``partition, offset, row = positions()``, gathered on first use."""
        self = cls.__new__(cls)
        self.raw, self.sources, self.rebuild = raw, sources, rebuild
        self._index, self._shared, self._columns = index, positions, None
        self._check_raw()
        return self

    @classmethod
    def unknown(cls, n: int) -> Provenance:
        """``n`` rows from no message (generated rows): no position, no bytes."""
        return cls(np.full(n, -1, np.int32), np.full(n, -1, np.int64), np.zeros(n, np.int32))

    def _check_raw(self) -> None:
        if self.raw is not None and len(self.raw) != len(self):
            raise ValueError(f"raw has {len(self.raw)} rows, the positions have {len(self)}")

    def __len__(self) -> int:
        return int(self._index.shape[0] if self._columns is None else self._columns[0].shape[0])

    def _positions(self) -> Positions:
        if self._columns is None:
            index = self._index
            self._columns = tuple(np.take(column, index) for column in self._shared())  # type: ignore[misc]
        return self._columns  # type: ignore[return-value]

    @property
    def partition(self) -> np.ndarray:
        return self._positions()[0]

    @property
    def offset(self) -> np.ndarray:
        return self._positions()[1]

    @property
    def row(self) -> np.ndarray:
        return self._positions()[2]

    def origin(self, i: int) -> RowOrigin:
        """Where row ``i`` came from."""
        partition, offset = int(self.partition[i]), int(self.offset[i])
        message = self.sources.get((partition, offset)) if self.sources else None
        row = int(self.row[i]) if self.raw is None and message is not None else None
        return RowOrigin(message, partition if partition >= 0 else None, offset if offset >= 0 else None, row)

    def original_bytes(self, i: int) -> bytes | None:
        """The bytes row ``i`` arrived as (the JSON value, or its message's row alone), or None
        when the row has no wire form kept (a generated row)."""
        if self.raw is not None:
            return self.raw[i]
        message = self.sources.get((int(self.partition[i]), int(self.offset[i]))) if self.sources else None
        if message is None or message.value is None or self.rebuild is None:
            return None
        return self.rebuild(message, int(self.row[i]))

    def take(self, idx: np.ndarray) -> Provenance:
        """The origins of the rows at ``idx`` (integer indices)."""
        raw = None if self.raw is None else [self.raw[i] for i in idx]
        if self._columns is None:  # still lazy: stay lazy
            return Provenance.gathered(self._index[idx], self._shared,  # type: ignore[index, arg-type]
                                       raw=raw, sources=self.sources, rebuild=self.rebuild)
        partition, offset, row = self._columns
        return Provenance(partition[idx], offset[idx], row[idx], raw=raw, sources=self.sources, rebuild=self.rebuild)

    @staticmethod
    def concat(parts: Sequence[Provenance]) -> Provenance:
        """The origins of several batches' rows, in the given order."""
        raw = None
        if all(p.raw is not None for p in parts):
            raw = [r for p in parts for r in p.raw]  # type: ignore[union-attr]
        sources: dict[tuple[int, int], Any] | None = None
        for p in parts:
            if p.sources:
                sources = {**(sources or {}), **p.sources}
        rebuild = next((p.rebuild for p in parts if p.rebuild is not None), None)
        return Provenance(np.concatenate([p.partition for p in parts]), np.concatenate([p.offset for p in parts]),
                          np.concatenate([p.row for p in parts]), raw=raw, sources=sources, rebuild=rebuild)

    def __getstate__(self) -> dict[str, Any]:
        # A snapshot holds this batch's own positions, not the decoder's columns for every batch.
        return {"raw": self.raw, "sources": self.sources, "rebuild": self.rebuild, "columns": self._positions()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.raw, self.sources, self.rebuild = state["raw"], state["sources"], state["rebuild"]
        self._index, self._shared, self._columns = None, None, state["columns"]
