"""The Kafka client: settings, topics, a local mock cluster, the producer tool, the dataflow's source and sink.

Settings (:mod:`connectors.kafka.settings`)
    :func:`producer_settings`, :func:`consumer_settings` and
    :func:`admin_settings` build confluent-kafka configs from the config's
    ``kafka`` section; every librdkafka property there is passed through
    verbatim and wins over the defaults chosen here.

Reaching the cluster (:mod:`connectors.kafka.topics`)
    :func:`connect_admin` fetches cluster metadata with a bounded wait and
    raises :class:`KafkaUnreachable`, naming the bootstrap address and what
    librdkafka reported, instead of retrying forever.
    :func:`ensure_topics` creates missing topics.

A local cluster (:mod:`connectors.kafka.broker`, ``becomingone broker``)
    :class:`MockBroker` hosts librdkafka's mock cluster in this process:
    real Kafka protocol over TCP on loopback, for development and tests;
    with :class:`TlsFiles` only over TLS or mutual TLS
    (:mod:`connectors.kafka.tls_front`, addresses rewritten by
    :mod:`connectors.kafka.advertised`).

Producing samples (:mod:`connectors.kafka.producer`, ``becomingone produce``)
    :class:`PhaseProducer` sends :class:`~connectors.phase_files.PhaseColumns`
    to a topic in either input wire format of SPEC section 4, at a given
    rate, and counts what was delivered.

Relaying topics between clusters (:mod:`connectors.kafka.relay`, a ``relay`` node)
    :class:`Relay` copies topics from one cluster to another at least once,
    repeats dropped by :class:`DedupWindow`; :class:`RelayTarget` is the side
    written to; :class:`RelaySource` runs a relay inside a dataflow.

The dataflow's source and sink
    :class:`TopicSource` (:mod:`connectors.kafka.source`) and
    :class:`TopicSink` (:mod:`connectors.kafka.sink`); the clients' log
    lines, connection state and outage timeout are
    :mod:`connectors.kafka.health`.

>>> with MockBroker() as broker:                                 # doctest: +SKIP
...     admin = connect_admin(admin_settings(None, bootstrap=broker.bootstrap))
...     ensure_topics(admin, ["becomingone.phases"])
"""

from connectors.kafka.broker import MOCK_PARTITIONS, MockBroker
from connectors.kafka.dedup import DedupWindow, message_digest
from connectors.kafka.health import KafkaUnavailable
from connectors.kafka.producer import (
    PHASE_BATCH_SCHEMA,
    RAW_BATCH_SCHEMA,
    MessageTooLarge,
    PhaseProducer,
    arrow_message,
    arrow_record_batch,
    json_messages,
    produce_waiting,
    sensor_partitions,
)
from connectors.kafka.settings import (
    KafkaSetupError,
    admin_settings,
    consumer_settings,
    producer_settings,
    settings_rejected,
)
from connectors.kafka.relay import Relay, RelayCounts, RelayError
from connectors.kafka.relay_source import RelaySource
from connectors.kafka.relay_target import RelayTarget, target_partition
from connectors.kafka.sink import DeliveryFailed, TopicMessages, TopicSink
from connectors.kafka.source import TopicSource
from connectors.kafka.tls_front import TlsFiles
from connectors.kafka.topics import KafkaUnreachable, TopicSetupError, connect_admin, ensure_topics

__all__ = [
    "MOCK_PARTITIONS",
    "PHASE_BATCH_SCHEMA",
    "RAW_BATCH_SCHEMA",
    "DedupWindow",
    "DeliveryFailed",
    "KafkaSetupError",
    "KafkaUnavailable",
    "KafkaUnreachable",
    "MessageTooLarge",
    "MockBroker",
    "PhaseProducer",
    "Relay",
    "RelayCounts",
    "RelayError",
    "RelaySource",
    "RelayTarget",
    "TlsFiles",
    "TopicMessages",
    "TopicSetupError",
    "TopicSink",
    "TopicSource",
    "admin_settings",
    "arrow_message",
    "arrow_record_batch",
    "connect_admin",
    "consumer_settings",
    "ensure_topics",
    "json_messages",
    "message_digest",
    "produce_waiting",
    "producer_settings",
    "sensor_partitions",
    "settings_rejected",
    "target_partition",
]
