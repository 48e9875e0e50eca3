"""The container's health check: ``python -m flows.health_probe [URL]`` asks this process's ``/healthz``.

Exit 0 when it answers 200, 1 otherwise (503, refused, timed out, a bad setting), with the answer
or the error on one line (Docker keeps the last lines of each check: ``docker inspect``).  Standard library only, so each check costs little more than the interpreter's start.

The URL, unless given: ``BECOMINGONE_HEALTH_URL``, else
``{BECOMINGONE_HEALTH_SCHEME}://127.0.0.1:{port}/healthz`` with the port of
``BECOMINGONE__METRICS__PORT`` (the config's override of ``metrics.port``), else 9108.  Without a
scheme the probe asks over https and, if the server answers plain HTTP there, over http: the same
image serves either, as the config's ``security.transport`` says.
The check runs inside the container, so loopback reaches the metrics server whether it binds
``127.0.0.1`` or ``0.0.0.0``.  With ``https`` (the metrics server under ``security.transport: tls``)
the server's certificate is not verified: the probe asks its own process over loopback, and
``/healthz`` needs no client certificate, even under mutual TLS.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence

__all__ = ["DEFAULT_PORT", "TIMEOUT_S", "health_url", "main", "probe"]

DEFAULT_PORT = 9108
#: Seconds to wait for the answer (the Dockerfile's HEALTHCHECK allows 5).
TIMEOUT_S = 4.0


def health_url(env: Mapping[str, str]) -> str:
    """The ``/healthz`` URL the environment names (see the module's docstring).

    >>> health_url({})
    'auto://127.0.0.1:9108/healthz'
    >>> health_url({"BECOMINGONE_HEALTH_SCHEME": "https", "BECOMINGONE__METRICS__PORT": "9200"})
    'https://127.0.0.1:9200/healthz'
    """
    if env.get("BECOMINGONE_HEALTH_URL"):
        return env["BECOMINGONE_HEALTH_URL"]
    scheme = env.get("BECOMINGONE_HEALTH_SCHEME", "auto").strip().lower() or "auto"
    if scheme not in ("http", "https", "auto"):
        raise ValueError(f"BECOMINGONE_HEALTH_SCHEME must be http, https or auto, got {scheme!r}")
    port = int(env.get("BECOMINGONE__METRICS__PORT") or DEFAULT_PORT)
    return f"{scheme}://127.0.0.1:{port}/healthz"


def probe(url: str, timeout: float = TIMEOUT_S) -> tuple[bool, str]:
    """Whether ``url`` answers 200, and the answer (status and body) or the error, on one line.
    An ``auto://`` URL is asked over https, then over http if the server speaks plain HTTP."""
    if url.startswith("auto:"):
        secure = "https:" + url[len("auto:"):]
        ok, text = probe(secure, timeout)
        if not ok and "WRONG_VERSION_NUMBER" in text:  # a plain-HTTP server answered the TLS hello
            return probe("http:" + url[len("auto:"):], timeout)
        return ok, text
    context = None
    if url.startswith("https:"):
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as answer:
            return answer.status == 200, f"{answer.status} {_one_line(answer.read())}"
    except urllib.error.HTTPError as exc:
        return False, f"{exc.code} {_one_line(exc.read())}"
    except (OSError, ValueError) as exc:
        return False, f"{url}: {getattr(exc, 'reason', None) or exc}"


def _one_line(body: bytes) -> str:
    return " ".join(body.decode("utf-8", "replace").split())[:500]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        url = args[0] if args else health_url(os.environ)
    except ValueError as exc:
        print(f"health: {exc}", file=sys.stderr)
        return 1  # Docker reserves 2
    ok, text = probe(url)
    print(f"health: {text}", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
