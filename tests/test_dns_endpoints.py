"""DNS endpoints in the routing state: a pool endpoint written as `name:port` is every address
the name resolves to, re-resolved every `dns.refresh`, with a real DNS server on 127.0.0.1
(tests/dns_server.py) whose answers the test changes and real upstreams on 127.0.0.1 and
127.0.0.2 at one port."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from control.service import Service
from proxy.config import ConfigError, StateConfig
from proxy.config_loader import parse_config
from tests.conftest import on_free_ports, serve_app
from tests.dns_server import DnsServer
from tests.test_api import TOKEN
from tests.test_workers import run_service

pytestmark = pytest.mark.timeout(60)

LIMIT = 5.0  # seconds any single exchange, or a wait for a re-resolution, may take
REFRESH = 0.1  # dns.refresh in these tests: re-resolutions come quickly


@dataclass
class Twins:
    """Two upstreams at one port, on 127.0.0.1 and 127.0.0.2 (what a name's A records
    point at); each answers with its address."""

    port: int
    runners: list[web.AppRunner]

    async def stop(self) -> None:
        for runner in self.runners:
            await runner.cleanup()


async def start_twins() -> Twins:
    async def handler(request: web.Request) -> web.Response:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        host = sockname[0] if sockname else "?"
        return web.Response(text=host, headers={"X-Backend": host})

    def app() -> web.Application:
        application = web.Application()
        application.router.add_get("/{tail:.*}", handler)
        return application

    first, port = await serve_app(app())
    second = web.AppRunner(app(), access_log=None)
    await second.setup()
    await web.TCPSite(second, "127.0.0.2", port).start()
    return Twins(port, [first, second])


@dataclass
class Running:
    service: Service
    session: aiohttp.ClientSession
    admin: str
    proxy: str

    async def call(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        data = None if body is None else json.dumps(body).encode()
        async with asyncio.timeout(LIMIT):
            async with self.session.request(
                method, self.admin + path, data=data, headers=headers
            ) as resp:
                return resp.status, json.loads(await resp.text())

    async def backends(self, count: int) -> set[str]:
        seen = set()
        for i in range(count):
            async with asyncio.timeout(LIMIT):
                async with self.session.get(f"{self.proxy}/r/{i}") as resp:
                    assert resp.status == 200, await resp.text()
                    seen.add(resp.headers["X-Backend"])
        return seen

    async def addresses(self) -> list[str]:
        code, pool = await self.call("GET", "/v1/routes/shop/pools/blue")
        assert code == 200, pool
        return sorted(e["address"] for e in pool["endpoints"] if e["state"] == "up")

    async def until_addresses(self, *wanted: str) -> None:
        """Until the pool's endpoints are `wanted` (the next refreshes pick a change up)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LIMIT
        while await self.addresses() != sorted(wanted):
            if loop.time() > deadline:
                raise AssertionError(f"still {await self.addresses()}, not {sorted(wanted)}")
            await asyncio.sleep(REFRESH / 2)


def config_text(dns: DnsServer, port: int) -> str:
    return f"""
listen: 127.0.0.1:1
admin: {{listen: 127.0.0.1:2}}
dns: {{servers: ["{dns.address}"], refresh: {REFRESH}s, timeout: 0.05s}}
routes:
  - name: shop
    hosts: ["*"]
    path_prefix: /
    pools:
      blue: {{endpoints: ["blue.test:{port}"]}}
      green: {{endpoints: ["127.0.0.1:{port}"]}}
    weights: {{blue: 100}}
"""


Start = Callable[..., Awaitable[Running]]


@pytest.fixture
async def dns() -> AsyncIterator[DnsServer]:
    server = await DnsServer().start()
    yield server
    server.stop()


@pytest.fixture
async def twins() -> AsyncIterator[Twins]:
    started = await start_twins()
    yield started
    await started.stop()


@pytest.fixture
async def start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Start]:
    monkeypatch.setenv("POINTSMAN_TOKEN", TOKEN)
    started: list[Running] = []

    async def make(text: str, workers: int | None = None) -> Running:
        config = on_free_ports(parse_config(text, "<test>"))
        config = replace(config, state=StateConfig(path=str(tmp_path / "state.json")))
        running = Running(*await run_service(config, workers))
        started.append(running)
        return running

    yield make
    for running in started:
        await running.session.close()
        await running.service.stop()


@pytest.mark.parametrize("workers", [None, 2])
async def test_a_name_is_every_address_it_resolves_to_and_follows_changes(
    start: Start, dns: DnsServer, twins: Twins, workers: int | None
) -> None:
    dns.set("blue.test", "127.0.0.1")
    rs = await start(config_text(dns, twins.port), workers=workers)
    port = twins.port
    assert await rs.addresses() == [f"127.0.0.1:{port}"]
    assert await rs.backends(4) == {"127.0.0.1"}

    dns.set("blue.test", "127.0.0.1", "127.0.0.2")
    await rs.until_addresses(f"127.0.0.1:{port}", f"127.0.0.2:{port}")
    assert await rs.backends(8) == {"127.0.0.1", "127.0.0.2"}

    dns.set("blue.test", "127.0.0.2")
    await rs.until_addresses(f"127.0.0.2:{port}")
    assert await rs.backends(8) == {"127.0.0.2"}

    # A failing DNS server: the last good set stays, the failures are counted and shown.
    dns.behave("servfail")
    await dns.wait_queries(4)
    code, pool = await rs.call("GET", "/v1/routes/shop/pools/blue")
    assert code == 200
    assert pool["endpoints"][0]["name"] == f"blue.test:{port}"
    (entry,) = pool["dns"]
    assert entry["name"] == f"blue.test:{port}"
    assert entry["addresses"] == [f"127.0.0.2:{port}"]
    assert entry["failures"] >= 1 and "SERVFAIL" in entry["last_error"]
    assert await rs.backends(4) == {"127.0.0.2"}
    async with rs.session.get(rs.admin + "/metrics") as resp:
        metrics = await resp.text()
    assert f'pointsman_dns_addresses{{endpoint="blue.test:{port}"}} 1.0' in metrics
    assert f'pointsman_dns_failures_total{{endpoint="blue.test:{port}"}}' in metrics


async def test_a_pool_added_with_a_name_is_resolved_when_the_api_answers(
    start: Start, dns: DnsServer, twins: Twins
) -> None:
    dns.set("blue.test", "127.0.0.1")
    dns.set("v2.test", "127.0.0.2")
    rs = await start(config_text(dns, twins.port))
    code, pool = await rs.call(
        "POST", "/v1/routes/shop/pools/v2/endpoints", {"endpoints": [f"v2.test:{twins.port}"]}
    )
    assert code == 201, pool
    assert [e["address"] for e in pool["endpoints"]] == [f"127.0.0.2:{twins.port}"]
    code, _ = await rs.call("POST", "/v1/routes/shop/flip", {"to": "v2"})
    assert code == 200
    assert await rs.backends(4) == {"127.0.0.2"}
    # Removing the name stops its resolutions.
    code, _ = await rs.call("POST", "/v1/routes/shop/flip", {"to": "blue"})
    asked = len(dns.queries)
    code, _ = await rs.call("DELETE", "/v1/routes/shop/pools/v2")
    assert code == 200
    await dns.wait_queries(4)  # blue.test goes on
    assert all(name == "blue.test" for name, _ in dns.queries[asked + 2 :])


def test_dns_settings_are_checked_with_their_line() -> None:
    base = (
        "listen: 127.0.0.1:8080\nroutes:\n  - name: shop\n    hosts: ['*']\n"
        "    path_prefix: /\n    pools: {blue: {endpoints: ['blue.test:80']}}\n"
        "    weights: {blue: 1}\n"
    )
    cases = {
        'dns: {servers: ["dns.example:53"]}\n': "dns.servers[0]: expected an IP address",
        "dns: {servers: []}\n": "dns.servers: expected a non-empty list",
        "dns: {refresh: 1s, timeout: 2s}\n": "dns.timeout: expected a timeout shorter",
        "dns: {refresh: soon}\n": "dns.refresh",
        "dns: {ttl: 5s}\n": "dns.ttl: unknown key",
    }
    for text, message in cases.items():
        with pytest.raises(ConfigError) as info:
            parse_config(text + base, "t.yaml")
        assert any(p.startswith("t.yaml:1: ") and message in p for p in info.value.problems), (
            text,
            info.value.problems,
        )
    ok = parse_config('dns: {servers: ["127.0.0.1:5353", "::1"], refresh: 10s}\n' + base)
    assert ok.dns.servers == ("127.0.0.1:5353", "::1")
    assert ok.dns.refresh == 10.0
