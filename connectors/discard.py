"""A Bytewax sink that keeps nothing: :class:`Discard` (the end of the engine-ceiling flow)."""

from __future__ import annotations

from typing import Any

from bytewax.outputs import DynamicSink, StatelessSinkPartition

__all__ = ["Discard"]


class _Nothing(StatelessSinkPartition[Any]):
    def write_batch(self, items: list[Any]) -> None:
        pass


class Discard(DynamicSink[Any]):
    """Drops every item."""

    def build(self, step_id: str, worker_index: int, worker_count: int) -> StatelessSinkPartition[Any]:
        return _Nothing()
