"""Synthetic phase sensors: a source with a known answer, for demos, tests and benchmarks.

Each sensor is an oscillator sampled on a regular grid (int64 microseconds):

* ``steady``    - phi = 2 pi f t + phi0 plus 0.01 rad white noise: coherent, |T|^2 ~ 1;
* ``drifting``  - the same oscillator whose phase also random-walks
  (diffusion 0.6 rad / sqrt(s)), so the lag product wanders: partial coherence;
* ``noise``     - i.i.d. uniform phases: coherence at the 1/N noise floor;
* ``switching`` - ``steady`` for the first half of the run, ``noise`` after.

Generation is deterministic for a given seed and sensor name, and the same
for any batch length (each random component of a sensor has its own
generator, drawn in time order; only the drift's running sum may differ in
the last bit).

:class:`SyntheticSamples` is the Bytewax source of the config's synthetic
sensors (``source.kind: synthetic``).
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Literal

import numpy as np
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from schemas.samples import SampleBatch

if TYPE_CHECKING:
    from schemas.config import SyntheticSource

__all__ = ["SENSOR_KINDS", "SyntheticSamples", "SyntheticSensor", "synthetic_batches"]

SensorKind = Literal["steady", "drifting", "noise", "switching"]
SENSOR_KINDS: tuple[str, ...] = ("steady", "drifting", "noise", "switching")

_JITTER_RAD = 0.01  # white phase noise of the coherent kinds
_DIFFUSION = 0.6  # rad / sqrt(s), phase random walk of ``drifting``


@dataclass(frozen=True)
class SyntheticSensor:
    """One synthetic sensor.

    Attributes:
        name: sensor id.
        kind: ``steady``, ``drifting``, ``noise`` or ``switching``.
        freq_hz: oscillation frequency of the coherent kinds (below rate / 2).
        channels: phase channels C.
    """

    name: str
    kind: SensorKind
    freq_hz: float = 1.0
    channels: int = 1

    def __post_init__(self) -> None:
        if self.kind not in SENSOR_KINDS:
            raise ValueError(f"unknown synthetic sensor kind {self.kind!r}; expected one of {SENSOR_KINDS}")
        if self.channels < 1:
            raise ValueError(f"channels must be >= 1, got {self.channels}")


def synthetic_batches(
    sensors: list[SyntheticSensor],
    *,
    period_us: int,
    duration_us: int,
    start_us: int,
    seed: int = 0,
    batch_us: int = 1_000_000,
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Yield ``(sensor, t_us, phase)`` batches, interleaved across sensors in event-time order.

    Args:
        sensors: the sensors to simulate.
        period_us: sampling period in microseconds (1e6 / rate).
        duration_us: event-time length of the run in microseconds; samples at
            start + k * period for k * period < duration.
        start_us: event time of the first sample, microseconds since the epoch.
        seed: base seed; each sensor's generators are seeded from it and its name.
        batch_us: event-time length of one batch in microseconds.

    ``phase`` has shape (n, C), radians wrapped into [-pi, pi).
    """
    if period_us <= 0 or duration_us <= 0 or batch_us <= 0:
        raise ValueError("period_us, duration_us and batch_us must be positive")
    step_us = int(period_us)
    n_total = -(-int(duration_us) // step_us)  # ceil: every k with k * period < duration
    per_batch = max(1, int(batch_us) // step_us)
    state = {}
    for s in sensors:
        # One generator per random component, so a batch's draws never depend
        # on how many draws another component made: batching cannot change data.
        root = np.random.SeedSequence([seed, zlib.crc32(s.name.encode())])
        jitter, noise, walk, start = (np.random.default_rng(x) for x in root.spawn(4))
        state[s.name] = (jitter, noise, walk, start.uniform(-np.pi, np.pi, s.channels), np.zeros(s.channels))
    for lo in range(0, n_total, per_batch):
        idx = np.arange(lo, min(lo + per_batch, n_total))
        t_us = start_us + idx * step_us
        secs = (idx * step_us) * 1e-6  # time since start, for the phase model
        for s in sensors:
            jitter, noise_rng, walk_rng, phase0, walk = state[s.name]
            coherent = 2 * np.pi * s.freq_hz * secs[:, None] + phase0
            coherent = coherent + jitter.normal(0.0, _JITTER_RAD, coherent.shape)
            noise = noise_rng.uniform(-np.pi, np.pi, coherent.shape)
            if s.kind == "steady":
                phase = coherent
            elif s.kind == "drifting":
                steps = walk_rng.normal(0.0, _DIFFUSION * np.sqrt(step_us * 1e-6), coherent.shape)
                drift = walk + np.cumsum(steps, axis=0)
                walk[:] = drift[-1]
                phase = coherent + drift
            elif s.kind == "noise":
                phase = noise
            else:  # switching: coherent, then noise from half-time on
                phase = np.where((idx < n_total // 2)[:, None], coherent, noise)
            yield s.name, t_us, np.mod(phase + np.pi, 2 * np.pi) - np.pi


class _SyntheticPartition(StatefulSourcePartition[SampleBatch, int]):
    def __init__(self, source: SyntheticSource, resume: int | None) -> None:
        sensors = [SyntheticSensor(s.name, s.kind, freq_hz=s.freq_hz, channels=s.channels) for s in source.sensors]
        self._cells = {s.name: s.cell for s in source.sensors}
        self._batches = synthetic_batches(sensors, period_us=source.period_us, duration_us=source.duration_us,
                                          start_us=source.start_us, seed=source.seed)
        self._done = 0
        self._per_round = len(sensors)
        # Resume by regenerating: the generator is deterministic.
        for _ in range(resume or 0):
            next(self._batches)
            self._done += 1

    def next_batch(self) -> list[SampleBatch]:
        out = []
        for _ in range(self._per_round):
            try:
                name, t_us, phase = next(self._batches)
            except StopIteration:
                if not out:
                    raise
                break
            self._done += 1
            out.append(SampleBatch(name, t_us, phase, self._cells[name], topic=None, ingested=time.time()))
        return out

    def snapshot(self) -> int:
        return self._done


class SyntheticSamples(FixedPartitionedSource[SampleBatch, int]):
    """The config's synthetic sensors as one input partition (already valid samples, no decode)."""

    def __init__(self, source: SyntheticSource) -> None:
        self.source = source

    def list_parts(self) -> list[str]:
        return ["synthetic"]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _SyntheticPartition:
        return _SyntheticPartition(self.source, resume_state)
