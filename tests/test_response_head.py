"""The response-head split: the short path for common heads agrees with the general one."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.config import Address, UpstreamSettings
from proxy.upstream import EndpointPool, UpstreamConnection

HEADERS = [
    b"Server: nginx",
    b"Date: Sun, 22 Nov 2026 01:37:03 GMT",
    b"Content-Type: text/plain",
    b"Content-Length: 3",
    b"content-length: 3",
    b"Connection: keep-alive",
    b"connection: close",
    b"Connection: X-Internal",
    b"X-Internal: secret",
    b"Keep-Alive: timeout=5",
    b"Transfer-Encoding: chunked",
    b"TE: trailers",
    b"Trailer: X-Checksum",
    b"Upgrade: websocket",
    b"Proxy-Connection: keep-alive",
    b"X-Connection-Note: kept",
    b"Set-Cookie: a=b",
]


def split(head: bytes, slowly: bool) -> tuple[bytes, bytes, bytes | None, bool, bytes]:
    async def run() -> tuple[bytes, bytes, bytes | None, bool, bytes]:
        conn = UpstreamConnection(EndpointPool(Address("127.0.0.1", 1), UpstreamSettings()))
        if slowly:
            conn.status_rest = head[9 : head.index(b"\r\n")]
            conn._take_head_slowly(head)
        else:
            conn._take_head(head)
        return conn.status_rest, conn.header_block, conn.content_length, conn.chunked, conn.upgrade

    return asyncio.run(run())


@given(st.lists(st.sampled_from(HEADERS), max_size=8))
def test_short_path_agrees_with_the_general_one(lines: list[bytes]) -> None:
    head = b"HTTP/1.1 200 OK\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n"
    assert split(head, slowly=False) == split(head, slowly=True)


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
    status, block, *_ = split(head, slowly=False)
    assert status == b"204 No Content"
    assert block == kept
