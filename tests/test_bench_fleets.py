"""bench.fleets runs end to end on a small fleet, and its report section replaces itself (no timing is asserted)."""

from __future__ import annotations

from bench import fleets


def test_a_small_fleet_gives_the_same_rows_and_events_in_both_paths_and_a_section(tmp_path):
    # run_shape raises if the engine's rows or events differ from the one pass's.
    run = fleets.run_shape(fleets.FleetShape("tiny", 30, 10, 30, seed=9), repeats=1)
    assert run.rows == (9_000, 9_000)                   # a sample every 0.1 s: a point of each grid per sample
    assert run.events[0] > 0                            # the steady sensors collapse
    assert run.calls == 1 and run.per_sensor_call == 300

    report = tmp_path / "benchmarks.md"
    report.write_text("# Benchmarks\n\n## Before\n\ntext\n\n## KAIROS kernels\n\nkernels\n", encoding="utf-8")
    for _ in range(2):
        fleets.update_report(report, [run])
    text = report.read_text(encoding="utf-8")
    assert text.count(fleets.SECTION_TITLE) == 1
    assert text.index("## KAIROS kernels\n\nkernels\n") < text.index(fleets.SECTION_TITLE)   # added, then replaced
    assert "30 sensors x 10 Hz" in text


def test_the_section_is_replaced_in_place(tmp_path):
    run = fleets.FleetRun(fleets.FleetShape("f", 2, 10, 5), [0.5, 0.4, 0.6], 2.0, 1, (10, 10), (1, 0))
    report = tmp_path / "benchmarks.md"
    report.write_text(f"# B\n\n## {fleets.SECTION_TITLE}\n\nold numbers\n\n## KAIROS kernels\n\nkernels\n",
                      encoding="utf-8")
    fleets.update_report(report, [run])
    text = report.read_text(encoding="utf-8")
    assert "old numbers" not in text and text.endswith("## KAIROS kernels\n\nkernels\n")
    assert "| 2 sensors x 10 Hz | 5 s | 100 | 50.0 | 200 (0.40 to 0.60 s) | 50.0 (2.0 s) | 25.0% |" in text
