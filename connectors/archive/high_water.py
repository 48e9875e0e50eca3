"""What an archive writer holds already: the rows it drops on a re-run (SPEC section 5).

Idempotency: a restart that re-runs the same input must not duplicate rows.
The writer keeps a high-water mark per row key, the largest ``t`` already
archived (read from every listed file on open, then kept up to date), and
drops incoming rows with ``t <= high-water``.  Row keys (:data:`ROW_KEYS`):
``temporal_signatures`` by (sensor, transducer); ``events``,
``coherence_history`` and ``input`` by sensor; ``mesh_sync`` by (scope, cell);
``mesh_members`` by (cell, sensor).
``witnessing_logs`` is a log of observations, kept by ``seq`` instead: a row
whose seq is at or below the largest one archived is dropped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from connectors.archive.reading import read_archive_file

__all__ = ["ROW_KEYS"]

#: Columns identifying a row's series for deduplication (empty: never deduplicated).
ROW_KEYS: dict[str, tuple[str, ...]] = {
    "temporal_signatures": ("sensor", "transducer"),
    "coherence_history": ("sensor",),
    "witnessing_logs": (),
    "events": ("sensor",),
    "mesh_sync": ("scope", "cell"),
    "mesh_members": ("cell", "sensor"),
    "input": ("sensor",),
}

_NO_ROWS = np.iinfo(np.int64).min  # high-water of a key never archived


def _t_micros(table: pa.Table) -> np.ndarray:
    # The timestamps' int64 values as they are (a view, not a compute cast).
    return np.concatenate([c.view(pa.int64()).to_numpy(zero_copy_only=False) for c in table.column("t").chunks]
                          or [np.empty(0, np.int64)])


def _largest_seq(dataset_dir: Path, entries: list[dict[str, Any]]) -> int:
    """The largest ``seq`` in the listed files of ``witnessing_logs``, -1 if none."""
    largest = -1
    for entry in entries:
        seq = read_archive_file(dataset_dir / entry["file"], dataset_dir.parent, ["seq"]).column("seq")
        if len(seq):
            largest = max(largest, pc.max(seq).as_py())
    return largest


class _HighWaterMarks:
    """The deduplication half of :class:`connectors.archive.writer.ArchiveWriter`.

    The writer sets the state these methods keep: ``path`` (its dataset
    directory), ``_keys`` (the dataset's :data:`ROW_KEYS`), ``_high_water``
    (row key -> largest ``t``, int64 us) and ``_seq_high`` (witnessing_logs:
    the largest seq archived or accepted, -1 if none).
    """

    path: Path
    _keys: tuple[str, ...]
    _high_water: dict[tuple[str, ...], int]
    _seq_high: int

    def high_water(self, *key: str) -> int | None:
        """The largest archived or accepted ``t`` (int64 us) of a row key, or None."""
        return self._high_water.get(tuple(key))

    def _read_high_water(self, entries: list[dict[str, Any]]) -> None:
        keys = list(self._keys)
        per_file: list[pa.Table] = []
        for entry in entries:
            # Memory-mapped: only the pages of the key and time columns are read.
            table = read_archive_file(self.path / entry["file"], self.path.parent, [*keys, "t"])
            if table.num_rows:
                table = table.set_column(len(keys), "t", pc.cast(table.column("t"), pa.int64()))
                per_file.append(table.group_by(keys).aggregate([("t", "max")]))
        if per_file:
            best = pa.concat_tables(per_file).group_by(keys).aggregate([("t_max", "max")])
            columns = [best.column(k).to_pylist() for k in keys]
            for *key, t in zip(*columns, best.column("t_max_max").to_pylist()):
                self._high_water[tuple(key)] = int(t)

    def _drop_logged(self, table: pa.Table) -> pa.Table:
        """Witness rows whose seq is above every seq archived or accepted before them
        (a replayed epoch's records are refused: the archive keeps one row per seq)."""
        seq = table.column("seq").to_numpy()
        before = np.maximum.accumulate(np.concatenate(([self._seq_high], seq[:-1])))
        keep = seq > before
        self._seq_high = max(self._seq_high, int(seq.max()))
        return table if keep.all() else table.filter(pa.array(keep))

    def _drop_archived(self, table: pa.Table) -> pa.Table:
        """Drop rows at or below their key's high-water; raise it with the rest."""
        t = _t_micros(table)
        runs = self._key_runs(table)
        if runs is not None:
            return self._drop_archived_runs(table, t, *runs)
        # One integer code per row for its key: mixed-radix over each key
        # column's dictionary codes, so only the distinct keys touch Python.
        codes = np.zeros(table.num_rows, np.int64)
        dictionaries = []
        for name in self._keys:
            encoded = table.column(name).combine_chunks().dictionary_encode()
            values = encoded.dictionary.to_pylist()
            codes = codes * len(values) + encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
            dictionaries.append(values)
        unique, row_key = np.unique(codes, return_inverse=True)
        keys = []
        for code in unique.tolist():
            parts = []
            for values in reversed(dictionaries):
                code, index = divmod(code, len(values))
                parts.append(values[index])
            keys.append(tuple(reversed(parts)))

        high = np.array([self._high_water.get(k, _NO_ROWS) for k in keys], np.int64)
        keep = t > high[row_key]
        newest = np.full(len(keys), _NO_ROWS, np.int64)
        np.maximum.at(newest, row_key[keep], t[keep])
        for key, value in zip(keys, newest.tolist()):
            if value != _NO_ROWS:
                self._high_water[key] = value
        return table if keep.all() else table.filter(pa.array(keep))

    def _key_runs(self, table: pa.Table) -> tuple[np.ndarray, list[tuple]] | None:
        """(start of each run, its key) when rows come in runs of one key, as the
        dataflow writes them (one sensor's rows together); None when runs are short."""
        n = table.num_rows
        change = np.zeros(n, np.bool_)
        change[0] = True
        for name in self._keys:
            column = table.column(name).combine_chunks()
            if column.null_count:
                return None
            change[1:] |= pc.not_equal(column.slice(1), column.slice(0, n - 1)).to_numpy(zero_copy_only=False)
        starts = np.flatnonzero(change)
        if starts.size * 8 > n:  # short runs: the dictionary path is cheaper
            return None
        index = pa.array(starts)
        columns = [table.column(name).take(index).to_pylist() for name in self._keys]
        return starts, list(zip(*columns))

    def _drop_archived_runs(self, table: pa.Table, t: np.ndarray, starts: np.ndarray, keys: list[tuple]) -> pa.Table:
        run_of = np.repeat(np.arange(starts.size), np.diff(np.append(starts, t.shape[0])))
        high = np.array([self._high_water.get(k, _NO_ROWS) for k in keys], np.int64)
        keep = t > high[run_of]
        newest = np.maximum.reduceat(np.where(keep, t, _NO_ROWS), starts)
        for key, value in zip(keys, newest.tolist()):
            if value > self._high_water.get(key, _NO_ROWS):  # one key may form several runs
                self._high_water[key] = value
        return table if keep.all() else table.filter(pa.array(keep))
