"""Framing defects found from the outside, each pinned with raw bytes over a real socket.

A valid request followed in one read by bytes the parser refuses; an Upgrade request with a
body; absolute-form targets; trailer fields; upstream responses in a transfer coding other than
chunked; HTTP/0.9. Every test also has h11 (strict, pure Python, independent of llhttp) frame
what Pointsman forwarded upstream (`StrictUpstream`) and what it relayed to the client
(`read_responses`): the requests forwarded are exactly the ones answered, and the responses
relayed are exactly the ones the upstream sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import h11
import pytest

from proxy.config import Config
from proxy.config_loader import parse_config
from proxy.request import split_absolute_form
from proxy.server import ProxyServer
from tests.conftest import ProxyFactory, config_for, on_free_ports
from tests.h11check import WAIT, Answer, Framed, StrictUpstream, ok_target, read_responses

StrictFactory = Callable[..., Awaitable[StrictUpstream]]


@pytest.fixture
async def strict_upstream() -> AsyncIterator[StrictFactory]:
    started: list[StrictUpstream] = []

    async def make(answer: Answer = ok_target) -> StrictUpstream:
        upstream = await StrictUpstream(answer).start()
        started.append(upstream)
        return upstream

    yield make
    for upstream in started:
        await upstream.stop()


# -- what the client sends, and what the upstream must then receive, byte for byte ---------------


def request(
    target: bytes,
    *lines: bytes,
    method: bytes = b"GET",
    host: bytes = b"shop.example",
    body: bytes = b"",
) -> bytes:
    """A request with its own X-Request-Id, so what is forwarded is known to the byte."""
    head = b"%s %s HTTP/1.1\r\nHost: %s\r\nX-Request-Id: id-%s\r\n" % (method, target, host, target)
    if body:
        lines = (*lines, b"Content-Length: %d" % len(body))
    return head + b"".join(line + b"\r\n" for line in lines) + b"\r\n" + body


def forwarded(
    target: bytes,
    *lines: bytes,
    method: bytes = b"GET",
    host: bytes = b"shop.example",
    body: bytes = b"",
    chunked: bool = False,
) -> bytes:
    """What Pointsman sends upstream for request(target, *lines, ...) from 127.0.0.1."""
    if body and not chunked:
        lines = (*lines, b"Content-Length: %d" % len(body))
    return (
        b"%s %s HTTP/1.1\r\nHost: %s\r\nX-Request-Id: id-%s\r\n" % (method, target, host, target)
        + b"".join(line + b"\r\n" for line in lines)
        + b"X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\n"
        + b"X-Forwarded-Host: %s\r\nVia: 1.1 pointsman\r\n" % host
        + (b"Transfer-Encoding: chunked\r\n" if chunked else b"")
        + b"\r\n"
        + body
    )


async def start(proxy_factory: ProxyFactory, upstream: StrictUpstream) -> ProxyServer:
    return await proxy_factory(config_for({"blue": [upstream.address]}))


async def exchange(
    port: int, data: bytes, methods: list[bytes], expect_close: bool = False
) -> list[Framed]:
    """Send `data` in one write; the responses to `methods`, framed by h11."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await read_responses(reader, methods, expect_close=expect_close)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def barrier(port: int) -> None:
    """A good request on a fresh connection, answered: by then anything forwarded from an
    earlier connection has reached the upstream too (it reuses the pooled connection)."""
    [response] = await exchange(port, request(b"/sentinel"), [b"GET"])
    assert response.status == 200 and response.body == b"/sentinel"


async def refused(
    strict_upstream: StrictFactory,
    proxy_factory: ProxyFactory,
    data: bytes,
    status: int,
    reason: str,
) -> Framed:
    """`data`, with a valid request pipelined after it, gets one `status` answer and a close,
    is counted under `reason`, and nothing of it (nor the request after it) reaches the
    upstream: a sentinel on a fresh connection is all the upstream sees."""
    upstream = await strict_upstream()
    proxy = await start(proxy_factory, upstream)
    [response] = await exchange(proxy.port, data + request(b"/after"), [b"GET"], expect_close=True)
    assert response.status == status
    await barrier(proxy.port)
    assert [r.start[1] for r in upstream.requests] == [b"/sentinel"]
    assert upstream.errors == []
    assert proxy.ctx is not None
    assert proxy.ctx.metrics.rejected == {reason: 1}
    return response


def error_of(response: Framed) -> str:
    assert response.get(b"content-type") == [b"application/json"], response.headers
    doc = json.loads(response.body)
    assert doc["status"] == response.status
    return str(doc["error"])


def relayed(upstream_answer: bytes, method: bytes = b"GET") -> Framed:
    """An upstream's answer as the client should see it, framed by h11 from the bytes sent."""
    parser = h11.Connection(h11.CLIENT)
    parser.send(h11.Request(method=method, target="/", headers=[("Host", "check")]))
    parser.send(h11.EndOfMessage())
    parser.receive_data(upstream_answer)
    parser.receive_data(b"")
    status, headers, body = 0, [], bytearray()
    while True:
        event = parser.next_event()
        if isinstance(event, h11.Response):
            status, headers = event.status_code, list(event.headers)
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return Framed((b"%d" % status,), tuple(headers), bytes(body), tuple(event.headers))
        else:
            raise AssertionError(f"unexpected {event!r}")


def assert_same_response(client_got: Framed, upstream_sent: bytes) -> None:
    """Status, body and trailers as sent; every end-to-end header as sent, in order."""
    sent = relayed(upstream_sent)
    assert client_got.start == sent.start
    assert client_got.body == sent.body
    assert client_got.trailers == sent.trailers
    framing = {b"content-length", b"transfer-encoding", b"connection", b"via"}
    assert [h for h in client_got.headers if h[0] not in framing] == [
        h for h in sent.headers if h[0] not in framing
    ]


# -- 1. a valid request followed, in the same read, by bytes the parser refuses ------------------

REFUSED_AFTER_A_VALID_REQUEST = {
    "garbage": b"\x00\x01 not http\r\n\r\n",
    "content_length_and_chunked": (
        b"POST /x HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "two_content_lengths": (
        b"POST /x HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 1\r\n"
        b"Content-Length: 2\r\n\r\nab"
    ),
    "obfuscated_transfer_encoding": (
        b"POST /x HTTP/1.1\r\nHost: shop.example\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"
    ),
    "bad_chunk_size": (
        b"POST /x HTTP/1.1\r\nHost: shop.example\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
    ),
    "http09": b"GET /smuggled\r\n\r\n",
}


@pytest.mark.parametrize(
    "bad", REFUSED_AFTER_A_VALID_REQUEST.values(), ids=list(REFUSED_AFTER_A_VALID_REQUEST)
)
@pytest.mark.parametrize("with_body", [False, True], ids=["get", "post"])
async def test_valid_request_then_refused_bytes_in_one_read(
    strict_upstream: StrictFactory, proxy_factory: ProxyFactory, bad: bytes, with_body: bool
) -> None:
    upstream = await strict_upstream()
    proxy = await start(proxy_factory, upstream)
    body = b"payload" if with_body else b""
    method = b"POST" if with_body else b"GET"
    valid = request(b"/a", method=method, body=body)
    ok, refused = await exchange(proxy.port, valid + bad, [method, b"GET"], expect_close=True)
    # The valid request is answered by the upstream (not timed out), then the refusal.
    assert_same_response(ok, ok_target(upstream.requests[0]))
    assert ok.body == b"/a"
    assert refused.status == 400
    await barrier(proxy.port)
    [conn] = upstream.connections
    assert bytes(conn.raw) == forwarded(b"/a", method=method, body=body) + forwarded(b"/sentinel")
    assert upstream.errors == []


def padded(k: int) -> bytes:
    # ~150 bytes a request: 200 of them span several of the proxy's 16 KiB parse slices.
    return request(b"/r/%d" % k, b"X-Pad: " + b"p" * 90)


MALFORMED_REQUESTS = {
    "garbage": b"GET /bad HTTP/1.1\r\nHost shop.example\r\n\r\n",
    "content_length_and_chunked": REFUSED_AFTER_A_VALID_REQUEST["content_length_and_chunked"],
    "bad_chunk_size": REFUSED_AFTER_A_VALID_REQUEST["bad_chunk_size"],
}


@pytest.mark.parametrize("kind", list(MALFORMED_REQUESTS))
@pytest.mark.parametrize("k", [1, 2, 33, 120, 200])
async def test_200_pipelined_requests_with_request_k_malformed(
    strict_upstream: StrictFactory, proxy_factory: ProxyFactory, kind: str, k: int
) -> None:
    upstream = await strict_upstream()
    proxy = await start(proxy_factory, upstream)
    stream = b"".join(MALFORMED_REQUESTS[kind] if i == k else padded(i) for i in range(1, 201))
    responses = await exchange(proxy.port, stream, [b"GET"] * k, expect_close=True)
    assert [r.body for r in responses[:-1]] == [b"/r/%d" % i for i in range(1, k)]
    assert [r.status for r in responses] == [200] * (k - 1) + [400]
    await barrier(proxy.port)
    assert [r.start[1] for r in upstream.requests] == [
        *(b"/r/%d" % i for i in range(1, k)),
        b"/sentinel",
    ]
    expected = b"".join(
        forwarded(b"/r/%d" % i, b"X-Pad: " + b"p" * 90) for i in range(1, k)
    ) + forwarded(b"/sentinel")
    assert b"".join(bytes(c.raw) for c in upstream.connections) == expected
    assert upstream.errors == []


# -- 2. an Upgrade request that carries a body ---------------------------------------------------

UPGRADE = b"GET /ws HTTP/1.1\r\nHost: shop.example\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: 4\r\n\r\nBODYearly tunnel bytes",
        b"Transfer-Encoding: chunked\r\n\r\n4\r\nBODY\r\n0\r\n\r\n",
    ],
    ids=["content_length", "chunked"],
)
async def test_upgrade_request_with_a_body_is_refused(
    strict_upstream: StrictFactory, proxy_factory: ProxyFactory, framing: bytes
) -> None:
    data = UPGRADE + framing
    response = await refused(strict_upstream, proxy_factory, data, 400, "ambiguous_framing")
    assert error_of(response) == "Upgrade request with a body"


async def test_upgrade_request_with_content_length_zero_is_forwarded(
    strict_upstream: StrictFactory, proxy_factory: ProxyFactory
) -> None:
    # No body: still an upgrade. This upstream declines it (200), so the client sees that
    # answer and the connection is closed after it.
    upstream = await strict_upstream()
    proxy = await start(proxy_factory, upstream)
    data = UPGRADE + b"Content-Length: 0\r\n\r\n"
    [response] = await exchange(proxy.port, data, [b"GET"], expect_close=True)
    assert response.status == 200 and response.body == b"/ws"
    [forwarded_request] = upstream.requests
    assert (b"upgrade", b"websocket") in forwarded_request.headers


# -- 3. absolute-form request targets ------------------------------------------------------------


def two_routes(shop: StrictUpstream, other: StrictUpstream) -> Config:
    text = f"""
listen: 127.0.0.1:1
admin: {{listen: 127.0.0.1:2}}
routes:
  - name: shop
    hosts: [shop.example]
    path_prefix: /
    pools: {{blue: {{endpoints: ['{shop.address}']}}}}
    weights: {{blue: 100}}
  - name: other
    hosts: ["*"]
    path_prefix: /
    pools: {{blue: {{endpoints: ['{other.address}']}}}}
    weights: {{blue: 100}}
"""
    return on_free_ports(parse_config(text, "<test>"))


@pytest.mark.parametrize(
    ("target", "origin_form", "authority"),
    [
        (b"http://shop.example/abs/path", b"/abs/path", b"shop.example"),
        (b"http://shop.example:8080/p?q=1&r=2", b"/p?q=1&r=2", b"shop.example:8080"),
        (b"https://shop.example/secure", b"/secure", b"shop.example"),
        (b"https://shop.example:8443/s?x", b"/s?x", b"shop.example:8443"),
        (b"HTTP://Shop.Example/case", b"/case", b"Shop.Example"),
        (b"http://shop.example?only=query", b"/?only=query", b"shop.example"),
        (b"http://shop.example", b"/", b"shop.example"),
        (b"http://shop.example/p#fragment", b"/p", b"shop.example"),
    ],
)
async def test_absolute_form_is_routed_by_its_authority(
    strict_upstream: StrictFactory,
    proxy_factory: ProxyFactory,
    target: bytes,
    origin_form: bytes,
    authority: bytes,
) -> None:
    shop, other = await strict_upstream(), await strict_upstream()
    proxy = await proxy_factory(two_routes(shop, other))
    # The Host header names the other route: RFC 9112 3.2.2 says the target's authority wins.
    sent = (
        b"GET %s HTTP/1.1\r\nHost: other.example\r\nX-Request-Id: abs\r\n\r\n" % target
        + request(b"/next")  # the connection stays usable after it
    )
    first, second = await exchange(proxy.port, sent, [b"GET", b"GET"])
    assert first.status == 200 and first.body == origin_form
    assert second.body == b"/next"
    assert other.requests == []
    [conn] = shop.connections
    assert bytes(conn.raw) == (
        b"GET %s HTTP/1.1\r\nX-Request-Id: abs\r\nHost: %s\r\n" % (origin_form, authority)
        + b"X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\n"
        + b"X-Forwarded-Host: %s\r\nVia: 1.1 pointsman\r\n\r\n" % authority
        + forwarded(b"/next")
    )
    assert shop.errors == []


@pytest.mark.parametrize(
    ("target", "error"),
    [
        (b"http://user:secret@shop.example/p", "userinfo in the request target"),
        (b"http://user@shop.example/p", "userinfo in the request target"),
        (b"https://user:secret@shop.example:8443/p?q", "userinfo in the request target"),
        (b"ftp://shop.example/p", "malformed request target"),
        (b"http:///p", "malformed request target"),
        (b"http://shop.example:99999/p", "malformed request target"),
        (b"http://shop.example:port/p", "malformed request target"),
        (b"shop.example/p", "malformed request"),  # refused by llhttp itself
    ],
)
async def test_absolute_form_refused(
    strict_upstream: StrictFactory, proxy_factory: ProxyFactory, target: bytes, error: str
) -> None:
    data = b"GET %s HTTP/1.1\r\nHost: shop.example\r\n\r\n" % target
    response = await refused(strict_upstream, proxy_factory, data, 400, "malformed")
    assert error_of(response).startswith(error)


async def test_connect_is_not_implemented(
    strict_upstream: StrictFactory, proxy_factory: ProxyFactory
) -> None:
    data = b"CONNECT shop.example:443 HTTP/1.1\r\nHost: shop.example:443\r\n\r\nhello"
    await refused(strict_upstream, proxy_factory, data, 501, "unsupported")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (b"http://[::1]:8080/p", (b"[::1]:8080", b"/p")),
        (b"http://[::1]/p", (b"[::1]", b"/p")),
        (b"http://[::1/p", "malformed request target"),
        (b"http://[::1]x/p", "malformed request target"),
        (b"http://host:/p", "malformed request target"),
        (b"http://ho st/p", "malformed request target"),
        (b"http://host:65535", (b"host:65535", b"/")),
        (b"mailto:someone", "malformed request target"),
    ],
)
def test_split_absolute_form(url: bytes, expected: tuple[bytes, bytes] | str) -> None:
    assert split_absolute_form(url) == expected


# -- 4. trailer fields stay trailers -------------------------------------------------------------

REQUEST_TRAILERS = (
    b"X-Checksum: abc\r\nVary: smuggled\r\nContent-Type: smuggled/evil\r\n"
    b"Host: evil.example\r\nTrailer: X-Checksum\r\nCookie: smuggled=1\r\n"
    b"Authorization: Bearer smuggled\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n"
)


@pytest.mark.parametrize("split", [False, True], ids=["one_read", "trailers_later"])
async def test_request_trailers_are_forwarded_as_trailers_never_as_headers(
    strict_upstream: StrictFactory, proxy_factory: ProxyFactory, split: bool
) -> None:
    upstream = await strict_upstream()
    proxy = await start(proxy_factory, upstream)
    head = request(b"/t", b"Transfer-Encoding: chunked", method=b"POST")
    chunks = b"5\r\nhello\r\n0\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        if split:
            # The head and body go upstream before the trailers arrive.
            writer.write(head + chunks)
            await upstream.wait_for(b"5\r\nhello\r\n")
            writer.write(REQUEST_TRAILERS)
        else:
            writer.write(head + chunks + REQUEST_TRAILERS)
        [response] = await read_responses(reader, [b"POST"])
    finally:
        writer.close()
    assert response.status == 200
    [conn] = upstream.connections
    assert bytes(conn.raw) == forwarded(b"/t", method=b"POST", chunked=True) + (
        b"5\r\nhello\r\n0\r\nX-Checksum: abc\r\n\r\n"
    )
    [seen] = upstream.requests
    assert seen.trailers == ((b"x-checksum", b"abc"),)
    assert seen.get(b"vary") == [] and seen.get(b"content-type") == []
    assert seen.get(b"host") == [b"shop.example"]
    assert upstream.errors == []


def chunked_with_trailers(request: Framed) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n"
        b"Trailer: X-Checksum\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n"
        b"X-Checksum: abc\r\nContent-Type: smuggled/evil\r\nSet-Cookie: smuggled=1\r\n\r\n"
    )


async def test_response_trailers_are_relayed_as_trailers_never_as_headers(
    strict_upstream: StrictFactory, proxy_factory: ProxyFactory
) -> None:
    upstream = await strict_upstream(chunked_with_trailers)
    proxy = await start(proxy_factory, upstream)
    first, second = await exchange(proxy.port, request(b"/1") + request(b"/2"), [b"GET"] * 2)
    for response in (first, second):  # the upstream connection stays in step after trailers
        assert response.body == b"hello world"
        assert response.trailers == ((b"x-checksum", b"abc"),)
        assert response.get(b"content-type") == [b"text/plain"]
        assert response.get(b"set-cookie") == []
        assert response.get(b"x-checksum") == []


async def test_response_trailers_dropped_for_an_http10_client(
    strict_upstream: StrictFactory, proxy_factory: ProxyFactory
) -> None:
    upstream = await strict_upstream(chunked_with_trailers)
    proxy = await start(proxy_factory, upstream)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(b"GET /old HTTP/1.0\r\nHost: shop.example\r\n\r\n")
        async with asyncio.timeout(WAIT):
            data = await reader.read(-1)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Connection: close" in head and b"Transfer-Encoding" not in head
    assert body == b"hello world"


# -- 5. upstream responses in a transfer coding other than chunked -------------------------------


def coded_response(transfer_encoding: bytes) -> Answer:
    def answer(request: Framed) -> bytes:
        return b"HTTP/1.1 200 OK\r\n%s\r\n\r\n5\r\nhello\r\n0\r\n\r\nand more until the close" % (
            transfer_encoding
        )

    return answer


class ClosingUpstream(StrictUpstream):
    """Closes each connection after its first answer: the body is close-delimited."""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = h11.Connection(h11.SERVER)
        while (event := parser.next_event()) is h11.NEED_DATA:
            parser.receive_data(await reader.read(65536))
        assert isinstance(event, h11.Request)
        writer.write(self.answer(Framed((bytes(event.method), bytes(event.target)), (), b"")))
        await writer.drain()
        writer.close()


@pytest.mark.parametrize(
    "transfer_encoding",
    [
        b"Transfer-Encoding: chunkedchunked",
        b"Transfer-Encoding: gzip",
        b"Transfer-Encoding: gzip, chunked",
        b"Transfer-Encoding: chunked, gzip",
        b"Transfer-Encoding: identity",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip",
    ],
)
async def test_response_in_another_transfer_coding_gets_502_never_a_cut_body(
    proxy_factory: ProxyFactory, transfer_encoding: bytes
) -> None:
    upstream = await ClosingUpstream(coded_response(transfer_encoding)).start()
    try:
        proxy = await start(proxy_factory, upstream)
        [response] = await exchange(proxy.port, request(b"/coded"), [b"GET"], expect_close=True)
    finally:
        await upstream.stop()
    assert response.status == 502
    assert error_of(response) == "upstream sent a malformed response"


async def test_chunked_in_any_case_is_relayed(proxy_factory: ProxyFactory) -> None:
    upstream = await ClosingUpstream(coded_response(b"Transfer-Encoding: ChunKed")).start()
    try:
        proxy = await start(proxy_factory, upstream)
        [response] = await exchange(proxy.port, request(b"/coded"), [b"GET"])
    finally:
        await upstream.stop()
    assert response.status == 200 and response.body == b"hello"


# -- 6. HTTP/0.9 and other versions --------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "status", "reason"),
    [
        (b"GET /path\r\n\r\n", 400, "malformed"),
        (b"GET /path\r\nHost: shop.example\r\n\r\n", 400, "malformed"),
        (b"GET /path HTTP/0.9\r\nHost: shop.example\r\n\r\n", 400, "malformed"),
        (b"GET /path HTTP/2.0\r\nHost: shop.example\r\n\r\n", 505, "unsupported"),
    ],
    ids=["http09", "http09_with_header", "http09_named", "http20"],
)
async def test_other_http_versions_are_refused(
    strict_upstream: StrictFactory,
    proxy_factory: ProxyFactory,
    data: bytes,
    status: int,
    reason: str,
) -> None:
    await refused(strict_upstream, proxy_factory, data, status, reason)


# -- found by the llhttp corpus and smuggler payloads run from the outside -----------------------


@pytest.mark.parametrize(
    "data",
    [
        b"OPTIONS /music/sweet/music RTSP/1.0\r\nHost: shop.example\r\n\r\n",
        b"SOURCE /music/sweet/music ICE/1.0\r\nHost: shop.example\r\n\r\n",
        b"POST /c RTSP/1.1\r\nHost: shop.example\r\nContent-Length: 3\r\n\r\nabc",
        b"\r\nGET /x RTSP/1.0\r\nHost: shop.example\r\n\r\n",
    ],
    ids=["rtsp_options", "ice_source", "rtsp_post_keep_alive", "after_an_empty_line"],
)
async def test_rtsp_and_ice_requests_are_refused(
    strict_upstream: StrictFactory, proxy_factory: ProxyFactory, data: bytes
) -> None:
    # llhttp parses these and reports only the version number: they must not go upstream
    # as HTTP/1.1.
    response = await refused(strict_upstream, proxy_factory, data, 400, "malformed")
    assert error_of(response) == "not an HTTP/1.x request"


async def test_rtsp_request_after_a_valid_one_in_a_later_read_is_refused(
    strict_upstream: StrictFactory, proxy_factory: ProxyFactory
) -> None:
    upstream = await strict_upstream()
    proxy = await start(proxy_factory, upstream)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(request(b"/first"))
        [first] = await read_responses(reader, [b"GET"])
        writer.write(b"GET /second RTSP/1.0\r\nHost: shop.example\r\n\r\n")
        [second] = await read_responses(reader, [b"GET"], expect_close=True)
    finally:
        writer.close()
    assert first.body == b"/first"
    assert second.status == 400
    assert [r.start[1] for r in upstream.requests] == [b"/first"]


@pytest.mark.parametrize("status_line", [b"RTSP/1.1 200 OK", b"ICE/1.1 200 OK"])
async def test_rtsp_and_ice_responses_get_502(
    proxy_factory: ProxyFactory, status_line: bytes
) -> None:
    upstream = await ClosingUpstream(lambda _: status_line + b"\r\n\r\n").start()
    try:
        proxy = await start(proxy_factory, upstream)
        [response] = await exchange(proxy.port, request(b"/x"), [b"GET"], expect_close=True)
    finally:
        await upstream.stop()
    assert response.status == 502


async def test_bytes_after_a_connection_close_response_spoil_only_that_connection(
    proxy_factory: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # llhttp refuses the bytes after a response that said Connection: close, after the
    # response is complete: the client has its answer, and the next request its own.
    junk = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nokJUNK"
    upstream = await ClosingUpstream(lambda _: junk).start()
    try:
        proxy = await start(proxy_factory, upstream)
        responses = await exchange(proxy.port, request(b"/1") + request(b"/2"), [b"GET"] * 2)
    finally:
        await upstream.stop()
    assert [(r.status, r.body) for r in responses] == [(200, b"ok"), (200, b"ok")]
    assert [r for r in caplog.records if r.levelname == "ERROR"] == []


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n25  \r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n",
    ],
    ids=["bad_chunk_size", "space_after_chunk_size", "unasked_101"],
)
async def test_a_bad_response_in_the_read_of_its_head_gets_502_not_a_silent_close(
    proxy_factory: ProxyFactory, answer: bytes
) -> None:
    upstream = await ClosingUpstream(lambda _: answer).start()
    try:
        proxy = await start(proxy_factory, upstream)
        [response] = await exchange(proxy.port, request(b"/x"), [b"GET"], expect_close=True)
    finally:
        await upstream.stop()
    assert response.status == 502
    assert error_of(response) == "upstream sent a malformed response"


async def test_a_request_after_an_empty_line_is_served(
    strict_upstream: StrictFactory, proxy_factory: ProxyFactory
) -> None:
    # Some clients send a CRLF after a POST body; RFC 9112 2.2 lets a server skip it.
    upstream = await strict_upstream()
    proxy = await start(proxy_factory, upstream)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(request(b"/first", method=b"POST", body=b"abc"))
        [first] = await read_responses(reader, [b"POST"])
        writer.write(b"\r\n" + request(b"/second"))
        [second] = await read_responses(reader, [b"GET"])
    finally:
        writer.close()
    assert (first.body, second.body) == (b"/first", b"/second")
    assert upstream.errors == []


# -- Content-Length with leading zeros (make fuzz found the response side) -----------------------

LONG_ZEROS = b"0" * 70  # llhttp takes any number of leading zeros; h11 refuses over 20 digits


async def test_a_content_length_with_leading_zeros_goes_on_in_canonical_form(
    strict_upstream: StrictFactory, proxy_factory: ProxyFactory
) -> None:
    # The request side: a strict upstream gets "Content-Length: 5", and the body.
    upstream = await strict_upstream()
    proxy = await start(proxy_factory, upstream)
    data = request(b"/up", b"Content-Length: %b5" % LONG_ZEROS, method=b"POST") + b"hello"
    [response] = await exchange(proxy.port, data, [b"POST"])
    assert response.status == 200
    assert upstream.errors == []
    [received] = upstream.requests
    assert received.get(b"content-length") == [b"5"]
    assert received.body == b"hello"

    # The response side: a strict client gets "Content-Length: 3", and the body.
    def zeros(_: Framed) -> bytes:
        return b"HTTP/1.1 200 OK\r\nContent-Length: %b3\r\n\r\nabc" % LONG_ZEROS

    answering = await ClosingUpstream(zeros).start()
    try:
        proxy = await start(proxy_factory, answering)
        [relayed_response] = await exchange(proxy.port, request(b"/down"), [b"GET"])
    finally:
        await answering.stop()
    assert relayed_response.status == 200
    assert relayed_response.get(b"content-length") == [b"3"]
    assert relayed_response.body == b"abc"
