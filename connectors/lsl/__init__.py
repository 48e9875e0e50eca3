"""Lab Streaming Layer (LSL): finding a stream, reading its channels, and mapping its clock to the epoch.

The protocol itself is liblsl's, through ``pylsl`` (its wheels bundle the
library).  :mod:`connectors.lsl.stream` resolves a stream by name and opens
an inlet; :mod:`connectors.lsl.clock` turns LSL timestamps into strictly
increasing epoch microseconds.  The ingest command is
:mod:`flows.lsl_ingest`.
"""

from connectors.lsl.clock import EpochClock, epoch_micros, wall_minus_local
from connectors.lsl.stream import LslStream, StreamRefused, channel_labels, find_stream, open_stream, predicate

__all__ = [
    "EpochClock",
    "LslStream",
    "StreamRefused",
    "channel_labels",
    "epoch_micros",
    "find_stream",
    "open_stream",
    "predicate",
    "wall_minus_local",
]
