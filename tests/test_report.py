"""`becomingone report` (SPEC section 6): the PNG and the per-sensor summary of an archive.

A hand-built archive with known rows: three sensors on a 1 s grid for 300 s
that crosses an hour partition, collapsed stretches with their events, and
input samples in known numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from matplotlib import image as mpimg

from connectors.archive import ArchiveWriter
from flows.report import MAX_PANELS, ReportResult, summary_rows, write_report
from schemas.datasets import DATASETS, TIMESTAMP

T0 = 1_735_693_080_000_000  # 2025-01-01T00:58:00Z: the grid crosses into hour 01
SECOND = 1_000_000
N = 300  # grid points per sensor

# sensor -> ([first, after_last) row ranges of collapsed state), input sample count
BUILT: dict[str, tuple[list[tuple[int, int]], int]] = {
    "coherent-1": ([(60, 180)], 1200),
    "drift-2": ([(30, 80), (200, N)], 900),  # collapsed until the end: no closing dissipate
    "noise-10": ([], 450),
}


def _table(dataset: str, columns: dict) -> pa.Table:
    """A table of ``dataset``'s schema from plain columns (``t`` in int64 us); a nullable column not given is null."""
    arrays = []
    rows = len(next(iter(columns.values())))
    for field in DATASETS[dataset]:
        value = columns[field.name] if field.name in columns or not field.nullable else [None] * rows
        if field.type == TIMESTAMP:
            arrays.append(pa.array(np.asarray(value, np.int64), pa.int64()).cast(TIMESTAMP))
        else:
            arrays.append(pa.array(value, field.type))
    return pa.Table.from_arrays(arrays, schema=DATASETS[dataset])


def _write(root: Path, dataset: str, table: pa.Table) -> None:
    writer = ArchiveWriter(root, dataset)
    writer.write(table)
    writer.close()


def _collapsed(spans: list[tuple[int, int]]) -> np.ndarray:
    state = np.zeros(N, bool)
    for first, end in spans:
        state[first:end] = True
    return state


def _sync_curve(sensor: str, collapsed: np.ndarray) -> np.ndarray:
    """|T_sync|^2 above I_c where collapsed, below I_c - hysteresis elsewhere."""
    rng = np.random.default_rng(sum(map(ord, sensor)))
    if sensor.startswith("noise"):
        return np.clip(0.25 + 0.08 * rng.standard_normal(N), 0.0, 1.0)
    base = np.where(collapsed, 0.975, 0.6 + 0.2 * np.sin(np.arange(N) / 15.0))
    return np.clip(base + 0.01 * rng.standard_normal(N), 0.0, 1.0)


def build_archive(root: Path, *, with_input: bool = True, sensors: dict | None = None) -> dict[str, dict]:
    """Write coherence_history, events and (optionally) input; return the expected summary per sensor."""
    sensors = BUILT if sensors is None else sensors
    grid = T0 + SECOND * np.arange(N, dtype=np.int64)
    history: dict[str, list] = {k: [] for k in ("sensor", "t", "coherence_master", "coherence_emissary",
                                                 "coherence_sync", "delta_phase", "state")}
    events: dict[str, list] = {k: [] for k in DATASETS["events"].names}
    samples: dict[str, list] = {"sensor": [], "cell": [], "t": [], "phase": []}
    expected = {}
    for sensor, (spans, n_samples) in sensors.items():
        collapsed = _collapsed(spans)
        sync = _sync_curve(sensor, collapsed)
        history["sensor"] += [sensor] * N
        history["t"] += grid.tolist()
        history["coherence_master"] += np.clip(sync + 0.02, 0, 1).tolist()
        history["coherence_emissary"] += np.clip(sync - 0.03, 0, 1).tolist()
        history["coherence_sync"] += sync.tolist()
        history["delta_phase"] += [0.01] * N
        history["state"] += np.where(collapsed, "collapsed", "dissipated").tolist()

        transitions = [(first, "collapse") for first, _ in spans] + [(end, "dissipate") for _, end in spans if end < N]
        for index, kind in sorted(transitions):
            events["event_id"].append(f"{sensor}-{index}")
            events["event"].append(kind)
            events["reason"].append(None if kind == "collapse" else "coherence")
            events["sensor"].append(sensor)
            events["cell"].append(None)
            events["t"].append(int(grid[index]))
            events["coherence_sync"].append(float(sync[index]))
            for name in ("t_sync_re", "t_sync_im", "t_master_re", "t_master_im", "t_emissary_re",
                         "t_emissary_im", "delta_phase"):
                events[name].append(0.0)

        # Samples spread over the same 300 s, strictly increasing per sensor.
        samples["sensor"] += [sensor] * n_samples
        samples["cell"] += [None] * n_samples
        samples["t"] += (T0 + np.linspace(0, (N - 1) * SECOND, n_samples).astype(np.int64)).tolist()
        samples["phase"] += [[0.0, 0.5]] * n_samples

        expected[sensor] = {
            "samples": n_samples if with_input else None,
            "collapses": len(spans),
            "dissipations": sum(end < N for _, end in spans),
            "collapsed_pct": 100.0 * collapsed.sum() / N,
            "mean_coherence_sync": float(sync.mean()),
            "last_coherence_sync": float(sync[-1]),
        }
    _write(root, "coherence_history", _table("coherence_history", history))
    _write(root, "events", _table("events", events))
    if with_input:
        _write(root, "input", _table("input", samples))
    return expected


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    root = tmp_path_factory.mktemp("archive")
    return root, build_archive(root)


@pytest.fixture(scope="module")
def report(archive) -> ReportResult:
    root, _ = archive
    return write_report(root)


def _rgb(path: Path) -> np.ndarray:
    """The PNG as float RGB in 0..1, shape (height, width, 3)."""
    return mpimg.imread(path)[..., :3]


def _pixels_near(image: np.ndarray, color: tuple[float, float, float], tol: float = 0.04) -> int:
    return int(np.all(np.abs(image - np.asarray(color)) < tol, axis=-1).sum())


def test_png_is_written_and_not_blank(archive, report) -> None:
    root, _ = archive
    assert report.path == root / "report.png"
    assert report.path.is_file()
    assert report.path.stat().st_size > 20_000
    image = _rgb(report.path)
    height, width, _ = image.shape
    assert width > 600 and height > 600
    assert image.std() > 0.05
    distinct = np.unique((image.reshape(-1, 3) * 255).round().astype(np.uint8), axis=0)
    assert len(distinct) > 50  # lines, shading, markers and text, anti-aliased
    # The sync line (#1f5fa8) and the collapsed shading (red at alpha 0.13 over white) are drawn.
    assert _pixels_near(image, (0x1F / 255, 0x5F / 255, 0xA8 / 255)) > 500
    shade = 0.87 + 0.13 * np.array([0xD6, 0x27, 0x28]) / 255
    assert _pixels_near(image, tuple(shade), tol=0.015) > 2_000


def test_summary_matches_the_built_archive(archive, report) -> None:
    _, expected = archive
    assert report.sensors == ("coherent-1", "drift-2", "noise-10")  # natural order: 2 before 10
    assert report.plotted == report.sensors
    assert report.start_us == T0 and report.end_us == T0 + (N - 1) * SECOND
    by_sensor = {row["sensor"]: row for row in report.rows}
    assert set(by_sensor) == set(expected)
    for sensor, want in expected.items():
        row = by_sensor[sensor]
        assert row["samples"] == want["samples"]
        assert row["collapses"] == want["collapses"]
        assert row["dissipations"] == want["dissipations"]
        assert row["collapsed_pct"] == pytest.approx(want["collapsed_pct"])
        assert row["mean_coherence_sync"] == pytest.approx(want["mean_coherence_sync"])
        assert row["last_coherence_sync"] == pytest.approx(want["last_coherence_sync"])
    # Spelled out for the first two sensors: 120 and 150 of 300 grid points collapsed.
    assert by_sensor["coherent-1"]["collapsed_pct"] == pytest.approx(40.0)
    assert (by_sensor["drift-2"]["collapses"], by_sensor["drift-2"]["dissipations"]) == (2, 1)
    assert by_sensor["drift-2"]["collapsed_pct"] == pytest.approx(50.0)
    assert summary_rows(archive[0]) == report.rows


def test_sensor_selection_and_time_range(archive, tmp_path) -> None:
    root, _ = archive
    # [t0 + 100 s, t0 + 199 s]: coherent-1 is collapsed for rows 100..179 and dissipates at 180;
    # drift-2 is never collapsed there and has no event.
    start, end = T0 + 100 * SECOND, T0 + 199 * SECOND
    result = write_report(root, tmp_path / "sub" / "range.png", sensors=["drift-2", "coherent-1"],
                          start_us=start, end_us=end)
    assert result.path == tmp_path / "sub" / "range.png" and result.path.is_file()
    assert result.sensors == ("drift-2", "coherent-1")  # the caller's order
    assert (result.start_us, result.end_us) == (start, end)
    drift, coherent = result.rows
    assert (coherent["collapses"], coherent["dissipations"]) == (0, 1)
    assert coherent["collapsed_pct"] == pytest.approx(80.0)
    assert (drift["collapses"], drift["dissipations"], drift["collapsed_pct"]) == (0, 0, 0.0)
    # Samples are spread evenly over the 300 s: about a third fall into the 100 s window.
    assert coherent["samples"] == pytest.approx(1200 / 3, abs=5)


def test_unknown_sensor_is_refused(archive) -> None:
    root, _ = archive
    with pytest.raises(ValueError, match=r"unknown sensor\(s\) 'nope'.*known: coherent-1, drift-2, noise-10"):
        write_report(root, sensors=["coherent-1", "nope"])
    with pytest.raises(ValueError, match="no coherence_history rows"):
        summary_rows(root, start_us=T0 + 10_000 * SECOND)
    with pytest.raises(ValueError, match="after end"):
        summary_rows(root, start_us=T0 + SECOND, end_us=T0)


def test_empty_archive_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="no coherence_history/"):
        write_report(tmp_path)
    ArchiveWriter(tmp_path, "coherence_history").close()  # the dataset exists but holds no rows
    with pytest.raises(ValueError, match="no coherence_history rows"):
        write_report(tmp_path)
    assert not (tmp_path / "report.png").exists()
    with pytest.raises(FileNotFoundError):
        write_report(tmp_path / "missing")


def test_archive_without_input(tmp_path) -> None:
    build_archive(tmp_path, with_input=False)
    result = write_report(tmp_path)
    assert [row["samples"] for row in result.rows] == [None, None, None]
    assert result.rows[0]["collapses"] == 1
    assert result.path.stat().st_size > 20_000


def test_many_sensors_cap_the_panels(tmp_path) -> None:
    sensors = {f"s-{i}": ([(10 * (i % 5), 10 * (i % 5) + 40)], 10) for i in range(MAX_PANELS + 6)}
    build_archive(tmp_path, sensors=sensors)
    result = write_report(tmp_path)
    assert len(result.sensors) == MAX_PANELS + 6 and len(result.rows) == MAX_PANELS + 6
    assert result.plotted == result.sensors[:MAX_PANELS]
    assert result.sensors[:3] == ("s-0", "s-1", "s-2")
    assert all(row["collapses"] == 1 and row["dissipations"] == 1 for row in result.rows)
    height, width, _ = _rgb(result.path).shape
    assert width > 600 and height > 600


def test_a_mesh_archive_gets_a_panel_of_r_per_cell(tmp_path) -> None:
    root = tmp_path / "meshed"
    build_archive(root)
    grid = T0 + SECOND * np.arange(N, dtype=np.int64)
    rows: dict[str, list] = {k: [] for k in DATASETS["mesh_sync"].names}
    for scope, cell, r in (("cell", "north", 0.98), ("cell", "south", 0.2), ("global", "*", 0.6)):
        state = np.where(np.arange(N) >= 100, "collapsed", "dissipated") if cell == "north" else ["dissipated"] * N
        rows["scope"] += [scope] * N
        rows["cell"] += [cell] * N
        rows["t"] += grid.tolist()
        rows["n_sensors"] += [10] * N
        rows["weight"] += [10.0] * N
        rows["z_re"] += [r] * N
        rows["z_im"] += [0.0] * N
        rows["r"] += [r] * N
        rows["psi"] += [0.0] * N
        rows["r2_window"] += [r * r] * N
        rows["locked_fraction"] += [None if scope == "global" else 0.5] * N
        rows["state"] += list(state)
    _write(root, "mesh_sync", _table("mesh_sync", rows))
    with_mesh = write_report(root, root / "with.png")
    without = write_report(tmp_path / "meshed", root / "without.png", start_us=T0, end_us=T0 + 10 * SECOND)
    assert with_mesh.cells == ("north", "south", "*")            # cells by name, then the global mesh
    assert without.cells == ("north", "south", "*")
    build_archive(tmp_path / "plain")
    plain = write_report(tmp_path / "plain")
    assert plain.cells == ()
    taller = _rgb(with_mesh.path).shape[0] - _rgb(plain.path).shape[0]
    assert taller > 200                                          # the mesh panel's height
    # north's collapsed stretch is shaded in its colour (#1f77b4 at alpha 0.12 over white).
    shade = 0.88 + 0.12 * np.array([0x1F, 0x77, 0xB4]) / 255
    assert _pixels_near(_rgb(with_mesh.path), tuple(shade), tol=0.015) > 2_000
