"""The control plane: the mutable routing state of one process and the only writer of it.

Every change goes the same way, one at a time under a lock: refuse a manual traffic change
while a rollout drives the route -> check If-Match -> pure transition (control/state.py) ->
at once: persist (atomic write, then the audit-log line, in a thread), push the state to the
workers, publish the new routing table to this process's data plane -> wait for the save and
every worker's ack -> answer. So a change is in effect for new requests before the caller hears
of it, and survives a crash from the moment it is acknowledged. A save that fails takes the
change back everywhere before the answer (500).

In a fleet (`state.store: etcd`) the write comes first: one etcd transaction comparing the
state this member last applied, with the audit record (control/etcd_store.py); only once etcd
has it does this host apply it (and keep its local copy). A write that loses to another
member's adopts the state in etcd and is decided again: refused with 409 under If-Match,
else computed afresh on the current state. etcd unreachable: 503, nothing applied anywhere.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

from control.discovery import Discovery
from control.errors import ApiError
from control.etcd import EtcdError, EtcdUnavailable
from control.etcd_store import EtcdStore, Fence, StateConflict
from control.fleet import FleetSync
from control.state import RouteState, StateDoc, StateError, reconcile
from control.store import FileStore, audit_record
from proxy.config import Config, routes_with_pools
from proxy.router import RoutingTable
from proxy.server import ProxyServer
from proxy.shadow_config import shadow_to_obj
from proxy.tasks import cancel_and_wait

log = logging.getLogger("pointsman.api")

# Changes a running rollout owns on its route: made by hand meanwhile, they would fight it.
MANUAL_TRAFFIC_ACTIONS: Final = frozenset({"weights", "flip", "rollback"})
# A fleet write that loses to another member's is computed again on the newer state; members
# writing without If-Match in a tight loop could keep beating it, so give up after this many.
FLEET_WRITE_ATTEMPTS: Final = 5


class ChangeGuard(Protocol):
    """Says why a manual change of a route's traffic must wait (the rollout runner)."""

    def blocks_manual_change(self, route: str) -> str | None: ...


class ControlPlane:
    """The mutable routing state of one process, and the only writer of it."""

    def __init__(
        self,
        config: Config,
        proxy: ProxyServer,
        store: FileStore,
        doc: StateDoc,
        fleet: EtcdStore | None = None,
    ) -> None:
        self.config = config
        self.proxy = proxy
        self.store = store  # the state file; in a fleet, the local copy of the applied state
        self.fleet = fleet  # the fleet's state in etcd, or None (the file store)
        # False while a member serves a local copy etcd has not confirmed (it started while
        # etcd was down): the first state read from etcd is applied whatever its version.
        self.fleet_confirmed = True
        self.fleet_sync: FleetSync | None = None  # its status goes to /healthz and /metrics
        # The version in force on this whole host (every worker acked it): what the member
        # key reports, so `?wait=fleet` never counts a host whose workers are still behind.
        self.installed_version = doc.version
        # Called once a fleet state is in force here (the member key reports it).
        self.on_install: Callable[[], None] = _no_news
        self.doc = doc
        self.lock = asyncio.Lock()
        self.last_change = doc.updated_at
        # What refuses a manual traffic change while a rollout drives the route; the rollout
        # runner registers itself (control/rollouts.py). None: nothing to refuse.
        self.guard: ChangeGuard | None = None
        # With workers (control/workers.py): sends the current state to every worker at once;
        # awaiting what it returns waits until all have applied it, so an answer means "in
        # effect" for the whole host.
        self.push_to_workers: Callable[[], Awaitable[None]] = _nothing
        # With workers: sums the workers' counters into this process's before they are read.
        self.refresh_counters: Callable[[], Awaitable[None]] = _nothing
        # With workers: sends a reloaded config (and the current state) to every worker;
        # awaiting what it returns waits until all run it.
        self.push_config_to_workers: Callable[[Config], Awaitable[None]] = _no_config
        # With workers: the current state to every worker even at the same version (the
        # addresses of a DNS endpoint changed).
        self.push_resolved_to_workers: Callable[[], Awaitable[None]] = _nothing
        # The DNS endpoints the state names and their addresses now (control/discovery.py).
        self.discovery = Discovery(config.dns, self._dns_changed)
        self._republish: asyncio.Task[None] | None = None

    def _dns_changed(self) -> None:
        """A DNS endpoint's addresses changed: a new table for the whole host, once the
        change under way (if any) is done; changes in a burst make one new table."""
        if self._republish is None or self._republish.done():
            self._republish = asyncio.get_running_loop().create_task(
                self._publish_resolved(), name="dns-publish"
            )

    async def _publish_resolved(self) -> None:
        async with self.lock:
            self.publish()
            await self.push_resolved_to_workers()

    async def close(self) -> None:
        await cancel_and_wait([self._republish])
        await self.discovery.close()

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
            "pools": doc.pools(),
            "resolved": self.discovery.resolved,
        }

    def publish(self) -> None:
        """Hand the data plane a routing table built from the current document."""
        doc = self.doc
        self.proxy.set_table(
            RoutingTable(
                routes_with_pools(self.config.routes, doc.pools(), self.discovery.resolved),
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
        fence: Fence | None = None,
    ) -> StateDoc:
        """One change, as the module docstring says. `fence`: in a fleet, the rollout
        driver's leader key; the write lands only while it holds (else FenceLost)."""
        async with self.lock:
            for _ in range(FLEET_WRITE_ATTEMPTS):
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
                    if err.code != "unchanged":
                        raise ApiError(err.status, err.message, {"code": err.code}) from None
                    # Asking for what is already in force succeeds without a new version,
                    # so a deploy script can retry a flip, and the rollback target stays.
                    # In a fleet only if this member's state is still the fleet's.
                    if self.fleet is not None and not await self._confirmed(self.fleet):
                        continue
                    return doc
                after = new.route(route)
                await self.discover(doc, new)
                record = (actor, action, route, route_assignment(before), route_assignment(after))
                if self.fleet is None:
                    await self._commit(doc, new, record, now)
                elif not await self._commit_to_fleet(self.fleet, new, record, now, fence):
                    continue  # another member wrote first: decide again on its state
                self.last_change = now
                await self.discover(new)  # names only the old state used: no longer watched
                log.info(
                    "%s %s %s by %s: version %d, weights %s, shadows %s",
                    action, route, "ok", actor, new.version, after.weights_dict(),
                    [s.pool for s in after.shadows or ()],
                )  # fmt: skip
                return new
            raise ApiError(
                409,
                f"the state kept changing in the fleet ({FLEET_WRITE_ATTEMPTS} writes lost to"
                " other members' writes); try again",
                {"code": "version_conflict", "current_version": self.doc.version},
            )

    async def reload(self, config: Config, actor: str) -> tuple[StateDoc, list[str]]:
        """Serve `config` (already checked, its restart-only settings as before) from now on:
        the state is fitted to it as at start, and the fitted state is saved (in a fleet:
        written to etcd first, like any change) before config and state reach the data
        plane together. Returns the state in force and what fitting it adjusted."""
        async with self.lock:
            for _ in range(FLEET_WRITE_ATTEMPTS):
                now = time.time()
                fitted, warnings = reconcile(self.doc, config.routes, now)
                record = (actor, "reload", "*", None, None)
                if fitted is self.doc or self.fleet is None:
                    break
                try:
                    audit = audit_record(*record, fitted.version, now)
                    await self.fleet.save(fitted, audit)
                    break
                except StateConflict as conflict:
                    problem = await self._apply(conflict.current, conflict.state_revision)
                    if problem is not None:
                        details = {"code": "config_differs", "current_version": self.doc.version}
                        raise ApiError(409, problem, details) from None
                except EtcdError as err:
                    raise ApiError(
                        503,
                        f"the state store (etcd) did not take the fitted state, so the config"
                        f" was not reloaded: {err}",
                        {"code": _store_code(err), "current_version": self.doc.version},
                    ) from None
            else:
                raise ApiError(
                    409,
                    "the state kept changing in the fleet during the reload; try again",
                    {"code": "version_conflict", "current_version": self.doc.version},
                )
            before, old_config = self.doc, self.config
            await self.discover(before, fitted)
            saved = None
            if fitted is not before and self.fleet is None:
                loop = asyncio.get_running_loop()
                saved = loop.run_in_executor(None, self._save, fitted, record, now)
            self.config, self.doc = config, fitted
            self.proxy.use_config(config)
            pushed = self.push_config_to_workers(config)
            self.publish()
            try:
                await pushed
            finally:
                not_saved = None if saved is None else (await saved)[0]
            if not_saved is not None:
                log.error("reload: version %d could not be saved (%s): the old config stays",
                          fitted.version, not_saved)  # fmt: skip
                self.config, self.doc = old_config, before
                self.proxy.use_config(old_config)
                pushed = self.push_config_to_workers(old_config)
                self.publish()
                await pushed
                raise ApiError(
                    500,
                    f"the fitted state could not be saved, so the config was not reloaded:"
                    f" {not_saved}",
                    {"code": "state_not_saved", "current_version": before.version},
                )
            await self.discover(fitted)
            if self.fleet is not None:
                await asyncio.get_running_loop().run_in_executor(None, self._keep_copy, fitted)
                self.installed_version = fitted.version
                self.on_install()
            if fitted is not before:
                self.last_change = fitted.updated_at
            log.info("reload by %s: %s in force, state version %d", actor, config.source,
                     fitted.version)  # fmt: skip
            return fitted, warnings

    async def discover(self, *docs: StateDoc) -> None:
        """Watch the DNS names `docs` use, before a state is in force, so that its table has
        their addresses (a new name is asked once; a failure leaves it unresolved, not
        fatal)."""
        try:
            await self.discovery.follow(*docs)
        except ValueError as err:
            log.error("%s: the names stay unresolved (the loop resolves them on connect)", err)

    async def _commit(
        self, doc: StateDoc, new: StateDoc, record: tuple[Any, ...], now: float
    ) -> None:
        """The file store: save, push and publish at once; a failed save is taken back."""
        # The save (two fsyncs and the audit line's), the workers' acks and this process's
        # new table are started together and awaited together: under load each waits
        # milliseconds for a core, and in a row they made a flip's answer 1.5x slower
        # (benchmarks/flips.py). Nobody hears of the change before all are done; a crash
        # before the save ends loses it, the workers' copy with it (they exit with the
        # master), as an unanswered request may be lost.
        saved = asyncio.get_running_loop().run_in_executor(None, self._save, new, record, now)
        self.doc = new
        pushed = self.push_to_workers()  # sent now; awaiting it waits for the acks
        self.publish()
        try:
            await pushed
        except BaseException:
            await self._settle(saved, doc)  # keeps the lock until the save thread is done
            raise
        not_saved = await self._settle(saved, doc)
        if not_saved is not None:
            raise ApiError(
                500,
                f"the change could not be saved, so it was not made: {not_saved}",
                {"code": "state_not_saved", "current_version": doc.version},
            )

    async def _commit_to_fleet(
        self,
        fleet: EtcdStore,
        new: StateDoc,
        record: tuple[Any, ...],
        now: float,
        fence: Fence | None,
    ) -> bool:
        """Write to etcd, then apply here. False: another member wrote first; its state is
        adopted (so the caller decides again)."""
        actor, action, route, before, after = record
        audit = audit_record(actor, action, route, before, after, new.version, now)
        try:
            await fleet.save(new, audit, fence)
        except StateConflict as conflict:
            problem = await self._apply(conflict.current, conflict.state_revision)
            if problem is not None:
                details = {"code": "config_differs", "current_version": self.doc.version}
                raise ApiError(409, problem, details) from None
            return False
        except EtcdUnavailable as err:
            raise ApiError(
                503,
                f"the state store (etcd) is unreachable, so the change is not in effect here:"
                f" {err}. If etcd got it before the connection broke, it takes effect when"
                f" this member syncs; a retry with If-Match: {self.doc.version} is safe",
                {"code": "store_unreachable", "current_version": self.doc.version},
            ) from None
        except EtcdError as err:
            raise ApiError(
                503,
                f"the state store (etcd) refused the change, so it was not made: {err}",
                {"code": "store_refused", "current_version": self.doc.version},
            ) from None
        await self._install(new)
        return True

    async def _confirmed(self, fleet: EtcdStore) -> bool:
        """Whether the state this member serves is still the fleet's; if not, adopt the
        fleet's (so the caller decides again). 503 when etcd cannot say."""
        try:
            newer = await fleet.newer()
        except EtcdError as err:
            raise ApiError(
                503,
                f"the state store (etcd) cannot confirm the state this change rests on: {err}",
                {"code": _store_code(err), "current_version": self.doc.version},
            ) from None
        if newer is None:
            return True
        problem = await self._apply(newer.doc, newer.state_revision)
        if problem is not None:
            details = {"code": "config_differs", "current_version": self.doc.version}
            raise ApiError(409, problem, details)
        return False

    async def apply_from_fleet(self, doc: StateDoc, state_revision: int) -> str | None:
        """A state another member wrote (control/fleet.py). Returns why it was not applied."""
        async with self.lock:
            return await self._apply(doc, state_revision)

    async def _apply(self, doc: StateDoc, state_revision: int) -> str | None:
        """Adopt a state read from etcd, under the lock: newer ones only, and only if it
        fits this member's config (every member of a fleet runs the same routes and pools;
        one that does not would drop or invent state if it applied and wrote it)."""
        assert self.fleet is not None
        if doc.version <= self.doc.version and self.fleet_confirmed:
            return None  # ours (its watch event), or older than what a write already adopted
        fitted, differences = reconcile(doc, self.config.routes)
        if fitted is not doc:
            return (
                f"the fleet's state (version {doc.version}) does not fit this member's config,"
                f" so it is not applied: {'; '.join(differences)}"
            )
        self.fleet.state_revision = max(self.fleet.state_revision, state_revision)
        self.fleet_confirmed = True
        await self._install(doc)
        self.last_change = doc.updated_at
        log.info("fleet: applied version %d", doc.version)
        return None

    async def _install(self, new: StateDoc) -> None:
        """In a fleet: put a state etcd holds in force on this host; keep the local copy."""
        await self.discover(new)  # etcd has it: it is going in force
        self.doc = new
        pushed = self.push_to_workers()
        self.publish()
        copied = asyncio.get_running_loop().run_in_executor(None, self._keep_copy, new)
        try:
            await pushed
        finally:
            await copied
        self.installed_version = new.version
        self.on_install()

    def _keep_copy(self, doc: StateDoc) -> None:
        """In a thread: the local copy a member serves if it starts while etcd is down. Not
        having it costs only that, so a failure is logged, not raised."""
        try:
            self.store.save(doc)
        except Exception:
            log.exception("fleet: version %d is in force, but its local copy at %s was not"
                          " written", doc.version, self.store.path)  # fmt: skip

    def _save(self, new: StateDoc, record: tuple[Any, ...], now: float) -> tuple[str | None, bool]:
        """In a thread: save the document, then append its audit line. Returns (why the save
        failed or None, whether the audit line was written); raises nothing, so that awaiting
        it never replaces a cancellation."""
        try:
            self.store.save(new)
        except Exception as err:  # any reason, the document on disk is still the old one
            return f"{type(err).__name__}: {err}", False
        actor, action, route, before, after = record
        try:
            self.store.audit(actor, action, route, before, after, new.version, now)
        except Exception:
            log.exception("version %d is saved and in force, but its audit line was not written",
                          new.version)  # fmt: skip
            return None, False
        return None, True

    async def _settle(
        self, saved: asyncio.Future[tuple[str | None, bool]], before: StateDoc
    ) -> str | None:
        """Wait for the save; if it failed, take the change back here and on every worker.
        Returns why the save failed, or None."""
        not_saved, _ = await saved
        if not_saved is None:
            return None
        log.error("version %d could not be saved (%s): taking the change back",
                  self.doc.version, not_saved)  # fmt: skip
        self.doc = before
        pushed = self.push_to_workers()
        self.publish()
        await pushed
        return not_saved

    def check_version(self, expected_version: int | None) -> None:
        """If-Match: refuse (409) unless the state is still at the version the caller saw."""
        if expected_version is not None and expected_version != self.doc.version:
            raise ApiError(409, "version conflict", {"current_version": self.doc.version})

    async def save_quietly(self, transition: Callable[[StateDoc, float], StateDoc]) -> None:
        """Persist a change that moves no traffic and needs no new version (a rollout's time in
        step): no publish, no audit line."""
        async with self.lock:
            new = transition(self.doc, time.time())
            # In a fleet too only the local copy: the same version in etcd with other
            # content would be ignored by every other member.
            await asyncio.to_thread(self.store.save, new)
            self.doc = new


def _store_code(err: EtcdError) -> str:
    return "store_unreachable" if isinstance(err, EtcdUnavailable) else "store_refused"


async def _nothing() -> None:
    return None


async def _no_config(config: Config) -> None:
    return None


def _no_news() -> None:
    return None


def route_assignment(state: RouteState) -> dict[str, object]:
    return {
        "weights": state.weights_dict(),
        "live": state.live,
        "shadows": {s.pool: s.percent for s in state.shadows or ()},
        "endpoints": {
            p.name: [f"{e} (draining)" if e in p.draining else e for e in p.endpoints]
            for p in state.pools or ()
        },
    }
