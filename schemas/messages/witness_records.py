"""Witness records: the pipeline observing itself (topic ``becomingone.witness``), and the
``witness_break`` event a witness node raises when another node's log breaks."""

from __future__ import annotations

import cmath
import hashlib
import json
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from schemas.messages.sync_records import CollapseEvent
from schemas.messages.wire import FiniteFloat, NonNegativeInt, Sha256Hex, UtcTime, _Wire, format_utc


WitnessLayer = Literal["micro", "meso", "macro", "meta"]
#: The running digest before the first witness record.
WITNESS_LOG_GENESIS = "0" * 64
#: Kafka headers of every witness-topic message: its position in the log (decimal ASCII) and the
#: running digest including it (hex), as the ``seq`` and ``log_sha256`` columns of ``witnessing_logs/``.
WITNESS_SEQ_HEADER = "seq"
WITNESS_DIGEST_HEADER = "log_sha256"


def witness_log_digest(previous: str, record: bytes) -> str:
    """Running SHA-256 of the witness log: sha256(previous digest bytes + record JSON)."""
    return hashlib.sha256(bytes.fromhex(previous) + record).hexdigest()


class MicroWitness(_Wire):
    """``micro``: one operator batch."""

    operator: str = Field(min_length=1)
    worker: NonNegativeInt
    items_in: NonNegativeInt
    items_out: NonNegativeInt
    drops: NonNegativeInt
    """Items sent to the dead-letter topic."""
    seconds: Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
    """Wall-clock time spent on the batch, seconds."""


class MesoWitness(_Wire):
    """``meso``: one (sampled) transducer emission; the record's t is the grid time."""

    sensor: str = Field(min_length=1)
    cell: str | None = None
    transducer: Literal["emissary", "master"]
    t_re: FiniteFloat
    t_im: FiniteFloat
    coherence: Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
    n_products: NonNegativeInt


class MacroWitness(_Wire):
    """``macro``: the full sync snapshot at a collapse or dissipate event."""

    event: CollapseEvent
    coherence_master: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] | None
    """|T_master|^2; null on a light node (no Master)."""
    coherence_emissary: Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
    master_span: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] | None
    """Newest minus oldest product time in the Master's window, seconds; null on a light node."""

    @classmethod
    def at(cls, event: CollapseEvent, t_master: complex, t_emissary: complex, master_span_us: int) -> MacroWitness:
        """The snapshot of the sync values at ``event``; ``t_master`` NaN: a light node, no Master.

        >>> from schemas.messages.sync_records import CollapseEvent
        >>> e = CollapseEvent.create(event="collapse", sensor="s", t_us=0, t_master=None, t_emissary=1j)
        >>> m = MacroWitness.at(e, complex("nan+nanj"), 1j, 0)
        >>> m.coherence_master, m.coherence_emissary, m.master_span, m.event.delta_phase
        (None, 1.0, None, 0.0)
        """
        if cmath.isnan(t_master):
            return cls(event=event, coherence_master=None, coherence_emissary=abs(t_emissary) ** 2, master_span=None)
        return cls(event=event, coherence_master=abs(t_master) ** 2, coherence_emissary=abs(t_emissary) ** 2,
                   master_span=master_span_us * 1e-6)


class ManifestHead(_Wire):
    """An archive dataset's manifest as last committed: the anchor of its hash chain."""

    lines: NonNegativeInt
    """Lines (files) in ``_meta/<dataset>/MANIFEST.jsonl``."""
    sha256: Sha256Hex
    """SHA-256 of the last line's text (the next line's ``prev``); 64 zeros for no line."""


class MetaWitness(_Wire):
    """``meta``: the witness observing itself."""

    records: dict[WitnessLayer, NonNegativeInt]
    """Records emitted so far per layer."""
    log_sha256: Sha256Hex
    """Running digest (:func:`witness_log_digest`) of every record before this one."""
    heads: dict[str, ManifestHead] = Field(default_factory=dict)
    """Every archived dataset's manifest head when the record was built (empty without an archive)."""


_PAYLOADS: dict[str, type[_Wire]] = {
    "micro": MicroWitness,
    "meso": MesoWitness,
    "macro": MacroWitness,
    "meta": MetaWitness,
}


class WitnessRecord(_Wire):
    """One witness record (topic ``becomingone.witness``).

    ``t`` is the event time the record belongs to: the grid time (meso), the
    event time (macro), or the newest event time the operator had seen
    (micro, meta).  ``payload`` is the model of ``layer``.
    """

    layer: WitnessLayer
    t: UtcTime
    payload: MicroWitness | MesoWitness | MacroWitness | MetaWitness

    @model_validator(mode="before")
    @classmethod
    def _payload_of_layer(cls, data: Any) -> Any:
        # Parse the payload with its layer's model, not by trying each in turn.
        if isinstance(data, Mapping):
            model = _PAYLOADS.get(data.get("layer"))  # type: ignore[arg-type]
            payload = data.get("payload")
            if model is not None and isinstance(payload, Mapping):
                data = {**data, "payload": model.model_validate(payload)}
        return data

    @model_validator(mode="after")
    def _layer_matches(self) -> WitnessRecord:
        if not isinstance(self.payload, _PAYLOADS[self.layer]):
            raise ValueError(f"payload of layer {self.layer!r} must be a {_PAYLOADS[self.layer].__name__}")
        return self


def witness_record_json(layer: str, t_us: int, payload: bytes) -> bytes:
    """A :class:`WitnessRecord` as JSON bytes around an already encoded payload."""
    return b'{"layer":"%s","t":"%s","payload":%s}' % (layer.encode("ascii"), format_utc(t_us).encode("ascii"),
                                                        payload)



WitnessBreakKind = Literal["removed", "changed", "reordered", "rollback", "malformed"]


def witness_break_id(node: str, kind: str, seq: int | None, dataset: str | None = None) -> str:
    """Deterministic id of a break: SHA-256 hex of ``[node, kind, seq, dataset]`` as compact JSON
    (a re-read of the same log names the same break with the same id)."""
    text = json.dumps([node, kind, seq, dataset], separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class WitnessBreak(_Wire):
    """``witness_break``: a witness node found another node's witness log broken (collapse topic, key = node).

    Kinds: ``removed`` (seqs missing), ``changed`` (a record whose ``log_sha256`` does not follow
    from the digest before it and its bytes, or other bytes under a seq already read with the same
    digest), ``reordered`` (seqs out of order, or a seq again with another digest: the log forks),
    ``rollback`` (a meta record's manifest head of a dataset behind an earlier one), ``malformed``
    (a message that is no witness record, or without its seq and digest headers).
    """

    event_id: Sha256Hex
    event: Literal["witness_break"] = "witness_break"
    kind: WitnessBreakKind
    node: str
    """The audited node (the key of its witness records)."""
    seq: NonNegativeInt | None
    """The seq the break is at (None: a malformed message without one)."""
    read_seq: NonNegativeInt | None
    """The newest seq read in order when the break was decided: how far the audit had come."""
    dataset: str | None = None
    """``rollback``: the archive dataset whose manifest head went back."""
    witness: str
    """The witness node reporting it (its ``becomingone.name``)."""
    detail: str

    @classmethod
    def of(cls, kind: str, node: str, seq: int | None, read_seq: int | None, detail: str, witness: str,
           dataset: str | None = None) -> WitnessBreak:
        return cls(event_id=witness_break_id(node, kind, seq, dataset), kind=kind, node=node, seq=seq,
                   read_seq=read_seq, dataset=dataset, witness=witness, detail=detail)
