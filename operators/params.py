"""Validated KAIROS estimator parameters in exact integer microseconds.

The kernels take every duration as int64 microseconds (SPEC section 2): a
100 Hz stream with ``tau_scale = 1 s`` must pair sample k with sample k - 100
exactly, whatever float noise the config or the producer carried.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from schemas.messages import MAX_DEAD_LETTERS_PER_MESSAGE, DeadLetterLimits
from schemas.timebase import duration_to_micros

if TYPE_CHECKING:
    from schemas.config import Config

__all__ = ["NO_GAP_LIMIT", "KairosParams", "dead_letter_limits", "kairos_params"]

#: ``max_gap`` meaning "never split a chain" (int64 max).
NO_GAP_LIMIT = np.iinfo(np.int64).max


@dataclass(frozen=True)
class KairosParams:
    """The estimator's parameters, validated up front.

    Attributes:
        tau_us: lag tau_bar in microseconds (``kairos.tau_scale``), > 0.
        velocity_span_us: velocity span d in microseconds, 0 <= d < tau.
        max_gap_us: a sample more than this after its predecessor starts a
            new chain; :data:`NO_GAP_LIMIT` for never.
        omega: kernel angular frequency in rad/s (0 = no rotation).
        weights: channel weights normalised to sum 1, or None for uniform.

    Use :meth:`from_seconds` to build one from config-style seconds.
    """

    tau_us: int
    velocity_span_us: int = 0
    max_gap_us: int = NO_GAP_LIMIT
    omega: float = 0.0
    weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.tau_us <= 0:
            raise ValueError(f"tau must be positive, got {self.tau_us} us")
        if self.velocity_span_us < 0:
            raise ValueError(f"velocity_span must be >= 0, got {self.velocity_span_us} us")
        if self.velocity_span_us >= self.tau_us:
            raise ValueError(
                f"velocity_span ({self.velocity_span_us * 1e-6:g} s) must be smaller than "
                f"tau ({self.tau_us * 1e-6:g} s): the two velocity spans of a lag product "
                "must not overlap"
            )
        if self.max_gap_us <= 0:
            raise ValueError(f"max_gap must be positive, got {self.max_gap_us} us")
        if not math.isfinite(self.omega):
            raise ValueError(f"omega must be finite, got {self.omega!r}")
        if self.weights is not None:
            w = np.asarray(self.weights, dtype=np.float64)
            if w.ndim != 1 or w.size == 0:
                raise ValueError("weights must be a non-empty 1-D sequence")
            if not np.all(np.isfinite(w)) or np.any(w < 0):
                raise ValueError(f"weights must be finite and >= 0, got {list(self.weights)}")
            if w.sum() <= 0:
                raise ValueError("weights must not all be zero")
            object.__setattr__(self, "weights", tuple(float(x) for x in w / w.sum()))

    @classmethod
    def from_seconds(
        cls,
        tau: float,
        *,
        velocity_span: float = 0.0,
        max_gap: float = math.inf,
        omega: float = 0.0,
        weights: Sequence[float] | None = None,
    ) -> "KairosParams":
        """Build from durations in seconds, each rounded to whole microseconds.

        >>> KairosParams.from_seconds(1.0, velocity_span=0.1).tau_us
        1000000
        """
        if not (isinstance(tau, (int, float)) and math.isfinite(tau)):
            raise ValueError(f"tau must be a finite number of seconds, got {tau!r}")
        if math.isnan(velocity_span) or math.isinf(velocity_span):
            raise ValueError(f"velocity_span must be finite, got {velocity_span!r}")
        if math.isnan(max_gap):
            raise ValueError("max_gap must not be NaN")
        gap_us = NO_GAP_LIMIT if math.isinf(max_gap) and max_gap > 0 else duration_to_micros(max_gap)
        return cls(
            tau_us=duration_to_micros(tau),
            velocity_span_us=duration_to_micros(velocity_span),
            max_gap_us=gap_us,
            omega=float(omega),
            weights=None if weights is None else tuple(weights),
        )

    def weight_vector(self, channels: int) -> np.ndarray:
        """Channel weights for ``channels`` channels, summing to 1."""
        if self.weights is None:
            return np.full(channels, 1.0 / channels)
        if len(self.weights) != channels:
            raise ValueError(
                f"weights has {len(self.weights)} entries but the phase has {channels} channels"
            )
        return np.asarray(self.weights, dtype=np.float64)


def kairos_params(config: Config) -> KairosParams:
    """The estimator parameters of ``config`` in exact microseconds."""
    k = config.kairos
    return KairosParams(
        tau_us=k.tau_us, velocity_span_us=k.velocity_span_us, max_gap_us=k.max_gap_us, omega=k.omega,
        weights=None if k.channel_weights is None else tuple(k.channel_weights),
    )


def dead_letter_limits(config: Config) -> DeadLetterLimits:
    """The dead-letter bounds of ``config`` (``sink.dlq_max_original_bytes``,
    ``source.max_dead_letters_per_message`` of a Kafka source)."""
    per_message = getattr(config.source, "max_dead_letters_per_message", MAX_DEAD_LETTERS_PER_MESSAGE)
    return DeadLetterLimits(max_original_bytes=config.sink.dlq_max_original_bytes, max_per_message=per_message)
