"""The API's Starlette application: the archive's queries over HTTP (SPEC section 6).

Every answer comes from :class:`connectors.memory.TemporalMemory`, the code
``becomingone memory retrieve|reconstruct|verify`` runs, so the API and the
commands give the same rows and values.  A request gets its own
``TemporalMemory`` (its ``files_opened`` counts that request's files) and runs
under :meth:`~connectors.memory.TemporalMemory.consistently`, so a compaction
between listing and reading is answered from the new manifest.

Answers are JSON, or an Arrow IPC stream for the table endpoints when the
request's ``Accept`` names ``application/vnd.apache.arrow.stream``.  Errors
are JSON ``{"error": ..., "parameter": ...}``: 400 a bad parameter (named),
404 an unknown dataset or sensor, 413 a query whose files hold more rows than
``max_scan_rows`` (known from the manifests before a file is read), 500 a
damaged archive (named, as the commands name it).
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from connectors.api.openapi import openapi_document
from connectors.api.queries import ParameterError, RangeQuery, range_query, state_query
from connectors.archive import ArchiveError
from connectors.archive.manifest_lines import manifest_notes
from connectors.memory import SensorStates, TemporalMemory
from connectors.row_json import iso_time, rows_as_json
from schemas.datasets import DATASETS

__all__ = ["ARROW_STREAM", "ApiSettings", "create_app"]

#: The media type of an Arrow IPC stream.
ARROW_STREAM = "application/vnd.apache.arrow.stream"
_CHUNK_ROWS = 4096  # rows turned into JSON at a time


@dataclass
class ApiSettings:
    """What the application serves: the archive ``root``, the manifests' ``signing_key``
    (for ``/v1/verify``) and the scan bound; ``sensor_states`` is ``/v1/sensors``' cache."""

    root: Path
    signing_key: bytes | None = None
    max_scan_rows: int = 5_000_000
    sensor_states: SensorStates = field(default_factory=SensorStates)


class _Refused(Exception):
    """An answer other than 200: its status, message and the parameter it names."""

    def __init__(self, status: int, message: str, parameter: str | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.parameter, self.hint = status, message, parameter, hint


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body, allow_nan=False), status, headers, media_type="application/json")


def _json_chunks(head: dict[str, Any], key: str, table: pa.Table) -> Iterator[bytes]:
    """``{**head, key: rows_as_json(table)}`` as JSON text, a few thousand rows at a time (the rows
    never all exist as Python objects at once)."""
    text = json.dumps(head, allow_nan=False)
    yield f'{text[:-1]}{", " if head else ""}"{key}": ['.encode()
    for lo in range(0, table.num_rows, _CHUNK_ROWS):
        rows = ", ".join(json.dumps(row, allow_nan=False) for row in rows_as_json(table.slice(lo, _CHUNK_ROWS)))
        yield f'{", " if lo else ""}{rows}'.encode()
    yield b"]}"


def _json_rows(head: dict[str, Any], key: str, table: pa.Table, headers: dict[str, str] | None = None) -> Response:
    return StreamingResponse(_json_chunks(head, key, table), 200, headers, media_type="application/json")


def _arrow_chunks(table: pa.Table) -> Iterator[bytes]:
    """``table`` as an Arrow IPC stream, a record batch of at most 64 Ki rows at a time."""
    buffer = io.BytesIO()
    with pa.ipc.new_stream(pa.PythonFile(buffer, mode="w"), table.schema) as writer:
        for batch in table.to_batches(max_chunksize=1 << 16):
            writer.write_batch(batch)
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()  # the schema of an empty table, and the end-of-stream marker


def _arrow(table: pa.Table, headers: dict[str, str] | None = None) -> Response:
    return StreamingResponse(_arrow_chunks(table), 200, headers, media_type=ARROW_STREAM)


def _wants_arrow(request: Request) -> bool:
    return ARROW_STREAM in request.headers.get("accept", "")


def _params(request: Request) -> dict[str, list[str]]:
    return {name: request.query_params.getlist(name) for name in request.query_params.keys()}


def _no_parameters(request: Request) -> None:
    for name in request.query_params.keys():
        raise ParameterError(name, "unknown parameter (this endpoint takes no parameters)")


def _memory(settings: ApiSettings) -> TemporalMemory:
    try:
        return TemporalMemory(settings.root, sensor_states=settings.sensor_states)
    except FileNotFoundError as exc:
        raise _Refused(500, str(exc)) from None


def _range_rows(settings: ApiSettings, query: RangeQuery) -> tuple[pa.Table, dict[str, Any]]:
    """The rows of ``query`` (at most ``limit``) and the query's stats, or 413 over the scan bound."""
    memory = _memory(settings)

    def run() -> tuple[pa.Table, int]:
        memory.files_opened = 0
        planned = memory.rows_to_scan(query.dataset, query.start_us, query.end_us)
        if planned > settings.max_scan_rows:
            raise _Refused(413, f"the range holds {planned:,} rows of {query.dataset} in its hour partitions, more "
                           f"than this server scans for one query ({settings.max_scan_rows:,})",
                           hint="ask for a shorter range (start, end), or page through it one range at a time; "
                           "the bound is api.max_scan_rows (becomingone serve --max-scan-rows)")
        table = memory.retrieve(query.start, query.end, sensors=query.sensors, dataset=query.dataset,
                                cells=query.cells)
        return table, planned

    table, planned = memory.consistently(run)
    truncated = query.limit is not None and table.num_rows > query.limit
    if truncated:
        table = table.slice(0, query.limit)
    stats = {"dataset": query.dataset, "start": iso_time(query.start_us), "end": iso_time(query.end_us),
             "count": table.num_rows, "truncated": truncated, "rows_scanned": planned,
             "files_opened": memory.files_opened}
    return table, stats


def _stat_headers(stats: dict[str, Any]) -> dict[str, str]:
    return {"X-Rows-Scanned": str(stats["rows_scanned"]), "X-Files-Opened": str(stats["files_opened"]),
            "X-Truncated": "true" if stats["truncated"] else "false"}


def _table_answer(request: Request, settings: ApiSettings, query: RangeQuery) -> Response:
    table, stats = _range_rows(settings, query)
    if _wants_arrow(request):
        return _arrow(table, _stat_headers(stats))
    return _json_rows(stats, "rows", table, _stat_headers(stats))


def _dataset(request: Request) -> Response:
    settings: ApiSettings = request.app.state.settings
    name = request.path_params["dataset"]
    if name not in DATASETS:
        raise _Refused(404, f"unknown dataset {name!r}; the archive has {', '.join(DATASETS)}", "dataset")
    return _table_answer(request, settings, range_query("dataset", name, _params(request)))


def _events(request: Request) -> Response:
    return _table_answer(request, request.app.state.settings, range_query("events", "events", _params(request)))


def _mesh(request: Request) -> Response:
    return _table_answer(request, request.app.state.settings, range_query("mesh", "mesh_sync", _params(request)))


def _sensors(request: Request) -> Response:
    settings: ApiSettings = request.app.state.settings
    _no_parameters(request)
    memory = _memory(settings)
    table = memory.consistently(memory.last_states)
    if _wants_arrow(request):
        return _arrow(table)
    return _json_rows({"count": table.num_rows}, "sensors", table)


def _sensor_state(request: Request) -> Response:
    settings: ApiSettings = request.app.state.settings
    query = state_query(request.path_params["sensor"], _params(request))
    memory = _memory(settings)
    known = memory.consistently(memory.last_states)
    if known.num_rows and query.sensor not in set(known["sensor"].to_pylist()):
        # Never in the archive: answered from the cached sensors, not by a search through every hour.
        raise _Refused(404, f"no archived state of sensor {query.sensor!r}", "sensor")
    at = query.at if query.at is not None else iso_time(_now_us())
    state = memory.consistently(lambda: memory.reconstruct_coherence(at, query.sensor))
    if not state.found:
        raise _Refused(404, f"no archived state of sensor {query.sensor!r} at or before {iso_time(state.at_us)}",
                       "sensor")
    return _json(state.as_json())


def _now_us() -> int:
    return time.time_ns() // 1000


def _verify(request: Request) -> Response:
    settings: ApiSettings = request.app.state.settings
    _no_parameters(request)
    problems = _memory(settings).verify(settings.signing_key)
    datasets = {name: {"ok": not found, "problems": found,
                       "notes": [] if found else manifest_notes(settings.root / name, settings.signing_key)}
                for name, found in sorted(problems.items())}
    return _json({"ok": bool(datasets) and all(d["ok"] for d in datasets.values()), "datasets": datasets})


def _openapi(request: Request) -> Response:
    return _json(openapi_document())


def _refused(request: Request, exc: Exception) -> Response:
    if isinstance(exc, ParameterError):
        return _json({"error": str(exc), "parameter": exc.parameter}, 400)
    if isinstance(exc, ArchiveError):
        return _json({"error": str(exc), "parameter": None}, 500)
    if isinstance(exc, HTTPException):  # an unknown path (404) or a method other than GET (405)
        return _json({"error": exc.detail, "parameter": None}, exc.status_code, exc.headers)
    assert isinstance(exc, _Refused)
    body = {"error": exc.message, "parameter": exc.parameter}
    if exc.hint:
        body["hint"] = exc.hint
    return _json(body, exc.status)


ROUTES = (
    ("/v1/sensors", _sensors, "sensors"),
    ("/v1/sensors/{sensor:path}/state", _sensor_state, "sensor_state"),
    ("/v1/datasets/{dataset}", _dataset, "dataset"),
    ("/v1/events", _events, "events"),
    ("/v1/mesh", _mesh, "mesh"),
    ("/v1/verify", _verify, "verify"),
    ("/openapi.json", _openapi, "openapi"),
)


def create_app(root: str | os.PathLike[str], *, signing_key: bytes | None = None,
               max_scan_rows: int = 5_000_000) -> Starlette:
    """The API over the archive at ``root`` (read-only: every route is GET)."""
    if max_scan_rows < 1:
        raise ValueError(f"max_scan_rows must be at least 1, got {max_scan_rows}")
    app = Starlette(routes=[Route(path, endpoint, methods=["GET"], name=name) for path, endpoint, name in ROUTES],
                    exception_handlers={ParameterError: _refused, _Refused: _refused, ArchiveError: _refused,
                                        HTTPException: _refused})
    app.state.settings = ApiSettings(Path(root), signing_key, max_scan_rows)
    return app
