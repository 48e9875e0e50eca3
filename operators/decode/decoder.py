"""One call of the decode step: the messages of one poll -> per-sensor batches (or runs) and dead letters."""

from __future__ import annotations

import time
from collections.abc import Iterable

from operators.dead_letters import DeadLetterBudget
from operators.decode.arrow import arrow_part, check_decoded_size
from operators.decode.grouping import group_by_sensor
from operators.decode.json_rows import json_columns_part, json_part
from operators.decode.output import Decoded, WholeMessageError, add, add_summaries, dead_letter
from operators.decode.parts import Part
from schemas.raw_messages import RawMessage
from operators.json_columns import json_columns
from schemas.messages import (
    ARROW_STREAM_CONTENT_TYPE,
    JSON_CONTENT_TYPE,
    DeadLetterLimits,
    DeadLetterReason,
    InvalidSample,
    parse_sample,
)

__all__ = ["decode_messages"]


def decode_messages(
    messages: Iterable[RawMessage], *, max_message_bytes: int | None = None, ingested: float | None = None,
    limits: DeadLetterLimits | None = None, as_runs: bool = False,
) -> Decoded:
    """Decode and validate raw messages into per-sensor batches and dead letters.

    Args:
        messages: the messages of one poll, in arrival order.
        max_message_bytes: values longer than this, or Arrow streams that
            decompress to more than this, are ``too_large`` (None: no limit).
        ingested: wall-clock time (epoch seconds) stamped on the batches as
            their ingest time; None: now.
        limits: bounds on the dead letters (default :class:`DeadLetterLimits`()):
            their copy of the original bytes, and per-row records per message
            (the message's further bad rows go into one summary record).
        as_runs: hand the accepted rows on as :class:`SampleRuns` (one block per channel count,
            one run per sensor, no object per sensor) in ``runs`` instead of ``batches``.

    Returns:
        The batches (one per sensor) or runs, the dead letters and the rejected rows
        per reason.  Never raises for bad input: every row ends up accepted or
        counted as rejected (``accepted + sum(counts.values()) == rows``).
    """
    out = Decoded()
    budget = DeadLetterBudget(limits or DeadLetterLimits())
    parts: list[Part] = []
    json_messages: list[RawMessage] = []

    def close_json_run() -> None:
        # Consecutive JSON messages form one part, so parts (and dead letters) stay in arrival order.
        if not json_messages:
            return
        columns = json_columns([bytes(m.value) for m in json_messages]) if len(json_messages) > 1 else None
        if columns is not None:  # every message a plain valid sample: read as columns in one parse
            parts.append(json_columns_part(list(json_messages), columns))
        else:
            messages, samples = [], []
            for message in json_messages:
                try:
                    samples.append(parse_sample(message.value))
                except InvalidSample as exc:
                    add(out, dead_letter(message, message.value, exc.reason, exc.detail, budget.limits))
                    continue
                messages.append(message)
            # One part per stretch of one kind: a part is all phase samples or all raw ones.
            start = 0
            for i in range(1, len(samples) + 1):
                if i == len(samples) or samples[i].raw != samples[start].raw:
                    parts.append(json_part(messages[start:i], samples[start:i]))
                    start = i
        json_messages.clear()

    for message in messages:
        value = message.value
        if value is None:
            close_json_run()
            add(out, dead_letter(message, b"", DeadLetterReason.MALFORMED, "message has no value", budget.limits))
            continue
        size = len(value) if not isinstance(value, memoryview) else value.nbytes
        if max_message_bytes is not None and size > max_message_bytes:
            close_json_run()
            add(out, dead_letter(message, value, DeadLetterReason.TOO_LARGE, f"{size} bytes, limit {max_message_bytes}",
                                   budget.limits))
            continue
        content_type = message.content_type
        if content_type is None or content_type == JSON_CONTENT_TYPE:
            json_messages.append(message)
        elif content_type == ARROW_STREAM_CONTENT_TYPE:
            close_json_run()
            try:
                if max_message_bytes is not None:
                    check_decoded_size(value, max_message_bytes)
                part, dead = arrow_part(message, value, budget)
            except WholeMessageError as exc:
                add(out, dead_letter(message, value, exc.reason, exc.detail, budget.limits))
                continue
            for letter in dead:
                add(out, letter)
            parts.append(part)
        else:
            close_json_run()
            add(out, dead_letter(message, value, DeadLetterReason.MALFORMED,
                                   f"unsupported content-type {content_type!r}", budget.limits))
    close_json_run()
    if parts:
        group_by_sensor(parts, out, time.time() if ingested is None else ingested, budget, as_runs)
    add_summaries(out, budget)
    return out
