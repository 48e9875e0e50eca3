"""The flow's Kafka ends, built from a config: the phase topic as a source, the output topics as a sink,
and a witness node's audited topic.

All are the general Kafka connectors (:class:`connectors.kafka.TopicSource`,
:class:`connectors.kafka.TopicSink`) with the config's client settings,
topics and outage limits.
"""

from __future__ import annotations

from schemas.config import Config, KafkaSection, KafkaSource
from schemas.messages import without_original

__all__ = ["OUTPUT_ROLES", "WITNESS_BATCH_SIZE", "audited_cluster", "kafka_sink", "kafka_source", "mesh_peer_cluster",
           "mesh_peer_source", "witness_source"]

#: Messages a witness node takes from the audited topic per poll.
WITNESS_BATCH_SIZE = 1000

#: The output topic roles (``sink.topics``), in the order the sink and the source's topic creation take them.
OUTPUT_ROLES = ("collapse", "witness", "sync", "dlq", "mesh")


def kafka_source(config: Config):
    """The Kafka source over ``source.topic`` (:class:`connectors.kafka.TopicSource`),
    with the config's client settings; it creates the flow's topics first where
    the broker allows it."""
    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END

    from connectors.kafka import TopicSource, admin_settings, consumer_settings

    src = config.source
    assert isinstance(src, KafkaSource)
    # Offsets are Bytewax's, kept by its recovery; they are committed to group.id for lag tools only.
    settings = consumer_settings(config.kafka, src.group_id, from_beginning=src.from_beginning,
                                 client_id=config.becomingone.name)
    settings.pop("auto.offset.reset", None)  # the start is starting_offset or Bytewax's resume state
    topics = [src.topic] + [getattr(config.sink.topics, r) for r in OUTPUT_ROLES]
    return TopicSource(settings, src.topic, OFFSET_BEGINNING if src.from_beginning else OFFSET_END, src.batch_size,
                       tail=not src.stop_at_end, admin=admin_settings(config.kafka, client_id=config.becomingone.name),
                       create_topics=topics, unavailable_timeout=config.kafka.unavailable_timeout)


def kafka_sink(config: Config, roles: tuple[str, ...] = OUTPUT_ROLES, kafka: KafkaSection | None = None):
    """The sink of the output topics of ``roles`` (:class:`connectors.kafka.TopicSink`) on the
    cluster ``kafka`` (default the config's): its items are ``(topic, key, value)`` tuples or
    :class:`connectors.kafka.TopicMessages`."""
    from connectors.kafka import TopicSink, admin_settings, producer_settings

    kafka = config.kafka if kafka is None else kafka
    name = config.becomingone.name
    topics = config.sink.topics
    settings = producer_settings(kafka, client_id=name)
    wait = kafka.unavailable_timeout
    if "message.timeout.ms" not in kafka.root:
        # Output waits for an unreachable cluster as long as the flow does (then 30 s more; 0: forever).
        settings["message.timeout.ms"] = str(int((wait + 30.0) * 1000)) if wait > 0 else "0"
    return TopicSink(settings, [getattr(topics, r) for r in roles],
                     admin=admin_settings(kafka, client_id=name), shrink={topics.dlq: without_original},
                     unavailable_timeout=wait)


def mesh_peer_cluster(config: Config, peer):
    """The client settings of a ``sync.mesh.peers`` entry: the node's ``kafka`` section (if any) with the
    peer's address and its own settings over them."""
    from schemas.config import KafkaSection

    base = dict(config.kafka.root) if config.kafka is not None else {}
    return KafkaSection({**base, **peer.kafka, "bootstrap.servers": peer.bootstrap_servers})


def mesh_peer_source(config: Config, peer):
    """The mesh topic of one ``sync.mesh.peers`` entry (:class:`connectors.kafka.TopicSource`): the
    node's ``kafka`` settings (if any) with the peer's address and its own settings over them.

    From the beginning when ``source.from_beginning`` (else the end); ends at the end of the topic when
    the main source does (``source.stop_at_end``, or a file or synthetic source)."""
    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END

    from connectors.kafka import TopicSource, admin_settings, consumer_settings

    kafka = mesh_peer_cluster(config, peer)
    src = config.source
    from_beginning = src.from_beginning if isinstance(src, KafkaSource) else True
    tail = isinstance(src, KafkaSource) and not src.stop_at_end
    name = config.becomingone.name
    settings = consumer_settings(kafka, f"{name}-mesh", from_beginning=from_beginning, client_id=f"{name}-mesh")
    settings.pop("auto.offset.reset", None)
    return TopicSource(settings, peer.topic, OFFSET_BEGINNING if from_beginning else OFFSET_END, 1000, tail=tail,
                       admin=admin_settings(kafka, client_id=f"{name}-mesh"), create_topics=[peer.topic],
                       unavailable_timeout=kafka.unavailable_timeout)


def audited_cluster(config: Config) -> KafkaSection:
    """The cluster of a witness node's audited topic: ``witness_node.kafka``, else the node's ``kafka``."""
    audited = config.witness_node.kafka
    if audited is not None:
        return KafkaSection(audited)
    assert config.kafka is not None  # a config rule: a witness node has one or the other
    return config.kafka


def witness_source(config: Config):
    """A witness node's source: ``witness_node.topic`` on the audited cluster, from its oldest
    message (``witness_node.from_beginning``) unless Bytewax resumes it, to its end with
    ``witness_node.stop_at_end``; the topic is created where the broker allows it, so the
    witness may start before the node it audits."""
    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END

    from connectors.kafka import TopicSource, admin_settings, consumer_settings

    w = config.witness_node
    kafka = audited_cluster(config)
    name = config.becomingone.name
    settings = consumer_settings(kafka, w.group_id, from_beginning=w.from_beginning, client_id=name)
    settings.pop("auto.offset.reset", None)  # the start is starting_offset or Bytewax's resume state
    return TopicSource(settings, w.topic, OFFSET_BEGINNING if w.from_beginning else OFFSET_END, WITNESS_BATCH_SIZE,
                       tail=not w.stop_at_end, admin=admin_settings(kafka, client_id=name), create_topics=[w.topic],
                       unavailable_timeout=kafka.unavailable_timeout)
