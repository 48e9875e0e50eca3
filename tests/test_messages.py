"""Wire formats (input samples, output messages, dead letters) and archive schemas."""

from __future__ import annotations

import base64
import hashlib
import json

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError

from schemas.datasets import (
    DATASETS,
    PARTITION_COLUMNS,
    PARTITION_SCHEMA,
    TIMESTAMP,
    dataset_schema,
    partition_dir,
    partition_values,
)
from schemas.messages import (
    WITNESS_LOG_GENESIS,
    CollapseEvent,
    DeadLetter,
    DeadLetterReason,
    InvalidSample,
    MacroWitness,
    MesoWitness,
    MetaWitness,
    MicroWitness,
    PhaseSample,
    SyncRecord,
    WitnessRecord,
    classify_sample,
    collapse_event_id,
    format_utc,
    from_json_bytes,
    parse_sample,
    parse_utc,
    to_json_bytes,
    without_original,
    witness_log_digest,
)

T_US = 1_764_115_200_125_000  # 2025-11-26T00:00:00.125Z


# --------------------------------------------------------------------------
# Input samples.


def test_parse_sample_float_seconds():
    s = parse_sample(b'{"sensor": "pmu-7", "t": 1764115200.125, "phase": 1.23}')
    assert s == PhaseSample(sensor="pmu-7", t_us=T_US, phase=(1.23,), cell=None)
    assert s.channels == 1


def test_parse_sample_channels_and_cell():
    s = parse_sample('{"sensor": "pmu-7", "t": 1764115200.125, "phase": [1.23, -0.4], "cell": "c-3"}')
    assert s.phase == (1.23, -0.4) and s.channels == 2 and s.cell == "c-3"


@pytest.mark.parametrize(
    "t",
    [
        "1764115200.125",  # JSON number
        '"2025-11-26T00:00:00.125Z"',
        '"2025-11-26T00:00:00.125+00:00"',
        '"2025-11-26T01:00:00.125+01:00"',
        '"2025-11-25T19:00:00.125-05:00"',
    ],
)
def test_float_and_iso_times_are_equal(t):
    assert parse_sample(f'{{"sensor": "a", "t": {t}, "phase": 0}}').t_us == T_US


def test_float_time_is_rounded_to_the_nearest_microsecond():
    # 1764115200.1234567 is not representable; the nearest microsecond is .123457.
    assert parse_sample(b'{"sensor": "a", "t": 1764115200.1234567, "phase": 0}').t_us == 1_764_115_200_123_457
    assert parse_sample(b'{"sensor": "a", "t": 1764115200, "phase": 0}').t_us == 1_764_115_200_000_000


def test_extra_fields_are_ignored():
    assert parse_sample(b'{"sensor": "a", "t": 1, "phase": 0, "quality": 3}').t_us == 1_000_000


def test_sample_json_round_trip_is_exact():
    for t_us in (T_US, T_US + 1, 1_764_115_200_999_999, 0, -1):
        sample = PhaseSample("pmu-7", t_us, (0.5, -1.25), "c")
        assert parse_sample(sample.to_json_bytes()) == sample


BAD_SAMPLES = [
    (b"not json", DeadLetterReason.MALFORMED),
    (b"", DeadLetterReason.MALFORMED),
    (b"\xff\xfe\x00", DeadLetterReason.MALFORMED),
    (b"[1, 2, 3]", DeadLetterReason.MALFORMED),
    (b'"a string"', DeadLetterReason.MALFORMED),
    (b"[" * 100_000, DeadLetterReason.MALFORMED),
    (b'{"t": 1, "phase": 0}', DeadLetterReason.SCHEMA),
    (b'{"sensor": "a", "phase": 0}', DeadLetterReason.SCHEMA),
    (b'{"sensor": "a", "t": 1}', DeadLetterReason.SCHEMA),
    (b'{"sensor": 7, "t": 1, "phase": 0}', DeadLetterReason.SCHEMA),
    (b'{"sensor": "", "t": 1, "phase": 0}', DeadLetterReason.SCHEMA),
    (b'{"sensor": "a", "t": true, "phase": 0}', DeadLetterReason.SCHEMA),
    (b'{"sensor": "a", "t": [1], "phase": 0}', DeadLetterReason.SCHEMA),
    (b'{"sensor": "a", "t": "yesterday", "phase": 0}', DeadLetterReason.SCHEMA),
    (b'{"sensor": "a", "t": "2025-11-26T00:00:00", "phase": 0}', DeadLetterReason.SCHEMA),  # no zone
    (b'{"sensor": "a", "t": 1e13, "phase": 0}', DeadLetterReason.SCHEMA),
    (b'{"sensor": "a", "t": 1, "phase": "1.2"}', DeadLetterReason.SCHEMA),
    (b'{"sensor": "a", "t": 1, "phase": [1, "x"]}', DeadLetterReason.SCHEMA),
    (b'{"sensor": "a", "t": 1, "phase": [1, [2]]}', DeadLetterReason.SCHEMA),
    (b'{"sensor": "a", "t": 1, "phase": false}', DeadLetterReason.SCHEMA),
    (b'{"sensor": "a", "t": 1, "phase": 0, "cell": 5}', DeadLetterReason.SCHEMA),
    (b'{"sensor": "a", "t": NaN, "phase": 0}', DeadLetterReason.NAN),
    (b'{"sensor": "a", "t": Infinity, "phase": 0}', DeadLetterReason.NAN),
    (b'{"sensor": "a", "t": 1, "phase": NaN}', DeadLetterReason.NAN),
    (b'{"sensor": "a", "t": 1, "phase": [0.1, -Infinity]}', DeadLetterReason.NAN),
    (b'{"sensor": "a", "t": 1, "phase": 1e400}', DeadLetterReason.NAN),
    (b'{"sensor": "a", "t": 1, "phase": []}', DeadLetterReason.CHANNELS),
]


@pytest.mark.parametrize(("value", "reason"), BAD_SAMPLES)
def test_bad_input_maps_to_its_dead_letter_reason(value, reason):
    assert classify_sample(value) is reason
    with pytest.raises(InvalidSample) as info:
        parse_sample(value)
    assert info.value.reason is reason and info.value.detail


def test_schema_wins_over_nan_and_nan_over_channels():
    assert classify_sample(b'{"sensor": 1, "t": NaN, "phase": []}') is DeadLetterReason.SCHEMA
    assert classify_sample(b'{"sensor": "a", "t": NaN, "phase": []}') is DeadLetterReason.NAN


def test_too_large():
    value = json.dumps({"sensor": "a", "t": 1, "phase": [0.0] * 100}).encode()
    assert classify_sample(value, max_bytes=len(value)) is None
    assert classify_sample(value, max_bytes=len(value) - 1) is DeadLetterReason.TOO_LARGE


def test_good_sample_classifies_as_none():
    assert classify_sample(b'{"sensor": "a", "t": 1, "phase": 0}') is None


def test_the_nine_dead_letter_reasons_of_the_spec():
    assert {r.value for r in DeadLetterReason} == {
        "malformed", "schema", "nan", "duplicate", "late", "future", "too_large", "channels", "capacity",
    }


# --------------------------------------------------------------------------
# Output messages.


def test_utc_formatting_is_exact():
    assert format_utc(T_US) == "2025-11-26T00:00:00.125000Z"
    assert format_utc(0) == "1970-01-01T00:00:00.000000Z"
    assert format_utc(-1) == "1969-12-31T23:59:59.999999Z"
    assert parse_utc(format_utc(T_US + 1)) == T_US + 1


def test_event_id_is_deterministic_sha256():
    a = collapse_event_id("pmu-7", T_US, "collapse")
    assert a == collapse_event_id("pmu-7", T_US, "collapse")
    assert a == hashlib.sha256(b'["pmu-7",1764115200125000,"collapse"]').hexdigest()
    assert len({a, collapse_event_id("pmu-7", T_US, "dissipate"), collapse_event_id("pmu-7", T_US + 1, "collapse"),
                collapse_event_id("pmu-8", T_US, "collapse")}) == 4


def test_collapse_event_fields_and_json():
    e = CollapseEvent.create(event="collapse", sensor="pmu-7", cell="c", t_us=T_US,
                             t_master=0.9 + 0.3j, t_emissary=0.7 + 0.1j)
    obj = json.loads(to_json_bytes(e))
    assert list(obj) == ["event_id", "event", "reason", "sensor", "cell", "t", "coherence_sync",
                         "t_sync", "t_master", "t_emissary", "delta_phase"]
    assert obj["event_id"] == collapse_event_id("pmu-7", T_US, "collapse")
    assert obj["reason"] is None and obj["t"] == "2025-11-26T00:00:00.125000Z"
    assert obj["t_sync"] == pytest.approx([0.8, 0.2])
    assert obj["coherence_sync"] == pytest.approx(0.68)
    assert obj["delta_phase"] == pytest.approx(abs(abs(0.9 + 0.3j) - abs(0.7 + 0.1j)))
    assert e.t_us == T_US
    assert from_json_bytes(CollapseEvent, to_json_bytes(e)) == e


def test_collapse_event_rules():
    kw = dict(sensor="a", t_us=T_US, t_master=1 + 0j, t_emissary=1 + 0j)
    with pytest.raises(ValidationError):
        CollapseEvent.create(event="collapse", reason="phase", **kw)
    with pytest.raises(ValidationError):
        CollapseEvent.create(event="dissipate", **kw)
    assert CollapseEvent.create(event="dissipate", reason="coherence", **kw).reason == "coherence"
    obj = json.loads(to_json_bytes(CollapseEvent.create(event="collapse", **kw)))
    for field, bad in [("event", "explode"), ("t", "2025-11-26T00:00:00"), ("t_sync", [1.0]),
                       ("event_id", "xyz"), ("extra", 1)]:
        with pytest.raises(ValidationError):
            CollapseEvent.model_validate({**obj, field: bad})


def test_sync_record_round_trip():
    r = SyncRecord(node="becomingone", sensor="a", t="2025-11-26T01:00:00.125+01:00", t_sync=(0.5, 0.5),
                   coherence_sync=0.5, t_master=(1.0, 0.0), t_emissary=(0.0, 1.0), delta_phase=0.0,
                   state="dissipated", mature=True)
    assert r.t == "2025-11-26T00:00:00.125000Z" and r.t_us == T_US
    assert from_json_bytes(SyncRecord, to_json_bytes(r)) == r


def test_witness_records_per_layer():
    event = CollapseEvent.create(event="collapse", sensor="a", t_us=T_US, t_master=1 + 0j, t_emissary=1 + 0j)
    t = format_utc(T_US)
    records = [
        WitnessRecord(layer="micro", t=t, payload=MicroWitness(operator="lag", worker=0, items_in=10,
                                                                items_out=9, drops=1, seconds=0.002)),
        WitnessRecord(layer="meso", t=t, payload=MesoWitness(sensor="a", transducer="master", t_re=0.1,
                                                              t_im=0.2, coherence=0.05, n_products=120)),
        WitnessRecord(layer="macro", t=t, payload=MacroWitness(event=event, coherence_master=1.0,
                                                                coherence_emissary=1.0, master_span=12.5)),
    ]
    digest = WITNESS_LOG_GENESIS
    for r in records:
        digest = witness_log_digest(digest, to_json_bytes(r))
    records.append(WitnessRecord(layer="meta", t=t, payload=MetaWitness(
        records={"micro": 1, "meso": 1, "macro": 1, "meta": 0}, log_sha256=digest)))
    for r in records:
        data = to_json_bytes(r)
        assert json.loads(data)["layer"] == r.layer
        assert from_json_bytes(WitnessRecord, data) == r


def test_witness_payload_must_match_its_layer():
    payload = {"operator": "lag", "worker": 0, "items_in": 1, "items_out": 1, "drops": 0, "seconds": 0.0}
    assert WitnessRecord.model_validate({"layer": "micro", "t": format_utc(0), "payload": payload})
    with pytest.raises(ValidationError):
        WitnessRecord.model_validate({"layer": "meso", "t": format_utc(0), "payload": payload})


def test_dead_letter_keeps_the_original_bytes():
    raw = b"\x00\xffnot json"
    d = DeadLetter.create(original=raw, reason="malformed", error="not JSON", topic="becomingone.phases",
                          partition=3, offset=42, key=b"pmu-7")
    obj = json.loads(to_json_bytes(d))
    assert obj == {"reason": "malformed", "error": "not JSON", "topic": "becomingone.phases", "partition": 3,
                   "offset": 42, "row": None, "key": base64.b64encode(b"pmu-7").decode(),
                   "original": base64.b64encode(raw).decode(), "original_size": len(raw),
                   "original_sha256": hashlib.sha256(raw).hexdigest(), "truncated": False, "omitted": None}
    back = from_json_bytes(DeadLetter, to_json_bytes(d))
    assert back.original_bytes == raw and back.key_bytes == b"pmu-7" and back.reason is DeadLetterReason.MALFORMED
    with pytest.raises(ValidationError):
        DeadLetter.model_validate({**obj, "original": "not base64!"})
    with pytest.raises(ValidationError):
        DeadLetter.model_validate({**obj, "reason": "weird"})


def test_dead_letter_carries_at_most_the_limit_of_the_original():
    raw = bytes(range(256)) * 5_000  # 1.28 MB
    d = DeadLetter.create(original=raw, reason="malformed", error="x" * 50_000, key=b"k" * 100_000,
                          max_original_bytes=65_536)
    back = from_json_bytes(DeadLetter, to_json_bytes(d))
    assert back.original_bytes == raw[:65_536] and back.key_bytes == b"k" * 65_536
    assert (back.original_size, back.original_sha256, back.truncated) == (len(raw), hashlib.sha256(raw).hexdigest(), True)
    assert len(back.error) < 1_100 and back.error.endswith("(50,000 characters)")
    assert len(to_json_bytes(d)) < 200_000
    # Refused still: without the original and the key; then nothing is left to drop.
    bare = from_json_bytes(DeadLetter, without_original(to_json_bytes(d)))
    assert bare.original_bytes == b"" and bare.key is None and bare.truncated
    assert (bare.original_size, bare.original_sha256, bare.reason) == (len(raw), back.original_sha256, back.reason)
    assert without_original(to_json_bytes(bare)) is None


def test_dead_letter_from_an_invalid_sample():
    value = b'{"sensor": "a", "t": 1, "phase": []}'
    with pytest.raises(InvalidSample) as info:
        parse_sample(value)
    d = DeadLetter.create(original=value, reason=info.value.reason, error=info.value.detail)
    assert d.reason == "channels" and d.original_bytes == value and d.topic is None


# --------------------------------------------------------------------------
# Archive schemas.


def test_archive_datasets_and_columns():
    assert set(DATASETS) == {"temporal_signatures", "coherence_history", "witnessing_logs", "events",
                             "mesh_sync", "mesh_members", "input"}
    assert DATASETS["temporal_signatures"].names == ["sensor", "cell", "transducer", "t", "t_re", "t_im",
                                                     "coherence", "n_products"]
    assert DATASETS["coherence_history"].names == ["sensor", "t", "coherence_master", "coherence_emissary",
                                                   "coherence_sync", "delta_phase", "state"]
    assert DATASETS["input"].names == ["sensor", "cell", "t", "phase", "value"]
    assert dataset_schema("events") is DATASETS["events"]
    with pytest.raises(KeyError, match="unknown archive dataset"):
        dataset_schema("nope")


def test_archive_types():
    for name, schema in DATASETS.items():
        assert schema.field("t").type == TIMESTAMP == pa.timestamp("us", tz="UTC"), name
        assert not schema.field("t").nullable
        for field in schema:
            if field.name.endswith(("_re", "_im")):
                assert field.type == pa.float64(), (name, field.name)
        assert schema.metadata[b"becomingone.dataset"] == name.encode()
        assert not set(PARTITION_COLUMNS) & set(schema.names)
    assert DATASETS["input"].field("phase").type == pa.list_(pa.float64())
    assert DATASETS["temporal_signatures"].field("n_products").type == pa.int64()
    assert DATASETS["temporal_signatures"].field("cell").nullable
    assert not DATASETS["events"].field("sensor").nullable
    assert DATASETS["mesh_sync"].names == ["scope", "cell", "t", "n_sensors", "weight", "z_re", "z_im", "r", "psi",
                                           "r2_window", "locked_fraction", "state"]
    assert DATASETS["mesh_members"].names == ["cell", "sensor", "t", "lock", "rel_phase"]


def test_archive_rows_from_messages_fit_the_schemas():
    e = CollapseEvent.create(event="collapse", sensor="a", t_us=T_US, t_master=1 + 0j, t_emissary=0.5 + 0j)
    row = {k: v for k, v in e.model_dump().items() if k not in ("t_sync", "t_master", "t_emissary")}
    for name in ("t_sync", "t_master", "t_emissary"):
        row[f"{name}_re"], row[f"{name}_im"] = getattr(e, name)
    row["t"] = e.t_us
    table = pa.Table.from_pylist([row], schema=DATASETS["events"])
    assert table.column("t").cast(pa.int64()).to_pylist() == [T_US]
    sample = parse_sample(b'{"sensor": "a", "t": 1764115200.125, "phase": [1, 2]}')
    table = pa.Table.from_pylist([{"sensor": sample.sensor, "cell": sample.cell, "t": sample.t_us,
                                   "phase": list(sample.phase)}], schema=DATASETS["input"])
    assert table.num_rows == 1


def test_partitions():
    assert PARTITION_COLUMNS == ("date", "hour")
    assert PARTITION_SCHEMA.names == ["date", "hour"]
    assert partition_values(T_US) == ("2025-11-26", "00")
    assert partition_dir(T_US + 13 * 3_600_000_000) == "date=2025-11-26/hour=13"
    assert partition_dir(T_US - 1_000_000) == "date=2025-11-25/hour=23"


# -- the direct encoders of the high-volume messages -------------------------

_AWKWARD = ["pmu-7", 'quote"and\\slash', "ünïcode-φ", "tab\there"]
_FLOATS = [0.0, -0.0, 1.0, 0.1, 1e-7, -3.5e-12, 123456789.123, 0.9999999999999999]


def _complex(re: np.ndarray, im: np.ndarray) -> np.ndarray:
    """Complex values keeping the sign of a zero part (``re + 1j * im`` would not)."""
    out = np.empty(re.shape[0], np.complex128)
    out.real, out.imag = re, im
    return out


# Up to 8 values the encoders check finiteness on the Python numbers, beyond that with NumPy.
@pytest.mark.parametrize("n", [1, len(_FLOATS), 3 * len(_FLOATS)])
@pytest.mark.parametrize("sensor", _AWKWARD)
@pytest.mark.parametrize("cell", [None, "cell-1", "zürich"])
def test_sync_records_json_are_the_models_messages(sensor, cell, n):
    from schemas.messages import sync_records_json

    x = np.resize(np.array(_FLOATS), n)
    y = x[::-1].copy()
    t = 1764115200000000 + np.arange(n, dtype=np.int64)
    collapsed, mature = np.arange(n) % 2 == 0, np.arange(n) % 3 == 0
    values = sync_records_json("node-1", [sensor], [cell], [n], t, _complex(x, -y), np.abs(x), _complex(y, x),
                               _complex(-x, y), np.abs(y), collapsed, mature)
    assert len(values) == n
    for i, value in enumerate(values):
        xi, yi = float(x[i]), float(y[i])
        expected = SyncRecord(node="node-1", sensor=sensor, cell=cell, t=format_utc(int(t[i])),
                              t_sync=(xi, -yi), coherence_sync=abs(xi), t_master=(yi, xi), t_emissary=(-xi, yi),
                              delta_phase=abs(yi), state="collapsed" if i % 2 == 0 else "dissipated",
                              mature=i % 3 == 0)
        parsed = from_json_bytes(SyncRecord, value)
        assert parsed == expected
        assert list(json.loads(value)) == list(json.loads(to_json_bytes(expected)))  # same fields, same order


@pytest.mark.parametrize("n", [1, 9, 70])  # Python numbers, NumPy check, Arrow texts
def test_sync_records_json_write_a_missing_master_as_null(n):
    # A light node has no Master: T_master is NaN, and its sync records say "t_master": null.
    from schemas.messages import sync_records_json

    x = np.resize(np.array(_FLOATS), n)
    t = 1764115200000000 + np.arange(n, dtype=np.int64)
    master = _complex(x, -x)
    master[::2] = complex(np.nan, np.nan)
    flags = np.zeros(n, bool)
    values = sync_records_json("node-1", ["s"], [None], [n], t, _complex(x, x), np.abs(x), master, _complex(x, x),
                               np.zeros(n), flags, flags)
    for i, value in enumerate(values):
        parsed = from_json_bytes(SyncRecord, value)
        assert parsed.t_master == (None if i % 2 == 0 else (float(x[i]), -float(x[i])))
        assert json.loads(value) == json.loads(to_json_bytes(parsed))   # the model's fields, null included
    # Rows encoded one at a time (Python texts) are the bytes of many at once (Arrow texts from 64 rows on).
    one_by_one = [sync_records_json("node-1", ["s"], [None], [1], t[i:i + 1], _complex(x, x)[i:i + 1],
                                    np.abs(x)[i:i + 1], master[i:i + 1], _complex(x, x)[i:i + 1], np.zeros(1),
                                    flags[:1], flags[:1])[0] for i in range(n)]
    assert one_by_one == values


@pytest.mark.parametrize("n", [1, len(_FLOATS), 3 * len(_FLOATS), 70])  # 70: built column by column
@pytest.mark.parametrize("sensor", _AWKWARD)
def test_meso_records_json_are_the_models_records(sensor, n):
    from schemas.messages import meso_records_json

    x = np.resize(np.array(_FLOATS), n)
    t = 1764115200123456 + 10_000 * np.arange(n, dtype=np.int64)
    values = meso_records_json([sensor], [None], ["emissary"], [n], t, x, -x / 3, np.full(n, 42))
    assert len(values) == n
    for ti, xi, value in zip(t.tolist(), x.tolist(), values):
        expected = WitnessRecord(layer="meso", t=format_utc(ti), payload=MesoWitness(
            sensor=sensor, cell=None, transducer="emissary", t_re=xi, t_im=-xi / 3,
            coherence=xi * xi + (xi / 3) ** 2, n_products=42))
        assert from_json_bytes(WitnessRecord, value) == expected
        assert list(json.loads(value)) == list(json.loads(to_json_bytes(expected)))
        assert list(json.loads(value)["payload"]) == list(json.loads(to_json_bytes(expected))["payload"])


def test_direct_encoders_label_each_run_of_rows_with_its_sensor():
    from schemas.messages import meso_records_json, sync_records_json

    sensors, cells, counts = ["a", "b", "c"], [None, "x", "cell-c"], [2, 0, 3]
    x = np.linspace(0.1, 0.5, 5)
    t = 1764115200000000 + np.arange(5, dtype=np.int64)
    flags = np.zeros(5, bool)
    sync = [json.loads(v) for v in sync_records_json("node-1", sensors, cells, counts, t, _complex(x, x), x,
                                                     _complex(x, x), _complex(x, x), x, flags, flags)]
    assert [(r["sensor"], r["cell"]) for r in sync] == [("a", None)] * 2 + [("c", "cell-c")] * 3
    assert [r["t_sync"][0] for r in sync] == x.tolist()  # rows stay in order
    meso = [json.loads(v)["payload"] for v in meso_records_json(sensors, cells, ["emissary", "master", "master"],
                                                                 counts, t, x, -x, np.arange(5))]
    assert [(r["sensor"], r["transducer"], r["n_products"]) for r in meso] == [
        ("a", "emissary", 0), ("a", "emissary", 1), ("c", "master", 2), ("c", "master", 3), ("c", "master", 4)]


@pytest.mark.parametrize("n", [1, 20, 100])  # Python numbers, NumPy check, Arrow texts
def test_direct_encoders_refuse_non_finite_values(n):
    from schemas.messages import meso_records_json, sync_records_json

    bad = np.ones(n)
    bad[-1] = np.nan
    with pytest.raises(ValueError, match="no JSON form"):
        meso_records_json(["s"], [None], ["master"], [n], np.arange(n), bad, np.zeros(n), np.ones(n))
    with pytest.raises(ValueError, match="no JSON form"):
        meso_records_json(["s"], [None], ["master"], [n], np.arange(n), np.zeros(n),
                          np.where(bad == 1, 0.0, np.inf), np.ones(n))
    ok, flags = np.ones(n), np.ones(n, bool)
    with pytest.raises(ValueError, match="no JSON form"):
        sync_records_json("n", ["s"], [None], [n], np.arange(n), _complex(ok, bad), ok, _complex(ok, ok),
                          _complex(ok, ok), ok, flags, flags)


def test_float_texts_are_pythons_repr_at_every_magnitude():
    from schemas.float_text import float_texts

    rng = np.random.default_rng(11)
    x = np.concatenate([
        rng.normal(size=20_000) * 10.0 ** rng.integers(-320, 300, 20_000),  # every notation of both
        rng.uniform(-1, 1, 20_000),  # the usual magnitudes of T, coherence and phase
        rng.integers(-10**6, 10**6, 2_000).astype(float),  # integral: Arrow writes no ".0"
        np.array([0.0, -0.0, 1e-4, -1e-4, np.nextafter(1e-4, 0), 1e10, np.nextafter(1e10, 0), 1e16,
                  np.nextafter(1e16, 0), 5e-324, 1.7976931348623157e308, 2.2250738585072014e-308]),
        np.frombuffer(rng.bytes(8 * 20_000), np.float64),  # any bit pattern
    ])
    x = x[np.isfinite(x)]
    assert float_texts(x).to_pylist() == [repr(v) for v in x.tolist()]
    assert float_texts(x[1:]).to_pylist() == [repr(v) for v in x[1:].tolist()]  # a view starting mid-array
    assert float_texts(np.zeros(0)).to_pylist() == []
    with pytest.raises(ValueError, match="NaN or infinite"):
        float_texts(np.array([1.0, np.inf]))


@pytest.mark.parametrize("scale", [1.0, 1e-6, 1e12])
def test_direct_encoders_write_the_same_bytes_row_by_row_and_column_by_column(monkeypatch, scale):
    import schemas.messages.encoders as messages

    rng = np.random.default_rng(5)
    sensors = [_AWKWARD[i % len(_AWKWARD)] + str(i) for i in range(40)]
    cells = [None if i % 3 else "zürich" for i in range(40)]
    counts = rng.integers(0, 6, 40)
    counts[0] = 0  # a run with no rows
    n = int(counts.sum())
    assert n >= messages._COLUMNAR_ROWS
    x, y = rng.normal(size=n) * scale, rng.normal(size=n)
    x[::7] = np.round(x[::7])  # integral values and zeros
    t = 1764115200000000 + np.sort(rng.integers(0, 3_000_000, n))  # times shared between rows
    flags = rng.random((2, n)) < 0.5

    def encoded():
        return (messages.meso_records_json(sensors, cells, ["master"] * 40, counts, t, x, y, np.arange(n)),
                messages.sync_records_json("node-ü", sensors, cells, counts, t, _complex(x, y), x * x,
                                           _complex(y, x), _complex(-x, -y), np.abs(y), flags[0], flags[1]))

    columnar = encoded()
    monkeypatch.setattr(messages, "_JOIN_ROWS", 7)  # joined a few rows at a time: the same bytes
    assert encoded() == columnar
    monkeypatch.setattr(messages, "_COLUMNAR_ROWS", n + 1)
    assert encoded() == columnar


def _pinned_encoder_inputs(n: int, seed: int):
    """Rows of every awkward kind: signed zeros, integral values, extreme magnitudes, shared times."""
    rng = np.random.default_rng(seed)
    runs = max(1, n // 5)
    counts = np.zeros(runs, np.int64)
    np.add.at(counts, rng.integers(0, runs, n), 1)
    sensors = [_AWKWARD[i % len(_AWKWARD)] + str(i) for i in range(runs)]
    cells = [None if i % 3 else "zürich" for i in range(runs)]
    x = rng.normal(size=n) * 10.0 ** rng.integers(-150, 150, n)
    y = rng.uniform(-1, 1, n)
    x[::5], y[::7] = np.round(x[::5]), -0.0
    t = 1764115200000000 + np.sort(rng.integers(-5_000_000, 5_000_000, n))
    flags = rng.random((2, n)) < 0.5
    return sensors, cells, counts, t, x, y, flags


@pytest.mark.parametrize(("n", "digest"), [
    (1, "dbb756611ffe6051"), (7, "be0a9cc4b96b7676"), (63, "3ffc3968230b8a4b"), (64, "1406ce952c13c6cc"),
    (300, "83c39e864b11a3ee"),
])
def test_direct_encoders_write_the_pinned_bytes(n, digest):
    """The bytes of the high-volume messages do not change (pinned digests of fixed inputs)."""
    from schemas.messages import meso_records_json, sync_records_json

    sensors, cells, counts, t, x, y, flags = _pinned_encoder_inputs(n, seed=n)
    transducers = ["master" if i % 2 else "emissary" for i in range(len(sensors))]
    h = hashlib.sha256()
    for value in meso_records_json(sensors, cells, transducers, counts, t, x, y, np.arange(n) * 1009):
        h.update(value + b"\n")
    for value in sync_records_json("node-ü", sensors, cells, counts, t, _complex(x, y), x * x, _complex(y, x),
                                   _complex(-x, -y), np.abs(y), flags[0], flags[1]):
        h.update(value + b"\n")
    assert h.hexdigest()[:16] == digest
