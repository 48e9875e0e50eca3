"""The archive's Bytewax sink: one writer thread per dataset (SPEC section 5).
"""

from __future__ import annotations

import collections
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from connectors.archive.writer import ArchiveWriter
from connectors.metrics import metrics
from schemas.datasets import DATASETS

__all__ = ["ArchiveSink", "PendingRows"]

@dataclass(frozen=True)
class PendingRows:
    """Rows of one dataset not built yet: ``builder(*args, pieces)`` returns their table.

    A dataflow step hands these to :class:`ArchiveSink` instead of a table, so
    the table is built on the dataset's writer thread.  Pending rows that
    follow each other with the same ``builder`` and ``args`` are *joined* there
    (their ``pieces`` concatenated, order kept), so the rows of many small
    batches become one table and cost one build and one conform.

    ``builder`` must be a module-level function (picklable) and build a table
    whose rows are those of the pieces in order.

    >>> def ints(name, pieces):
    ...     return pa.table({name: [x for piece in pieces for x in piece]})
    >>> a, b = PendingRows(ints, ("n",), [[1, 2]]), PendingRows(ints, ("n",), [[3]])
    >>> a.joins(b), a.join(b)()["n"].to_pylist()
    (True, [1, 2, 3])
    """

    builder: Callable[..., pa.Table]
    args: tuple[Any, ...]
    pieces: list[Any]
    #: Optional ``runs(pieces) -> (rows per piece, key per piece)``: each piece's
    #: rows share one row key (:data:`ROW_KEYS`), so the writer need not look.
    runs: Callable[[list[Any]], tuple[list[int], list[tuple]]] | None = None

    def __call__(self) -> pa.Table:
        return self.builder(*self.args, self.pieces)

    def key_runs(self) -> tuple[np.ndarray, list[tuple]] | None:
        """(first row of each piece with rows, its key), or None without ``runs``."""
        if self.runs is None:
            return None
        counts, keys = self.runs(self.pieces)
        sizes = np.asarray(counts, np.int64)
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1])) if sizes.size else sizes
        keep = sizes > 0
        return starts[keep], [k for k, n in zip(keys, counts) if n > 0]

    def joins(self, other: object) -> bool:
        """True when ``other`` builds rows the same way (same builder, equal args)."""
        return (isinstance(other, PendingRows) and other.builder is self.builder and other.runs is self.runs
                and (other.args is self.args or other.args == self.args))

    def join(self, other: "PendingRows") -> "PendingRows":
        """These rows followed by ``other``'s (which must :meth:`joins` them)."""
        return PendingRows(self.builder, self.args, [*self.pieces, *other.pieces], self.runs)


def _joined(values: list[Any]) -> list[Any]:
    """``values`` with runs of joinable :class:`PendingRows` joined into one each."""
    out: list[Any] = []
    for v in values:
        if out and isinstance(v, PendingRows) and isinstance(out[-1], PendingRows) and out[-1].joins(v):
            out[-1] = out[-1].join(v)
        else:
            out.append(v)
    return out


class _ArchivePartition(StatefulSinkPartition[pa.Table, None]):
    """One dataset's writer inside the sink, run on a thread of its own.

    Conforming, encoding, hashing and writing files mostly run outside the
    GIL, so the writer thread overlaps them with the dataflow's computing.
    Batches go into an inbox; the thread takes everything in it at once, in
    order, so while it is busy the batches that arrive gather and are written
    (and their :class:`PendingRows` built) together: many small batches cost
    one table, not one each.  At most ``_MAX_WAITING`` values wait in the
    inbox, so a slow disk slows the flow down instead of filling memory.
    ``snapshot`` (when ``durable``) and ``close`` wait for everything handed
    over, and a writer error is raised in the flow at the next batch, snapshot
    or close: nothing is dropped silently.  Without ``durable`` a snapshot
    starts writing what is buffered and returns at once.

    Metrics: each write and flush of the thread is observed in
    ``becomingone_archive_write_seconds{dataset}``; each snapshot's time in
    ``becomingone_snapshot_seconds`` and its end (and the partition's start)
    in ``becomingone_snapshot_timestamp_seconds``.  Bytewax snapshots a sink
    partition only at the end of an epoch in which it was handed rows, so
    ``becomingone_snapshot_pending_seconds`` shows how long the oldest rows
    handed over since the last snapshot have waited for one (0: none).
    """

    _MAX_WAITING = 1024
    # The thread is handed the inbox once this many batches wait or the oldest has
    # waited this long (checked as batches arrive; snapshots and close hand it
    # over at once): a drain has a fixed cost, and a flow of small batches would
    # otherwise pay it hundreds of times a second.
    _DRAIN_BATCHES = 64
    _DRAIN_SECONDS = 0.1

    def __init__(self, writer: ArchiveWriter,
                 siblings: Callable[[], list["_ArchivePartition"]] | None = None, *, durable: bool = True) -> None:
        self.writer = writer
        self.durable = durable
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"archive-{writer.dataset}")
        self._pending: collections.deque[Future[Any]] = collections.deque()
        self._inbox: collections.deque[Any] = collections.deque()  # appends and pops are thread-safe
        # The other datasets' partitions of this process: a snapshot starts their
        # flushes too, so the epoch's flushes run side by side, not one after another.
        self._siblings = siblings or (lambda: [self])
        self._flush_lock = threading.Lock()
        self._flush: tuple[int, Future[Any]] | None = None   # (batches handed over before it, future)
        self._handed = 0
        self._closed = False
        self._waiting_since: float | None = None
        m = metrics()
        self._write_seconds = m.archive_write.labels(writer.dataset)
        self._snapshot_seconds, self._snapshot_time = m.snapshot_seconds, m.snapshot_timestamp
        self._snapshot_time.set(time.time())  # "no snapshot for a while" counts from the start
        self._unsnapshotted_since: float | None = None  # monotonic time of the oldest rows no snapshot covers
        _track(self)

    def _settle(self, keep: int) -> None:
        """Wait until at most ``keep`` calls are pending; raise the first failure."""
        while self._pending and (len(self._pending) > keep or self._pending[0].done()):
            self._pending.popleft().result()

    def _submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self._settle(1)
        self._pending.append(self._thread.submit(fn, *args))

    def write_batch(self, values: list[pa.Table | pa.RecordBatch | Callable[[], pa.Table]]) -> None:
        if not values:
            return
        self._inbox.extend(values)
        self._handed += 1
        self._settle(2)
        now = time.monotonic()
        if self._unsnapshotted_since is None:
            self._unsnapshotted_since = now
        if self._waiting_since is None:
            self._waiting_since = now
        if len(self._inbox) < self._DRAIN_BATCHES and now - self._waiting_since < self._DRAIN_SECONDS:
            return
        self._waiting_since = None
        # A drain that has not started yet will take these values too.
        if not self._pending or self._pending[-1].running() or self._pending[-1].done():
            self._pending.append(self._thread.submit(self._drain))
        if len(self._inbox) >= self._MAX_WAITING:
            self._settle(0)

    def _drain(self) -> None:
        values = []
        while self._inbox:
            values.append(self._inbox.popleft())
        if values:
            started = time.perf_counter()
            self._write(values)
            self._write_seconds.observe(time.perf_counter() - started)

    def _write(self, values: list[pa.Table | pa.RecordBatch | Callable[[], pa.Table]]) -> None:
        # On the writer thread: tables given as builders are built here.
        joined = _joined(values)
        tables = [v if isinstance(v, pa.Table) else pa.Table.from_batches([v]) if isinstance(v, pa.RecordBatch)
                  else v() for v in joined]
        if len(joined) == 1 and isinstance(joined[0], PendingRows):
            self.writer.write(tables[0], key_runs=joined[0].key_runs())
        elif all(t.schema.equals(tables[0].schema) for t in tables[1:]):
            self.writer.write(pa.concat_tables(tables))
        else:  # differently typed but castable inputs: conform one by one
            for table in tables:
                self.writer.write(table)

    def _drain_and_flush(self) -> None:
        self._drain()
        started = time.perf_counter()
        self.writer.flush()
        self._write_seconds.observe(time.perf_counter() - started)

    def start_flush(self) -> None:
        """Start writing everything handed over so far to disk, unless a flush that
        covers it has started already; :meth:`snapshot` waits for it."""
        with self._flush_lock:
            if self._closed:
                return
            if self._flush is None or self._flush[0] < self._handed:
                self._flush = (self._handed, self._thread.submit(self._drain_and_flush))

    def snapshot(self) -> None:
        started = time.perf_counter()
        self._snapshot()
        self._snapshot_seconds.observe(time.perf_counter() - started)
        self._snapshot_time.set(time.time())
        # Bytewax calls write_batch and snapshot on the same worker thread: nothing came in meanwhile.
        self._unsnapshotted_since = None
        return None

    def _snapshot(self) -> None:
        # Bytewax snapshots at the end of every epoch (10 s by default, with or
        # without recovery); with recovery that epoch is never replayed, so
        # buffered rows go to disk now or a crash after it would lose them.
        # The archive itself is the state: a resumed writer re-reads its
        # high-water marks from disk.  Bytewax takes the datasets' snapshots one
        # after another: the first one starts every dataset's flush.
        if not self.durable:
            # Nothing is ever resumed from this snapshot: write the rows, but let the
            # flow go on meanwhile (waiting would stall it at every epoch for the
            # length of a flush).  A failure is raised at the next batch, snapshot or close.
            self._settle(len(self._pending))  # raises a failure that has happened
            self._pending.append(self._thread.submit(self._drain_and_flush))
            return None
        for part in self._siblings():
            part.start_flush()
        self.start_flush()  # covers batches handed over since a sibling started it
        with self._flush_lock:
            flush, self._flush = self._flush, None
        assert flush is not None
        self._settle(0)
        flush[1].result()
        return None

    def close(self) -> None:
        self._unsnapshotted_since = None
        with self._flush_lock:
            self._closed = True
            flush, self._flush = self._flush, None
        try:
            self._submit(self._drain)
            self._settle(0)
            if flush is not None:
                flush[1].result()
        finally:
            self._thread.shutdown(wait=True)
            self.writer.close()


_partitions_lock = threading.Lock()
_partitions: weakref.WeakSet[_ArchivePartition] = weakref.WeakSet()


def _track(part: _ArchivePartition) -> None:
    """Count ``part`` in ``becomingone_snapshot_pending_seconds`` (computed at each scrape)."""
    with _partitions_lock:
        if not _partitions:
            metrics().snapshot_pending.set_function(_oldest_unsnapshotted)
        _partitions.add(part)


def _oldest_unsnapshotted() -> float:
    """Seconds the oldest rows handed to a partition of this process have waited for a snapshot."""
    now = time.monotonic()
    with _partitions_lock:
        since = [p._unsnapshotted_since for p in _partitions]
    return max((now - t for t in since if t is not None), default=0.0)


class ArchiveSink(FixedPartitionedSink[pa.Table, None]):
    """Bytewax sink writing ``(dataset_name, pa.Table)`` items into the archive.

    The value may also be a picklable zero-argument callable returning the
    table, such as :class:`PendingRows`; it is called on the dataset's writer
    thread (see :func:`flows.emit.deferred`).

    Each enabled dataset is one partition, so Bytewax runs exactly one
    :class:`ArchiveWriter` per dataset in the whole cluster (on the worker it
    picks as primary).  Rows are flushed by ``flush_rows`` / ``flush_seconds``
    when items arrive, and at the end of the run (partition close).

    :meth:`list_parts` returns the enabled datasets sorted by name: Bytewax
    routes an item to ``sorted(all partitions)[part_fn(key) % n]``, so
    ``part_fn`` returns the index into that sorted list.

    Args:
        root: the archive root.
        datasets: names of the datasets to write (keys of
            :data:`schemas.datasets.DATASETS`); items for any other dataset
            are refused by :meth:`part_fn`.
        flush_rows, flush_seconds: passed to each :class:`ArchiveWriter`.
        durable_snapshots: True (for a flow that may run with Bytewax
            recovery): each epoch's snapshot returns only once the rows handed
            over before it are on disk, so a resume from it loses none.  False
            (no recovery): the snapshot starts writing them and the flow goes
            on; the end of the flow still waits for every row.

    Raises:
        ValueError: no dataset, or an unknown one.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        datasets: Iterable[str],
        *,
        flush_rows: int = 100_000,
        flush_seconds: float = 5.0,
        durable_snapshots: bool = True,
        signing_key: bytes | None = None,
    ) -> None:
        names = sorted(set(datasets))
        unknown = [n for n in names if n not in DATASETS]
        if unknown:
            raise ValueError(
                f"unknown archive dataset(s) {', '.join(map(repr, unknown))}; known: {', '.join(DATASETS)}"
            )
        if not names:
            raise ValueError("ArchiveSink needs at least one dataset")
        if flush_rows < 1 or not flush_seconds >= 0:
            raise ValueError(f"bad flush limits: flush_rows={flush_rows}, flush_seconds={flush_seconds}")
        self.root = root
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.durable_snapshots = durable_snapshots
        self.signing_key = signing_key
        self._parts = names
        self._init_runtime()

    def _init_runtime(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[str, _ArchivePartition] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"], state["_open"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    def _partitions(self) -> list[_ArchivePartition]:
        with self._lock:
            return list(self._open.values())

    def list_parts(self) -> list[str]:
        """The enabled dataset names, sorted (every worker can write every dataset)."""
        return list(self._parts)

    def part_fn(self, item_key: str) -> int:
        """Index of dataset ``item_key`` in the sorted partition list."""
        try:
            return self._parts.index(item_key)
        except ValueError:
            raise ValueError(
                f"archive dataset {item_key!r} is not enabled in this sink; enabled: {', '.join(self._parts)}"
            ) from None

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _ArchivePartition:
        """A partition wrapping a new :class:`ArchiveWriter` for dataset ``for_part``."""
        with self._lock:
            # Bytewax may rebuild a partition (on resume) before dropping the
            # old one; close it first so only one writer touches the directory.
            old = self._open.pop(for_part, None)
            if old is not None:
                old.close()
            writer = ArchiveWriter(
                self.root, for_part, flush_rows=self.flush_rows, flush_seconds=self.flush_seconds,
                signing_key=self.signing_key,
            )
            part = _ArchivePartition(writer, self._partitions, durable=self.durable_snapshots)
            self._open[for_part] = part
            return part
