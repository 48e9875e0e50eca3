"""The metrics and health endpoint: one HTTP or HTTPS server per address, in a daemon thread.

:func:`serve` answers ``/metrics`` (prometheus-client's exposition, as its
``start_http_server`` would) and ``/healthz`` and ``/readyz``
(:mod:`connectors.health`).  With :class:`ServerTLS` (from the config's
``security`` section) it speaks HTTPS only:

- The TLS handshake runs in the connection's own thread with a time limit, so
  a client that connects and stalls holds one thread for a while, never the
  accept loop (prometheus-client's own server shakes hands in that loop).
  At most :data:`MAX_CONNECTIONS` are served at once; more are closed.
- Under mutual TLS a client certificate is asked for and, when shown, must be
  signed by ``security.ca_file``; ``/metrics`` answers 403 without one, while
  the probes stay open because the kubelet has no certificate to show.
- A failed handshake is one warning line naming the peer and the reason,
  repeats held back.
- New files (a rotated certificate) are served without a restart
  (:class:`connectors.server_tls.ServerTLS`).
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import REGISTRY, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from connectors.kafka.health import RepeatFilter
from connectors.server_tls import ServerTLS

__all__ = ["HANDSHAKE_TIMEOUT", "MAX_CONNECTIONS", "OPEN_PATHS", "endpoint_tls", "serve"]

#: Seconds a client has to finish the TLS handshake, and then each read of its request.
HANDSHAKE_TIMEOUT = 10.0
#: Connections served at once; more are closed at once (each holds a thread until answered or timed out).
MAX_CONNECTIONS = 64
#: Paths answered under mutual TLS without a client certificate: the kubelet's probes.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
#: The WSGI environ key that tells whether the client showed a verified certificate.
CLIENT_CERT = "becomingone.client_certificate"

log = logging.getLogger("becomingone.metrics")
log.addFilter(RepeatFilter())

_lock = threading.Lock()
_servers: dict[tuple[str, int], ThreadingWSGIServer] = {}


def endpoint_tls(security: Any) -> ServerTLS | None:
    """The endpoint's TLS from a config's ``security`` section (None under ``transport: plaintext``):
    client certificates asked for, and required per path (:data:`OPEN_PATHS` excepted)."""
    return ServerTLS.of(security, name="metrics endpoint", log=log)


def serve(bind: str, port: int, tls: ServerTLS | None = None) -> bool:
    """Serve ``/metrics`` of the default registry and ``/healthz`` and ``/readyz`` at ``bind:port``
    (HTTPS with ``tls``); True if started now, False if that address is served already.

    Raises:
        OSError: the port cannot be bound (the message names the address).
    """
    from connectors.health import probe_app  # health reads the Kafka clients' state, which uses the metrics

    with _lock:
        if (bind, port) in _servers:
            return False
        app = probe_app(make_wsgi_app(REGISTRY))
        if tls is not None and tls.client_certificate:
            app = _client_certificate_gate(app)
        try:
            server = _http_server(bind, port, app, tls)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot serve metrics on {bind}:{port}: {exc.strerror or exc}") from None
        threading.Thread(target=server.serve_forever, name="metrics-endpoint", daemon=True).start()
        _servers[(bind, port)] = server
        return True


def _client_certificate_gate(app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    body = (b"403: this endpoint needs a client certificate signed by the CA of security.ca_file "
            b"(security.node_auth: mutual_tls)\n")

    def gate(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") in OPEN_PATHS or environ.get(CLIENT_CERT):
            return app(environ, start_response)
        start_response("403 Forbidden", [("Content-Type", "text/plain; charset=utf-8"),
                                          ("Content-Length", str(len(body)))])
        return [body]

    return gate


class _QuietHandler(WSGIRequestHandler):
    """No line per request on stderr (a probe every few seconds would fill the log); a client that
    stops sending is dropped after :data:`HANDSHAKE_TIMEOUT` seconds instead of holding its thread."""

    timeout = HANDSHAKE_TIMEOUT

    def log_message(self, format: str, *args: object) -> None:
        pass


class _HandshakeFailed(Exception):
    pass


class _TLSHandler(_QuietHandler):
    """Shakes hands in the connection's thread, within :data:`HANDSHAKE_TIMEOUT`."""

    def setup(self) -> None:
        self.request.settimeout(self.timeout)
        try:
            self.request.do_handshake()
        except (ssl.SSLEOFError, ConnectionResetError) as exc:
            # Closed before saying anything: a TCP port check (a load balancer's, kube-proxy's), not a TLS client.
            log.debug("metrics endpoint: %s closed before the TLS handshake: %s", _peer(self.client_address), exc)
            raise _HandshakeFailed from None
        except (ssl.SSLError, OSError) as exc:
            log.warning("metrics endpoint: TLS handshake with %s failed: %s", _peer(self.client_address),
                        _handshake_reason(exc))
            raise _HandshakeFailed from None
        super().setup()

    def get_environ(self) -> dict[str, Any]:
        environ = super().get_environ()
        # Under CERT_OPTIONAL a certificate that was shown has been verified; None means none was shown.
        environ[CLIENT_CERT] = bool(self.request.getpeercert())
        return environ


def _http_server(bind: str, port: int, app: Callable[..., Iterable[bytes]],
                 tls: ServerTLS | None) -> ThreadingWSGIServer:
    """A threading WSGI server of ``app`` bound to ``bind:port`` (IPv4 or IPv6, as ``bind`` resolves)."""
    family = socket.getaddrinfo(bind or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]

    slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    class Server(ThreadingWSGIServer):
        address_family = family
        request_queue_size = 2 * MAX_CONNECTIONS  # socketserver's 5 drops connections arriving together

        def process_request(self, request: Any, client_address: Any) -> None:
            if not slots.acquire(blocking=False):
                log.warning("metrics endpoint: %d connections open already; closed the one from %s",
                            MAX_CONNECTIONS, _peer(client_address))
                self.shutdown_request(request)
                return
            try:
                super().process_request(request, client_address)
            except BaseException:
                slots.release()
                raise

        def process_request_thread(self, request: Any, client_address: Any) -> None:
            try:
                super().process_request_thread(request, client_address)
            finally:
                slots.release()

        def get_request(self) -> tuple[socket.socket, Any]:
            sock, address = super().get_request()
            if tls is None:
                return sock, address
            tls.renew()  # at most every RECHECK_SECONDS it looks at the files
            # The handshake waits for the connection's own thread (_TLSHandler.setup).
            return tls.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address

        def handle_error(self, request: Any, client_address: Any) -> None:
            # A failed handshake is logged already; a client gone mid-answer is not the server's problem.
            log.debug("metrics endpoint: connection from %s ended with an error", _peer(client_address),
                      exc_info=True)

    return make_server(bind, port, app, Server, handler_class=_TLSHandler if tls is not None else _QuietHandler)


def _peer(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)


def _handshake_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"its certificate was refused ({exc.verify_message}): not one security.ca_file signed"
    reason = getattr(exc, "reason", None)
    if reason == "HTTP_REQUEST":
        return "the client sent plain HTTP to this HTTPS endpoint (scrape https://)"
    if reason in ("TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE"):
        return f"the client does not trust security.cert_file ({reason}: it checks against another CA)"
    if isinstance(exc, TimeoutError) or isinstance(exc, socket.timeout):
        return f"no handshake within {HANDSHAKE_TIMEOUT:g} s"
    return str(reason or exc)
