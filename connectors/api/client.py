"""A Python client of ``becomingone serve`` (standard library and pyarrow only).

Each call mirrors an endpoint: the table endpoints return ``pyarrow.Table``
(asked as an Arrow IPC stream, so types are the archive's: times are
``timestamp[us, UTC]``), the others plain objects decoded from JSON.  An
answer other than 200 raises :class:`ApiError` with the server's message and
the parameter it names.

>>> client = ArchiveClient("http://127.0.0.1:9110")                      # doctest: +SKIP
>>> client.dataset("coherence_history", "2025-01-01T00:00:00Z", "2025-01-01T00:01:00Z", sensors=["a"])  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as _dt
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from typing import Any

import pyarrow as pa

__all__ = ["ApiError", "ArchiveClient"]

_ARROW = "application/vnd.apache.arrow.stream"
Time = str | int | float | _dt.datetime


class ApiError(Exception):
    """An answer other than 200: ``status``, the server's ``message`` and the ``parameter`` it names."""

    def __init__(self, status: int, message: str, parameter: str | None = None, hint: str | None = None) -> None:
        super().__init__(f"{status}: {message}" + (f" ({hint})" if hint else ""))
        self.status, self.message, self.parameter, self.hint = status, message, parameter, hint


def _time(value: Time) -> str:
    """A time as the API reads it: ISO-8601 text as given, epoch seconds, or an aware datetime."""
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            raise ValueError(f"time {value.isoformat()} has no zone; give one (e.g. UTC)")
        return value.isoformat()
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise TypeError(f"a time is ISO-8601 text, epoch seconds or an aware datetime, not {value!r}")
    return value if isinstance(value, str) else repr(value)


class ArchiveClient:
    """The API at ``base_url`` (``http://host:port`` or ``https://...``).

    Args:
        base_url: the server's address, as ``becomingone serve`` prints it.
        context: the TLS context for ``https`` (e.g. ``ssl.create_default_context(cafile=...)``
            with ``load_cert_chain`` under mutual TLS); None: the system's defaults.
        timeout: seconds to wait for an answer.
    """

    def __init__(self, base_url: str, *, context: ssl.SSLContext | None = None, timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.context = context
        self.timeout = timeout

    def sensors(self) -> pa.Table:
        """``GET /v1/sensors``: each sensor's newest coherence-history row."""
        return self._table("/v1/sensors", [])

    def state(self, sensor: str, at: Time | None = None) -> dict[str, Any]:
        """``GET /v1/sensors/{sensor}/state``: the state in force at ``at`` (None: now)."""
        params = [] if at is None else [("at", _time(at))]
        return self._json(f"/v1/sensors/{urllib.parse.quote(sensor, safe='')}/state", params)

    def dataset(self, dataset: str, start: Time, end: Time, *, sensors: Iterable[str] | None = None,
                cells: Iterable[str] | None = None, limit: int | None = None) -> pa.Table:
        """``GET /v1/datasets/{dataset}``: its rows with start <= t <= end."""
        params = [("start", _time(start)), ("end", _time(end))]
        params += [("sensor", s) for s in sensors or ()] + [("cell", c) for c in cells or ()]
        params += [] if limit is None else [("limit", str(limit))]
        return self._table(f"/v1/datasets/{urllib.parse.quote(dataset, safe='')}", params)

    def events(self, start: Time, end: Time) -> pa.Table:
        """``GET /v1/events``: collapse, dissipate and mesh transitions with start <= t <= end."""
        return self._table("/v1/events", [("start", _time(start)), ("end", _time(end))])

    def mesh(self, start: Time, end: Time, *, cells: Iterable[str] | None = None) -> pa.Table:
        """``GET /v1/mesh``: ``mesh_sync`` rows with start <= t <= end (and ``cell`` in ``cells``)."""
        params = [("start", _time(start)), ("end", _time(end))] + [("cell", c) for c in cells or ()]
        return self._table("/v1/mesh", params)

    def verify(self) -> dict[str, Any]:
        """``GET /v1/verify``: ``{"ok": ..., "datasets": {name: {"ok", "problems", "notes"}}}``."""
        return self._json("/v1/verify", [])

    def openapi(self) -> dict[str, Any]:
        """``GET /openapi.json``: the OpenAPI description."""
        return self._json("/openapi.json", [])

    def _table(self, path: str, params: list[tuple[str, str]]) -> pa.Table:
        return pa.ipc.open_stream(self._get(path, params, _ARROW)).read_all()

    def _json(self, path: str, params: list[tuple[str, str]]) -> dict[str, Any]:
        return json.loads(self._get(path, params, "application/json"))

    def _get(self, path: str, params: list[tuple[str, str]], accept: str) -> bytes:
        url = self.base_url + path + (f"?{urllib.parse.urlencode(params)}" if params else "")
        request = urllib.request.Request(url, headers={"Accept": accept})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self.context) as answer:
                return answer.read()
        except urllib.error.HTTPError as exc:
            try:
                body = json.loads(exc.read())
            except ValueError:
                body = {"error": exc.reason}
            raise ApiError(exc.code, str(body.get("error")), body.get("parameter"), body.get("hint")) from None
