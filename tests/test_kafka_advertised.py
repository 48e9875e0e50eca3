"""The broker addresses a Kafka cluster advertises, rewritten on hand-built frames of every version relayed.

Layouts from the Apache Kafka protocol guide (kafka.apache.org/protocol) and
the message schemas (MetadataResponse.json, FindCoordinatorResponse.json,
ApiVersionsResponse.json).
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.kafka.advertised import FrameError, RequestHeader, request_header, rewrite_response

FRONT = {1: ("127.0.0.1", 9093), 2: ("127.0.0.1", 9094)}
TOPICS = b"\x00\x00\x00\x01<the topics, copied verbatim>"


def _string(value: str | None) -> bytes:
    if value is None:
        return struct.pack(">h", -1)
    raw = value.encode()
    return struct.pack(">h", len(raw)) + raw


def metadata(version: int, brokers: list[tuple[int, str, int, str | None]], correlation: int = 5) -> bytes:
    """A Metadata v0-v8 response: header, [throttle], brokers, then :data:`TOPICS`."""
    out = struct.pack(">i", correlation) + (struct.pack(">i", 25) if version >= 3 else b"")
    out += struct.pack(">i", len(brokers))
    for node, host, port, rack in brokers:
        out += struct.pack(">i", node) + _string(host) + struct.pack(">i", port)
        out += _string(rack) if version >= 1 else b""
    return out + TOPICS


def find_coordinator(version: int, node: int, host: str, port: int, error: int = 0, correlation: int = 9) -> bytes:
    out = struct.pack(">i", correlation)
    if version >= 1:
        out += struct.pack(">ih", 0, error) + _string(None if error == 0 else "not yet")
    else:
        out += struct.pack(">h", error)
    return out + struct.pack(">i", node) + _string(host) + struct.pack(">i", port)


def api_versions(version: int, entries: list[tuple[int, int, int]], error: int = 0, correlation: int = 1) -> bytes:
    """An ApiVersions response; v3 (flexible) with a tagged field on the first entry and at the end."""
    out = struct.pack(">ih", correlation, error)
    if version >= 3:
        out += bytes([len(entries) + 1])
        for i, entry in enumerate(entries):
            out += struct.pack(">hhh", *entry) + (b"\x01\x00\x02ab" if i == 0 else b"\x00")
        return out + struct.pack(">i", 0) + b"\x01\x03\x01z"
    out += struct.pack(">i", len(entries)) + b"".join(struct.pack(">hhh", *e) for e in entries)
    return out + (struct.pack(">i", 0) if version >= 1 else b"")


@pytest.mark.parametrize("version", range(9))
def test_metadata_brokers_become_the_front_listeners_and_the_rest_is_copied(version):
    plain = metadata(version, [(1, "127.0.0.1", 40001, None), (2, "broker-two.local", 40002, "rack-b")])
    out = rewrite_response(plain, RequestHeader(3, version, 5), FRONT)
    assert out == metadata(version, [(1, "127.0.0.1", 9093, None), (2, "127.0.0.1", 9094, "rack-b")])
    assert out.endswith(TOPICS)


@pytest.mark.parametrize("version", range(3))
def test_find_coordinator_becomes_the_front_listener(version):
    plain = find_coordinator(version, 2, "127.0.0.1", 40002)
    out = rewrite_response(plain, RequestHeader(10, version, 9), FRONT)
    assert out == find_coordinator(version, 2, "127.0.0.1", 9094)


@pytest.mark.parametrize("version", range(3))
def test_find_coordinator_without_a_coordinator_is_left_alone(version):
    plain = find_coordinator(version, -1, "", -1, error=15)  # COORDINATOR_NOT_AVAILABLE
    assert rewrite_response(plain, RequestHeader(10, version, 9), FRONT) == plain


@pytest.mark.parametrize("version", range(4))
def test_api_versions_offer_only_what_the_front_can_rewrite(version):
    offered = [(0, 0, 10), (1, 0, 16), (3, 0, 13), (10, 0, 3), (18, 0, 3), (19, 0, 7), (60, 0, 1), (78, 1, 1)]
    out = rewrite_response(api_versions(version, offered), RequestHeader(18, version, 1), FRONT)
    # Produce <= 9, Fetch <= 15, Metadata <= 8, FindCoordinator <= 2; DescribeCluster and ShareFetch gone.
    assert out == api_versions(version, [(0, 0, 9), (1, 0, 15), (3, 0, 8), (10, 0, 2), (18, 0, 3), (19, 0, 7)])


def test_an_api_versions_error_is_passed_on_as_it_is():
    plain = api_versions(0, [(18, 0, 2)], error=35)  # UNSUPPORTED_VERSION, answered in v0 to a v3 request
    assert rewrite_response(plain, RequestHeader(18, 3, 1), FRONT) == plain


def test_other_responses_are_copied_verbatim():
    frame = struct.pack(">i", 4) + b"any produce response"
    assert rewrite_response(frame, RequestHeader(0, 9, 4), FRONT) == frame


@pytest.mark.parametrize("key, version", [(3, 0), (3, 8), (10, 2), (0, 9), (1, 15), (18, 3), (19, 7)])
def test_requests_the_front_can_relay(key, version):
    frame = struct.pack(">hhi", key, version, 77) + b"\x00\x04test"
    assert request_header(frame) == RequestHeader(key, version, 77)


@pytest.mark.parametrize("key, version", [(3, 9), (3, 12), (10, 3), (0, 10), (1, 16), (60, 0), (78, 1)])
def test_requests_that_could_be_answered_with_plaintext_addresses_are_refused(key, version):
    with pytest.raises(FrameError, match=f"api key {key} v{version}"):
        request_header(struct.pack(">hhi", key, version, 77))


def test_a_request_shorter_than_its_header_is_refused():
    with pytest.raises(FrameError, match="shorter than a request header"):
        request_header(b"\x00\x03\x00")


def test_a_broker_the_front_does_not_know_is_refused():
    with pytest.raises(FrameError, match="broker 7"):
        rewrite_response(metadata(1, [(7, "127.0.0.1", 40007, None)]), RequestHeader(3, 1, 5), FRONT)


def test_a_response_to_another_request_is_refused():
    with pytest.raises(FrameError, match="correlation id 5"):
        rewrite_response(metadata(1, []), RequestHeader(3, 1, 6), FRONT)


@pytest.mark.parametrize("version", [0, 1, 3, 8])
def test_every_truncated_broker_list_is_refused(version):
    frame = metadata(version, [(1, "127.0.0.1", 40001, "rack-a"), (2, "127.0.0.1", 40002, None)])
    for end in range(4, len(frame) - len(TOPICS)):
        with pytest.raises(FrameError):
            rewrite_response(frame[:end], RequestHeader(3, version, 5), FRONT)


def test_a_negative_host_length_is_refused():
    frame = struct.pack(">iiih", 5, 1, 1, -5) + struct.pack(">i", 40001)
    with pytest.raises(FrameError):
        rewrite_response(frame, RequestHeader(3, 0, 5), FRONT)


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=64), request=st.sampled_from(
    [RequestHeader(3, v, 5) for v in range(9)] + [RequestHeader(10, v, 5) for v in range(3)]
    + [RequestHeader(18, v, 5) for v in range(4)]))
def test_any_bytes_are_rewritten_or_refused_never_a_crash(body, request):
    try:
        out = rewrite_response(struct.pack(">i", 5) + body, request, FRONT)
    except FrameError:
        return
    assert out[:4] == struct.pack(">i", 5)
