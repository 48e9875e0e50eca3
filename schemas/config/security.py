"""``security``: TLS of the node's connections, its Kafka clients and its metrics, health and API server.

``transport: tls`` makes every Kafka client speak TLS (librdkafka's
``security.protocol`` ``SSL``, or ``SASL_SSL`` when the client has SASL
settings) and the metrics server answer HTTPS with ``cert_file`` and
``key_file``.  ``node_auth: mutual_tls`` makes the Kafka clients present that
certificate too, and the server ask its clients for one signed by
``ca_file``: ``/metrics`` answers only a client that showed one, while
``/healthz`` and ``/readyz`` stay open to the kubelet, which has none to show.

The files are PEM.  A config that asks for TLS without them, or names files
that cannot be read or do not fit together, is a config error naming the
keys.  Settings given in a ``kafka`` section itself (``ssl.ca.location``, ...)
are more specific and win over those derived here.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Iterator, Mapping
from typing import Any, Literal

from schemas.config.values import NonEmptyStr, _Section

__all__ = ["SecuritySection"]

#: librdkafka protocols that carry no TLS.
PLAINTEXT_PROTOCOLS = ("PLAINTEXT", "SASL_PLAINTEXT")


class SecuritySection(_Section):
    """``security``: transport security of the node's Kafka clients and of its metrics and health server."""

    intrinsic: bool = True
    """The seed's 'thermodynamic security' flag; recorded, no effect on the pipeline."""
    transport: Literal["tls", "plaintext"] = "plaintext"
    """tls: Kafka clients and the metrics server use TLS (needs cert_file and key_file)."""
    node_auth: Literal["mutual_tls", "none"] = "none"
    """mutual_tls: both ends show a certificate (needs transport tls and ca_file)."""
    ca_file: NonEmptyStr | None = None
    """PEM CA bundle the peers' certificates are checked against (the Kafka brokers', and under
    mutual_tls the metrics clients'); None = the system's trust store for the brokers."""
    cert_file: NonEmptyStr | None = None
    """PEM certificate (chain) of this node: served by the metrics server, shown to Kafka under mutual_tls."""
    key_file: NonEmptyStr | None = None
    """PEM private key of ``cert_file``."""
    key_password: str | None = None
    """Password of an encrypted ``key_file`` (better from BECOMINGONE__SECURITY__KEY_PASSWORD); never printed."""

    @property
    def tls(self) -> bool:
        """True when the node's traffic is to be TLS."""
        return self.transport == "tls"

    @property
    def mutual(self) -> bool:
        """True when both ends of a connection show a certificate."""
        return self.tls and self.node_auth == "mutual_tls"

    def file_problems(self) -> Iterator[tuple[str, str]]:
        """(key, message) for each TLS file that is asked for but missing, unreadable or unusable."""
        if not self.tls:
            return
        needed = ["cert_file", "key_file"] + (["ca_file"] if self.mutual else [])
        missing = [k for k in needed if getattr(self, k) is None]
        if missing:
            why = (f"security.node_auth 'mutual_tls' needs {_keys(needed)}" if self.mutual else
                   f"security.transport 'tls' needs {_keys(needed)}")
            for key in missing:
                yield f"security.{key}", f"security.{key}: required: {why} (PEM files; see docs/security.md)"
        unreadable = bool(missing)
        for key in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, key)
            if path is not None and not _readable(path):
                unreadable = True
                yield f"security.{key}", f"security.{key}: cannot read {path!r}: {_why_unreadable(path)}"
        if unreadable:
            return
        try:
            self.server_context()
        except _FileProblem as exc:
            yield exc.key, exc.message

    def server_context(self) -> ssl.SSLContext:
        """The TLS context of this node's servers (TLS 1.2 and newer; under mutual_tls client
        certificates are asked for and checked against ``ca_file``, but not required at the handshake).

        Raises:
            ValueError: a file cannot be loaded; the message names the key.
        """
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            # A password, even empty, so OpenSSL never prompts on the terminal for an encrypted key.
            context.load_cert_chain(self.cert_file, self.key_file, password=self.key_password or "")
        except (ssl.SSLError, OSError) as exc:
            raise _FileProblem("security.cert_file", "security.cert_file, security.key_file: cannot load "
                               f"the certificate and its key: {_ssl_reason(exc)}{_password_hint(self, exc)}") from None
        if self.mutual:
            try:
                context.load_verify_locations(cafile=self.ca_file)
            except (ssl.SSLError, OSError) as exc:
                raise _FileProblem("security.ca_file", f"security.ca_file: not a PEM CA certificate: "
                                   f"{_ssl_reason(exc)}") from None
            context.verify_mode = ssl.CERT_OPTIONAL
        return context

    def files_stamp(self) -> tuple:
        """(mtime, size, inode) of the CA, certificate and key files, None for one absent or unnamed:
        it changes when a file is renewed (Kubernetes swaps a Secret's files by a symlink, hence the inode)."""
        stamps = []
        for path in (self.ca_file, self.cert_file, self.key_file):
            try:
                st = os.stat(path) if path else None
            except OSError:
                st = None
            stamps.append(None if st is None else (st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(stamps)

    def kafka_settings(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """librdkafka ``settings`` with what this section implies added; the settings' own keys win.

        >>> s = SecuritySection(transport="tls", cert_file="c.pem", key_file="k.pem")
        >>> s.kafka_settings({"bootstrap.servers": "k:9093"})["security.protocol"]
        'SSL'
        >>> s.kafka_settings({"sasl.mechanism": "PLAIN"})["security.protocol"]
        'SASL_SSL'
        """
        out = dict(settings)
        if not self.tls:
            return out
        sasl = any(str(k).startswith("sasl.") for k in settings)
        derived = {"security.protocol": "SASL_SSL" if sasl else "SSL", "ssl.ca.location": self.ca_file}
        if self.mutual:
            derived.update({"ssl.certificate.location": self.cert_file, "ssl.key.location": self.key_file,
                            "ssl.key.password": self.key_password})
        for key, value in derived.items():
            if value is not None:
                out.setdefault(key, value)
        return out

    def kafka_conflict(self, settings: Mapping[str, Any]) -> str | None:
        """Why ``settings``' own ``security.protocol`` contradicts ``transport: tls``, or None."""
        protocol = str(settings.get("security.protocol", "")).upper()
        if self.tls and protocol in PLAINTEXT_PROTOCOLS:
            return (f"security.protocol {protocol!r} is plaintext but security.transport is 'tls' "
                    f"(drop it, or set {'SASL_SSL' if protocol.startswith('SASL') else 'SSL'})")
        return None


class _FileProblem(ValueError):
    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key, self.message = key, message


def _keys(names: list[str]) -> str:
    keys = [f"security.{n}" for n in names]
    return ", ".join(keys[:-1]) + " and " + keys[-1]


def _readable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.R_OK)


def _why_unreadable(path: str) -> str:
    if not os.path.exists(path):
        return "no such file"
    if not os.path.isfile(path):
        return "not a file"
    return "permission denied"


def _ssl_reason(exc: BaseException) -> str:
    """OpenSSL's reason without Python's decoration: 'PEM lib', not '[SSL] PEM lib (_ssl.c:3926)'."""
    text = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return re.sub(r"\s*\(_ssl\.c:\d+\)$", "", re.sub(r"^\[\w+\]\s*", "", str(text)))


def _password_hint(section: SecuritySection, exc: BaseException) -> str:
    try:
        with open(section.key_file, "rb") as f:
            encrypted = b"ENCRYPTED" in f.read(1 << 20)  # PKCS#8 "ENCRYPTED PRIVATE KEY", or PEM's Proc-Type
    except OSError:
        return ""
    if not encrypted:
        return ""
    return (" (the key is encrypted: set security.key_password)" if section.key_password is None
            else " (security.key_password does not open the key)")
