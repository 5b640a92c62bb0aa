"""The response-head split, fed as raw bytes: what the client gets and what the proxy reads.

UpstreamConnection cuts each head from the bytes as received once llhttp has checked them
(on_headers_complete), and hands chunked bodies to a ChunkedBodyReader for their trailers.
The property tests check that against a plain line-by-line reading of the same bytes, with
reads cut anywhere.
"""

from __future__ import annotations

import asyncio
import itertools

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
    # Spellings a parser-driven split would have re-spelled: relayed as they came.
    b"X-Tight:value",
    b"X-Loose: \t value \t",
    b"CONNECTION: Keep-Alive",
    b"connection:close, x-internal",
    b"Content-Length:   007",
    b"CONTENT-LENGTH: 0",
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
        self.body = bytearray()
        self.trailers: list[bytes | None] = []

    def response_head(self, conn: UpstreamConnection) -> None:
        self.heads.append((conn.status, conn.status_rest, conn.header_block))

    def response_interim(self, conn: UpstreamConnection) -> None:
        self.interim.append((conn.status, conn.status_rest, conn.header_block))

    def response_body(self, data: bytes) -> None:
        self.body += data

    def response_complete(self, conn: UpstreamConnection) -> None:
        self.complete += 1
        self.trailers.append(b"".join(conn.trailers) if conn.trailers is not None else None)

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
        name, _, rest = line.partition(b":")
        value = rest.lstrip(b" \t")  # as llhttp reports it: leading OWS off, trailing kept
        name = name.lower()
        if name == b"connection":
            tokens += [t.strip() for t in value.lower().split(b",") if t.strip()]
        elif name == b"transfer-encoding":
            chunked = value.lower().endswith(b"chunked")
        elif name == b"upgrade":
            upgrade = value
        elif name not in HOP_BY_HOP:
            if name == b"content-length":
                length = b"%d" % int(value)
                line = line[: len(line) - len(value)] + length  # spelled as sent, but the number
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


END_TO_END = [line for line in HEADERS if line.partition(b":")[0].lower() not in HOP_BY_HOP]
END_TO_END = [line for line in END_TO_END if not line.lower().startswith(b"content-length")]


@given(
    st.lists(st.sampled_from(END_TO_END), max_size=5),
    st.lists(st.integers(min_value=1, max_value=160), min_size=1, max_size=3),
)
def test_an_interim_head_then_the_final_one_cut_anywhere(
    lines: list[bytes], cuts: list[int]
) -> None:
    block = b"".join(line + b"\r\n" for line in lines)
    stream = (
        b"HTTP/1.1 103 Early Hints\r\n" + block + b"\r\n"
        b"HTTP/1.1 200 OK\r\n" + block + b"Content-Length: 2\r\n\r\nok"
    )
    _, sink = feed(*split_at(stream, cuts))
    expected = reference(lines)[0]
    assert not sink.bad
    assert sink.interim == [(103, b"103 Early Hints", expected)]
    assert sink.heads == [(200, b"200 OK", expected + b"Content-Length: 2\r\n")]
    assert bytes(sink.body) == b"ok" and sink.complete == 1


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    """`data` as the reads it arrives in, ending where `cuts` say (sorted, within data)."""
    points = sorted({min(cut, len(data)) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


CHUNKED_BODY = b"5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\n"
TRAILER_SECTIONS = {
    b"": None,  # no trailers at all
    b"X-Checksum: 42\r\n": b"X-Checksum: 42\r\n",
    # Forbidden in trailers or hop-by-hop: dropped; the rest kept in order.
    b"Set-Cookie: a=b\r\nX-A: 1\r\nContent-Type: x\r\nX-B:2\r\n": b"X-A: 1\r\nX-B: 2\r\n",
}


@given(
    st.sampled_from(list(TRAILER_SECTIONS)),
    st.lists(st.integers(min_value=1, max_value=200), max_size=3),
)
def test_a_chunked_body_and_its_trailers_cut_anywhere(trailers: bytes, cuts: list[int]) -> None:
    first = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nServer: s\r\n\r\n"
    second = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    conn, sink = feed_exchanges(
        split_at(first + CHUNKED_BODY + trailers + b"\r\n", cuts), split_at(second, cuts)
    )
    assert not sink.bad and not conn.closed
    assert sink.heads == [
        (200, b"200 OK", b"Server: s\r\n"),
        (200, b"200 OK", b"Content-Length: 2\r\n"),
    ]
    assert bytes(sink.body) == b"hello world" + b"ok"
    assert sink.trailers == [TRAILER_SECTIONS[trailers], None]


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_after_204_or_304_even_when_the_head_says_chunked(status: int) -> None:
    # llhttp reads no body after these whatever the head says; neither may the proxy, or the
    # next response on the connection would be taken for a chunked body.
    first = b"HTTP/1.1 %d X\r\nTransfer-Encoding: chunked\r\n\r\n" % status
    conn, sink = feed_exchanges([first], [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"])
    assert not sink.bad and not conn.closed
    assert [head[0] for head in sink.heads] == [status, 200]
    assert sink.complete == 2 and bytes(sink.body) == b"ok"


def test_a_chunked_answer_to_head_has_no_body() -> None:
    conn, sink = feed_exchanges(
        [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"],
        [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"],
        no_body=[True, False],
    )
    assert not sink.bad and not conn.closed
    assert sink.complete == 2 and bytes(sink.body) == b"ok"


class Finishing(Recorder):
    """Hands the connection back as each response ends, as the downstream side does."""

    def response_complete(self, conn: UpstreamConnection) -> None:
        super().response_complete(conn)
        conn.finish(True)


def test_bytes_after_a_chunked_response_close_the_connection() -> None:
    async def run() -> tuple[UpstreamConnection, Recorder]:
        pool = EndpointPool(Address("127.0.0.1", 1), UpstreamSettings())
        conn = UpstreamConnection(pool)
        sink = Finishing()
        conn.start_request(sink, False)
        conn.data_received(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
        )
        return conn, sink

    conn, sink = asyncio.run(run())
    assert sink.complete == 1 and bytes(sink.body) == b"ok" and not sink.bad
    assert conn.closed  # the response was whole; the connection is not trusted again


def test_a_bad_chunk_is_a_bad_response() -> None:
    _, sink = feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    assert len(sink.bad) == 1 and sink.complete == 0


class Pipelining(Recorder):
    """Starts the next exchange on the connection inside response_complete, as a client with
    pipelined requests does: while the parser is still inside the read that ended the last."""

    def __init__(self, no_body: list[bool]) -> None:
        super().__init__()
        self.no_body = no_body

    def response_complete(self, conn: UpstreamConnection) -> None:
        super().response_complete(conn)
        if self.complete < len(self.no_body):
            conn.start_request(self, self.no_body[self.complete])


def feed_exchanges(
    *responses: list[bytes], no_body: list[bool] | None = None
) -> tuple[UpstreamConnection, Pipelining]:
    """Each response (as its reads) on one connection, the next request sent as each ends."""

    async def run() -> tuple[UpstreamConnection, Pipelining]:
        conn = UpstreamConnection(EndpointPool(Address("127.0.0.1", 1), UpstreamSettings()))
        sink = Pipelining(no_body or [False] * len(responses))
        conn.start_request(sink, sink.no_body[0])
        for reads in responses:
            for data in reads:
                conn.data_received(data)
        return conn, sink

    return asyncio.run(run())


def test_a_head_split_after_a_pipelined_exchange_is_its_own() -> None:
    # The first response ends in the read that holds the start of nothing else; the next
    # head comes in two reads. Its head must not be read from the earlier response's bytes.
    _, sink = feed_exchanges(
        [b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nX-N: 1\r\n\r\na"],
        [b"HTTP/1.1 200 OK\r\nContent-Le", b"ngth: 2\r\nX-N: 2\r\n\r\nbb"],
    )
    assert not sink.bad
    assert [head[2] for head in sink.heads] == [
        b"Content-Length: 1\r\nX-N: 1\r\n",
        b"Content-Length: 2\r\nX-N: 2\r\n",
    ]
    assert bytes(sink.body) == b"abb"


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


@pytest.mark.parametrize(
    "first",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    ],
    ids=["length", "chunked"],
)
def test_bytes_after_a_response_are_not_the_answer_to_a_pipelined_request(first: bytes) -> None:
    # The next request goes out on the connection as the first response ends, inside the
    # read; a whole response after it in the same read answers nothing that was sent then.
    conn, sink = feed_exchanges([first + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstray"], [])
    assert [head[0] for head in sink.heads] == [200] and bytes(sink.body) == b"ok"
    assert not sink.bad  # nothing is blamed on the request just sent...
    assert conn.closed  # ...which the closed connection fails instead
