"""Other Arrow readers read every dataset directory of an archive as it is (SPEC section 5).

An archive written by a real run of the flow; pyarrow, Polars and DuckDB each
read each dataset directory with nothing but hive partitioning switched on,
and count the rows the dataset's manifest lists.
"""

from __future__ import annotations

import io
import json

import pyarrow.dataset as ds
import pytest

from connectors.archive import MANIFEST, meta_dir
from flows.run import run_flow
from schemas.config import parse_config

DATASETS = ("coherence_history", "events", "input", "mesh_members", "mesh_sync", "temporal_signatures",
            "witnessing_logs")


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("readers") / "archive"
    config = {
        "source": {"kind": "synthetic", "duration": 30.0, "sensors": [
            {"name": "steady-1", "kind": "steady"}, {"name": "switch-1", "kind": "switching", "freq_hz": 2.0},
            {"name": "noise-1", "kind": "noise", "channels": 2}]},
        "memory": {"storage": {"path": str(root)}, "flush_rows": 1500},  # several files per dataset
        "sync": {"mesh_enabled": True},
        "metrics": {"enabled": False},
    }
    run_flow(parse_config(config), out=io.StringIO(), progress=io.StringIO())
    return root


def listed(root, dataset: str) -> list[dict]:
    """The dataset's manifest lines."""
    text = (meta_dir(root / dataset) / MANIFEST).read_text("utf-8")
    return [json.loads(line) for line in text.splitlines()]


def manifest_rows(root, dataset: str) -> int:
    rows = sum(entry["rows"] for entry in listed(root, dataset))
    assert rows > 0, dataset  # every dataset of the run has rows, or a count of 0 would prove nothing
    return rows


def test_the_run_wrote_every_dataset_and_nothing_else_into_the_dataset_directories(archive):
    assert sorted(p.name for p in archive.iterdir() if p.is_dir() and not p.name.startswith("_")) == list(DATASETS)
    for dataset in DATASETS:
        on_disk = sorted(p.relative_to(archive / dataset).as_posix()
                         for p in (archive / dataset).rglob("*") if p.is_file())
        assert on_disk == sorted(entry["file"] for entry in listed(archive, dataset)), dataset
        assert all(name.endswith(".arrow") for name in on_disk)
    assert len(listed(archive, "input")) > 1  # several files: the readers combine them


@pytest.mark.parametrize("dataset", DATASETS)
def test_pyarrow_reads_a_dataset_directory_as_is(archive, dataset):
    table = ds.dataset(archive / dataset, format="ipc", partitioning="hive").to_table()
    assert table.num_rows == manifest_rows(archive, dataset)
    assert {"date", "hour"} <= set(table.column_names)


@pytest.mark.parametrize("dataset", DATASETS)
def test_polars_reads_a_dataset_directory_as_is(archive, dataset):
    pl = pytest.importorskip("polars", reason="polars is a test dependency (pyproject [test])")
    frame = pl.scan_ipc(archive / dataset, hive_partitioning=True).collect()
    assert frame.height == manifest_rows(archive, dataset)
    assert {"date", "hour"} <= set(frame.columns)


@pytest.mark.parametrize("dataset", DATASETS)
def test_duckdb_reads_a_dataset_directory_through_pyarrow(archive, dataset):
    duckdb = pytest.importorskip("duckdb", reason="duckdb is a test dependency (pyproject [test])")
    arrow_dataset = ds.dataset(archive / dataset, format="ipc", partitioning="hive")  # noqa: F841 (by name)
    [(count,)] = duckdb.sql("select count(*) from arrow_dataset").fetchall()
    assert count == manifest_rows(archive, dataset)
