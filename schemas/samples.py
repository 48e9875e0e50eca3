"""Accepted samples in columnar form: what the decoder hands the per-sensor operators.

One :class:`SampleBatch` holds samples of ONE sensor from one or more input
messages, as NumPy arrays, so the per-sensor operators and the Numba kernels
work on whole arrays and never on per-sample Python objects.  Its
:class:`~schemas.provenance.Provenance` keeps where every row came from
(partition, offset, row within the message), so a sample rejected later
(``duplicate``, ``late``, ``channels``) still reaches the dead-letter topic
with its original bytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from operator import itemgetter

import numpy as np

from schemas.provenance import Provenance

__all__ = ["SampleBatch", "SampleRuns"]


class SampleBatch:
    """Samples of one sensor, in arrival order (not necessarily time order).

    Attributes:
        sensor: sensor id.
        t_us: int64 event times, microseconds since the epoch, shape (n,).
        phase: float64 radians, shape (n, C); C fixed per sensor.  For a raw
            sensor (``raw``), its raw values instead (SPEC section 9).
        cell: the sensor's cell label (last one given), or None.
        topic: the source topic (or file path) the rows came from, or None.
        ingested: wall-clock time (epoch seconds) when the earliest row was
            decoded; the start of the ingest-to-event latency.
        provenance: where each row came from and the bytes it arrived as
            (:class:`~schemas.provenance.Provenance`), so a row rejected
            later still yields its dead letter; None for rows with no source
            (generated, replayed from the archive).
        raw: the rows are raw ``value`` samples, not phases.
    """

    def __init__(self, sensor: str, t_us: np.ndarray, phase: np.ndarray, cell: str | None = None, *,
                 topic: str | None = None, ingested: float = math.inf,
                 provenance: Provenance | None = None, raw: bool = False) -> None:
        self.sensor = sensor
        self.t_us = np.asarray(t_us, dtype=np.int64)
        self.phase = np.asarray(phase, dtype=np.float64)
        self.cell = cell
        self.topic = topic
        self.ingested = ingested
        self.provenance = provenance
        self.raw = raw
        n = self.t_us.shape[0]
        if self.phase.ndim != 2 or self.phase.shape[0] != n:
            raise ValueError(f"phase must have shape (n, C) with n = {n}, got {self.phase.shape}")
        if provenance is not None and len(provenance) != n:
            raise ValueError(f"provenance covers {len(provenance)} rows, t_us has {n}")

    def __repr__(self) -> str:
        kind = ", raw" if self.raw else ""
        return f"SampleBatch(sensor={self.sensor!r}, rows={len(self)}, channels={self.channels}, cell={self.cell!r}{kind})"

    def __len__(self) -> int:
        return len(self.t_us)  # called several times per batch: the cheapest form

    @property
    def channels(self) -> int:
        return int(self.phase.shape[1])

    def take(self, index: np.ndarray) -> "SampleBatch":
        """The rows at ``index`` (integer or boolean array), same sensor and cell."""
        idx = np.flatnonzero(index) if index.dtype == np.bool_ else index
        provenance = None if self.provenance is None else self.provenance.take(idx)
        return SampleBatch(self.sensor, self.t_us[idx], self.phase[idx], self.cell, topic=self.topic,
                           ingested=self.ingested, provenance=provenance, raw=self.raw)

    @staticmethod
    def concat(batches: "list[SampleBatch]") -> "SampleBatch":
        """Rows of several batches of the same sensor, in the given order."""
        if not batches:
            raise ValueError("concat needs at least one batch")
        first = batches[0]
        if any(b.sensor != first.sensor for b in batches):
            raise ValueError("concat of batches of different sensors")
        if any(b.raw != first.raw for b in batches):
            raise ValueError("concat of raw and phase batches")
        cell = next((b.cell for b in reversed(batches) if b.cell is not None), None)
        provenance = None
        if any(b.provenance is not None for b in batches):
            provenance = Provenance.concat([b.provenance if b.provenance is not None else Provenance.unknown(len(b))
                                            for b in batches])
        topic = next((b.topic for b in batches if b.topic is not None), None)
        return SampleBatch(
            first.sensor,
            np.concatenate([b.t_us for b in batches]),
            np.concatenate([b.phase for b in batches]),
            cell,
            topic=topic,
            ingested=min(b.ingested for b in batches),
            provenance=provenance,
            raw=first.raw,
        )


class SampleRuns:
    """Samples of many sensors with one channel count and one kind (phase or raw), as columns: one run of
    rows per sensor.

    What the decoder hands a key group: run i holds ``counts[i]`` rows of sensor
    ``names[i]`` (arrival order), after the earlier runs.  No object per sensor
    is made; a run becomes a :class:`SampleBatch` only when one of its rows is
    refused later and needs a dead letter with its original bytes (``batch``).

    Attributes:
        names: the sensor of each run (a sensor may have several runs).
        counts: int64 rows of each run.
        t_us: int64 event times, all rows.
        phase: float64 (n, C), all rows.
        cells: the cell of each run (the last one given), or None when no run has one.
        ingested: wall-clock time (epoch seconds) the rows were decoded.
        batch: run index -> that run as a SampleBatch (with its source positions and bytes).
        raw: the rows are raw ``value`` samples (``phase`` holds the values).

    >>> runs = SampleRuns.of([SampleBatch("a", np.array([1, 2]), np.zeros((2, 1))),
    ...                       SampleBatch("b", np.array([5]), np.ones((1, 1)), cell="c")])
    >>> runs.names, runs.counts.tolist(), runs.cells, runs.batch(1).sensor, len(runs)
    (['a', 'b'], [2, 1], [None, 'c'], 'b', 3)
    """

    __slots__ = ("names", "counts", "t_us", "phase", "cells", "ingested", "batch", "raw")

    def __init__(self, names: list[str], counts: np.ndarray, t_us: np.ndarray, phase: np.ndarray,
                 cells: list[str | None] | None, ingested: float, batch: Callable[[int], SampleBatch],
                 raw: bool = False) -> None:
        self.names, self.counts, self.t_us, self.phase = names, counts, t_us, phase
        self.cells, self.ingested, self.batch, self.raw = cells, ingested, batch, raw

    def __len__(self) -> int:
        return int(self.t_us.shape[0])

    def __getstate__(self):
        # Sent to another process: the runs' batches are made now (the decoder's arrays stay behind).
        batches = [self.batch(i) for i in range(len(self.names))]
        return {"names": self.names, "counts": self.counts, "t_us": self.t_us, "phase": self.phase,
                "cells": self.cells, "ingested": self.ingested, "batches": batches, "raw": self.raw}

    def __setstate__(self, state):
        batches = state.pop("batches")
        for k, v in state.items():
            setattr(self, k, v)
        self.batch = batches.__getitem__

    @property
    def channels(self) -> int:
        return int(self.phase.shape[1])

    @staticmethod
    def of(batches: "list[SampleBatch]") -> "SampleRuns":
        """Batches of one channel count and kind as runs (one run per batch, in order)."""
        if any(b.raw != batches[0].raw for b in batches):
            raise ValueError("runs of raw and phase batches")
        cells = [b.cell for b in batches]
        return SampleRuns([b.sensor for b in batches], np.array([len(b) for b in batches], np.int64),
                          np.concatenate([b.t_us for b in batches]) if len(batches) > 1 else batches[0].t_us,
                          np.concatenate([b.phase for b in batches]) if len(batches) > 1 else batches[0].phase,
                          cells if any(c is not None for c in cells) else None,
                          min(b.ingested for b in batches), batches.__getitem__, batches[0].raw)

    @staticmethod
    def blocks(batches: "list[SampleBatch]") -> "list[SampleRuns]":
        """Batches as blocks of runs: consecutive batches of one channel count and kind form one block.

        >>> [len(b.names) for b in SampleRuns.blocks([SampleBatch("a", np.array([1]), np.zeros((1, 1))),
        ...     SampleBatch("b", np.array([1]), np.zeros((1, 1))), SampleBatch("c", np.array([1]), np.zeros((1, 1)), raw=True)])]
        [2, 1]
        """
        out, i = [], 0
        while i < len(batches):
            j = i + 1
            while j < len(batches) and (batches[j].channels, batches[j].raw) == (batches[i].channels, batches[i].raw):
                j += 1
            out.append(SampleRuns.of(batches[i:j]))
            i = j
        return out

    def select(self, runs: np.ndarray) -> "SampleRuns":
        """The runs at ``runs`` (sorted indices), as runs of their own."""
        starts = np.cumsum(self.counts) - self.counts
        counts = self.counts[runs]
        firsts = np.cumsum(counts) - counts
        rows = np.repeat(starts[runs] - firsts, counts) + np.arange(int(counts.sum()))
        idx = runs.tolist()
        return SampleRuns(_picked(self.names, idx), self.counts[runs], self.t_us[rows], self.phase[rows],
                          None if self.cells is None else _picked(self.cells, idx), self.ingested,
                          lambda k, batch=self.batch, idx=idx: batch(idx[k]), self.raw)


def _picked(items: list, idx: list[int]) -> list:
    """``[items[i] for i in idx]`` in one C-level call."""
    if len(idx) < 2:
        return [items[i] for i in idx]
    return list(itemgetter(*idx)(items))
