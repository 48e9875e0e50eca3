"""Error translation: pydantic's errors as the product's messages.

Each pydantic error becomes one line that names the full key path, the value
as the user wrote it and the reason in plain words
(``kairos.tau_scale (-1.0) must be greater than 0 seconds``); cross-field
problems raised from inside validation pass through as the rules wrote them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, get_args

from pydantic import ValidationError

from schemas.config.errors import REDACTED, _fmt, _RuleViolations, _suggestion
from schemas.config.model import Config
from schemas.config.paths import _locate
from schemas.config.seed_sections import BecomingOneSection
from schemas.config.stream_sections import _SOURCE_KINDS

_PLAIN_REASONS = {
    "missing": "required key is missing",
    "model_type": "must be a mapping of keys",
    "model_attributes_type": "must be a mapping of keys",
    "dict_type": "must be a mapping of keys",
    "tuple_type": "must be a list",
    "list_type": "must be a list",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "string_type": "must be a string",
    "finite_number": "must be a finite number",
}


def _too_short(err: Mapping[str, Any]) -> str:
    n = (err.get("ctx") or {}).get("min_length", 1)
    return f"must have at least {n} item{'s' if n != 1 else ''}"


def _pydantic_problems(exc: ValidationError) -> tuple[list[tuple[str, str]], bool]:
    """(path, message) per error, and whether the cross-field rules ran."""
    problems: list[tuple[str, str]] = []
    rules_ran = False
    for err in exc.errors(include_url=False):
        error = (err.get("ctx") or {}).get("error")
        if isinstance(error, _RuleViolations):
            problems.extend(error.problems)
            rules_ran = True
            continue
        path, owner = _locate(tuple(err["loc"]))
        kind = err["type"]
        if kind == "extra_forbidden":
            key = str(err["loc"][-1])
            if owner is BecomingOneSection and key in Config.model_fields:
                hint = f" (sections are top level here: move {key!r} out of 'becomingone')"
            elif owner in _SOURCE_KINDS.values() and key not in owner.model_fields and any(
                key in other.model_fields for other in _SOURCE_KINDS.values()
            ):
                kinds = [k for k, other in _SOURCE_KINDS.items() if key in other.model_fields]
                own = get_args(owner.model_fields["kind"].annotation)[0]
                hint = f" (a key of source.kind {kinds[0]!r}, but source.kind is {own!r})"
            else:
                hint = _suggestion(key, owner.model_fields if owner else ())
            problems.append((path, f"{path}: unknown key{hint}"))
            continue
        if kind == "missing":
            problems.append((path, f"{path}: required key is missing"))
            continue
        if kind in ("union_tag_invalid", "union_tag_not_found"):
            tags = (err.get("ctx") or {}).get("expected_tags") or "'synthetic', 'kafka', 'file'"
            if kind == "union_tag_invalid":
                tag = err["ctx"]["tag"]
                problems.append((f"{path}.kind", f"{path}.kind ({tag!r}) must be one of {tags}"))
            else:
                problems.append((f"{path}.kind", f"{path}.kind: required key is missing (one of {tags})"))
            continue
        if kind == "value_error" and error is not None:
            reason = str(error)
        elif kind == "literal_error":
            reason = f"must be one of {err['ctx']['expected']}"
        elif kind == "too_short":
            reason = _too_short(err)
        elif kind in _PLAIN_REASONS:
            reason = _PLAIN_REASONS[kind]
        else:
            reason = re.sub(r"^Input should (?:be )?", "must be ", err["msg"])
        if kind in ("model_type", "dict_type") and isinstance(err.get("input"), (list, tuple)) and owner:
            reason = "must be a mapping of keys, not a list"
        shown = _fmt(err.get("input"))
        if path.startswith("memory.signing_key") and not isinstance(err.get("input"), Mapping):
            # Perhaps the key itself, put where its source belongs: never echoed.
            shown = REDACTED
            if kind in ("model_type", "dict_type"):
                reason = "must be {env: NAME} or {file: PATH}; the key itself never goes in the config"
        problems.append((path, f"{path} ({shown}) {reason}"))
    return problems, rules_ran
