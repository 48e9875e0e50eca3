"""A graceful stop of a flow's input: :class:`StopSignal` and the source wrapper it ends.

The flow that owns the signal wraps its source in :class:`StoppableSource`;
each partition then ends its input once :meth:`StopSignal.request` is called
(``becomingone run`` on Ctrl-C, ``python -m bytewax.run`` on SIGTERM), and
the dataflow drains as at end of input.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from connectors.health import flow_health

__all__ = ["StopSignal", "StoppableSource"]


class StopSignal:
    """Asks the sources of one flow to end their input now."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def request(self) -> None:
        """Make every source wrapped with this signal end its input now (graceful stop).

        The dataflow then drains: what was read is integrated, archived and
        published, and the archive files are closed; nothing accepted is lost.
        A flow that can be resumed (Bytewax recovery) keeps the grid points that
        are not final yet in its snapshot; otherwise they are decided as at end
        of input.
        """
        from connectors.kafka.health import set_draining  # here: a flow without Kafka never loads it

        self._event.set()
        set_draining(True)  # output for an unreachable Kafka cluster no longer holds the stop (process-wide)

    def requested(self) -> bool:
        """True once :meth:`request` was called (and not cleared since)."""
        return self._event.is_set()

    def clear(self) -> None:
        """Let the sources read again, and Kafka output wait for the cluster again (a new run in this process)."""
        from connectors.kafka.health import set_draining

        self._event.clear()
        set_draining(False)


class _Stoppable(StatefulSourcePartition[Any, Any]):
    """Wraps a source partition so that its :class:`StopSignal` ends it."""

    def __init__(self, inner: StatefulSourcePartition[Any, Any], stop: StopSignal) -> None:
        self.inner = inner
        self._stop = stop

    def next_batch(self) -> Iterable[Any]:
        if self._stop.requested():
            raise StopIteration
        return self.inner.next_batch()

    def next_awake(self):
        return self.inner.next_awake()

    def snapshot(self) -> Any:
        return self.inner.snapshot()

    def close(self) -> None:
        self.inner.close()


class StoppableSource(FixedPartitionedSource[Any, Any]):
    """``source`` (its partitions, items and resume states unchanged), ended by ``stop``."""

    def __init__(self, source: FixedPartitionedSource[Any, Any], stop: StopSignal) -> None:
        self.source = source
        self.stop = stop

    def list_parts(self) -> list[str]:
        return self.source.list_parts()

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _Stoppable:
        part = _Stoppable(self.source.build_part(step_id, for_part, resume_state), self.stop)
        flow_health().partition_built()  # readiness: this process has input (connectors.health)
        return part
