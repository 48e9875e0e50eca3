"""One sensor's whole computation: intake, Emissary, Master and sync (SPEC sections 2 and 3).

A :class:`Resonator` chains, for one sensor,

    SampleBatch -> SensorIntake (channels, event-time gate, lag products)
                -> Transducer(EmissaryWindow)  \\
                -> Transducer(MasterWindow)    -> SyncState (collapse / dissipate)

in one call per batch.  Both transducers are driven by the same watermark in
the same call, so every Master grid point up to the watermark has been
computed before the sync decides the Emissary points up to it: the join by
event time of SPEC section 3 holds by construction, whatever order batches
arrive in.  The dataflow keeps many resonators per key group and calls them
with whole arrays; nothing here runs per sample in Python.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


from operators.emissary import emissary_window
from operators.grid import WindowValues
from operators.intake import IntakeResult, SensorIntake
from operators.master import MasterWindow
from operators.params import KairosParams
from operators.samples import SampleBatch
from operators.sync import SyncState, SyncValues
from operators.transducer import Transducer
from schemas.messages import DeadLetter

__all__ = ["Resonance", "Resonator", "ResonatorSettings"]

_NO_VALUES = WindowValues.empty()


@dataclass(frozen=True)
class ResonatorSettings:
    """Everything a resonator needs, in exact microseconds (from the ``kairos``,
    ``emissary``, ``master`` and ``sync`` config sections)."""

    params: KairosParams
    emissary_window_us: int
    emissary_interval_us: int
    master_window_us: int
    master_interval_us: int
    threshold: float
    hysteresis: float
    phase_threshold: float
    min_span_us: int
    lateness_us: int = 0
    max_future_us: int | None = None


@dataclass(slots=True)
class Resonance:
    """What one call of a resonator produced.

    Attributes:
        dead: dead letters of the rows rejected now, with ``reasons`` one per letter.
        released: the samples integrated now (time order), or None.
        emissary, master: the transducers' values at the grid points that became final.
        sync: the sync at the Emissary points decided now (events included).
        watermark: the sensor's watermark after the call (us); None at end of input.
        ingested: wall-clock epoch seconds the oldest integrated sample was decoded.
    """

    dead: list[DeadLetter] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    released: SampleBatch | None = None
    emissary: WindowValues = field(default_factory=WindowValues.empty)
    master: WindowValues = field(default_factory=WindowValues.empty)
    sync: SyncValues | None = None
    watermark: int | None = None
    ingested: float = math.inf


class Resonator:
    """One sensor's intake, Emissary, Master and sync state.

    Args:
        sensor: the sensor id.
        settings: the estimator, window and sync settings.

    >>> import numpy as np
    >>> from operators.params import KairosParams
    >>> settings = ResonatorSettings(KairosParams.from_seconds(0.05, velocity_span=0.01),
    ...     emissary_window_us=200_000, emissary_interval_us=10_000, master_window_us=1_000_000,
    ...     master_interval_us=100_000, threshold=0.95, hysteresis=0.05, phase_threshold=0.1,
    ...     min_span_us=300_000)
    >>> r = Resonator("osc-1", settings)
    >>> t = np.arange(1, 1001) * 1_000                      # 1 s at 1 kHz
    >>> phase = (2 * np.pi * 5.0 * t * 1e-6)[:, None]       # a clean 5 Hz oscillator
    >>> out = r.push(SampleBatch("osc-1", t, phase), now_us=0)
    >>> [int(e) for e in out.sync.event if e], r.collapsed    # one collapse (1) once the Master is mature
    ([1], True)
    """

    def __init__(self, sensor: str, settings: ResonatorSettings) -> None:
        s = settings
        omega = s.params.omega
        self.sensor = sensor
        self.intake = SensorIntake(sensor, s.params, lateness_us=s.lateness_us, max_future_us=s.max_future_us)
        self.emissary = Transducer(emissary_window(s.emissary_window_us, s.emissary_interval_us, omega),
                                   s.emissary_interval_us)
        self.master = Transducer(MasterWindow(s.master_window_us, s.master_interval_us, omega),
                                 s.master_interval_us)
        self.sync = SyncState(s.threshold, s.hysteresis, s.phase_threshold, s.min_span_us)

    @property
    def cell(self) -> str | None:
        """The sensor's cell label (the last one given), or None."""
        return self.intake.cell

    @property
    def collapsed(self) -> bool:
        """True while the sensor is in the collapsed state."""
        return self.sync.collapsed

    @property
    def master_state_bytes(self) -> int:
        """Bytes of the Master's pane state (fixed by tau_max / interval, not by the rate)."""
        return self.master.window.state_bytes

    def push(self, batch: SampleBatch, now_us: int) -> Resonance:
        """Take one batch of this sensor's samples (arrival order) and compute what became final.

        Args:
            batch: samples of this sensor.
            now_us: the wall clock (us), for ``future`` rejection.
        """
        return self._run(self.intake.push(batch, now_us))

    def flush(self) -> Resonance:
        """End of input: integrate every pending sample and decide every grid point."""
        return self._run(self.intake.flush())

    def _run(self, step: IntakeResult) -> Resonance:
        b = step.batch
        if b is None:
            return Resonance(step.dead, step.reasons, step.released, _NO_VALUES, _NO_VALUES, None,
                             self.intake.watermark)
        emissary = self.emissary.push(b.products, b.sample_t, b.watermark)
        master = self.master.push(b.products, b.sample_t, b.watermark)
        # Every Master point <= the watermark exists now: decide the Emissary points up to it.
        sync = self.sync.advance(emissary, master, b.watermark)
        return Resonance(step.dead, step.reasons, step.released, emissary, master, sync, b.watermark, b.ingested)
