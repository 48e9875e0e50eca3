"""The log lines of ``becomingone run`` and of the flow under ``python -m bytewax.run``: the config's ``logging``.

``logging.format: structured`` writes one JSON object per line on stderr::

    {"time": "2026-12-05T18:02:11.532Z", "level": "INFO", "logger": "becomingone.flow",
     "message": "...", "flow": "becomingone", "worker": 0, "step": "resonate"}

(on one line) with ``flow``, ``worker`` and ``step`` where known
(:mod:`flows.log_context`), the record's own facts (``extra={"fields": {...}}``,
the startup line's ``startup``) and, for a record with an exception, ``exception``:
the traceback as one string.  ``json.dumps`` escapes line breaks, control
characters and every non-ASCII character (``\\u2028`` and ``\\x85`` break
lines for some readers), so no message, however hostile its sensor ids, can
split a line or forge another record.

``logging.format: text`` keeps the readable lines ``becomingone run: message``.

``logging.level`` is the level of the project's loggers (``becomingone.*``,
librdkafka's lines among them); other libraries log their warnings and
errors, in the same format.  Python warnings go through logging too.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any, TextIO

from flows.log_context import FlowContext
from schemas.config import LoggingSection

__all__ = ["StructuredFormatter", "configure_logging", "log_format", "log_uncaught_exceptions"]

#: Fields of a structured line from the flow's context, written when known.
CONTEXT_FIELDS = ("flow", "worker", "step")
#: Libraries other than this project log at this level and above.
LIBRARY_LEVEL = logging.WARNING
#: Carriage return and "erase to the end of the line" (ANSI): a text line at a terminal replaces the progress line.
TERMINAL_LINE_CLEAR = "\r\x1b[K"


class StructuredFormatter(logging.Formatter):
    """One JSON object per record, on one line: time (ISO-8601 UTC), level, logger, message, context, exception."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        for name, value in (getattr(record, "fields", None) or {}).items():
            line.setdefault(name, value)  # a record's own facts (``extra={"fields": {...}}``), never over the above
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=True, default=str)


def _utc(created: float) -> str:
    """``created`` (epoch seconds) as ISO-8601 UTC with milliseconds: ``2026-12-05T18:02:11.532Z``."""
    return datetime.fromtimestamp(created, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def log_format(section: LoggingSection, stream: TextIO, *, at_terminal_as_text: bool) -> str:
    """The format lines take: the config's, except ``text`` for a person at a terminal when asked.

    ``becomingone run`` passes ``at_terminal_as_text=True``: the embedded default says
    ``structured`` (what a log collector wants), but a person who starts a run at a terminal
    reads it, beside the live progress line.  Redirected or piped, and always under
    ``python -m bytewax.run``, the config's format holds.
    """
    if at_terminal_as_text and section.format == "structured" and _is_terminal(stream):
        return "text"
    return section.format


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream
        return False


def configure_logging(section: LoggingSection | None, prefix: str, *, stream: TextIO | None = None,
                      format: str | None = None, level: int | str | None = None) -> logging.Handler:
    """Send the process's log lines to ``stream`` (default stderr) in ``format`` (default the section's).

    Args:
        section: the config's ``logging`` section (None: text lines at ``level``).
        prefix: what text lines start with (``becomingone run``).
        format: ``structured`` or ``text``; default ``section.format``.
        level: the project's level; default ``section.level``.

    Returns:
        The handler, installed on the root logger in place of any earlier one.
    """
    stream = sys.stderr if stream is None else stream
    format = format or (section.format if section is not None else "text")
    level = level if level is not None else (section.level if section is not None else logging.INFO)
    handler = logging.StreamHandler(stream)
    handler.addFilter(FlowContext())
    if format == "structured":
        handler.setFormatter(StructuredFormatter())
    else:
        # At a terminal a line first clears the live progress line it would otherwise be appended to.
        clear = TERMINAL_LINE_CLEAR if _is_terminal(stream) else ""
        handler.setFormatter(logging.Formatter(f"{clear}{prefix}: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LIBRARY_LEVEL)
    ours = logging.getLogger("becomingone")
    ours.handlers[:] = []
    ours.setLevel(level)
    ours.propagate = True
    logging.captureWarnings(True)
    return handler


def log_uncaught_exceptions() -> None:
    """An exception nothing caught ends the process as one CRITICAL log line (with its traceback as
    the ``exception`` field in the structured format), not as a bare traceback on stderr."""

    def log_it(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
        if issubclass(kind, KeyboardInterrupt):
            sys.__excepthook__(kind, exc, tb)
            return
        logging.getLogger("becomingone").critical("stopped by an unexpected error: %s: %s", kind.__name__, exc,
                                                  exc_info=(kind, exc, tb))

    sys.excepthook = log_it
