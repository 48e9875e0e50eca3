"""The OpenAPI 3.1 description of the API, served at ``/openapi.json``.

Built from the endpoints' parameter lists (:data:`connectors.api.queries.PARAMETERS`),
the ones the server checks requests against, so the two cannot drift apart.
"""

from __future__ import annotations

from typing import Any

from connectors.api.queries import PARAMETERS, Parameter
from schemas.datasets import DATASETS

__all__ = ["openapi_document"]

_ARROW = "application/vnd.apache.arrow.stream"
_TYPES = {"time": {"type": ["string", "number"], "examples": ["2025-01-01T00:00:00Z", 1735689600]},
          "string": {"type": "string"}, "integer": {"type": "integer", "minimum": 1}}

#: path -> (route name, summary, path parameters, answers in Arrow too)
_PATHS: dict[str, tuple[str, str, tuple[Parameter, ...], bool]] = {
    "/v1/sensors": ("sensors", "Every sensor with its newest coherence-history row (its last state)", (), True),
    "/v1/sensors/{sensor}/state": (
        "sensor_state", "A sensor's state in force at a time (as `becomingone memory reconstruct`)",
        (Parameter("sensor", "string", "sensor id", required=True),), False),
    "/v1/datasets/{dataset}": (
        "dataset", "Rows of one archive dataset in a time range (as `becomingone memory retrieve`)",
        (Parameter("dataset", "string", f"one of {', '.join(DATASETS)}", required=True),), True),
    "/v1/events": ("events", "Collapse, dissipate and mesh transitions in a time range", (), True),
    "/v1/mesh": ("mesh", "Mesh order-parameter rows (mesh_sync) in a time range", (), True),
    "/v1/verify": ("verify", "Every dataset checked against its manifest (as `becomingone memory verify`)", (),
                   False),
}


def _parameter(p: Parameter, where: str) -> dict[str, Any]:
    schema: dict[str, Any] = dict(_TYPES[p.kind])
    if p.repeatable:
        schema = {"type": "array", "items": schema}
    out = {"name": p.name, "in": where, "required": p.required or where == "path", "description": p.description,
           "schema": schema}
    if p.repeatable:
        out.update({"style": "form", "explode": True})
    return out


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _operation(name: str, summary: str, path_params: tuple[Parameter, ...], arrow: bool) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": {"type": "object"}}}
    if arrow:
        content[_ARROW] = {"schema": {"type": "string", "format": "binary"}}
    responses: dict[str, Any] = {"200": {"description": "the answer", "content": content},
                                 "400": _error("a bad parameter, named in `parameter`")}
    if name in ("dataset", "sensor_state"):
        responses["404"] = _error("an unknown dataset, or no archived state of the sensor")
    if name in ("dataset", "events", "mesh"):
        responses["413"] = _error("the range's files hold more rows than the server's api.max_scan_rows")
    responses["500"] = _error("a damaged archive (run `becomingone memory verify`)")
    return {"get": {"operationId": name, "summary": summary,
                    "parameters": [_parameter(p, "path") for p in path_params]
                    + [_parameter(p, "query") for p in PARAMETERS[name]],
                    "responses": responses}}


def openapi_document() -> dict[str, Any]:
    """The OpenAPI description (a JSON-ready dict)."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "BecomingONE archive API", "version": "1",
                 "description": "Read-only queries over a BecomingONE archive. JSON by default; the table "
                 f"endpoints answer an Arrow IPC stream when asked with `Accept: {_ARROW}`. Times are epoch "
                 "seconds or ISO-8601 with a zone; ranges include both ends."},
        "paths": {path: _operation(*spec) for path, spec in _PATHS.items()},
        "components": {"schemas": {"Error": {"type": "object", "required": ["error", "parameter"], "properties": {
            "error": {"type": "string"}, "parameter": {"type": ["string", "null"]},
            "hint": {"type": "string"}}}}},
    }
