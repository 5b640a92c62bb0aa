"""Limits on what clients may hold: limits.max_connections (a connection over the limit is
answered 503 and closed at once, counted, and those within it go on being served) and
timeouts.body_read (a request body that stops coming gets 408 and a close) and
timeouts.client_write (a client that stops reading its answer is cut off)."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import replace

import pytest
from aiohttp import web

from proxy.config import Address, ConfigError, Limits
from proxy.config_loader import parse_config
from proxy.http1 import share_of
from tests.conftest import BackendFactory, ProxyFactory, config_for, raw_exchange
from tests.test_cli import read_response

LIMIT = 5.0  # seconds any exchange may take

pytestmark = pytest.mark.timeout(30)


async def get_on(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str
) -> tuple[int, bytes]:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: shop.test\r\n\r\n".encode())
    async with asyncio.timeout(LIMIT):
        status, _, body = await read_response(reader)
    return status, body


async def test_a_connection_over_the_limit_gets_503_and_is_closed(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    blue = await backend_factory("blue")
    config = config_for({"blue": [blue.address]})
    proxy = await proxy_factory(config, limits=Limits(max_connections=2))
    held = [await asyncio.open_connection("127.0.0.1", proxy.port) for _ in range(2)]
    try:
        for reader, writer in held:
            assert (await get_on(reader, writer, "/a"))[0] == 200
        # The third: answered at once (it sent nothing) and closed.
        refused = await raw_exchange(proxy.port, b"")
        assert refused.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), refused
        assert b"Retry-After: 1\r\n" in refused and b"Connection: close\r\n" in refused
        assert refused.endswith(b'{"error": "too many connections", "status": 503}\n')
        assert proxy.metrics.rejected == {"connection_limit": 1}
        # The two within the limit keep being served on their keep-alive connections.
        for reader, writer in held:
            assert (await get_on(reader, writer, "/b"))[0] == 200
        # One closes: a new connection is taken again.
        reader, writer = held.pop()
        writer.close()
        await writer.wait_closed()
        assert proxy.ctx is not None
        for _ in range(500):  # the proxy hears of the close on its own loop turn; no event
            if len(proxy.ctx.connections) == 1:
                break
            await asyncio.sleep(0.01)
        answer = await raw_exchange(
            proxy.port, b"GET /c HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n"
        )
        assert answer.startswith(b"HTTP/1.1 200 "), answer
    finally:
        for _, writer in held:
            writer.close()


def test_each_worker_takes_its_share_rounded_up() -> None:
    assert share_of(0, 4) == 0  # no limit
    assert share_of(10, 1) == 10
    assert share_of(10, 4) == 3  # 12 in all: never fewer than the limit
    assert share_of(1, 2) == 1


def test_max_connections_is_checked_with_its_line() -> None:
    base = (
        "listen: 127.0.0.1:8080\nroutes:\n  - name: shop\n    hosts: ['*']\n"
        "    path_prefix: /\n    pools: {blue: {endpoints: ['127.0.0.1:9001']}}\n"
        "    weights: {blue: 1}\n"
    )
    assert parse_config("limits: {max_connections: 500}\n" + base).limits.max_connections == 500
    with pytest.raises(ConfigError) as info:
        parse_config("limits: {max_connections: -1}\n" + base, "t.yaml")
    assert info.value.problems == [
        "t.yaml:1: limits.max_connections: expected an integer >= 0, got -1"
    ]


async def test_a_request_body_that_stops_coming_gets_408_and_a_close(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    blue = await backend_factory("blue")
    config = config_for({"blue": [blue.address]})
    proxy = await proxy_factory(
        config, timeouts=replace(config.timeouts, body_read=0.3, upstream=30.0)
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(
            b"POST /upload HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 100\r\n\r\n0123456789"
        )
        async with asyncio.timeout(LIMIT):
            answer = await reader.read(-1)  # the proxy answers, then closes
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert b"request body not received in time" in answer
        assert b"Connection: close\r\n" in answer
        assert proxy.metrics.rejected == {"body_timeout": 1}
    finally:
        writer.close()


async def test_a_slow_but_steady_body_is_not_cut(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    """The timeout is the longest silence, not the whole body's time: ten pieces 0.1 s apart
    with body_read 0.3 s arrive whole, though they take 1 s."""
    blue = await backend_factory("blue")
    config = config_for({"blue": [blue.address]})
    proxy = await proxy_factory(config, timeouts=replace(config.timeouts, body_read=0.3))
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(b"POST /upload HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 100\r\n\r\n")
        for _ in range(10):
            await asyncio.sleep(0.1)  # the slow client itself: pacing is what is tested
            writer.write(b"0123456789")
        status, _, body = await asyncio.wait_for(read_response(reader), LIMIT)
        assert (status, body) == (200, b"blue POST /upload 100")
        assert proxy.metrics.rejected == {}
    finally:
        writer.close()


BIG = 8 * 1024 * 1024  # far more than the socket buffers and the client write buffer hold


async def big_answer(request: web.Request) -> web.StreamResponse:
    return web.Response(body=b"x" * BIG)


async def test_a_client_that_stops_reading_is_cut_off_and_its_upstream_freed(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    """Slow read: the client reads nothing of a large answer. After timeouts.client_write
    with its write buffer full, the connection is cut, counted, and the upstream connection
    holding the rest of the answer is closed."""
    blue = await backend_factory("blue", big_answer)
    config = config_for({"blue": [blue.address]})
    proxy = await proxy_factory(config, timeouts=replace(config.timeouts, client_write=0.5))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills fast
    sock.connect(("127.0.0.1", proxy.port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
    try:
        writer.write(b"GET /big HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        await writer.drain()
        assert proxy.ctx is not None and proxy.upstreams is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LIMIT
        # No event says "cut off" on the proxy's side but the counter and the connection set.
        while proxy.metrics.rejected.get("client_write_timeout", 0) == 0:
            assert loop.time() < deadline, proxy.metrics.rejected
            await asyncio.sleep(0.05)
        assert not proxy.ctx.connections
        assert proxy.upstreams.pool(Address("127.0.0.1", blue.port)).connections == 0
        # The cut is a reset (as nginx's reset_timedout_connection: the kernel frees the
        # unsent bytes at once): the client never gets all of the answer.
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(-1), LIMIT)
    finally:
        writer.close()


async def test_a_slow_but_steady_reader_is_not_cut(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    """client_write is the longest stall, not the time of the whole answer: a reader taking
    64 KiB every 0.05 s gets all of 2 MiB (about 1.6 s) with client_write 0.5 s."""
    size = 2 * 1024 * 1024

    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"y" * size)

    blue = await backend_factory("blue", answer)
    config = config_for({"blue": [blue.address]})
    proxy = await proxy_factory(config, timeouts=replace(config.timeouts, client_write=0.5))
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port, limit=65536)
    try:
        writer.write(b"GET /big HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), LIMIT)
        assert head.startswith(b"HTTP/1.1 200 ")
        got = 0
        while got < size:
            await asyncio.sleep(0.05)  # the slow reader itself: pacing is what is tested
            got += len(await asyncio.wait_for(reader.read(65536), LIMIT))
        assert got == size
        assert proxy.metrics.rejected == {}
    finally:
        writer.close()
