"""Cells of sensors and the whole mesh: order parameter, R2, locks, finality (SPEC section 7).

A :class:`MeshCells` takes the grid phasors of every key group
(:class:`~schemas.mesh.MeshPhasors`) and the input's progress per source
partition (:class:`~schemas.mesh.MeshProgress`), and decides grid point g
once the input watermark (the minimum over partitions, each as every key
group has reported it, less ``lateness``) has passed it.  At each final g,
per cell::

    Z_sum = sum_P W_P u_P(g),  W = sum_P W_P,  N = contributing sensors,
    Z = Z_sum / W,  r = |Z|,  psi = arg Z,

summed in fixed point (:data:`~schemas.messages.MESH_FIXED_POINT`), so the
sums are the same in any order, on any worker count and across nodes; the
global mesh adds the cells' sums the same way.  Then, in grid order,
R2 and the state machine (:func:`~operators.mesh_scan.scan_cells`) and each
sensor's lock (:func:`~operators.mesh_scan.scan_locks`).  A phasor for a
grid point already final is mesh-late: counted, left out.

State is :class:`MeshTable` (snapshotted as is); the logic is :class:`MeshCells`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from operators.mesh_scan import scan_cells, scan_locks
from schemas.mesh import MeshPhasors, MeshProgress
from schemas.messages.mesh_records import GLOBAL_CELL, MESH_FIXED_POINT

__all__ = ["CellSums", "MeshCells", "MeshFinal", "MeshSettings", "MeshTable", "combine_sums", "empty_rows"]

_NONE = np.iinfo(np.int64).min
#: The progress a key group reports at end of input: every grid point may be decided.
END_OF_INPUT = np.iinfo(np.int64).max


@dataclass(frozen=True)
class MeshSettings:
    """The mesh's parameters in exact microseconds (from ``sync.mesh`` and ``sync``)."""

    interval_us: int
    window_us: int
    publish_us: int
    lateness_us: int          # sync.lateness + sync.mesh.lateness
    threshold: float
    hysteresis: float
    lock_threshold: float
    groups: int               # key groups that report progress
    global_from_cells: bool = True   # False: T_global comes from the cells heard on the mesh topic
    idle_s: float = math.inf  # a partition whose progress stood still this long (wall clock) waits no more
    partitions: int | None = None  # the input's partitions: until each has reported, nothing is decided


@dataclass
class CellSums:
    """Fixed-point partial sums of (cell, g) rows: what the mesh topic carries."""

    cell: list[str]
    t: np.ndarray        # int64 us
    z_re: np.ndarray     # int64, units of 2**-32
    z_im: np.ndarray
    weight: np.ndarray   # int64, units of 2**-32
    n: np.ndarray        # int64

    def __len__(self) -> int:
        return int(self.t.shape[0])


@dataclass
class MeshFinal:
    """What deciding some grid points gave: rows of ``mesh_sync`` / ``mesh_members``, the transitions,
    and the cells' sums (for the mesh topic)."""

    sums: CellSums
    rows: dict[str, np.ndarray | list]          # mesh_sync columns
    members: dict[str, np.ndarray | list]       # mesh_members columns
    events: list[tuple[str, str, str, int, float, complex, int]]  # (event, scope, cell, t, R2, Z, N)
    late: int = 0


@dataclass
class _Rings:
    """Per cell (or mesh): the window's r^2 by slot, first grid point, state."""

    ring_g: np.ndarray
    ring_v: np.ndarray
    first_g: np.ndarray
    collapsed: np.ndarray

    @classmethod
    def empty(cls, slots: int) -> _Rings:
        return cls(np.empty((0, slots), np.int64), np.empty((0, slots)), np.empty(0, np.int64), np.empty(0, np.int8))

    def reserve(self, n: int) -> None:
        have = self.first_g.shape[0]
        if n <= have:
            return
        size = max(n, 2 * have, 8)
        slots = self.ring_g.shape[1]
        self.ring_g = np.vstack((self.ring_g, np.full((size - have, slots), _NONE, np.int64)))
        self.ring_v = np.vstack((self.ring_v, np.zeros((size - have, slots))))
        self.first_g = np.concatenate((self.first_g, np.full(size - have, _NONE, np.int64)))
        self.collapsed = np.concatenate((self.collapsed, np.zeros(size - have, np.int8)))


@dataclass
class MeshTable:
    """The mesh step's state: names, pending phasors, progress, the rings and panes."""

    cells: list[str] = field(default_factory=list)            # cell index -> name
    sensors: list[str] = field(default_factory=list)          # sensor index -> name
    sensor_cell: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    pending: list[tuple[np.ndarray, ...]] = field(default_factory=list)  # (sensor, cell, g, u, W fixed)
    progress: dict[tuple[str, str], int] = field(default_factory=dict)   # (group, partition) -> newest us
    advanced: dict[str, float] = field(default_factory=dict)   # partition -> wall time its progress last grew
    decided: int = _NONE                                      # grid points <= this are final
    cell_rings: _Rings | None = None
    mesh_rings: _Rings | None = None                           # one row: the global mesh
    pane_id: np.ndarray | None = None
    pane_sum: np.ndarray | None = None
    pane_n: np.ndarray | None = None


class MeshCells:
    """The cells of a flow (state: :class:`MeshTable`)."""

    def __init__(self, settings: MeshSettings, table: MeshTable | None = None) -> None:
        self.s = settings
        self.t = table if table is not None else MeshTable()
        t = self.t
        slots = settings.window_us // settings.interval_us
        panes = max(1, settings.window_us // settings.publish_us)
        if t.cell_rings is None:
            t.cell_rings, t.mesh_rings = _Rings.empty(slots), _Rings.empty(slots)
            t.mesh_rings.reserve(1)
            t.pane_id = np.full((0, panes), _NONE, np.int64)
            t.pane_sum, t.pane_n = np.zeros((0, panes), np.complex128), np.zeros((0, panes), np.int64)
        self._sensor_index = {name: i for i, name in enumerate(t.sensors)}
        self._cell_index = {name: i for i, name in enumerate(t.cells)}
        # Wall-clock times of the process that took the snapshot mean nothing here: a restart that took
        # longer than idle_s would make every partition but the first to report look idle. A resumed
        # partition's idle clock starts when this process first looks (``watermark``).
        t.advanced.clear()
        self._first_look: float | None = None     # wall clock of this process's first watermark

    # --- input -------------------------------------------------------------------------------------

    def add(self, block: MeshPhasors) -> int:
        """Keep a key group's phasors until their grid points are final; returns how many were mesh-late."""
        if not len(block):
            return 0
        names = self._indices(block.sensors, block.cells)
        sidx = names[block.code]
        late = block.g <= self.t.decided
        kept = ~late
        if kept.any():
            w = np.rint(block.weights * MESH_FIXED_POINT).astype(np.int64)[block.code]
            cidx = self.t.sensor_cell[sidx]      # the cell the sample named, now: a later move changes nothing
            self.t.pending.append((sidx[kept], cidx[kept], block.g[kept], block.u[kept], w[kept]))
        return int(late.sum())

    def progress(self, report: MeshProgress, now: float = 0.0) -> None:
        """A key group's report of a partition's progress, heard at wall-clock time ``now`` (s)."""
        key = (report.group, report.partition)
        if report.newest_us > self.t.progress.get(key, _NONE):
            self.t.progress[key] = report.newest_us
            self.t.advanced[report.partition] = now

    def watermark(self, now: float | None = None) -> int:
        """The input watermark less the mesh lateness: grid points at or below it may be decided.

        With ``now`` (wall clock, s), a partition whose progress has not grown for ``idle_s`` is not
        waited for while another one moves: a partition that ran dry (or was emptied by its producer)
        would otherwise hold every cell back.  Its later phasors, if any, are then mesh-late.
        """
        by_partition: dict[str, list[int]] = {}
        for (group, partition), newest in self.t.progress.items():
            by_partition.setdefault(partition, []).append(newest)
        if self.s.partitions is not None and len(by_partition) < self.s.partitions:
            # A partition that has not reported yet may hold the earliest samples: it is waited for, as
            # one that stands still is, until idle_s after this process first looked (an empty partition).
            if now is None or not math.isfinite(self.s.idle_s):
                return _NONE
            if self._first_look is None:
                self._first_look = now
            if now - self._first_look <= self.s.idle_s:
                return _NONE
        if now is not None and math.isfinite(self.s.idle_s):
            moving = {p: r for p, r in by_partition.items() if now - self.t.advanced.setdefault(p, now) <= self.s.idle_s}
            if moving:
                by_partition = moving
        if not by_partition:
            return _NONE
        marks = []
        for partition, reports in by_partition.items():
            if len(reports) < self.s.groups:
                return _NONE        # a key group has not reported this partition yet
            marks.append(min(reports))
        mark = min(marks)
        return END_OF_INPUT if mark == END_OF_INPUT else mark - self.s.lateness_us

    def decide(self, upto: int | None = None, now: float | None = None) -> MeshFinal | None:
        """Decide every pending grid point <= ``upto`` (default: the watermark at wall-clock time ``now``);
        None when none is due."""
        upto = self.watermark(now) if upto is None else upto
        if upto == _NONE or upto <= self.t.decided:
            return None
        g_last = (upto // self.s.interval_us) * self.s.interval_us if upto != END_OF_INPUT else upto
        t = self.t
        if not t.pending:
            t.decided = max(t.decided, g_last) if g_last != END_OF_INPUT else t.decided
            return None
        sidx, cidx, g, u, w = (np.concatenate(c) for c in zip(*t.pending))
        due = g <= g_last
        t.pending = [(sidx[~due], cidx[~due], g[~due], u[~due], w[~due])] if (~due).any() else []
        if g_last != END_OF_INPUT:
            t.decided = g_last
        elif due.any():
            t.decided = int(g[due].max())
        if not due.any():
            return None
        return self._final(sidx[due], cidx[due], g[due], u[due], w[due])

    # --- the math ----------------------------------------------------------------------------------

    def _final(self, sidx: np.ndarray, cidx: np.ndarray, g: np.ndarray, u: np.ndarray, w: np.ndarray) -> MeshFinal:
        s, t = self.s, self.t
        # Per (cell, g): fixed-point sums, exact in any order.
        order = np.lexsort((sidx, g, cidx))
        sidx, g, u, w, cidx = sidx[order], g[order], u[order], w[order], cidx[order]
        zr = np.rint(u.real * w).astype(np.int64)
        zi = np.rint(u.imag * w).astype(np.int64)
        starts = np.flatnonzero(np.concatenate(([True], (cidx[1:] != cidx[:-1]) | (g[1:] != g[:-1]))))
        sums_re, sums_im = np.add.reduceat(zr, starts), np.add.reduceat(zi, starts)
        weights, counts = np.add.reduceat(w, starts), np.diff(np.append(starts, len(g)))
        cell_of, g_of = cidx[starts], g[starts]
        Z = _ratio(sums_re, sums_im, weights)
        r = np.abs(Z)
        # Each sensor against its cell's mean field at the same g.
        row_group = np.repeat(np.arange(len(starts)), counts)
        rel = u * np.conj(Z[row_group])
        size = np.abs(rel)
        rel = np.where(size > 0, rel / np.where(size > 0, size, 1.0), 0.0)
        by_g = np.lexsort((sidx, g))
        lock_sorted = scan_locks(sidx[by_g], g[by_g], rel[by_g], t.pane_id, t.pane_sum, t.pane_n,
                                 s.publish_us, True)
        lock = np.empty_like(lock_sorted)
        lock[by_g] = lock_sorted
        # R2 and transitions, each cell in grid order (rows are sorted by cell, then g).
        t.cell_rings.reserve(len(t.cells))
        rings = t.cell_rings
        r2w, event, state = scan_cells(cell_of, g_of, r * r, rings.ring_g, rings.ring_v, rings.first_g,
                                       rings.collapsed, s.window_us, s.interval_us, s.threshold, s.hysteresis)
        sums = CellSums([t.cells[c] for c in cell_of.tolist()], g_of, sums_re, sums_im, weights, counts)
        # Publish points: the rows, the members, the locked fraction.
        pub = g_of % s.publish_us == 0
        member = np.flatnonzero(g % s.publish_us == 0)
        locked = np.zeros(len(starts), np.int64)
        np.add.at(locked, row_group[member], (lock[member] >= s.lock_threshold).astype(np.int64))
        fraction = locked / counts
        rows = _sync_rows("cell", [t.cells[c] for c in cell_of[pub].tolist()], g_of[pub], counts[pub],
                          weights[pub], Z[pub], r2w[pub], fraction[pub], state[pub])
        members = {"cell": [t.cells[c] for c in cidx[member].tolist()],
                   "sensor": [t.sensors[i] for i in sidx[member].tolist()], "t": g[member],
                   "lock": lock[member], "rel_phase": np.angle(rel[member])}
        events = _events("cell", [t.cells[c] for c in cell_of.tolist()], g_of, event, r2w, Z, counts)
        final = MeshFinal(sums, rows, members, events)
        if s.global_from_cells:
            self._global(final, sums)
        return in_grid_order(final)

    def _global(self, final: MeshFinal, sums: CellSums) -> None:
        """T_global of the cells' sums at each g, appended to ``final``."""
        glob = combine_sums(sums)
        _append_global(final, glob, self.t.mesh_rings, self.s)

    def _indices(self, sensors: list[str], cells: list[str]) -> np.ndarray:
        """Each sensor's index (new sensors and cells registered; a sensor that moved cells moves)."""
        n = len(sensors)
        try:    # known sensors and cells (every call after a sensor's first): C-level lookups, no Python per sensor
            index = np.fromiter(map(self._sensor_index.__getitem__, sensors), np.int64, n)
            cell = np.fromiter(map(self._cell_index.__getitem__, cells), np.int64, n)
        except KeyError:
            return np.fromiter((self._sensor(s, c) for s, c in zip(sensors, cells)), np.int64, n)
        moved = self.t.sensor_cell[index] != cell
        if moved.any():
            self.t.sensor_cell[index[moved]] = cell[moved]
        return index

    def _sensor(self, name: str, cell: str) -> int:
        i = self._sensor_index.get(name)
        t = self.t
        c = self._cell_index.get(cell)
        if c is None:
            c = self._cell_index[cell] = len(t.cells)
            t.cells.append(cell)
        if i is None:
            i = self._sensor_index[name] = len(t.sensors)
            t.sensors.append(name)
            if i >= t.pane_id.shape[0]:     # room for twice as many: a sensor's arrival costs O(1)
                grow = max(64, t.pane_id.shape[0])
                panes = t.pane_id.shape[1]
                t.pane_id = np.vstack((t.pane_id, np.full((grow, panes), _NONE, np.int64)))
                t.pane_sum = np.vstack((t.pane_sum, np.zeros((grow, panes), np.complex128)))
                t.pane_n = np.vstack((t.pane_n, np.zeros((grow, panes), np.int64)))
                t.sensor_cell = np.concatenate((t.sensor_cell, np.full(t.pane_id.shape[0] - len(t.sensor_cell),
                                                                       -1, np.int64)))
            t.sensor_cell[i] = c
        elif t.sensor_cell[i] != c:
            t.sensor_cell[i] = c       # a sensor that moved cells counts in its new one from now on
        return i


def combine_sums(sums: CellSums) -> CellSums:
    """The cells' sums added per grid point (exact: integers), cells in any order."""
    order = np.argsort(sums.t, kind="stable")
    t = sums.t[order]
    if not t.size:
        return CellSums([], t, t, t, t, t)
    starts = np.flatnonzero(np.concatenate(([True], t[1:] != t[:-1])))
    add = lambda a: np.add.reduceat(a[order], starts)  # noqa: E731
    return CellSums([GLOBAL_CELL] * len(starts), t[starts], add(sums.z_re), add(sums.z_im), add(sums.weight),
                    add(sums.n))


def _append_global(final: MeshFinal, glob: CellSums, rings: _Rings, s: MeshSettings) -> None:
    Z = _ratio(glob.z_re, glob.z_im, glob.weight)
    r = np.abs(Z)
    r2w, event, state = scan_cells(np.zeros(len(glob), np.int64), glob.t, r * r, rings.ring_g, rings.ring_v,
                                   rings.first_g, rings.collapsed, s.window_us, s.interval_us, s.threshold,
                                   s.hysteresis)
    pub = glob.t % s.publish_us == 0
    rows = _sync_rows("global", [GLOBAL_CELL] * int(pub.sum()), glob.t[pub], glob.n[pub], glob.weight[pub], Z[pub],
                      r2w[pub], np.full(int(pub.sum()), np.nan), state[pub])
    for k, v in rows.items():
        final.rows[k] = list(final.rows[k]) + list(v) if isinstance(v, list) else np.concatenate((final.rows[k], v))
    final.events.extend(_events("global", [GLOBAL_CELL] * len(glob), glob.t, event, r2w, Z, glob.n))


def in_grid_order(final: MeshFinal) -> MeshFinal:
    """``final`` with its rows by (t, scope: cells first, cell name), its members by (t, cell, sensor), its
    sums by (t, cell) and its events by (t, scope, cell): the order of names, not of arrival, so that
    decisions split any way concatenate to the same rows."""

    def by(columns: dict, keys: list[str]) -> dict:
        n = len(columns["t"])
        if n < 2:
            return columns
        order = np.lexsort([np.asarray(columns[k]) for k in reversed(keys)])
        return {k: ([v[i] for i in order.tolist()] if isinstance(v, list) else np.asarray(v)[order])
                for k, v in columns.items()}

    final.rows = by(final.rows, ["t", "scope", "cell"])        # "cell" < "global"
    if final.members:
        final.members = by(final.members, ["t", "cell", "sensor"])
    s = final.sums
    if len(s) > 1:
        order = np.lexsort((np.asarray(s.cell), s.t))
        final.sums = CellSums([s.cell[i] for i in order.tolist()], s.t[order], s.z_re[order], s.z_im[order],
                              s.weight[order], s.n[order])
    final.events.sort(key=lambda e: (e[3], e[1], e[2]))
    return final


def empty_rows() -> dict:
    """``mesh_sync`` columns of no rows."""
    none = np.empty(0, np.int64)
    return _sync_rows("cell", [], none, none, none, np.empty(0, np.complex128), np.empty(0), np.empty(0),
                      np.empty(0, np.int8))


def _ratio(re: np.ndarray, im: np.ndarray, weight: np.ndarray) -> np.ndarray:
    w = weight.astype(np.float64)
    safe = np.where(w > 0, w, 1.0)
    return np.where(w > 0, (re.astype(np.float64) + 1j * im.astype(np.float64)) / safe, 0.0)


def _sync_rows(scope: str, cells: list[str], g, n, weight, Z, r2w, fraction, state) -> dict:
    return {"scope": [scope] * len(cells), "cell": cells, "t": np.asarray(g, np.int64),
            "n_sensors": np.asarray(n, np.int64), "weight": np.asarray(weight, np.float64) / MESH_FIXED_POINT,
            "z_re": Z.real, "z_im": Z.imag, "r": np.abs(Z), "psi": np.angle(Z), "r2_window": r2w,
            "locked_fraction": np.asarray(fraction, np.float64), "state": np.asarray(state, np.int8)}


def _events(scope: str, cells: list[str], g, event, r2w, Z, n) -> list:
    out = []
    for k in np.flatnonzero(event).tolist():
        name = "mesh_collapse" if event[k] == 1 else "mesh_dissipate"
        out.append((name, scope, cells[k], int(g[k]), float(r2w[k]), complex(Z[k]), int(n[k])))
    return out
