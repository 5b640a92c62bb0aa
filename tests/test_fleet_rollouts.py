"""Rollouts in a fleet, against a real etcd: exactly one member drives each rollout (an etcd
lease), its analysis judges the traffic of every member, the others show it and refuse to
drive it, a stalled driver's writes are fenced off, and when the driver dies another member
continues the same rollout at the step it was on."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from control.etcd import EtcdClient
from control.etcd_store import EtcdStore, Fence, FenceLost
from control.leadership import Leadership
from control.rollouts import RolloutRunner
from control.state import initial_state
from tests.conftest import config_for, free_port
from tests.etcd_server import EtcdServer
from tests.test_api import LIMIT, ROUTE, TOKEN, Running, assert_json_error
from tests.test_fleet_service import Fleet, fleet, registered
from tests.test_rollouts import Load, run_load, spec
from tests.test_service import Process

__all__ = ["fleet"]  # the fixture, imported for pytest

ROLLOUT = ROUTE + "/rollout"
PREFIX = "/pointsman/shop"

pytestmark = pytest.mark.timeout(90)


def runner_of(member: Running) -> RolloutRunner:
    runner = member.service.rollouts
    assert runner is not None
    return runner


async def status_until(
    member: Running, done: Callable[[dict[str, Any]], bool], limit: float = 20.0
) -> dict[str, Any]:
    """Poll the member's view of the rollout until `done(status)`. The rollout moves on the
    driver's clock, on another member: there is no local event to await."""
    deadline = time.monotonic() + limit
    while True:
        answer = await member.call("GET", ROLLOUT)
        if answer.status == 200 and done(answer.body):
            return dict(answer.body)
        assert time.monotonic() < deadline, f"timed out; last: {answer.status} {answer.text}"
        await asyncio.sleep(0.05)


async def test_one_member_drives_and_judges_the_traffic_of_every_member(fleet: Fleet) -> None:
    driver = await fleet.start("a")
    other = await fleet.start("b")
    await registered(driver)
    await registered(other)
    stop = asyncio.Event()
    load = Load()
    # All traffic reaches the fleet through the other member: judged on the driver's own
    # counters alone, every analysis would lack requests and the rollout would pause.
    loader = asyncio.create_task(run_load(other.proxy, stop, load))
    try:
        body = spec(steps=[50, 100], on_inconclusive="pause")
        started = await driver.call("POST", ROLLOUT, body)
        assert started.status == 201, started.text
        # The other member shows it, refuses to command it, and keeps manual changes out.
        shown = await status_until(other, lambda s: s["phase"] == "running")
        assert shown["candidate"] == "green"
        refused = await other.call("POST", ROLLOUT + "/pause")
        error = assert_json_error(refused, 409)
        assert error["detail"]["code"] == "not_the_driver"
        assert driver.admin.removeprefix("http://") in error["error"]
        manual = await other.call("PUT", ROUTE + "/weights", {"weights": {"blue": 1, "green": 1}})
        assert assert_json_error(manual, 409)["detail"]["code"] == "rollout_in_progress"
        final = await status_until(other, lambda s: s["phase"] not in ("running",))
    finally:
        stop.set()
        await loader
    assert final["phase"] == "promoted", final
    assert load.failures == []
    fleet_part = runner_of(other).fleet
    assert fleet_part is not None
    assert fleet_part.leadership.fence("shop") is None  # never drove it
    view = await other.call("GET", ROUTE)
    assert view.body["weights"] == {"blue": 0, "green": 100}


async def test_a_stalled_drivers_write_is_fenced_off_once_its_lease_ran_out(
    etcd: EtcdServer,
) -> None:
    client = EtcdClient([etcd.url], timeout=LIMIT)
    try:
        store = EtcdStore(client, PREFIX, "shop")
        doc = initial_state(
            config_for({"blue": ["127.0.0.1:1"], "green": ["127.0.0.1:2"]}).routes, 0.0
        )
        await store.create(doc)
        old = Leadership(client, PREFIX, "old", ttl=2)
        new = Leadership(client, PREFIX, "new", ttl=2)
        assert await old.acquire("shop")
        fence = old.fence("shop")
        assert fence is not None
        assert not await new.acquire("shop")  # held
        # The old driver stalls (as under SIGSTOP): nothing renews its lease.
        held = old._held["shop"]
        assert held.task is not None
        held.task.cancel()
        deadline = time.monotonic() + 10
        while not await new.acquire("shop"):  # etcd lets the lease run out after its TTL
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        assert await new.holder("shop") == "new"
        with pytest.raises(FenceLost):
            await store.save(replace(doc, version=doc.version + 1), b"{}", fence)
        # The new driver's fence holds; the state did not change in between.
        assert await store.save(replace(doc, version=doc.version + 1), b"{}", new.fence("shop"))
        assert isinstance(new.fence("shop"), Fence)
        await new.close()
    finally:
        await client.close()


def member_config(tmp_path: Path, name: str, etcd: EtcdServer, blue: str, green: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"""\
listen: 127.0.0.1:{free_port()}
admin: {{listen: "127.0.0.1:{free_port()}"}}
workers: 1
timeouts: {{grace: 1s}}
state:
  store: etcd
  endpoints: [{etcd.url}]
  prefix: {PREFIX}
  path: {tmp_path / name / "state.json"}
  leader_ttl: 2
routes:
  - name: shop
    hosts: ["*"]
    path_prefix: /
    pools:
      blue: {{endpoints: ["{blue}"]}}
      green: {{endpoints: ["{green}"]}}
    weights: {{blue: 100, green: 0}}
""")
    return path


def admin_of(config: Path) -> str:
    for line in config.read_text().splitlines():
        if line.startswith("admin:"):
            return "http://" + line.split('"')[1]
    raise AssertionError("no admin line")


@pytest.mark.parametrize("how", ["kill", "stop"])
async def test_when_the_driver_dies_or_stalls_another_member_continues_at_the_same_step(
    fleet: Fleet, tmp_path: Path, how: str
) -> None:
    config = member_config(tmp_path, "driver", fleet.etcd, fleet.blue.address, fleet.green.address)
    driver = Process(config, tmp_path / "driver.log", TOKEN)
    await driver.start()
    driver_admin = admin_of(config)
    try:
        await driver.wait_ready(driver_admin, fleet.session)
        other = await fleet.start("b")
        # A long step, so that the rollout is still at its first step when the driver goes.
        body = spec(steps=[10, 50, 100], step_interval="60s")
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with fleet.session.post(driver_admin + ROLLOUT, json=body, headers=headers) as r:
            assert r.status == 201, await r.text()
        shown = await status_until(other, lambda s: s["phase"] == "running")
        assert shown["step"] == 0
        assert driver.proc is not None
        went = time.monotonic()
        if how == "kill":
            await driver.kill()
        else:
            driver.proc.send_signal(signal.SIGSTOP)
        runner = runner_of(other)
        assert runner.fleet is not None
        leadership = runner.fleet.leadership
        while leadership.fence("shop") is None:
            assert time.monotonic() - went < 15, "nobody took the rollout over"
            await asyncio.sleep(0.05)
        took = time.monotonic() - went
        # Lease TTL (2 s) + the other member's look for orphans (every TTL / 2) at most.
        assert took < 2 + 1 + 1.5, took
        status = (await other.call("GET", ROLLOUT)).body
        assert status["phase"] == "running" and status["step"] == 0  # the same step
        if how == "stop":
            driver.proc.send_signal(signal.SIGCONT)
            # Woken up past its lease: it must not drive any more (its writes are fenced).
            deadline = time.monotonic() + 10
            while "no longer drives it" not in driver.tail() and (
                "lost the lease" not in driver.tail()
            ):
                assert time.monotonic() < deadline, driver.tail()
                await asyncio.sleep(0.05)
            # And a command through it is refused, naming the member that drives it now.
            async with fleet.session.post(driver_admin + ROLLOUT + "/pause", headers=headers) as r:
                assert r.status == 409, await r.text()
                refusal = await r.json()
            assert refusal["detail"]["code"] == "not_the_driver"
            assert other.admin.removeprefix("http://") in refusal["error"]
        # The new driver drives it: a command through it goes through.
        promoted = await other.call("POST", ROLLOUT + "/promote")
        assert promoted.status == 200, promoted.text
        final = await status_until(other, lambda s: s["phase"] == "promoted")
        assert final["candidate"] == "green"
        view = await other.call("GET", ROUTE)
        assert view.body["weights"] == {"blue": 0, "green": 100}
        if how == "stop":
            async with fleet.session.get(driver_admin + ROUTE, headers=headers) as r:
                seen = await r.json()
            assert seen["weights"] == {"blue": 0, "green": 100}  # it follows the new driver
    finally:
        if driver.proc is not None and driver.proc.returncode is None:
            driver.proc.send_signal(signal.SIGCONT)
            await driver.terminate()
