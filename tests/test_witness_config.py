"""The witness node's config (`becomingone.node: witness`, `witness_node.*`): its rules and the flow it builds."""

from __future__ import annotations

import pytest

from schemas.config import ConfigError, parse_config

WITNESS = {"becomingone": {"node": "witness"}}


def _problems(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return str(info.value)


@pytest.mark.parametrize(("data", "message"), [
    (WITNESS, "kafka: required by becomingone.node 'witness'"),
    ({**WITNESS, "witness_node": {"kafka": {"security.protocol": "SSL"}}},
     "witness_node.kafka.bootstrap.servers: required (e.g. 'localhost:9092') when witness_node.kafka is set"),
    ({**WITNESS, "witness_node": {"kafka": {"bootstrap.servers": "a:9092", "group.id": "g"}}},
     "witness_node.kafka.group.id: set witness_node.group_id instead"),
    ({**WITNESS, "witness_node": {"kafka": {"bootstrap.servers": "a:9092", "Acks": 1}}},
     "witness_node.kafka.Acks: not a librdkafka property name"),
    ({**WITNESS, "kafka": {"bootstrap.servers": "k:9092"}, "witness_node": {"topic": "becomingone.collapse"}},
     "witness_node.topic ('becomingone.collapse') is this node's sink.topics.collapse"),
    ({**WITNESS, "kafka": {"bootstrap.servers": "k:9092"}, "witness_node": {"window": 0}},
     "witness_node.window (0) must be greater than or equal to 1"),
    ({**WITNESS, "kafka": {"bootstrap.servers": "k:9092"}, "witness_node": {"node": ""}},
     "witness_node.node"),
])
def test_a_bad_witness_node_config_names_the_key(data, message):
    assert message in _problems(data)


def test_a_witness_node_may_read_and_report_on_the_audited_cluster_alone():
    config = parse_config({**WITNESS, "witness_node": {"kafka": {"bootstrap.servers": "a:9092"}, "node": "n-1"}})
    assert config.kafka is None and config.witness_node.node == "n-1"
    # Its own collapse topic on another cluster may share the audited topic's name.
    parse_config({**WITNESS, "kafka": {"bootstrap.servers": "k:9092"},
                  "witness_node": {"kafka": {"bootstrap.servers": "a:9092"}, "topic": "becomingone.collapse"}})


def test_build_flow_dispatches_on_the_node_type():
    from flows.kairos import build_flow

    config = parse_config({**WITNESS, "kafka": {"bootstrap.servers": "k:9092"}, "metrics": {"enabled": False}})
    flow = build_flow(config, recovery=False)
    steps = {step.step_id.split(".")[-1] for step in flow.substeps}
    assert {"source", "audited", "audit", "kafka", "archive"} <= steps
    assert "resonate" not in steps

