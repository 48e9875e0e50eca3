"""The BecomingONE dataflow (SPEC sections 3 to 6).

::

    source (kafka | file | synthetic)
      -> decode                 stateless, per batch: JSON / Arrow IPC -> per-sensor SampleBatches,
      |                         bad rows -> dead letters
      -> event_time   [sensor]  channel check, watermark, reorder, late/duplicate/future,
      |                         lag products; the watermark travels with the products
      +-> emissary    [sensor]  sliding window W = emissary.tau_max on its grid
      +-> master      [sensor]  pane window W = master.tau_max on its grid
      -> sync         [sensor]  join by event time (waits for the Master's watermark),
      |                         collapse / dissipate with hysteresis
      -> witness      [one key] the witness log: running SHA-256, meta records
      -> outputs: Kafka topics (collapse, witness, sync, dlq) and the Arrow archive

Steps in brackets are ``op.stateful_batch`` keyed by sensor id: each sensor
lives on one worker, and every value it produces depends only on its own
samples and the config, never on batch sizes, worker count or the relative
order of the emissary and master branches (the sync aligns them by event
time).  That is what makes runs with 1 or 2 workers, or with any Kafka batch
size, produce the same events and archive rows.

Run it the Bytewax way (config from ``$BECOMINGONE_CONFIG``)::

    python -m bytewax.run flows.kairos -w 2

or with ``becomingone run``, which adds a progress line and a summary.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bytewax.operators as op
import numpy as np
from bytewax.dataflow import Dataflow, Stream
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from connectors.metrics import ledger, metrics, serve
from flows.emit import (
    ArchiveRows,
    TopicRecord,
    collapse_events,
    dead_letter_records,
    events_rows,
    history_rows,
    input_rows,
    mesh_rows,
    on_grid,
    signature_rows,
    sync_records,
    witness_rows,
)
from flows.sources import PhaseFile, SyntheticSamples, kafka_source, request_stop
from operators.decode import RawMessage, decode_messages
from operators.emissary import EmissaryWindow
from operators.grid import WindowValues
from operators.intake import ProductBatch, SensorIntake
from operators.master import MasterWindow
from operators.params import KairosParams
from operators.samples import SampleBatch
from operators.sync import SyncState
from operators.transducer import Transducer
from operators.witness import WitnessEntry, WitnessLog
from schemas.config import Config, FileSource, KafkaSource, SyntheticSource, load_config
from schemas.messages import (
    MacroWitness,
    MesoWitness,
    MicroWitness,
    to_json_bytes,
)

__all__ = ["Emission", "build_flow", "kairos_params", "request_stop"]  # request_stop: from flows.sources

log = logging.getLogger("becomingone.flow")

_NEVER = np.iinfo(np.int64).min  # "no watermark yet": nothing is final
_WITNESS_KEY = "witness-log"


def kairos_params(config: Config) -> KairosParams:
    """The estimator parameters of ``config`` in exact microseconds."""
    k = config.kairos
    return KairosParams(
        tau_us=k.tau_us, velocity_span_us=k.velocity_span_us, max_gap_us=k.max_gap_us, omega=k.omega,
        weights=None if k.channel_weights is None else tuple(k.channel_weights),
    )


@dataclass
class Emission:
    """A transducer's values for one sensor, with the watermark they are final up to.

    Attributes:
        transducer: ``emissary`` or ``master``.
        values: the window at the grid points that became final.
        watermark: every grid point of this transducer up to here has been
            emitted (us); None after end of input.
        ingested: wall-clock epoch seconds the oldest underlying sample was decoded.
    """

    sensor: str
    cell: str | None
    transducer: str
    values: WindowValues
    watermark: int | None
    ingested: float


# --------------------------------------------------------------------------
# Worker identity for micro witness records.

_worker_ids: dict[int, int] = {}
_worker_lock = threading.Lock()


def _worker() -> int:
    """This worker thread's index within the process, in order of first activity."""
    ident = threading.get_ident()
    with _worker_lock:
        return _worker_ids.setdefault(ident, len(_worker_ids))


# --------------------------------------------------------------------------
# Decode (stateless, per batch).


class _Decode:
    """Raw messages of one batch -> (sensor, SampleBatch) items, dead letters, a micro witness record."""

    def __init__(self, config: Config) -> None:
        src = config.source
        self.max_bytes = src.max_message_bytes if isinstance(src, KafkaSource) else None
        self.micro = config.witnessing.layer_enabled("micro")
        self.max_future_us = config.sync.max_future_us
        self.newest: int | None = None  # newest event time seen (the micro records' t)

    def __call__(self, items: list[Any]) -> Iterable[Any]:
        started = time.perf_counter()
        messages, ready = [], []
        for item in items:
            if isinstance(item, SampleBatch):
                ready.append(item)
            elif isinstance(item, RawMessage):
                messages.append(item)
            else:  # bytewax's KafkaSourceMessage
                messages.append(RawMessage(item.key, item.value, item.headers, item.topic, item.partition,
                                           item.offset))
        batches = list(ready)
        out: list[Any] = []
        if messages:
            decoded = decode_messages(messages, max_message_bytes=self.max_bytes)
            batches.extend(decoded.batches)
            out.extend(dead_letter_records(decoded.dead))
            m = metrics()
            for reason, n in decoded.counts.items():
                m.samples.labels(str(reason)).inc(n)
            drops = len(decoded.dead)
            ledger().rejected_at_decode(drops)
        else:
            drops = 0
        samples = sum(len(b) for b in batches)
        out.extend((b.sensor, b) for b in batches)
        seconds = time.perf_counter() - started
        metrics().batch_seconds.labels("decode").observe(seconds)
        if self.micro:
            # Newest event time seen, leaving out the times the intake will refuse as `future`.
            limit = time.time_ns() // 1000 + self.max_future_us
            newest = max((int(t.max()) for b in batches if (t := b.t_us[b.t_us <= limit]).size), default=None)
            if newest is not None:
                self.newest = max(self.newest or newest, newest)
            elif self.newest is None:  # nothing usable seen yet: the wall clock stands in
                self.newest = time.time_ns() // 1000
            out.append(WitnessEntry("micro", self.newest, None, MicroWitness(
                operator="decode", worker=_worker(), items_in=len(messages) + len(ready), items_out=samples,
                drops=drops, seconds=seconds)))
        return out


# --------------------------------------------------------------------------
# Per-sensor steps.


class _IntakeLogic(StatefulBatchLogic[SampleBatch, Any, SensorIntake]):
    # Bytewax builds the logic without its key: the sensor is taken from the
    # first batch (or from the snapshot on resume).
    def __init__(self, config: Config, replay: bool, resume: SensorIntake | None) -> None:
        _start_metrics_once(config)
        self.config, self.replay = config, replay
        self.intake = resume
        self.archive_input = config.sink.archive and config.memory.archive_input
        self.entry = None if resume is None else ledger().sensor(resume.sensor)
        metrics().active_sensors.inc()

    def _for(self, sensor: str) -> SensorIntake:
        if self.intake is None:
            sync = self.config.sync
            self.intake = SensorIntake(sensor, kairos_params(self.config), lateness_us=sync.lateness_us,
                                       max_future_us=None if self.replay else sync.max_future_us)
            self.entry = ledger().sensor(sensor)
        return self.intake

    def _emit(self, res, out: list[Any]) -> None:
        m = metrics()
        if res.dead:
            out.extend(dead_letter_records(res.dead))
            for reason in res.reasons:
                m.samples.labels(reason).inc()
            self.entry.rejected += len(res.dead)
        if res.released is not None:
            n = len(res.released)
            m.samples.labels("accepted").inc(n)
            self.entry.samples += n
            if self.archive_input:
                out.append(input_rows(res.released))
        if res.batch is not None:
            out.append(res.batch)
            if res.batch.watermark is not None:
                ledger().watermark(res.batch.watermark)

    def on_batch(self, values: list[SampleBatch]) -> tuple[Iterable[Any], bool]:
        started = time.perf_counter()
        now_us = time.time_ns() // 1000
        out: list[Any] = []
        for batch in values:  # one at a time: batches may differ in channel count
            self._emit(self._for(batch.sensor).push(batch, now_us), out)
        metrics().batch_seconds.labels("event_time").observe(time.perf_counter() - started)
        return out, StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[Any], bool]:
        out: list[Any] = []
        if self.intake is not None:
            self._emit(self.intake.flush(), out)
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> SensorIntake | None:
        return self.intake


@dataclass
class _TransducerMemory:
    sensor: str
    cell: str | None
    transducer: Transducer


class _TransducerLogic(StatefulBatchLogic[ProductBatch, Any, _TransducerMemory]):
    def __init__(self, kind: str, config: Config, resume: _TransducerMemory | None) -> None:
        self.kind = kind
        omega = config.kairos.omega
        if resume is not None:
            self.transducer = resume.transducer
        elif kind == "emissary":
            em = config.emissary
            self.transducer = Transducer(EmissaryWindow(em.tau_max_us, omega), em.witness_interval_us)
        else:
            ma = config.master
            self.transducer = Transducer(MasterWindow(ma.tau_max_us, ma.witness_interval_us, omega),
                                         ma.witness_interval_us)
        mem = config.memory
        self.signatures = config.sink.archive and mem.temporal_signatures
        self.signature_us = mem.signature_interval_us
        self.meso = config.witnessing.layer_enabled("meso")
        self.meso_us = config.witnessing.meso_interval_us
        self.sensor = "" if resume is None else resume.sensor
        self.cell: str | None = None if resume is None else resume.cell

    def _outputs(self, values: WindowValues, watermark: int | None, ingested: float) -> list[Any]:
        out: list[Any] = [Emission(self.sensor, self.cell, self.kind, values, watermark, ingested)]
        if not len(values):
            return out
        if self.signatures:
            keep = on_grid(values.t, self.signature_us)
            if keep.any():
                out.append(signature_rows(self.sensor, self.cell, self.kind, values.select(keep)))
        if self.meso:
            for k in np.flatnonzero(on_grid(values.t, self.meso_us)).tolist():
                T = complex(values.T[k])
                out.append(WitnessEntry("meso", int(values.t[k]), self.sensor, MesoWitness(
                    sensor=self.sensor, cell=self.cell, transducer=self.kind, t_re=T.real, t_im=T.imag,
                    coherence=abs(T) ** 2, n_products=int(values.n_products[k]))))
        return out

    def on_batch(self, values: list[ProductBatch]) -> tuple[Iterable[Any], bool]:
        started = time.perf_counter()
        out: list[Any] = []
        for batch in values:
            self.sensor, self.cell = batch.sensor, batch.cell
            # A watermark of None (end of input upstream) makes every grid point final.
            pushed = self.transducer.push(batch.products, batch.sample_t, batch.watermark)
            out.extend(self._outputs(pushed, batch.watermark, batch.ingested))
        metrics().batch_seconds.labels(self.kind).observe(time.perf_counter() - started)
        return out, StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[Any], bool]:
        return self._outputs(self.transducer.flush(), None, math.inf), StatefulBatchLogic.RETAIN

    def snapshot(self) -> _TransducerMemory:
        return _TransducerMemory(self.sensor, self.cell, self.transducer)


@dataclass
class _SyncMemory:
    """What the sync step snapshots: the join state plus the Master's in-band watermark."""

    state: SyncState
    master_watermark: int
    master_final: bool
    sensor: str = ""
    cell: str | None = None


class _SyncLogic(StatefulBatchLogic[Emission, Any, _SyncMemory]):
    def __init__(self, config: Config, resume: _SyncMemory | None) -> None:
        if resume is None:
            resume = _SyncMemory(SyncState(config.kairos.coherence_threshold, config.sync.hysteresis,
                                           config.sync.phase_threshold, config.master.min_span_us), _NEVER, False)
        self.mem = resume
        self.node = config.becomingone.name
        mem, sink = config.memory, config.sink
        self.archive = sink.archive
        self.history = sink.archive and mem.coherence_history
        self.events = sink.archive and mem.events
        self.mesh = sink.archive and mem.mesh_sync
        self.signature_us = mem.signature_interval_us
        self.publish_us = config.sync.publish_interval_us
        self.macro = config.witnessing.layer_enabled("macro")
        self.per_sensor = config.metrics.per_sensor_labels
        self.entry = ledger().sensor(resume.sensor) if resume.sensor else None
        if resume.state.collapsed:  # resumed collapsed: the gauge counts this process's sensors
            metrics().sensors_collapsed.inc()

    @property
    def sensor(self) -> str:
        return self.mem.sensor

    def _decide(self, em: WindowValues, ma: WindowValues, ingested: float) -> list[Any]:
        mem = self.mem
        wm = None if mem.master_final else mem.master_watermark
        sv = mem.state.advance(em, ma, wm)
        out: list[Any] = []
        if not len(sv):
            return out
        m = metrics()
        events = collapse_events(self.sensor, mem.cell, sv)
        if events:
            latency = time.time() - ingested if math.isfinite(ingested) else None
            for event, k in zip(events, np.flatnonzero(sv.event).tolist()):
                out.append(TopicRecord("collapse", self.sensor.encode("utf-8"), to_json_bytes(event)))
                m.transitions.labels(event.event).inc()
                if event.event == "collapse":
                    self.entry.collapses += 1
                    m.sensors_collapsed.inc()
                else:
                    self.entry.dissipations += 1
                    m.sensors_collapsed.dec()
                if latency is not None:
                    m.event_latency.observe(latency)
                if self.macro:
                    Tm, Te = complex(sv.T_master[k]), complex(sv.T_emissary[k])
                    out.append(WitnessEntry("macro", event.t_us, self.sensor, MacroWitness(
                        event=event, coherence_master=abs(Tm) ** 2, coherence_emissary=abs(Te) ** 2,
                        master_span=int(sv.master_span_us[k]) * 1e-6)))
            if self.events:
                out.append(events_rows(events))
        self.entry.coherence_sync = float(sv.coherence_sync[-1])
        self.entry.collapsed = bool(sv.collapsed[-1])
        if self.per_sensor:
            m.sensor_coherence.labels(self.sensor).set(self.entry.coherence_sync)
        publish = on_grid(sv.t, self.publish_us)
        if publish.any():
            picked = sv.select(publish)
            out.extend(TopicRecord("sync", self.sensor.encode("utf-8"), to_json_bytes(r))
                       for r in sync_records(self.node, self.sensor, mem.cell, picked))
            if self.mesh:
                out.append(mesh_rows(self.node, self.sensor, mem.cell, picked))
        if self.history:
            keep = on_grid(sv.t, self.signature_us)
            if keep.any():
                out.append(history_rows(self.sensor, sv.select(keep)))
        return out

    def on_batch(self, values: list[Emission]) -> tuple[Iterable[Any], bool]:
        started = time.perf_counter()
        em, ma = [], []
        ingested = math.inf
        if self.entry is None and values:
            self.mem.sensor = values[0].sensor
            self.entry = ledger().sensor(self.mem.sensor)
        for e in values:
            self.mem.cell = e.cell if e.cell is not None else self.mem.cell
            ingested = min(ingested, e.ingested)
            if e.transducer == "emissary":
                em.append(e.values)
            else:
                ma.append(e.values)
                if e.watermark is None:
                    self.mem.master_final = True
                else:
                    self.mem.master_watermark = max(self.mem.master_watermark, e.watermark)
        out = self._decide(WindowValues.concat(em), WindowValues.concat(ma), ingested)
        metrics().batch_seconds.labels("sync").observe(time.perf_counter() - started)
        return out, StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[Any], bool]:
        self.mem.master_final = True
        if self.entry is None:
            return [], StatefulBatchLogic.RETAIN
        return self._decide(WindowValues.empty(), WindowValues.empty(), math.inf), StatefulBatchLogic.RETAIN

    def snapshot(self) -> _SyncMemory:
        return self.mem


class _WitnessLogic(StatefulBatchLogic[WitnessEntry, Any, WitnessLog]):
    def __init__(self, config: Config, resume: WitnessLog | None) -> None:
        w = config.witnessing
        layers = tuple(layer for layer in ("micro", "meso", "macro", "meta") if w.layer_enabled(layer))
        if resume is None:
            resume = WitnessLog(w.meta_every, enabled=layers)
            if config.sink.archive and config.memory.witness_logs:
                from connectors.archive import last_witness_record

                last = last_witness_record(config.memory.root)
                if last is not None:  # continue the archived log and its chain
                    resume = WitnessLog(w.meta_every, last[1], seq=last[0] + 1, enabled=layers)
        self.log = resume
        self.archive = config.sink.archive and config.memory.witness_logs
        # One key for every witness record: one partition, so the topic keeps the log's order.
        self.key = config.becomingone.name.encode("utf-8")

    def _out(self, records) -> list[Any]:
        m = metrics()
        for r in records:
            m.witness_records.labels(r.layer).inc()
        out: list[Any] = [TopicRecord("witness", self.key, r.value) for r in records]
        if self.archive and records:
            out.append(witness_rows(records))
        return out

    def on_batch(self, values: list[WitnessEntry]) -> tuple[Iterable[Any], bool]:
        started = time.perf_counter()
        out = self._out(self.log.append(values))
        metrics().batch_seconds.labels("witness").observe(time.perf_counter() - started)
        return out, StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[Any], bool]:
        records = [self.log.observe()] if "meta" in self.log.enabled else []
        return self._out(records), StatefulBatchLogic.RETAIN

    def snapshot(self) -> WitnessLog:
        return self.log


# --------------------------------------------------------------------------
# Sinks.


class _DeadLetterFilePartition(StatelessSinkPartition[bytes]):
    def __init__(self, path: Path) -> None:
        self._path = path
        self._file = None  # opened on the first dead letter: a clean run leaves no file

    def write_batch(self, items: list[bytes]) -> None:
        if self._file is None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self._path.open("ab")
        self._file.write(b"".join(item + b"\n" for item in items))
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class DeadLetterFile(DynamicSink[bytes]):
    """Dead letters as JSON lines when there is no Kafka: ``<root>/dead-letters/worker-N.jsonl``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _DeadLetterFilePartition:
        return _DeadLetterFilePartition(self.root / "dead-letters" / f"worker-{worker_index}.jsonl")


def _kafka_sink(config: Config):
    from connectors.kafka import TopicSink, admin_settings, producer_settings

    name = config.becomingone.name
    topics = config.sink.topics
    return TopicSink(producer_settings(config.kafka, client_id=name),
                      [getattr(topics, r) for r in ("collapse", "witness", "sync", "dlq")],
                      admin=admin_settings(config.kafka, client_id=name))


# --------------------------------------------------------------------------
# Metrics endpoint.

_metrics_started = threading.Event()


def _start_metrics_once(config: Config) -> None:
    """Serve metrics from the first worker that builds a step (bytewax.run path)."""
    if not config.metrics.enabled or _metrics_started.is_set():
        return
    _metrics_started.set()
    try:
        serve(config.metrics.bind, config.metrics.port)
    except OSError as exc:
        log.warning("%s; this process runs without a metrics endpoint", exc)


# --------------------------------------------------------------------------
# The flow.


def _split(step_id: str, stream: Stream[Any]) -> tuple[Stream[Any], Stream[Any]]:
    """(values of keyed (key, value) items, everything else)."""
    b = op.branch(step_id, stream, lambda x: isinstance(x, tuple))
    return b.trues, b.falses


def _is(kind: type) -> Any:
    return lambda item: isinstance(item, kind)


def build_flow(config: Config, *, replay: bool = False, source: Any = None,
               flow_id: str = "becomingone") -> Dataflow:
    """The dataflow of ``config``.

    Args:
        config: a validated config.
        replay: accept any event time (no ``future`` rejection), for replays.
        source: a Bytewax source to read instead of ``config.source`` (for
            example :class:`flows.sources.ArchiveInput`).
        flow_id: the Bytewax dataflow id (names recovery state).

    Nothing connects to Kafka or opens files until the flow runs.

    >>> from schemas.config import parse_config
    >>> flow = build_flow(parse_config({"sink": {"archive": False}}))
    >>> flow.flow_id
    'becomingone'
    """
    flow = Dataflow(flow_id)
    src = config.source
    if source is not None:
        pass
    elif isinstance(src, SyntheticSource):
        source = SyntheticSamples(src)
    elif isinstance(src, FileSource):
        source = PhaseFile(src)
    else:
        source = kafka_source(config)
    raw = op.input("source", flow, source)

    decoded = op.flat_map_batch("decode", raw, _Decode(config))
    keyed_samples, decode_out = _split("decode_split", decoded)

    intake = op.stateful_batch("event_time", keyed_samples, lambda resume: _IntakeLogic(config, replay, resume))
    products_b = op.branch("products", intake, lambda kv: isinstance(kv[1], ProductBatch))
    products = products_b.trues
    intake_out = op.map("event_time_out", products_b.falses, lambda kv: kv[1])

    em = op.stateful_batch("emissary", products, lambda r: _TransducerLogic("emissary", config, r))
    ma = op.stateful_batch("master", products, lambda r: _TransducerLogic("master", config, r))
    emissions = op.merge("emissions", em, ma)
    emissions_b = op.branch("emission_split", emissions, lambda kv: isinstance(kv[1], Emission))
    transducer_out = op.map("transducer_out", emissions_b.falses, lambda kv: kv[1])

    sync = op.stateful_batch("sync", emissions_b.trues, lambda r: _SyncLogic(config, r))
    sync_out = op.map("sync_out", sync, lambda kv: kv[1])

    everything = op.merge("outputs", decode_out, intake_out, transducer_out, sync_out)
    witness_b = op.branch("witness_split", everything, _is(WitnessEntry))
    witness_keyed = op.key_on("witness_key", witness_b.trues, lambda _: _WITNESS_KEY)
    witness = op.stateful_batch("witness", witness_keyed, lambda r: _WitnessLogic(config, r))
    results = op.merge("results", witness_b.falses, op.map("witness_out", witness, lambda kv: kv[1]))

    topics_b = op.branch("topic_split", results, _is(TopicRecord))
    topic_records, archive_rows = topics_b.trues, topics_b.falses
    if config.kafka is not None:
        names = config.sink.topics
        messages = op.map("to_kafka", topic_records, lambda r: (getattr(names, r.role), r.key, r.value))
        op.output("kafka", messages, _kafka_sink(config))
    else:
        letters = op.filter_map("dead_letters", topic_records, lambda r: r.value if r.role == "dlq" else None)
        op.output("dead_letter_file", letters, DeadLetterFile(config.memory.root))

    if config.sink.archive:
        from connectors.archive import ArchiveSink

        mem = config.memory
        enabled = [name for name, on in (
            ("temporal_signatures", mem.temporal_signatures), ("coherence_history", mem.coherence_history),
            ("witnessing_logs", mem.witness_logs), ("events", mem.events), ("mesh_sync", mem.mesh_sync),
            ("input", mem.archive_input)) if on]
        rows = op.map("archive_rows", op.filter("archive_only", archive_rows, _is(ArchiveRows)),
                      lambda r: (r.dataset, r.table))
        op.output("archive", rows, ArchiveSink(mem.root, enabled, flush_rows=mem.flush_rows,
                                              flush_seconds=mem.flush_interval))
    return flow


def __getattr__(name: str) -> Any:
    # `python -m bytewax.run flows.kairos` looks up `flow`; building it here,
    # not at import, keeps `import flows.kairos` free of side effects.
    if name == "flow":
        return build_flow(load_config())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
