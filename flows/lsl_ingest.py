"""The work of ``becomingone ingest lsl NAME``: a Lab Streaming Layer stream's samples to the input topic.

The stream is resolved by name (and ``--type``), an inlet opened on it, and
each chunk pulled becomes raw ``value`` samples (SPEC section 9), one sensor
per channel (``<stream>/<channel label>``), sent as Arrow messages by
partition.  Times are the LSL timestamps mapped to the epoch
(:mod:`connectors.lsl.clock`), integer microseconds, strictly increasing per
sensor.  Values that are not finite (a NaN for a dropped electrode) are left
out and counted.  SIGTERM or Ctrl-C stops it: what was received is sent and
flushed, exit 0.  So does the outlet going away (the stream ended); a
supervisor that restarts the command finds the stream again by name.
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

from connectors.lsl import EpochClock, LslStream, epoch_micros, wall_minus_local
from connectors.phase_files.columns import PHASE_TYPE, PhaseColumns
from flows.arguments import config_or_report

if TYPE_CHECKING:
    from flows.ingest_output import IngestOutput

__all__ = ["LslIngest", "LslIngestState", "ingest_lsl", "value_columns"]

#: The clock offset is measured again this often (seconds).
CLOCK_REFRESH_SECONDS = 5.0
#: A pull waits at most this long for samples (seconds): how quickly a stop is seen.
PULL_SECONDS = 0.1
#: Samples pulled at most per chunk.
MAX_CHUNK = 4096


def value_columns(stream: LslStream, samples: np.ndarray, t_us: np.ndarray) -> PhaseColumns:
    """``samples`` (n, C) stamped ``t_us`` (n,) as raw samples: per sample, one row per finite channel value."""
    n, channels = samples.shape
    values = np.asarray(samples, dtype=np.float64).ravel()  # sample-major: sample 0's channels, then sample 1's
    keep = np.isfinite(values)
    which = np.tile(np.arange(channels, dtype=np.int64), n)[keep]
    kept = values[keep]
    return PhaseColumns(
        sensor=pa.array(stream.sensors, pa.string()).take(pa.array(which)),
        t_us=np.repeat(t_us, channels)[keep],
        phase=pa.FixedSizeListArray.from_arrays(pa.array(kept, pa.float64()), 1).cast(PHASE_TYPE),
        cell=pa.nulls(len(kept), pa.string()),
        origin=f"lsl:{stream.name}",
        raw=True,
    )


@dataclass
class LslIngestState:
    """What the ingest has done so far."""

    clock: EpochClock
    samples: int = 0
    values: int = 0
    not_finite: int = 0
    clock_measured: float = field(default_factory=time.monotonic)


class LslIngest:
    """Chunks of an inlet in, raw samples out."""

    def __init__(self, stream: LslStream, output: IngestOutput, limit: int | None, offset_s: float,
                 measure_offset: Callable[[], float | None]) -> None:
        self.stream, self.output, self.limit, self.measure_offset = stream, output, limit, measure_offset
        self.state = LslIngestState(EpochClock(offset_us=round(offset_s * 1e6)))

    @property
    def done(self) -> bool:
        return self.limit is not None and self.state.samples >= self.limit

    def take(self, samples: np.ndarray, timestamps: np.ndarray) -> None:
        """One pulled chunk: (n, C) samples and their n LSL timestamps."""
        if self.limit is not None:
            room = self.limit - self.state.samples
            samples, timestamps = samples[:room], timestamps[:room]
        if not len(timestamps):
            return
        self._refresh_clock()
        s = self.state
        columns = value_columns(self.stream, samples, epoch_micros(timestamps, s.clock))
        s.samples += len(timestamps)
        s.values += samples.size
        s.not_finite += samples.size - len(columns)
        self.output.send(columns)

    def _refresh_clock(self) -> None:
        s = self.state
        if time.monotonic() - s.clock_measured < CLOCK_REFRESH_SECONDS:
            return
        s.clock_measured = time.monotonic()
        offset = self.measure_offset()
        if offset is not None:  # else the previous one stays in force
            s.clock.offset_us = round(offset * 1e6)


def epoch_offset(stream: LslStream, timeout: float) -> float | None:
    """``time_correction + time.time() - local_clock()`` in seconds (None: no clock answer within ``timeout``)."""
    import pylsl

    try:
        correction = stream.inlet.time_correction(timeout=timeout)
    except pylsl.util.TimeoutError:
        return None
    return correction + wall_minus_local(pylsl.local_clock)


def ingest_lsl(args: argparse.Namespace) -> int:
    """Stream an LSL stream to the input topic until stopped, ``--limit`` samples, or the outlet goes away."""
    import pylsl

    from connectors.lsl import StreamRefused, find_stream, open_stream
    from flows.ingest_output import IngestSetupFailed, open_ingest_output, report_setup_failure, stop_on_signals

    name = "becomingone ingest lsl"
    config = config_or_report(args)
    if config is None:
        return 2
    try:
        output = open_ingest_output(config, args)
    except IngestSetupFailed as exc:
        return report_setup_failure(name, exc)
    stop = stop_on_signals()
    wanted = f"LSL stream named {args.name!r}" + ("" if args.type is None else f" of type {args.type!r}")
    try:
        info = find_stream(args.name, args.type, args.timeout)
        if info is None:
            print(f"{name}: no {wanted} found within {args.timeout:g} s (is its outlet running, and is this host "
                  f"reachable by LSL discovery? see KnownPeers in lsl_api.cfg)", file=sys.stderr)
            return 1
        stream = open_stream(info, args.timeout)
        offset = epoch_offset(stream, args.timeout)
    except ValueError as exc:  # StreamRefused, or a name LSL cannot resolve
        print(f"{name}: {exc}", file=sys.stderr)
        return 2 if not isinstance(exc, StreamRefused) else 1
    except (pylsl.util.TimeoutError, pylsl.util.LostError) as exc:
        print(f"{name}: the {wanted} was found but did not answer within {args.timeout:g} s: {exc}", file=sys.stderr)
        return 1
    if offset is None:
        print(f"{name}: the {wanted} did not answer the clock probe within {args.timeout:g} s", file=sys.stderr)
        return 1
    print(f"{name}: {stream.describe()}; sensors {', '.join(stream.sensors)}", file=sys.stderr)
    ingest = LslIngest(stream, output, args.limit, offset, lambda: epoch_offset(stream, 1.0))
    _pull(stream, ingest, stop, name)
    stream.inlet.close_stream()
    output.close()
    s, sender = ingest.state, output.sender
    print(f"ingested {s.samples:,} samples of {len(stream.sensors)} channels ({sender.samples:,} values, "
          f"{sender.messages:,} messages) from LSL stream {stream.name!r} to {output.topic} in {sender.seconds:.2f} s; "
          f"{s.not_finite:,} values not finite (left out); {s.clock.moved:,} sample times moved later to keep "
          f"time order; delivered {sender.delivered:,}, failed {sender.failed:,}")
    problem = output.delivery_problem()
    if problem:
        print(f"{name}: {problem}", file=sys.stderr)
        return 1
    return 0


def _pull(stream: LslStream, ingest: LslIngest, stop: threading.Event, name: str) -> None:
    """Pull chunks until stopped, done, or the outlet is gone; send them as they come."""
    import pylsl

    while not stop.is_set() and not ingest.done:
        try:
            samples, timestamps = stream.inlet.pull_chunk(timeout=PULL_SECONDS, max_samples=MAX_CHUNK)
        except pylsl.util.LostError:
            print(f"{name}: the outlet of LSL stream {stream.name!r} is gone (the stream ended)", file=sys.stderr)
            break
        ingest.take(np.asarray(samples).reshape(len(timestamps), len(stream.sensors)), np.asarray(timestamps))
        ingest.output.flush()
    ingest.output.flush(force=True)
