"""Where every ``becomingone ingest`` command sends: the input topic, as keyed Arrow batches by partition.

:func:`open_ingest_output` checks the config's Kafka settings, reaches the
cluster, makes sure the input and dead-letter topics exist and returns an
:class:`IngestOutput`: a :class:`~connectors.kafka.PhaseProducer` in the
Arrow wire format (one message per partition and send, keyed by the sensor
when it holds one), sent at least every :data:`FLUSH_SECONDS`.
:meth:`IngestOutput.close` sends what is held and waits for the delivery
reports.  Setup problems are :class:`IngestSetupFailed` with the exit code
(2: config or settings, 1: the cluster).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from confluent_kafka import Producer

    from connectors.kafka import PhaseProducer
    from connectors.phase_files import PhaseColumns

__all__ = [
    "FLUSH_SECONDS",
    "IngestOutput",
    "IngestSetupFailed",
    "open_ingest_output",
    "report_setup_failure",
    "stop_on_signals",
]

#: Samples received are sent at least this often (seconds).
FLUSH_SECONDS = 0.2
#: Rows per Arrow message at most (a message is also split to fit the broker's message size).
BATCH_ROWS = 65536


class IngestSetupFailed(Exception):
    """The output could not be set up: ``code`` is the command's exit code, the message says why."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class IngestOutput:
    """The producer of an ingest command and where it sends."""

    producer: Producer
    sender: PhaseProducer
    settings: dict
    topic: str
    dlq: str
    last_flush: float = field(default_factory=time.monotonic)

    def send(self, columns: PhaseColumns) -> None:
        """Queue samples; they leave in full batches, or at the next :meth:`flush`."""
        self.sender.send(columns)

    def flush(self, force: bool = False) -> bool:
        """Send the held samples when :data:`FLUSH_SECONDS` have passed since the last flush (or ``force``)."""
        if not force and time.monotonic() - self.last_flush < FLUSH_SECONDS:
            return False
        self.sender.send_held()
        self.producer.poll(0)
        self.last_flush = time.monotonic()
        return True

    def close(self) -> None:
        """Send everything held and wait for every delivery report (failed ones are counted by the sender)."""
        from flows.produce_command import delivery_wait

        self.sender.finish(timeout=delivery_wait(self.settings))
        self.producer.flush(delivery_wait(self.settings))

    def delivery_problem(self) -> str | None:
        """What went wrong delivering, or None when every message was delivered."""
        if not self.sender.failed:
            return None
        return f"{self.sender.failed:,} message(s) not delivered to {self.topic}: {self.sender.first_error}"


def open_ingest_output(config, args: argparse.Namespace) -> IngestOutput:
    """The producer for ``config`` (``args.bootstrap`` overriding its servers), its topics made sure of.

    Raises:
        IngestSetupFailed: code 2 for bad settings, 1 when the cluster or its topics cannot be reached.
    """
    from confluent_kafka import KafkaException, Producer

    from connectors.kafka import (
        KafkaSetupError, KafkaUnreachable, PhaseProducer, TopicSetupError, admin_settings, connect_admin,
        ensure_topics, producer_settings, settings_rejected,
    )
    from flows.produce_command import message_limit, produce_topic

    settings: dict = {}
    try:
        topic, dlq = produce_topic(config, None), config.sink.topics.dlq
        client_id = f"{config.becomingone.name}-ingest"
        settings = producer_settings(config.kafka, bootstrap=args.bootstrap, client_id=client_id)
        admin = connect_admin(admin_settings(config.kafka, bootstrap=args.bootstrap, client_id=client_id),
                              timeout=args.timeout)
        ensure_topics(admin, [topic, dlq], 1, timeout=args.timeout)
        producer = Producer(settings)
    except (ValueError, KafkaSetupError) as exc:
        raise IngestSetupFailed(2, str(exc)) from None
    except KafkaException as exc:
        raise IngestSetupFailed(2, settings_rejected(exc, settings)) from None
    except (KafkaUnreachable, TopicSetupError) as exc:
        raise IngestSetupFailed(1, str(exc)) from None
    sender = PhaseProducer(producer, topic, wire="arrow", batch_rows=BATCH_ROWS,
                           max_message_bytes=message_limit(settings))
    return IngestOutput(producer, sender, settings, topic, dlq)


def stop_on_signals() -> threading.Event:
    """An event set by SIGINT or SIGTERM (the command then stops cleanly: sends, flushes, exits 0)."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    return stop


def report_setup_failure(name: str, exc: IngestSetupFailed) -> int:
    """Print the setup problem for the operator and give the exit code."""
    print(f"{name}: {exc}", file=sys.stderr)
    return exc.code
