"""Reaching a Kafka cluster and its topics.

:func:`connect_admin` fetches cluster metadata with a bounded wait and
raises :class:`KafkaUnreachable`, naming the bootstrap address and what
librdkafka reported, instead of retrying forever.  :func:`ensure_topics`
creates missing topics, also on librdkafka's mock cluster
(:mod:`connectors.kafka.broker`), which has no CreateTopics request.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Mapping
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ClusterMetadata, NewTopic

from connectors.kafka.broker import MOCK_PARTITIONS
from connectors.kafka.settings import settings_rejected

__all__ = ["KafkaUnreachable", "TopicSetupError", "connect_admin", "ensure_topics", "topic_metadata"]

log = logging.getLogger("becomingone.kafka")


class KafkaUnreachable(ConnectionError):
    """No Kafka broker answered within the wait.

    Attributes:
        bootstrap: the ``bootstrap.servers`` tried.
        reason: what librdkafka reported last (refused, unresolvable, TLS, SASL ...).
    """

    def __init__(self, bootstrap: str, timeout: float, reason: str) -> None:
        self.bootstrap = bootstrap
        self.reason = reason
        super().__init__(f"cannot reach Kafka at {bootstrap} within {timeout:g} s: {reason}")


class TopicSetupError(RuntimeError):
    """A topic could not be found or created."""


def connect_admin(settings: Mapping[str, Any], *, timeout: float = 10.0) -> AdminClient:
    """An AdminClient whose cluster answered a metadata request within ``timeout`` seconds.

    Raises:
        KafkaUnreachable: naming ``bootstrap.servers`` and librdkafka's last
            error (connection refused, name not resolved, TLS or SASL failure).
        KafkaSetupError: librdkafka rejected a setting.
    """
    # Bounded: the client lives on, and a flapping cluster would keep reporting.
    errors: deque[KafkaError] = deque(maxlen=16)
    quiet = {k: v for k, v in settings.items() if k != "logger"}
    # The connection errors are reported once, in the exception; librdkafka
    # would otherwise log every reconnect attempt while we wait.
    quiet.update({"error_cb": errors.append, "log_level": 0})
    try:
        admin = AdminClient(quiet)
    except KafkaException as exc:
        raise settings_rejected(exc, settings) from None
    try:
        admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        admin.poll(0)  # serves error_cb: the cause behind "transport failure"
        causes = [e.str() for e in errors if e.code() != KafkaError._ALL_BROKERS_DOWN]
        reason = causes[-1] if causes else exc.args[0].str()
        raise KafkaUnreachable(str(settings.get("bootstrap.servers")), timeout, reason) from None
    return admin


def ensure_topics(
    admin: AdminClient,
    names: Iterable[str],
    partitions: int = 1,
    *,
    replication_factor: int = -1,
    timeout: float = 10.0,
) -> list[str]:
    """Create the topics of ``names`` that do not exist yet; return the ones created.

    A topic created meanwhile by someone else ("already exists") is fine.
    ``replication_factor=-1`` takes the broker's ``default.replication.factor``.

    librdkafka's mock cluster has no controller and no CreateTopics request;
    there (recognised by metadata naming no live controller) topics are
    created the way the mock allows, by asking for their metadata, and get
    :data:`MOCK_PARTITIONS` partitions whatever ``partitions`` says.

    Raises:
        TopicSetupError: a topic could not be created (naming it and why), or
            the cluster stopped answering.
    """
    wanted = list(dict.fromkeys(names))
    metadata = topic_metadata(admin, timeout)
    missing = [n for n in wanted if n not in metadata.topics]
    if not missing:
        return []
    if metadata.controller_id not in metadata.brokers:
        for name in missing:
            topic = topic_metadata(admin, timeout, topic=name).topics.get(name)
            if topic is None or topic.error is not None:
                why = topic.error.str() if topic is not None and topic.error is not None else "not created"
                raise TopicSetupError(f"cannot create topic {name!r}: {why}")
        if partitions != MOCK_PARTITIONS:
            log.info("the mock cluster created %s with %d partitions", ", ".join(missing), MOCK_PARTITIONS)
        return missing
    futures = admin.create_topics(
        [NewTopic(n, num_partitions=partitions, replication_factor=replication_factor) for n in missing],
        request_timeout=timeout,
        operation_timeout=timeout,
    )
    created = []
    for name, future in futures.items():
        try:
            future.result(timeout=timeout + 5.0)
            created.append(name)
        except KafkaException as exc:
            err = exc.args[0]
            if err.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise TopicSetupError(f"cannot create topic {name!r}: {err.str()}") from None
        except FutureTimeout:
            raise TopicSetupError(f"cannot create topic {name!r}: no answer within {timeout + 5.0:g} s") from None
    return created


def topic_metadata(admin: AdminClient, timeout: float, topic: str | None = None) -> ClusterMetadata:
    """The cluster's metadata (of ``topic`` only, if given), or :class:`TopicSetupError` after ``timeout`` s."""
    try:
        return admin.list_topics(topic=topic, timeout=timeout)
    except KafkaException as exc:
        raise TopicSetupError(f"no topic metadata within {timeout:g} s: {exc.args[0].str()}") from None

