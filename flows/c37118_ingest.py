"""The work of ``becomingone ingest c37118 HOST:PORT``: a PMU's or PDC's phasor angles to the input topic.

The client asks for the configuration frame (CFG-2), starts the data
stream, and turns each run of data frames into phase samples, one sensor per
phasor (``<station>/<phasor>``), sent as Arrow messages by partition with
the stream's frequency and ROCOF as extra columns (SPEC section 9).  With
``--as value`` each angle goes out instead as a raw ``value`` sample in
radians, unwrapped per sensor across frames (:mod:`connectors.c37118.unwrap`),
for a flow that band-passes an oscillation mode out of it.  A frame
that fails its CRC, FRAMESIZE or type, and bytes that are no frame, become
dead letters (reason ``malformed``, the original bytes) and the stream goes
on.  SIGTERM or Ctrl-C stops it: what was received is sent and flushed, exit 0.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from connectors.c37118 import (
    AngleUnwrap,
    Command,
    FrameError,
    FrameKind,
    FrameReader,
    PdcConnection,
    ReadPiece,
    StreamConfig,
    check_frame,
    data_frame_dtype,
    decode_data_frames,
    parse_config,
    unwrap_angles,
)
from connectors.phase_files.columns import PHASE_TYPE, PhaseColumns
from flows.arguments import config_or_report
from flows.ingest_output import FLUSH_SECONDS

if TYPE_CHECKING:
    from connectors.kafka import PhaseProducer

__all__ = ["C37Ingest", "IngestState", "ingest_c37118", "phase_columns"]

#: Data frames are sent in runs of at most this many frames (and at least every FLUSH_SECONDS).
FLUSH_FRAMES = 1024


def phase_columns(config: StreamConfig, frames: bytes, origin: str, unwrap: AngleUnwrap | None = None) -> PhaseColumns:
    """Checked data frames of ``config`` as phase samples: per frame, one row per usable phasor in config order.

    With ``unwrap``, the angles are raw ``value`` samples instead (radians), unwrapped per sensor from
    where ``unwrap`` stands (which the call moves on).
    """
    rows = decode_data_frames(frames, config)
    keep = rows.usable.ravel()
    n_frames, n_phasors = rows.angle.shape
    which = np.tile(np.arange(n_phasors, dtype=np.int64), n_frames)[keep]
    angles = rows.angle if unwrap is None else unwrap_angles(unwrap, config.sensors(), rows.t_us, rows.angle,
                                                             rows.usable)
    angle = angles.ravel()[keep]
    return PhaseColumns(
        sensor=pa.array(config.sensors(), pa.string()).take(pa.array(which)),
        t_us=np.repeat(rows.t_us, n_phasors)[keep],
        phase=pa.FixedSizeListArray.from_arrays(pa.array(angle, pa.float64()), 1).cast(PHASE_TYPE),
        cell=pa.nulls(len(angle), pa.string()),
        origin=origin,
        extra=(("frequency", rows.frequency.ravel()[keep]), ("rocof", rows.rocof.ravel()[keep])),
        raw=unwrap is not None,
    )


@dataclass
class IngestState:
    """What the ingest knows and holds between reads."""

    config: StreamConfig | None = None
    unwrap: AngleUnwrap | None = None  # with ``--as value``: each sensor's last angle
    frame_bytes: int = 0
    pending: list[bytes] = field(default_factory=list)
    started: bool = False
    data_frames: int = 0
    phasors: int = 0
    dead_letters: int = 0
    stream_offset: int = 0
    last_flush: float = field(default_factory=time.monotonic)


class C37Ingest:
    """Frames in, phase samples and dead letters out."""

    def __init__(self, sender: PhaseProducer, dead_letter: Callable[[bytes, int, str], None], origin: str,
                 limit: int | None, unwrap: AngleUnwrap | None = None) -> None:
        self.sender, self.dead_letter, self.origin, self.limit = sender, dead_letter, origin, limit
        self.state = IngestState(unwrap=unwrap)

    @property
    def done(self) -> bool:
        return self.limit is not None and self.state.data_frames >= self.limit

    def take(self, piece: ReadPiece) -> None:
        """One piece cut from the stream."""
        s = self.state
        offset, s.stream_offset = s.stream_offset, s.stream_offset + len(piece.data)
        if piece.junk:
            self._reject(piece.data, offset,
                         f"{len(piece.data)} byte(s) that start no frame (SYNC 0xAA, a known type and version)")
            return
        try:
            head = check_frame(piece.data)
            if head.kind in (FrameKind.CFG1, FrameKind.CFG2):
                self._configure(parse_config(piece.data))
            elif head.kind == FrameKind.DATA:
                self._data(piece.data, head.idcode)
        except FrameError as exc:
            self._reject(piece.data, offset, str(exc))

    def flush(self, force: bool = False) -> None:
        """Send the held data frames (when due, or ``force``)."""
        s = self.state
        due = len(s.pending) >= FLUSH_FRAMES or time.monotonic() - s.last_flush >= FLUSH_SECONDS
        if s.pending and (force or due) and s.config is not None:
            s.phasors += len(s.pending) * len(s.config.sensors())
            self.sender.send(phase_columns(s.config, b"".join(s.pending), self.origin, s.unwrap))
            self.sender.send_held()
            s.pending.clear()
        if force or due:
            s.last_flush = time.monotonic()

    def _configure(self, config: StreamConfig) -> None:
        self.flush(force=True)
        self.state.config = config
        self.state.frame_bytes = data_frame_dtype(config).itemsize

    def _data(self, frame: bytes, idcode: int) -> None:
        s = self.state
        if s.config is None:
            raise FrameError("data frame before any configuration frame")
        if idcode != s.config.idcode or len(frame) != s.frame_bytes:
            raise FrameError(f"data frame of IDCODE {idcode}, {len(frame)} bytes; the configuration says "
                             f"IDCODE {s.config.idcode}, {s.frame_bytes} bytes")
        if self.done:
            return
        s.pending.append(frame)
        s.data_frames += 1

    def _reject(self, data: bytes, offset: int, problem: str) -> None:
        self.state.dead_letters += 1
        self.dead_letter(data, offset, problem)


def ingest_c37118(args: argparse.Namespace) -> int:
    """Stream a PMU/PDC to the input topic until stopped, ``--limit`` data frames, or the peer closes."""
    from flows.ingest_output import IngestSetupFailed, open_ingest_output, report_setup_failure, stop_on_signals
    from schemas.messages import DeadLetter, DeadLetterReason, to_json_bytes

    name = "becomingone ingest c37118"
    config = config_or_report(args)
    if config is None:
        return 2
    try:
        host, port = _address(args.address)
        output = open_ingest_output(config, args)
    except ValueError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    except IngestSetupFailed as exc:
        return report_setup_failure(name, exc)
    origin = f"c37118://{host}:{port}"
    sender, producer, topic = output.sender, output.producer, output.topic

    def dead_letter(data: bytes, offset: int, problem: str) -> None:
        letter = DeadLetter.create(original=data, reason=DeadLetterReason.MALFORMED, error=problem, topic=origin,
                                   offset=offset, max_original_bytes=config.sink.dlq_max_original_bytes)
        # Keyed by the PMU's address: one partition, so its dead letters stay in stream order.
        producer.produce(output.dlq, key=origin.encode("utf-8"), value=to_json_bytes(letter))
        print(f"{name}: dead letter at byte {offset:,}: {problem}", file=sys.stderr)

    stop = stop_on_signals()
    try:
        connection = PdcConnection(host, port, idcode=args.idcode, connect_timeout=args.timeout)
    except OSError as exc:
        print(f"{name}: cannot connect to {host}:{port}: {exc}", file=sys.stderr)
        return 1
    unwrap = AngleUnwrap(config.kairos.max_gap_us) if args.send_as == "value" else None
    ingest = C37Ingest(sender, dead_letter, origin, args.limit, unwrap)
    status = _stream(connection, ingest, stop, args.timeout, name)
    connection.close()
    ingest.flush(force=True)
    output.close()
    s = ingest.state
    kind = "phase samples" if unwrap is None else "raw values, radians unwrapped"
    print(f"ingested {s.data_frames:,} data frames ({sender.samples:,} samples, {sender.messages:,} messages) "
          f"from {host}:{port} to {topic} as {kind} in {sender.seconds:.2f} s; {s.phasors - sender.samples:,} phasor "
          f"values not usable (STAT, NaN); dead letters {s.dead_letters:,}; "
          f"delivered {sender.delivered:,}, failed {sender.failed:,}")
    problem = output.delivery_problem()
    if problem:
        print(f"{name}: {problem}", file=sys.stderr)
        return 1
    return status


def _stream(connection: PdcConnection, ingest: C37Ingest, stop: threading.Event, timeout: float, name: str) -> int:
    """Read until stopped, done or closed; 1 when the peer stays silent for ``timeout`` s."""
    reader = FrameReader()
    connection.send(Command.SEND_CFG2)
    heard = time.monotonic()
    while not stop.is_set() and not ingest.done:
        data = connection.receive()
        if connection.closed_by_peer:
            print(f"{name}: the PMU closed the connection", file=sys.stderr)
            break
        if data:
            heard = time.monotonic()
        elif time.monotonic() - heard > timeout:
            print(f"{name}: no frame from the PMU for {timeout:g} s", file=sys.stderr)
            return 1
        for piece in reader.feed(data):
            ingest.take(piece)
        if ingest.state.config is not None and not ingest.state.started:
            connection.send(Command.DATA_ON)
            ingest.state.started = True
        ingest.flush()
    return 0


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)
