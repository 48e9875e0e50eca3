"""A local Kafka cluster for development and tests: librdkafka's mock cluster, behind ``becomingone broker``.

:class:`MockBroker` hosts librdkafka's mock cluster (the documented
``test.mock.num.brokers`` client property) in this process: real Kafka
protocol over TCP on loopback.  A fixed bootstrap port is a relay to the
first broker (:class:`_BootstrapRelay`); with TLS files, a TLS front
(:class:`~connectors.kafka.tls_front.TlsFront`) stands before every broker
instead.
"""

from __future__ import annotations

import logging
import socket
import threading

from confluent_kafka import KafkaException, Producer

from connectors.kafka.tls_front import TlsFiles, TlsFront

__all__ = ["MOCK_PARTITIONS", "MockBroker"]

#: Partitions of a topic that librdkafka's mock cluster creates on first use.
MOCK_PARTITIONS = 4

log = logging.getLogger("becomingone.kafka")


class MockBroker:
    """librdkafka's mock Kafka cluster, hosted by a client in this process.

    The mock speaks the Kafka protocol over TCP on 127.0.0.1 only. Producers
    and consumers in any process reach it through :attr:`bootstrap`; topics
    are created on first use (:data:`MOCK_PARTITIONS` partitions), consumer
    groups and idempotent producers work.  It keeps its data in memory until
    :meth:`close`.

    It is started with librdkafka's documented ``test.mock.num.brokers``
    property on a long-lived producer: librdkafka then creates the brokers,
    listening on ports the kernel assigns.  ``port`` adds a fixed bootstrap
    port: a relay on 127.0.0.1:port to the first broker.  Clients only
    bootstrap through it; the cluster metadata then sends them to the brokers'
    own ports, also on loopback.

    ``tls`` puts a TLS front before the cluster: one TLS listener on
    127.0.0.1 per broker (``port`` is the first one's, the bootstrap), and
    the broker addresses in the cluster's answers rewritten to those
    listeners, so clients only ever connect with TLS (and, with a client CA,
    with a client certificate).  The brokers' own plaintext ports stay open
    on loopback.

    Args:
        brokers: number of brokers (1 or more).
        port: fixed loopback bootstrap port, or None: the first broker's own (with ``tls``, one the system chooses).
        timeout: seconds to wait for the cluster to answer at start.
        tls: the TLS front's certificate, key and optional client CA; None: plaintext.

    >>> with MockBroker(brokers=3) as broker:                    # doctest: +SKIP
    ...     print(broker.bootstrap)                              # 127.0.0.1:41729
    """

    def __init__(self, brokers: int = 1, *, port: int | None = None, timeout: float = 10.0,
                 tls: TlsFiles | None = None) -> None:
        if brokers < 1:
            raise ValueError(f"brokers must be at least 1, got {brokers}")
        if port is not None and not 1 <= port <= 65535:
            raise ValueError(f"port must be in 1..65535, got {port}")
        self.brokers = brokers
        self.port = port
        self.timeout = timeout
        self.tls = tls
        self._host: Producer | None = None
        self._relay: _BootstrapRelay | None = None
        self._front: TlsFront | None = None
        self._bootstrap = ""
        self._addresses: tuple[str, ...] = ()

    @property
    def bootstrap(self) -> str:
        """``HOST:PORT`` for ``bootstrap.servers``."""
        if not self._bootstrap:
            raise RuntimeError("the mock broker is not started")
        return self._bootstrap

    @property
    def broker_addresses(self) -> tuple[str, ...]:
        """``HOST:PORT`` of every mock broker, by broker id (plaintext, the brokers' own)."""
        return self._addresses

    @property
    def tls_front(self) -> TlsFront | None:
        """The TLS front while started with ``tls``: its listeners and counters."""
        return self._front

    def start(self) -> MockBroker:
        """Create the cluster and wait until it answers.

        Raises:
            OSError: ``port`` cannot be bound (e.g. in use), or a TLS file cannot be read.
            ssl.SSLError: a TLS file is not a usable certificate, key or CA (an OSError).
            RuntimeError: the cluster did not come up within ``timeout``.
        """
        if self._host is not None:
            return self
        self._host = Producer({
            "test.mock.num.brokers": self.brokers,
            "client.id": "becomingone-mock-cluster",
            "logger": log,
            # Warnings and errors only: at notice level librdkafka announces
            # that it ignores the (unset) bootstrap.servers of the host client.
            "log_level": 4,
        })
        try:
            metadata = self._host.list_topics(timeout=self.timeout)
            found = sorted(metadata.brokers.values(), key=lambda b: b.id)
            if len(found) != self.brokers:
                raise RuntimeError(f"the mock cluster reports {len(found)} of {self.brokers} brokers")
            self._addresses = tuple(f"{b.host}:{b.port}" for b in found)
            if self.tls is not None:
                self._front = TlsFront(self.tls, {b.id: (b.host, b.port) for b in found}, port=self.port)
                self._bootstrap = self._front.bootstrap
            elif self.port is not None:
                self._relay = _BootstrapRelay(self.port, (found[0].host, found[0].port))
                self._bootstrap = f"127.0.0.1:{self.port}"
            else:
                self._bootstrap = self._addresses[0]
        except KafkaException as exc:
            self.close()
            raise RuntimeError(f"the mock cluster did not answer within {self.timeout:g} s: {exc}") from None
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop the relay or TLS front and destroy the cluster (its data is gone). Idempotent."""
        if self._front is not None:
            self._front.close()
            self._front = None
        if self._relay is not None:
            self._relay.close()
            self._relay = None
        if self._host is not None:
            host, self._host = self._host, None
            host.close()  # destroys the client and with it the mock cluster
        self._bootstrap = ""

    def __enter__(self) -> MockBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class _BootstrapRelay:
    """A fixed loopback port whose connections are relayed, byte for byte, to one broker.

    librdkafka's mock cluster cannot be told its ports; this gives clients a
    bootstrap address known in advance.
    """

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self._target = target
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener = socket.create_server(("127.0.0.1", port))
        # accept() wakes up now and then to notice close(): closing a socket
        # from another thread does not interrupt a blocked accept() on Linux.
        self._listener.settimeout(0.2)
        self._thread = threading.Thread(target=self._accept_loop, name=f"bootstrap-relay-{port}", daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            try:
                upstream = socket.create_connection(self._target, timeout=5.0)
            except OSError as exc:
                log.warning("bootstrap relay: cannot reach broker %s:%d: %s", *self._target, exc)
                client.close()
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            with self._lock:
                self._sockets.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            # Kafka clients never half-close: when one side ends, the pair ends.
            for s in (src, dst):
                with self._lock:
                    self._sockets.discard(s)
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=2.0)
        self._listener.close()
        with self._lock:
            open_sockets, self._sockets = list(self._sockets), set()
        for s in open_sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
