"""``becomingone serve``: every endpoint against the CLI's answer to the same query, in JSON and Arrow.

The archive is written by a real run of the flow (synthetic sensors, small
flushes so each dataset has several files); the server is a real
``becomingone serve`` process on a free port, asked over HTTP.  The range
tests also run on a hand-built archive of four hours (many files per hour)
to show a one-minute query opens only its hour's files.
"""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pyarrow as pa
import pytest

from connectors.api.client import ApiError, ArchiveClient
from connectors.archive import ArchiveWriter
from connectors.memory import TemporalMemory
from flows.run import run_flow
from schemas.config import parse_config
from schemas.datasets import DATASETS, TIMESTAMP
from tests.api_server import serving
from tests.conftest import BIN, clean_env

ARROW = "application/vnd.apache.arrow.stream"
T0 = 1_735_689_600_000_000  # 2025-01-01T00:00:00Z, the synthetic source's start
SECOND = 1_000_000
ALL = ("2025-01-01T00:00:00Z", "2025-01-01T01:00:00Z")


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("flow") / "archive"
    config = {
        "source": {"kind": "synthetic", "duration": 30.0, "sensors": [
            {"name": "steady-1", "kind": "steady"}, {"name": "switch-1", "kind": "switching", "freq_hz": 2.0},
            {"name": "noise-1", "kind": "noise", "channels": 2}]},
        "memory": {"storage": {"path": str(root)}, "flush_rows": 300},  # several files per dataset
        "sync": {"mesh_enabled": True},
        "metrics": {"enabled": False},
    }
    run_flow(parse_config(config), out=io.StringIO(), progress=io.StringIO())
    return root


@pytest.fixture(scope="module")
def url(archive, tmp_path_factory):
    with serving("--archive", str(archive), stderr_path=tmp_path_factory.mktemp("serve") / "stderr") as address:
        yield address


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN), *args], capture_output=True, env=clean_env(), timeout=300)


def _get(url: str, path: str, arrow: bool = False) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url + path, headers={"Accept": ARROW} if arrow else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _retrieve(root, dataset: str, start: str, end: str, *extra: str) -> tuple[pa.Table, list[dict], str]:
    """The CLI's answer: (Arrow table, JSON rows, its stderr line)."""
    base = ["memory", "retrieve", "--archive", str(root), "--dataset", dataset, "--start", start, "--end", end, *extra]
    arrow = _cli(*base, "--format", "arrow")
    lines = _cli(*base, "--format", "json")
    assert arrow.returncode == 0 and lines.returncode == 0, arrow.stderr + lines.stderr
    rows = [json.loads(line) for line in lines.stdout.decode().splitlines()]
    return pa.ipc.open_stream(arrow.stdout).read_all(), rows, arrow.stderr.decode()


def _api_rows(url: str, path: str) -> tuple[pa.Table, dict]:
    status, headers, body = _get(url, path, arrow=True)
    assert status == 200 and headers["content-type"] == ARROW, body[:300]
    table = pa.ipc.open_stream(body).read_all()
    status, _, body = _get(url, path)
    assert status == 200, body
    return table, json.loads(body)


@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_each_dataset_equals_memory_retrieve(archive, url, dataset):
    for start, end, extra in [(*ALL, ()), ("2025-01-01T00:00:10Z", "1735689620.5", ("steady-1", "noise-1"))]:
        cli_table, cli_rows, _ = _retrieve(archive, dataset, start, end, *(a for s in extra for a in ("--sensor", s)))
        query = f"/v1/datasets/{dataset}?start={start}&end={end}" + "".join(f"&sensor={s}" for s in extra)
        table, body = _api_rows(url, query)
        assert table.equals(cli_table, check_metadata=True)
        assert body["rows"] == cli_rows and body["count"] == len(cli_rows) and not body["truncated"]
        if dataset != "witnessing_logs" and not extra:
            assert len(cli_rows) > 0


def test_limit_gives_the_first_rows_and_says_so(archive, url):
    cli_table, cli_rows, _ = _retrieve(archive, "temporal_signatures", *ALL)
    table, body = _api_rows(url, f"/v1/datasets/temporal_signatures?start={ALL[0]}&end={ALL[1]}&limit=7")
    assert table.equals(cli_table.slice(0, 7)) and body["rows"] == cli_rows[:7]
    assert body["truncated"] and body["count"] == 7


def test_events_and_mesh_equal_memory_retrieve(archive, url):
    cli_table, cli_rows, _ = _retrieve(archive, "events", *ALL)
    table, body = _api_rows(url, f"/v1/events?start={ALL[0]}&end={ALL[1]}")
    assert table.equals(cli_table) and body["rows"] == cli_rows
    assert {r["event"] for r in cli_rows} >= {"collapse"}
    for cells in ([], ["*"], ["becomingone", "*"]):
        cli_table, cli_rows, _ = _retrieve(archive, "mesh_sync", *ALL, *(a for c in cells for a in ("--cell", c)))
        table, body = _api_rows(url, f"/v1/mesh?start={ALL[0]}&end={ALL[1]}" + "".join(f"&cell={c}" for c in cells))
        assert table.equals(cli_table) and body["rows"] == cli_rows and len(cli_rows) > 0


@pytest.mark.parametrize("at", ["2025-01-01T00:00:05Z", "1735689612.25", "2025-01-01T00:00:29Z", "2030-01-01T00:00:00Z"])
def test_sensor_state_equals_memory_reconstruct(archive, url, at):
    for sensor in ("steady-1", "switch-1", "noise-1"):
        cli = _cli("memory", "reconstruct", "--archive", str(archive), "--sensor", sensor, "--at", at, "--format", "json")
        assert cli.returncode == 0, cli.stderr
        status, _, body = _get(url, f"/v1/sensors/{sensor}/state?at={at}")
        assert status == 200 and json.loads(body) == json.loads(cli.stdout)


def test_sensors_are_each_sensors_newest_coherence_history_row(archive, url):
    cli_table, cli_rows, _ = _retrieve(archive, "coherence_history", *ALL)
    newest: dict[str, int] = {}
    for i, row in enumerate(cli_rows):  # archive order: of equal times the later row wins
        if row["sensor"] not in newest or row["t"] >= cli_rows[newest[row["sensor"]]]["t"]:
            newest[row["sensor"]] = i
    order = [newest[s] for s in sorted(newest)]
    table, body = _api_rows(url, "/v1/sensors")
    assert body["sensors"] == [cli_rows[i] for i in order] and body["count"] == 3
    assert table.equals(cli_table.take(order))
    for sensor, i in newest.items():  # the last state is the state reconstructed at the newest time
        status, _, state = _get(url, f"/v1/sensors/{sensor}/state?at=2030-01-01T00:00:00Z")
        assert json.loads(state)["sync"]["coherence_sync"] == cli_rows[i]["coherence_sync"]


def test_verify_agrees_with_memory_verify(archive, url, tmp_path):
    cli = _cli("memory", "verify", "--archive", str(archive))
    status, _, body = _get(url, "/v1/verify")
    answer = json.loads(body)
    assert cli.returncode == 0 and status == 200 and answer["ok"]
    assert sorted(f"{name}: ok" for name in answer["datasets"]) == sorted(cli.stdout.decode().splitlines())


def test_openapi_lists_the_endpoints_and_their_parameters(url):
    status, headers, body = _get(url, "/openapi.json")
    spec = json.loads(body)
    assert status == 200 and spec["openapi"].startswith("3.")
    assert set(spec["paths"]) == {"/v1/sensors", "/v1/sensors/{sensor}/state", "/v1/datasets/{dataset}",
                                  "/v1/events", "/v1/mesh", "/v1/verify"}
    names = {p["name"] for p in spec["paths"]["/v1/datasets/{dataset}"]["get"]["parameters"]}
    assert names == {"dataset", "start", "end", "sensor", "cell", "limit"}


@pytest.mark.parametrize("path, status, parameter", [
    ("/v1/datasets/coherence_history?start=yesterday&end=0", 400, "start"),
    ("/v1/datasets/coherence_history?start=0", 400, "end"),
    ("/v1/datasets/coherence_history?start=10&end=5", 400, "start"),
    ("/v1/datasets/coherence_history?start=0&end=1&limit=0", 400, "limit"),
    ("/v1/datasets/coherence_history?start=0&end=1&limit=ten", 400, "limit"),
    ("/v1/datasets/coherence_history?start=0&end=1&sensors=a", 400, "sensors"),
    ("/v1/datasets/coherence_history?start=0&start=1&end=1", 400, "start"),
    ("/v1/events?start=0&end=1&sensor=a", 400, "sensor"),
    ("/v1/mesh?start=0&end=2025-13-01T00:00:00Z", 400, "end"),
    ("/v1/sensors/steady-1/state?at=noon", 400, "at"),
    ("/v1/sensors?x=1", 400, "x"),
    ("/v1/verify?deep=1", 400, "deep"),
    ("/v1/datasets/nope?start=0&end=1", 404, "dataset"),
    ("/v1/sensors/nobody/state", 404, "sensor"),
    ("/v1/sensors/steady-1/state?at=2024-12-31T23:00:00Z", 404, "sensor"),
])
def test_bad_input_gets_a_clear_4xx(url, path, status, parameter):
    got, headers, body = _get(url, path)
    answer = json.loads(body)
    assert got == status and headers["content-type"] == "application/json"
    assert answer["parameter"] == parameter and answer["error"]


def test_unknown_paths_and_other_methods_are_json_errors(url):
    status, headers, body = _get(url, "/v2/sensors")
    assert status == 404 and json.loads(body)["error"] == "Not Found"
    request = urllib.request.Request(url + "/v1/sensors", method="DELETE")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 405 and "GET" in refused.value.headers["allow"]
    assert json.loads(refused.value.read())["error"] == "Method Not Allowed"


def test_serve_without_the_api_extra_says_how_to_install_it(archive):
    blocked = ("import sys; sys.modules['uvicorn'] = None; from flows.cli import main; "
               f"sys.exit(main(['serve', '--archive', {str(archive)!r}, '--port', '0']))")
    result = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, env=clean_env(),
                            timeout=60)
    assert result.returncode == 2
    assert "pip install 'becomingone[api]'" in result.stderr


def test_serve_names_a_missing_archive_and_a_taken_port(archive, tmp_path):
    missing = _cli("serve", "--archive", str(tmp_path / "nothing"), "--port", "0")
    assert missing.returncode == 2 and b"no archive directory at" in missing.stderr
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        busy = _cli("serve", "--archive", str(archive), "--port", str(port))
    assert busy.returncode == 1 and f"cannot listen on 127.0.0.1:{port}".encode() in busy.stderr


def test_the_client_round_trips(archive, url):
    client = ArchiveClient(url)
    memory = TemporalMemory(archive)
    assert client.dataset("input", *ALL, sensors=["switch-1"]).equals(
        memory.retrieve(*ALL, sensors=["switch-1"], dataset="input"))
    assert client.events(T0 / SECOND, T0 / SECOND + 60).equals(memory.retrieve(*ALL, dataset="events"))
    assert client.mesh(*ALL, cells=["*"]).equals(memory.retrieve(*ALL, dataset="mesh_sync", cells=["*"]))
    assert client.sensors().equals(memory.last_states())
    state = client.state("steady-1", "2025-01-01T00:00:20Z")
    assert state == memory.reconstruct_coherence("2025-01-01T00:00:20Z", "steady-1").as_json()
    assert client.verify()["ok"] and "/v1/mesh" in client.openapi()["paths"]
    with pytest.raises(ApiError) as bad:
        client.dataset("coherence_history", "2025-01-01T00:00:10Z", "2025-01-01T00:00:00Z")
    assert bad.value.status == 400 and bad.value.parameter == "start"
    with pytest.raises(ApiError, match="404"):
        client.state("nobody")


# --------------------------------------------------------------------------
# A multi-hour archive: a short range opens only its hour's files; the scan bound.

HOURS = 4


@pytest.fixture(scope="module")
def hours(tmp_path_factory):
    """Four hours of 10 s coherence-history rows of two sensors, flushed every 5 minutes (12 files an hour)."""
    root = tmp_path_factory.mktemp("hours")
    t = T0 + np.arange(0, HOURS * 3600, 10) * SECOND
    with ArchiveWriter(root, "coherence_history", flush_rows=10**9, flush_seconds=10**9) as writer:
        for lo in range(0, len(t), 30):
            chunk = t[lo:lo + 30]
            for k, sensor in enumerate(("a", "b")):
                coherence = (chunk - T0) / (HOURS * 3600 * SECOND) / (k + 1)
                writer.write(pa.table({
                    "sensor": [sensor] * len(chunk), "t": pa.array(chunk).cast(TIMESTAMP),
                    "coherence_master": coherence, "coherence_emissary": coherence, "coherence_sync": coherence,
                    "delta_phase": np.zeros(len(chunk)), "state": ["dissipated"] * len(chunk)},
                    schema=DATASETS["coherence_history"]))
            writer.flush()
    return root


def test_a_minute_of_a_multi_hour_archive_opens_only_its_hours_files(hours, tmp_path):
    start, end = "2025-01-01T02:10:00Z", "2025-01-01T02:11:00Z"
    cli_table, cli_rows, said = _retrieve(hours, "coherence_history", start, end, "--sensor", "b")
    assert said.strip().endswith("from 12 file(s)")  # the CLI opens the 12 files of hour 02
    with serving("--archive", str(hours), stderr_path=tmp_path / "stderr") as address:
        table, body = _api_rows(address, f"/v1/datasets/coherence_history?start={start}&end={end}&sensor=b")
        _, headers, _ = _get(address, f"/v1/datasets/coherence_history?start={start}&end={end}&sensor=b")
    assert f"the API is served in plaintext: {address}" in (tmp_path / "stderr").read_text()
    assert table.equals(cli_table) and body["rows"] == cli_rows and len(cli_rows) == 7
    assert body["files_opened"] == 12 and headers["x-files-opened"] == "12"  # of 48
    assert body["rows_scanned"] == 12 * 30 * 2  # the rows of that hour's files, nothing else


def test_a_range_over_the_scan_bound_is_refused_before_a_file_is_read(hours, tmp_path):
    with serving("--archive", str(hours), "--max-scan-rows", "1000", stderr_path=tmp_path / "stderr") as address:
        status, _, body = _get(address, "/v1/datasets/coherence_history?start=2025-01-01T00:30:00Z"
                                        "&end=2025-01-01T02:30:00Z")
        answer = json.loads(body)
        assert status == 413 and "2,160 rows" in answer["error"] and "max_scan_rows" in answer["hint"]
        ok, _, body = _get(address, "/v1/datasets/coherence_history?start=2025-01-01T00:30:00Z"
                                    "&end=2025-01-01T00:31:00Z")  # one hour: 720 rows
        assert ok == 200 and json.loads(body)["rows_scanned"] == 720
