"""``becomingone serve`` in operation: HTTPS and mutual TLS with the security section's files, and
readers during a ``memory compact`` getting the answer of one manifest state.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pyarrow as pa
import pytest
import yaml

from connectors.api.client import ApiError, ArchiveClient
from connectors.api.server import create_app
from connectors.api.tls import api_tls
from connectors.archive import compact_archive
from connectors.memory import TemporalMemory
from flows.run import run_flow
from flows.serve_command import run_server
from schemas.config import parse_config
from tests.api_server import serving
from tests.conftest import BIN, WAIT, clean_env
from tests.test_security import Certs

ALL = ("2025-01-01T00:00:00Z", "2025-01-01T01:00:00Z")


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """Three runs of the flow appending to one archive: each dataset has files a compaction merges."""
    root = tmp_path_factory.mktemp("flow") / "archive"
    for start in (1735689600, 1735689620, 1735689640):  # 2025-01-01T00:00:00Z, +20 s, +40 s
        config = {"source": {"kind": "synthetic", "duration": 20.0, "start": start, "sensors": [
            {"name": "steady-1", "kind": "steady"}, {"name": "noise-1", "kind": "noise"}]},
            "memory": {"storage": {"path": str(root)}}, "metrics": {"enabled": False}}
        run_flow(parse_config(config), out=io.StringIO(), progress=io.StringIO())
    return root


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    return Certs(tmp_path_factory.mktemp("tls"))


def _config_file(path, archive, security: dict) -> str:
    path.write_text(yaml.safe_dump({"memory": {"storage": {"path": str(archive)}}, "security": security}))
    return str(path)


def _context(certs: Certs, client_cert: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs.ca_file))
    if client_cert:
        context.load_cert_chain(str(certs.client_cert), str(certs.client_key))
    return context


def _refused(url: str, context: ssl.SSLContext) -> bool:
    try:
        with urllib.request.urlopen(url + "/v1/sensors", context=context, timeout=30) as answer:
            answer.read()
    except (urllib.error.URLError, ssl.SSLError, ConnectionError):
        return True
    return False


def test_https_with_the_security_files(archive, certs, tmp_path):
    config = _config_file(tmp_path / "tls.yaml", archive, certs.security())
    with serving("--config", config, stderr_path=tmp_path / "stderr") as url:
        assert url.startswith("https://127.0.0.1:")
        client = ArchiveClient(url, context=_context(certs, client_cert=False))
        assert client.sensors().equals(TemporalMemory(archive).last_states())
        assert _refused(url.replace("https://", "http://"), None)  # no plaintext on the TLS port
    assert "plaintext" not in (tmp_path / "stderr").read_text()


def test_mutual_tls_requires_a_client_certificate_on_every_path(archive, certs, tmp_path):
    config = _config_file(tmp_path / "mtls.yaml", archive, certs.security(mutual=True))
    other = Certs(tmp_path / "other", "other")
    with serving("--config", config, stderr_path=tmp_path / "stderr") as url:
        assert ArchiveClient(url, context=_context(certs, client_cert=True)).verify()["ok"]
        assert _refused(url, _context(certs, client_cert=False))
        stranger = _context(certs, client_cert=False)
        stranger.load_cert_chain(str(other.client_cert), str(other.client_key))  # signed by another CA
        assert _refused(url, stranger)
        for path in ("/openapi.json", "/v1/verify"):
            try:
                urllib.request.urlopen(url + path, context=_context(certs, client_cert=False), timeout=30).read()
                pytest.fail(f"{path} answered a client without a certificate")
            except (urllib.error.URLError, ssl.SSLError, ConnectionError):
                pass


def _served_certificate(port: int, certs: Certs) -> bytes:
    context = ssl.create_default_context(cafile=str(certs.ca_file))
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return tls.getpeercert(binary_form=True)


def _der(pem_file) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem_file.read_text().split("-----END CERTIFICATE-----")[0]
                                    + "-----END CERTIFICATE-----\n")


def test_a_renewed_certificate_is_served_without_a_restart(archive, certs, tmp_path, caplog):
    import uvicorn

    live_cert, live_key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copy(certs.cert_file, live_cert)
    shutil.copy(certs.key_file, live_key)
    security = parse_config({"security": {**certs.security(), "cert_file": str(live_cert),
                                          "key_file": str(live_key)}}).security
    tls = api_tls(security)
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(archive), log_config=None, log_level="warning",
                                           ssl_context_factory=lambda _config, _default: tls.context))
    thread = threading.Thread(target=asyncio.run, args=(run_server(server, sock, tls, 0.05),), daemon=True)
    thread.start()
    try:
        assert _wait_for(lambda: _served_certificate(port, certs) == _der(certs.cert_file))
        renewed = certs.ca.issue_cert("127.0.0.1", "localhost")  # what cert-manager writes at renewal
        staged_key, staged_cert = tmp_path / "key.new", tmp_path / "crt.new"
        renewed.private_key_pem.write_to_path(str(staged_key))
        staged_cert.write_bytes(b"".join(blob.bytes() for blob in renewed.cert_chain_pems))
        os.replace(staged_key, live_key)
        os.replace(staged_cert, live_cert)
        assert _wait_for(lambda: _served_certificate(port, certs) == _der(live_cert))
        live_cert.write_text("half written\n")  # cannot be loaded: the renewed certificate stays
        assert _wait_for(lambda: "cannot be loaded" in caplog.text)
        assert _served_certificate(port, certs) == ssl.PEM_cert_to_DER_cert(renewed.cert_chain_pems[0].bytes().decode())
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def _wait_for(condition) -> bool:
    """True once ``condition()`` holds, polled for at most WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


# --------------------------------------------------------------------------
# Readers during a compaction.


def _sorted(table: pa.Table) -> pa.Table:
    return table.sort_by([(c, "ascending") for c in table.column_names
                          if not pa.types.is_list(table.schema.field(c).type)])


@contextlib.contextmanager
def _in_process(root) -> Iterator[str]:
    """The API over ``root`` served by uvicorn in a thread of this process (so a test can patch the reader)."""
    import uvicorn

    sock = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(root), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def test_a_compaction_between_listing_and_reading_is_answered_from_the_new_manifest(archive, tmp_path,
                                                                                    monkeypatch):
    root = tmp_path / "archive"
    shutil.copytree(archive, root)
    before = {d: TemporalMemory(root).retrieve(*ALL, dataset=d) for d in ("temporal_signatures", "coherence_history")}
    read_file = TemporalMemory.read_file
    compacted = []

    def compact_first(self, path):
        if not compacted:  # the query has listed the old manifest: merge its files away now
            compacted.append(compact_archive(root))
        return read_file(self, path)

    monkeypatch.setattr(TemporalMemory, "read_file", compact_first)
    with _in_process(root) as url:
        client = ArchiveClient(url)
        got = {dataset: client.dataset(dataset, *ALL) for dataset in before}
        for dataset, rows in before.items():
            assert _sorted(got[dataset]).equals(_sorted(rows))
        assert compacted and compacted[0]["temporal_signatures"].hours_merged == 1
        assert client.sensors().equals(TemporalMemory(root).last_states())
    # The answer is the new manifest's: equal, row for row, to the CLI's after the compaction.
    cli = subprocess.run([str(BIN), "memory", "retrieve", "--archive", str(root), "--dataset", "temporal_signatures",
                          "--start", ALL[0], "--end", ALL[1], "--format", "arrow"], capture_output=True,
                         env=clean_env(), timeout=120)
    assert pa.ipc.open_stream(cli.stdout).read_all().equals(got["temporal_signatures"])


def test_readers_during_memory_compact_get_consistent_answers(archive, tmp_path):
    root = tmp_path / "archive"
    shutil.copytree(archive, root)
    memory = TemporalMemory(root)
    files_before = len(memory.files("temporal_signatures"))
    expected = {d: _sorted(memory.retrieve(*ALL, dataset=d)) for d in ("temporal_signatures", "input")}
    sensors = memory.last_states()
    answers, failures = [], []
    with serving("--archive", str(root), stderr_path=tmp_path / "stderr") as url:
        client = ArchiveClient(url)
        done = threading.Event()

        def read() -> None:
            while not done.is_set():
                try:
                    for dataset, rows in expected.items():
                        answers.append(_sorted(client.dataset(dataset, *ALL)).equals(rows))
                    answers.append(client.sensors().equals(sensors))
                except Exception as exc:  # noqa: BLE001 - every failure is reported below
                    failures.append(repr(exc))

        readers = [threading.Thread(target=read) for _ in range(3)]
        for r in readers:
            r.start()
        try:
            compact = subprocess.run([str(BIN), "memory", "compact", "--archive", str(root)], capture_output=True,
                                     text=True, env=clean_env(), timeout=120)
        finally:
            done.set()
            for r in readers:
                r.join(timeout=60)
        assert compact.returncode == 0, compact.stderr
        for dataset, rows in expected.items():  # and after it
            assert _sorted(client.dataset(dataset, *ALL)).equals(rows)
    assert len(TemporalMemory(root).files("temporal_signatures")) < files_before
    assert not failures and answers and all(answers), (failures[:3], answers.count(False))


def test_a_damaged_archive_is_a_500_naming_the_file_not_a_retry_loop(archive, tmp_path):
    root = tmp_path / "archive"
    shutil.copytree(archive, root)
    gone = TemporalMemory(root).files("coherence_history")[0]
    gone.unlink()
    with serving("--archive", str(root), stderr_path=tmp_path / "stderr") as url:
        client = ArchiveClient(url)
        with pytest.raises(ApiError) as caught:
            client.dataset("coherence_history", *ALL)
        assert caught.value.status == 500 and gone.name in caught.value.message
        assert "memory verify" in caught.value.message
        answer = client.verify()
        assert not answer["ok"] and answer["datasets"]["coherence_history"]["problems"]
        assert answer["datasets"]["events"]["ok"]


def test_connections_beyond_the_bound_get_503_at_once(archive, tmp_path):
    from connectors.endpoint import MAX_CONNECTIONS

    config = tmp_path / "plain.yaml"
    config.write_text(yaml.safe_dump({"memory": {"storage": {"path": str(archive)}}}))
    with serving("--config", str(config), stderr_path=tmp_path / "stderr") as url:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        idle = [socket.create_connection((host, int(port)), timeout=WAIT) for _ in range(MAX_CONNECTIONS)]
        try:
            _wait_for(lambda: _status(url) == 503)  # once the server has taken the idle ones in
            assert _status(url) == 503
        finally:
            for s in idle:
                s.close()
        assert _wait_for(lambda: _status(url) == 200)


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(f"{url}/v1/sensors", timeout=WAIT) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code
