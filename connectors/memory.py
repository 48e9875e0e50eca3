"""Temporal memory: ask the archive what a sensor's coherence was at any moment (SPEC section 5).

:class:`TemporalMemory` reads an archive root written by the dataflow
(``<root>/<dataset>/date=YYYY-MM-DD/hour=HH/part-NNNNNNNN.arrow``, listed in
``<root>/_meta/<dataset>/MANIFEST.jsonl``):

* :meth:`TemporalMemory.retrieve` returns the rows of one dataset in a time
  range, optionally for some sensors.  It opens only the files whose hour
  partition overlaps the range (the partition is in the path, so nothing
  else is read), and only files the dataset's manifest lists;
* :meth:`TemporalMemory.reconstruct_coherence` returns the state in force at
  a time t: the newest Master and Emissary signatures and coherence-history
  row at or before t, and whether the sensor was collapsed (from the
  newest collapse/dissipate event at or before t);
* :meth:`TemporalMemory.verify` walks every manifest's hash chain;
* :meth:`TemporalMemory.last_states` returns each sensor's newest
  coherence-history row (a file's answer is kept, so a repeated call
  opens only the files committed since);
* :meth:`TemporalMemory.rows_to_scan` says, from the manifests alone, how
  many rows a range query would read, and :meth:`TemporalMemory.consistently`
  runs a query again when a compaction swapped the files it was reading.

The JSON form of rows and of a state (``memory retrieve --format json``,
``memory reconstruct --format json``, the HTTP API) is :mod:`connectors.row_json`.

Times are epoch seconds (int or float), ISO-8601 text with a zone,
``datetime`` objects or ``numpy.datetime64``; they become exact microseconds
as everywhere in BecomingONE.  Ranges are inclusive at both ends.

>>> memory = TemporalMemory("becomingone-data")                     # doctest: +SKIP
>>> memory.retrieve("2025-01-01T00:00:10Z", "2025-01-01T00:01:10Z", sensors=["steady-1"])  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from connectors.archive import ArchiveError, ListedFile, listed_entries, read_archive_file, verify_archive
from connectors.row_json import finite, iso_time, rows_as_json
from schemas.datasets import DATASETS
from schemas.timebase import to_micros

__all__ = ["Reconstruction", "SensorStates", "SignatureState", "SyncSnapshot", "TemporalMemory", "as_micros"]

_HOUR_US = 3_600_000_000
_PARTITION = re.compile(r"date=(\d{4})-(\d{2})-(\d{2})/hour=(\d{2})/")


def as_micros(t: Any) -> int:
    """One time (epoch seconds, ISO-8601 with a zone, datetime, datetime64) in microseconds.

    >>> as_micros("2025-01-01T00:00:01.5Z"), as_micros(1735689601.5)
    (1735689601500000, 1735689601500000)
    """
    if isinstance(t, _dt.datetime):
        if t.tzinfo is None:
            raise ValueError(f"time {t.isoformat()} has no zone; give one (e.g. UTC)")
        t = t.isoformat()
    if isinstance(t, str):
        text = t.strip()
        try:
            t = float(text)  # epoch seconds given as text (command line)
        except ValueError:
            t = text
    return int(np.asarray(to_micros(t)).reshape(-1)[0])


def _hour_start(relative: str) -> int | None:
    """Start (us) of the hour partition in a manifest name ``date=.../hour=.../file``; None if not partitioned."""
    m = _PARTITION.search(relative)
    if m is None:
        return None
    y, mo, d, h = (int(x) for x in m.groups())
    return as_micros(_dt.datetime(y, mo, d, h, tzinfo=_dt.timezone.utc))


@dataclass(frozen=True)
class SignatureState:
    """A transducer's archived state: T over its window ending at ``t_us``."""

    t_us: int
    T: complex
    coherence: float
    n_products: int


@dataclass(frozen=True)
class SyncSnapshot:
    """An archived coherence-history row: the sync at ``t_us``."""

    t_us: int
    coherence_master: float
    coherence_emissary: float
    coherence_sync: float
    delta_phase: float
    state: str


@dataclass(frozen=True)
class Reconstruction:
    """What was in force for ``sensor`` at ``at_us``.

    Attributes:
        master, emissary: the newest signature at or before ``at_us`` (None: none archived).
        sync: the newest coherence-history row at or before ``at_us``.
        T_sync: (T_master + T_emissary) / 2 when both signatures are of the same grid time, else None.
        collapsed: the sensor's state after its newest transition at or before ``at_us``
            (False when it never collapsed); from the coherence-history row's
            state when the archive keeps no ``events/``.
        last_event: that transition's ``events/`` row, or None.
    """

    sensor: str
    at_us: int
    master: SignatureState | None
    emissary: SignatureState | None
    sync: SyncSnapshot | None
    T_sync: complex | None
    collapsed: bool
    last_event: dict[str, Any] | None

    @property
    def found(self) -> bool:
        """True when anything of the sensor was archived at or before ``at_us``."""
        return not (self.master is None and self.emissary is None and self.sync is None)

    def as_json(self) -> dict[str, Any]:
        """This state as a JSON-ready dict (times ISO-8601 UTC; complex values as ``_re``/``_im``)."""
        def signature(sig: SignatureState | None) -> dict[str, Any] | None:
            return None if sig is None else {"t": iso_time(sig.t_us), "t_re": sig.T.real, "t_im": sig.T.imag,
                                             "coherence": sig.coherence, "n_products": sig.n_products}

        s = self.sync
        sync = None if s is None else {
            "t": iso_time(s.t_us), "coherence_master": s.coherence_master, "coherence_emissary": s.coherence_emissary,
            "coherence_sync": s.coherence_sync, "delta_phase": s.delta_phase, "state": s.state}
        event = None if self.last_event is None else rows_as_json(pa.Table.from_pylist([self.last_event]))[0]
        return finite({"sensor": self.sensor, "at": iso_time(self.at_us), "master": signature(self.master),
                        "emissary": signature(self.emissary), "sync": sync,
                        "t_sync": None if self.T_sync is None else {"re": self.T_sync.real, "im": self.T_sync.imag},
                        "collapsed": self.collapsed, "last_event": event})



@dataclass
class SensorStates:
    """What :meth:`TemporalMemory.last_states` keeps between calls.

    Attributes:
        files: per ``coherence_history`` file (its manifest name), its sensors' newest rows.
        answer: (the manifest names of the files, the answer over them).
    """

    files: dict[str, pa.Table] = field(default_factory=dict)
    answer: tuple[tuple[str, ...], pa.Table | None] = ((), None)


class TemporalMemory:
    """Read access to an archive root.

    Args:
        root: the archive root (``memory.storage.path``).

    Attributes:
        files_opened: files read so far (to show a query reads only what it needs).
        sensor_states: what :meth:`last_states` keeps; share one between
            instances to keep it across queries.
    """

    def __init__(self, root: str | os.PathLike[str], sensor_states: SensorStates | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"no archive at {self.root}: not a directory")
        self.files_opened = 0
        self.sensor_states = SensorStates() if sensor_states is None else sensor_states

    def datasets(self) -> list[str]:
        """The dataset directories present (possibly still without files), in schema order."""
        return [name for name in DATASETS if (self.root / name).is_dir()]

    def files(self, dataset: str, start_us: int | None = None, end_us: int | None = None) -> list[Path]:
        """The dataset's committed files (manifest order) whose hour overlaps [start_us, end_us]."""
        return [entry.path for _, entry in self._hours(dataset, start_us, end_us)]

    def rows_to_scan(self, dataset: str, start_us: int | None = None, end_us: int | None = None) -> int:
        """Rows in the files a query of [start_us, end_us] opens (from the manifest, no file read)."""
        return sum(entry.rows for _, entry in self._hours(dataset, start_us, end_us))

    def _hours(self, dataset: str, start_us: int | None, end_us: int | None) -> list[tuple[int | None, ListedFile]]:
        """(hour start or None, listed file) of :meth:`files`; the hour comes from the manifest's
        name of the file, since the path may be a temp file outside the partition."""
        if dataset not in DATASETS:
            raise ValueError(f"unknown dataset {dataset!r}; the archive has {', '.join(DATASETS)}")
        out = []
        for entry in listed_entries(self.root / dataset):
            hour = _hour_start(entry.name)
            overlaps = hour is None or ((end_us is None or hour <= end_us)
                                        and (start_us is None or hour + _HOUR_US > start_us))
            if overlaps:
                out.append((hour, entry))
        return out

    def read_file(self, path: Path) -> pa.Table:
        """One archive file, memory-mapped (counted in :attr:`files_opened`).

        Raises:
            connectors.archive.ArchiveError: the file cannot be read; the message
                names it and says to run ``becomingone memory verify``.
        """
        self.files_opened += 1
        return read_archive_file(path, self.root)

    def scan(self, dataset: str, start_us: int | None = None, end_us: int | None = None,
             sensors: Iterable[str] | None = None, columns: list[str] | None = None,
             cells: Iterable[str] | None = None) -> Iterator[pa.Table]:
        """Per file (manifest order), the rows with start_us <= t <= end_us, ``sensor`` in
        ``sensors`` and ``cell`` in ``cells``, as ``columns`` (None: all).  None leaves a bound or a
        filter open; a filter on a column the dataset does not have keeps every row.

        One table per file keeps memory bounded for large datasets (``input/``).
        """
        wanted = None if sensors is None else pa.array(sorted(set(sensors)), pa.string())
        in_cells = None if cells is None else pa.array(sorted(set(cells)), pa.string())
        for path in self.files(dataset, start_us, end_us):
            table = self.read_file(path)
            mask = None
            t = table["t"].cast(pa.int64())
            for bound, test in ((start_us, pc.greater_equal), (end_us, pc.less_equal)):
                if bound is not None:
                    term = test(t, bound)
                    mask = term if mask is None else pc.and_(mask, term)
            for column, values in (("sensor", wanted), ("cell", in_cells)):
                if values is not None and column in table.column_names:
                    term = pc.fill_null(pc.is_in(table[column], value_set=values), False)
                    mask = term if mask is None else pc.and_(mask, term)
            if mask is not None:
                table = table.filter(mask)
            yield table if columns is None else table.select(columns)

    def retrieve(self, start: Any, end: Any, sensors: Iterable[str] | None = None,
                 dataset: str = "coherence_history", cells: Iterable[str] | None = None) -> pa.Table:
        """Rows of ``dataset`` with start <= t <= end (and ``sensor`` in ``sensors``, ``cell`` in ``cells``).

        Rows come in archive order (manifest order, then row order);
        ``witnessing_logs`` rows are sorted by ``seq``, the log's order.

        Raises:
            ValueError: unknown dataset, unreadable time, or start after end.
            connectors.archive.ArchiveError: a damaged archive (an unreadable
                manifest, or a listed file missing or unreadable; named).
        """
        start_us, end_us = as_micros(start), as_micros(end)
        if start_us > end_us:
            raise ValueError(f"start ({start}) is after end ({end})")
        parts = list(self.scan(dataset, start_us, end_us, sensors, cells=cells))
        table = pa.concat_tables(parts) if parts else DATASETS[dataset].empty_table()
        if dataset == "witnessing_logs":
            table = table.sort_by("seq")
        return table

    def _newest(self, dataset: str, sensor: str, at_us: int, extra: dict[str, str] | None = None) -> dict | None:
        """The newest row of ``sensor`` (and ``extra`` column values) with t <= at_us.

        Hours are searched from the one holding ``at_us`` backwards, so a
        recent answer opens only the files of a recent hour.
        """
        by_hour: dict[int | None, list[Path]] = {}
        for hour, entry in self._hours(dataset, None, at_us):
            by_hour.setdefault(hour, []).append(entry.path)
        for hour in sorted(by_hour, key=lambda h: -1 if h is None else h, reverse=True):
            best = None
            for path in by_hour[hour]:
                table = self.read_file(path)
                mask = pc.and_(pc.equal(table["sensor"], sensor), pc.less_equal(table["t"].cast(pa.int64()), at_us))
                for column, value in (extra or {}).items():
                    mask = pc.and_(mask, pc.equal(table[column], value))
                rows = table.filter(mask)
                if rows.num_rows:
                    i = int(np.argmax(rows["t"].cast(pa.int64()).to_numpy()))
                    row = rows.slice(i, 1).to_pylist()[0]
                    if best is None or row["t"] > best["t"]:
                        best = row
            if best is not None:
                return best
        return None

    def reconstruct_coherence(self, t: Any, sensor: str) -> Reconstruction:
        """The Master, Emissary and sync state of ``sensor`` in force at ``t``, and its collapse state.

        Between two archived signatures the earlier one is in force (a
        signature is the window ending at its grid time).
        """
        at_us = as_micros(t)
        states = {}
        for transducer in ("master", "emissary"):
            row = self._newest("temporal_signatures", sensor, at_us, {"transducer": transducer})
            states[transducer] = None if row is None else SignatureState(
                as_micros(row["t"]), complex(row["t_re"], row["t_im"]), row["coherence"], row["n_products"])
        row = self._newest("coherence_history", sensor, at_us)
        sync = None if row is None else SyncSnapshot(
            as_micros(row["t"]), row["coherence_master"], row["coherence_emissary"], row["coherence_sync"],
            row["delta_phase"], row["state"])
        event = self._newest("events", sensor, at_us)
        if event is not None or "events" in self.datasets():
            collapsed = event is not None and event["event"] == "collapse"
        else:  # no events/ archived (memory.events false): the sync row's state, on its grid
            collapsed = sync is not None and sync.state == "collapsed"
        master, emissary = states["master"], states["emissary"]
        T_sync = None
        if master is not None and emissary is not None and master.t_us == emissary.t_us:
            T_sync = (master.T + emissary.T) / 2
        return Reconstruction(sensor, at_us, master, emissary, sync, T_sync, collapsed=collapsed, last_event=event)

    def last_states(self) -> pa.Table:
        """Each sensor's newest ``coherence_history`` row (the latest t; of equal times the later
        one in archive order), sorted by sensor.

        A file's newest rows per sensor are kept in :attr:`sensor_states` under its
        manifest name (names are never reused, and a compaction's merged file has
        a new one), and so is the answer: a call opens only the files committed
        since the last, and merges their rows into the last answer.
        """
        dataset = "coherence_history"
        cache = self.sensor_states
        entries = [entry for _, entry in self._hours(dataset, None, None)]
        keys = tuple(entry.name for entry in entries)
        known_keys, known = cache.answer
        if known is not None and keys == known_keys:
            return known
        for entry in entries:
            if entry.name not in cache.files:
                cache.files[entry.name] = _newest_per_sensor(self.read_file(entry.path))
        if known is not None and keys[:len(known_keys)] == known_keys:  # files appended since
            parts = [known] + [cache.files[k] for k in keys[len(known_keys):]]
        else:
            parts = [cache.files[k] for k in keys]
        answer = _newest_per_sensor(pa.concat_tables(parts)) if parts else DATASETS[dataset].empty_table()
        for gone in [key for key in list(cache.files) if key not in set(keys)]:
            cache.files.pop(gone, None)  # merged away by a compaction
        cache.answer = (keys, answer)
        return answer

    def consistently(self, query: Callable[[], Any], attempts: int = 5) -> Any:
        """``query()``, run again (up to ``attempts`` times) when it failed on a file that a
        compaction replaced meanwhile: the answer is that of one manifest state.

        A compaction commits by replacing a manifest and then deletes the merged
        files; a query that listed the old manifest may find one gone.  When the
        manifests did not change while the query ran, the error is the archive's
        and is raised.
        """
        for attempt in range(attempts):
            before = self._manifest_marks()
            try:
                return query()
            except (ArchiveError, FileNotFoundError):
                if attempt + 1 == attempts or self._manifest_marks() == before:
                    raise
                time.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")

    def _manifest_marks(self) -> tuple:
        """(name, inode, size, mtime) of every manifest and journal under ``_meta``: what a compaction changes."""
        marks = []
        for path in sorted((self.root / "_meta").glob("*/*")):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            marks.append((path.as_posix(), st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(marks)

    def verify(self, key: bytes | None = None) -> dict[str, list[str]]:
        """Problems per dataset (empty lists: intact); see :func:`connectors.archive.verify_archive`."""
        return verify_archive(self.root, key=key)


def _newest_per_sensor(table: pa.Table) -> pa.Table:
    """Per sensor, its row of the largest t (the last of equal ones), sorted by sensor."""
    if table.num_rows == 0:
        return table
    order = pc.sort_indices(pa.table({"sensor": table["sensor"], "t": table["t"].cast(pa.int64()),
                                      "i": pa.array(np.arange(table.num_rows))}),
                            [("sensor", "ascending"), ("t", "ascending"), ("i", "ascending")])
    ordered = table.take(order)
    sensors = ordered["sensor"].to_numpy(zero_copy_only=False)
    last = np.flatnonzero(np.append(sensors[1:] != sensors[:-1], True))
    return ordered.take(pa.array(last))
