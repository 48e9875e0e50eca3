"""The witness step: every witness entry of the flow into one log (running SHA-256, meta records).

One key for the whole flow, so the log has one order; its records go to the
witness topic and, when the archive keeps them, to ``witnessing_logs/``.
Each witness-topic message carries its ``seq`` and ``log_sha256`` as Kafka
headers, so a reader of the topic alone (a witness node) can place every
record in the log and check its digest.
"""

from __future__ import annotations

import binascii
import collections
import copy
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream
from bytewax.operators import StatefulBatchLogic

from flows.emit import ArchiveRows, Emitted, TopicBlock, TopicRecords, deferred, emitted_streams, witness_rows
from flows.log_context import stepped_logic
from flows.observer import FlowObserver
from operators.witness import LoggedRecords, WitnessEntries, WitnessLog
from schemas.config import Config
from schemas.messages import WITNESS_DIGEST_HEADER, WITNESS_SEQ_HEADER

__all__ = ["WitnessLogic", "WitnessOut", "log_headers", "witness"]

_WITNESS_KEY = "witness-log"


class WitnessLogic(StatefulBatchLogic[WitnessEntries, Any, WitnessLog]):
    """The flow's witness log (state: :class:`operators.witness.WitnessLog`)."""

    def __init__(self, config: Config, resume: WitnessLog | None, observer: FlowObserver | None = None) -> None:
        self.observer = FlowObserver() if observer is None else observer
        w = config.witnessing
        layers = tuple(layer for layer in ("micro", "meso", "macro", "meta") if w.layer_enabled(layer))
        if resume is None:
            resume = WitnessLog(w.meta_every, enabled=layers)
        self.archive = config.sink.archive and config.memory.witness_logs
        if self.archive:
            from connectors.archive import last_witness_record
            from schemas.messages import WITNESS_LOG_GENESIS

            # The archive is the log: continue it and its chain, also when resuming a snapshot
            # older than what the archive holds (the rows of the epochs after it were written).
            last = last_witness_record(config.memory.root)
            resume.continue_from(*((last[0] + 1, last[1]) if last is not None else (0, WITNESS_LOG_GENESIS)))
        if config.sink.archive:
            from connectors.archive.anchor import ManifestHeads

            # Meta records anchor the archive's manifests: their heads as last committed.
            resume.heads = ManifestHeads(config.memory.root, config.archived_datasets)
        self.log = resume
        # One key for every witness record: one partition, so the topic keeps the log's order.
        self.key = config.becomingone.name.encode("utf-8")

    def _out(self, records: LoggedRecords) -> list[Emitted]:
        m = self.observer.metrics
        for layer, n in collections.Counter(records.layers).items():
            m.witness_records.labels(layer).inc(n)
        out = Emitted(records=TopicRecords([TopicBlock("witness", [self.key] * len(records), records.values,
                                                       log_headers(records))]))
        if self.archive and records:
            out.archive.append(deferred(witness_rows, "witnessing_logs", [records]))
        return [out]

    def on_batch(self, values: list[WitnessEntries]) -> tuple[Iterable[Any], bool]:
        clock = self.observer.clock
        started = clock.timer()
        out = self._out(self.log.append(entry for bundle in values for entry in bundle))
        self.observer.metrics.batch_seconds.labels("witness").observe(clock.timer() - started)
        return out, StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[Any], bool]:
        records = self.log.observe() if "meta" in self.log.enabled else self.log.append([])
        return self._out(records), StatefulBatchLogic.RETAIN

    def snapshot(self) -> WitnessLog:
        """A copy of the log's state (without its manifest heads, which are not part of a snapshot)."""
        return copy.deepcopy(self.log)


def log_headers(records: LoggedRecords) -> list[list[tuple[str, bytes]]]:
    """Each record's Kafka headers: its ``seq`` (decimal) and ``log_sha256`` (hex), as in ``witnessing_logs/``."""
    return [[(WITNESS_SEQ_HEADER, b"%d" % seq), (WITNESS_DIGEST_HEADER, binascii.hexlify(digest))]
            for seq, digest in enumerate(records.digests, records.seq)]


@dataclass(frozen=True)
class WitnessOut:
    """The witness step's streams: the witness-topic messages and the ``witnessing_logs/`` rows."""

    records: Stream[TopicRecords]
    archive: Stream[ArchiveRows]


def witness(step_id: str, entries: Stream[WitnessEntries], config: Config, observer: FlowObserver) -> WitnessOut:
    """Log every witness entry of ``entries`` (one log for the flow: :class:`WitnessLogic`)."""
    keyed = op.key_on(f"{step_id}_key", entries, lambda _: _WITNESS_KEY)
    logged = op.stateful_batch(step_id, keyed, stepped_logic(step_id, lambda resume: WitnessLogic(config, resume, observer)))
    out = emitted_streams(step_id, op.map(f"{step_id}_out", logged, lambda kv: kv[1]))
    return WitnessOut(out.records, out.archive)
