"""What the decoder reads: one input message (:class:`RawMessage`), and an Arrow table handed over in
process as a message value (:class:`TableValue`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa

from schemas.messages import CONTENT_TYPE_HEADER

__all__ = ["RawMessage", "TableValue"]


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One input message as the Kafka source delivers it.

    Attributes:
        key: message key (the sensor id by convention; not used for decoding).
        value: message value, or None for a tombstone.
        headers: Kafka headers as (name, value) pairs, or None.
        topic: source topic (or file path for a file source).
        partition: source partition, or None when not from Kafka.
        offset: source offset (or row index in a file), or None.
    """

    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | str | None]] | None = None
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None

    @property
    def content_type(self) -> str | None:
        """The media type of the ``content-type`` header, lower case, without
        parameters (``; charset=...``); None when there is no such header.
        Header names are case-insensitive; the last such header wins."""
        found: str | None = None
        for name, value in self.headers or ():
            if name.lower() != CONTENT_TYPE_HEADER:
                continue
            text = value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else (value or "")
            found = text.split(";", 1)[0].strip().lower() or None
        return found


class TableValue:
    """An Arrow table handed over in process as a message value (a file source's chunk), so it is not
    written to an IPC stream only to be read back.  It behaves as the stream's bytes where bytes are
    needed (a dead letter's original: ``bytes()``; the size limit: ``len()``, its buffers' size)."""

    __slots__ = ("table",)

    def __init__(self, table: pa.Table) -> None:
        self.table = table

    def __len__(self) -> int:
        return int(self.table.nbytes)

    def __bytes__(self) -> bytes:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, self.table.schema) as writer:
            writer.write_table(self.table)
        return sink.getvalue().to_pybytes()
