"""Prometheus metrics of the pipeline and the per-sensor run ledger.

Metrics live in prometheus-client's process-wide default registry, beside
the Python process metrics and the Kafka clients' gauges
(``becomingone_source_lag_messages``, ``becomingone_kafka_connected``; see
:mod:`connectors.kafka.health`), so one scrape of
``http://<metrics.bind>:<metrics.port>/metrics`` shows them all:

==========================================  =========  =====================================
name                                        type       labels
==========================================  =========  =====================================
``becomingone_samples_total``               counter    ``result``: accepted, malformed,
                                                       schema, nan, duplicate, late, future,
                                                       too_large, channels
``becomingone_transitions_total``           counter    ``event``: collapse, dissipate,
                                                       mesh_collapse, mesh_dissipate
``becomingone_witness_records_total``       counter    ``layer``: micro, meso, macro, meta
``becomingone_batch_seconds``               histogram  ``step``: decode, resonate, mesh, witness
``becomingone_event_latency_seconds``       histogram  (ingest of the samples to the event)
``becomingone_active_sensors``              gauge      sensors with state in this process
``becomingone_sensors_collapsed``           gauge      sensors in the collapsed state
``becomingone_sensor_coherence_sync``       gauge      ``sensor``; only with
                                                       ``metrics.per_sensor_labels``
``becomingone_mesh_cells``                  gauge      cells the mesh step has seen
``becomingone_mesh_cells_collapsed``        gauge      ``scope``: cell, global
``becomingone_mesh_order_parameter``        gauge      ``cell`` (``*``: global); only with
                                                       ``metrics.per_sensor_labels``
``becomingone_mesh_late_total``             counter    phasors left out: grid point decided
``becomingone_mesh_grid_points_total``      counter    ``scope``: mesh rows decided
``becomingone_witness_breaks_total``        counter    ``kind``: removed, changed, reordered,
                                                       rollback, malformed (witness node)
``becomingone_witness_audited_seq``         gauge      ``node``: the newest seq of its log read
                                                       in order (witness node)
``becomingone_witness_audited_total``       counter    ``result``: checked, repeated (an exact
                                                       repeat), unchecked (older than the
                                                       remembered window), other_node (witness
                                                       node)
``becomingone_relay_messages_total``        counter    ``topic``: copied by a relay node
``becomingone_relay_duplicates_total``      counter    ``topic``: repeats it dropped
``becomingone_relay_lag_messages``          gauge      ``topic``, ``partition`` (relay source)
``becomingone_archive_write_seconds``       histogram  ``dataset``: a writer thread's writes and
                                                       flushes
``becomingone_snapshot_seconds``            histogram  (the archive sink's epoch snapshots)
``becomingone_snapshot_timestamp_seconds``  gauge      Unix time of the newest one (0: no
                                                       archive in this process)
``becomingone_snapshot_pending_seconds``    gauge      age of the oldest archive rows no
                                                       snapshot covers yet (0: none)
==========================================  =========  =====================================

:func:`connectors.endpoint.serve` serves them (HTTP or HTTPS), with ``/healthz`` and ``/readyz``
(:mod:`connectors.health`).

Every dataflow worker of a process updates the same metrics (they are
thread-safe), so a scrape sees the process.  With several processes, each
serves its own endpoint.

:class:`RunLedger` is what ``becomingone run`` shows: a live progress line
and the closing table per sensor.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


from prometheus_client import REGISTRY, Counter, Gauge, Histogram

__all__ = ["PipelineMetrics", "RunLedger", "SensorLedger", "ledger", "metrics"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BATCH_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_DISK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class PipelineMetrics:
    """The pipeline's metrics, registered once per process (use :func:`metrics`)."""

    def __init__(self, registry=REGISTRY) -> None:
        self.samples = Counter("becomingone_samples", "Input samples by result: accepted or a dead-letter reason",
                               ["result"], registry=registry)
        self.transitions = Counter("becomingone_transitions", "Collapse and dissipate transitions",
                                   ["event"], registry=registry)
        self.witness_records = Counter("becomingone_witness_records", "Witness records logged, by layer",
                                       ["layer"], registry=registry)
        self.batch_seconds = Histogram("becomingone_batch_seconds", "Wall-clock seconds per batch of a step",
                                       ["step"], buckets=_BATCH_BUCKETS, registry=registry)
        self.event_latency = Histogram("becomingone_event_latency_seconds",
                                       "Seconds from decoding the samples to emitting the collapse event",
                                       buckets=_LATENCY_BUCKETS, registry=registry)
        self.active_sensors = Gauge("becomingone_active_sensors", "Sensors with state in this process",
                                    registry=registry)
        self.sensors_collapsed = Gauge("becomingone_sensors_collapsed", "Sensors in the collapsed state",
                                       registry=registry)
        self.sensor_coherence = Gauge("becomingone_sensor_coherence_sync",
                                      "Latest |T_sync|^2 per sensor (metrics.per_sensor_labels)",
                                      ["sensor"], registry=registry)
        self.dead_letter_refusals = Counter(
            "becomingone_dead_letter_refusals", "Dead letters the topic refused: resent without the original "
            "bytes, or dropped (and logged) when refused again", ["outcome"], registry=registry)
        self.kafka_connected = Gauge("becomingone_kafka_connected",
                                     "1 while the Kafka client reaches its cluster, 0 while no broker answers",
                                     ["client"], registry=registry)
        self.source_lag = Gauge("becomingone_source_lag_messages",
                                "Messages of the input partition not read yet (high watermark minus the next offset)",
                                ["topic", "partition"], registry=registry)
        self.mesh_cells = Gauge("becomingone_mesh_cells", "Cells of the mesh with a decided grid point in this process",
                                registry=registry)
        self.mesh_cells_collapsed = Gauge("becomingone_mesh_cells_collapsed", "Cells (and the global mesh) in the "
                                          "collapsed state", ["scope"], registry=registry)
        self.mesh_r = Gauge("becomingone_mesh_order_parameter", "Latest order parameter r per cell "
                            "(metrics.per_sensor_labels; the global mesh as cell '*')", ["cell"], registry=registry)
        self.mesh_late = Counter("becomingone_mesh_late", "Sensor phasors left out of the mesh: their grid point "
                                 "was final already", registry=registry)
        self.mesh_grid_points = Counter("becomingone_mesh_grid_points", "Mesh rows decided on the publish grid, by scope",
                                        ["scope"], registry=registry)
        self.witness_breaks = Counter("becomingone_witness_breaks", "Breaks of the audited witness log, by kind "
                                      "(witness node)", ["kind"], registry=registry)
        self.witness_audited_seq = Gauge("becomingone_witness_audited_seq", "The newest seq of the audited "
                                         "node's witness log read in order (witness node)", ["node"], registry=registry)
        self.witness_audited = Counter("becomingone_witness_audited", "Witness-topic messages read by the audit, "
                                       "by how they were taken (witness node)", ["result"], registry=registry)
        self.relay_messages = Counter("becomingone_relay_messages",
                                      "Messages a relay node copied to the target cluster (delivered), by topic",
                                      ["topic"], registry=registry)
        self.relay_duplicates = Counter("becomingone_relay_duplicates",
                                        "Repeats a relay node dropped (same topic, key and value within its window)",
                                        ["topic"], registry=registry)
        self.relay_lag = Gauge("becomingone_relay_lag_messages",
                               "Messages of a relayed source partition not yet confirmed by the target "
                               "(high watermark minus the committed offset)", ["topic", "partition"],
                               registry=registry)
        self.archive_write = Histogram("becomingone_archive_write_seconds", "Wall-clock seconds of each write "
                                       "(rows built, conformed, buffered, files written when due) and flush of a "
                                       "dataset's archive writer thread", ["dataset"], buckets=_DISK_BUCKETS,
                                       registry=registry)
        self.snapshot_seconds = Histogram("becomingone_snapshot_seconds", "Wall-clock seconds the archive sink's "
                                          "snapshot at the end of an epoch held the flow, per dataset",
                                          buckets=_DISK_BUCKETS, registry=registry)
        self.snapshot_timestamp = Gauge("becomingone_snapshot_timestamp_seconds", "Unix time of the archive "
                                        "sink's newest epoch snapshot in this process (its start before the "
                                        "first; 0: no archive sink)", registry=registry)
        self.snapshot_pending = Gauge("becomingone_snapshot_pending_seconds", "Seconds the oldest rows handed to "
                                      "the archive sink since its last epoch snapshot have waited for one (0: none "
                                      "waiting)", registry=registry)
        self.per_sensor_labels = False
        # Pre-create the label values, so a scrape lists every series from the start.
        for result in ("accepted", "malformed", "schema", "nan", "duplicate", "late", "future", "too_large",
                       "channels", "capacity"):
            self.samples.labels(result)
        for event in ("collapse", "dissipate"):
            self.transitions.labels(event)
        for outcome in ("resent_without_original", "dropped"):
            self.dead_letter_refusals.labels(outcome)
        for layer in ("micro", "meso", "macro", "meta"):
            self.witness_records.labels(layer)
        for scope in ("cell", "global"):
            self.mesh_cells_collapsed.labels(scope)
            self.mesh_grid_points.labels(scope)
        for event in ("mesh_collapse", "mesh_dissipate"):
            self.transitions.labels(event)
        for kind in ("removed", "changed", "reordered", "rollback", "malformed"):
            self.witness_breaks.labels(kind)
        for result in ("checked", "repeated", "unchecked", "other_node"):
            self.witness_audited.labels(result)


_lock = threading.Lock()
_metrics: PipelineMetrics | None = None


def metrics() -> PipelineMetrics:
    """The process's :class:`PipelineMetrics` (created on first use)."""
    global _metrics
    with _lock:
        if _metrics is None:
            _metrics = PipelineMetrics()
        return _metrics


@dataclass
class SensorLedger:
    """One sensor's run so far."""

    samples: int = 0
    rejected: int = 0
    collapses: int = 0
    dissipations: int = 0
    coherence_sync: float = float("nan")
    collapsed: bool = False
    raw: bool = False                 # a raw `value` sensor (SPEC section 9)
    rate_hz: float | None = None      # a raw sensor's sampling rate as measured
    no_phase: str | None = None       # why a raw sensor gives no phase at that rate


@dataclass
class CellLedger:
    """One mesh cell's run so far (``*``: the global mesh)."""

    sensors: int = 0
    collapses: int = 0
    dissipations: int = 0
    r: float = float("nan")
    r2_window: float = float("nan")
    collapsed: bool = False


@dataclass
class RunLedger:
    """Per-sensor counts of this process's run, for the progress line and the summary.

    Key groups keep their sensors' counts as columns of their own (``attach``:
    anything with ``count()``, ``totals()`` and ``rows()``); they are read only
    when the progress line or the summary asks.
    """

    named: dict[str, SensorLedger] = field(default_factory=dict)
    newest_watermark: int | None = None
    decode_rejected: int = 0  # dead letters of the decode step (not attributed to a sensor)
    groups: list = field(default_factory=list)
    cells: dict[str, CellLedger] = field(default_factory=dict)   # the mesh's cells, when it is on
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def mesh_rows(self, cells: list[str], n: list[int], r: list[float], r2: list[float],
                  collapsed: list[bool]) -> None:
        """The newest mesh rows of some cells (in time order: the last one of a cell stays)."""
        with self._lock:
            for k, cell in enumerate(cells):
                entry = self.cells.setdefault(cell, CellLedger())
                entry.sensors, entry.r, entry.r2_window, entry.collapsed = n[k], r[k], r2[k], collapsed[k]

    def mesh_transition(self, cell: str, collapse: bool) -> None:
        with self._lock:
            entry = self.cells.setdefault(cell, CellLedger())
            if collapse:
                entry.collapses += 1
            else:
                entry.dissipations += 1

    def sensor(self, name: str) -> SensorLedger:
        with self._lock:
            entry = self.named.get(name)
            if entry is None:
                entry = self.named[name] = SensorLedger()
            return entry

    def attach(self, group) -> None:
        """Count a key group's sensors (columns of its own) in this run."""
        with self._lock:
            self.groups.append(group)

    @property
    def sensors(self) -> dict[str, SensorLedger]:
        """Every sensor's entry (built from the groups' columns on each call: for the summary)."""
        with self._lock:
            out = dict(self.named)
            groups = list(self.groups)
        for g in groups:
            out.update(g.rows())
        return out

    def sensor_count(self) -> int:
        with self._lock:
            return len(self.named) + sum(g.count() for g in self.groups)

    def watermark(self, t_us: int) -> None:
        with self._lock:
            if self.newest_watermark is None or t_us > self.newest_watermark:
                self.newest_watermark = t_us

    def rejected_at_decode(self, n: int) -> None:
        with self._lock:
            self.decode_rejected += n

    def totals(self) -> tuple[int, int, int, int]:
        """(samples accepted, dead letters, collapses, dissipations) over all sensors."""
        with self._lock:
            rows = list(self.named.values())
            groups = list(self.groups)
        sums = [sum(r.samples for r in rows), self.decode_rejected + sum(r.rejected for r in rows),
                sum(r.collapses for r in rows), sum(r.dissipations for r in rows)]
        for g in groups:
            for k, v in enumerate(g.totals()):
                sums[k] += v
        return sums[0], sums[1], sums[2], sums[3]

    def reset(self) -> None:
        with self._lock:
            self.named.clear()
            self.groups.clear()
            self.newest_watermark = None
            self.decode_rejected = 0
            self.cells.clear()


_ledger = RunLedger()


def ledger() -> RunLedger:
    """The process's run ledger."""
    return _ledger
