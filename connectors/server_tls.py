"""The TLS of this node's servers (the metrics endpoint, the API), renewed when its files change.

:class:`ServerTLS` hands a server one context for good (:attr:`ServerTLS.context`)
and swaps what stands behind it: each handshake's server-name callback (run
for every client hello, with or without SNI) moves the connection to the
newest context built from the ``security`` section's files.  So a certificate
or CA rotated by cert-manager is used by new connections without a restart,
also by servers that take their context once (uvicorn), and a CA taken out is
no longer trusted.  Files that cannot be loaded (half written) keep the
previous context, with a warning.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["RECHECK_SECONDS", "ServerTLS"]

#: Seconds between looks at the TLS files' modification times.
RECHECK_SECONDS = 30.0


class ServerTLS:
    """A server's TLS from a config's ``security`` section (``transport: tls``).

    Args:
        security: the section.
        require_client_certificate: under mutual TLS, refuse a handshake without a client certificate
            (the API); otherwise one is asked for and checked when shown, and the server decides per
            path (the metrics endpoint, whose probes the kubelet calls without one).
        name: the server, in log lines.
        log: where renewals are said.

    Attributes:
        context: the context to give the server, once; its connections get the current files' context.
        client_certificate: paths need a verified client certificate (mutual TLS).
    """

    def __init__(self, security: Any, *, require_client_certificate: bool = False, name: str = "server",
                 log: logging.Logger | None = None, recheck: float = RECHECK_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._security, self._recheck, self._clock = security, recheck, clock
        self._required = require_client_certificate and security.mutual
        self._name, self._log = name, log or logging.getLogger("becomingone")
        self.client_certificate = bool(security.mutual)
        self._lock = threading.Lock()
        self._files = security.files_stamp()
        self._current = self._build()  # ValueError naming the key when a file cannot be loaded
        self._checked = clock()
        self.context = self._build()
        self.context.sni_callback = self._to_current

    @classmethod
    def of(cls, security: Any, **options: Any) -> ServerTLS | None:
        """The TLS of a config's ``security`` section, or None under ``transport: plaintext``."""
        return cls(security, **options) if security.tls else None

    def _build(self) -> ssl.SSLContext:
        context = self._security.server_context()
        if self._required:
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def _to_current(self, connection: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        connection.context = self._current

    def renew(self, *, force: bool = False) -> bool:
        """Build the context again if the files changed (looked at most every ``recheck`` seconds
        unless ``force``); True if new files are in use now."""
        with self._lock:
            now = self._clock()
            if not force and now - self._checked < self._recheck:
                return False
            self._checked = now
            files = self._security.files_stamp()
            if files == self._files:
                return False
            try:
                self._current = self._build()
            except ValueError as exc:
                self._log.warning("%s: TLS files changed but cannot be loaded (%s); still serving the previous "
                                  "certificate", self._name, exc)
                return False
            self._files = files
        self._log.info("%s: TLS files changed; new connections get the new certificate", self._name)
        return True
