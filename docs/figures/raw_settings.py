"""What tau, the Emissary and the Master do to a regular rhythm, a rhythm with ectopic beats and noise.

    python docs/figures/raw_settings.py OUT.png      (= ``make figures``)

Each panel changes one setting of an example config and keeps the others (mean over 4 seeds):

- tau, in cycles of the rhythm: the ECG config (beat phase; 70 bpm, so one cycle is 0.857 s)
  on the regular stretch, on the stretch with 30 % premature beats and on white noise, and
  the EEG config (alpha at 10 Hz with 0.3 Hz rms frequency wander) on the burst and on pink
  noise.  Median |T_sync|^2 once the Master is mature; for noise, its maximum.  The velocity
  span is the config's, or tau / 2 when that is shorter.
- the Emissary window, in beats, on the ECG: the share of the ectopic stretch spent collapsed,
  the maximum on white noise (of |T_sync|^2 and of the Emissary's own |T|^2), and the delay
  from the first premature beat to the dissipation.
- the Master window on the EEG: the delay from the start of the alpha burst to the collapse,
  and the maximum on pink noise (``master.min_span`` kept at 2 s).
"""

from __future__ import annotations

import sys
from dataclasses import replace
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
from operators.resonator import ResonatorSettings  # noqa: E402
from bench.raw_signals import RawRecord, alpha_burst, pink_noise, white_noise  # noqa: E402

SEEDS = range(4)
TAU_CYCLES = (0.125, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
EMISSARY_BEATS = (1, 2, 3, 4, 6, 10, 15)
MASTER_S = (3, 5, 10, 20, 40)
BEAT_S, ALPHA_S = 0.857, 0.1


def with_tau(raw: ResonatorSettings, tau_s: float) -> ResonatorSettings:
    p = raw.params
    params = replace(p, tau_us=round(tau_s * 1e6), velocity_span_us=min(p.velocity_span_us, round(tau_s * 5e5)))
    return replace(raw, params=params)


def with_windows(raw: ResonatorSettings, emissary_s: float | None = None, master_s: float | None = None
                 ) -> ResonatorSettings:
    if emissary_s is not None:
        raw = replace(raw, emissary_window_us=round(emissary_s * 1e6))
    if master_s is not None:
        raw = replace(raw, master_window_us=round(master_s * 1e6))
    return raw


def median_in(trace: SyncTrace, t_from: int, t_to: int) -> float:
    inside = (trace.t >= t_from) & (trace.t < t_to) & trace.mature
    return float(np.median(trace.coherence[inside]))


def noise_max(trace: SyncTrace) -> float:
    return float(trace.coherence[trace.mature].max())


def column_means(rows: list[tuple[float, ...]]) -> np.ndarray:
    """Mean of each column over the seeds, NaN (never happened) left out; NaN if it never happened."""
    a = np.array(rows)
    seen = ~np.isnan(a)
    return np.where(seen.any(axis=0), np.where(seen, a, 0.0).sum(axis=0) / np.maximum(seen.sum(axis=0), 1), np.nan)


def ecg_runs(raw: ResonatorSettings) -> dict[str, float]:
    """Means over the seeds of the ECG measures."""
    rows = []
    for seed in SEEDS:
        rec = ecg_record(seed=seed, noise_mv=0.05, hrv=0.03)
        ecg = RawRecord(rec.t, rec.value, rec.t[0], rec.ectopic_from)
        traces = raw_sync(raw, {"ecg": ecg, "noise": white_noise(fs=360.0, duration_s=120.0, rms=0.05, seed=seed)})
        tr = traces["ecg"]
        premature = rec.beats[rec.ectopic][0]
        gone = [t for t, code in tr.events() if code != 1 and t > premature - 2_000_000]
        rows.append((median_in(tr, rec.t[0], rec.ectopic_from), median_in(tr, rec.ectopic_from, rec.t[-1]),
                     tr.collapsed_share(rec.ectopic_from, rec.t[-1]), noise_max(traces["noise"]),
                     (gone[0] - premature) * 1e-6 if gone else np.nan,
                     float(traces["noise"].emissary[traces["noise"].mature].max())))
    m = column_means(rows)
    return dict(regular=m[0], ectopic=m[1], ectopic_collapsed=m[2], noise=m[3], delay=m[4], emissary_noise=m[5])


def eeg_runs(raw: ResonatorSettings) -> dict[str, float]:
    rows = []
    for seed in SEEDS:
        burst = alpha_burst(seed=seed)
        traces = raw_sync(raw, {"alpha": burst, "noise": pink_noise(duration_s=70.0, seed=seed)})
        tr = traces["alpha"]
        up = [t for t, code in tr.events() if code == 1 and t > burst.rhythm_from]
        rows.append((median_in(tr, burst.rhythm_from + 1_000_000, burst.rhythm_to), noise_max(traces["noise"]),
                     (up[0] - burst.rhythm_from) * 1e-6 if up else np.nan))
    m = column_means(rows)
    return dict(burst=m[0], noise=m[1], delay=m[2])


def draw(out: Path) -> list[str]:
    ecg_raw, eeg_raw = raw_settings(ROOT / "config" / "ecg-rhythm.yaml"), raw_settings(ROOT / "config" / "eeg-alpha.yaml")
    lines = []
    fig, (tau_ax, em_ax, ma_ax) = plt.subplots(1, 3, figsize=(15, 4.4))

    ecg_tau = [ecg_runs(with_tau(ecg_raw, c * BEAT_S)) for c in TAU_CYCLES]
    eeg_tau = [eeg_runs(with_tau(eeg_raw, c * ALPHA_S)) for c in TAU_CYCLES]
    for label, values, style in (("ECG regular", [r["regular"] for r in ecg_tau], "o-C0"),
                                 ("ECG ectopic", [r["ectopic"] for r in ecg_tau], "s-C1"),
                                 ("ECG white noise (max)", [r["noise"] for r in ecg_tau], "x:C3"),
                                 ("EEG alpha burst", [r["burst"] for r in eeg_tau], "o-C2"),
                                 ("EEG pink noise (max)", [r["noise"] for r in eeg_tau], "x:C4")):
        tau_ax.plot(TAU_CYCLES, values, style[:-2], color=style[-2:], label=label, markersize=4)
        lines.append(f"tau {label}: " + " ".join(f"{c:g}:{v:.3f}" for c, v in zip(TAU_CYCLES, values)))
    tau_ax.set_xscale("log", base=2)
    tau_ax.set_xticks(TAU_CYCLES, [f"{c:g}" for c in TAU_CYCLES])
    tau_ax.set_xlabel("tau_scale (cycles of the rhythm)")
    tau_ax.set_ylabel(r"median $|T_{sync}|^2$ (noise: maximum)")
    tau_ax.set_title("tau: drift tolerated vs noise rejected", fontsize=10)

    ecg_em = [ecg_runs(with_windows(ecg_raw, emissary_s=b * BEAT_S)) for b in EMISSARY_BEATS]
    em_ax.plot(EMISSARY_BEATS, [r["ectopic_collapsed"] for r in ecg_em], "s-", color="C1",
               label="share of the ectopic stretch collapsed", markersize=4)
    em_ax.plot(EMISSARY_BEATS, [r["noise"] for r in ecg_em], "x:", color="C3", label="white noise (max)", markersize=5)
    em_ax.plot(EMISSARY_BEATS, [r["emissary_noise"] for r in ecg_em], "+:", color="C5",
               label=r"white noise, Emissary's own $|T|^2$ (max)", markersize=6)
    twin = em_ax.twinx()
    twin.plot(EMISSARY_BEATS, [r["delay"] for r in ecg_em], "d--", color="0.4", markersize=4,
              label="first premature beat to dissipation (s, right)")
    twin.set_ylabel("delay (s)")
    twin.legend(fontsize=7.5, loc="center right")
    lines.append("emissary (beats): " + " ".join(
        f"{b}:{r['ectopic_collapsed']:.2f}/{r['noise']:.2f}/{r['emissary_noise']:.2f}/{r['delay']:.2f}s" for b, r in zip(EMISSARY_BEATS, ecg_em)))
    em_ax.set_xlabel("emissary.tau_max (beats of the ECG)")
    em_ax.set_title("Emissary: reacts to single beats vs averages noise", fontsize=10)

    eeg_ma = [eeg_runs(with_windows(eeg_raw, master_s=m)) for m in MASTER_S]
    ma_ax.plot(MASTER_S, [r["noise"] for r in eeg_ma], "x:", color="C4", label="EEG pink noise (max)", markersize=5)
    ma_ax.plot(MASTER_S, [r["burst"] for r in eeg_ma], "o-", color="C2", label="EEG alpha burst (median)", markersize=4)
    twin = ma_ax.twinx()
    twin.plot(MASTER_S, [r["delay"] for r in eeg_ma], "d--", color="0.4", markersize=4,
              label="burst start to collapse (s, right)")
    twin.set_ylabel("delay (s)")
    twin.legend(fontsize=7.5, loc="center right")
    lines.append("master (s): " + " ".join(f"{m}:{r['burst']:.3f}/{r['noise']:.3f}/{r['delay']:.1f}s"
                                           for m, r in zip(MASTER_S, eeg_ma)))
    ma_ax.set_xlabel("master.tau_max (s) for a 30 s alpha burst")
    ma_ax.set_title("Master: the collapse waits until it holds mostly rhythm", fontsize=10)

    for ax in (tau_ax, em_ax, ma_ax):
        ax.axhline(ecg_raw.threshold, color="0.3", linestyle=":", linewidth=0.8)
        ax.set_ylim(0.0, 1.02)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7.5, loc="lower left")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return lines


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python docs/figures/raw_settings.py OUT.png", file=sys.stderr)
        return 2
    out = Path(argv[0])
    for line in draw(out):
        print(line)
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
