"""Cross-field rules: what no single key can check alone.

Each rule names the keys it reads and runs whenever those keys are valid,
even if other keys of the same file are not, so one report shows every
problem.  All duration arithmetic is on whole microseconds (SPEC section 2),
so a config that passes here pairs samples and aligns grids exactly.
"""

from __future__ import annotations

import math
import re
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from schemas.config.errors import _fmt
from schemas.config.stream_sections import FileSource, KafkaSource, SinkTopics, SyntheticSource
from schemas.config.values import FILE_FORMATS
from schemas.timebase import duration_to_micros

# librdkafka property names: lower case words joined by dots or underscores.
_KAFKA_KEY_RE = re.compile(r"^[a-z][a-z0-9]*(?:[._][a-z0-9]+)*$")

_Rule = Callable[[Any], Iterator[tuple[str, str]]]
_RULES: list[tuple[tuple[str, ...], _Rule]] = []


def _rule(*keys: str) -> Callable[[_Rule], _Rule]:
    """Register a rule reading ``keys`` (dotted paths) of the config ``c``."""

    def register(fn: _Rule) -> _Rule:
        _RULES.append((keys, fn))
        return fn

    return register


def _blocked(key: str, failed: Iterable[str]) -> bool:
    """True when ``key``, a parent or a child of it has a problem already."""
    for bad in failed:
        if bad == key or bad.startswith((key + ".", key + "[")) or key.startswith(bad + "."):
            return True
    return False


def _rule_problems(sections: Mapping[str, Any], failed: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    """Problems found by the rules whose keys are all valid.

    Args:
        sections: section name -> validated section (absent when invalid).
        failed: key paths that already have a problem.
    """
    c = types.SimpleNamespace(**sections)
    problems: list[tuple[str, str]] = []
    for keys, rule in _RULES:
        if all(k.split(".")[0] in sections and not _blocked(k, failed) for k in keys):
            problems.extend(rule(c))
    return problems


def _smaller(a_path: str, a: float, b_path: str, b: float) -> Iterator[tuple[str, str]]:
    a_us, b_us = duration_to_micros(a), duration_to_micros(b)
    if a_us >= b_us:
        why = f" (both are {a_us} us)" if a < b else ""
        yield a_path, f"{a_path} ({_fmt(a)}) must be smaller than {b_path} ({_fmt(b)}){why}"


def _whole_multiple(a_path: str, a: float, b_path: str, b: float, why: str) -> Iterator[tuple[str, str]]:
    a_us, b_us = duration_to_micros(a), duration_to_micros(b)
    if a_us % b_us:
        yield a_path, f"{a_path} ({_fmt(a)}) must be a whole multiple of {b_path} ({_fmt(b)}): {why}"


@_rule("kairos.velocity_span", "kairos.tau_scale")
def _velocity_span_below_tau(c: Any) -> Iterator[tuple[str, str]]:
    # The two velocity spans of a lag product must not share a sample.
    yield from _smaller("kairos.velocity_span", c.kairos.velocity_span, "kairos.tau_scale", c.kairos.tau_scale)


@_rule("kairos.channel_weights")
def _channel_weights_usable(c: Any) -> Iterator[tuple[str, str]]:
    w = c.kairos.channel_weights
    if w is not None and (len(w) == 0 or sum(w) <= 0):
        yield (
            "kairos.channel_weights",
            f"kairos.channel_weights ({_fmt(list(w))}) must be null or a non-empty list with a positive sum",
        )


@_rule("master.tau_max", "master.witness_interval")
def _master_window_is_panes(c: Any) -> Iterator[tuple[str, str]]:
    yield from _whole_multiple(
        "master.tau_max", c.master.tau_max, "master.witness_interval", c.master.witness_interval,
        "the Master keeps one pane per emission interval, so its window must be a union of panes",
    )


@_rule("master.min_span", "master.tau_max")
def _master_can_mature(c: Any) -> Iterator[tuple[str, str]]:
    # Products in the window (g - W, g] span strictly less than W, so a
    # min_span of W or more could never be reached.
    if c.master.min_span_us >= c.master.tau_max_us:
        yield (
            "master.min_span",
            f"master.min_span ({_fmt(c.master.min_span)}) must be smaller than master.tau_max "
            f"({_fmt(c.master.tau_max)}): products in a window of length tau_max span less than "
            "tau_max, so the Master would never mature",
        )


@_rule("master.witness_interval", "emissary.witness_interval")
def _grids_nest(c: Any) -> Iterator[tuple[str, str]]:
    yield from _whole_multiple(
        "master.witness_interval", c.master.witness_interval,
        "emissary.witness_interval", c.emissary.witness_interval,
        "every Master grid point must be an Emissary grid point",
    )


@_rule("master.enabled")
def _master_on(c: Any) -> Iterator[tuple[str, str]]:
    if not c.master.enabled:
        yield "master.enabled", "master.enabled (false) is not supported: the sync joins the Master and the Emissary"


@_rule("emissary.enabled")
def _emissary_on(c: Any) -> Iterator[tuple[str, str]]:
    if not c.emissary.enabled:
        yield "emissary.enabled", "emissary.enabled (false) is not supported: the sync joins the Master and the Emissary"


@_rule("memory.signature_interval", "master.witness_interval")
def _signatures_on_master_grid(c: Any) -> Iterator[tuple[str, str]]:
    yield from _whole_multiple(
        "memory.signature_interval", c.memory.signature_interval,
        "master.witness_interval", c.master.witness_interval,
        "signatures are taken on Master grid points",
    )


@_rule("sync.hysteresis", "kairos.coherence_threshold")
def _hysteresis_below_threshold(c: Any) -> Iterator[tuple[str, str]]:
    if not c.sync.hysteresis < c.kairos.coherence_threshold:
        yield (
            "sync.hysteresis",
            f"sync.hysteresis ({_fmt(c.sync.hysteresis)}) must be smaller than "
            f"kairos.coherence_threshold ({_fmt(c.kairos.coherence_threshold)})",
        )


@_rule("sync.publish_interval", "emissary.witness_interval")
def _publish_on_emissary_grid(c: Any) -> Iterator[tuple[str, str]]:
    yield from _whole_multiple(
        "sync.publish_interval", c.sync.publish_interval,
        "emissary.witness_interval", c.emissary.witness_interval,
        "T_sync exists only on Emissary grid points",
    )


@_rule("sync.mesh.window", "sync.mesh.interval")
def _mesh_window_on_grid(c: Any) -> Iterator[tuple[str, str]]:
    yield from _whole_multiple(
        "sync.mesh.window", c.sync.mesh.window, "sync.mesh.interval", c.sync.mesh.interval,
        "the window holds whole mesh grid points",
    )


@_rule("sync.mesh.publish_interval", "sync.mesh.interval")
def _mesh_publish_on_grid(c: Any) -> Iterator[tuple[str, str]]:
    yield from _whole_multiple(
        "sync.mesh.publish_interval", c.sync.mesh.publish_interval, "sync.mesh.interval", c.sync.mesh.interval,
        "mesh rows exist only on mesh grid points",
    )


@_rule("sync.mesh.window", "sync.mesh.publish_interval")
def _mesh_window_in_panes(c: Any) -> Iterator[tuple[str, str]]:
    yield from _whole_multiple(
        "sync.mesh.window", c.sync.mesh.window, "sync.mesh.publish_interval", c.sync.mesh.publish_interval,
        "each sensor's lock sums its phasors in panes of publish_interval",
    )


@_rule("sync.mesh.threshold", "sync.hysteresis", "kairos.coherence_threshold")
def _mesh_hysteresis_below_threshold(c: Any) -> Iterator[tuple[str, str]]:
    threshold = c.sync.mesh.threshold if c.sync.mesh.threshold is not None else c.kairos.coherence_threshold
    if not c.sync.hysteresis < threshold:
        yield (
            "sync.mesh.threshold",
            f"sync.mesh.threshold ({_fmt(threshold)}) must be larger than sync.hysteresis ({_fmt(c.sync.hysteresis)})",
        )


@_rule("becomingone.node", "kafka")
def _kafka_node_needs_kafka(c: Any) -> Iterator[tuple[str, str]]:
    own = c.witness_node.kafka if c.becomingone.node == "witness" else c.relay.source
    if c.becomingone.node in ("witness", "relay") and c.kafka is None and own is None:
        where = "witness_node.kafka" if c.becomingone.node == "witness" else "relay.source"
        yield "kafka", (f"kafka: required by becomingone.node {c.becomingone.node!r} "
                        f"(set kafka.bootstrap.servers, or {where})")


@_rule("relay.source")
def _relay_source_settings(c: Any) -> Iterator[tuple[str, str]]:
    if c.relay.source is not None:
        yield from _client_settings_problems("relay.source", c.relay.source.root, "set relay.group_id instead")


@_rule("becomingone.node", "relay.target")
def _relay_target_settings(c: Any) -> Iterator[tuple[str, str]]:
    settings = c.relay.target.root
    if c.becomingone.node != "relay" and not settings:
        return
    yield from _client_settings_problems(
        "relay.target", settings, "not used (the relay only writes to the target; its group is relay.group_id)",
        required="by becomingone.node 'relay' (the cluster it writes to)" if c.becomingone.node == "relay" else "")


@_rule("becomingone.node", "kafka", "relay.source", "relay.target")
def _relay_between_two_clusters(c: Any) -> Iterator[tuple[str, str]]:
    # A relay from a cluster to itself would copy every topic onto itself, forever.
    source = c.relay.source if c.relay.source is not None else c.kafka
    if c.becomingone.node != "relay" or source is None:
        return
    here = _servers(source.root.get("bootstrap.servers"))
    there = _servers(c.relay.target.root.get("bootstrap.servers"))
    if here and here == there:
        yield ("relay.target.bootstrap.servers",
               f"relay.target.bootstrap.servers ({c.relay.target.root['bootstrap.servers']!r}) is the cluster the "
               "relay reads from: each topic would be copied onto itself")


def _servers(text: Any) -> frozenset[str]:
    """The addresses of a ``bootstrap.servers`` list, without order, spaces or case."""
    if not isinstance(text, str):
        return frozenset()
    return frozenset(a.strip().lower() for a in text.split(",") if a.strip())


@_rule("relay.topics")
def _relay_topics_unique(c: Any) -> Iterator[tuple[str, str]]:
    seen: set[str] = set()
    for i, topic in enumerate(c.relay.topics):
        if topic in seen:
            yield f"relay.topics[{i}]", f"relay.topics[{i}] ({topic!r}) is listed already"
        seen.add(topic)


@_rule("witnessing.meso_interval", "emissary.witness_interval")
def _meso_on_emissary_grid(c: Any) -> Iterator[tuple[str, str]]:
    yield from _whole_multiple(
        "witnessing.meso_interval", c.witnessing.meso_interval,
        "emissary.witness_interval", c.emissary.witness_interval,
        "meso samples are taken on Emissary grid points",
    )


@_rule("security.node_auth", "security.transport")
def _mutual_tls_needs_tls(c: Any) -> Iterator[tuple[str, str]]:
    if c.security.node_auth == "mutual_tls" and c.security.transport != "tls":
        yield (
            "security.node_auth",
            f"security.node_auth ('mutual_tls') needs security.transport 'tls', not {c.security.transport!r}",
        )


@_rule("security")
def _tls_files(c: Any) -> Iterator[tuple[str, str]]:
    if c.security.node_auth == "mutual_tls" and c.security.transport != "tls":
        return  # said above; the files would only repeat it
    yield from c.security.file_problems()


@_rule("security.transport", "kafka", "witness_node.kafka", "relay.source", "relay.target", "sync.mesh.peers")
def _kafka_keeps_tls(c: Any) -> Iterator[tuple[str, str]]:
    # security.transport: tls is every Kafka client's; a side that says plaintext contradicts it.
    for prefix, settings in _kafka_sides(c):
        why = c.security.kafka_conflict(settings)
        if why is not None:
            yield f"{prefix}.security.protocol", f"{prefix}.{why}"


def _kafka_sides(c: Any) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(key path, librdkafka settings) of every Kafka client side the config names."""
    if c.kafka is not None:
        yield "kafka", c.kafka.root
    if c.witness_node.kafka is not None:
        yield "witness_node.kafka", c.witness_node.kafka
    if c.relay.source is not None:
        yield "relay.source", c.relay.source.root
    yield "relay.target", c.relay.target.root
    for i, peer in enumerate(c.sync.mesh.peers):
        yield f"sync.mesh.peers[{i}].kafka", peer.kafka


@_rule("kafka")
def _kafka_settings(c: Any) -> Iterator[tuple[str, str]]:
    if c.kafka is not None:
        yield from _client_settings_problems("kafka", c.kafka.root, "set source.group_id instead "
                                             "(the consumer group belongs to the source)")


@_rule("witness_node.kafka")
def _witness_node_kafka_settings(c: Any) -> Iterator[tuple[str, str]]:
    if c.witness_node.kafka is not None:
        yield from _client_settings_problems("witness_node.kafka", c.witness_node.kafka,
                                             "set witness_node.group_id instead (the consumer group belongs to "
                                             "the reader)")


@_rule("sync.mesh.peers")
def _mesh_peer_kafka_settings(c: Any) -> Iterator[tuple[str, str]]:
    # A peer's settings go over the node's kafka section; its address is host/port or bootstrap.
    for i, peer in enumerate(c.sync.mesh.peers):
        prefix = f"sync.mesh.peers[{i}].kafka"
        if "bootstrap.servers" in peer.kafka:
            yield (f"{prefix}.bootstrap.servers", f"{prefix}.bootstrap.servers: give the peer's address as "
                   f"sync.mesh.peers[{i}].bootstrap (or host and port) instead")
        settings = {k: v for k, v in peer.kafka.items() if k != "bootstrap.servers"}
        yield from _client_settings_problems(prefix, {**settings, "bootstrap.servers": peer.bootstrap_servers},
                                             "the mesh's consumer group is <becomingone.name>-mesh")


def _client_settings_problems(prefix: str, settings: Mapping[str, Any], group_hint: str,
                              required: str = "") -> Iterator[tuple[str, str]]:
    """Problems of one side's librdkafka settings (the ``kafka`` section or a section of that shape)."""
    for key, value in settings.items():
        path = f"{prefix}.{key}"
        if not _KAFKA_KEY_RE.match(key):
            yield path, f"{path}: not a librdkafka property name (lower case words joined by '.')"
        elif key == "group.id":
            yield path, f"{path}: {group_hint}"
        elif key == "unavailable_timeout":
            yield from _unavailable_timeout_problems(path, value)
        elif isinstance(value, (dict, list, tuple)) or value is None:
            yield path, f"{path} ({_fmt(value)}) must be a string, number or true/false"
    servers = settings.get("bootstrap.servers")
    if not isinstance(servers, str) or not servers.strip():
        why = required or f"when {prefix} is set"
        yield f"{prefix}.bootstrap.servers", f"{prefix}.bootstrap.servers: required (e.g. 'localhost:9092') {why}"


@_rule("becomingone.node", "witness_node.topic", "witness_node.kafka", "kafka", "sink.topics.collapse")
def _witness_reads_no_topic_it_writes(c: Any) -> Iterator[tuple[str, str]]:
    # Its break events go to the collapse topic of its own cluster, or of the audited one when it has
    # none: on the cluster it reads, that topic must not be the one it audits.
    same_cluster = c.kafka is None or c.witness_node.kafka is None
    if c.becomingone.node == "witness" and same_cluster and c.witness_node.topic == c.sink.topics.collapse:
        yield ("witness_node.topic", f"witness_node.topic ({c.witness_node.topic!r}) is this node's "
               "sink.topics.collapse, where its break events go")


def _unavailable_timeout_problems(path: str, value: Any) -> Iterator[tuple[str, str]]:
    try:
        seconds = None if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        seconds = None
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        yield path, (f"{path} ({_fmt(value)}) must be a number of seconds, 0 or more "
                     "(how long the flow runs while no Kafka broker answers; 0 = wait forever)")


@_rule("source.kind", "kafka")
def _kafka_source_needs_kafka(c: Any) -> Iterator[tuple[str, str]]:
    if isinstance(c.source, KafkaSource) and c.kafka is None:
        yield "kafka", "kafka: required when source.kind is 'kafka' (set kafka.bootstrap.servers)"


@_rule("source.kind", "source.topic", "sink.topics")
def _topics_distinct(c: Any) -> Iterator[tuple[str, str]]:
    seen: dict[str, str] = {}
    if isinstance(c.source, KafkaSource):
        seen[c.source.topic] = "source.topic"
    for name in SinkTopics.model_fields:
        topic = getattr(c.sink.topics, name)
        path = f"sink.topics.{name}"
        if topic in seen:
            yield path, f"{path} ({topic!r}) is already used by {seen[topic]}"
        else:
            seen[topic] = path


@_rule("source.kind", "source.sensors")
def _synthetic_sensor_names_unique(c: Any) -> Iterator[tuple[str, str]]:
    if not isinstance(c.source, SyntheticSource):
        return
    seen: set[str] = set()
    for i, sensor in enumerate(c.source.sensors):
        if sensor.name in seen:
            path = f"source.sensors[{i}].name"
            yield path, f"{path} ({sensor.name!r}) is used by an earlier sensor"
        seen.add(sensor.name)


@_rule("source.kind", "source.sensors", "source.rate_hz")
def _synthetic_below_nyquist(c: Any) -> Iterator[tuple[str, str]]:
    if not isinstance(c.source, SyntheticSource):
        return
    for i, sensor in enumerate(c.source.sensors):
        if not sensor.freq_hz < c.source.rate_hz / 2:
            path = f"source.sensors[{i}].freq_hz"
            yield path, (
                f"{path} ({_fmt(sensor.freq_hz)}) must be below half of source.rate_hz "
                f"({_fmt(c.source.rate_hz)}), the Nyquist frequency"
            )


@_rule("source.kind", "source.rate_hz", "kairos.max_gap")
def _synthetic_rate_keeps_chains(c: Any) -> Iterator[tuple[str, str]]:
    if isinstance(c.source, SyntheticSource) and c.source.period_us > c.kairos.max_gap_us:
        yield (
            "source.rate_hz",
            f"source.rate_hz ({_fmt(c.source.rate_hz)}) gives a sample period longer than "
            f"kairos.max_gap ({_fmt(c.kairos.max_gap)}): every sample would start a new chain",
        )


@_rule("source.kind", "source.sensors", "kairos.channel_weights")
def _synthetic_channels_match_weights(c: Any) -> Iterator[tuple[str, str]]:
    if not isinstance(c.source, SyntheticSource) or c.kairos.channel_weights is None:
        return
    n = len(c.kairos.channel_weights)
    for i, sensor in enumerate(c.source.sensors):
        if sensor.channels != n:
            path = f"source.sensors[{i}].channels"
            yield path, f"{path} ({sensor.channels}) must equal the number of kairos.channel_weights ({n})"


@_rule("source.kind", "source.path", "source.format")
def _file_format_known(c: Any) -> Iterator[tuple[str, str]]:
    if isinstance(c.source, FileSource) and c.source.format is None:
        yield (
            "source.format",
            f"source.format: cannot tell from the suffix of source.path ({c.source.path!r}); "
            f"set it to one of {', '.join(FILE_FORMATS)}",
        )
