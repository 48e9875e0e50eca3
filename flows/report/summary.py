"""Reading the archive for `becomingone report`: the rows to draw and the per-sensor summary.

:func:`load` reads an archive root written by the dataflow (layout in
``docs/archive.md``):

* ``coherence_history/`` (required): one row per sensor and signature grid
  point g with ``coherence_master``, ``coherence_emissary``,
  ``coherence_sync`` (all \\|T\\|^2) and ``state``, the sync state *after* g;
* ``events/`` (optional): the collapse and dissipate transitions;
* ``input/`` (optional): the accepted samples, counted per sensor.

:func:`summary_rows` returns the summary table of the report as data.

Definitions used by the summary (per sensor, over the rows with
``start_us <= t <= end_us``):

* ``samples``: rows of ``input/``; None when the archive has no ``input/``;
* ``kind``: ``phase``, or for a raw sensor (its ``input/`` rows hold
  ``value``, SPEC section 9) ``raw`` and its sampling rate, the median
  interval of its rows to 4 significant digits (``raw 250 Hz``); ``-``
  without ``input/``;
* ``collapses``, ``dissipations``: rows of ``events/`` with that ``event``;
  None when the archive has no ``events/``;
* ``collapsed_pct``: share of the sensor's coherence_history grid points
  whose state is ``collapsed``, in percent.  Each grid point stands for one
  ``memory.signature_interval`` of event time, so on an unbroken grid this
  is the share of time collapsed; stretches without rows do not count;
* ``mean_coherence_sync``, ``last_coherence_sync``: the mean and the newest
  value of ``coherence_sync`` (dimensionless, 0..1).
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from connectors.memory import TemporalMemory
from schemas.datasets import DATASETS

__all__ = ["Events", "History", "SummaryRow", "load", "summary_rows", "utc_text"]

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


class SummaryRow(TypedDict):
    """One sensor's line of the summary table (definitions in the module docstring)."""

    sensor: str
    kind: str
    samples: int | None
    collapses: int | None
    dissipations: int | None
    collapsed_pct: float
    mean_coherence_sync: float
    last_coherence_sync: float


@dataclass(frozen=True)
class History:
    """coherence_history rows sorted by (sensor in report order, t); sensor i owns
    rows ``bounds[i]:bounds[i + 1]``."""

    sensors: tuple[str, ...]
    bounds: np.ndarray
    t_us: np.ndarray
    master: np.ndarray
    emissary: np.ndarray
    sync: np.ndarray
    collapsed: np.ndarray


@dataclass(frozen=True)
class Events:
    """events rows of the reported sensors: ``rank`` indexes ``History.sensors``."""

    rank: np.ndarray
    t_us: np.ndarray
    sync: np.ndarray
    is_collapse: np.ndarray


def _natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    # "sensor-2" before "sensor-10": digit runs compare as numbers.
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name) if part)


def utc_text(t_us: int) -> str:
    """``YYYY-MM-DD HH:MM:SS[.ffffff]`` of an epoch time in microseconds, UTC."""
    stamp = _EPOCH + _dt.timedelta(microseconds=int(t_us))
    text = stamp.strftime("%Y-%m-%d %H:%M:%S")
    return f"{text}.{stamp.microsecond:06d}".rstrip("0") if stamp.microsecond else text


def _table(memory: TemporalMemory, dataset: str, columns: list[str], sensors: Sequence[str] | None,
           start_us: int | None, end_us: int | None) -> pa.Table | None:
    """``columns`` of one dataset's rows in range; None when the archive has no such dataset."""
    if dataset not in memory.datasets():
        return None
    parts = list(memory.scan(dataset, start_us, end_us, sensors, columns))
    return pa.concat_tables(parts) if parts else DATASETS[dataset].empty_table().select(columns)


def _ranks(column: pa.ChunkedArray | pa.Array, order: dict[str, int]) -> np.ndarray:
    """Each row's sensor as its index in ``order`` (-1 for a sensor not in it).

    Dictionary encoding turns the per-row string lookup into one lookup per
    distinct sensor."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    encoded = pc.dictionary_encode(column)
    lut = np.array([order.get(name, -1) for name in encoded.dictionary.to_pylist()] + [-1], dtype=np.int64)
    return lut[encoded.indices.to_numpy(zero_copy_only=False)]


def _range_text(start_us: int | None, end_us: int | None) -> str:
    if start_us is None and end_us is None:
        return ""
    lo = utc_text(start_us) if start_us is not None else "the start"
    hi = utc_text(end_us) if end_us is not None else "the end"
    return f" between {lo} and {hi} UTC"


def _read_history(
    memory: TemporalMemory, sensors: Sequence[str] | None, start_us: int | None, end_us: int | None
) -> History:
    columns = ["sensor", "t", "coherence_master", "coherence_emissary", "coherence_sync", "state"]
    table = _table(memory, "coherence_history", columns, sensors, start_us, end_us)
    if table is None:
        raise ValueError(
            f"no coherence_history/ in {memory.root}: not an archive root (memory.storage.path), "
            "or the run had memory.coherence_history off"
        )
    if table.num_rows == 0 and sensors is None:
        raise ValueError(f"no coherence_history rows in {memory.root}{_range_text(start_us, end_us)}: nothing to report")

    present = pc.unique(table["sensor"]).to_pylist()
    if sensors is None:
        order = tuple(sorted(present, key=_natural_key))
    else:
        order = tuple(dict.fromkeys(sensors))  # the caller's order, repeats dropped
        present_set = set(present)
        missing = [s for s in order if s not in present_set]
        if missing:
            every = _table(memory, "coherence_history", ["sensor"], None, start_us, end_us)
            known = sorted(pc.unique(every["sensor"]).to_pylist(), key=_natural_key)
            listed = ", ".join(known[:20]) + (f", ... ({len(known)} in all)" if len(known) > 20 else "")
            raise ValueError(
                f"unknown sensor(s) {', '.join(map(repr, missing))}: no coherence_history rows in {memory.root}"
                f"{_range_text(start_us, end_us)}; known: {listed or 'none'}"
            )

    rank = _ranks(table["sensor"], {name: i for i, name in enumerate(order)})
    t_us = pc.cast(table["t"], pa.int64()).to_numpy()
    sort = np.lexsort((t_us, rank))
    rank = rank[sort]

    def column(name: str) -> np.ndarray:
        return table[name].to_numpy()[sort]

    return History(
        sensors=order,
        bounds=np.searchsorted(rank, np.arange(len(order) + 1)),
        t_us=t_us[sort],
        master=column("coherence_master"),
        emissary=column("coherence_emissary"),
        sync=column("coherence_sync"),
        collapsed=pc.equal(table["state"], "collapsed").to_numpy()[sort],
    )


def _read_events(memory: TemporalMemory, history: History, start_us: int | None, end_us: int | None) -> Events | None:
    table = _table(memory, "events", ["sensor", "t", "event", "coherence_sync"], history.sensors, start_us, end_us)
    if table is None:
        return None
    rank = _ranks(table["sensor"], {name: i for i, name in enumerate(history.sensors)})
    return Events(
        rank=rank,
        t_us=pc.cast(table["t"], pa.int64()).to_numpy(),
        sync=table["coherence_sync"].to_numpy(),
        is_collapse=pc.equal(table["event"], "collapse").to_numpy(zero_copy_only=False),
    )


def _count_samples(memory: TemporalMemory, history: History, start_us: int | None, end_us: int | None
                   ) -> tuple[np.ndarray, list[str]] | None:
    """input rows per reported sensor and each one's kind, or None when the archive has no input/.

    Counted batch by batch: input/ is the largest dataset (every accepted
    sample); only the sensor and time columns and the validity of ``value``
    are used, and a raw sensor's rate comes from the first batch holding two
    of its rows."""
    if "input" not in memory.datasets():
        return None
    order = {name: i for i, name in enumerate(history.sensors)}
    counts = np.zeros(len(history.sensors), dtype=np.int64)
    kinds = ["phase"] * len(history.sensors)
    rated: set[str] = set()
    for batch in memory.scan("input", start_us, end_us, history.sensors, ["sensor", "t", "value"]):
        if batch.num_rows == 0:
            continue
        tally = pc.value_counts(batch.column(0))
        names = tally.field("values").to_pylist()
        n = tally.field("counts").to_numpy()
        for name, k in zip(names, n):
            counts[order[name]] += k
        raw = batch.column(2).is_valid()
        if not pc.any(raw).as_py():
            continue
        raw_rows = batch.filter(raw)
        for name in pc.unique(raw_rows.column(0)).to_pylist():
            if name in rated:
                continue
            t = raw_rows.filter(pc.equal(raw_rows.column(0), name)).column(1).cast(pa.int64()).to_numpy()
            step = np.diff(np.sort(t))
            if step.size:
                rated.add(name)
                kinds[order[name]] = f"raw {1e6 / float(np.median(step)):.4g} Hz"
            else:
                kinds[order[name]] = "raw"
    return counts, kinds


def _summarise(history: History, events: Events | None,
               samples: tuple[np.ndarray, list[str]] | None) -> list[SummaryRow]:
    starts, ends = history.bounds[:-1], history.bounds[1:]
    n_rows = ends - starts
    # reduceat over the per-sensor row blocks; every reported sensor has >= 1 row.
    collapsed_pct = 100.0 * np.add.reduceat(history.collapsed.astype(np.int64), starts) / n_rows
    mean_sync = np.add.reduceat(history.sync, starts) / n_rows
    last_sync = history.sync[ends - 1]
    n = len(history.sensors)
    collapses = dissipations = None
    if events is not None:
        collapses = np.bincount(events.rank[events.is_collapse], minlength=n)
        dissipations = np.bincount(events.rank[~events.is_collapse], minlength=n)
    rows: list[SummaryRow] = []
    for i, sensor in enumerate(history.sensors):
        rows.append(
            SummaryRow(
                sensor=sensor,
                kind="-" if samples is None else samples[1][i],
                samples=None if samples is None else int(samples[0][i]),
                collapses=None if collapses is None else int(collapses[i]),
                dissipations=None if dissipations is None else int(dissipations[i]),
                collapsed_pct=float(collapsed_pct[i]),
                mean_coherence_sync=float(mean_sync[i]),
                last_coherence_sync=float(last_sync[i]),
            )
        )
    return rows


def load(
    root: str | os.PathLike[str], sensors: Sequence[str] | None, start_us: int | None, end_us: int | None
) -> tuple[Path, History, Events | None, list[SummaryRow]]:
    """The rows to report and their summary: the root as a path, the coherence_history rows,
    the events (None without ``events/``) and one :class:`SummaryRow` per sensor.

    Raises:
        as :func:`summary_rows`.
    """
    path = Path(root)
    if start_us is not None and end_us is not None and start_us > end_us:
        raise ValueError(f"start ({utc_text(start_us)}) is after end ({utc_text(end_us)})")
    if sensors is not None:
        if isinstance(sensors, str):
            sensors = [sensors]  # one id, not its characters
        if not sensors:
            raise ValueError("sensors is empty: give at least one sensor id, or None for all")
    memory = TemporalMemory(path)
    history = _read_history(memory, sensors, start_us, end_us)
    events = _read_events(memory, history, start_us, end_us)
    samples = _count_samples(memory, history, start_us, end_us)
    return path, history, events, _summarise(history, events, samples)


def summary_rows(
    root: str | os.PathLike[str],
    *,
    sensors: Sequence[str] | None = None,
    start_us: int | None = None,
    end_us: int | None = None,
) -> list[SummaryRow]:
    """The per-sensor summary of :func:`write_report`, without drawing anything.

    Args:
        root: the archive root (``memory.storage.path``).
        sensors: sensor ids to report, in this order; None for every sensor
            of coherence_history, in natural name order (``s-2`` before ``s-10``).
        start_us, end_us: only rows with ``start_us <= t <= end_us``
            (microseconds since the epoch, UTC); None leaves that end open.

    Returns:
        One :class:`SummaryRow` per sensor (definitions in the module docstring).

    Raises:
        FileNotFoundError: ``root`` is not a directory.
        ValueError: no coherence_history rows (in the range), a sensor
            without coherence_history rows (naming the known ones), an empty
            ``sensors`` or ``start_us > end_us``.
    """
    return load(root, sensors, start_us, end_us)[3]

