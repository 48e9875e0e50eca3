"""How many dead letters one input message may yield (SPEC section 4).

One Arrow message can hold hundreds of thousands of rows, so without a bound
one bad message becomes hundreds of megabytes of dead letters.  A
:class:`DeadLetterBudget` lives for one call of a step: each message (by its
topic, partition and offset) may yield ``max_per_message`` per-row records;
its further bad rows are only counted, and :meth:`DeadLetterBudget.summaries`
turns those counts into one summary record per message.  Rows without a
source position (generated samples) are never summed up: each is its own
message.

>>> from operators.decode import RawMessage
>>> from schemas.messages import DeadLetterLimits
>>> budget = DeadLetterBudget(DeadLetterLimits(max_per_message=2))
>>> message = RawMessage(b"k", b"...", topic="in", partition=0, offset=7)
>>> [budget.admit(message, "late") for _ in range(5)]
[True, True, False, False, False]
>>> (summary,) = budget.summaries()
>>> summary.omitted, summary.offset
({<DeadLetterReason.LATE: 'late'>: 3}, 7)
"""

from __future__ import annotations

from collections import Counter
from typing import Protocol

from schemas.messages import DeadLetter, DeadLetterLimits, DeadLetterReason

__all__ = ["DeadLetterBudget", "SourceMessage"]


class SourceMessage(Protocol):
    """What a budget needs of an input message (:class:`operators.decode.RawMessage` has it)."""

    key: bytes | None
    value: bytes | None
    topic: str | None
    partition: int | None
    offset: int | None


class DeadLetterBudget:
    """Per-message allowance of per-row dead letters for one step call.

    Args:
        limits: the bounds (``max_per_message``, and ``max_original_bytes``
            for the summaries' copy of the message value).
    """

    def __init__(self, limits: DeadLetterLimits) -> None:
        self.limits = limits
        self._used: dict[tuple[str | None, int, int], int] = {}
        self._over: dict[tuple[str | None, int, int], tuple[SourceMessage, Counter[str]]] = {}

    def admit(self, message: SourceMessage, reason: str) -> bool:
        """True when a per-row record of ``message`` may be written; otherwise the row
        is counted for the message's summary under ``reason``."""
        if message.partition is None or message.offset is None or message.partition < 0 or message.offset < 0:
            return True
        where = (message.topic, int(message.partition), int(message.offset))
        used = self._used.get(where, 0)
        if used < self.limits.max_per_message:
            self._used[where] = used + 1
            return True
        entry = self._over.get(where)
        if entry is None:
            entry = self._over[where] = (message, Counter())
        entry[1][str(reason)] += 1
        return False

    def summaries(self) -> list[DeadLetter]:
        """One record per message that had more bad rows than it may yield records."""
        out = []
        for message, counts in self._over.values():
            total = sum(counts.values())
            listed = ", ".join(f"{reason} {n:,}" for reason, n in counts.most_common())
            out.append(DeadLetter.create(
                original=bytes(message.value or b""),
                reason=counts.most_common(1)[0][0],
                error=(f"{total:,} more bad rows of this message, beyond the {self.limits.max_per_message} "
                       f"written one by one (source.max_dead_letters_per_message): {listed}"),
                topic=message.topic, partition=message.partition, offset=message.offset, key=message.key,
                omitted={DeadLetterReason(r): n for r, n in counts.items()},
                max_original_bytes=self.limits.max_original_bytes,
            ))
        self._over.clear()
        return out

    def omitted(self) -> int:
        """Rows counted for summaries not yet taken."""
        return sum(sum(c.values()) for _, c in self._over.values())
