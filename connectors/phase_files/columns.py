"""A chunk of phase samples as columns (:class:`PhaseColumns`), and the error of a file that is not one.

:class:`PhaseColumns` is what every phase-file reader yields and what the
producer sends: whole Arrow and NumPy columns, never per-row Python objects.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["PHASE_COLUMNS", "PHASE_TYPE", "RAW_COLUMN", "REQUIRED_COLUMNS", "PhaseColumns", "PhaseFileError"]

#: Required columns, then the optional one.
PHASE_COLUMNS: tuple[str, ...] = ("sensor", "t", "phase", "cell")
#: The columns every file must have.
REQUIRED_COLUMNS = ("sensor", "t", "phase")
#: The column of a raw sensor's samples, instead of ``phase`` (SPEC section 9).
RAW_COLUMN = "value"
#: The Arrow type of the phase column: one list of radians per sample.
PHASE_TYPE = pa.list_(pa.float64())


class PhaseFileError(ValueError):
    """A file that cannot be read as phase samples.

    Attributes:
        path: the file.
        column: the column at fault, or None when the problem is the file itself.
    """

    def __init__(self, path: str | os.PathLike[str], problem: str, column: str | None = None) -> None:
        self.path = os.fspath(path)
        self.column = column
        super().__init__(f"{self.path}: {problem}")


@dataclass(frozen=True)
class PhaseColumns:
    """A chunk of phase samples as columns, in the order they were read.

    Attributes:
        sensor: utf8 array, no nulls.
        t_us: int64 event times, microseconds since the Unix epoch.
        phase: ``list<float64>`` array, radians, one list per sample (no nulls).
        cell: utf8 array; null where a sample has no cell.
        origin: where the rows came from (file path, ``synthetic``), for messages.
        first_row: index of the first row within ``origin`` (0-based).
        extra: further float64 columns as ``(name, array)`` pairs (a PMU's
            frequency and ROCOF), sent as extra Arrow columns, which
            consumers ignore.
        raw: ``phase`` holds raw samples (microvolts, ...), sent as the
            ``value`` column (SPEC section 9).
    """

    sensor: pa.Array
    t_us: np.ndarray
    phase: pa.Array
    cell: pa.Array
    origin: str = ""
    first_row: int = 0
    extra: tuple[tuple[str, np.ndarray], ...] = ()
    raw: bool = False

    def __post_init__(self) -> None:
        n = len(self.t_us)
        if not (len(self.sensor) == len(self.phase) == len(self.cell) == n):
            raise ValueError(
                f"columns differ in length: sensor {len(self.sensor)}, t_us {n}, "
                f"phase {len(self.phase)}, cell {len(self.cell)}"
            )
        for name, values in self.extra:
            if name in PHASE_COLUMNS or name == RAW_COLUMN or len(values) != n:
                raise ValueError(f"extra column {name!r}: {len(values)} values for {n} rows, or a reserved name")

    def __len__(self) -> int:
        return int(len(self.t_us))

    @classmethod
    def from_numpy(
        cls,
        sensor: str,
        t_us: np.ndarray,
        phase: np.ndarray,
        cell: str | None = None,
        *,
        origin: str = "",
        first_row: int = 0,
        raw: bool = False,
    ) -> PhaseColumns:
        """One sensor's samples from arrays: ``t_us`` shape (n,), ``phase`` shape (n,) or (n, C)
        (raw values with ``raw``).

        >>> cols = PhaseColumns.from_numpy("pmu-7", np.array([1, 2]), np.zeros((2, 3)))
        >>> len(cols), cols.channels().tolist()
        (2, [3, 3])
        """
        t = np.ascontiguousarray(t_us, dtype=np.int64)
        values = np.asarray(phase, dtype=np.float64)
        if values.ndim == 1:
            values = values[:, None]
        if values.ndim != 2 or values.shape[0] != t.shape[0]:
            raise ValueError(f"phase must have shape (n,) or (n, C) with n = {t.shape[0]}, got {values.shape}")
        n, channels = values.shape
        lists = pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), channels).cast(PHASE_TYPE)
        return cls(
            sensor=pa.repeat(pa.scalar(sensor, pa.string()), n),
            t_us=t,
            phase=lists,
            cell=pa.repeat(pa.scalar(cell, pa.string()), n),
            origin=origin,
            first_row=first_row,
            raw=raw,
        )

    def slice(self, offset: int, length: int | None = None) -> PhaseColumns:
        """Rows ``offset`` to ``offset + length`` (zero-copy for the Arrow columns)."""
        end = len(self) if length is None else min(len(self), offset + length)
        return PhaseColumns(
            self.sensor.slice(offset, end - offset),
            self.t_us[offset:end],
            self.phase.slice(offset, end - offset),
            self.cell.slice(offset, end - offset),
            self.origin,
            self.first_row + offset,
            tuple((name, values[offset:end]) for name, values in self.extra),
            self.raw,
        )

    def take(self, rows: np.ndarray) -> PhaseColumns:
        """The rows at the indices ``rows``, in that order (origin and first row kept)."""
        indices = pa.array(rows, pa.int64())
        return PhaseColumns(self.sensor.take(indices), self.t_us[rows], self.phase.take(indices),
                            self.cell.take(indices), self.origin, self.first_row,
                            tuple((name, values[rows]) for name, values in self.extra), self.raw)

    @staticmethod
    def concat(chunks: Sequence[PhaseColumns]) -> PhaseColumns:
        """The rows of several chunks, in order (origin and first row of the first)."""
        if not chunks:
            raise ValueError("concat needs at least one chunk")
        if len(chunks) == 1:
            return chunks[0]
        if any(c.raw != chunks[0].raw for c in chunks):
            raise ValueError("concat of raw and phase chunks")
        return PhaseColumns(
            pa.concat_arrays([c.sensor for c in chunks]),
            np.concatenate([c.t_us for c in chunks]),
            pa.concat_arrays([c.phase for c in chunks]),
            pa.concat_arrays([c.cell for c in chunks]),
            chunks[0].origin,
            chunks[0].first_row,
            _concat_extra(chunks),
            chunks[0].raw,
        )

    def channels(self) -> np.ndarray:
        """Number of phase channels of each row (int32 array)."""
        return pc.list_value_length(self.phase).to_numpy(zero_copy_only=False)

    def sensors(self) -> list[str]:
        """The distinct sensor ids, in order of first appearance."""
        return list(dict.fromkeys(pc.unique(self.sensor).to_pylist()))

    def check_values(self) -> None:
        """Refuse rows no consumer could use: an empty phase list, a NaN or infinite phase.

        The readers only check structure; this is for producers, which should
        not publish such rows (JSON cannot even carry NaN).

        Raises:
            PhaseFileError: naming :attr:`origin`, the column and the row (counting from 1).
        """
        kind = "raw value" if self.raw else "phase"
        lengths = self.channels()
        empty = np.flatnonzero(lengths == 0)
        values = pc.list_flatten(self.phase).to_numpy(zero_copy_only=False)
        bad_values = np.flatnonzero(~np.isfinite(values))
        bad_rows = []
        if empty.size:
            bad_rows.append((int(empty[0]), f"has no {kind}s (an empty list)" if self.raw else "has no phase values (an empty list)"))
        if bad_values.size:
            # The flat index back to its row: the row whose offsets span it.
            offsets = self.phase.offsets.to_numpy(zero_copy_only=False) - self.phase.offsets[0].as_py()
            row = int(np.searchsorted(offsets, bad_values[0], side="right") - 1)
            bad_rows.append((row, f"has a {kind} that is {float(values[bad_values[0]])!r}"))
        if bad_rows:
            row, why = min(bad_rows)
            raise PhaseFileError(self.origin, f"row {self.first_row + row + 1} {why}", column=RAW_COLUMN if self.raw else "phase")


def _concat_extra(chunks: Sequence[PhaseColumns]) -> tuple[tuple[str, np.ndarray], ...]:
    """The extra columns of chunks that all have the same ones; none when they differ."""
    names = [tuple(name for name, _ in c.extra) for c in chunks]
    if any(n != names[0] for n in names):
        raise ValueError(f"chunks with different extra columns cannot be joined: {sorted(set(names))}")
    return tuple((name, np.concatenate([c.extra[k][1] for c in chunks])) for k, name in enumerate(names[0]))
