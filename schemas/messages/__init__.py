"""Wire formats (SPEC section 4): input samples, output events, witness records, dead letters.

Input
    A JSON sample becomes a :class:`PhaseSample` or raises
    :class:`InvalidSample` with its :class:`DeadLetterReason`
    (:mod:`~schemas.messages.input_samples`).

Output
    :class:`CollapseEvent` and a witness node's :class:`WitnessBreak` (collapse
    topic), :class:`WitnessRecord` (witness topic), :class:`SyncRecord` (sync
    topic) and :class:`DeadLetter` (dead-letter topic) are pydantic models:
    they are produced at grid or event rate, not sample rate, and validation
    guards the contract.  :func:`to_json_bytes` gives their compact JSON.
    Times on the wire are ISO-8601 UTC strings with microseconds
    (``2025-11-26T00:00:00.125000Z``); complex values are ``[re, im]`` pairs.
    The high-volume sync and meso records are written by
    :mod:`~schemas.messages.encoders` directly, with the models' bytes.

The modules: :mod:`~schemas.messages.wire` (time and values on the wire, the
models' base), :mod:`~schemas.messages.input_samples`,
:mod:`~schemas.messages.sync_records`, :mod:`~schemas.messages.witness_records`,
:mod:`~schemas.messages.dead_letter_records` and :mod:`~schemas.messages.encoders`.
"""

from schemas.messages.dead_letter_records import (
    DLQ_MAX_ORIGINAL_BYTES,
    MAX_DEAD_LETTERS_PER_MESSAGE,
    MAX_ERROR_CHARS,
    DeadLetter,
    DeadLetterLimits,
    without_original,
)
from schemas.messages.encoders import (
    json_text,
    meso_records_json,
    per_row,
    state_texts,
    sync_records_json,
    utc_texts,
)
from schemas.messages.input_samples import (
    ARROW_STREAM_CONTENT_TYPE,
    CONTENT_TYPE_HEADER,
    JSON_CONTENT_TYPE,
    DeadLetterReason,
    InvalidSample,
    PhaseSample,
    classify_sample,
    parse_sample,
    sample_from_object,
)
from schemas.messages.sync_records import CollapseEvent, SyncRecord, SyncState, collapse_event_id
from schemas.messages.wire import format_utc, from_json_bytes, parse_utc, to_json_bytes
from schemas.messages.witness_records import (
    WITNESS_DIGEST_HEADER,
    WITNESS_LOG_GENESIS,
    WITNESS_SEQ_HEADER,
    MacroWitness,
    ManifestHead,
    MesoWitness,
    MetaWitness,
    MicroWitness,
    WitnessBreak,
    WitnessBreakKind,
    WitnessLayer,
    WitnessRecord,
    witness_break_id,
    witness_log_digest,
    witness_record_json,
)

__all__ = [
    "ARROW_STREAM_CONTENT_TYPE",
    "CONTENT_TYPE_HEADER",
    "DLQ_MAX_ORIGINAL_BYTES",
    "JSON_CONTENT_TYPE",
    "MAX_DEAD_LETTERS_PER_MESSAGE",
    "MAX_ERROR_CHARS",
    "WITNESS_DIGEST_HEADER",
    "WITNESS_LOG_GENESIS",
    "WITNESS_SEQ_HEADER",
    "CollapseEvent",
    "DeadLetter",
    "DeadLetterLimits",
    "DeadLetterReason",
    "InvalidSample",
    "MacroWitness",
    "ManifestHead",
    "MesoWitness",
    "MetaWitness",
    "MicroWitness",
    "PhaseSample",
    "SyncRecord",
    "SyncState",
    "WitnessBreak",
    "WitnessBreakKind",
    "WitnessLayer",
    "WitnessRecord",
    "classify_sample",
    "collapse_event_id",
    "format_utc",
    "from_json_bytes",
    "json_text",
    "meso_records_json",
    "parse_sample",
    "per_row",
    "parse_utc",
    "sample_from_object",
    "state_texts",
    "sync_records_json",
    "to_json_bytes",
    "utc_texts",
    "witness_break_id",
    "witness_log_digest",
    "witness_record_json",
    "without_original",
]

