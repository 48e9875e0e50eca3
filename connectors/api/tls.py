"""The API's TLS: the ``security`` section's files, as the metrics endpoint's
(:class:`connectors.server_tls.ServerTLS`: TLS 1.2 and newer, renewed files used without a restart),
with a client certificate required on every path under ``node_auth: mutual_tls`` (the API has no path
open to a client without one).
"""

from __future__ import annotations

import logging
from typing import Any

from connectors.server_tls import RECHECK_SECONDS, ServerTLS

__all__ = ["RECHECK_SECONDS", "api_tls"]

log = logging.getLogger("becomingone.api")


def api_tls(security: Any, **options: Any) -> ServerTLS | None:
    """The API's TLS from a config's ``security`` section, or None under ``transport: plaintext``."""
    return ServerTLS.of(security, require_client_certificate=True, name="the API", log=log, **options)
