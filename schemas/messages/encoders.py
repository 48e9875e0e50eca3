"""Encoders of the high-volume output messages: sync records and meso witness records.

They are written once per sensor and publish interval: with thousands of
sensors that is hundreds of thousands of messages per second of event time.
Building each through pydantic would cost more than computing it, so these write the same
JSON objects (same fields, same order) directly from values that are already
of their wire types.  The models (:class:`~schemas.messages.SyncRecord`,
:class:`~schemas.messages.MesoWitness`) stay the schema: tests hold the
encoders to them, and readers parse with them.

Each message is stated once, as a template: the texts common to every row
and the columns that differ from row to row.  :func:`_written` writes a
template row by row in Python for a few rows and column by column in Arrow
for many, with the same bytes.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.float_text import float_texts
from schemas.messages.wire import format_utc

L = TypeVar("L")  # a label of rows

#: From this many rows on, a template's texts are built column by column in
#: Arrow: each compute call costs a few microseconds, each row in Python about one.
_COLUMNAR_ROWS = 64
#: Rows encoded at a time: the texts of one join stay far below the 2 GiB that
#: Arrow's 32-bit string offsets allow (a sync message is about 400 bytes).
_JOIN_ROWS = 1 << 20


@functools.lru_cache(maxsize=65_536)
def json_text(value: str | None) -> str:
    """A JSON string literal, or ``null`` for None (non-ASCII kept as UTF-8).

    Cached: the same few sensor ids, cells and node names recur in every message.
    """
    return "null" if value is None else json.dumps(value, ensure_ascii=False)


def per_row(labels: Sequence[L], counts: Sequence[int]) -> list[L]:
    """``labels[i]`` repeated ``counts[i]`` times, in order: a label of each row of runs.

    >>> per_row(["a", "b", "c"], [2, 0, 1])
    ['a', 'a', 'c']
    """
    if len(labels) == 1:
        return [labels[0]] * int(counts[0])
    return [label for label, n in zip(labels, counts) for _ in range(n)]


def utc_texts(t_us: np.ndarray) -> pa.StringArray:
    """:func:`format_utc` of every time, as one Arrow array; each distinct time is formatted once."""
    distinct, index = np.unique(np.asarray(t_us, np.int64), return_inverse=True)
    return pa.array([format_utc(t) for t in distinct.tolist()], pa.string()).take(pa.array(index))


def state_texts(collapsed: np.ndarray) -> pa.StringArray:
    """The sync state of each row as text (``collapsed`` or ``dissipated``), as one Arrow array.

    >>> state_texts(np.array([True, False])).to_pylist()
    ['collapsed', 'dissipated']
    """
    return pc.if_else(pa.array(np.asarray(collapsed, bool)), "collapsed", "dissipated")


def _check_finite(what: str, arrays: tuple[np.ndarray, ...]) -> None:
    """ValueError unless every number of ``arrays`` is finite."""
    if arrays[0].shape[0] > 8:  # one NumPy pass per column pays off past a few values
        ok = all(bool(np.isfinite(a).all()) for a in arrays)
    else:  # most calls carry one grid point: look at the Python numbers
        ok = all(math.isfinite(x.real) and math.isfinite(x.imag) for a in arrays for x in a.tolist())
    if not ok:
        raise ValueError(f"{what}: a value with no JSON form (NaN or infinite)")


# --------------------------------------------------------------------------
# Columns: the text of one field in every row, as Python strings or as Arrow arrays.


class _Column:
    """The ``values`` of a field, one per row; ``rows()`` writes them all, ``arrow(r)`` the rows ``r``."""

    __slots__ = ("values",)

    def __init__(self, values: np.ndarray) -> None:
        self.values = values

    def rows(self) -> list[str]:
        raise NotImplementedError

    def arrow(self, r: slice) -> pa.Array:
        raise NotImplementedError


class _Floats(_Column):
    """Finite floats as Python's ``repr`` writes them."""

    __slots__ = ()

    def rows(self) -> list[str]:
        return list(map(repr, self.values.tolist()))

    def arrow(self, r: slice) -> pa.Array:
        return float_texts(self.values[r])


class _PairsOrNull(_Column):
    """Complex values as ``[re,im]`` pairs of finite floats, or ``null`` where the value is NaN
    (T_master on a light node, which has no Master)."""

    __slots__ = ()

    def rows(self) -> list[str]:
        return ["null" if math.isnan(z.real) else f"[{z.real!r},{z.imag!r}]" for z in self.values.tolist()]

    def arrow(self, r: slice) -> pa.Array:
        values = self.values[r]
        missing = np.isnan(values.real)
        known = np.where(missing, 0j, values)
        pairs = pc.binary_join_element_wise("[", float_texts(known.real), ",", float_texts(known.imag), "]", "")
        return pc.if_else(pa.array(missing), "null", pairs)


class _Ints(_Column):
    __slots__ = ()

    def rows(self) -> list[str]:
        return list(map(str, np.asarray(self.values, np.int64).tolist()))

    def arrow(self, r: slice) -> pa.Array:
        return pa.array(np.asarray(self.values, np.int64)[r]).cast(pa.string())


class _Times(_Column):
    """Event times (int microseconds) as :func:`format_utc` writes them."""

    __slots__ = ()

    def rows(self) -> list[str]:
        return list(map(format_utc, np.asarray(self.values, np.int64).tolist()))

    def arrow(self, r: slice) -> pa.Array:
        return utc_texts(self.values[r])


class _States(_Column):
    """``collapsed`` where the values are true, else ``dissipated``."""

    __slots__ = ()

    def rows(self) -> list[str]:
        return ["collapsed" if k else "dissipated" for k in self.values.tolist()]

    def arrow(self, r: slice) -> pa.Array:
        return state_texts(self.values[r])


class _Bools(_Column):
    __slots__ = ()

    def rows(self) -> list[str]:
        return ["true" if m else "false" for m in self.values.tolist()]

    def arrow(self, r: slice) -> pa.Array:
        return pc.if_else(pa.array(np.asarray(self.values, bool)[r]), "true", "false")


class _Runs(_Column):
    """``values[i]`` (a text) in each of the ``counts[i]`` rows after the earlier runs."""

    __slots__ = ("counts",)

    def __init__(self, values: list[str], counts: Sequence[int]) -> None:
        self.values, self.counts = values, counts

    def rows(self) -> list[str]:
        return per_row(self.values, self.counts)

    def arrow(self, r: slice) -> pa.Array:
        run = np.repeat(np.arange(len(self.counts)), np.asarray(self.counts, np.int64))
        return pa.array(self.values, pa.string()).take(run[r])


@functools.lru_cache(maxsize=64)
def _row_format(texts: tuple[str | None, ...]) -> str:
    """A ``str.format`` pattern of a template: its texts, and ``{}`` for each column (None)."""
    return "".join("{}" if t is None else t.replace("{", "{{").replace("}", "}}") for t in texts)


def _written(n: int, template: tuple[str | _Column, ...]) -> list[bytes]:
    """The ``n`` messages of ``template`` (texts common to every row, and columns) as UTF-8 bytes."""
    if n < _COLUMNAR_ROWS:
        shape, columns = [], []
        for part in template:
            if isinstance(part, str):
                shape.append(part)
            else:
                shape.append(None)
                columns.append(part.rows())
        pattern = _row_format(tuple(shape))
        return [pattern.format(*texts).encode("utf-8") for texts in zip(*columns)]
    out: list[bytes] = []
    for start in range(0, n, _JOIN_ROWS):
        r = slice(start, min(n, start + _JOIN_ROWS))
        texts = [part if isinstance(part, str) else part.arrow(r) for part in template]
        out.extend(pc.binary_join_element_wise(*texts, "").cast(pa.binary()).to_pylist())
    return out


# --------------------------------------------------------------------------
# The messages.


def meso_records_json(sensors: Sequence[str], cells: Sequence[str | None], transducers: Sequence[str],
                      counts: Sequence[int], t_us: np.ndarray, t_re: np.ndarray, t_im: np.ndarray,
                      n_products: np.ndarray) -> list[bytes]:
    """``meso`` :class:`WitnessRecord` messages of grid points as JSON bytes: each
    :class:`MesoWitness` payload (coherence = t_re^2 + t_im^2) in its record at ``t_us``.

    The rows come in runs: the ``counts[i]`` rows after the earlier runs are of
    ``sensors[i]`` (cell ``cells[i]``) and transducer ``transducers[i]``, so one
    call encodes the values of many sensors.  ValueError for a NaN or infinite value.

    >>> record, = meso_records_json(["s"], [None], ["master"], [1], np.array([0]), np.array([0.5]),
    ...                             np.array([0.0]), np.array([7]))
    >>> record[:61]
    b'{"layer":"meso","t":"1970-01-01T00:00:00.000000Z","payload":{'
    >>> json.loads(record)["payload"]
    {'sensor': 's', 'cell': None, 'transducer': 'master', 't_re': 0.5, 't_im': 0.0, 'coherence': 0.25, 'n_products': 7}
    """
    heads = [f'{{"sensor":{json_text(sensor)},"cell":{json_text(cell)},"transducer":"{transducer}","t_re":'
             for sensor, cell, transducer in zip(sensors, cells, transducers)]
    coherence = t_re * t_re + t_im * t_im  # the same two products and sum as in Python floats
    _check_finite("meso payload", (t_re, t_im))
    return _written(t_re.shape[0], (
        '{"layer":"meso","t":"', _Times(t_us), '","payload":', _Runs(heads, counts), _Floats(t_re),
        ',"t_im":', _Floats(t_im), ',"coherence":', _Floats(coherence), ',"n_products":', _Ints(n_products),
        "}}"))


def sync_records_json(node: str, sensors: Sequence[str], cells: Sequence[str | None], counts: Sequence[int],
                      t_us: np.ndarray, t_sync: np.ndarray, coherence_sync: np.ndarray, t_master: np.ndarray,
                      t_emissary: np.ndarray, delta_phase: np.ndarray, collapsed: np.ndarray,
                      mature: np.ndarray) -> list[bytes]:
    """:class:`SyncRecord` messages of grid points as JSON bytes, field for field.

    The rows come in runs: the ``counts[i]`` rows after the earlier runs are of
    ``sensors[i]`` (cell ``cells[i]``).  ``t_master`` NaN (a light node: no Master) is written as
    ``null``; ValueError for any other NaN or infinite value.
    """
    heads = [f'{{"node":{json_text(node)},"sensor":{json_text(sensor)},"cell":{json_text(cell)},"t":"'
             for sensor, cell in zip(sensors, cells)]
    _check_finite("sync record", (t_sync, coherence_sync, t_master[~np.isnan(t_master.real)], t_emissary,
                                  delta_phase))
    return _written(t_us.shape[0], (
        _Runs(heads, counts), _Times(t_us), '","t_sync":[', _Floats(t_sync.real), ",", _Floats(t_sync.imag),
        '],"coherence_sync":', _Floats(coherence_sync), ',"t_master":', _PairsOrNull(t_master),
        ',"t_emissary":[', _Floats(t_emissary.real), ",", _Floats(t_emissary.imag),
        '],"delta_phase":', _Floats(delta_phase), ',"state":"', _States(collapsed), '","mature":', _Bools(mature),
        "}"))
