"""``becomingone serve``: the read-only HTTP API over the archive (SPEC section 6).

The application is :mod:`connectors.api.server` (Starlette), served by
uvicorn on one socket bound here, so the line announcing the address is
printed once the port is taken (``--port 0`` asks the system for a free one).
With ``security.transport: tls`` it serves HTTPS (:mod:`connectors.api.tls`:
the metrics endpoint's context, a client certificate required under
``node_auth: mutual_tls``, renewed files loaded without a restart).  Exit
codes: 0 after SIGINT or SIGTERM, 1 the address cannot be bound, 2 bad usage
or config, or the ``api`` extra is not installed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys
from pathlib import Path

from connectors.endpoint import MAX_CONNECTIONS
from flows.arguments import config_or_report, port_or_zero, positive_int

__all__ = ["add_parser", "cmd_serve", "run_server"]

_EXTRA = "pip install 'becomingone[api]'"

log = logging.getLogger("becomingone.api")


def _fail(message: str, code: int) -> int:
    print(f"becomingone serve: {message}", file=sys.stderr)
    return code


def _listen(bind: str, port: int) -> socket.socket:
    """A listening TCP socket on ``bind``:``port`` (IPv6 when the address is)."""
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    return socket.create_server((bind, port), family=family, backlog=2048)


async def run_server(server, sock: socket.socket, tls, recheck: float) -> None:
    """uvicorn's ``server`` on ``sock``; with ``tls``, its files looked at every ``recheck`` seconds on the
    server's own event loop (the thread that makes the connections' TLS objects from the context)."""
    async def renew() -> None:
        while True:
            await asyncio.sleep(recheck)
            tls.renew(force=True)

    task = None if tls is None else asyncio.get_running_loop().create_task(renew())
    try:
        await server.serve(sockets=[sock])
    finally:
        if task is not None:
            task.cancel()


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from connectors.api.server import create_app
    except ImportError as exc:
        return _fail(f"needs the api extra ({exc.name} is not installed): {_EXTRA}", 2)
    config = config_or_report(args)
    if config is None:
        return 2
    from flows.logs import configure_logging, log_format

    configure_logging(config.logging, "becomingone serve",
                      format=log_format(config.logging, sys.stderr, at_terminal_as_text=True))
    root = Path(args.archive if args.archive is not None else config.memory.storage.path)
    if not root.is_dir():
        return _fail(f"no archive directory at {root}", 2)
    bind = args.bind if args.bind is not None else config.api.bind
    port = args.port if args.port is not None else config.api.port
    max_rows = args.max_scan_rows if args.max_scan_rows is not None else config.api.max_scan_rows
    from connectors.api.tls import RECHECK_SECONDS, api_tls

    try:
        tls = api_tls(config.security)
    except ValueError as exc:
        return _fail(str(exc), 2)
    context = None if tls is None else tls.context
    try:
        sock = _listen(bind, port)
    except OSError as exc:
        return _fail(f"cannot listen on {bind}:{port}: {exc.strerror or exc}", 1)
    app = create_app(root, signing_key=config.memory.signing_key_bytes, max_scan_rows=max_rows)
    server = uvicorn.Server(uvicorn.Config(  # its log lines go through the logging section's handler
        app, log_config=None, log_level="warning", access_log=False, server_header=False,
        limit_concurrency=MAX_CONNECTIONS,  # beyond: 503 at once, as the metrics endpoint closes them
        ssl_context_factory=None if context is None else (lambda _config, _default: context)))
    host, bound = sock.getsockname()[:2]
    scheme = "http" if context is None else "https"
    if context is None:
        log.warning("the API is served in plaintext: http://%s:%s (security.transport: tls serves HTTPS)",
                    host, bound)
    print(f"serving {root} on {scheme}://{host if ':' not in host else f'[{host}]'}:{bound}", flush=True)
    # uvicorn stops on SIGINT or SIGTERM, then raises the signal again for the handler it found: this
    # one, so a stop is the normal end of the command (exit 0), not a death by the signal.
    stops = {signum: signal.signal(signum, lambda *_: None) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        asyncio.run(run_server(server, sock, tls, RECHECK_SECONDS))
    finally:
        sock.close()
        for signum, handler in stops.items():
            signal.signal(signum, handler)
    return 0


def add_parser(sub, config_help: str) -> None:
    """Register ``serve`` on the sub-command parser ``sub``."""
    p = sub.add_parser(
        "serve", help="a read-only HTTP API over the archive (JSON or Arrow)",
        description="Serve the archive over HTTP: /v1/sensors, /v1/sensors/{sensor}/state, "
        "/v1/datasets/{dataset}, /v1/events, /v1/mesh, /v1/verify and /openapi.json (docs/api.md). "
        "Loopback by default; HTTPS with security.transport tls. Prints 'serving ROOT on URL' once "
        "listening; runs until SIGINT or SIGTERM. Needs the api extra (" + _EXTRA + ").")
    p.add_argument("--config", metavar="FILE", default=None, help=config_help)
    p.add_argument("--archive", metavar="DIR", default=None,
                   help="archive root (default: memory.storage.path of the config)")
    p.add_argument("--bind", metavar="ADDR", default=None, help="listen address (default api.bind, 127.0.0.1)")
    p.add_argument("--port", type=port_or_zero, metavar="N", default=None,
                   help="TCP port (default api.port, 9110; 0: any free port, printed)")
    p.add_argument("--max-scan-rows", type=positive_int, metavar="N", default=None,
                   help="refuse (413) a query whose files hold more rows (default api.max_scan_rows, 5000000)")
    p.set_defaults(func=cmd_serve)
