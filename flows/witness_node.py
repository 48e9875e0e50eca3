"""The witness node's dataflow (SPEC section 7, ``becomingone.node: witness``): an independent auditor.

::

    witness_node.topic (the audited node's witness log; on witness_node.kafka, else kafka)
      -> audited   each message of witness_node.node with its seq / log_sha256 headers;
      |            messages of other nodes are counted and skipped
      -> audit     [the audited node]  operators.witness_audit.LogAudit: breaks as data,
      |            the records read for the copy, in seq order
      -> outputs:  a witness_break event per break on sink.topics.collapse (key = the audited node),
                   the copy of the log in this node's witnessing_logs/ (same rows as the audited
                   node's own archive), metrics

The audit's state is Bytewax state (snapshotted as a pickle, resumed with the
source's offsets), so a restarted witness goes on where it was.  Started
without state, it reads the topic again from its oldest message
(``witness_node.from_beginning``): the log is audited again, the breaks come
again with the same ``event_id``, and the archive's writer refuses the rows
of seqs it holds already.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Iterable
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic

from connectors.stopping import StoppableSource
from flows.emit import Emitted, TopicRecord, deferred, emitted_streams, witness_rows
from flows.log_context import SteppedSource, stepped_call, stepped_logic, stepped_sink
from flows.observer import FlowObserver
from flows.outputs import to_archive
from operators.witness_audit import AuditedMessage, AuditResult, LogAudit
from schemas.config import Config
from schemas.messages import WITNESS_DIGEST_HEADER, WITNESS_SEQ_HEADER, WitnessBreak, to_json_bytes

__all__ = ["AuditLogic", "audited_message", "build_witness_flow"]

log = logging.getLogger("becomingone.witness")


def build_witness_flow(config: Config, *, flow_id: str = "becomingone", recovery: bool = True,
                       observer: FlowObserver | None = None, source: Any = None) -> Dataflow:
    """The witness node's dataflow of ``config`` (module docstring).

    Args:
        config: a validated config with ``becomingone.node: witness``.
        flow_id: the Bytewax dataflow id (names recovery state).
        recovery: False when the flow runs without Bytewax recovery: no snapshot is built.
        observer: the metrics, ledger, clock and stop signal (default: :meth:`FlowObserver.of` the config).
        source: a Bytewax source of Kafka messages to read instead of ``witness_node.topic``.

    Nothing connects to Kafka or opens files until the flow runs.

    >>> from schemas.config import parse_config
    >>> cfg = parse_config({"becomingone": {"node": "witness"}, "kafka": {"bootstrap.servers": "k:9092"}})
    >>> build_witness_flow(cfg).flow_id
    'becomingone'
    """
    from connectors.flow_topics import audited_cluster, kafka_sink, witness_source

    observer = FlowObserver.of(config) if observer is None else observer
    node = config.witness_node.node
    flow = Dataflow(flow_id)
    source = witness_source(config) if source is None else source
    raw = op.input("source", flow, SteppedSource(StoppableSource(source, observer.stop)))
    skipped: set[str] = set()
    messages = op.flat_map("audited", raw, stepped_call("audited", lambda msg: _of_node(msg, node, observer, skipped)))
    audited = op.stateful_batch("audit", messages, stepped_logic(
        "audit", lambda resume: AuditLogic(config, node, resume, observer, resumable=recovery)))
    out = emitted_streams("audit", op.map("audit_out", audited, lambda kv: kv[1]))
    collapse = config.sink.topics.collapse
    events = op.flat_map("to_kafka", out.records, lambda records: [(collapse, r.key, r.value) for r in records])
    op.output("kafka", events, stepped_sink(kafka_sink(config, ("collapse",), config.kafka or audited_cluster(config))))
    if config.sink.archive and config.memory.witness_logs:
        to_archive("archive", out.archive, config, durable_snapshots=recovery, datasets=("witnessing_logs",))
    return flow


def audited_message(seq: bytes | str | None, digest: bytes | str | None, value: bytes | None) -> AuditedMessage:
    """A witness-topic message for the audit, from its header values: a seq that is no whole
    number >= 0, or a digest that is no 64 hex digits, counts as absent.

    >>> audited_message(b"7", b"ab" * 32, b"{}").seq, audited_message(b"-1", b"x", b"{}").digest
    (7, None)
    """
    try:
        text = seq.decode("ascii") if isinstance(seq, bytes) else seq
        number = int(text) if text is not None and text.isdigit() else None
    except (UnicodeDecodeError, ValueError):
        number = None
    try:
        raw = bytes.fromhex(digest.decode("ascii") if isinstance(digest, bytes) else digest) if digest else None
    except (UnicodeDecodeError, ValueError):
        raw = None
    return AuditedMessage(number, raw if raw is not None and len(raw) == 32 else None, value)


def _of_node(msg: Any, node: str, observer: FlowObserver, skipped: set[str]) -> list[tuple[str, AuditedMessage]]:
    """``msg`` (a ``confluent_kafka.Message``) as ``(node, message)`` when its key is the audited node."""
    key = msg.key()
    name = key.decode("utf-8", "replace") if key is not None else None
    if name != node:
        observer.metrics.witness_audited.labels("other_node").inc()
        if name not in skipped and len(skipped) < 100:
            skipped.add(name)
            log.warning("%s holds witness records of node %r too: skipped (this node audits %r, "
                        "witness_node.node)", msg.topic(), name, node)
        return []
    headers = dict(msg.headers() or ())
    return [(node, audited_message(headers.get(WITNESS_SEQ_HEADER), headers.get(WITNESS_DIGEST_HEADER),
                                   msg.value()))]


class AuditLogic(StatefulBatchLogic[AuditedMessage, Emitted, bytes]):
    """The audit of one node's log (state: :class:`operators.witness_audit.AuditState`, pickled)."""

    def __init__(self, config: Config, node: str, resume: bytes | None, observer: FlowObserver | None = None,
                 *, resumable: bool = True) -> None:
        self.observer = FlowObserver() if observer is None else observer
        self.observer.start()
        self.audit = LogAudit(config.witness_node.window, pickle.loads(resume) if resume is not None else None)
        self.node = node
        self.key = node.encode("utf-8")
        self.witness = config.becomingone.name
        self.archive = config.sink.archive and config.memory.witness_logs
        self.resumable = resumable
        self._report(AuditResult())  # a resumed audit shows where it is before anything new is read

    def on_batch(self, values: list[AuditedMessage]) -> tuple[Iterable[Emitted], bool]:
        return self._report(self.audit.read(values)), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[Emitted], bool]:
        if self.resumable and self.observer.stop.requested():
            # Stopped, not at the end of input: open gaps stay open in the snapshot for the next run.
            return self._report(AuditResult()), StatefulBatchLogic.RETAIN
        return self._report(self.audit.end()), StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes | None:
        """The audit's state as a pickle (a copy later batches cannot change); None without recovery."""
        if not self.resumable:
            return None
        return pickle.dumps(self.audit.state, protocol=pickle.HIGHEST_PROTOCOL)

    def _report(self, result: AuditResult) -> list[Emitted]:
        """Metrics, log lines, events and copied rows of one call."""
        m = self.observer.metrics
        for result_name in ("checked", "repeated", "unchecked"):
            if n := getattr(result, result_name):
                m.witness_audited.labels(result_name).inc(n)
        read_seq = self.audit.state.read_seq
        if read_seq is not None:
            m.witness_audited_seq.labels(self.node).set(read_seq)
        out = Emitted()
        for b in result.breaks:
            m.witness_breaks.labels(b.kind).inc()
            log.error("witness log of node %r breaks (%s) at seq %s: %s", self.node, b.kind, b.seq, b.detail)
            event = WitnessBreak.of(b.kind, self.node, b.seq, b.read_seq, b.detail, self.witness, b.dataset)
            out.records.append(TopicRecord("collapse", self.key, to_json_bytes(event)))
        if self.archive and result.copies:
            out.archive.append(deferred(witness_rows, "witnessing_logs", result.copies))
        return out.handed_on()
