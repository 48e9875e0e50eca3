"""A relay as a Bytewax source, so that ``python -m bytewax.run flows.kairos`` runs a relay node too.

The copy needs no dataflow (see :mod:`connectors.kafka.relay`): the source
has one partition, whose every poll is one round of the relay, and it emits
nothing.  Its resume state is None: where a restart resumes is the relay's
committed group offsets, whatever Bytewax's recovery flags say.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from connectors.kafka.relay import Relay

__all__ = ["RelaySource"]

#: After a round that read nothing, the next one this much later.
IDLE_ROUND = timedelta(milliseconds=20)


class _RelayRounds(StatefulSourcePartition[Any, None]):
    """The relay's rounds, never waiting inside a poll: the worker stays free to notice a stop."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self._awake: datetime | None = None

    def next_batch(self) -> list[Any]:
        read = self.relay.step(timeout=0)
        self._awake = None if read else datetime.now(timezone.utc) + IDLE_ROUND
        return []

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> None:
        return None

    def close(self) -> None:
        self.relay.close()


class RelaySource(FixedPartitionedSource[Any, None]):
    """One partition, ``relay``, that runs the relay ``make()`` builds (started on the worker that owns it).

    Args:
        make: builds the (not started) relay.
        timeout: seconds to wait for each cluster to answer at start.
    """

    def __init__(self, make: Callable[[], Relay], timeout: float = 10.0) -> None:
        self.make = make
        self.timeout = timeout

    def list_parts(self) -> list[str]:
        return ["relay"]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _RelayRounds:
        relay = self.make()
        relay.start(self.timeout)
        return _RelayRounds(relay)
