"""The transducer's grid/watermark rules and the synthetic source."""

from __future__ import annotations

import numpy as np
import pytest

from connectors.synthetic import SyntheticSensor, synthetic_batches
from operators import reference
from operators.emissary import EmissaryWindow
from operators.lag import LagState, Products
from operators.master import MasterWindow
from operators.params import KairosParams
from operators.transducer import Transducer

START = 1_764_115_200_000_000


def test_grid_points_wait_for_the_watermark_and_flush_at_end():
    em = Transducer(EmissaryWindow(1_000_000), interval_us=10_000)
    # Samples at 5 ms and 12 ms make 10 ms and 20 ms due; the watermark is 12 ms.
    out = em.push(Products.empty(), np.array([5_000, 12_000]), watermark_us=12_000)
    assert out.t.tolist() == [10_000]
    assert em.pending.tolist() == [20_000]
    # No sample lands in (20, 30] ms, yet 20 ms is emitted once the watermark passes it.
    out = em.push(Products.empty(), np.array([31_000]), watermark_us=31_000)
    assert out.t.tolist() == [20_000]
    assert em.flush().t.tolist() == [40_000]
    assert em.flush().t.tolist() == []


def test_transducers_emit_exact_windows_under_lateness():
    """Driven with a lagging watermark, each value is still T over (g - W, g]."""
    rng = np.random.default_rng(1)
    n = 4000
    t = START + np.cumsum(rng.integers(2_000, 9_000, n))
    phase = np.cumsum(rng.normal(0.4, 0.2, n))
    params = KairosParams.from_seconds(0.5, velocity_span=0.05, omega=1.0)
    lag = LagState(params)
    em = Transducer(EmissaryWindow(1_000_000, 1.0), 10_000)
    ma = Transducer(MasterWindow(5_000_000, 100_000, 1.0), 100_000)
    lateness = 250_000
    em_out, ma_out, seen = [], [], 0
    for chunk in np.array_split(np.arange(n), 23):
        # Integrate only samples <= watermark (as the dataflow does); hold the rest.
        wm = int(t[chunk[-1]]) - lateness
        upto = int(np.searchsorted(t, wm, side="right"))
        if upto <= seen:
            continue
        prods = lag.push(t[seen:upto], phase[seen:upto])
        em_out.append(em.push(prods, t[seen:upto], wm))
        ma_out.append(ma.push(prods, t[seen:upto], wm))
        seen = upto
    prods = lag.push(t[seen:], phase[seen:])
    em_out += [em.push(prods, t[seen:], int(t[-1])), em.flush()]
    ma_out += [ma.push(prods, t[seen:], int(t[-1])), ma.flush()]
    want = reference.lag_products(t, phase, params)
    for outs, window, interval in ((em_out, 1_000_000, 10_000), (ma_out, 5_000_000, 100_000)):
        g = np.concatenate([o.t for o in outs])
        T = np.concatenate([o.T for o in outs])
        expected_grid = np.unique(-((-t) // interval) * interval)
        assert np.array_equal(g, expected_grid)  # every due grid point, once, in order
        np.testing.assert_allclose(T, reference.window_values(want, 1.0, g, window).T, rtol=1e-9, atol=1e-12)


def _collect(batch_us):
    sensors = [SyntheticSensor("a", "drifting", channels=2), SyntheticSensor("b", "switching")]
    parts = {}
    for name, t, phase in synthetic_batches(sensors, period_us=10_000, duration_us=10_000_000,
                                            start_us=START, seed=3, batch_us=batch_us):
        parts.setdefault(name, []).append((t, phase))
    return {k: (np.concatenate([x[0] for x in v]), np.concatenate([x[1] for x in v])) for k, v in parts.items()}


def test_synthetic_source_is_deterministic_and_independent_of_batching():
    a, b, c = _collect(1_000_000), _collect(370_000), _collect(1_000_000)
    for name in a:
        assert np.array_equal(a[name][0], b[name][0])
        np.testing.assert_allclose(a[name][1], b[name][1], rtol=0, atol=1e-12)
        assert np.array_equal(a[name][1], c[name][1])
    t, phase = a["a"]
    assert t[0] == START and np.all(np.diff(t) == 10_000) and phase.shape == (1000, 2)
    assert np.all((phase >= -np.pi) & (phase < np.pi))


def test_synthetic_rejects_unknown_kind():
    with pytest.raises(ValueError, match="unknown synthetic sensor kind 'sine'"):
        SyntheticSensor("x", "sine")


def test_a_transducer_emits_the_grid_points_of_its_samples_once_each_as_the_watermark_passes_them():
    """Held to the NumPy statement: after every push, the points emitted so far are the
    ``emission_points`` of all samples so far up to the watermark, each once, in order; the
    others are pending, and the flush emits exactly them."""
    from operators.emissary import EmissaryWindow
    from operators.grid import emission_points
    from operators.lag import Products
    from operators.transducer import Transducer

    rng = np.random.default_rng(3)
    for _ in range(2_000):
        interval = int(rng.integers(1, 25))
        transducer = Transducer(EmissaryWindow(1_000_000), interval_us=interval)
        samples, emitted = np.empty(0, np.int64), []
        watermark = int(rng.integers(-70, 0))
        for _ in range(int(rng.integers(1, 5))):
            step = rng.choice(np.arange(1, 40), int(rng.integers(0, 6)), replace=False)
            t = watermark + np.cumsum(np.sort(step)).astype(np.int64)      # later than the watermark: not late
            watermark = (int(t[-1]) if t.size else watermark) + int(rng.integers(0, 30))
            emitted.extend(transducer.push(Products.empty(), sample_t_us=t, watermark_us=watermark).t.tolist())
            samples = np.concatenate((samples, t))
            points = emission_points(samples, interval)
            assert emitted == points[points <= watermark].tolist()
            assert transducer.pending.tolist() == points[points > watermark].tolist()
        rest = transducer.pending.tolist()
        assert transducer.flush().t.tolist() == rest and transducer.pending.size == 0


# --------------------------------------------------------------------------
# The file source: source.batch_rows rows per call.


def _fleet_table(sensors: int = 3, rate_hz: int = 100, seconds: int = 12):
    """Rows in time order (all sensors at each time), steady oscillators."""
    import pyarrow as pa

    n = rate_hz * seconds
    t = START + np.arange(1, n + 1, dtype=np.int64) * (1_000_000 // rate_hz)
    rows = np.arange(sensors * n)
    k, i = rows // sensors, rows % sensors
    phase = np.mod(2 * np.pi * (1.0 + i) * (t[k] - START) * 1e-6 + np.pi, 2 * np.pi) - np.pi
    return pa.table({"sensor": pa.array([f"s{j}" for j in i], pa.string()),
                     "t": pa.array(t[k], pa.timestamp("us", tz="UTC")), "phase": pa.array(phase)})


def _write_arrow(path, table, record_batch_rows: int) -> None:
    import pyarrow as pa

    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=record_batch_rows):
            writer.write_batch(batch)


def _file_partition(path, resume: int | None, batch_rows: int):
    """The partition the flow's file source reads ``path`` with (``source.batch_rows``), resumed at row ``resume``."""
    from connectors.file_source import PhaseFile
    from schemas.config import parse_config

    source = PhaseFile(parse_config({"source": {"kind": "file", "path": str(path), "batch_rows": batch_rows}}).source)
    (part,) = source.list_parts()
    return source.build_part("source", part, resume)


def _run_file(path, root, batch_rows: int | None) -> dict:
    import io

    from connectors.archive import open_dataset
    from flows.run import run_flow
    from schemas.config import parse_config

    source = {"kind": "file", "path": str(path)}
    if batch_rows is not None:
        source["batch_rows"] = batch_rows
    config = parse_config({"source": source, "metrics": {"enabled": False}, "memory": {"storage": {"path": str(root)}}})
    run_flow(config, out=io.StringIO(), progress=io.StringIO())
    out = {}
    for name, keys in (("input", ["sensor", "t"]), ("temporal_signatures", ["sensor", "transducer", "t"]),
                       ("coherence_history", ["sensor", "t"]), ("events", ["sensor", "t"])):
        table = open_dataset(root / name).to_table()
        out[name] = table.drop_columns([c for c in ("event_id",) if c in table.column_names]) \
            .sort_by([(k, "ascending") for k in keys]).to_pylist()
    letters = root / "dead-letters" / "worker-0.jsonl"
    out["dead letters"] = sorted(letters.read_text().splitlines()) if letters.exists() else []
    return out


@pytest.mark.parametrize("fmt", ["arrow", "jsonl"])
def test_a_file_source_gives_the_same_archive_rows_whatever_its_batch_rows(tmp_path, fmt):
    import json

    table = _fleet_table()
    if fmt == "arrow":
        path = tmp_path / "samples.arrow"
        _write_arrow(path, table, record_batch_rows=50)       # the file's batches: neither size's
    else:
        path = tmp_path / "samples.jsonl"
        path.write_text("".join(json.dumps({"sensor": r["sensor"], "t": r["t"].isoformat(), "phase": r["phase"]})
                                + "\n" for r in table.to_pylist()))
    small = _run_file(path, tmp_path / "small", 37)            # about 12 samples per sensor and call
    large = _run_file(path, tmp_path / "large", None)          # the default: the whole file in one call
    assert len(small["input"]) == table.num_rows and small["events"]
    assert small == large


def test_a_bad_row_in_a_large_chunk_is_the_only_dead_letter_and_the_rest_is_read(tmp_path):
    import pyarrow as pa

    table = _fleet_table(sensors=4, seconds=25)                # 10,000 rows
    phase = table["phase"].to_pylist()
    phase[5_000] = None                                        # a null phase: its chunk fails validation
    table = table.set_column(2, "phase", pa.array(phase, pa.float64()))
    path = tmp_path / "samples.arrow"
    _write_arrow(path, table, record_batch_rows=1_000)
    # One chunk of 10,000 rows: checked again in pieces of 4,096; only the piece with the bad row goes row by row.
    messages = _file_partition(path, None, 1_048_576).next_batch()
    assert [m.offset for m in messages if m.headers] == [0, 8_192]
    assert [m.offset for m in messages if not m.headers] == list(range(4_096, 8_192))
    small = _run_file(path, tmp_path / "small", 100)
    large = _run_file(path, tmp_path / "large", 1_048_576)
    assert small == large
    assert len(large["input"]) == table.num_rows - 1
    (letter,) = large["dead letters"]
    assert '"offset":5000' in letter.replace(" ", "")


def test_file_chunks_have_batch_rows_rows_and_a_resumed_source_starts_at_its_row(tmp_path):
    from operators.decode import decode_messages

    table = _fleet_table(sensors=2, rate_hz=10, seconds=10)   # 200 rows
    path = tmp_path / "samples.arrow"
    _write_arrow(path, table, record_batch_rows=30)

    def drain(part):
        calls = []
        while True:
            try:
                messages = part.next_batch()
            except StopIteration:
                return calls
            calls.append((sum(len(b) for b in decode_messages(messages).batches), part.snapshot()))

    assert drain(_file_partition(path, None, 64)) == [(64, 64), (64, 128), (64, 192), (8, 200)]
    # A snapshot taken with another batch_rows (row 50, inside the first chunk of 64) resumes at row 50.
    resumed = drain(_file_partition(path, 50, 64))
    assert resumed == [(14, 64), (64, 128), (64, 192), (8, 200)]
    lines = tmp_path / "samples.jsonl"
    lines.write_text("".join('{"sensor": "a", "t": %d, "phase": 0.5}\n' % (1_764_115_200 + k) for k in range(10)))
    part = _file_partition(lines, 3, 4)            # JSON lines: 4 lines per call, from line 3
    assert [len(part.next_batch()), len(part.next_batch())] == [4, 3] and part.snapshot() == 10
    with pytest.raises(StopIteration):
        part.next_batch()


def test_a_file_row_refused_by_the_event_time_gate_keeps_its_row_as_a_one_row_arrow_stream(tmp_path):
    # The file source hands its chunks over as tables (no IPC stream in between); a dead letter
    # still carries the refused row as the stream a producer would have sent for it alone.
    import base64
    import json

    import pyarrow as pa
    import pyarrow.ipc as ipc

    from flows.run import run_flow
    from schemas.config import parse_config

    t0 = 1_764_115_200.0
    t = [t0 + k * 0.01 for k in range(1, 101)] + [t0 + 0.5]          # the last row repeats a time
    table = pa.table({"sensor": ["s"] * 101, "t": pa.array([int(x * 1e6) for x in t], pa.timestamp("us", "UTC")),
                      "phase": [0.1 * k for k in range(101)]})
    path = tmp_path / "samples.arrow"
    with ipc.new_file(path, table.schema) as w:
        w.write_table(table)
    config = parse_config({"source": {"kind": "file", "path": str(path)}, "metrics": {"enabled": False},
                           "memory": {"storage": {"path": str(tmp_path / "archive")}}})
    accepted, rejected, _, _ = run_flow(config).totals()
    assert (accepted, rejected) == (100, 1)
    (line,) = (tmp_path / "archive" / "dead-letters" / "worker-0.jsonl").read_text().splitlines()
    letter = json.loads(line)
    assert letter["reason"] == "duplicate" and letter["offset"] == 0 and letter["row"] == 100
    row = ipc.open_stream(base64.b64decode(letter["original"])).read_all()
    assert row.num_rows == 1 and row.column("phase").to_pylist() == [[pytest.approx(10.0)]]  # the wire schema
