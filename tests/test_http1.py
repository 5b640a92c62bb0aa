"""HTTP/1.1 correctness the proxy owns (DESIGN.md, "HTTP correctness the proxy owns").

Every test runs a real proxy and real upstreams on 127.0.0.1. Well-formed traffic goes through
aiohttp; where the exact bytes matter the client is a raw socket, and where the exact upstream
bytes matter the upstream is a tiny raw asyncio server (`RawUpstream`, in tests/rawhttp.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import time

import aiohttp
import httptools
import pytest
from aiohttp import web

from proxy.http1 import request_spellings
from proxy.server import ProxyServer
from proxy.upstream import usual_spellings
from tests.conftest import BackendFactory, ProxyFactory, config_for, free_port, raw_exchange
from tests.rawhttp import (
    WAIT,
    Message,
    RawUpstreamFactory,
    client,
    error_doc,
    get,
    ok_path,
    parse_head,
    parse_responses,
    read_chunked,
    read_final_response,
    read_response,
    responding,
    send,
    wait_eof,
)


async def proxy_to(
    proxy_factory: ProxyFactory, address: str, extra: str = "", route_extra: str = ""
) -> ProxyServer:
    return await proxy_factory(
        config_for({"blue": [address]}, extra=extra, route_extra=route_extra)
    )


# -- keep-alive and pipelining -------------------------------------------------------------------


async def test_keep_alive_reuses_client_and_upstream_connections(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    async def peer_port(request: web.Request) -> web.Response:
        assert request.transport is not None
        return web.Response(text=str(request.transport.get_extra_info("peername")[1]))

    backend = await backend_factory("blue", peer_port)
    proxy = await proxy_to(proxy_factory, backend.address)
    ports: list[str] = []
    async with client(proxy.port) as (reader, writer):
        for i in range(4):
            await send(writer, get(f"/ka/{i}"))
            resp = await read_response(reader)
            assert resp.status == 200
            assert (resp.get("Connection") or "").lower() != "close"
            ports.append(resp.body.decode())
        assert not reader.at_eof()
    # One client connection carried all four; the proxy reused one upstream connection for them.
    assert len(backend.seen) == 4
    assert len(set(ports)) == 1, ports


async def test_http10_client_asking_for_keep_alive_keeps_its_connection(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    backend = await backend_factory("blue")
    proxy = await proxy_to(proxy_factory, backend.address)
    async with client(proxy.port) as (reader, writer):
        for i in range(3):
            await send(
                writer,
                f"GET /ka10/{i} HTTP/1.0\r\nHost: shop.example\r\n"
                "Connection: keep-alive\r\n\r\n".encode(),
            )
            resp = await read_response(reader)
            assert resp.status == 200
            # A 1.0 client keeps the connection only when told so (RFC 9112 9.3).
            assert (resp.get("Connection") or "").lower() == "keep-alive"
        await send(writer, b"GET /ka10/last HTTP/1.0\r\nHost: shop.example\r\n\r\n")
        resp = await read_response(reader)
        assert resp.status == 200
        assert await asyncio.wait_for(reader.read(), WAIT) == b""  # closed after it
    assert len(backend.seen) == 4


@pytest.mark.parametrize("version", ["0.9", "1.0", "1.1", "2.0"])
@pytest.mark.parametrize("connection", [None, "keep-alive", "close", "upgrade"])
def test_llhttp_keeps_only_http11_alive_without_connection_header(
    version: str, connection: str | None
) -> None:
    """What DownstreamConnection.on_headers_complete relies on to skip get_http_version():
    kept alive with no Connection header means HTTP/1.1, and llhttp takes no other versions."""

    class Sink:
        def on_headers_complete(self) -> None:
            pass

    parser = httptools.HttpRequestParser(Sink())
    line = f"Connection: {connection}\r\n" if connection else ""
    parser.feed_data(f"GET / HTTP/{version}\r\nHost: a\r\n{line}\r\n".encode())
    assert parser.get_http_version() == version
    if connection is None:
        assert parser.should_keep_alive() == (version == "1.1")


def test_header_spellings_map_to_the_lower_cased_name() -> None:
    assert usual_spellings(b"x-user-id") == (b"x-user-id", b"X-User-Id")
    assert usual_spellings(b"te") == (b"te", b"TE")
    assert usual_spellings(b"etag") == (b"etag", b"ETag")
    names = request_spellings(frozenset({b"x-team"}))
    assert names[b"X-Team"] == names[b"x-team"] == b"x-team"
    assert names[b"Content-Length"] == b"content-length"
    assert all(spelling.lower() == lname for spelling, lname in names.items())


@pytest.mark.parametrize("version", ["1.2", "1.9", "2.1", "3.0", "9.9"])
def test_llhttp_rejects_other_http_versions(version: str) -> None:
    class Sink:
        pass

    parser = httptools.HttpRequestParser(Sink())
    with pytest.raises(httptools.HttpParserError):
        parser.feed_data(f"GET / HTTP/{version}\r\nHost: a\r\n\r\n".encode())


async def test_pipelined_requests_answered_in_order(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    backend = await backend_factory("blue")
    proxy = await proxy_to(proxy_factory, backend.address)
    post = b"POST /p/2 HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 11\r\n\r\nhello world"
    async with client(proxy.port) as (reader, writer):
        await send(writer, get("/p/1") + post + get("/p/3"))
        bodies = [(await read_response(reader)).body for _ in range(3)]
        # Still one open connection, good for more.
        await send(writer, get("/p/4"))
        bodies.append((await read_response(reader)).body)
    assert bodies == [
        b"blue GET /p/1 0",
        b"blue POST /p/2 11",
        b"blue GET /p/3 0",
        b"blue GET /p/4 0",
    ]


async def test_pipelined_responses_in_order_when_first_is_slowest(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    later_arrived = asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        if request.path == "/p/1":
            # Slow: wait for a later request to reach the upstream (a proxy forwarding them
            # concurrently), or 0.3 s (a proxy forwarding them one at a time).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.3):
                    await later_arrived.wait()
        else:
            later_arrived.set()
        return web.Response(text=f"body of {request.path}")

    backend = await backend_factory("blue", handler)
    proxy = await proxy_to(proxy_factory, backend.address)
    async with client(proxy.port) as (reader, writer):
        await send(writer, get("/p/1") + get("/p/2") + get("/p/3"))
        bodies = [(await read_response(reader)).body for _ in range(3)]
    assert bodies == [b"body of /p/1", b"body of /p/2", b"body of /p/3"]


# -- message framing -----------------------------------------------------------------------------


async def hash_handler(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response({"sha256": hashlib.sha256(body).hexdigest(), "length": len(body)})


async def test_content_length_request_body_forwarded_intact(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    backend = await backend_factory("blue", hash_handler)
    proxy = await proxy_to(proxy_factory, backend.address)
    payload = os.urandom(1 << 20)
    async with (
        aiohttp.ClientSession() as session,
        asyncio.timeout(WAIT * 2),
        session.post(f"http://127.0.0.1:{proxy.port}/upload", data=payload) as resp,
    ):
        assert resp.status == 200
        doc = await resp.json()
    assert doc == {"sha256": hashlib.sha256(payload).hexdigest(), "length": len(payload)}
    assert backend.seen[0].headers.get("Content-Length") == str(len(payload))


async def test_chunked_request_body_forwarded_intact(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    backend = await backend_factory("blue", hash_handler)
    proxy = await proxy_to(proxy_factory, backend.address)
    rng = random.Random(7)
    chunks = [os.urandom(rng.randint(1, 70000)) for _ in range(12)]
    payload = b"".join(chunks)
    async with client(proxy.port) as (reader, writer):
        await send(
            writer,
            b"POST /upload HTTP/1.1\r\nHost: shop.example\r\nTransfer-Encoding: chunked\r\n\r\n",
        )
        for chunk in chunks:
            await send(writer, b"%x\r\n%s\r\n" % (len(chunk), chunk))
        await send(writer, b"0\r\n\r\n")
        resp = await read_response(reader)
    assert resp.status == 200
    assert json.loads(resp.body) == {
        "sha256": hashlib.sha256(payload).hexdigest(),
        "length": len(payload),
    }


async def test_content_length_response_reaches_client_intact(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    payload = os.urandom(1 << 20)

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=payload, content_type="application/octet-stream")

    backend = await backend_factory("blue", big)
    proxy = await proxy_to(proxy_factory, backend.address)
    async with client(proxy.port) as (reader, writer):
        await send(writer, get("/big"))
        resp = await read_response(reader)
    assert resp.status == 200
    assert resp.get("Content-Length") == str(len(payload))
    assert resp.get("Transfer-Encoding") is None
    assert hashlib.sha256(resp.body).digest() == hashlib.sha256(payload).digest()


async def test_chunked_response_reaches_client_intact(
    raw_upstream_factory: RawUpstreamFactory, proxy_factory: ProxyFactory
) -> None:
    chunks = [b"first chunk;", os.urandom(40000), b"x", b"last"]

    def chunked(req: Message) -> bytes:
        out = [b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"]
        out.append(b"Transfer-Encoding: chunked\r\n\r\n")
        out.extend(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks)
        out.append(b"0\r\n\r\n")
        return b"".join(out)

    upstream = await raw_upstream_factory(responding(chunked))
    proxy = await proxy_to(proxy_factory, upstream.address)
    async with client(proxy.port) as (reader, writer):
        await send(writer, get("/chunked"))
        resp = await read_response(reader)
        # The connection is still good for another exchange.
        await send(writer, get("/chunked"))
        again = await read_response(reader)
    assert resp.status == 200
    assert resp.is_chunked()
    assert resp.get("Content-Length") is None
    assert resp.body == b"".join(chunks)
    assert again.body == b"".join(chunks)


def close_delimited(req: Message) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
        b"streamed until the upstream closes " + req.target.encode()
    )


async def test_close_delimited_response_is_chunked_for_http11_client(
    raw_upstream_factory: RawUpstreamFactory, proxy_factory: ProxyFactory
) -> None:
    upstream = await raw_upstream_factory(responding(close_delimited, close=True))
    proxy = await proxy_to(proxy_factory, upstream.address)
    async with client(proxy.port) as (reader, writer):
        await send(writer, get("/stream"))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        start, headers = parse_head(head)
        msg = Message(start, headers)
        assert msg.status == 200
        assert msg.is_chunked(), headers
        assert msg.get("Content-Length") is None
        body = await asyncio.wait_for(read_chunked(reader), WAIT)
    assert body == b"streamed until the upstream closes /stream"


async def test_close_delimited_response_is_close_delimited_for_http10_client(
    raw_upstream_factory: RawUpstreamFactory, proxy_factory: ProxyFactory
) -> None:
    upstream = await raw_upstream_factory(responding(close_delimited, close=True))
    proxy = await proxy_to(proxy_factory, upstream.address)
    data = await raw_exchange(proxy.port, b"GET /stream HTTP/1.0\r\nHost: shop.example\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    start, headers = parse_head(head + b"\r\n\r\n")
    msg = Message(start, headers)
    assert msg.status == 200
    # An HTTP/1.0 client does not understand chunked: the body ends when the proxy closes.
    assert msg.get("Transfer-Encoding") is None
    assert msg.get("Content-Length") is None
    assert body == b"streamed until the upstream closes /stream"


# -- responses without a body, interim responses ------------------------------------------------


async def test_head_response_has_no_body_and_connection_stays_usable(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    backend = await backend_factory("blue")
    proxy = await proxy_to(proxy_factory, backend.address)
    async with client(proxy.port) as (reader, writer):
        await send(writer, b"HEAD /page HTTP/1.1\r\nHost: shop.example\r\n\r\n")
        head = await read_response(reader, head_request=True)
        assert head.status == 200
        # No body follows the head: the next bytes on the wire are the GET's response.
        await send(writer, get("/page"))
        resp = await read_response(reader)
    assert resp.start_line.startswith("HTTP/1.1 200")
    assert resp.body == b"blue GET /page 0"
    assert [r.method for r in backend.seen] == ["HEAD", "GET"]


def no_body_responses(req: Message) -> bytes:
    if req.target == "/204":
        return b"HTTP/1.1 204 No Content\r\nX-Kind: none\r\n\r\n"
    if req.target == "/304":
        # A 304 may carry the Content-Length the full response would have had (RFC 9110 8.6).
        return b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nContent-Length: 1234\r\n\r\n'
    return ok_path(req)


async def check_no_body(port: int, path: str, status: int) -> None:
    async with client(port) as (reader, writer):
        await send(writer, get(path))
        resp = await read_response(reader)
        assert resp.status == status
        assert not resp.is_chunked(), resp.headers
        # Nothing follows the head: the next response on the connection parses cleanly.
        await send(writer, get("/after"))
        after = await read_response(reader)
        assert after.start_line.startswith("HTTP/1.1 200"), after.start_line
        assert after.body == b"/after"


async def test_204_response_has_no_body(
    raw_upstream_factory: RawUpstreamFactory, proxy_factory: ProxyFactory
) -> None:
    upstream = await raw_upstream_factory(responding(no_body_responses))
    proxy = await proxy_to(proxy_factory, upstream.address)
    await check_no_body(proxy.port, "/204", 204)


async def test_304_response_has_no_body(
    raw_upstream_factory: RawUpstreamFactory, proxy_factory: ProxyFactory
) -> None:
    upstream = await raw_upstream_factory(responding(no_body_responses))
    proxy = await proxy_to(proxy_factory, upstream.address)
    await check_no_body(proxy.port, "/304", 304)


async def test_1xx_interim_response_forwarded_before_final(
    raw_upstream_factory: RawUpstreamFactory, proxy_factory: ProxyFactory
) -> None:
    def early_hints(req: Message) -> bytes:
        return (
            b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal"
        )

    upstream = await raw_upstream_factory(responding(early_hints))
    proxy = await proxy_to(proxy_factory, upstream.address)
    async with client(proxy.port) as (reader, writer):
        await send(writer, get("/hints"))
        interim, final = await read_final_response(reader)
        await send(writer, get("/hints"))
        _, again = await read_final_response(reader)
    assert [m.status for m in interim] == [103]
    assert interim[0].get("Link") == "</style.css>; rel=preload"
    assert interim[0].body == b""
    assert final.status == 200
    assert final.body == b"final"
    assert again.body == b"final"


# -- Expect: 100-continue ------------------------------------------------------------------------


async def test_expect_100_continue(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    backend = await backend_factory("blue")
    proxy = await proxy_to(proxy_factory, backend.address)
    body = b"hello, continued body"
    async with client(proxy.port) as (reader, writer):
        await send(
            writer,
            b"POST /upload HTTP/1.1\r\nHost: shop.example\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body),
        )
        # The client waits for 100 Continue before sending the body.
        interim = await read_response(reader)
        assert interim.start_line == "HTTP/1.1 100 Continue"
        await send(writer, body)
        final = await read_response(reader)
    assert final.status == 200
    assert final.body == b"blue POST /upload %d" % len(body)


async def test_expect_100_continue_over_body_limit_gets_413_without_100(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    backend = await backend_factory("blue")
    proxy = await proxy_to(proxy_factory, backend.address, extra="limits: {max_body_bytes: 1KiB}")
    data = await raw_exchange(
        proxy.port,
        b"POST /upload HTTP/1.1\r\nHost: shop.example\r\nExpect: 100-continue\r\n"
        b"Content-Length: 1000000\r\n\r\n",
    )
    responses = parse_responses(data)
    assert [r.status for r in responses] == [413]
    assert b" 100 " not in data
    assert backend.seen == []


# -- hop-by-hop headers --------------------------------------------------------------------------

HOP_BY_HOP = ("Connection", "Keep-Alive", "TE", "Trailer", "Upgrade", "Proxy-Connection")


async def test_hop_by_hop_request_headers_not_forwarded(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    backend = await backend_factory("blue")
    proxy = await proxy_to(proxy_factory, backend.address)
    async with client(proxy.port) as (reader, writer):
        await send(
            writer,
            get(
                "/hop",
                extra=(
                    "Connection: keep-alive\r\n"
                    "Keep-Alive: timeout=5\r\n"
                    "TE: trailers\r\n"
                    "Trailer: X-Checksum\r\n"
                    "Upgrade: h2c\r\n"
                    "Proxy-Connection: keep-alive\r\n"
                    "X-Normal: end-to-end\r\n"
                ),
            ),
        )
        resp = await read_response(reader)
    assert resp.status == 200
    headers = backend.seen[0].headers
    for name in HOP_BY_HOP[1:]:
        assert name not in headers, f"{name} forwarded upstream: {headers.getall(name)}"
    assert headers.get("X-Normal") == "end-to-end"


async def test_request_headers_named_in_connection_not_forwarded(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    backend = await backend_factory("blue")
    proxy = await proxy_to(proxy_factory, backend.address)
    async with client(proxy.port) as (reader, writer):
        await send(
            writer,
            get(
                "/hop",
                extra=(
                    "Connection: keep-alive, X-Secret\r\n"
                    "Connection: X-Other-Secret\r\n"  # field lines combine (RFC 9110 5.3)
                    "X-Secret: only-for-the-first-hop\r\n"
                    "X-Other-Secret: this-too\r\n"
                    "X-Normal: end-to-end\r\n"
                ),
            ),
        )
        resp = await read_response(reader)
    assert resp.status == 200
    headers = backend.seen[0].headers
    assert "X-Secret" not in headers, headers.getall("X-Secret")
    assert "X-Other-Secret" not in headers, headers.getall("X-Other-Secret")
    assert "secret" not in ", ".join(headers.getall("Connection", [])).lower()
    assert headers.get("X-Normal") == "end-to-end"


async def test_hop_by_hop_response_headers_not_forwarded(
    raw_upstream_factory: RawUpstreamFactory, proxy_factory: ProxyFactory
) -> None:
    def hop_headers(req: Message) -> bytes:
        return (
            b"HTTP/1.1 200 OK\r\n"
            b"Connection: keep-alive\r\n"
            b"Keep-Alive: timeout=5, max=100\r\n"
            b"Proxy-Connection: keep-alive\r\n"
            b"Trailer: X-Checksum\r\n"
            b"Upgrade: h2c\r\n"
            b"TE: trailers\r\n"
            b"X-Kept: yes\r\n"
            b"Content-Length: 2\r\n\r\nok"
        )

    upstream = await raw_upstream_factory(responding(hop_headers))
    proxy = await proxy_to(proxy_factory, upstream.address)
    async with client(proxy.port) as (reader, writer):
        await send(writer, get("/hop"))
        resp = await read_response(reader)
    assert resp.status == 200
    assert resp.body == b"ok"
    names = resp.names()
    for name in HOP_BY_HOP[1:]:
        assert name.lower() not in names, f"{name} forwarded to the client: {resp.headers}"
    assert resp.get("X-Kept") == "yes"


async def test_response_headers_named_in_connection_not_forwarded(
    raw_upstream_factory: RawUpstreamFactory, proxy_factory: ProxyFactory
) -> None:
    def named_headers(req: Message) -> bytes:
        return (
            b"HTTP/1.1 200 OK\r\n"
            b"Connection: X-Internal\r\n"
            b"Connection: keep-alive, X-Also-Internal\r\n"  # field lines combine
            b"X-Internal: upstream-secret\r\n"
            b"X-Also-Internal: upstream-secret-too\r\n"
            b"X-Kept: yes\r\n"
            b"Content-Length: 2\r\n\r\nok"
        )

    upstream = await raw_upstream_factory(responding(named_headers))
    proxy = await proxy_to(proxy_factory, upstream.address)
    async with client(proxy.port) as (reader, writer):
        await send(writer, get("/hop"))
        resp = await read_response(reader)
    assert resp.status == 200
    assert resp.body == b"ok"
    names = resp.names()
    assert "x-internal" not in names, resp.headers
    assert "x-also-internal" not in names, resp.headers
    assert "internal" not in ", ".join(resp.get_all("Connection")).lower()
    assert resp.get("X-Kept") == "yes"


# -- headers the proxy adds ----------------------------------------------------------------------


async def test_x_forwarded_headers_added(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    backend = await backend_factory("blue")
    proxy = await proxy_to(proxy_factory, backend.address)
    async with client(proxy.port) as (reader, writer):
        await send(
            writer, get("/xff", host="shop.example:8080", extra="X-Forwarded-For: 203.0.113.7\r\n")
        )
        assert (await read_response(reader)).status == 200
        await send(writer, get("/plain", host="shop.example:8080"))
        assert (await read_response(reader)).status == 200
    first, second = (r.headers for r in backend.seen)
    assert first.getall("X-Forwarded-For") == ["203.0.113.7, 127.0.0.1"]
    assert second.getall("X-Forwarded-For") == ["127.0.0.1"]
    for headers in (first, second):
        assert headers.getall("X-Forwarded-Proto") == ["http"]
        assert headers.getall("X-Forwarded-Host") == ["shop.example:8080"]


async def test_forwarded_host_follows_each_request_on_one_connection(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    """The end of the upstream head is reused per connection: it must follow a Host change."""
    backend = await backend_factory("blue")
    proxy = await proxy_to(proxy_factory, backend.address)
    hosts = ["a.example", "a.example", "b.example:8080", "a.example"]
    async with client(proxy.port) as (reader, writer):
        for i, host in enumerate(hosts):
            await send(writer, get(f"/h/{i}", host=host))
            assert (await read_response(reader)).status == 200
        await send(writer, get("/h/via", host="b.example", extra="Via: 1.0 edge\r\n"))
        assert (await read_response(reader)).status == 200
    seen = [r.headers for r in backend.seen]
    assert [h.getall("X-Forwarded-Host") for h in seen] == [[h] for h in [*hosts, "b.example"]]
    assert [h.getall("Via") for h in seen] == [["1.1 pointsman"]] * 4 + [
        ["1.0 edge, 1.1 pointsman"]
    ]
    assert all(h.getall("X-Forwarded-For") == ["127.0.0.1"] for h in seen)


async def test_via_added_both_ways(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    backend = await backend_factory("blue")
    proxy = await proxy_to(proxy_factory, backend.address)
    async with client(proxy.port) as (reader, writer):
        await send(writer, get("/via", extra="Via: 1.0 fred\r\n"))
        with_via = await read_response(reader)
        await send(writer, get("/via"))
        without = await read_response(reader)
    upstream_via = [r.headers.get("Via", "") for r in backend.seen]
    assert upstream_via[0].startswith("1.0 fred, 1.1 "), upstream_via
    assert upstream_via[1].startswith("1.1 "), upstream_via
    assert len(upstream_via[1].split()) == 2  # "1.1 <pseudonym>"
    for resp in (with_via, without):
        assert (resp.get("Via") or "").startswith("1.1 "), resp.headers


async def test_request_id_kept_when_sent(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    backend = await backend_factory("blue")
    proxy = await proxy_to(proxy_factory, backend.address)
    async with (
        aiohttp.ClientSession() as session,
        asyncio.timeout(WAIT),
        session.get(
            f"http://127.0.0.1:{proxy.port}/rid", headers={"X-Request-Id": "client-abc-123"}
        ) as resp,
    ):
        assert resp.status == 200
    assert backend.seen[0].headers.getall("X-Request-Id") == ["client-abc-123"]


async def test_request_id_generated_when_missing(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    backend = await backend_factory("blue")
    proxy = await proxy_to(proxy_factory, backend.address)
    async with aiohttp.ClientSession() as session, asyncio.timeout(WAIT):
        for _ in range(3):
            async with session.get(f"http://127.0.0.1:{proxy.port}/rid") as resp:
                assert resp.status == 200
    ids = [r.headers.getall("X-Request-Id") for r in backend.seen]
    assert all(len(values) == 1 and values[0].strip() for values in ids), ids
    assert len({values[0] for values in ids}) == 3, ids


# -- Upgrade -------------------------------------------------------------------------------------


async def test_websocket_upgrade_tunnelled(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    async def echo(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str(f"echo: {msg.data}")
        return ws

    backend = await backend_factory("blue", echo)
    proxy = await proxy_to(proxy_factory, backend.address)
    async with (
        aiohttp.ClientSession() as session,
        asyncio.timeout(WAIT),
        session.ws_connect(f"http://127.0.0.1:{proxy.port}/ws") as ws,
    ):
        for text in ("hello", "through", "the proxy " * 1000):
            await ws.send_str(text)
            reply = await ws.receive()
            assert reply.type == aiohttp.WSMsgType.TEXT
            assert reply.data == f"echo: {text}"
        await ws.close()
    assert backend.seen[0].headers.get("Upgrade", "").lower() == "websocket"


# -- ambiguous framing: 400, connection closed, nothing forwarded --------------------------------


async def assert_rejected_unforwarded(
    raw_upstream_factory: RawUpstreamFactory,
    proxy_factory: ProxyFactory,
    request: bytes,
    warm: bool = True,
) -> None:
    """`request` gets one 400, the connection is closed, and the upstream receives nothing of
    it. With `warm`, an idle keep-alive upstream connection is pooled beforehand, so a proxy
    that forwards a head as soon as it is parsed would have somewhere to send it at once."""
    upstream = await raw_upstream_factory(responding(ok_path))
    proxy = await proxy_to(proxy_factory, upstream.address)
    expected: list[str] = []
    if warm:
        async with client(proxy.port) as (reader, writer):
            await send(writer, get("/warm"))
            assert (await read_response(reader)).body == b"/warm"
        expected.append("/warm")
    # A valid request pipelined after the bad one must not be answered or forwarded either.
    data = await raw_exchange(proxy.port, request + get("/after-the-bad-one"))
    responses = parse_responses(data)
    assert [r.status for r in responses] == [400], data
    # Barrier: a good request on a fresh connection reaches the upstream and comes back; by
    # then anything forwarded from the bad connection would have arrived too.
    async with client(proxy.port) as (reader, writer):
        await send(writer, get("/sentinel"))
        assert (await read_response(reader)).body == b"/sentinel"
    expected.append("/sentinel")
    assert [r.target for r in upstream.requests] == expected
    assert b"smuggle" not in upstream.received
    assert b"after-the-bad-one" not in upstream.received


async def test_content_length_with_transfer_encoding_rejected(
    raw_upstream_factory: RawUpstreamFactory, proxy_factory: ProxyFactory
) -> None:
    await assert_rejected_unforwarded(
        raw_upstream_factory,
        proxy_factory,
        b"POST /smuggle HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )


async def test_differing_content_lengths_rejected(
    raw_upstream_factory: RawUpstreamFactory, proxy_factory: ProxyFactory
) -> None:
    await assert_rejected_unforwarded(
        raw_upstream_factory,
        proxy_factory,
        b"POST /smuggle HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 5\r\n"
        b"Content-Length: 6\r\n\r\nhello!",
    )


@pytest.mark.parametrize("warm", [False, True], ids=["cold-pool", "warm-pool"])
async def test_bad_chunk_size_rejected(
    raw_upstream_factory: RawUpstreamFactory, proxy_factory: ProxyFactory, warm: bool
) -> None:
    # Head and bad chunk arrive in one segment: the proxy has seen the whole bad request before
    # it needs to forward a byte of it.
    await assert_rejected_unforwarded(
        raw_upstream_factory,
        proxy_factory,
        b"POST /smuggle HTTP/1.1\r\nHost: shop.example\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\nhello\r\n0\r\n\r\n",
        warm=warm,
    )


@pytest.mark.parametrize(
    "te_line",
    [
        b"Transfer-Encoding: xchunked\r\n",
        b"Transfer-Encoding: chunked, identity\r\n",
        b"Transfer-Encoding : chunked\r\n",
    ],
    ids=["xchunked", "chunked-identity", "space-before-colon"],
)
async def test_obfuscated_transfer_encoding_rejected(
    raw_upstream_factory: RawUpstreamFactory, proxy_factory: ProxyFactory, te_line: bytes
) -> None:
    await assert_rejected_unforwarded(
        raw_upstream_factory,
        proxy_factory,
        b"POST /smuggle HTTP/1.1\r\nHost: shop.example\r\n" + te_line + b"\r\n"
        b"5\r\nhello\r\n0\r\n\r\n",
    )


async def test_malformed_request_line_rejected(
    raw_upstream_factory: RawUpstreamFactory, proxy_factory: ProxyFactory
) -> None:
    await assert_rejected_unforwarded(
        raw_upstream_factory,
        proxy_factory,
        b"GET /index.html HTPT/1.1\r\nHost: shop.example\r\n\r\n",
    )


# -- limits --------------------------------------------------------------------------------------


async def test_header_block_over_limit_gets_431(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    backend = await backend_factory("blue")
    proxy = await proxy_to(proxy_factory, backend.address, extra="limits: {max_header_bytes: 2KiB}")
    # Just under the limit is fine...
    async with client(proxy.port) as (reader, writer):
        await send(writer, get("/small", extra=f"X-Pad: {'a' * 1500}\r\n"))
        assert (await read_response(reader)).status == 200
    # ...over it is refused, and not forwarded.
    data = await raw_exchange(proxy.port, get("/big", extra=f"X-Pad: {'a' * 4000}\r\n"))
    assert [r.status for r in parse_responses(data)] == [431]
    assert [r.path for r in backend.seen] == ["/small"]


async def test_content_length_body_over_limit_gets_413(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    backend = await backend_factory("blue")
    proxy = await proxy_to(proxy_factory, backend.address, extra="limits: {max_body_bytes: 1KiB}")
    data = await raw_exchange(
        proxy.port,
        b"POST /upload HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 4096\r\n\r\n"
        + b"a" * 4096,
    )
    assert [r.status for r in parse_responses(data)] == [413]
    assert backend.seen == []


async def test_chunked_body_over_limit_gets_413(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    backend = await backend_factory("blue", hash_handler)
    proxy = await proxy_to(proxy_factory, backend.address, extra="limits: {max_body_bytes: 1KiB}")
    chunk = b"a" * 512
    data = await raw_exchange(
        proxy.port,
        b"POST /upload HTTP/1.1\r\nHost: shop.example\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"200\r\n%s\r\n" % chunk * 8
        + b"0\r\n\r\n",
    )
    assert [r.status for r in parse_responses(data)] == [413]


async def test_header_read_timeout(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    backend = await backend_factory("blue")
    proxy = await proxy_to(proxy_factory, backend.address, extra="timeouts: {header_read: 0.3s}")
    async with client(proxy.port) as (reader, writer):
        started = time.monotonic()
        await send(writer, b"GET /slowloris HTTP/1.1\r\nHost: shop.example\r\nX-Half: ")
        data = await wait_eof(reader, limit=0.3 + 2.0)
        elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 0.3 + 1.0, elapsed
    if data:
        assert [r.status for r in parse_responses(data)] == [408]
    assert backend.seen == []


async def test_silent_new_connection_closed_after_header_read_not_idle(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    # A connect-and-wait flood must be shed as fast as a slowloris: header_read bounds the
    # wait for a new connection's first byte; idle is for kept-alive connections.
    backend = await backend_factory("blue")
    proxy = await proxy_to(
        proxy_factory, backend.address, extra="timeouts: {header_read: 0.3s, idle: 30s}"
    )
    async with client(proxy.port) as (reader, _writer):
        started = time.monotonic()
        rest = await wait_eof(reader, limit=0.3 + 2.0)
        elapsed = time.monotonic() - started
    assert rest == b""
    assert 0.25 <= elapsed < 0.3 + 1.0, elapsed


async def test_idle_keep_alive_connection_closed(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    backend = await backend_factory("blue")
    proxy = await proxy_to(proxy_factory, backend.address, extra="timeouts: {idle: 0.3s}")
    async with client(proxy.port) as (reader, writer):
        await send(writer, get("/once"))
        assert (await read_response(reader)).status == 200
        idle_from = time.monotonic()
        rest = await wait_eof(reader, limit=0.3 + 2.0)
        elapsed = time.monotonic() - idle_from
    assert rest == b""
    assert 0.25 <= elapsed < 0.3 + 1.0, elapsed


# -- upstream errors -----------------------------------------------------------------------------


async def test_upstream_refusing_connections_gets_502(proxy_factory: ProxyFactory) -> None:
    proxy = await proxy_to(proxy_factory, f"127.0.0.1:{free_port()}")
    async with client(proxy.port) as (reader, writer):
        await send(writer, get("/down"))
        resp = await read_response(reader)
    assert resp.status == 502
    doc = error_doc(resp)
    assert doc["route"] == "shop"
    assert doc["pool"] == "blue"


async def test_stalled_upstream_gets_504_within_timeout(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    never = asyncio.Event()

    async def stall(request: web.Request) -> web.Response:
        await never.wait()
        return web.Response(text="too late")

    backend = await backend_factory("blue", stall)
    proxy = await proxy_to(proxy_factory, backend.address, extra="timeouts: {upstream: 0.5s}")
    try:
        async with client(proxy.port) as (reader, writer):
            started = time.monotonic()
            await send(writer, get("/stall"))
            resp = await read_response(reader)
            elapsed = time.monotonic() - started
        assert resp.status == 504
        assert 0.5 <= elapsed < 0.5 + 1.0, elapsed
        doc = error_doc(resp)
        assert doc["route"] == "shop"
        assert doc["pool"] == "blue"
    finally:
        never.set()  # let the upstream handler finish so the backend stops promptly


async def test_malformed_upstream_response_gets_502(
    raw_upstream_factory: RawUpstreamFactory, proxy_factory: ProxyFactory
) -> None:
    upstream = await raw_upstream_factory(
        responding(lambda req: b"this is not HTTP at all\r\n\r\n", close=True)
    )
    proxy = await proxy_to(proxy_factory, upstream.address)
    async with client(proxy.port) as (reader, writer):
        await send(writer, get("/garbage"))
        resp = await read_response(reader)
    assert resp.status == 502
    doc = error_doc(resp)
    assert doc["route"] == "shop"
    assert doc["pool"] == "blue"
