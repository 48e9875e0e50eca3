"""Value types of the config: finite numbers, durations in seconds, ports, topic names.

Durations are float seconds in the file; each must map to whole microseconds
without collapsing to zero where zero is meaningless.  A section reads a
duration in microseconds through a :class:`Micros` attribute
(``tau_us = Micros("tau_scale")``): the conversion is written once, here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, overload

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from schemas.timebase import duration_to_micros

WITNESS_LAYERS = ("micro", "meso", "macro", "meta")
#: Phase file formats (``source.format``) and the suffixes that name them.
FILE_FORMATS: tuple[str, ...] = ("csv", "parquet", "arrow", "jsonl")
FILE_SUFFIXES: dict[str, str] = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".arrow": "arrow",
    ".ipc": "arrow",
    ".feather": "arrow",
    ".arrows": "arrow",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
# Kafka's own rule for topic names (legal characters, at most 249 of them).
_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


# --------------------------------------------------------------------------
# Value types.


def _reject_bool(value: Any) -> Any:
    # YAML `yes`/`true` would otherwise become 1.0 seconds without a word.
    if isinstance(value, bool):
        raise ValueError("must be a number, not true/false")
    return value


def _in_time_base(value: float) -> int:
    try:
        return duration_to_micros(value)
    except ValueError:
        raise ValueError("is out of range for the microsecond time base") from None


def _positive_seconds(value: float) -> float:
    if value <= 0:
        raise ValueError("must be greater than 0 seconds")
    if _in_time_base(value) == 0:
        raise ValueError("rounds to 0 microseconds; durations resolve to whole microseconds")
    return value


def _non_negative_seconds(value: float) -> float:
    if value < 0:
        raise ValueError("must be 0 or greater (seconds)")
    _in_time_base(value)
    return value


#: A finite number (YAML booleans rejected).
Number = Annotated[float, BeforeValidator(_reject_bool), Field(allow_inf_nan=False)]
#: A duration in seconds that must be > 0 and at least 1 us after rounding.
PositiveSeconds = Annotated[Number, AfterValidator(_positive_seconds)]
#: A duration in seconds that may be 0.
NonNegativeSeconds = Annotated[Number, AfterValidator(_non_negative_seconds)]
Port = Annotated[int, BeforeValidator(_reject_bool), Field(ge=1, le=65535)]
NonEmptyStr = Annotated[str, Field(min_length=1)]


def _topic_name(value: str) -> str:
    if not _TOPIC_RE.match(value):
        raise ValueError("must be a Kafka topic name: 1-249 of letters, digits, '.', '_', '-'")
    return value


TopicName = Annotated[str, AfterValidator(_topic_name)]


class Micros:
    """A read-only attribute of a section: one of its fields in whole microseconds.

    ``tau_us = Micros("tau_scale")`` reads ``tau_scale`` (seconds) as
    :func:`~schemas.timebase.duration_to_micros` gives it; ``convert`` maps
    other fields (a start time, a rate) to their microseconds.

    >>> class Window(_Section):
    ...     length: PositiveSeconds = 0.25
    ...     length_us = Micros("length")
    >>> Window().length_us
    250000
    """

    def __init__(self, field: str, convert: Callable[[Any], int] = duration_to_micros, doc: str | None = None) -> None:
        self.field = field
        self.convert = convert
        self.__doc__ = doc or f"{field} in microseconds."

    @overload
    def __get__(self, section: None, owner: type | None = None) -> Micros: ...

    @overload
    def __get__(self, section: BaseModel, owner: type | None = None) -> int: ...

    def __get__(self, section: BaseModel | None, owner: type | None = None) -> int | Micros:
        if section is None:
            return self
        return self.convert(getattr(section, self.field))


class _Section(BaseModel):
    """Base of every config model: unknown keys are errors, values immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, ignored_types=(Micros,))
