"""An archive's input rows as a Bytewax source: :class:`ArchiveInput`, what ``becomingone replay`` reads.

The archive holds only accepted samples, so its items are ready
:class:`~schemas.samples.SampleBatch` es (no decode), in slices of event
time, paced by ``speed``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from schemas.samples import SampleBatch

__all__ = ["ArchiveInput", "ArchiveSlices"]


class ArchiveSlices(StatefulSourcePartition[SampleBatch, int]):
    """The archived input rows of a time range, in slices of event time, paced by ``speed``.

    Resume state: files of the range fully emitted.
    """

    def __init__(self, source: "ArchiveInput", resume: int | None) -> None:
        from connectors.memory import TemporalMemory

        self.source = source
        self.memory = TemporalMemory(source.root)
        self.files = self.memory.files("input", source.start_us, source.end_us)
        self.done = resume or 0
        self.pending: list[list[SampleBatch]] = []  # slices of the file being emitted
        self.t0: int | None = None  # event time of the first slice (pacing)
        self.wall0 = 0.0
        self.due = time.monotonic()

    def _load(self) -> None:
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        table = self.memory.read_file(self.files[self.done])
        self.done += 1
        src = self.source
        t = table["t"].cast("int64")
        mask = pc.and_(pc.greater_equal(t, src.start_us), pc.less_equal(t, src.end_us))
        if src.sensors is not None:
            mask = pc.and_(mask, pc.is_in(table["sensor"], value_set=pa.array(src.sensors, pa.string())))
        table = table.filter(mask)
        if not table.num_rows:
            return
        t_us = table["t"].cast("int64").to_numpy()
        names = table["sensor"].dictionary_encode().combine_chunks()
        code = names.indices.to_numpy()
        # A row holds a phase or (files since raw samples, SPEC section 9) a raw value: the other is null.
        phase_col = table["phase"].combine_chunks()
        raw = ~phase_col.is_valid().to_numpy(zero_copy_only=False)
        if raw.any():
            phase_col = pc.if_else(pa.array(raw), table["value"].combine_chunks(), phase_col)
        flat = phase_col.values.to_numpy()
        offsets = phase_col.offsets.to_numpy()
        cells = table["cell"].to_pylist() if src.keep_cells else None
        # One slice per `slice_us` of event time; inside it one batch per sensor (and kind),
        # each sensor's rows in archive order (their time order).
        bucket = (t_us - t_us.min()) // src.slice_us
        for b in np.unique(bucket):
            rows = np.flatnonzero(bucket == b)
            out = []
            for c in np.unique(code[rows]):
                for kind in (False, True):
                    mine = rows[(code[rows] == c) & (raw[rows] == kind)]
                    if not mine.size:
                        continue
                    width = int(offsets[mine[0] + 1] - offsets[mine[0]])
                    phase = flat[offsets[mine][:, None] + np.arange(width)]
                    cell = None if cells is None else cells[int(mine[-1])]
                    out.append(SampleBatch(names.dictionary[int(c)].as_py(), t_us[mine], phase, cell,
                                           topic=None, ingested=time.time(), raw=kind))
            self.pending.append(out)

    def next_batch(self) -> list[SampleBatch]:
        """The next slice, or [] while it is not due yet (``speed`` > 0; see :attr:`due`)."""
        while not self.pending:
            if self.done >= len(self.files):
                raise StopIteration
            self._load()
        if self.source.speed > 0:
            first = min(int(b.t_us[0]) for b in self.pending[0])
            if self.t0 is None:
                self.t0, self.wall0 = first, time.monotonic()
            # A slice is due when wall time has caught up with its event time / speed.
            self.due = self.wall0 + (first - self.t0) * 1e-6 / self.source.speed
            if time.monotonic() < self.due:
                return []
        return self.pending.pop(0)

    def next_awake(self):
        import datetime as dt

        if self.source.speed <= 0:
            return None
        delay = self.due - time.monotonic()
        return dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=max(delay, 0.0))

    def snapshot(self) -> int:
        return self.done


class ArchiveInput(FixedPartitionedSource[SampleBatch, int]):
    """The ``input/`` dataset of an archive as a source: what ``becomingone replay`` feeds the flow.

    Args:
        root: the archive root to read.
        start_us, end_us: event-time range (inclusive); None = all.
        sensors: only these sensors (None = all).
        speed: event seconds per wall second (2.0 = twice as fast as the
            original); 0 = as fast as possible.
        slice_us: event time per emitted slice.
    """

    def __init__(self, root: str, *, start_us: int | None = None, end_us: int | None = None,
                 sensors: Iterable[str] | None = None, speed: float = 0.0, slice_us: int = 1_000_000,
                 keep_cells: bool = True) -> None:
        if speed < 0:
            raise ValueError(f"speed must be 0 (as fast as possible) or positive, got {speed}")
        self.root = root
        self.start_us = -(2 ** 62) if start_us is None else start_us
        self.end_us = 2 ** 62 if end_us is None else end_us
        self.sensors = None if sensors is None else sorted(set(sensors))
        self.speed = float(speed)
        self.slice_us = int(slice_us)
        self.keep_cells = keep_cells

    def list_parts(self) -> list[str]:
        return [f"archive:{self.root}"]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> ArchiveSlices:
        return ArchiveSlices(self, resume_state)
