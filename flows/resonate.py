"""The resonate step: one key group's sensors through :class:`operators.fleet.Fleet`, and its outputs.

Per call: the group's batches go through the fleet in one pass (event time,
lag products, Emissary and Master windows, the sync), and the grid rows come
back as columns of all sensors.  The step turns those columns into what the
sinks take, built only for the sinks that are on: dead letters, collapse
events (topic, archive, macro witness), sync messages, meso witness records,
and the archive's input, signature, history and events rows; with the mesh
on (``sync.mesh_enabled``), each sensor's phasors on the mesh grid and the
input's progress, for the mesh step (:mod:`flows.mesh`).  Per-sensor
counts for the run summary are columns too (:class:`GroupLedger`).
"""

from __future__ import annotations

import logging
import math
import pickle
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import bytewax.operators as op
import numpy as np
from bytewax.dataflow import Stream
from bytewax.operators import StatefulBatchLogic

from connectors.metrics import SensorLedger
from flows.emit import (
    ArchiveRows,
    Emitted,
    SignatureBlock,
    SyncBlock,
    TopicBlock,
    TopicRecord,
    TopicRecords,
    collapse_events,
    dead_letter_records,
    deferred,
    emitted_streams,
    events_rows,
    history_rows,
    input_key_runs,
    input_rows,
    on_grid,
    picked_runs,
    signature_key_runs,
    signature_rows,
    sync_key_runs,
    sync_messages,
    witnessed,
)
from flows.log_context import stepped_logic
from flows.observer import FlowObserver
from operators.dead_letters import DeadLetterBudget
from operators.fleet import Fleet, FleetStep, FleetTable, refused_reasons
from operators.mesh_phasor import MeshFeed
from operators.params import dead_letter_limits
from operators.grid import WindowValues
from operators.intake import _rejection_texts, dead_letters
from operators.roster import SensorCapacity
from operators.resonator import resonator_settings
from schemas.mesh import MESH_KEY, MeshProgress
from schemas.samples import SampleRuns
from operators.sync import COLLAPSE, SyncValues
from operators.witness import WitnessBlock, WitnessEntries, WitnessEntry
from schemas.config import Config
from schemas.messages import MacroWitness, meso_records_json, per_row, to_json_bytes

__all__ = ["GroupLedger", "ResonateLogic", "ResonateOut", "resonate"]

_LOG = logging.getLogger("becomingone.raw")


class GroupLedger:
    """Per-sensor counts of one key group for the run summary, as columns indexed by sensor id."""

    def __init__(self, names: list[str], raw_rates=None) -> None:
        self.names = names  # the fleet's list: grows with it
        self.raw_rates = raw_rates  # () -> {sid: (Hz or None, why no phase or None)} of the raw sensors
        self.samples = np.zeros(0, np.int64)
        self.rejected = np.zeros(0, np.int64)
        self.collapses = np.zeros(0, np.int64)
        self.dissipations = np.zeros(0, np.int64)
        self.coherence = np.zeros(0)
        self.collapsed = np.zeros(0, np.bool_)
        self.seen = np.zeros(0, np.bool_)

    def grow(self) -> None:
        n = len(self.names)
        if n > self.samples.shape[0]:
            size = max(64, 2 * n)
            for name in ("samples", "rejected", "collapses", "dissipations", "coherence", "collapsed", "seen"):
                old = getattr(self, name)
                new = np.full(size, np.nan if name == "coherence" else 0, old.dtype)
                new[:old.shape[0]] = old
                setattr(self, name, new)

    def count(self) -> int:
        return int(self.seen.sum())

    def totals(self) -> tuple[int, int, int, int]:
        return (int(self.samples.sum()), int(self.rejected.sum()), int(self.collapses.sum()),
                int(self.dissipations.sum()))

    def rows(self) -> dict[str, SensorLedger]:
        """The sensors seen, as the run ledger's entries (built on demand, for the summary)."""
        rates = self.raw_rates() if self.raw_rates is not None else {}
        return {self.names[k]: SensorLedger(int(self.samples[k]), int(self.rejected[k]), int(self.collapses[k]),
                                            int(self.dissipations[k]), float(self.coherence[k]), bool(self.collapsed[k]),
                                            k in rates, *rates.get(k, (None, None)))
                for k in np.flatnonzero(self.seen).tolist()}


def _runs(sensor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sensor id of each run of equal ids, its length)."""
    if not sensor.size:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    starts = np.flatnonzero(np.r_[True, sensor[1:] != sensor[:-1]])
    return sensor[starts].astype(np.int64), np.diff(np.r_[starts, sensor.size])


class ResonateLogic(StatefulBatchLogic[list[SampleRuns], Any, bytes | None]):
    """All sensors of one key group (state: :class:`operators.fleet.FleetTable`, pickled).

    Bytewax builds the logic without its key; the sensors come with the batches
    (or from the snapshot on resume).
    """

    def __init__(self, config: Config, settings, limits, resume: bytes | FleetTable | None,
                 capacity: SensorCapacity, resumable: bool, observer: FlowObserver) -> None:
        if isinstance(resume, bytes):
            resume = pickle.loads(resume)
        track = None
        if isinstance(resume, tuple):   # with the mesh on: (table, the mesh feed's track)
            resume, track = resume
        self.fleet = Fleet(settings, capacity, resume)
        self.mesh = None
        if config.sync.mesh_enabled:
            mesh = config.sync.mesh
            self.mesh = MeshFeed(track, settings.params.weights, settings.params.max_gap_us, mesh.interval_us,
                                 dict(mesh.weights), config.becomingone.name)
        self.settings = settings
        self.limits = limits
        self.resumable = resumable
        self.observer = observer
        self.node = config.becomingone.name
        mem, sink = config.memory, config.sink
        self.archive_input = sink.archive and mem.archive_input
        self.signatures = sink.archive and mem.temporal_signatures
        self.history = sink.archive and mem.coherence_history
        self.events = sink.archive and mem.events
        self.kafka = config.kafka is not None
        self.signature_us = mem.signature_interval_us
        self.publish_us = config.sync.publish_interval_us
        self.meso = witnessed(config, "meso")
        self.meso_us = config.witnessing.meso_interval_us
        self.same_meso = self.meso_us == self.signature_us
        self.same_history = self.signature_us == self.publish_us
        self.macro = witnessed(config, "macro")
        # Collapse events as objects only for what takes them: the topic, the archive, the macro layer.
        self.event_objects = self.kafka or self.events or self.macro
        self.per_sensor = config.metrics.per_sensor_labels
        self.book = GroupLedger(self.fleet.names, self.fleet.raw_rates)
        self._warned: set[float] = set()
        observer.ledger.attach(self.book)
        m = observer.metrics
        live = self.fleet.table.live[:len(self.fleet.names)]
        m.active_sensors.inc(int(live.sum()))  # resumed: the gauges count this process's sensors
        m.sensors_collapsed.inc(int(self.fleet.collapsed(np.flatnonzero(live)).sum()))

    def on_batch(self, values: list[list[SampleRuns]]) -> tuple[Iterable[Any], bool]:
        clock = self.observer.clock
        started = clock.timer()
        blocks = [b for group in values for b in group if isinstance(b, SampleRuns)]
        live_before = self.fleet.live_count()
        now_us = clock.now_us()   # the clock of the `future` rule, and of its dead letters' text
        step = self.fleet.push_runs(blocks, now_us)
        if any(step.raw):
            self._warn_no_phase()
        self.book.grow()
        budget = DeadLetterBudget(self.limits)  # one allowance per input message over all sensors of the call
        out = Emitted()
        self._refused(step, budget, now_us, out)
        self._outputs(step, out)
        released = self.fleet.release_idle()
        if released is not None:
            self._outputs(released, out)
        if self.mesh is not None:
            self._mesh(step, released, [p for group in values for p in group if isinstance(p, MeshProgress)], out)
        self.observer.metrics.active_sensors.inc(self.fleet.live_count() - live_before)
        summaries = budget.summaries()
        if summaries:
            out.records.extend(dead_letter_records(summaries))
        self.observer.metrics.batch_seconds.labels("resonate").observe(clock.timer() - started)
        return out.handed_on(), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[Any], bool]:
        if self.resumable and self.observer.stop.requested():
            # Stopped, not at the end of input: the next run resumes these grid points exactly.
            return [], StatefulBatchLogic.RETAIN
        self.book.grow()
        out = Emitted()
        step = self.fleet.flush()
        self._outputs(step, out)
        if self.mesh is not None:
            self._mesh(step, None, [], out)
        return out.handed_on(), StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes | None:
        """The group's state (the fleet's table) as a pickle: a copy later batches cannot change.

        Pickled here rather than deep-copied: the table is a few large arrays and a name list,
        which pickle copies at memory speed where a deep copy walks them in Python, and Bytewax
        then stores the bytes as they are.  A flow built without recovery (``becomingone run
        --no-recovery``, or ``python -m bytewax.run`` given no recovery directory in any form
        its parser takes) stores no snapshot, so it builds none: None.
        """
        if not self.resumable:
            return None
        state = self.fleet.table if self.mesh is None else (self.fleet.table, self.mesh.track)
        return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)

    def _warn_no_phase(self) -> None:
        """Once per rate: raw sensors sampled at a rate the band does not fit give no phase (and their
        samples are archived but move nothing); the run summary lists them too."""
        for rate, why in self.fleet.refused_rates().items():
            if rate not in self._warned:
                self._warned.add(rate)
                _LOG.warning("raw sensors sampled at %g Hz give no phase: %s", rate, why)

    def _mesh(self, step: FleetStep, released: FleetStep | None, progress: list[MeshProgress],
              out: Emitted) -> None:
        """The grid phasors of the samples released now, then the input's progress (SPEC section 7),
        for the mesh step, in this order: progress follows the phasors it covers."""
        names, cells = self.fleet.names, self.fleet.table.cells
        lanes = step.phases + (released.phases if released is not None else [])
        items: list[Any] = []
        phasors = self.mesh.phasors(lanes, names, cells)
        if phasors is not None:
            items.append(phasors)
        items.extend(progress)
        if items:
            out.keyed.append((MESH_KEY, items))

    # --- outputs -----------------------------------------------------------------------------------

    def _refused(self, step: FleetStep, budget: DeadLetterBudget, now_us: int, out: Emitted) -> None:
        """Dead letters of the refused rows (into ``out``), their metrics and ledger counts."""
        if not step.refusals:
            return
        m, run = self.observer.metrics, self.observer.ledger
        for refusal in step.refusals:
            b = refusal.batch
            rows, reasons = refused_reasons(refusal)
            if refusal.reason is not None:
                texts: str | list[str] = refusal.text
                picked = b
            else:
                picked = b.take(rows)
                texts = _rejection_texts(reasons, picked.t_us, refusal.watermark_in[rows].tolist(),
                                         lateness_us=self.settings.lateness_us,
                                         max_future_us=self.settings.max_future_us, now_us=now_us)
            out.records.extend(dead_letter_records(dead_letters(picked, reasons, texts, budget)))
            for reason in set(reasons):
                m.samples.labels(reason).inc(reasons.count(reason))
            if refusal.reason == "capacity":
                run.rejected_at_decode(len(reasons))
            else:
                sid = self.fleet.sid_of(b.sensor)
                self.book.rejected[sid] += len(reasons)
                self.book.seen[sid] = True

    def _outputs(self, step: FleetStep, out: Emitted) -> None:
        """A step's rows (into ``out``): archive rows, topic messages, witness entries; the ledger."""
        m, book = self.observer.metrics, self.book
        names, cells = self.fleet.names, self.fleet.table.cells
        if step.accepted:
            m.samples.labels("accepted").inc(step.accepted)
        if step.watermark is not None:
            self.observer.ledger.watermark(step.watermark)
        pieces = []
        for (sid, t, phase), raw in zip(step.released, step.raw):
            run_sid, counts = _runs(sid)
            np.add.at(book.samples, run_sid, counts)
            book.seen[run_sid] = True
            if self.archive_input:
                ends = np.cumsum(counts)
                pieces.extend((names[s], cells[s], t[e - n:e], phase[e - n:e], raw)
                              for s, n, e in zip(run_sid.tolist(), counts.tolist(), ends.tolist()))
        if pieces:
            out.archive.append(deferred(input_rows, "input", pieces, runs=input_key_runs))
        e, ma, sv = step.resonance
        signatures: list[SignatureBlock] = []
        if e.t.size:
            run_sid, counts = _runs(e.sensor)
            values = WindowValues(e.t, e.T, e.n_products, e.span_us)
            signatures.extend(self._window_outputs("emissary", run_sid, counts, values, out))
            self._sync_outputs(run_sid, counts, _sync_values(sv), step, out)
        if ma.t.size:
            run_sid, counts = _runs(ma.sensor)
            signatures.extend(self._window_outputs("master", run_sid, counts,
                                                   WindowValues(ma.t, ma.T, ma.n_products, ma.span_us), out))
        if signatures:
            out.archive.append(deferred(signature_rows, "temporal_signatures", signatures, runs=signature_key_runs))

    def _labels(self, run_sid: np.ndarray) -> tuple[list[str], list[str | None]]:
        names, cells = self.fleet.names, self.fleet.table.cells
        ids = run_sid.tolist()
        return [names[s] for s in ids], [cells[s] for s in ids]

    def _block(self, run_sid, counts, index) -> tuple[list[str], list[str | None], list[int]]:
        runs, kept = picked_runs(counts, index)
        sensors, cells = self._labels(run_sid[runs])
        return sensors, cells, kept.tolist()

    def _window_outputs(self, kind: str, run_sid: np.ndarray, counts: np.ndarray, values: WindowValues,
                        out: Emitted) -> list[SignatureBlock]:
        """Meso witness entries (into ``out``) and signature rows of one transducer's values."""
        if not (self.signatures or self.meso):
            return []
        at_signature = on_grid(values.t, self.signature_us) if self.signatures or self.same_meso else None
        signatures = None
        if self.signatures and at_signature is not None:
            signatures = SignatureBlock(*self._signature_parts(kind, run_sid, counts, values, at_signature))
        if self.meso:
            at_meso = at_signature if self.same_meso else on_grid(values.t, self.meso_us)
            if at_meso is not None:
                block = signatures if self.same_meso and signatures is not None else \
                    SignatureBlock(*self._signature_parts(kind, run_sid, counts, values, at_meso))
                T, t = block.values.T, block.values.t
                records = meso_records_json(block.sensors, block.cells, block.transducers, block.counts, t, T.real,
                                            T.imag, block.values.n_products)
                out.witness.append(WitnessBlock("meso", t.tolist(), per_row(block.sensors, block.counts), records))
        return [] if signatures is None else [signatures]

    def _signature_parts(self, kind, run_sid, counts, values: WindowValues, index):
        sensors, cells, kept = self._block(run_sid, counts, index)
        return sensors, cells, [kind] * len(sensors), kept, WindowValues(*(c[index] for c in values))

    def _sync_outputs(self, run_sid: np.ndarray, counts: np.ndarray, sv: SyncValues, step: FleetStep,
                      out: Emitted) -> None:
        """Collapse events and sync messages (into ``out``), the history and mesh rows; the ledger."""
        m, book = self.observer.metrics, self.book
        ends = np.cumsum(counts)
        last = ends - 1
        book.coherence[run_sid] = sv.coherence_sync[last]
        book.collapsed[run_sid] = sv.collapsed[last]
        book.seen[run_sid] = True
        if self.per_sensor:
            for s, coherence in zip(run_sid.tolist(), sv.coherence_sync[last].tolist()):
                m.sensor_coherence.labels(self.fleet.names[s]).set(coherence)
        events = []
        changed = np.flatnonzero(sv.event)
        if changed.size and not self.event_objects:
            self._count(np.repeat(run_sid, counts)[changed], sv.event[changed] == COLLAPSE, step.ingested)
        elif changed.size:  # few: a transition is one sensor's event
            for i in np.unique(np.searchsorted(ends, changed, side="right")).tolist():
                a, b = int(ends[i] - counts[i]), int(ends[i])
                events.extend(self._transitions(int(run_sid[i]), sv.select(slice(a, b)),
                                                step.ingested, out))
        needed = self.kafka or (self.history and self.same_history)   # the history reuses it
        publish = on_grid(sv.t, self.publish_us) if needed else None
        published = history = None
        if publish is not None:
            sensors, cells, kept = self._block(run_sid, counts, publish)
            published = SyncBlock(sensors, cells, kept, sv.select(publish))
            if self.kafka:
                keys = per_row([sensor.encode("utf-8") for sensor in sensors], kept)
                out.records.append(TopicBlock("sync", keys, sync_messages(self.node, published)))
        if self.history:
            at_history = publish if self.same_history else on_grid(sv.t, self.signature_us)
            if at_history is not None:
                if self.same_history:
                    history = published
                else:
                    sensors, cells, kept = self._block(run_sid, counts, at_history)
                    history = SyncBlock(sensors, cells, kept, sv.select(at_history))
        if history is not None:
            out.archive.append(deferred(history_rows, "coherence_history", [history], runs=sync_key_runs))
        if events and self.events:
            out.archive.append(deferred(events_rows, "events", events))

    def _count(self, sid: np.ndarray, up: np.ndarray, ingested: float) -> None:
        """Transitions of sensors ``sid`` (one entry per transition; ``up``: a collapse) into the
        ledger and the metrics, for every sensor at once."""
        m, book = self.observer.metrics, self.book
        np.add.at(book.collapses, sid[up], 1)
        np.add.at(book.dissipations, sid[~up], 1)
        collapses, dissipations = int(up.sum()), int((~up).sum())
        if collapses:
            m.transitions.labels("collapse").inc(collapses)
        if dissipations:
            m.transitions.labels("dissipate").inc(dissipations)
        if collapses != dissipations:
            m.sensors_collapsed.inc(collapses - dissipations)
        if math.isfinite(ingested):
            latency = self.observer.clock.now() - ingested
            for _ in range(sid.shape[0]):
                m.event_latency.observe(latency)

    def _transitions(self, sid: int, sv: SyncValues, ingested: float, out: Emitted) -> list:
        sensor, cell = self.fleet.names[sid], self.fleet.table.cells[sid]
        events = collapse_events(sensor, cell, sv)
        key = sensor.encode("utf-8")
        changed = np.flatnonzero(sv.event)
        for event, k in zip(events, changed.tolist()):
            if self.kafka:
                out.records.append(TopicRecord("collapse", key, to_json_bytes(event)))
            if self.macro:
                out.witness.append(WitnessEntry("macro", int(sv.t[k]), sensor, MacroWitness.at(
                    event, complex(sv.T_master[k]), complex(sv.T_emissary[k]), int(sv.master_span_us[k]))))
        self._count(np.full(len(events), sid, np.int64), sv.event[changed] == COLLAPSE, ingested)
        return events


def _sync_values(sv) -> SyncValues:
    """The fleet's sync columns without their sensor column."""
    return SyncValues(sv.t, sv.T_master, sv.T_emissary, sv.T_sync, sv.coherence_sync, sv.delta_phase, sv.mature,
                      sv.collapsed, sv.event, sv.master_span_us)


@dataclass(frozen=True)
class ResonateOut:
    """The resonate step's streams.

    Attributes:
        records: topic messages (collapse events, sync messages, dead letters) of a call.
        witness: the meso and macro witness records of a call.
        archive: archive rows (input, signatures, history, mesh, events).
    """

    records: Stream[TopicRecords]
    witness: Stream[WitnessEntries]
    archive: Stream[ArchiveRows]
    mesh: Stream[tuple[str, list[Any]]]


def resonate(step_id: str, samples: Stream[tuple[str, list[SampleRuns]]], config: Config, observer: FlowObserver,
             *, replay: bool, resumable: bool) -> ResonateOut:
    """Each key group's sensors through its fleet (:class:`ResonateLogic`), keyed by group."""
    settings, limits = resonator_settings(config, replay=replay), dead_letter_limits(config)
    # One cap for the flow's key groups in this process (its workers are threads of it).
    capacity = SensorCapacity(config.becomingone.max_sensors)

    def logic(resume: bytes | None) -> ResonateLogic:
        observer.start()
        return ResonateLogic(config, settings, limits, resume, capacity, resumable, observer)

    resonance = op.stateful_batch(step_id, samples, stepped_logic(step_id, logic))
    out = emitted_streams(step_id, op.map(f"{step_id}_out", resonance, lambda kv: kv[1]))
    return ResonateOut(out.records, out.witness, out.archive, out.keyed)
