"""Endpoint changes with real worker processes and in a fleet: every worker of every member
routes by the new endpoints once the API has answered, and nothing fails meanwhile."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.conftest import BackendFactory
from tests.etcd_server import EtcdServer
from tests.test_workers import (
    ROUTE,
    Host,
    Load,
    StartHost,
    close_all,
    echo,
    pinned_clients,
    start_host,
)

__all__ = ["start_host"]  # the fixture, imported for pytest

pytestmark = pytest.mark.timeout(120)

POOL = ROUTE + "/pools/blue"
Change = tuple[float, float, frozenset[str]]  # (asked, answered, backends that may answer)
Step = tuple[str, str, object, frozenset[str]]  # (method, path, body, backends after it)


async def change_under_load(host: Host, load: Load, steps: list[Step]) -> list[Change]:
    """Each step (method, path, body, the backends that take requests after it) through
    `host` while `load` runs, followed by twice as many requests as there are connections."""
    changes: list[Change] = []
    await load.more(len(load.connections))
    for method, path, body, allowed in steps:
        asked = time.monotonic()
        code, answer = await host.call(method, path, body)
        assert code == 200, answer
        changes.append((asked, time.monotonic(), allowed))
        await load.more(2 * len(load.connections))
    return changes


def outside_after_answers(changes: list[Change], load: Load) -> list[tuple[int, str]]:
    """Requests sent after a change's answer (and before the next was asked for) that reached
    a backend the change had removed or was draining."""
    wrong = []
    for k, (_, answered, allowed) in enumerate(changes):
        until = changes[k + 1][0] if k + 1 < len(changes) else float("inf")
        window = [s for s in load.sent if answered < s.started < until]
        assert window, f"no request after change {k}"
        wrong += [(k, s.backend) for s in window if s.backend not in allowed]
    return wrong


def steps_over(
    addresses: dict[str, str], rounds: int
) -> list[tuple[str, str, object, frozenset[str]]]:
    """Replace, add, drain, remove, and back: each round five changes of blue's endpoints."""
    a, b, c = addresses["a"], addresses["b"], addresses["c"]
    steps: list[Step] = []
    for _ in range(rounds):
        steps += [
            ("PUT", POOL + "/endpoints", {"endpoints": [a, b]}, frozenset("ab")),
            ("POST", POOL + "/endpoints", {"endpoints": [c]}, frozenset("abc")),
            ("POST", f"{POOL}/endpoints/{a}/drain", None, frozenset("bc")),
            ("DELETE", f"{POOL}/endpoints/{b}", None, frozenset("c")),
            ("PUT", POOL + "/endpoints", {"endpoints": [a]}, frozenset("a")),
        ]
    return steps


async def test_fifty_endpoint_changes_under_load_on_two_workers(
    start_host: StartHost, backend_factory: BackendFactory
) -> None:
    backends = {name: await backend_factory(name, echo(name)) for name in "abc"}
    green = await backend_factory("green", echo("green"))
    host = await start_host({"blue": [backends["a"]], "green": [green]}, workers=2)
    load = Load(await pinned_clients(host, 2))
    loader = asyncio.create_task(load.run())
    try:
        changes = await change_under_load(
            host, load, steps_over({n: b.address for n, b in backends.items()}, 10)
        )
    finally:
        load.stop.set()
        await loader
        await close_all(load.connections)
    assert load.failures == []
    assert {s.status for s in load.sent} == {200}
    assert len({s.worker for s in load.sent}) == 2
    assert outside_after_answers(changes, load) == []


async def test_a_member_applies_endpoint_changes_made_through_another(
    start_host: StartHost, backend_factory: BackendFactory, etcd: EtcdServer
) -> None:
    backends = {name: await backend_factory(name, echo(name)) for name in "abc"}
    green = await backend_factory("green", echo("green"))
    pools = {"blue": [backends["a"]], "green": [green]}
    writer = await start_host(pools, workers=1, etcd_url=etcd.url)
    follower = await start_host(pools, workers=1, etcd_url=etcd.url)
    load = Load(await pinned_clients(follower, 1))
    loader = asyncio.create_task(load.run())
    steps = [
        (method, path + ("&" if "?" in path else "?") + "wait=fleet", body, allowed)
        for method, path, body, allowed in steps_over(
            {n: b.address for n, b in backends.items()}, 1
        )
    ]
    try:
        changes = await change_under_load(writer, load, steps)
    finally:
        load.stop.set()
        await loader
        await close_all(load.connections)
    assert load.failures == []
    assert outside_after_answers(changes, load) == []
    code, pool = await follower.call("GET", ROUTE + "/pools/blue")
    assert code == 200
    assert [(e["address"], e["state"]) for e in pool["endpoints"]] == [
        (backends["a"].address, "up")
    ]


async def test_a_members_pools_survive_its_restart_from_etcd(
    start_host: StartHost, backend_factory: BackendFactory, etcd: EtcdServer
) -> None:
    """The pools and endpoints live in etcd: a member started again (its local copy gone)
    serves them, and so does a new member."""
    blue = await backend_factory("blue", echo("blue"))
    v2 = await backend_factory("v2", echo("v2"))
    green = await backend_factory("green", echo("green"))
    pools = {"blue": [blue], "green": [green]}
    first = await start_host(pools, workers=1, etcd_url=etcd.url)
    code, body = await first.call(
        "POST", ROUTE + "/pools/v2/endpoints", {"endpoints": [v2.address]}
    )
    assert code == 201, body
    code, body = await first.call("POST", ROUTE + "/flip", {"to": "v2"})
    assert code == 200, body
    await first.session.close()
    await first.service.stop()

    again = await start_host(pools, workers=1, etcd_url=etcd.url)
    code, route = await again.call("GET", ROUTE)
    assert code == 200
    assert route["weights"] == {"blue": 0, "green": 0, "v2": 100}
    assert [e["address"] for e in route["pools"]["v2"]["endpoints"]] == [v2.address]
    connection = (await pinned_clients(again, 1))[0]
    try:
        assert await connection.get("/after-restart") == (200, "v2")
    finally:
        await connection.close()
