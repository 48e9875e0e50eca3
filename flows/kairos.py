"""The BecomingONE dataflow (SPEC sections 3 to 6).

::

    source (kafka | file | synthetic)
      -> decode                 stateless, per batch: JSON / Arrow IPC -> SampleRuns (columns, a run per sensor),
      |                         bad rows -> dead letters; batches grouped by key group
      -> resonate  [key group]  all its sensors as columns (operators.fleet.Fleet, flows.resonate):
      |                           event time: channel check, watermark, reorder,
      |                                       late / duplicate / future   (one Numba pass)
      |                           stream: lag products, Emissary and Master pane windows,
      |                                   sync by event time, collapse / dissipate (one Numba pass)
      |                         then the outputs of all its sensors as one Arrow table per dataset
      -> witness   [one key]    the witness log: running SHA-256, meta records
      -> outputs: Kafka topics (collapse, witness, sync, dlq) and the Arrow archive

Steps in brackets are ``op.stateful_batch``.  A sensor belongs to the key
group ``crc32(sensor) % becomingone.key_groups``; the group is the unit Bytewax
places on a worker, so each sensor lives on one worker, and a step is
activated once per group with arrays of many sensors instead of once per
sensor.  Every value a sensor produces depends only on its own samples and
the config: its Emissary and Master are driven by its watermark in the same
call, so the sync sees every Master grid point up to the watermark before it
decides (the join by event time of SPEC section 3), never by arrival order.
That is what makes runs with 1 or 2 workers, or with any Kafka batch size,
produce the same events and archive rows.

Run it the Bytewax way (config from ``$BECOMINGONE_CONFIG``)::

    python -m bytewax.run flows.kairos -w 2

or with ``becomingone run``, which adds a progress line and a summary.
"""

from __future__ import annotations

import collections
import gc
import logging
import threading
import time
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import bytewax.operators as op
import numpy as np
from bytewax.dataflow import Dataflow, Stream
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import Message as KafkaMessage

from connectors.metrics import ledger, metrics, serve
from flows.emit import (ArchiveRows, TopicBlock, TopicRecords, bundled, dead_letter_records, deferred, witness_rows,
                        witnessed)
from flows.resonate import ResonateLogic
from flows.sources import PhaseFile, SyntheticSamples, kafka_source, request_stop, stop_requested
from operators.decode import RawMessage, decode_messages
from operators.params import KairosParams
from operators.resonator import ResonatorSettings
from operators.roster import SensorCapacity
from operators.samples import SampleBatch, SampleRuns
from operators.witness import LoggedRecords, WitnessEntries, WitnessEntry, WitnessLog
from schemas.config import Config, FileSource, KafkaSource, SyntheticSource, load_config
from schemas.messages import MAX_DEAD_LETTERS_PER_MESSAGE, DeadLetterLimits, MicroWitness, without_original

__all__ = ["Decode", "build_engine_flow", "build_flow", "kairos_params", "key_group", "request_stop",
           "resonator_settings"]  # request_stop: from flows.sources

log = logging.getLogger("becomingone.flow")

_WITNESS_KEY = "witness-log"


def kairos_params(config: Config) -> KairosParams:
    """The estimator parameters of ``config`` in exact microseconds."""
    k = config.kairos
    return KairosParams(
        tau_us=k.tau_us, velocity_span_us=k.velocity_span_us, max_gap_us=k.max_gap_us, omega=k.omega,
        weights=None if k.channel_weights is None else tuple(k.channel_weights),
    )


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


class Decode:
    """Raw messages of one batch -> (key group, [SampleRuns, ...]) items, dead letters,
    a micro witness record.

    The accepted samples of the batch are :class:`~operators.samples.SampleRuns`:
    columns, one run of rows per sensor, no object per sensor; they are split
    by :func:`key_group`, so a downstream step is activated once per key group
    with all its sensors' rows.
    """

    def __init__(self, config: Config) -> None:
        self.groups = config.becomingone.key_groups
        self._group_of: dict[str, int] = {}
        src = config.source
        self.max_bytes = src.max_message_bytes if isinstance(src, KafkaSource) else None
        self.limits = dead_letter_limits(config)
        self.micro = witnessed(config, "micro")
        self.max_future_us = config.sync.max_future_us
        self.newest: int | None = None  # newest event time seen (the micro records' t)

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
        started = time.perf_counter()
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
        blocks: list[SampleRuns] = []
        i = 0
        while i < len(ready):  # generated batches: consecutive ones of one channel count form one block
            j = i + 1
            while j < len(ready) and ready[j].channels == ready[i].channels:
                j += 1
            blocks.append(SampleRuns.of(ready[i:j]))
            i = j
        out: list[Any] = []
        if messages:
            decoded = decode_messages(messages, max_message_bytes=self.max_bytes, limits=self.limits, as_runs=True)
            blocks.extend(decoded.runs)
            out.extend(dead_letter_records(decoded.dead))
            m = metrics()
            for reason, n in decoded.counts.items():
                m.samples.labels(str(reason)).inc(n)
            drops = sum(decoded.counts.values())
            ledger().rejected_at_decode(drops)
        else:
            drops = 0
        samples = sum(len(b) for b in blocks)
        grouped: dict[str, list[SampleRuns]] = {}
        for block in blocks:
            for group, runs in self._by_group(block):
                grouped.setdefault(group, []).append(runs)
        out.extend(grouped.items())
        seconds = time.perf_counter() - started
        metrics().batch_seconds.labels("decode").observe(seconds)
        if self.micro:
            # Newest event time seen, leaving out the times the intake will refuse as `future`.
            limit = time.time_ns() // 1000 + self.max_future_us
            times = np.concatenate([b.t_us for b in blocks]) if blocks else np.empty(0, np.int64)
            usable = times[times <= limit]  # one pass over all sensors' rows, not one per sensor
            newest = int(usable.max()) if usable.size else None
            if newest is not None:
                self.newest = max(self.newest or newest, newest)
            elif self.newest is None:  # nothing usable seen yet: the wall clock stands in
                self.newest = time.time_ns() // 1000
            out.append(WitnessEntry("micro", self.newest, None, MicroWitness(
                operator="decode", worker=_worker(), items_in=len(messages) + len(ready), items_out=samples,
                drops=drops, seconds=seconds)))
        return bundled(out)


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


def dead_letter_limits(config: Config) -> DeadLetterLimits:
    """The dead-letter bounds of ``config`` (``sink.dlq_max_original_bytes``,
    ``source.max_dead_letters_per_message`` of a Kafka source)."""
    per_message = getattr(config.source, "max_dead_letters_per_message", MAX_DEAD_LETTERS_PER_MESSAGE)
    return DeadLetterLimits(max_original_bytes=config.sink.dlq_max_original_bytes, max_per_message=per_message)


def resonator_settings(config: Config, *, replay: bool = False) -> ResonatorSettings:
    """The per-sensor settings of ``config``; ``replay`` accepts any event time (no ``future``)."""
    em, ma, sync = config.emissary, config.master, config.sync
    return ResonatorSettings(
        kairos_params(config), em.tau_max_us, em.witness_interval_us, ma.tau_max_us, ma.witness_interval_us,
        config.kairos.coherence_threshold, sync.hysteresis, sync.phase_threshold, ma.min_span_us,
        lateness_us=sync.lateness_us, max_future_us=None if replay else sync.max_future_us,
    )


_collector_tuned = threading.Event()

#: Young-generation collections wait for this many new container objects (Python's default: 700).
YOUNG_COLLECTION_AFTER = 10_000
#: Full collections wait for this many collections of the middle generation (Python's default: 10).
FULL_COLLECTION_EVERY = 100


def _tune_garbage_collector() -> None:
    """Keep the garbage collector's full collections rare, once per process.

    By the time the flow is built, the imports (Numba, pyarrow,
    pydantic, Bytewax) have left over 100,000 long-lived objects; each full
    collection walked all of them, a pause of about 40 ms in the middle of a
    stream.  Frozen (``gc.freeze``), they are never scanned again.  The
    sensors' state then adds objects of its own that live for seconds (the
    values waiting for the next batch): with 10,000 sensors the default
    thresholds ran a full collection every few hundred milliseconds, each
    walking a million objects, a fifth of the flow's time.  Full collections
    now wait for :data:`FULL_COLLECTION_EVERY` middle-generation ones.  A
    batch's own objects (lists, samples, records) die with the batch; a young
    collection every 700 of them caught each in mid-batch and moved it on
    to the middle generation, 1,800 young and 170 middle collections in a
    20 s run of 10,000 sensors (1.0 s).  Young collections now wait for
    :data:`YOUNG_COLLECTION_AFTER` new objects (0.6 s in that run).
    """
    if not _collector_tuned.is_set():
        _collector_tuned.set()
        gc.collect()
        gc.freeze()
        _, middle, _ = gc.get_threshold()
        gc.set_threshold(YOUNG_COLLECTION_AFTER, middle, FULL_COLLECTION_EVERY)


def _resonate_logic(config: Config, replay: bool, resume: Any, capacity: SensorCapacity,
                    resumable: bool) -> ResonateLogic:
    """The resonate step of one key group (:class:`flows.resonate.ResonateLogic`)."""
    _start_metrics_once(config)
    _tune_garbage_collector()  # done already when the flow came from build_flow
    return ResonateLogic(config, resonator_settings(config, replay=replay), dead_letter_limits(config), resume,
                         capacity, resumable, stop_requested)


class _WitnessLogic(StatefulBatchLogic[WitnessEntries, Any, WitnessLog]):
    def __init__(self, config: Config, resume: WitnessLog | None) -> None:
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
            resume.heads = ManifestHeads(config.memory.root, config.memory.datasets)
        self.log = resume
        # One key for every witness record: one partition, so the topic keeps the log's order.
        self.key = config.becomingone.name.encode("utf-8")

    def _out(self, records: LoggedRecords) -> list[Any]:
        m = metrics()
        for layer, n in collections.Counter(records.layers).items():
            m.witness_records.labels(layer).inc(n)
        out: list[Any] = [TopicRecords([TopicBlock("witness", [self.key] * len(records), records.values)])]
        if self.archive and records:
            out.append(deferred(witness_rows, "witnessing_logs", [records]))
        return out

    def on_batch(self, values: list[WitnessEntries]) -> tuple[Iterable[Any], bool]:
        started = time.perf_counter()
        out = self._out(self.log.append(entry for bundle in values for entry in bundle))
        metrics().batch_seconds.labels("witness").observe(time.perf_counter() - started)
        return out, StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[Any], bool]:
        records = self.log.observe() if "meta" in self.log.enabled else self.log.append([])
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
    from connectors.kafka import admin_settings, producer_settings
    from connectors.kafka import TopicSink

    name = config.becomingone.name
    topics = config.sink.topics
    settings = producer_settings(config.kafka, client_id=name)
    wait = config.kafka.unavailable_timeout
    if "message.timeout.ms" not in config.kafka.root:
        # Output waits for an unreachable cluster as long as the flow does (then 30 s more; 0: forever).
        settings["message.timeout.ms"] = str(int((wait + 30.0) * 1000)) if wait > 0 else "0"
    return TopicSink(settings, [getattr(topics, r) for r in ("collapse", "witness", "sync", "dlq")],
                     admin=admin_settings(config.kafka, client_id=name), shrink={topics.dlq: without_original},
                     unavailable_timeout=wait)


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


def _source(config: Config, source: Any) -> Any:
    src = config.source
    if source is not None:
        return source
    if isinstance(src, SyntheticSource):
        return SyntheticSamples(src)
    if isinstance(src, FileSource):
        return PhaseFile(src)
    return kafka_source(config)


def build_flow(config: Config, *, replay: bool = False, source: Any = None,
               flow_id: str = "becomingone", recovery: bool = True) -> Dataflow:
    """The dataflow of ``config``.

    Args:
        config: a validated config.
        replay: accept any event time (no ``future`` rejection), for replays.
        source: a Bytewax source to read instead of ``config.source`` (for
            example :class:`flows.sources.ArchiveInput`).
        flow_id: the Bytewax dataflow id (names recovery state).
        recovery: False when the flow will run without Bytewax recovery
            (``becomingone run --no-recovery``): the archive's epoch snapshots
            then start writing its buffered rows without the flow waiting for
            them, and a requested stop (:func:`request_stop`) decides every
            pending grid point as at end of input.  True (the default) keeps
            every snapshot durable, and a requested stop leaves the grid
            points that are not final in the snapshot for the next run.

    Nothing connects to Kafka or opens files until the flow runs.

    >>> from schemas.config import parse_config
    >>> flow = build_flow(parse_config({"sink": {"archive": False}}))
    >>> flow.flow_id
    'becomingone'
    """
    # Before the flow runs, not at its first batch: the full collection it starts with takes ~0.1 s.
    _tune_garbage_collector()
    flow = Dataflow(flow_id)
    raw = op.input("source", flow, _source(config, source))

    decoded = op.flat_map_batch("decode", raw, Decode(config))
    keyed_samples, decode_out = _split("decode_split", decoded)
    resumable = recovery
    # One cap for the flow's key groups in this process (its workers are threads of it).
    capacity = SensorCapacity(config.becomingone.max_sensors)
    resonance = op.stateful_batch("resonate", keyed_samples,
                                  lambda resume: _resonate_logic(config, replay, resume, capacity, resumable))
    resonate_out = op.map("resonate_out", resonance, lambda kv: kv[1])

    everything = op.merge("outputs", decode_out, resonate_out)
    witness_b = op.branch("witness_split", everything, _is(WitnessEntries))
    witness_keyed = op.key_on("witness_key", witness_b.trues, lambda _: _WITNESS_KEY)
    witness = op.stateful_batch("witness", witness_keyed, lambda r: _WitnessLogic(config, r))
    results = op.merge("results", witness_b.falses, op.map("witness_out", witness, lambda kv: kv[1]))

    topics_b = op.branch("topic_split", results, _is(TopicRecords))
    topic_records, archive_rows = topics_b.trues, topics_b.falses
    if config.kafka is not None:
        from connectors.kafka import TopicMessages

        names = {role: getattr(config.sink.topics, role) for role in ("collapse", "witness", "sync", "dlq")}
        messages = op.flat_map("to_kafka", topic_records, lambda records: [
            TopicMessages(names[r.role], r.keys, r.values) if type(r) is TopicBlock else (names[r.role], r.key, r.value)
            for r in records])
        op.output("kafka", messages, _kafka_sink(config))
    else:
        letters = op.flat_map("dead_letters", topic_records, lambda records: [
            value for r in records if r.role == "dlq"
            for value in (r.values if type(r) is TopicBlock else (r.value,))])
        op.output("dead_letter_file", letters, DeadLetterFile(config.memory.root))

    if config.sink.archive:
        from connectors.archive import ArchiveSink

        mem = config.memory
        rows = op.map("archive_rows", op.filter("archive_only", archive_rows, _is(ArchiveRows)),
                      lambda r: (r.dataset, r.table))
        op.output("archive", rows, ArchiveSink(mem.root, mem.datasets, flush_rows=mem.flush_rows,
                                              flush_seconds=mem.flush_interval, durable_snapshots=recovery,
                                              signing_key=mem.signing_key_bytes))
    return flow


class _Discard(DynamicSink[Any]):
    def build(self, step_id: str, worker_index: int, worker_count: int) -> StatelessSinkPartition[Any]:
        class _Nothing(StatelessSinkPartition[Any]):
            def write_batch(self, items: list[Any]) -> None:
                pass

        return _Nothing()


class _CountLogic(StatefulBatchLogic[list[SampleRuns], Any, None]):
    def __init__(self, config: Config) -> None:
        _start_metrics_once(config)

    def on_batch(self, values: list[list[SampleRuns]]) -> tuple[Iterable[Any], bool]:
        metrics().samples.labels("decoded").inc(sum(len(b) for group in values for b in group))
        return [], StatefulBatchLogic.RETAIN

    def snapshot(self) -> None:
        return None


def build_engine_flow(config: Config, *, flow_id: str = "becomingone-engine") -> Dataflow:
    """The engine ceiling: the source, :class:`Decode` and the key-group routing, nothing else.

    What :func:`build_flow` costs before any per-sensor work: samples are read,
    decoded and delivered to the worker owning their key group, where they are
    only counted (``becomingone_samples_total{result="decoded"}``).  Used by the
    pipeline benchmark as the upper bound of the full flow.

    >>> from schemas.config import parse_config
    >>> build_engine_flow(parse_config({"sink": {"archive": False}})).flow_id
    'becomingone-engine'
    """
    flow = Dataflow(flow_id)
    raw = op.input("source", flow, _source(config, None))
    decoded = op.flat_map_batch("decode", raw, Decode(config))
    keyed_samples, _ = _split("decode_split", decoded)
    counted = op.stateful_batch("count", keyed_samples, lambda resume: _CountLogic(config))
    op.output("discard", counted, _Discard())
    return flow


def _check_kafka_or_exit(config: Config) -> None:
    """Under ``python -m bytewax.run``: a cluster out of reach, or settings librdkafka refuses, is one
    line and exit 1 (2 for the settings), as in ``becomingone run``, not a failure inside a worker."""
    import sys

    from connectors.kafka import KafkaSetupError
    from flows.run import check_kafka

    try:
        check_kafka(config)
    except KafkaSetupError as exc:
        print(f"becomingone: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as exc:  # KafkaUnreachable
        print(f"becomingone: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def _bytewax_recovery(argv: list[str]) -> bool:
    """True when ``python -m bytewax.run`` was given a recovery directory (``-r`` or its variable).

    >>> _bytewax_recovery(["flows.kairos", "-r", "rec", "-s", "5", "-b", "0"]), _bytewax_recovery(["flows.kairos"])
    (True, False)
    """
    import os

    return bool(os.environ.get("BYTEWAX_RECOVERY_DIRECTORY")) or any(
        a == "-r" or a.startswith("--recovery-directory") or (a.startswith("-r") and not a.startswith("--"))
        for a in argv[1:])


def _drain_on_sigterm() -> None:
    """Under ``python -m bytewax.run``: the first SIGTERM (Kubernetes' stop signal) stops the
    sources and lets the flow drain, as ``becomingone run`` does; a second one aborts."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        return

    def on_term(signum: int, frame: Any) -> None:
        if stop_requested():
            raise KeyboardInterrupt
        log.warning("SIGTERM: stopping the sources and draining (a second SIGTERM aborts)")
        request_stop()

    signal.signal(signal.SIGTERM, on_term)


def __getattr__(name: str) -> Any:
    # `python -m bytewax.run flows.kairos` looks up `flow`; building it here,
    # not at import, keeps `import flows.kairos` free of side effects.
    if name == "flow":
        import sys

        from schemas.config import ConfigError

        try:
            config = load_config()
        except ConfigError as exc:
            # Each problem with its key path, as `becomingone` prints them; exit 2 as for a bad config there.
            print(f"becomingone: invalid config:\n{exc}", file=sys.stderr)
            raise SystemExit(2) from None
        _check_kafka_or_exit(config)
        _drain_on_sigterm()
        return build_flow(config, recovery=_bytewax_recovery(sys.argv))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
