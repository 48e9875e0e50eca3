"""Text for a terminal or a plot: data (sensor ids, cells) shown, never obeyed.

A sensor id is whatever a producer sent.  Written raw to a terminal, an
``ESC [31m`` recolours it, a ``\\r`` overwrites the line, a ``\\n`` forges a
row; the Unicode direction overrides reorder what follows.  :func:`printable`
shows each such character as a visible escape (``\\x1b``, ``\\r``, ``\\n``,
``\\u202e``) and leaves all other text as it is.  Machine formats (CSV, JSON,
Arrow, the topics, the archive) keep the exact ids; only text meant for
people goes through here.

>>> printable("pmu-7"), printable("red\\x1b[31m\\r\\n")
('pmu-7', 'red\\\\x1b[31m\\\\r\\\\n')
"""

from __future__ import annotations

import re

__all__ = ["printable"]

# C0 controls, DEL, C1 controls, the line and paragraph separators, and the
# invisible marks and embeddings that change the direction of text.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _SHORT.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def printable(text: str) -> str:
    """``text`` with every control and direction-changing character as a visible escape."""
    return _UNSAFE.sub(_escape, text)
