"""Phasor angles unwrapped per sensor across data frames, for ``ingest c37118 --as value``.

A PMU sends each phasor's angle wrapped to (-pi, pi].  A system running off
its nominal frequency turns the angle steadily, so the wrapped angle is a
sawtooth whose jumps leak into any band-pass; sent as a raw ``value``
(SPEC section 9) the angle must be continuous.  Unwrapping (Itoh's
condition): between two consecutive angles of a sensor, a step larger than
pi in magnitude is taken as a wrap and corrected by a multiple of 2 pi,

    u_0 = p_0,   u_k = p_k + sum_{j <= k} c_j,
    c_j = ((d_j + pi) mod 2 pi) - pi - d_j  if |d_j| >= pi, else 0,   d_j = p_j - p_{j-1},

the arithmetic of :func:`numpy.unwrap`, carried across calls: each sensor
keeps its last angle and the running sum of corrections, so splitting the
frames into runs of any size gives the same floats as one ``numpy.unwrap``
over the whole record.  A gap (no usable angle of the sensor for longer than
``max_gap_us``) or a new process restarts the sum at 0: the first angle after
it is sent as received.  Units: radians in, radians out.

Reference: K. Itoh, "Analysis of the phase unwrapping algorithm",
Applied Optics 21(14), 1982, p. 2470.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["AngleUnwrap", "UnwrapPoint", "unwrap_angles"]


@dataclass(frozen=True, slots=True)
class UnwrapPoint:
    """A sensor's last angle: its time (us), the angle as received (rad) and the corrections summed so far (rad)."""

    t_us: int
    angle: float
    correction: float


@dataclass
class AngleUnwrap:
    """Per sensor, where its unwrapping stands; ``max_gap_us`` is the silence that restarts it."""

    max_gap_us: int
    last: dict[str, UnwrapPoint] = field(default_factory=dict)


def unwrap_angles(state: AngleUnwrap, sensors: list[str], t_us: np.ndarray, angle: np.ndarray,
                  usable: np.ndarray) -> np.ndarray:
    """The angles of a run of frames unwrapped per sensor, continuing from ``state`` (updated in place).

    Args:
        state: each sensor's last angle, from earlier calls.
        sensors: the sensor of each column.
        t_us: (frames,) int64 frame times, microseconds, increasing.
        angle: (frames, sensors) float64 angles as received, radians.
        usable: (frames, sensors) bool; unusable angles are skipped (left as they are in the result)
            and do not count as samples, so a run of them longer than ``max_gap_us`` is a gap.

    Returns:
        (frames, sensors) float64, radians: ``angle`` with the usable entries unwrapped.
    """
    t_us, angle, usable = np.asarray(t_us, np.int64), np.asarray(angle, np.float64), np.asarray(usable, bool)
    if angle.ndim != 2 or angle.shape != usable.shape or angle.shape != (t_us.size, len(sensors)):
        raise ValueError(f"angle and usable must have shape (frames, sensors) = ({t_us.size}, {len(sensors)}), "
                         f"got {angle.shape} and {usable.shape}")
    out = angle.copy()
    for column, sensor in enumerate(sensors):
        rows = np.flatnonzero(usable[:, column])
        if rows.size:
            out[rows, column], state.last[sensor] = _unwrap_sensor(
                t_us[rows], angle[rows, column], state.last.get(sensor), state.max_gap_us)
    return out


def _unwrap_sensor(t: np.ndarray, p: np.ndarray, last: UnwrapPoint | None,
                   max_gap_us: int) -> tuple[np.ndarray, UnwrapPoint]:
    """One sensor's usable angles unwrapped after ``last``; a Python loop over its gaps only, never its samples."""
    prev_t = np.concatenate(([t[0] if last is None else last.t_us], t[:-1]))
    restart = t - prev_t > max_gap_us
    restart[0] |= last is None
    prev = np.concatenate(([p[0] if last is None else last.angle], p[:-1]))
    prev[restart] = p[restart]
    step = p - prev
    # numpy.unwrap's arithmetic, step by step, so that the floats are the same.
    wrapped = np.mod(step + np.pi, 2 * np.pi) - np.pi
    np.copyto(wrapped, np.pi, where=(wrapped == -np.pi) & (step > 0))
    correction = wrapped - step
    np.copyto(correction, 0.0, where=np.abs(step) < np.pi)
    starts = np.flatnonzero(restart)
    bounds = np.concatenate((starts, [p.size])) if starts.size and starts[0] == 0 else \
        np.concatenate(([0], starts, [p.size]))
    total = np.empty_like(p)
    for a, b in zip(bounds[:-1], bounds[1:]):
        carried = 0.0 if restart[a] else last.correction  # only the first run can continue from ``last``
        total[a:b] = np.cumsum(np.concatenate(([carried], correction[a:b])))[1:]
    return p + total, UnwrapPoint(int(t[-1]), float(p[-1]), float(total[-1]))
