"""Loading: the YAML file (or the embedded default) and the environment overrides.

The environment layer stays hand-written rather than pydantic-settings, which
would change its messages: pydantic-settings passes unknown variables over in
silence, reads values as JSON rather than YAML and cannot add the
``(set by VAR)`` and ``did you mean`` parts that the tests hold byte for byte.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from schemas.config.errors import ConfigError, _suggestion
from schemas.config.model import Config
from schemas.config.paths import _join, _shape
from schemas.config.stream_sections import KAFKA_OWN_KEYS, SyntheticSource
from schemas.config.validation import _validate

#: Environment variable naming the config file when no path is given.
CONFIG_ENV = "BECOMINGONE_CONFIG"
#: Prefix of per-key overrides: ``BECOMINGONE__KAIROS__TAU_SCALE=2.0``.
ENV_PREFIX = "BECOMINGONE__"
#: A config (or an override's value) may expand into at most this many YAML
#: nodes, an alias counted at every use: alias bombs are refused before they grow.
MAX_CONFIG_NODES = 100_000

# --------------------------------------------------------------------------
# YAML.


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader that reports duplicate keys instead of keeping the last one."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self.duplicates: list[str] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                line = key_node.start_mark.line + 1
                if key_node.value in first_line:
                    self.duplicates.append(
                        f"duplicate key {key_node.value!r} at line {line} "
                        f"(first at line {first_line[key_node.value]})"
                    )
                else:
                    first_line[key_node.value] = line
        return super().construct_mapping(node, deep=deep)


def _bounded_data(loader: yaml.SafeLoader, limit: int = MAX_CONFIG_NODES) -> Any:
    """The document of ``loader``, built only once its aliases are known to expand into at most ``limit`` nodes.

    Raises:
        ValueError: the document expands beyond ``limit`` nodes, or an alias refers to a node containing it.
        RecursionError: nesting deeper than Python's recursion limit.
        yaml.YAMLError: not YAML.
    """
    root = loader.get_single_node()  # aliases are shared nodes here: composing does not expand them
    if root is None:
        return None
    sizes: dict[int, int] = {}  # node id -> nodes once expanded
    open_ids: set[int] = set()  # nodes whose children are being counted
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        children = node.value if isinstance(node, yaml.SequenceNode) else (
            [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else [])
        if children_done:
            open_ids.discard(key)
            sizes[key] = total = 1 + sum(sizes[id(child)] for child in children)
            if total > limit:
                raise ValueError(
                    f"expands into more than {limit:,} YAML nodes (aliases counted at every use); "
                    "a config has a few hundred"
                )
        elif key in open_ids:
            mark = node.start_mark
            raise ValueError(f"holds an alias to a node that contains it (line {mark.line + 1}, column {mark.column + 1})")
        elif key not in sizes:
            open_ids.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in children)
    return loader.construct_document(root)


def _parse_yaml(text: str, source: str) -> dict[str, Any]:
    loader = _ConfigLoader(text)
    try:
        data = _bounded_data(loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"invalid YAML{where}: {problem}"], source) from None
    except ValueError as exc:
        raise ConfigError([str(exc)], source) from None
    except RecursionError:
        raise ConfigError(["invalid YAML: nested too deeply"], source) from None
    finally:
        loader.dispose()
    if loader.duplicates:
        raise ConfigError(loader.duplicates, source)
    if data is None:  # an empty file (or only comments): every key at its default
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            [f"the top level must be a mapping of sections (kairos:, master:, ...), not a {type(data).__name__}"],
            source,
        )
    return data


def default_config_text() -> str:
    """The embedded default config (``schemas/default.yaml``) as text."""
    return resources.files("schemas").joinpath("default.yaml").read_text(encoding="utf-8")


def _read_file(path: str | os.PathLike[str]) -> str:
    name = os.fspath(path)
    try:
        return Path(name).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(["no such file"], name) from None
    except IsADirectoryError:
        raise ConfigError(["is a directory, not a config file"], name) from None
    except UnicodeDecodeError:
        raise ConfigError(["is not UTF-8 text"], name) from None
    except OSError as exc:
        raise ConfigError([exc.strerror or str(exc)], name) from None


# --------------------------------------------------------------------------
# Environment overrides.


def _env_target(parts: list[str], raw: Mapping[str, Any]) -> tuple[list[str], bool]:
    """Resolve lower-cased name parts to a key path.

    Returns:
        (key path, True when the value is a plain string and must not be YAML-parsed).

    Raises:
        ValueError: the parts do not name a config key.
    """
    shape, target = "model", Config
    path: list[str] = []
    node: Any = raw
    for i, part in enumerate(parts):
        here = _join(path) or "the top level"
        if shape == "union":
            kind = node.get("kind") if isinstance(node, Mapping) else None
            shape, target = "model", target.get(kind, SyntheticSource)
        if shape == "mapping":
            # librdkafka names use dots; environment names cannot, so '_' stands for '.'
            # (except in this project's own keys).
            if i != len(parts) - 1:
                raise ValueError(f"{_join(path)} settings have no sub-keys")
            return path + [part if part in KAFKA_OWN_KEYS else part.replace("_", ".")], True
        if shape != "model":
            raise ValueError(f"{here} is a value, not a section; set it as a whole")
        if part not in target.model_fields:
            raise ValueError(f"{_join(path + [part])} is not a config key{_suggestion(part, target.model_fields)}")
        path.append(part)
        node = node.get(part) if isinstance(node, Mapping) else None
        annotation = target.model_fields[part].annotation
        shape, target = _shape(annotation)
    return path, shape == "leaf" and target is str


def _env_overrides(
    raw: dict[str, Any], environ: Mapping[str, str]
) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """Apply ``BECOMINGONE__...`` variables to a copy of ``raw``.

    Returns:
        (new raw mapping, dotted key path -> variable name, problems)
    """
    raw = _deep_copy(raw)
    origins: dict[str, str] = {}
    problems: list[str] = []
    items = [(name, value) for name, value in environ.items() if name.upper().startswith(ENV_PREFIX)]
    # Shallow keys first, so `..._SOURCE__KIND` is applied before keys that depend on it.
    items.sort(key=lambda item: (item[0].count("__"), not item[0].upper().endswith("__KIND"), item[0].upper()))
    for name, value in items:
        parts = name[len(ENV_PREFIX):].lower().split("__")
        if not all(parts):
            problems.append(f"{name}: empty key between '__' separators")
            continue
        try:
            path, keep_text = _env_target(parts, raw)
        except ValueError as exc:
            problems.append(f"{name}: {exc}")
            continue
        if keep_text:
            parsed: Any = value
        else:
            try:
                parsed = _bounded_data(yaml.SafeLoader(value)) if value.strip() else None
            except yaml.YAMLError as exc:
                problems.append(f"{name}: value is not a YAML value ({getattr(exc, 'problem', exc)})")
                continue
            except ValueError as exc:
                problems.append(f"{name}: the value {exc}")
                continue
            except RecursionError:
                problems.append(f"{name}: the value is nested too deeply")
                continue
        if path == ["source", "kind"] and isinstance(raw.get("source"), dict) and raw["source"].get("kind") != parsed:
            # The file describes another kind of source: its keys do not apply.
            raw["source"] = {}
        node = raw
        for key in path[:-1]:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        node[path[-1]] = parsed
        origins[".".join(path)] = name
    return raw, origins, problems


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


# --------------------------------------------------------------------------
# The entry point.


def config_path(path: str | os.PathLike[str] | None = None,
                environ: Mapping[str, str] | None = None) -> str | None:
    """The file :func:`load_config` reads for ``path`` and ``environ``: ``path``, else
    ``$BECOMINGONE_CONFIG`` if set and not empty; None for the embedded default."""
    env = os.environ if environ is None else environ
    if path is None and env.get(CONFIG_ENV):
        path = env[CONFIG_ENV]
    return None if path is None else os.fspath(path)


def config_overrides(environ: Mapping[str, str] | None = None) -> list[str]:
    """The names (never the values) of the ``BECOMINGONE__...`` variables that override keys."""
    env = os.environ if environ is None else environ
    return sorted(name for name in env if name.upper().startswith(ENV_PREFIX))


def load_config(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Load, override and validate the config.

    Args:
        path: YAML file.  None: ``$BECOMINGONE_CONFIG`` if set and not empty,
            else the embedded default (``schemas/default.yaml``).
        environ: environment to read ``BECOMINGONE_CONFIG`` and the
            ``BECOMINGONE__SECTION__KEY[__SUBKEY]=value`` overrides from
            (default ``os.environ``).  Names are case-insensitive, values are
            YAML (``true``, ``2.5``, ``[1, 2]``); string keys take the text as
            is; in ``kafka`` an ``_`` in the key stands for ``.``
            (``BECOMINGONE__KAFKA__SASL_PASSWORD`` sets ``sasl.password``).

    Raises:
        ConfigError: every problem found, one line each.
    """
    env = os.environ if environ is None else environ
    path = config_path(path, env)
    if path is None:
        source, text = "embedded default config", default_config_text()
    else:
        source, text = os.fspath(path), _read_file(path)
    raw = _parse_yaml(text, source)
    raw, origins, env_problems = _env_overrides(raw, env)
    if env_problems:
        # Validate anyway, so that problems in the file show in the same report.
        try:
            _validate(raw, source, origins)
        except ConfigError as exc:
            env_problems.extend(exc.problems)
        raise ConfigError(env_problems, source)
    return _validate(raw, source, origins)
