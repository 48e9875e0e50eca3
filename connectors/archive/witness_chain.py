"""The archived witness log checked as a log (SPEC sections 5 and 8).

``witnessing_logs/`` holds one row per witness record.  Its files can be
intact (every SHA-256 and the manifest chain match) while the log they hold
is not one log: a restart that resumed an older state could log a seq again
with another record, or a record could be edited and its file rehashed.
:func:`witness_log_problems` checks what the log itself promises:

* ``seq`` is 0, 1, 2, ... with each value once;
* ``log_sha256`` of seq k is sha256(bytes of the digest of seq k-1 +
  the record's bytes), from 64 zeros before seq 0
  (:func:`schemas.messages.witness_log_digest`).

Rows are partitioned by event time, so file order is not log order: the rows
of every listed file are ordered by ``seq`` first.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from connectors.archive.reading import listed_files, read_archive_file
from schemas.datasets import DATASETS

__all__ = ["read_log_columns", "witness_log_problems"]

_CHUNK = 1 << 16  # rows turned into Python objects at a time
_HEX = frozenset("0123456789abcdef")
_SCHEMA = DATASETS["witnessing_logs"]
_COLUMNS = ("seq", "payload", "log_sha256")


def witness_log_problems(dataset_dir: str | os.PathLike[str]) -> list[str]:
    """Problems of the log in the committed files of a ``witnessing_logs`` directory.

    Each problem starts with ``seq N:``, the first seq at which that kind of
    problem shows: a seq held by more than one row (a fork), a seq missing
    (the log must run 0, 1, 2, ... without a gap), or a ``log_sha256`` that
    does not follow from the digest of the seq before it and the row's
    payload (a fork, an edited record, or a chain continued from a digest
    the log never had).  Across a missing seq the chain is not checked.  An
    empty list means one log, one chain.

    Raises:
        ArchiveError: a manifest line or a listed file cannot be read (named).
    """
    directory = Path(dataset_dir)
    tables = []
    for rel, path in listed_files(directory):
        try:
            tables.append(read_log_columns(path, directory.parent))
        except ValueError as exc:
            return [f"{rel}: not a file of the witness log ({exc}): its records cannot be checked"]
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return []
    log = pa.concat_tables(tables)
    seq = log["seq"].to_numpy()
    order = np.argsort(seq, kind="stable")  # stable: a repeated seq keeps manifest order
    seq = seq[order]
    problems = []

    repeated = np.flatnonzero(seq[1:] == seq[:-1])
    if repeated.size:
        first = int(seq[repeated[0]])
        n = int(np.count_nonzero(seq == first))
        forks = np.unique(seq[repeated + 1]).size
        problems.append(f"seq {first}: {n} rows (the log forks here; {forks:,} seq(s) are held by more "
                        "than one row)")
    unique = np.unique(seq)
    gaps = np.flatnonzero(unique != np.arange(unique.size, dtype=unique.dtype))
    if gaps.size:
        first = int(gaps[0])  # the first seq from 0 on that no row holds
        problems.append(f"seq {first}: missing (the log holds {unique.size:,} seq(s) from {int(unique[0])} "
                        f"to {int(unique[-1])}; it must run from 0 without a gap)")

    index = pa.array(order)
    payloads = log["payload"].take(index).cast(pa.binary())
    digests = log["log_sha256"].take(index)
    previous_seq, digest = -1, "0" * 64
    for start in range(0, seq.size, _CHUNK):
        stop = min(seq.size, start + _CHUNK)
        for k, payload, logged in zip(seq[start:stop].tolist(), payloads[start:stop].to_pylist(),
                                      digests[start:stop].to_pylist()):
            if k == previous_seq:
                continue  # the other rows of a repeated seq: reported above
            follows = k == previous_seq + 1 and digest is not None
            if follows:
                if hashlib.sha256(bytes.fromhex(digest) + payload).hexdigest() != logged:
                    before = f"the digest of seq {k - 1}" if k else "64 zeros"
                    problems.append(
                        f"seq {k}: log_sha256 is not sha256({before} + its payload): the chain breaks here "
                        "(a fork, an edited record, or a log continued from a digest it never had)")
                    return problems
            # After a gap the chain goes on from the row's own digest (if it is one).
            previous_seq, digest = k, logged if follows or _is_digest(logged) else None
    return problems


def read_log_columns(path: Path, root: Path, columns: tuple[str, ...] = _COLUMNS) -> pa.Table:
    """``columns`` of one witness log file, as the dataset schema types them.

    Raises:
        ArchiveError: the file cannot be read (named).
        ValueError: a column is missing or of a type that does not cast.
    """
    table = read_archive_file(path, root)
    try:
        return table.select(list(columns)).cast(pa.schema([_SCHEMA.field(c) for c in columns]))
    except (KeyError, pa.ArrowException) as exc:
        raise ValueError(str(exc).splitlines()[0]) from None


def _is_digest(text: object) -> bool:
    return isinstance(text, str) and len(text) == 64 and set(text) <= _HEX
