"""control/fleet.py, a member's sync loop, against a real etcd: it follows writes made through
another member, resumes after etcd crashes, reads everything again after a compaction, and
never applies a wiped etcd."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import orjson
import pytest

from control.etcd import EtcdClient
from control.etcd_store import EtcdStore
from control.fleet import FleetSync
from control.fleet_sync import Apply
from control.members import Member as MemberRecord
from control.members import MemberRegistration, list_members
from control.state import StateDoc, initial_state
from tests.conftest import config_for
from tests.etcd_server import EtcdServer

PREFIX = "/pointsman/shop"
LIMIT = 10.0  # seconds any wait may take
BASE = initial_state(config_for({"blue": ["127.0.0.1:1"], "green": ["127.0.0.1:2"]}).routes, 0.0)

pytestmark = pytest.mark.timeout(60)


def bumped(doc: StateDoc) -> StateDoc:
    name, route = doc.routes[0]
    (first, weight), *rest = route.weights
    changed = replace(route, weights=((first, (weight + 7) % 101), *rest))
    return replace(doc, version=doc.version + 1, routes=((name, changed), *doc.routes[1:]))


@dataclass
class Member:
    sync: FleetSync
    task: asyncio.Task[None]
    applied: list[int] = field(default_factory=list)  # versions, in the order applied
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def reaches(self, version: int) -> None:
        async with asyncio.timeout(LIMIT):
            while not self.applied or self.applied[-1] < version:
                self.changed.clear()
                await self.changed.wait()

    async def stop(self) -> None:
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


@dataclass
class Fleet:
    etcd: EtcdServer
    writer: EtcdStore  # another member's store: writes through it
    clients: list[EtcdClient]
    members: list[Member]

    async def write(self, count: int) -> StateDoc:
        doc = (await self.writer.read(None)).doc  # type: ignore[union-attr]
        for _ in range(count):
            doc = bumped(doc)
            await self.writer.save(doc, orjson.dumps({"version": doc.version}))
        return doc

    def member(self, applied: StateDoc | None = None) -> Member:
        client = EtcdClient([self.etcd.url], timeout=1.0)
        self.clients.append(client)
        store = EtcdStore(client, PREFIX, "shop")

        async def on_apply(doc: StateDoc, state_revision: int) -> None:
            member.applied.append(doc.version)
            member.changed.set()

        sync = FleetSync(client, store, on_apply, applied)
        member = Member(sync, asyncio.create_task(sync.run()))
        self.members.append(member)
        return member


async def reported(member: Member, text: str) -> None:
    """Wait until the member's loop reports a failure containing `text`."""
    async with asyncio.timeout(LIMIT):
        while text not in (member.sync.last_error or ""):
            member.sync.error_reported.clear()
            await member.sync.error_reported.wait()


@pytest.fixture
async def fleet(etcd: EtcdServer) -> AsyncIterator[Fleet]:
    client = EtcdClient([etcd.url], timeout=1.0)
    writer = EtcdStore(client, PREFIX, "shop")
    await writer.create(BASE)
    made = Fleet(etcd, writer, [client], [])
    yield made
    for member in made.members:
        if not member.task.done():
            await member.stop()
    for c in made.clients:
        await c.close()


async def test_a_member_applies_every_change_in_order(fleet: Fleet) -> None:
    member = fleet.member()
    await member.reaches(1)
    last = await fleet.write(20)
    await member.reaches(last.version)
    assert member.applied == list(range(1, 22))  # every version, in order, none twice
    assert member.sync.applied == last and member.sync.full_reads == 1
    assert member.sync.last_error is None and member.sync.last_sync is not None


async def test_after_an_etcd_crash_a_member_resumes_without_a_full_read(fleet: Fleet) -> None:
    member = fleet.member()
    await member.reaches(1)
    await fleet.write(3)
    await member.reaches(4)
    fleet.etcd.kill()
    await reported(member, "etcd unreachable")
    assert member.sync.applied is not None and member.sync.applied.version == 4  # still served
    fleet.etcd.start()
    last = await fleet.write(3)
    await member.reaches(last.version)
    assert member.applied == [1, 2, 3, 4, 5, 6, 7]  # resumed: nothing missed, nothing twice
    assert member.sync.full_reads == 1 and member.sync.resumes >= 1
    assert member.sync.last_error is None


async def test_a_member_cut_off_during_a_compaction_reads_everything_again(
    fleet: Fleet,
) -> None:
    member = fleet.member()
    await member.reaches(1)
    await member.stop()  # cut off: it keeps its point
    point = member.sync.point
    assert point is not None
    last = await fleet.write(5)
    head = fleet.writer.state_revision
    await fleet.clients[0].compact(head)
    member.task = asyncio.create_task(member.sync.run())  # back: its next revision is gone
    await member.reaches(last.version)
    assert member.applied == [1, 6]  # the versions in between are compacted away
    assert member.sync.full_reads == 2


async def test_an_etcd_restarted_empty_is_never_applied(
    fleet: Fleet, tmp_path: Path, etcd: EtcdServer
) -> None:
    member = fleet.member()
    await member.reaches(1)
    await fleet.write(2)
    await member.reaches(3)
    etcd.kill()
    etcd.data_dir = tmp_path / "etcd-empty"  # same address, nothing in it
    etcd.start()
    await reported(member, "etcd has no /pointsman/shop/meta")
    assert member.applied == [1, 2, 3] and member.sync.applied is not None  # none since
    assert member.sync.applied.version == 3


async def test_a_member_starting_with_a_local_copy_does_not_apply_it_again(
    fleet: Fleet,
) -> None:
    current = await fleet.write(2)
    read = await fleet.writer.read(None)
    assert isinstance(read, Apply)
    member = fleet.member(applied=current)
    async with asyncio.timeout(LIMIT):
        await member.sync.synced.wait()
    assert member.applied == []  # what it serves is what etcd has
    newer = await fleet.write(1)
    await member.reaches(newer.version)
    assert member.applied == [newer.version]


async def test_a_member_changing_all_the_time_keeps_its_key(etcd: EtcdServer) -> None:
    """Renewal is due by the clock: changes every few milliseconds (a busy fleet) must not
    starve it until the lease runs out (the bench found a member key gone after 10 s)."""
    client = EtcdClient([etcd.url], timeout=1.0)
    version = 0

    def info() -> MemberRecord:
        return MemberRecord("m", "127.0.0.1:1", version, 1, None)

    renewals: list[float] = []
    keep_alive = client.keep_alive

    async def counted(lease: int) -> int:
        renewals.append(asyncio.get_running_loop().time())
        return await keep_alive(lease)

    client.keep_alive = counted  # type: ignore[method-assign]
    registration = MemberRegistration(client, PREFIX, "m", info, ttl=2)
    task = asyncio.create_task(registration.run())
    try:
        async with asyncio.timeout(LIMIT):
            await registration.registered.wait()
        loop = asyncio.get_running_loop()
        end = loop.time() + 3.0  # longer than the TTL: without renewals the key would go
        while loop.time() < end:
            version += 1
            registration.changed.set()
            await asyncio.sleep(0.02)  # the pace of changes is the point here
        _, members = await list_members(client, PREFIX)
        assert [(m.id, m.version) for m in members] == [("m", version)]
        # Renewed every TTL/3 all along (3 s at 2/3 s: 4 at least), not only when quiet.
        assert len(renewals) >= 4, renewals
        assert await keep_alive(registration.lease) > 0
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await client.close()
