"""The mesh's order parameter r and locked fraction of Kuramoto cells against their coupling, beside theory.

    python docs/figures/mesh_coupling.py OUT.png      (= ``make figures``)

One simulation (:mod:`bench.kuramoto`) of independent cells with Lorentzian
natural frequencies (half-width gamma = 0.5 rad/s): for each coupling K / K_c
one cell of 2,000 oscillators and 20 cells of 10.  RK4 steps of 0.02 s,
100 s of transient dropped, then 60 s read on the mesh's default grid (0.1 s).

Left: the time-mean r against K / K_c with sqrt(1 - K_c / K), and the floor
of independent phases, sqrt(pi / (4 N)) (the Rayleigh mean; E[r^2] = 1/N):
a cell of 10 sensors shows r ~ 0.3 at any coupling below K_c.  Right: the
share of a cell's oscillators whose lock to the cell's mean field reaches 0.9
over 10 s windows (the defaults sync.mesh.lock_threshold and
sync.mesh.window; mean over the 6 windows of the record) against
(2/pi) atan(K r / gamma).
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, same output everywhere

import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402

# Simulate with the module of this checkout, wherever the script is started from.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.kuramoto import (  # noqa: E402
    CellSpec, KuramotoRun, critical_coupling, incoherent_r_mean, locked_fraction_theory, r_theory, simulate,
)

GAMMA = 0.5                       # rad/s
RATIOS = (0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0)
LARGE_N, SMALL_N, SMALL_CELLS = 2000, 10, 20
WINDOW_S, LOCK_THRESHOLD, GRID_S = 10.0, 0.9, 0.1   # SPEC defaults of sync.mesh
READ_S, TRANSIENT_S = 60.0, 100.0


def ensemble():
    """The simulated cells: per ratio one large cell, then the small cells of every ratio."""
    kc = critical_coupling(GAMMA)
    large = tuple(CellSpec(f"L{x:g}", LARGE_N, x * kc, GAMMA) for x in RATIOS)
    small = tuple(CellSpec(f"S{x:g}-{j}", SMALL_N, x * kc, GAMMA) for x in RATIOS for j in range(SMALL_CELLS))
    # Read every 0.1 s (5 RK4 steps per sample); no file is written, so the sampling rule is off.
    run = KuramotoRun(large + small, READ_S, GRID_S, transient_s=TRANSIENT_S, substeps=5, seed=2025,
                      max_step_rad=None)
    return simulate(run)


def measure(ens) -> dict[str, np.ndarray]:
    """Time-mean r and locked fraction per ratio, for the large cells and the small ones (means)."""
    k = len(RATIOS)
    mean_r = ens.r().mean(axis=0)
    ends = ens.t_us[0] + (np.arange(1, int(READ_S / WINDOW_S) + 1) * WINDOW_S * 1e6).astype(np.int64) - ens.run.sample_us
    locked = np.mean([ens.locked_fraction(WINDOW_S, LOCK_THRESHOLD, end_us=int(e)) for e in ends], axis=0)
    return {
        "r_large": mean_r[:k],
        "r_small": mean_r[k:].reshape(k, SMALL_CELLS).mean(axis=1),
        "locked_large": locked[:k],
        "locked_small": locked[k:].reshape(k, SMALL_CELLS).mean(axis=1),
    }


def draw(out: Path) -> dict[str, np.ndarray]:
    values = measure(ensemble())
    kc = critical_coupling(GAMMA)
    x = np.linspace(0.0, 4.2, 400)
    r_curve = np.array([r_theory(v * kc, GAMMA) for v in x])
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4))

    left.plot(x, r_curve, color="black", linewidth=1.4, label=r"theory $\sqrt{1 - K_c/K}$ ($N \to \infty$)")
    left.plot(RATIOS, values["r_large"], "o", color="C0", markersize=5, label=f"cell of N = {LARGE_N:,}")
    left.plot(RATIOS, values["r_small"], "s", color="C1", markersize=4.5,
              label=f"cells of N = {SMALL_N} (mean of {SMALL_CELLS})")
    for n, color in ((LARGE_N, "C0"), (SMALL_N, "C1")):
        left.axhline(incoherent_r_mean(n), color=color, linestyle="--", linewidth=1.0,
                     label=rf"floor $\sqrt{{\pi/4N}}$ = {incoherent_r_mean(n):.2f} (N = {n:,})")
    left.set_xlabel(r"coupling $K / K_c$")
    left.set_ylabel(r"time-mean order parameter $r = |Z|$")
    left.set_title("order parameter of a cell")

    lf_curve = np.array([locked_fraction_theory(v * kc, r_theory(v * kc, GAMMA), GAMMA) for v in x])
    right.plot(x, lf_curve, color="black", linewidth=1.4, label=r"theory $\frac{2}{\pi}\arctan(K r / \gamma)$")
    right.plot(RATIOS, values["locked_large"], "o", color="C0", markersize=5, label=f"cell of N = {LARGE_N:,}")
    right.plot(RATIOS, values["locked_small"], "s", color="C1", markersize=4.5,
               label=f"cells of N = {SMALL_N} (mean of {SMALL_CELLS})")
    right.set_xlabel(r"coupling $K / K_c$")
    right.set_ylabel(f"locked fraction (lock >= {LOCK_THRESHOLD:g} over {WINDOW_S:g} s)")
    right.set_title("share of sensors locked to the cell's mean field")
    for ax in (left, right):
        ax.axvline(1.0, color="0.6", linestyle=":", linewidth=1.0)
        ax.set_xlim(0.0, 4.2)
        ax.set_ylim(0.0, 1.02)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7.5, loc="lower right")
    fig.suptitle(f"Kuramoto cells with Lorentzian frequencies (gamma = {GAMMA:g} rad/s, K_c = {kc:g} rad/s): "
                 f"{TRANSIENT_S:g} s transient, then {READ_S:g} s on a {GRID_S:g} s grid", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return values


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python docs/figures/mesh_coupling.py OUT.png", file=sys.stderr)
        return 2
    out = Path(argv[0])
    values = draw(out)
    for i, ratio in enumerate(RATIOS):
        print(f"K/K_c {ratio:4g}: r {values['r_large'][i]:.3f} (N = {LARGE_N}), {values['r_small'][i]:.3f} "
              f"(N = {SMALL_N}); locked {values['locked_large'][i]:.3f}, {values['locked_small'][i]:.3f}")
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
