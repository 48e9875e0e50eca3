"""The config's ``logging`` section: level and format of ``becomingone run`` and of ``python -m bytewax.run``.

``format: structured`` is one JSON object per stderr log line (time, level,
logger, message, and the flow, worker and step where known); the startup line
names the config, node, input, partitions, archive and metrics and never a
secret; ``level`` hides what is below it; librdkafka's lines reach Python
logging under ``becomingone.kafka`` with repeats held back.
"""

from __future__ import annotations

import io
import json
import logging
import math
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from flows.log_context import in_step, set_flow
from flows.logs import StructuredFormatter, configure_logging, log_format
from schemas.config import LoggingSection

from conftest import BIN, WAIT, clean_env, free_port

#: What every structured line holds.
CORE_FIELDS = {"time", "level", "logger", "message"}
#: The progress line of ``becomingone run`` (not a log line) when stderr is not a terminal.
PROGRESS_STARTS = ("event time ", "watermark ")


def _raw_file(path: Path) -> Path:
    """12 s of a 250 Hz raw sensor, and a 10 Hz one too slow for the band (the resonate step warns about it)."""
    with open(path, "w") as f:
        for k in range(250 * 12):
            f.write(json.dumps({"sensor": "alpha", "t": 1764115200 + k / 250,
                                "value": math.cos(2 * math.pi * 10.0 * k / 250)}) + "\n")
            if k % 25 == 0:
                f.write(json.dumps({"sensor": "slow", "t": 1764115200 + k / 250, "value": 1.0}) + "\n")
    return path


def _config(tmp_path: Path, **sections) -> Path:
    config = {"becomingone": {"name": "plant-7"},
              "source": {"kind": "file", "path": str(_raw_file(tmp_path / "raw.jsonl"))},
              "metrics": {"enabled": False},
              "kairos": {"tau_scale": 0.1, "velocity_span": 0.02, "phase_band": [8, 12]},
              "master": {"tau_max": 20.0, "min_span": 5.0},
              "memory": {"storage": {"path": str(tmp_path / "archive")}}, **sections}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN), "run", "--no-recovery", *args], capture_output=True, text=True,
                          env=clean_env(**(env or {})), timeout=3 * WAIT)


def _log_lines(stderr: str) -> list[dict]:
    """Every stderr line but the progress line, each parsed as JSON (failing on any that is not)."""
    lines = [line for line in stderr.splitlines() if line and not line.startswith(PROGRESS_STARTS)]
    parsed = []
    for line in lines:
        record = json.loads(line)
        assert isinstance(record, dict) and CORE_FIELDS <= record.keys(), line
        assert datetime.fromisoformat(record["time"].replace("Z", "+00:00")).utcoffset().total_seconds() == 0
        parsed.append(record)
    return parsed


@pytest.fixture
def logging_restored():
    """The process's logging as it was before the test (handlers, levels, Python warnings)."""
    root, ours = logging.getLogger(), logging.getLogger("becomingone")
    saved = (root.handlers[:], root.level, ours.handlers[:], ours.level, ours.propagate)
    yield
    root.handlers[:], ours.handlers[:] = saved[0], saved[2]
    root.setLevel(saved[1])
    ours.setLevel(saved[3])
    ours.propagate = saved[4]
    logging.captureWarnings(False)
    set_flow(None)


def _startup(records: list[dict]) -> dict:
    found = [r for r in records if "startup" in r]
    assert len(found) == 1, records
    return found[0]


# --------------------------------------------------------------------------
# `becomingone run`


def test_a_structured_run_writes_one_json_object_per_log_line_with_flow_worker_and_step(tmp_path):
    config = _config(tmp_path, logging={"format": "structured", "level": "INFO"})
    done = _run("--config", str(config), "--workers", "2")
    assert done.returncode == 0, done.stderr
    records = _log_lines(done.stderr)
    start = _startup(records)
    assert (start["level"], start["logger"], start["flow"]) == ("INFO", "becomingone.flow", "plant-7")
    assert start["startup"] == {"config": str(config), "overrides": [], "node": "full",
                                "input": f"file {tmp_path / 'raw.jsonl'}", "partitions": 1,
                                "archive": str(tmp_path / "archive"), "metrics": "off", "kafka": "off"}
    assert start["message"].startswith(f"starting node 'full' (config: {config}): input file ")
    warned = [r for r in records if r["logger"] == "becomingone.raw"]
    assert len(warned) == 1, records
    assert warned[0]["level"] == "WARNING" and "10 Hz give no phase" in warned[0]["message"]
    assert (warned[0]["flow"], warned[0]["step"]) == ("plant-7", "resonate")
    assert warned[0]["worker"] in (0, 1)
    assert "alpha" in done.stdout  # the summary is no log line: it stays on stdout as it was


def test_at_a_terminal_a_structured_config_is_read_as_text_lines(tmp_path):
    """The default format is structured; a person who runs ``becomingone run`` at a terminal reads text."""
    import os
    import pty

    leader, follower = pty.openpty()
    proc = subprocess.Popen([str(BIN), "run", "--no-recovery", "--config", str(_config(tmp_path))],
                            stdout=subprocess.DEVNULL, stderr=follower, env=clean_env())
    os.close(follower)
    shown = bytearray()
    while True:  # read as it comes (a terminal's buffer is small); EIO once the run has closed it
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    assert proc.wait(timeout=3 * WAIT) == 0, shown
    text = shown.decode()
    # Each log line first clears the live progress line it would otherwise be appended to.
    assert "\r\x1b[Kbecomingone run: starting node 'full' (config: " in text
    assert "\r\x1b[Kbecomingone run: raw sensors sampled at 10 Hz give no phase" in text
    assert '{"time"' not in text


def test_level_warning_hides_the_info_lines(tmp_path):
    done = _run("--config", str(_config(tmp_path, logging={"format": "structured", "level": "warning"})))
    assert done.returncode == 0, done.stderr
    records = _log_lines(done.stderr)
    assert [r["level"] for r in records] == ["WARNING"], records  # the raw sensor's warning, no startup line


def test_the_text_format_keeps_the_readable_lines(tmp_path):
    done = _run("--config", str(_config(tmp_path, logging={"format": "text"})))
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if not line.startswith(PROGRESS_STARTS)]
    assert lines[0].startswith("becomingone run: starting node 'full' (config: ")
    assert lines[1] == ("becomingone run: raw sensors sampled at 10 Hz give no phase: phase band [8, 12] Hz "
                        "needs a rate above 24 Hz (twice f_hi), got 10 Hz")
    assert len(lines) == 2, done.stderr


def test_the_startup_line_names_the_kafka_cluster_and_never_a_secret(tmp_path, bootstrap):
    secret, env_secret = "hunter2-in-the-file", "s3cret-in-the-environment"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "becomingone": {"name": "plant-7"},
        "source": {"kind": "synthetic", "duration": 5},
        "kafka": {"bootstrap.servers": bootstrap, "sasl.username": "operator", "sasl.password": secret},
        "metrics": {"enabled": False}, "memory": {"storage": {"path": str(tmp_path / "archive")}},
        "logging": {"format": "structured"}}))
    done = _run("--config", str(config), env={"BECOMINGONE__KAFKA__SSL_KEY_PASSWORD": env_secret})
    assert done.returncode == 0, done.stderr
    assert secret not in done.stdout + done.stderr and env_secret not in done.stdout + done.stderr
    start = _startup(_log_lines(done.stderr))
    facts = start["startup"]
    assert facts["kafka"] == {"bootstrap.servers": bootstrap, "sasl.username": "operator",
                              "sasl.password": "<redacted>", "ssl.key.password": "<redacted>"}
    assert facts["overrides"] == ["BECOMINGONE__KAFKA__SSL_KEY_PASSWORD"]
    assert (facts["input"], facts["partitions"]) == ("synthetic, 4 sensors", 1)
    assert start["message"].endswith(f"; kafka {bootstrap}")


def test_a_bad_logging_key_names_the_key_and_prints_no_secret(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"kafka": {"bootstrap.servers": "127.0.0.1:1", "sasl.password": "hunter2"},
                                      "logging": {"format": "jsonl", "level": "LOUD"}}))
    done = _run("--config", str(config))
    assert done.returncode == 2
    assert "logging.format" in done.stderr and "logging.level" in done.stderr
    assert "hunter2" not in done.stdout + done.stderr


# --------------------------------------------------------------------------
# `python -m bytewax.run flows.kairos`


def test_the_flow_under_bytewax_run_logs_as_its_config_says(tmp_path):
    config = _config(tmp_path, logging={"format": "structured"})
    done = subprocess.run([sys.executable, "-m", "bytewax.run", "flows.kairos", "-w", "2"], capture_output=True,
                          text=True, env=clean_env(BECOMINGONE_CONFIG=str(config)), timeout=3 * WAIT,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    records = _log_lines(done.stderr)  # no progress line here: every stderr line is a log line
    assert len(records) == len(done.stderr.splitlines())
    assert _startup(records)["startup"]["config"] == str(config)
    warned = [r for r in records if r["logger"] == "becomingone.raw"]
    assert [(r["flow"], r["step"], r["worker"] in (0, 1)) for r in warned] == [("plant-7", "resonate", True)]


@pytest.mark.slow  # the start waits 10 s for the cluster
def test_a_kafka_cluster_out_of_reach_under_bytewax_run_is_one_json_line(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"kafka": {"bootstrap.servers": f"127.0.0.1:{free_port()}"},
                                      "source": {"kind": "synthetic"}, "metrics": {"enabled": False}}))
    done = subprocess.run([sys.executable, "-m", "bytewax.run", "flows.kairos"], capture_output=True, text=True,
                          env=clean_env(BECOMINGONE_CONFIG=str(config)), timeout=3 * WAIT,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 1
    [record] = _log_lines(done.stderr)
    assert record["level"] == "CRITICAL" and record["message"].startswith("cannot reach Kafka at 127.0.0.1:")


# --------------------------------------------------------------------------
# librdkafka's lines


LIBRDKAFKA_SCRIPT = """
import logging, sys, time
from confluent_kafka import Consumer
from connectors.kafka import consumer_settings
from flows.logs import configure_logging
from schemas.config import KafkaSection, LoggingSection

configure_logging(LoggingSection(format="structured"), "test")
seen = []
class Seen(logging.Handler):
    def emit(self, record):
        seen.append(record)
logging.getLogger("becomingone.kafka").addHandler(Seen())
consumer = Consumer(consumer_settings(KafkaSection({"bootstrap.servers": sys.argv[1]}), "test-logging"))
consumer.subscribe(["test.logging"])
deadline = time.monotonic() + float(sys.argv[2])
while not seen and time.monotonic() < deadline:   # the lines are served by poll
    consumer.poll(0.1)
consumer.close()
sys.exit(0 if seen else 1)
"""


def test_librdkafka_lines_reach_python_logging_under_becomingone_kafka(tmp_path):
    address = f"127.0.0.1:{free_port()}"  # nothing listens: librdkafka logs its failed connects
    done = subprocess.run([sys.executable, "-c", LIBRDKAFKA_SCRIPT, address, str(WAIT)], capture_output=True,
                          text=True, env=clean_env(), timeout=3 * WAIT, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    records = _log_lines(done.stderr)
    assert records and all(r["logger"] == "becomingone.kafka.librdkafka" for r in records), records
    assert any(address in r["message"] for r in records), records


def test_repeated_lines_are_held_back_and_counted_with_a_fake_clock(logging_restored):
    from connectors.kafka.health import RepeatFilter

    now = [1000.0]
    logger = logging.getLogger("becomingone.kafka.test_repeats")
    repeats = RepeatFilter(30.0, clock=lambda: now[0])
    logger.addFilter(repeats)
    out = io.StringIO()
    configure_logging(LoggingSection(format="structured"), "test", stream=out)
    try:
        for k in range(500):   # a broker outage: the same refusal, on other ports, many times a second
            now[0] = 1000.0 + k * 0.05
            logger.error("Connect to ipv4#127.0.0.1:%d failed: Connection refused", 40000 + k % 4)
        now[0] = 1000.0 + 31.0
        logger.error("Connect to ipv4#127.0.0.1:%d failed: Connection refused", 40001)
    finally:
        logger.removeFilter(repeats)
    messages = [json.loads(line)["message"] for line in out.getvalue().splitlines()]
    assert messages == ["Connect to ipv4#127.0.0.1:40000 failed: Connection refused",
                        "Connect to ipv4#127.0.0.1:40001 failed: Connection refused (499 more like it in the last 30 s)"]


# --------------------------------------------------------------------------
# The format itself


HOSTILE = ["line\nbreak", "carriage\rreturn", "nul\x00byte", "escape\x1b[31mred", "sep\u2028arator", "nel\x85x",
           'quote" "level": "CRITICAL', "bidi\u202eevil", "tab\tand\x7fdel", "emoji \U0001F600 and \udcff"]


@pytest.mark.parametrize("sensor", HOSTILE)
def test_a_hostile_sensor_id_stays_inside_one_json_line(sensor):
    record = logging.LogRecord("becomingone.raw", logging.WARNING, __file__, 1, "sensor %s is odd", (sensor,), None)
    line = StructuredFormatter().format(record)
    assert len(line.splitlines()) == 1 and line.isascii()
    assert json.loads(line)["message"] == f"sensor {sensor} is odd"


def test_an_exception_is_one_json_string_field_on_the_same_line():
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        record = logging.LogRecord("becomingone.flow", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = StructuredFormatter().format(record)
    assert len(line.splitlines()) == 1
    parsed = json.loads(line)
    assert parsed["exception"].startswith("Traceback (most recent call last):")
    assert parsed["exception"].endswith("ValueError: bad\nvalue")


def test_the_context_fields_come_from_the_step_the_thread_runs(logging_restored):
    out = io.StringIO()
    configure_logging(LoggingSection(format="structured"), "test", stream=out)
    set_flow("plant-7", first_worker=4)
    log = logging.getLogger("becomingone.test_context")
    log.info("outside")
    with in_step("resonate"):
        log.info("inside")
    outside, inside = (json.loads(line) for line in out.getvalue().splitlines())
    assert outside["flow"] == "plant-7" and "step" not in outside and "worker" not in outside
    # One worker runs on the thread that started the flow: while it runs a step, it is the first worker.
    assert (inside["flow"], inside["step"], inside["worker"]) == ("plant-7", "resonate", 4)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_becomingone_run_at_a_terminal_writes_text_and_piped_the_configured_format():
    structured, text = LoggingSection(format="structured"), LoggingSection(format="text")
    assert log_format(structured, _Terminal(), at_terminal_as_text=True) == "text"
    assert log_format(structured, io.StringIO(), at_terminal_as_text=True) == "structured"
    assert log_format(structured, _Terminal(), at_terminal_as_text=False) == "structured"  # python -m bytewax.run
    assert log_format(text, io.StringIO(), at_terminal_as_text=True) == "text"
