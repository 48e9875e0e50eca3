"""The config contract: defaults, every rule's message, environment overrides, round trip, CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from schemas.config import (
    Config,
    FILE_BATCH_ROWS,
    ConfigError,
    FileSource,
    KafkaSource,
    SyntheticSource,
    default_config_text,
    load_config,
    parse_config,
)

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "config" / "becomingone.example.yaml"
NO_ENV: dict[str, str] = {}


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems_of(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return str(info.value)


# --------------------------------------------------------------------------
# Shipped configs.


def test_embedded_default_loads_and_equals_the_model_defaults():
    config = load_config(environ=NO_ENV)
    assert config == Config()
    assert isinstance(config.source, SyntheticSource)
    assert [(s.name, s.kind) for s in config.source.sensors] == [
        ("steady-1", "steady"),
        ("drift-1", "drifting"),
        ("noise-1", "noise"),
        ("switch-1", "switching"),
    ]
    assert config.source.rate_hz == 100.0 and config.source.duration == 120.0
    assert config.kafka is None
    assert config.memory.storage.path == "./becomingone-data"


def test_example_config_loads_with_a_kafka_source():
    config = load_config(EXAMPLE, environ=NO_ENV)
    assert isinstance(config.source, KafkaSource)
    assert config.source.topic == "becomingone.phases"
    assert config.kafka is not None and config.kafka.bootstrap_servers == "localhost:9092"
    assert [(p.host, p.port) for p in config.sync.mesh.peers] == [("witness-seed", 18789), ("kairos-seed", 18789)]


@pytest.mark.parametrize("path", sorted((REPO / "config").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    config = load_config(path, environ=NO_ENV)
    raw_example = path != EXAMPLE
    assert (config.kairos.phase_band is not None) == raw_example   # the others are raw-sensor examples


def test_spec_defaults():
    c = Config()
    assert (c.kairos.tau_scale, c.kairos.velocity_span, c.kairos.omega) == (1.0, 0.1, 0.0)
    assert (c.kairos.coherence_threshold, c.kairos.max_gap, c.kairos.channel_weights) == (0.95, 5.0, None)
    assert (c.master.tau_max, c.master.witness_interval, c.master.min_span) == (3600.0, 0.1, 10.0)
    assert (c.emissary.tau_max, c.emissary.witness_interval) == (1.0, 0.01)
    assert (c.sync.phase_threshold, c.sync.hysteresis, c.sync.lateness) == (0.1, 0.05, 0.0)
    assert (c.sync.max_future, c.sync.publish_interval, c.sync.mesh_enabled) == (60.0, 1.0, False)
    assert (c.memory.archive_input, c.memory.signature_interval) == (True, 1.0)
    assert c.sink.topics.model_dump() == {
        "collapse": "becomingone.collapse",
        "witness": "becomingone.witness",
        "sync": "becomingone.sync",
        "dlq": "becomingone.dlq",
        "mesh": "becomingone.mesh",
    }
    assert (c.metrics.bind, c.metrics.per_sensor_labels) == ("127.0.0.1", False)


def test_microsecond_views():
    c = parse_config({"kairos": {"velocity_span": 0.0333333}, "source": {"kind": "synthetic", "start": 1.5}})
    assert c.kairos.tau_us == 1_000_000
    assert c.kairos.velocity_span_us == 33_333
    assert c.kairos.max_gap_us == 5_000_000
    assert c.master.tau_max_us == 3_600_000_000
    assert c.master.witness_interval_us == 100_000
    assert c.master.min_span_us == 10_000_000
    assert c.master.n_panes == 36_000
    assert c.emissary.tau_max_us == 1_000_000
    assert c.emissary.witness_interval_us == 10_000
    assert c.sync.lateness_us == 0 and c.sync.max_future_us == 60_000_000
    assert c.sync.publish_interval_us == 1_000_000
    assert c.memory.signature_interval_us == 1_000_000
    assert c.witnessing.meso_interval_us == 1_000_000
    assert c.source.start_us == 1_500_000 and c.source.period_us == 10_000
    assert c.source.duration_us == 120_000_000


def test_microsecond_views_are_read_only_and_not_config_keys():
    c = parse_config({"kairos": {"tau_scale": 0.25}})
    assert isinstance(c.kairos.tau_us, int) and c.kairos.tau_us == 250_000
    assert not [key for section in c.model_dump().values() if isinstance(section, dict)
                for key in section if key.endswith("_us")]
    assert "_us:" not in c.to_yaml()
    with pytest.raises(ValidationError):
        c.kairos.tau_us = 1
    assert c.kairos.tau_us == 250_000


def test_float_noise_in_durations_is_exact_in_microseconds():
    # 0.3 = 3 * 0.1 fails in floats (0.30000000000000004 != 0.3) but not in us.
    c = parse_config({"master": {"witness_interval": 0.1, "tau_max": 0.1 * 3, "min_span": 0.1}})
    assert c.master.n_panes == 3


# --------------------------------------------------------------------------
# Every rule: the full key path and the reason.

RULES = [
    (
        {"kairos": {"velocity_span": 1.5, "tau_scale": 1.0}},
        "kairos.velocity_span (1.5) must be smaller than kairos.tau_scale (1.0)",
    ),
    (
        {"kairos": {"velocity_span": 0.9999999}},
        "kairos.velocity_span (0.9999999) must be smaller than kairos.tau_scale (1.0) (both are 1000000 us)",
    ),
    ({"kairos": {"velocity_span": -0.1}}, "kairos.velocity_span (-0.1) must be 0 or greater"),
    ({"kairos": {"tau_scale": 0}}, "kairos.tau_scale (0) must be greater than 0 seconds"),
    ({"kairos": {"tau_scale": 4e-7}}, "kairos.tau_scale (4e-07) rounds to 0 microseconds"),
    ({"kairos": {"max_gap": -1.0}}, "kairos.max_gap (-1.0) must be greater than 0 seconds"),
    ({"kairos": {"coherence_threshold": 0}}, "kairos.coherence_threshold (0) must be greater than 0"),
    ({"kairos": {"coherence_threshold": 1.01}}, "kairos.coherence_threshold (1.01) must be less than or equal to 1"),
    ({"kairos": {"omega": float("nan")}}, "kairos.omega (nan) must be a finite number"),
    ({"kairos": {"channel_weights": [1.0, -0.5]}}, "kairos.channel_weights[1] (-0.5) must be greater than or equal to 0"),
    ({"kairos": {"channel_weights": [0.0, 0.0]}}, "kairos.channel_weights ([0.0, 0.0]) must be null or a non-empty list with a positive sum"),
    ({"kairos": {"channel_weights": []}}, "kairos.channel_weights ([]) must be null or a non-empty list"),
    (
        {"master": {"tau_max": 100.05}},
        "master.tau_max (100.05) must be a whole multiple of master.witness_interval (0.1)",
    ),
    ({"master": {"witness_interval": 0}}, "master.witness_interval (0) must be greater than 0 seconds"),
    ({"master": {"tau_max": -5}}, "master.tau_max (-5) must be greater than 0 seconds"),
    (
        {"master": {"witness_interval": 0.015}},
        "master.witness_interval (0.015) must be a whole multiple of emissary.witness_interval (0.01)",
    ),
    (
        {"master": {"tau_max": 5.0, "min_span": 5.0}},
        "master.min_span (5.0) must be smaller than master.tau_max (5.0)",
    ),
    ({"master": {"enabled": False}}, "master.enabled (false) is not supported"),
    ({"emissary": {"enabled": False}}, "emissary.enabled (false) is not supported"),
    ({"emissary": {"witness_interval": 1e-9}}, "emissary.witness_interval (1e-09) rounds to 0 microseconds"),
    (
        {"memory": {"signature_interval": 0.25}},
        "memory.signature_interval (0.25) must be a whole multiple of master.witness_interval (0.1)",
    ),
    (
        {"sync": {"hysteresis": 0.95}},
        "sync.hysteresis (0.95) must be smaller than kairos.coherence_threshold (0.95)",
    ),
    ({"sync": {"hysteresis": -0.01}}, "sync.hysteresis (-0.01) must be greater than or equal to 0"),
    ({"sync": {"phase_threshold": 0}}, "sync.phase_threshold (0) must be greater than 0"),
    ({"sync": {"lateness": -1}}, "sync.lateness (-1) must be 0 or greater"),
    ({"sync": {"max_future": 0}}, "sync.max_future (0) must be greater than 0 seconds"),
    (
        {"sync": {"publish_interval": 0.015}},
        "sync.publish_interval (0.015) must be a whole multiple of emissary.witness_interval (0.01)",
    ),
    ({"sync": {"mesh": {"peers": [{"host": "a", "port": 0}]}}}, "sync.mesh.peers[0].port (0) must be greater than or equal to 1"),
    (
        {"witnessing": {"meso_interval": 0.015}},
        "witnessing.meso_interval (0.015) must be a whole multiple of emissary.witness_interval (0.01)",
    ),
    ({"witnessing": {"layers": ["micro", "mezo"]}}, "witnessing.layers (['micro', 'mezo']) names unknown layer(s) 'mezo' (did you mean 'meso'?)"),
    ({"security": {"node_auth": "mutual_tls"}}, "security.node_auth ('mutual_tls') needs security.transport 'tls'"),
    ({"security": {"transport": "tls"}}, "security.cert_file: required: security.transport 'tls' needs"),
    ({"logging": {"level": "LOUD"}}, "logging.level ('LOUD') must be one of"),
    ({"source": {"kind": "kafka"}}, "kafka: required when source.kind is 'kafka'"),
    ({"source": {"kind": "carrier-pigeon"}}, "source.kind ('carrier-pigeon') must be one of 'synthetic', 'kafka', 'file'"),
    ({"source": {"rate_hz": 100}}, "source.kind: required key is missing"),
    ({"source": {"kind": "file", "path": "phases.txt"}}, "source.format: cannot tell from the suffix of source.path ('phases.txt')"),
    ({"source": {"kind": "file", "path": "p.csv", "format": "xls"}}, "source.format ('xls') must be one of"),
    ({"source": {"kind": "file"}}, "source.path: required key is missing"),
    ({"source": {"kind": "file", "path": "p.arrow", "batch_rows": 0}}, "source.batch_rows (0) must be greater than or equal to 1"),
    ({"source": {"kind": "file", "path": "p.arrow", "batch_rows": True}}, "source.batch_rows (true) must be a number, not true/false"),
    ({"source": {"kind": "file", "path": "p.arrow", "batch_rows": 2**24 + 1}}, "source.batch_rows (16777217) must be less than or equal to 16777216"),
    ({"source": {"kind": "synthetic", "rate_hz": 0.1}}, "source.rate_hz (0.1) gives a sample period longer than kairos.max_gap (5.0)"),
    ({"source": {"kind": "synthetic", "rate_hz": True}}, "source.rate_hz (true) must be a number, not true/false"),
    ({"source": {"kind": "synthetic", "start": "2025-01-01T00:00:00"}}, "source.start ('2025-01-01T00:00:00') ISO-8601 time needs a zone"),
    ({"source": {"kind": "synthetic", "sensors": []}}, "source.sensors ([]) must have at least 1 item"),
    (
        {"source": {"kind": "synthetic", "sensors": [{"name": "a", "kind": "steady"}, {"name": "a", "kind": "noise"}]}},
        "source.sensors[1].name ('a') is used by an earlier sensor",
    ),
    (
        {"source": {"kind": "synthetic", "sensors": [{"name": "a", "kind": "steady", "freq_hz": 50}]}},
        "source.sensors[0].freq_hz (50.0) must be below half of source.rate_hz (100.0)",
    ),
    (
        {"kairos": {"channel_weights": [1, 1]}, "source": {"kind": "synthetic"}},
        "source.sensors[0].channels (1) must equal the number of kairos.channel_weights (2)",
    ),
    (
        {"source": {"kind": "kafka", "topic": "becomingone.dlq"}, "kafka": {"bootstrap.servers": "k:9092"}},
        "sink.topics.dlq ('becomingone.dlq') is already used by source.topic",
    ),
    ({"sink": {"topics": {"sync": "has space"}}}, "sink.topics.sync ('has space') must be a Kafka topic name"),
    ({"kafka": {"security.protocol": "SSL"}}, "kafka.bootstrap.servers: required"),
    ({"kafka": {"bootstrap.servers": "k:9092", "group.id": "g"}}, "kafka.group.id: set source.group_id instead"),
    ({"kafka": {"bootstrap.servers": "k:9092", "ssl": {"ca": 1}}}, "kafka.ssl ({'ca': 1}) must be a string, number or true/false"),
    ({"kafka": {"bootstrap.servers": "k:9092", "Bootstrap.Servers": "x"}}, "kafka.Bootstrap.Servers: not a librdkafka property name"),
    ({"metrics": {"port": 70000}}, "metrics.port (70000) must be less than or equal to 65535"),
    ({"becomingone": {"name": "has space"}}, "becomingone.name ('has space') must start with a letter or digit"),
    ({"kairos": [1, 2]}, "kairos ([1, 2]) must be a mapping of keys"),
]


@pytest.mark.parametrize(("data", "message"), RULES, ids=[m.split(" ")[0] for _, m in RULES])
def test_every_rule_names_the_key_path_and_the_reason(data, message):
    text = problems_of(data)
    assert message in text
    assert "pydantic" not in text and "https://" not in text and "Value error" not in text


def test_rules_at_the_boundary_pass():
    parse_config(
        {
            "kairos": {"velocity_span": 0.0, "coherence_threshold": 1.0, "channel_weights": [0.0, 2.0]},
            "master": {"tau_max": 10.0, "min_span": 9.999999},
            "sync": {"hysteresis": 0.0, "lateness": 0.0},
            "source": {"kind": "synthetic", "sensors": [{"name": "a", "kind": "steady", "channels": 2}]},
        }
    )


UNKNOWN_KEYS = [
    ({"kairos": {"tau_scal": 1.0}}, "kairos.tau_scal: unknown key (did you mean 'tau_scale'?)"),
    ({"kairso": {}}, "kairso: unknown key (did you mean 'kairos'?)"),
    ({"sync": {"mesh": {"peer": []}}}, "sync.mesh.peer: unknown key (did you mean 'peers'?)"),
    ({"source": {"kind": "kafka", "topik": "x"}, "kafka": {"bootstrap.servers": "k"}}, "source.topik: unknown key (did you mean 'topic'?)"),
    (
        {"source": {"kind": "synthetic", "sensors": [{"name": "a", "kind": "noise", "chanels": 2}]}},
        "source.sensors[0].chanels: unknown key (did you mean 'channels'?)",
    ),
    ({"memory": {"storage": {"pth": "x"}}}, "memory.storage.pth: unknown key (did you mean 'path'?)"),
    ({"becomingone": {"kairos": {}}}, "becomingone.kairos: unknown key (sections are top level here: move 'kairos' out of 'becomingone')"),
    ({"metrics": {"zzz": 1}}, "metrics.zzz: unknown key"),
    (
        {"source": {"kind": "kafka", "rate_hz": 10}, "kafka": {"bootstrap.servers": "k"}},
        "source.rate_hz: unknown key (a key of source.kind 'synthetic', but source.kind is 'kafka')",
    ),
]


@pytest.mark.parametrize(("data", "message"), UNKNOWN_KEYS, ids=[m.split(":")[0] for _, m in UNKNOWN_KEYS])
def test_unknown_keys_are_rejected_with_a_suggestion(data, message):
    assert message in problems_of(data)


def test_all_problems_are_reported_at_once_one_line_each(tmp_path):
    path = write(
        tmp_path,
        """
        kairos:
          tau_scal: 1.0
          velocity_span: 1.5
          coherence_threshold: 2
        master:
          tau_max: 100.05
        metrics:
          port: -1
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=NO_ENV)
    err = info.value
    assert err.source == str(path)
    lines = list(err.problems)
    # velocity_span is still checked although another kairos key is invalid.
    assert any(line.startswith("kairos.velocity_span (1.5) must be smaller than kairos.tau_scale") for line in lines)
    assert any(line.startswith("kairos.tau_scal: unknown key") for line in lines)
    assert any(line.startswith("kairos.coherence_threshold (2)") for line in lines)
    assert any(line.startswith("master.tau_max (100.05) must be a whole multiple") for line in lines)
    assert any(line.startswith("metrics.port (-1)") for line in lines)
    assert len(lines) == 5
    assert all("\n" not in line for line in lines)
    assert str(err).splitlines()[0] == f"{path}: 5 problems"


def test_a_rule_is_not_run_on_a_key_that_is_already_invalid():
    text = problems_of({"kairos": {"coherence_threshold": 7}, "sync": {"hysteresis": 0.99}})
    assert "kairos.coherence_threshold (7)" in text
    assert "sync.hysteresis" not in text


# --------------------------------------------------------------------------
# Files.


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file") as info:
        load_config(tmp_path / "absent.yaml", environ=NO_ENV)
    assert "absent.yaml" in str(info.value)


def test_invalid_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "kairos:\n  tau_scale: 1.0\n  omega: [1, 2\nmaster: {}\n")
    with pytest.raises(ConfigError, match=r"invalid YAML at line \d+, column \d+"):
        load_config(path, environ=NO_ENV)


@pytest.mark.parametrize("text", ["- kairos\n- master\n", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(tmp_path, text):
    with pytest.raises(ConfigError, match="the top level must be a mapping"):
        load_config(write(tmp_path, text), environ=NO_ENV)


def test_duplicate_keys_are_rejected(tmp_path):
    path = write(tmp_path, "kairos:\n  omega: 1.0\n  omega: 2.0\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'omega' at line 3 \(first at line 2\)"):
        load_config(path, environ=NO_ENV)


def test_empty_file_and_empty_sections_mean_defaults(tmp_path):
    assert load_config(write(tmp_path, "# nothing set\n"), environ=NO_ENV) == Config()
    assert load_config(write(tmp_path, "kairos:\nmaster:\n"), environ=NO_ENV) == Config()


def test_seed_list_of_witness_layers(tmp_path):
    config = load_config(write(tmp_path, "witnessing:\n  layers: [micro, macro]\n"), environ=NO_ENV)
    assert config.witnessing.layers.model_dump() == {"micro": True, "meso": False, "macro": True, "meta": False}
    assert config.witnessing.layer_enabled("macro") and not config.witnessing.layer_enabled("meso")


def test_file_batch_rows_default_and_boundaries():
    assert parse_config({"source": {"kind": "file", "path": "p.csv"}}).source.batch_rows == FILE_BATCH_ROWS == 1_048_576
    for rows in (1, 2**24):
        assert parse_config({"source": {"kind": "file", "path": "p.csv", "batch_rows": rows}}).source.batch_rows == rows


def test_file_format_from_suffix():
    config = parse_config({"source": {"kind": "file", "path": "data/phases.PARQUET"}})
    assert isinstance(config.source, FileSource) and config.source.format == "parquet"


def test_config_is_immutable():
    config = Config()
    with pytest.raises(ValidationError, match="frozen"):
        config.kairos.tau_scale = 2.0  # type: ignore[misc]


# --------------------------------------------------------------------------
# Environment.


def test_becomingone_config_variable_selects_the_file(tmp_path):
    path = write(tmp_path, "kairos: {omega: 2.0}\n")
    assert load_config(environ={"BECOMINGONE_CONFIG": str(path)}).kairos.omega == 2.0
    # An explicit path wins over the variable.
    assert load_config(EXAMPLE, environ={"BECOMINGONE_CONFIG": str(path)}).kairos.omega == 0.0


def test_env_overrides_are_typed_nested_and_case_insensitive():
    env = {
        "BECOMINGONE__KAIROS__OMEGA": "2.5",
        "BECOMINGONE__KAIROS__CHANNEL_WEIGHTS": "[1, 2]",
        "becomingone__sync__mesh_enabled": "true",
        "BECOMINGONE__SYNC__MESH__PEERS": "[{host: a, port: 1}]",
        "BECOMINGONE__WITNESSING__LAYERS__MESO": "false",
        "BECOMINGONE__MEMORY__STORAGE__PATH": "/srv/archive",
        "BECOMINGONE__SOURCE__SENSORS": "[{name: s, kind: noise, channels: 2}]",
        "BECOMINGONE__BECOMINGONE__NAME": "007",  # strings stay strings
        "BECOMINGONE_CONFIG_UNRELATED": "ignored",
    }
    c = load_config(environ=env)
    assert c.kairos.omega == 2.5
    assert c.kairos.channel_weights == (1.0, 2.0)
    assert c.sync.mesh_enabled is True
    assert c.sync.mesh.peers[0].host == "a"
    assert c.witnessing.layers.meso is False and c.witnessing.layers.micro is True
    assert c.memory.storage.path == "/srv/archive"
    assert c.source.sensors[0].channels == 2
    assert c.becomingone.name == "007"


def test_env_overrides_kafka_settings_with_dots_and_keeps_text_verbatim():
    env = {
        "BECOMINGONE__SOURCE__KIND": "kafka",
        "BECOMINGONE__SOURCE__GROUP_ID": "g1",
        "BECOMINGONE__KAFKA__BOOTSTRAP_SERVERS": "broker:9092",
        "BECOMINGONE__KAFKA__SASL_PASSWORD": "#not: yaml",
    }
    c = load_config(environ=env)
    assert isinstance(c.source, KafkaSource) and c.source.group_id == "g1"
    assert c.kafka is not None
    assert c.kafka.client_settings() == {"bootstrap.servers": "broker:9092", "sasl.password": "#not: yaml"}
    shown = c.to_yaml(redact_secrets=True)
    assert "#not: yaml" not in shown and "sasl.password: <redacted>" in shown


def test_env_switching_the_source_kind_drops_the_file_source_keys():
    # The embedded default has a synthetic source; switching its kind from the
    # environment must not trip over the synthetic keys.
    env = {"BECOMINGONE__SOURCE__KIND": "file", "BECOMINGONE__SOURCE__PATH": "in.arrow"}
    c = load_config(environ=env)
    assert isinstance(c.source, FileSource) and c.source.format == "arrow"


def test_env_override_of_an_unknown_key_names_the_variable():
    with pytest.raises(ConfigError) as info:
        load_config(environ={"BECOMINGONE__KAIROS__TAU_SCAL": "2"})
    assert "BECOMINGONE__KAIROS__TAU_SCAL: kairos.tau_scal is not a config key (did you mean 'tau_scale'?)" in str(info.value)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("BECOMINGONE__NOPE", "nope is not a config key"),
        ("BECOMINGONE__KAIROS__OMEGA__X", "kairos.omega is a value, not a section"),
        ("BECOMINGONE__KAIROS____OMEGA", "empty key between '__' separators"),
        ("BECOMINGONE__SOURCE__TOPIC", "source.topic is not a config key"),  # the default source is synthetic
    ],
)
def test_env_override_errors(name, message):
    with pytest.raises(ConfigError) as info:
        load_config(environ={name: "1"})
    assert f"{name}: {message}" in str(info.value)


def test_invalid_value_from_env_names_the_variable():
    with pytest.raises(ConfigError) as info:
        load_config(environ={"BECOMINGONE__MASTER__TAU_MAX": "100.05"})
    assert (
        "master.tau_max (100.05) must be a whole multiple of master.witness_interval (0.1)"
        in str(info.value)
    )
    assert "(set by BECOMINGONE__MASTER__TAU_MAX)" in str(info.value)


# --------------------------------------------------------------------------
# Round trip.


def test_to_yaml_round_trips(tmp_path):
    custom = {
        "becomingone": {"name": "node-2"},
        "kairos": {"omega": 2.0, "channel_weights": [1.0, 0.5], "velocity_span": 0.05},
        "master": {"tau_max": 600, "witness_interval": 0.2, "min_span": 30},
        "sync": {"mesh_enabled": True, "mesh": {"peers": [{"host": "h", "port": 18789}]}, "lateness": 0.25},
        "witnessing": {"layers": ["micro"]},
        "source": {"kind": "file", "path": "in.jsonl"},
        "kafka": {"bootstrap.servers": "k:9092", "enable.idempotence": True, "linger.ms": 5},
        "logging": {"level": "debug"},
    }
    for config in (Config(), load_config(EXAMPLE, environ=NO_ENV), parse_config(custom)):
        text = config.to_yaml()
        assert load_config(write(tmp_path, text), environ=NO_ENV) == config
        assert parse_config(yaml.safe_load(text)) == config


def test_start_time_round_trips_exactly(tmp_path):
    config = parse_config({"source": {"kind": "synthetic", "start": "2025-11-26T01:00:00.000001+01:00"}})
    assert config.source.start_us == 1_764_115_200_000_001
    again = load_config(write(tmp_path, config.to_yaml()), environ=NO_ENV)
    assert again.source.start_us == 1_764_115_200_000_001


def test_default_text_is_the_packaged_file():
    assert "becomingone:" in default_config_text()


# --------------------------------------------------------------------------
# The command line.


def _cli(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("becomingone")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "flows.cli"]
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("BECOMINGONE")}
    env.update(env_extra or {})
    return subprocess.run(command + list(args), capture_output=True, text=True, env=env, timeout=60)


def test_cli_config_prints_the_effective_config(tmp_path):
    done = _cli("config", env_extra={"BECOMINGONE__KAIROS__OMEGA": "3.0"})
    assert done.returncode == 0, done.stderr
    printed = load_config(write(tmp_path, done.stdout), environ=NO_ENV)
    assert printed.kairos.omega == 3.0
    assert printed == load_config(environ={"BECOMINGONE__KAIROS__OMEGA": "3.0"})


def test_cli_config_check():
    done = _cli("config", "--check", "--config", str(EXAMPLE))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "config ok"


def test_cli_bad_config_exits_2_with_the_key_path(tmp_path):
    path = write(tmp_path, "kairos:\n  velocity_span: 1.5\n")
    done = _cli("config", "--check", "--config", str(path))
    assert done.returncode == 2
    assert "kairos.velocity_span (1.5) must be smaller than kairos.tau_scale (1.0)" in done.stderr
    assert done.stdout == ""


def test_the_secrets_of_mesh_peers_and_of_an_audited_cluster_are_not_printed():
    c = parse_config({
        "sync": {"mesh": {"peers": [{"bootstrap": "far:9093", "kafka": {"sasl.password": "peer-s3cret",
                                                                      "security.protocol": "SASL_SSL"}}]}},
        "witness_node": {"kafka": {"bootstrap.servers": "audited:9092", "sasl.password": "audit-s3cret"}},
    })
    shown = c.to_yaml(redact_secrets=True)
    assert "peer-s3cret" not in shown and "audit-s3cret" not in shown
    assert shown.count("sasl.password: <redacted>") == 2 and "security.protocol: SASL_SSL" in shown


def test_a_mesh_weight_out_of_range_names_the_sensor():
    with pytest.raises(ConfigError) as err:
        parse_config({"sync": {"mesh": {"weights": {"pmu-7": 1e9, "pmu-8": -1}}}})
    text = str(err.value)
    assert "sync.mesh.weights.pmu-7" in text and "sync.mesh.weights.pmu-8" in text


def test_a_mesh_peers_kafka_settings_are_checked_like_the_kafka_section():
    with pytest.raises(ConfigError) as err:
        parse_config({"sync": {"mesh": {"peers": [{"host": "far", "port": 9092, "kafka": {
            "group.id": "x", "Bad Key": 1, "ssl.ca.location": None, "bootstrap.servers": "other:9092"}}]}}})
    text = str(err.value)
    for key in ("group.id", "Bad Key", "ssl.ca.location", "bootstrap.servers"):
        assert f"sync.mesh.peers[0].kafka.{key}" in text, key
