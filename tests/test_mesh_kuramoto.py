"""The flow's mesh on simulated Kuramoto cells: its archived rows are the simulation's own order parameters.

A phase file of three Kuramoto cells (bench.kuramoto) goes through ``becomingone run``'s flow with the
mesh on.  The samples sit on the mesh grid, so every value the mesh archives — Z, r, R2, the locked
fraction, each sensor's lock and relative phase, T_global — must equal what the simulator computes
from its own phases, and the cells must show the coupling they were simulated with.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest

from bench.kuramoto import CellSpec, KuramotoRun, critical_coupling, incoherent_r_mean, r_theory, simulate

GAMMA = 0.5
RATIOS = (0.5, 2.0, 4.0)
WINDOW_S = 10.0        # sync.mesh.window default
GRID_S = 0.1           # sync.mesh.interval default


@pytest.fixture(scope="module")
def mesh_run(tmp_path_factory):
    from connectors.archive import open_dataset
    from flows.run import run_flow
    from schemas.config import parse_config

    tmp = tmp_path_factory.mktemp("kuramoto_mesh")
    cells = tuple(CellSpec(f"c{i}", 20, x * critical_coupling(GAMMA), GAMMA) for i, x in enumerate(RATIOS))
    ens = simulate(KuramotoRun(cells, 30.0, 0.05, transient_s=60.0, seed=1))   # 20 Hz, 36,000 rows
    ens.write(tmp / "cells.parquet")
    config = parse_config({"source": {"kind": "file", "path": str(tmp / "cells.parquet")},
                           "sync": {"mesh_enabled": True}, "metrics": {"enabled": False},
                           "memory": {"storage": {"path": str(tmp / "archive")}}})
    out = io.StringIO()
    run_flow(config, out=out, progress=io.StringIO())
    rows = open_dataset(tmp / "archive" / "mesh_sync").to_table()
    members = open_dataset(tmp / "archive" / "mesh_members").to_table()
    return ens, rows, members, out.getvalue()


def _columns(table: pa.Table, **where: str) -> dict[str, np.ndarray]:
    """The rows matching ``where``, in time order, t as int64 microseconds."""
    keep = np.ones(table.num_rows, bool)
    for name, value in where.items():
        keep &= np.asarray(table[name].to_pylist()) == value
    part = table.filter(pa.array(keep))
    order = np.argsort(part["t"].cast(pa.int64()).to_numpy())
    return {name: (part[name].cast(pa.int64()) if name == "t" else part[name]).to_numpy(zero_copy_only=False)[order]
            for name in part.column_names}


def test_every_sample_is_accepted_and_every_publish_point_has_its_rows(mesh_run):
    ens, rows, members, text = mesh_run
    assert "36,000 samples accepted, 0 rejected" in text
    assert rows.num_rows == 4 * 30 and members.num_rows == 60 * 30    # 3 cells and the global mesh, 1 s apart


def test_the_cells_rows_are_the_simulations_order_parameter_r2_and_locked_fraction(mesh_run):
    ens, rows, _, _ = mesh_run
    sample_us = ens.run.sample_us
    r2_t, r2 = ens.r2_window(WINDOW_S, GRID_S)
    for c, cell in enumerate(ens.run.cells):
        got = _columns(rows, scope="cell", cell=cell.name)
        k = (got["t"] - ens.t_us[0]) // sample_us
        assert (got["n_sensors"] == 20).all()
        np.testing.assert_allclose(got["z_re"] + 1j * got["z_im"], ens.order()[k, c], atol=1e-7)
        np.testing.assert_allclose(got["r"], ens.r()[k, c], atol=1e-7)
        full = got["t"] >= ens.t_us[0] + int(WINDOW_S * 1e6)         # windows inside the record
        np.testing.assert_allclose(got["r2_window"][full], r2[np.searchsorted(r2_t, got["t"][full]), c], atol=1e-7)
        expected = [ens.locked_fraction(WINDOW_S, 0.9, end_us=int(t), grid_s=GRID_S)[c] for t in got["t"][full]]
        np.testing.assert_allclose(got["locked_fraction"][full], expected, atol=1e-9)


def test_the_global_rows_combine_the_cells(mesh_run):
    ens, rows, _, _ = mesh_run
    got = _columns(rows, scope="global")
    k = (got["t"] - ens.t_us[0]) // ens.run.sample_us
    assert (got["n_sensors"] == 60).all()
    np.testing.assert_allclose(got["z_re"] + 1j * got["z_im"], ens.global_order()[k], atol=1e-7)


def test_each_members_lock_and_relative_phase_are_the_simulations(mesh_run):
    ens, _, members, _ = mesh_run
    for i in (0, 13, 27, 59):      # sensors of every cell
        got = _columns(members, sensor=ens.sensors[i])
        full = got["t"] >= ens.t_us[0] + int(WINDOW_S * 1e6)
        expected = [ens.lock(WINDOW_S, end_us=int(t), grid_s=GRID_S)[i] for t in got["t"][full]]
        np.testing.assert_allclose(got["lock"][full], expected, atol=1e-7)
        k = (got["t"] - ens.t_us[0]) // ens.run.sample_us
        z = ens.order()[k, ens.cell_of[i]]
        rel = np.angle(np.exp(1j * ens.phases()[k, i]) * np.conj(z))
        np.testing.assert_allclose(np.exp(1j * got["rel_phase"]), np.exp(1j * rel), atol=1e-7)


def test_the_mesh_sees_the_coupling_the_cells_were_simulated_with(mesh_run):
    ens, rows, _, _ = mesh_run
    mean_r = {cell.name: _columns(rows, scope="cell", cell=cell.name)["r"].mean() for cell in ens.run.cells}
    assert mean_r["c0"] < 3 * incoherent_r_mean(20)                  # K_c / 2: at the floor of 20 phases (0.2)
    for name, ratio in (("c1", 2.0), ("c2", 4.0)):                    # above K_c: sqrt(1 - K_c/K), give or take N = 20
        assert mean_r[name] == pytest.approx(r_theory(ratio * critical_coupling(GAMMA), GAMMA), abs=0.1)
