"""Dead letters: bad input with its reason (topic ``becomingone.dlq``), bounded in size."""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator, Field

from schemas.messages.input_samples import DeadLetterReason
from schemas.messages.wire import NonNegativeInt, _Wire, from_json_bytes, to_json_bytes


def _base64(text: str) -> str:
    try:
        base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be standard base64") from None
    return text


Base64Text = Annotated[str, AfterValidator(_base64)]


#: Defaults of ``sink.dlq_max_original_bytes`` and ``source.max_dead_letters_per_message``.
DLQ_MAX_ORIGINAL_BYTES = 65_536
MAX_DEAD_LETTERS_PER_MESSAGE = 100


@dataclass(frozen=True, slots=True)
class DeadLetterLimits:
    """Bounds on dead letters, so that no input turns into a flood (SPEC section 4).

    Attributes:
        max_original_bytes: at most this many bytes of the original value (and
            of the key) go into a record (``sink.dlq_max_original_bytes``).
        max_per_message: per-row records of one input message; its remaining
            bad rows are summed up in one record (``source.max_dead_letters_per_message``).
    """

    max_original_bytes: int = DLQ_MAX_ORIGINAL_BYTES
    max_per_message: int = MAX_DEAD_LETTERS_PER_MESSAGE


#: Longest ``error`` text of a dead letter: details may quote the input (a time text, a sensor id).
MAX_ERROR_CHARS = 1_000


class DeadLetter(_Wire):
    """Bad input with its reason (topic ``becomingone.dlq``).

    For a file source ``topic`` is the file path and ``offset`` the row (or
    line) index; for the synthetic source both are null.  ``(topic, partition,
    offset, row)`` identifies the bad row, so a consumer can drop repeats.

    ``original`` holds at most :attr:`DeadLetterLimits.max_original_bytes` of
    the value; ``original_size`` and ``original_sha256`` describe the whole
    value, and ``truncated`` says whether it was cut.  A summary record
    (``omitted`` set) stands for the bad rows of one message beyond
    :attr:`DeadLetterLimits.max_per_message`: counts per reason, with the
    message's position and (cut) value.
    """

    reason: DeadLetterReason
    error: str
    """Human-readable detail."""
    topic: str | None = None
    partition: Annotated[int, Field(ge=0)] | None = None
    offset: Annotated[int, Field(ge=0)] | None = None
    row: Annotated[int, Field(ge=0)] | None = None
    """Row of the message (Arrow messages hold many); null for a whole message."""
    key: Base64Text | None = None
    """The original message key, base64 (cut like the value)."""
    original: Base64Text
    """The original message value, base64: at most max_original_bytes of it."""
    original_size: NonNegativeInt = 0
    """Length of the whole original value, bytes."""
    original_sha256: str = ""
    """SHA-256 (hex) of the whole original value."""
    truncated: bool = False
    """True when ``original`` holds only the first bytes of the value (or none of them)."""
    omitted: dict[DeadLetterReason, NonNegativeInt] | None = None
    """Summary record: bad rows of this message not written one by one, per reason."""

    @classmethod
    def create(
        cls,
        *,
        original: bytes,
        reason: DeadLetterReason | str,
        error: str,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
        row: int | None = None,
        key: bytes | None = None,
        omitted: Mapping[DeadLetterReason, int] | None = None,
        max_original_bytes: int = DLQ_MAX_ORIGINAL_BYTES,
    ) -> DeadLetter:
        """Build a dead letter from raw bytes (cut to ``max_original_bytes``, encoded to base64 here)."""
        value = bytes(original)
        kept = value[:max_original_bytes]
        if len(error) > MAX_ERROR_CHARS:
            error = error[:MAX_ERROR_CHARS] + f"... ({len(error):,} characters)"
        return cls(
            reason=DeadLetterReason(reason),
            error=error,
            topic=topic,
            partition=partition,
            offset=offset,
            row=row,
            key=None if key is None else base64.b64encode(bytes(key)[:max_original_bytes]).decode("ascii"),
            original=base64.b64encode(kept).decode("ascii"),
            original_size=len(value),
            original_sha256=hashlib.sha256(value).hexdigest(),
            truncated=len(kept) < len(value),
            omitted=None if omitted is None else dict(omitted),
        )

    @property
    def original_bytes(self) -> bytes:
        """The original message value."""
        return base64.b64decode(self.original)

    @property
    def key_bytes(self) -> bytes | None:
        """The original message key, if any."""
        return None if self.key is None else base64.b64decode(self.key)


def without_original(record: bytes) -> bytes | None:
    """A dead-letter record (JSON) with neither original bytes nor key, for a topic that
    refused the record; None when it has none left to drop."""
    letter = from_json_bytes(DeadLetter, record)
    if not letter.original and letter.key is None:
        return None
    return to_json_bytes(letter.model_copy(update={"original": "", "key": None, "truncated": True}))
