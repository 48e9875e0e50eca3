"""Throughput of the KAIROS kernels, three ways, in one run on the same data.

    python -m bench.kernels [--write FILE]

``make bench`` runs it inside :mod:`bench.pipeline`, whose report embeds this
one's sections (:func:`markdown_sections`) in ``docs/benchmarks.md``.

Paths measured on one generated sensor record (10^5 samples at 1 kHz by
default, 1 and 3 channels; tau 1 s, velocity span 0.1 s, Emissary 1 s window
on a 0.01 s grid, Master 3600 s window in 0.1 s panes on a 0.1 s grid):

* **Numba**: the streaming path of the pipeline -
  :meth:`operators.lag.LagState.push` over batches, each batch's products fed
  to :class:`operators.emissary.EmissaryWindow` and
  :class:`operators.master.MasterWindow` together with the grid points that
  batch made final.  Timed warm: one untimed pass first, so JIT compilation
  (or loading the on-disk cache) is excluded.
* **NumPy reference**: :func:`operators.reference.lag_products` over the whole
  record in one vectorised call, and :func:`operators.reference.window_values`
  at the same grid points.  ``window_values`` loops over grid points in
  Python, so it is timed on an evenly strided subset of the grid and its
  per-point cost is scaled to the full grid.
* **Naive**: how a first prototype worked - on every new sample, recompute T
  over the whole history from scratch (unwrap, velocities, lag products, sum;
  vectorised NumPy inside a per-sample Python loop, no Numba).  Its cost per
  sample grows linearly with the history, so the whole run is O(n^2): it is
  run for real on a prefix of the record, its per-step cost is measured at
  larger history sizes up to the full record, and the total for the full
  record is the sum of that measured cost curve (marked as extrapolated).

Every path's output is checked against the NumPy reference before any number
is reported: a fast wrong answer is not a result.  Progress goes to stderr,
the tables to stdout, and with ``--write`` a Markdown report to a file.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import math
import os
import platform
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numba
import numpy as np

from bench.markdown import ratio, si, table
from operators import reference
from operators.emissary import EmissaryWindow
from operators.grid import WindowValues, emission_points
from operators.lag import LagState, Products
from operators.master import MasterWindow
from operators.params import KairosParams

# --- the benchmark's fixed workload -------------------------------------------------

EPOCH_US = 1_764_115_200_000_000      # 2025-11-26T00:00:00Z: real epoch-sized times
RATE_HZ = 1_000                       # nominal sample rate
JITTER_STD_US = 20                    # Gaussian sampling-time jitter ...
JITTER_CLIP_US = 250                  # ... clipped, so times stay strictly increasing
OSCILLATOR_HZ = 5.0                   # the sensor's oscillation
PHASE_NOISE_RAD = 0.05                # Gaussian phase noise per sample
CHANNEL_OFFSET_RAD = 2.0              # channel c carries an extra c * 2.0 rad

TAU_S = 1.0
VELOCITY_SPAN_S = 0.1
MAX_GAP_S = 5.0                       # SPEC default; the record has no gaps
EMISSARY_WINDOW_US = 1_000_000
EMISSARY_INTERVAL_US = 10_000
MASTER_WINDOW_US = 3_600_000_000
MASTER_PANE_US = 100_000

HEADLINE_BATCH = 100                  # samples per push: 0.1 s of data at 1 kHz
BATCH_SIZES = (1, 10, 100, 1_000, 0)  # 0 = the whole record in one push
REFERENCE_EMISSARY_POINTS = 1_000     # grid points timed for window_values
REFERENCE_MASTER_POINTS = 100
NAIVE_BLOCK = 500                     # naive prefix steps timed per block
NAIVE_PROBE_STEPS = 10                # consecutive steps per probe run
NAIVE_PROBE_SIZES = (10_000, 20_000, 30_000, 50_000, 70_000, 100_000, 200_000, 500_000, 1_000_000)
AGREEMENT_TOLERANCE = 1e-6            # beyond this a path is reported as wrong


# --- data -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SensorRecord:
    """One sensor's samples: int64 microsecond times and (n, C) phases in radians."""

    t_us: np.ndarray
    phase: np.ndarray

    @property
    def n(self) -> int:
        return int(self.t_us.shape[0])

    @property
    def channels(self) -> int:
        return int(self.phase.shape[1])

    def prefix(self, n: int) -> "SensorRecord":
        return SensorRecord(self.t_us[:n], self.phase[:n])


def sensor_record(n: int, channels: int, seed: int = 20251126) -> SensorRecord:
    """A noisy oscillator sampled at ~RATE_HZ with small irregular timing jitter."""
    rng = np.random.default_rng(seed)
    period_us = 1_000_000 // RATE_HZ
    jitter = np.clip(np.rint(rng.normal(0.0, JITTER_STD_US, n)), -JITTER_CLIP_US, JITTER_CLIP_US)
    t_us = EPOCH_US + np.arange(n, dtype=np.int64) * period_us + jitter.astype(np.int64)
    clean = 2.0 * np.pi * OSCILLATOR_HZ * ((t_us - EPOCH_US) * 1e-6)
    phase = clean[:, None] + CHANNEL_OFFSET_RAD * np.arange(channels) + rng.normal(
        0.0, PHASE_NOISE_RAD, (n, channels))
    # Deliver wrapped phases, as a sensor would: the estimator must unwrap them.
    phase = np.mod(phase + np.pi, 2.0 * np.pi) - np.pi
    return SensorRecord(t_us, phase)


def bench_params() -> KairosParams:
    return KairosParams.from_seconds(TAU_S, velocity_span=VELOCITY_SPAN_S, max_gap=MAX_GAP_S)


@dataclass(frozen=True)
class Grids:
    """The grid points each transducer emits at for a record (SPEC section 3)."""

    emissary: np.ndarray
    master: np.ndarray

    @classmethod
    def of(cls, record: SensorRecord) -> "Grids":
        return cls(emission_points(record.t_us, EMISSARY_INTERVAL_US),
                   emission_points(record.t_us, MASTER_PANE_US))

    @property
    def updates(self) -> int:
        return int(self.emissary.shape[0] + self.master.shape[0])


# --- timing -----------------------------------------------------------------------------


@contextmanager
def no_gc() -> Iterator[None]:
    """Keep the cyclic garbage collector from landing inside a timed region."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def progress(message: str) -> None:
    """One progress line on stderr (the tables go to stdout)."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# --- path 1: Numba, streaming -----------------------------------------------------------


@dataclass
class StreamingRun:
    """One timed pass of the streaming path; times in seconds."""

    batch: int
    lag_s: float
    window_s: float
    total_s: float
    products: Products
    emissary: WindowValues
    master: WindowValues


def run_streaming(record: SensorRecord, params: KairosParams, grids: Grids, batch: int) -> StreamingRun:
    """Push the record through LagState -> Emissary + Master in batches of ``batch`` samples.

    Each batch's products go to both windows with the grid points that batch
    made final (g <= newest sample time, lateness 0); the grid points after the
    last sample are flushed at the end, as at end of input.  Grid points are
    computed up front: they are the sync operator's bookkeeping, not kernel work.
    """
    n = record.n
    batch = batch or n
    starts = np.arange(0, n, batch)
    ends_t = record.t_us[np.minimum(starts + batch, n) - 1]
    em_cut = np.searchsorted(grids.emissary, ends_t, side="right")
    ma_cut = np.searchsorted(grids.master, ends_t, side="right")
    lag = LagState(params, channels=record.channels)
    emissary = EmissaryWindow(EMISSARY_WINDOW_US, omega=params.omega)
    master = MasterWindow(MASTER_WINDOW_US, MASTER_PANE_US, omega=params.omega)
    products: list[Products] = []
    em_out: list[WindowValues] = []
    ma_out: list[WindowValues] = []
    clock = time.perf_counter
    lag_s = window_s = 0.0
    em_lo = ma_lo = 0
    with no_gc():
        begin = clock()
        for b, a in enumerate(starts):
            t0 = clock()
            p = lag.push(record.t_us[a:a + batch], record.phase[a:a + batch])
            t1 = clock()
            em_out.append(emissary.advance(p, grids.emissary[em_lo:em_cut[b]]))
            ma_out.append(master.advance(p, grids.master[ma_lo:ma_cut[b]]))
            t2 = clock()
            lag_s += t1 - t0
            window_s += t2 - t1
            products.append(p)
            em_lo, ma_lo = em_cut[b], ma_cut[b]
        t1 = clock()
        em_out.append(emissary.advance(Products.empty(), grids.emissary[em_lo:]))
        ma_out.append(master.advance(Products.empty(), grids.master[ma_lo:]))
        end = clock()
        window_s += end - t1
    return StreamingRun(batch, lag_s, window_s, end - begin, Products.concat(products),
                        WindowValues.concat(em_out), WindowValues.concat(ma_out))


def median_run(runs: Sequence[StreamingRun]) -> StreamingRun:
    """The run with the median end-to-end time (the machine may be shared: the median is robust)."""
    ordered = sorted(runs, key=lambda r: r.total_s)
    return ordered[(len(ordered) - 1) // 2]


# --- path 2: NumPy reference ------------------------------------------------------------


@dataclass
class ReferenceRun:
    """The NumPy reference; window times are per grid point, scaled to the full grid."""

    lag_s: float
    products: Products
    emissary_points: np.ndarray      # the grid subset timed
    master_points: np.ndarray
    emissary_s_per_point: float
    master_s_per_point: float
    emissary: WindowValues
    master: WindowValues
    full_grid_window_s: float = field(default=0.0)

    @property
    def total_s(self) -> float:
        return self.lag_s + self.full_grid_window_s


def _strided_subset(grid: np.ndarray, points: int) -> np.ndarray:
    """About ``points`` grid points spread evenly over the whole record.

    The Master's cost per point grows with the history its window covers, so
    the subset must span the record, not just its start.
    """
    stride = max(1, grid.shape[0] // points)
    return grid[::stride]


def run_reference(record: SensorRecord, params: KairosParams, grids: Grids, repeats: int) -> ReferenceRun:
    clock = time.perf_counter
    lag_times = []
    with no_gc():
        for _ in range(repeats):
            t0 = clock()
            products = reference.lag_products(record.t_us, record.phase, params)
            lag_times.append(clock() - t0)
        em_pts = _strided_subset(grids.emissary, REFERENCE_EMISSARY_POINTS)
        ma_pts = _strided_subset(grids.master, REFERENCE_MASTER_POINTS)
        t0 = clock()
        em = reference.window_values(products, params.omega, em_pts, EMISSARY_WINDOW_US)
        t1 = clock()
        ma = reference.window_values(products, params.omega, ma_pts, MASTER_WINDOW_US)
        t2 = clock()
    run = ReferenceRun(float(np.median(lag_times)), products, em_pts, ma_pts,
                       (t1 - t0) / em_pts.shape[0], (t2 - t1) / ma_pts.shape[0], em, ma)
    run.full_grid_window_s = (run.emissary_s_per_point * grids.emissary.shape[0]
                              + run.master_s_per_point * grids.master.shape[0])
    return run


# --- path 3: naive per-sample recompute -------------------------------------------------


def naive_recompute(t_us: np.ndarray, phase: np.ndarray, params: KairosParams,
                    window_us: int) -> tuple[complex, complex]:
    """T over the whole history and over its last ``window_us``, computed from scratch.

    The prototype's step: it keeps no state between samples.  One chain is
    assumed (the benchmark record has no gaps); otherwise it is SPEC section 2
    as written.  Returns (T over all products, T over products in the last window).
    """
    n = t_us.shape[0]
    idx = np.arange(n)
    # 1. Unwrap: Phi_k = phi_0 + sum of wrapped steps.
    steps = np.diff(phase, axis=0)
    steps -= 2.0 * np.pi * np.floor((steps + np.pi) / (2.0 * np.pi))
    unwrapped = np.empty_like(phase)
    unwrapped[0] = phase[0]
    np.cumsum(steps, axis=0, out=unwrapped[1:])
    unwrapped[1:] += phase[0]
    # 2. Velocity over j(k), the latest earlier sample at least d before t_k.
    j = np.minimum(np.searchsorted(t_us, t_us - params.velocity_span_us, side="right") - 1, idx - 1)
    has_v = j >= 0
    j_safe = np.where(has_v, j, idx)
    span_s = (t_us - t_us[j_safe]) * 1e-6
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = (unwrapped - unwrapped[j_safe]) / span_s[:, None]
    velocity = np.where(has_v[:, None], 1j * rate * np.exp(1j * phase), 0.0)
    # 3. Lag partner m(k) at least tau earlier, its velocity span disjoint from k's.
    m = np.searchsorted(t_us, t_us - params.tau_us, side="right") - 1
    ok = has_v & (m >= 0) & (m < j) & has_v[np.maximum(m, 0)]
    k = idx[ok]
    weights = params.weight_vector(phase.shape[1])
    p = (weights * velocity[k] * np.conj(velocity[m[k]])).sum(axis=1)
    # 4-5. dt-weighted, normalised sums.
    t_k = t_us[k]
    dt = (t_k - t_us[k - 1]) * 1e-6
    contrib = p * np.exp(1j * params.omega * (t_k * 1e-6)) * dt
    weight = np.abs(p) * dt
    a_all = weight.sum()
    first = int(np.searchsorted(t_k, t_us[-1] - window_us, side="right"))
    a_win = weight[first:].sum()
    t_all = complex(contrib.sum() / a_all) if a_all > 0 else 0j
    t_win = complex(contrib[first:].sum() / a_win) if a_win > 0 else 0j
    return t_all, t_win


@dataclass
class NaiveRun:
    """The naive loop: run on a prefix, cost curve probed beyond it, total summed over the curve."""

    prefix: int                       # samples actually looped over
    prefix_s: float                   # measured time of that loop
    curve_n: np.ndarray               # history sizes at which the step cost was measured
    curve_s: np.ndarray               # seconds per step at those sizes
    from_loop: np.ndarray             # True where the cost is a block mean of the real loop
    total_s: float                    # for the full record (extrapolated unless prefix == n)
    extrapolated: bool
    check_from: int                   # method check: the prefix total predicted from this many ...
    check_predicted_s: float          # ... samples plus probes, against the measured prefix_s
    last_T: complex                   # T over the whole prefix, for the agreement check


def _naive_loop(record: SensorRecord, params: KairosParams, prefix: int
                ) -> tuple[float, list[float], list[float], complex]:
    """The prototype's loop over the first ``prefix`` samples: time, block-mean step costs, last T."""
    clock = time.perf_counter
    block_n: list[float] = []
    block_s: list[float] = []
    last_T = 0j
    begin = block_start = clock()
    for count in range(1, prefix + 1):
        last_T, _ = naive_recompute(record.t_us[:count], record.phase[:count], params,
                                    EMISSARY_WINDOW_US)
        if count % NAIVE_BLOCK == 0 or count == prefix:
            now = clock()
            size = count % NAIVE_BLOCK or NAIVE_BLOCK
            block_n.append(count - (size - 1) / 2.0)
            block_s.append((now - block_start) / size)
            block_start = now
    return clock() - begin, block_n, block_s, last_T


def _probe_step_cost(record: SensorRecord, params: KairosParams, size: int, repeats: int) -> float:
    """Seconds per step of the naive loop at a history of ``size`` samples.

    Times runs of NAIVE_PROBE_STEPS consecutive steps ending at ``size``, as
    the real loop does them, after one untimed step (so memory is as warm as
    in the loop), and keeps the fastest run: the estimate errs towards a
    faster naive loop, never a slower one.
    """
    steps = min(NAIVE_PROBE_STEPS, size - 1)
    naive_recompute(record.t_us[:size - steps], record.phase[:size - steps], params, EMISSARY_WINDOW_US)
    costs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for count in range(size - steps + 1, size + 1):
            naive_recompute(record.t_us[:count], record.phase[:count], params, EMISSARY_WINDOW_US)
        costs.append((time.perf_counter() - t0) / steps)
    return min(costs)


def _sum_cost_curve(curve_n: Sequence[float], curve_s: Sequence[float], first: int, last: int) -> float:
    """Sum of the step cost over history sizes first..last, linear between measured sizes."""
    if last < first:
        return 0.0
    order = np.argsort(curve_n)
    sizes = np.arange(first, last + 1, dtype=np.float64)
    return float(np.interp(sizes, np.asarray(curve_n)[order], np.asarray(curve_s)[order]).sum())


def run_naive(record: SensorRecord, params: KairosParams, prefix: int, repeats: int) -> NaiveRun:
    """Run the per-sample recompute loop on ``prefix`` samples and extrapolate to the record.

    Step costs come from (a) the real loop, averaged over blocks of
    NAIVE_BLOCK steps, and (b) probes at larger history sizes up to the full
    record (:func:`_probe_step_cost`).  The full-record total is the measured
    prefix time plus the sum, over every later history size, of that measured
    cost curve: the step cost is measured up to the full size, only the sum is
    not.  The same method is checked in the run: the prefix total predicted
    from its first fifth plus probes is compared with the measured prefix time.
    """
    n_total = record.n
    prefix = min(prefix, n_total)
    with no_gc():
        prefix_s, block_n, block_s, last_T = _naive_loop(record, params, prefix)
        probe_sizes = sorted({s for s in NAIVE_PROBE_SIZES if prefix < s < n_total} | {n_total}) \
            if prefix < n_total else []
        probe_s = []
        for size in probe_sizes:
            progress(f"  naive step cost at a history of {size:,} samples")
            probe_s.append(_probe_step_cost(record, params, size, repeats))
        # Method check on the prefix, where the true total is known.
        check_from = max(NAIVE_BLOCK, (prefix // 5) // NAIVE_BLOCK * NAIVE_BLOCK)
        check_blocks = [i for i, c in enumerate(block_n) if c <= check_from]
        check_sizes = sorted({prefix // 2, prefix} - {0})
        check_s = [_probe_step_cost(record, params, s, repeats) for s in check_sizes]
    check_predicted = (sum(block_s[i] * NAIVE_BLOCK for i in check_blocks)
                       + _sum_cost_curve([block_n[i] for i in check_blocks] + check_sizes,
                                         [block_s[i] for i in check_blocks] + check_s,
                                         check_from + 1, prefix))
    curve_n = block_n + [float(s) for s in probe_sizes]
    curve_s = block_s + probe_s
    total = prefix_s + _sum_cost_curve(curve_n, curve_s, prefix + 1, n_total)
    from_loop = np.array([True] * len(block_n) + [False] * len(probe_sizes))
    return NaiveRun(prefix, prefix_s, np.asarray(curve_n), np.asarray(curve_s), from_loop, total,
                    prefix < n_total, check_from, check_predicted, last_T)


# --- agreement ----------------------------------------------------------------------------


def _max_rel(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return math.inf
    if a.size == 0:
        return 0.0
    scale = max(float(np.max(np.abs(b))), 1e-300)
    return float(np.max(np.abs(a - b))) / scale


@dataclass
class Agreement:
    products_rel: float               # Numba vs reference lag products, max |diff| / max |p|
    emissary_abs: float               # max |T_numba - T_ref| at the timed grid points
    master_abs: float
    naive_abs: float                  # |T_naive - T_ref| over the naive prefix

    @property
    def worst(self) -> float:
        return max(self.products_rel, self.emissary_abs, self.master_abs, self.naive_abs)


def check_agreement(record: SensorRecord, params: KairosParams, numba_run: StreamingRun,
                    ref: ReferenceRun, naive: NaiveRun) -> Agreement:
    if not np.array_equal(numba_run.products.t, ref.products.t):
        products_rel = math.inf
    else:
        products_rel = _max_rel(numba_run.products.p, ref.products.p)
    em_at = np.searchsorted(numba_run.emissary.t, ref.emissary_points)
    ma_at = np.searchsorted(numba_run.master.t, ref.master_points)
    em_abs = float(np.max(np.abs(numba_run.emissary.T[em_at] - ref.emissary.T)))
    ma_abs = float(np.max(np.abs(numba_run.master.T[ma_at] - ref.master.T)))
    sub = record.prefix(naive.prefix)
    naive_abs = abs(naive.last_T - reference.resonance(sub.t_us, sub.phase, params))
    return Agreement(products_rel, em_abs, ma_abs, naive_abs)


# --- one channel case -------------------------------------------------------------------


@dataclass
class CaseResult:
    channels: int
    samples: int
    products: int
    updates: int
    emissary_updates: int
    master_updates: int
    first_pass_s: float               # untimed warm-up pass (includes compile / cache load)
    streaming: dict[int, StreamingRun]
    reference: ReferenceRun
    naive: NaiveRun
    agreement: Agreement
    median_emissary_coherence: float  # over grid points whose window has products
    master_state_bytes: int


def run_case(n: int, channels: int, repeats: int, naive_prefix: int) -> CaseResult:
    params = bench_params()
    record = sensor_record(n, channels)
    grids = Grids.of(record)
    progress(f"{channels} channel(s): {n:,} samples, {grids.emissary.shape[0]:,} Emissary and "
              f"{grids.master.shape[0]:,} Master grid points")

    progress("  Numba warm-up pass (JIT compile or cache load, not timed in the results)")
    t0 = time.perf_counter()
    run_streaming(record.prefix(min(n, 5_000)), params, Grids.of(record.prefix(min(n, 5_000))),
                  HEADLINE_BATCH)
    first_pass_s = time.perf_counter() - t0

    streaming: dict[int, StreamingRun] = {}
    for batch in BATCH_SIZES:
        # Per-sample pushes are slow enough that one pass is a long, stable measurement.
        reps = 1 if batch == 1 else (3 if batch == 10 else repeats)
        label = "whole record" if batch == 0 else f"{batch}"
        progress(f"  Numba streaming path, batch {label}, {reps} pass(es)")
        streaming[batch] = median_run([run_streaming(record, params, grids, batch)
                                           for _ in range(reps)])

    progress(f"  NumPy reference ({min(repeats, 3)} pass(es) of lag_products, "
              "window_values on a grid subset)")
    ref = run_reference(record, params, grids, repeats=min(repeats, 3))

    progress(f"  naive per-sample recompute over the first {min(naive_prefix, n):,} samples")
    naive = run_naive(record, params, naive_prefix, repeats=3)

    headline = streaming[HEADLINE_BATCH]
    agreement = check_agreement(record, params, headline, ref, naive)
    master = MasterWindow(MASTER_WINDOW_US, MASTER_PANE_US)
    return CaseResult(
        channels=channels, samples=n, products=len(headline.products), updates=grids.updates,
        emissary_updates=int(grids.emissary.shape[0]), master_updates=int(grids.master.shape[0]),
        first_pass_s=first_pass_s, streaming=streaming, reference=ref, naive=naive,
        agreement=agreement,
        median_emissary_coherence=float(np.median(
            headline.emissary.coherence[headline.emissary.n_products > 0])),
        master_state_bytes=master.state_bytes,
    )


# --- reporting ----------------------------------------------------------------------------


def _seconds(x: float) -> str:
    return si(x, "s")


def _batch_label(batch: int, n: int) -> str:
    return f"{n:,} (whole record)" if batch == 0 else f"{batch:,}"


def machine_description() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{model}, {usable} usable core(s) of {os.cpu_count()}; {platform.system()} "
            f"{platform.machine()}; Python {platform.python_version()}, NumPy {np.__version__}, "
            f"Numba {numba.__version__}")


def headline_rows(case: CaseResult) -> list[list[str]]:
    """End-to-end: all samples in, all products and all window values out."""
    n, prods, updates = case.samples, case.products, case.updates
    ref, naive = case.reference, case.naive
    nb = case.streaming[HEADLINE_BATCH]
    mark = " (extrapolated)" if naive.extrapolated else ""
    rows = [
        [f"Numba streaming, batch {HEADLINE_BATCH}", f"{case.channels}", _seconds(nb.total_s),
         si(prods / nb.total_s), si(updates / nb.total_s), ratio(naive.total_s / nb.total_s)],
        ["NumPy reference (whole record)", f"{case.channels}", _seconds(ref.total_s) + " (scaled)",
         si(prods / ref.total_s), si(updates / ref.total_s), ratio(naive.total_s / ref.total_s)],
        ["naive per-sample recompute", f"{case.channels}", _seconds(naive.total_s) + mark,
         si(prods / naive.total_s) + mark, si(n / naive.total_s) + mark, "1x"],
    ]
    return rows


def stage_rows(case: CaseResult) -> list[list[str]]:
    nb = case.streaming[HEADLINE_BATCH]
    ref = case.reference
    c = f"{case.channels}"
    em_pts, ma_pts = ref.emissary_points.shape[0], ref.master_points.shape[0]
    one = case.streaming[0]
    return [
        [f"Numba: LagState.push, batch {HEADLINE_BATCH}", c,
         f"{case.samples:,} samples -> {case.products:,} products",
         _seconds(nb.lag_s), si(case.products / nb.lag_s) + " products/s"],
        [f"Numba: Emissary + Master advance, batch {HEADLINE_BATCH}", c,
         f"{case.products:,} products x 2 windows, {case.updates:,} grid points",
         _seconds(nb.window_s), si(case.updates / nb.window_s) + " updates/s"],
        ["Numba: LagState.push, one push", c, f"{case.samples:,} samples -> {case.products:,} products",
         _seconds(one.lag_s), si(case.products / one.lag_s) + " products/s"],
        ["Numba: Emissary + Master advance, one push", c,
         f"{case.products:,} products x 2 windows, {case.updates:,} grid points",
         _seconds(one.window_s), si(case.updates / one.window_s) + " updates/s"],
        ["NumPy: reference.lag_products", c, f"{case.samples:,} samples -> {case.products:,} products",
         _seconds(ref.lag_s), si(case.products / ref.lag_s) + " products/s"],
        ["NumPy: reference.window_values, Emissary", c,
         f"{em_pts:,} of {case.emissary_updates:,} grid points (timed subset)",
         _seconds(ref.emissary_s_per_point * em_pts), si(1.0 / ref.emissary_s_per_point) + " updates/s"],
        ["NumPy: reference.window_values, Master", c,
         f"{ma_pts:,} of {case.master_updates:,} grid points (timed subset)",
         _seconds(ref.master_s_per_point * ma_pts), si(1.0 / ref.master_s_per_point) + " updates/s"],
    ]


def ratio_rows(case: CaseResult) -> list[list[str]]:
    nb = case.streaming[HEADLINE_BATCH]
    ref, naive = case.reference, case.naive
    mark = " (extrapolated)" if naive.extrapolated else ""
    ref_window_s = ref.full_grid_window_s
    return [
        [f"{case.channels}", "Numba / naive, end to end" + mark, ratio(naive.total_s / nb.total_s)],
        [f"{case.channels}", "Numba / NumPy, end to end", ratio(ref.total_s / nb.total_s)],
        [f"{case.channels}", "Numba / NumPy, products/s (lag stage)", ratio(ref.lag_s / nb.lag_s)],
        [f"{case.channels}", "Numba / NumPy, window updates/s (window stage)",
         ratio(ref_window_s / nb.window_s)],
        [f"{case.channels}", "Numba in one push / NumPy, products/s (lag stage)",
         ratio(ref.lag_s / case.streaming[0].lag_s)],
    ]


def batch_rows(case: CaseResult) -> list[list[str]]:
    naive = case.naive
    mark = " (extrapolated)" if naive.extrapolated else ""
    rows = []
    for batch, run in case.streaming.items():
        rows.append([f"{case.channels}", _batch_label(batch, case.samples), _seconds(run.total_s),
                     si(case.samples / run.total_s), si(case.products / run.total_s),
                     ratio(naive.total_s / run.total_s) + mark])
    return rows


def naive_curve_rows(case: CaseResult) -> list[list[str]]:
    naive = case.naive
    in_loop = np.flatnonzero(naive.from_loop).tolist()
    # First, middle and last block of the real loop, then every probed size.
    shown = sorted({in_loop[0], in_loop[len(in_loop) // 2], in_loop[-1]}) if in_loop else []
    shown += np.flatnonzero(~naive.from_loop).tolist()
    rows = []
    for i in shown:
        source = ("real loop, mean over a block" if naive.from_loop[i]
                  else f"probe, fastest of 3 runs of {NAIVE_PROBE_STEPS} steps")
        rows.append([f"{case.channels}", f"{naive.curve_n[i]:,.0f}", _seconds(naive.curve_s[i]), source])
    return rows


def render_markdown(cases: Sequence[CaseResult], command: str, elapsed_s: float) -> str:
    """The whole report of ``python -m bench.kernels --write``: title, provenance, machine, sections."""
    today = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
    return "\n".join([
        "# KAIROS kernel benchmarks",
        "",
        f"Generated by `{command}` on {today} (UTC); this run took {elapsed_s:.0f} s. The file is "
        "regenerated as a whole, so edit `bench/kernels.py` rather than this page.",
        "",
        f"**Machine:** {machine_description()}.",
        "",
        markdown_sections(cases, level=2),
    ])


def markdown_sections(cases: Sequence[CaseResult], level: int = 2) -> str:
    """The report's sections (workload, paths, tables), headed at Markdown ``level``.

    :mod:`bench.pipeline` embeds them one level down in its own report.
    """
    h = "#" * level
    first = cases[0]
    n = first.samples
    naive_prefix = first.naive.prefix
    extrapolated = any(c.naive.extrapolated for c in cases)
    out = [
        h + " Workload",
        "",
        f"One sensor, {n:,} samples at {RATE_HZ} Hz ({n / RATE_HZ:g} s of data), sampling times "
        f"jittered by Gaussian noise of {JITTER_STD_US} us standard deviation (clipped at "
        f"+-{JITTER_CLIP_US} us), times at real epoch magnitude (int64 microseconds). The phase is a "
        f"{OSCILLATOR_HZ:g} Hz oscillator with {PHASE_NOISE_RAD} rad Gaussian phase noise, delivered "
        f"wrapped into [-pi, pi); the 3-channel case adds {CHANNEL_OFFSET_RAD:g} rad per channel and "
        "independent noise. Estimator: tau_scale "
        f"{TAU_S:g} s, velocity_span {VELOCITY_SPAN_S:g} s, max_gap {MAX_GAP_S:g} s, omega 0, uniform "
        f"channel weights. Emissary: {EMISSARY_WINDOW_US / 1e6:g} s exact window on a "
        f"{EMISSARY_INTERVAL_US / 1e6:g} s grid ({first.emissary_updates:,} grid points). Master: "
        f"{MASTER_WINDOW_US / 1e6:g} s window in {MASTER_PANE_US / 1e6:g} s panes on a "
        f"{MASTER_PANE_US / 1e6:g} s grid ({first.master_updates:,} grid points; "
        f"{first.master_state_bytes:,} bytes of pane state, whatever the sample rate). "
        f"The record yields {first.products:,} lag products; median Emissary coherence "
        f"{first.median_emissary_coherence:.3f} (a coherent signal, as a healthy sensor gives).",
        "",
        h + " Paths",
        "",
        f"- **Numba streaming**: `LagState.push` over batches of {HEADLINE_BATCH} samples (0.1 s of "
        "data), each batch's products fed to `EmissaryWindow.advance` and `MasterWindow.advance` "
        "with the grid points that batch made final; the last grid points are flushed at the end. "
        "Warm: an untimed pass runs first, so JIT compilation (or loading Numba's on-disk cache) "
        f"is excluded; the untimed first pass took {_seconds(first.first_pass_s)}. "
        "Median of several passes.",
        "- **NumPy reference**: `reference.lag_products` on the whole record in one vectorised "
        "call (median of 3), then `reference.window_values` at the same grid points. "
        "`window_values` loops over grid points in Python, so it is timed on an evenly strided "
        f"subset ({first.reference.emissary_points.shape[0]:,} Emissary and "
        f"{first.reference.master_points.shape[0]:,} Master points spread over the whole record) "
        "and its per-point cost is scaled to the full grid; its end-to-end times are marked "
        "\"scaled\". It is an offline computation: it sees the whole record at once.",
        "- **Naive per-sample recompute**: how a first prototype worked. On every new sample it "
        "recomputes T from scratch over the whole history (unwrap, velocities, lag products, "
        "sums) and over the last Emissary window: vectorised NumPy inside a per-sample Python "
        "loop, no Numba, one T per sample. Each step costs O(history), the run O(n^2). "
        + (f"It is run for real on the first {naive_prefix:,} samples; its per-step cost is then "
           f"measured directly at history sizes up to {n:,}, and the total for {n:,} samples is "
           "the measured prefix time plus the sum of that measured cost curve over every later "
           "history size (linear interpolation between measured sizes; each probe keeps the "
           "fastest of 3 runs, so the estimate errs towards a faster naive loop). Those totals "
           "are marked **(extrapolated)**. The method is checked in the same run where the "
           "answer is known: from the first fifth of the prefix plus probes it predicts the "
           "prefix's own measured time (table below)." if extrapolated
           else "It is run for real on the whole record."),
        "",
        "Every path's output is checked against the NumPy reference in the same run (see "
        "Agreement); timings are `time.perf_counter` wall time with the garbage collector paused.",
        "",
        h + f" End to end: {n:,} samples in, all products and window values out",
        "",
        "\"Window updates\" are the grid-point values produced: Emissary plus Master grid points "
        "for the Numba and NumPy paths, one whole-history T per sample for the naive loop.",
        "",
        table(["path", "channels", f"time for {n:,} samples", "products/s", "window updates/s",
                "speed-up vs naive"],
               [row for c in cases for row in headline_rows(c)]),
        "",
        h + " Ratios (same run, same data)",
        "",
        table(["channels", "ratio", "value"], [row for c in cases for row in ratio_rows(c)], text_columns=(1,)),
        "",
        f"Numba rows use batches of {HEADLINE_BATCH} samples unless they say otherwise. The NumPy "
        "reference computes all lag products in one vectorised call over the whole record, with "
        "no per-call cost and no state to carry; the streaming path makes "
        f"{math.ceil(n / HEADLINE_BATCH):,} pushes and pays Python argument checks and allocation "
        "on each. That is why the lag stages are close; the stage and batch-size tables below "
        "separate the two costs.",
        "",
        h + " Stages",
        "",
        table(["stage", "channels", "work", "time", "rate"], [row for c in cases for row in stage_rows(c)],
               text_columns=(0, 2)),
        "",
        h + " Numba streaming path by batch size",
        "",
        "The kernels' cost per sample is small and constant; at small batches the per-call "
        "Python work (argument checks, array allocation) dominates. One pass for batch 1, "
        "three for batch 10, the median of several otherwise.",
        "",
        table(["channels", "samples per push", "time", "samples/s", "products/s", "speed-up vs naive"],
               [row for c in cases for row in batch_rows(c)]),
        "",
        h + " Naive recompute: measured cost per step",
        "",
        "Seconds to recompute T from scratch for one new sample, by history size. The growth is "
        "what makes the loop O(n^2).",
        "",
        table(["channels", "history (samples)", "cost per step", "measured as"],
               [row for c in cases for row in naive_curve_rows(c)], text_columns=(3,)),
        "",
        "Extrapolation check: the naive loop's time for its real prefix, predicted by the same "
        "method from a fifth of it, against the measured time.",
        "",
        table(["channels", "predicted from the first", "predicted", "measured", "predicted / measured"],
               [[f"{c.channels}", f"{c.naive.check_from:,} samples", _seconds(c.naive.check_predicted_s),
                 _seconds(c.naive.prefix_s) + f" ({c.naive.prefix:,} samples)",
                 f"{c.naive.check_predicted_s / c.naive.prefix_s:.2f}"] for c in cases]),
        "",
        h + " Agreement",
        "",
        table(["channels", "Numba products vs reference (max rel.)", "Emissary T (max abs.)",
                "Master T (max abs.)", f"naive T after {naive_prefix:,} samples (abs.)"],
               [[f"{c.channels}", f"{c.agreement.products_rel:.1e}", f"{c.agreement.emissary_abs:.1e}",
                 f"{c.agreement.master_abs:.1e}", f"{c.agreement.naive_abs:.1e}"] for c in cases]),
        "",
    ]
    return "\n".join(out)


def render_stdout(cases: Sequence[CaseResult]) -> str:
    n = cases[0].samples
    return "\n\n".join([
        table(["path", "channels", f"time for {n:,} samples", "products/s", "window updates/s",
                "speed-up vs naive"], [row for c in cases for row in headline_rows(c)]),
        table(["channels", "ratio", "value"], [row for c in cases for row in ratio_rows(c)], text_columns=(1,)),
        table(["channels", "samples per push", "time", "samples/s", "products/s", "speed-up vs naive"],
               [row for c in cases for row in batch_rows(c)]),
    ])


# --- command line -------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.kernels", description=__doc__.split("\n")[0])
    parser.add_argument("--write", metavar="PATH", help="also write the Markdown report to PATH")
    parser.add_argument("--samples", type=int, default=100_000, help="samples per record (default 10^5)")
    parser.add_argument("--channels", type=int, nargs="+", default=[1, 3],
                        help="channel counts to measure (default 1 3)")
    parser.add_argument("--naive-samples", type=int, default=5_000,
                        help="prefix the naive loop really runs over (default 5000)")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per Numba measurement")
    args = parser.parse_args(argv)
    if args.samples < 2_000 or args.naive_samples < 1 or args.repeats < 1:
        parser.error("need --samples >= 2000, --naive-samples >= 1, --repeats >= 1")

    begin = time.perf_counter()
    progress(machine_description())
    cases = [run_case(args.samples, c, args.repeats, args.naive_samples) for c in args.channels]
    elapsed = time.perf_counter() - begin
    progress(f"done in {elapsed:.0f} s")

    bad = [c for c in cases if not c.agreement.worst <= AGREEMENT_TOLERANCE]
    print(render_stdout(cases))
    if bad:
        for c in bad:
            print(f"bench: {c.channels}-channel results disagree with the reference: {c.agreement}",
                  file=sys.stderr)
        return 1
    if args.write:
        command = "python -m bench.kernels --write " + args.write
        extra = [a for a in (argv if argv is not None else sys.argv[1:]) if a not in ("--write", args.write)]
        if extra:
            command += " " + " ".join(extra)
        with open(args.write, "w", encoding="utf-8") as fh:
            fh.write(render_markdown(cases, command, elapsed))
        progress(f"wrote {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
