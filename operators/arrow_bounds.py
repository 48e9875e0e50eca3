"""The decoded size of an Arrow IPC stream, read before anything is decompressed.

An IPC stream may compress its buffers (LZ4 frame or Zstandard, Arrow format
1.0+): a 1.7 KB message can hold hundreds of thousands of rows, and a few
megabytes can decompress to gigabytes.  ``source.max_message_bytes`` bounds the
decoded size as well as the size on the wire (SPEC section 4), so the size
must be known before pyarrow decompresses anything.  It is in the stream
itself: each record batch's metadata lists its body buffers, and each
compressed buffer starts with its uncompressed length (an int64, -1 for a
buffer left uncompressed).  This module reads exactly that, with a bounds
check on every read of the attacker-controlled metadata.

Reference: the Arrow columnar format, "Serialization and Interprocess
Communication (IPC)" and ``format/Message.fbs`` / ``format/Schema.fbs``
(flatbuffers: little-endian, tables reached through vtables).

>>> import pyarrow as pa
>>> table = pa.table({"x": [0.0] * 1000})
>>> sink = pa.BufferOutputStream()
>>> with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as w:
...     w.write_table(table)
>>> value = sink.getvalue().to_pybytes()
>>> len(value) < 1000, decoded_size(value)
(True, 8000)
"""

from __future__ import annotations

import struct

import pyarrow as pa

__all__ = ["decoded_size"]

# MessageHeader union members (format/Message.fbs).
_DICTIONARY_BATCH, _RECORD_BATCH = 2, 3


class _Flatbuffer:
    """Bounds-checked reads of one flatbuffer (the IPC message metadata)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def _read(self, fmt: str, at: int) -> int:
        size = struct.calcsize(fmt)
        if at < 0 or at + size > len(self.data):
            raise ValueError("IPC metadata points outside itself")
        return struct.unpack_from(fmt, self.data, at)[0]

    def root(self) -> int:
        return self._read("<I", 0)

    def field(self, table: int, index: int) -> int | None:
        """Absolute position of field ``index`` of the table at ``table``, or None when absent."""
        vtable = table - self._read("<i", table)
        vtable_size = self._read("<H", vtable)
        slot = 4 + 2 * index
        if slot + 2 > vtable_size:
            return None
        offset = self._read("<H", vtable + slot)
        return table + offset if offset else None

    def scalar(self, table: int, index: int, fmt: str, default: int) -> int:
        at = self.field(table, index)
        return default if at is None else self._read(fmt, at)

    def reference(self, table: int, index: int) -> int | None:
        """Position of the table or vector that field ``index`` refers to."""
        at = self.field(table, index)
        return None if at is None else at + self._read("<I", at)

    def buffers(self, batch: int) -> list[tuple[int, int]]:
        """(offset, length) of each body buffer of the RecordBatch table at ``batch``."""
        vector = self.reference(batch, 2)
        if vector is None:
            return []
        count = self._read("<I", vector)
        if vector + 4 + 16 * count > len(self.data):
            raise ValueError("IPC metadata lists more buffers than it holds")
        return [(self._read("<q", vector + 4 + 16 * i), self._read("<q", vector + 12 + 16 * i)) for i in range(count)]


def _batch_size(meta: _Flatbuffer, batch: int, body: pa.Buffer | None) -> int:
    buffers = meta.buffers(batch)
    compressed = meta.field(batch, 3) is not None
    if not compressed:
        return sum(max(length, 0) for _, length in buffers)
    raw = memoryview(body) if body is not None else memoryview(b"")
    total = 0
    for offset, length in buffers:
        if length <= 0:
            continue
        if offset < 0 or length < 8 or offset + 8 > len(raw):
            raise ValueError("a compressed IPC buffer lies outside its message body")
        (uncompressed,) = struct.unpack_from("<q", raw, offset)
        total += length - 8 if uncompressed == -1 else max(uncompressed, 0)
    return total


def decoded_size(value: bytes | bytearray | memoryview) -> int:
    """Bytes the record and dictionary batches of an IPC stream take once decompressed.

    Reads only metadata and the 8-byte length prefixes of compressed buffers;
    decompresses nothing.

    Raises:
        ValueError: the value is not a readable IPC stream.
    """
    try:
        reader = pa.ipc.MessageReader.open_stream(pa.py_buffer(value))
        total = 0
        while True:
            try:
                message = reader.read_next_message()
            except StopIteration:
                return total
            if message.type not in ("record batch", "dictionary batch"):
                continue
            meta = _Flatbuffer(message.metadata.to_pybytes())
            header = meta.reference(meta.root(), 2)
            if header is None:
                raise ValueError("IPC message without a header")
            kind = meta.scalar(meta.root(), 1, "<B", 0)
            if kind == _DICTIONARY_BATCH:
                header = meta.reference(header, 1)  # DictionaryBatch.data: a RecordBatch
                if header is None:
                    continue
            elif kind != _RECORD_BATCH:
                continue
            total += _batch_size(meta, header, message.body)
    except (pa.ArrowException, OSError, struct.error) as exc:
        raise ValueError(f"not a readable Arrow IPC stream: {exc}") from None
