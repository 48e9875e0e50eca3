"""The witness log: every witness record in one sequence, hashed as it grows (SPEC section 4).

Witness records come from everywhere in the dataflow: ``micro`` (per batch
of a step), ``meso`` (sampled transducer emissions), ``macro`` (the sync
snapshot at each collapse event).  :class:`WitnessLog` puts them in one
order, serialises each to the bytes that go on the witness topic and into
``witnessing_logs/``, and keeps

    digest_k = sha256(bytes.fromhex(digest_{k-1}) + record_k),
    digest_0 = 64 zeros (:data:`schemas.messages.WITNESS_LOG_GENESIS`),

so anyone holding the log can recompute every digest.  Every ``meta_every``
records, and at end of input, the log observes itself: a ``meta`` record
with the records counted per layer so far and the digest of everything
before it; that record enters the log and the digest like any other.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from schemas.messages import (
    WITNESS_LOG_GENESIS,
    MetaWitness,
    to_json_bytes,
    witness_log_digest,
    witness_record_json,
)

__all__ = ["LoggedRecord", "WitnessEntries", "WitnessEntry", "WitnessLog"]

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


class WitnessEntries(list):
    """The witness entries of one step's batch, moved through the dataflow as one item."""


@dataclass(slots=True)  # one per output record: a frozen init costs 4x
class LoggedRecord:
    """A record as logged: its position, wire bytes and the running digest including it."""

    seq: int
    layer: str
    t_us: int
    sensor: str | None
    value: bytes
    digest: str


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

    def append(self, entries: list[WitnessEntry]) -> list[LoggedRecord]:
        """Log ``entries`` in order; returns them as logged, with any meta records due."""
        out: list[LoggedRecord] = []
        for entry in entries:
            if entry.layer not in self.enabled:
                continue
            out.append(self._log(entry))
            self._since_meta += 1
            if self._since_meta >= self.meta_every and "meta" in self.enabled:
                out.append(self.observe())
        return out

    def observe(self) -> LoggedRecord:
        """A ``meta`` record now: counts per layer and the digest before it."""
        payload = MetaWitness(records=dict(self.counts), log_sha256=self.digest)
        self._since_meta = 0
        return self._log(WitnessEntry("meta", self.newest_t or 0, None, payload))

    def _log(self, entry: WitnessEntry) -> LoggedRecord:
        payload = entry.payload if isinstance(entry.payload, bytes) else to_json_bytes(entry.payload)
        value = witness_record_json(entry.layer, entry.t_us, payload)
        self.digest = witness_log_digest(self.digest, value)
        self.counts[entry.layer] += 1
        if self.newest_t is None or entry.t_us > self.newest_t:
            self.newest_t = entry.t_us
        self.seq += 1
        return LoggedRecord(self.seq - 1, entry.layer, entry.t_us, entry.sensor, value, self.digest)
