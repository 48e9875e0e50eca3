"""`becomingone ingest c37118` against the PMU simulator of the `pyc37` package (IEEE C37.118.2).

The frames under test are built by pyc37 from values chosen here, so every
expected angle, time, frequency and ROCOF is computed from what the PMU was
told to send, not from our parser.  The end-to-end module starts a pyc37
``Pmu`` on loopback, feeds it data frames (one of them with a flipped byte,
and a few stray bytes), runs the ingest through the command line, reads the
topics back, then runs the flow on the topic and reads the archive.
"""

from __future__ import annotations

import logging
import signal
import math
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyc37.frame as pyc37_frame
import pyc37.pmu as pyc37_pmu
import pytest
import yaml

from connectors.c37118 import (
    AngleUnwrap,
    Command,
    FrameError,
    FrameReader,
    check_frame,
    command_frame,
    crc_ccitt,
    decode_data_frames,
    parse_config,
    unwrap_angles,
)
from connectors.kafka import sensor_partitions
from schemas.messages import DeadLetter

from tests.conftest import BIN, WAIT, archive_rows, arrow_rows, clean_env, free_port, read_topic, unique_topic


START_SOC = 1_764_115_200  # 2025-11-26T00:00:00Z
FRAMES = 120
OK_STAT = ("ok", True, "timestamp", False, False, False, 0, "<10", 0)


def _config_frame(rate: int = 100, formats=((True, True, False, True), (False, False, False, False))):
    """Two stations: North (2 phasors) and South (1 phasor, 1 analog); FORMAT per station as pyc37 tuples
    (polar, float phasors, float analogs, float FREQ/DFREQ)."""
    return pyc37_frame.ConfigFrame2(
        7, 1_000_000, 2, ["North", "South"], [7, 8], list(formats), [2, 1], [0, 1], [0, 0],
        [["VA", "VB"], ["IA", "AN1"]], [[(0, "v"), (0, "v")], [(45776, "i")]], [[], [(1, "pow")]], [[], []],
        [60, 50], [1, 1], rate,
    )


def _atan2(y: float, x: float) -> float:
    """atan2 as NumPy computes it (C libraries differ from ``math.atan2`` in the last bit at times)."""
    return float(np.arctan2(np.float64(y), np.float64(x)))


@dataclass(frozen=True)
class Sent:
    """What the PMU was told to send in one data frame, and the values a reader must find."""

    soc: int
    fraction: int
    leap_dir: str
    quality: int
    north: tuple[tuple[float, float], tuple[float, float]]  # polar float: (magnitude, angle)
    south: tuple[int, int]  # rectangular 16-bit: (real, imaginary)
    north_freq: float
    north_dfreq: float
    south_freq: int  # mHz from 50 Hz
    south_dfreq: int  # 0.01 Hz/s

    @property
    def t_us(self) -> int:  # TIME_BASE 1,000,000: FRACSEC counts microseconds
        return self.soc * 1_000_000 + self.fraction

    def angles(self) -> dict[str, float]:
        """Per sensor the angle as it travels: a float32 for polar float phasors, atan2 for rectangular."""
        return {"North/VA": float(np.float32(self.north[0][1])), "North/VB": float(np.float32(self.north[1][1])),
                "South/IA": _atan2(self.south[1], self.south[0])}

    def frame(self, cfg) -> bytes:
        return pyc37_frame.DataFrame(
            7, [OK_STAT, OK_STAT], [list(self.north), [self.south]], [self.north_freq, self.south_freq],
            [self.north_dfreq, self.south_dfreq], [[], [123]], [[], []], cfg,
            soc=self.soc, frasec=(self.fraction, self.leap_dir, False, self.quality % 2 == 1, self.quality),
        ).convert2bytes()


def _sent(k: int) -> Sent:
    a, b, c = (0.37 * k) % 6.2 - 3.1, 3.1 - (0.53 * k) % 6.2, 0.21 * k
    return Sent(
        soc=START_SOC + k // 100, fraction=(k % 100) * 10_000 + 7, leap_dir="-" if k % 2 else "+",
        quality=k % 12, north=((230.0 + k, a), (229.5, b)), south=(int(9000 * math.cos(c)), int(9000 * math.sin(c))),
        north_freq=0.25 + k / 1000, north_dfreq=-0.125, south_freq=k - 75, south_dfreq=3 - k % 7,
    )


# --------------------------------------------------------------------------
# Frames: pyc37 builds them, our parser reads them.

def test_crc_is_the_ccitt_check_value_and_pyc37_reads_our_command_frames():
    assert crc_ccitt(b"123456789") == 0x29B1
    for command, name in ((Command.SEND_CFG2, "cfg2"), (Command.DATA_ON, "start"), (Command.DATA_OFF, "stop")):
        frame = pyc37_frame.CommonFrame.convert2frame(command_frame(7, command))
        assert frame.get_command() == name and frame.get_id_code() == 7


def test_configuration_frame_of_pyc37():
    config = parse_config(_config_frame().convert2bytes())
    assert config.idcode == 7 and config.time_base == 1_000_000 and config.data_rate == 100
    assert config.sensors() == ["North/VA", "North/VB", "South/IA"]
    assert [(s.polar, s.phasor_float, s.freq_float, s.nominal_hz) for s in config.stations] == [
        (True, True, True, 60), (False, False, False, 50)]


@pytest.mark.parametrize("polar", [True, False])
@pytest.mark.parametrize("floats", [True, False])
def test_every_phasor_format_gives_the_sent_angle(polar, floats):
    cfg = _config_frame(formats=((polar, floats, False, floats),) * 2)
    config = parse_config(cfg.convert2bytes())
    if polar:
        values = [(100, 12345), (7, -31416), (65535, 0)] if not floats else [(1.5, 2.5), (2.0, -3.14), (9.0, 0.0)]
        expected = [v[1] * (1e-4 if not floats else 1) for v in values]
    else:
        values = [(-7318, 12676), (0, -5), (32767, 1)] if not floats else [(-1.5, 2.0), (0.0, -5.0), (3.0, 1e-3)]
        f = np.float32 if floats else int  # what the frame carries
        expected = [_atan2(f(im), f(re)) for re, im in values]
    if floats and polar:
        expected = [float(np.float32(e)) for e in expected]
    freq, dfreq = (0.5, -0.25) if floats else (-123, 45)
    frame = pyc37_frame.DataFrame(7, [OK_STAT, OK_STAT], [values[:2], values[2:]], [freq, freq], [dfreq, dfreq],
                                  [[], [1]], [[], []], cfg, soc=START_SOC, frasec=(999_999, "-", True, True, 11))
    data = frame.convert2bytes()
    check_frame(data)
    rows = decode_data_frames(data + data, config)  # two frames at once
    assert rows.t_us.tolist() == [START_SOC * 1_000_000 + 999_999] * 2
    np.testing.assert_array_equal(rows.angle, [expected, expected])
    if floats:
        np.testing.assert_array_equal(rows.frequency[0], [0.5] * 3)
        np.testing.assert_array_equal(rows.rocof[0], [-0.25] * 3)
    else:  # 16-bit: mHz from FNOM (60, 60, 50 Hz), 0.01 Hz/s
        np.testing.assert_allclose(rows.frequency[0], [59.877, 59.877, 49.877], rtol=0, atol=1e-12)
        np.testing.assert_allclose(rows.rocof[0], [0.45] * 3, rtol=0, atol=1e-12)


def test_values_the_stat_word_marks_not_to_use_are_left_out():
    from flows.c37118_ingest import phase_columns

    cfg = _config_frame()
    config = parse_config(cfg.convert2bytes())
    # STAT bits 15-14 set by hand: pyc37 shifts its measurement status one bit too far
    # ("error" comes out as 10, "test" overflows).
    stat_at = (14, 14 + 2 + 2 * 8 + 2 * 4)  # North: 2 float phasors, float FREQ and DFREQ
    frames = b""
    for k, (north, south) in enumerate(((0b00, 0b00), (0b10, 0b00), (0b00, 0b11), (0b01, 0b00))):
        frame = bytearray(_sent(k).frame(cfg))
        for at, bits in zip(stat_at, (north, south)):
            frame[at:at + 2] = (bits << 14).to_bytes(2, "big")
        frame[-2:] = crc_ccitt(bytes(frame[:-2])).to_bytes(2, "big")
        frames += bytes(frame)
    columns = phase_columns(config, frames, "pmu")
    # 10 (test mode, absent data) and 11 (PMU error) say: do not use; 01 says nothing about the data.
    kept = [(k, sensor) for k, keep in enumerate(((1, 1, 1), (0, 0, 1), (1, 1, 0), (1, 1, 1)))
            for sensor, used in zip(config.sensors(), keep) if used]
    assert list(zip(columns.t_us.tolist(), columns.sensor.to_pylist())) == [(_sent(k).t_us, n) for k, n in kept]
    assert [name for name, _ in columns.extra] == ["frequency", "rocof"]
    halves = columns.slice(0, 3), columns.slice(3)
    joined = type(columns).concat(list(halves)).take(np.arange(len(columns)))
    assert [(n, v.tolist()) for n, v in joined.extra] == [(n, v.tolist()) for n, v in columns.extra]


def test_a_time_base_that_does_not_divide_a_second_rounds_to_the_nearest_microsecond():
    cfg = _config_frame()
    cfg.set_time_base(3)  # FRACSEC in thirds of a second
    config = parse_config(cfg.convert2bytes())
    times = []
    for fraction in (1, 2):
        sent = _sent(0)
        frame = pyc37_frame.DataFrame(7, [OK_STAT, OK_STAT], [list(sent.north), [sent.south]], [0.0, 0], [0.0, 0],
                                      [[], [0]], [[], []], cfg, soc=START_SOC, frasec=(fraction, "+", False, False, 0))
        times += decode_data_frames(frame.convert2bytes(), config).t_us.tolist()
    assert times == [START_SOC * 1_000_000 + 333_333, START_SOC * 1_000_000 + 666_667]


def test_bad_frames_are_refused_with_their_reason():
    cfg = _config_frame()
    good = _sent(3).frame(cfg)
    flipped = bytearray(good)
    flipped[20] ^= 0x40
    with pytest.raises(FrameError, match="CRC-CCITT mismatch"):
        check_frame(bytes(flipped))
    with pytest.raises(FrameError, match="FRAMESIZE"):
        check_frame(good[:-1])
    unknown = bytearray(good)
    unknown[1] = (unknown[1] & 0x0F) | 0x70  # frame type 7
    unknown[-2:] = crc_ccitt(bytes(unknown[:-2])).to_bytes(2, "big")
    with pytest.raises(FrameError, match="unknown frame type 7"):
        check_frame(bytes(unknown))


def test_frame_reader_cuts_frames_from_any_split_and_returns_stray_bytes():
    cfg = _config_frame()
    frames = [cfg.convert2bytes()] + [_sent(k).frame(cfg) for k in range(5)]
    stream = b"\x01\x02" + frames[0] + frames[1] + b"\xaa\x00\x03" + b"".join(frames[2:])
    for step in (1, 7, 64, len(stream)):
        reader = FrameReader()
        pieces = [p for at in range(0, len(stream), step) for p in reader.feed(stream[at:at + step])]
        assert [p.data for p in pieces if not p.junk] == frames
        assert b"".join(p.data for p in pieces) == stream  # nothing lost, nothing doubled
        assert reader.buffer == bytearray()


# --------------------------------------------------------------------------
# --as value: angles unwrapped per sensor across frames and calls.

def _turning(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(times us at 30 frames/s, angles (n, 3) wrapped to (-pi, pi]) of three phasors turning at different
    rates, both ways: each crosses +-pi many times."""
    rng = np.random.default_rng(seed)
    t = START_SOC * 1_000_000 + np.arange(n, dtype=np.int64) * 33_333
    turn = np.cumsum(rng.normal([0.4, -0.9, 0.05], 0.3, (n, 3)), axis=0)
    return t, np.angle(np.exp(1j * turn))


def test_unwrapped_angles_are_numpys_unwrap_whatever_the_split():
    t, angle = _turning(3000)
    expected = np.unwrap(angle, axis=0)
    assert (np.abs(np.diff(angle, axis=0)) > np.pi).sum(axis=0).min() > 20   # many wraps each
    rng = np.random.default_rng(1)
    for _ in range(3):
        cuts = np.sort(rng.choice(np.arange(1, t.size), 40, replace=False))
        state = AngleUnwrap(max_gap_us=1_000_000)
        got = np.concatenate([unwrap_angles(state, ["a", "b", "c"], t[a:b], angle[a:b], np.ones((b - a, 3), bool))
                              for a, b in zip(np.r_[0, cuts], np.r_[cuts, t.size])])
        np.testing.assert_array_equal(got, expected)   # the same floats


def test_a_gap_restarts_the_unwrapping_from_the_angle_received_and_unusable_angles_are_skipped():
    t, angle = _turning(400)
    t[200:] += 2_000_000                                           # two seconds of frames lost
    usable = np.ones(angle.shape, bool)
    usable[50:60, 0] = False                                       # 0.33 s of one phasor flagged by STAT
    usable[100:140, 1] = False                                     # 1.3 s of another: a gap for it
    got = unwrap_angles(AngleUnwrap(max_gap_us=1_000_000), ["a", "b", "c"], t, angle, usable)
    a = np.flatnonzero(usable[:200, 0])
    np.testing.assert_array_equal(got[a, 0], np.unwrap(angle[a, 0]))
    np.testing.assert_array_equal(got[~usable], angle[~usable])    # left as they came, not sent
    for column, runs in ((0, [(200, 400)]), (1, [(0, 100), (140, 200), (200, 400)]), (2, [(0, 200), (200, 400)])):
        for a, b in runs:
            assert got[a, column] == angle[a, column]
            np.testing.assert_array_equal(got[a:b, column], np.unwrap(angle[a:b, column]))


def test_value_columns_carry_the_unwrapped_angles_in_place_of_the_phase():
    from connectors.kafka.producer import arrow_record_batch
    from flows.c37118_ingest import phase_columns

    cfg = _config_frame()
    config = parse_config(cfg.convert2bytes())
    frames = [_sent(k).frame(cfg) for k in range(60)]
    state = AngleUnwrap(max_gap_us=1_000_000)
    parts = [phase_columns(config, b"".join(frames[a:b]), "pmu", state) for a, b in ((0, 7), (7, 8), (8, 60))]
    batch = arrow_record_batch(type(parts[0]).concat(parts))
    assert batch.schema.names == ["sensor", "t", "value", "cell", "frequency", "rocof"]
    rows = batch.to_pylist()
    for sensor in config.sensors():
        got = [r["value"][0] for r in rows if r["sensor"] == sensor]
        assert got == np.unwrap([_sent(k).angles()[sensor] for k in range(60)]).tolist()


# --------------------------------------------------------------------------
# End to end: the pyc37 PMU on loopback, the ingest, the topics, the flow.

def _config_file(bootstrap: str, tmp: Path) -> tuple[str, str, Path, Path]:
    """A config reading a new input topic, with its own output topics and archive: (topic, dlq, archive, file)."""
    prefix = unique_topic("test.c37")
    topic, dlq, root = f"{prefix}.phases", f"{prefix}.dlq", tmp / "archive"
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump({
        "source": {"kind": "kafka", "topic": topic, "from_beginning": True, "stop_at_end": True},
        "kafka": {"bootstrap.servers": bootstrap},
        "sink": {"topics": {role: f"{prefix}.{role}" for role in ("collapse", "witness", "sync", "dlq")}},
        "memory": {"storage": {"path": str(root)}},
        "metrics": {"enabled": False},
    }))
    return topic, dlq, root, path


@dataclass
class Ingest:
    proc: subprocess.CompletedProcess
    sent: list[Sent]
    bad_frame: bytes
    stray: bytes
    topic: str
    dlq: str
    config_path: Path
    root: Path
    bootstrap: str


def _running_pmu(rate: int = 100):
    """pyc37's PMU simulator listening on a free loopback port with our configuration: (pmu, port, cfg).

    The simulator sends one data frame per 1/``rate`` s (DATA_RATE of the configuration frame)."""
    pyc37_pmu.Pmu.logger.setLevel(logging.WARNING)
    port = free_port()
    pmu = pyc37_pmu.Pmu(pmu_id=7, data_rate=rate, port=port, ip="127.0.0.1", set_timestamp=False)
    cfg = _config_frame(rate=rate)
    pmu.set_configuration(cfg)
    pmu.run()
    return pmu, port, cfg


@pytest.fixture(scope="module")
def ingest(bootstrap, tmp_path_factory) -> Ingest:
    tmp = tmp_path_factory.mktemp("c37118")
    return _ingest(bootstrap, *_config_file(bootstrap, tmp))


@pytest.fixture(scope="module")
def ingest_value(bootstrap, tmp_path_factory) -> Ingest:
    """The same stream through ``--as value``, with a copy of config/pmu-modes.yaml reading the topic."""
    tmp = tmp_path_factory.mktemp("c37118_value")
    return _ingest(bootstrap, *_pmu_modes_config(bootstrap, tmp), "--as", "value")


def _pmu_modes_config(bootstrap: str, tmp: Path) -> tuple[str, str, Path, Path]:
    """:func:`_config_file` on a copy of config/pmu-modes.yaml: its source, topics, archive and broker."""
    topic, dlq, root, path = _config_file(bootstrap, tmp)
    settings = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "pmu-modes.yaml").read_text())
    for key, value in yaml.safe_load(path.read_text()).items():
        settings[key] = {**settings[key], **value} if key in ("sink", "memory") else value
    path.write_text(yaml.safe_dump(settings))
    return topic, dlq, root, path


def _feed(pmu, proc: subprocess.Popen, send) -> tuple[str, str]:
    """Once the ingest ``proc`` has connected to ``pmu``, ``send()`` its frames; the ingest's (stdout, stderr).
    The ingest is killed and the PMU stopped whatever happens."""
    try:
        deadline = time.monotonic() + WAIT
        while not pmu.client_buffers and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert pmu.client_buffers, "the ingest never connected to the PMU"
        send()
        return proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        pmu.stop()


def _ingest(bootstrap: str, topic: str, dlq: str, root: Path, config_path: Path, *options: str) -> Ingest:
    """The frames of :func:`_sent` (one corrupted copy and stray bytes among them) from the pyc37 PMU through
    ``becomingone ingest c37118 OPTIONS`` to ``topic``."""
    pmu, port, cfg = _running_pmu()
    sent = [_sent(k) for k in range(FRAMES)]
    frames = [s.frame(cfg) for s in sent]
    bad = bytearray(frames[50])
    bad[30] ^= 0x01  # inside North's first phasor: the CHK no longer matches
    stray = b"\x13\x37\x00"
    proc = subprocess.Popen(
        [str(BIN), "ingest", "c37118", f"127.0.0.1:{port}", "--config", str(config_path), "--limit", str(FRAMES),
         "--timeout", "20", *options], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env())
    def send() -> None:
        for k, frame in enumerate(frames):
            if k == 50:
                pmu.send(bytes(bad))
                pmu.send(stray)
            pmu.send(frame)

    out, err = _feed(pmu, proc, send)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return Ingest(done, sent, bytes(bad), stray, topic, dlq, config_path, root, bootstrap)


@pytest.mark.slow
def test_ingest_sends_every_angle_and_time_the_pmu_sent(ingest):
    assert ingest.proc.returncode == 0, ingest.proc.stderr
    assert f"ingested {FRAMES} data frames ({3 * FRAMES} samples" in ingest.proc.stdout
    rows = arrow_rows(read_topic(ingest.bootstrap, ingest.topic))
    assert len(rows) == 3 * FRAMES
    got = {(r["sensor"], _us(r["t"])): r for r in rows}
    for s in ingest.sent:
        for sensor, angle in s.angles().items():
            row = got[(sensor, s.t_us)]
            assert row["phase"] == [angle]  # exact: same float64
            assert row["cell"] is None
    north = [got[("North/VA", s.t_us)] for s in ingest.sent]
    south = [got[("South/IA", s.t_us)] for s in ingest.sent]
    assert [r["frequency"] for r in north] == [float(np.float32(s.north_freq)) for s in ingest.sent]
    assert [r["rocof"] for r in north] == [-0.125] * FRAMES
    np.testing.assert_allclose([r["frequency"] for r in south], [50 + s.south_freq / 1000 for s in ingest.sent],
                               rtol=0, atol=1e-12)
    np.testing.assert_allclose([r["rocof"] for r in south], [s.south_dfreq / 100 for s in ingest.sent],
                               rtol=0, atol=1e-12)
    # Keyed per sensor: each sensor on the partition of its key, its samples in time order.
    from confluent_kafka.admin import AdminClient

    topic = AdminClient({"bootstrap.servers": ingest.bootstrap}).list_topics(ingest.topic, timeout=WAIT)
    partitions = len(topic.topics[ingest.topic].partitions)
    for sensor in ("North/VA", "North/VB", "South/IA"):
        mine = [r for r in rows if r["sensor"] == sensor]
        assert {r["partition"] for r in mine} == {int(sensor_partitions(pa.array([sensor]), partitions)[0])}
        times = [_us(r["t"]) for r in mine]
        assert times == [s.t_us for s in ingest.sent]


def _us(t) -> int:
    return int(pa.scalar(t, pa.timestamp("us", tz="UTC")).value)


@pytest.mark.slow
def test_as_value_sends_every_angle_unwrapped_as_a_raw_value(ingest_value):
    assert ingest_value.proc.returncode == 0, ingest_value.proc.stderr
    assert f"ingested {FRAMES} data frames ({3 * FRAMES} samples" in ingest_value.proc.stdout
    assert "as raw values, radians unwrapped" in ingest_value.proc.stdout
    assert "dead letters 2" in ingest_value.proc.stdout
    messages = read_topic(ingest_value.bootstrap, ingest_value.topic)
    for msg in messages:
        names = pa.ipc.open_stream(msg.value()).schema.names
        assert names == ["sensor", "t", "value", "cell", "frequency", "rocof"]
    rows = arrow_rows(messages)
    assert len(rows) == 3 * FRAMES
    for sensor in ("North/VA", "North/VB", "South/IA"):
        mine = [r for r in rows if r["sensor"] == sensor]
        angles = [s.angles()[sensor] for s in ingest_value.sent]
        assert (np.abs(np.diff(angles)) > np.pi).sum() >= 3           # the angle crosses +-pi again and again
        assert [_us(r["t"]) for r in mine] == [s.t_us for s in ingest_value.sent]
        assert [r["value"] for r in mine] == [[u] for u in np.unwrap(angles).tolist()]   # exact
    north = [r for r in rows if r["sensor"] == "North/VA"]
    assert [r["frequency"] for r in north] == [float(np.float32(s.north_freq)) for s in ingest_value.sent]


@pytest.mark.slow
def test_the_pmu_modes_config_archives_the_raw_values(ingest_value):
    proc = subprocess.run([str(BIN), "run", "--config", str(ingest_value.config_path)], capture_output=True,
                          text=True, env=clean_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = archive_rows(ingest_value.root, {"input": ["sensor", "t"]})["input"]
    assert len(rows) == 3 * FRAMES
    expected = sorted((sensor, s.t_us, u) for sensor in ("North/VA", "North/VB", "South/IA")
                      for s, u in zip(ingest_value.sent, np.unwrap([s.angles()[sensor] for s in ingest_value.sent])))
    assert sorted((r["sensor"], _us(r["t"]), r["value"][0]) for r in rows) == expected
    assert all(r["phase"] is None for r in rows)


@pytest.mark.slow
def test_a_corrupted_frame_and_stray_bytes_are_dead_letters_and_the_ingest_goes_on(ingest):
    letters = [DeadLetter.model_validate_json(m.value()) for m in read_topic(ingest.bootstrap, ingest.dlq)]
    keys = {m.key() for m in read_topic(ingest.bootstrap, ingest.dlq)}
    assert len(keys) == 1 and keys.pop().startswith(b"c37118://127.0.0.1:")   # one key, one partition: in order
    assert [(d.reason.value, d.original_bytes) for d in letters] == [
        ("malformed", ingest.bad_frame), ("malformed", ingest.stray)]
    assert "CRC-CCITT mismatch" in letters[0].error and "start no frame" in letters[1].error
    assert letters[0].topic.startswith("c37118://127.0.0.1:")
    assert letters[1].offset == letters[0].offset + len(ingest.bad_frame)
    assert "dead letters 2" in ingest.proc.stdout


@pytest.mark.slow
def test_the_flow_archives_the_ingested_samples(ingest):
    proc = subprocess.run([str(BIN), "run", "--config", str(ingest.config_path)], capture_output=True, text=True,
                          env=clean_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = archive_rows(ingest.root, {"input": ["sensor", "t"]})["input"]
    assert len(rows) == 3 * FRAMES
    expected = sorted((sensor, s.t_us, angle) for s in ingest.sent for sensor, angle in s.angles().items())
    assert sorted((r["sensor"], _us(r["t"]), r["phase"][0]) for r in rows) == expected


@pytest.mark.slow
def test_sigterm_stops_the_ingest_cleanly_after_sending_what_it_received(bootstrap, tmp_path):
    pmu, port, cfg = _running_pmu()
    topic, _, _, config_path = _config_file(bootstrap, tmp_path)
    proc = subprocess.Popen([str(BIN), "ingest", "c37118", f"127.0.0.1:{port}", "--config", str(config_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env())
    try:
        deadline = time.monotonic() + WAIT
        while not pmu.client_buffers and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert pmu.client_buffers, f"the ingest never connected to the PMU: {proc.poll()} {proc.stderr.read()}"
        for k in range(40):
            pmu.send(_sent(k).frame(cfg))
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline and _row_count(bootstrap, topic) < 3 * 40:
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        pmu.stop()
    assert proc.returncode == 0, err
    assert "ingested 40 data frames (120 samples" in out and "dead letters 0" in out
    assert len(arrow_rows(read_topic(bootstrap, topic))) == 120


@pytest.mark.slow
def test_an_oscillation_mode_sent_by_the_pmu_collapses_with_the_pmu_modes_config(bootstrap, tmp_path):
    """60 s at 30 frames/s of a 0.5 Hz mode of 2 degrees on an angle drifting near 10 degrees (North/VA), and of
    an angle that drifts and turns at 0.05 Hz with no mode, crossing +-180 degrees three times (North/VB; South/IA
    the same in 16-bit rectangular), through ``--as value`` and config/pmu-modes.yaml: the mode collapses, the
    turning angle does not, and the flow's events are those of the resonate engine on the unwrapped angles."""
    from bench.raw_runs import raw_settings, raw_sync
    from bench.raw_signals import RawRecord, pmu_mode
    from connectors.archive import open_dataset

    mode = pmu_mode(fs=30.0, duration_s=60.0, drift_deg=0.3, wander_hz=0.01, seed=1)
    turning = pmu_mode(fs=30.0, mode_deg=0.0, duration_s=60.0, drift_deg=0.3, offset_hz=0.05, seed=3)
    va, vb = np.deg2rad(mode.value), np.angle(np.exp(1j * np.deg2rad(turning.value)))
    assert (np.abs(np.diff(va)) > np.pi).sum() == 0 and (np.abs(np.diff(vb)) > np.pi).sum() == 3
    sent = [Sent(soc=int(t // 1_000_000), fraction=int(t % 1_000_000), leap_dir="+", quality=0,
                 north=((230.0, float(a)), (229.5, float(b))),
                 south=(int(round(9000 * math.cos(b))), int(round(9000 * math.sin(b)))),
                 north_freq=0.0, north_dfreq=0.0, south_freq=0, south_dfreq=0) for t, a, b in zip(mode.t, va, vb)]
    pmu, port, cfg = _running_pmu(rate=30)
    topic, dlq, root, path = _pmu_modes_config(bootstrap, tmp_path)
    proc = subprocess.Popen([str(BIN), "ingest", "c37118", f"127.0.0.1:{port}", "--config", str(path), "--as",
                             "value", "--limit", str(len(sent)), "--timeout", "20"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env())
    def send() -> None:
        # The simulator sends at most one queued item per 0.1 s: one second of frames per item.
        for k in range(0, len(sent), 30):
            pmu.send(b"".join(s.frame(cfg) for s in sent[k:k + 30]))

    out, err = _feed(pmu, proc, send)
    assert proc.returncode == 0, err
    assert f"ingested {len(sent):,} data frames ({3 * len(sent):,} samples" in out
    run = subprocess.run([str(BIN), "run", "--config", str(path)], capture_output=True, text=True, env=clean_env(),
                         timeout=300)
    assert run.returncode == 0, run.stderr
    t = np.array([s.t_us for s in sent])
    records = {sensor: RawRecord(t, np.unwrap([s.angles()[sensor] for s in sent]), t[0], t[-1] + 1)
               for sensor in ("North/VA", "North/VB", "South/IA")}
    assert all((np.abs(np.diff(r.value)) > 2).sum() == 0 for r in records.values())   # unwrapped: no jumps
    traces = raw_sync(raw_settings(Path(path)), records)
    expected = sorted((sensor, when, "collapse" if code == 1 else "dissipate")
                      for sensor, trace in traces.items() for when, code in trace.events())
    events = sorted((e["sensor"], _us(e["t"]), e["event"])
                    for e in open_dataset(root / "events").to_table().to_pylist())
    assert events == expected
    collapses = [when for sensor, when, event in events if sensor == "North/VA" and event == "collapse"]
    assert collapses and collapses[0] < t[0] + 40 * 1_000_000
    assert not [e for e in events if e[0] != "North/VA"]


def _row_count(bootstrap: str, topic: str) -> int:
    try:
        return len(arrow_rows(read_topic(bootstrap, topic)))
    except Exception:  # the topic does not exist yet
        return 0


def test_a_bad_address_is_a_usage_error_and_an_unreachable_pmu_a_failure(bootstrap, tmp_path):
    _, _, _, config_path = _config_file(bootstrap, tmp_path)
    for address, code, message in (("no-port", 2, "expected HOST:PORT"),
                                   (f"127.0.0.1:{free_port()}", 1, "cannot connect to 127.0.0.1:")):
        proc = subprocess.run([str(BIN), "ingest", "c37118", address, "--config", str(config_path), "--timeout", "5"],
                              capture_output=True, text=True, env=clean_env(), timeout=120)
        assert (proc.returncode, message in proc.stderr) == (code, True), proc.stderr
