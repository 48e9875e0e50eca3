"""Manifest lines: their text, their hash chain and their optional HMAC (SPEC section 5).

One line per committed file of a dataset, JSON without spaces, keys in this
order::

    {"file":"date=2025-01-01/hour=00/part-00000000.arrow","rows":3,"sha256":"<hex>","prev":"<hex>"}

``prev`` is the SHA-256 of the previous line's text (64 zeros on the first
line).  Two keys are optional:

* ``"rerooted":true`` on the first line of a manifest that
  ``becomingone memory verify --repair`` rebuilt from the files: the chain
  starts there, so an anchor or a copy of the old chain no longer matches it.
* ``"hmac":"<hex>"`` (last) when ``memory.signing_key`` is set: the
  HMAC-SHA256, with that key, of the line's text without its ``hmac`` key
  (the line as it would be written without a key).  Anyone who can write the
  archive can recompute ``sha256`` and ``prev``; without the key they
  cannot recompute ``hmac``.

>>> key = b"0123456789abcdef"
>>> line = manifest_line("part-00000000.arrow", 3, "a" * 64, GENESIS, key=key)
>>> entry = parse_line(line)
>>> signature_ok(entry, key), signature_ok(entry, b"another key of 16+")
(True, False)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["GENESIS", "check_rel", "line_hash", "manifest_line", "manifest_notes", "manifest_path", "parse_line",
           "signature_ok", "unsigned_text"]

#: ``prev`` of the first manifest line.
GENESIS = "0" * 64
_REQUIRED = ("file", "rows", "sha256", "prev")
_OPTIONAL = ("rerooted", "hmac")
_HEX = frozenset("0123456789abcdef")


def line_hash(text: str) -> str:
    """SHA-256 (hex) of a manifest line's text without its newline: the next line's ``prev``."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def check_rel(rel: object) -> str:
    """``rel`` if it is a relative path inside a dataset directory, else ValueError."""
    if not isinstance(rel, str) or not rel or rel.startswith("/") or ".." in rel.split("/"):
        raise ValueError(f"bad file {rel!r} (must be a path inside the dataset directory)")
    return rel


def unsigned_text(file: str, rows: int, sha256: str, prev: str, *, rerooted: bool = False) -> str:
    """The line's text without an ``hmac`` key: what is written without a key, and what the HMAC covers."""
    entry: dict[str, Any] = {"file": file, "rows": rows, "sha256": sha256, "prev": prev}
    if rerooted:
        entry["rerooted"] = True
    return json.dumps(entry, separators=(",", ":"))


def _hmac(text: str, key: bytes) -> str:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()


def manifest_line(file: str, rows: int, sha256: str, prev: str, *, rerooted: bool = False,
                  key: bytes | None = None) -> str:
    """A manifest line's text (without newline), signed with ``key`` when one is given."""
    text = unsigned_text(file, rows, sha256, prev, rerooted=rerooted)
    return text if key is None else f'{text[:-1]},"hmac":"{_hmac(text, key)}"}}'


def parse_line(text: str) -> dict[str, Any]:
    """One manifest line as a dict, or ValueError saying what is wrong with it."""
    try:
        entry = json.loads(text)
    except ValueError:
        raise ValueError("not JSON") from None
    if not isinstance(entry, dict) or not set(_REQUIRED) <= set(entry) <= {*_REQUIRED, *_OPTIONAL}:
        raise ValueError(f"not an object with exactly the keys {', '.join(_REQUIRED)} "
                         f"(and optionally {', '.join(_OPTIONAL)})")
    rows = entry["rows"]
    check_rel(entry["file"])
    if not isinstance(rows, int) or isinstance(rows, bool) or rows < 0:
        raise ValueError(f"bad rows {rows!r}")
    for key in ("sha256", "prev", "hmac"):
        value = entry.get(key, GENESIS)
        if not isinstance(value, str) or len(value) != 64 or not set(value) <= _HEX:
            raise ValueError(f"bad {key} {value!r} (must be 64 lowercase hex digits)")
    if entry.get("rerooted", True) is not True:
        raise ValueError(f"bad rerooted {entry['rerooted']!r} (must be true)")
    return entry


def signature_ok(entry: dict[str, Any], key: bytes) -> bool:
    """Whether a parsed line carries an ``hmac`` that ``key`` gives for its other keys."""
    if "hmac" not in entry:
        return False
    text = unsigned_text(entry["file"], entry["rows"], entry["sha256"], entry["prev"],
                         rerooted=entry.get("rerooted", False))
    return hmac.compare_digest(_hmac(text, key), entry["hmac"])


def manifest_path(root: Path, dataset: str) -> Path | None:
    """Where a reader finds a dataset's manifest (``_meta/<dataset>/``, else the older
    layout's ``<dataset>/``), or None when it has none."""
    for path in (root / "_meta" / dataset / "MANIFEST.jsonl", root / dataset / "MANIFEST.jsonl"):
        if path.is_file():
            return path
    return None


def manifest_notes(dataset_dir: str | os.PathLike[str], key: bytes | None) -> list[str]:
    """What ``memory verify`` adds to a dataset's verdict: a re-rooted chain, and signed
    lines left unchecked for want of ``memory.signing_key``."""
    path = manifest_path(Path(dataset_dir).parent, Path(dataset_dir).name)
    if path is None:
        return []
    notes, signed, first = [], 0, True
    for text in path.read_bytes().decode("utf-8", errors="replace").split("\n")[:-1]:
        try:
            entry = parse_line(text)
        except ValueError:
            first = False
            continue
        if first and entry.get("rerooted"):
            notes.append("re-rooted: its chain starts at a rebuild by memory verify --repair")
        first = False
        signed += "hmac" in entry
    if signed and key is None:
        notes.append(f"{signed:,} line(s) signed with an HMAC, unchecked: memory.signing_key is not set")
    return notes
