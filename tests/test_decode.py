"""Decoding raw input messages (JSON and Arrow IPC) into per-sensor batches and dead letters."""

from __future__ import annotations

import collections
import json
import math
import re

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operators.decode import (
    RawMessage,
    arrow_row_bytes,
    decode_messages,
    original_row_bytes,
)
from schemas.datasets import partition_dir, partition_values
from schemas.messages import ARROW_STREAM_CONTENT_TYPE, DeadLetterLimits, format_utc
from schemas.messages import DeadLetterReason as R
from schemas.timebase import MAX_T_US, MIN_T_US, to_micros, unit_limit

T0 = 1_764_115_200.125  # 2025-11-26T00:00:00.125Z
T0_US = 1_764_115_200_125_000
TOPIC = "becomingone.phases"
ARROW = [("content-type", ARROW_STREAM_CONTENT_TYPE.encode())]


def json_message(obj, offset: int = 0, partition: int = 3, key: bytes | None = b"k") -> RawMessage:
    value = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return RawMessage(key=key, value=value, topic=TOPIC, partition=partition, offset=offset)


def ipc(table: pa.Table, max_chunksize: int | None = None) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=max_chunksize)
    return sink.getvalue().to_pybytes()


def arrow_message(table: pa.Table | bytes, offset: int = 0, partition: int = 1, key: bytes | None = b"k") -> RawMessage:
    value = table if isinstance(table, bytes) else ipc(table)
    return RawMessage(key=key, value=value, headers=ARROW, topic=TOPIC, partition=partition, offset=offset)


def by_sensor(decoded):
    return {b.sensor: b for b in decoded.batches}


def reasons(decoded):
    return [d.reason for d in decoded.dead]


def read_one_row(value: bytes) -> dict:
    table = pa.ipc.open_stream(value).read_all()
    assert table.num_rows == 1
    return table.to_pylist()[0]


# --------------------------------------------------------------------------
# JSON.


def test_json_good_samples_grouped_by_sensor():
    msgs = [
        json_message({"sensor": "pmu-7", "t": T0, "phase": 1.23}, offset=10),
        json_message({"sensor": "pmu-9", "t": "2025-11-26T01:00:00.125+01:00", "phase": [0.5, -0.4], "cell": "c-1"}, offset=11),
        json_message({"sensor": "pmu-7", "t": "2025-11-26T00:00:00.135Z", "phase": [2.0], "cell": "c-3"}, offset=12),
        json_message({"sensor": "pmu-9", "t": T0 + 1, "phase": [0.25, 0.75]}, offset=13),
    ]
    out = decode_messages(msgs)
    assert out.dead == [] and out.counts == {} and out.rows == 4 and out.accepted == 4
    assert [b.sensor for b in out.batches] == ["pmu-7", "pmu-9"]  # order of first appearance
    a, b = out.batches
    assert a.t_us.tolist() == [T0_US, T0_US + 10_000]
    assert a.phase.tolist() == [[1.23], [2.0]]
    assert a.cell == "c-3"
    where = a.provenance
    assert where.partition.tolist() == [3, 3] and where.offset.tolist() == [10, 12] and where.row.tolist() == [0, 0]
    assert a.provenance.raw == [msgs[0].value, msgs[2].value]
    assert b.t_us.tolist() == [T0_US, T0_US + 1_000_000]
    assert b.phase.tolist() == [[0.5, -0.4], [0.25, 0.75]]
    assert b.cell == "c-1"  # the last one given
    assert b.t_us.dtype == np.int64 and b.phase.dtype == np.float64


def test_json_time_is_rounded_to_the_nearest_microsecond():
    out = decode_messages([json_message(b'{"sensor": "a", "t": 1764115200.1234567, "phase": 0}')])
    assert out.batches[0].t_us.tolist() == [1_764_115_200_123_457]


def test_json_content_type_header_is_accepted():
    msg = RawMessage(key=None, value=b'{"sensor": "a", "t": 1, "phase": 0}',
                     headers=[("Content-Type", b"application/json; charset=utf-8")])
    out = decode_messages([msg])
    assert out.accepted == 1 and out.batches[0].t_us.tolist() == [1_000_000]
    # Not from Kafka: origin -1 in the batch.
    assert out.batches[0].provenance.partition.tolist() == [-1] and out.batches[0].provenance.offset.tolist() == [-1]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b'{"sensor": "a", "t": 1, ', R.MALFORMED),  # not JSON
        (b"[1, 2, 3]", R.MALFORMED),  # not an object
        (b'{"sensor": "\xff", "t": 1, "phase": 0}', R.MALFORMED),  # not UTF-8
        (b'{"sensor": "a", "phase": 0}', R.SCHEMA),  # missing t
        (b'{"sensor": "a", "t": true, "phase": 0}', R.SCHEMA),  # mistyped t
        (b'{"sensor": 7, "t": 1, "phase": 0}', R.SCHEMA),  # mistyped sensor
        (b'{"sensor": "a", "t": "yesterday", "phase": 0}', R.SCHEMA),  # unreadable time
        (b'{"sensor": "a", "t": "2025-11-26T00:00:00", "phase": 0}', R.SCHEMA),  # ISO without a zone
        (b'{"sensor": "a", "t": 1, "phase": [1, null]}', R.SCHEMA),
        (b'{"sensor": "a", "t": 1, "phase": NaN}', R.NAN),
        (b'{"sensor": "a", "t": Infinity, "phase": 0}', R.NAN),
        (b'{"sensor": "a", "t": 1, "phase": [0.1, -Infinity]}', R.NAN),
        (b'{"sensor": "a", "t": 1, "phase": []}', R.CHANNELS),
        (b'{"sensor": "a", "t": 1, "phase": 0, "pad": "' + b"x" * 200 + b'"}', R.TOO_LARGE),
    ],
)
def test_json_dead_letter_reasons_keep_origin(value, reason):
    good = json_message({"sensor": "a", "t": T0, "phase": 0.0}, offset=7)
    bad = json_message(value, offset=8, partition=2, key=b"pmu-7")
    out = decode_messages([good, bad], max_message_bytes=128)
    assert out.accepted == 1 and out.rows == 2
    assert out.counts == {reason: 1}
    (letter,) = out.dead
    assert letter.reason == reason
    assert letter.original_bytes == value
    assert (letter.topic, letter.partition, letter.offset, letter.key_bytes) == (TOPIC, 2, 8, b"pmu-7")
    assert letter.error


def test_too_large_is_checked_before_parsing():
    # Not even JSON, but too large wins: the parser never sees it.
    out = decode_messages([json_message(b"\x00" * 11)], max_message_bytes=10)
    assert reasons(out) == [R.TOO_LARGE]
    assert decode_messages([json_message(b"\x00" * 10)], max_message_bytes=10).counts == {R.MALFORMED: 1}


def test_missing_value_and_unknown_content_type_are_malformed():
    tombstone = RawMessage(key=b"a", value=None, topic=TOPIC, partition=0, offset=5)
    xml = RawMessage(key=None, value=b"<phase/>", headers=[("content-type", b"text/xml")], partition=0, offset=6)
    out = decode_messages([tombstone, xml])
    assert reasons(out) == [R.MALFORMED, R.MALFORMED]
    assert out.dead[0].original_bytes == b"" and out.dead[0].offset == 5
    assert out.dead[1].original_bytes == b"<phase/>" and "text/xml" in out.dead[1].error


def test_negative_origin_becomes_null_in_the_dead_letter():
    out = decode_messages([RawMessage(key=None, value=b"nope", partition=-1, offset=-1)])
    assert (out.dead[0].partition, out.dead[0].offset, out.dead[0].key) == (None, None, None)


def test_json_channel_count_follows_the_sensors_majority():
    msgs = [
        json_message({"sensor": "a", "t": T0 + 0, "phase": [0.0]}, offset=0),
        json_message({"sensor": "a", "t": T0 + 1, "phase": [0.0, 1.0]}, offset=1),
        json_message({"sensor": "a", "t": T0 + 2, "phase": [0.0, 1.0]}, offset=2),
        json_message({"sensor": "b", "t": T0 + 3, "phase": [0.0, 1.0, 2.0]}, offset=3),  # other sensor: own count
        json_message({"sensor": "c", "t": T0 + 4, "phase": 1.0}, offset=4),
        json_message({"sensor": "c", "t": T0 + 5, "phase": [1.0, 2.0]}, offset=5),  # tie: the first count wins
    ]
    out = decode_messages(msgs)
    got = by_sensor(out)
    assert got["a"].provenance.offset.tolist() == [1, 2] and got["a"].channels == 2
    assert got["b"].channels == 3
    assert got["c"].provenance.offset.tolist() == [4] and got["c"].channels == 1
    assert out.counts == {R.CHANNELS: 2}
    assert sorted(d.offset for d in out.dead) == [0, 5]
    assert {d.original_bytes for d in out.dead} == {msgs[0].value, msgs[5].value}


def test_nothing_in_nothing_out():
    out = decode_messages([])
    assert out.batches == [] and out.dead == [] and out.rows == 0 and out.accepted == 0


# --------------------------------------------------------------------------
# Arrow IPC.


def test_arrow_several_sensors_float_time_scalar_phase():
    table = pa.table({
        "sensor": ["a", "b", "a", "c", "b"],
        "t": [T0, T0 + 0.5, T0 + 0.01, T0 + 2, T0 + 0.25],
        "phase": [0.1, 0.2, 0.3, 0.4, 0.5],
        "cell": ["x", None, "y", None, "z"],
        "extra": [1, 2, 3, 4, 5],  # unknown columns are ignored, like unknown JSON fields
    })
    out = decode_messages([arrow_message(table, offset=42)])
    assert out.dead == [] and out.rows == 5
    assert [b.sensor for b in out.batches] == ["a", "b", "c"]
    a, b, c = out.batches
    assert a.t_us.tolist() == [T0_US, T0_US + 10_000] and a.phase.tolist() == [[0.1], [0.3]]
    where = a.provenance
    assert where.row.tolist() == [0, 2] and where.offset.tolist() == [42, 42] and where.partition.tolist() == [1, 1]
    assert a.cell == "y" and b.cell == "z" and c.cell is None
    assert b.t_us.tolist() == [T0_US + 500_000, T0_US + 250_000]  # arrival order, not time order
    assert b.provenance.row.tolist() == [1, 4]
    assert a.provenance.raw is None  # rebuilt on demand from the message


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
@pytest.mark.parametrize("tz", [None, "UTC", "Europe/Berlin"])
def test_arrow_timestamp_time_of_any_unit_and_zone(unit, tz):
    scale = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[unit]
    whole = 1_764_115_200
    raw = [whole * scale, (whole + 1) * scale]
    table = pa.table({"sensor": ["a", "a"], "t": pa.array(raw, pa.timestamp(unit, tz=tz)), "phase": [0.0, 1.0]})
    out = decode_messages([arrow_message(table)])
    assert out.batches[0].t_us.tolist() == [whole * 1_000_000, (whole + 1) * 1_000_000]


def test_arrow_nanosecond_time_rounds_like_the_time_base():
    ns = pa.array([1_764_115_200_123_456_500, 1_764_115_200_123_456_499], pa.timestamp("ns", tz="UTC"))
    out = decode_messages([arrow_message(pa.table({"sensor": ["a", "a"], "t": ns, "phase": [0.0, 0.0]}))])
    assert out.batches[0].t_us.tolist() == to_micros(ns).tolist() == [1_764_115_200_123_457, 1_764_115_200_123_456]


@pytest.mark.parametrize(
    "phase_type", [pa.list_(pa.float64()), pa.large_list(pa.float64()), pa.list_(pa.float64(), 2)]
)
def test_arrow_list_phase(phase_type):
    phases = [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]]
    table = pa.table({"sensor": ["a", "b", "a"], "t": [T0, T0, T0 + 1], "phase": pa.array(phases, phase_type)})
    out = decode_messages([arrow_message(table)])
    got = by_sensor(out)
    assert got["a"].phase.tolist() == [[0.1, 0.2], [0.5, 0.6]] and got["a"].channels == 2
    assert got["b"].phase.tolist() == [[0.3, 0.4]]


def test_arrow_sliced_columns_are_read_at_their_offsets():
    # Writers may send slices; the reader must honour array offsets.
    base = pa.table({
        "sensor": ["x", "a", "b", "a"],
        "t": [0.0, T0, T0 + 1, T0 + 2],
        "phase": pa.array([[9.0, 9.0], [0.1, 0.2], [0.3, 0.4], [0.5, 0.6]], pa.list_(pa.float64(), 2)),
    }).slice(1)
    out = decode_messages([arrow_message(base)])
    assert by_sensor(out)["a"].phase.tolist() == [[0.1, 0.2], [0.5, 0.6]]
    assert "x" not in by_sensor(out)


def test_arrow_dictionary_sensor_and_several_record_batches():
    # Two record batches with different dictionaries: codes must be unified by name.
    first = pa.record_batch({
        "sensor": pa.DictionaryArray.from_arrays(pa.array([0, 1, 0], pa.int8()), pa.array(["a", "b"])),
        "t": [T0, T0, T0 + 1],
        "phase": [0.0, 1.0, 2.0],
    })
    second = pa.record_batch({
        "sensor": pa.DictionaryArray.from_arrays(pa.array([0, 1], pa.int8()), pa.array(["b", "c"])),
        "t": [T0 + 1, T0 + 2],
        "phase": [3.0, 4.0],
    })
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, first.schema) as writer:
        writer.write_batch(first)
        writer.write_batch(second)
    out = decode_messages([arrow_message(sink.getvalue().to_pybytes())])
    got = by_sensor(out)
    assert [b.sensor for b in out.batches] == ["a", "b", "c"]
    assert got["a"].phase[:, 0].tolist() == [0.0, 2.0]
    assert got["b"].phase[:, 0].tolist() == [1.0, 3.0] and got["b"].provenance.row.tolist() == [1, 3]  # rows across batches
    assert got["c"].provenance.row.tolist() == [4]


def test_sensor_names_unify_across_messages_and_dictionaries_with_null_and_empty_names():
    # A dictionary may hold null and "" itself; rows pointing there are dead, other
    # messages (Arrow and JSON) name the same sensors and land in the same batches.
    first = pa.table({
        "sensor": pa.DictionaryArray.from_arrays(pa.array([0, 1, 2, 3, 0], pa.int8()), pa.array(["b", None, "", "a"])),
        "t": [T0, T0, T0, T0, T0 + 1],
        "phase": [0.0, 1.0, 2.0, 3.0, 4.0],
    })
    second = pa.table({"sensor": ["a", "c", "b"], "t": [T0 + 1, T0, T0 + 2], "phase": [5.0, 6.0, 7.0]})
    out = decode_messages([arrow_message(first, offset=1), json_message({"sensor": "c", "t": T0 + 1, "phase": 8.0}),
                           arrow_message(second, offset=3)])
    assert out.rows == 9 and out.accepted == 7
    assert sorted(letter.reason for letter in out.dead) == [R.SCHEMA, R.SCHEMA]
    assert [(b.sensor, b.phase[:, 0].tolist()) for b in out.batches] == [
        ("b", [0.0, 4.0, 7.0]), ("a", [3.0, 5.0]), ("c", [8.0, 6.0])]


def test_arrow_string_view_columns():
    table = pa.table({
        "sensor": pa.array(["a", "b", "a"], pa.string_view()),
        "t": [T0, T0, T0 + 1],
        "phase": [0.0, 1.0, 2.0],
        "cell": pa.array(["x", "y", None], pa.string_view()),
    })
    out = decode_messages([arrow_message(table)])
    assert [(b.sensor, b.cell, len(b)) for b in out.batches] == [("a", "x", 2), ("b", "y", 1)]


def test_arrow_large_utf8_sensor_and_dictionary_cell():
    table = pa.table({
        "sensor": pa.array(["a", "a"], pa.large_string()),
        "t": [T0, T0 + 1],
        "phase": [0.0, 1.0],
        "cell": pa.array(["c-1", "c-2"]).dictionary_encode(),
    })
    out = decode_messages([arrow_message(table)])
    assert out.batches[0].sensor == "a" and out.batches[0].cell == "c-2"


def test_arrow_bad_rows_are_dead_lettered_with_their_own_bytes():
    table = pa.table({
        "sensor": ["a", None, "a", "a", "", "a", "a", "a", "a"],
        "t": [T0, T0, None, math.nan, T0, T0 + 1, T0 + 2, 1e13, T0 + 3],
        "phase": pa.array(
            [[0.1], [0.1], [0.1], [0.1], [0.1], [math.inf], [], [0.1], [None]], pa.list_(pa.float64())
        ),
    })
    msg = arrow_message(table, offset=77, partition=4, key=b"pmu")
    out = decode_messages([msg])
    assert out.accepted == 1 and out.rows == 9
    assert out.batches[0].provenance.row.tolist() == [0]
    expected = {1: R.SCHEMA, 2: R.SCHEMA, 3: R.NAN, 4: R.SCHEMA, 5: R.NAN, 6: R.CHANNELS, 7: R.SCHEMA, 8: R.SCHEMA}
    assert out.counts == {R.SCHEMA: 5, R.NAN: 2, R.CHANNELS: 1}
    for letter in out.dead:
        assert (letter.topic, letter.partition, letter.offset, letter.key_bytes) == (TOPIC, 4, 77, b"pmu")
        row = int(letter.error.split(":")[0].removeprefix("row "))
        assert letter.reason == expected[row]
        assert letter.original_bytes == arrow_row_bytes(msg.value, row)
        # repr: NaN compares unequal to itself, its repr does not.
        assert repr(read_one_row(letter.original_bytes)) == repr(table.slice(row, 1).to_pylist()[0])


def test_arrow_schema_error_outranks_nan_in_one_row():
    # A null sensor and a NaN phase: schema wins, as in the JSON parser.
    table = pa.table({"sensor": [None], "t": [T0], "phase": [math.nan]})
    assert reasons(decode_messages([arrow_message(table)])) == [R.SCHEMA]


def test_arrow_scalar_phase_nulls_and_nans():
    table = pa.table({"sensor": ["a"] * 4, "t": [T0, T0 + 1, T0 + 2, T0 + 3], "phase": [0.0, None, math.nan, -math.inf]})
    out = decode_messages([arrow_message(table)])
    assert reasons(out) == [R.SCHEMA, R.NAN, R.NAN]
    assert out.batches[0].provenance.row.tolist() == [0]


def test_arrow_fixed_size_list_nulls_nans_and_zero_width():
    phases = pa.array([[0.1, 0.2], None, [0.5, math.nan], [0.7, None]], pa.list_(pa.float64(), 2))
    out = decode_messages([arrow_message(pa.table({"sensor": ["a"] * 4, "t": [T0 + i for i in range(4)], "phase": phases}))])
    assert out.batches[0].provenance.row.tolist() == [0] and reasons(out) == [R.SCHEMA, R.NAN, R.SCHEMA]
    empty = pa.array([[], []], pa.list_(pa.float64(), 0))
    out = decode_messages([arrow_message(pa.table({"sensor": ["a", "a"], "t": [T0, T0 + 1], "phase": empty}))])
    assert out.batches == [] and reasons(out) == [R.CHANNELS, R.CHANNELS]


def test_arrow_minority_channel_counts_are_rejected():
    phases = [[0.0, 1.0], [0.0], [0.0, 1.0], [0.0, 1.0, 2.0], [5.0]]
    table = pa.table({"sensor": ["a", "a", "a", "a", "b"], "t": [T0 + i for i in range(5)], "phase": phases})
    msg = arrow_message(table)
    out = decode_messages([msg])
    got = by_sensor(out)
    assert got["a"].provenance.row.tolist() == [0, 2] and got["a"].phase.tolist() == [[0.0, 1.0], [0.0, 1.0]]
    assert got["b"].phase.tolist() == [[5.0]]
    assert reasons(out) == [R.CHANNELS, R.CHANNELS]
    assert sorted(read_one_row(d.original_bytes)["phase"] for d in out.dead) == [[0.0], [0.0, 1.0, 2.0]]


def test_arrow_integer_and_float32_values_are_widened():
    table = pa.table({
        "sensor": ["a", "a"],
        "t": pa.array([1_764_115_200, 1_764_115_201], pa.int64()),
        "phase": pa.array([[1, 2], [3, 4]], pa.list_(pa.int32())),
    })
    out = decode_messages([arrow_message(table)])
    assert out.batches[0].t_us.tolist() == [1_764_115_200_000_000, 1_764_115_201_000_000]
    assert out.batches[0].phase.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    f32 = pa.table({"sensor": ["a"], "t": [T0], "phase": pa.array([0.5], pa.float32())})
    assert decode_messages([arrow_message(f32)]).batches[0].phase.tolist() == [[0.5]]


# Event times are bounded by what an Arrow timestamp[ns] holds (SPEC section 4):
# 1677-09-21T00:12:43.145225Z to 2262-04-11T23:47:16.854775Z.
_POISON_JSON_TIMES = [-1e11, 1e10, 9_300_000_000, -(10**11), "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z",
                      "1677-09-21T00:12:43.145224Z", "2262-04-11T23:47:16.854776Z"]
_EDGE_JSON_TIMES = ["1677-09-21T00:12:43.145225Z", "2262-04-11T23:47:16.854775Z", 9_223_372_036, -9_223_372_036]


@pytest.mark.parametrize("t", _POISON_JSON_TIMES)
def test_json_times_beyond_timestamp_ns_are_schema_errors(t):
    out = decode_messages([json_message({"sensor": "a", "t": T0, "phase": 0.0}),
                           json_message({"sensor": "a", "t": t, "phase": 0.0}, offset=1)])
    assert out.accepted == 1 and reasons(out) == [R.SCHEMA]
    assert "2262-04-11" in out.dead[0].error


@pytest.mark.parametrize("t", _EDGE_JSON_TIMES)
def test_json_times_at_the_edges_of_the_range_are_accepted(t):
    out = decode_messages([json_message({"sensor": "a", "t": t, "phase": 0.0})])
    assert out.accepted == 1 and not out.dead
    (t_us,) = out.batches[0].t_us.tolist()
    assert MIN_T_US <= t_us <= MAX_T_US
    # Every accepted time has a partition directory with a 4-digit year and a UTC text.
    assert re.fullmatch(r"date=\d{4}-\d{2}-\d{2}/hour=\d{2}", partition_dir(t_us))
    assert format_utc(t_us).endswith("Z")


@pytest.mark.parametrize("unit", ["s", "ms", "us"])
def test_arrow_timestamps_beyond_timestamp_ns_are_schema_errors(unit):
    per_second = {"s": 1, "ms": 1_000, "us": 1_000_000}[unit]
    table = pa.table({
        "sensor": ["a"] * 4,
        "t": pa.array([1_764_115_200 * per_second, -100_000_000_000 * per_second, 10_000_000_000 * per_second,
                       unit_limit(unit)], pa.timestamp(unit)),
        "phase": [0.0] * 4,
    })
    out = decode_messages([arrow_message(table)])
    assert out.accepted == 2 and reasons(out) == [R.SCHEMA, R.SCHEMA]
    assert sorted(b for batch in out.batches for b in batch.t_us.tolist())[-1] <= MAX_T_US


def test_arrow_float_and_integer_seconds_beyond_timestamp_ns_are_schema_errors():
    floats = pa.table({"sensor": ["a"] * 3, "t": [T0, -1e11, 9.3e9], "phase": [0.0] * 3})
    ints = pa.table({"sensor": ["a"] * 3, "t": pa.array([1_764_115_200, -10**11, 9_223_372_037], pa.int64()),
                     "phase": [0.0] * 3})
    for table in (floats, ints):
        out = decode_messages([arrow_message(table)])
        assert out.accepted == 1 and reasons(out) == [R.SCHEMA, R.SCHEMA]


def test_partition_years_are_four_digits():
    assert partition_dir(MIN_T_US) == "date=1677-09-21/hour=00"
    assert partition_dir(MAX_T_US) == "date=2262-04-11/hour=23"
    assert partition_values(-61_000_000_000 * 1_000_000)[0] == "0036-12-26"  # below year 1000: padded


def test_arrow_times_out_of_range_are_schema_errors():
    table = pa.table({
        "sensor": ["a", "a", "a"],
        "t": pa.array([1_764_115_200, 10**13, -(10**13)], pa.timestamp("s")),
        "phase": [0.0, 0.0, 0.0],
    })
    out = decode_messages([arrow_message(table)])
    assert out.accepted == 1 and reasons(out) == [R.SCHEMA, R.SCHEMA]


@pytest.mark.parametrize(
    ("table", "needle"),
    [
        (pa.table({"sensor": ["a"], "phase": [0.0]}), "missing column 't'"),
        (pa.table({"sensor": ["a"], "t": [T0]}), "missing column 'phase'"),
        (pa.table({"sensor": [1], "t": [T0], "phase": [0.0]}), "'sensor'"),
        (pa.table({"sensor": ["a"], "t": ["2025-11-26T00:00:00Z"], "phase": [0.0]}), "'t'"),
        (pa.table({"sensor": ["a"], "t": pa.array([T0], pa.float32()), "phase": [0.0]}), "'t'"),  # ~2 min resolution
        (pa.table({"sensor": ["a"], "t": [T0], "phase": ["1.0"]}), "'phase'"),
        (pa.table({"sensor": ["a"], "t": [T0], "phase": [[["nested"]]]}), "'phase'"),
        (pa.table({"sensor": ["a"], "t": [T0], "phase": [0.0], "cell": [3]}), "'cell'"),
        (pa.Table.from_arrays([pa.array(["a"]), pa.array([T0]), pa.array([0.0]), pa.array([1.0])],
                              names=["sensor", "t", "phase", "phase"]), "2 times"),
    ],
)
def test_arrow_schema_errors_reject_the_whole_message(table, needle):
    msg = arrow_message(table, offset=9)
    out = decode_messages([msg])
    assert out.batches == [] and reasons(out) == [R.SCHEMA]
    assert needle in out.dead[0].error
    assert out.dead[0].original_bytes == msg.value and out.dead[0].offset == 9


@pytest.mark.parametrize("value", [b"", b"not arrow at all", b'{"sensor": "a", "t": 1, "phase": 0}'])
def test_arrow_unreadable_stream_is_malformed(value):
    out = decode_messages([arrow_message(value, offset=3)])
    assert reasons(out) == [R.MALFORMED] and out.dead[0].original_bytes == value


def test_arrow_truncated_stream_is_malformed():
    value = ipc(pa.table({"sensor": ["a"] * 100, "t": [T0] * 100, "phase": [0.0] * 100}))
    assert reasons(decode_messages([arrow_message(value[: len(value) // 2])])) == [R.MALFORMED]


def test_arrow_message_too_large():
    value = ipc(pa.table({"sensor": ["a"] * 100, "t": [T0] * 100, "phase": [0.0] * 100}))
    out = decode_messages([arrow_message(value)], max_message_bytes=len(value) - 1)
    assert reasons(out) == [R.TOO_LARGE] and out.dead[0].original_bytes == value
    assert decode_messages([arrow_message(value)], max_message_bytes=len(value)).accepted == 100


def test_arrow_stream_without_rows_gives_nothing():
    schema = pa.schema([("sensor", pa.string()), ("t", pa.float64()), ("phase", pa.float64())])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema):
        pass
    out = decode_messages([arrow_message(sink.getvalue().to_pybytes())])
    assert out.batches == [] and out.dead == [] and out.rows == 0


# --------------------------------------------------------------------------
# Both encodings.


def test_arrow_and_json_encodings_give_identical_batches():
    rng = np.random.default_rng(7)
    n = 60
    sensors = [f"pmu-{i}" for i in rng.integers(0, 4, n)]
    t = T0 + np.cumsum(rng.uniform(0.001, 0.02, n))
    phase = rng.uniform(-10, 10, (n, 3))
    cells = [None if i % 5 else f"c-{i}" for i in range(n)]
    as_json = [
        json_message({"sensor": s, "t": float(ti), "phase": p.tolist(), "cell": c}, offset=i)
        for i, (s, ti, p, c) in enumerate(zip(sensors, t, phase, cells))
    ]
    table = pa.table({
        "sensor": sensors, "t": t,
        "phase": pa.FixedSizeListArray.from_arrays(pa.array(phase.ravel()), 3),
        "cell": cells,
    })
    from_json, from_arrow = decode_messages(as_json), decode_messages([arrow_message(table)])
    assert [b.sensor for b in from_json.batches] == [b.sensor for b in from_arrow.batches]
    for j, a in zip(from_json.batches, from_arrow.batches):
        np.testing.assert_array_equal(j.t_us, a.t_us)
        np.testing.assert_array_equal(j.phase, a.phase)
        assert j.cell == a.cell
        assert j.provenance.offset.tolist() == a.provenance.row.tolist()  # one JSON message per row, same positions

    # ISO strings in JSON against microsecond timestamps in Arrow.
    t_us = to_micros(t)
    iso = [json_message({"sensor": "s", "t": f"{np.datetime64(int(x), 'us')}Z", "phase": 0.0}) for x in t_us]
    ts = pa.table({"sensor": ["s"] * n, "t": pa.array(t_us, pa.timestamp("us")), "phase": [0.0] * n})
    np.testing.assert_array_equal(decode_messages(iso).batches[0].t_us, decode_messages([arrow_message(ts)]).batches[0].t_us)


def test_mixed_encodings_of_one_sensor_keep_arrival_order():
    msgs = [
        json_message({"sensor": "a", "t": T0, "phase": 0.0}, offset=0),
        arrow_message(pa.table({"sensor": ["a", "b"], "t": [T0 + 1, T0 + 1], "phase": [1.0, 2.0]}), offset=1),
        json_message({"sensor": "a", "t": T0 + 2, "phase": 3.0}, offset=2),
        json_message({"sensor": "c", "t": T0 + 2, "phase": 4.0}, offset=3),
    ]
    out = decode_messages(msgs)
    got = by_sensor(out)
    assert [b.sensor for b in out.batches] == ["a", "b", "c"]
    assert got["a"].phase[:, 0].tolist() == [0.0, 1.0, 3.0] and got["a"].provenance.offset.tolist() == [0, 1, 2]
    assert got["a"].provenance.raw is None  # one row came from Arrow
    assert got["c"].provenance.raw == [msgs[3].value]
    # The bytes of any row can be rebuilt from its message.
    assert [original_row_bytes(msgs[o], r) for o, r in zip(got["a"].provenance.offset, got["a"].provenance.row)][0] \
        == msgs[0].value
    assert read_one_row(original_row_bytes(msgs[1], 0)) == {"sensor": "a", "t": T0 + 1, "phase": 1.0}


def test_channel_majority_spans_both_encodings():
    msgs = [
        json_message({"sensor": "a", "t": T0, "phase": [0.0]}, offset=0),
        arrow_message(pa.table({"sensor": ["a", "a"], "t": [T0 + 1, T0 + 2], "phase": [[1.0, 2.0], [3.0, 4.0]]}), offset=1),
    ]
    out = decode_messages(msgs)
    assert out.batches[0].channels == 2 and out.batches[0].provenance.row.tolist() == [0, 1]
    assert reasons(out) == [R.CHANNELS] and out.dead[0].original_bytes == msgs[0].value


# --------------------------------------------------------------------------
# arrow_row_bytes.


def test_arrow_row_bytes_round_trips_one_row():
    table = pa.table({
        "sensor": pa.array(["a", "b", "c"]).dictionary_encode(),
        "t": pa.array([1, 2, 3], pa.timestamp("ms", tz="UTC")),
        "phase": pa.array([[0.1], [0.2, 0.3], [0.4]], pa.list_(pa.float64())),
        "cell": ["x", None, "z"],
    })
    value = ipc(table, max_chunksize=2)  # row 2 sits in the second record batch
    for row in range(3):
        one = arrow_row_bytes(value, row)
        back = pa.ipc.open_stream(one).read_all()
        assert back.schema == table.schema
        assert back.to_pylist() == table.slice(row, 1).to_pylist()
    # And it decodes like the row did inside its message.
    out = decode_messages([arrow_message(arrow_row_bytes(value, 1))])
    assert out.batches[0].sensor == "b" and out.batches[0].phase.tolist() == [[0.2, 0.3]]
    assert out.batches[0].t_us.tolist() == [2_000]


def test_arrow_row_bytes_rejects_bad_input():
    value = ipc(pa.table({"sensor": ["a"], "t": [T0], "phase": [0.0]}))
    with pytest.raises(IndexError):
        arrow_row_bytes(value, 1)
    with pytest.raises(IndexError):
        arrow_row_bytes(value, -1)
    with pytest.raises(ValueError):
        arrow_row_bytes(b"garbage", 0)


def test_content_type_header_parsing():
    assert RawMessage(None, b"", headers=[("CONTENT-TYPE", b"Application/Vnd.Apache.Arrow.Stream")]).content_type == (
        ARROW_STREAM_CONTENT_TYPE
    )
    assert RawMessage(None, b"", headers=[("content-type", "application/json;charset=utf-8")]).content_type == "application/json"
    assert RawMessage(None, b"", headers=[("trace", b"1")]).content_type is None
    assert RawMessage(None, b"").content_type is None


# --------------------------------------------------------------------------
# Property: random mixes of good and bad rows.

_GOOD_T = st.floats(min_value=1.6e9, max_value=1.9e9, allow_nan=False)
_T = st.one_of(_GOOD_T, _GOOD_T, _GOOD_T,
               st.sampled_from([math.nan, math.inf, -math.inf, None, 1e13, -1e13, -1e11, 9.3e9]))
_X = st.one_of(st.floats(-1e6, 1e6), st.floats(-1e6, 1e6), st.sampled_from([math.nan, math.inf, None]))
_ANY_ROW = st.fixed_dictionaries({
    "sensor": st.sampled_from(["a", "b", "c", None, ""]),
    "t": _T,
    "scalar": _X,
    "list": st.lists(_X, min_size=0, max_size=3),
    "cell": st.sampled_from([None, "x", "y"]),
})
_GOOD_ROW = st.fixed_dictionaries({
    "sensor": st.sampled_from(["a", "b", "c"]),
    "t": _GOOD_T,
    "scalar": st.floats(-1e6, 1e6),
    # Mostly two channels, so that minority counts occur.
    "list": st.one_of(st.lists(st.floats(-1e6, 1e6), min_size=2, max_size=2),
                      st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=3)),
    "cell": st.sampled_from([None, "x", "y"]),
})
_ROW = st.one_of(_GOOD_ROW, _GOOD_ROW, _ANY_ROW)


def _json_value(row: dict, list_phase: bool) -> bytes:
    obj = {"sensor": row["sensor"], "t": row["t"], "phase": row["list"] if list_phase else row["scalar"]}
    if row["cell"] is not None:
        obj["cell"] = row["cell"]
    return json.dumps(obj).encode()  # NaN/Infinity tokens are what a careless producer sends


def _arrow_values(rows: list[dict], list_phase: bool, cuts: list[int]) -> list[bytes]:
    phase_type = pa.list_(pa.float64()) if list_phase else pa.float64()
    values, bounds = [], [0, *sorted(cuts), len(rows)]
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        part = rows[lo:hi]
        table = pa.table({
            "sensor": pa.array([r["sensor"] for r in part], pa.string()),
            "t": pa.array([r["t"] for r in part], pa.float64()),
            "phase": pa.array([r["list"] if list_phase else r["scalar"] for r in part], phase_type),
            "cell": pa.array([r["cell"] for r in part], pa.string()),
        })
        values.append(ipc(table, max_chunksize=3))
    return values


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(_ROW, min_size=0, max_size=25),
    list_phase=st.booleans(),
    cuts=st.lists(st.integers(0, 25), max_size=3),
    junk=st.lists(st.binary(max_size=40), max_size=2),
)
def test_random_rows_are_never_lost_and_both_encodings_agree(rows, list_phase, cuts, junk):
    cuts = [c for c in cuts if c <= len(rows)]
    arrow_values = _arrow_values(rows, list_phase, cuts)
    arrow_msgs = [arrow_message(v, offset=i) for i, v in enumerate(arrow_values)]
    json_msgs = [json_message(_json_value(r, list_phase), offset=i) for i, r in enumerate(rows)]
    junk_msgs = [arrow_message(v, offset=100 + i) for i, v in enumerate(junk)]  # unreadable streams

    from_arrow = decode_messages(arrow_msgs + junk_msgs)
    from_json = decode_messages(json_msgs)

    # No row lost: every input row is accepted or dead-lettered exactly once.
    assert from_arrow.accepted + len(from_arrow.dead) == len(rows) + len(junk) == from_arrow.rows
    assert from_json.accepted + len(from_json.dead) == len(rows) == from_json.rows
    assert sum(from_arrow.counts.values()) == len(from_arrow.dead)

    # The same rows decide the same way in both encodings.
    junk_reasons = [d.reason for d in from_arrow.dead if d.offset is not None and d.offset >= 100]
    assert all(r == R.MALFORMED for r in junk_reasons)
    arrow_counts = dict(from_arrow.counts)
    if junk_reasons:
        arrow_counts[R.MALFORMED] -= len(junk_reasons)
    assert {k: v for k, v in arrow_counts.items() if v} == from_json.counts
    assert [b.sensor for b in from_arrow.batches] == [b.sensor for b in from_json.batches]
    for a, j in zip(from_arrow.batches, from_json.batches):
        np.testing.assert_array_equal(a.t_us, j.t_us)
        np.testing.assert_array_equal(a.phase, j.phase)
        assert a.cell == j.cell
        assert np.isfinite(a.phase).all() and a.phase.shape[1] >= 1
    # Arrow dead rows carry their own row as a one-row stream.
    for letter in from_arrow.dead:
        if letter.offset is not None and letter.offset < 100:
            assert pa.ipc.open_stream(letter.original_bytes).read_all().num_rows == 1

    # With an allowance of 2 rows per message: the same rows accepted, the same counts, still
    # nothing lost, and per message at most 2 row records and one summary.
    bounded = decode_messages(arrow_msgs + junk_msgs, limits=DeadLetterLimits(max_per_message=2))
    assert bounded.counts == from_arrow.counts and bounded.accepted == from_arrow.accepted
    assert bounded.accepted + sum(bounded.counts.values()) == bounded.rows == from_arrow.rows
    per_message = collections.Counter((d.offset, d.omitted is not None) for d in bounded.dead)
    assert all(n <= (1 if summary else 2) for (_, summary), n in per_message.items())
    assert sum(sum(d.omitted.values()) for d in bounded.dead if d.omitted) + sum(
        1 for d in bounded.dead if not d.omitted) == sum(bounded.counts.values())


@settings(max_examples=200, deadline=None)
@given(value=st.binary(max_size=300), arrow=st.booleans())
def test_arbitrary_bytes_never_raise(value, arrow):
    msg = arrow_message(value) if arrow else json_message(value)
    out = decode_messages([msg])
    assert out.accepted + len(out.dead) == out.rows >= 1


@pytest.mark.parametrize("n_messages, n_sensors", [(5, 4), (5_000, 4_100)])  # few; more pairs than a bit matrix
def test_every_arrow_row_keeps_the_way_back_to_its_own_bytes(n_messages, n_sensors):
    """Rows of many sensors spread over many Arrow messages: each batch row's original bytes are
    that row alone, cut from the message it came in (what a later dead letter carries)."""
    rng = np.random.default_rng(5)
    rows = max(2 * n_messages, 50)
    sensor = np.array([f"s{k}" for k in range(n_sensors)])[np.r_[np.arange(n_sensors), rng.integers(0, n_sensors, rows)]
                                                           [:max(rows, n_sensors)]]
    message = np.sort(rng.integers(0, n_messages, len(sensor)))
    t = T0 + np.arange(len(sensor)) * 0.001
    msgs = [arrow_message(pa.table({"sensor": sensor[message == m].tolist(), "t": t[message == m],
                                    "phase": np.full(int((message == m).sum()), 0.25)}), offset=m)
            for m in range(n_messages) if (message == m).any()]
    out = decode_messages(msgs)
    assert out.accepted == len(sensor) and not out.dead
    for batch in out.batches:
        for i in range(0, len(batch.t_us), max(1, len(batch.t_us) // 3)):
            (back,) = pa.ipc.open_stream(batch.provenance.original_bytes(i)).read_all().to_pylist()
            assert back["sensor"] == batch.sensor and round(back["t"] * 1e6) == batch.t_us[i]


# --------------------------------------------------------------------------
# Bounds: no message turns into a flood of dead letters or of memory (SPEC section 4).


def _compressed(table: pa.Table, codec: str = "zstd") -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression=codec)) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def test_one_message_yields_its_allowance_of_row_records_and_one_summary():
    n_bad = 500
    t = [T0 + i for i in range(10)] + [math.nan] * 300 + [None] * 200
    table = pa.table({"sensor": ["a"] * (10 + n_bad), "t": pa.array(t, pa.float64()), "phase": [0.0] * (10 + n_bad)})
    msg = arrow_message(table, offset=5, partition=2, key=b"pmu")
    out = decode_messages([msg, json_message({"sensor": "b", "t": math.nan, "phase": 0.0}, offset=6)],
                          limits=DeadLetterLimits(max_per_message=100))
    assert out.accepted == 10 and out.rows == 10 + n_bad + 1
    assert out.counts == {R.NAN: 301, R.SCHEMA: 200}
    per_row = [d for d in out.dead if d.omitted is None and d.offset == 5]
    (summary,) = [d for d in out.dead if d.omitted is not None]
    assert len(per_row) == 100 and [d.row for d in per_row] == list(range(10, 110))
    assert summary.omitted == {R.NAN: 200, R.SCHEMA: 200} and sum(summary.omitted.values()) == n_bad - 100
    assert (summary.topic, summary.partition, summary.offset, summary.row, summary.key_bytes) == (TOPIC, 2, 5, None, b"pmu")
    assert summary.original_bytes == msg.value and summary.original_size == len(msg.value)
    assert "source.max_dead_letters_per_message" in summary.error
    # The JSON message is its own message: its record is not held back.
    assert [d.offset for d in out.dead if d.offset == 6] == [6]


def test_compressed_message_is_too_large_by_its_decoded_size():
    n = 200_000  # 4 MB once decompressed, a few KB compressed
    table = pa.table({"sensor": pa.array(["a"] * n).dictionary_encode(), "t": pa.array([math.nan] * n, pa.float64()),
                      "phase": [0.0] * n})
    value = _compressed(table)
    assert len(value) < 100_000
    out = decode_messages([arrow_message(value)], max_message_bytes=1_048_576)
    (letter,) = out.dead
    assert letter.reason == R.TOO_LARGE and "decodes to" in letter.error
    assert out.rows == 1 and letter.original_bytes == value


@pytest.mark.parametrize("codec", ["zstd", "lz4"])
def test_compressed_message_within_the_limit_decodes_as_usual(codec):
    table = pa.table({"sensor": ["a", "b"] * 500, "t": [T0 + i for i in range(1000)], "phase": pa.array(
        [[0.5, -0.5]] * 1000, pa.list_(pa.float64())), "cell": pa.array(["c"] * 1000).dictionary_encode()})
    plain, packed = decode_messages([arrow_message(table)]), decode_messages(
        [arrow_message(_compressed(table, codec))], max_message_bytes=1_048_576)
    assert packed.accepted == plain.accepted == 1000 and not packed.dead
    for a, b in zip(plain.batches, packed.batches):
        assert (a.sensor, a.t_us.tolist(), a.phase.tolist(), a.cell) == (b.sensor, b.t_us.tolist(), b.phase.tolist(), b.cell)
