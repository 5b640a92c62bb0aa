"""The members of a fleet in etcd: each registers under `<prefix>/members/<id>` with a lease,
and keeps there what it serves (applied version, admin address, workers, last error). A member
that stops (or loses etcd) disappears when its lease runs out; one that stops cleanly revokes
it and disappears at once.

Pure parts (`decode_members`, `lagging`) take and return plain values; `MemberRegistration`
and `wait_for_version` are the I/O.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Final

import orjson

from control.etcd import EtcdClient, EtcdError, KeyValue, prefix_end

__all__ = [
    "MEMBER_TTL",
    "Member",
    "MemberRegistration",
    "decode_members",
    "lagging",
    "list_members",
    "wait_for_version",
]

log = logging.getLogger("pointsman.fleet")

# A member that stops renewing drops out of the fleet after this: long enough to ride out an
# etcd leader election (about a second) and a stalled event loop, short enough that
# `?wait=fleet` stops waiting for a dead host within a deploy script's patience.
MEMBER_TTL: Final = 10
# Renewed every TTL/3 (three renewals fit in one TTL, so one lost call does not drop it).
RETRY_MAX: Final = 5.0  # seconds between attempts to register again while etcd refuses


@dataclass(frozen=True, slots=True)
class Member:
    id: str
    admin: str  # host:port of its admin API
    version: int  # the state version it has applied
    workers: int | None  # data-plane processes; None: it proxies in the admin process
    error: str | None  # its sync loop's last error or refusal


def members_prefix(prefix: str) -> bytes:
    return f"{prefix.rstrip('/')}/members/".encode()


def decode_members(kvs: list[KeyValue]) -> list[Member]:
    """The member keys read from etcd; a value that is not a member's is skipped (and
    logged), so one bad key cannot hide the rest of the fleet."""
    members = []
    for kv in kvs:
        try:
            obj = orjson.loads(kv.value)
            members.append(
                Member(
                    id=str(obj["id"]),
                    admin=str(obj["admin"]),
                    version=int(obj["version"]),
                    workers=None if obj.get("workers") is None else int(obj["workers"]),
                    error=None if obj.get("error") is None else str(obj["error"]),
                )
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning(
                "fleet: %s is not a member record; skipped", kv.key.decode(errors="replace")
            )
    return sorted(members, key=lambda m: m.id)


def lagging(members: list[Member], version: int) -> list[Member]:
    """The members that have not applied `version` yet."""
    return [m for m in members if m.version < version]


def member_value(member: Member) -> bytes:
    return orjson.dumps(
        {
            "id": member.id,
            "admin": member.admin,
            "version": member.version,
            "workers": member.workers,
            "error": member.error,
        }
    )


async def list_members(client: EtcdClient, prefix: str) -> tuple[int, list[Member]]:
    """(the etcd revision read at, the live members)."""
    start = members_prefix(prefix)
    header, kvs = await client.get_prefix(start)
    return header.revision, decode_members(kvs)


async def wait_for_version(
    client: EtcdClient, prefix: str, version: int, within: float
) -> list[Member]:
    """Wait until every live member reports `version` (a member whose lease runs out stops
    counting). Returns the members still lagging after `within` seconds: empty on success."""
    start = members_prefix(prefix)
    revision, members = await list_members(client, prefix)
    by_id = {m.id: m for m in members}
    if not lagging(members, version):
        return []
    try:
        async with asyncio.timeout(within):
            watch = client.watch(start, prefix_end(start), revision + 1)
            async with aclosing(watch) as batches:
                async for batch in batches:
                    for event in batch.events:
                        member_id = event.kv.key[len(start) :].decode(errors="replace")
                        if event.kind == "delete":
                            by_id.pop(member_id, None)
                            continue
                        for member in decode_members([event.kv]):
                            by_id[member.id] = member
                    if not lagging(list(by_id.values()), version):
                        return []
    except TimeoutError:
        pass
    return lagging(sorted(by_id.values(), key=lambda m: m.id), version)


class MemberRegistration:
    """Keeps this member's key under `<prefix>/members/` while it runs."""

    def __init__(
        self,
        client: EtcdClient,
        prefix: str,
        member_id: str,
        info: Callable[[], Member],
        ttl: int = MEMBER_TTL,
    ) -> None:
        self.client = client
        self.ttl = ttl
        self.member_id = member_id
        self.key = members_prefix(prefix) + member_id.encode()
        self.info = info  # what the member serves now
        self.changed = asyncio.Event()  # set by the member when what `info` says changed
        self.lease = 0
        self.registered = asyncio.Event()  # set once the key is written (for tests, logs)

    async def run(self) -> None:
        """Until cancelled: register, renew every TTL/3, rewrite when `info` changes."""
        retry = self.ttl / 12
        while True:
            try:
                await self._registered_loop()
            except EtcdError as err:
                log.warning("fleet: member key %s: %s; registering again", self.key.decode(), err)
                self.lease = 0
                self.registered.clear()
                await asyncio.sleep(retry * random.uniform(0.5, 1.0))
                retry = min(retry * 2, RETRY_MAX)

    async def _registered_loop(self) -> None:
        self.lease = await self.client.grant(self.ttl)
        renewed = time.monotonic()
        written = self.info()
        await self.client.put(self.key, member_value(written), self.lease)
        self.registered.set()
        refresh = self.ttl / 3
        while True:
            # Renewal is due by the clock, not by a quiet moment: a member applying a change
            # every few milliseconds never waits a whole refresh for one (and lost its key).
            wait = refresh - (time.monotonic() - renewed)
            if wait > 0:
                try:
                    async with asyncio.timeout(wait):
                        await self.changed.wait()
                except TimeoutError:
                    pass
            if time.monotonic() - renewed >= refresh:
                if await self.client.keep_alive(self.lease) <= 0:
                    raise EtcdError("the lease ran out")
                renewed = time.monotonic()
            self.changed.clear()
            now = self.info()
            if now != written:
                await self.client.put(self.key, member_value(now), self.lease)
                written = now

    async def close(self) -> None:
        """Leave the fleet at once (best effort: otherwise the lease runs out)."""
        if self.lease:
            try:
                await self.client.revoke(self.lease)
            except EtcdError as err:
                log.info("fleet: could not revoke the member lease (%s); it runs out in %ds",
                         err, MEMBER_TTL)  # fmt: skip
            self.lease = 0


def member_table(members: list[Member], version: int) -> list[Mapping[str, object]]:
    """The API's view of the members: each with how many versions it lags."""
    return [
        {
            "id": m.id,
            "admin": m.admin,
            "version": m.version,
            "lag": max(0, version - m.version),
            "workers": m.workers,
            "error": m.error,
        }
        for m in members
    ]
