"""Validation of a raw mapping, with every problem collected across sections."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import Field, TypeAdapter, ValidationError

from schemas.config.errors import ConfigError
from schemas.config.model import Config
from schemas.config.rules import _rule_problems
from schemas.config.translate import _pydantic_problems

_SECTION_ADAPTERS: dict[str, TypeAdapter[Any]] = {}


def _section_adapter(name: str) -> TypeAdapter[Any]:
    if name not in _SECTION_ADAPTERS:
        field = Config.model_fields[name]
        annotation = field.annotation
        if field.discriminator:
            annotation = Annotated[annotation, Field(discriminator=field.discriminator)]
        _SECTION_ADAPTERS[name] = TypeAdapter(annotation)
    return _SECTION_ADAPTERS[name]


def _validate(raw: Mapping[str, Any], source: str, origins: Mapping[str, str]) -> Config:
    # A section left empty in YAML (`kairos:` with every key commented out)
    # is null: read it as "all defaults".  `kafka: null` keeps its meaning.
    raw = {k: v for k, v in raw.items() if v is not None or k == "kafka" or k not in Config.model_fields}
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        problems, rules_ran = _pydantic_problems(exc)
    # pydantic skips the cross-field rules when any field failed; run them on
    # the keys that are valid so that every problem shows in one report.
    if not rules_ran:
        failed = frozenset(path for path, _ in problems)
        sections = _salvage_sections(raw, failed)
        seen = {text for _, text in problems}
        problems.extend(p for p in _rule_problems(sections, failed) if p[1] not in seen)
    raise ConfigError([_with_origin(path, text, origins) for path, text in problems], source)


def _salvage_sections(raw: Mapping[str, Any], failed: frozenset[str]) -> dict[str, Any]:
    """Each section validated without its failing keys (those fall back to defaults).

    Rules reading a failing key are skipped by :func:`_blocked`, so the
    defaults only stand in for keys that no running rule looks at.
    """
    sections: dict[str, Any] = {}
    for name, field in Config.model_fields.items():
        if name not in raw:
            sections[name] = field.get_default(call_default_factory=True)
            continue
        value = raw[name]
        bad = [p[len(name):] for p in failed if p == name or p.startswith((name + ".", name + "["))]
        if "" in bad:
            continue  # the section itself is unusable
        if bad:
            if name == "kafka" or not isinstance(value, Mapping):
                continue
            drop = {re.split(r"[.\[]", rest[1:])[0] for rest in bad if rest.startswith(".")}
            value = {k: v for k, v in value.items() if k not in drop}
        try:
            sections[name] = _section_adapter(name).validate_python(value)
        except ValidationError:
            continue
    return sections


def _with_origin(path: str, text: str, origins: Mapping[str, str]) -> str:
    """Name the environment variable that set a key (or one of its parents)."""
    probe = path
    while probe:
        if probe in origins:
            return f"{text} (set by {origins[probe]})"
        probe = probe.rpartition(".")[0]
    return text


def parse_config(data: Mapping[str, Any], source: str = "<mapping>") -> Config:
    """Validate an in-memory config mapping (no file, no environment).

    Raises:
        ConfigError: listing every problem.
    """
    if not isinstance(data, Mapping):
        raise ConfigError([f"the top level must be a mapping of sections, not {type(data).__name__}"], source)
    return _validate(data, source, {})
