"""Who drives a route's rollout in a fleet: the member holding `<prefix>/leaders/<route>`, a
key created only if absent and bound to an etcd lease that its holder renews. A member that
dies or stalls past the lease's TTL loses the key (etcd deletes it), and another member may
take it. Every write of the driver is fenced on the key's revision (control/etcd_store.py
`Fence`): a stalled old driver that wakes up after losing the key cannot write a step.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from control.etcd import Compare, Delete, EtcdClient, EtcdError, Put
from control.etcd_store import Fence
from proxy.tasks import cancel_and_wait

__all__ = ["Leadership"]

log = logging.getLogger("pointsman.rollout")


@dataclass
class _Held:
    lease: int
    fence: Fence
    renewed: float  # monotonic time of the last successful grant or renewal
    task: asyncio.Task[None] | None = None


class Leadership:
    """The leader keys this member holds, renewed in the background; `on_lost(route)` when
    one is gone (lease ran out, or etcd says so)."""

    def __init__(
        self,
        client: EtcdClient,
        prefix: str,
        member_id: str,
        ttl: int,
        on_lost: Callable[[str], None] = lambda route: None,
    ) -> None:
        self.client = client
        self.prefix = prefix.rstrip("/")
        self.member_id = member_id
        self.ttl = ttl
        self.on_lost = on_lost
        self._held: dict[str, _Held] = {}

    def key(self, route: str) -> bytes:
        return f"{self.prefix}/leaders/{route}".encode()

    def fence(self, route: str) -> Fence | None:
        """The fence for this member's writes on `route`, or None if it does not lead it."""
        held = self._held.get(route)
        return None if held is None else held.fence

    async def acquire(self, route: str) -> bool:
        """Become the driver of `route` if nobody is. False: another member is."""
        if route in self._held:
            return True
        lease = await self.client.grant(self.ttl)
        key = self.key(route)
        value = orjson.dumps({"member": self.member_id})
        result = await self.client.txn([Compare(key, "CREATE", 0)], [Put(key, value, lease)])
        if not result.succeeded:
            await self.client.revoke(lease)
            return False
        held = _Held(lease, Fence(key, result.header.revision), time.monotonic())
        held.task = asyncio.create_task(self._renew(route, held), name=f"leader-{route}")
        self._held[route] = held
        log.info("rollout %s: this member drives it (lease %x, %ds)", route, lease, self.ttl)
        return True

    async def holder(self, route: str) -> str | None:
        """The member id driving `route`, or None."""
        _, kvs = await self.client.range(self.key(route))
        if not kvs:
            return None
        try:
            return str(orjson.loads(kvs[0].value)["member"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return "(unreadable leader key)"

    async def release(self, route: str) -> None:
        """Stop driving `route` and let the key go at once (best effort: else the TTL)."""
        held = self._held.pop(route, None)
        if held is None:
            return
        await cancel_and_wait([held.task])
        try:
            fence = held.fence
            await self.client.txn([Compare(fence.key, "MOD", fence.revision)], [Delete(fence.key)])
            await self.client.revoke(held.lease)
        except EtcdError as err:
            log.info("rollout %s: leader key not released (%s); it runs out in %ds",
                     route, err, self.ttl)  # fmt: skip

    async def close(self) -> None:
        for route in list(self._held):
            await self.release(route)

    async def _renew(self, route: str, held: _Held) -> None:
        """Renew every TTL/3. The lease is taken as lost when etcd says so, or when no renewal
        succeeded for a whole TTL (etcd may have let it run out meanwhile)."""
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                granted = await self.client.keep_alive(held.lease)
            except EtcdError as err:
                if time.monotonic() - held.renewed < self.ttl:
                    log.warning("rollout %s: lease not renewed (%s); retrying", route, err)
                    continue
                granted = 0
            if granted > 0:
                held.renewed = time.monotonic()
                continue
            if self._held.get(route) is held:
                del self._held[route]
                log.error("rollout %s: this member no longer drives it (its lease ran out)",
                          route)  # fmt: skip
                self.on_lost(route)
            return
