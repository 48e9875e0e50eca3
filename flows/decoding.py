"""The decode step: raw messages -> each key group's samples, dead letters, micro witness records.

Stateless, per batch.  The accepted samples of a batch are
:class:`~schemas.samples.SampleRuns` (columns, one run of rows per sensor,
no object per sensor) split by :func:`key_group`, so the resonate step is
activated once per key group with all its sensors' rows.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import bytewax.operators as op
import numpy as np
from bytewax.dataflow import Stream
from confluent_kafka import Message as KafkaMessage

from flows.emit import Emitted, TopicRecords, dead_letter_records, emitted_streams, witnessed
from flows.log_context import stepped_call
from flows.observer import FlowObserver
from operators.decode import RawMessage, decode_messages
from operators.params import dead_letter_limits
from schemas.samples import SampleBatch, SampleRuns
from operators.witness import WitnessEntries, WitnessEntry
from schemas.config import Config, KafkaSource
from schemas.mesh import MeshProgress
from schemas.messages import MicroWitness

__all__ = ["Decode", "DecodeOut", "decode", "key_group"]


class Decode:
    """Raw messages of one batch -> (key group, [SampleRuns, ...]) items, dead letters,
    a micro witness record.

    The accepted samples of the batch are :class:`~schemas.samples.SampleRuns`:
    columns, one run of rows per sensor, no object per sensor; they are split
    by :func:`key_group`, so a downstream step is activated once per key group
    with all its sensors' rows.
    """

    def __init__(self, config: Config, observer: FlowObserver | None = None, *, replay: bool = False) -> None:
        self.groups = config.becomingone.key_groups
        self._group_of: dict[str, int] = {}
        src = config.source
        self.max_bytes = src.max_message_bytes if isinstance(src, KafkaSource) else None
        self.limits = dead_letter_limits(config)
        self.micro = witnessed(config, "micro")
        self.max_future_us = config.sync.max_future_us
        self.newest: int | None = None  # newest event time seen (the micro records' t)
        self.mesh = config.sync.mesh_enabled
        self.replay = replay
        self.observer = FlowObserver() if observer is None else observer

    def _by_group(self, block: SampleRuns) -> list[tuple[str, SampleRuns]]:
        """The block's runs split by key group (runs keep their order within a group; groups in the
        order of their names)."""
        group_of = self._group_of
        try:    # sensors seen before (every call after the first): one C-level lookup each
            groups = np.fromiter(map(group_of.__getitem__, block.names), np.int64, len(block.names))
        except KeyError:
            for name in block.names:
                if name not in group_of:
                    group_of[name] = _key_group_number(name, self.groups)
            groups = np.fromiter(map(group_of.__getitem__, block.names), np.int64, len(block.names))
        if not (groups != groups[0]).any():
            return [(_group_name(int(groups[0])), block)]
        order = np.argsort(groups, kind="stable")
        bounds = np.flatnonzero(groups[order][1:] != groups[order][:-1]) + 1
        parts = [(_group_name(int(groups[part[0]])), part) for part in np.split(order, bounds)]
        return [(name, block.select(np.sort(part))) for name, part in sorted(parts, key=lambda p: p[0])]

    def __call__(self, items: list[Any]) -> Iterable[Any]:
        observer = self.observer
        clock = observer.clock
        started = clock.timer()
        messages, ready = [], []
        for item in items:
            if isinstance(item, SampleBatch):
                ready.append(item)
            elif isinstance(item, KafkaMessage):  # connectors.kafka.TopicSource
                messages.append(RawMessage(item.key(), item.value(), item.headers(), item.topic(), item.partition(),
                                           item.offset()))
            elif isinstance(item, RawMessage):
                messages.append(item)
            else:  # bytewax's KafkaSourceMessage
                messages.append(RawMessage(item.key, item.value, item.headers, item.topic, item.partition,
                                           item.offset))
        blocks = SampleRuns.blocks(ready)   # generated or replayed batches
        drops = 0
        out = Emitted()
        progress: dict[str, int] = {}
        if self.mesh and ready:
            self._progress(progress, "input", [b.t_us for b in blocks])
        if messages:
            parts = _by_partition(messages) if self.mesh else [messages]
            for part in parts:
                decoded = decode_messages(part, max_message_bytes=self.max_bytes, limits=self.limits, as_runs=True)
                if self.mesh:
                    self._progress(progress, f"{part[0].topic}:{part[0].partition}", [b.t_us for b in decoded.runs])
                self._decoded(decoded, blocks, out)
                drops += sum(decoded.counts.values())
        samples = sum(len(b) for b in blocks)
        grouped: dict[str, list[Any]] = {}
        for block in blocks:
            for group, runs in self._by_group(block):
                grouped.setdefault(group, []).append(runs)
        if progress:
            # Every key group hears every partition's progress, after the samples it covers.
            for number in range(self.groups):
                group = _group_name(number)
                grouped.setdefault(group, []).extend(MeshProgress(group, p, t) for p, t in progress.items())
        out.keyed.extend(grouped.items())
        seconds = clock.timer() - started
        observer.metrics.batch_seconds.labels("decode").observe(seconds)
        if self.micro:
            # Newest event time seen, leaving out the times the intake will refuse as `future`.
            limit = clock.now_us() + self.max_future_us
            times = np.concatenate([b.t_us for b in blocks]) if blocks else np.empty(0, np.int64)
            usable = times[times <= limit]  # one pass over all sensors' rows, not one per sensor
            newest = int(usable.max()) if usable.size else None
            if newest is not None:
                self.newest = max(self.newest or newest, newest)
            elif self.newest is None:  # nothing usable seen yet: the wall clock stands in
                self.newest = clock.now_us()
            out.witness.append(WitnessEntry("micro", self.newest, None, MicroWitness(
                operator="decode", worker=observer.worker(), items_in=len(messages) + len(ready),
                items_out=samples, drops=drops, seconds=seconds)))
        return out.handed_on()

    def _decoded(self, decoded, blocks: list[SampleRuns], out: Emitted) -> None:
        blocks.extend(decoded.runs)
        out.records.extend(dead_letter_records(decoded.dead))
        m = self.observer.metrics
        for reason, n in decoded.counts.items():
            m.samples.labels(str(reason)).inc(n)
        self.observer.ledger.rejected_at_decode(sum(decoded.counts.values()))

    def _progress(self, progress: dict[str, int], partition: str, times: list[np.ndarray]) -> None:
        """The newest event time of a partition's rows in this call, leaving out what the intake will
        refuse as ``future`` (one bad clock must not decide the mesh's grid points)."""
        t = np.concatenate(times) if times else np.empty(0, np.int64)
        if not self.replay:
            t = t[t <= self.observer.clock.now_us() + self.max_future_us]
        if t.size:
            newest = int(t.max())
            progress[partition] = max(progress.get(partition, newest), newest)


def _by_partition(messages: list[RawMessage]) -> list[list[RawMessage]]:
    """The messages of each source partition, in order (most calls hold one partition)."""
    parts: dict[tuple[Any, Any], list[RawMessage]] = {}
    for m in messages:
        parts.setdefault((m.topic, m.partition), []).append(m)
    return list(parts.values())


@dataclass(frozen=True)
class DecodeOut:
    """The decode step's streams.

    Attributes:
        samples: ``(key group, [SampleRuns, ...])`` per group and batch.
        records: the dead letters of a batch (:class:`~flows.emit.TopicRecords`).
        witness: the micro witness records of a batch (:class:`~operators.witness.WitnessEntries`).
    """

    samples: Stream[tuple[str, list[SampleRuns]]]
    records: Stream[TopicRecords]
    witness: Stream[WitnessEntries]


def decode(step_id: str, up: Stream[Any], config: Config, observer: FlowObserver, *,
           replay: bool = False) -> DecodeOut:
    """Decode ``up``'s raw messages and generated batches (:class:`Decode`), grouped by key group."""
    out = emitted_streams(step_id, op.flat_map_batch(step_id, up, stepped_call(step_id, Decode(config, observer, replay=replay))))
    return DecodeOut(out.keyed, out.records, out.witness)


# --------------------------------------------------------------------------
# Key groups: the unit of per-sensor state.


def key_group(sensor: str, groups: int) -> str:
    """The key group a sensor's state lives in (stable across runs and processes).

    >>> key_group("pmu-7", 16)
    'group-7'
    """
    return _group_name(_key_group_number(sensor, groups))


def _key_group_number(sensor: str, groups: int) -> int:
    return zlib.crc32(sensor.encode("utf-8")) % groups


def _group_name(number: int) -> str:
    return f"group-{number}"
