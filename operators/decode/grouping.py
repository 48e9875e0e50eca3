"""The whole call's accepted rows by sensor: one code per distinct sensor over all parts, channel
agreement per sensor, a counting sort, then one batch per sensor or one block of runs per channel count.
No Python runs per accepted row; each batch carries the :class:`~schemas.provenance.Provenance` of
its rows, built from the parts' positions only when a row is rejected later."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numba import njit

from operators.dead_letters import DeadLetterBudget
from operators.decode.arrow import original_row_bytes
from operators.decode.output import Decoded, add, dead_letter
from operators.decode.parts import Part, origin
from schemas.provenance import Provenance
from schemas.samples import SampleBatch, SampleRuns
from schemas.messages import DeadLetterReason
from schemas.messages.input_samples import MAX_ID_BYTES
from schemas.messages.mesh_records import GLOBAL_CELL

__all__ = ["group_by_sensor"]


def _join(arrays: list[np.ndarray]) -> np.ndarray:
    # np.concatenate copies even a single array; the common call has one part.
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


@njit(cache=True, nogil=True)
def _group_rows(code, n_codes):
    """A counting sort of rows by code, arrival order kept within a code; rows with
    code < 0 (rejected) are left out.  Returns (row order, start of each code's
    rows in it; n_codes + 1 entries)."""
    start = np.zeros(n_codes + 1, np.int64)
    for c in code:
        if c >= 0:
            start[c + 1] += 1
    for k in range(n_codes):
        start[k + 1] += start[k]
    fill = start[:n_codes].copy()
    order = np.empty(start[n_codes], np.int64)
    for i in range(code.shape[0]):
        c = code[i]
        if c >= 0:
            order[fill[c]] = i
            fill[c] += 1
    return order, start


def _majority_width(code: np.ndarray, length: np.ndarray, n_sensors: int) -> np.ndarray:
    """Per sensor, the channel count most of its rows have (ties: the count
    that arrived first).  ``code`` and ``length`` cover accepted rows only."""
    chosen = np.full(n_sensors, -1, np.int64)
    if code.size == 0:
        return chosen
    span = int(length.max()) + 1
    key = code.astype(np.int64) * span + length
    keys, first, counts = np.unique(key, return_index=True, return_counts=True)
    sensor, width = keys // span, keys % span
    best = np.lexsort((first, -counts, sensor))  # by sensor, most rows first, then earliest
    sensor, width = sensor[best], width[best]
    lead = np.ones(sensor.size, dtype=bool)
    lead[1:] = sensor[1:] != sensor[:-1]
    chosen[sensor[lead]] = width[lead]
    return chosen


def group_by_sensor(parts: list[Part], out: Decoded, ingested: float, budget: DeadLetterBudget, as_runs: bool = False) -> None:
    # One code per distinct sensor over all parts, found in Arrow: the parts' names
    # are joined and encoded once, so only the distinct names become Python strings.
    if len(parts) == 1:
        names = parts[0].names
        global_code = np.arange(len(names), dtype=np.int32)
    else:
        enc = pc.dictionary_encode(pa.concat_arrays([p.names for p in parts]))
        names = enc.dictionary
        global_code = enc.indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    names_list = names.to_pylist()
    codes, part_of = [], []
    first = 0
    for k, part in enumerate(parts):
        lookup = np.empty(len(part.names) + 1, np.int32)
        lookup[:-1] = global_code[first:first + len(part.names)]
        lookup[-1] = -1  # -1 (already dead) picks the last slot, which is -1 again
        first += len(part.names)
        codes.append(lookup[part.code])
        part_of.append(np.full(part.code.shape[0], k, np.int32))
    code = _join(codes)

    def refuse(wrong: np.ndarray, reason: DeadLetterReason, text_of) -> None:
        """Dead letters of the rows ``wrong`` (indices over all parts), which then count as rejected."""
        part_id, local_row = _join(part_of), _join([np.arange(p.code.shape[0]) for p in parts])
        for i in wrong.tolist():
            part, r = parts[int(part_id[i])], int(local_row[i])
            message = part.message_at(r)
            if part.raw is None and not budget.admit(message, reason):
                continue  # counted for the message's summary
            text = text_of(i)
            row = None
            if part.raw is None:
                row = int(part.row[r])
                text = f"row {row}: {text}"
            add(out, dead_letter(message, part.original_at(r), reason, text, budget.limits, row=row))
        code[wrong] = -1

    # Ids are bounded (an id is kept per sensor and written into every output row), and no cell may take
    # the global mesh's name: both are `schema`.
    long_name = pc.greater(pc.binary_length(names), MAX_ID_BYTES).fill_null(False).to_numpy(zero_copy_only=False)
    if long_name.any():
        wrong = np.flatnonzero((code >= 0) & long_name[np.maximum(code, 0)])
        refuse(wrong, DeadLetterReason.SCHEMA, lambda i: (
            f"sensor id of {len(names_list[code[i]].encode())} bytes; at most {MAX_ID_BYTES} bytes of UTF-8"))
    if any(p.cells is not None for p in parts):
        cells = pa.concat_arrays([p.cells if p.cells is not None else pa.nulls(p.code.shape[0], pa.string())
                                  for p in parts])
        too_long = pc.greater(pc.binary_length(cells), MAX_ID_BYTES).fill_null(False).to_numpy(zero_copy_only=False)
        global_name = pc.equal(cells, GLOBAL_CELL).fill_null(False).to_numpy(zero_copy_only=False)
        wrong = np.flatnonzero((code >= 0) & (too_long | global_name))
        if wrong.size:
            refuse(wrong, DeadLetterReason.SCHEMA, lambda i: (
                f"cell {GLOBAL_CELL!r} is the name of the global mesh (T_global)" if global_name[i] else
                f"cell name of {len(cells[i].as_py().encode())} bytes; at most {MAX_ID_BYTES} bytes of UTF-8"))

    # A sensor is a phase sensor or a raw one (SPEC section 9): rows of the kind the fewer of the
    # sensor's rows in this call have are rejected as `schema` (ties: the kind of its first row).
    raw_sensor = np.full(len(names), parts[0].raw_values, np.bool_)
    if len({p.raw_values for p in parts}) == 2:
        raw_row = _join([np.full(p.code.shape[0], p.raw_values, np.bool_) for p in parts])
        accepted = np.flatnonzero(code >= 0)
        raw_sensor = _majority_kind(code[accepted], raw_row[accepted], len(names))
        wrong = accepted[raw_row[accepted] != raw_sensor[code[accepted]]]
        if wrong.size:
            refuse(wrong, DeadLetterReason.SCHEMA, lambda i: (
                f"a raw value where sensor {names_list[code[i]]!r} sends phases in this batch" if raw_row[i] else
                f"a phase where sensor {names_list[code[i]]!r} sends raw values in this batch"))

    # A sensor has one channel count; rows that disagree with the majority of
    # the sensor's rows in this call are rejected as `channels`.  Parts that
    # all hold one dense width cannot disagree: no per-row look needed.
    widths = {p.dense.shape[1] if p.dense is not None else -1 for p in parts}
    uniform = len(widths) == 1 and -1 not in widths
    if not uniform:
        length = _join([p.length for p in parts])
        accepted = np.flatnonzero(code >= 0)
        acc_length = length[accepted]
        if acc_length.size and acc_length.min() != acc_length.max():
            chosen = _majority_width(code[accepted], acc_length, len(names))
            wrong = accepted[acc_length != chosen[code[accepted]]]
            if wrong.size:
                refuse(wrong, DeadLetterReason.CHANNELS, lambda i: (
                    f"{int(length[i])} channels where sensor {names_list[code[i]]!r} has "
                    f"{int(chosen[code[i]])} in this batch"))

    # Group rows by sensor, arrival order kept inside a sensor.
    order, group_start = _group_rows(code, len(names_list))
    out.rows += int(order.size)
    if order.size == 0:
        return
    group_codes = np.flatnonzero(np.diff(group_start))
    starts, ends = group_start[group_codes], group_start[group_codes + 1]
    identity = order.size == code.size and group_codes.size == 1  # one sensor, nothing rejected

    t_us = _join([p.t_us for p in parts])
    # Source positions are joined and gathered only for rows rejected later (their Provenance).
    positions = functools.cache(lambda: (_join([p.partition for p in parts]), _join([p.offset for p in parts]),
                                         _join([p.row for p in parts])))
    cell_valid = _join([p.cell_valid for p in parts])
    with_cells = bool(cell_valid.any())
    if not identity:
        # np.take is markedly faster than fancy indexing for these gathers.
        t_us = np.take(t_us, order)
        if with_cells:
            cell_valid = np.take(cell_valid, order)

    # Phase: Arrow messages with scalar, fixed-size-list or uniformly long
    # list columns of one width gather whole rows of their (n, C) views; otherwise each
    # sensor's rows are gathered from the flat values through their starts.
    if uniform:  # every part has one (n, C) view of one width
        dense = _join([p.dense for p in parts])
        phase_all = dense if identity else np.take(dense, order, axis=0)
        flat = start = None
    else:
        phase_all = None
        flat = _join([p.flat for p in parts])
        shift = np.cumsum([0] + [p.flat.shape[0] for p in parts[:-1]])
        start = _join([p.starts() + s for p, s in zip(parts, shift)])

    need_raw = any(p.raw is not None for p in parts)
    all_raw = need_raw and all(p.raw is not None for p in parts)
    raw_in_order = None
    if all_raw:
        # Every row has its own bytes (JSON only): one list in row order, sliced per sensor.
        flat_raw = parts[0].raw if len(parts) == 1 else [x for p in parts for x in p.raw]
        raw_in_order = flat_raw if identity else [flat_raw[i] for i in order.tolist()]
    part_of_row = _join(part_of)
    if need_raw:
        part_id, local_row = part_of_row[order], _join([np.arange(p.code.shape[0]) for p in parts])[order]
    else:
        # Which messages each sensor's rows came from, for all sensors at once.
        ok = slice(None) if order.size == code.size else code >= 0
        present = functools.cache(lambda: _presence(code[ok], part_of_row[ok], len(names_list), len(parts)))
    # Per message, once: its topic and its (partition, offset) -> message entry.
    part_topic = [p.message_at(0).topic if p.code.shape[0] else None for p in parts]
    part_source = [(origin(p.message_at(0)), p.message_at(0)) if p.raw is None and p.code.shape[0] else None
                   for p in parts]
    # Sensors whose rows come from the same messages share one (read-only) sources dict.
    shared_sources: dict[tuple[int, ...], dict[tuple[int, int], Any]] = {}
    first_part = part_of_row[order[starts]].tolist()

    def batch(sensor_code: int, b0: int, b1: int, first: int) -> SampleBatch:
        if phase_all is not None:
            phase = phase_all[b0:b1]
        else:
            rows = order[b0:b1]
            width = int(length[rows[0]])
            phase = np.take(flat, start[rows][:, None] + np.arange(width))
        raw = None
        if raw_in_order is not None:
            raw = raw_in_order[b0:b1]
        elif need_raw and all(parts[k].raw is not None for k in np.unique(part_id[b0:b1]).tolist()):
            raw = [parts[k].raw[r] for k, r in zip(part_id[b0:b1].tolist(), local_row[b0:b1].tolist())]
        sources = None
        if raw is None:
            # Arrow rows: keep a reference to their messages for late dead letters.
            part_ids = tuple((np.unique(part_id[b0:b1]) if need_raw else present()[sensor_code]).tolist())
            sources = shared_sources.get(part_ids)
            if sources is None:
                sources = shared_sources[part_ids] = dict(e for k in part_ids if (e := part_source[k]) is not None)
        provenance = Provenance.gathered(order[b0:b1], positions, raw=raw, sources=sources or None,
                                         rebuild=original_row_bytes)
        return SampleBatch(names_list[sensor_code], t_us[b0:b1], phase, cell_of(b0, b1), topic=part_topic[first],
                           ingested=ingested, provenance=provenance, raw=bool(raw_sensor[sensor_code]))

    def cell_of(b0: int, b1: int) -> str | None:
        with_cell = np.flatnonzero(cell_valid[b0:b1]) if with_cells else ()
        if not len(with_cell):
            return None
        k, r = _locate(parts, int(order[b0 + with_cell[-1]]))
        return parts[k].cell_at(r)

    codes_l, starts_l, ends_l = group_codes.tolist(), starts.tolist(), ends.tolist()
    if as_runs:
        # The sensors' rows as they are (grouped by sensor, arrival order within), one block per channel
        # count and kind.
        counts = ends - starts
        cells = [cell_of(b0, b1) for b0, b1 in zip(starts_l, ends_l)] if with_cells else None
        make = lambda j: batch(codes_l[j], starts_l[j], ends_l[j], first_part[j])  # noqa: E731
        kinds = raw_sensor[group_codes]
        whole = SampleRuns([names_list[c] for c in codes_l], counts, t_us,
                           phase_all if phase_all is not None else np.zeros((t_us.shape[0], 1)), cells, ingested, make)
        widths = np.zeros(len(codes_l), np.int64) if phase_all is not None else length[order[starts]]
        for width in np.unique(widths).tolist():
            for raw in (False, True):
                runs = np.flatnonzero((widths == width) & (kinds == raw))
                if not runs.size:
                    continue
                part = whole if runs.size == len(codes_l) else whole.select(runs)
                part.raw = raw
                if phase_all is None:
                    rows = np.repeat(starts[runs] - (np.cumsum(counts[runs]) - counts[runs]), counts[runs]) + \
                        np.arange(int(counts[runs].sum()))
                    part.phase = np.take(flat, start[order[rows]][:, None] + np.arange(width))
                out.runs.append(part)
        return
    batches = []
    for sensor_code, b0, b1, first in zip(codes_l, starts_l, ends_l, first_part):
        batches.append((int(order[b0]), batch(sensor_code, b0, b1, first)))
    batches.sort(key=lambda item: item[0])  # order of the sensor's first accepted row
    out.batches.extend(b for _, b in batches)


def _majority_kind(code: np.ndarray, raw: np.ndarray, n_sensors: int) -> np.ndarray:
    """Per sensor, whether most of its rows are raw (ties: the kind of its first row); ``code`` and ``raw``
    cover accepted rows only, in arrival order."""
    total = np.bincount(code, minlength=n_sensors)
    raws = np.bincount(code, weights=raw, minlength=n_sensors)
    first_raw = np.zeros(n_sensors, np.bool_)
    seen, first = np.unique(code, return_index=True)
    first_raw[seen] = raw[first]
    return np.where(2 * raws == total, first_raw, 2 * raws > total)


def _presence(code: np.ndarray, part: np.ndarray, n_codes: int, n_parts: int) -> list[np.ndarray]:
    """Per code, the sorted distinct parts its rows are in."""
    if n_parts == 1:  # one message: every code is in it
        return [_ONLY_PART] * n_codes
    if n_codes * n_parts <= 1 << 24:  # a bit matrix and one scatter
        matrix = np.zeros((n_codes, n_parts), np.bool_)
        matrix[code, part] = True
        rows, cols = np.nonzero(matrix)
        return np.split(cols, np.searchsorted(rows, np.arange(1, n_codes)))
    pairs = np.unique(code.astype(np.int64) * n_parts + part)
    cuts = np.searchsorted(pairs // n_parts, np.arange(1, n_codes))
    return [chunk % n_parts for chunk in np.split(pairs, cuts)]


_ONLY_PART = np.zeros(1, np.int64)


def _locate(parts: list[Part], index: int) -> tuple[int, int]:
    """(part, row in part) of a row index over the concatenated parts."""
    for k, part in enumerate(parts):
        n = part.code.shape[0]
        if index < n:
            return k, index
        index -= n
    raise IndexError(index)
