"""The JSON form of archive rows: what ``memory retrieve --format json``, ``memory reconstruct
--format json`` and the HTTP API write.

Times are ISO-8601 UTC text ending in ``Z`` (microseconds when not whole
seconds), NaN and infinities are ``null`` (JSON has neither), lists stay lists.
"""

from __future__ import annotations

import datetime as _dt
import math
from typing import Any

import pyarrow as pa

__all__ = ["finite", "iso_time", "rows_as_json"]

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


def iso_time(value: int | _dt.datetime) -> str:
    """Microseconds since the epoch (or an aware datetime) as ISO-8601 UTC text ending in ``Z``.

    >>> iso_time(1735689601500000)
    '2025-01-01T00:00:01.500000Z'
    """
    if not isinstance(value, _dt.datetime):
        value = _EPOCH + _dt.timedelta(microseconds=int(value))
    return value.astimezone(_dt.timezone.utc).isoformat().replace("+00:00", "Z")


def _json_value(value: Any) -> Any:
    if isinstance(value, _dt.datetime):
        return iso_time(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN or infinity
    return value


def rows_as_json(table: pa.Table) -> list[dict[str, Any]]:
    """The rows of ``table`` as JSON-ready dicts: times as ISO-8601 UTC text, NaN as null, lists as lists.

    >>> rows_as_json(pa.table({"t": pa.array([0], pa.timestamp("us", tz="UTC")), "x": [float("nan")]}))
    [{'t': '1970-01-01T00:00:00Z', 'x': None}]
    """
    return [{k: ([_json_value(x) for x in v] if isinstance(v, list) else _json_value(v)) for k, v in row.items()}
            for row in table.to_pylist()]


def finite(value: Any) -> Any:
    """``value`` (nested dicts) with NaN and infinities as None, as JSON has them."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    return _json_value(value)
