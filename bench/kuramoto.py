"""Kuramoto cells: phase streams whose synchrony is known from physics, to check the mesh against.

The mesh (SPEC section 7) measures how in phase whole cells of sensors are.
This module simulates cells of coupled phase oscillators (Kuramoto 1975; the
review Strogatz 2000, "From Kuramoto to Crawford", Physica D 143, 1-20) and
writes their phases as a phase file, together with what the mesh should find
in them and what theory says it must be.

Per cell, ``n`` oscillators with natural frequencies at the Lorentzian
quantiles (half-width ``gamma``, centre ``omega0``; deterministic)

    omega_i = omega0 + gamma * tan(pi * (i + 0.5) / n - pi / 2),   i = 0 .. n-1,

and mean-field coupling ``K``

    dtheta_i/dt = omega_i + K * r * sin(psi - theta_i),   r e^{i psi} = (1/n) sum_j e^{i theta_j},

integrated with classical RK4 in NumPy, all oscillators of all cells in one
array (cells do not interact).  Each cell is integrated in its frame rotating
at ``omega0`` (the coupling does not see a common rotation) and ``omega0 * t``
is added to the phases written out.  A transient is integrated and dropped;
sample 0 is at ``start_s``, a whole second, and the event times are exact
int64 microseconds.

Theory (K_c, r, locked fraction, the finite-n floor) is in
:mod:`bench.kuramoto_theory`, re-exported here.

Sampling.  The mesh unwraps each sensor's phase between consecutive samples
(SPEC section 2 step 1), so no oscillator may move pi or more between two
samples.  The Lorentzian tails are wide: the outermost quantile is
``gamma * cot(pi / (2 n))``, about ``gamma * 2 n / pi`` from ``omega0``.  The
run is refused unless ``(|omega0| + max |omega_i - omega0| + K) *
sample_interval_s <= max_step_rad`` (default 1 rad).  With ``n = 200``,
``gamma = 0.5`` rad/s, ``omega0 = 2 pi`` rad/s (1 Hz) and K <= 4 rad/s that is
about 74 rad/s, so 100 Hz sampling moves at most 0.74 rad.  Physics-only runs
(no file) may set ``max_step_rad=None``: the coupling, not the tails, sets
the accuracy of r, and :meth:`Ensemble.table` still refuses phases that moved
pi or more between samples.

    python -m bench.kuramoto OUT.parquet [--cells 5] [--n 200] [--ratio 2.0 0.5 ...] [--duration 180]

>>> run = KuramotoRun((CellSpec("c0", 50, coupling=3.0),), duration_s=1.0, transient_s=20.0)
>>> ens = simulate(run)
>>> ens.table().num_rows, ens.sensors[17]
(5000, 'c0/s17')
>>> round(r_theory(3.0, 0.5), 3), round(float(ens.r().mean()), 1)
(0.816, 0.8)
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from bench.kuramoto_theory import (
    critical_coupling, incoherent_r_bound, incoherent_r_mean, lock_reach, locked_fraction_theory, r_theory,
)

__all__ = [
    "CellSpec", "Ensemble", "KuramotoRun", "critical_coupling", "incoherent_r_bound", "incoherent_r_mean",
    "lock_reach", "locked_fraction_theory", "natural_frequencies", "r_theory", "simulate",
]

START_S = 1_764_115_200          # 2025-11-26T00:00:00Z: real epoch-sized times
_US = 1_000_000


@dataclass(frozen=True)
class CellSpec:
    """One cell: ``n`` oscillators, coupling ``coupling`` (K, rad/s), Lorentzian half-width
    ``gamma`` (rad/s) around ``omega0`` (rad/s); ``random_frequencies`` draws the natural
    frequencies from the Lorentzian (seeded) instead of taking its quantiles."""

    name: str
    n: int
    coupling: float
    gamma: float = 0.5
    omega0: float = 2.0 * math.pi
    random_frequencies: bool = False


@dataclass(frozen=True)
class KuramotoRun:
    """What to simulate: the cells, ``duration_s`` of samples every ``sample_interval_s`` from
    ``start_s`` (whole epoch seconds) after ``transient_s`` dropped; ``substeps`` RK4 steps per
    sample; ``max_step_rad`` the sampling rule of the module docstring (None: not checked)."""

    cells: tuple[CellSpec, ...]
    duration_s: float
    sample_interval_s: float = 0.01
    transient_s: float = 60.0
    start_s: int = START_S
    substeps: int = 1
    seed: int = 0
    max_step_rad: float | None = 1.0

    @property
    def sample_us(self) -> int:
        return int(round(self.sample_interval_s * _US))

    def problems(self) -> list[str]:
        """What is wrong with the run, one message per field (empty: nothing)."""
        out = []
        if not self.cells:
            out.append("cells: give at least one cell")
        names = [c.name for c in self.cells]
        if len(set(names)) != len(names) or not all(names):
            out.append(f"cells: names must be distinct and non-empty, got {names}")
        for c in self.cells:
            if c.n < 1 or c.coupling < 0 or c.gamma < 0:
                out.append(f"cells[{c.name}]: needs n >= 1, coupling >= 0, gamma >= 0")
        if not (self.sample_interval_s > 0 and abs(self.sample_interval_s * _US - self.sample_us) < 1e-6):
            out.append(f"sample_interval_s: {self.sample_interval_s} is not a positive whole number of microseconds")
        if not self.duration_s >= self.sample_interval_s:
            out.append(f"duration_s: {self.duration_s} is shorter than one sample")
        if not self.transient_s >= 0:
            out.append(f"transient_s: {self.transient_s} is negative")
        if self.substeps < 1:
            out.append(f"substeps: {self.substeps} must be >= 1")
        if isinstance(self.start_s, bool) or not isinstance(self.start_s, int):
            out.append(f"start_s: {self.start_s!r} must be whole epoch seconds (an int)")
        return out


def natural_frequencies(cell: CellSpec, rng: np.random.Generator) -> np.ndarray:
    """The cell's omega_i - omega0 (rad/s): Lorentzian quantiles, or draws when ``random_frequencies``."""
    q = rng.uniform(size=cell.n) if cell.random_frequencies else (np.arange(cell.n) + 0.5) / cell.n
    return cell.gamma * np.tan(np.pi * q - np.pi / 2)


@dataclass(frozen=True)
class _Layout:
    """Where each cell's oscillators sit in the flat arrays."""

    starts: np.ndarray     # first oscillator of each cell
    counts: np.ndarray     # oscillators per cell
    cell_of: np.ndarray    # cell index of each oscillator

    @classmethod
    def of(cls, cells: tuple[CellSpec, ...]) -> _Layout:
        counts = np.array([c.n for c in cells])
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        return cls(starts, counts, np.repeat(np.arange(len(cells)), counts))

    def order(self, theta: np.ndarray) -> np.ndarray:
        """Z = mean of e^{i theta} per cell, along the last axis."""
        return np.add.reduceat(np.exp(1j * theta), self.starts, axis=-1) / self.counts


def _rk4_step(theta, dt, omega, coupling, layout: _Layout):
    def rate(th):
        e = np.exp(1j * th)
        z = np.add.reduceat(e, layout.starts) / layout.counts
        return omega + coupling * (z[layout.cell_of] * e.conj()).imag   # K r sin(psi - theta)
    k1 = rate(theta)
    k2 = rate(theta + 0.5 * dt * k1)
    k3 = rate(theta + 0.5 * dt * k2)
    k4 = rate(theta + dt * k3)
    return theta + dt / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


def simulate(run: KuramotoRun, initial_phases: np.ndarray | None = None) -> Ensemble:
    """Integrate ``run``; ``initial_phases`` (one per oscillator, cells in order) or uniform random (seeded).

    Raises:
        ValueError: a field of ``run`` is wrong, or its sampling breaks ``max_step_rad``; the
            message names the field.
    """
    problems = run.problems()
    if problems:
        raise ValueError("; ".join(problems))
    rng = np.random.default_rng(run.seed)
    layout = _Layout.of(run.cells)
    total = int(layout.counts.sum())
    if initial_phases is None:
        theta = rng.uniform(-np.pi, np.pi, total)
    else:
        theta = np.array(initial_phases, dtype=np.float64)
        if theta.shape != (total,):
            raise ValueError(f"initial_phases: expected {total} phases, got shape {theta.shape}")
    omega = np.concatenate([natural_frequencies(c, rng) for c in run.cells])
    omega0 = np.array([c.omega0 for c in run.cells])
    coupling = np.array([c.coupling for c in run.cells])[layout.cell_of]
    dt_s = run.sample_us / _US
    if run.max_step_rad is not None:
        fastest = np.abs(omega0[layout.cell_of]) + np.abs(omega) + coupling
        worst = int(np.argmax(fastest))
        if fastest[worst] * dt_s > run.max_step_rad:
            raise ValueError(
                f"sample_interval_s: {run.sample_interval_s} s lets oscillator {worst} (cell "
                f"{run.cells[layout.cell_of[worst]].name}) move up to {fastest[worst] * dt_s:.2f} rad between "
                f"samples, more than max_step_rad = {run.max_step_rad}; sample every "
                f"{run.max_step_rad / fastest[worst]:.4g} s or less, or lower gamma or n")
    h = dt_s / run.substeps
    transient = int(round(run.transient_s / dt_s))
    for _ in range(transient * run.substeps):
        theta = _rk4_step(theta, h, omega, coupling, layout)
    samples = max(1, int(run.duration_s * _US) // run.sample_us)
    record = np.empty((samples, total))
    record[0] = theta
    z = np.empty((samples, len(run.cells)), dtype=np.complex128)
    z[0] = layout.order(theta)
    turn = omega0[layout.cell_of] * dt_s     # the frame's own rotation per sample
    step = 0.0
    for k in range(1, samples):
        for _ in range(run.substeps):
            theta = _rk4_step(theta, h, omega, coupling, layout)
        record[k] = theta
        z[k] = layout.order(theta)
        step = max(step, float(np.abs(theta - record[k - 1] + turn).max()))
    t_us = run.start_s * _US + run.sample_us * np.arange(samples, dtype=np.int64)
    elapsed = (transient + np.arange(samples)) * dt_s
    sensors = tuple(f"{c.name}/s{i:0{len(str(c.n - 1))}d}" for c in run.cells for i in range(c.n))
    return Ensemble(run, t_us, record, z, elapsed, omega, sensors, layout, step)


@dataclass(frozen=True)
class Ensemble:
    """The sampled run: ``t_us`` (samples,), ``rotating`` phases (samples, oscillators) unwrapped in each
    cell's frame rotating at omega0, ``z`` the order parameter per sample and cell in that frame,
    ``elapsed`` seconds since the transient began, the natural
    frequencies less omega0, sensor ids (``c0/s017``) and the largest phase step between samples."""

    run: KuramotoRun
    t_us: np.ndarray
    rotating: np.ndarray
    z: np.ndarray
    elapsed: np.ndarray
    omega: np.ndarray
    sensors: tuple[str, ...]
    layout: _Layout
    max_sample_step_rad: float

    @property
    def cell_of(self) -> np.ndarray:
        """Index into ``run.cells`` of each oscillator."""
        return self.layout.cell_of

    def phases(self) -> np.ndarray:
        """The phases a sensor reports, wrapped to [-pi, pi): rotating + omega0 * elapsed."""
        omega0 = np.array([c.omega0 for c in self.run.cells])[self.cell_of]
        theta = self.rotating + self.elapsed[:, None] * omega0
        return np.mod(theta + np.pi, 2.0 * np.pi) - np.pi

    def order(self) -> np.ndarray:
        """The simulation's own Z per sample and cell (samples, cells): the mesh's Z with unit weights."""
        omega0 = np.array([c.omega0 for c in self.run.cells])
        return self.z * np.exp(1j * self.elapsed[:, None] * omega0)

    def global_order(self) -> np.ndarray:
        """Z_global per sample: the cells' partial sums combined, sum_c n_c Z_c / sum_c n_c (unit weights)."""
        return (self.order() * self.layout.counts).sum(axis=1) / self.layout.counts.sum()

    def r(self) -> np.ndarray:
        """r = |Z| per sample and cell."""
        return np.abs(self.z)

    def grid_rows(self, grid_s: float | None) -> np.ndarray:
        """The samples at the epoch-aligned grid points ``n * grid_s`` (every sample when None)."""
        if grid_s is None:
            return np.arange(len(self.t_us))
        grid_us = int(round(grid_s * _US))
        if grid_us <= 0 or grid_us % self.run.sample_us:
            raise ValueError(f"grid_s: {grid_s} s is not a multiple of the sample interval "
                             f"{self.run.sample_interval_s} s")
        return np.flatnonzero(self.t_us % grid_us == 0)

    def r2_window(self, window_s: float, grid_s: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """R2 = mean of r^2 over the grid points in (g - window, g], at each g whose window lies in the
        record: (times us, R2 (points, cells))."""
        rows = self.grid_rows(grid_s)
        t, r2 = self.t_us[rows], np.abs(self.z[rows]) ** 2
        sums = np.vstack([np.zeros(r2.shape[1]), np.cumsum(r2, axis=0)])
        first = np.searchsorted(t, t - int(round(window_s * _US)), side="right")
        full = t - int(round(window_s * _US)) >= t[0] - (t[1] - t[0] if len(t) > 1 else 0)
        idx = np.flatnonzero(full)
        return t[idx], (sums[idx + 1] - sums[first[idx]]) / (idx + 1 - first[idx])[:, None]

    def lock(self, window_s: float, end_us: int | None = None, grid_s: float | None = None) -> np.ndarray:
        """Each oscillator's lock to its cell's mean field over the window ending at ``end_us`` (default:
        the last sample), the SPEC's way: |mean over the grid points of e^{i(theta - psi)}|."""
        rows = self.grid_rows(grid_s)
        end = int(self.t_us[rows[-1]]) if end_us is None else int(end_us)
        rows = rows[(self.t_us[rows] > end - int(round(window_s * _US))) & (self.t_us[rows] <= end)]
        if not len(rows):
            raise ValueError(f"end_us: no sample in the window of {window_s} s ending at {end}")
        psi = np.angle(self.z[rows])[:, self.cell_of]
        return np.abs(np.exp(1j * (self.rotating[rows] - psi)).mean(axis=0))

    def locked_fraction(self, window_s: float, threshold: float = 0.9, end_us: int | None = None,
                        grid_s: float | None = None) -> np.ndarray:
        """Per cell, the share of oscillators whose :meth:`lock` reaches ``threshold``."""
        locked = self.lock(window_s, end_us, grid_s) >= threshold
        return np.add.reduceat(locked.astype(float), self.layout.starts) / self.layout.counts

    def table(self) -> pa.Table:
        """The samples as a phase file: sensor (utf8), t (timestamp[us, UTC]), phase (float64), cell (utf8),
        time-major (all sensors of a sample time, then the next time).

        Raises:
            ValueError: some oscillator moved pi or more between two samples (the mesh could not unwrap it).
        """
        if self.max_sample_step_rad >= np.pi:
            raise ValueError(f"a phase moved {self.max_sample_step_rad:.2f} rad between samples; the mesh unwraps "
                             "only steps below pi: lower sample_interval_s")
        samples, total = self.rotating.shape
        who = pa.array(np.tile(np.arange(total, dtype=np.int32), samples))
        cells = pa.array([self.run.cells[i].name for i in self.cell_of], pa.string())
        return pa.table({
            "sensor": pa.array(self.sensors, pa.string()).take(who),
            "t": pa.array(np.repeat(self.t_us, total), pa.timestamp("us", tz="UTC")),
            "phase": pa.array(self.phases().ravel()),
            "cell": cells.take(who),
        })

    def write(self, path: str | Path) -> int:
        """Write :meth:`table` as Parquet (``.parquet``) or an Arrow IPC file (``.arrow``); returns the rows."""
        path = Path(path)
        table = self.table()
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq
            pq.write_table(table, path)
        elif path.suffix == ".arrow":
            with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table, max_chunksize=65_536)
        else:
            raise ValueError(f"{path}: write .parquet or .arrow")
        return table.num_rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.kuramoto", description=__doc__.split("\n")[0])
    parser.add_argument("out", help="output file, .parquet or .arrow")
    parser.add_argument("--cells", type=int, default=5)
    parser.add_argument("--n", type=int, default=200, help="oscillators (sensors) per cell")
    parser.add_argument("--ratio", type=float, nargs="+", default=[2.0],
                        help="K / K_c of each cell, repeated over the cells")
    parser.add_argument("--gamma", type=float, default=0.5, help="Lorentzian half-width, rad/s")
    parser.add_argument("--hz", type=float, default=100.0, help="sample rate")
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of event time written")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if Path(args.out).suffix not in (".parquet", ".arrow"):
        parser.error(f"{args.out}: write .parquet or .arrow")
    kc = critical_coupling(args.gamma)
    cells = tuple(CellSpec(f"c{i}", args.n, args.ratio[i % len(args.ratio)] * kc, args.gamma)
                  for i in range(args.cells))
    try:
        ens = simulate(KuramotoRun(cells, args.duration, 1.0 / args.hz, seed=args.seed))
        rows = ens.write(args.out)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    mean_r = ens.r().mean(axis=0)
    for cell, r in zip(cells, mean_r):
        print(f"{cell.name}: K/K_c = {cell.coupling / kc:g}, time-mean r = {r:.3f} "
              f"(theory {r_theory(cell.coupling, cell.gamma):.3f}, floor {incoherent_r_mean(cell.n):.3f})")
    print(f"wrote {rows:,} rows to {args.out}; largest phase step {ens.max_sample_step_rad:.2f} rad")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
