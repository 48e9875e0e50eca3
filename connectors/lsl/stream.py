"""Finding an LSL stream by name and reading what it says about itself.

:func:`find_stream` resolves a stream by name (and type) on the network with
liblsl's discovery (multicast and the ``KnownPeers`` of ``lsl_api.cfg``);
:func:`open_stream` opens an inlet on it and returns it with its full
description as a :class:`LslStream`: the sensor ids ``<stream>/<channel
label>`` (labels from ``desc/channels/channel/label``, ``ch<i>`` counting
from 0 where a label is missing), the nominal rate and the channel format.
A regular stream's timestamps are dejittered by liblsl.
String streams are refused: their samples are no numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import pylsl

__all__ = ["LslStream", "StreamRefused", "find_stream", "open_stream", "predicate"]


class StreamRefused(ValueError):
    """A stream the ingest cannot use (string samples, no channels)."""


@dataclass(frozen=True)
class LslStream:
    """An open inlet and its stream's description.

    Attributes:
        inlet: the open ``pylsl.StreamInlet`` (``recover=False``: a lost outlet raises ``pylsl.util.LostError``;
            timestamps dejittered when the stream has a nominal rate).
        name / type / source_id / hostname: from the stream's header.
        sensors: ``<name>/<label>`` per channel, in channel order.
        nominal_rate: samples per second the outlet declares; 0 for an irregular stream.
        channel_format: liblsl's format name (``float32``, ``double64``, ``int16`` ...).
    """

    inlet: pylsl.StreamInlet
    name: str
    type: str
    source_id: str
    hostname: str
    sensors: tuple[str, ...]
    nominal_rate: float
    channel_format: str

    def describe(self) -> str:
        """One line for the operator: what was found and where."""
        rate = "irregular rate" if self.nominal_rate == 0 else f"{self.nominal_rate:g} Hz"
        return (f"LSL stream {self.name!r} (type {self.type!r}, source {self.source_id or '-'!r}, host "
                f"{self.hostname!r}): {len(self.sensors)} {self.channel_format} channels at {rate}")


def predicate(name: str, type_: str | None = None) -> str:
    """The XPath 1.0 predicate liblsl resolves by: ``name='NAME'`` (``and type='TYPE'``).

    >>> predicate("EEG amp", "EEG")
    "name='EEG amp' and type='EEG'"
    """
    parts = [f"name={_literal(name)}"] + ([] if type_ is None else [f"type={_literal(type_)}"])
    return " and ".join(parts)


def find_stream(name: str, type_: str | None, timeout: float) -> pylsl.StreamInfo | None:
    """The first stream named ``name`` (of type ``type_``) seen within ``timeout`` seconds, else None."""
    if not name:
        raise ValueError("the stream name must not be empty")
    found = pylsl.resolve_bypred(predicate(name, type_), 1, timeout)
    return found[0] if found else None


def open_stream(info: pylsl.StreamInfo, timeout: float) -> LslStream:
    """An inlet on ``info``, opened, with the full description (channel labels) read.

    Raises:
        StreamRefused: a string stream, or one without channels.
        pylsl.util.TimeoutError: the outlet did not answer within ``timeout`` seconds.
    """
    if info.channel_format() == pylsl.lib.cf_string:
        raise StreamRefused(f"LSL stream {info.name()!r} carries strings (markers, events), not numbers")
    if info.channel_count() < 1:
        raise StreamRefused(f"LSL stream {info.name()!r} has no channels")
    # Dejittered timestamps (liblsl's recursive least-squares fit of timestamp on sample count) for a
    # regular stream: phase extraction reads timestamp jitter as phase error. Still on the outlet's clock
    # (no proc_clocksync): the epoch mapping adds the offsets itself.
    flags = pylsl.proc_dejitter if info.nominal_srate() > 0 else pylsl.proc_none
    inlet = pylsl.StreamInlet(info, max_buflen=360, recover=False, processing_flags=flags, as_numpy=True)
    full = inlet.info(timeout=timeout)
    inlet.open_stream(timeout=timeout)
    labels = channel_labels(full)
    return LslStream(
        inlet=inlet,
        name=full.name(),
        type=full.type(),
        source_id=full.source_id(),
        hostname=full.hostname(),
        sensors=tuple(f"{full.name()}/{label}" for label in labels),
        nominal_rate=float(full.nominal_srate()),
        channel_format=pylsl.lib.fmt2string[full.channel_format()],
    )


def channel_labels(info: pylsl.StreamInfo) -> list[str]:
    """``desc/channels/channel/label`` of each channel; ``ch<i>`` (0-based) where missing, empty or repeated."""
    labels: list[str] = []
    channel = info.desc().child("channels").child("channel")
    for _ in range(info.channel_count()):
        text = channel.child_value("label").strip() if not channel.empty() else ""
        labels.append(text)
        channel = channel.next_sibling("channel") if not channel.empty() else channel
    seen: set[str] = set()
    out = []
    for i, text in enumerate(labels):
        label = text if text and text not in seen else f"ch{i}"
        seen.add(label)
        out.append(label)
    return out


def _literal(text: str) -> str:
    # XPath 1.0 has no escapes: a literal is quoted with the quote it does not contain.
    if "'" not in text:
        return f"'{text}'"
    if '"' not in text:
        return f'"{text}"'
    raise ValueError(f"{text!r}: a stream name or type with both ' and \" cannot be resolved")
