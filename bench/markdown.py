"""How the benchmark reports write numbers and tables (Markdown, also printed on stdout)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

__all__ = ["mib", "ms", "pct", "rate_text", "ratio", "replace_section", "si", "table"]


def si(x: float, unit: str = "") -> str:
    """3 significant figures with an SI prefix: 2.25 M, 143 k, 12.3."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}{' ' + unit if unit else ''}"
    exp3 = int(math.floor(math.log10(abs(x)) / 3))
    exp3 = max(-3, min(exp3, 3))
    prefix = {-3: "n", -2: "u", -1: "m", 0: "", 1: "k", 2: "M", 3: "G"}[exp3]
    scaled = x / 1000.0 ** exp3
    digits = 2 if abs(scaled) < 10 else (1 if abs(scaled) < 100 else 0)
    return f"{scaled:.{digits}f} {prefix}{unit}".rstrip()


def ratio(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}x"
    return f"{x:.3g}x"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], text_columns: Sequence[int] = (0,)) -> str:
    """A Markdown table; numbers right-aligned, the ``text_columns`` left-aligned."""
    align = ["---" if i in text_columns else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def mib(x: float) -> str:
    return f"{x / 2**20:,.0f} MiB"


def ms(x: float) -> str:
    return f"{x * 1e3:.1f} ms" if math.isfinite(x) else "n/a"


def pct(x: float) -> str:
    return f"{x:.0%}" if x >= 0.1 else f"{x:.1%}"


def rate_text(hz: int) -> str:
    return f"{hz // 1000} kHz" if hz >= 1000 else f"{hz} Hz"


def replace_section(text: str, section: str, titles: Sequence[str], before: str | None = None) -> str:
    r"""``text`` (a report) with its level-2 section titled one of ``titles`` replaced by ``section``;
    without one, ``section`` goes before the line ``before`` (when the report has it), else at the end.

    >>> replace_section("# R\n## A\nold\n## B\nb\n", "## A\nnew\n", ["A"])
    '# R\n## A\nnew\n\n## B\nb\n'
    >>> replace_section("# R\n## B\nb\n", "## A\nnew\n", ["A"], before="## B")
    '# R\n## A\nnew\n\n## B\nb\n'
    """
    pattern = re.compile(rf"^## (?:{'|'.join(re.escape(t) for t in titles)})\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        return pattern.sub(lambda _: section + "\n", text, count=1)
    if before is not None and (text.startswith(before) or "\n" + before in text):
        at = 0 if text.startswith(before) else text.index("\n" + before) + 1
        return text[:at] + section + "\n" + text[at:]
    return text.rstrip() + "\n\n" + section
