"""Accepted samples in columnar form: what the decoder hands the per-sensor operators.

One :class:`SampleBatch` holds samples of ONE sensor from one or more input
messages, as NumPy arrays, so the per-sensor operators and the Numba kernels
work on whole arrays and never on per-sample Python objects.  Every row keeps
where it came from (partition, offset, row within the message) and its
origin, so a sample rejected later (``duplicate``, ``late``, ``channels``)
still reaches the dead-letter topic with its original bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["SampleBatch"]


@dataclass
class SampleBatch:
    """Samples of one sensor, in arrival order (not necessarily time order).

    Attributes:
        sensor: sensor id.
        t_us: int64 event times, microseconds since the epoch, shape (n,).
        phase: float64 radians, shape (n, C); C fixed per sensor.
        cell: the sensor's cell label (last one given), or None.
        partition: int32 source partition per row (-1: not from Kafka).
        offset: int64 source offset per row (-1: not from Kafka).
        row: int32 row index inside the source message (0 for JSON messages).
        raw: original bytes per row (the JSON message value), or None when
            the rows came from Arrow batch messages (re-serialise a rejected row
            with :func:`operators.decode.original_row_bytes`, found by
            partition/offset/row) or from a source with no wire form (synthetic).
        topic: the source topic (or file path) the rows came from, or None.
        sources: the Arrow messages the rows came from, by (partition, offset),
            so a row rejected later still yields its original bytes; None for
            JSON rows (they carry ``raw``) and generated rows.  Only a
            reference per message is kept, never a copy.
        ingested: wall-clock time (epoch seconds) when the earliest row was
            decoded; the start of the ingest-to-event latency.
    """

    sensor: str
    t_us: np.ndarray
    phase: np.ndarray
    cell: str | None = None
    partition: np.ndarray = field(default_factory=lambda: np.empty(0, np.int32))
    offset: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    row: np.ndarray = field(default_factory=lambda: np.empty(0, np.int32))
    raw: list[bytes] | None = None
    topic: str | None = None
    sources: dict[tuple[int, int], Any] | None = None
    ingested: float = math.inf

    def __post_init__(self) -> None:
        self.t_us = np.asarray(self.t_us, dtype=np.int64)
        self.phase = np.asarray(self.phase, dtype=np.float64)
        n = self.t_us.shape[0]
        if self.phase.ndim != 2 or self.phase.shape[0] != n:
            raise ValueError(f"phase must have shape (n, C) with n = {n}, got {self.phase.shape}")
        for name, dtype in (("partition", np.int32), ("offset", np.int64), ("row", np.int32)):
            arr = getattr(self, name)
            if arr.shape[0] == 0 and n:
                setattr(self, name, np.full(n, -1 if name != "row" else 0, dtype))
            elif arr.shape[0] != n:
                raise ValueError(f"{name} has {arr.shape[0]} rows, t_us has {n}")
        if self.raw is not None and len(self.raw) != n:
            raise ValueError(f"raw has {len(self.raw)} rows, t_us has {n}")

    def __len__(self) -> int:
        return int(self.t_us.shape[0])

    @property
    def channels(self) -> int:
        return int(self.phase.shape[1])

    def take(self, index: np.ndarray) -> "SampleBatch":
        """The rows at ``index`` (integer or boolean array), same sensor and cell."""
        idx = np.flatnonzero(index) if index.dtype == np.bool_ else index
        return SampleBatch(
            self.sensor, self.t_us[idx], self.phase[idx], self.cell,
            self.partition[idx], self.offset[idx], self.row[idx],
            None if self.raw is None else [self.raw[i] for i in idx],
            self.topic, self.sources, self.ingested,
        )

    @staticmethod
    def concat(batches: "list[SampleBatch]") -> "SampleBatch":
        """Rows of several batches of the same sensor, in the given order."""
        if not batches:
            raise ValueError("concat needs at least one batch")
        first = batches[0]
        if any(b.sensor != first.sensor for b in batches):
            raise ValueError("concat of batches of different sensors")
        cell = next((b.cell for b in reversed(batches) if b.cell is not None), None)
        raw = None
        if all(b.raw is not None for b in batches):
            raw = [r for b in batches for r in b.raw]
        sources: dict[tuple[int, int], Any] | None = None
        for b in batches:
            if b.sources:
                sources = {**(sources or {}), **b.sources}
        topic = next((b.topic for b in batches if b.topic is not None), None)
        return SampleBatch(
            first.sensor,
            np.concatenate([b.t_us for b in batches]),
            np.concatenate([b.phase for b in batches]),
            cell,
            np.concatenate([b.partition for b in batches]),
            np.concatenate([b.offset for b in batches]),
            np.concatenate([b.row for b in batches]),
            raw,
            topic,
            sources,
            min(b.ingested for b in batches),
        )
