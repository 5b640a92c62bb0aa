"""control/etcd_store.py against a real etcd: creating a fleet, reading it, and writes that
land only on the state they were computed from."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import orjson
import pytest

from control.etcd import Delete, EtcdClient, EtcdError, prefix_end
from control.etcd_store import EtcdStore, FleetExists, StateConflict
from control.fleet_sync import Apply, Refuse
from control.state import StateDoc, initial_state
from tests.conftest import config_for
from tests.etcd_server import EtcdServer

PREFIX = "/pointsman/shop"
BASE = initial_state(config_for({"blue": ["127.0.0.1:1"], "green": ["127.0.0.1:2"]}).routes, 0.0)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def clients(etcd: EtcdServer) -> AsyncIterator[list[EtcdClient]]:
    made = [EtcdClient([etcd.url], timeout=2.0) for _ in range(3)]
    yield made
    for client in made:
        await client.close()


def next_version(doc: StateDoc, weight: int) -> StateDoc:
    name, route = doc.routes[0]
    changed = replace(route, weights=((route.weights[0][0], weight), *route.weights[1:]))
    return replace(doc, version=doc.version + 1, routes=((name, changed), *doc.routes[1:]))


def record(actor: str, version: int) -> bytes:
    return orjson.dumps({"actor": actor, "version": version})


async def test_a_fleet_is_created_once_and_read_back(clients: list[EtcdClient]) -> None:
    store = EtcdStore(clients[0], PREFIX, "shop")
    created = await store.create(BASE)
    assert created.doc == BASE
    with pytest.raises(FleetExists):
        await EtcdStore(clients[1], PREFIX, "shop").create(BASE)
    read = await EtcdStore(clients[1], PREFIX, "shop").read(applied=None)
    assert isinstance(read, Apply) and read.doc == BASE
    assert read.state_revision == created.state_revision
    foreign = await EtcdStore(clients[1], PREFIX, "other").read(applied=None)
    assert isinstance(foreign, Refuse) and "belongs to fleet 'shop'" in foreign.reason


async def test_of_two_members_writing_from_the_same_version_exactly_one_wins(
    clients: list[EtcdClient],
) -> None:
    await EtcdStore(clients[0], PREFIX, "shop").create(BASE)
    a = EtcdStore(clients[1], PREFIX, "shop")
    b = EtcdStore(clients[2], PREFIX, "shop")
    assert isinstance(await a.read(None), Apply) and isinstance(await b.read(None), Apply)
    from_a, from_b = next_version(BASE, 70), next_version(BASE, 30)
    results = await asyncio.gather(
        a.save(from_a, record("a", 2)), b.save(from_b, record("b", 2)), return_exceptions=True
    )
    conflicts = [r for r in results if isinstance(r, StateConflict)]
    assert len(conflicts) == 1 and sum(isinstance(r, int) for r in results) == 1, results
    winner = from_a if isinstance(results[0], int) else from_b
    assert conflicts[0].current == winner  # the loser learns the version now in force
    final = await EtcdStore(clients[0], PREFIX, "shop").read(None)
    assert isinstance(final, Apply) and final.doc == winner
    # One audit record for version 2, the winner's, written in the same transaction.
    _, audit = await clients[0].get_prefix(f"{PREFIX}/audit/".encode())
    assert [orjson.loads(kv.value)["actor"] for kv in audit] == ["a" if winner is from_a else "b"]
    # The loser, once it has applied the winner's state, writes on top of it.
    loser = b if winner is from_a else a
    loser.applied(final)
    third = next_version(winner, 50)
    assert await loser.save(third, record("loser", 3)) > final.state_revision
    _, audit = await clients[0].get_prefix(f"{PREFIX}/audit/".encode())
    assert [kv.key.decode().rsplit("/", 1)[1] for kv in audit] == [
        "00000000000000000002",
        "00000000000000000003",
    ]


async def test_a_wiped_or_taken_over_prefix_is_never_written_or_applied(
    clients: list[EtcdClient],
) -> None:
    store = EtcdStore(clients[0], PREFIX, "shop")
    await store.create(BASE)
    await clients[1].txn([], [Delete(f"{PREFIX}/".encode(), prefix_end(f"{PREFIX}/".encode()))])
    wiped = await store.read(applied=BASE)
    assert isinstance(wiped, Refuse) and "prefix is empty" in wiped.reason
    with pytest.raises(EtcdError, match="not written: etcd has no /pointsman/shop/meta"):
        await store.save(next_version(BASE, 10), record("a", 2))
    _, left = await clients[0].get_prefix(f"{PREFIX}/".encode())
    assert left == []  # nothing half-written
    # Another fleet now lives there: still refused, and its state is untouched.
    other = EtcdStore(clients[1], PREFIX, "other")
    await other.create(BASE)
    with pytest.raises(EtcdError, match="belongs to fleet 'other'"):
        await store.save(next_version(BASE, 10), record("a", 2))
    read = await other.read(None)
    assert isinstance(read, Apply) and read.doc == BASE
