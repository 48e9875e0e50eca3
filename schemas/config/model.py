"""The whole config: one model of every section, checked by the cross-field rules."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import yaml
from pydantic import Field, model_validator

from schemas.config.errors import REDACTED, _RuleViolations
from schemas.config.rules import _rule_problems
from schemas.config.seed_sections import (
    BecomingOneSection,
    EmissarySection,
    KairosSection,
    LoggingSection,
    MasterSection,
    MemorySection,
    SyncSection,
    WitnessingSection,
)
from schemas.config.security import SecuritySection
from schemas.config.stream_sections import (
    ApiSection,
    KafkaSection,
    MetricsSection,
    RelaySection,
    SinkSection,
    Source,
    SyntheticSource,
    WitnessNodeSection,
)
from schemas.config.values import _Section

# Settings whose values must not be printed by `becomingone config`.
_SECRET_KEY_RE = re.compile(r"password|secret|token|^ssl\.key\.pem$|^sasl\.oauthbearer\.config$")


def redact_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Kafka client ``settings`` for display: passwords, secrets, tokens and private keys as ``<redacted>``.

    >>> redact_settings({"bootstrap.servers": "k:9092", "sasl.password": "hunter2"})
    {'bootstrap.servers': 'k:9092', 'sasl.password': '<redacted>'}
    """
    return {k: (REDACTED if _SECRET_KEY_RE.search(k) else v) for k, v in settings.items()}


class Config(_Section):
    """The whole BecomingONE configuration (immutable once validated)."""

    becomingone: BecomingOneSection = Field(default_factory=BecomingOneSection)
    kairos: KairosSection = Field(default_factory=KairosSection)
    master: MasterSection = Field(default_factory=MasterSection)
    emissary: EmissarySection = Field(default_factory=EmissarySection)
    sync: SyncSection = Field(default_factory=SyncSection)
    memory: MemorySection = Field(default_factory=MemorySection)
    witnessing: WitnessingSection = Field(default_factory=WitnessingSection)
    security: SecuritySection = Field(default_factory=SecuritySection)
    logging: LoggingSection = Field(default_factory=LoggingSection)
    source: Source = Field(default_factory=SyntheticSource)
    sink: SinkSection = Field(default_factory=SinkSection)
    kafka: KafkaSection | None = None
    metrics: MetricsSection = Field(default_factory=MetricsSection)
    api: ApiSection = Field(default_factory=ApiSection)
    witness_node: WitnessNodeSection = Field(default_factory=WitnessNodeSection)
    relay: RelaySection = Field(default_factory=RelaySection)

    @model_validator(mode="after")
    def _cross_field_rules(self) -> Config:
        problems = _rule_problems({name: getattr(self, name) for name in type(self).model_fields})
        if problems:
            raise _RuleViolations(problems)
        return self._secured() if self.security.tls else self

    def _secured(self) -> Config:
        """This config with ``security``'s TLS settings in every Kafka client side (their own keys win),
        so each client made from it speaks TLS; applying it twice changes nothing."""
        sec = self.security

        def side(kafka: KafkaSection | None) -> KafkaSection | None:
            return None if kafka is None else KafkaSection(sec.kafka_settings(kafka.root))

        witness = self.witness_node
        if witness.kafka is not None:
            witness = witness.model_copy(update={"kafka": sec.kafka_settings(witness.kafka)})
        relay = self.relay.model_copy(update={"source": side(self.relay.source), "target": side(self.relay.target)})
        peers = tuple(p.model_copy(update={"kafka": sec.kafka_settings(p.kafka)}) for p in self.sync.mesh.peers)
        mesh = self.sync.mesh.model_copy(update={"peers": peers})
        for name, value in (("kafka", side(self.kafka)), ("witness_node", witness), ("relay", relay),
                            ("sync", self.sync.model_copy(update={"mesh": mesh}))):
            object.__setattr__(self, name, value)  # frozen: set once, while validating
        return self

    @property
    def archived_datasets(self) -> tuple[str, ...]:
        """The datasets the flow writes: ``memory``'s switches, the mesh's only with the mesh on, none
        without the archive (``sink.archive``)."""
        if not self.sink.archive:
            return ()
        mesh = ("mesh_sync", "mesh_members")
        return tuple(d for d in self.memory.datasets if self.sync.mesh_enabled or d not in mesh)

    def to_yaml(self, *, redact_secrets: bool = False) -> str:
        """The effective config as YAML; ``load_config`` of it gives an equal Config.

        Args:
            redact_secrets: replace Kafka passwords, secrets, tokens and private
                keys (``kafka``, ``relay.source``, ``relay.target``, ``witness_node.kafka``,
                ``sync.mesh.peers[i].kafka``, ``security.key_password``) by ``<redacted>`` (for display; the result no longer
                round-trips those values).
        """
        data = self.model_dump(mode="json")
        if redact_secrets:
            # Every mapping of librdkafka settings: the node's own, each side of the relay, the audited
            # cluster of a witness node, each mesh peer.
            holders = [(data, "kafka"), (data["relay"], "source"), (data["relay"], "target"),
                       (data["witness_node"], "kafka")]
            holders += [(peer, "kafka") for peer in data["sync"]["mesh"]["peers"]]
            for holder, name in holders:
                if holder.get(name):
                    holder[name] = redact_settings(holder[name])
            if data["security"].get("key_password") is not None:
                data["security"]["key_password"] = REDACTED
        return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)
