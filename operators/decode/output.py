"""What one call of :func:`~operators.decode.decode_messages` hands on (:class:`Decoded`), and how
its rejected rows and messages get into it as dead letters."""

from __future__ import annotations

from dataclasses import dataclass, field

from operators.dead_letters import DeadLetterBudget
from schemas.raw_messages import RawMessage
from schemas.samples import SampleBatch, SampleRuns
from schemas.messages import DeadLetter, DeadLetterLimits, DeadLetterReason

__all__ = ["Decoded", "WholeMessageError", "add", "add_summaries", "dead_letter"]


@dataclass
class Decoded:
    """What one call of :func:`decode_messages` produced.

    Attributes:
        batches: one batch per sensor with accepted samples, in order of the
            sensor's first accepted row; rows in arrival order (message order,
            then row order inside a message).
        dead: dead letters, one per rejected row (or per message when the
            whole message is unreadable), plus one summary per message with
            more bad rows than ``DeadLetterLimits.max_per_message``.
        runs: the same rows as :class:`~schemas.samples.SampleRuns` instead
            of ``batches``, when asked for (``as_runs``).
        counts: rejected rows per reason (reasons with none absent).
        rows: rows seen: accepted rows plus rejected rows.
    """

    batches: list[SampleBatch] = field(default_factory=list)
    runs: list[SampleRuns] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    counts: dict[DeadLetterReason, int] = field(default_factory=dict)
    rows: int = 0

    @property
    def accepted(self) -> int:
        """Number of accepted rows over all batches (or runs)."""
        return sum(len(b) for b in self.batches) + sum(len(r) for r in self.runs)


class WholeMessageError(Exception):
    """The Arrow message as a whole cannot be used: one dead letter for all of it."""

    def __init__(self, reason: DeadLetterReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def dead_letter(message: RawMessage, original: bytes, reason: DeadLetterReason, error: str,
                limits: DeadLetterLimits, row: int | None = None) -> DeadLetter:
    # DeadLetter allows only non-negative partitions and offsets; -1 means
    # "not from Kafka" in a Provenance and None here.
    partition = message.partition if message.partition is not None and message.partition >= 0 else None
    offset = message.offset if message.offset is not None and message.offset >= 0 else None
    return DeadLetter.create(
        original=original, reason=reason, error=error, topic=message.topic,
        partition=partition, offset=offset, row=row, key=message.key,
        max_original_bytes=limits.max_original_bytes,
    )


def add(out: Decoded, letter: DeadLetter) -> None:
    out.dead.append(letter)
    out.counts[letter.reason] = out.counts.get(letter.reason, 0) + 1
    out.rows += 1


def add_summaries(out: Decoded, budget: DeadLetterBudget) -> None:
    # A summary stands for many rows: they are counted, the record is not a row of its own.
    for letter in budget.summaries():
        out.dead.append(letter)
        for reason, n in (letter.omitted or {}).items():
            out.counts[reason] = out.counts.get(reason, 0) + n
            out.rows += n
