"""The parameters of the API's endpoints, parsed and checked before the archive is read.

Every endpoint takes a fixed set of query parameters (:data:`PARAMETERS`);
a parameter it does not take, one given twice that is single, a time that
cannot be read, or a bad number raises :class:`ParameterError` naming the
parameter (the server answers 400).  Times are epoch seconds or ISO-8601 with
a zone, as for every ``becomingone`` command; the texts are kept as given so
the query runs exactly as ``becomingone memory retrieve`` runs it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from connectors.memory import as_micros

__all__ = ["PARAMETERS", "Parameter", "ParameterError", "RangeQuery", "StateQuery", "range_query", "state_query"]


class ParameterError(ValueError):
    """A query parameter that cannot be used: ``parameter`` names it."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter


@dataclass(frozen=True)
class Parameter:
    """A query parameter: its name, JSON-schema type, whether it is required or repeatable, and what it means."""

    name: str
    kind: str  # "time" | "string" | "integer"
    description: str
    required: bool = False
    repeatable: bool = False


_TIME = "epoch seconds or ISO-8601 with a zone"
_START = Parameter("start", "time", f"first time of the range, inclusive ({_TIME})", required=True)
_END = Parameter("end", "time", f"last time of the range, inclusive ({_TIME})", required=True)
_SENSOR = Parameter("sensor", "string", "only rows of this sensor (repeatable)", repeatable=True)
_CELL = Parameter("cell", "string", "only rows of this cell (repeatable; the global mesh is '*')", repeatable=True)
_LIMIT = Parameter("limit", "integer", "at most this many rows (the first in archive order)")
_AT = Parameter("at", "time", f"the time whose state is asked for ({_TIME}); default: now")

#: The query parameters of each endpoint (by its route name).
PARAMETERS: dict[str, tuple[Parameter, ...]] = {
    "sensors": (),
    "sensor_state": (_AT,),
    "dataset": (_START, _END, _SENSOR, _CELL, _LIMIT),
    "events": (_START, _END),
    "mesh": (_START, _END, _CELL),
    "verify": (),
}


@dataclass(frozen=True)
class RangeQuery:
    """Rows of ``dataset`` with start <= t <= end (the texts as given; ``*_us`` as microseconds)."""

    dataset: str
    start: str
    end: str
    start_us: int
    end_us: int
    sensors: tuple[str, ...] | None = None
    cells: tuple[str, ...] | None = None
    limit: int | None = None


@dataclass(frozen=True)
class StateQuery:
    """The state of ``sensor`` in force at ``at`` (None: now)."""

    sensor: str
    at: str | None


def _checked(endpoint: str, params: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """``params`` with unknown names and repeated single parameters refused, required ones present."""
    known = {p.name: p for p in PARAMETERS[endpoint]}
    for name, values in params.items():
        if name not in known:
            takes = ", ".join(known) or "no parameters"
            raise ParameterError(name, f"unknown parameter (this endpoint takes {takes})")
        if len(values) > 1 and not known[name].repeatable:
            raise ParameterError(name, "given more than once")
        if any(not v.strip() for v in values):
            raise ParameterError(name, "empty value")
    for p in known.values():
        if p.required and p.name not in params:
            raise ParameterError(p.name, f"required ({p.description})")
    return {name: list(values) for name, values in params.items()}


def _time(name: str, text: str) -> int:
    try:
        return as_micros(text)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ParameterError(name, f"cannot read {text!r} as a time ({_TIME}): {exc}") from None


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ParameterError("limit", f"not a whole number: {text!r}") from None
    if value < 1:
        raise ParameterError("limit", f"must be at least 1, got {value}")
    return value


def range_query(endpoint: str, dataset: str, params: Mapping[str, Sequence[str]]) -> RangeQuery:
    """The range query of ``endpoint`` (``dataset``, ``events`` or ``mesh``) on ``dataset``.

    >>> q = range_query("dataset", "events", {"start": ["0"], "end": ["1970-01-01T00:00:02Z"], "sensor": ["a", "b"]})
    >>> q.start_us, q.end_us, q.sensors
    (0, 2000000, ('a', 'b'))
    >>> range_query("events", "events", {"start": ["1"], "end": ["0"]})
    Traceback (most recent call last):
    ...
    connectors.api.queries.ParameterError: start: 1 is after end (0)
    """
    checked = _checked(endpoint, params)
    start, end = checked["start"][0], checked["end"][0]
    start_us, end_us = _time("start", start), _time("end", end)
    if start_us > end_us:
        raise ParameterError("start", f"{start} is after end ({end})")
    sensors, cells = checked.get("sensor"), checked.get("cell")
    limit = _limit(checked["limit"][0]) if "limit" in checked else None
    return RangeQuery(dataset, start, end, start_us, end_us, None if sensors is None else tuple(sensors),
                      None if cells is None else tuple(cells), limit)


def state_query(sensor: str, params: Mapping[str, Sequence[str]]) -> StateQuery:
    """The state query of ``sensor`` (``at`` checked to be a time)."""
    checked = _checked("sensor_state", params)
    at = checked.get("at", [None])[0]
    if at is not None:
        _time("at", at)
    return StateQuery(sensor, at)
