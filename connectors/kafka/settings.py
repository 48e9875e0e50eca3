"""Kafka client settings: confluent-kafka configs from the config's ``kafka`` section, and their errors.

:func:`producer_settings`, :func:`consumer_settings` and :func:`admin_settings`
build confluent-kafka configs from the config's ``kafka`` section.  Every
librdkafka property in that section (``security.protocol``, ``ssl.*``,
``sasl.*``, ...) is passed through verbatim and wins over the defaults
chosen here.  :func:`settings_rejected` turns librdkafka's refusal of a
setting into a :class:`KafkaSetupError` that names the key at fault.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaException

from connectors.kafka.health import librdkafka_logger
from schemas.config import KafkaSection

__all__ = [
    "KafkaSetupError",
    "admin_settings",
    "consumer_settings",
    "producer_settings",
    "settings_rejected",
]


class KafkaSetupError(ValueError):
    """Kafka settings that cannot work (no bootstrap address, a bad value)."""


def _base_settings(kafka: KafkaSection | None, bootstrap: str | None, client_id: str | None) -> dict[str, Any]:
    settings: dict[str, Any] = kafka.client_settings() if kafka is not None else {}
    if bootstrap:
        settings["bootstrap.servers"] = bootstrap
    if not str(settings.get("bootstrap.servers", "")).strip():
        raise KafkaSetupError(
            "no Kafka bootstrap address: pass --bootstrap HOST:PORT or set kafka.bootstrap.servers in the config"
        )
    if client_id:
        settings.setdefault("client.id", client_id)
    # librdkafka's own log lines go to Python logging, where the caller decides what shows,
    # with repeats held back (a broker that is down makes every client retry many times a second).
    settings.setdefault("logger", librdkafka_logger())
    return settings


def producer_settings(
    kafka: KafkaSection | None,
    *,
    bootstrap: str | None = None,
    client_id: str | None = "becomingone-produce",
) -> dict[str, Any]:
    """Producer config: the ``kafka`` section verbatim over safe defaults.

    Defaults: ``acks=all`` with idempotence (no duplicates or reordering on
    retries, so a sensor's samples stay in order within a partition),
    ``linger.ms=20`` (batches form under load), and ``message.timeout.ms=30000``
    so a message the cluster never takes fails in 30 s instead of librdkafka's
    five minutes.

    Args:
        kafka: the config's ``kafka`` section, or None.
        bootstrap: overrides ``bootstrap.servers`` (e.g. from ``--bootstrap``).
        client_id: ``client.id`` unless the section sets one.

    Raises:
        KafkaSetupError: no bootstrap address at all.

    >>> producer_settings(None, bootstrap="127.0.0.1:9092")["acks"]
    'all'
    """
    defaults = {"acks": "all", "enable.idempotence": "true", "linger.ms": "20", "message.timeout.ms": "30000"}
    return {**defaults, **_base_settings(kafka, bootstrap, client_id)}


def consumer_settings(
    kafka: KafkaSection | None,
    group_id: str,
    *,
    bootstrap: str | None = None,
    from_beginning: bool = False,
    client_id: str | None = "becomingone",
) -> dict[str, Any]:
    """Consumer config: the ``kafka`` section verbatim plus the group.

    Args:
        group_id: consumer group (``source.group_id``).
        from_beginning: with no committed offset, start at the earliest offset
            (else the latest), i.e. ``auto.offset.reset``.

    Raises:
        KafkaSetupError: no bootstrap address at all.
    """
    defaults = {"auto.offset.reset": "earliest" if from_beginning else "latest"}
    settings = {**defaults, **_base_settings(kafka, bootstrap, client_id)}
    settings["group.id"] = group_id
    return settings


def admin_settings(
    kafka: KafkaSection | None,
    *,
    bootstrap: str | None = None,
    client_id: str | None = "becomingone-admin",
) -> dict[str, Any]:
    """AdminClient config: the ``kafka`` section verbatim (TLS/SASL apply to admin requests too).

    Raises:
        KafkaSetupError: no bootstrap address at all.
    """
    return _base_settings(kafka, bootstrap, client_id)


def settings_rejected(exc: KafkaException, settings: Mapping[str, Any]) -> KafkaSetupError:
    """librdkafka's refusal of the settings as a :class:`KafkaSetupError`; when a file
    setting (``ssl.ca.location``, ``ssl.key.location``, ...) is the cause, the
    message names the key, the path and what is wrong with the file."""
    import os
    import re

    text = exc.args[0].str() if exc.args and hasattr(exc.args[0], "str") else str(exc)
    found = re.search(r"([a-z0-9_]+(?:\.[a-z0-9_]+)*\.location) failed", text)
    if found is None or found.group(1) not in settings:
        return KafkaSetupError(f"Kafka settings rejected: {text}")
    key = found.group(1)
    path = str(settings[key])
    if not os.path.exists(path):
        why = "no such file"
    elif not os.access(path, os.R_OK):
        why = "not readable"
    else:
        why = "not a certificate or key librdkafka can use"
    return KafkaSetupError(f"Kafka settings rejected: kafka.{key} {path}: {why} ({text})")
