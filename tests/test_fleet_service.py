"""Members of a fleet (`state.store: etcd`), each a whole Service, against a real etcd: a change
made through one is in force on the others, If-Match keeps its meaning across them, an etcd
outage never touches traffic (writes answer 503, /healthz reports it), a member starting
while etcd is down serves its local copy and converges, and a prefix holding another fleet is
never applied nor written."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp
import orjson
import pytest
import trustme

from control.etcd import EtcdClient
from control.fleet import FleetSync
from control.service import Service
from control.state import flip
from proxy.config import EtcdSettings, StateConfig
from tests.conftest import Backend, BackendFactory, free_port
from tests.etcd_server import EtcdServer
from tests.test_api import LIMIT, ROUTE, TOKEN, Running, assert_json_error, service_config
from tests.test_cli_control import pointsman
from tests.test_service import READY_WITHIN, ROOT, assert_one_line_refusal, process_env

PREFIX = "/pointsman/shop"

pytestmark = pytest.mark.timeout(60)


@dataclass
class Fleet:
    etcd: EtcdServer
    tmp_path: Path
    blue: Backend
    green: Backend
    session: aiohttp.ClientSession
    members: list[Running]

    async def start(self, name: str) -> Running:
        """A member with its own state directory and ports, the fleet's routes and etcd."""
        config = service_config(self.tmp_path / name, self.blue, self.green)
        settings = EtcdSettings(endpoints=(self.etcd.url,), prefix=PREFIX, fleet="shop",
                                timeout=1.0)  # fmt: skip
        config = replace(config, state=StateConfig(path=config.state.path, etcd=settings))
        service = Service(config)
        await service.start()
        assert service._admin_runner is not None
        member = Running(
            service=service,
            config=config,
            session=self.session,
            admin=f"http://127.0.0.1:{service._admin_runner.addresses[0][1]}",
            proxy=f"http://127.0.0.1:{service.proxy.port}",
            state_path=Path(config.state.path),
            blue=self.blue,
            green=self.green,
        )
        self.members.append(member)
        return member


@pytest.fixture
async def fleet(
    etcd: EtcdServer,
    tmp_path: Path,
    backend_factory: BackendFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Fleet]:
    monkeypatch.setenv("POINTSMAN_TOKEN", TOKEN)
    blue, green = await backend_factory("blue"), await backend_factory("green")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=LIMIT)) as session:
        made = Fleet(etcd, tmp_path, blue, green, session, [])
        yield made
        await session.close()
        for member in made.members:
            await member.service.stop()


def sync_of(member: Running) -> FleetSync:
    sync = member.service.fleet_sync
    assert sync is not None
    return sync


async def until(member: Running, check: Callable[[], bool]) -> None:
    """Wait until `check()` holds, re-checking each time the member's sync loop succeeds or
    reports a failure."""
    sync = sync_of(member)
    async with asyncio.timeout(LIMIT):
        while not check():
            sync.synced.clear()
            sync.error_reported.clear()
            waits = [asyncio.ensure_future(e.wait()) for e in (sync.synced, sync.error_reported)]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()


def at_version(member: Running, version: int) -> Callable[[], bool]:
    return lambda: member.plane.doc.version >= version


def installed(member: Running, version: int) -> Callable[[], bool]:
    """The member's workers have acknowledged `version` and its on_install has run."""
    return lambda: member.plane.installed_version >= version


async def etcd_value(etcd: EtcdServer, key: str, tls: ssl.SSLContext | None = None) -> object:
    client = EtcdClient([etcd.url], timeout=LIMIT, ssl_context=tls)
    try:
        _, kvs = await client.range(key.encode())
    finally:
        await client.close()
    assert kvs, f"etcd has no {key}"
    return orjson.loads(kvs[0].value)


async def test_a_change_through_one_member_is_in_force_on_the_others(fleet: Fleet) -> None:
    first = await fleet.start("a")
    second = await fleet.start("b")
    assert await second.backend_of_next_request() == "blue"
    answer = await first.call("POST", ROUTE + "/flip", {"to": "green"})
    assert answer.status == 200, answer.text
    version = answer.body["version"]
    # In force on the member that answered as it answers, on the other once it syncs.
    assert await first.backend_of_next_request() == "green"
    await until(second, at_version(second, version))
    assert await second.backends_of(5) == ["green"] * 5
    view = await second.call("GET", ROUTE)
    assert view.body["live"] == "green" and view.body["version"] == version
    # etcd holds the state and the audit record, written in one transaction.
    state = await etcd_value(fleet.etcd, f"{PREFIX}/state")
    assert isinstance(state, dict) and state["version"] == version
    record = await etcd_value(fleet.etcd, f"{PREFIX}/audit/{version:020d}")
    assert isinstance(record, dict) and record["action"] == "flip" and record["version"] == version
    # Each member keeps a local copy of what it applied.
    for member in (first, second):
        copy = orjson.loads(member.state_path.read_bytes())
        assert copy["version"] == version


async def test_if_match_keeps_its_meaning_across_the_fleet(fleet: Fleet) -> None:
    first = await fleet.start("a")
    second = await fleet.start("b")
    seen = (await second.call("GET", ROUTE)).body["version"]
    match = {"If-Match": f'"{seen}"'}
    flipped = await first.call("POST", ROUTE + "/flip", {"to": "green"}, headers=match)
    assert flipped.status == 200, flipped.text
    # Whether or not the second member has synced yet, the version it was shown is stale.
    stale = await second.call(
        "PUT", ROUTE + "/weights", {"weights": {"blue": 50, "green": 50}}, headers=match
    )
    body = assert_json_error(stale, 409)
    assert body["detail"]["current_version"] == flipped.body["version"]
    # Without If-Match the write is made on the newest state, wherever it was written.
    split = await second.call("PUT", ROUTE + "/weights", {"weights": {"blue": 50, "green": 50}})
    assert split.status == 200, split.text
    assert split.body["version"] == flipped.body["version"] + 1
    assert split.body["flips"] == 1  # the flip made through the first member is kept
    await until(first, at_version(first, split.body["version"]))
    assert (await first.call("GET", ROUTE)).body["weights"] == {"blue": 50, "green": 50}


async def test_an_etcd_outage_leaves_traffic_alone_and_refuses_writes(fleet: Fleet) -> None:
    member = await fleet.start("a")
    before = member.plane.doc.version
    fleet.etcd.kill()
    await until(member, lambda: sync_of(member).last_error is not None)
    assert await member.backends_of(5) == ["blue"] * 5  # traffic does not need etcd
    answer = await member.call("POST", ROUTE + "/flip", {"to": "green"})
    body = assert_json_error(answer, 503)
    assert body["detail"]["code"] == "store_unreachable"
    assert "etcd" in body["error"] and "not in effect" in body["error"]
    assert member.plane.doc.version == before  # nothing applied here
    assert await member.backend_of_next_request() == "blue"
    health = await member.call("GET", "/healthz")
    assert health.status == 200, health.text
    store = health.body["store"]
    assert store["kind"] == "etcd" and store["reachable"] is False
    assert "etcd unreachable" in store["error"]
    metrics = (await member.call("GET", "/metrics")).text
    assert "pointsman_state_store_up 0.0" in metrics
    assert "pointsman_state_store_seconds_since_sync " in metrics
    # etcd back: the member syncs again and writes go through.
    fleet.etcd.start()
    await until(member, lambda: sync_of(member).last_error is None)
    answer = await member.call("POST", ROUTE + "/flip", {"to": "green"})
    assert answer.status == 200, answer.text
    assert await member.backend_of_next_request() == "green"
    health = await member.call("GET", "/healthz")
    assert health.body["store"]["reachable"] is True and health.body["store"]["error"] is None
    assert "pointsman_state_store_up 1.0" in (await member.call("GET", "/metrics")).text


async def test_a_member_starting_while_etcd_is_down_serves_its_copy_and_converges(
    fleet: Fleet,
) -> None:
    first = await fleet.start("a")
    second = await fleet.start("b")
    flipped = await first.call("POST", ROUTE + "/flip", {"to": "green"})
    assert flipped.status == 200, flipped.text
    await first.service.stop()
    fleet.members.remove(first)
    newer = await second.call("PUT", ROUTE + "/weights", {"weights": {"blue": 30, "green": 70}})
    assert newer.status == 200, newer.text
    fleet.etcd.kill()
    again = await fleet.start("a")  # etcd is down: its local copy is all it has
    assert again.plane.doc.version == flipped.body["version"]
    assert await again.backends_of(3) == ["green"] * 3
    fleet.etcd.start()
    await until(again, at_version(again, newer.body["version"]))
    assert (await again.call("GET", ROUTE)).body["weights"] == {"blue": 30, "green": 70}


async def test_a_prefix_holding_another_fleet_is_never_applied_nor_written(
    fleet: Fleet,
) -> None:
    client = EtcdClient([fleet.etcd.url], timeout=LIMIT)
    try:
        foreign = orjson.dumps({"fleet": "billing", "format": 1})
        await client.put(f"{PREFIX}/meta".encode(), foreign)
    finally:
        await client.close()
    member = await fleet.start("a")
    assert await member.backend_of_next_request() == "blue"  # serves the config's state
    await until(member, lambda: "billing" in (sync_of(member).last_error or ""))
    health = await member.call("GET", "/healthz")
    assert health.status == 200 and "belongs to fleet 'billing'" in health.body["store"]["error"]
    answer = await member.call("POST", ROUTE + "/flip", {"to": "green"})
    body = assert_json_error(answer, 503)
    assert body["detail"]["code"] == "store_refused" and "billing" in body["error"]
    assert await member.backend_of_next_request() == "blue"
    assert await etcd_value(fleet.etcd, f"{PREFIX}/meta") == {"fleet": "billing", "format": 1}


async def registered(member: Running) -> None:
    registration = member.service.registration
    assert registration is not None
    async with asyncio.timeout(LIMIT):
        await registration.registered.wait()


async def test_the_fleet_lists_its_members_and_a_stopped_one_leaves(fleet: Fleet) -> None:
    first = await fleet.start("a")
    second = await fleet.start("b")
    await registered(first)
    await registered(second)
    listed = await first.call("GET", "/v1/fleet")
    assert listed.status == 200, listed.text
    body = listed.body
    assert body["fleet"] == "shop" and body["prefix"] == PREFIX
    admins = sorted(m["admin"] for m in body["members"])
    assert admins == sorted(m.admin.removeprefix("http://") for m in (first, second))
    assert all(m["version"] == body["version"] and m["lag"] == 0 for m in body["members"])
    await second.service.stop()  # revokes its lease: gone at once, not after the TTL
    fleet.members.remove(second)
    after = (await first.call("GET", "/v1/fleet")).body["members"]
    assert [m["admin"] for m in after] == [first.admin.removeprefix("http://")]


async def test_wait_fleet_answers_once_every_member_has_the_change(fleet: Fleet) -> None:
    first = await fleet.start("a")
    second = await fleet.start("b")
    await registered(first)
    await registered(second)
    answer = await first.call("POST", ROUTE + "/flip?wait=fleet", {"to": "green"})
    assert answer.status == 200, answer.text
    version = answer.body["version"]
    # The other member has it in force by the time the answer comes.
    assert second.plane.doc.version == version
    assert await second.backend_of_next_request() == "green"
    members = (await first.call("GET", "/v1/fleet")).body["members"]
    assert [m["version"] for m in members] == [version, version]


async def test_wait_fleet_names_a_member_that_does_not_follow(fleet: Fleet) -> None:
    first = await fleet.start("a")
    second = await fleet.start("b")
    await registered(first)
    await registered(second)
    stuck = second.service._fleet_task
    assert stuck is not None
    stuck.cancel()  # the member stays registered but applies nothing more
    with pytest.raises(asyncio.CancelledError):
        await stuck
    second.service._fleet_task = None
    answer = await first.call("POST", ROUTE + "/flip?wait=fleet&wait_timeout=1", {"to": "green"})
    body = assert_json_error(answer, 504)
    assert body["detail"]["code"] == "fleet_wait_timeout"
    [lagging] = body["detail"]["lagging"]
    assert lagging["admin"] == second.admin.removeprefix("http://") and lagging["lag"] == 1
    assert "not yet on" in body["error"]
    # The change itself is made and in force where it was written.
    assert await first.backend_of_next_request() == "green"


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("wait=all", "wait: expected fleet, got 'all'"),
        ("wait=fleet&wait_timeout=0", "wait_timeout: expected seconds in (0, 120], got '0'"),
        ("wait=fleet&wait_timeout=soon", "wait_timeout: expected seconds in (0, 120], got 'soon'"),
    ],
)
async def test_a_bad_wait_is_refused_before_anything_changes(
    fleet: Fleet, query: str, message: str
) -> None:
    member = await fleet.start("a")
    answer = await member.call("POST", f"{ROUTE}/flip?{query}", {"to": "green"})
    body = assert_json_error(answer, 400)
    assert body["error"] == message
    assert await member.backend_of_next_request() == "blue"


async def test_the_cli_waits_for_the_fleet_and_status_shows_the_members(fleet: Fleet) -> None:
    first = await fleet.start("a")
    second = await fleet.start("b")
    await registered(first)
    await registered(second)
    run = await pointsman(
        "flip", "shop", "green", "--wait-fleet", "5", admin=first.admin, token=TOKEN
    )
    assert (run.code, run.out.strip()) == (0, "shop: flipped to green (version 2)"), run.err
    assert second.plane.doc.version == 2  # in force on the other member when the CLI exits
    run = await pointsman("status", admin=second.admin, token=TOKEN)
    assert run.code == 0, run.err
    lines = run.out.splitlines()
    assert "fleet shop at /pointsman/shop, version 2: 2 members, all in step" in lines
    for member in (first, second):
        admin = member.admin.removeprefix("http://")
        assert any(f"admin {admin}  version 2" in line for line in lines), lines
    # A member that stops following is named, and the CLI exits 1 with one line.
    stuck = second.service._fleet_task
    assert stuck is not None
    stuck.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stuck
    second.service._fleet_task = None
    run = await pointsman(
        "flip", "shop", "blue", "--wait-fleet", "1", admin=first.admin, token=TOKEN
    )
    assert run.code == 1
    [line] = run.err.strip().splitlines()
    assert line.startswith("pointsman: 504 version 3 is in force on this member; after 1s")
    assert "(version 2)" in line
    run = await pointsman("status", "--json", admin=first.admin, token=TOKEN)
    members = json.loads(run.out)["fleet"]["members"]
    assert sorted(m["lag"] for m in members) == [0, 1]


async def test_concurrent_if_match_writers_through_two_members_one_wins_each_round(
    fleet: Fleet,
) -> None:
    first = await fleet.start("a")
    second = await fleet.start("b")
    watcher = await fleet.start("c")  # writes nothing: records every version it applies
    applied: list[int] = []
    notify = watcher.plane.on_install

    def record() -> None:
        applied.append(watcher.plane.installed_version)
        notify()

    watcher.plane.on_install = record
    start = watcher.plane.doc.version
    for round_ in range(10):
        version = (await first.call("GET", ROUTE)).body["version"]
        await until(second, at_version(second, version))
        match = {"If-Match": f'"{version}"'}
        # Neither is the state in force (that would be answered without a write).
        wanted = ({"blue": round_ + 1, "green": 100}, {"blue": 100, "green": round_ + 1})
        answers = await asyncio.gather(
            first.call("PUT", ROUTE + "/weights", {"weights": wanted[0]}, headers=match),
            second.call("PUT", ROUTE + "/weights", {"weights": wanted[1]}, headers=match),
        )
        statuses = sorted(a.status for a in answers)
        assert statuses == [200, 409], [a.text for a in answers]
        [won] = [i for i, a in enumerate(answers) if a.status == 200]
        lost = answers[1 - won]
        assert lost.body["detail"]["current_version"] == version + 1
        assert answers[won].body["version"] == version + 1
        # installed_version, not doc.version: the doc is set before the workers ack and the
        # local copy is kept, and `record` runs only after both.
        await until(watcher, installed(watcher, version + 1))
        assert watcher.plane.doc.weights()["shop"] == wanted[won]
    final = watcher.plane.doc.version
    assert final == start + 10
    # Every version, in order, none missed, none twice; and never a full read after start.
    assert applied == list(range(start + 1, final + 1))
    assert sync_of(watcher).full_reads == 1
    state = await etcd_value(fleet.etcd, f"{PREFIX}/state")
    assert isinstance(state, dict) and state["version"] == final


async def test_kill_9_of_etcd_under_load_fails_no_request(fleet: Fleet) -> None:
    member = await fleet.start("a")
    outcomes: list[int | str] = []
    stop = asyncio.Event()

    async def load() -> None:
        while not stop.is_set():
            try:
                async with member.session.get(member.proxy + "/item") as resp:
                    await resp.read()
                    outcomes.append(resp.status)
            except (aiohttp.ClientError, TimeoutError) as err:
                outcomes.append(repr(err))

    loaders = [asyncio.create_task(load()) for _ in range(4)]
    try:
        fleet.etcd.kill()
        await until(member, lambda: sync_of(member).last_error is not None)
        refused = await member.call("PUT", ROUTE + "/weights", {"weights": {"blue": 1}})
        assert refused.status == 503
        fleet.etcd.start()
        await until(member, lambda: sync_of(member).last_error is None)
        made = await member.call("PUT", ROUTE + "/weights", {"weights": {"blue": 1}})
        assert made.status == 200, made.text
    finally:
        stop.set()
        await asyncio.gather(*loaders)
    assert outcomes and set(outcomes) == {200}, [o for o in outcomes if o != 200][:5]


async def test_a_change_already_in_force_on_a_stale_member_is_checked_against_etcd(
    fleet: Fleet,
) -> None:
    first = await fleet.start("a")
    second = await fleet.start("b")
    stuck = second.service._fleet_task
    assert stuck is not None
    stuck.cancel()  # the second member hears nothing more from its watch
    with pytest.raises(asyncio.CancelledError):
        await stuck
    second.service._fleet_task = None
    flipped = await first.call("POST", ROUTE + "/flip", {"to": "green"})
    assert flipped.status == 200, flipped.text
    # Blue is live as far as the second member knows; in the fleet it is not, so the flip
    # back is a real change, written as one.
    back = await second.call("POST", ROUTE + "/flip", {"to": "blue"})
    assert back.status == 200, back.text
    assert back.body["version"] == flipped.body["version"] + 1 and back.body["live"] == "blue"
    state = await etcd_value(fleet.etcd, f"{PREFIX}/state")
    assert isinstance(state, dict) and state["version"] == back.body["version"]
    await until(first, at_version(first, back.body["version"]))
    assert await first.backend_of_next_request() == "blue"


def fleet_config(tmp_path: Path, etcd_lines: str) -> Path:
    path = tmp_path / "member.yaml"
    path.write_text(f"""\
listen: 127.0.0.1:{free_port()}
admin: {{listen: "127.0.0.1:{free_port()}"}}
state:
  store: etcd
  path: {tmp_path / "state.json"}
  prefix: /pointsman/shop
{etcd_lines}
routes:
  - name: shop
    pools: {{blue: {{endpoints: ["127.0.0.1:{free_port()}"]}}}}
    weights: {{blue: 100}}
""")
    return path


def run_member(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "control.cli", "run", "--config", str(config)],
        cwd=ROOT, env={**process_env(TOKEN), **env}, capture_output=True, text=True,
        timeout=READY_WITHIN, check=False,
    )  # fmt: skip


async def test_bad_etcd_settings_fail_at_start_with_one_line(tmp_path: Path) -> None:
    server = EtcdServer(tmp_path / "etcd-auth")
    server.start()
    try:
        admin = EtcdClient([server.url], timeout=LIMIT)
        await admin._call("/v3/auth/user/add", {"name": "root", "password": "s3cret"})
        await admin._call("/v3/auth/user/grant", {"user": "root", "role": "root"})
        await admin._call("/v3/auth/enable", {})
        await admin.close()
        login = f"  endpoints: [{server.url}]\n  username: root"
        config = fleet_config(tmp_path, login)
        wrong = await asyncio.to_thread(run_member, config, {"POINTSMAN_ETCD_PASSWORD": "nope"})
        line = assert_one_line_refusal(wrong, "state: etcd at", "refused", "authentication failed")
        assert "POINTSMAN_ETCD_PASSWORD" in line
    finally:
        server.stop()
    missing_ca = tmp_path / "no-such-ca.pem"
    config = fleet_config(tmp_path, f"  endpoints: [https://127.0.0.1:1]\n  ca: {missing_ca}")
    result = await asyncio.to_thread(run_member, config, {})
    assert_one_line_refusal(result, "state.ca: cannot load", str(missing_ca))


async def test_a_member_reaches_etcd_over_tls_with_a_client_certificate(
    tmp_path: Path, backend_factory: BackendFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1")
    client_cert = ca.issue_cert("pointsman")
    files = {name: tmp_path / f"{name}.pem" for name in ("ca", "server", "server-key",
                                                          "client", "client-key")}  # fmt: skip
    ca.cert_pem.write_to_path(files["ca"])
    server_cert.cert_chain_pems[0].write_to_path(files["server"])
    server_cert.private_key_pem.write_to_path(files["server-key"])
    client_cert.cert_chain_pems[0].write_to_path(files["client"])
    client_cert.private_key_pem.write_to_path(files["client-key"])
    context = ssl.create_default_context(cafile=str(files["ca"]))
    context.load_cert_chain(files["client"], files["client-key"])
    server = EtcdServer(
        tmp_path / "etcd-tls",
        f"--cert-file={files['server']}", f"--key-file={files['server-key']}",
        "--client-cert-auth", f"--trusted-ca-file={files['ca']}",
        tls=context,
    )  # fmt: skip
    server.start()
    try:
        monkeypatch.setenv("POINTSMAN_TOKEN", TOKEN)
        blue, green = await backend_factory("blue"), await backend_factory("green")
        config = service_config(tmp_path / "member", blue, green)
        settings = EtcdSettings(
            endpoints=(server.url,), prefix=PREFIX, fleet="shop", timeout=2.0,
            ca=str(files["ca"]), cert=str(files["client"]), key=str(files["client-key"]),
        )  # fmt: skip
        service = Service(replace(config, state=StateConfig(config.state.path, settings)))
        await service.start()
        try:
            assert service.plane is not None and service.fleet_sync is not None
            assert service.fleet_sync.last_error is None
            flipped = await service.plane.change(
                "test", "flip", "shop", None, lambda d, now: flip(d, "shop", "green", now)
            )
            state = await etcd_value(server, f"{PREFIX}/state", context)
            assert isinstance(state, dict) and state["version"] == flipped.version
        finally:
            await service.stop()
        # A CA that did not sign etcd's certificate: one line, not a start on the local copy.
        other_ca = tmp_path / "other-ca.pem"
        trustme.CA().cert_pem.write_to_path(other_ca)
        lines = (
            f"  endpoints: [{server.url}]\n  ca: {other_ca}\n"
            f"  cert: {files['client']}\n  key: {files['client-key']}"
        )
        result = await asyncio.to_thread(run_member, fleet_config(tmp_path, lines), {})
        assert_one_line_refusal(result, "state: etcd at", "TLS with", "certificate verify failed")
    finally:
        server.stop()
