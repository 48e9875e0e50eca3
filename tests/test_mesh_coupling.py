"""The mesh against physics at scale (SPEC section 7): five Kuramoto cells of 200 oscillators, from
half the critical coupling to a strongly coupled cell, through ``becomingone run``.

Per cell: the flow's time-mean r equals the simulation's own and the theory's sqrt(1 - K_c/K) within
0.05 (below K_c: under the finite-N bound); its locked fraction is (2/pi) atan(K r / gamma) within 0.15;
only the strongly coupled cell collapses; the global rows are the cells' sums combined.
"""

from __future__ import annotations

import subprocess

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml

from bench.kuramoto import (CellSpec, KuramotoRun, critical_coupling, incoherent_r_bound, locked_fraction_theory,
                            r_theory, simulate)
from tests.conftest import BIN, clean_env

pytestmark = pytest.mark.slow  # a 200 s simulation of 1,000 oscillators and 4 M samples through the flow

GAMMA = 0.5
N = 200
RATIOS = {"c0": 0.5, "c1": 1.5, "c2": 2.0, "c3": 4.0, "strong": 20.0}   # K / K_c
WINDOW_S = 10.0
THRESHOLD = 0.9        # sync.mesh.threshold: r^2 of the strong cell ~0.95, of K = 4 K_c ~0.75


@pytest.fixture(scope="module")
def coupled(tmp_path_factory):
    from connectors.archive import open_dataset

    tmp = tmp_path_factory.mktemp("coupling")
    kc = critical_coupling(GAMMA)
    cells = tuple(CellSpec(name, N, ratio * kc, GAMMA) for name, ratio in RATIOS.items())
    ens = simulate(KuramotoRun(cells, 40.0, 0.01, transient_s=60.0, seed=3))    # 100 Hz: 4,000,000 samples
    ens.write(tmp / "cells.parquet")
    config = {"source": {"kind": "file", "path": str(tmp / "cells.parquet")}, "metrics": {"enabled": False},
              "sync": {"mesh_enabled": True, "mesh": {"threshold": THRESHOLD, "window": WINDOW_S}},
              "memory": {"storage": {"path": str(tmp / "archive")}, "archive_input": False,
                         "temporal_signatures": False, "coherence_history": False, "witness_logs": False}}
    (tmp / "c.yaml").write_text(yaml.safe_dump(config))
    proc = subprocess.run([str(BIN), "run", "--config", str(tmp / "c.yaml"), "--no-recovery"], capture_output=True,
                          text=True, env=clean_env(), timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert "4,000,000 samples accepted, 0 rejected" in proc.stdout
    rows = open_dataset(tmp / "archive" / "mesh_sync").to_table()
    events = open_dataset(tmp / "archive" / "events").to_table()
    return ens, rows, events


def cell_rows(rows: pa.Table, cell: str) -> dict[str, np.ndarray]:
    part = rows.filter(pc.equal(rows["cell"], cell)).sort_by("t")
    return {name: (part[name].cast(pa.int64()) if name == "t" else part[name]).to_numpy(zero_copy_only=False)
            for name in ("t", "r", "r2_window", "locked_fraction", "n_sensors", "z_re", "z_im", "weight")}


@pytest.mark.parametrize("cell", list(RATIOS))
def test_each_cells_r_is_the_simulations_and_the_theorys(coupled, cell):
    ens, rows, _ = coupled
    got = cell_rows(rows, cell)
    c = [spec.name for spec in ens.run.cells].index(cell)
    k = (got["t"] - ens.t_us[0]) // ens.run.sample_us
    assert len(got["t"]) == 40 and (got["n_sensors"] == N).all()
    own = float(ens.r()[k, c].mean())
    flow = float(got["r"].mean())
    assert abs(flow - own) < 0.05, (flow, own)
    K = RATIOS[cell] * critical_coupling(GAMMA)
    if RATIOS[cell] < 1:
        assert flow < incoherent_r_bound(N, K, GAMMA), flow                  # the finite-N floor
    else:
        assert abs(flow - r_theory(K, GAMMA)) < 0.05, (flow, r_theory(K, GAMMA))


@pytest.mark.parametrize("cell", [c for c, x in RATIOS.items() if x > 1])
def test_each_cells_locked_fraction_is_the_theorys(coupled, cell):
    _, rows, _ = coupled
    got = cell_rows(rows, cell)
    full = got["t"] >= got["t"][0] + int(WINDOW_S * 1e6)                     # locks over a whole window
    K = RATIOS[cell] * critical_coupling(GAMMA)
    theory = locked_fraction_theory(K, r_theory(K, GAMMA), GAMMA)
    assert abs(float(got["locked_fraction"][full].mean()) - theory) < 0.15, (got["locked_fraction"][full], theory)


def test_only_the_strongly_coupled_cell_collapses(coupled):
    _, rows, events = coupled
    mesh = events.filter(pc.equal(events["event"], "mesh_collapse"))
    assert mesh["sensor"].to_pylist() == ["strong"]
    assert not events.filter(pc.equal(events["event"], "mesh_dissipate")).num_rows
    assert set(cell_rows(rows, "c3")["r2_window"]) and max(cell_rows(rows, "c3")["r2_window"]) < THRESHOLD


def test_the_global_rows_are_the_combination_of_the_cells(coupled):
    _, rows, _ = coupled
    glob = cell_rows(rows, "*")
    cells = [cell_rows(rows, c) for c in RATIOS]
    for cell in cells:
        np.testing.assert_array_equal(cell["t"], glob["t"])
    z = sum((c["z_re"] + 1j * c["z_im"]) * c["weight"] for c in cells) / sum(c["weight"] for c in cells)
    np.testing.assert_allclose(glob["z_re"] + 1j * glob["z_im"], z, rtol=0, atol=1e-12)
    assert (glob["n_sensors"] == N * len(RATIOS)).all()
    assert (glob["weight"] == N * len(RATIOS)).all()
