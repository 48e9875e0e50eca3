"""IEEE C37.118.2 synchrophasor streams: frames (:mod:`.frames`), the PDC client side (:mod:`.client`), and
angles unwrapped across frames (:mod:`.unwrap`)."""

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
from connectors.c37118.unwrap import AngleUnwrap, UnwrapPoint, unwrap_angles

__all__ = [
    "AngleUnwrap",
    "Command",
    "FrameError",
    "FrameKind",
    "FrameReader",
    "PdcConnection",
    "PhasorRows",
    "ReadPiece",
    "StationConfig",
    "StreamConfig",
    "UnwrapPoint",
    "check_frame",
    "command_frame",
    "crc_ccitt",
    "data_frame_dtype",
    "decode_data_frames",
    "parse_config",
    "unwrap_angles",
]
