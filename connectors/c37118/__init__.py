"""IEEE C37.118.2 synchrophasor streams: frames (:mod:`.frames`) and the PDC client side (:mod:`.client`)."""

from connectors.c37118.client import FrameReader, PdcConnection, ReadPiece
from connectors.c37118.frames import (
    Command,
    FrameError,
    FrameKind,
    PhasorRows,
    StationConfig,
    StreamConfig,
    check_frame,
    command_frame,
    crc_ccitt,
    data_frame_dtype,
    decode_data_frames,
    parse_config,
)

__all__ = [
    "Command",
    "FrameError",
    "FrameKind",
    "FrameReader",
    "PdcConnection",
    "PhasorRows",
    "ReadPiece",
    "StationConfig",
    "StreamConfig",
    "check_frame",
    "command_frame",
    "crc_ccitt",
    "data_frame_dtype",
    "decode_data_frames",
    "parse_config",
]
