"""Where a log line comes from: the flow, the Bytewax worker and the dataflow step.

:class:`FlowContext` is a ``logging.Filter`` that stamps every record it sees
with three attributes, ``flow``, ``worker`` and ``step`` (None where unknown),
which the structured format writes as fields:

- ``flow``: ``becomingone.name`` of the flow this process runs (:func:`set_flow`).
- ``worker``: the Bytewax worker index of the thread that logged.  Bytewax's
  workers are threads its Rust runtime names ``timely:work-N`` (N counts the
  workers of this process); the index is ``N`` plus this process's first
  worker (``process id * workers per process`` under ``python -m bytewax.run
  -i``); a process of one worker runs it on its main thread, which counts as
  that worker while it runs a step.  Other threads (the metrics server) and
  the main thread outside the steps have no worker.
- ``step``: the dataflow step whose code is running on this thread: the steps'
  logic, functions and source and sink partitions are wrapped
  (:func:`stepped_logic`, :func:`stepped_call`, :class:`SteppedSource`,
  :func:`stepped_sink`) so that the step id is set while they run.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import (
    DynamicSink,
    FixedPartitionedSink,
    StatefulSinkPartition,
    StatelessSinkPartition,
)

__all__ = ["FlowContext", "SteppedSource", "first_worker", "in_step", "set_flow", "stepped_call", "stepped_logic", "stepped_sink",
           "worker_index"]

_WORKER_THREAD = re.compile(r"timely:work-(\d+)")


class _Where(threading.local):
    """Per thread: the step running, and the thread's worker number (looked up once)."""

    step: str | None = None
    local_worker: int | None = None
    looked_up: bool = False


_where = _Where()
_flow: dict[str, Any] = {"name": None, "first_worker": 0}


def set_flow(name: str | None, first_worker: int = 0) -> None:
    """Name the flow of this process in its log lines; ``first_worker`` = the Bytewax index of its first worker."""
    _flow["name"], _flow["first_worker"] = name, first_worker


def first_worker(argv: list[str]) -> int:
    """The Bytewax index of this process's first worker under ``python -m bytewax.run``:
    process id (``-i``, ``BYTEWAX_PROCESS_ID``, or as Bytewax reads it from ``BYTEWAX_POD_NAME``
    less ``BYTEWAX_STATEFULSET_NAME-``) times workers per process (``-w``).

    >>> first_worker(["flows.kairos", "-w", "2", "-i", "1", "-a", "a:1;b:2"]), first_worker(["flows.kairos"])
    (2, 0)
    """
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-w", "--workers-per-process", type=int, default=os.environ.get("BYTEWAX_WORKERS_PER_PROCESS"))
    parser.add_argument("-i", "--process-id", type=int, default=os.environ.get("BYTEWAX_PROCESS_ID"))
    env = os.environ
    try:
        known, _ = parser.parse_known_args(argv[1:])
        process = known.process_id
        if process is None and "BYTEWAX_POD_NAME" in env and "BYTEWAX_STATEFULSET_NAME" in env:
            process = env["BYTEWAX_POD_NAME"].replace(env["BYTEWAX_STATEFULSET_NAME"] + "-", "")
        process, workers = int(process or 0), int(known.workers_per_process or 1)
    except (SystemExit, ValueError):  # Bytewax's own parser has said what is wrong
        return 0
    return process * workers


def _thread_name() -> str:
    """The operating system's name of this thread (Rust threads name themselves; Python does not see it)."""
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/comm", encoding="utf-8") as f:
            return f.read().strip()
    except OSError:  # not Linux: Bytewax's workers stay unnamed in the log
        return threading.current_thread().name


def worker_index() -> int | None:
    """The Bytewax worker index of this thread, or None when it is no Bytewax worker.

    A process of one worker runs it on the thread that started the flow: a thread
    running a step (:func:`in_step`) that is no ``timely:work-N`` thread is that worker.
    """
    if not _where.looked_up:
        found = _WORKER_THREAD.fullmatch(_thread_name())
        _where.local_worker = int(found.group(1)) if found else None
        _where.looked_up = True
    if _where.local_worker is None:
        return _flow["first_worker"] if _where.step is not None else None
    return _flow["first_worker"] + _where.local_worker


class FlowContext(logging.Filter):
    """Adds ``flow``, ``worker`` and ``step`` to every record (a handler's filter: it lets all through)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.flow = _flow["name"]
        record.worker = worker_index()
        record.step = _where.step
        return True


@contextmanager
def in_step(step: str) -> Iterator[None]:
    """Log lines of this thread name ``step`` until the block ends (nesting restores the outer step)."""
    outer, _where.step = _where.step, step
    try:
        yield
    finally:
        _where.step = outer


def _short(step_id: str) -> str:
    """A step id as the flow names it: Bytewax's ``flow.step`` without the flow."""
    return step_id.split(".", 1)[1] if "." in step_id else step_id


# --------------------------------------------------------------------------
# The wrappers that set the step: one call per batch, never per sample.


def stepped_call(step: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` (a step's function, called once per batch) run :func:`in_step` ``step``."""

    def call(*args: Any) -> Any:
        with in_step(step):
            return fn(*args)

    return call


class _SteppedLogic(StatefulBatchLogic[Any, Any, Any]):
    def __init__(self, step: str, inner: StatefulBatchLogic) -> None:
        self.step, self.inner = step, inner

    def on_batch(self, values: list[Any]) -> tuple[Iterable[Any], bool]:
        with in_step(self.step):
            return self.inner.on_batch(values)

    def on_notify(self) -> tuple[Iterable[Any], bool]:
        with in_step(self.step):
            return self.inner.on_notify()

    def on_eof(self) -> tuple[Iterable[Any], bool]:
        with in_step(self.step):
            return self.inner.on_eof()

    def notify_at(self) -> datetime | None:
        return self.inner.notify_at()

    def snapshot(self) -> Any:
        with in_step(self.step):
            return self.inner.snapshot()


def stepped_logic(step: str, builder: Callable[[Any], StatefulBatchLogic]) -> Callable[[Any], StatefulBatchLogic]:
    """The builder of ``op.stateful_batch(step, ...)`` with its logic's calls run :func:`in_step` ``step``."""

    def build(resume: Any) -> StatefulBatchLogic:
        with in_step(step):
            return _SteppedLogic(step, builder(resume))

    return build


class _SteppedSourcePart(StatefulSourcePartition[Any, Any]):
    def __init__(self, step: str, inner: StatefulSourcePartition) -> None:
        self.step, self.inner = step, inner

    def next_batch(self) -> Iterable[Any]:
        with in_step(self.step):
            return self.inner.next_batch()

    def next_awake(self) -> datetime | None:
        return self.inner.next_awake()

    def snapshot(self) -> Any:
        with in_step(self.step):
            return self.inner.snapshot()

    def close(self) -> None:
        with in_step(self.step):
            self.inner.close()


class SteppedSource(FixedPartitionedSource[Any, Any]):
    """A source of fixed partitions whose partitions log under their step."""

    def __init__(self, inner: FixedPartitionedSource) -> None:
        self.inner = inner

    def list_parts(self) -> list[str]:
        return self.inner.list_parts()

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _SteppedSourcePart:
        step = _short(step_id)
        with in_step(step):
            return _SteppedSourcePart(step, self.inner.build_part(step_id, for_part, resume_state))


class _SteppedStatefulSinkPart(StatefulSinkPartition[Any, Any]):
    def __init__(self, step: str, inner: StatefulSinkPartition) -> None:
        self.step, self.inner = step, inner

    def write_batch(self, values: list[Any]) -> None:
        with in_step(self.step):
            self.inner.write_batch(values)

    def snapshot(self) -> Any:
        with in_step(self.step):
            return self.inner.snapshot()

    def close(self) -> None:
        with in_step(self.step):
            self.inner.close()


class _SteppedStatelessSinkPart(StatelessSinkPartition[Any]):
    def __init__(self, step: str, inner: StatelessSinkPartition) -> None:
        self.step, self.inner = step, inner

    def write_batch(self, items: list[Any]) -> None:
        with in_step(self.step):
            self.inner.write_batch(items)

    def close(self) -> None:
        with in_step(self.step):
            self.inner.close()


class _SteppedFixedSink(FixedPartitionedSink[Any, Any]):
    def __init__(self, inner: FixedPartitionedSink) -> None:
        self.inner = inner

    def list_parts(self) -> list[str]:
        return self.inner.list_parts()

    def part_fn(self, item_key: str) -> int:
        return self.inner.part_fn(item_key)

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _SteppedStatefulSinkPart:
        step = _short(step_id)
        with in_step(step):
            return _SteppedStatefulSinkPart(step, self.inner.build_part(step_id, for_part, resume_state))


class _SteppedDynamicSink(DynamicSink[Any]):
    def __init__(self, inner: DynamicSink) -> None:
        self.inner = inner

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _SteppedStatelessSinkPart:
        step = _short(step_id)
        with in_step(step):
            return _SteppedStatelessSinkPart(step, self.inner.build(step_id, worker_index, worker_count))


def stepped_sink(sink: Any) -> Any:
    """``sink`` (fixed-partitioned or dynamic) with its partitions logging under their step."""
    if isinstance(sink, FixedPartitionedSink):
        return _SteppedFixedSink(sink)
    if isinstance(sink, DynamicSink):
        return _SteppedDynamicSink(sink)
    return sink
