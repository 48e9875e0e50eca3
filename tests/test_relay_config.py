"""The ``relay`` section: each side's client settings, the rules of a relay node, secrets kept out of prints."""

from __future__ import annotations

import pytest

from schemas.config import ConfigError, load_config, parse_config

RELAY = {"becomingone": {"node": "relay"}}
SOURCE = {"kafka": {"bootstrap.servers": "near:9092"}}


def problems_of(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return "\n".join(info.value.problems)


@pytest.mark.parametrize(("data", "message"), [
    ({**RELAY, **SOURCE},
     "relay.target.bootstrap.servers: required (e.g. 'localhost:9092') by becomingone.node 'relay' "
     "(the cluster it writes to)"),
    ({**RELAY, "relay": {"target": {"bootstrap.servers": "far:9092"}}},
     "kafka: required by becomingone.node 'relay' (set kafka.bootstrap.servers, or relay.source)"),
    ({**RELAY, **SOURCE, "relay": {"target": {"bootstrap.servers": "NEAR:9092 "}}},
     "relay.target.bootstrap.servers ('NEAR:9092 ') is the cluster the relay reads from: "
     "each topic would be copied onto itself"),
    ({**RELAY, **SOURCE, "relay": {"target": {"bootstrap.servers": "far:9092", "group.id": "g"}}},
     "relay.target.group.id: not used (the relay only writes to the target; its group is relay.group_id)"),
    ({**RELAY, **SOURCE, "relay": {"source": {"bootstrap.servers": "a:1", "group.id": "g"},
                                   "target": {"bootstrap.servers": "far:9092"}}},
     "relay.source.group.id: set relay.group_id instead"),
    ({**RELAY, **SOURCE, "relay": {"source": {"security.protocol": "SSL"}, "target": {"bootstrap.servers": "f:1"}}},
     "relay.source.bootstrap.servers: required (e.g. 'localhost:9092') when relay.source is set"),
    ({**RELAY, **SOURCE, "relay": {"target": {"bootstrap.servers": "f:1", "unavailable_timeout": "soon"}}},
     "relay.target.unavailable_timeout ('soon') must be a number of seconds, 0 or more"),
    ({**RELAY, **SOURCE, "relay": {"target": {"bootstrap.servers": "f:1"}, "topics": ["a", "b", "a"]}},
     "relay.topics[2] ('a') is listed already"),
    ({"relay": {"topics": []}}, "relay.topics ([]) must have at least 1 item"),
    ({"relay": {"dedup_window": -1}}, "relay.dedup_window (-1) must be greater than or equal to 0"),
    ({"relay": {"batch_size": 0}}, "relay.batch_size (0) must be greater than or equal to 1"),
])
def test_each_relay_rule_names_the_key(data, message):
    assert message in problems_of(data)


def test_a_relay_with_both_sides_of_its_own_needs_no_kafka_section():
    c = parse_config({**RELAY, "relay": {"source": {"bootstrap.servers": "near:9092", "unavailable_timeout": 7},
                                         "target": {"bootstrap.servers": "far:9092"}}})
    assert c.kafka is None
    assert c.relay.source.client_settings() == {"bootstrap.servers": "near:9092"}
    assert (c.relay.source.unavailable_timeout, c.relay.target.unavailable_timeout) == (7.0, 300.0)
    assert (c.relay.topics, c.relay.group_id, c.relay.dedup_window) == (("becomingone.mesh",), "becomingone-relay",
                                                                        10_000)


def test_other_nodes_ignore_an_empty_relay_section():
    assert parse_config({}).relay.target.root == {}


def test_each_side_is_set_from_the_environment_key_by_key_and_its_secrets_never_print():
    env = {
        "BECOMINGONE__BECOMINGONE__NODE": "relay",
        "BECOMINGONE__KAFKA__BOOTSTRAP_SERVERS": "near:9092",
        "BECOMINGONE__RELAY__TARGET__BOOTSTRAP_SERVERS": "far:9093",
        "BECOMINGONE__RELAY__TARGET__SECURITY_PROTOCOL": "SASL_SSL",
        "BECOMINGONE__RELAY__TARGET__SASL_PASSWORD": "hunter2",
        "BECOMINGONE__RELAY__TARGET__UNAVAILABLE_TIMEOUT": "5",
    }
    c = load_config(None, env)
    assert c.relay.target.client_settings() == {
        "bootstrap.servers": "far:9093", "security.protocol": "SASL_SSL", "sasl.password": "hunter2"}
    assert c.relay.target.unavailable_timeout == 5.0
    printed = c.to_yaml(redact_secrets=True)
    assert "hunter2" not in printed and "sasl.password: <redacted>" in printed
    assert "hunter2" in c.to_yaml()
