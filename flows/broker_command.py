"""``becomingone broker``: librdkafka's mock Kafka cluster on loopback, optionally behind a TLS front.

The cluster is :class:`connectors.kafka.MockBroker`; with ``--tls-cert`` and
``--tls-key`` every broker gets a TLS listener
(:mod:`connectors.kafka.tls_front`) and clients only ever see those;
``--tls-client-ca`` makes them require client certificates (mutual TLS).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from flows.arguments import port_number, positive_int

if TYPE_CHECKING:
    from connectors.kafka import MockBroker
    from connectors.kafka.tls_front import TlsFiles

__all__ = ["add_parser", "cmd_broker"]


def cmd_broker(args: argparse.Namespace) -> int:
    """A local mock Kafka cluster until SIGINT/SIGTERM; prints ``bootstrap=HOST:PORT`` when ready."""
    from connectors.kafka import MOCK_PARTITIONS, MockBroker

    from flows.cli import _log_to_stderr

    _log_to_stderr("becomingone broker")
    try:
        tls = _broker_tls(args)
    except ValueError as exc:
        print(f"becomingone broker: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    # Both signals end the broker cleanly (exit 0), whoever sends them.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    broker = MockBroker(args.brokers, port=args.port, tls=tls)
    try:
        broker.start()
    except OSError as exc:
        print(f"becomingone broker: cannot listen on 127.0.0.1:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        print(f"becomingone broker: {exc}", file=sys.stderr)
        return 1
    log = logging.getLogger("becomingone.broker")
    try:
        # The line on stderr first: whoever reads the bootstrap line finds it there already.
        log.info(
            "%d mock broker(s) up (%s)%s; topics are created on first use with %d partitions; "
            "data lives in memory until this process stops",
            args.brokers, ", ".join(broker.broker_addresses), _tls_summary(broker), MOCK_PARTITIONS,
        )
        print(f"bootstrap={broker.bootstrap}", flush=True)
        front = broker.tls_front
        while not stop.wait(0.5):
            pass
        if front is not None:
            c = front.counters
            log.info("TLS front: %d connections, %d failed handshakes, %d closed for a bad frame",
                     c.connections, c.handshakes_failed, c.connections_refused)
    finally:
        broker.close()
    log.info("stopped")
    return 0


def _tls_summary(broker: MockBroker) -> str:
    """How clients reach the brokers when a TLS front stands before them ("" without one)."""
    if broker.tls_front is None or broker.tls is None:
        return ""
    auth = "client certificates required" if broker.tls.client_ca_file else "no client certificates"
    return f", each behind a TLS listener ({', '.join(broker.tls_front.addresses.values())}; {auth})"


def _broker_tls(args: argparse.Namespace) -> TlsFiles | None:
    """The broker's TLS files, checked by loading them (None: plaintext).

    Raises:
        ValueError: the flags do not go together, or the files are unusable.
    """
    from connectors.kafka.tls_front import TlsFiles

    if args.tls_cert is None and args.tls_key is None:
        if args.tls_client_ca is not None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if args.tls_cert is None or args.tls_key is None:
        raise ValueError("--tls-cert and --tls-key go together")
    tls = TlsFiles(args.tls_cert, args.tls_key, args.tls_client_ca)
    try:
        tls.server_context()
    except OSError as exc:  # ssl.SSLError included
        files = ", ".join(str(f) for f in (tls.cert_file, tls.key_file, tls.client_ca_file) if f is not None)
        raise ValueError(f"cannot use the TLS files ({files}): {exc.strerror or exc}") from None
    return tls


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``broker`` subcommand."""
    p = sub.add_parser(
        "broker",
        help="a local Kafka-protocol broker for development and tests (librdkafka's mock cluster)",
        description="Start librdkafka's mock Kafka cluster on 127.0.0.1, print one line "
        "'bootstrap=HOST:PORT' on stdout when it is ready, and run until SIGINT or SIGTERM. "
        "Topics are created on first use; data is kept in memory only. With --tls-cert and --tls-key "
        "every broker gets a TLS listener on 127.0.0.1 and clients only ever see those (the bootstrap "
        "address is the first); --tls-client-ca also requires client certificates.",
    )
    p.add_argument("--brokers", type=positive_int, default=1, metavar="N", help="number of brokers (default 1)")
    p.add_argument(
        "--port", type=port_number, default=None, metavar="PORT",
        help="fixed bootstrap port on 127.0.0.1 (default: the first broker's own, chosen by the system)",
    )
    p.add_argument("--tls-cert", type=Path, default=None, metavar="FILE",
                   help="serve TLS with this certificate chain (PEM): one TLS listener on 127.0.0.1 per broker "
                   "(--port is the first), broker addresses in metadata rewritten so clients stay on TLS")
    p.add_argument("--tls-key", type=Path, default=None, metavar="FILE", help="the private key of --tls-cert (PEM)")
    p.add_argument("--tls-client-ca", type=Path, default=None, metavar="FILE",
                   help="require client certificates signed by this CA (PEM): mutual TLS")
    p.set_defaults(func=cmd_broker)
