"""A TLS front for a plaintext Kafka cluster on loopback: one TLS listener per broker, addresses rewritten.

:class:`TlsFront` listens with TLS on 127.0.0.1, one port per broker, and
relays each connection to its broker in plaintext.  Requests go through
verbatim; responses that advertise broker addresses are rewritten to the
front's own ports (:mod:`connectors.kafka.advertised`), so a client that
bootstraps through the front only ever connects to TLS listeners.  With a
client CA the front requires client certificates signed by it (mutual TLS).

It is meant for the development broker (``becomingone broker --tls-cert``):
a frame that is malformed, over :data:`~connectors.kafka.advertised.MAX_FRAME`
or asks for what the front refuses closes that connection with a log line;
the front and the cluster go on.  A failed TLS handshake is logged as one
warning naming the peer, at most one line per second (the next line says
how many were left out).

The connections run on an asyncio event loop in one background thread; TLS
is an :class:`ssl.SSLObject` per connection over memory buffers.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from connectors.kafka.advertised import (
    MAX_FRAME,
    TRACKED_APIS,
    FrameError,
    RequestHeader,
    request_header,
    rewrite_response,
)

__all__ = ["FrontCounters", "TlsFiles", "TlsFront"]

log = logging.getLogger("becomingone.kafka.tls_front")

_HOST = "127.0.0.1"

#: Seconds a client has to complete its TLS handshake.
HANDSHAKE_TIMEOUT = 10.0


@dataclass(frozen=True)
class TlsFiles:
    """The front's certificate chain and key (PEM), and the CA its clients' certificates must come from.

    ``client_ca_file`` None: clients need no certificate (TLS only).
    """

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None

    def server_context(self) -> ssl.SSLContext:
        """A server-side context (TLS 1.2 or newer).

        Raises:
            OSError: a file cannot be read.
            ssl.SSLError: a file is not a usable certificate, key or CA.
        """
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_file, self.key_file)
        if self.client_ca_file is not None:
            context.load_verify_locations(cafile=self.client_ca_file)
            context.verify_mode = ssl.CERT_REQUIRED
        return context


@dataclass
class FrontCounters:
    """What the front has done since it started."""

    connections: int = 0          # TLS handshakes completed
    handshakes_failed: int = 0
    responses_rewritten: int = 0  # ApiVersions, Metadata and FindCoordinator responses
    connections_refused: int = 0  # closed for a malformed, oversized or refused frame


@dataclass
class _WarningGate:
    """At most one warning per ``interval`` seconds; counts the ones left out."""

    interval: float = 1.0
    last: float = float("-inf")
    left_out: int = 0

    def admit(self, now: float) -> int | None:
        """None: stay quiet; else the number left out since the last admitted one."""
        if now - self.last < self.interval:
            self.left_out += 1
            return None
        self.last, left_out, self.left_out = now, self.left_out, 0
        return left_out


@dataclass
class _Loop:
    """The event loop thread's handles, set once it runs."""

    loop: asyncio.AbstractEventLoop | None = None
    stop: asyncio.Event | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    tasks: set[asyncio.Task] = field(default_factory=set)


class TlsFront:
    """TLS listeners on 127.0.0.1 before the brokers of a plaintext cluster.

    Args:
        tls: certificate, key and optional client CA.
        brokers: each broker's node id and plaintext (host, port).
        port: the port of the first broker's (lowest node id) listener, the
            bootstrap address; None: chosen by the system like the others.

    Raises:
        OSError: a port cannot be bound, or a TLS file cannot be read.
        ssl.SSLError: a TLS file is unusable.
    """

    def __init__(self, tls: TlsFiles, brokers: Mapping[int, tuple[str, int]], *, port: int | None = None) -> None:
        if not brokers:
            raise ValueError("a TLS front needs at least one broker")
        self._context = tls.server_context()
        self._targets = dict(sorted(brokers.items()))
        self.counters = FrontCounters()
        self._gate = _WarningGate()
        self._state = _Loop()
        self._listeners: dict[int, socket.socket] = {}
        try:
            for i, node in enumerate(self._targets):
                self._listeners[node] = socket.create_server((_HOST, port if i == 0 and port else 0))
        except OSError:
            self._close_listeners()
            raise
        self._advertised = {node: (_HOST, s.getsockname()[1]) for node, s in self._listeners.items()}
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), name="tls-front", daemon=True)
        self._thread.start()
        self._state.ready.wait(timeout=10.0)

    @property
    def addresses(self) -> dict[int, str]:
        """``HOST:PORT`` of each broker's TLS listener, by node id."""
        return {node: f"{host}:{port}" for node, (host, port) in self._advertised.items()}

    @property
    def bootstrap(self) -> str:
        """``HOST:PORT`` of the first broker's TLS listener."""
        return next(iter(self.addresses.values()))

    def close(self) -> None:
        """Close the listeners and every relayed connection. Idempotent."""
        state = self._state
        if state.loop is not None and state.stop is not None and not state.loop.is_closed():
            try:
                state.loop.call_soon_threadsafe(state.stop.set)
            except RuntimeError:  # the loop closed meanwhile
                pass
        self._thread.join(timeout=5.0)
        self._close_listeners()

    def _close_listeners(self) -> None:
        for s in self._listeners.values():
            s.close()

    async def _main(self) -> None:
        self._state.loop, self._state.stop = asyncio.get_running_loop(), asyncio.Event()
        for node, listener in self._listeners.items():
            listener.setblocking(False)
            self._track(self._accept(node, listener))
        self._state.ready.set()
        await self._state.stop.wait()
        for task in list(self._state.tasks):
            task.cancel()
        await asyncio.gather(*self._state.tasks, return_exceptions=True)

    def _track(self, coroutine) -> asyncio.Task:
        task = asyncio.ensure_future(coroutine)
        self._state.tasks.add(task)
        task.add_done_callback(self._state.tasks.discard)
        return task

    async def _accept(self, node: int, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                client, peer = await loop.sock_accept(listener)
            except OSError as exc:  # e.g. out of file descriptors: wait, do not spin
                log.warning("TLS front: accepting a connection for broker %d failed: %s", node, exc)
                await asyncio.sleep(0.5)
                continue
            self._track(self._serve(node, client, _peer_name(peer)))

    async def _serve(self, node: int, client: socket.socket, peer: str) -> None:
        stream = _TlsStream(client, self._context)
        try:
            try:
                await asyncio.wait_for(stream.handshake(), HANDSHAKE_TIMEOUT)
            except (ssl.SSLError, OSError, asyncio.TimeoutError) as exc:
                self._handshake_failed(peer, exc)
                return
            self.counters.connections += 1
            try:
                broker_r, broker_w = await asyncio.open_connection(*self._targets[node])
            except OSError as exc:
                log.warning("TLS front: cannot reach broker %d at %s:%d for %s: %s", node, *self._targets[node], peer, exc)
                return
            try:
                await self._relay(node, peer, stream, broker_r, broker_w)
            finally:
                broker_w.close()
        finally:
            client.close()

    async def _relay(self, node: int, peer: str, client: _TlsStream,
                     broker_r: asyncio.StreamReader, broker_w: asyncio.StreamWriter) -> None:
        """Both directions until either side ends or sends what cannot be relayed."""
        pending: dict[int, RequestHeader] = {}
        legs = [asyncio.ensure_future(self._requests(client, broker_w, pending)),
                asyncio.ensure_future(self._responses(broker_r, client, pending))]
        try:
            done, _ = await asyncio.wait(legs, return_when=asyncio.FIRST_COMPLETED)
            for leg in done:
                exc = leg.exception()
                if exc is None or isinstance(exc, ConnectionError):  # an end like any other
                    continue
                if isinstance(exc, FrameError):
                    self.counters.connections_refused += 1
                log.warning("TLS front: closing the connection of %s to broker %d: %s", peer, node, _reason(exc))
        finally:
            for leg in legs:
                leg.cancel()
            await asyncio.gather(*legs, return_exceptions=True)

    async def _requests(self, client: _TlsStream, broker: asyncio.StreamWriter,
                        pending: dict[int, RequestHeader]) -> None:
        """Client to broker: frames verbatim; the headers of requests whose responses are rewritten kept."""
        while (frame := await _read_frame(client.read_exactly, minimum=8)) is not None:
            header = request_header(frame)
            if header.api_key in TRACKED_APIS:
                pending[header.correlation_id] = header
            broker.write(len(frame).to_bytes(4, "big") + frame)
            await broker.drain()

    async def _responses(self, broker: asyncio.StreamReader, client: _TlsStream,
                         pending: dict[int, RequestHeader]) -> None:
        """Broker to client: frames verbatim, but those answering a tracked request rewritten."""
        while (frame := await _read_frame(_stream_read(broker), minimum=4)) is not None:
            request = pending.pop(int.from_bytes(frame[:4], "big", signed=True), None)
            if request is not None:
                frame = rewrite_response(frame, request, self._advertised)
                self.counters.responses_rewritten += 1
            await client.write(len(frame).to_bytes(4, "big") + frame)

    def _handshake_failed(self, peer: str, exc: BaseException) -> None:
        self.counters.handshakes_failed += 1
        left_out = self._gate.admit(time.monotonic())
        if left_out is not None:
            more = f" ({left_out} more failed handshakes not logged)" if left_out else ""
            log.warning("TLS front: TLS handshake with %s failed: %s%s", peer, _reason(exc), more)


class _TlsStream:
    """The server side of a TLS connection on a socket, driven from the event loop.

    An :class:`ssl.SSLObject` over memory buffers: unlike asyncio's own TLS
    transport, a failed handshake still sends the peer its alert (e.g.
    "certificate required"), so the client can say why it was turned away.
    Reads and writes run on the loop's one thread; a lock keeps the records
    of concurrent writers in order on the socket.
    """

    def __init__(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._buffer = bytearray()
        self._send_lock = asyncio.Lock()

    async def handshake(self) -> None:
        """Raises: ssl.SSLError (after sending the alert) or ConnectionError."""
        while True:
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                await self._flush()
                if not await self._receive():
                    raise ConnectionResetError("the peer closed the connection during the handshake") from None
            except ssl.SSLError:
                await self._flush()
                raise
            else:
                await self._flush()
                return

    async def read_exactly(self, n: int) -> bytes:
        """``n`` bytes, fewer only when the peer ended the connection."""
        while len(self._buffer) < n:
            try:
                chunk = self._tls.read(65536)
            except ssl.SSLWantReadError:
                await self._flush()
                if await self._receive():
                    continue
                chunk = b""
            except ssl.SSLZeroReturnError:
                chunk = b""
            if not chunk:
                break
            self._buffer += chunk
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        return out

    async def write(self, data: bytes) -> None:
        self._tls.write(data)
        await self._flush()

    async def _flush(self) -> None:
        async with self._send_lock:
            if data := self._outgoing.read():
                await asyncio.get_running_loop().sock_sendall(self._sock, data)

    async def _receive(self) -> bool:
        data = await asyncio.get_running_loop().sock_recv(self._sock, 65536)
        if not data:
            self._incoming.write_eof()
            return False
        self._incoming.write(data)
        return True


def _stream_read(reader: asyncio.StreamReader):
    async def read_exactly(n: int) -> bytes:
        try:
            return await reader.readexactly(n)
        except asyncio.IncompleteReadError as exc:
            return exc.partial
    return read_exactly


async def _read_frame(read_exactly, *, minimum: int) -> bytes | None:
    """The next size-prefixed frame's bytes, or None when the stream ends between frames.

    ``read_exactly(n)`` returns n bytes, fewer only at the end of the stream.

    Raises:
        FrameError: the size is below ``minimum`` or above MAX_FRAME, or the stream ends inside a frame.
    """
    prefix = await read_exactly(4)
    if not prefix:
        return None
    if len(prefix) < 4:
        raise FrameError(f"stream ended inside a size prefix ({len(prefix)} of 4 bytes)")
    size = int.from_bytes(prefix, "big", signed=True)
    if not minimum <= size <= MAX_FRAME:
        raise FrameError(f"frame size {size} outside {minimum}..{MAX_FRAME} bytes")
    frame = await read_exactly(size)
    if len(frame) < size:
        raise FrameError(f"stream ended after {len(frame)} of a frame's {size} bytes")
    return frame


def _peer_name(peer: object) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
            return f"{exc.reason}: {exc.verify_message} (a client certificate from another CA?)"
        hint = " (the peer does not speak TLS?)" if exc.reason in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST") else ""
        return f"{exc.reason}{hint}"
    if isinstance(exc, asyncio.TimeoutError):
        return f"no handshake within {HANDSHAKE_TIMEOUT:g} s"
    if isinstance(exc, FrameError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
