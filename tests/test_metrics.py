"""The admin listener's /metrics and /healthz, scraped the way Prometheus would after real
traffic through the proxy."""

from __future__ import annotations

import asyncio
import re
from bisect import bisect_left
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import prometheus_client
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from control.api import build_admin_app
from proxy.metrics import REJECT_REASONS
from proxy.router import RoutingTable
from proxy.server import ProxyServer
from proxy.stats import DURATION_BUCKETS, PoolStats
from tests.conftest import BackendFactory, ProxyFactory, config_for, free_port

AdminClient = TestClient[web.Request, web.Application]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

BLUE, GREEN, DEAD = {"X-Pool": "blue"}, {"X-Pool": "green"}, {"X-Pool": "dead"}
RULES = """\
    rules:
      - header: {X-Pool: blue}
        pool: blue
      - header: {X-Pool: green}
        pool: green
      - header: {X-Pool: dead}
        pool: dead
"""


@asynccontextmanager
async def admin_client(
    proxy: ProxyServer,
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async with TestClient(TestServer(build_admin_app(proxy))) as client:
        yield client


async def scrape(client: AdminClient) -> Samples:
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    text = await response.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def fetch(
    session: aiohttp.ClientSession, port: int, path: str, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    async with session.get(f"http://127.0.0.1:{port}{path}", headers=headers) as response:
        await response.read()
        return response.status, response.headers.get("X-Backend", "")


async def blue_handler(request: web.Request) -> web.StreamResponse:
    if request.path.startswith("/missing"):
        return web.Response(status=404, text="nope", headers={"X-Backend": "blue"})
    return web.Response(text=f"blue {request.path}", headers={"X-Backend": "blue"})


async def three_pool_proxy(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> ProxyServer:
    """blue (weight 90; /missing answers 404), green (10), dead (0, nothing listening)."""
    blue = await backend_factory("blue", blue_handler)
    green = await backend_factory("green")
    config = config_for(
        {
            "blue": [blue.address],
            "green": [green.address],
            "dead": [f"127.0.0.1:{free_port()}"],
        },
        weights={"blue": 90, "green": 10, "dead": 0},
        route_extra=RULES,
    )
    return await proxy_factory(config)


async def test_requests_counted_by_route_pool_and_code_class(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    proxy = await three_pool_proxy(backend_factory, proxy_factory)
    async with aiohttp.ClientSession() as session:
        # Rules make the pools deterministic (without X-Pool the 90/10 split is random).
        for i in range(12):
            assert await fetch(session, proxy.port, f"/ok/{i}", BLUE) == (200, "blue")
        for i in range(3):
            assert await fetch(session, proxy.port, f"/missing/{i}", BLUE) == (404, "blue")
        for i in range(7):
            assert await fetch(session, proxy.port, f"/g/{i}", GREEN) == (200, "green")
        for i in range(2):
            status, _ = await fetch(session, proxy.port, f"/d/{i}", DEAD)
            assert status == 502
    blue_2xx, blue_4xx, green_2xx = 12, 3, 7

    async with admin_client(proxy) as client:
        samples = await scrape(client)
    total = "pointsman_requests_total"
    expected = {
        ("blue", "2xx"): blue_2xx,
        ("blue", "4xx"): blue_4xx,
        ("green", "2xx"): green_2xx,
        ("dead", "5xx"): 2,
    }
    for pool in ("blue", "green", "dead"):
        for code in ("1xx", "2xx", "3xx", "4xx", "5xx"):
            got = value(samples, total, route="shop", pool=pool, code=code)
            assert got == expected.get((pool, code), 0), (pool, code)
    # Every request is counted once.
    assert sum(v for (name, _), v in samples.items() if name == total) == 24

    # Duration histogram: one observation per answered request.
    hist = "pointsman_request_duration_seconds"
    for pool, count in (("blue", blue_2xx + blue_4xx), ("green", green_2xx), ("dead", 2)):
        assert value(samples, f"{hist}_count", route="shop", pool=pool) == count
        assert value(samples, f"{hist}_bucket", route="shop", pool=pool, le="+Inf") == count
        buckets = sorted(
            (float(dict(labels)["le"]), v)
            for (name, labels), v in samples.items()
            if name == f"{hist}_bucket" and dict(labels)["pool"] == pool
        )
        assert len(buckets) > 5
        counts = [v for _, v in buckets]
        assert counts == sorted(counts)  # cumulative
        duration_sum = value(samples, f"{hist}_sum", route="shop", pool=pool)
        assert (duration_sum > 0) == (count > 0)
        assert duration_sum < 10 * max(count, 1)

    # The refused endpoint: one connect error per request sent to the dead pool.
    errors = "pointsman_upstream_connect_errors_total"
    assert value(samples, errors, route="shop", pool="dead") == 2
    assert value(samples, errors, route="shop", pool="blue") == 0
    assert value(samples, errors, route="shop", pool="green") == 0


async def test_counts_are_exact_for_a_single_pool(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    blue = await backend_factory("blue", blue_handler)
    proxy = await proxy_factory(config_for({"blue": [blue.address]}))
    async with aiohttp.ClientSession() as session:
        statuses = [(await fetch(session, proxy.port, f"/ok/{i}"))[0] for i in range(9)]
        statuses += [(await fetch(session, proxy.port, f"/missing/{i}"))[0] for i in range(4)]
    assert statuses == [200] * 9 + [404] * 4
    async with admin_client(proxy) as client:
        samples = await scrape(client)
    total = "pointsman_requests_total"
    assert value(samples, total, route="shop", pool="blue", code="2xx") == 9
    assert value(samples, total, route="shop", pool="blue", code="4xx") == 4
    assert value(samples, total, route="shop", pool="blue", code="5xx") == 0
    count = "pointsman_request_duration_seconds_count"
    assert value(samples, count, route="shop", pool="blue") == 13


async def test_connect_errors_and_retries_for_a_refused_endpoint(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    blue = await backend_factory("blue")
    proxy = await proxy_factory(config_for({"blue": [f"127.0.0.1:{free_port()}", blue.address]}))
    async with admin_client(proxy) as client:
        before = await scrape(client)
        async with aiohttp.ClientSession() as session:
            results = [await fetch(session, proxy.port, f"/r/{i}") for i in range(6)]
        after = await scrape(client)
    assert results == [(200, "blue")] * 6
    errors = "pointsman_upstream_connect_errors_total"
    retries = "pointsman_upstream_retries_total"
    assert value(before, errors, route="shop", pool="blue") == 0
    assert value(before, retries, route="shop", pool="blue") == 0
    assert value(after, errors, route="shop", pool="blue") >= 1
    assert value(after, retries, route="shop", pool="blue") >= 1
    assert value(after, "pointsman_requests_total", route="shop", pool="blue", code="2xx") == 6


async def test_weight_gauge_equals_configured_weights(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    proxy = await three_pool_proxy(backend_factory, proxy_factory)
    gauge = "pointsman_pool_weight"
    async with admin_client(proxy) as client:
        samples = await scrape(client)
        assert value(samples, gauge, route="shop", pool="blue") == 90
        assert value(samples, gauge, route="shop", pool="green") == 10
        assert value(samples, gauge, route="shop", pool="dead") == 0
        new = {"shop": {"blue": 40, "green": 60, "dead": 0}}
        proxy.set_table(RoutingTable(proxy.config.routes, weights=new))
        samples = await scrape(client)
        assert value(samples, gauge, route="shop", pool="blue") == 40
        assert value(samples, gauge, route="shop", pool="green") == 60
        assert value(samples, gauge, route="shop", pool="dead") == 0


async def test_counters_survive_a_routing_table_swap(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    blue = await backend_factory("blue")
    green = await backend_factory("green")
    config = config_for({"blue": [blue.address], "green": [green.address]})
    proxy = await proxy_factory(config)
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            assert await fetch(session, proxy.port, "/") == (200, "blue")
        proxy.set_table(RoutingTable(config.routes, weights={"shop": {"blue": 0, "green": 1}}))
        for _ in range(2):
            assert await fetch(session, proxy.port, "/") == (200, "green")
    async with admin_client(proxy) as client:
        samples = await scrape(client)
    total = "pointsman_requests_total"
    assert value(samples, total, route="shop", pool="blue", code="2xx") == 3
    assert value(samples, total, route="shop", pool="green", code="2xx") == 2


async def test_open_connections_gauge(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    blue = await backend_factory("blue")
    proxy = await proxy_factory(config_for({"blue": [blue.address]}))
    gauge = "pointsman_open_connections"
    async with admin_client(proxy) as client:
        assert value(await scrape(client), gauge) == 0
        streams = []
        try:
            for _ in range(3):
                reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
                streams.append((reader, writer))
                writer.write(b"GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n")
                async with asyncio.timeout(5):
                    await reader.readuntil(b"blue GET / 0")  # the whole response arrived
            assert value(await scrape(client), gauge) == 3
        finally:
            for _, writer in streams:
                writer.close()
                await writer.wait_closed()
        # The proxy notices the closes asynchronously: poll with a deadline.
        for _ in range(250):
            if value(await scrape(client), gauge) == 0:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("open connections gauge stayed above 0 for 5 s after closing")


async def test_healthz_answers_200_json(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    blue = await backend_factory("blue")
    proxy = await proxy_factory(config_for({"blue": [blue.address]}))
    async with admin_client(proxy) as client:
        response = await client.get("/healthz")
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("application/json")
        doc = await response.json()
        assert doc["status"] == "ok"
        assert doc["version"] == proxy.table.version


def _forbidden(name: str) -> Callable[..., Any]:
    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"prometheus_client {name} called on the request path")

    return forbidden


async def test_request_path_does_not_call_labels(
    backend_factory: BackendFactory,
    proxy_factory: ProxyFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy = await three_pool_proxy(backend_factory, proxy_factory)
    # Any use of prometheus_client metric objects per request would blow up now.
    monkeypatch.setattr(prometheus_client.metrics.MetricWrapperBase, "labels", _forbidden("labels"))
    monkeypatch.setattr(prometheus_client.Counter, "inc", _forbidden("Counter.inc"))
    monkeypatch.setattr(prometheus_client.Histogram, "observe", _forbidden("Histogram.observe"))
    monkeypatch.setattr(prometheus_client.Gauge, "inc", _forbidden("Gauge.inc"))
    monkeypatch.setattr(prometheus_client.Gauge, "dec", _forbidden("Gauge.dec"))
    monkeypatch.setattr(prometheus_client.Gauge, "set", _forbidden("Gauge.set"))
    async with aiohttp.ClientSession() as session:
        for i in range(20):
            status, backend = await fetch(session, proxy.port, f"/x/{i}")
            assert status == 200 and backend in {"blue", "green"}
        for i in range(5):
            assert await fetch(session, proxy.port, f"/g/{i}", GREEN) == (200, "green")
        status, _ = await fetch(session, proxy.port, "/d", DEAD)
        assert status == 502
    async with admin_client(proxy) as client:
        samples = await scrape(client)
    total = "pointsman_requests_total"
    assert sum(v for (name, _), v in samples.items() if name == total) == 26
    assert value(samples, total, route="shop", pool="dead", code="5xx") == 1


@given(st.lists(st.floats(min_value=0.0, max_value=100.0), max_size=50))
def test_each_duration_is_counted_in_the_bucket_of_the_first_bound_at_or_above_it(
    durations: list[float],
) -> None:
    stats = PoolStats()
    for seconds in durations:
        stats.observe(200, seconds)
    expected = [0] * (len(DURATION_BUCKETS) + 1)
    for seconds in durations:
        expected[bisect_left(DURATION_BUCKETS, seconds)] += 1
    assert stats.duration_buckets == expected
    assert stats.status[2] == len(durations)


def test_a_duration_on_a_bound_counts_in_that_bound_and_past_the_last_in_inf() -> None:
    stats = PoolStats()
    stats.observe(200, DURATION_BUCKETS[0])
    stats.observe(503, DURATION_BUCKETS[-1] + 1.0)
    assert stats.duration_buckets[0] == 1 and stats.duration_buckets[-1] == 1
    assert stats.status[5] == 1


def test_every_reject_reason_the_code_uses_is_exported_from_the_start() -> None:
    # A reason first seen at its first event has no rate until its second: the collector
    # exports REJECT_REASONS at 0, which must name every reason proxy/ counts.
    used: set[str] = set()
    for source in (Path(__file__).resolve().parents[1] / "proxy").glob("*.py"):
        text = source.read_text()
        used |= set(re.findall(r'\breject\("([a-z_]+)"\)', text))
        used |= set(re.findall(r'Reject\(\s*\d+,[^)]*?"([a-z_]+)",?\s*\)', text, re.S))
    assert "malformed" in used and "client_write_timeout" in used  # the patterns still match
    assert used <= set(REJECT_REASONS), used - set(REJECT_REASONS)


async def test_reject_reasons_are_exported_at_zero_before_any_event(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    blue = await backend_factory("blue")
    proxy = await proxy_factory(config_for({"blue": [blue.address]}))
    name = "pointsman_rejected_requests_total"
    async with admin_client(proxy) as client:
        samples = await scrape(client)
        assert {r: value(samples, name, reason=r) for r in REJECT_REASONS} == dict.fromkeys(
            REJECT_REASONS, 0.0
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: \r\n\r\n")  # an empty Host: bad_host
            async with asyncio.timeout(5):
                head = await reader.readuntil(b"\r\n")
        finally:
            writer.close()
        assert head.startswith(b"HTTP/1.1 400")
        samples = await scrape(client)
        assert value(samples, name, reason="bad_host") == 1
        assert value(samples, name, reason="malformed") == 0
