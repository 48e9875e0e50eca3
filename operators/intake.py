"""A sensor's intake: channel check, event time, lag products (SPEC sections 2 and 3).

:class:`SensorIntake` is the first per-sensor step of the dataflow.  It takes
the sensor's decoded :class:`~schemas.samples.SampleBatch` es in arrival
order and

1. rejects rows whose channel count differs from the sensor's (``channels``;
   the count is fixed by the first accepted batch, and must match
   ``kairos.channel_weights`` when those are set);
2. runs the :class:`~operators.event_time.EventTimeGate`: watermark, reorder
   buffer, ``duplicate`` / ``late`` / ``future`` rejection;
3. pushes the samples that became final through its
   :class:`~operators.lag.LagState` and hands on the lag products, together
   with the sample times (they decide which grid points are due) and the
   sensor's watermark, in one :class:`ProductBatch`.

The watermark travels in-band with the products: a transducer downstream
learns from each batch which grid points are final, whatever order Bytewax
delivers items in.  Every rejected row becomes a
:class:`~schemas.messages.DeadLetter` with its original bytes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from operators.dead_letters import DeadLetterBudget
from operators.event_time import EventTimeGate
from operators.lag import LagState, Products
from operators.params import KairosParams
from schemas.provenance import RowOrigin
from schemas.samples import SampleBatch
from schemas.messages import DeadLetter, DeadLetterLimits, PhaseSample, format_utc

__all__ = ["IntakeResult", "ProductBatch", "SensorIntake", "dead_letters"]


@dataclass
class ProductBatch:
    """What one intake step hands to both transducers.

    Attributes:
        sensor: sensor id.
        cell: the sensor's cell label, or None.
        products: lag products of the samples released now (time order).
        sample_t: int64 times of the samples released now (sorted); they
            make grid points due.
        watermark: the sensor's watermark after this step (us); grid points
            up to it are final.  None at end of input: everything is final.
        ingested: wall-clock epoch seconds when the oldest released sample
            was decoded (start of the ingest-to-event latency).
    """

    sensor: str
    cell: str | None
    products: Products
    sample_t: np.ndarray
    watermark: int | None
    ingested: float = math.inf


@dataclass
class IntakeResult:
    """One intake step.

    Attributes:
        batch: products for the transducers, or None when the watermark did
            not move and nothing was released.
        released: the samples released now (time order), for the input
            archive, or None.
        dead: dead letters of the rows rejected now (past a message's
            allowance, none: see :class:`~operators.dead_letters.DeadLetterBudget`).
        reasons: one reason per rejected row (for counting).
    """

    batch: ProductBatch | None = None
    released: SampleBatch | None = None
    dead: list[DeadLetter] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)


def dead_letters(batch: SampleBatch, reasons: list[str], detail: str | list[str],
                 budget: DeadLetterBudget | None = None) -> list[DeadLetter]:
    """One dead letter per row of ``batch`` (original bytes, source position, reason).

    With a ``budget``, rows of a message past its allowance are only counted
    there (for its summary record), and their bytes are never rebuilt.
    """
    details = [detail] * len(batch) if isinstance(detail, str) else detail
    limits = budget.limits if budget is not None else DeadLetterLimits()
    provenance = batch.provenance
    out = []
    for i, (reason, text) in enumerate(zip(reasons, details)):
        where = provenance.origin(i) if provenance is not None else _NOWHERE
        message = where.message
        if budget is not None and message is not None and not budget.admit(message, reason):
            continue
        key = message.key if message is not None else batch.sensor.encode("utf-8")
        original = provenance.original_bytes(i) if provenance is not None else None
        if original is None:  # a row with no wire form kept (generated): the row as a JSON sample
            original = PhaseSample(batch.sensor, int(batch.t_us[i]), tuple(batch.phase[i].tolist()),
                                   batch.cell).to_json_bytes()
        out.append(DeadLetter.create(
            original=original, reason=reason, error=text, topic=batch.topic,
            partition=where.partition, offset=where.offset,
            row=where.row, key=key, max_original_bytes=limits.max_original_bytes,
        ))
    return out


_NOWHERE = RowOrigin(None, None, None, None)


def _utc(t_us: int) -> str:
    """ISO-8601 UTC text of a time, whatever the time: never raises."""
    try:
        return format_utc(t_us)
    except (OverflowError, ValueError):
        return f"{t_us} us since the epoch"


def _seconds(us: int | None) -> str:
    return "-" if us is None else f"{us / 1_000_000:g} s"


def _rejection_texts(reasons: list[str], t_us: np.ndarray, watermarks: Sequence[int], *, lateness_us: int,
                    max_future_us: int | None, now_us: int) -> list[str]:
    """The ``error`` text of each ``duplicate``, ``late`` or ``future`` dead letter, times in UTC.

    Built only for rejected rows, never for accepted ones.
    """
    texts = []
    for reason, t, wm in zip(reasons, t_us.tolist(), watermarks):
        if reason == "late":
            texts.append(f"t {_utc(t)} is at or before the sensor's watermark {_utc(wm)} "
                         f"(lateness {_seconds(lateness_us)})")
        elif reason == "duplicate":
            texts.append(f"t {_utc(t)} equals the time of a sample the sensor already has")
        else:
            texts.append(f"t {_utc(t)} is more than sync.max_future ({_seconds(max_future_us)}) ahead of "
                         f"the wall clock ({_utc(now_us)})")
    return texts


class SensorIntake:
    """One sensor's channel check, event-time gate and lag-product state.

    Args:
        sensor: the sensor id.
        params: estimator parameters.
        lateness_us: ``sync.lateness`` in microseconds.
        max_future_us: ``sync.max_future`` in microseconds, or None (replay:
            any future time is accepted).
        dedup_horizon_us: how far behind the watermark accepted times are
            remembered to tell ``duplicate`` from ``late``.

    >>> import numpy as np
    >>> from operators.params import KairosParams
    >>> intake = SensorIntake("s", KairosParams.from_seconds(0.02), lateness_us=0, max_future_us=None)
    >>> t = np.arange(10) * 10_000
    >>> out = intake.push(SampleBatch("s", t, np.zeros((10, 1))), now_us=0)
    >>> len(out.batch.products), out.batch.watermark
    (7, 90000)
    >>> intake.push(SampleBatch("s", np.array([50_000]), np.zeros((1, 1))), now_us=0).reasons
    ['duplicate']
    """

    def __init__(self, sensor: str, params: KairosParams, *, lateness_us: int, max_future_us: int | None,
                 dedup_horizon_us: int = 1_000_000) -> None:
        self.sensor = sensor
        self.params = params
        self.gate = EventTimeGate(lateness_us, max_future_us, max(dedup_horizon_us, lateness_us))
        self.lag: LagState | None = None
        self.channels: int | None = None
        self.cell: str | None = None
        self._last_watermark: int | None = None

    @property
    def watermark(self) -> int | None:
        """The sensor's watermark as last handed on (us), or None before any."""
        return self._last_watermark

    def push(self, batch: SampleBatch, now_us: int, budget: DeadLetterBudget | None = None) -> IntakeResult:
        """Classify ``batch`` (arrival order); release and integrate what became final.

        ``budget`` bounds the dead letters per input message (see :func:`dead_letters`).
        """
        out = IntakeResult()
        if not len(batch):
            return out
        if batch.cell is not None:
            self.cell = batch.cell
        problem = self._channel_problem(batch.channels)
        if problem is not None:
            out.dead = dead_letters(batch, ["channels"] * len(batch), problem, budget)
            out.reasons = ["channels"] * len(batch)
            return out
        res = self.gate.push(batch, now_us)
        if res.rejected is not None:
            details = _rejection_texts(res.reasons, res.rejected.t_us, res.watermarks,
                                       lateness_us=self.gate.lateness_us, max_future_us=self.gate.max_future_us,
                                       now_us=now_us)
            out.dead = dead_letters(res.rejected, res.reasons, details, budget)
            out.reasons = list(res.reasons)
        if res.watermark is not None and self.channels is None:
            self.channels = batch.channels  # first accepted batch fixes the count
        self._release(res.released, res.watermark, out)
        return out

    def flush(self) -> IntakeResult:
        """End of input: release every pending sample; the batch's watermark is None."""
        out = IntakeResult()
        self._release(self.gate.flush(), None, out, final=True)
        return out

    def _channel_problem(self, channels: int) -> str | None:
        if self.channels is not None and channels != self.channels:
            return f"{channels} channels where the sensor has {self.channels}"
        weights = self.params.weights
        if weights is not None and channels != len(weights):
            return f"{channels} channels where kairos.channel_weights has {len(weights)} weights"
        return None

    def _release(self, released: SampleBatch | None, watermark: int | None, out: IntakeResult,
                 final: bool = False) -> None:
        moved = final or (watermark is not None and watermark != self._last_watermark)
        if released is None and not moved:
            return
        if watermark is not None:
            self._last_watermark = watermark
        if released is not None and len(released):
            if self.lag is None:
                self.lag = LagState(self.params, channels=released.channels)
            # The gate released them in strictly increasing time after every earlier
            # sample, and decoding admitted only finite phases.
            products = self.lag.push(released.t_us, released.phase, validate=False)
            sample_t, ingested = released.t_us, released.ingested
            out.released = released
        else:
            products, sample_t, ingested = Products.empty(), np.empty(0, np.int64), math.inf
        out.batch = ProductBatch(self.sensor, self.cell, products,
                                 sample_t, None if final else watermark, ingested)
