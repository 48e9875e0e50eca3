"""Where the flow's results leave it: the Kafka topics (or the dead-letter file) and the archive.

The steps hand over topic records (:class:`~flows.emit.TopicRecords`) and
archive rows (:class:`~flows.emit.ArchiveRows`); these functions end the
streams in the sinks of :mod:`connectors`.
"""

from __future__ import annotations

import bytewax.operators as op
from bytewax.dataflow import Stream

from connectors.dead_letter_file import DeadLetterFile
from connectors.flow_topics import OUTPUT_ROLES, kafka_sink
from flows.emit import ArchiveRows, TopicBlock, TopicRecords
from flows.log_context import stepped_sink
from schemas.config import Config

__all__ = ["to_archive", "to_dead_letter_file", "to_topics"]


def to_topics(step_id: str, records: Stream[TopicRecords], config: Config) -> None:
    """Every record to its topic (``sink.topics``): collapse, witness, sync, dlq."""
    from connectors.kafka import TopicMessages

    names = {role: getattr(config.sink.topics, role) for role in OUTPUT_ROLES}
    messages = op.flat_map("to_kafka", records, lambda records: [
        TopicMessages(names[r.role], r.keys, r.values, r.headers) if type(r) is TopicBlock else (names[r.role], r.key, r.value)
        for r in records])
    op.output(step_id, messages, stepped_sink(kafka_sink(config)))


def to_dead_letter_file(step_id: str, records: Stream[TopicRecords], config: Config) -> None:
    """Without Kafka: the dead letters among ``records`` as JSON lines under the archive root; the rest is dropped."""
    letters = op.flat_map("dead_letters", records, lambda records: [
        value for r in records if r.role == "dlq"
        for value in (r.values if type(r) is TopicBlock else (r.value,))])
    op.output(step_id, letters, stepped_sink(DeadLetterFile(config.memory.root)))


def to_archive(step_id: str, rows: Stream[ArchiveRows], config: Config, *, durable_snapshots: bool,
               datasets: tuple[str, ...] | None = None) -> None:
    """Every row into its archive dataset (:class:`connectors.archive.ArchiveSink`) of ``datasets``
    (default: those the config switches on)."""
    from connectors.archive import ArchiveSink

    mem = config.memory
    items = op.map("archive_rows", rows, lambda r: (r.dataset, r.table))
    op.output(step_id, items, stepped_sink(ArchiveSink(mem.root, config.archived_datasets if datasets is None else datasets,
                                         flush_rows=mem.flush_rows,
                                         flush_seconds=mem.flush_interval, durable_snapshots=durable_snapshots,
                                         signing_key=mem.signing_key_bytes)))
