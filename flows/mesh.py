"""The mesh step: cells of sensors and the whole mesh (SPEC section 7).

One key for the flow: every cell's phasors meet in one state, decided by
the input watermark (:class:`operators.mesh_cells.MeshCells`).  Its outputs:

* ``mesh_sync/`` rows per cell and for the whole mesh, ``mesh_members/``
  rows, every sync.mesh.publish_interval;
* ``mesh_collapse`` / ``mesh_dissipate`` events (collapse topic, ``events/``);
* each cell's partial sums per grid point on the mesh topic (key = cell),
  which other nodes add into their T_global.

Without ``sync.mesh.peers`` T_global is the flow's own cells.  With peers,
T_global is the cells heard on the peers' mesh topics
(:class:`operators.mesh_global.MeshGlobal`), read by :func:`heard_cells`.
"""

from __future__ import annotations

import json
import logging
import pickle
from datetime import datetime, timedelta, timezone
from collections.abc import Iterable
from typing import Any

import bytewax.operators as op
import numpy as np
import pyarrow as pa
from bytewax.dataflow import Stream
from bytewax.operators import StatefulBatchLogic

from flows.emit import ArchiveRows, Emitted, TopicBlock, _table, _times, emitted_streams, EmittedStreams
from flows.log_context import SteppedSource, stepped_call, stepped_logic
from flows.observer import FlowObserver
from operators.mesh_cells import CellSums, MeshCells, MeshFinal, MeshSettings
from operators.mesh_global import MeshGlobal
from schemas.config import Config
from schemas.mesh import MESH_KEY, MeshPhasors, MeshProgress
from schemas.messages import to_json_bytes
from schemas.messages.mesh_records import MESH_FIXED_POINT, MeshCellSums, MeshEvent
from schemas.messages.wire import format_utc

__all__ = ["MeshLogic", "heard_cells", "mesh", "mesh_settings"]

log = logging.getLogger("becomingone.mesh")

#: Seconds between looks at the heard cells while some wait for a cell that may have timed out.
_RECHECK_SECONDS = 1.0


def mesh_settings(config: Config, *, from_peers: bool, partitions: int | None = None) -> MeshSettings:
    """The mesh parameters of ``config`` in microseconds; ``partitions``: the input's partitions, each of
    which the mesh hears from before it decides a grid point (None: those that have reported)."""
    m, sync = config.sync.mesh, config.sync
    threshold = m.threshold if m.threshold is not None else config.kairos.coherence_threshold
    return MeshSettings(m.interval_us, m.window_us, m.publish_interval_us, sync.lateness_us + m.lateness_us,
                        float(threshold), float(sync.hysteresis), float(m.lock_threshold),
                        config.becomingone.key_groups, global_from_cells=not from_peers,
                        idle_s=float(m.idle_timeout), partitions=partitions)


class MeshLogic(StatefulBatchLogic[list[Any], Emitted, bytes | None]):
    """The flow's cells and global mesh (state: :class:`MeshTable` and :class:`HeardCells`)."""

    def __init__(self, config: Config, resume: bytes | None, observer: FlowObserver, resumable: bool = True,
                 partitions: int | None = None) -> None:
        self.observer = observer
        self.resumable = resumable
        resume = pickle.loads(resume) if isinstance(resume, bytes) else resume
        peers = bool(config.sync.mesh.peers)
        self.settings = mesh_settings(config, from_peers=peers, partitions=partitions)
        table, heard = resume if resume is not None else (None, None)
        self.cells = MeshCells(self.settings, table)
        self.heard = MeshGlobal(self.settings, config.sync.mesh.cells, config.sync.mesh.cell_timeout,
                                heard) if peers else None
        self.node = config.becomingone.name
        mem, sink = config.memory, config.sink
        self.rows = sink.archive and mem.mesh_sync
        self.members = sink.archive and mem.mesh_members
        self.events = sink.archive and mem.events
        self.kafka = config.kafka is not None
        self.per_cell = config.metrics.per_sensor_labels

    def on_batch(self, values: list[list[Any]]) -> tuple[Iterable[Emitted], bool]:
        clock = self.observer.clock
        started = clock.timer()
        late = 0
        for items in values:
            for item in items:
                if isinstance(item, MeshPhasors):
                    late += self.cells.add(item)
                elif isinstance(item, MeshProgress):
                    self.cells.progress(item, clock.now())
                elif isinstance(item, CellSums) and self.heard is not None:
                    late += self.heard.hear(item, clock.now())
        if late:
            self.observer.metrics.mesh_late.inc(late)
        out = Emitted()
        self._emit(self.cells.decide(now=clock.now()), out, own=True)
        if self.heard is not None:
            self._emit(self.heard.decide(clock.now()), out, own=False)
        self.observer.metrics.batch_seconds.labels("mesh").observe(clock.timer() - started)
        return out.handed_on(), StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        # Heard cells may wait for one that stopped reporting, and the own cells for an idle partition:
        # look again once a timeout may have passed.
        if (self.heard is not None and self.heard.state.sums) or self.cells.t.pending:
            return datetime.now(timezone.utc) + timedelta(seconds=_RECHECK_SECONDS)
        return None

    def on_notify(self) -> tuple[Iterable[Emitted], bool]:
        out = Emitted()
        self._emit(self.cells.decide(now=self.observer.clock.now()), out, own=True)
        if self.heard is not None:
            self._emit(self.heard.decide(self.observer.clock.now()), out, own=False)
        return out.handed_on(), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[Emitted], bool]:
        if self.resumable and self.observer.stop.requested():
            return [], StatefulBatchLogic.RETAIN   # stopped, not ended: the next run decides the rest
        out = Emitted()
        self._emit(self.cells.decide(np.iinfo(np.int64).max), out, own=True)
        if self.heard is not None:
            self._emit(self.heard.decide(self.observer.clock.now(), everything=True), out, own=False)
        return out.handed_on(), StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes | None:
        """The state pickled (a copy later batches cannot change, at memory speed); None without recovery."""
        if not self.resumable:
            return None
        state = (self.cells.t, self.heard.state if self.heard is not None else None)
        return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)

    # --- outputs -----------------------------------------------------------------------------------

    def _emit(self, final: MeshFinal | None, out: Emitted, *, own: bool) -> None:
        if final is None:
            return
        m = self.observer.metrics
        rows = final.rows
        if own and len(final.sums) and self.kafka:
            out.records.append(TopicBlock("mesh", [c.encode("utf-8") for c in final.sums.cell],
                                          cell_sums_messages(self.node, final.sums)))
        if self.rows and len(rows["t"]):
            out.archive.append(ArchiveRows("mesh_sync", mesh_sync_table(rows)))
        if self.members and own and len(final.members["t"]):
            out.archive.append(ArchiveRows("mesh_members", mesh_members_table(final.members)))
        events = [MeshEvent.create(event=e, scope=scope, cell=cell, t_us=t, r2_window=r2, z=z, n_sensors=n)
                  for e, scope, cell, t, r2, z, n in final.events]
        if events:
            if self.kafka:
                out.records.append(TopicBlock("collapse", [e.sensor.encode("utf-8") for e in events],
                                              [to_json_bytes(e) for e in events]))
            if self.events:
                out.archive.append(ArchiveRows("events", mesh_events_table(events)))
            for e in events:
                m.transitions.labels(e.event).inc()
                m.mesh_cells_collapsed.labels(e.scope).inc(1 if e.event == "mesh_collapse" else -1)
                self.observer.ledger.mesh_transition(e.cell, e.event == "mesh_collapse")
        if len(rows["t"]):
            self.observer.ledger.mesh_rows(list(rows["cell"]), np.asarray(rows["n_sensors"]).tolist(),
                                           np.asarray(rows["r"]).tolist(), np.asarray(rows["r2_window"]).tolist(),
                                           (np.asarray(rows["state"]) == 1).tolist())
        if own:
            m.mesh_cells.set(len(self.cells.t.cells))
        for scope in ("cell", "global"):
            decided = sum(1 for s in rows["scope"] if s == scope)
            if decided:
                m.mesh_grid_points.labels(scope).inc(decided)
        if self.per_cell and len(rows["t"]):
            for cell, r in zip(rows["cell"], np.asarray(rows["r"]).tolist()):
                m.mesh_r.labels(cell).set(r)


def cell_sums_messages(node: str, sums: CellSums) -> list[bytes]:
    """Mesh-topic message values of ``sums`` (JSON, :class:`MeshCellSums` field for field)."""
    scale = 1.0 / MESH_FIXED_POINT
    out = []
    for cell, t, a, b, w, n in zip(sums.cell, sums.t.tolist(), sums.z_re.tolist(), sums.z_im.tolist(),
                                   sums.weight.tolist(), sums.n.tolist()):
        out.append(json.dumps({"cell": cell, "node": node, "t": format_utc(t), "z_sum": [a * scale, b * scale],
                               "weight": w * scale, "n": n}, separators=(",", ":"),
                              ensure_ascii=False).encode("utf-8"))
    return out


def parse_cell_sums(values: Iterable[bytes]) -> tuple[CellSums, int]:
    """Heard mesh-topic values as fixed-point sums, and how many were not valid :class:`MeshCellSums`."""
    cells, t, re, im, w, n, bad = [], [], [], [], [], [], 0
    for value in values:
        try:
            m = MeshCellSums.model_validate_json(value)
        except ValueError:
            bad += 1
            continue
        cells.append(m.cell)
        t.append(m.t_us)
        re.append(round(m.z_sum[0] * MESH_FIXED_POINT))
        im.append(round(m.z_sum[1] * MESH_FIXED_POINT))
        w.append(round(m.weight * MESH_FIXED_POINT))
        n.append(m.n)
    return CellSums(cells, *(np.array(x, np.int64) for x in (t, re, im, w, n))), bad


def mesh_sync_table(rows: dict) -> pa.Table:
    state = np.where(np.asarray(rows["state"]) == 1, "collapsed", "dissipated")
    fraction = pa.array(np.asarray(rows["locked_fraction"], np.float64), pa.float64(), from_pandas=True)  # NaN: null
    return _table("mesh_sync", {**rows, "t": _times(rows["t"]), "state": state.tolist(), "locked_fraction": fraction})


def mesh_members_table(members: dict) -> pa.Table:
    return _table("mesh_members", {**members, "t": _times(members["t"])})


def mesh_events_table(events: list[MeshEvent]) -> pa.Table:
    nan = [None] * len(events)
    return _table("events", {
        "event_id": [e.event_id for e in events], "event": [e.event for e in events],
        "reason": [e.reason for e in events], "sensor": [e.sensor for e in events],
        "cell": [e.cell for e in events], "t": _times(np.array([e.t_us for e in events], np.int64)),
        "coherence_sync": [e.r2_window for e in events],
        "t_sync_re": [e.z[0] for e in events], "t_sync_im": [e.z[1] for e in events],
        "t_master_re": nan, "t_master_im": nan, "t_emissary_re": nan, "t_emissary_im": nan, "delta_phase": nan,
    })


def heard_cells(step_id: str, flow, config: Config) -> Stream[tuple[str, list[Any]]]:
    """The mesh topics of ``sync.mesh.peers`` as ``(MESH_KEY, [CellSums])`` items."""
    from connectors.flow_topics import mesh_peer_source

    streams = []
    for k, peer in enumerate(config.sync.mesh.peers):
        raw = op.input(f"{step_id}_{k}", flow, SteppedSource(mesh_peer_source(config, peer)))
        streams.append(raw)
    merged = op.merge(f"{step_id}_merged", *streams) if len(streams) > 1 else streams[0]

    def parsed(messages: list[Any]) -> list[tuple[str, list[Any]]]:
        sums, bad = parse_cell_sums(m.value() if callable(getattr(m, "value", None)) else m.value
                                    for m in messages)
        if bad:
            log.warning("mesh: %d message(s) on a peer's mesh topic are not cell sums; left out", bad)
        return [(MESH_KEY, [sums])] if len(sums) else []

    return op.flat_map_batch(f"{step_id}_parsed", merged, stepped_call(f"{step_id}_parsed", parsed))


def mesh(step_id: str, items: Stream[tuple[str, list[Any]]], config: Config, observer: FlowObserver, *,
         resumable: bool = True, partitions: int | None = None) -> EmittedStreams:
    """The mesh step (:class:`MeshLogic`) over the resonate step's phasors and progress (and heard cells);
    ``resumable``: the flow runs with recovery (else no snapshot is built); ``partitions``: the input's
    partitions (the mesh waits to hear from each)."""

    def logic(resume: bytes | None) -> MeshLogic:
        return MeshLogic(config, resume, observer, resumable, partitions)

    decided = op.stateful_batch(step_id, items, stepped_logic(step_id, logic))
    return emitted_streams(step_id, op.map(f"{step_id}_out", decided, lambda kv: kv[1]))
