"""How config problems are told: the error carrying them, and values shown as written.

Every problem names the full key path and the reason; :class:`ConfigError`
carries all of a config's problems at once, one line each.
"""

from __future__ import annotations

import datetime as _dt
import difflib
from collections.abc import Iterable
from typing import Any

#: Shown in place of a secret (a Kafka password, a signing key put where its source belongs).
REDACTED = "<redacted>"


class ConfigError(ValueError):
    """Every problem of a config at once, one line each.

    Attributes:
        problems: one message per problem; each names the full key path (or
            the file, or the environment variable) and the reason.
        source: where the config came from (file path, environment, default).
    """

    def __init__(self, problems: Iterable[str], source: str | None = None) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        self.source = source
        n = len(self.problems)
        if source is not None and n > 1:
            text = f"{source}: {n} problems\n" + "\n".join(f"  {p}" for p in self.problems)
        elif source is not None and n == 1 and not self.problems[0].startswith(source):
            text = f"{source}: {self.problems[0]}"
        else:
            text = "\n".join(self.problems)
        super().__init__(text)


class _RuleViolations(ValueError):
    """Cross-field problems raised from inside pydantic validation."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("\n".join(text for _, text in problems))
        self.problems = problems


def _fmt(value: Any) -> str:
    """A config value as the user wrote it, short."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, _dt.datetime):
        return value.isoformat()
    if isinstance(value, (int, float)):
        return repr(value)
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _suggestion(word: str, candidates: Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""
