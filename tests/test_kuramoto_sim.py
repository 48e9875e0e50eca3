"""bench.kuramoto: the simulated cells reproduce Kuramoto theory, and their phase files read back as written."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

import bench.kuramoto as kuramoto
import bench.kuramoto_theory as kuramoto_theory
from bench.kuramoto import (
    CellSpec, KuramotoRun, critical_coupling, incoherent_r_bound, incoherent_r_mean, locked_fraction_theory,
    r_theory, simulate,
)
from connectors.phase_files import read_phase_file
from operators.resonance import resonance

GAMMA = 0.5
RATIOS = (1.5, 2.0, 4.0)


@pytest.fixture(scope="module")
def large_cells():
    """Three cells of 2,000 oscillators at K / K_c = 1.5, 2, 4: 60 s transient, 40 s sampled at 50 Hz.

    No file is written from them, so the sampling rule is off (the coupling, not the outermost
    quantiles, sets the accuracy of r)."""
    cells = tuple(CellSpec(f"k{x:g}", 2000, x * critical_coupling(GAMMA), GAMMA) for x in RATIOS)
    return simulate(KuramotoRun(cells, 40.0, 0.02, transient_s=60.0, max_step_rad=None, seed=3))


def test_the_order_parameter_above_k_c_is_sqrt_of_1_minus_k_c_over_k(large_cells):
    mean_r = large_cells.r().mean(axis=0)
    for cell, r in zip(large_cells.run.cells, mean_r):
        assert r == pytest.approx(r_theory(cell.coupling, GAMMA), abs=0.05), cell.name


def test_the_locked_fraction_is_the_share_of_frequencies_within_k_r(large_cells):
    # Lock over 20 s, the SPEC's way, threshold 0.9 (the default sync.mesh.lock_threshold).
    observed = large_cells.locked_fraction(20.0, threshold=0.9)
    for cell, fraction in zip(large_cells.run.cells, observed):
        theory = locked_fraction_theory(cell.coupling, r_theory(cell.coupling, GAMMA), GAMMA)
        assert fraction == pytest.approx(theory, abs=0.02), cell.name
    # The oscillators counted as locked are the ones whose natural frequency is inside K r.
    lock = large_cells.lock(20.0)
    cell = 1
    members = large_cells.cell_of == cell
    k_r = large_cells.run.cells[cell].coupling * r_theory(large_cells.run.cells[cell].coupling, GAMMA)
    inside = np.abs(large_cells.omega[members]) < 0.95 * k_r
    outside = np.abs(large_cells.omega[members]) > 1.2 * k_r
    assert (lock[members][inside] >= 0.9).all()
    assert (lock[members][outside] < 0.9).all()


@pytest.fixture(scope="module")
def incoherent_cells():
    """Ten cells of 200 at K = K_c / 2 with quantile frequencies, ten with random ones; 200 s."""
    k = 0.5 * critical_coupling(GAMMA)
    cells = tuple(CellSpec(f"q{i}", 200, k, GAMMA) for i in range(10)) + tuple(
        CellSpec(f"x{i}", 200, k, GAMMA, random_frequencies=True) for i in range(10))
    return simulate(KuramotoRun(cells, 200.0, 0.02, transient_s=20.0, max_step_rad=None, seed=1))


def test_an_incoherent_cell_stays_at_the_finite_n_floor(incoherent_cells):
    r = incoherent_cells.r()[:, :10]
    mean_r = r.mean(axis=0)
    # Above the Rayleigh mean of 200 independent phases, sqrt(pi / 800) = 0.063, and below the rms of
    # the linear theory, sqrt(2 / 200) = 0.1.  Measured with seeds 0 to 3: 0.071 to 0.072 over the
    # cells, the largest cell 0.073 to 0.076; 200 <r^2> 1.27 to 1.34 (the first 200 s, see the module).
    assert (mean_r > 0.9 * incoherent_r_mean(200)).all()
    assert (mean_r < incoherent_r_bound(200, 0.5 * critical_coupling(GAMMA), GAMMA)).all()
    assert 1.0 < 200 * (r ** 2).mean() < 2.0


def test_random_frequencies_raise_the_floor_by_the_susceptibility(incoherent_cells):
    r2 = incoherent_cells.r()[:, 10:] ** 2
    assert 200 * r2.mean() == pytest.approx(1.0 / (1.0 - 0.5), abs=0.5)   # measured 1.92 to 2.15


def test_per_sensor_resonance_cannot_see_the_phase_offsets_the_mesh_sees():
    # SPEC section 7: T is blind to constant phase offsets, so only the phases themselves tell an
    # in-phase cell from one whose sensors sit at scattered offsets.
    ens = simulate(KuramotoRun((CellSpec("c0", 30, 4 * critical_coupling(GAMMA), GAMMA),), 20.0,
                               transient_s=30.0, seed=2))
    t, phases = ens.t_us * 1e-6, ens.phases()
    offsets = np.random.default_rng(0).uniform(-np.pi, np.pi, 30)
    t_plain = [resonance(t, phases[:, i], tau=1.0, velocity_span=0.05) for i in range(30)]
    t_offset = [resonance(t, phases[:, i] + offsets[i], tau=1.0, velocity_span=0.05) for i in range(30)]
    np.testing.assert_allclose(t_offset, t_plain, atol=1e-12)
    r_offset = np.abs(np.exp(1j * (phases + offsets)).mean(axis=1))
    assert ens.r().min() > 0.7 and r_offset.mean() < 0.4    # measured 0.81 and 0.29


def test_two_cells_slipping_against_each_other_are_each_coherent_while_the_global_r_swings():
    # Two coherent groups whose centre frequencies differ by 0.1 Hz: Delta psi turns once every 10 s,
    # and with equal sizes r_global = r_cell |cos(Delta psi / 2)|.
    k = 4 * critical_coupling(GAMMA)
    cells = (CellSpec("west", 100, k, GAMMA, omega0=2 * np.pi * 1.0),
             CellSpec("east", 100, k, GAMMA, omega0=2 * np.pi * 1.1))
    ens = simulate(KuramotoRun(cells, 20.0, transient_s=30.0, seed=4))
    z, r_global = ens.order(), np.abs(ens.global_order())
    assert ens.r().min() > 0.75                     # r_theory 0.87, give or take the finite-n wobble
    assert r_global.min() < 0.1 and r_global.max() > 0.8
    expected = np.abs(z[:, 0] + z[:, 1]) / 2
    np.testing.assert_allclose(r_global, expected, atol=1e-12)


def test_a_seed_gives_the_same_samples_and_another_seed_others():
    run = KuramotoRun((CellSpec("a", 30, 2.0), CellSpec("b", 20, 0.3)), duration_s=2.0, transient_s=1.0, seed=11)
    first, again = simulate(run), simulate(run)
    assert first.table().equals(again.table())
    np.testing.assert_array_equal(first.r(), again.r())
    other = simulate(KuramotoRun(run.cells, 2.0, transient_s=1.0, seed=12))
    assert not np.array_equal(first.phases(), other.phases())


def test_given_initial_phases_are_used_and_checked():
    cells = (CellSpec("a", 40, 0.0, gamma=0.0),)
    ens = simulate(KuramotoRun(cells, 1.0, transient_s=0.0), initial_phases=np.zeros(40))
    # Identical oscillators started in phase stay in phase: r = 1 throughout.
    np.testing.assert_allclose(ens.r(), 1.0)
    with pytest.raises(ValueError, match="initial_phases"):
        simulate(KuramotoRun(cells, 1.0), initial_phases=np.zeros(3))


@pytest.mark.parametrize("suffix", [".parquet", ".arrow"])
def test_the_written_file_reads_back_as_the_samples_of_the_simulation(tmp_path, suffix):
    run = KuramotoRun((CellSpec("c0", 12, 2.0), CellSpec("c1", 8, 0.4)), duration_s=3.0, transient_s=5.0, seed=5)
    ens = simulate(run)
    path = tmp_path / f"cells{suffix}"
    assert ens.write(path) == 300 * 20
    chunks = list(read_phase_file(path))
    t_us = np.concatenate([c.t_us for c in chunks])
    sensor = sum((c.sensor.to_pylist() for c in chunks), [])
    cell = sum((c.cell.to_pylist() for c in chunks), [])
    phase = np.concatenate([c.phase.values.to_numpy() for c in chunks])
    # Time-major rows, exact microseconds on a 100 Hz grid from a whole second.
    assert t_us[0] == run.start_s * 1_000_000 and t_us[20] - t_us[0] == 10_000
    assert sensor[:3] == ["c0/s00", "c0/s01", "c0/s02"] and sensor[12] == "c1/s0" and cell[12] == "c1"
    assert ((phase >= -np.pi) & (phase < np.pi)).all()
    # Z computed from the file's phases, per cell and time, is the simulation's own Z.
    wrapped = phase.reshape(300, 20)
    z_file = np.stack([np.exp(1j * wrapped[:, :12]).mean(1), np.exp(1j * wrapped[:, 12:]).mean(1)], axis=1)
    np.testing.assert_allclose(z_file, ens.order(), atol=1e-9)
    # No sensor moves more than 1 rad between samples, so unwrapping recovers the motion.
    steps = np.abs(np.angle(np.exp(1j * np.diff(wrapped, axis=0))))
    assert steps.max() <= 1.0 and steps.max() == pytest.approx(ens.max_sample_step_rad, abs=1e-9)


def test_r2_is_the_windowed_mean_of_r_squared_on_the_mesh_grid():
    ens = simulate(KuramotoRun((CellSpec("c0", 20, 2.0),), duration_s=5.0, transient_s=2.0))
    t, r2 = ens.r2_window(1.0, grid_s=0.1)
    rows = ens.grid_rows(0.1)
    assert len(rows) == 50 and t[0] == ens.t_us[rows[9]]           # the first full window: 10 points
    np.testing.assert_allclose(r2[0, 0], (ens.r()[rows[:10], 0] ** 2).mean())
    np.testing.assert_allclose(r2[-1, 0], (ens.r()[rows[-10:], 0] ** 2).mean())
    with pytest.raises(ValueError, match="grid_s"):
        ens.grid_rows(0.015)


def test_sampling_that_cannot_be_unwrapped_is_refused():
    wide = (CellSpec("c0", 200, 1.0, gamma=3.0),)      # outermost quantile at 382 rad/s
    with pytest.raises(ValueError, match=r"sample_interval_s: 0.01 s .* more than max_step_rad = 1.0"):
        simulate(KuramotoRun(wide, 1.0))
    physics_only = simulate(KuramotoRun(wide, 1.0, transient_s=0.0, max_step_rad=None))
    with pytest.raises(ValueError, match="only steps below pi"):
        physics_only.table()


def test_bad_fields_are_named():
    with pytest.raises(ValueError) as err:
        simulate(KuramotoRun((CellSpec("a", 0, -1.0), CellSpec("a", 3, 1.0)), duration_s=0.0,
                             sample_interval_s=1e-7, start_s=1.5, substeps=0))
    for field in ("cells:", "cells[a]", "sample_interval_s", "duration_s", "start_s", "substeps"):
        assert field in str(err.value)


def test_the_module_examples_hold():
    assert doctest.testmod(kuramoto).failed == 0
    assert doctest.testmod(kuramoto_theory).failed == 0
