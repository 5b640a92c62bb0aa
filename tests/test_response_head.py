"""The response-head split, fed as raw bytes: what the client gets and what the proxy reads.

The property test checks the parser-driven split (UpstreamConnection.on_header and
on_headers_complete) against a plain line-by-line reading of the same head.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.config import Address, UpstreamSettings
from proxy.upstream import MAX_RESPONSE_HEAD, EndpointPool, UpstreamConnection

HEADERS = [
    b"Server: nginx",
    b"Date: Sun, 22 Nov 2026 01:37:03 GMT",
    b"Content-Type: text/plain",
    b"Content-Length: 0",
    b"content-length: 0",
    b"Connection: keep-alive",
    b"connection: close",
    b"Connection: X-Internal",
    b"X-Internal: secret",
    b"Keep-Alive: timeout=5",
    b"TE: trailers",
    b"Trailer: X-Checksum",
    b"Upgrade: websocket",
    b"Proxy-Connection: keep-alive",
    b"Proxy-Authenticate: Basic",
    b"X-Connection-Note: kept",
    b"Set-Cookie: a=b",
]
HOP_BY_HOP = {
    b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate",
    b"proxy-authorization", b"te", b"trailer", b"transfer-encoding", b"upgrade",
}  # fmt: skip


class Recorder:
    """A ResponseSink that keeps what the upstream side hands over."""

    def __init__(self) -> None:
        self.heads: list[tuple[int, bytes, bytes]] = []
        self.interim: list[tuple[int, bytes, bytes]] = []
        self.bad: list[BaseException] = []
        self.complete = 0

    def response_head(self, conn: UpstreamConnection) -> None:
        self.heads.append((conn.status, conn.status_rest, conn.header_block))

    def response_interim(self, conn: UpstreamConnection) -> None:
        self.interim.append((conn.status, conn.status_rest, conn.header_block))

    def response_body(self, data: bytes) -> None:
        pass

    def response_complete(self, conn: UpstreamConnection) -> None:
        self.complete += 1

    def response_flush(self) -> None:
        pass

    def upstream_lost(self, conn: UpstreamConnection, exc: BaseException | None) -> None:
        pass

    def upstream_bad_response(self, conn: UpstreamConnection, exc: BaseException) -> None:
        self.bad.append(exc)
        conn.client = None  # as the downstream side does: the connection is dropped

    def tunnel_data(self, data: bytes) -> None:
        pass

    def start_tunnel(self, rest: bytes) -> None:
        pass

    def upstream_pause_writing(self) -> None:
        pass

    def upstream_resume_writing(self) -> None:
        pass


def feed(*reads: bytes) -> tuple[UpstreamConnection, Recorder]:
    async def run() -> tuple[UpstreamConnection, Recorder]:
        conn = UpstreamConnection(EndpointPool(Address("127.0.0.1", 1), UpstreamSettings()))
        sink = Recorder()
        conn.start_request(sink, False)
        for data in reads:
            conn.data_received(data)
        return conn, sink

    return asyncio.run(run())


def reference(lines: list[bytes]) -> tuple[bytes, bytes | None, bool, bytes]:
    """Header block, Content-Length, chunked and Upgrade, read line by line."""
    kept: list[bytes] = []
    tokens: list[bytes] = []
    length: bytes | None = None
    chunked = False
    upgrade = b""
    for line in lines:
        name, _, value = line.partition(b":")
        name, value = name.lower(), value.strip()
        if name == b"connection":
            tokens += [t.strip() for t in value.lower().split(b",") if t.strip()]
        elif name == b"transfer-encoding":
            chunked = value.lower().endswith(b"chunked")
        elif name == b"upgrade":
            upgrade = value
        elif name not in HOP_BY_HOP:
            if name == b"content-length":
                length = value
            kept.append(line)
    if not set(tokens) <= {b"keep-alive", b"close", b"upgrade"}:
        kept = [line for line in kept if line.partition(b":")[0].lower() not in tokens]
    return b"".join(line + b"\r\n" for line in kept), length, chunked, upgrade


@given(st.lists(st.sampled_from(HEADERS), max_size=8), st.integers(min_value=1, max_value=40))
def test_the_split_agrees_with_a_line_by_line_reading(lines: list[bytes], cut: int) -> None:
    # At most one Content-Length: two, even equal, are for llhttp to judge (it may refuse).
    if sum(line.lower().startswith(b"content-length") for line in lines) > 1:
        return
    head = b"HTTP/1.1 200 OK\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n"
    # The head arrives in two reads, cut anywhere: nothing may depend on where reads end.
    conn, sink = feed(head[:cut], head[cut:])
    assert not sink.bad
    assert sink.heads == [(200, b"200 OK", reference(lines)[0])]
    assert (conn.header_block, conn.content_length, conn.chunked, conn.upgrade) == reference(lines)


@pytest.mark.parametrize(
    ("lines", "kept"),
    [
        ([b"Server: nginx", b"Connection: keep-alive"], b"Server: nginx\r\n"),
        ([b"Connection: close", b"Server: nginx"], b"Server: nginx\r\n"),
        ([b"Connection: X-Internal", b"X-Internal: 1", b"A: b"], b"A: b\r\n"),
        ([b"Keep-Alive: timeout=5", b"Content-Length: 0"], b"Content-Length: 0\r\n"),
        ([], b""),
    ],
)
def test_hop_by_hop_lines_are_removed(lines: list[bytes], kept: bytes) -> None:
    head = b"HTTP/1.1 204 No Content\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n"
    _, sink = feed(head)
    assert sink.heads == [(204, b"204 No Content", kept)]


def test_a_status_line_without_a_reason_is_kept_as_it_came() -> None:
    _, sink = feed(b"HTTP/1.1 404 \r\nContent-Length: 0\r\n\r\n")
    assert sink.heads == [(404, b"404", b"Content-Length: 0\r\n")]


def test_a_chunked_response_is_read_as_chunked_and_loses_its_transfer_encoding() -> None:
    conn, sink = feed(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nA: b\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    )
    assert conn.chunked and sink.heads == [(200, b"200 OK", b"A: b\r\n")]
    assert sink.complete == 1


def test_an_interim_response_then_the_final_head_each_have_their_own_headers() -> None:
    _, sink = feed(
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nServer: s\r\n\r\n"
    )
    assert sink.interim == [(103, b"103 Early Hints", b"Link: </a.css>; rel=preload\r\n")]
    assert sink.heads == [(200, b"200 OK", b"Content-Length: 0\r\nServer: s\r\n")]


def test_a_head_over_the_limit_is_a_bad_response() -> None:
    filler = b"X-Filler: " + b"a" * 1000 + b"\r\n"
    reads = [b"HTTP/1.1 200 OK\r\n"] + [filler] * (MAX_RESPONSE_HEAD // len(filler) + 2)
    _, sink = feed(*reads)
    assert len(sink.bad) == 1 and "too large" in str(sink.bad[0])
    assert sink.heads == []


def test_a_large_body_in_the_same_read_as_the_head_is_not_a_large_head() -> None:
    body = b"x" * (MAX_RESPONSE_HEAD * 2)
    _, sink = feed(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
    assert not sink.bad and sink.complete == 1
