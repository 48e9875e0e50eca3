"""Dead letters as JSON lines when there is no Kafka: the Bytewax sink :class:`DeadLetterFile`."""

from __future__ import annotations

from pathlib import Path

from bytewax.outputs import DynamicSink, StatelessSinkPartition

__all__ = ["DeadLetterFile"]


class _DeadLetterFilePartition(StatelessSinkPartition[bytes]):
    def __init__(self, path: Path) -> None:
        self._path = path
        self._file = None  # opened on the first dead letter: a clean run leaves no file

    def write_batch(self, items: list[bytes]) -> None:
        if self._file is None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self._path.open("ab")
        self._file.write(b"".join(item + b"\n" for item in items))
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class DeadLetterFile(DynamicSink[bytes]):
    """Dead letters as JSON lines when there is no Kafka: ``<root>/dead-letters/worker-N.jsonl``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _DeadLetterFilePartition:
        return _DeadLetterFilePartition(self.root / "dead-letters" / f"worker-{worker_index}.jsonl")
