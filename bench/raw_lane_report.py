"""The raw-sensor shapes' tables, on stdout and as their section of ``docs/benchmarks.md``."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.markdown import replace_section, si, table
from bench.raw_lane_runs import AGREEMENT_RAD, REPEATS
from bench.raw_shapes import FILE_RECORD_BATCH, PairRun, RawRun

SECTION_TITLE = "Raw sensors: phase extraction in the flow"

KERNEL_HEADER = ["shape", "band, method", "taps", "samples", "(a) extract_phases, samples/s", "multiply-adds/s",
                 "np.convolve, samples/s", "extract_phases / np.convolve (speed)", "worst difference",
                 "beat_phases (events): one call; in the Fleet's calls"]
PAIR_HEADER = ["shape", "what", "raw samples/s (median)", "phase samples/s (median)", "raw / phase",
               "extraction's share of the raw run", "collapses / dissipations (raw = phase)"]


def _label(r: RawRun) -> str:
    return f"{r.shape.label}, {r.shape.seconds:g} s"


def kernel_rows(runs: Sequence[RawRun]) -> list[list[str]]:
    rows = []
    for r in runs:
        k, n = r.kernel, r.shape.samples
        filter_s, reference = min(k.filter_s), min(k.reference_s)
        beats = (f"{si(n / min(k.beats_s))} samples/s ({min(k.beats_s):.2f} s); {si(n / min(k.beats_calls_s))} "
                 f"({min(k.beats_calls_s):.2f} s)" if k.beats_s else "-")
        rows.append([_label(r), f"{r.band[0]:g}-{r.band[1]:g} Hz, {r.method}", f"{k.taps:,}", f"{n:,}",
                     f"{si(n / filter_s)} ({filter_s:.2f} s)", si(k.taps * n / filter_s),
                     f"{si(n / reference)} ({reference:.2f} s)", f"{reference / filter_s:.2f}x",
                     f"{k.worst_error:.1e} rad", beats])
    return rows


def _spread(samples: int, seconds: list[float]) -> str:
    """The range of the runs' rates, when there are several."""
    return f"; {si(samples / max(seconds))} to {si(samples / min(seconds))}" if len(seconds) > 1 else ""


def _pair_row(r: RawRun, what: str, p: PairRun) -> list[str]:
    raw_s, phase_s = float(np.median(p.raw_s)), float(np.median(p.phase_s))
    return [_label(r), what, f"{si(p.raw_rate)} ({raw_s:.2f} s{_spread(p.raw_samples, p.raw_s)})",
            f"{si(p.phase_rate)} ({phase_s:.2f} s{_spread(p.phase_samples, p.phase_s)}; "
            f"{p.phase_samples:,} phases)",
            f"{p.raw_rate / p.phase_rate:.0%}", f"{max(raw_s - phase_s, 0.0) / raw_s:.0%}",
            f"{p.events[0]:,} / {p.events[1]:,}"]


def pair_rows(runs: Sequence[RawRun]) -> list[list[str]]:
    rows = []
    for r in runs:
        if r.fleet is not None:
            rows.append(_pair_row(r, f"(b) Fleet, {r.fleet.calls} calls", r.fleet))
        if r.flow is not None:
            rows.append(_pair_row(r, "(c) flow, archive off", r.flow))
    return rows


def text_table(runs: Sequence[RawRun]) -> str:
    """The measurements as Markdown tables."""
    return "\n\n".join([_table(KERNEL_HEADER, kernel_rows(runs)), _table(PAIR_HEADER, pair_rows(runs))])


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    return table(header, rows, text_columns=range(len(header)))


def markdown_section(runs: Sequence[RawRun], level: int = 2, machine: str | None = None,
                     alone: bool = False) -> str:
    """The report's section, headed at Markdown ``level``; ``alone``: written into an existing report by
    :func:`update_report` (the rest of the report comes from another run)."""
    h = "#" * level
    today = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
    batch = sorted({r.batch_rows for r in runs})
    out = [
        f"{h} {SECTION_TITLE}",
        "",
        f"**Raw-sensor numbers**, measured on {today} (UTC)"
        + (f" on {machine}" if machine else " on a machine with 2 cores") + ". "
        + ("This section was regenerated alone, from one run of `python -m bench.raw_lanes --update "
           "docs/benchmarks.md`; the rest of this page comes from the run named at its top."
           if alone else "`python -m bench.raw_lanes` runs this section alone."),
        "",
        "Raw `value` sensors (SPEC section 9) go through the flow as lanes of the resonate step's engine "
        "(`operators.fleet.Fleet`): per lane, the samples the event-time gate releases become phase samples "
        "(`operators.raw_phase`: the analytic FIR band-pass of `operators.phase_extraction`, and for "
        "`kairos.phase_method: events` the beat detector of `operators.beat_phase` on its real part) before "
        "the estimator. Each shape runs with its example config (`config/eeg-alpha.yaml`, "
        "`config/ecg-rhythm.yaml`, `config/pmu-modes.yaml`; lateness 0) on synthetic records, one channel per "
        "sensor, seeded: EEG channels with an alpha burst over half the run in pink noise "
        "(`bench.raw_signals.alpha_burst`), ECG leads with a regular rhythm then ectopic beats "
        "(`bench.ecg.ecg_record`), PMU angles wandering 0.3 deg/sqrt(s) with a 0.5 Hz mode (one in four "
        "without; `bench.raw_signals.pmu_mode`). The same samples go through every row of a shape in one run.",
        "",
        f"- **(a) the extraction kernel**: `extract_phases` over the whole run's rows in time order in one call "
        f"(and for events `beat_phases` over its output), the fastest of {REPEATS} runs, garbage collector "
        "paused. Multiply-adds: taps x input samples (the filter's cost; a complex tap on a real sample is two "
        "real multiplications, which the kernel halves by folding the taps' symmetry). Baseline: `np.convolve` of each sensor's "
        "whole record with the same complex taps (`mode='valid'`), then its angle and modulus; the kernel's "
        f"phases must equal the baseline's within {AGREEMENT_RAD:g} rad (worst difference). For events, "
        "`beat_phases` over the band-passed real part of those rows in one call, and again over the same rows in "
        "calls of the Fleet's size (the last column).",
        f"- **(b) the Fleet**: one `Fleet` of all the shape's sensors fed the raw samples in time-ordered calls of "
        f"about {', '.join(f'{b:,}' for b in batch)} rows (one `SampleBatch` per sensor and call), then flushed; "
        "against a new `Fleet` with the same settings fed the phases that (a) produced as phase batches, "
        "over the same spans of event time. The difference is the extraction's share: 1 - (phase-fed seconds) / "
        "(raw seconds). Each rate counts that "
        f"run's own input (the phases are fewer: a filter's warm-up emits none); medians of {REPEATS} runs, "
        "raw and phase alternated (the range of the runs after the median: the machine is shared, and a "
        "rate varied by up to half from one run to the next here). The phase samples that entered the raw Fleet's estimator must equal (a)'s "
        "bit for bit.",
        f"- **(c) the flow**: `flows.kairos.build_flow` over `source: {{kind: file}}` of an Arrow IPC file of the "
        "raw `value` samples (rows in time order, record batches of "
        f"{FILE_RECORD_BATCH:,} rows, `source.batch_rows` {', '.join(f'{b:,}' for b in batch)}), archive off, "
        "no Kafka, metrics endpoint off, `recovery=False`, one worker (`bytewax.testing.run_main`), timed "
        "around `run_main`; against the same flow over a file of (a)'s phases. A file source's default "
        "`batch_rows` (1,048,576) would hand each run over in a few calls of about a million rows.",
        "- Checks (a shape fails if one does not hold): every sample accepted and none refused in (b) and (c); "
        "collapses and dissipations equal between the raw and the phase-fed runs of (b) and of (c), and "
        "between (b) and (c).",
        "",
        _table(KERNEL_HEADER, kernel_rows(runs)),
        "",
        _table(PAIR_HEADER, pair_rows(runs)),
        "",
        "What limits these numbers: the extraction costs O(taps) per sample and channel, and the taps follow "
        "the band's narrowest transition tw = min(f_lo, f_hi - f_lo, fs/2 - f_hi): about 3.6 fs / tw taps "
        "(229 for 8-12 Hz at 250 Hz, 545 for 0.2-1 Hz at 30 frames/s), so halving the band's width (or its "
        "lower edge, where that is the narrowest) doubles the cost per sample, and the same band at twice the "
        "rate costs up to twice as much per sample (twice when tw is set by the band), four times as much per "
        "second of signal. The kernel's inner "
        "loop keeps two running sums (real and imaginary) per channel and sample, added in a fixed order, "
        "which a compiler may not reorder into vector lanes; `np.convolve`'s inner product is vectorised, "
        "which is why the baseline can be faster per tap while it cannot stream (it needs each sensor's "
        "whole record). `beat_phases` regroups each call's rows by sensor (a stable sort and gathers) "
        "around its Numba pass, so its cost per sample grows with the call's size (last column of the first "
        "table). The flow adds the same decode, routing and output work per input row to both of its runs.",
        "",
    ]
    return "\n".join(out)


#: Where ``make bench`` puts this section: before this one (at the report's end without it).
NEXT_SECTION = "## KAIROS kernels\n"


def update_report(path: Path, runs: Sequence[RawRun], machine: str | None = None) -> None:
    """Put this section into an existing report in place of its previous one (or where ``make bench``
    puts it: before :data:`NEXT_SECTION`, else at the end); the rest of the report is left as it is."""
    section = markdown_section(runs, level=2, machine=machine, alone=True)
    path.write_text(replace_section(path.read_text(encoding="utf-8"), section, (SECTION_TITLE,), NEXT_SECTION),
                    encoding="utf-8")
