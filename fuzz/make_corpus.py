"""Writes the seed corpus: fuzz/corpus/request/* and fuzz/corpus/response/*, small real cases
in the harness's input format (control bytes, then the stream; see fuzz/harness.py).

    .venv/bin/python -m fuzz.make_corpus

The files are committed; run this again after changing a seed here or the input format.
"""

from __future__ import annotations

from pathlib import Path

from fuzz.harness import (
    ANSWER_CHUNKED_TRAILER,
    ANSWER_CLOSE_DELIMITED,
    ANSWER_EMPTY,
    ANSWER_INTERIM,
    ANSWER_LENGTH,
    ANSWER_LENGTH_CLOSE,
    ANSWER_NO_CONTENT,
    ANSWER_UPGRADE,
    READ_SIZES,
)

CORPUS = Path(__file__).resolve().parent / "corpus"


def request_modes(
    *,
    client_read: int = 0,
    answer: int = ANSWER_LENGTH,
    stale: bool = False,
    vanish: bool = False,
    eager: bool = False,
    slow_client: bool = False,
    amplify: bool = False,
    upstream_read: int = 0,
    refuse_first_connect: bool = False,
) -> bytes:
    """The two control bytes of a request-path input (RequestModes)."""
    first = READ_SIZES.index(client_read) | answer << 3 | stale << 6 | vanish << 7
    second = (
        eager
        | slow_client << 1
        | amplify << 2
        | READ_SIZES.index(upstream_read) << 3
        | refuse_first_connect << 6
    )
    return bytes((first, second))


def response_modes(
    *, upstream_read: int = 0, request: int = 0, keep_open: bool = False, slow_client: bool = False
) -> bytes:
    """The control byte of a response-path input (ResponseModes); `request` indexes
    FIXED_REQUESTS: 0 GET, 1 HEAD, 2 GET HTTP/1.0, 3 POST with a length, 4 POST chunked with
    a trailer, 5 Upgrade, 6 GET with Connection: close, 7 PUT with Expect: 100-continue."""
    return bytes(
        (READ_SIZES.index(upstream_read) | request << 3 | keep_open << 6 | slow_client << 7,)
    )


def get(
    path: bytes, *lines: bytes, host: bytes = b"shop.example", version: bytes = b"1.1"
) -> bytes:
    head = b"GET %s HTTP/%s\r\nHost: %s\r\n" % (path, version, host)
    return head + b"".join(line + b"\r\n" for line in lines) + b"\r\n"


REQUEST_SEEDS: dict[str, bytes] = {
    "keepalive_gets": request_modes()
    + get(b"/a", b"User-Agent: seed", b"X-User-Id: u1")
    + get(b"/b?q=1", b"Cookie: user_id=u2; other=1"),
    "http10_keepalive": request_modes(answer=ANSWER_CLOSE_DELIMITED)
    + get(b"/old", b"Connection: keep-alive", version=b"1.0")
    + get(b"/old2", version=b"1.0"),
    "chunked_post_trailers": request_modes(client_read=8, answer=ANSWER_CHUNKED_TRAILER)
    + b"POST /up HTTP/1.1\r\nHost: shop.example\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Checksum: abc\r\nHost: evil\r\n\r\n"
    + get(b"/after"),
    "pipelined_mixed": request_modes(client_read=5, eager=True, upstream_read=3)
    + get(b"/1")
    + b"POST /2 HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 4\r\n\r\nbody"
    + b"HEAD /3 HTTP/1.1\r\nHost: shop.example\r\n\r\n"
    + get(b"/4", b"X-Canary: always"),
    "expect_continue": request_modes(client_read=17, answer=ANSWER_INTERIM)
    + b"PUT /p HTTP/1.1\r\nHost: shop.example\r\nExpect: 100-continue\r\n"
    b"Content-Length: 10\r\n\r\n0123456789",
    "head_chunked": request_modes(answer=ANSWER_CHUNKED_TRAILER)
    + b"HEAD /h HTTP/1.1\r\nHost: shop.example\r\n\r\n"
    + get(b"/g"),
    "no_content": request_modes(answer=ANSWER_NO_CONTENT, slow_client=True)
    + get(b"/204")
    + get(b"/304", b'If-None-Match: "e"'),
    "upgrade": request_modes(answer=ANSWER_UPGRADE)
    + b"GET /ws HTTP/1.1\r\nHost: shop.example\r\nConnection: Upgrade\r\n"
    b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\nearly tunnel bytes",
    "upgrade_with_body": request_modes(answer=ANSWER_UPGRADE)
    + b"GET /ws HTTP/1.1\r\nHost: shop.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Content-Length: 4\r\n\r\nBODY",
    "malformed_line_after_valid": request_modes()
    + get(b"/ok")
    + b"GET /bad HTTP/1.1\r\nHost shop.example\r\n\r\n",
    "content_length_and_chunked": request_modes(answer=ANSWER_LENGTH_CLOSE)
    + b"POST /s HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 6\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad_chunk_size": request_modes(client_read=3)
    + b"POST /c HTTP/1.1\r\nHost: shop.example\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\nzz\r\n",
    "other_protocols": request_modes()
    + get(b"/first")
    + b"GET /rtsp RTSP/1.0\r\nHost: shop.example\r\n\r\nGET /nine\r\n\r\n",
    "absolute_form": request_modes(client_read=2)
    + b"GET http://api.example/v1/x?q HTTP/1.1\r\nHost: other\r\n\r\n"
    + b"GET http://user@shop.example/p HTTP/1.1\r\nHost: shop.example\r\n\r\n",
    "stale_pool_retry": request_modes(stale=True, answer=ANSWER_EMPTY)
    + get(b"/one")
    + get(b"/two")
    + b"POST /three HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 1\r\n\r\nx",
    "limits_431_413": request_modes(answer=ANSWER_LENGTH)
    + get(b"/big", b"X-Pad: " + b"p" * 1100)
    + b"POST /b HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 3000\r\n\r\n",
    "vanish_mid_body": request_modes(vanish=True, client_read=5)
    + b"POST /v HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 50\r\n\r\npartial",
    "refused_connect": request_modes(refuse_first_connect=True) + get(b"/r", b"Connection: close"),
    "amplified_pipeline": request_modes(amplify=True, eager=True)
    + get(b"/p", b"X-Request-Id: fixed"),
    "options_star_connect": request_modes()
    + b"OPTIONS * HTTP/1.1\r\nHost: shop.example\r\n\r\n"
    + b"CONNECT shop.example:443 HTTP/1.1\r\nHost: shop.example:443\r\n\r\n",
    "connection_tokens": request_modes(answer=ANSWER_CHUNKED_TRAILER, client_read=64)
    + get(b"/t", b"Connection: keep-alive, X-Secret", b"X-Secret: 1", b"X-Forwarded-For: 10.0.0.1")
    + get(b"/u", b"Via: 1.0 other", b"TE: trailers", b"X-Request-Id: mine"),
}

# Fixed request kinds (see response_modes).
GET, HEAD, GET10, POST, POST_CHUNKED, UPGRADE, GET_CLOSE, PUT_EXPECT = range(8)

RESPONSE_SEEDS: dict[str, bytes] = {
    "length": response_modes()
    + b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
    "chunked_trailers": response_modes(upstream_read=5)
    + b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
    b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nX-Sum: 1\r\nSet-Cookie: no\r\n\r\n",
    "close_delimited": response_modes(request=GET10)
    + b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the close",
    "close_delimited_rechunked": response_modes(upstream_read=3)
    + b"HTTP/1.0 200 OK\r\n\r\nuntil the close",
    "head_with_length": response_modes(request=HEAD)
    + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
    "no_content": response_modes() + b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
    "not_modified": response_modes(request=GET_CLOSE)
    + b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\nContent-Length: 10\r\n\r\n',
    "interim_then_final": response_modes(request=PUT_EXPECT)
    + b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
    b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
    "upgrade_101": response_modes(request=UPGRADE)
    + b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    b"tunnel bytes",
    "unasked_101": response_modes()
    + b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n",
    "transfer_coding_gzip": response_modes(request=POST)
    + b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "length_and_chunked": response_modes(request=POST_CHUNKED)
    + b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n0\r\n\r\n",
    "bad_chunk_size": response_modes(upstream_read=1)
    + b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "bytes_after_close": response_modes()
    + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nokJUNK",
    "rtsp_status_line": response_modes() + b"RTSP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
    "truncated_body": response_modes(upstream_read=8)
    + b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nonly part",
    "truncated_keep_open": response_modes(keep_open=True, slow_client=True)
    + b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
    "two_lengths": response_modes()
    + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
    "connection_named_headers": response_modes(request=GET10, upstream_read=17)
    + b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n"
    b"Content-Length: 2\r\n\r\nok",
    "empty_answer": response_modes(),
}


def write(directory: Path, seeds: dict[str, bytes]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in seeds.items():
        (directory / name).write_bytes(data)


def main() -> None:
    write(CORPUS / "request", REQUEST_SEEDS)
    write(CORPUS / "response", RESPONSE_SEEDS)
    print(f"{len(REQUEST_SEEDS)} request and {len(RESPONSE_SEEDS)} response seeds in {CORPUS}")


if __name__ == "__main__":
    main()
