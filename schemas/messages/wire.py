"""Time and values on the wire, and the base of the output messages.

Times on the wire are ISO-8601 UTC strings with microseconds
(``2025-11-26T00:00:00.125000Z``); complex values are ``[re, im]`` pairs.
The output messages are pydantic models (exact fields, immutable):
:func:`to_json_bytes` gives their compact JSON, :func:`from_json_bytes`
reads one back.
"""

from __future__ import annotations

import datetime as _dt
import functools
from typing import Annotated, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from schemas.timebase import MICROS_PER_SECOND, to_micros


_NAIVE_EPOCH = _dt.datetime(1970, 1, 1)


def format_utc(t_us: int) -> str:
    """Microseconds since the epoch as ISO-8601 UTC with 6 decimals and ``Z``.

    >>> format_utc(1764115200125000)
    '2025-11-26T00:00:00.125000Z'
    """
    text = _UTC_TEXT.get(t_us)
    if text is None:
        # Output records share their grid times across sensors: each is formatted once.
        if len(_UTC_TEXT) >= 65_536:
            _UTC_TEXT.clear()
        seconds, micros = divmod(int(t_us), MICROS_PER_SECOND)
        text = _UTC_TEXT[int(t_us)] = f"{_utc_second(seconds)}.{micros:06d}Z"
    return text


_UTC_TEXT: dict[int, str] = {}


@functools.lru_cache(maxsize=65_536)
def _utc_second(seconds: int) -> str:
    # Output records of one batch share few distinct seconds: format each once.
    # timedelta holds whole seconds exactly: no float on the way.
    return (_NAIVE_EPOCH + _dt.timedelta(seconds=seconds)).isoformat(timespec="seconds")


def parse_utc(text: str) -> int:
    """ISO-8601 text with a zone to microseconds since the epoch (exact)."""
    return int(to_micros(text))


def _canonical_utc(text: str) -> str:
    return format_utc(parse_utc(text))


#: An event time on the wire: ISO-8601 with a zone in, canonical UTC ``...Z`` out.
UtcTime = Annotated[str, AfterValidator(_canonical_utc)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
#: A complex value as ``[re, im]``.
ComplexPair = tuple[FiniteFloat, FiniteFloat]
NonNegativeInt = Annotated[int, Field(ge=0)]


def _pair(z: complex) -> tuple[float, float]:
    return (float(z.real), float(z.imag))


Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class _Wire(BaseModel):
    """Base of the output messages: exact fields, immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


M = TypeVar("M", bound=BaseModel)


def to_json_bytes(message: BaseModel) -> bytes:
    """Compact UTF-8 JSON of an output message (the Kafka value)."""
    return message.model_dump_json().encode("utf-8")


def from_json_bytes(model: type[M], data: bytes | str) -> M:
    """Parse and validate one output message (e.g. read back from a topic)."""
    return model.model_validate_json(data)

