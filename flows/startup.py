"""The startup log line: what this process runs, from which config, reading what, writing where.

One INFO line on ``becomingone.flow`` when the flow starts (``becomingone run``
and ``python -m bytewax.run flows.kairos``), for example (text format)::

    becomingone run: starting node 'full' of flow 'becomingone' (config: embedded default): input synthetic,
    4 sensors (4 partitions); archive ./becomingone-data; metrics 127.0.0.1:9108

In the structured format the same facts are fields of the line too
(:func:`startup_facts`).  No secret ever shows: the Kafka settings are
redacted as ``becomingone config`` redacts them, and environment overrides
are named, never their values.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from schemas.config import (
    Config,
    FileSource,
    KafkaSource,
    SyntheticSource,
    config_overrides,
    config_path,
    redact_settings,
)
from schemas.printable import printable

__all__ = ["ConfigOrigin", "input_partitions", "log_startup", "plaintext_traffic", "startup_facts", "startup_message"]

log = logging.getLogger("becomingone.flow")


@dataclass(frozen=True)
class ConfigOrigin:
    """Where a config came from: its file (None: the embedded default) and the overriding variables' names."""

    file: str | None
    overrides: tuple[str, ...] = ()

    @classmethod
    def of(cls, path: str | None = None, environ: Mapping[str, str] | None = None) -> ConfigOrigin:
        """The origin of ``load_config(path, environ)``."""
        return cls(config_path(path, environ), tuple(config_overrides(environ)))


def startup_facts(config: Config, origin: ConfigOrigin, partitions: int | None = None) -> dict[str, Any]:
    """What the startup line says, as JSON-ready fields; ``partitions``: the input's, where known."""
    facts: dict[str, Any] = {
        "config": origin.file if origin.file is not None else "embedded default",
        "overrides": list(origin.overrides),
        "node": config.becomingone.node,
        "input": _input(config),
        "partitions": partitions,
        "archive": str(config.memory.root) if config.sink.archive else "off",
        "metrics": f"{config.metrics.bind}:{config.metrics.port}" if config.metrics.enabled else "off",
        "kafka": redact_settings(config.kafka.root) if config.kafka is not None else "off",
    }
    return facts


def _input(config: Config) -> str:
    node = config.becomingone.node
    if node == "witness":
        return f"witness topic {config.witness_node.topic} of node {config.witness_node.node!r}"
    if node == "relay":
        return "relay of topics " + ", ".join(config.relay.topics)
    src = config.source
    if isinstance(src, KafkaSource):
        return f"kafka topic {src.topic}"
    if isinstance(src, FileSource):
        return f"file {src.path}"
    if isinstance(src, SyntheticSource):
        return f"synthetic, {len(src.sensors)} sensors"
    return src.kind


def startup_message(facts: dict[str, Any]) -> str:
    """The startup line's text from :func:`startup_facts`."""
    env = f", overridden by {', '.join(facts['overrides'])}" if facts["overrides"] else ""
    n = facts["partitions"]
    parts = "" if n is None else f" ({n} partition{'' if n == 1 else 's'})"
    kafka = facts["kafka"]
    brokers = f"; kafka {kafka.get('bootstrap.servers', '?')}" if isinstance(kafka, dict) else ""
    return printable(f"starting node {facts['node']!r} (config: {facts['config']}{env}): input {facts['input']}"
                     f"{parts}; archive {facts['archive']}; metrics {facts['metrics']}{brokers}")


def log_startup(config: Config, origin: ConfigOrigin, partitions: int | None = None) -> None:
    """Log the startup line (INFO, ``becomingone.flow``) with its facts as fields, and a warning
    naming the plaintext traffic if there is any (:func:`plaintext_traffic`)."""
    facts = startup_facts(config, origin, partitions)
    log.info("%s", startup_message(facts), extra={"fields": {"startup": facts}})
    plain = plaintext_traffic(config)
    if plain:
        log.warning("plaintext traffic: %s; security.transport: tls with security.cert_file and "
                    "security.key_file encrypts it (docs/security.md)", "; ".join(plain),
                    extra={"fields": {"plaintext": plain}})


def plaintext_traffic(config: Config) -> list[str]:
    """What this node sends or serves without TLS, one phrase each (empty when everything is TLS).

    >>> from schemas.config import parse_config
    >>> plaintext_traffic(parse_config({}))
    ['metrics and health endpoint http://127.0.0.1:9108']
    """
    plain: list[str] = []
    if config.metrics.enabled and not config.security.tls:
        plain.append(f"metrics and health endpoint http://{config.metrics.bind}:{config.metrics.port}")
    for name, settings in _kafka_clusters(config):
        protocol = str(settings.get("security.protocol", "PLAINTEXT")).upper()
        if protocol == "SASL_PLAINTEXT":
            plain.append(f"{name} at {settings.get('bootstrap.servers', '?')} (SASL_PLAINTEXT: the SASL "
                         "credentials too, unless the mechanism hides them)")
        elif protocol == "PLAINTEXT":
            plain.append(f"{name} at {settings.get('bootstrap.servers', '?')}")
    return plain


def _kafka_clusters(config: Config) -> list[tuple[str, Mapping[str, Any]]]:
    """(name, librdkafka settings) of each Kafka cluster this node talks to."""
    clusters: list[tuple[str, Mapping[str, Any]]] = [("Kafka", config.kafka.root)] if config.kafka is not None else []
    node = config.becomingone.node
    if node == "witness" and config.witness_node.kafka is not None:
        clusters.append(("audited Kafka", config.witness_node.kafka))
    if node == "relay":
        if config.relay.source is not None:
            clusters.append(("relay source Kafka", config.relay.source.root))
        clusters.append(("relay target Kafka", config.relay.target.root))
    if config.sync.mesh_enabled:
        from connectors.flow_topics import mesh_peer_cluster

        clusters.extend(("mesh peer Kafka", mesh_peer_cluster(config, peer).root) for peer in config.sync.mesh.peers)
    return clusters


def input_partitions(config: Config, admin: Any = None, timeout: float = 5.0) -> int | None:
    """Partitions of the flow's input where known without reading it: the Kafka topic's (from
    ``admin``, an AdminClient of the node's cluster), the synthetic source's; None otherwise."""
    src = config.source
    if config.becomingone.node in ("witness", "relay"):
        return None
    if isinstance(src, SyntheticSource):
        from connectors.synthetic import SyntheticSamples

        return len(SyntheticSamples(src).list_parts())
    if isinstance(src, FileSource):
        from connectors.file_source import PhaseFile

        return len(PhaseFile(src).list_parts())
    if isinstance(src, KafkaSource) and admin is not None:
        try:
            topic = admin.list_topics(timeout=timeout).topics.get(src.topic)
        except Exception:  # noqa: BLE001 - a startup line never stops the start
            return None
        return None if topic is None or topic.error is not None else len(topic.partitions)
    return None
