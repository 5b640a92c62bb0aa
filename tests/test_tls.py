"""TLS: termination on the data listeners (certificates chosen by SNI, a default one, reloaded
without dropping connections, bad ones refused with their line) and HTTPS to upstreams
(verification, SNI, client certificates, health checks with the same settings).

Every certificate is made in the test with trustme; every exchange is a real TLS handshake
between real sockets on 127.0.0.1, through a Service with real worker processes."""

from __future__ import annotations

import asyncio
import datetime
import json
import ssl
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web

from control.service import Service
from proxy.config import ConfigError
from proxy.config_loader import load_config, parse_config
from tests.conftest import Backend, free_port
from tests.test_api import TOKEN
from tests.test_cli import read_response
from tests.test_workers import run_service

LIMIT = 10.0  # seconds any exchange or wait may take

pytestmark = pytest.mark.timeout(60)


@dataclass
class Pems:
    cert: Path
    key: Path


def write_pems(cert: trustme.LeafCert, directory: Path, name: str) -> Pems:
    pems = Pems(directory / f"{name}.pem", directory / f"{name}.key")
    cert.cert_chain_pems[0].write_to_path(str(pems.cert))
    for blob in cert.cert_chain_pems[1:]:
        blob.write_to_path(str(pems.cert), append=True)
    cert.private_key_pem.write_to_path(str(pems.key))
    return pems


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@dataclass
class TlsAnswer:
    status: int
    headers: dict[str, str]
    body: bytes
    peer_names: list[str]  # the subjectAltName DNS entries of the certificate served
    serial: str


async def tls_get(
    port: int,
    server_hostname: str | None,
    context: ssl.SSLContext,
    path: str = "/",
    streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None,
) -> TlsAnswer:
    """One GET over TLS (on `streams` if given: a kept-alive connection)."""
    async with asyncio.timeout(LIMIT):
        if streams is None:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=context, server_hostname=server_hostname
            )
        else:
            reader, writer = streams
        host = server_hostname or "shop.example"
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        status, headers, body = await read_response(reader)
        cert = writer.get_extra_info("peercert") or {}
        if streams is None:
            writer.close()
    names = [value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"]
    return TlsAnswer(status, headers, body, names, str(cert.get("serialNumber", "")))


def tls_config(
    port: int, tls_port: int, admin_port: int, backend: str, tls: str, state: Path, pool: str = ""
) -> str:
    return f"""\
listen:
  - 127.0.0.1:{port}
  - address: 127.0.0.1:{tls_port}
    tls: {tls}
admin: {{listen: 127.0.0.1:{admin_port}}}
state: {{path: "{state}"}}
routes:
  - name: shop
    hosts: ["*"]
    path_prefix: /
    pools:
      blue: {{endpoints: ["{backend}"]{pool}}}
"""


async def echo_proto(request: web.Request) -> web.StreamResponse:
    return web.Response(
        text=f"blue {request.headers.get('X-Forwarded-Proto')}", headers={"X-Backend": "blue"}
    )


@dataclass
class TlsHost:
    service: Service
    session: aiohttp.ClientSession
    admin: str
    config_path: Path

    @property
    def ports(self) -> list[int]:
        return self.service.data_ports

    async def reload(self) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with asyncio.timeout(LIMIT):
            async with self.session.post(self.admin + "/v1/reload", headers=headers) as resp:
                return resp.status, json.loads(await resp.text())

    async def metric(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        from prometheus_client.parser import text_string_to_metric_families

        async with asyncio.timeout(LIMIT):
            async with self.session.get(self.admin + "/metrics") as resp:
                text = await resp.text()
        return {
            tuple(sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == name
        }


StartTls = Callable[..., Awaitable[TlsHost]]


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def start_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[StartTls]:
    """start_tls(backend, tls_yaml, workers=2, pool="") -> TlsHost, its config in a file (for
    reloads) with real free ports: a plain listener, then a TLS one."""
    monkeypatch.setenv("POINTSMAN_TOKEN", TOKEN)
    started: list[TlsHost] = []

    async def make(backend: str, tls: str, workers: int = 2, pool: str = "") -> TlsHost:
        path = tmp_path / "pointsman.yaml"
        path.write_text(
            tls_config(
                free_port(), free_port(), free_port(), backend, tls, tmp_path / "state.json", pool
            )
        )
        config = load_config(str(path))
        service, session, admin, _ = await run_service(config, workers)
        host = TlsHost(service, session, admin, path)
        started.append(host)
        return host

    yield make
    for host in started:
        await host.session.close()
        await host.service.stop()


async def test_sni_chooses_the_certificate_and_requests_are_marked_https(
    start_tls: StartTls, tmp_path: Path, ca: trustme.CA
) -> None:
    blue = await Backend("blue", echo_proto).start()
    try:
        shop = write_pems(ca.issue_cert("shop.example"), tmp_path, "shop")
        api = write_pems(ca.issue_cert("api.example", "*.wild.example"), tmp_path, "api")
        tls = (
            f'{{certificates: [{{cert: "{shop.cert}", key: "{shop.key}"}},'
            f' {{cert: "{api.cert}", key: "{api.key}"}}]}}'
        )
        host = await start_tls(blue.address, tls)
        plain_port, tls_port = host.ports
        context = client_context(ca)
        first = await tls_get(tls_port, "shop.example", context)
        assert (first.status, first.body) == (200, b"blue https")
        assert first.peer_names == ["shop.example"]
        second = await tls_get(tls_port, "api.example", context)
        assert (second.status, second.peer_names) == (200, ["api.example", "*.wild.example"])
        wild = await tls_get(tls_port, "x.wild.example", context)
        assert wild.peer_names == ["api.example", "*.wild.example"]
        # No SNI at all (a client connecting by IP address): the first certificate.
        anonymous = ssl.create_default_context()
        anonymous.check_hostname = False
        ca.configure_trust(anonymous)
        bare = await tls_get(tls_port, None, anonymous)
        assert (bare.status, bare.peer_names) == (200, ["shop.example"])
        # The plain listener beside it still speaks HTTP, and says so upstream.
        async with host.session.get(f"http://127.0.0.1:{plain_port}/") as resp:
            assert (resp.status, await resp.text()) == (200, "blue http")
        # Only HTTP/1.1 is offered by ALPN.
        async with asyncio.timeout(LIMIT):
            alpn = client_context(ca)
            alpn.set_alpn_protocols(["h2", "http/1.1"])
            _, writer = await asyncio.open_connection(
                "127.0.0.1", tls_port, ssl=alpn, server_hostname="shop.example"
            )
            assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"
            writer.close()
    finally:
        await blue.stop()


async def test_a_name_no_certificate_has_gets_the_default_and_a_verifying_client_refuses(
    start_tls: StartTls, tmp_path: Path, ca: trustme.CA
) -> None:
    blue = await Backend("blue", echo_proto).start()
    try:
        shop = write_pems(ca.issue_cert("shop.example"), tmp_path, "shop")
        host = await start_tls(blue.address, f'{{cert: "{shop.cert}", key: "{shop.key}"}}')
        tls_port = host.ports[1]
        with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
            await tls_get(tls_port, "other.example", client_context(ca))
        # A client that trusts another CA refuses too; the listener goes on serving.
        with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
            await tls_get(tls_port, "shop.example", client_context(trustme.CA()))
        answer = await tls_get(tls_port, "shop.example", client_context(ca))
        assert answer.status == 200
        # TLS 1.1 and older are not spoken.
        old = client_context(ca)
        with warnings.catch_warnings():  # the ssl module deprecates the very setting
            warnings.simplefilter("ignore", DeprecationWarning)
            old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
        with pytest.raises(ssl.SSLError):
            await tls_get(tls_port, "shop.example", old)
    finally:
        await blue.stop()


async def test_an_expired_certificate_is_served_refused_by_clients_and_reported(
    start_tls: StartTls, tmp_path: Path, ca: trustme.CA
) -> None:
    blue = await Backend("blue", echo_proto).start()
    try:
        past = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
        old = write_pems(
            ca.issue_cert(
                "shop.example", not_before=past - datetime.timedelta(days=90), not_after=past
            ),
            tmp_path,
            "old",
        )
        host = await start_tls(blue.address, f'{{cert: "{old.cert}", key: "{old.key}"}}')
        with pytest.raises(ssl.SSLCertVerificationError, match="certificate has expired"):
            await tls_get(host.ports[1], "shop.example", client_context(ca))
        # The SRE sees it coming (or gone) on /metrics.
        expiry = await host.metric("pointsman_tls_certificate_expiry_timestamp_seconds")
        assert expiry == {
            (("certificate", str(old.cert)), ("listener", "listen[1]")): past.timestamp()
        }
    finally:
        await blue.stop()


async def test_a_reloaded_certificate_serves_new_connections_and_keeps_the_old_ones(
    start_tls: StartTls, tmp_path: Path, ca: trustme.CA
) -> None:
    blue = await Backend("blue", echo_proto).start()
    try:
        pems = write_pems(ca.issue_cert("shop.example"), tmp_path, "shop")
        host = await start_tls(blue.address, f'{{cert: "{pems.cert}", key: "{pems.key}"}}')
        tls_port = host.ports[1]
        context = client_context(ca)
        async with asyncio.timeout(LIMIT):
            streams = await asyncio.open_connection(
                "127.0.0.1", tls_port, ssl=context, server_hostname="shop.example"
            )
        before = await tls_get(tls_port, "shop.example", context, streams=streams)
        assert before.status == 200
        # A renewed certificate (another serial) in the same files, then a reload.
        write_pems(ca.issue_cert("shop.example"), tmp_path, "shop")
        status, answer = await host.reload()
        assert status == 200, answer
        assert answer["restart_needed"] == []
        # The connection made before goes on, with its certificate; new ones get the new one.
        kept = await tls_get(tls_port, "shop.example", context, streams=streams)
        assert (kept.status, kept.serial) == (200, before.serial)
        for _ in range(4):  # every worker has the new certificate
            fresh = await tls_get(tls_port, "shop.example", context)
            assert fresh.status == 200 and fresh.serial != before.serial
        streams[1].close()

        # A reload with a key that does not fit the certificate: refused with its line,
        # and the certificate in force stays.
        other = write_pems(ca.issue_cert("shop.example"), tmp_path, "other")
        text = host.config_path.read_text()
        host.config_path.write_text(text.replace(str(pems.key), str(other.key)))
        status, answer = await host.reload()
        assert status == 400, answer
        problems = "\n".join(answer["detail"]["problems"])
        assert f"pointsman.yaml:4: listen[1].tls.cert: cannot load {pems.cert}" in problems
        still = await tls_get(tls_port, "shop.example", context)
        assert (still.status, still.serial) == (200, fresh.serial)
    finally:
        await blue.stop()


def test_a_bad_certificate_fails_the_config_with_its_line(tmp_path: Path, ca: trustme.CA) -> None:
    pems = write_pems(ca.issue_cert("shop.example"), tmp_path, "shop")
    other = write_pems(ca.issue_cert("shop.example"), tmp_path, "other")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cases = {
        f'{{cert: "{tmp_path}/missing.pem", key: "{pems.key}"}}': (
            f"listen[1].tls.cert: cannot load {tmp_path}/missing.pem with {pems.key}:"
            " No such file or directory"
        ),
        f'{{cert: "{pems.cert}", key: "{other.key}"}}': (
            f"listen[1].tls.cert: cannot load {pems.cert} with {other.key}: key values mismatch"
        ),
        f'{{cert: "{garbage}", key: "{pems.key}"}}': f"listen[1].tls.cert: cannot load {garbage}",
        f'{{cert: "{pems.cert}"}}': "listen[1].tls: expected cert and key (PEM files)",
        "{certificates: []}": "listen[1].tls.certificates: expected a non-empty list",
        f'{{cert: "{pems.cert}", key: "{pems.key}", certificates: []}}': (
            "listen[1].tls: expected either cert and key, or certificates"
        ),
    }
    for tls, expected in cases.items():
        text = tls_config(8080, 8443, 8081, "127.0.0.1:9001", tls, tmp_path / "s.json")
        with pytest.raises(ConfigError) as caught:
            parse_config(text, "p.yaml")
        assert len(caught.value.problems) == 1, caught.value.problems
        assert caught.value.problems[0].startswith("p.yaml:4: "), caught.value.problems
        assert expected in caught.value.problems[0], caught.value.problems
    same = (
        "listen: [127.0.0.1:8080, 127.0.0.1:8080]\nroutes:\n  - name: shop\n    pools:\n"
        '      blue: {endpoints: ["127.0.0.1:9001"]}\n'
    )
    with pytest.raises(ConfigError, match=r"listen\[1\]: same address as listen\[0\]"):
        parse_config(same, "p.yaml")


# -- HTTPS to upstreams -----------------------------------------------------------------------


async def tls_backend(
    ca: trustme.CA, name: str, seen: list[str], client_ca: trustme.CA | None = None
) -> tuple[web.AppRunner, int]:
    """An aiohttp upstream over TLS on 127.0.0.1 with a certificate for `name` from `ca`;
    with `client_ca`, it requires a client certificate from that CA."""

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(request.path)
        return web.Response(text=f"tls {request.path}")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(context)
    if client_ca is not None:
        client_ca.configure_trust(context)
        context.verify_mode = ssl.CERT_REQUIRED
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
    return runner, int(runner.addresses[0][1])


async def test_upstream_tls_verifies_sends_sni_and_client_certificates(
    start_tls: StartTls, tmp_path: Path, ca: trustme.CA
) -> None:
    seen: list[str] = []
    client_ca = trustme.CA()
    runner, port = await tls_backend(ca, "backend.internal", seen, client_ca=client_ca)
    try:
        ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
        client = write_pems(client_ca.issue_cert("pointsman.internal"), tmp_path, "client")
        front = write_pems(ca.issue_cert("shop.example"), tmp_path, "shop")
        pool = (
            f', tls: {{ca: "{tmp_path}/ca.pem", sni: backend.internal,'
            f' client_cert: "{client.cert}", client_key: "{client.key}"}},'
            " health: {path: /healthz, interval: 0.2s, timeout: 1s, unhealthy_threshold: 1}"
        )
        host = await start_tls(
            f"127.0.0.1:{port}", f'{{cert: "{front.cert}", key: "{front.key}"}}', pool=pool
        )
        plain_port = host.ports[0]
        async with host.session.get(f"http://127.0.0.1:{plain_port}/a") as resp:
            assert (resp.status, await resp.text()) == (200, "tls /a")
        # The active checks speak TLS to it too: they reach it, and it stays in.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LIMIT
        while seen.count("/healthz") < 3:
            assert loop.time() < deadline, seen
            await asyncio.sleep(0.05)
        async with host.session.get(f"http://127.0.0.1:{plain_port}/b") as resp:
            assert (resp.status, await resp.text()) == (200, "tls /b")
        errors = await host.metric("pointsman_upstream_tls_errors_total")
        assert errors == {(("pool", "blue"), ("route", "shop")): 0.0}
    finally:
        await runner.cleanup()


async def test_an_upstream_that_fails_verification_gets_502_with_the_reason_and_a_count(
    start_tls: StartTls, tmp_path: Path, ca: trustme.CA
) -> None:
    seen: list[str] = []
    stranger = trustme.CA()  # the upstream's certificate comes from a CA we do not trust
    runner, port = await tls_backend(stranger, "backend.internal", seen)
    try:
        ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
        front = write_pems(ca.issue_cert("shop.example"), tmp_path, "shop")
        pool = f', tls: {{ca: "{tmp_path}/ca.pem", sni: backend.internal}}'
        host = await start_tls(
            f"127.0.0.1:{port}", f'{{cert: "{front.cert}", key: "{front.key}"}}',
            workers=1, pool=pool,
        )  # fmt: skip
        for _ in range(2):
            async with host.session.get(f"http://127.0.0.1:{host.ports[0]}/a") as resp:
                assert resp.status == 502
                body = await resp.json()
        assert body["error"].startswith("upstream TLS handshake failed: ")
        assert "unable to get local issuer certificate" in body["error"], body
        assert (body["route"], body["pool"]) == ("shop", "blue")
        assert seen == []  # nothing reached it
        errors = await host.metric("pointsman_upstream_tls_errors_total")
        assert errors == {(("pool", "blue"), ("route", "shop")): 2.0}
    finally:
        await runner.cleanup()


def test_upstream_tls_settings_are_checked_with_their_line(tmp_path: Path) -> None:
    base = "listen: 127.0.0.1:8080\nroutes:\n  - name: shop\n    pools:\n      blue: "
    cases = {
        f'{{endpoints: ["127.0.0.1:9001"], tls: {{ca: "{tmp_path}/none.pem"}}}}': (
            f"p.yaml:5: routes[0].pools.blue.tls: cannot load {tmp_path}/none.pem"
        ),
        '{endpoints: ["127.0.0.1:9001"], tls: {client_cert: "c.pem"}}': (
            "p.yaml:5: routes[0].pools.blue.tls: client_cert and client_key go together"
        ),
        '{endpoints: ["127.0.0.1:9001"], tls: {verify: maybe}}': (
            "p.yaml:5: routes[0].pools.blue.tls.verify: expected true or false, got 'maybe'"
        ),
        '{endpoints: ["127.0.0.1:9001"], tls: {cipher: x}}': (
            "p.yaml:5: routes[0].pools.blue.tls.cipher: unknown key"
        ),
    }
    for pool, expected in cases.items():
        with pytest.raises(ConfigError) as caught:
            parse_config(base + pool + "\n", "p.yaml")
        assert len(caught.value.problems) == 1, caught.value.problems
        assert caught.value.problems[0].startswith(expected), caught.value.problems
    config = parse_config(
        base + '{endpoints: ["127.0.0.1:9001"], tls: {verify: false, sni: b.internal}}\n'
    )
    tls = config.routes[0].pools[0].tls
    assert tls is not None and (tls.verify, tls.sni) == (False, "b.internal")
