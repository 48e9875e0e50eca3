"""What leaves the dataflow: operator values as archive rows and topic messages.

The per-sensor operators produce arrays (:class:`~operators.grid.WindowValues`,
:class:`~operators.sync.SyncValues`, released samples).  This module turns
them into the two output forms of SPEC sections 4 and 5:

* :class:`ArchiveRows`: a columnar ``pyarrow.Table`` of one archive dataset,
  built from whole arrays (no per-row Python for the high-volume datasets);
* :class:`TopicRecord`: one Kafka message (topic role, key, JSON value), or
  :class:`TopicBlock`: many messages of one topic role.

A step's call hands on one :class:`Emitted`: its outputs by destination, a
field per stream, which the step splits into its named streams
(:func:`emitted_streams`).

Both go to the sinks as they are; the dataflow never formats output anywhere
else, so the topic and the archive always agree.
"""

from __future__ import annotations

import binascii
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import bytewax.operators as op
import numpy as np
import pyarrow as pa
from bytewax.dataflow import Stream

from connectors.archive import PendingRows
from operators.grid import WindowValues
from schemas.samples import SampleBatch
from operators.sync import COLLAPSE, DISSIPATE_COHERENCE, SyncValues
from operators.witness import LoggedRecords, WitnessEntries
from schemas.datasets import DATASETS, TIMESTAMP
from schemas.messages import CollapseEvent, DeadLetter, state_texts, sync_records_json, to_json_bytes

__all__ = [
    "ArchiveRows",
    "Emitted",
    "EmittedStreams",
    "SignatureBlock",
    "SyncBlock",
    "TopicBlock",
    "TopicRecord",
    "TopicRecords",
    "collapse_events",
    "dead_letter_records",
    "deferred",
    "emitted_streams",
    "events_rows",
    "history_rows",
    "input_key_runs",
    "input_pieces",
    "input_rows",
    "on_grid",
    "picked_runs",
    "signature_key_runs",
    "signature_rows",
    "sync_key_runs",
    "sync_messages",
    "witness_rows",
    "witnessed",
]


@dataclass(frozen=True)
class ArchiveRows:
    """Rows for archive dataset ``dataset`` (its schema from :mod:`schemas.datasets`).

    ``table`` is the rows, or a picklable zero-argument callable that builds
    them (see :func:`deferred`): the archive sink then builds the table on its
    writer thread, off the dataflow's path.
    """

    dataset: str
    table: pa.Table | Callable[[], pa.Table]


def deferred(builder: Callable[..., ArchiveRows], dataset: str, *args: Any,
             runs: Callable[[list[Any]], tuple[list[int], list[tuple]]] | None = None) -> ArchiveRows:
    """``builder(*args)``'s rows, to be built by the archive writer's thread.

    The last argument is the list of pieces (one per sensor); the archive
    joins the pieces of consecutive deferred rows with the same builder and
    other arguments, and builds one table for all of them
    (:class:`connectors.archive.PendingRows`).  ``runs`` tells the archive
    each piece's row count and row key, so it need not compare the rows to
    find them (:func:`input_key_runs`).

    >>> rows = deferred(history_rows, "coherence_history", [])
    >>> rows.dataset, callable(rows.table)
    ('coherence_history', True)
    """
    *fixed, pieces = args
    return ArchiveRows(dataset, PendingRows(_built_table, (builder, *fixed), list(pieces), runs))


def _built_table(builder: Callable[..., ArchiveRows], *args: Any) -> pa.Table:
    return builder(*args).table


@dataclass(slots=True)  # one per output record: a frozen init costs 4x
class TopicRecord:
    """One output message: ``role`` is collapse | witness | sync | dlq (``sink.topics``)."""

    role: str
    key: bytes | None
    value: bytes


@dataclass(slots=True)
class TopicBlock:
    """Many output messages of one topic role: message i is ``keys[i]``, ``values[i]``, and
    carries the Kafka headers ``headers[i]`` when ``headers`` is given."""

    role: str
    keys: list[bytes | None]
    values: list[bytes]
    headers: list[list[tuple[str, bytes]]] | None = None


class TopicRecords(list):
    """The output messages of one step's batch (:class:`TopicRecord` and :class:`TopicBlock`
    items), moved through the dataflow as one item (a Bytewax item costs Python calls
    at every step it passes; a message does not)."""


def on_grid(t_us: np.ndarray, interval_us: int) -> np.ndarray | None:
    """Indices of the times that are multiples of ``interval_us`` (epoch aligned),
    or None when there are none.  The times may be in any order (runs of several sensors).

    >>> on_grid(np.array([10, 15, 20, 25]), 10).tolist(), on_grid(np.array([11, 19]), 10)
    ([0, 2], None)
    """
    index = np.flatnonzero(t_us % interval_us == 0)
    return index if index.size else None


def picked_runs(counts: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which runs the rows ``index`` fall in, for rows in runs of ``counts[i]`` rows each.

    Returns (the runs that hold any of the rows, how many of the rows each holds);
    ``index`` is sorted.

    >>> runs, kept = picked_runs(np.array([3, 2, 4]), np.array([0, 2, 6, 8]))
    >>> runs.tolist(), kept.tolist()
    ([0, 2], [2, 2])
    """
    run = np.searchsorted(np.cumsum(counts), index, side="right")
    kept = np.bincount(run, minlength=counts.shape[0])
    runs = np.flatnonzero(kept)
    return runs, kept[runs]


def _table(dataset: str, columns: dict[str, pa.Array | np.ndarray | list]) -> pa.Table:
    schema = DATASETS[dataset]
    return pa.Table.from_arrays([pa.array(columns[f.name], f.type) if not isinstance(columns[f.name], pa.Array)
                                 else columns[f.name] for f in schema], schema=schema)


def _times(t_us: np.ndarray) -> pa.Array:
    # Microseconds since the epoch are the timestamp's values: a view, not a cast.
    return pa.array(np.asarray(t_us, np.int64), pa.int64()).view(TIMESTAMP)


def _repeat(value: str | None, n: int) -> pa.Array:
    return pa.repeat(pa.scalar(value, pa.string()), n)


def _labels(names: Sequence[str | None], counts: Sequence[int]) -> pa.Array:
    """A string column holding ``names[i]`` ``counts[i]`` times in a row (None: null).

    Built from the names' bytes (or one ``take`` when some are null), so the
    cost is per row in C++, not in Python.
    """
    counts = np.asarray(counts, np.int64)
    if len(names) == 1:
        return _repeat(names[0], int(counts[0]))
    if all(name is not None for name in names):
        # The column's buffers directly: each name's bytes repeated, offsets by cumsum.
        encoded = [name.encode("utf-8") for name in names]
        lengths = np.repeat(np.array([len(b) for b in encoded], np.int64), counts)
        offsets = np.zeros(lengths.shape[0] + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        if offsets[-1] < 2 ** 31:
            data = b"".join(b * int(c) for b, c in zip(encoded, counts.tolist()))
            return pa.StringArray.from_buffers(lengths.shape[0], pa.py_buffer(offsets.astype(np.int32)),
                                               pa.py_buffer(data))
    if all(name is None for name in names):
        return pa.nulls(int(counts.sum()), pa.string())
    index = np.repeat(np.arange(len(names), dtype=np.int32), counts)
    return pa.array(list(names), pa.string()).take(pa.array(index, pa.int32()))


#: (sensor, cell, t, values (n, C), raw): a run of one sensor's accepted samples; ``raw``: the values are raw
#: ``value`` samples (SPEC section 9), else phases.
InputPiece = tuple[str, "str | None", np.ndarray, np.ndarray, bool]


def input_pieces(batches: Sequence[SampleBatch]) -> list[InputPiece]:
    """Just the arrays of ``batches`` that ``input/`` keeps (not their source messages)."""
    return [(b.sensor, b.cell, b.t_us, b.phase, b.raw) for b in batches]


def input_key_runs(pieces: Sequence[InputPiece]) -> tuple[list[int], list[tuple[str]]]:
    """Rows and row key (the sensor) of each piece of :func:`input_rows`, in order.

    >>> input_key_runs([("a", None, np.arange(3), np.zeros((3, 1)), False), ("b", None, np.arange(2), np.zeros((2, 1)), True)])
    ([3, 2], [('a',), ('b',)])
    """
    return [p[2].shape[0] for p in pieces], [(p[0],) for p in pieces]


def input_rows(pieces: Sequence[InputPiece]) -> ArchiveRows:
    """Accepted samples of any sensors for ``input/``: phases in ``phase``, raw samples in ``value``
    (list<float64> each, the other column null)."""
    counts = [p[2].shape[0] for p in pieces]
    widths = np.repeat(np.array([p[3].shape[1] for p in pieces], np.int32), counts)
    offsets = np.zeros(widths.shape[0] + 1, np.int32)
    np.cumsum(widths, out=offsets[1:])
    values = np.concatenate([np.ascontiguousarray(p[3]).reshape(-1) for p in pieces])
    raw = np.repeat(np.array([p[4] for p in pieces], np.bool_), counts)
    lists = {}
    for name, null in (("phase", raw), ("value", ~raw)):
        mask = None if not null.any() else pa.array(null)
        lists[name] = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, pa.float64()), mask=mask)
    return ArchiveRows("input", _table("input", {
        "sensor": _labels([p[0] for p in pieces], counts), "cell": _labels([p[1] for p in pieces], counts),
        "t": _times(np.concatenate([p[2] for p in pieces])), **lists,
    }))


class SignatureBlock(NamedTuple):
    """Transducer values of several sensors, in runs: the ``counts[i]`` rows of
    ``values`` after the earlier runs are of ``sensors[i]`` (cell ``cells[i]``)
    and transducer ``transducers[i]``."""

    sensors: list[str]
    cells: list[str | None]
    transducers: list[str]
    counts: list[int]
    values: WindowValues


def signature_key_runs(blocks: Sequence[SignatureBlock]) -> tuple[list[int], list[tuple[str, str]]]:
    """Rows and row key (sensor, transducer) of each run of :func:`signature_rows`, in order."""
    return ([n for b in blocks for n in b.counts],
            [(s, k) for b in blocks for s, k in zip(b.sensors, b.transducers)])


def signature_rows(blocks: Sequence[SignatureBlock]) -> ArchiveRows:
    """``temporal_signatures/`` rows of transducer values of any sensors."""
    counts = [n for b in blocks for n in b.counts]
    values = WindowValues.concat([b.values for b in blocks])
    T = values.T
    return ArchiveRows("temporal_signatures", _table("temporal_signatures", {
        "sensor": _labels([s for b in blocks for s in b.sensors], counts),
        "cell": _labels([c for b in blocks for c in b.cells], counts),
        "transducer": _labels([k for b in blocks for k in b.transducers], counts),
        "t": _times(values.t), "t_re": T.real, "t_im": T.imag,
        "coherence": T.real ** 2 + T.imag ** 2, "n_products": values.n_products,
    }))


class SyncBlock(NamedTuple):
    """Sync values of several sensors, in runs: the ``counts[i]`` rows of
    ``values`` after the earlier runs are of ``sensors[i]`` (cell ``cells[i]``)."""

    sensors: list[str]
    cells: list[str | None]
    counts: list[int]
    values: SyncValues


def _sync_columns(blocks: Sequence[SyncBlock]) -> tuple[list[int], SyncValues]:
    counts = [n for b in blocks for n in b.counts]
    if len(blocks) == 1:
        return counts, blocks[0].values
    return counts, SyncValues(*(np.concatenate(columns) for columns in zip(*(b.values for b in blocks))))


def sync_key_runs(blocks: Sequence[SyncBlock]) -> tuple[list[int], list[tuple[str]]]:
    """Rows and row key (the sensor) of each run of :func:`history_rows`, in order."""
    return [n for b in blocks for n in b.counts], [(s,) for b in blocks for s in b.sensors]


def history_rows(blocks: Sequence[SyncBlock]) -> ArchiveRows:
    """``coherence_history/`` rows of sync values of any sensors."""
    counts, sv = _sync_columns(blocks)
    em, ma = sv.T_emissary, sv.T_master
    return ArchiveRows("coherence_history", _table("coherence_history", {
        "sensor": _labels([s for b in blocks for s in b.sensors], counts), "t": _times(sv.t),
        "coherence_master": ma.real ** 2 + ma.imag ** 2, "coherence_emissary": em.real ** 2 + em.imag ** 2,
        "coherence_sync": sv.coherence_sync, "delta_phase": sv.delta_phase, "state": state_texts(sv.collapsed),
    }))


def collapse_events(sensor: str, cell: str | None, sv: SyncValues) -> list[CollapseEvent]:
    """The transitions among ``sv`` as collapse-topic events (few: one per transition)."""
    out = []
    for k in np.flatnonzero(sv.event).tolist():
        code = int(sv.event[k])
        out.append(CollapseEvent.create(
            event="collapse" if code == COLLAPSE else "dissipate",
            reason=None if code == COLLAPSE else ("coherence" if code == DISSIPATE_COHERENCE else "phase"),
            sensor=sensor, cell=cell, t_us=int(sv.t[k]),
            t_master=complex(sv.T_master[k]), t_emissary=complex(sv.T_emissary[k]),
        ))
    return out


def events_rows(events: list[CollapseEvent]) -> ArchiveRows:
    """``events/`` rows, field for field the collapse-topic messages."""
    return ArchiveRows("events", _table("events", {
        "event_id": [e.event_id for e in events], "event": [e.event for e in events],
        "reason": [e.reason for e in events], "sensor": [e.sensor for e in events],
        "cell": [e.cell for e in events], "t": _times(np.array([e.t_us for e in events], np.int64)),
        "coherence_sync": [e.coherence_sync for e in events],
        "t_sync_re": [e.t_sync[0] for e in events], "t_sync_im": [e.t_sync[1] for e in events],
        # A light node's events have no Master: null, as on the topic (and as for mesh events).
        "t_master_re": [None if e.t_master is None else e.t_master[0] for e in events],
        "t_master_im": [None if e.t_master is None else e.t_master[1] for e in events],
        "t_emissary_re": [e.t_emissary[0] for e in events], "t_emissary_im": [e.t_emissary[1] for e in events],
        "delta_phase": [e.delta_phase for e in events],
    }))


def sync_messages(node: str, block: SyncBlock) -> list[bytes]:
    """The sync-topic message values of ``block`` (the caller picks the publish grid points)."""
    sv = block.values
    return sync_records_json(node, block.sensors, block.cells, block.counts, sv.t, sv.T_sync, sv.coherence_sync,
                             sv.T_master, sv.T_emissary, sv.delta_phase, sv.collapsed, sv.mature)


def witness_rows(pieces: list[LoggedRecords]) -> ArchiveRows:
    """``witnessing_logs/`` rows of logged records: ``payload`` is the witness-topic message value,
    byte for byte, ``log_sha256`` the running digest after the record as hex."""
    def column(name: str) -> list[Any]:
        return list(itertools.chain.from_iterable(getattr(p, name) for p in pieces))

    n = sum(len(p) for p in pieces)
    seq = np.concatenate([np.arange(p.seq, p.seq + len(p), dtype=np.int64) for p in pieces] or [np.zeros(0, np.int64)])
    digests = binascii.hexlify(b"".join(column("digests")))  # 64 characters per record
    return ArchiveRows("witnessing_logs", _table("witnessing_logs", {
        "seq": seq, "layer": column("layers"), "t": _times(np.array(column("t_us"), np.int64)),
        # The payloads are this process's own JSON (UTF-8 by construction): viewed as text, not validated.
        "sensor": column("sensors"), "payload": pa.array(column("values"), pa.binary()).view(pa.string()),
        "log_sha256": pa.Array.from_buffers(pa.string(), n, [
            None, pa.py_buffer(np.arange(n + 1, dtype=np.int32) * 64), pa.py_buffer(digests)]),
    }))


def dead_letter_records(letters: list[DeadLetter]) -> list[TopicRecord]:
    """Dead-letter-topic messages, keyed like the original message."""
    return [TopicRecord("dlq", letter.key_bytes, to_json_bytes(letter)) for letter in letters]


@dataclass(slots=True)
class Emitted:
    """What one call of a step hands on, by destination: one item per call, one field per stream.

    Attributes:
        records: topic messages (:class:`TopicRecord`, :class:`TopicBlock`): the topics, or the
            dead-letter file without Kafka.
        witness: witness entries and blocks, for the witness step.
        archive: :class:`ArchiveRows` for the archive.
        keyed: ``(key group, [SampleRuns, ...])`` for the resonate step (the decode step's).
    """

    records: TopicRecords = field(default_factory=lambda: TopicRecords())
    witness: WitnessEntries = field(default_factory=lambda: WitnessEntries())
    archive: list[ArchiveRows] = field(default_factory=list)
    keyed: list[tuple[str, Any]] = field(default_factory=list)

    def handed_on(self) -> list[Emitted]:
        """``[self]``, or nothing when there is nothing in it."""
        return [self] if self.records or self.witness or self.archive or self.keyed else []


class EmittedStreams(NamedTuple):
    """The streams of a step's :class:`Emitted` items, one per destination."""

    records: Stream[TopicRecords]
    witness: Stream[WitnessEntries]
    archive: Stream[ArchiveRows]
    keyed: Stream[tuple[str, Any]]


def emitted_streams(step_id: str, emitted: Stream[Emitted]) -> EmittedStreams:
    """One stream per field of ``emitted``: a call's records and witness entries stay one item
    each (a Bytewax item costs Python calls at every step it passes), its archive rows and key
    groups are items of their own."""
    return EmittedStreams(
        op.flat_map(f"{step_id}_records", emitted, lambda e: [e.records] if e.records else []),
        op.flat_map(f"{step_id}_witness", emitted, lambda e: [e.witness] if e.witness else []),
        op.flat_map(f"{step_id}_archive", emitted, lambda e: e.archive),
        op.flat_map(f"{step_id}_keyed", emitted, lambda e: e.keyed),
    )


def witnessed(config, layer: str) -> bool:
    """True when records of a witness ``layer`` are built: the layer is on and something keeps the log
    (the witness topic, or the archive's ``witnessing_logs``).  With neither, nothing is hashed or encoded."""
    kept = config.kafka is not None or (config.sink.archive and config.memory.witness_logs)
    return kept and config.witnessing.layer_enabled(layer)
