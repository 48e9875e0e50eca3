"""The BecomingONE dataflow (SPEC sections 3 to 6).

::

    source (kafka | file | synthetic)
      -> decode                 stateless, per batch: JSON / Arrow IPC -> SampleRuns (columns, a run per sensor),
      |                         bad rows -> dead letters; batches grouped by key group         (flows.decoding)
      -> resonate  [key group]  all its sensors as columns (operators.fleet.Fleet, flows.resonate):
      |                           event time: channel check, watermark, reorder,
      |                                       late / duplicate / future   (one Numba pass)
      |                           stream: lag products, Emissary and Master pane windows,
      |                                   sync by event time, collapse / dissipate (one Numba pass)
      |                         then the outputs of all its sensors as one Arrow table per dataset
      -> mesh      [one key]    with sync.mesh_enabled: cells' order parameter, R2, locks, T_global  (flows.mesh)
      -> witness   [one key]    the witness log: running SHA-256, meta records                 (flows.witnessing)
      -> outputs: Kafka topics (collapse, witness, sync, dlq) and the Arrow archive           (flows.outputs)

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

Each step returns its output streams by name; the metrics, the run ledger,
the clock and the stop signal reach the steps through one
:class:`~flows.observer.FlowObserver`.

Run it the Bytewax way (config from ``$BECOMINGONE_CONFIG``)::

    python -m bytewax.run flows.kairos -w 2

or with ``becomingone run``, which adds a progress line and a summary.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource
from bytewax.operators import StatefulBatchLogic

from connectors.discard import Discard
from connectors.stopping import StoppableSource
from flows.decoding import decode
from flows.log_context import SteppedSource
from flows.mesh import heard_cells, mesh
from flows.observer import FlowObserver
from flows.outputs import to_archive, to_dead_letter_file, to_topics
from flows.resonate import resonate
from flows.witnessing import witness
from schemas.samples import SampleRuns
from schemas.config import Config, FileSource, SyntheticSource

__all__ = ["build_engine_flow", "build_flow"]


def build_flow(config: Config, *, replay: bool = False, source: Any = None, flow_id: str = "becomingone",
               recovery: bool = True, observer: FlowObserver | None = None) -> Dataflow:
    """The dataflow of ``config``.

    A witness node (``becomingone.node: witness``) runs the auditor of another node's witness log
    instead: :func:`flows.witness_node.build_witness_flow` (``source``, if given, replaces its topic).

    Args:
        config: a validated config.
        replay: accept any event time (no ``future`` rejection), for replays.
        source: a Bytewax source to read instead of ``config.source`` (for
            example :class:`connectors.replay_source.ArchiveInput`).
        flow_id: the Bytewax dataflow id (names recovery state).
        recovery: False when the flow will run without Bytewax recovery
            (``becomingone run --no-recovery``): the archive's epoch snapshots
            then start writing its buffered rows without the flow waiting for
            them, and a requested stop (``observer.stop``) decides every
            pending grid point as at end of input.  True (the default) keeps
            every snapshot durable, and a requested stop leaves the grid
            points that are not final in the snapshot for the next run.
        observer: the metrics, ledger, clock and stop signal of the steps
            (default: :meth:`FlowObserver.of` the config).

    A relay node (``becomingone.node: relay``) gets the relay's flow instead
    (:func:`flows.relay.build_relay_flow`).  Nothing connects to Kafka or
    opens files until the flow runs.

    >>> from schemas.config import parse_config
    >>> flow = build_flow(parse_config({"sink": {"archive": False}}))
    >>> flow.flow_id
    'becomingone'
    """
    if config.becomingone.node == "witness":
        from flows.witness_node import build_witness_flow

        return build_witness_flow(config, flow_id=flow_id, recovery=recovery, observer=observer, source=source)
    if config.becomingone.node == "relay":
        from flows.relay import build_relay_flow

        return build_relay_flow(config, observer, flow_id=f"{flow_id}-relay")
    observer = FlowObserver.of(config) if observer is None else observer
    # Before the flow runs, not at its first batch: the full collection it starts with is a pause.
    tune_garbage_collector()
    flow = Dataflow(flow_id)
    source = _source(config, source, observer)
    raw = op.input("source", flow, source)
    decoded = decode("decode", raw, config, observer, replay=replay)
    resonated = resonate("resonate", decoded.samples, config, observer, replay=replay, resumable=recovery)
    archive_rows = [resonated.archive]
    records = [decoded.records, resonated.records]
    if config.sync.mesh_enabled:
        mesh_in = resonated.mesh
        if config.sync.mesh.peers:
            mesh_in = op.merge("mesh_in", mesh_in, heard_cells("mesh_peers", flow, config))
        # Every partition of the input is heard from before a grid point is decided: at start one
        # partition's samples may come before another has said anything.
        partitions = len(source.list_parts()) if isinstance(source, FixedPartitionedSource) else None
        meshed = mesh("mesh", mesh_in, config, observer, resumable=recovery, partitions=partitions)
        archive_rows.append(meshed.archive)
        records.append(meshed.records)
    logged = witness("witness", op.merge("witness_entries", decoded.witness, resonated.witness), config, observer)
    records = op.merge("records", *records, logged.records)
    if config.kafka is not None:
        to_topics("kafka", records, config)
    else:
        to_dead_letter_file("dead_letter_file", records, config)
    if config.sink.archive:
        to_archive("archive", op.merge("archive_rows_in", *archive_rows, logged.archive), config,
                   durable_snapshots=recovery)
    return flow


def build_engine_flow(config: Config, *, flow_id: str = "becomingone-engine",
                      observer: FlowObserver | None = None) -> Dataflow:
    """The engine ceiling: the source, the decode step and the key-group routing, nothing else.

    What :func:`build_flow` costs before any per-sensor work: samples are read,
    decoded and delivered to the worker owning their key group, where they are
    only counted (``becomingone_samples_total{result="decoded"}``).  Used by the
    pipeline benchmark as the upper bound of the full flow.

    >>> from schemas.config import parse_config
    >>> build_engine_flow(parse_config({"sink": {"archive": False}})).flow_id
    'becomingone-engine'
    """
    observer = FlowObserver.of(config) if observer is None else observer
    flow = Dataflow(flow_id)
    raw = op.input("source", flow, _source(config, None, observer))
    decoded = decode("decode", raw, config, observer)
    counted = op.stateful_batch("count", decoded.samples, lambda resume: _CountLogic(observer))
    op.output("discard", counted, Discard())
    return flow


def _source(config: Config, source: Any, observer: FlowObserver) -> Any:
    """``source``, or the source of ``config.source``, ended by the observer's stop signal
    (a source of fixed partitions; every source of :mod:`connectors` is one)."""
    if source is None:
        src = config.source
        if isinstance(src, SyntheticSource):
            from connectors.synthetic import SyntheticSamples

            source = SyntheticSamples(src)
        elif isinstance(src, FileSource):
            from connectors.file_source import PhaseFile

            source = PhaseFile(src)
        else:
            from connectors.flow_topics import kafka_source

            source = kafka_source(config)
    return SteppedSource(StoppableSource(source, observer.stop)) if isinstance(source, FixedPartitionedSource) else source


class _CountLogic(StatefulBatchLogic[list[SampleRuns], Any, None]):
    """The engine ceiling's only per-group work: count the samples."""

    def __init__(self, observer: FlowObserver) -> None:
        self.observer = observer
        observer.start()

    def on_batch(self, values: list[list[SampleRuns]]) -> tuple[Iterable[Any], bool]:
        self.observer.metrics.samples.labels("decoded").inc(sum(len(b) for group in values for b in group))
        return [], StatefulBatchLogic.RETAIN

    def snapshot(self) -> None:
        return None


#: Young-generation collections wait for this many new container objects (Python's default: 700).
YOUNG_COLLECTION_AFTER = 10_000
#: Full collections wait for this many collections of the middle generation (Python's default: 10).
FULL_COLLECTION_EVERY = 100


def tune_garbage_collector() -> None:
    """Keep the garbage collector's full collections rare, once per process.

    By the time the flow is built, the imports (Numba, pyarrow, pydantic,
    Bytewax) have left many long-lived objects that every full collection
    would walk again, a pause in the middle of a stream: they are frozen
    (``gc.freeze``) and never scanned again.  The sensors' state adds objects
    that live for seconds, so at the default thresholds full collections would
    walk them over and over: full collections wait for
    :data:`FULL_COLLECTION_EVERY` middle-generation ones.  A batch's own
    objects die with the batch; a young collection every 700 of them would
    catch each in mid-batch and move it on: young collections wait for
    :data:`YOUNG_COLLECTION_AFTER` new objects.  The measurements are in
    ``docs/pipeline.md`` (the resonate step).
    """
    young, middle, full = gc.get_threshold()
    if (young, full) != (YOUNG_COLLECTION_AFTER, FULL_COLLECTION_EVERY):  # the thresholds tell it is done
        gc.collect()
        gc.freeze()
        gc.set_threshold(YOUNG_COLLECTION_AFTER, middle, FULL_COLLECTION_EVERY)


def __getattr__(name: str) -> Any:
    # `python -m bytewax.run flows.kairos` looks up `flow`; building it here,
    # not at import, keeps `import flows.kairos` free of side effects.
    if name == "flow":
        from flows.run import bytewax_run_flow

        return bytewax_run_flow()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
