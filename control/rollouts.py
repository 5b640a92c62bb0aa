"""The I/O shell around control/rollout.py: one driver task per running canary, counters read
from the data plane, weights applied through the control plane, webhooks, metrics.

A route's rollout lives in memory as an immutable `Rollout` and in the state document as its
persisted form. Every visible change (start, step, pause, promotion, rollback...) goes through
`ControlPlane.change` like a manual change: persisted, published, audited, version + 1. Quiet
progress (time in step, analysis windows) is saved after each analysis without a new version,
so a restart resumes the step with the time it had (minus at most one analysis interval).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Final

import aiohttp
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from control import rollout as machine
from control.etcd import EtcdError
from control.etcd_store import FenceLost
from control.leadership import Leadership
from control.members import Member
from control.plane import ControlPlane
from control.rollout import Counters, Decision, MismatchCounters, PoolCounters, Rollout
from control.state import StateDoc, rollout_progress, rollout_step
from proxy.stats import DURATION_BUCKETS
from proxy.tasks import cancel_and_wait

__all__ = ["RolloutCollector", "RolloutRunner"]

log = logging.getLogger("pointsman.rollout")

# Webhook events waiting per route; past this the oldest are dropped (and logged): a hook that
# is down for hours must not grow memory without bound.
WEBHOOK_QUEUE_LIMIT: Final = 1000
# First pause between webhook retries; doubled each time, capped by the next constant.
WEBHOOK_RETRY_DELAY: Final = 0.2
WEBHOOK_RETRY_DELAY_MAX: Final = 5.0
# A webhook answer is read only this far: hooks answer with a status, not a document.
WEBHOOK_MAX_ANSWER: Final = 64 * 1024
ACTIVE_PHASES: Final = frozenset({"running", "paused", "awaiting_confirm"})
# Phases that keep manual weight changes out (a paused or finished rollout lets them through).
BLOCKING_PHASES: Final = frozenset({"running", "awaiting_confirm"})
PHASES: Final = ("running", "paused", "awaiting_confirm", "promoted", "failed", "aborted")
# In a fleet: a member's counters are asked for with this timeout; one that does not answer
# in time makes that analysis inconclusive (it is not run), never a pass.
MEMBER_COUNTERS_TIMEOUT: Final = 2.0
# In a fleet: how long the driver waits after an inconclusive gathering before it tries again.
GATHER_RETRY: Final = 0.5


class Inconclusive(Exception):
    """The fleet's counters could not all be gathered: no analysis this time."""


class FleetRollouts:
    """What a runner needs in a fleet: the leader keys, the member list, the admin token."""

    def __init__(
        self,
        leadership: Leadership,
        members: Callable[[], Awaitable[list[Member]]],
        member_id: str,
        token: str | None,
    ) -> None:
        self.leadership = leadership
        self.members = members
        self.member_id = member_id
        self.token = token


class RolloutRunner:
    """Every route's rollout in this process."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        plane.guard = self  # manual weight changes on a route wait while its rollout runs
        self.rollouts: dict[str, Rollout] = {}  # current or last finished, by route
        self._drivers: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._hooks: dict[str, _HookSender] = {}
        self.promotions: dict[str, int] = {}
        self.rollbacks: dict[tuple[str, str], int] = {}  # (route, reason) -> count
        self._session: aiohttp.ClientSession | None = None
        # In a fleet (set by the service): one member drives each rollout; the others show
        # it from the state and take it over when its driver's lease runs out.
        self.fleet: FleetRollouts | None = None
        self._orphans: asyncio.Task[None] | None = None
        self._counted: dict[str, frozenset[str]] = {}  # route -> members its baseline sums

    # -- reading ---------------------------------------------------------------------------

    def blocks_manual_change(self, route: str) -> str | None:
        """Why a manual weight change on `route` must wait (None: it may go ahead)."""
        rollout = self.rollouts.get(route)
        if rollout is None or rollout.phase not in BLOCKING_PHASES:
            return None
        return (
            f"a rollout of {rollout.spec.candidate!r} is {rollout.phase.replace('_', ' ')} on "
            f"route {route!r}; pause or abort it first"
        )

    def status(self, route: str) -> dict[str, Any]:
        rollout = self.rollouts.get(route)
        if rollout is None:
            raise machine.RolloutError("no_rollout", f"route {route!r} has no rollout")
        return machine.status_obj(rollout, _now())

    def counters(self, route: str, candidate: str) -> Counters:
        """A snapshot of the data plane's cumulative counters for the route's pools."""
        proxy = self.plane.proxy
        pools: dict[str, PoolCounters] = {}
        for (route_name, pool), stats in list(proxy.metrics.pools.items()):
            if route_name != route:
                continue
            cumulative = tuple(stats.cumulative_buckets())
            pools[pool] = PoolCounters(sum(stats.status[1:]), stats.status[5], cumulative)
        mismatch = None
        shadow = proxy.shadows.get(route, candidate)
        if shadow is not None:
            mismatch = MismatchCounters(shadow.stats.compared, shadow.stats.mismatched)
        return Counters(pools=pools, bounds=DURATION_BUCKETS, mismatch=mismatch)

    # -- commands --------------------------------------------------------------------------

    async def host_counters(self, route: str, candidate: str) -> Counters:
        """`counters` of the whole host: with workers, their counters are summed first. In a
        fleet, the driver's analysis takes `fleet_counters` instead."""
        await self.plane.refresh_counters()
        return self.counters(route, candidate)

    async def analysis_counters(self, route: str, candidate: str) -> Counters:
        """What the analysis judges: this host's counters, or in a fleet every member's
        summed. When the members summed are not those the window started with (one joined
        or left), the window restarts at the new sum: its deltas would mean nothing."""
        if self.fleet is None:
            return await self.host_counters(route, candidate)
        counters, members = await self.fleet_counters(self.fleet, route, candidate)
        if self._counted.get(route, members) != members:
            rollout = self.rollouts.get(route)
            if rollout is not None:
                self.rollouts[route] = machine.rebase(rollout, counters, _now())
            before = sorted(self._counted[route])
            log.warning("rollout %s: the fleet's members changed (%s -> %s); analysis window"
                        " restarted", route, before, sorted(members))  # fmt: skip
        self._counted[route] = members
        return counters

    async def fleet_counters(
        self, fleet: FleetRollouts, route: str, candidate: str
    ) -> tuple[Counters, frozenset[str]]:
        """Every live member's counters for `route`, summed; Inconclusive if one of them
        does not answer (its traffic would be missing from the judgement)."""
        try:
            members = await fleet.members()
        except EtcdError as err:
            raise Inconclusive(f"the fleet's members cannot be listed: {err}") from None
        parts: list[Counters] = []
        for member in members:
            if member.id == fleet.member_id:
                parts.append(await self.host_counters(route, candidate))
                continue
            parts.append(await self._member_counters(fleet, member, route, candidate))
        if not any(m.id == fleet.member_id for m in members):
            parts.append(await self.host_counters(route, candidate))  # not registered yet
        ids = frozenset(m.id for m in members) | {fleet.member_id}
        return machine.merge_counters(parts), ids

    async def _member_counters(
        self, fleet: FleetRollouts, member: Member, route: str, candidate: str
    ) -> Counters:
        url = f"http://{member.admin}/v1/routes/{route}/counters"
        headers = {} if fleet.token is None else {"Authorization": f"Bearer {fleet.token}"}
        try:
            async with asyncio.timeout(MEMBER_COUNTERS_TIMEOUT):
                async with self.session().get(
                    url, params={"candidate": candidate}, headers=headers
                ) as resp:
                    if resp.status != 200:
                        raise Inconclusive(f"member {member.id} answered {resp.status}")
                    return machine.counters_from_obj(await resp.json())
        except (aiohttp.ClientError, TimeoutError, ValueError) as err:
            raise Inconclusive(f"member {member.id} ({member.admin}): {err!r}") from None

    async def start(self, route: str, body: object, actor: str = "rollout") -> dict[str, Any]:
        fleet = self.fleet
        if fleet is not None:
            await self._become_driver(fleet, route)
        try:
            return await self._start(route, body, actor)
        except BaseException:
            if fleet is not None and route not in self._drivers:
                await fleet.leadership.release(route)
            raise

    async def _start(self, route: str, body: object, actor: str) -> dict[str, Any]:
        async with self._lock(route):
            current = self.rollouts.get(route)
            if current is not None and current.phase in ACTIVE_PHASES:
                raise machine.RolloutError(
                    "rollout_exists",
                    f"route {route!r} already has a rollout of {current.spec.candidate!r} "
                    f"({current.phase.replace('_', ' ')}); abort it first",
                )
            state = self.plane.doc.route(route)
            pools = [name for name, _ in state.weights]
            spec = machine.parse_spec(body, pools)
            try:
                counters = await self.analysis_counters(route, spec.candidate)
            except Inconclusive as err:
                raise machine.RolloutError(
                    "fleet_incomplete", f"not started: the fleet's counters are incomplete: {err}"
                ) from None
            decision = machine.start(
                spec, state.weights_dict(), pools, counters, _now(), time.time()
            )
            await self._apply(route, decision, actor)
            self._ensure_driver(route)
            return machine.status_obj(decision.rollout, _now())

    async def command(self, route: str, name: str, actor: str = "rollout") -> dict[str, Any]:
        async with self._lock(route):
            rollout = self.rollouts.get(route)
            if rollout is None:
                raise machine.RolloutError("no_rollout", f"route {route!r} has no rollout")
            if self.fleet is not None and rollout.phase in ACTIVE_PHASES:
                if self.fleet.leadership.fence(route) is None:
                    raise await self._not_the_driver(self.fleet, route)
            now, wall = _now(), time.time()
            try:
                counters = await self.analysis_counters(route, rollout.spec.candidate)
            except Inconclusive:
                counters = await self.host_counters(route, rollout.spec.candidate)
                rollout = machine.rebase(rollout, counters, now)  # judged afresh from here
            if name == "pause":
                decision = machine.pause(rollout, now, wall)
            elif name == "resume":
                decision = machine.resume(rollout, counters, now, wall)
            elif name == "promote":
                decision = machine.promote(rollout, now, wall)
            else:
                decision = machine.abort(rollout, now, wall)
            await self._apply(route, decision, actor)
            self._poke(route)
            return machine.status_obj(decision.rollout, _now())

    # -- in a fleet ------------------------------------------------------------------------

    async def _become_driver(self, fleet: FleetRollouts, route: str) -> None:
        try:
            if await fleet.leadership.acquire(route):
                return
        except EtcdError as err:
            raise machine.RolloutError(
                "store_unreachable", f"no rollout without the state store (etcd): {err}"
            ) from None
        raise await self._not_the_driver(fleet, route)

    async def _not_the_driver(self, fleet: FleetRollouts, route: str) -> machine.RolloutError:
        try:
            holder = await fleet.leadership.holder(route)
            members = {m.id: m.admin for m in await fleet.members()}
        except EtcdError:
            holder, members = None, {}
        where = "no member (its driver's lease ran out; another takes it over)"
        if holder is not None:
            where = f"member {holder}" + (
                f" (admin {members[holder]})" if holder in members else ""
            )
        return machine.RolloutError(
            "not_the_driver",
            f"the rollout of route {route!r} is driven by {where}; send commands there",
        )

    def start_fleet(self, fleet: FleetRollouts) -> None:
        """In a fleet: follow the rollouts in the state and take over those whose driver is
        gone (its leader key expired), at the step they are at."""
        self.fleet = fleet
        fleet.leadership.on_lost = self._lost
        self._orphans = asyncio.get_running_loop().create_task(self._adopt_orphans(fleet))

    def _lost(self, route: str) -> None:
        task = self._drivers.pop(route, None)
        if task is not None:
            task.cancel()

    def follow_state(self) -> dict[str, Rollout]:
        """In a fleet: take the rollouts this member does not drive from the state (what
        their drivers last wrote), so status and the manual-change guard show them. Returns
        them by route."""
        followed: dict[str, Rollout] = {}
        if self.fleet is None:
            return followed
        for route, state in self.plane.doc.routes:
            if state.rollout is None or self.fleet.leadership.fence(route) is not None:
                continue
            try:
                rollout = machine.from_json_obj(state.rollout, _now(), f"state {route}.rollout")
            except ValueError as err:
                log.error("rollout of route %s not followed: %s", route, err)
                continue
            self.rollouts[route] = followed[route] = rollout
        return followed

    async def _adopt_orphans(self, fleet: FleetRollouts) -> None:
        period = fleet.leadership.ttl / 2
        while True:
            for route, rollout in self.follow_state().items():
                driver = self._drivers.get(route)
                if rollout.phase not in ACTIVE_PHASES or (driver is not None and not driver.done()):
                    continue
                try:
                    if not await fleet.leadership.acquire(route):
                        continue
                except EtcdError as err:
                    log.warning("rollout %s: cannot ask who drives it: %s", route, err)
                    continue
                await self._resume(route, rollout, "taken over")
            await asyncio.sleep(period)

    async def _resume(self, route: str, rollout: Rollout, how: str) -> None:
        if rollout.phase in ACTIVE_PHASES:
            try:
                counters = await self.analysis_counters(route, rollout.spec.candidate)
            except Inconclusive:
                counters = await self.host_counters(route, rollout.spec.candidate)
            rollout = machine.rebase(rollout, counters, _now())
            log.info(
                "rollout %s %s: %s at step %d, %.1fs in step", route, how, rollout.phase,
                rollout.step_index, machine.time_in_step(rollout, _now()),
            )  # fmt: skip
        self.rollouts[route] = rollout
        if rollout.phase in ACTIVE_PHASES:
            self._ensure_driver(route)
            if rollout.phase == "awaiting_confirm" and rollout.spec.webhooks is not None:
                sender = self._hooks[route] = _HookSender(self, route)
                detail = (
                    "asked again after a restart" if how == "resumed" else f"asked again ({how})"
                )
                ask = machine.Event(
                    "confirm", rollout.step_index, rollout.weights, time.time(), detail
                )
                sender.put(rollout, ask)

    # -- the driver ------------------------------------------------------------------------

    def _lock(self, route: str) -> asyncio.Lock:
        lock = self._locks.get(route)
        if lock is None:
            lock = self._locks[route] = asyncio.Lock()
        return lock

    def _poke(self, route: str) -> None:
        event = self._wake.get(route)
        if event is not None:
            event.set()

    def _ensure_driver(self, route: str) -> None:
        task = self._drivers.get(route)
        if task is None or task.done():
            self._wake[route] = asyncio.Event()
            self._drivers[route] = asyncio.get_running_loop().create_task(self._drive(route))

    async def _drive(self, route: str) -> None:
        """Sleep until the machine has something to do (or a command pokes it), then tick."""
        wake = self._wake[route]
        while True:
            rollout = self.rollouts.get(route)
            if rollout is None or rollout.phase not in ACTIVE_PHASES:
                if self.fleet is not None:
                    await self.fleet.leadership.release(route)  # finished: nothing to drive
                return
            delay = machine.due(rollout, _now()) - _now()
            if math.isinf(delay):
                await wake.wait()
                wake.clear()
                continue
            if delay > 0:
                try:
                    async with asyncio.timeout(delay):
                        await wake.wait()
                    wake.clear()
                    continue  # a command changed the rollout: look again
                except TimeoutError:
                    pass
            async with self._lock(route):
                rollout = self.rollouts[route]
                if rollout.phase != "running":
                    continue
                try:
                    counters = await self.analysis_counters(route, rollout.spec.candidate)
                    rollout = self.rollouts[route]  # rebased if the members changed
                    decision = machine.tick(rollout, counters, _now(), time.time())
                    await self._apply(route, decision)
                except Inconclusive as err:
                    log.warning("rollout %s: analysis inconclusive, not run: %s", route, err)
                    await asyncio.sleep(GATHER_RETRY)
                except machine.RolloutError as err:
                    if err.code == "not_the_driver":
                        return  # another member drives it now
                    log.exception("rollout on route %s: tick failed", route)
                    await asyncio.sleep(1.0)
                except Exception:
                    # Never leave a ramp half-driven silently: log, wait a moment, try again.
                    log.exception("rollout on route %s: tick failed", route)
                    await asyncio.sleep(1.0)

    async def _apply(self, route: str, decision: Decision, actor: str = "rollout") -> None:
        """Persist and publish the decision, then hand its events to the webhook sender."""
        before = self.rollouts.get(route)
        rollout = decision.rollout
        obj = machine.to_json_obj(rollout, _now())
        visible = (
            decision.weights is not None
            or bool(decision.events)
            or before is None
            or before.phase != rollout.phase
        )
        if visible:
            action = "rollout:" + (decision.events[-1].event if decision.events else rollout.phase)
            weights = decision.weights
            fence = None if self.fleet is None else self.fleet.leadership.fence(route)
            if self.fleet is not None and fence is None:
                raise await self._not_the_driver(self.fleet, route)
            try:
                await self.plane.change(
                    actor, action, route, None,
                    lambda doc, now: rollout_step(doc, route, weights, obj, now), fence,
                )  # fmt: skip
            except FenceLost:
                assert self.fleet is not None
                log.error("rollout %s: step not written: this member lost the lease it drove"
                          " the rollout with", route)  # fmt: skip
                await self.fleet.leadership.release(route)
                self._drivers.pop(route, None)
                raise await self._not_the_driver(self.fleet, route) from None
        else:
            await self._save_progress(route, obj)
        self.rollouts[route] = rollout
        for event in decision.events:
            log.info("rollout %s: %s (step %d) %s", route, event.event, event.step, event.detail)
            if event.event == "promoted":
                self.promotions[route] = self.promotions.get(route, 0) + 1
            elif event.event in ("rolled_back", "aborted"):
                reason = "aborted" if event.event == "aborted" else _reason_kind(rollout)
                self.rollbacks[(route, reason)] = self.rollbacks.get((route, reason), 0) + 1
        if rollout.spec.webhooks is not None and decision.events:
            sender = self._hooks.get(route)
            if sender is None or sender.closed:
                sender = self._hooks[route] = _HookSender(self, route)
            for event in decision.events:
                sender.put(rollout, event)

    async def confirmed(self, route: str, ok: bool, detail: str) -> None:
        """The confirm hook's answer, from the webhook sender."""
        async with self._lock(route):
            rollout = self.rollouts.get(route)
            if rollout is None or rollout.phase != "awaiting_confirm":
                return
            counters = await self.host_counters(route, rollout.spec.candidate)
            decision = machine.confirmed(rollout, ok, detail, counters, _now(), time.time())
            await self._apply(route, decision)
            self._poke(route)

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    # -- lifecycle -------------------------------------------------------------------------

    async def restore(self) -> None:
        """Pick up the rollouts of the persisted state (at start-up): a running one continues
        its step with the time it had; its analysis window restarts with this process's
        counters. One whose confirm hook was pending asks the hook again."""
        if self.plane.fleet is not None:
            return  # in a fleet the orphan loop resumes what no live member drives
        for route, state in self.plane.doc.routes:
            if state.rollout is None:
                continue
            try:
                rollout = machine.from_json_obj(state.rollout, _now(), f"state {route}.rollout")
            except ValueError as err:
                log.error("rollout of route %s not resumed: %s", route, err)
                continue
            await self._resume(route, rollout, "resumed")

    async def close(self) -> None:
        """Save each running rollout's time in step, then stop drivers and webhook senders."""
        for route, rollout in list(self.rollouts.items()):
            if rollout.phase in ACTIVE_PHASES:
                try:
                    await self._save_progress(route, machine.to_json_obj(rollout, _now()))
                except OSError as err:
                    log.error("rollout %s: progress not saved at shutdown: %s", route, err)
        await cancel_and_wait([self._orphans, *self._drivers.values(),
                               *(s.task for s in self._hooks.values())])  # fmt: skip
        self._orphans = None
        if self.fleet is not None:
            await self.fleet.leadership.close()  # the others take over at once, not after the TTL
        self._drivers.clear()
        self._hooks.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _save_progress(self, route: str, obj: dict[str, Any]) -> None:
        def transition(doc: StateDoc, now: float) -> StateDoc:
            return rollout_progress(doc, route, obj, now)

        await self.plane.save_quietly(transition)


def _now() -> float:
    return asyncio.get_running_loop().time()


def _reason_kind(rollout: Rollout) -> str:
    """The check that failed, as a metric label (error_rate, p99_ms, mismatch_rate, ...)."""
    analysis = rollout.last_analysis
    if analysis is not None:
        for check in analysis.checks:
            if check.passed is False:
                return check.name
    return "other"


class _HookSender:
    """Delivers one route's webhook events in order, each with a timeout and bounded retries.
    A `confirm` event calls the confirm hook and feeds its answer back to the runner."""

    def __init__(self, runner: RolloutRunner, route: str) -> None:
        self.runner = runner
        self.route = route
        self.queue: asyncio.Queue[tuple[Rollout, machine.Event]] = asyncio.Queue()
        self.closed = False
        self.task: asyncio.Task[None] | None = asyncio.get_running_loop().create_task(self._run())

    def put(self, rollout: Rollout, event: machine.Event) -> None:
        if self.queue.qsize() >= WEBHOOK_QUEUE_LIMIT:
            dropped = self.queue.get_nowait()
            log.warning("rollout %s: webhook queue full, dropped %s", self.route, dropped[1].event)
        self.queue.put_nowait((rollout, event))

    async def _run(self) -> None:
        try:
            while True:
                rollout, event = await self.queue.get()
                hooks = rollout.spec.webhooks
                if hooks is None:
                    continue
                body = {
                    "event": event.event,
                    "route": self.route,
                    "candidate": rollout.spec.candidate,
                    "stable": rollout.spec.stable,
                    "step": event.step,
                    "weights": dict(event.weights),
                    "detail": event.detail,
                    "at": event.at,
                    "phase": rollout.phase,
                }
                try:
                    await self._deliver(event, body, hooks)
                except Exception:
                    # One event's trouble (a state file that cannot be written, say) must not
                    # silence the ones after it.
                    log.exception("rollout %s: webhook %s", self.route, event.event)
        finally:
            self.closed = True

    async def _deliver(
        self, event: machine.Event, body: dict[str, Any], hooks: machine.WebhookSpec
    ) -> None:
        if event.event == "confirm":
            if hooks.confirm_url is not None:
                ok, detail = await self._post(hooks.confirm_url, body, hooks, confirm=True)
                await self.runner.confirmed(self.route, ok, detail)
        elif hooks.url is not None:
            ok, detail = await self._post(hooks.url, body, hooks, confirm=False)
            if not ok:
                log.warning("rollout %s: webhook %s failed: %s", self.route, event.event, detail)

    async def _post(
        self, url: str, body: dict[str, Any], hooks: machine.WebhookSpec, confirm: bool
    ) -> tuple[bool, str]:
        """(2xx?, what happened). A non-2xx answer from the confirm hook is its refusal and is
        not retried; failures to reach a hook are retried `hooks.retries` times."""
        delay = WEBHOOK_RETRY_DELAY
        detail = ""
        for attempt in range(hooks.retries + 1):
            try:
                async with asyncio.timeout(hooks.timeout):
                    async with self.runner.session().post(url, json=body) as answer:
                        text = (await answer.content.read(WEBHOOK_MAX_ANSWER)).decode(
                            "utf-8", "replace"
                        )
                        if 200 <= answer.status < 300:
                            return True, f"{answer.status}"
                        detail = f"HTTP {answer.status} {text.strip()[:200]}".strip()
                        if confirm or answer.status < 500:
                            return False, detail
            except (TimeoutError, aiohttp.ClientError, OSError) as err:
                detail = f"{type(err).__name__}: {err}".strip()
            if attempt < hooks.retries:
                await asyncio.sleep(delay)
                delay = min(delay * 2, WEBHOOK_RETRY_DELAY_MAX)
        return False, detail or "no answer"


class RolloutCollector(Collector):
    """Rollout phase, step and candidate weight; the last analysis's values with their
    thresholds (so a dashboard can draw both lines); promotions and rollbacks by reason."""

    def __init__(self, runner: RolloutRunner) -> None:
        self.runner = runner

    def collect(self) -> Iterator[Metric]:
        phase = GaugeMetricFamily(
            "pointsman_rollout_phase", "1 for the rollout's current phase.",
            labels=["route", "phase"],
        )  # fmt: skip
        step = GaugeMetricFamily(
            "pointsman_rollout_step", "Index of the rollout's current step (-1: none yet).",
            labels=["route"],
        )  # fmt: skip
        weight = GaugeMetricFamily(
            "pointsman_rollout_candidate_percent",
            "The candidate's share of traffic set by the rollout, percent.",
            labels=["route", "candidate"],
        )
        value = GaugeMetricFamily(
            "pointsman_rollout_analysis_value",
            "The last analysis's measured value per check (error_rate, p99_ms, ...).",
            labels=["route", "check"],
        )
        threshold = GaugeMetricFamily(
            "pointsman_rollout_analysis_threshold",
            "The threshold of each check of the last analysis.",
            labels=["route", "check"],
        )
        promotions = CounterMetricFamily(
            "pointsman_rollout_promotions", "Rollouts promoted.", labels=["route"]
        )
        rollbacks = CounterMetricFamily(
            "pointsman_rollout_rollbacks",
            "Rollouts rolled back, by reason (the failed check, or aborted).",
            labels=["route", "reason"],
        )
        runner = self.runner
        for route, rollout in list(runner.rollouts.items()):
            for name in PHASES:
                phase.add_metric([route, name], 1.0 if rollout.phase == name else 0.0)
            step.add_metric([route], rollout.step_index)
            weights = dict(rollout.weights)
            total = sum(weights.values())
            share = 100.0 * weights.get(rollout.spec.candidate, 0) / total if total else 0.0
            weight.add_metric([route, rollout.spec.candidate], share)
            if rollout.last_analysis is not None:
                for check in rollout.last_analysis.checks:
                    if check.value is not None:
                        value.add_metric([route, check.name], check.value)
                    if check.threshold is not None:
                        threshold.add_metric([route, check.name], check.threshold)
        for route, count in list(runner.promotions.items()):
            promotions.add_metric([route], count)
        for (route, reason), count in list(runner.rollbacks.items()):
            rollbacks.add_metric([route, reason], count)
        yield from (phase, step, weight, value, threshold, promotions, rollbacks)
