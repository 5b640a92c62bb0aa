"""Health checks: active checks and passive ejection take endpoints out and bring them back."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web

from proxy.config import Address, Config, HealthCheckConfig, UpstreamSettings
from proxy.config_loader import parse_config
from proxy.health import probe
from proxy.server import ProxyServer
from proxy.upstream import EndpointPool
from tests.conftest import BackendFactory, ProxyFactory, free_port, on_free_ports

HEALTH_FAST = (
    "health: {path: /healthz, interval: 0.05s, timeout: 0.5s, "
    "healthy_threshold: 2, unhealthy_threshold: 2}"
)


async def wait_until(condition: Callable[[], bool], limit: float = 5.0) -> None:
    """Health state changes on the checker's own schedule; poll it with a deadline."""
    async with asyncio.timeout(limit):
        while not condition():  # noqa: ASYNC110 - a plain flag the data plane reads; no event
            await asyncio.sleep(0.01)


def targets(proxy: ProxyServer, pool: str) -> list[EndpointPool]:
    return list(proxy.table.routes["shop"].pools_by_name[pool].targets)


async def fetch(port: int, count: int) -> list[tuple[int, str]]:
    answers = []
    async with aiohttp.ClientSession() as session:
        for _ in range(count):
            async with session.get(f"http://127.0.0.1:{port}/x") as response:
                answers.append((response.status, response.headers.get("X-Backend", "")))
    return answers


class Switchable:
    """A backend whose /healthz and / answers can be switched between good and bad."""

    def __init__(self) -> None:
        self.health_status = 200
        self.status = 200
        self.checks = 0

    def handler(self, name: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            if request.path == "/healthz":
                self.checks += 1
                return web.Response(status=self.health_status)
            return web.Response(status=self.status, text=name, headers={"X-Backend": name})

        return handle


async def test_active_checks_take_an_endpoint_out_and_back(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    sick = Switchable()
    a = await backend_factory("a", sick.handler("a"))
    b = await backend_factory("b")
    pools = f'      blue: {{endpoints: ["{a.address}", "{b.address}"], {HEALTH_FAST}}}'
    proxy = await proxy_factory(config_for_text(pools))
    endpoint_a, endpoint_b = targets(proxy, "blue")

    await wait_until(lambda: sick.checks >= 2)
    assert endpoint_a.healthy and endpoint_b.healthy

    sick.health_status = 503
    await wait_until(lambda: not endpoint_a.healthy)
    answers = await fetch(proxy.port, 10)
    assert answers == [(200, "b")] * 10

    sick.health_status = 200
    await wait_until(lambda: endpoint_a.healthy)
    backends = {backend for _, backend in await fetch(proxy.port, 10)}
    assert backends == {"a", "b"}


async def test_passive_ejection_on_5xx_and_return_after_backoff(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    failing = Switchable()
    failing.status = 500
    a = await backend_factory("a", failing.handler("a"))
    b = await backend_factory("b")
    pools = (
        f'      blue: {{endpoints: ["{a.address}", "{b.address}"], '
        "ejection: {consecutive_failures: 2, backoff: 0.2s}}"
    )
    proxy = await proxy_factory(config_for_text(pools))
    endpoint_a, _ = targets(proxy, "blue")

    answers = await fetch(proxy.port, 8)
    assert answers.count((500, "a")) == 2  # two strikes, then out
    assert answers[4:] == [(200, "b")] * 4
    assert not endpoint_a.healthy

    failing.status = 200
    # The idle sweeper (every second) ends the backoff.
    await wait_until(lambda: endpoint_a.healthy, limit=3.0)
    backends = {backend for _, backend in await fetch(proxy.port, 6)}
    assert backends == {"a", "b"}


async def test_refusing_endpoint_is_ejected_after_connect_errors(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    b = await backend_factory("b")
    dead = f"127.0.0.1:{free_port()}"
    pools = (
        f'      blue: {{endpoints: ["{dead}", "{b.address}"], '
        "ejection: {consecutive_failures: 1, backoff: 30s}}"
    )
    proxy = await proxy_factory(config_for_text(pools))
    answers = await fetch(proxy.port, 6)
    assert answers == [(200, "b")] * 6
    stats = proxy.table.routes["shop"].pools_by_name["blue"].stats
    assert stats.connect_errors == 1  # ejected after the first; never tried again
    assert not targets(proxy, "blue")[0].healthy


async def test_pool_with_no_healthy_endpoint_answers_503_naming_route_and_pool(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    sick = Switchable()
    sick.health_status = 500
    a = await backend_factory("a", sick.handler("a"))
    pools = f'      blue: {{endpoints: ["{a.address}"], {HEALTH_FAST}}}'
    proxy = await proxy_factory(config_for_text(pools))
    await wait_until(lambda: not targets(proxy, "blue")[0].healthy)
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{proxy.port}/") as response,
    ):
        assert response.status == 503
        body = await response.json()
    assert body["route"] == "shop"
    assert body["pool"] == "blue"
    assert "healthy" in body["error"]


async def test_probe_reads_the_status_line() -> None:
    async def answer(status_line: bytes) -> bool:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(status_line)
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        target = EndpointPool(Address("127.0.0.1", port), UpstreamSettings())
        try:
            return await probe(target, HealthCheckConfig(timeout=1.0))
        finally:
            server.close()
            await server.wait_closed()

    assert await answer(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert await answer(b"HTTP/1.1 302 Found\r\nLocation: /\r\n\r\n")
    assert not await answer(b"HTTP/1.1 503 Service Unavailable\r\n\r\n")
    assert not await answer(b"HTTP/1.1 404 Not Found\r\n\r\n")
    assert not await answer(b"garbage\r\n")
    refused = EndpointPool(Address("127.0.0.1", free_port()), UpstreamSettings())
    assert not await probe(refused, HealthCheckConfig(timeout=1.0))


def config_for_text(pool_lines: str) -> Config:
    """A one-route config whose pools section is given as YAML lines."""
    text = f"""
listen: 127.0.0.1:1
admin: {{listen: 127.0.0.1:2}}
routes:
  - name: shop
    pools:
{pool_lines}
"""
    return on_free_ports(parse_config(text, "<test>"))


async def test_an_endpoint_in_two_pools_takes_the_first_pools_settings(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    a = await backend_factory("a")
    pools = (
        f'      blue: {{endpoints: ["{a.address}"], ejection: {{consecutive_failures: 2}}}}\n'
        f'      green: {{endpoints: ["{a.address}"], ejection: {{consecutive_failures: 9}}}}\n'
        "    weights: {blue: 1, green: 1}"
    )
    proxy = await proxy_factory(config_for_text(pools))
    shared = targets(proxy, "blue")[0]
    assert shared is targets(proxy, "green")[0]
    assert shared.ejection.consecutive_failures == 2
