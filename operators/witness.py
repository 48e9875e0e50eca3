"""The witness log: every witness record in one sequence, hashed as it grows (SPEC section 4).

Witness records come from everywhere in the dataflow: ``micro`` (per batch
of a step), ``meso`` (sampled transducer emissions), ``macro`` (the sync
snapshot at each collapse event).  :class:`WitnessLog` puts them in one
order, serialises each to the bytes that go on the witness topic and into
``witnessing_logs/`` (a :class:`WitnessBlock` of ``meso`` records arrives
serialised), and keeps

    digest_k = sha256(bytes.fromhex(digest_{k-1}) + record_k),
    digest_0 = 64 zeros (:data:`schemas.messages.WITNESS_LOG_GENESIS`),

so anyone holding the log can recompute every digest.  Every ``meta_every``
records, and at end of input, the log observes itself: a ``meta`` record
with the records counted per layer so far, the digest of everything
before it and, when the flow archives, every dataset's manifest head as
last committed (:attr:`WitnessLog.heads`, :mod:`connectors.archive.anchor`); that
record enters the log and the digest like any other.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from schemas.messages import (
    WITNESS_LOG_GENESIS,
    MetaWitness,
    to_json_bytes,
    witness_record_json,
)

__all__ = ["LoggedRecord", "LoggedRecords", "WitnessBlock", "WitnessEntries", "WitnessEntry", "WitnessLog"]

_LAYERS = ("micro", "meso", "macro", "meta")


@dataclass(slots=True)  # one per output record: a frozen init costs 4x
class WitnessEntry:
    """A witness observation on its way to the log.

    Attributes:
        layer: micro | meso | macro | meta.
        t_us: event time the record belongs to (us).
        sensor: the sensor (meso, macro), or None.
        payload: the layer's payload model (:class:`~schemas.messages.MicroWitness` ...),
            or that model already encoded as JSON bytes.
    """

    layer: str
    t_us: int
    sensor: str | None
    payload: BaseModel | bytes


@dataclass(slots=True)
class WitnessBlock:
    """Many records of one layer on their way to the log, already encoded.

    The high-volume layer (``meso``: every sensor's sampled emissions) is
    encoded column by column (:func:`schemas.messages.meso_records_json`)
    and logged without an object per record.

    Attributes:
        layer: micro | meso | macro | meta.
        t_us: each record's event time (us).
        sensors: each record's sensor, or None.
        values: each record's witness-topic value, a whole
            :class:`~schemas.messages.WitnessRecord` as JSON bytes.
    """

    layer: str
    t_us: list[int]
    sensors: list[str | None]
    values: list[bytes]


class WitnessEntries(list):
    """The witness entries and blocks of one step's batch, moved through the dataflow as one item."""


@dataclass(slots=True)
class LoggedRecord:
    """A record as logged: its position, wire bytes and the running digest including it."""

    seq: int
    layer: str
    t_us: int
    sensor: str | None
    value: bytes
    digest: str


@dataclass(slots=True)
class LoggedRecords:
    """Records as logged, column by column; iterating gives each as a :class:`LoggedRecord`.

    Attributes:
        seq: the position of the first record (the others follow it one by one).
        layers, t_us, sensors, values: each record's layer, event time,
            sensor and witness-topic value.
        digests: the running SHA-256 after each record, 32 raw bytes
            (``digest.hex()`` is the ``log_sha256`` text).
    """

    seq: int
    layers: list[str]
    t_us: list[int]
    sensors: list[str | None]
    values: list[bytes]
    digests: list[bytes]

    def __len__(self) -> int:
        return len(self.values)

    def __iter__(self) -> Iterator[LoggedRecord]:
        for i, (layer, t, sensor, value, digest) in enumerate(zip(self.layers, self.t_us, self.sensors, self.values,
                                                                   self.digests)):
            yield LoggedRecord(self.seq + i, layer, t, sensor, value, digest.hex())


class WitnessLog:
    """The running witness log of one dataflow.

    Args:
        meta_every: emit a ``meta`` record after this many records (>= 1).
        digest: the digest to continue from (the last archived one when a
            run appends to an existing archive), default the genesis value.
        seq: the position of the next record (continuing an archived log).
        enabled: layers that are logged; entries of other layers are dropped.

    >>> from schemas.messages import MicroWitness
    >>> log = WitnessLog(meta_every=2)
    >>> entry = WitnessEntry("micro", 0, None, MicroWitness(operator="decode", worker=0, items_in=1,
    ...                      items_out=1, drops=0, seconds=0.001))
    >>> [r.layer for r in log.append([entry, entry])]
    ['micro', 'micro', 'meta']
    >>> log.counts
    {'micro': 2, 'meso': 0, 'macro': 0, 'meta': 1}
    """

    def __init__(self, meta_every: int = 1000, digest: str = WITNESS_LOG_GENESIS, seq: int = 0,
                 enabled: tuple[str, ...] = _LAYERS) -> None:
        if meta_every < 1:
            raise ValueError(f"meta_every must be at least 1, got {meta_every}")
        self.meta_every = int(meta_every)
        self.digest = digest
        self.seq = int(seq)
        self.enabled = frozenset(enabled)
        self.counts = {layer: 0 for layer in _LAYERS}
        self.newest_t: int | None = None
        self._since_meta = 0
        #: Called for each meta record: the archive's manifest heads to anchor
        #: (:class:`connectors.archive.anchor.ManifestHeads`), or None.  Not part of a snapshot.
        self.heads: Callable[[], dict[str, Any]] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "heads": None}

    def continue_from(self, seq: int, digest: str) -> None:
        """Go on as the log whose next record is ``seq`` and whose digest so far is ``digest``.

        A run that archives the log continues the archived one: a fresh run
        starts after the last archived record, and a run resumed from a
        snapshot older than the archive's rows (Bytewax recovery replays the
        epochs after the snapshot, whose records were archived already) goes
        on after them too, so that the archive holds one seq and one chain.
        """
        self.seq, self.digest = int(seq), digest

    def append(self, entries: Iterable[WitnessEntry | WitnessBlock]) -> LoggedRecords:
        """Log ``entries`` in order; returns them as logged, with any meta records due."""
        out = LoggedRecords(self.seq, [], [], [], [], [])
        for entry in entries:
            if entry.layer not in self.enabled:
                continue
            if isinstance(entry, WitnessBlock):
                self._log(out, entry.layer, entry.t_us, entry.sensors, entry.values)
            else:
                payload = entry.payload if isinstance(entry.payload, bytes) else to_json_bytes(entry.payload)
                self._log(out, entry.layer, [entry.t_us], [entry.sensor],
                          [witness_record_json(entry.layer, entry.t_us, payload)])
        return out

    def observe(self) -> LoggedRecords:
        """A ``meta`` record now: counts per layer and the digest before it."""
        out = LoggedRecords(self.seq, [], [], [], [], [])
        self._observe(out)
        return out

    def _observe(self, out: LoggedRecords) -> None:
        heads = self.heads() if self.heads is not None else {}
        payload = to_json_bytes(MetaWitness(records=dict(self.counts), log_sha256=self.digest, heads=heads))
        t = self.newest_t or 0
        self._since_meta = 0
        self._chain(out, "meta", [t], [None], [witness_record_json("meta", t, payload)])

    def _log(self, out: LoggedRecords, layer: str, t_us: list[int], sensors: list[str | None],
             values: list[bytes]) -> None:
        """Log records of one layer, a meta record after every ``meta_every`` of them."""
        start, n = 0, len(values)
        while start < n:
            take = n - start
            if "meta" in self.enabled:
                take = min(take, max(1, self.meta_every - self._since_meta))
            stop = start + take
            self._chain(out, layer, t_us[start:stop], sensors[start:stop], values[start:stop])
            self._since_meta += take
            start = stop
            if self._since_meta >= self.meta_every and "meta" in self.enabled:
                self._observe(out)

    def _chain(self, out: LoggedRecords, layer: str, t_us: list[int], sensors: list[str | None],
               values: list[bytes]) -> None:
        """Append records to ``out`` and to the running digest."""
        if not values:
            return
        # schemas.messages.witness_log_digest, on the raw 32 bytes instead of hex text.
        digest, sha256, digests = bytes.fromhex(self.digest), hashlib.sha256, out.digests
        for value in values:  # a chain: each digest needs the one before
            digest = sha256(digest + value).digest()
            digests.append(digest)
        self.digest = digest.hex()
        out.layers.extend([layer] * len(values))
        out.t_us.extend(t_us)
        out.sensors.extend(sensors)
        out.values.extend(values)
        self.counts[layer] += len(values)
        newest = max(t_us)
        if self.newest_t is None or newest > self.newest_t:
            self.newest_t = newest
        self.seq += len(values)
