"""The Arrow archive (SPEC section 5): layout, manifest chain, crash safety, idempotency, verify,
lock, compaction, sink."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from bytewax import operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, cluster_main, run_main

from connectors.archive import (
    COMPACTION_STEPS,
    GENESIS,
    JOURNAL,
    LOCK,
    MANIFEST,
    ArchiveError,
    ArchiveSink,
    ArchiveWriter,
    CompactionResult,
    PendingRows,
    compact_archive,
    compact_dataset,
    last_witness_record,
    listed_files,
    manifest_files,
    meta_dir,
    open_dataset,
    verify_archive,
    verify_dataset,
)
from schemas.datasets import DATASETS, PARTITION_SCHEMA, TIMESTAMP

T0 = 1_764_115_200_000_000  # 2025-11-26T00:00:00Z
SECOND = 1_000_000
HOUR = 3600 * SECOND
DAY = 24 * HOUR


def rows(dataset: str, sensors: list[str], ts: list[int], **columns) -> pa.Table:
    """A table of ``dataset``'s schema: the given sensors and times (int64 us cast
    to TIMESTAMP), ``columns`` as given, every other column a filler value."""
    schema = DATASETS[dataset]
    n = len(ts)
    data = {}
    for i, field in enumerate(schema):
        if field.name in columns:
            data[field.name] = pa.array(columns[field.name], field.type)
        elif field.name == "sensor":
            data["sensor"] = pa.array(sensors, pa.string())
        elif field.name == "t":
            data["t"] = pa.array(ts, pa.int64()).cast(TIMESTAMP)
        elif field.nullable:
            data[field.name] = pa.nulls(n, field.type)
        elif pa.types.is_string(field.type):
            data[field.name] = pa.array([f"{field.name}-{k}" for k in range(n)], field.type)
        elif pa.types.is_boolean(field.type):
            data[field.name] = pa.array([k % 2 == 0 for k in range(n)], field.type)
        elif pa.types.is_list(field.type):
            data[field.name] = pa.array([[k * 0.5, i * 1.0] for k in range(n)], field.type)
        else:
            data[field.name] = pa.array([k + i for k in range(n)], pa.int64()).cast(field.type)
    return pa.table(data, schema=schema)


def manifest_lines(dataset_dir: Path) -> list[str]:
    return (meta_dir(dataset_dir) / MANIFEST).read_text("utf-8").splitlines()


def read_dataset(dataset_dir: Path) -> pa.Table:
    """The dataset directory read as it is, as any Arrow reader would (no manifest)."""
    return ds.dataset(dataset_dir, format="ipc", partitioning="hive").to_table()


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# -- layout and manifest ----------------------------------------------------


def test_rows_round_trip_through_hive_partitions(tmp_path):
    # Two sensors over two hours of one date and one hour of the next, interleaved.
    sensors = ["a", "b", "a", "b", "a", "b", "a"]
    ts = [T0, T0 + 1, T0 + HOUR + 5, T0 + HOUR + 6, T0 + DAY, T0 + DAY + 7, T0 + DAY + 8]
    table = rows("input", sensors, ts)
    with ArchiveWriter(tmp_path, "input") as writer:
        assert writer.write(table) == 7
        assert writer.flush() == [
            "date=2025-11-26/hour=00/part-00000000.arrow",
            "date=2025-11-26/hour=01/part-00000001.arrow",
            "date=2025-11-27/hour=00/part-00000002.arrow",
        ]
    assert (writer.rows_written, writer.files_written) == (7, 3)

    back = read_dataset(tmp_path / "input")
    assert back.num_rows == 7
    data = back.select(DATASETS["input"].names).sort_by([("t", "ascending")])
    assert data.equals(table.sort_by([("t", "ascending")]))

    typed = open_dataset(tmp_path / "input").to_table()
    assert typed.schema.field("hour").type == PARTITION_SCHEMA.field("hour").type
    got = sorted(zip(typed["date"].to_pylist(), typed["hour"].to_pylist(), typed["sensor"].to_pylist()))
    assert got == sorted(
        [("2025-11-26", "00", "a"), ("2025-11-26", "00", "b"), ("2025-11-26", "01", "a"),
         ("2025-11-26", "01", "b"), ("2025-11-27", "00", "a"), ("2025-11-27", "00", "b"),
         ("2025-11-27", "00", "a")]
    )

    # Each file: the dataset schema with its metadata, rows in input order.
    reader = pa.ipc.open_file(tmp_path / "input" / "date=2025-11-27/hour=00/part-00000002.arrow")
    assert reader.schema.equals(DATASETS["input"], check_metadata=True)
    assert reader.read_all()["t"].cast(pa.int64()).to_pylist() == [T0 + DAY, T0 + DAY + 7, T0 + DAY + 8]


def test_manifest_lines_chain(tmp_path):
    with ArchiveWriter(tmp_path, "events") as writer:
        writer.write(rows("events", ["s", "s"], [T0, T0 + HOUR]))
    with ArchiveWriter(tmp_path, "events") as writer:  # a second writer continues the chain
        writer.write(rows("events", ["s"], [T0 + 2 * HOUR]))
        assert writer.flush() == ["date=2025-11-26/hour=02/part-00000002.arrow"]

    lines = manifest_lines(tmp_path / "events")
    assert len(lines) == 3
    prev = GENESIS
    for text in lines:
        entry = json.loads(text)
        assert list(entry) == ["file", "rows", "sha256", "prev"]
        assert text == json.dumps(entry, separators=(",", ":"))
        file_bytes = (tmp_path / "events" / entry["file"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(file_bytes).hexdigest()
        assert entry["rows"] == 1
        assert entry["prev"] == prev
        prev = hashlib.sha256(text.encode()).hexdigest()
    assert verify_dataset(tmp_path / "events") == []


def test_flush_by_rows(tmp_path):
    writer = ArchiveWriter(tmp_path, "input", flush_rows=5, clock=FakeClock())
    writer.write(rows("input", ["a"] * 3, [T0 + k for k in range(3)]))
    assert (writer.files_written, writer.buffered_rows) == (0, 3)
    assert not (meta_dir(tmp_path / "input") / MANIFEST).exists()
    writer.write(rows("input", ["a"] * 3, [T0 + k for k in range(3, 6)]))
    assert (writer.files_written, writer.rows_written, writer.buffered_rows) == (1, 6, 0)


def test_flush_by_clock(tmp_path):
    clock = FakeClock()
    writer = ArchiveWriter(tmp_path, "input", flush_rows=1000, flush_seconds=5.0, clock=clock)
    writer.write(rows("input", ["a"], [T0]))
    clock.now = 4.9
    writer.write(rows("input", ["a"], [T0 + 1]))  # the oldest row has waited 4.9 s
    assert writer.flush_if_due() == []
    assert writer.buffered_rows == 2
    clock.now = 5.0
    assert writer.flush_if_due() == ["date=2025-11-26/hour=00/part-00000000.arrow"]
    assert writer.rows_written == 2

    # The wait counts from the oldest row buffered since that flush.
    clock.now = 10.0
    writer.write(rows("input", ["a"], [T0 + 2]))
    clock.now = 14.0
    writer.write(rows("input", ["a"], [T0 + 3]))
    assert writer.buffered_rows == 2
    clock.now = 15.0
    writer.write(rows("input", ["a"], [T0 + 4]))  # a write checks the deadline too
    assert (writer.buffered_rows, writer.rows_written, writer.files_written) == (0, 5, 2)


def test_close_flushes_and_is_idempotent(tmp_path):
    writer = ArchiveWriter(tmp_path, "input")
    writer.write(rows("input", ["a"], [T0]))
    writer.close()
    writer.close()
    assert writer.rows_written == 1
    assert len(manifest_lines(tmp_path / "input")) == 1
    with pytest.raises(ValueError, match="closed"):
        writer.write(rows("input", ["a"], [T0 + 1]))


# -- idempotency ------------------------------------------------------------


def test_restart_with_the_same_input_writes_only_newer_rows(tmp_path):
    first = rows("input", ["a", "b", "a", "b"], [T0, T0 + 1, T0 + 2, T0 + 3])
    with ArchiveWriter(tmp_path, "input") as writer:
        assert writer.write(first) == 4

    again = rows("input", ["a", "b", "a", "b", "a", "c"], [T0, T0 + 1, T0 + 2, T0 + 3, T0 + 4, T0])
    with ArchiveWriter(tmp_path, "input") as writer:
        assert writer.high_water("a") == T0 + 2
        assert writer.high_water("c") is None
        assert writer.write(again) == 2  # a at T0 + 4 and the new sensor c
        assert writer.write(again) == 0  # and once accepted, never twice
    assert writer.rows_written == 2

    back = read_dataset(tmp_path / "input").sort_by([("sensor", "ascending"), ("t", "ascending")])
    got = list(zip(back["sensor"].to_pylist(), back["t"].cast(pa.int64()).to_pylist()))
    assert got == [("a", T0), ("a", T0 + 2), ("a", T0 + 4), ("b", T0 + 1), ("b", T0 + 3), ("c", T0)]


def test_temporal_signatures_dedup_by_sensor_and_transducer(tmp_path):
    def sig(pairs):
        sensors, transducers, ts = zip(*pairs)
        return rows("temporal_signatures", list(sensors), list(ts), transducer=list(transducers))

    with ArchiveWriter(tmp_path, "temporal_signatures") as writer:
        writer.write(sig([("s", "emissary", T0), ("s", "master", T0), ("s", "emissary", T0 + SECOND)]))
    with ArchiveWriter(tmp_path, "temporal_signatures") as writer:
        accepted = writer.write(sig([
            ("s", "emissary", T0 + SECOND),  # archived
            ("s", "master", T0 + SECOND),  # new: master's high-water is T0
            ("t", "emissary", T0),  # new sensor
        ]))
        assert accepted == 2
    assert read_dataset(tmp_path / "temporal_signatures").num_rows == 5


def test_witnessing_logs_keep_one_row_per_seq(tmp_path):
    log = rows("witnessing_logs", ["s", "s"], [T0, T0 + 1])
    with ArchiveWriter(tmp_path, "witnessing_logs") as writer:
        assert writer.write(log) == 2
    with ArchiveWriter(tmp_path, "witnessing_logs") as writer:
        assert writer.write(log) == 0  # seq 0 and 1 are archived; times do not matter
        assert writer.write(rows("witnessing_logs", ["s"], [T0], seq=[2])) == 1
    assert read_dataset(tmp_path / "witnessing_logs").num_rows == 3


def test_last_witness_record_is_the_largest_seq_not_the_last_file(tmp_path):
    assert last_witness_record(tmp_path) is None
    with ArchiveWriter(tmp_path, "witnessing_logs") as writer:
        # seq 0, 1 in the later hour, seq 2, 3 in the earlier one: both go in
        # one flush, and the earlier hour's file is written first.
        writer.write(rows("witnessing_logs", [None] * 4, [T0 + HOUR, T0 + HOUR + 1, T0, T0 + 1],
                          seq=[0, 1, 2, 3], log_sha256=["d1", "d2", "d3", "d4"]))
    assert last_witness_record(tmp_path) == (3, "d4")


# -- crash safety -----------------------------------------------------------


def test_crash_between_manifest_and_rename_is_finished(tmp_path, monkeypatch):
    directory = tmp_path / "input"
    with ArchiveWriter(tmp_path, "input") as writer:
        writer.write(rows("input", ["a"], [T0]))

    crashed = ArchiveWriter(tmp_path, "input")
    crashed.write(rows("input", ["a", "a"], [T0 + HOUR, T0 + HOUR + 1]))

    def power_cut(*args):
        raise OSError("power cut")

    monkeypatch.setattr(os, "link", power_cut)  # the rename into place (never replacing)
    with pytest.raises(OSError, match="power cut"):
        crashed.flush()
    monkeypatch.undo()
    assert crashed.buffered_rows == 0  # the manifest line committed those rows
    # The crashed process would exit here, dropping its lock; nothing is
    # buffered, so closing only releases the lock.
    crashed.close()

    final = directory / "date=2025-11-26/hour=01/part-00000001.arrow"
    temp = meta_dir(directory) / "part-00000001.arrow.tmp"
    assert not final.exists() and temp.exists()
    assert len(manifest_lines(directory)) == 2
    assert verify_dataset(directory) == [
        "date=2025-11-26/hour=01/part-00000001.arrow: missing "
        "(its complete temp file exists; opening a writer on the dataset finishes it)"
    ]
    # Readers of the directory do not see the temp file meanwhile; manifest readers do.
    assert read_dataset(directory).num_rows == 1
    assert open_dataset(directory).count_rows() == 3
    # A temp file of a write that never reached the manifest.
    stray = meta_dir(directory) / "part-00000007.arrow.tmp"
    stray.write_bytes(b"half a file")

    with ArchiveWriter(tmp_path, "input") as writer:
        assert final.exists() and not temp.exists() and not stray.exists()
        assert writer.high_water("a") == T0 + HOUR + 1
        writer.write(rows("input", ["a"], [T0 + HOUR + 2]))
        assert writer.flush() == ["date=2025-11-26/hour=01/part-00000002.arrow"]
    assert verify_dataset(directory) == []
    assert read_dataset(directory).num_rows == 4


def test_torn_manifest_line_is_cut(tmp_path):
    directory = tmp_path / "input"
    with ArchiveWriter(tmp_path, "input") as writer:
        writer.write(rows("input", ["a"], [T0]))
    # Crash during the append: half a line, its temp file never renamed.
    with open(meta_dir(directory) / MANIFEST, "ab") as f:
        f.write(b'{"file":"date=2025-11-26/hour=00/part-0000')
    (meta_dir(directory) / "part-00000001.arrow.tmp").write_bytes(b"rows never committed")
    assert any("incomplete" in p for p in verify_dataset(directory))

    with ArchiveWriter(tmp_path, "input") as writer:
        writer.write(rows("input", ["a"], [T0 + 1]))
        assert writer.flush() == ["date=2025-11-26/hour=00/part-00000001.arrow"]
    assert len(manifest_lines(directory)) == 2
    assert verify_dataset(directory) == []


def test_missing_file_without_temp_refuses_to_open(tmp_path):
    with ArchiveWriter(tmp_path, "events") as writer:
        writer.write(rows("events", ["s"], [T0]))
    (tmp_path / "events" / "date=2025-11-26/hour=00/part-00000000.arrow").unlink()
    with pytest.raises(ArchiveError, match="becomingone memory verify"):
        ArchiveWriter(tmp_path, "events")


# -- verify -----------------------------------------------------------------


@pytest.fixture
def archived(tmp_path) -> Path:
    """An input dataset of three files."""
    with ArchiveWriter(tmp_path, "input") as writer:
        writer.write(rows("input", ["a", "a", "a"], [T0, T0 + HOUR, T0 + DAY]))
    with ArchiveWriter(tmp_path, "events") as writer:
        writer.write(rows("events", ["a"], [T0]))
    return tmp_path


FILES = [
    "date=2025-11-26/hour=00/part-00000000.arrow",
    "date=2025-11-26/hour=01/part-00000001.arrow",
    "date=2025-11-27/hour=00/part-00000002.arrow",
]


def test_verify_passes_an_intact_archive(archived):
    assert verify_archive(archived) == {"events": [], "input": []}


def test_verify_detects_a_changed_byte(archived):
    path = archived / "input" / FILES[1]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    problems = verify_dataset(archived / "input")
    assert len(problems) == 1
    assert problems[0].startswith(f"{FILES[1]}: changed")


def test_verify_detects_a_deleted_file(archived):
    (archived / "input" / FILES[2]).unlink()
    assert verify_dataset(archived / "input") == [f"{FILES[2]}: missing"]


def test_verify_detects_an_extra_file(archived):
    extra = "date=2025-11-26/hour=00/part-00000099.arrow"
    (archived / "input" / extra).write_bytes((archived / "input" / FILES[0]).read_bytes())
    assert verify_dataset(archived / "input") == [f"{extra}: extra (not in {MANIFEST})"]
    assert verify_archive(archived)["events"] == []


def test_verify_detects_swapped_manifest_lines(archived):
    manifest = meta_dir(archived / "input") / MANIFEST
    lines = manifest.read_text().splitlines()
    lines[0], lines[1] = lines[1], lines[0]
    manifest.write_text("\n".join(lines) + "\n")
    problems = verify_dataset(archived / "input")
    assert problems and all("breaks the chain" in p for p in problems)
    assert any(p.startswith(FILES[1]) for p in problems)


def test_verify_detects_an_edited_line(archived):
    manifest = meta_dir(archived / "input") / MANIFEST
    lines = manifest.read_text().splitlines()
    entry = json.loads(lines[0])
    entry["rows"] = 2
    lines[0] = json.dumps(entry, separators=(",", ":"))
    manifest.write_text("\n".join(lines) + "\n")
    problems = verify_dataset(archived / "input")
    assert f"{FILES[0]}: changed (1 rows, manifest says 2)" in problems
    assert any(p.startswith(FILES[1]) and "breaks the chain" in p for p in problems)


# -- lock, numbering and compaction -----------------------------------------

#: Partition offsets of the small-file dataset: two hours of one date, one of the next.
OFFSETS = [0, HOUR, DAY]
FLUSHES = 4
PARTS = [
    ("2025-11-26", "00", "date=2025-11-26/hour=00"),
    ("2025-11-26", "01", "date=2025-11-26/hour=01"),
    ("2025-11-27", "00", "date=2025-11-27/hour=00"),
]


def flush_rows(k: int) -> pa.Table:
    """Flush ``k``'s rows: sensor ``s{k}``, two rows in every partition, the later ``t``
    first, so a result sorted by ``t`` would differ from the written order."""
    ts = [T0 + offset + k * SECOND + j for offset in OFFSETS for j in (1, 0)]
    return rows("input", [f"s{k}"] * len(ts), ts)


def small_files(root: Path) -> Path:
    """An ``input`` dataset of FLUSHES x 3 files: each flush writes one file per
    partition, so a partition's files are interleaved with the others' in the manifest."""
    with ArchiveWriter(root, "input") as writer:
        for k in range(FLUSHES):
            writer.write(flush_rows(k))
            writer.flush()
    return root / "input"


def by_partition(dataset_dir: Path) -> dict[tuple[str, str], list[dict]]:
    """The rows :func:`open_dataset` reads, per (date, hour), in read order."""
    grouped: dict[tuple[str, str], list[dict]] = {}
    for row in open_dataset(dataset_dir).to_table().to_pylist():
        grouped.setdefault((row["date"], row["hour"]), []).append(row)
    return grouped


def arrow_files(dataset_dir: Path) -> list[str]:
    """The visible ``.arrow`` files on disk (what a glob reader sees), relative, sorted."""
    return sorted(
        p.relative_to(dataset_dir).as_posix()
        for p in dataset_dir.rglob("*.arrow")
        if not any(part.startswith(".") for part in p.relative_to(dataset_dir).parts)
    )


def leftovers(dataset_dir: Path) -> list[str]:
    """Temp files and a journal: what a finished compaction must not leave behind."""
    meta = meta_dir(dataset_dir)
    found = [p.name for p in meta.glob("*.tmp")] + [p.name for p in dataset_dir.rglob("*") if p.is_file()
                                                     and not p.name.endswith(".arrow")]
    return found + ([JOURNAL] if (meta / JOURNAL).exists() else [])


class Crash(Exception):
    """Stands for the process dying at a compaction step."""


def crash_at(step: str):
    def fault(name: str) -> None:
        if name == step:
            raise Crash(name)

    return fault


def test_two_writers_on_one_dataset_are_refused(tmp_path):
    with ArchiveWriter(tmp_path, "events"):
        with pytest.raises(ArchiveError, match="another writer or a compaction has the dataset open"):
            ArchiveWriter(tmp_path, "events")
        ArchiveWriter(tmp_path, "input").close()  # each dataset has its own lock
    ArchiveWriter(tmp_path, "events").close()  # close released it
    assert (meta_dir(tmp_path / "events") / LOCK).exists()  # outside the dataset directory
    assert list((tmp_path / "events").iterdir()) == []
    assert verify_dataset(tmp_path / "events") == []


def test_compaction_merges_each_hour_into_one_file(tmp_path):
    directory = small_files(tmp_path)
    before = by_partition(directory)
    assert [len(before[d, h]) for d, h, _ in PARTS] == [2 * FLUSHES] * 3
    assert len(manifest_lines(directory)) == 3 * FLUSHES

    result = compact_dataset(directory)
    assert result == CompactionResult(directory, 12, 3, 24, 24, 3, None)
    # The largest listed number was 11: the merged files take 12, 13, 14, at
    # the place of each partition's first line.
    files = [json.loads(line)["file"] for line in manifest_lines(directory)]
    assert files == [f"{part}/part-{12 + i:08d}.arrow" for i, (_, _, part) in enumerate(PARTS)]
    assert arrow_files(directory) == sorted(files)
    assert leftovers(directory) == []
    assert verify_dataset(directory) == []
    assert by_partition(directory) == before  # every row, in its order
    assert read_dataset(directory).num_rows == 24  # a glob reader sees the same rows

    # Nothing left to merge: the manifest is not touched.
    manifest_before = (meta_dir(directory) / MANIFEST).read_bytes()
    assert compact_dataset(directory) == CompactionResult(directory, 3, 3, 24, 24, 0, None)
    assert (meta_dir(directory) / MANIFEST).read_bytes() == manifest_before

    with ArchiveWriter(tmp_path, "input") as writer:
        assert writer.high_water("s3") == T0 + DAY + 3 * SECOND + 1  # read from the merged files
        assert writer.write(flush_rows(0)) == 0  # already archived, compacted or not
        writer.write(rows("input", ["late"], [T0 + 5]))
        assert writer.flush() == ["date=2025-11-26/hour=00/part-00000015.arrow"]  # above 14, not line count 3
    assert verify_dataset(directory) == []

    # The new file merges too: the first line changes, every later prev is recomputed.
    result = compact_dataset(directory)
    assert (result.files_before, result.files_after, result.hours_merged) == (4, 3, 1)
    assert json.loads(manifest_lines(directory)[0])["file"] == "date=2025-11-26/hour=00/part-00000016.arrow"
    assert verify_dataset(directory) == []
    after = by_partition(directory)
    assert after["2025-11-26", "00"][:-1] == before["2025-11-26", "00"]
    assert after["2025-11-26", "00"][-1]["sensor"] == "late"


def record_batches(path: Path) -> list[int]:
    """The row counts of an Arrow IPC file's record batches, in order."""
    reader = pa.ipc.open_file(path)
    assert reader.schema.equals(DATASETS["input"], check_metadata=True)
    return [reader.get_batch(i).num_rows for i in range(reader.num_record_batches)]


def test_merged_small_batches_are_joined_up_to_a_limit(tmp_path):
    directory = small_files(tmp_path)
    before = by_partition(directory)
    compact_dataset(directory)
    # 8 rows per partition from four 2-row files: one batch, not four.
    for name in arrow_files(directory):
        assert record_batches(directory / name) == [8]
    assert by_partition(directory) == before

    # Batches are joined until they reach 65,536 rows: five files of 20,000 rows
    # of one hour become a batch of 80,000 and one of the 20,000 left.
    big = tmp_path / "big"
    with ArchiveWriter(big, "input") as writer:
        for k in range(5):
            writer.write(rows("input", ["a"] * 20_000, [T0 + k * 20_000 + i for i in range(20_000)]))
            writer.flush()
    expected = open_dataset(big / "input").to_table()
    compact_dataset(big / "input")
    assert [record_batches(path) for path in manifest_files(big / "input")] == [[80_000, 20_000]]
    assert open_dataset(big / "input").to_table().equals(expected)


def test_compaction_while_a_writer_is_open_is_refused(tmp_path):
    directory = small_files(tmp_path)
    manifest_before = (meta_dir(directory) / MANIFEST).read_bytes()
    with ArchiveWriter(tmp_path, "input"):
        with pytest.raises(ArchiveError, match="another writer or a compaction has the dataset open"):
            compact_dataset(directory)
    assert (meta_dir(directory) / MANIFEST).read_bytes() == manifest_before
    assert leftovers(directory) == []


def test_a_writer_cannot_open_while_a_compaction_runs(tmp_path):
    directory = small_files(tmp_path)
    refused = []

    def fault(step: str) -> None:
        if step == "journal-written":
            with pytest.raises(ArchiveError, match="another writer or a compaction") as info:
                ArchiveWriter(tmp_path, "input")
            refused.append(info.value)

    assert compact_dataset(directory, fault=fault).hours_merged == 3
    assert len(refused) == 1
    assert verify_dataset(directory) == []


@pytest.mark.parametrize("step", COMPACTION_STEPS)
def test_compaction_interrupted_at_any_step_loses_nothing(tmp_path, step):
    directory = small_files(tmp_path)
    before = by_partition(directory)
    with pytest.raises(Crash):
        compact_dataset(directory, fault=crash_at(step))

    # The crashed state: intact, and the manifest's readers see every row once.
    assert verify_dataset(directory) == []
    assert by_partition(directory) == before
    committed = COMPACTION_STEPS.index(step) >= COMPACTION_STEPS.index("manifest-replaced")
    assert len(manifest_lines(directory)) == (3 if committed else 12)
    assert all(path.is_file() for path in manifest_files(directory))

    # The next compaction recovers first, then finishes the job.
    result = compact_dataset(directory)
    journal_written = COMPACTION_STEPS.index(step) >= COMPACTION_STEPS.index("journal-written")
    assert result.recovered == ("rolled forward" if committed else "rolled back" if journal_written else None)
    assert result.hours_merged == (0 if committed else 3)
    assert (result.files_after, result.rows_after) == (3, 24)
    assert [f.rsplit("/", 1)[0] for f in arrow_files(directory)] == [part for _, _, part in PARTS]
    assert leftovers(directory) == []
    assert verify_dataset(directory) == []
    assert by_partition(directory) == before


@pytest.mark.parametrize("step", COMPACTION_STEPS)
def test_a_writer_recovers_an_interrupted_compaction(tmp_path, step):
    directory = small_files(tmp_path)
    before = by_partition(directory)
    with pytest.raises(Crash):
        compact_dataset(directory, fault=crash_at(step))

    committed = COMPACTION_STEPS.index(step) >= COMPACTION_STEPS.index("manifest-replaced")
    with ArchiveWriter(tmp_path, "input") as writer:
        assert leftovers(directory) == []
        assert writer.write(flush_rows(FLUSHES - 1)) == 0  # high-water marks intact
        writer.write(rows("input", ["late"], [T0 + 5]))
    assert len(arrow_files(directory)) == (3 if committed else 12) + 1
    assert verify_dataset(directory) == []
    after = by_partition(directory)
    after["2025-11-26", "00"] = [r for r in after["2025-11-26", "00"] if r["sensor"] != "late"]
    assert after == before


def test_manifest_files_resolve_a_pending_merged_file(tmp_path):
    directory = small_files(tmp_path)
    before = by_partition(directory)
    with pytest.raises(Crash):
        compact_dataset(directory, fault=crash_at("manifest-replaced"))
    # Committed but not renamed: the merged rows are in temp files under _meta,
    # and the merged-away files are still in the dataset directory.
    merged = [f"part-{12 + i:08d}.arrow" for i in range(len(PARTS))]
    assert listed_files(directory) == [
        (f"{part}/{name}", meta_dir(directory) / f"{name}.tmp") for name, (_, _, part) in zip(merged, PARTS)]
    assert manifest_files(directory) == [path for _, path in listed_files(directory)]
    assert len(arrow_files(directory)) == 12
    assert by_partition(directory) == before  # date and hour from the manifest's names
    assert open_dataset(directory).count_rows() == 24
    assert verify_dataset(directory) == []

    result = compact_dataset(directory, fault=crash_at("renamed"))  # recovery never calls fault
    assert (result.recovered, result.hours_merged) == ("rolled forward", 0)
    assert leftovers(directory) == []
    assert len(arrow_files(directory)) == 3


def test_compaction_refuses_a_changed_file_or_a_broken_chain(tmp_path):
    directory = small_files(tmp_path)
    manifest = meta_dir(directory) / MANIFEST
    first = directory / json.loads(manifest_lines(directory)[0])["file"]
    original = first.read_bytes()
    data = bytearray(original)
    data[len(data) // 2] ^= 0x01
    first.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match="changed"):
        compact_dataset(directory)
    assert leftovers(directory) == [] and len(arrow_files(directory)) == 12
    first.write_bytes(original)

    lines = manifest_lines(directory)
    lines[0], lines[1] = lines[1], lines[0]
    manifest.write_text("\n".join(lines) + "\n")
    with pytest.raises(ArchiveError, match="breaks the chain"):
        compact_dataset(directory)
    assert manifest_lines(directory) == lines


def test_an_unreadable_journal_stops_writers_and_is_reported(tmp_path):
    directory = small_files(tmp_path)
    (meta_dir(directory) / JOURNAL).write_text("{not json")
    with pytest.raises(ArchiveError, match="unreadable"):
        ArchiveWriter(tmp_path, "input")
    with pytest.raises(ArchiveError, match="unreadable"):
        compact_dataset(directory)
    assert verify_dataset(directory) == [f"{JOURNAL}: unreadable journal of an interrupted compaction"]


def test_compact_archive_compacts_every_dataset(tmp_path):
    small_files(tmp_path)
    with ArchiveWriter(tmp_path, "events") as writer:
        for k in range(3):
            writer.write(rows("events", ["a"], [T0 + k]))
            writer.flush()
    results = compact_archive(tmp_path)
    assert sorted(results) == ["events", "input"]
    assert (results["events"].files_before, results["events"].files_after) == (3, 1)
    assert (results["input"].files_before, results["input"].files_after) == (12, 3)
    assert verify_archive(tmp_path) == {"events": [], "input": []}
    with pytest.raises(FileNotFoundError):
        compact_archive(tmp_path / "nowhere")


def test_open_dataset_of_an_empty_dataset_has_its_columns(tmp_path):
    ArchiveWriter(tmp_path, "events").close()
    table = open_dataset(tmp_path / "events").to_table()
    assert table.num_rows == 0
    assert table.column_names == [*DATASETS["events"].names, "date", "hour"]


# -- an unreadable file is named ---------------------------------------------


def damage(path: Path) -> None:
    """Replace a committed file's bytes with something that is not an Arrow file."""
    path.write_bytes(b"not an Arrow file")


def test_an_unreadable_listed_file_stops_the_writer_naming_it(tmp_path):
    with ArchiveWriter(tmp_path, "input") as writer:
        writer.write(rows("input", ["a", "a"], [T0, T0 + HOUR]))
    path = tmp_path / "input" / FILES[1]
    good = path.read_bytes()
    damage(path)
    with pytest.raises(ArchiveError) as info:
        ArchiveWriter(tmp_path, "input")  # reads every listed file for the high-water marks
    message = str(info.value)
    assert f"input/{FILES[1]}" in message and "becomingone memory verify" in message
    path.write_bytes(good)
    with ArchiveWriter(tmp_path, "input") as writer:  # the failed open let go of the lock
        assert writer.high_water("a") == T0 + HOUR


def test_an_unreadable_witness_file_is_named_when_a_run_continues_the_log(tmp_path):
    with ArchiveWriter(tmp_path, "witnessing_logs") as writer:
        writer.write(rows("witnessing_logs", [None], [T0], seq=[0], log_sha256=["d0"]))
    damage(tmp_path / "witnessing_logs" / FILES[0])
    with pytest.raises(ArchiveError, match=f"witnessing_logs/{FILES[0]}.*becomingone memory verify"):
        last_witness_record(tmp_path)


def test_compaction_names_an_unreadable_file(tmp_path):
    directory = small_files(tmp_path)
    first = json.loads(manifest_lines(directory)[0])["file"]
    damage(directory / first)
    with pytest.raises(ArchiveError, match=f"input/{first} changed.*becomingone memory verify"):
        compact_dataset(directory)


# -- the older layout ---------------------------------------------------------


def to_older_layout(dataset_dir: Path) -> None:
    """Put a dataset's manifest, lock, journal and temp files where the older layout
    had them, in the dataset directory, as the version before ``_meta`` wrote them:
    ``MANIFEST.jsonl``, ``.lock``, ``.compaction.json`` (version 1, naming each merged
    file's temp file) and ``.NAME.tmp`` temp files in the partition directories (a
    temp file that is not a listed or merged file's goes to the dataset directory)."""
    meta = meta_dir(dataset_dir)
    partition_of = {}
    if (meta / MANIFEST).exists():
        partition_of.update((rel.rsplit("/", 1)[-1], rel.rsplit("/", 1)[0])
                            for rel in (json.loads(line)["file"] for line in manifest_lines(dataset_dir)))
    if (meta / JOURNAL).exists():
        journal = json.loads((meta / JOURNAL).read_text())
        assert journal["version"] == 2
        journal["version"] = 1
        for item in journal["merged"]:
            part, name = item["file"].rsplit("/", 1)
            partition_of[name] = part
            item["temp"] = f"{part}/.{name}.tmp"
        (dataset_dir / ".compaction.json").write_text(json.dumps(journal, indent=1))
        (meta / JOURNAL).unlink()
    for temp in meta.glob("*.tmp"):
        name = temp.name.removesuffix(".tmp")
        target = dataset_dir / partition_of[name] if name in partition_of else dataset_dir
        temp.rename(target / f".{temp.name}")
    if (meta / MANIFEST).exists():
        (meta / MANIFEST).rename(dataset_dir / MANIFEST)
    if (meta / LOCK).exists():
        (meta / LOCK).rename(dataset_dir / ".lock")
    meta.rmdir()
    if not any(meta.parent.iterdir()):
        meta.parent.rmdir()


def older_files(dataset_dir: Path) -> list[str]:
    """What the older layout had in the dataset directory besides the data files."""
    return sorted(p.relative_to(dataset_dir).as_posix() for p in dataset_dir.rglob("*")
                  if p.is_file() and not p.name.endswith(".arrow"))


def test_an_archive_of_the_older_layout_is_read_as_is_and_moved_by_the_next_writer(tmp_path):
    directory = tmp_path / "input"
    with ArchiveWriter(tmp_path, "input") as writer:
        writer.write(rows("input", ["a", "a", "a"], [T0, T0 + HOUR, T0 + DAY]))
    manifest = (meta_dir(directory) / MANIFEST).read_bytes()
    to_older_layout(directory)
    assert older_files(directory) == [".lock", MANIFEST]

    # Readers read it where it is and change nothing.
    assert open_dataset(directory).count_rows() == 3
    assert manifest_files(directory) == [directory / f for f in FILES]
    assert verify_archive(tmp_path) == {"input": []}
    assert not (tmp_path / "_meta").exists()

    with ArchiveWriter(tmp_path, "input") as writer:
        assert older_files(directory) == []
        assert (meta_dir(directory) / MANIFEST).read_bytes() == manifest  # moved, not rewritten
        assert writer.high_water("a") == T0 + DAY  # the listed files were read
        assert writer.write(rows("input", ["a", "a"], [T0 + DAY, T0 + DAY + 1])) == 1
    assert len(manifest_lines(directory)) == 4
    assert verify_archive(tmp_path) == {"input": []}
    assert read_dataset(directory).num_rows == 4  # the directory as it is, now


def test_moving_the_older_layout_is_finished_after_a_crash_at_any_step(tmp_path, monkeypatch):
    """The move renames each file once; a crash before any rename leaves an archive
    that readers read whole and that the next writer finishes moving."""
    directory = tmp_path / "input"
    with ArchiveWriter(tmp_path, "input") as writer:
        writer.write(rows("input", ["a"], [T0]))
    crashed = ArchiveWriter(tmp_path, "input")
    crashed.write(rows("input", ["a"], [T0 + HOUR]))

    def power_cut(*args):
        raise OSError("power cut")

    monkeypatch.setattr(os, "link", power_cut)  # the rename into place
    with pytest.raises(OSError, match="power cut"):
        crashed.flush()  # committed, not renamed: its temp file stands in
    monkeypatch.undo()
    crashed.close()
    (meta_dir(directory) / "part-00000005.arrow.tmp").write_bytes(b"never committed")
    to_older_layout(directory)
    assert older_files(directory) == [
        ".lock", ".part-00000005.arrow.tmp", MANIFEST, "date=2025-11-26/hour=01/.part-00000001.arrow.tmp"]
    pending = verify_dataset(directory)
    assert pending == [f"{FILES[1]}: missing (its complete temp file exists; opening a writer on the dataset "
                       "finishes it)"]
    template = tmp_path.parent / f"{tmp_path.name}-template"
    shutil.copytree(tmp_path, template)

    # A move without a crash: two temp files, then the manifest, then the
    # recovery finishes the interrupted rename.
    moved = []
    real, real_link = os.replace, os.link
    monkeypatch.setattr(os, "replace", lambda src, dst: (moved.append(Path(src).name), real(src, dst)))
    # The rename into the partition links, then unlinks the temp name: it never replaces a file.
    monkeypatch.setattr(os, "link", lambda src, dst: (moved.append(Path(src).name), real_link(src, dst)))
    ArchiveWriter(tmp_path, "input").close()
    monkeypatch.undo()
    assert sorted(moved[:2]) == [".part-00000001.arrow.tmp", ".part-00000005.arrow.tmp"]
    assert moved[2:] == [MANIFEST, "part-00000001.arrow.tmp"]

    renames = 3
    for step in range(renames):
        shutil.rmtree(tmp_path)
        shutil.copytree(template, tmp_path)
        calls = []
        real_replace = os.replace

        def replace(src, dst):
            calls.append(src)
            if len(calls) > step:
                raise Crash(f"before rename {step}")
            real_replace(src, dst)

        monkeypatch.setattr(os, "replace", replace)
        with pytest.raises(Crash):
            ArchiveWriter(tmp_path, "input")
        monkeypatch.undo()
        # Crashed: the readers' view is what it was before.
        assert open_dataset(directory).count_rows() == 2, step
        assert verify_dataset(directory) == pending, step
        with ArchiveWriter(tmp_path, "input") as writer:
            assert writer.high_water("a") == T0 + HOUR
        assert older_files(directory) == [], step
        assert sorted(p.name for p in meta_dir(directory).iterdir()) == [MANIFEST, LOCK], step
        assert verify_archive(tmp_path) == {"input": []}, step
        assert read_dataset(directory).num_rows == 2, step


@pytest.mark.parametrize("step", COMPACTION_STEPS)
def test_an_interrupted_compaction_of_the_older_layout_is_recovered_after_the_move(tmp_path, step):
    directory = small_files(tmp_path)
    before = by_partition(directory)
    with pytest.raises(Crash):
        compact_dataset(directory, fault=crash_at(step))
    to_older_layout(directory)
    assert by_partition(directory) == before  # the older layout's manifest and temp files, read where they are
    assert verify_dataset(directory) == []

    result = compact_dataset(directory)  # moves the layout, recovers, then compacts what is left
    committed = COMPACTION_STEPS.index(step) >= COMPACTION_STEPS.index("manifest-replaced")
    journal_written = COMPACTION_STEPS.index(step) >= COMPACTION_STEPS.index("journal-written")
    assert result.recovered == ("rolled forward" if committed else "rolled back" if journal_written else None)
    assert (result.files_after, result.rows_after) == (3, 24)
    assert older_files(directory) == [] and leftovers(directory) == []
    assert verify_dataset(directory) == []
    assert by_partition(directory) == before


def test_a_manifest_in_both_places_stops_the_writer_and_is_reported(tmp_path):
    directory = tmp_path / "events"
    with ArchiveWriter(tmp_path, "events") as writer:
        writer.write(rows("events", ["s"], [T0]))
    (directory / MANIFEST).write_bytes((meta_dir(directory) / MANIFEST).read_bytes())
    with pytest.raises(ArchiveError, match="two manifests"):
        ArchiveWriter(tmp_path, "events")
    with pytest.raises(ArchiveError, match="two manifests"):
        compact_dataset(directory)
    assert (directory / MANIFEST).exists()  # nothing was changed
    [problem] = verify_dataset(directory)
    assert problem.startswith(f"{MANIFEST}: a manifest of the older layout in the dataset directory")


def test_a_writer_of_an_older_version_holding_its_lock_stops_the_move(tmp_path):
    import fcntl

    directory = tmp_path / "events"
    with ArchiveWriter(tmp_path, "events") as writer:
        writer.write(rows("events", ["s"], [T0]))
    to_older_layout(directory)
    with open(directory / ".lock", "r+") as older_writer:
        fcntl.flock(older_writer, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ArchiveError, match="in use: a writer of an older version"):
            ArchiveWriter(tmp_path, "events")
        assert older_files(directory) == [".lock", MANIFEST]  # nothing moved
    with ArchiveWriter(tmp_path, "events"):
        assert older_files(directory) == []
    assert verify_archive(tmp_path) == {"events": []}


# -- input checks -----------------------------------------------------------


def test_bad_columns_are_named(tmp_path):
    writer = ArchiveWriter(tmp_path, "coherence_history")
    good = rows("coherence_history", ["s"], [T0])
    bad_type = good.set_column(good.schema.get_field_index("coherence_sync"), "coherence_sync",
                               pa.array(["high"]))
    with pytest.raises(ValueError, match="'coherence_sync'"):
        writer.write(bad_type)
    with pytest.raises(ValueError, match="'state' is missing"):
        writer.write(good.drop_columns(["state"]))
    with pytest.raises(ValueError, match="'colour' is not in the schema"):
        writer.write(good.append_column("colour", pa.array(["red"])))
    with pytest.raises(ValueError, match="'sensor' has 1 null"):
        writer.write(good.set_column(0, "sensor", pa.nulls(1, pa.string())))
    t_ns = pa.array([T0 * 1000 + 1], pa.timestamp("ns", "UTC"))  # not a whole microsecond
    lossy = good.set_column(good.schema.get_field_index("t"), "t", t_ns)
    with pytest.raises(ValueError, match="'t'"):
        writer.write(lossy)
    assert writer.buffered_rows == 0


def test_compatible_columns_are_cast_and_reordered(tmp_path):
    good = rows("coherence_history", ["s"], [T0])
    loose = pa.table({name: good[name] for name in reversed(good.column_names)})
    loose = loose.set_column(loose.schema.get_field_index("t"), "t", pa.array([T0], pa.int64()))
    with ArchiveWriter(tmp_path, "coherence_history") as writer:
        assert writer.write(loose.to_batches()[0]) == 1
    assert read_dataset(tmp_path / "coherence_history").select(good.column_names).equals(good)


def test_unknown_dataset(tmp_path):
    with pytest.raises(ValueError, match="known: temporal_signatures"):
        ArchiveWriter(tmp_path, "nonsense")
    with pytest.raises(ValueError, match="nonsense"):
        ArchiveSink(tmp_path, ["input", "nonsense"])


# -- Bytewax sink -----------------------------------------------------------


def test_sink_partitions_are_sorted_dataset_names(tmp_path):
    sink = ArchiveSink(tmp_path, ["mesh_sync", "events", "input"])
    parts = sink.list_parts()
    assert parts == ["events", "input", "mesh_sync"]
    # Bytewax indexes the sorted set of all partitions with part_fn.
    assert [sorted(parts)[sink.part_fn(p)] for p in parts] == parts
    with pytest.raises(ValueError, match="not enabled"):
        sink.part_fn("witnessing_logs")


def _run_sink_flow(root: Path, items) -> None:
    flow = Dataflow("archive_test")
    stream = op.input("in", flow, TestingSource(items))
    op.output("archive", stream, ArchiveSink(root, ["input", "events"], flush_rows=3))
    run_main(flow)


def test_sink_end_to_end(tmp_path):
    items = [
        ("input", rows("input", ["a", "b"], [T0, T0 + 1])),
        ("events", rows("events", ["a"], [T0 + HOUR])),
        ("input", rows("input", ["a", "b"], [T0 + HOUR, T0 + DAY])),
        ("input", rows("input", ["c"], [T0 + 5])),
    ]
    _run_sink_flow(tmp_path, items)
    assert verify_archive(tmp_path) == {"events": [], "input": []}
    assert read_dataset(tmp_path / "input").num_rows == 5
    assert read_dataset(tmp_path / "events").num_rows == 1
    assert not (tmp_path / "mesh_sync").exists()

    # Running the same input again archives nothing new.
    before = manifest_lines(tmp_path / "input")
    _run_sink_flow(tmp_path, items)
    assert manifest_lines(tmp_path / "input") == before
    assert read_dataset(tmp_path / "input").num_rows == 5


def test_sink_with_several_workers_keeps_one_writer_per_dataset(tmp_path):
    items = [("input", rows("input", [f"s{k}"], [T0 + k])) for k in range(12)]
    items += [("events", rows("events", ["a"], [T0 + k])) for k in range(12)]
    flow = Dataflow("archive_workers")
    stream = op.input("in", flow, TestingSource(items))
    op.output("archive", stream, ArchiveSink(tmp_path, ["input", "events"], flush_rows=4))
    cluster_main(flow, addresses=[], proc_id=0, worker_count_per_proc=3)
    # One writer per dataset: a gap-free chain of part-00000000, -01, -02 ...
    assert verify_archive(tmp_path) == {"events": [], "input": []}
    for name in ("input", "events"):
        files = [json.loads(line)["file"] for line in manifest_lines(tmp_path / name)]
        assert [f.rsplit("/", 1)[1] for f in files] == [f"part-{k:08d}.arrow" for k in range(len(files))]
        assert read_dataset(tmp_path / name).num_rows == 12


@pytest.mark.parametrize("grouped", [True, False])
def test_rows_at_or_below_their_keys_high_water_are_dropped_however_rows_are_ordered(tmp_path, grouped):
    """The writer keeps exactly the rows newer than everything earlier calls accepted for
    their sensor, whether a table holds long runs of one sensor (the dataflow's
    tables) or interleaved sensors."""
    import numpy as np

    rng = np.random.default_rng(7)
    writer = ArchiveWriter(tmp_path, "coherence_history", flush_rows=10**9, flush_seconds=1e9)
    high: dict[str, int] = {}
    for call in range(6):
        sensors = [f"s{i}" for i in rng.integers(0, 5, 400)]
        if grouped:
            sensors.sort()
        t = (1_764_115_200_000_000 + rng.integers(0, 200, len(sensors)) * 1000).tolist()
        expected = sum(1 for s, ti in zip(sensors, t) if ti > high.get(s, -1))
        newest: dict[str, int] = {}
        for s, ti in zip(sensors, t):
            if ti > high.get(s, -1):
                newest[s] = max(newest.get(s, ti), ti)
        high.update(newest)
        n = len(sensors)
        table = pa.table({
            "sensor": sensors, "t": pa.array(t, pa.int64()).cast(TIMESTAMP),
            "coherence_master": [0.5] * n, "coherence_emissary": [0.5] * n, "coherence_sync": [0.5] * n,
            "delta_phase": [0.0] * n, "state": ["dissipated"] * n,
        })
        assert writer.write(table) == expected, f"call {call}"
        for s, value in high.items():
            assert writer.high_water(s) == value
    writer.close()


def _input_rows(label: str, pieces: list[tuple[str, int]]) -> pa.Table:
    """Builder of PendingRows in the tests: one input row per (sensor, t) piece."""
    return rows("input", [f"{label}{s}" for s, _ in pieces], [t for _, t in pieces])


def _input_runs(pieces: list[tuple[str, int]]) -> tuple[list[int], list[tuple[str]]]:
    return [1] * len(pieces), [(f"x{s}",) for s, _ in pieces]


def test_pending_rows_join_only_rows_built_the_same_way():
    a = PendingRows(_input_rows, ("x",), [("a", T0)])
    b = PendingRows(_input_rows, ("x",), [("b", T0 + 1)])
    other = PendingRows(_input_rows, ("y",), [("c", T0 + 2)])
    told = PendingRows(_input_rows, ("x",), [("d", T0 + 3)], _input_runs)
    assert a.joins(b) and b.joins(a)
    assert not a.joins(other) and not a.joins(told) and not a.joins(rows("input", ["d"], [T0]))
    joined = a.join(b)
    assert joined.pieces == [("a", T0), ("b", T0 + 1)] and a.pieces == [("a", T0)]  # a is left as it was
    assert joined()["sensor"].to_pylist() == ["xa", "xb"]
    assert told.join(told).key_runs()[1] == [("xd",), ("xd",)]


def test_many_small_pending_batches_are_archived_in_order(tmp_path):
    """Batches that gather while the writer thread is busy may be built together; however
    they are joined, the archive holds every row once, in the order handed over, whatever
    lies between rows built the same way (a plain table, rows built with other arguments)."""
    sink = ArchiveSink(tmp_path, ["input"], flush_rows=10**9, flush_seconds=1e9)
    part = sink.build_part("archive", "input", None)
    expected = []
    for k in range(2000):
        sensor = f"s{k % 7}"
        label = "y" if k % 13 == 12 else "x"
        expected.append((label + sensor, T0 + k))
        value: object = PendingRows(_input_rows, (label,), [(sensor, T0 + k)])
        if k % 500 == 499:  # a plain table now and then: order still holds across it
            value = rows("input", [label + sensor], [T0 + k])
        part.write_batch([value])
    part.close()
    table = read_dataset(tmp_path / "input")
    got = list(zip(table["sensor"].to_pylist(), [int(v) for v in table["t"].cast(pa.int64()).to_pylist()]))
    assert got == expected
    assert verify_archive(tmp_path) == {"input": []}


def test_a_snapshot_makes_every_row_handed_over_durable_and_starts_the_other_datasets(tmp_path):
    """Each dataset's snapshot returns only once the rows handed to it are committed;
    the first snapshot of an epoch has started the others' flushes already."""
    sink = ArchiveSink(tmp_path, ["input", "events"], flush_rows=10**9, flush_seconds=1e9)
    inputs = sink.build_part("archive", "input", None)
    events = sink.build_part("archive", "events", None)
    for k in range(50):
        inputs.write_batch([PendingRows(_input_rows, ("x",), [("a", T0 + k)])])
        events.write_batch([rows("events", ["a"], [T0 + k])])
    inputs.snapshot()
    assert read_dataset(tmp_path / "input").num_rows == 50
    # Started by the input snapshot: the events reach the disk without a snapshot of their own.
    deadline = time.monotonic() + 60
    while read_dataset(tmp_path / "events").num_rows < 50 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert read_dataset(tmp_path / "events").num_rows == 50
    inputs.write_batch([PendingRows(_input_rows, ("x",), [("a", T0 + 50)])])
    events.snapshot()
    assert read_dataset(tmp_path / "events").num_rows == 50
    inputs.snapshot()  # the started flush did not cover the newest batch: a new one does
    assert read_dataset(tmp_path / "input").num_rows == 51
    inputs.close()
    events.close()
    assert verify_archive(tmp_path) == {"events": [], "input": []}


def test_writes_and_snapshots_show_in_the_metrics(tmp_path, monkeypatch):
    """Each write and flush of a dataset's writer thread is observed per dataset; each snapshot
    is observed, and its end is the newest snapshot time (set at the partition's start too).
    Rows handed over show as waiting for a snapshot until one covers them."""
    import weakref

    from prometheus_client import REGISTRY

    import connectors.archive.sink as sink_module

    monkeypatch.setattr(sink_module, "_partitions", weakref.WeakSet())  # only this test's partition

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = time.time()
    writes = value("becomingone_archive_write_seconds_count", dataset="input")
    snapshots = value("becomingone_snapshot_seconds_count")
    part = ArchiveSink(tmp_path, ["input"], flush_rows=10**9, flush_seconds=1e9).build_part("archive", "input", None)
    assert value("becomingone_snapshot_timestamp_seconds") >= before  # counted from the start
    assert value("becomingone_snapshot_pending_seconds") == 0
    part.write_batch([rows("input", ["a"], [T0])])
    assert value("becomingone_snapshot_pending_seconds") > 0
    part.snapshot()
    assert value("becomingone_snapshot_pending_seconds") == 0
    assert value("becomingone_archive_write_seconds_count", dataset="input") == writes + 2  # the write, the flush
    assert value("becomingone_snapshot_seconds_count") == snapshots + 1
    started = value("becomingone_snapshot_timestamp_seconds")
    part.snapshot()
    assert value("becomingone_snapshot_timestamp_seconds") >= started
    assert value("becomingone_snapshot_seconds_count") == snapshots + 2
    part.close()


def test_without_recovery_a_snapshot_starts_writing_and_returns_without_waiting(tmp_path, monkeypatch):
    """durable_snapshots=False: the snapshot hands the rows to the writer thread and
    returns while they are still being written; closing waits for all of them."""
    import threading

    sink = ArchiveSink(tmp_path, ["input"], flush_rows=10**9, flush_seconds=1e9, durable_snapshots=False)
    part = sink.build_part("archive", "input", None)
    release, flushed = threading.Event(), threading.Event()
    flush = part.writer.flush

    def held_flush():
        release.wait(60)  # bounded only so that a snapshot that waits fails instead of hanging
        written = flush()
        flushed.set()
        return written

    monkeypatch.setattr(part.writer, "flush", held_flush)
    for k in range(20):
        part.write_batch([PendingRows(_input_rows, ("x",), [("a", T0 + k)])])
    part.snapshot()
    assert not flushed.is_set()  # returned while its flush was held
    assert not (meta_dir(tmp_path / "input") / MANIFEST).exists()
    release.set()
    part.close()
    assert read_dataset(tmp_path / "input").num_rows == 20
    assert verify_archive(tmp_path) == {"input": []}


def test_without_recovery_a_failed_snapshot_write_is_raised_by_the_flow_s_next_call(tmp_path, monkeypatch):
    sink = ArchiveSink(tmp_path, ["input"], flush_rows=10**9, flush_seconds=1e9, durable_snapshots=False)
    part = sink.build_part("archive", "input", None)
    flush, failures = part.writer.flush, [OSError("No space left on device")]

    def failing_once():
        if failures:
            raise failures.pop()
        return flush()

    monkeypatch.setattr(part.writer, "flush", failing_once)
    part.write_batch([rows("input", ["a"], [T0])])
    part.snapshot()
    with pytest.raises(OSError, match="No space left"):
        part.close()
    # The rows stayed buffered and were written as the writer closed.
    assert read_dataset(tmp_path / "input").num_rows == 1


def test_rows_whose_builder_tells_their_key_runs_are_deduplicated_exactly_like_compared_rows(tmp_path):
    """Pending rows that say where their row keys change (PendingRows.runs) keep
    exactly the rows a writer comparing them would keep, on a restart too."""
    pieces = [(f"{k % 3}", T0 + k // 2) for k in range(40)]  # repeats: some rows at or below high-water
    kept = {}
    for name, runs in (("told", _input_runs), ("compared", None)):
        root = tmp_path / name
        with ArchiveWriter(root, "input") as writer:
            writer.write(rows("input", ["xa", "x0", "x1"], [T0 + 5, T0 + 3, T0 + 30]))  # archived before
        part = ArchiveSink(root, ["input"], flush_rows=10**9, flush_seconds=1e9).build_part("archive", "input", None)
        part.write_batch([PendingRows(_input_rows, ("x",), pieces, runs)])
        part.close()
        files = manifest_files(root / "input")
        assert len(files) == 2
        table = pa.concat_tables(pa.ipc.open_file(path).read_all() for path in files)
        with ArchiveWriter(root, "input") as writer:  # the high-water marks read back from the files
            kept[name] = (table["sensor"].to_pylist(), table["t"].cast(pa.int64()).to_pylist(),
                          {s: writer.high_water(s) for s in ("x0", "x1", "x2")})
    assert kept["told"] == kept["compared"]
    assert kept["told"][2]["x1"] == T0 + 30  # nothing newer came for x1
