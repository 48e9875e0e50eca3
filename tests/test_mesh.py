"""The mesh (SPEC section 7): kernels against their references, the order parameter's properties,
finality, and independence of how the input is split."""

from __future__ import annotations

import numpy as np
import pytest

from operators.mesh_cells import END_OF_INPUT, MeshCells, MeshSettings, combine_sums
from operators.mesh_phasor import MeshTrack, mesh_phasors, mesh_phasors_reference
from operators.mesh_scan import scan_cells, scan_cells_reference, scan_locks, scan_locks_reference
from schemas.mesh import MeshPhasors, MeshProgress
from schemas.messages.mesh_records import GLOBAL_CELL, MESH_FIXED_POINT

INTERVAL = 100_000          # 0.1 s
T0 = 1_735_689_600_000_000  # 2025-01-01, us


def settings(**kw) -> MeshSettings:
    base = dict(interval_us=INTERVAL, window_us=2_000_000, publish_us=1_000_000, lateness_us=0, threshold=0.9,
                hysteresis=0.05, lock_threshold=0.9, groups=1)
    return MeshSettings(**{**base, **kw})


# --- the phasor kernel -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_phasors_equal_the_reference_for_irregular_sampling_gaps_and_any_split(seed):
    rng = np.random.default_rng(seed)
    sensors, records = 5, []
    for s in range(sensors):
        n = 400
        t = T0 + np.cumsum(rng.integers(5_000, 150_000, n)).astype(np.int64)
        t[rng.integers(50, n - 50):] += 6_000_000                 # one gap longer than max_gap
        phase = np.cumsum(rng.normal(0.4, 0.8, (n, 2)), axis=0)
        phase = (phase + np.pi) % (2 * np.pi) - np.pi             # wrapped, as sensors send them
        records.append((t, phase))
    weights = (0.25, 0.75)
    expected = {s: mesh_phasors_reference(t, p, weights, 5_000_000, INTERVAL) for s, (t, p) in enumerate(records)}
    # Every sensor's samples in time order, sensors interleaved, cut into calls of random sizes.
    rows = sorted((int(t[k]), s, k) for s, (t, _) in enumerate(records) for k in range(len(t)))
    track, got = MeshTrack.empty(), {s: ([], []) for s in range(sensors)}
    cuts = np.sort(rng.choice(len(rows), 30, replace=False))
    for part in np.split(np.arange(len(rows)), cuts):
        sid = np.array([rows[i][1] for i in part], np.int64)
        t = np.array([rows[i][0] for i in part], np.int64)
        ph = np.array([records[rows[i][1]][1][rows[i][2]] for i in part]).reshape(len(part), 2)
        s_out, g, u = mesh_phasors(track, sid, t, ph, weights, 5_000_000, INTERVAL)
        for s in range(sensors):
            got[s][0].append(g[s_out == s])
            got[s][1].append(u[s_out == s])
    for s in range(sensors):
        g, u = np.concatenate(got[s][0]), np.concatenate(got[s][1])
        np.testing.assert_array_equal(g, expected[s][0])
        np.testing.assert_allclose(u, expected[s][1], rtol=0, atol=1e-12)
        assert (g % INTERVAL == 0).all() and len(np.unique(g)) == len(g)


def test_a_sample_on_a_grid_point_counts_once_and_a_gap_brackets_nothing():
    track = MeshTrack.empty()
    t = np.array([0, 100_000, 200_000, 9_000_000, 9_100_000], np.int64) + T0
    _, g, u = mesh_phasors(track, np.zeros(5, np.int64), t, np.zeros((5, 1)), None, 5_000_000, INTERVAL)
    assert (g - T0).tolist() == [0, 100_000, 200_000, 9_000_000, 9_100_000]
    np.testing.assert_allclose(u, 1.0)


# --- the sequential scans ----------------------------------------------------------------------------


def test_cell_scan_equals_the_reference_in_any_split():
    rng = np.random.default_rng(5)
    g = T0 + np.arange(600, dtype=np.int64) * INTERVAL
    g = g[rng.random(600) > 0.1]                      # some grid points without a row
    r2 = np.clip(np.cumsum(rng.normal(0, 0.08, len(g))) % 1.3, 0, 1)
    want = scan_cells_reference(g, r2, 2_000_000, INTERVAL, 0.9, 0.05)
    assert (want[1] == 1).sum() >= 2
    runs = []
    for cuts in ([], [1, 2, 300], list(range(10, len(g), 37))):
        ring_g = np.full((1, 20), np.iinfo(np.int64).min, np.int64)
        ring_v, first, on = np.zeros((1, 20)), np.full(1, np.iinfo(np.int64).min, np.int64), np.zeros(1, np.int8)
        parts = [scan_cells(np.zeros(len(p), np.int64), g[p], r2[p], ring_g, ring_v, first, on, 2_000_000,
                            INTERVAL, 0.9, 0.05) for p in np.split(np.arange(len(g)), cuts)]
        runs.append([np.concatenate([p[k] for p in parts]) for k in range(3)])
        np.testing.assert_allclose(runs[-1][0], want[0], rtol=1e-13)       # the window sums in another order
        np.testing.assert_array_equal(runs[-1][1], want[1])
        np.testing.assert_array_equal(runs[-1][2], want[2])
    for run in runs[1:]:                                                   # any split: the same bits
        for k in range(3):
            np.testing.assert_array_equal(run[k], runs[0][k])


def test_lock_scan_equals_the_reference():
    rng = np.random.default_rng(6)
    g = T0 + np.arange(300, dtype=np.int64) * INTERVAL
    rel = np.exp(1j * np.cumsum(rng.normal(0, 0.3, 300)))
    want = scan_locks_reference(g, rel, 2_000_000, 1_000_000)
    ids = np.full((1, 2), np.iinfo(np.int64).min, np.int64)
    got = scan_locks(np.zeros(300, np.int64), g, rel, ids, np.zeros((1, 2), np.complex128),
                     np.zeros((1, 2), np.int64), 1_000_000, True)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12, equal_nan=True)
    assert np.isfinite(got).sum() == 30


# --- the order parameter -----------------------------------------------------------------------------


def phasors(phases: np.ndarray, cells: list[str], start: int = 0, weights=None) -> MeshPhasors:
    """(grid points, sensors) phases -> one block of grid phasors."""
    n_g, n_s = phases.shape
    g = np.repeat(T0 + (start + np.arange(n_g, dtype=np.int64)) * INTERVAL, n_s)
    code = np.tile(np.arange(n_s, dtype=np.int64), n_g)
    w = np.ones(n_s) if weights is None else np.asarray(weights, np.float64)
    return MeshPhasors([f"s{k:03d}" for k in range(n_s)], cells, w, code, g, np.exp(1j * phases.reshape(-1)))


def decided(cells: MeshCells, *blocks: MeshPhasors):
    for b in blocks:
        assert cells.add(b) == 0
    return cells.decide(END_OF_INPUT)


def test_independent_uniform_phases_give_mean_r2_of_one_over_n():
    rng = np.random.default_rng(7)
    n = 40
    final = decided(MeshCells(settings()), phasors(rng.uniform(-np.pi, np.pi, (3000, n)), ["a"] * n))
    r = np.abs((final.sums.z_re + 1j * final.sums.z_im) / final.sums.weight)
    assert abs(np.mean(r ** 2) * n - 1.0) < 0.1          # E[r^2] = 1/N; 3,000 grid points: ~3% noise
    assert not final.events


def test_identical_phases_give_r_one_and_a_collapse_once_the_window_is_spanned():
    phase = np.repeat(np.linspace(0, 40, 100)[:, None], 10, axis=1)
    final = decided(MeshCells(settings()), phasors(phase, ["a"] * 10))
    rows = final.rows
    cell = np.array(rows["scope"]) == "cell"
    np.testing.assert_allclose(np.asarray(rows["r"])[cell], 1.0, atol=1e-9)
    np.testing.assert_allclose(np.asarray(rows["locked_fraction"])[cell], 1.0)
    events = [(e[0], e[1], e[3] - T0) for e in final.events]
    assert events == [("mesh_collapse", "cell", 1_900_000), ("mesh_collapse", "global", 1_900_000)]


def test_a_common_offset_or_a_common_frequency_changes_nothing():
    rng = np.random.default_rng(8)
    base = rng.normal(0, 0.3, (200, 12)) + rng.uniform(-np.pi, np.pi, 12)
    ref = decided(MeshCells(settings()), phasors(base, ["a"] * 12))
    ramp = (2 * np.pi * 0.7 * np.arange(200) * INTERVAL * 1e-6)[:, None]
    for shifted in (base + 1.234, base + ramp):
        got = decided(MeshCells(settings()), phasors(shifted, ["a"] * 12))
        for k in ("r", "r2_window", "locked_fraction", "n_sensors"):
            np.testing.assert_allclose(got.rows[k], ref.rows[k], rtol=0, atol=1e-9)
        assert [e[:4] for e in got.events] == [e[:4] for e in ref.events]
        np.testing.assert_allclose(got.members["lock"], ref.members["lock"], atol=1e-9)


def test_global_rows_are_the_exact_combination_of_the_cells():
    rng = np.random.default_rng(9)
    a = decided(MeshCells(settings()), phasors(rng.normal(0, 0.2, (50, 7)), ["a"] * 7, weights=np.arange(1, 8) / 3))
    both = MeshCells(settings())
    phases = np.concatenate([rng.normal(0, 0.2, (50, 7)), rng.uniform(-3, 3, (50, 5))], axis=1)
    final = decided(both, phasors(phases, ["a"] * 7 + ["b"] * 5))
    cells = final.sums
    glob = combine_sums(cells)
    assert set(cells.cell) == {"a", "b"} and (glob.n == 12).all()
    rows = final.rows
    g_rows = [k for k, s in enumerate(rows["scope"]) if s == "global"]
    at = {int(t): k for k, t in enumerate(glob.t)}
    for k in g_rows:
        j = at[int(rows["t"][k])]
        z = (glob.z_re[j] + 1j * glob.z_im[j]) / glob.weight[j]
        assert rows["z_re"][k] == z.real and rows["z_im"][k] == z.imag      # exact, not close
        assert rows["cell"][k] == GLOBAL_CELL
    assert a.sums.weight[0] == sum(round(w * MESH_FIXED_POINT) for w in np.arange(1, 8) / 3)


def test_the_result_does_not_depend_on_how_phasors_and_progress_are_split():
    rng = np.random.default_rng(10)
    phases = rng.normal(0, 0.5, (120, 9)).cumsum(axis=0) * 0.1
    block = phasors(phases, ["a"] * 4 + ["b"] * 5)
    whole = decided(MeshCells(settings()), block)
    # The same phasors in pieces of any sensors and grid points, decided by progress reports between them.
    cells = MeshCells(settings(groups=2))
    order = rng.permutation(len(block))
    order = order[np.argsort(block.g[order], kind="stable")]      # each sensor's phasors in grid order
    parts, finals = np.array_split(order, 7), []
    for k, part in enumerate(parts):
        assert cells.add(MeshPhasors(block.sensors, block.cells, block.weights, block.code[part], block.g[part],
                                     block.u[part])) == 0
        newest = int(block.g[part].max()) - INTERVAL        # the part's last grid point may miss sensors
        for group in ("group-0", "group-1"):
            cells.progress(MeshProgress(group, "p0", newest - (3 * INTERVAL if k % 2 else 0)))
        finals.append(cells.decide())
    finals.append(cells.decide(END_OF_INPUT))
    finals = [f for f in finals if f is not None]
    assert len(finals) > 2
    for key in ("t", "r", "r2_window", "z_re", "locked_fraction"):
        np.testing.assert_array_equal(np.concatenate([np.asarray(f.rows[key]) for f in finals]),
                                      np.asarray(whole.rows[key]), err_msg=key)
    np.testing.assert_array_equal(np.concatenate([f.members["lock"] for f in finals]), whole.members["lock"])


def test_phasors_for_a_decided_grid_point_are_mesh_late_and_left_out():
    cells = MeshCells(settings())
    first = phasors(np.zeros((10, 3)), ["a"] * 3)
    cells.add(first)
    cells.progress(MeshProgress("group-0", "p0", T0 + 5 * INTERVAL))
    final = cells.decide()
    assert final.sums.t.max() == T0 + 5 * INTERVAL
    late = phasors(np.zeros((3, 1)), ["a"], start=3)               # grid points 3, 4, 5: decided
    late.sensors[0] = "late-one"
    assert cells.add(late) == 3


def test_the_watermark_waits_for_every_key_group_and_the_slowest_partition():
    cells = MeshCells(settings(groups=2, lateness_us=200_000))
    cells.progress(MeshProgress("group-0", "p0", T0 + 1_000_000))
    assert cells.watermark() == np.iinfo(np.int64).min            # group-1 has not reported p0
    cells.progress(MeshProgress("group-1", "p0", T0 + 900_000))
    cells.progress(MeshProgress("group-0", "p1", T0 + 5_000_000))
    cells.progress(MeshProgress("group-1", "p1", T0 + 5_000_000))
    assert cells.watermark() == T0 + 700_000                      # min over partitions, less the lateness


# --- an archive of the version before the mesh --------------------------------------------------------


def test_an_old_per_sensor_mesh_sync_is_moved_aside_unchanged_and_still_verifies(tmp_path):
    import hashlib
    import io
    import subprocess

    import pyarrow as pa

    from connectors.archive import open_dataset
    from connectors.archive.manifest_lines import GENESIS, manifest_line
    from flows.run import run_flow
    from schemas.config import parse_config
    from tests.conftest import BIN, clean_env

    root = tmp_path / "archive"
    # The old mesh_sync/: the sync feed per sensor, as the version before the mesh wrote it.
    old = pa.table({"node": ["n"], "sensor": ["s"], "cell": [None], "t": pa.array([T0], pa.timestamp("us", "UTC")),
                    "t_sync_re": [1.0], "t_sync_im": [0.0], "coherence_sync": [1.0], "t_master_re": [1.0],
                    "t_master_im": [0.0], "t_emissary_re": [1.0], "t_emissary_im": [0.0], "delta_phase": [0.0],
                    "state": ["collapsed"], "mature": [True]})
    rel = "date=2025-01-01/hour=00/part-00000000.arrow"
    (root / "mesh_sync" / rel).parent.mkdir(parents=True)
    with pa.ipc.new_file(str(root / "mesh_sync" / rel), old.schema) as writer:
        writer.write_table(old)
    digest = hashlib.sha256((root / "mesh_sync" / rel).read_bytes()).hexdigest()
    (root / "_meta" / "mesh_sync").mkdir(parents=True)
    (root / "_meta" / "mesh_sync" / "MANIFEST.jsonl").write_text(manifest_line(rel, 1, digest, GENESIS) + "\n")

    config = parse_config({"source": {"kind": "synthetic", "duration": 5.0}, "metrics": {"enabled": False},
                           "sync": {"mesh_enabled": True}, "memory": {"storage": {"path": str(root)}}})
    run_flow(config, out=io.StringIO(), progress=io.StringIO())
    retired = root / "_retired" / "mesh_sync-tsync-feed"
    assert open_dataset(retired / "mesh_sync").to_table().drop_columns(["date", "hour"]).equals(old)
    assert open_dataset(root / "mesh_sync").to_table().column_names[:3] == ["scope", "cell", "t"]
    for archive in (root, retired):
        proc = subprocess.run([str(BIN), "memory", "verify", "--archive", str(archive)], capture_output=True,
                              text=True, env=clean_env(), timeout=120)
        assert proc.returncode == 0 and "mesh_sync: ok" in proc.stdout, proc.stdout + proc.stderr


def test_a_run_with_the_mesh_prints_its_cells_and_counts_its_rows(tmp_path):
    import io

    from connectors.archive import open_dataset
    from connectors.metrics import metrics
    from flows.run import run_flow
    from schemas.config import parse_config

    config = parse_config({"source": {"kind": "synthetic", "duration": 20.0, "sensors": [
        {"name": "a-1", "kind": "steady", "cell": "north"}, {"name": "a-2", "kind": "steady", "cell": "north"},
        {"name": "b-1", "kind": "noise", "cell": "south"}]},
        "sync": {"mesh_enabled": True}, "metrics": {"enabled": False},
        "memory": {"storage": {"path": str(tmp_path / "archive")}}})
    m = metrics()
    rows_before = {s: m.mesh_grid_points.labels(s)._value.get() for s in ("cell", "global")}
    late_before = m.mesh_late._value.get()
    out = io.StringIO()
    run_flow(config, out=out, progress=io.StringIO())
    text = out.getvalue()
    table = open_dataset(tmp_path / "archive" / "mesh_sync").to_table()
    assert sorted(set(table["cell"].to_pylist())) == ["*", "north", "south"]
    assert "mesh cell" in text and "* (global)" in text
    for line in text.splitlines():
        if line.startswith(("north ", "south ")):
            assert line.split()[1] == ("2" if line.startswith("north") else "1")    # sensors in the cell
    assert m.mesh_grid_points.labels("cell")._value.get() - rows_before["cell"] == 2 * 20
    assert m.mesh_grid_points.labels("global")._value.get() - rows_before["global"] == 20
    assert m.mesh_late._value.get() == late_before


def test_a_partition_that_stood_still_past_the_idle_timeout_is_no_longer_waited_for():
    cells = MeshCells(settings(idle_s=60.0))
    cells.progress(MeshProgress("group-0", "p0", T0 + 1_000_000), now=100.0)
    cells.progress(MeshProgress("group-0", "p1", T0 + 2_000_000), now=100.0)
    cells.progress(MeshProgress("group-0", "p1", T0 + 9_000_000), now=150.0)
    assert cells.watermark(now=150.0) == T0 + 1_000_000          # p0 stood still 50 s: still waited for
    assert cells.watermark(now=170.0) == T0 + 9_000_000          # 70 s: p1 alone decides
    assert cells.watermark() == T0 + 1_000_000                   # without a clock nothing is idle
    cells.progress(MeshProgress("group-0", "p0", T0 + 3_000_000), now=171.0)
    assert cells.watermark(now=171.0) == T0 + 3_000_000          # p0 moves again: waited for again


def test_a_restart_later_than_the_idle_timeout_still_waits_for_every_partition():
    """The wall-clock times of another process mean nothing after a restart: a resumed mesh waits for a
    partition until it has stood still for the idle timeout in this process.  (A kill -9 loop whose
    restarts took over 60 s decided grid points without half the sensors.)"""
    import pickle

    cells = MeshCells(settings(idle_s=60.0))
    cells.progress(MeshProgress("group-0", "p0", T0 + 1_000_000), now=100.0)
    cells.progress(MeshProgress("group-0", "p1", T0 + 2_000_000), now=100.0)
    resumed = MeshCells(settings(idle_s=60.0), pickle.loads(pickle.dumps(cells.t)))
    resumed.progress(MeshProgress("group-0", "p1", T0 + 9_000_000), now=500.0)    # restarted 400 s later
    assert resumed.watermark(now=500.0) == T0 + 1_000_000                       # p0 is waited for
    resumed.progress(MeshProgress("group-0", "p1", T0 + 12_000_000), now=560.0)
    assert resumed.watermark(now=561.0) == T0 + 12_000_000                      # 61 s still here: not


def test_a_partition_that_has_not_reported_yet_is_waited_for_until_the_idle_timeout():
    """At start one partition's samples may reach the mesh before another partition has said anything:
    the grid points must wait for it (a fresh clone's uninterrupted run decided its first point with 2
    of 4 sensors), unless it stays silent for the idle timeout (an empty partition)."""
    cells = MeshCells(settings(idle_s=60.0, partitions=2))
    cells.progress(MeshProgress("group-0", "p0", T0 + 5_000_000), now=100.0)
    assert cells.watermark(now=100.0) == cells.watermark() == np.iinfo(np.int64).min    # p1 not heard yet
    assert cells.watermark(now=150.0) == np.iinfo(np.int64).min
    cells.progress(MeshProgress("group-0", "p1", T0 + 2_000_000), now=151.0)
    assert cells.watermark(now=151.0) == T0 + 2_000_000
    silent = MeshCells(settings(idle_s=60.0, partitions=2))
    silent.progress(MeshProgress("group-0", "p0", T0 + 5_000_000), now=100.0)
    silent.watermark(now=100.0)
    assert silent.watermark(now=161.0) == T0 + 5_000_000       # p1 silent 61 s since the first look


def test_a_sensor_that_moves_to_another_cell_counts_there_from_then_on():
    cells = MeshCells(settings())
    first = phasors(np.zeros((3, 2)), ["x", "x"])
    cells.add(first)
    cells.add(phasors(np.zeros((3, 2)), ["x", "y"], start=3))       # s001 now names cell y
    final = cells.decide(END_OF_INPUT)
    counts = {(c, int(t - T0) // INTERVAL): int(n) for c, t, n in zip(final.sums.cell, final.sums.t, final.sums.n)}
    assert counts[("x", 2)] == 2 and counts[("x", 3)] == 1 and counts[("y", 3)] == 1
