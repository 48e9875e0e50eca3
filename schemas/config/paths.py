"""Key paths: walking the model's annotations.

Pydantic error locations and environment variable names both become dotted
key paths (``source.sensors[2].freq_hz``) by descending the same annotations.
"""

from __future__ import annotations

import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, RootModel

from schemas.config.model import Config
from schemas.config.values import _Section

def _shape(annotation: Any) -> tuple[str, Any]:
    """Classify an annotation: model, union (tag -> model), mapping, sequence or leaf."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _shape(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return _shape(members[0])
        if all(isinstance(m, type) and issubclass(m, _Section) and "kind" in m.model_fields for m in members):
            return "union", {get_args(m.model_fields["kind"].annotation)[0]: m for m in members}
        return "leaf", annotation
    if isinstance(annotation, type) and issubclass(annotation, RootModel):
        return "mapping", annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "model", annotation
    if origin is tuple:
        return "sequence", get_args(annotation)[0]
    return "leaf", annotation


def _join(parts: list[str]) -> str:
    out = ""
    for part in parts:
        out += part if part.startswith("[") or not out else "." + part
    return out


def _locate(loc: tuple[Any, ...]) -> tuple[str, type[BaseModel] | None]:
    """A pydantic error location as a dotted key path, and the model owning its last key."""
    shape, target = "model", Config
    parts: list[str] = []
    owner: type[BaseModel] | None = None
    for item in loc:
        if shape == "union" and item in target:
            shape, target = "model", target[item]  # the discriminator tag, not a key
            continue
        owner = target if shape == "model" else None
        parts.append(f"[{item}]" if isinstance(item, int) else str(item))
        if shape == "model" and item in target.model_fields:
            shape, target = _shape(target.model_fields[item].annotation)
        elif shape == "sequence" and isinstance(item, int):
            shape, target = _shape(target)
        else:
            shape, target = "leaf", None
    return _join(parts), owner
