"""Coherence |T|^2 of a noisy oscillator against its phase noise, for a few estimator settings.

    python docs/figures/coherence_vs_jitter.py OUT.png      (= ``make figures``)

A 5 Hz oscillator sampled at 100 Hz for 60 s, with Gaussian phase noise of
standard deviation sigma (radians) added to every sample, is passed to
:func:`operators.resonance.resonance` (tau 1 s, omega 0) with velocity spans of
0, 0.05 and 0.2 s, and once more with 0.05 s on irregular sampling times.
Each point is the mean over a few noise seeds.  The left panel (linear) shows
where the coherence threshold 0.95 is crossed; the right panel (logarithmic)
shows the approach to the noise floor of order 1/N (N lag products).
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, same output everywhere

import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402

# Plot the estimator of this checkout, wherever the script is started from.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from operators.resonance import resonance  # noqa: E402

START_S = 1_764_115_200.0      # 2025-11-26T00:00:00Z: real epoch-sized times
OSCILLATOR_HZ = 5.0
SAMPLE_RATE_HZ = 100.0
DURATION_S = 60.0
TAU_S = 1.0
COHERENCE_THRESHOLD = 0.95     # SPEC default kairos.coherence_threshold
PHASE_NOISE_RAD = np.linspace(0.0, 1.5, 31)
SEEDS = range(8)

# (label, velocity span d in s, sampling-time jitter std in s)
SETTINGS = (
    ("d = 0 (consecutive samples)", 0.0, 0.0),
    ("d = 0.05 s", 0.05, 0.0),
    ("d = 0.2 s", 0.2, 0.0),
    ("d = 0.05 s, timing jitter 1 ms std", 0.05, 0.001),
)


def oscillator(phase_noise: float, timing_jitter: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Epoch-second sample times and wrapped phases of the noisy 5 Hz oscillator.

    Timing jitter moves the sampling instants (the phase is the true phase at
    the jittered instant); it is clipped below half a period so times stay ordered.
    """
    rng = np.random.default_rng(seed)
    n = int(round(DURATION_S * SAMPLE_RATE_HZ))
    t = np.arange(n) / SAMPLE_RATE_HZ
    if timing_jitter > 0:
        half_period = 0.5 / SAMPLE_RATE_HZ
        t = t + np.clip(rng.normal(0.0, timing_jitter, n), -0.98 * half_period, 0.98 * half_period)
    phase = 2.0 * np.pi * OSCILLATOR_HZ * t + rng.normal(0.0, phase_noise, n)
    return START_S + t, np.mod(phase + np.pi, 2.0 * np.pi) - np.pi


def coherence_curve(velocity_span: float, timing_jitter: float) -> np.ndarray:
    """Mean |T|^2 over the seeds, for each phase-noise level."""
    return np.array([
        np.mean([abs(resonance(*oscillator(sigma, timing_jitter, seed), tau=TAU_S,
                               velocity_span=velocity_span)) ** 2 for seed in SEEDS])
        for sigma in PHASE_NOISE_RAD
    ])


def product_count() -> int:
    """Lag products of one noiseless regular record: the N of the 1/N noise floor."""
    from operators.lag import LagState
    from operators.params import KairosParams
    from schemas.timebase import to_micros

    t, phase = oscillator(0.0, 0.0, 0)
    state = LagState(KairosParams.from_seconds(TAU_S, velocity_span=0.05), channels=1)
    return len(state.push(to_micros(t), phase))


def draw(out: Path) -> None:
    curves = [(label, coherence_curve(d, jitter)) for label, d, jitter in SETTINGS]
    n_products = product_count()
    fig, (lin, log) = plt.subplots(1, 2, figsize=(11, 4.4), sharex=True)
    # exp(-2 sigma^2): the phase of p_k is phi_k - phi_m, two independent noise draws.
    guide = np.exp(-2.0 * PHASE_NOISE_RAD ** 2)
    for ax in (lin, log):
        for (label, values), marker in zip(curves, "osd^"):
            ax.plot(PHASE_NOISE_RAD, values, marker=marker, markersize=3.5, linewidth=1.4, label=label)
        ax.plot(PHASE_NOISE_RAD, guide, color="0.45", linestyle=":", linewidth=1.2,
                label=r"$e^{-2\sigma^2}$ (phase noise of two samples)")
        ax.axhline(COHERENCE_THRESHOLD, color="crimson", linestyle="--", linewidth=1.0,
                   label=f"coherence threshold {COHERENCE_THRESHOLD:g}")
        ax.set_xlabel(r"phase noise $\sigma$ per sample [rad]")
        ax.grid(True, alpha=0.3)
    log.axhline(1.0 / n_products, color="black", linestyle="-.", linewidth=1.0,
                label=f"1/N noise floor (N = {n_products:,} products)")
    lin.set_ylim(0.0, 1.03)
    lin.set_ylabel(r"coherence $|T|^2$")
    lin.set_title("linear scale")
    log.set_yscale("log")
    log.set_ylim(5e-5, 1.5)
    log.set_ylabel(r"coherence $|T|^2$ (log)")
    log.set_title("log scale: approach to the noise floor")
    handles, labels = log.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(f"KAIROS coherence of a {OSCILLATOR_HZ:g} Hz oscillator sampled at "
                 f"{SAMPLE_RATE_HZ:g} Hz for {DURATION_S:g} s vs phase noise "
                 f"(tau = {TAU_S:g} s, omega = 0, mean of {len(SEEDS)} seeds)", fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python docs/figures/coherence_vs_jitter.py OUT.png", file=sys.stderr)
        return 2
    out = Path(argv[0])
    draw(out)
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
