"""The three example configs for raw sensors on synthetic signals of known rhythm.

    python docs/figures/raw_examples.py OUT.png      (= ``make figures``)

One row per config (config/ecg-rhythm.yaml, config/eeg-alpha.yaml, config/pmu-modes.yaml), run
through the raw-sensor path (:mod:`bench.raw_runs`: band-pass and Hilbert phase, or the beat
phase for ECG, then the estimator and the sync).  Left: a few seconds of the raw signals.
Right: |T_sync|^2 over the record for the rhythm and for what must never collapse, the
threshold I_c, and the stretches in which each sensor was collapsed (bars under the curves).

- ECG (bench/ecg.py, 360 Hz): 70 bpm with 3 % sinus variability for 60 s, then 30 % premature
  beats; beside it white noise through the same config.
- EEG (250 Hz): pink background, a 30 s alpha burst (10 Hz, wandering 0.3 Hz rms) from 20 s;
  beside it pink noise alone.
- PMU (30 frames/s): a voltage angle wandering 0.3 deg/sqrt(s) with a 0.5 Hz, 2 deg mode from
  60 s; beside it an angle wandering 1 deg/sqrt(s) on a 0.01 Hz frequency offset, no mode.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, same output everywhere

import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402

# Run the modules of this checkout, wherever the script is started from.
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.ecg import ecg_record  # noqa: E402
from bench.raw_runs import SyncTrace, raw_settings, raw_sync  # noqa: E402
from bench.raw_signals import RawRecord, alpha_burst, pink_noise, pmu_mode, white_noise  # noqa: E402


def cases() -> list[tuple[str, str, dict[str, RawRecord], float]]:
    """(title, config, {label: record} with the rhythm first, seconds of raw signal to show)."""
    ecg = ecg_record(seed=0, noise_mv=0.05, hrv=0.03)
    return [
        ("ECG rhythm: beat phase, 10-30 Hz", "ecg-rhythm",
         {"ECG: regular, then premature beats": RawRecord(ecg.t, ecg.value, ecg.t[0], ecg.ectopic_from),
          "white noise": white_noise(fs=360.0, duration_s=120.0, rms=0.05, seed=0)}, 4.0),
        ("EEG alpha: analytic phase, 8-12 Hz", "eeg-alpha",
         {"alpha burst in pink background": alpha_burst(seed=0),
          "pink noise": pink_noise(duration_s=70.0, seed=0)}, 1.5),
        ("PMU modes: analytic phase, 0.2-1 Hz", "pmu-modes",
         {"0.5 Hz mode on a wandering angle": pmu_mode(quiet_s=60.0, duration_s=240.0, drift_deg=0.3,
                                                        wander_hz=0.01, seed=0),
          "wandering angle, no mode": pmu_mode(mode_deg=0.0, duration_s=240.0, drift_deg=1.0, offset_hz=0.01,
                                               seed=0)}, 20.0),
    ]


def draw(out: Path) -> list[str]:
    rows = cases()
    fig, axes = plt.subplots(len(rows), 2, figsize=(12, 3.1 * len(rows)), gridspec_kw={"width_ratios": [1, 2.4]})
    lines = []
    for (title, name, recs, show_s), (raw_ax, coh_ax) in zip(rows, axes):
        raw = raw_settings(ROOT / "config" / f"{name}.yaml")
        traces = raw_sync(raw, recs, call_s=10.0)
        rhythm = next(iter(recs.values()))
        t0 = rhythm.t[0]
        at = (rhythm.rhythm_from - t0) * 1e-6 + (8.0 if name == "ecg-rhythm" else 10.0)
        for i, (label, rec) in enumerate(recs.items()):
            s = (rec.t - rec.t[0]) * 1e-6
            near = (s >= at) & (s < at + show_s)
            x = rec.value[near] - rec.value[near].mean()
            raw_ax.plot(s[near], x / np.ptp(x) - 1.2 * i, linewidth=0.7, color=f"C{i}", label=label)
            lines.append(_plot_trace(coh_ax, traces[label], rec.t[0], label, i, raw.threshold))
        if rhythm.rhythm_to > rhythm.rhythm_from:
            coh_ax.axvspan((rhythm.rhythm_from - t0) * 1e-6, (min(rhythm.rhythm_to, rhythm.t[-1]) - t0) * 1e-6,
                           color="C0", alpha=0.07, linewidth=0)
        raw_ax.set_title(f"{name}: raw samples from {at:g} s (each scaled)", fontsize=9)
        raw_ax.set_yticks([])
        raw_ax.set_xlabel("s")
        coh_ax.set_title(title, fontsize=9)
        coh_ax.set_ylabel(r"$|T_{sync}|^2$")
        coh_ax.set_xlabel("event time (s); shaded: the rhythm's stretch; bars: collapsed")
        coh_ax.set_ylim(-0.12, 1.25)
        coh_ax.grid(True, alpha=0.3)
        coh_ax.legend(fontsize=7.5, loc="upper right", ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return lines


def _plot_trace(ax, trace: SyncTrace, t0: int, label: str, i: int, threshold: float) -> str:
    s = (trace.t - t0) * 1e-6
    ax.plot(s, trace.coherence, linewidth=0.8, color=f"C{i}", label=label)
    ax.axhline(threshold, color="0.3", linestyle=":", linewidth=0.8)
    on = trace.collapsed.astype(bool)
    ax.fill_between(s, -0.04 - 0.05 * i, -0.01 - 0.05 * i, where=on, color=f"C{i}", step="post", linewidth=0)
    events = ", ".join(f"{'collapse' if code == 1 else 'dissipate'} {(t - t0) * 1e-6:.1f} s"
                       for t, code in trace.events()[:4])
    mature = trace.coherence[trace.mature]
    return f"{label}: max |T_sync|^2 once mature {mature.max() if mature.size else float('nan'):.3f}; {events or 'no event'}"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python docs/figures/raw_examples.py OUT.png", file=sys.stderr)
        return 2
    out = Path(argv[0])
    for line in draw(out):
        print(line)
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
