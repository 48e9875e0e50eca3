"""bench.raw_lanes runs raw sensors through the Fleet and the flow on small shapes, its checks hold, and its
report section replaces itself (no timing is asserted)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bench.raw_lane_report import KERNEL_HEADER, PAIR_HEADER, SECTION_TITLE, update_report
from bench.raw_lane_runs import fleet_pair, kernel_pass, run_shape, scaled
from bench.raw_shapes import SHAPES, Phases, generate, settings_for

SMALL = {"eeg": (0.05, 0.1), "ecg": (0.02, 0.25), "pmu": (0.05, 0.05)}   # event time, sensors


@pytest.fixture(scope="module")
def small_runs():
    # run_shape raises if a check fails: a sample refused, phases or events differing between the paths.
    return [run_shape(scaled(s, *SMALL[s.key]), repeats=1, batch_rows=2_000, quiet=True) for s in SHAPES]


def test_each_shape_gives_the_same_events_raw_and_phase_fed(small_runs):
    eeg, ecg, pmu = small_runs
    assert (eeg.method, eeg.band, eeg.kernel.taps) == ("hilbert", (8.0, 12.0), 229)
    assert (ecg.method, pmu.kernel.taps) == ("events", 545)
    assert ecg.kernel.beats_s and not eeg.kernel.beats_s
    for run in small_runs:
        assert run.kernel.worst_error <= 1e-9
        for pair in (run.fleet, run.flow):
            assert pair.raw_samples == run.shape.samples
            assert 0 < pair.phase_samples < pair.raw_samples      # the warm-up emits no phase
            assert pair.events == run.fleet.events
        assert run.fleet.calls > 1
    assert eeg.fleet.events[0] > 0 and ecg.fleet.events[0] > 0     # the alpha bursts and the regular rhythm collapse


def test_the_fleet_check_fails_when_the_phase_fed_run_differs():
    shape = scaled(SHAPES[0], 0.05, 0.05)
    settings = settings_for(shape)
    t, values = generate(shape)
    phases = kernel_pass(settings, t, values, repeats=1).phases
    fleet_pair(shape, settings, t, values, phases, 2_000, repeats=1)
    rng = np.random.default_rng(0)
    noise = Phases(phases.sid, phases.t, rng.uniform(-np.pi, np.pi, phases.t.size))
    with pytest.raises(RuntimeError, match="entered the estimator"):
        fleet_pair(shape, settings, t, values, noise, 2_000, repeats=1)


def test_the_section_is_added_then_replaced_in_place(tmp_path, small_runs):
    report = tmp_path / "benchmarks.md"
    report.write_text("# Benchmarks\n\n## Fleets\n\nfleets\n\n## KAIROS kernels\n\nkernels\n", encoding="utf-8")
    update_report(report, small_runs, machine="a test machine")
    update_report(report, [dataclasses.replace(small_runs[0], flow=None)], machine="another machine")
    text = report.read_text(encoding="utf-8")
    assert text.count(SECTION_TITLE) == 1 and "another machine" in text and "a test machine" not in text
    # Where make bench puts it (before the kernels), the other sections as they were.
    assert text.startswith("# Benchmarks\n\n## Fleets\n\nfleets\n\n## " + SECTION_TITLE)
    assert text.endswith("\n\n## KAIROS kernels\n\nkernels\n")
    for header in (KERNEL_HEADER, PAIR_HEADER):
        assert "| " + " | ".join(header) + " |" in text
    assert "| (b) Fleet, " in text and "| (c) flow" not in text                       # the run without (c)
    assert "This section was regenerated alone" in text


def test_without_the_kernels_section_it_is_added_at_the_end(tmp_path, small_runs):
    report = tmp_path / "benchmarks.md"
    report.write_text("# Benchmarks\n\n## Fleets\n\nfleets\n", encoding="utf-8")
    update_report(report, small_runs)
    text = report.read_text(encoding="utf-8")
    assert text.startswith("# Benchmarks\n\n## Fleets\n\nfleets\n\n## " + SECTION_TITLE)
    assert "| 3 ECG leads x 360 Hz, 36 s | (c) flow, archive off |" in text
