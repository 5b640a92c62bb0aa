"""limits.max_connections: a connection over the limit is answered 503 and closed at once,
counted, and the connections within the limit go on being served."""

from __future__ import annotations

import asyncio

import pytest

from proxy.config import ConfigError, Limits
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
