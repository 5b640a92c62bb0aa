"""Pools and endpoints at run time, as a deploy script sees them: the control API and the
`pointsman pool` commands against a real `control.service.Service` on 127.0.0.1, with real
upstreams whose requests are counted, and a restart that resumes what was changed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp import web

from tests.conftest import Backend, BackendFactory
from tests.test_api import (
    LIMIT,
    ROUTE,
    Running,
    StartService,
    assert_json_error,
    assert_version,
    start_running,
    start_service,
)
from tests.test_cli_live import pointsman

__all__ = ["start_service"]  # the fixture, imported for pytest

POOLS = ROUTE + "/pools"


class Held:
    """A backend handler that holds each request until released (a long in-flight request)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.arrived = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.arrived.set()
        await self.release.wait()
        return web.Response(text=f"{self.name} done", headers={"X-Backend": self.name})


async def endpoint(running: Running, pool: str, address: str) -> dict[str, object]:
    answer = await running.call("GET", f"{POOLS}/{pool}")
    assert answer.status == 200, answer.text
    found = [e for e in answer.body["endpoints"] if e["address"] == address]
    assert found, answer.body
    return found[0]


async def test_a_new_pool_takes_traffic_only_when_given_weight(
    start_service: StartService, backend_factory: BackendFactory
) -> None:
    rs = await start_service()
    v2 = await backend_factory("v2")

    answer = await rs.call("POST", f"{POOLS}/v2/endpoints", {"endpoints": [v2.address]})
    assert answer.status == 201, answer.text
    assert_version(answer, 2)
    assert answer.body["weight"] == 0
    assert answer.body["endpoints"] == [
        {"address": v2.address, "state": "up", "healthy": True, "in_flight": 0}
    ]
    assert set(await rs.backends_of(10)) == {"blue"}

    route = (await rs.call("GET", ROUTE)).body
    assert route["weights"] == {"blue": 100, "green": 0, "v2": 0}

    answer = await rs.call("PUT", ROUTE + "/weights", {"weights": {"v2": 100}})
    assert answer.status == 200, answer.text
    assert set(await rs.backends_of(10)) == {"v2"}
    # The audit log records the endpoints with every change.
    assert v2.address in rs.audit_path.read_text()


async def test_replacing_endpoints_moves_new_requests_at_the_answer(
    start_service: StartService, backend_factory: BackendFactory
) -> None:
    rs = await start_service()
    blue2 = await backend_factory("blue2")
    answer = await rs.call("PUT", f"{POOLS}/blue/endpoints", {"endpoints": [blue2.address]})
    assert answer.status == 200, answer.text
    assert set(await rs.backends_of(10)) == {"blue2"}
    answer = await rs.call("POST", f"{POOLS}/blue/endpoints", {"endpoints": [rs.blue.address]})
    assert answer.status == 200, answer.text
    assert set(await rs.backends_of(10)) == {"blue", "blue2"}
    answer = await rs.call("DELETE", f"{POOLS}/blue/endpoints/{blue2.address}")
    assert answer.status == 200, answer.text
    assert set(await rs.backends_of(10)) == {"blue"}


async def hold_one_request(
    rs: Running, backend_factory: BackendFactory
) -> tuple[Held, Backend, asyncio.Task[str]]:
    """Blue's only endpoint becomes a slow one holding a request; then blue's own endpoint
    joins the pool. Returns the handler, the slow backend and the held request's task."""
    held = Held("slow")
    slow = await backend_factory("slow", held)
    answer = await rs.call("PUT", f"{POOLS}/blue/endpoints", {"endpoints": [slow.address]})
    assert answer.status == 200, answer.text

    async def long_request() -> str:
        async with rs.session.get(rs.proxy + "/long") as response:
            assert response.status == 200
            return await response.text()

    task = asyncio.create_task(long_request())
    async with asyncio.timeout(LIMIT):
        await held.arrived.wait()
    answer = await rs.call("POST", f"{POOLS}/blue/endpoints", {"endpoints": [rs.blue.address]})
    assert answer.status == 200, answer.text
    return held, slow, task


async def test_a_drained_endpoint_finishes_its_request_and_gets_no_new_one(
    start_service: StartService, backend_factory: BackendFactory
) -> None:
    rs = await start_service()
    held, slow, long_request = await hold_one_request(rs, backend_factory)
    answer = await rs.call("POST", f"{POOLS}/blue/endpoints/{slow.address}/drain")
    assert answer.status == 200, answer.text
    drained = [e for e in answer.body["endpoints"] if e["address"] == slow.address]
    assert drained[0]["state"] == "draining"
    assert (await endpoint(rs, "blue", slow.address))["in_flight"] == 1
    assert set(await rs.backends_of(20)) == {"blue"}
    assert len(slow.seen) == 1  # nothing new reached it

    held.release.set()
    async with asyncio.timeout(LIMIT):
        assert await long_request == "slow done"
    assert (await endpoint(rs, "blue", slow.address))["in_flight"] == 0
    code, out, _ = await pointsman(rs, "status", "shop")
    assert code == 0
    assert f"{slow.address} draining, 0 in flight" in out


async def test_a_removed_endpoint_lets_its_request_finish(
    start_service: StartService, backend_factory: BackendFactory
) -> None:
    rs = await start_service()
    held, slow, long_request = await hold_one_request(rs, backend_factory)
    answer = await rs.call("DELETE", f"{POOLS}/blue/endpoints/{slow.address}")
    assert answer.status == 200, answer.text
    assert [e["address"] for e in answer.body["endpoints"]] == [rs.blue.address]
    assert set(await rs.backends_of(5)) == {"blue"}
    held.release.set()
    async with asyncio.timeout(LIMIT):
        assert await long_request == "slow done"
    assert len(slow.seen) == 1


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("POST", "/v1/routes/nope/pools/v2/endpoints", {"endpoints": ["10.0.0.1:80"]}, 404, None),
        ("PUT", f"{POOLS}/v9/endpoints", {"endpoints": ["10.0.0.1:80"]}, 404, "unknown_pool"),
        ("POST", f"{POOLS}/v2/endpoints", {"endpoints": ["10.0.0.1"]}, 400, "bad_endpoint"),
        ("POST", f"{POOLS}/v2/endpoints", {"endpoints": []}, 400, "bad_endpoint"),
        ("POST", f"{POOLS}/v 2/endpoints", {"endpoints": ["10.0.0.1:80"]}, 400, "bad_pool"),
        ("POST", f"{POOLS}/v2/endpoints", {"endpoints": "10.0.0.1:80"}, 400, None),
        ("POST", f"{POOLS}/v2/endpoints", {"endpoint": ["10.0.0.1:80"]}, 400, None),
        ("DELETE", f"{POOLS}/blue", None, 409, "pool_in_use"),
        ("DELETE", f"{POOLS}/blue/endpoints/10.9.9.9:80", None, 404, "unknown_endpoint"),
        ("POST", f"{POOLS}/green/endpoints/10.9.9.9:80/drain", None, 404, "unknown_endpoint"),
        ("DELETE", f"{POOLS}/v9", None, 404, "unknown_pool"),
    ],
)
async def test_refusals_are_clear_and_change_nothing(
    start_service: StartService,
    method: str,
    path: str,
    body: object,
    status: int,
    code: str | None,
) -> None:
    rs = await start_service()
    before = rs.state_path.read_bytes()
    answer = await rs.call(method, path, body)
    error = assert_json_error(answer, status)
    if code is not None:
        assert error["detail"]["code"] == code, error
    assert_version(answer, 1)
    assert rs.state_path.read_bytes() == before
    assert set(await rs.backends_of(5)) == {"blue"}


async def test_duplicates_and_stale_versions_are_409(start_service: StartService) -> None:
    rs = await start_service()
    answer = await rs.call("POST", f"{POOLS}/blue/endpoints", {"endpoints": [rs.blue.address]})
    assert assert_json_error(answer, 409)["detail"]["code"] == "duplicate_endpoint"
    answer = await rs.call(
        "POST",
        f"{POOLS}/v2/endpoints",
        {"endpoints": ["127.0.0.1:1"]},
        headers={"If-Match": '"7"'},
    )
    assert assert_json_error(answer, 409)["detail"]["current_version"] == 1


async def test_delete_a_pool_once_it_takes_nothing(start_service: StartService) -> None:
    rs = await start_service()
    answer = await rs.call("DELETE", f"{POOLS}/green")
    assert answer.status == 200, answer.text
    assert answer.body["weights"] == {"blue": 100}
    assert "green" not in answer.body["pools"]
    answer = await rs.call("POST", ROUTE + "/flip", {"to": "green"})
    assert assert_json_error(answer, 404)["detail"]["code"] == "unknown_pool"


async def test_pools_and_endpoints_survive_a_restart(
    start_service: StartService, backend_factory: BackendFactory, tmp_path: Path
) -> None:
    rs = await start_service()
    v2 = await backend_factory("v2")
    await rs.call("POST", f"{POOLS}/v2/endpoints", {"endpoints": [v2.address]})
    await rs.call("PUT", ROUTE + "/weights", {"weights": {"v2": 100}})
    await rs.call("POST", f"{POOLS}/blue/endpoints/{rs.blue.address}/drain")
    await rs.call("DELETE", f"{POOLS}/green")
    await rs.service.stop()

    again = await start_running(rs.config, rs.blue, rs.green, rs.session)
    try:
        route = (await again.call("GET", ROUTE)).body
        assert route["version"] == 5
        assert route["weights"] == {"blue": 0, "v2": 100}
        assert route["pools"]["blue"]["endpoints"][0]["state"] == "draining"
        assert set(await again.backends_of(5)) == {"v2"}
    finally:
        await again.service.stop()


async def test_the_deploy_walk_through_with_the_cli(
    start_service: StartService, backend_factory: BackendFactory
) -> None:
    """deploy v2 on new addresses -> pool add -> weights -> flip -> drain blue -> rm blue."""
    rs = await start_service()
    v2a = await backend_factory("v2")
    v2b = await backend_factory("v2")

    code, out, err = await pointsman(rs, "pool", "add", "shop", "v2", v2a.address, v2b.address)
    assert (code, err) == (0, "")
    assert out.strip() == (
        f"pool created: shop/v2  weight 0  {v2a.address} up; {v2b.address} up  (version 2)"
    )
    code, out, _ = await pointsman(rs, "weights", "shop", "blue=90", "v2=10")
    assert code == 0
    code, _, _ = await pointsman(rs, "flip", "shop", "v2")
    assert code == 0
    assert set(await rs.backends_of(6)) == {"v2"}

    code, out, _ = await pointsman(
        rs, "pool", "drain", "shop", "blue", rs.blue.address, "--wait", "--timeout", "5"
    )
    assert code == 0, out
    assert f"{rs.blue.address} is idle" in out
    code, out, err = await pointsman(rs, "pool", "rm", "shop", "blue", "--if-match", "4")
    assert code == 1
    assert "409" in err and "version" in err
    code, out, _ = await pointsman(rs, "pool", "rm", "shop", "blue")
    assert (code, out.strip()) == (0, "pool deleted: shop/blue (version 6)")

    code, _, err = await pointsman(rs, "pool", "rm", "shop", "v2")
    assert code == 1
    assert "409" in err and "weight 100" in err
    code, _, err = await pointsman(rs, "pool", "add", "shop", "v2", "nonsense")
    assert code == 1
    assert "400" in err and "nonsense" in err


async def test_drain_wait_gives_up_after_its_timeout(
    start_service: StartService, backend_factory: BackendFactory
) -> None:
    rs = await start_service()
    held, slow, long_request = await hold_one_request(rs, backend_factory)
    code, out, err = await pointsman(
        rs, "pool", "drain", "shop", "blue", slow.address, "--wait", "--timeout", "1"
    )
    assert code == 1
    assert f"draining: shop/blue  weight 100  {rs.blue.address} up; {slow.address} draining" in out
    assert err.strip() == f"pointsman: {slow.address} still has 1 request(s) in flight after 1 s"
    held.release.set()
    async with asyncio.timeout(LIMIT):
        assert await long_request == "slow done"
