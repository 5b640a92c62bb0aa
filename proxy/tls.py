"""TLS: the listeners' server contexts (certificates chosen by SNI, replaced on reload) and
the client contexts of pools whose endpoints speak HTTPS.

The settings come from the ssl module's defaults (`create_default_context`: its cipher list
and options), raised to TLS 1.2 at least, with ALPN offering HTTP/1.1 only, the one protocol
the data plane speaks.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from proxy.config import Certificate, Config, ServerTls, UpstreamTls

log = logging.getLogger("pointsman.tls")

ALPN: Final = ["http/1.1"]


def _reason(err: BaseException) -> str:
    if isinstance(err, ssl.SSLError) and err.reason:
        return str(err.reason).lower().replace("_", " ")
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err)


def certificate_problem(cert: str, key: str) -> str | None:
    """Why `cert` and `key` cannot serve, or None: loaded as the listener will load them."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except OSError as err:
        return f"cannot load {cert} with {key}: {_reason(err)}"
    return None


def upstream_tls_problem(tls: UpstreamTls) -> str | None:
    try:
        client_context(tls)
    except (OSError, ssl.SSLError) as err:
        files = " and ".join(f for f in (tls.ca, tls.client_cert, tls.client_key) if f)
        return f"cannot load {files or 'the system CA bundle'}: {_reason(err)}"
    return None


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """What a certificate says about itself: the names it serves and when it expires."""

    names: tuple[str, ...]  # subjectAltName DNS entries (the subject's CN if there are none)
    not_after: float  # seconds since the epoch


def certificate_info(path: str) -> CertificateInfo:
    """Names and expiry of the first certificate in a PEM file. The ssl module parses it
    with its own decoder (the one its tests use: no third-party dependency for X.509)."""
    decode = getattr(ssl._ssl, "_test_decode_cert")  # type: ignore[attr-defined]  # noqa: B009
    decoded: dict[str, Any] = decode(path)
    names = tuple(value for kind, value in decoded.get("subjectAltName", ()) if kind == "DNS")
    if not names:
        names = tuple(
            value for rdn in decoded.get("subject", ()) for key, value in rdn if key == "commonName"
        )
    return CertificateInfo(names, ssl.cert_time_to_seconds(decoded["notAfter"]))


def server_context(certificate: Certificate) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(ALPN)
    context.load_cert_chain(certificate.cert, certificate.key)
    return context


def _matches(pattern: str, name: str) -> bool:
    """RFC 6125 6.4.3: a wildcard stands for exactly one left-most label."""
    if pattern == name:
        return True
    if pattern.startswith("*."):
        first, dot, rest = name.partition(".")
        return bool(first) and bool(dot) and rest == pattern[2:]
    return False


class ServerCertificates:
    """One listener's certificates. The listening socket keeps one SSLContext for its life;
    its SNI callback hands each handshake the context of the certificate that names the
    requested host, or the first certificate's. A reload swaps the set: handshakes from
    then on get the new certificates, established connections keep theirs."""

    def __init__(self, where: str, tls: ServerTls) -> None:
        self.where = where  # the listener, for messages: "listen[1]"
        self.contexts: tuple[tuple[tuple[str, ...], ssl.SSLContext], ...] = ()
        self.infos: tuple[tuple[Certificate, CertificateInfo], ...] = ()
        self.default = server_context(tls.certificates[0])
        self.load(tls)
        # The listener's context: its own certificate is only ever used if the callback is
        # not called; the callback picks from the current set on every handshake.
        self.listener_context: ssl.SSLContext = server_context(tls.certificates[0])
        self.listener_context.sni_callback = self._choose

    def load(self, tls: ServerTls) -> None:
        """Load `tls`'s certificates (raises OSError/ssl.SSLError and keeps the current set
        if any fails)."""
        contexts = []
        infos = []
        for certificate in tls.certificates:
            context = server_context(certificate)
            info = certificate_info(certificate.cert)
            contexts.append((tuple(name.lower() for name in info.names), context))
            infos.append((certificate, info))
        self.contexts = tuple(contexts)
        self.default = contexts[0][1]
        self.infos = tuple(infos)
        now = time.time()
        for certificate, info in infos:
            if info.not_after <= now:
                log.warning(
                    "%s.tls: certificate %s expired on %s; clients that verify will refuse it",
                    self.where, certificate.cert, time.strftime("%Y-%m-%d %H:%M:%S UTC",
                                                                time.gmtime(info.not_after)),
                )  # fmt: skip

    def context_for(self, server_name: str | None) -> ssl.SSLContext:
        if server_name:
            name = server_name.lower()
            for names, context in self.contexts:
                for pattern in names:
                    if _matches(pattern, name):
                        return context
        return self.default

    def _choose(
        self, ssl_object: ssl.SSLObject | SniOwner, server_name: str | None, _: ssl.SSLContext
    ) -> None:
        ssl_object.context = self.context_for(server_name)


class SniOwner:
    """The Python owner of one connection's `_ssl._SSLSocket` (proxy/tls_transport.py).
    OpenSSL's SNI callback is given the owner (or, with none, the plain socket, which has no
    `context` to set), and setting `context` here switches that connection's certificate.
    Interpreted, not compiled: the owner is held by weak reference, which a native class
    does not support."""

    __slots__ = ("__weakref__", "connection")

    def __init__(self, connection: Any) -> None:
        self.connection = connection

    @property
    def context(self) -> ssl.SSLContext:
        return cast(ssl.SSLContext, self.connection.context)

    @context.setter
    def context(self, context: ssl.SSLContext) -> None:
        self.connection.context = context


def client_context(tls: UpstreamTls) -> ssl.SSLContext:
    """The context of connections to a pool's endpoints (raises OSError/ssl.SSLError)."""
    context = ssl.create_default_context(cafile=tls.ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(ALPN)
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if tls.client_cert is not None:
        context.load_cert_chain(tls.client_cert, tls.client_key)
    return context


def expiries(certificates: Sequence[ServerCertificates]) -> list[tuple[str, str, float]]:
    """(listener, certificate file, notAfter) for every certificate being served."""
    return [
        (item.where, certificate.cert, info.not_after)
        for item in certificates
        for certificate, info in item.infos
    ]


class CertificateCollector(Collector):
    """`pointsman_tls_certificate_expiry_timestamp_seconds` of every listener certificate in
    the config in force, read from the files at scrape time (what the listeners serve after
    the last start or reload), so an alert sees a renewal that was never loaded."""

    def __init__(self, config: Callable[[], Config]) -> None:
        self.config = config

    def collect(self) -> Iterator[Metric]:
        expiry = GaugeMetricFamily(
            "pointsman_tls_certificate_expiry_timestamp_seconds",
            "When each listener certificate expires (notAfter, seconds since the epoch).",
            labels=["listener", "certificate"],
        )
        for index, listener in enumerate(self.config().listeners):
            if listener.tls is None:
                continue
            for certificate in listener.tls.certificates:
                try:
                    info = certificate_info(certificate.cert)
                except (OSError, ssl.SSLError, KeyError, ValueError):
                    continue  # unreadable now: the listener serves what it loaded
                expiry.add_metric([f"listen[{index}]", certificate.cert], info.not_after)
        yield expiry
