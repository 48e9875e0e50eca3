"""A PDC's side of a C37.118.2 TCP connection: commands out, whole frames in.

:class:`FrameReader` cuts the byte stream into frames by SYNC and FRAMESIZE
and gives back what cannot be a frame (bytes before a SYNC byte, a FRAMESIZE
too small to be one) as junk, so that a bad byte costs one dead letter and
the stream goes on.  :class:`PdcConnection` is the socket.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field

from connectors.c37118.frames import MIN_FRAME_BYTES, SYNC_BYTE, Command, command_frame

__all__ = ["FrameReader", "PdcConnection", "ReadPiece"]


@dataclass(frozen=True, slots=True)
class ReadPiece:
    """A frame cut from the stream (``junk`` False), or bytes that are none (``junk`` True)."""

    data: bytes
    junk: bool = False


@dataclass
class FrameReader:
    """Frames out of a byte stream fed in pieces of any size."""

    buffer: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> list[ReadPiece]:
        """Append ``data``; every whole frame (or junk run) now available, in stream order."""
        self.buffer += data
        pieces: list[ReadPiece] = []
        while self.buffer:
            start = self.buffer.find(SYNC_BYTE)
            if start != 0:
                end = len(self.buffer) if start < 0 else start
                pieces.append(ReadPiece(bytes(self.buffer[:end]), junk=True))
                del self.buffer[:end]
                continue
            if len(self.buffer) < 4:
                break
            kind_version, size = struct.unpack_from(">BH", self.buffer, 1)
            if not _plausible(kind_version, size):
                # Not a frame start after all: give up this 0xAA byte and look for the next.
                pieces.append(ReadPiece(bytes(self.buffer[:1]), junk=True))
                del self.buffer[:1]
                continue
            if len(self.buffer) < size:
                break
            pieces.append(ReadPiece(bytes(self.buffer[:size])))
            del self.buffer[:size]
        return pieces


def _plausible(kind_version: int, size: int) -> bool:
    """SYNC's second byte (bit 7 clear, a frame type 0-5, version 1-3) and FRAMESIZE could start a frame."""
    return not kind_version & 0x80 and (kind_version >> 4) <= 5 and 1 <= (kind_version & 0xF) <= 3 \
        and size >= MIN_FRAME_BYTES


class PdcConnection:
    """A TCP connection to a PMU or PDC; reads time out after ``poll`` seconds (then return no bytes)."""

    def __init__(self, host: str, port: int, *, idcode: int, connect_timeout: float, poll: float = 0.2) -> None:
        self.idcode = idcode
        self._socket = socket.create_connection((host, port), timeout=connect_timeout)
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._socket.settimeout(poll)
        self.closed_by_peer = False

    def send(self, command: Command) -> None:
        self._socket.sendall(command_frame(self.idcode, command))

    def receive(self) -> bytes:
        """Bytes received, or ``b""`` when none came within the poll time or the peer closed."""
        try:
            data = self._socket.recv(65536)
        except socket.timeout:
            return b""
        if not data:
            self.closed_by_peer = True
        return data

    def close(self) -> None:
        try:
            if not self.closed_by_peer:
                self.send(Command.DATA_OFF)
        except OSError:
            pass
        self._socket.close()
