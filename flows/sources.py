"""The dataflow's inputs: synthetic sensors, phase files, Kafka, and the archive (replay).

Every source is a Bytewax ``FixedPartitionedSource`` whose items are either
:class:`~operators.decode.RawMessage` (bytes in one of the wire formats of
SPEC section 4, decoded and validated by the decode step) or ready
:class:`~operators.samples.SampleBatch` es (the synthetic sensors and the
archive hold only valid samples).  Each partition ends when
:func:`request_stop` is called, so ``becomingone run`` can stop on Ctrl-C
and still drain the flow as at end of input.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from connectors.kafka.health import set_draining
from operators.decode import RawMessage
from operators.samples import SampleBatch
from schemas.config import FILE_BATCH_ROWS, Config, FileSource, KafkaSource, SyntheticSource
from schemas.messages import ARROW_STREAM_CONTENT_TYPE, CONTENT_TYPE_HEADER

__all__ = ["ArchiveInput", "ArchiveSlices", "PhaseFile", "SyntheticSamples", "clear_stop_request", "kafka_source",
           "request_stop", "stop_requested"]


# --------------------------------------------------------------------------
# Sources.

_stop = threading.Event()


def request_stop() -> None:
    """Make every source of this process end its input now (graceful stop).

    The dataflow then drains: what was read is integrated, archived and
    published, and the archive files are closed; nothing accepted is lost.
    A flow that can be resumed (Bytewax recovery) keeps the grid points that
    are not final yet in its snapshot; otherwise they are decided as at end
    of input.
    """
    _stop.set()
    set_draining(True)  # output for an unreachable Kafka cluster no longer holds the stop


def stop_requested() -> bool:
    """True once :func:`request_stop` was called (and not cleared since)."""
    return _stop.is_set()


def clear_stop_request() -> None:
    """Let sources built from now on read again (a new run in the same process)."""
    _stop.clear()
    set_draining(False)


class _Stoppable(StatefulSourcePartition[Any, Any]):
    """Wraps a source partition so that :func:`request_stop` ends it."""

    def __init__(self, inner: StatefulSourcePartition[Any, Any]) -> None:
        self.inner = inner

    def next_batch(self) -> Iterable[Any]:
        if _stop.is_set():
            raise StopIteration
        return self.inner.next_batch()

    def next_awake(self):
        return self.inner.next_awake()

    def snapshot(self) -> Any:
        return self.inner.snapshot()

    def close(self) -> None:
        self.inner.close()


class _SyntheticPartition(StatefulSourcePartition[SampleBatch, int]):
    def __init__(self, source: SyntheticSource, resume: int | None) -> None:
        from connectors.synthetic import SyntheticSensor, synthetic_batches

        sensors = [SyntheticSensor(s.name, s.kind, freq_hz=s.freq_hz, channels=s.channels) for s in source.sensors]
        self._cells = {s.name: s.cell for s in source.sensors}
        self._batches = synthetic_batches(sensors, period_us=source.period_us, duration_us=source.duration_us,
                                          start_us=source.start_us, seed=source.seed)
        self._done = 0
        self._per_round = len(sensors)
        # Resume by regenerating: the generator is deterministic.
        for _ in range(resume or 0):
            next(self._batches)
            self._done += 1

    def next_batch(self) -> list[SampleBatch]:
        out = []
        for _ in range(self._per_round):
            try:
                name, t_us, phase = next(self._batches)
            except StopIteration:
                if not out:
                    raise
                break
            self._done += 1
            out.append(SampleBatch(name, t_us, phase, self._cells[name], topic=None, ingested=time.time()))
        return out

    def snapshot(self) -> int:
        return self._done


class SyntheticSamples(FixedPartitionedSource[SampleBatch, int]):
    """The config's synthetic sensors as one input partition (already valid samples, no decode)."""

    def __init__(self, source: SyntheticSource) -> None:
        self.source = source

    def list_parts(self) -> list[str]:
        return ["synthetic"]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _Stoppable:
        return _Stoppable(_SyntheticPartition(self.source, resume_state))


class _FilePartition(StatefulSourcePartition[RawMessage, int]):
    """A phase file as input messages, ``batch_rows`` rows per call; resume state: rows (lines) already emitted.

    JSON lines: each line is one JSON input message (offset = line index), so
    every bad line gets its own dead letter with its own bytes.  CSV,
    Parquet, Arrow: each chunk of ``batch_rows`` rows (whatever the file's own
    batches) that validates as a whole becomes one Arrow IPC message (offset =
    the chunk's first row).  A chunk with a bad row is validated again in
    pieces of :data:`_FALLBACK_ROWS`; a piece with a bad row is sent row by row
    as JSON samples (offset = the row), so only the bad rows are
    dead-lettered and the file is read to its end.
    """

    #: Rows of the pieces a chunk with a bad row is checked in again.
    _FALLBACK_ROWS = 4096

    def __init__(self, path: str, fmt: str, resume: int | None, batch_rows: int = FILE_BATCH_ROWS) -> None:
        from connectors.phase_files import phase_record_batches

        if batch_rows < 1:
            raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
        self._path, self._fmt = path, fmt
        self._rows = batch_rows
        self._done = resume or 0
        if fmt == "jsonl":
            self._lines = self._read_lines()
        else:
            self._batches = phase_record_batches(path, fmt, chunk_rows=batch_rows, fill=True)

    def _read_lines(self) -> Iterable[tuple[int, bytes]]:
        with open(self._path, "rb") as f:
            for index, line in enumerate(f):
                if index >= self._done and line.strip():
                    yield index, line.rstrip(b"\r\n")

    def next_batch(self) -> list[RawMessage]:
        if self._fmt == "jsonl":
            out = []
            for index, line in self._lines:
                out.append(RawMessage(None, line, None, self._path, None, index))
                self._done = index + 1
                if len(out) == self._rows:
                    break
            if not out:
                raise StopIteration
            return out
        while True:
            batch, first = next(self._batches)
            if first + batch.num_rows > self._done:
                break
        if first < self._done:  # resumed inside this chunk (a snapshot taken with another batch_rows)
            batch, first = batch.slice(self._done - first), self._done
        self._done = first + batch.num_rows
        return self._messages(batch, first)

    def _messages(self, batch, first: int) -> list[RawMessage]:
        from connectors.phase_files import PhaseFileError, phase_columns
        import pyarrow as pa

        from connectors.kafka import arrow_record_batch
        from operators.decode import TableValue

        try:
            columns = phase_columns(batch, self._path, first, self._fmt)
        except PhaseFileError:
            if batch.num_rows > self._FALLBACK_ROWS:
                return [m for start in range(0, batch.num_rows, self._FALLBACK_ROWS)
                        for m in self._messages(batch.slice(start, self._FALLBACK_ROWS), first + start)]
            return [RawMessage(None, _row_json(row), None, self._path, None, first + i)
                    for i, row in enumerate(batch.to_pylist())]
        # Handed over as the table itself (no IPC stream written and read back); it is the stream's bytes
        # where bytes are needed (a dead letter's original).
        value = TableValue(pa.Table.from_batches([arrow_record_batch(columns)]))
        return [RawMessage(None, value, [(CONTENT_TYPE_HEADER, ARROW_STREAM_CONTENT_TYPE)], self._path, None, first)]

    def snapshot(self) -> int:
        return self._done


def _row_json(row: dict[str, Any]) -> bytes:
    """A file row as a JSON input sample; values the decoder will refuse are kept as they are."""
    import datetime as dt
    import json

    t = row.get("t")
    if isinstance(t, dt.datetime):
        t = (t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)).isoformat()
    elif isinstance(t, str):  # CSV text: epoch seconds stay numbers, ISO text stays text
        try:
            t = float(t)
        except ValueError:
            pass
    phase = row.get("phase")
    if isinstance(phase, str):  # CSV list text such as "[0.5, -0.4]"
        try:
            parts = [float(x) for x in phase.strip().strip("[]").replace(";", ",").split(",") if x.strip()]
            phase = parts[0] if len(parts) == 1 and "[" not in phase else parts
        except ValueError:
            pass
    obj = {"sensor": row.get("sensor"), "t": t, "phase": phase}
    if row.get("cell") is not None:
        obj["cell"] = row["cell"]
    return json.dumps(obj, default=str).encode("utf-8")


class PhaseFile(FixedPartitionedSource[RawMessage, int]):
    """A CSV, Parquet, Arrow or JSON-lines file as one input partition, ``source.batch_rows`` rows per call."""

    def __init__(self, source: FileSource) -> None:
        self.source = source

    def list_parts(self) -> list[str]:
        return [f"file:{self.source.path}"]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _Stoppable:
        from connectors.phase_files import check_phase_file

        return _Stoppable(_FilePartition(self.source.path, check_phase_file(self.source.path, self.source.format),
                                         resume_state, self.source.batch_rows))


def kafka_source(config: Config):
    """The Kafka source over ``source.topic`` (:class:`connectors.kafka.TopicSource`),
    with the config's client settings; it creates the flow's topics first where
    the broker allows it."""
    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END

    from connectors.kafka import admin_settings, consumer_settings
    from connectors.kafka import TopicSource

    src = config.source
    assert isinstance(src, KafkaSource)
    # Offsets are Bytewax's, kept by its recovery; they are committed to group.id for lag tools only.
    settings = consumer_settings(config.kafka, src.group_id, from_beginning=src.from_beginning,
                                 client_id=config.becomingone.name)
    settings.pop("auto.offset.reset", None)  # the start is starting_offset or Bytewax's resume state
    topics = [src.topic] + [getattr(config.sink.topics, r) for r in ("collapse", "witness", "sync", "dlq")]

    class PhaseTopic(TopicSource):
        def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _Stoppable:
            return _Stoppable(super().build_part(step_id, for_part, resume_state))

    return PhaseTopic(settings, src.topic, OFFSET_BEGINNING if src.from_beginning else OFFSET_END, src.batch_size,
                      tail=not src.stop_at_end, admin=admin_settings(config.kafka, client_id=config.becomingone.name),
                      create_topics=topics, unavailable_timeout=config.kafka.unavailable_timeout)


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
        phase_col = table["phase"].combine_chunks()
        flat = phase_col.values.to_numpy()
        offsets = phase_col.offsets.to_numpy()
        cells = table["cell"].to_pylist() if src.keep_cells else None
        # One slice per `slice_us` of event time; inside it one batch per sensor,
        # each sensor's rows in archive order (their time order).
        bucket = (t_us - t_us.min()) // src.slice_us
        for b in np.unique(bucket):
            rows = np.flatnonzero(bucket == b)
            out = []
            for c in np.unique(code[rows]):
                mine = rows[code[rows] == c]
                width = int(offsets[mine[0] + 1] - offsets[mine[0]])
                phase = flat[offsets[mine][:, None] + np.arange(width)]
                cell = None if cells is None else cells[int(mine[-1])]
                out.append(SampleBatch(names.dictionary[int(c)].as_py(), t_us[mine], phase, cell,
                                       topic=None, ingested=time.time()))
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

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _Stoppable:
        return _Stoppable(ArchiveSlices(self, resume_state))
