"""A phase file as a Bytewax source: :class:`PhaseFile` (``source.kind: file``).

Its items are :class:`~operators.decode.RawMessage` s in one of the wire
formats of SPEC section 4 (JSON lines as they are, other formats as Arrow
tables), decoded and validated by the flow's decode step like messages of a
topic, so a bad row becomes a dead letter with its own bytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from schemas.raw_messages import RawMessage
from schemas.config import FILE_BATCH_ROWS, FileSource
from schemas.messages import ARROW_STREAM_CONTENT_TYPE, CONTENT_TYPE_HEADER

__all__ = ["PhaseFile"]


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
        from schemas.raw_messages import TableValue

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

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _FilePartition:
        from connectors.phase_files import check_phase_file

        return _FilePartition(self.source.path, check_phase_file(self.source.path, self.source.format),
                              resume_state, self.source.batch_rows)
