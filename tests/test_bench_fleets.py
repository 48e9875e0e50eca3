"""bench.fleets runs the flow end to end on a small fleet, and its report section replaces itself (no timing is asserted)."""

from __future__ import annotations

import pytest

from bench.fleet_report import (
    CHECK_HEADER, HEADER, MESH_HEADER, OLD_TITLES, SECTION_TITLE, SNAPSHOT_HEADER, STEP_HEADER, update_report,
)
from bench.fleet_runs import FLOW_REPEATS, check_flow, run_shape
from bench.fleet_shapes import FleetRun, FleetShape, FlowRun


@pytest.fixture(scope="module")
def tiny_run():
    # run_shape raises if the flow's outputs differ from the one pass's where they can be seen.
    return run_shape(FleetShape("tiny", 30, 10, 30, seed=9), repeats=1, batch_rows=1_000, mesh=True)


def test_a_small_fleet_gives_the_one_pass_rows_and_events_in_the_flow(tiny_run):
    run = tiny_run
    assert run.rows == (9_000, 9_000)                   # a sample every 0.1 s: a point of each grid per sample
    assert run.events[0] > 0                            # the steady sensors collapse
    assert run.batch_rows == 1_000 and run.per_sensor_call == pytest.approx(1_000 / 30)
    assert run.expected["meso"] == 2 * 30 * 30          # one per second, sensor and transducer
    for flow in (run.off, run.on):
        assert flow.accepted == 9_000 and flow.rejected == 0 and flow.events == run.events
    assert run.on.meso == run.expected["meso"]          # the archive keeps the witness log
    assert len(run.off.repeat_rates) == FLOW_REPEATS   # short runs are repeated, the median kept
    assert run.off.repeat_rates[1] == pytest.approx(run.off.rate)
    assert run.off.meso in (None, run.expected["meso"])   # nothing keeps it: the flow may build none
    assert run.off.archive_rows == {}
    rows = run.on.archive_rows
    assert rows["input"] == 9_000
    assert rows["signatures emissary"] == rows["signatures master"] == rows["coherence_history"] == 900
    assert (rows["collapse"], rows["dissipate"]) == run.events
    for label in ("mesh off, archive off", "mesh on, archive off", "mesh off, archive on", "mesh on, archive on"):
        assert len(run.mesh[label]) == 3, label       # checked against the one pass like (b) and (c)
    assert run.mesh["mesh on, archive off"][0].steps["mesh"] > 0
    assert run.mesh["mesh off, archive off"][0].steps.get("mesh", 0.0) == 0.0
    snap = run.snapshot
    assert snap.groups == 16 and sum(snap.sensors) == 30
    assert all(b > 0 for b, n in zip(snap.nbytes, snap.sensors) if n)


def test_the_check_fails_when_the_flow_and_the_one_pass_differ(tiny_run):
    wrong = FlowRun(False, 1.0, 9_000, 9_000, 0, (tiny_run.events[0] + 1, tiny_run.events[1]), None, {})
    with pytest.raises(RuntimeError, match="collapses"):
        check_flow("(b)", wrong, tiny_run)
    few = FlowRun(False, 1.0, 9_000, 9_000, 0, tiny_run.events, tiny_run.expected["meso"] - 1, {})
    with pytest.raises(RuntimeError, match="meso witness records"):
        check_flow("(b)", few, tiny_run)
    short = FlowRun(True, 1.0, 9_000, 9_000, 0, tiny_run.events, tiny_run.expected["meso"], {},
                           dict(tiny_run.on.archive_rows, input=8_999))
    with pytest.raises(RuntimeError, match="archive input: 8,999 rows"):
        check_flow("(c)", short, tiny_run)


def test_the_section_is_added_then_replaced_in_place(tmp_path, tiny_run):
    report = tmp_path / "benchmarks.md"
    report.write_text("# Benchmarks\n\n## Before\n\ntext\n\n## KAIROS kernels\n\nkernels\n", encoding="utf-8")
    for _ in range(2):
        update_report(report, [tiny_run], machine="a test machine")
    text = report.read_text(encoding="utf-8")
    assert text.count(SECTION_TITLE) == 1
    assert text.index("## KAIROS kernels\n\nkernels\n") < text.index(SECTION_TITLE)   # added, then replaced
    assert "30 sensors x 10 Hz" in text and "End-to-end flow numbers" in text and "a test machine" in text
    assert "This section was regenerated alone" in text
    for header in (HEADER, STEP_HEADER, CHECK_HEADER, SNAPSHOT_HEADER, MESH_HEADER):
        assert "| " + " | ".join(header) + " |" in text
    assert "| 30 sensors x 10 Hz | archive off |" in text
    assert "(meets 80%)" in text or "(below 80%)" in text


def test_the_old_section_is_replaced_and_ratios_are_printed_against_the_targets(tmp_path):
    shape = FleetShape("f", 2, 10, 5)
    off = FlowRun(False, 2.0, 100, 100, 0, (1, 0), 20, {"decode": 0.5, "resonate": 1.0})
    on = FlowRun(True, 4.0, 100, 100, 0, (1, 0), 20, {}, {"input": 100, "coherence_history": 10, "events": 1,
                                                                 "signatures emissary": 10, "signatures master": 10,
                                                                 "collapse": 1, "dissipate": 0})
    run = FleetRun(shape, [0.5, 0.4, 0.6], (100, 100), (1, 0), 1_048_576, 1_000, off, on, None,
                          {"meso": 20, "signatures emissary": 10, "signatures master": 10, "coherence_history": 10,
                           "events": 1})
    report = tmp_path / "benchmarks.md"
    report.write_text(f"# B\n\n## {OLD_TITLES[0]}\n\nold numbers\n\n## KAIROS kernels\n\nkernels\n",
                      encoding="utf-8")
    update_report(report, [run])
    text = report.read_text(encoding="utf-8")
    assert "old numbers" not in text and text.endswith("## KAIROS kernels\n\nkernels\n")
    # The ceiling is the fastest one pass (0.4 s: 250 samples/s), the range beside it.
    assert ("| 2 sensors x 10 Hz | 5 s | 100 | 50.0 | 250 (0.40 to 0.60 s) | 50.0 (2.0 s) | 20.0% (below 40%) "
            "| 25.0 (4.0 s) | 10.0% (below 25%) | 100 / 100 | 1 / 0 |") in text
    assert "| 2 sensors x 10 Hz | (b) archive off | 2.0 s | 0.5 s | 1.0 s | 0.0 s | 0.5 s |" in text
