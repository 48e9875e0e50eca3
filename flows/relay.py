"""The relay node (``becomingone.node: relay``): topics copied from one Kafka cluster to another.

A relay is a pure copy: no computation to spread over workers, no state but
the source offsets and a window of recent message digests.  So
``becomingone run --node relay`` runs it as a plain loop of rounds
(:class:`connectors.kafka.Relay`), and Bytewax adds nothing there:

- where it resumes is the consumer group's committed offsets, committed only
  after the target confirmed delivery; they hold across kill -9 with or
  without a Bytewax recovery store, and lag tools read them as they are;
- a snapshot of the dedup window would not help after a kill: what a
  restarted relay sends again is exactly what came after the last snapshot.
  The window is filled from the newest messages of the target instead;
- several relay processes in one consumer group share the partitions by
  Kafka's own rebalancing.

``python -m bytewax.run flows.kairos`` with ``becomingone.node: relay`` runs
the same loop inside a dataflow (:func:`build_relay_flow`): one source
partition whose every poll is one round.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from functools import partial
from typing import Any, TextIO

from connectors.kafka.relay import Relay
from connectors.stopping import StopSignal
from flows.startup import ConfigOrigin, log_startup
from schemas.config import Config, KafkaSection

__all__ = ["build_relay_flow", "check_relay_clusters", "relay_command", "relay_of", "relay_sides", "run_relay"]

#: Seconds a round of the plain loop waits for messages (and so for a stop request to be noticed).
ROUND_WAIT = 0.5


def relay_sides(config: Config) -> tuple[KafkaSection, KafkaSection]:
    """The (source, target) client settings of the relay: ``relay.source`` or else ``kafka``, and ``relay.target``."""
    source = config.relay.source if config.relay.source is not None else config.kafka
    if source is None:  # the config rules prevent it for a relay node
        raise ValueError("kafka: required by becomingone.node 'relay' (set kafka.bootstrap.servers, or relay.source)")
    return source, config.relay.target


def relay_of(config: Config) -> Relay:
    """The relay ``config`` describes (not started).

    Output waits for an unreachable target as the dataflow's Kafka output does: its
    ``unavailable_timeout``, and librdkafka's ``message.timeout.ms`` 30 s more unless set.

    Raises:
        KafkaSetupError: a side has no bootstrap address.
    """
    from connectors.kafka import RelayTarget, admin_settings, consumer_settings, producer_settings

    source, target = relay_sides(config)
    r = config.relay
    client = f"{config.becomingone.name}-relay"
    produce = producer_settings(target, client_id=client)
    wait = target.unavailable_timeout
    if "message.timeout.ms" not in target.root:
        produce["message.timeout.ms"] = str(int((wait + 30.0) * 1000)) if wait > 0 else "0"
    far = RelayTarget(produce, admin_settings(target, client_id=client), unavailable_timeout=wait)
    read = consumer_settings(source, r.group_id, from_beginning=r.from_beginning, client_id=client)
    return Relay(read, admin_settings(source, client_id=client), far, r.topics, batch_size=r.batch_size,
                 dedup_window=r.dedup_window, unavailable_timeout=source.unavailable_timeout,
                 timeout_key=f"{'relay.source' if r.source is not None else 'kafka'}.unavailable_timeout")


def check_relay_clusters(config: Config, timeout: float = 10.0) -> None:
    """Both sides of the relay answer within ``timeout`` seconds (before a flow starts).

    Raises:
        KafkaUnreachable: naming the side's bootstrap address.
        KafkaSetupError: librdkafka refused a side's settings.
    """
    from connectors.kafka import admin_settings, connect_admin

    for side in relay_sides(config):
        connect_admin(admin_settings(side, client_id=f"{config.becomingone.name}-relay"), timeout=timeout)


# --------------------------------------------------------------------------
# `python -m bytewax.run flows.kairos` with becomingone.node: relay


def build_relay_flow(config: Config, observer: Any = None, flow_id: str = "becomingone-relay"):
    """The relay as a dataflow: one source partition running its rounds, ended by ``observer.stop``
    (a :class:`~flows.observer.FlowObserver`; its metrics endpoint is served once the relay starts)."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow

    from connectors.discard import Discard
    from connectors.kafka import RelaySource
    from connectors.stopping import StoppableSource
    from flows.observer import FlowObserver

    observer = FlowObserver.of(config) if observer is None else observer
    flow = Dataflow(flow_id)
    rounds = op.input("relay", flow, StoppableSource(RelaySource(partial(_observed_relay, config, observer)),
                                                     observer.stop))
    op.output("discard", rounds, Discard())
    return flow


def _observed_relay(config: Config, observer: Any) -> Relay:
    observer.start()
    return relay_of(config)


# --------------------------------------------------------------------------
# `becomingone run --node relay`


def run_relay(config: Config, *, out: TextIO, err: TextIO, timeout: float = 10.0,
              stop: StopSignal | None = None, origin: ConfigOrigin | None = None) -> int:
    """Relay until SIGTERM or SIGINT (or ``stop``); the number of the signal that stopped it.

    The first signal ends the loop after the current round, which is delivered and
    committed (a drain); a second one aborts (KeyboardInterrupt).  A closing line on
    ``out`` says what was copied.  With ``origin`` (where the config came from) the startup
    line is logged once both clusters answered (:func:`flows.startup.log_startup`).

    Raises:
        OSError: the metrics port cannot be bound, or a cluster did not answer
            (:class:`connectors.kafka.KafkaUnreachable`, :class:`connectors.kafka.KafkaUnavailable`).
        KafkaSetupError: librdkafka refused a side's settings.
        TopicSetupError: a relayed topic is missing on the source or cannot be created on the target.
        DeliveryFailed: the target refused messages.
    """
    from connectors.health import flow_health
    from connectors.endpoint import endpoint_tls, serve

    stop = StopSignal() if stop is None else stop
    health = flow_health()
    health.begin(archive=None, kafka=True)
    if config.metrics.enabled:
        serve(config.metrics.bind, config.metrics.port, endpoint_tls(config.security))
    relay = relay_of(config)
    stopped_by: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        if stopped_by:
            raise KeyboardInterrupt
        stopped_by.append(signum)
        stop.request()
        err.write(f"relay: stopping ({signal.Signals(signum).name}): delivering what was read\n")

    handled = (signal.SIGINT, signal.SIGTERM)
    main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, on_signal) for s in handled} if main else {}
    started = False
    try:
        check_relay_clusters(config, timeout)  # first: a cluster out of reach is named before any topic
        relay.start(timeout)
        started = True
        health.running(stop.requested)
        health.partition_built()  # /readyz: the relay's consumer has its topics
        if origin is not None:
            log_startup(config, origin)
        err.write(f"relay: copying {', '.join(relay.topics)} from {relay.health.bootstrap} to "
                  f"{relay.target.bootstrap} (consumer group {relay.group_id})\n")
        err.flush()
        while not stop.requested():
            relay.step(ROUND_WAIT)
    except BaseException:
        health.finish("failed")
        raise
    else:
        health.finish("stopped")
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        relay.close()
        if started:
            _summary(relay, out)
    return stopped_by[0] if stopped_by else 0


def _summary(relay: Relay, out: TextIO) -> None:
    counts = relay.counts
    per_topic = ", ".join(f"{t} {counts.copied[t]:,}" for t in relay.topics)
    out.write(f"relayed {sum(counts.copied.values()):,} message(s) ({per_topic}) from {relay.health.bootstrap} "
              f"to {relay.target.bootstrap} in {counts.seconds:.1f} s; "
              f"{sum(counts.duplicates.values()):,} repeat(s) dropped\n")
    out.flush()


def relay_command(config: Config, args: argparse.Namespace, origin: ConfigOrigin | None = None) -> int:
    """``becomingone run`` of a relay node: exit 0 after SIGTERM, 130 after Ctrl-C, 1 when a cluster
    fails the relay, 2 when librdkafka refuses the settings."""
    from connectors.kafka import DeliveryFailed, KafkaSetupError, RelayError, TopicSetupError

    try:
        signum = run_relay(config, out=sys.stdout, err=sys.stderr, timeout=args.timeout, origin=origin)
    except KeyboardInterrupt:
        print("becomingone run: interrupted", file=sys.stderr)
        return 130
    except KafkaSetupError as exc:
        print(f"becomingone run: {exc}", file=sys.stderr)
        return 2
    except (OSError, TopicSetupError, DeliveryFailed, RelayError) as exc:
        print(f"becomingone run: {exc}", file=sys.stderr)
        return 1
    if signum == signal.SIGINT:
        print("becomingone run: interrupted", file=sys.stderr)
        return 130
    return 0
