"""Input samples (SPEC section 4) and the reasons a sample becomes a dead letter.

A JSON sample ``{"sensor": "pmu-7", "t": 1764115200.125, "phase": 1.23}``
(``"phase"`` may be a list of channels; ``"cell"`` is optional; ``"t"`` is
epoch seconds or an ISO-8601 string with a zone) becomes a
:class:`PhaseSample` with exact integer microseconds ``t_us``.  A raw sensor
sends ``"value"`` (a number or a list, one per channel: microvolts,
millivolts, ...) instead of ``"phase"`` (SPEC section 9); the flow extracts
its phase.  A sample carries one of the two, never both.  A sample
that cannot be one raises :class:`InvalidSample` carrying its
:class:`DeadLetterReason`.  Unknown extra fields are ignored, so producers
may add fields without breaking the flow.

The input side is a frozen dataclass and a hand-written parser rather
than a pydantic model: it runs once per sample (thousands per second per
sensor), and a plain ``json.loads`` plus type checks costs a fraction of a
model validation while giving the exact dead-letter reason, which pydantic's
error list would have to be mapped back to.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from schemas.messages.wire import parse_utc
from schemas.timebase import MAX_ABS_SECONDS, MAX_ABS_WHOLE_SECONDS, MICROS_PER_SECOND, RANGE_TEXT, number_to_micros


#: Kafka header naming a message value's encoding (SPEC section 4); no header means JSON.
#: Longest sensor id or cell name, in bytes of UTF-8: a longer one is a ``schema`` dead letter (an id is
#: kept per sensor in memory and written into every output row; a megabyte id would be a megabyte each time).
MAX_ID_BYTES = 256
CONTENT_TYPE_HEADER = "content-type"
JSON_CONTENT_TYPE = "application/json"
ARROW_STREAM_CONTENT_TYPE = "application/vnd.apache.arrow.stream"


class DeadLetterReason(enum.StrEnum):
    """Why a sample went to the dead-letter topic (SPEC section 4)."""

    MALFORMED = "malformed"
    """Not JSON (or not an Arrow batch), or not a JSON object."""
    SCHEMA = "schema"
    """A field is missing or has the wrong type (also: unreadable time)."""
    NAN = "nan"
    """The phase or the time is NaN or infinite."""
    DUPLICATE = "duplicate"
    """Same sensor and event time as an accepted sample (decided by the event-time operator)."""
    LATE = "late"
    """Event time at or below the sensor's watermark (decided by the event-time operator)."""
    FUTURE = "future"
    """More than sync.max_future ahead of the wall clock (decided at the source)."""
    TOO_LARGE = "too_large"
    """Message value larger than the source's max_message_bytes."""
    CHANNELS = "channels"
    """Empty phase list, or a channel count that differs from the sensor's
    earlier samples (the latter decided by the stateful operator)."""
    CAPACITY = "capacity"
    """A new sensor beyond ``becomingone.max_sensors`` live sensors in the process."""


class InvalidSample(ValueError):
    """A sample that cannot enter the flow.

    Attributes:
        reason: the dead-letter reason.
        detail: what was wrong, for the dead letter's ``error`` field.
    """

    def __init__(self, reason: DeadLetterReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class PhaseSample:
    """One accepted input sample.

    Attributes:
        sensor: sensor id (also the Kafka key).
        t_us: event time, int microseconds since the Unix epoch.
        phase: phase angles in radians, one per channel (any wrapping); for a
            raw sample, its values.
        cell: optional cell label.
        raw: True for a raw ``value`` sample (SPEC section 9).
    """

    sensor: str
    t_us: int
    phase: tuple[float, ...]
    cell: str | None = None
    raw: bool = False

    @property
    def channels(self) -> int:
        """Number of phase channels C."""
        return len(self.phase)

    def to_json_bytes(self) -> bytes:
        """The sample in the input wire format (``t`` as epoch seconds).

        ``t_us / 1e6`` is within 0.25 us of the true value for any epoch time
        of this era, so :func:`parse_sample` recovers ``t_us`` exactly.
        """
        obj: dict[str, Any] = {
            "sensor": self.sensor,
            "t": self.t_us / MICROS_PER_SECOND,
            "value" if self.raw else "phase": self.phase[0] if len(self.phase) == 1 else list(self.phase),
        }
        if self.cell is not None:
            obj["cell"] = self.cell
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def _is_number(x: Any) -> bool:
    # JSON true/false arrive as bool, a subclass of int: never a number here.
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def sample_from_object(obj: Any) -> PhaseSample:
    """A decoded JSON value (or a file row as a dict) to a :class:`PhaseSample`.

    When several things are wrong, the first reason in this order wins:
    ``malformed`` (not an object), ``schema`` (a missing or wrong-typed field,
    an unreadable or out-of-range time), ``nan``, ``channels``.

    Raises:
        InvalidSample: with the dead-letter reason.
    """
    if not isinstance(obj, Mapping):
        raise InvalidSample(DeadLetterReason.MALFORMED, f"not a JSON object but {type(obj).__name__}")
    raw = "value" in obj
    if raw and "phase" in obj:
        raise InvalidSample(DeadLetterReason.SCHEMA, "fields 'phase' and 'value' both given: a sample is a phase "
                                                     "or a raw value, not both")
    field = "value" if raw else "phase"
    missing = [key for key in ("sensor", "t", field) if key not in obj]
    if missing:
        text = "missing field(s) " + ", ".join(repr(k) for k in missing)
        raise InvalidSample(DeadLetterReason.SCHEMA, text + (" (or 'value' for a raw sample)" if field in missing else ""))
    sensor, t, phase, cell = obj["sensor"], obj["t"], obj[field], obj.get("cell")
    if not isinstance(sensor, str) or not sensor:
        raise InvalidSample(DeadLetterReason.SCHEMA, "field 'sensor' must be a non-empty string")
    if cell is not None and not isinstance(cell, str):
        raise InvalidSample(DeadLetterReason.SCHEMA, "field 'cell' must be a string or null")
    if not (_is_number(phase) or (isinstance(phase, list) and all(_is_number(x) for x in phase))):
        raise InvalidSample(DeadLetterReason.SCHEMA, f"field {field!r} must be a number or a list of numbers")

    t_us: int | None = None
    if isinstance(t, str):
        try:
            t_us = parse_utc(t)
        except ValueError as exc:
            raise InvalidSample(DeadLetterReason.SCHEMA, f"field 't': {exc}") from None
    elif not _is_number(t):
        raise InvalidSample(DeadLetterReason.SCHEMA, "field 't' must be epoch seconds or an ISO-8601 string")
    elif isinstance(t, float) and not math.isfinite(t):
        raise InvalidSample(DeadLetterReason.NAN, f"field 't' is {t!r}")
    elif abs(t) > (MAX_ABS_WHOLE_SECONDS if isinstance(t, int) else MAX_ABS_SECONDS):
        raise InvalidSample(DeadLetterReason.SCHEMA, f"field 't' ({t!r}) is out of range: {RANGE_TEXT}")

    try:
        values = tuple(float(x) for x in (phase if isinstance(phase, list) else [phase]))
    except OverflowError:  # an integer literal beyond float64
        values = (math.inf,)
    if not all(math.isfinite(x) for x in values):
        raise InvalidSample(DeadLetterReason.NAN, f"field {field!r} holds NaN or infinity")
    if not values:
        raise InvalidSample(DeadLetterReason.CHANNELS, f"field {field!r} is an empty list")
    if t_us is None:
        t_us = number_to_micros(t)  # finite and in range: checked above
    return PhaseSample(sensor=sensor, t_us=t_us, phase=values, cell=cell, raw=raw)


def parse_sample(value: bytes | bytearray | memoryview | str, *, max_bytes: int | None = None) -> PhaseSample:
    """Parse one JSON input message.

    Args:
        value: the message value (UTF-8 JSON).
        max_bytes: values longer than this are ``too_large`` (None: no limit).

    Raises:
        InvalidSample: with the dead-letter reason.
    """
    if isinstance(value, memoryview):
        value = value.tobytes()
    size = len(value.encode("utf-8")) if isinstance(value, str) else len(value)
    if max_bytes is not None and size > max_bytes:
        raise InvalidSample(DeadLetterReason.TOO_LARGE, f"{size} bytes, limit {max_bytes}")
    try:
        obj = json.loads(value)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InvalidSample(DeadLetterReason.MALFORMED, f"not JSON: {exc}") from None
    return sample_from_object(obj)


def classify_sample(
    value: bytes | bytearray | memoryview | str, *, max_bytes: int | None = None
) -> DeadLetterReason | None:
    """The dead-letter reason of a message value, or None when it is a good sample.

    Only the reasons visible in the message itself (malformed, schema, nan,
    channels, too_large); duplicate, late and future need the stream's state.
    """
    try:
        parse_sample(value, max_bytes=max_bytes)
    except InvalidSample as exc:
        return exc.reason
    return None

