"""The columns of the fleet pass (:mod:`operators.columnar`): its result types and its input checks.

Rows of many sensors travel as columns, one row per sample or grid point,
each tagged with its sensor index; a sensor's rows are one contiguous run.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from operators.resonator import ResonatorSettings

__all__ = ["FleetProducts", "FleetResonance", "FleetSyncValues", "FleetWindowValues", "check_settings",
           "fleet_columns"]


class FleetProducts(NamedTuple):
    """Lag products of many sensors: sensor (int32), t (int64 us), p (complex128 rad^2/s^2), dt (float64 s)."""

    sensor: np.ndarray
    t: np.ndarray
    p: np.ndarray
    dt: np.ndarray


class FleetWindowValues(NamedTuple):
    """A transducer's values at the grid points of many sensors (rows grouped as the input's sensors).

    Attributes:
        sensor: int32 sensor index; t: int64 grid point g (us); T: complex128 T over (g - W, g];
        n_products: int64 products in the window; span_us: int64 newest minus oldest product time.
    """

    sensor: np.ndarray
    t: np.ndarray
    T: np.ndarray
    n_products: np.ndarray
    span_us: np.ndarray


class FleetSyncValues(NamedTuple):
    """The sync at every Emissary grid point: row k decides Emissary row k (``sensor``, ``t`` and
    ``T_emissary`` are the Emissary's own arrays).  The other fields are those of
    :class:`operators.sync.SyncValues`; ``event`` is 0, COLLAPSE (1), DISSIPATE_COHERENCE (2)
    or DISSIPATE_PHASE (3)."""

    sensor: np.ndarray
    t: np.ndarray
    T_master: np.ndarray
    T_emissary: np.ndarray
    T_sync: np.ndarray
    coherence_sync: np.ndarray
    delta_phase: np.ndarray
    mature: np.ndarray
    collapsed: np.ndarray
    event: np.ndarray
    master_span_us: np.ndarray


class FleetResonance(NamedTuple):
    """What :func:`fleet_resonance` computes: Emissary, Master and sync rows of every sensor."""

    emissary: FleetWindowValues
    master: FleetWindowValues
    sync: FleetSyncValues


def fleet_columns(sensor_index, t_us, phase) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The input columns as contiguous int32 / int64 / (n, C) float64 arrays, or a ValueError
    naming the first row that breaks the layout.

    >>> fleet_columns([0, 0, 1], [5, 3, 1], [0.0, 0.1, 0.2])
    Traceback (most recent call last):
    ...
    ValueError: row 1: sensor 0 has t = 3 us after t = 5 us; event time must be strictly increasing within a sensor
    """
    sensor, t, ph = np.asarray(sensor_index), np.asarray(t_us), np.asarray(phase)
    if sensor.ndim != 1 or t.ndim != 1:
        raise ValueError(f"sensor_index and t_us must be 1-D, got shapes {sensor.shape} and {t.shape}")
    n = t.shape[0]
    if sensor.shape[0] != n:
        raise ValueError(f"sensor_index has {sensor.shape[0]} rows, t_us has {n}")
    if n and sensor.dtype.kind not in "iu":
        raise ValueError(f"sensor_index must be integers, got dtype {sensor.dtype}")
    if n and t.dtype.kind not in "iu":
        raise ValueError(f"t_us must be integer microseconds, got dtype {t.dtype} "
                         "(schemas.timebase.to_micros converts seconds exactly)")
    if n and (sensor.min() < 0 or sensor.max() > np.iinfo(np.int32).max):
        raise ValueError("sensor_index must be in [0, 2^31)")
    if ph.ndim == 1:
        ph = ph.reshape(-1, 1)
    if ph.ndim != 2 or ph.shape[0] != n or ph.shape[1] == 0:
        raise ValueError(f"phase must have shape (n,) or (n, C) with n = {n} and C >= 1, got {np.shape(phase)}")
    sensor = np.ascontiguousarray(sensor, np.int32)
    t = np.ascontiguousarray(t, np.int64)
    ph = np.ascontiguousarray(ph, np.float64)
    finite = np.isfinite(ph).all(axis=1)
    if not finite.all():
        bad = int(np.argmin(finite))
        raise ValueError(f"phase must be finite; row {bad} has {ph[bad].tolist()}")
    if n > 1:
        same = sensor[1:] == sensor[:-1]
        back = same & (t[1:] <= t[:-1])
        if back.any():
            i = int(np.argmax(back)) + 1
            raise ValueError(f"row {i}: sensor {sensor[i]} has t = {t[i]} us after t = {t[i - 1]} us; event "
                             "time must be strictly increasing within a sensor")
        starts = np.concatenate(([0], np.flatnonzero(~same) + 1))
        runs = sensor[starts]
        order = np.argsort(runs, kind="stable")
        again = runs[order[1:]] == runs[order[:-1]]
        if again.any():
            k = int(np.argmax(again))
            first, second = starts[order[k]], starts[order[k + 1]]
            raise ValueError(f"sensor {runs[order[k]]} has rows from row {first} and again from row {second}: "
                             "rows must be grouped by sensor (np.lexsort((t_us, sensor_index)) orders them)")
    return sensor, t, ph


def check_settings(s: ResonatorSettings) -> None:
    """Windows and intervals positive, min_span >= 0, thresholds finite (``settings.params`` checks itself)."""
    for name in ("emissary_window_us", "emissary_interval_us", "master_window_us", "master_interval_us"):
        if int(getattr(s, name)) <= 0:
            raise ValueError(f"{name} must be positive, got {getattr(s, name)}")
    if s.min_span_us < 0:
        raise ValueError(f"min_span_us must be >= 0, got {s.min_span_us}")
    for name in ("threshold", "hysteresis", "phase_threshold"):
        if not math.isfinite(getattr(s, name)):
            raise ValueError(f"{name} must be finite, got {getattr(s, name)!r}")
