"""The control plane: the mutable routing state of one process and the only writer of it.

Every change goes the same way, one at a time under a lock: refuse a manual traffic change
while a rollout drives the route -> check If-Match -> pure transition (control/state.py) ->
persist (atomic write) -> publish the new routing table to the data plane -> audit-log line.
So a change is in effect for new requests before the caller hears of it, and survives a crash
from the moment it is acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

from control.errors import ApiError
from control.state import RouteState, StateDoc, StateError
from control.store import FileStore
from proxy.config import Config
from proxy.router import RoutingTable
from proxy.server import ProxyServer
from proxy.shadow_config import shadow_to_obj

log = logging.getLogger("pointsman.api")

# Changes a running rollout owns on its route: made by hand meanwhile, they would fight it.
MANUAL_TRAFFIC_ACTIONS: Final = frozenset({"weights", "flip", "rollback"})


class ChangeGuard(Protocol):
    """Says why a manual change of a route's traffic must wait (the rollout runner)."""

    def blocks_manual_change(self, route: str) -> str | None: ...


class ControlPlane:
    """The mutable routing state of one process, and the only writer of it."""

    def __init__(self, config: Config, proxy: ProxyServer, store: FileStore, doc: StateDoc) -> None:
        self.config = config
        self.proxy = proxy
        self.store = store
        self.doc = doc
        self.lock = asyncio.Lock()
        self.last_change = doc.updated_at
        # What refuses a manual traffic change while a rollout drives the route; the rollout
        # runner registers itself (control/rollouts.py). None: nothing to refuse.
        self.guard: ChangeGuard | None = None
        # With workers (control/workers.py): sends the new state to every worker and returns
        # once all have applied it, so an answer means "in effect" for the whole host.
        self.after_publish: Callable[[], Awaitable[None]] | None = None
        # With workers: sums the workers' counters into this process's before they are read.
        self.refresh_counters: Callable[[], Awaitable[None]] = _nothing

    def snapshot(self) -> dict[str, object]:
        """The routing state as a worker takes it (proxy/worker.py `table_from`)."""
        doc = self.doc
        return {
            "version": doc.version,
            "weights": doc.weights(),
            "shadows": {
                route: [shadow_to_obj(s) for s in shadows]
                for route, shadows in doc.shadows().items()
            },
        }

    def publish(self) -> None:
        """Hand the data plane a routing table built from the current document."""
        doc = self.doc
        self.proxy.set_table(
            RoutingTable(
                self.config.routes,
                weights=doc.weights(),
                version=doc.version,
                shadows=doc.shadows(),
            )
        )

    async def change(
        self,
        actor: str,
        action: str,
        route: str,
        expected_version: int | None,
        transition: Callable[[StateDoc, float], StateDoc],
    ) -> StateDoc:
        async with self.lock:
            doc = self.doc
            if action in MANUAL_TRAFFIC_ACTIONS and self.guard is not None:
                # The rollout's own steps come as "rollout:<event>" actions and go through.
                reason = self.guard.blocks_manual_change(route)
                if reason is not None:
                    raise ApiError(409, reason, {"code": "rollout_in_progress"})
            self.check_version(expected_version)
            before = doc.route(route)
            now = time.time()
            try:
                new = transition(doc, now)
            except StateError as err:
                if err.code == "unchanged":
                    # Asking for what is already in force succeeds without a new version, so
                    # a deploy script can retry a flip, and the rollback target stays put.
                    return doc
                raise ApiError(err.status, err.message, {"code": err.code}) from None
            # Persist before publishing or answering: an acknowledged change survives a crash.
            await asyncio.to_thread(self.store.save, new)
            self.doc = new
            self.last_change = now
            self.publish()
            if self.after_publish is not None:
                await self.after_publish()
            after = new.route(route)
            await asyncio.to_thread(
                self.store.audit,
                actor,
                action,
                route,
                route_assignment(before),
                route_assignment(after),
                new.version,
                now,
            )
            log.info(
                "%s %s %s by %s: version %d, weights %s, shadows %s",
                action, route, "ok", actor, new.version, after.weights_dict(),
                [s.pool for s in after.shadows or ()],
            )  # fmt: skip
            return new

    def check_version(self, expected_version: int | None) -> None:
        """If-Match: refuse (409) unless the state is still at the version the caller saw."""
        if expected_version is not None and expected_version != self.doc.version:
            raise ApiError(409, "version conflict", {"current_version": self.doc.version})

    async def save_quietly(self, transition: Callable[[StateDoc, float], StateDoc]) -> None:
        """Persist a change that moves no traffic and needs no new version (a rollout's time in
        step): no publish, no audit line."""
        async with self.lock:
            new = transition(self.doc, time.time())
            await asyncio.to_thread(self.store.save, new)
            self.doc = new


async def _nothing() -> None:
    return None


def route_assignment(state: RouteState) -> dict[str, object]:
    return {
        "weights": state.weights_dict(),
        "live": state.live,
        "shadows": {s.pool: s.percent for s in state.shadows or ()},
    }
