"""IEEE C37.118.2-2011 frames: the common header, CRC, the configuration frame and data frames.

Every frame starts with SYNC (0xAA, then the frame type in bits 6-4 and the
version in bits 3-0), FRAMESIZE (bytes, whole frame), IDCODE, SOC (seconds
since 1970-01-01 UTC) and FRACSEC (time quality in the top byte, a 24-bit
count of TIME_BASE-ths of a second below), and ends with CHK, the CRC-CCITT
(polynomial 0x1021, initial 0xFFFF, no reflection, no final XOR) of all
bytes before it.  All words are big-endian.  Reference: IEEE Std
C37.118.2-2011, clause 6 (frame layouts: tables 2, 5, 8 and 10; the FORMAT
word: table 9).

Data frames of one configuration all have the same size, so a run of them
decodes at once as one NumPy structured array (:func:`decode_data_frames`),
not frame by frame.
"""

from __future__ import annotations

import binascii
import enum
import struct
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Command",
    "FrameError",
    "FrameKind",
    "FrameHead",
    "PhasorRows",
    "StationConfig",
    "StreamConfig",
    "check_frame",
    "command_frame",
    "crc_ccitt",
    "data_frame_dtype",
    "decode_data_frames",
    "frame_head",
    "parse_config",
]

SYNC_BYTE = 0xAA
#: SYNC + FRAMESIZE + IDCODE + SOC + FRACSEC, then CHK: the smallest frame has 16 bytes.
HEAD_BYTES = 14
MIN_FRAME_BYTES = HEAD_BYTES + 2
#: FRACSEC's fraction of a second: its low 24 bits (the top byte is time quality and leap-second flags).
FRACTION_MASK = 0x00FF_FFFF
US_PER_S = 1_000_000
#: STAT bits 15-14 from this value up: test mode or absent data (10), PMU error (11): values not to be used.
DO_NOT_USE = 0b10


class FrameKind(enum.IntEnum):
    """SYNC bits 6-4."""

    DATA = 0
    HEADER = 1
    CFG1 = 2
    CFG2 = 3
    COMMAND = 4
    CFG3 = 5


class Command(enum.IntEnum):
    """CMD word of a command frame (table 15)."""

    DATA_OFF = 1
    DATA_ON = 2
    SEND_HEADER = 3
    SEND_CFG1 = 4
    SEND_CFG2 = 5


class FrameError(ValueError):
    """A frame that cannot be used: bad SYNC, size, CRC, type or layout."""


@dataclass(frozen=True, slots=True)
class FrameHead:
    """The common words at the start of every frame."""

    kind: int
    version: int
    size: int
    idcode: int
    soc: int
    fracsec: int


def crc_ccitt(data: bytes | bytearray | memoryview) -> int:
    """CRC-CCITT as C37.118.2 defines CHK (``binascii.crc_hqx`` is this polynomial, started at 0xFFFF).

    >>> hex(crc_ccitt(b"123456789"))     # the CRC-16/CCITT-FALSE check value
    '0x29b1'
    """
    return binascii.crc_hqx(data, 0xFFFF)


def frame_head(frame: bytes | bytearray | memoryview) -> FrameHead:
    """The common header words of a frame (at least :data:`HEAD_BYTES` bytes)."""
    if len(frame) < HEAD_BYTES:
        raise FrameError(f"{len(frame)} bytes, shorter than a frame header ({HEAD_BYTES})")
    sync, size, idcode, soc, fracsec = struct.unpack_from(">HHHII", frame)
    if sync >> 8 != SYNC_BYTE:
        raise FrameError(f"SYNC byte 0x{sync >> 8:02X}, not 0xAA")
    return FrameHead((sync >> 4) & 0x7, sync & 0xF, size, idcode, soc, fracsec)


def check_frame(frame: bytes | bytearray | memoryview) -> FrameHead:
    """The header of a whole frame whose SYNC, FRAMESIZE, CHK and type are right.

    Raises:
        FrameError: naming what is wrong.
    """
    head = frame_head(frame)
    if head.size != len(frame) or head.size < MIN_FRAME_BYTES:
        raise FrameError(f"FRAMESIZE {head.size} but {len(frame)} bytes")
    expected = crc_ccitt(memoryview(frame)[:-2])
    (chk,) = struct.unpack_from(">H", frame, len(frame) - 2)
    if chk != expected:
        raise FrameError(f"CRC-CCITT mismatch: CHK 0x{chk:04X}, computed 0x{expected:04X}")
    if head.kind not in FrameKind._value2member_map_:
        raise FrameError(f"unknown frame type {head.kind}")
    return head


def command_frame(idcode: int, command: Command, soc: int = 0, fracsec: int = 0) -> bytes:
    """A command frame (version 1) with its CHK."""
    body = struct.pack(">HHHIIH", (SYNC_BYTE << 8) | (FrameKind.COMMAND << 4) | 1, 18, idcode, soc, fracsec,
                       int(command))
    return body + struct.pack(">H", crc_ccitt(body))


@dataclass(frozen=True, slots=True)
class StationConfig:
    """One PMU block of a configuration frame.

    Attributes:
        name: STN, trailing blanks and NULs removed.
        idcode: the data source's IDCODE.
        format: the FORMAT word: bit 0 polar phasors, bit 1 float phasors,
            bit 2 float analogs, bit 3 float FREQ/DFREQ.
        phasors: the phasor channel names.
        analogs / digitals: counts of analog values and digital status words.
        nominal_hz: FNOM, 50 or 60.
    """

    name: str
    idcode: int
    format: int
    phasors: tuple[str, ...]
    analogs: int
    digitals: int
    nominal_hz: int

    @property
    def polar(self) -> bool:
        return bool(self.format & 0x1)

    @property
    def phasor_float(self) -> bool:
        return bool(self.format & 0x2)

    @property
    def analog_float(self) -> bool:
        return bool(self.format & 0x4)

    @property
    def freq_float(self) -> bool:
        return bool(self.format & 0x8)


@dataclass(frozen=True, slots=True)
class StreamConfig:
    """A configuration frame (CFG-1 and CFG-2 share the layout).

    Attributes:
        idcode: the stream's IDCODE.
        time_base: TIME_BASE's 24-bit resolution: FRACSEC counts 1/time_base s.
        stations: the PMU blocks, in data frame order.
        data_rate: DATA_RATE (frames per second if positive, seconds per frame if negative).
    """

    idcode: int
    time_base: int
    stations: tuple[StationConfig, ...]
    data_rate: int

    def sensors(self) -> list[str]:
        """``<station>/<phasor>`` of every phasor, in data frame order."""
        return [f"{s.name}/{p}" for s in self.stations for p in s.phasors]


def _text(raw: bytes) -> str:
    return raw.decode("latin-1").rstrip(" \x00")


def parse_config(frame: bytes) -> StreamConfig:
    """A checked CFG-1 or CFG-2 frame (see :func:`check_frame`) as a :class:`StreamConfig`."""
    head = frame_head(frame)
    if head.kind not in (FrameKind.CFG1, FrameKind.CFG2):
        raise FrameError(f"frame type {head.kind} is not a configuration frame (CFG-1 or CFG-2)")
    try:
        time_base, num_pmu = struct.unpack_from(">IH", frame, HEAD_BYTES)
        at = HEAD_BYTES + 6
        stations = []
        for _ in range(num_pmu):
            name = _text(frame[at:at + 16])
            idcode, fmt, phnmr, annmr, dgnmr = struct.unpack_from(">5H", frame, at + 16)
            at += 26
            names = [_text(frame[at + 16 * k:at + 16 * (k + 1)]) for k in range(phnmr)]
            at += 16 * (phnmr + annmr + 16 * dgnmr) + 4 * (phnmr + annmr + dgnmr)
            (fnom,) = struct.unpack_from(">H", frame, at)
            at += 4  # FNOM, CFGCNT
            stations.append(StationConfig(name, idcode, fmt, tuple(names), annmr, dgnmr, 50 if fnom & 1 else 60))
        (data_rate,) = struct.unpack_from(">h", frame, at)
    except struct.error:
        raise FrameError("configuration frame shorter than its NUM_PMU and channel counts say") from None
    if at + 4 != len(frame):
        raise FrameError(f"configuration frame of {len(frame)} bytes, its counts say {at + 4}")
    time_base &= FRACTION_MASK
    if time_base == 0:
        raise FrameError("TIME_BASE is 0")
    return StreamConfig(head.idcode, time_base, tuple(stations), data_rate)


@dataclass(frozen=True, slots=True)
class PhasorRows:
    """Decoded data frames, one row per frame and one column per phasor (``StreamConfig.sensors`` order).

    Attributes:
        t_us: (frames,) int64, microseconds since the Unix epoch.
        angle: (frames, phasors) float64, radians.
        frequency: (frames, phasors) float64, Hz (each phasor gets its station's FREQ).
        rocof: (frames, phasors) float64, Hz/s (its station's DFREQ).
        usable: (frames, phasors) bool: False where the station's STAT says
            not to use the values (data error bits 15-14 = 10, test mode or
            absent data, or 11, PMU error) or the angle is not finite.
    """

    t_us: np.ndarray
    angle: np.ndarray
    frequency: np.ndarray
    rocof: np.ndarray
    usable: np.ndarray


def data_frame_dtype(config: StreamConfig) -> np.dtype:
    """The structured (big-endian) dtype of one data frame of ``config``."""
    fields: list[tuple] = [("sync", ">u2"), ("size", ">u2"), ("idcode", ">u2"), ("soc", ">u4"), ("fracsec", ">u4")]
    for k, s in enumerate(config.stations):
        fields.append((f"stat{k}", ">u2"))
        if s.phasors:
            fields.append((f"ph{k}", ">f4" if s.phasor_float else ">i2", (len(s.phasors), 2)))
        fields += [(f"freq{k}", ">f4" if s.freq_float else ">i2"), (f"dfreq{k}", ">f4" if s.freq_float else ">i2")]
        if s.analogs:
            fields.append((f"an{k}", ">f4" if s.analog_float else ">i2", (s.analogs,)))
        if s.digitals:
            fields.append((f"dg{k}", ">u2", (s.digitals,)))
    fields.append(("chk", ">u2"))
    return np.dtype(fields)


def decode_data_frames(frames: bytes, config: StreamConfig) -> PhasorRows:
    """Checked data frames of ``config``, concatenated, as :class:`PhasorRows`.

    t = SOC + FRACSEC / TIME_BASE, the fraction rounded to the nearest
    microsecond in integer arithmetic (exact when TIME_BASE divides 10^6).
    Angle: polar float phasors as sent; polar 16-bit ones in 10^-4 rad;
    rectangular ones atan2(imaginary, real).  Frequency: float FREQ in Hz,
    16-bit FREQ a deviation from FNOM in mHz; ROCOF: float DFREQ in Hz/s,
    16-bit DFREQ in 0.01 Hz/s.  Values the STAT word marks as not to be used
    (data error bits 15-14 of 10 or 11) are flagged in ``usable``.
    """
    dtype = data_frame_dtype(config)
    if len(frames) % dtype.itemsize:
        raise FrameError(f"{len(frames)} bytes of data frames, not a multiple of the configured {dtype.itemsize}")
    rows = np.frombuffer(frames, dtype)
    fraction = (rows["fracsec"] & FRACTION_MASK).astype(np.int64)
    tb = config.time_base
    t_us = rows["soc"].astype(np.int64) * US_PER_S + (fraction * US_PER_S + tb // 2) // tb
    angles, freqs, rocofs, usable = [], [], [], []
    for k, s in enumerate(config.stations):
        if not s.phasors:
            continue
        ph = rows[f"ph{k}"].astype(np.float64)
        if s.polar:
            angle = ph[:, :, 1] if s.phasor_float else ph[:, :, 1] * 1e-4
        else:
            angle = np.arctan2(ph[:, :, 1], ph[:, :, 0])
        freq = rows[f"freq{k}"].astype(np.float64)
        dfreq = rows[f"dfreq{k}"].astype(np.float64)
        if not s.freq_float:
            freq = s.nominal_hz + freq / 1000.0
            dfreq = dfreq / 100.0
        n = len(s.phasors)
        trusted = (rows[f"stat{k}"] >> 14) < DO_NOT_USE
        angles.append(angle)
        freqs.append(np.repeat(freq[:, None], n, axis=1))
        rocofs.append(np.repeat(dfreq[:, None], n, axis=1))
        usable.append(np.isfinite(angle) & trusted[:, None])
    if not angles:
        empty = np.zeros((len(rows), 0))
        return PhasorRows(t_us, empty, empty, empty, empty.astype(bool))
    return PhasorRows(t_us, np.hstack(angles), np.hstack(freqs), np.hstack(rocofs), np.hstack(usable))
