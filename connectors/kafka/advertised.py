"""Rewriting the broker addresses a Kafka cluster advertises, frame by frame, for a relay in front of it.

A Kafka client bootstraps from one address and then connects to the
addresses the cluster advertises: the broker list of Metadata responses
(api key 3) and the coordinator of FindCoordinator responses (api key 10).
A relay that puts other addresses (e.g. TLS listeners) before the brokers
must therefore replace those addresses in the responses it relays, or the
clients leave it after the first request.

Wire format (Apache Kafka protocol guide, https://kafka.apache.org/protocol,
and the message schemas in clients/src/main/resources/common/message/):
every message is an int32 size followed by that many bytes.  A request
starts with int16 api_key, int16 api_version, int32 correlation_id (request
headers v0 to v2 alike); a response starts with the int32 correlation_id
(response header v0; flexible versions add tagged fields after it, except
ApiVersions, whose response header is always v0).  Strings are an int16
length and UTF-8 bytes (length -1: null), arrays an int32 count.

Only non-flexible versions have this simple layout, so the rewriter first
narrows what the client may ask for in the ApiVersions response (api key
18, which the client sends first on every connection):

- Metadata at most v8 and FindCoordinator at most v2 (their newest
  non-flexible versions), whose addresses are rewritten here;
- Produce at most v9 and Fetch at most v15: from Produce v10 and Fetch v16 a
  response may carry broker addresses in tagged fields (KIP-951);
- DescribeCluster (60), ShareFetch (78) and ShareAcknowledge (79) are left
  out: every version of them can carry addresses.

A request above those versions is refused (:class:`FrameError`) rather than
relayed, so no address can slip through.  Everything else is copied
verbatim.

A Metadata v0 response (correlation id 7) naming broker 1 at 127.0.0.1:40001:

>>> plain = struct.pack(">iiih", 7, 1, 1, 9) + b"127.0.0.1" + struct.pack(">ii", 40001, 0)
>>> out = rewrite_response(plain, RequestHeader(METADATA, 0, 7), {1: ("127.0.0.1", 9093)})
>>> out == plain.replace(struct.pack(">i", 40001), struct.pack(">i", 9093))
True
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["MAX_FRAME", "FrameError", "RequestHeader", "request_header", "rewrite_response", "TRACKED_APIS"]

#: Largest frame relayed in either direction, bytes (Kafka's own default
#: socket.request.max.bytes is 100 MiB).
MAX_FRAME = 100 * 2**20

PRODUCE, FETCH, METADATA, FIND_COORDINATOR, API_VERSIONS = 0, 1, 3, 10, 18

#: Newest version of an API that the relay lets clients use.
VERSION_CAPS: dict[int, int] = {PRODUCE: 9, FETCH: 15, METADATA: 8, FIND_COORDINATOR: 2}

#: APIs left out of the ApiVersions response and refused in requests.
WITHHELD_APIS = frozenset({60, 78, 79})

#: APIs whose responses are rewritten: their requests are remembered by correlation id.
TRACKED_APIS = frozenset({API_VERSIONS, METADATA, FIND_COORDINATOR})

_I16, _I32 = struct.Struct(">h"), struct.Struct(">i")


class FrameError(ValueError):
    """A frame that cannot be relayed: malformed, too large, or asking for what the relay refuses."""


@dataclass(frozen=True)
class RequestHeader:
    """What the relay remembers of a request to read its response."""

    api_key: int
    api_version: int
    correlation_id: int


def request_header(frame: bytes) -> RequestHeader:
    """The header of a request frame (without its size prefix).

    Raises:
        FrameError: the frame is shorter than a header, or asks for an API or
            version the relay refuses (see the module docstring).
    """
    if len(frame) < 8:
        raise FrameError(f"request of {len(frame)} bytes is shorter than a request header (8)")
    key, version, correlation = struct.unpack_from(">hhi", frame)
    if key in WITHHELD_APIS or version > VERSION_CAPS.get(key, version):
        raise FrameError(f"request for api key {key} v{version}, which this relay does not offer")
    return RequestHeader(key, version, correlation)


def rewrite_response(frame: bytes, request: RequestHeader, addresses: Mapping[int, tuple[str, int]]) -> bytes:
    """The response frame (without its size prefix) as the client must see it.

    Args:
        frame: the response to ``request``, starting with its correlation id.
        request: the header of the request it answers.
        addresses: the (host, port) to advertise for each broker node id.

    Raises:
        FrameError: the response is malformed or names a broker not in ``addresses``.
    """
    try:
        return _rewrite(frame, request, addresses)
    except (FrameError, struct.error, IndexError, UnicodeDecodeError) as exc:
        raise FrameError(f"bad response to api key {request.api_key} v{request.api_version}: {exc}") from None


def _rewrite(frame: bytes, request: RequestHeader, addresses: Mapping[int, tuple[str, int]]) -> bytes:
    reader = _Reader(frame)
    correlation = reader.int32()
    if correlation != request.correlation_id:
        raise FrameError(f"response correlation id {correlation} does not match the request's {request.correlation_id}")
    if request.api_key == API_VERSIONS:
        return _api_versions(reader, request.api_version)
    if request.api_key == METADATA:
        return _metadata(reader, request.api_version, addresses)
    if request.api_key == FIND_COORDINATOR:
        return _find_coordinator(reader, request.api_version, addresses)
    return frame


class _Reader:
    """Big-endian fields read from a frame, front to back; :meth:`taken` is the raw bytes since a mark."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise FrameError(f"field of {n} bytes at offset {self.pos} runs past the frame's {len(self.data)}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def int16(self) -> int:
        return _I16.unpack(self.take(2))[0]

    def int32(self) -> int:
        return _I32.unpack(self.take(4))[0]

    def string(self, nullable: bool = False) -> str | None:
        n = self.int16()
        if n == -1 and nullable:
            return None
        return self.take(n).decode()

    def uvarint(self) -> int:
        value = shift = 0
        while True:
            byte = self.take(1)[0]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift > 28:
                raise FrameError("unsigned varint longer than 5 bytes")

    def tagged_fields(self) -> bytes:
        start = self.pos
        for _ in range(self.uvarint()):
            self.uvarint()
            self.take(self.uvarint())
        return self.data[start:self.pos]

    def rest(self) -> bytes:
        return self.take(len(self.data) - self.pos)


def _uvarint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(value: str) -> bytes:
    raw = value.encode()
    return _I16.pack(len(raw)) + raw


def _api_versions(reader: _Reader, version: int) -> bytes:
    """ApiVersions v0-v3: the supported versions, narrowed; an error response is left as it is.

    v0: error_code int16, [api_key int16, min int16, max int16];
    v1-v2: + throttle_time_ms int32; v3 (flexible): the array compact
    (uvarint count + 1), a tag buffer per entry and one at the end.
    """
    head = reader.data[:reader.pos]
    error = reader.int16()
    if error != 0:  # e.g. UNSUPPORTED_VERSION, answered in v0 whatever was asked
        return reader.data
    flexible = version >= 3
    count = reader.uvarint() - 1 if flexible else reader.int32()
    if count < 0:
        raise FrameError("ApiVersions response without an api_keys array")
    entries = []
    for _ in range(count):
        key, low, high = reader.int16(), reader.int16(), reader.int16()
        tags = reader.tagged_fields() if flexible else b""
        if key in WITHHELD_APIS:
            continue
        high = min(high, VERSION_CAPS.get(key, high))
        if high < low:
            continue
        entries.append(struct.pack(">hhh", key, low, high) + tags)
    size = _uvarint(len(entries) + 1) if flexible else _I32.pack(len(entries))
    return head + _I16.pack(error) + size + b"".join(entries) + reader.rest()


def _metadata(reader: _Reader, version: int, addresses: Mapping[int, tuple[str, int]]) -> bytes:
    """Metadata v0-v8: throttle_time_ms int32 (v3+), then
    [node_id int32, host string, port int32, rack nullable string (v1+)]."""
    head = reader.take(4) if version >= 3 else b""
    count = reader.int32()
    if count < 0:
        raise FrameError("Metadata response with a null broker array")
    brokers = []
    for _ in range(count):
        node = reader.int32()
        reader.string()
        reader.int32()
        mark = reader.pos
        if version >= 1:
            reader.string(nullable=True)
        host, port = _address(node, addresses)
        brokers.append(_I32.pack(node) + _string(host) + _I32.pack(port) + reader.data[mark:reader.pos])
    return reader.data[:4] + head + _I32.pack(count) + b"".join(brokers) + reader.rest()


def _find_coordinator(reader: _Reader, version: int, addresses: Mapping[int, tuple[str, int]]) -> bytes:
    """FindCoordinator v0: error_code int16, node_id int32, host string, port int32;
    v1-v2: throttle_time_ms int32, error_code int16, error_message nullable string, then the same."""
    start = reader.pos
    if version >= 1:
        reader.int32()
    error = reader.int16()
    if version >= 1:
        reader.string(nullable=True)
    head = reader.data[start:reader.pos]
    node = reader.int32()
    reader.string()
    reader.int32()
    if error != 0 and node not in addresses:  # no coordinator (node -1): nothing to advertise
        return reader.data
    host, port = _address(node, addresses)
    return reader.data[:4] + head + _I32.pack(node) + _string(host) + _I32.pack(port) + reader.rest()


def _address(node: int, addresses: Mapping[int, tuple[str, int]]) -> tuple[str, int]:
    try:
        return addresses[node]
    except KeyError:
        raise FrameError(f"the cluster advertises broker {node}, which this relay does not front") from None
