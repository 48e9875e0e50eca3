"""The API's TLS: the ``security`` section's server context, with a client certificate required
under mutual TLS, and renewed certificate files loaded without a restart.

The context is :meth:`~schemas.config.SecuritySection.server_context`, the
metrics endpoint's (TLS 1.2 and newer, the same files).  Under
``node_auth: mutual_tls`` every connection must show a certificate signed by
``ca_file`` (the API has no path open to a client without one).
:meth:`ApiTLS.renew`, called every :data:`RECHECK_SECONDS` on the server's
event loop, loads changed files into that same context, so new connections
get a certificate rotated by cert-manager; files that cannot be loaded (half
written) leave the previous certificate in place, with a warning, and are
tried again at the next look.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

__all__ = ["RECHECK_SECONDS", "ApiTLS"]

#: Seconds between looks at the TLS files' modification times.
RECHECK_SECONDS = 30.0

log = logging.getLogger("becomingone.api")


class ApiTLS:
    """The TLS of ``security`` (a :class:`~schemas.config.SecuritySection` with ``transport: tls``).

    Attributes:
        context: the server's context; :meth:`renew` loads new files into it.
    """

    def __init__(self, security: Any) -> None:
        self._security = security
        self._stamps = security.files_stamp()
        self.context = security.server_context()  # ValueError naming the key when a file cannot be loaded
        if security.mutual:
            self.context.verify_mode = ssl.CERT_REQUIRED

    @classmethod
    def of(cls, security: Any) -> ApiTLS | None:
        """The TLS of a config's ``security`` section, or None under ``transport: plaintext``."""
        return cls(security) if security.tls else None

    def renew(self) -> bool:
        """Load the files into :attr:`context` if they changed since the last look; True if they were."""
        stamps = self._security.files_stamp()
        if stamps == self._stamps:
            return False
        sec = self._security
        try:
            sec.server_context()  # the new files load together (a certificate and its key)
            self.context.load_cert_chain(sec.cert_file, sec.key_file, password=sec.key_password or "")
            if sec.mutual:
                self.context.load_verify_locations(cafile=sec.ca_file)
        except (ValueError, ssl.SSLError, OSError) as exc:
            log.warning("the API's TLS files changed but cannot be loaded (%s); still serving the previous "
                        "certificate", exc)
            return False
        self._stamps = stamps
        log.info("the API's TLS files changed; new connections get the new certificate")
        return True
