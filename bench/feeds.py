"""The producer side of a consumer run: never more than a lead ahead of the consumer's count, or paced in real time."""

from __future__ import annotations

import time
from typing import Any, Protocol

import numpy as np

from bench.workloads import Chunk, WireMessages


MAX_MESSAGE_BYTES = 8 * 1024 * 1024


# Kafka-level compression of the producer.  The broker holds (and its ~5 MB
# per partition counts) compressed batches: lz4 puts ~2.5 times the Arrow
# samples and ~4 times the JSON samples in the same lead.
COMPRESSION = "lz4"


def new_producer(bootstrap: str, *, linger_ms: int, compression: str) -> Any:
    from confluent_kafka import Producer

    from connectors.kafka import producer_settings

    settings = producer_settings(None, bootstrap=bootstrap, client_id="bench-producer")
    settings.update({"linger.ms": str(linger_ms), "message.max.bytes": str(MAX_MESSAGE_BYTES),
                     "compression.type": compression,
                     "queue.buffering.max.messages": "1000000", "queue.buffering.max.kbytes": "1048576",
                     "delivery.report.only.error": True, "log_level": 4})
    return Producer(settings)


class Feed(Protocol):
    """How the parent sends a workload while the child consumes."""

    finished: bool
    produced_samples: int

    def delivered_samples(self) -> int: ...

    def prime(self) -> None: ...

    def step(self, consumed: int) -> None: ...


class BackpressureFeed:
    """As fast as the consumer allows: never more than ``limit`` samples ahead of its count."""

    def __init__(self, producer: Any, topic: str, messages: WireMessages, limit: int) -> None:
        from schemas.messages import ARROW_STREAM_CONTENT_TYPE, CONTENT_TYPE_HEADER

        self.producer, self.topic, self.messages, self.limit = producer, topic, messages, limit
        self.headers = [(CONTENT_TYPE_HEADER, ARROW_STREAM_CONTENT_TYPE.encode("ascii"))]
        self.next = 0
        self.produced_samples = 0
        self.finished = False
        self.errors: list[str] = []

    def _send(self, chunk: Chunk) -> None:
        from connectors.kafka import produce_waiting

        produce = self.producer.produce
        if chunk.arrow is not None:
            produce_waiting(self.producer, self.topic, value=chunk.arrow, headers=self.headers,
                            partition=chunk.partition, on_delivery=self._on_delivery)
        else:
            p, topic = chunk.partition, self.topic
            for value, key in zip(chunk.json_values or (), chunk.json_keys or ()):
                produce(topic, value, key, p, on_delivery=self._on_delivery)
        self.producer.poll(0)

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self.errors.append(err.str())

    def delivered_samples(self) -> int:
        """Samples on the broker: produced minus those of messages still in the producer's queue
        (exact for JSON, one sample per message; for Arrow a lower bound counting queued messages as full)."""
        queued = len(self.producer)
        if not queued:
            return self.produced_samples
        per_message = max(c.samples // c.messages for c in self.messages.chunks[max(self.next - 1, 0):self.next])
        return max(self.produced_samples - queued * per_message, 0)

    def prime(self) -> None:
        """The initial lead, delivered to the broker before the consumer's clock starts."""
        self.step(0)
        self.producer.flush(60)

    def step(self, consumed: int) -> None:
        chunks = self.messages.chunks
        while self.next < len(chunks) and self.produced_samples + chunks[self.next].samples - consumed <= self.limit:
            self._send(chunks[self.next])
            self.produced_samples += chunks[self.next].samples
            self.next += 1
        if self.next == len(chunks) and not self.finished:
            remaining = self.producer.flush(60)
            if remaining:
                self.errors.append(f"{remaining} message(s) not delivered within 60 s")
            self.finished = True
        else:
            self.producer.poll(0)
        if self.errors:
            raise RuntimeError(f"the producer failed: {self.errors[0]}")


class PacedFeed:
    """In real time: each chunk (one slice of event time per partition) produced when its slice has passed.

    Records the wall-clock time (epoch seconds) just before each chunk's
    ``produce`` call, by partition, for the latency run.
    """

    def __init__(self, producer: Any, topic: str, messages: WireMessages, start_us: int, period_us: int) -> None:
        from schemas.messages import ARROW_STREAM_CONTENT_TYPE, CONTENT_TYPE_HEADER

        self.producer, self.topic, self.messages = producer, topic, messages
        self.headers = [(CONTENT_TYPE_HEADER, ARROW_STREAM_CONTENT_TYPE.encode("ascii"))]
        # A chunk is due when the wall clock has passed its newest sample by one period
        # (event time start_us is wall-clock time wall0).
        self.start_us, self.period_us = start_us, period_us
        self.next = 0
        self.produced_samples = 0
        self.finished = False
        self.wall0 = 0.0
        self.sent_at = np.zeros(len(messages.chunks))
        self.late_s = 0.0             # how far behind its deadline the producer ever was
        self.errors: list[str] = []

    def prime(self) -> None:
        self.wall0 = time.time() + 0.05

    def delivered_samples(self) -> int:
        return self.produced_samples

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self.errors.append(err.str())

    def step(self, consumed: int) -> None:
        chunks = self.messages.chunks
        now = time.time()
        while self.next < len(chunks):
            chunk = chunks[self.next]
            due = self.wall0 + (chunk.t_max_us - self.start_us + self.period_us) * 1e-6
            if due > now:
                break
            self.late_s = max(self.late_s, now - due)
            self.sent_at[self.next] = time.time()
            self.producer.produce(self.topic, value=chunk.arrow, headers=self.headers, partition=chunk.partition,
                                  on_delivery=self._on_delivery)
            self.produced_samples += chunk.samples
            self.next += 1
            now = time.time()
        self.producer.poll(0)
        if self.next == len(chunks) and not self.finished:
            self.producer.flush(60)
            self.finished = True
        if self.errors:
            raise RuntimeError(f"the producer failed: {self.errors[0]}")
