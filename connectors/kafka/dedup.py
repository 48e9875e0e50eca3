"""Dropping repeats of a message: the SHA-256 of (topic, key, value) over a bounded recent window.

Every message this project publishes is deterministic (SPEC section 8): a
repeat, from an at-least-once producer or from a relay reading again after a
restart, has the same key and value bytes as the first copy.  So a repeat is
recognised by its digest alone, without parsing the value.

The window is kept per target partition: a message always goes to the same
partition (the relay partitions by key), so its repeats meet its first copy
there, and a partition's window can be filled again from the newest
messages of that partition (:meth:`DedupWindow.remember`) when a relay
starts, since what the target holds is the truth about what was delivered.
"""

from __future__ import annotations

import hashlib
import struct
from collections import deque
from dataclasses import dataclass, field

__all__ = ["DedupWindow", "message_digest"]


def message_digest(topic: str, key: bytes | None, value: bytes | None) -> bytes:
    """SHA-256 of the topic, key and value, each length-prefixed so that no two triples share an encoding
    (a null key or value differs from an empty one).

    >>> message_digest("m", b"c1", b"{}") == message_digest("m", b"c1", b"{}")
    True
    >>> message_digest("m", b"c1", b"{}") == message_digest("m", b"c1{", b"}")
    False
    >>> message_digest("m", None, b"") == message_digest("m", b"", b"")
    False
    """
    h = hashlib.sha256()
    for part in (topic.encode("utf-8"), key, value):
        if part is None:
            h.update(b"\xff\xff\xff\xff")
        else:
            h.update(struct.pack(">I", len(part)))
            h.update(part)
    return h.digest()


@dataclass
class _Recent:
    """The digests of one partition's most recent messages, oldest first, each once."""

    order: deque[bytes] = field(default_factory=deque)
    known: set[bytes] = field(default_factory=set)


class DedupWindow:
    """The last ``size`` distinct message digests of each (topic, partition).

    ``size`` 0 remembers nothing: every message is new.

    >>> window = DedupWindow(2)
    >>> [window.admit("m", 0, d) for d in (b"a", b"b", b"a", b"c", b"a")]
    [True, True, False, True, True]
    >>> window.admit("m", 1, b"a")        # another partition has a window of its own
    True
    """

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError(f"size must be 0 or more, got {size}")
        self.size = size
        self._parts: dict[tuple[str, int], _Recent] = {}

    def admit(self, topic: str, partition: int, digest: bytes) -> bool:
        """True for a message not seen within the window (now remembered); False for a repeat."""
        if not self.size:
            return True
        recent = self._parts.get((topic, partition))
        if recent is None:
            recent = self._parts[(topic, partition)] = _Recent()
        if digest in recent.known:
            return False
        recent.order.append(digest)
        recent.known.add(digest)
        if len(recent.order) > self.size:
            recent.known.discard(recent.order.popleft())
        return True

    def remember(self, topic: str, partition: int, digest: bytes) -> None:
        """Count a message already on the target (read back from it) as seen."""
        self.admit(topic, partition, digest)

    def __len__(self) -> int:
        """Digests held, over all partitions."""
        return sum(len(r.order) for r in self._parts.values())
