"""``becomingone ingest lsl NAME``: a real LSL outlet (pylsl, liblsl) in this process, the ingest as a subprocess.

Every sample the outlet pushes must arrive on the input topic exactly once
as raw ``value`` samples, with the exact values, one sensor per channel
(``<stream>/<label>``), keyed per sensor, times strictly increasing and
within a few milliseconds of the push timestamps mapped to the epoch.
"""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pylsl
import pytest
import yaml

from connectors.kafka import sensor_partitions
from connectors.lsl import EpochClock, channel_labels, epoch_micros, predicate
from connectors.phase_files import PhaseColumns
from tests.conftest import BIN, WAIT, archive_rows, arrow_rows, clean_env, read_topic, unique_topic

RATE = 250.0
LABELS = ("Fz", "Cz", "Pz", "Oz")
SAMPLES = 3000


def _stream_name() -> str:
    # Unique per test: other LSL streams on this host must never be resolved by mistake.
    return f"test-eeg-{uuid.uuid4().hex[:10]}"


def _outlet(name: str, labels: tuple[str, ...] | int = LABELS, rate: float = RATE, fmt: str = "double64"):
    """An outlet of ``labels`` channels (or that many unlabelled ones)."""
    count = labels if isinstance(labels, int) else len(labels)
    info = pylsl.StreamInfo(name, "EEG", count, rate, fmt, f"src-{name}")
    if not isinstance(labels, int):
        channels = info.desc().append_child("channels")
        for label in labels:
            channel = channels.append_child("channel")
            channel.append_child_value("label", label)
            channel.append_child_value("unit", "microvolts")
    return pylsl.StreamOutlet(info)


def _config_file(bootstrap: str, tmp: Path) -> tuple[str, Path]:
    prefix = unique_topic("test.lsl")
    topic, path = f"{prefix}.phases", tmp / "config.yaml"
    path.write_text(yaml.safe_dump({
        "source": {"kind": "kafka", "topic": topic, "from_beginning": True, "stop_at_end": True},
        "kafka": {"bootstrap.servers": bootstrap},
        "sink": {"topics": {role: f"{prefix}.{role}" for role in ("collapse", "witness", "sync", "dlq")}},
        "memory": {"storage": {"path": str(tmp / "archive")}},
        "kairos": {"phase_band": [8.0, 12.0]},  # the outlet's 10 Hz rhythm
        "metrics": {"enabled": False},
    }))
    return topic, path


def _ingest(name: str, config: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([str(BIN), "ingest", "lsl", name, "--config", str(config), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env())


def _connected(outlet, proc: subprocess.Popen) -> None:
    if not outlet.wait_for_consumers(WAIT):
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"the ingest never connected to the outlet: {err}")


def _finish(proc: subprocess.Popen, signum: int | None = None) -> tuple[int, str, str]:
    try:
        if signum is not None:
            proc.send_signal(signum)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, out, err


def _values(k: np.ndarray, channels: int) -> np.ndarray:
    """Sample k of channel c: a 10 Hz sinusoid of 20 uV plus an offset per channel, as float64."""
    return 20.0 * np.sin(2 * np.pi * 10.0 * k[:, None] / RATE + np.arange(channels)) + 5.0 * np.arange(channels)


def _push(outlet, first: int, count: int, t0: float, chunk: int = 50, jitter: float = 0.0) -> None:
    """Samples ``first`` .. ``first + count - 1``, timestamped ``t0 + k / RATE`` on the LSL clock,
    plus a uniform jitter of +-``jitter`` seconds (seeded)."""
    noise = np.random.default_rng(7).uniform(-jitter, jitter, first + count)
    for start in range(first, first + count, chunk):
        k = np.arange(start, min(start + chunk, first + count))
        outlet.push_chunk(_values(k, outlet.channel_count).tolist(), (t0 + k / RATE + noise[k]).tolist())


def _us(t) -> int:
    return int(pa.scalar(t, pa.timestamp("us", tz="UTC")).value)


def _count(bootstrap: str, topic: str) -> int:
    try:
        return len(arrow_rows(read_topic(bootstrap, topic)))
    except Exception:  # the topic does not exist yet
        return 0


def _wait_for_rows(bootstrap: str, topic: str, n: int) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline and _count(bootstrap, topic) < n:
        time.sleep(0.2)


# --------------------------------------------------------------------------
# The pieces, without a network.

def test_lsl_timestamps_become_strictly_increasing_epoch_microseconds():
    clock = EpochClock(offset_us=1_764_115_200_000_000)
    first = epoch_micros(np.array([100.0, 100.004, 100.008]), clock)
    assert first.tolist() == [1_764_115_300_000_000, 1_764_115_300_004_000, 1_764_115_300_008_000]
    clock.offset_us -= 6_000  # a refreshed offset 6 ms smaller: never a step back in time
    then = epoch_micros(np.array([100.012, 100.016, 100.020]), clock)
    assert then.tolist() == [1_764_115_300_008_001, 1_764_115_300_010_000, 1_764_115_300_014_000]
    assert clock.moved == 1 and clock.last_us == then[-1]


def test_channel_labels_fall_back_to_their_index():
    info = pylsl.StreamInfo("amp", "EEG", 4, RATE, "float32", "x")
    channels = info.desc().append_child("channels")
    for label in ("Fz", "", "Fz"):  # a fourth channel without any entry
        channels.append_child("channel").append_child_value("label", label)
    assert channel_labels(info) == ["Fz", "ch1", "ch2", "ch3"]
    assert channel_labels(pylsl.StreamInfo("amp", "EEG", 2, RATE, "float32", "y")) == ["ch0", "ch1"]


def test_stream_names_are_quoted_for_the_resolver():
    assert predicate("Amp 1") == "name='Amp 1'"
    assert predicate("it's", "EEG") == "name=\"it's\" and type='EEG'"
    with pytest.raises(ValueError, match="both"):
        predicate("it's \"x\"")


# --------------------------------------------------------------------------
# End to end: outlet, ingest subprocess, development broker.

@dataclass
class Ingested:
    """The ingest of SAMPLES samples of a 4-channel 250 Hz outlet: what it printed and where it sent them."""

    code: int
    out: str
    err: str
    name: str
    topic: str
    config: Path
    root: Path
    expected_us: np.ndarray  # the true sample times mapped to the epoch with the test's own offset
    bootstrap: str


@pytest.fixture(scope="module")
def ingested(bootstrap, tmp_path_factory) -> Ingested:
    tmp = tmp_path_factory.mktemp("lsl")
    name = _stream_name()
    topic, config = _config_file(bootstrap, tmp)
    outlet = _outlet(name)
    proc = _ingest(name, config, "--limit", str(SAMPLES), "--timeout", "20")
    _connected(outlet, proc)
    t0 = pylsl.local_clock()
    # The test's own LSL-to-epoch offset; the ingest's must agree within a few ms (same host: time_correction ~ 0).
    offset = time.time() - pylsl.local_clock()
    _push(outlet, 0, SAMPLES, t0, jitter=0.001)  # an amplifier's timestamps jitter by +-1 ms
    code, out, err = _finish(proc)
    expected_us = (t0 + np.arange(SAMPLES) / RATE + offset) * 1e6
    return Ingested(code, out, err, name, topic, config, tmp / "archive", expected_us, bootstrap)


def test_every_sample_of_the_outlet_arrives_once_with_its_value_sensor_and_time(ingested):
    name, topic, bootstrap, code, out, err = (ingested.name, ingested.topic, ingested.bootstrap, ingested.code,
                                              ingested.out, ingested.err)
    assert code == 0, err
    assert f"ingested {SAMPLES:,} samples of 4 channels ({4 * SAMPLES:,} values" in out
    assert f"{name}/Fz, {name}/Cz, {name}/Pz, {name}/Oz" in err
    rows = arrow_rows(read_topic(bootstrap, topic))
    assert len(rows) == 4 * SAMPLES
    assert {r["cell"] for r in rows} == {None} and all("phase" not in r for r in rows)
    from confluent_kafka.admin import AdminClient

    partitions = len(AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=WAIT)
                     .topics[topic].partitions)
    expected_values = _values(np.arange(SAMPLES), 4)
    for c, label in enumerate(LABELS):
        sensor = f"{name}/{label}"
        mine = [r for r in rows if r["sensor"] == sensor]  # in partition order: the order they were sent
        assert {r["partition"] for r in mine} == {int(sensor_partitions(pa.array([sensor]), partitions)[0])}
        assert [r["value"] for r in mine] == [[v] for v in expected_values[:, c]]  # every sample once, exact
        times = np.array([_us(r["t"]) for r in mine])
        assert (np.diff(times) > 0).all()
        assert np.abs(times - ingested.expected_us).max() < 5_000  # microseconds
        # Dejittered: once liblsl's fit has settled (a second), the 4 ms spacing holds to far below the jitter.
        assert np.abs(np.diff(times[250:]) - 4_000).max() < 100


@pytest.mark.slow
def test_the_flow_extracts_phases_from_the_ingested_samples_and_archives_both(ingested):
    assert ingested.code == 0, ingested.err
    proc = subprocess.run([str(BIN), "run", "--config", str(ingested.config)], capture_output=True, text=True,
                          env=clean_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = archive_rows(ingested.root, {"input": ["sensor", "t"], "temporal_signatures": ["sensor", "transducer", "t"]})
    sensors = [f"{ingested.name}/{label}" for label in LABELS]
    raw = rows["input"]
    assert len(raw) == 4 * SAMPLES and {r["phase"] for r in raw} == {None}
    expected_values = _values(np.arange(SAMPLES), 4)
    for c, sensor in enumerate(sensors):
        assert [r["value"] for r in raw if r["sensor"] == sensor] == [[v] for v in expected_values[:, c]]
    # Phases came out of the 8-12 Hz band at about the sample rate (the Emissary's 1 s window holds ~250
    # products once the filter is warm), and a clean 10 Hz rhythm scores high.
    signatures = [r for r in rows["temporal_signatures"] if r["transducer"] == "emissary"]
    for sensor in sensors:
        mine = [r for r in signatures if r["sensor"] == sensor and r["n_products"] > 0]
        assert max(r["n_products"] for r in mine) >= 0.8 * RATE, sensor
        assert min(r["coherence"] for r in mine) > 0.95, sensor


def test_sigterm_stops_the_ingest_cleanly_with_nothing_lost(bootstrap, tmp_path):
    name = _stream_name()
    topic, config = _config_file(bootstrap, tmp_path)
    outlet = _outlet(name)
    proc = _ingest(name, config)
    _connected(outlet, proc)
    _push(outlet, 0, 500, pylsl.local_clock())
    _wait_for_rows(bootstrap, topic, 4 * 500)
    code, out, err = _finish(proc, signal.SIGTERM)
    assert code == 0, err
    assert "ingested 500 samples of 4 channels (2,000 values" in out and "failed 0" in out
    assert len(arrow_rows(read_topic(bootstrap, topic))) == 2000


def test_an_irregular_unlabelled_stream_ends_when_its_outlet_goes_and_nan_values_are_left_out(bootstrap, tmp_path):
    name = _stream_name()
    topic, config = _config_file(bootstrap, tmp_path)
    outlet = _outlet(name, labels=2, rate=pylsl.IRREGULAR_RATE, fmt="float32")
    proc = _ingest(name, config)
    _connected(outlet, proc)
    t0 = pylsl.local_clock()
    for k in range(100):
        outlet.push_sample([float(k), float("nan") if k == 7 else -float(k)], t0 + 0.01 * k ** 1.5)
    _wait_for_rows(bootstrap, topic, 199)
    del outlet  # the amplifier software quits
    code, out, err = _finish(proc)
    assert code == 0, err
    assert "is gone (the stream ended)" in err and "irregular rate" in err
    assert "ingested 100 samples of 2 channels (199 values" in out and "1 values not finite" in out
    rows = arrow_rows(read_topic(bootstrap, topic))
    assert [r["value"] for r in rows if r["sensor"] == f"{name}/ch0"] == [[float(k)] for k in range(100)]
    assert [r["value"] for r in rows if r["sensor"] == f"{name}/ch1"] == [[-float(k)] for k in range(100) if k != 7]


def test_a_stream_not_found_is_a_failure_and_a_string_stream_is_refused(bootstrap, tmp_path):
    _, config = _config_file(bootstrap, tmp_path)
    missing = _stream_name()
    code, _, err = _finish(_ingest(missing, config, "--timeout", "2"))
    assert code == 1 and f"no LSL stream named {missing!r} found within 2 s" in err, err
    name = _stream_name()
    markers = pylsl.StreamOutlet(pylsl.StreamInfo(name, "Markers", 1, pylsl.IRREGULAR_RATE, "string", "m"))
    code, _, err = _finish(_ingest(name, config, "--timeout", "10"))
    del markers
    assert code == 1 and "carries strings (markers, events), not numbers" in err, err


def test_a_refreshed_clock_offset_never_moves_a_sensor_back_in_time(monkeypatch):
    import flows.lsl_ingest as lsl_ingest
    from connectors.lsl import LslStream

    class Output:
        def __init__(self):
            self.sent = []

        def send(self, columns):
            self.sent.append(columns)

    monkeypatch.setattr(lsl_ingest, "CLOCK_REFRESH_SECONDS", 0.0)  # a new offset before every chunk
    offsets = iter([1e9, 1e9 - 0.010, None, 1e9 + 0.002])  # same, 10 ms back, no answer (kept), 12 ms forward
    stream = LslStream(None, "amp", "EEG", "s", "h", ("amp/Fz", "amp/Cz"), RATE, "float32")
    output = Output()
    ingest = lsl_ingest.LslIngest(stream, output, limit=10, offset_s=1e9, measure_offset=lambda: next(offsets))
    for chunk in range(4):
        k = np.arange(3 * chunk, 3 * chunk + 3)
        ingest.take(_values(k, 2), 50.0 + k / RATE)
    rows = PhaseColumns.concat(output.sent)
    assert len(rows) == 2 * 10 and ingest.done  # the limit cut the last chunk to one sample
    for c, sensor in enumerate(stream.sensors):
        mine = rows.take(np.flatnonzero(np.array(rows.sensor.to_pylist()) == sensor))
        assert (np.diff(mine.t_us) > 0).all()
        assert mine.phase.to_pylist() == [[v] for v in _values(np.arange(10), 2)[:, c]]
    # Chunk 2's first two samples (10 ms back) are stamped 1 us after chunk 1's last; chunk 4 follows the new offset.
    assert ingest.state.clock.moved == 2 and rows.t_us[-1] == round((1e9 + 0.002 + 50.0 + 9 / RATE) * 1e6)
