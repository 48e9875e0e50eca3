"""Anchoring the archive's hash chains outside it (SPEC section 5).

Anyone who can write the archive can rewrite a dataset and recompute every
``sha256`` and ``prev`` of its manifest, drop its last lines with their
files, or delete it whole: the manifest alone still verifies.  So the
chain is anchored elsewhere:

* Each ``meta`` witness record carries every archived dataset's manifest
  *head*: its line count and the SHA-256 of its last line's text (the
  ``prev`` the next line will carry; 64 zeros for no line).  The witness step
  reads the heads with :class:`ManifestHeads` when it builds the record, so
  they are the heads as last committed then: files the writers commit later
  show in the next meta record.  The witness topic, or another node's copy of
  the log, then holds the heads where the archive's writer cannot change them.
* :func:`anchor_problems` checks an archive against such a log (JSON lines of
  witness records, as on the witness topic; :func:`export_witness_log` writes
  the archive's own log in that form).  For each dataset it takes the last
  head the log anchored and reports a rollback (fewer lines than anchored), a
  rewritten chain (the hash of the anchored line differs) or a missing
  dataset.  The chain ties every earlier line to the anchored one, so one
  head per dataset fixes everything up to it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import pyarrow as pa

from connectors.archive.layout import ArchiveError
from connectors.archive.manifest_lines import GENESIS, line_hash, manifest_path
from connectors.archive.reading import listed_files
from connectors.archive.witness_chain import read_log_columns

__all__ = ["Anchor", "ManifestHeads", "anchor_problems", "export_witness_log", "read_anchors"]

_MANIFEST = "MANIFEST.jsonl"


class _Tail:
    """A manifest read so far: its committed lines counted, the last one kept."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.offset = 0  # bytes of complete lines read
        self.lines = 0
        self.last = b""  # the last complete line, with its newline

    def head(self, path: Path | None) -> tuple[int, str]:
        if path != self.path:
            self.__init__()
            self.path = path
        if path is None:
            return 0, GENESIS
        try:
            with open(path, "rb") as f:
                # Still the manifest read before (not replaced by a compaction or repair)?
                f.seek(self.offset - len(self.last))
                if self.last and f.read(len(self.last)) != self.last:
                    self.__init__()
                    self.path = path
                    f.seek(0)
                data = f.read()
        except FileNotFoundError:
            self.__init__()
            return 0, GENESIS
        end = data.rfind(b"\n") + 1  # a torn last line is not committed
        if end:
            self.offset += end
            self.lines += data.count(b"\n", 0, end)
            self.last = data[data.rfind(b"\n", 0, end - 1) + 1:end]
        return self.lines, line_hash(self.last[:-1].decode("utf-8", errors="replace")) if self.last else GENESIS


class ManifestHeads:
    """The committed head (line count, SHA-256 of the last line) of each dataset's manifest.

    Calling it returns ``{dataset: {"lines": n, "sha256": hex}}`` for the
    ``datasets`` under ``root``.  Each call reads only what was appended to a
    manifest since the call before (a manifest replaced by a compaction or a
    repair is read again), so it is cheap enough for every meta record.  A
    torn last line is not counted.
    """

    def __init__(self, root: str | os.PathLike[str], datasets: Iterable[str]) -> None:
        self.root = Path(root)
        self._tails = {name: _Tail() for name in sorted(datasets)}

    def __call__(self) -> dict[str, dict[str, object]]:
        heads = {}
        for name, tail in self._tails.items():
            lines, digest = tail.head(manifest_path(self.root, name))
            heads[name] = {"lines": lines, "sha256": digest}
        return heads


@dataclass(frozen=True)
class Anchor:
    """The last head a witness log anchored for one dataset: ``lines`` and ``sha256``,
    from the meta record on line ``where`` of the log file."""

    lines: int
    sha256: str
    where: int


def read_anchors(path: str | os.PathLike[str]) -> dict[str, Anchor]:
    """{dataset: its last anchored head} from a witness log file (JSON lines of witness records).

    Raises:
        ValueError: the file cannot be read, a line is not a JSON object, a
            meta record's heads are malformed, or no meta record has heads
            (the message names the line).
    """
    anchors: dict[str, Anchor] = {}
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    with f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except ValueError:
                raise ValueError(f"{path}: line {number} is not JSON (a witness record per line expected)") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}: line {number} is not a witness record")
            if record.get("layer") != "meta":
                continue
            heads = record.get("payload", {}).get("heads") if isinstance(record.get("payload"), dict) else None
            if heads is None:
                continue  # a meta record of a run without an archive
            if not isinstance(heads, Mapping):
                raise ValueError(f"{path}: line {number}: payload.heads is not an object")
            for name, head in heads.items():
                lines, digest = (head.get("lines"), head.get("sha256")) if isinstance(head, Mapping) else (None, None)
                if not (isinstance(lines, int) and not isinstance(lines, bool) and lines >= 0 and isinstance(digest, str)
                        and len(digest) == 64):
                    raise ValueError(f"{path}: line {number}: the head of {name!r} is not {{lines, sha256}}")
                anchors[name] = Anchor(lines, digest, number)
    if not anchors:
        raise ValueError(f"{path} holds no meta witness record with manifest heads: nothing to anchor to")
    return anchors


def anchor_problems(root: str | os.PathLike[str], anchors: Mapping[str, Anchor],
                    source: str = "the anchor") -> dict[str, list[str]]:
    """Each anchored dataset's problems against its last anchored head (module docstring).

    Returns:
        {dataset: problems}, for every anchored dataset (empty lists when the
        archive holds at least the anchored lines, ending in the anchored hash).
    """
    root = Path(root)
    out: dict[str, list[str]] = {}
    for name, anchor in sorted(anchors.items()):
        said = (f"the witness log anchored {anchor.lines:,} line(s) ending in {anchor.sha256[:8]}… "
                f"({source}, line {anchor.where})")
        path = manifest_path(root, name)
        problems = []
        if path is None:
            if anchor.lines:
                problems.append(f"{_MANIFEST}: missing dataset: no manifest of {name}; {said}")
        else:
            lines = path.read_bytes().decode("utf-8", errors="replace").split("\n")[:-1]
            if len(lines) < anchor.lines:
                problems.append(f"{_MANIFEST}: rolled back: {len(lines):,} line(s); {said}")
            elif anchor.lines and line_hash(lines[anchor.lines - 1]) != anchor.sha256:
                problems.append(
                    f"{_MANIFEST}: rewritten: line {anchor.lines} hashes to {line_hash(lines[anchor.lines - 1])[:8]}…; "
                    f"{said}. The chain was rewritten, or compacted or repaired after the anchor")
        out[name] = problems
    return out


def export_witness_log(root: str | os.PathLike[str], out: IO[bytes]) -> tuple[int, int | None]:
    """Write the archive's witness log to ``out``: one record per line, by ``seq``,
    byte for byte the witness topic's values.

    Returns:
        (records written, the largest seq or None).

    Raises:
        ArchiveError: a listed file of ``witnessing_logs`` cannot be read (named).
    """
    directory = Path(root) / "witnessing_logs"
    tables = []
    for rel, found in listed_files(directory):
        try:
            tables.append(read_log_columns(found, Path(root), ("seq", "payload")))
        except ValueError as exc:
            raise ArchiveError(f"witnessing_logs/{rel} in {root} is not a file of the witness log ({exc})") from None
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return 0, None
    log = pa.concat_tables(tables)
    seq = log["seq"].to_numpy()
    order = np.argsort(seq, kind="stable")
    payloads = log["payload"].take(pa.array(order)).cast(pa.binary())
    for start in range(0, len(order), 1 << 16):
        out.write(b"".join(value + b"\n" for value in payloads[start:start + (1 << 16)].to_pylist()))
    return len(order), int(seq[order[-1]])
