"""The process model with real worker processes: a `control.service.Service` master in the test's
event loop starts 2 (or 3) `python -m proxy.worker` processes that serve one port, and real
clients drive it over keep-alive connections.

Which worker served a request is told by the request id the proxy adds (its prefix is random per
process): the backends echo it back in `X-Seen-Id`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from asyncio.subprocess import Process
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from control.service import Service
from control.workers import Supervisor, WorkerStartError, worker_cpus
from proxy.config import Config, EtcdSettings, StateConfig, WorkerCpuAffinity
from tests.conftest import Backend, BackendFactory, config_for, free_port
from tests.etcd_server import EtcdServer, Relay
from tests.test_api import TOKEN, admin_port, break_the_state_file, mend_the_state_file
from tests.test_cli import read_response, refuses_connections, run_config, tail, wait_listening

LIMIT = 10.0  # seconds any single exchange or wait may take
ROUTE = "/v1/routes/shop"
RULE = "    rules:\n      - header: {X-Pointsman-Pool: green}\n        pool: green\n"
STICKY = "    sticky: {header: X-User-Id}\n"

pytestmark = pytest.mark.timeout(120)


def echo(name: str, status: int = 200) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A backend handler that names itself and echoes the request id the proxy sent."""

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.Response(
            status=status,
            text=f"{name} {request.path}",
            headers={"X-Backend": name, "X-Seen-Id": request.headers.get("X-Request-Id", "")},
        )

    return handler


def worker_of(response: aiohttp.ClientResponse) -> str:
    """The serving process: the random prefix of the request id it generated."""
    return response.headers["X-Seen-Id"].rsplit("-", 1)[0]


@dataclass
class Host:
    service: Service
    session: aiohttp.ClientSession
    admin: str
    proxy: str

    @property
    def supervisor(self) -> Supervisor:
        assert self.service.supervisor is not None
        return self.service.supervisor

    async def call(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        async with asyncio.timeout(LIMIT):
            async with self.session.request(
                method, self.admin + path, data=data, headers=headers
            ) as resp:
                return resp.status, json.loads(await resp.text())

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of /metrics by (name, sorted labels)."""
        async with asyncio.timeout(LIMIT):
            async with self.session.get(self.admin + "/metrics") as resp:
                text = await resp.text()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    async def requests_total(self) -> float:
        samples = await self.metrics()
        return sum(v for (name, _), v in samples.items() if name == "pointsman_requests_total")


StartHost = Callable[..., Awaitable[Host]]


async def run_service(
    config: Config, workers: int | None
) -> tuple[Service, aiohttp.ClientSession, str, str]:
    """A started Service, a client session, and its admin and data-plane base URLs (the
    fixtures of the tests that run a whole host start it this way)."""
    service = Service(config, workers=workers)
    await service.start()
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=LIMIT))
    admin = f"http://127.0.0.1:{admin_port(service)}"
    return service, session, admin, f"http://127.0.0.1:{service.data_port}"


@pytest.fixture
async def start_host(
    backend_factory: BackendFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[StartHost]:
    """start_host(pools, workers=2, route_extra="", weights=None, pool_extra=None,
    etcd_url=None, affinity="auto") -> Host;
    pools is name -> backends. The config text (what workers parse) holds their addresses."""
    started: list[Host] = []
    monkeypatch.setenv("POINTSMAN_TOKEN", TOKEN)

    async def make(
        pools: dict[str, list[Backend]],
        workers: int = 2,
        route_extra: str = "",
        weights: dict[str, int] | None = None,
        pool_extra: dict[str, str] | None = None,
        etcd_url: str | None = None,
        affinity: WorkerCpuAffinity = "auto",
    ) -> Host:
        config = config_for(
            {name: [b.address for b in backends] for name, backends in pools.items()},
            route_extra=route_extra,
            weights=weights,
            pool_extra=pool_extra,
        )
        fleet = None
        if etcd_url is not None:  # a member of fleet "shop"
            fleet = EtcdSettings(endpoints=(etcd_url,), prefix="/pointsman/shop", fleet="shop")
        config = replace(
            config,
            state=StateConfig(path=str(tmp_path / f"state-{len(started)}.json"), etcd=fleet),
            timeouts=replace(config.timeouts, grace=2.0),
            worker_cpu_affinity=affinity,
        )
        host = Host(*await run_service(config, workers))
        started.append(host)
        return host

    yield make
    for host in started:
        await host.session.close()
        await host.service.stop()


async def pinned_clients(host: Host, want_workers: int, most: int = 64) -> list[Connection]:
    """Keep-alive connections, opened until they cover `want_workers` distinct workers (the
    kernel spreads connections by a hash of their addresses)."""
    clients: list[Connection] = []
    for _ in range(most):
        client = Connection(host.proxy)
        await client.get("/hello")
        clients.append(client)
        if len({c.worker for c in clients}) >= want_workers:
            return clients
    raise AssertionError(f"{most} connections reached only {len({c.worker for c in clients})}")


class Connection:
    """One keep-alive client connection (a session limited to one connection)."""

    def __init__(self, proxy: str) -> None:
        self.proxy = proxy
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1),
            timeout=aiohttp.ClientTimeout(total=LIMIT),
        )
        self.worker = ""  # the worker its last answer came from

    async def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
        """(status, backend name); remembers the serving worker."""
        async with self.session.get(self.proxy + path, headers=headers or {}) as resp:
            await resp.read()
            self.worker = worker_of(resp)
            return resp.status, resp.headers["X-Backend"]

    async def close(self) -> None:
        await self.session.close()


@dataclass
class Sent:
    started: float  # monotonic, when the request was sent
    backend: str
    status: int
    worker: str


@dataclass
class Load:
    """Requests on keep-alive connections until `stop`; what each saw."""

    connections: list[Connection]
    sent: list[Sent] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (last worker, error)
    progress: asyncio.Event = field(default_factory=asyncio.Event)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        await asyncio.gather(*(self._client(c, n) for n, c in enumerate(self.connections)))

    async def _client(self, connection: Connection, n: int) -> None:
        i = 0
        while not self.stop.is_set():
            i += 1
            started = time.monotonic()
            try:
                status, backend = await connection.get(f"/load/{n}/{i}")
            except (aiohttp.ClientError, TimeoutError) as err:
                self.failures.append((connection.worker, repr(err)))
                continue
            self.sent.append(Sent(started, backend, status, connection.worker))
            self.progress.set()

    async def more(self, count: int) -> None:
        """Wait until `count` more requests have been answered."""
        target = len(self.sent) + count
        async with asyncio.timeout(LIMIT):
            while len(self.sent) < target:
                self.progress.clear()
                await self.progress.wait()


async def close_all(connections: list[Connection]) -> None:
    for connection in connections:
        await connection.close()


# --- state pushed to every worker ----------------------------------------------------------


async def flip_under_load(host: Host, load: Load, count: int, path: str) -> Flips:
    """`count` flips through `host` (green, blue, ...) while `load` runs, each followed by
    twice as many requests as there are connections."""
    flips: Flips = []
    await load.more(len(load.connections))
    for i in range(count):
        target = "green" if i % 2 == 0 else "blue"
        sent = time.monotonic()
        code, body = await host.call("POST", path, {"to": target})
        assert code == 200, body
        flips.append((sent, time.monotonic(), target))
        await load.more(2 * len(load.connections))
    return flips


def old_pool_after_answers(flips: Flips, load: Load) -> list[tuple[int, Sent]]:
    """Requests sent after a flip's answer (and before the next flip was asked for) that did
    not reach the pool that flip made live."""
    wrong = []
    for k, (_, answered, target) in enumerate(flips):
        until = flips[k + 1][0] if k + 1 < len(flips) else float("inf")
        window = [s for s in load.sent if answered < s.started < until]
        assert window, f"no request after flip {k}"
        wrong += [(k, s) for s in window if s.backend != target]
    return wrong


Flips = list[tuple[float, float, str]]  # (sent, answered, live pool)


@pytest.mark.parametrize("workers", [2, 3])
async def test_flips_under_keep_alive_load_never_reach_the_old_pool_after_the_answer(
    start_host: StartHost, backend_factory: BackendFactory, workers: int
) -> None:
    blue = await backend_factory("blue", echo("blue"))
    green = await backend_factory("green", echo("green"))
    host = await start_host({"blue": [blue], "green": [green]}, workers=workers)
    load = Load(await pinned_clients(host, workers))
    loader = asyncio.create_task(load.run())
    try:
        flips = await flip_under_load(host, load, 20, ROUTE + "/flip")
    finally:
        load.stop.set()
        await loader
        await close_all(load.connections)
    assert load.failures == []
    assert {s.status for s in load.sent} == {200}
    assert len({s.worker for s in load.sent}) == workers
    # A request sent after a flip's answer (and before the next flip was asked for) reaches
    # the pool that flip made live, whichever worker serves it.
    assert old_pool_after_answers(flips, load) == []


async def test_a_fleet_change_is_in_force_on_every_worker_of_every_member_when_answered(
    start_host: StartHost, backend_factory: BackendFactory, etcd: EtcdServer
) -> None:
    blue = await backend_factory("blue", echo("blue"))
    green = await backend_factory("green", echo("green"))
    pools = {"blue": [blue], "green": [green]}
    writer = await start_host(pools, workers=2, etcd_url=etcd.url)
    # The other host hears from etcd over a slow link: a change reaches it 4 x 30 ms after
    # the writer has it (request and watch event each way), so without ?wait=fleet the
    # requests sent to it right after an answer would still see the old pool.
    relay = Relay(etcd.client_port)
    await relay.start()
    follower = await start_host(pools, workers=2, etcd_url=relay.url)
    relay.delay = 0.03
    load = Load(await pinned_clients(follower, 2))  # traffic on the other host's workers
    loader = asyncio.create_task(load.run())
    try:
        flips = await flip_under_load(writer, load, 10, ROUTE + "/flip?wait=fleet")
    finally:
        load.stop.set()
        await loader
        await close_all(load.connections)
    assert load.failures == []
    assert {s.status for s in load.sent} == {200}
    assert len({s.worker for s in load.sent}) == 2
    assert old_pool_after_answers(flips, load) == []
    code, fleet = await follower.call("GET", "/v1/fleet")
    assert code == 200 and [m["workers"] for m in fleet["members"]] == [2, 2]
    await follower.session.close()
    await follower.service.stop()
    await relay.stop()


async def test_metrics_count_every_request_of_every_worker_exactly(
    start_host: StartHost, backend_factory: BackendFactory
) -> None:
    blue = await backend_factory("blue", echo("blue"))
    green = await backend_factory("green", echo("green", status=503))
    host = await start_host(
        {"blue": [blue], "green": [green]},
        route_extra=RULE,
        pool_extra={"green": "ejection: {consecutive_failures: 0}"},
    )
    connections = await pinned_clients(host, 2)
    opened = len(connections)  # each sent one request to blue
    try:
        per_connection = 25
        results = await asyncio.gather(
            *(
                c.get(f"/n/{i}", {"X-Pointsman-Pool": "green"} if i % 5 == 0 else None)
                for c in connections
                for i in range(per_connection)
            )
        )
    finally:
        await close_all(connections)
    by_worker = Counter(c.worker for c in connections)
    assert len(by_worker) == 2
    green_sent = sum(1 for status, backend in results if backend == "green")
    blue_sent = len(results) - green_sent + opened
    assert green_sent == 5 * len(connections)
    samples = await host.metrics()

    def count(pool: str, code: str) -> float:
        key = (
            "pointsman_requests_total",
            (("code", code), ("pool", pool), ("route", "shop")),
        )
        return samples[key]

    assert count("blue", "2xx") == blue_sent
    assert count("green", "5xx") == green_sent
    assert count("green", "2xx") == 0
    assert await host.requests_total() == blue_sent + green_sent
    # The latency histogram is summed too: one observation per request.
    observed = sum(
        v
        for (name, labels), v in samples.items()
        if name == "pointsman_request_duration_seconds_count"
    )
    assert observed == blue_sent + green_sent
    assert samples[("pointsman_workers_ready", ())] == 2
    served = {
        dict(labels)["worker"]: v
        for (name, labels), v in samples.items()
        if name == "pointsman_worker_requests_total"
    }
    assert set(served) == {"0", "1"} and all(v > 0 for v in served.values()), served
    assert sum(served.values()) == blue_sent + green_sent


async def test_a_change_that_cannot_be_saved_is_taken_back_on_every_worker(
    start_host: StartHost, backend_factory: BackendFactory
) -> None:
    blue = await backend_factory("blue", echo("blue"))
    green = await backend_factory("green", echo("green"))
    host = await start_host({"blue": [blue], "green": [green]})
    connections = await pinned_clients(host, 2)
    try:
        code, before = await host.call("GET", ROUTE)
        assert code == 200 and before["live"] == "blue"
        assert host.service.config.state is not None
        state_path = Path(host.service.config.state.path)
        break_the_state_file(state_path)
        # The workers got the flip while the save was failing: the answer comes after they
        # have been given the state before it back.
        code, body = await host.call("POST", ROUTE + "/flip", {"to": "green"})
        assert code == 500 and body["detail"]["code"] == "state_not_saved", body
        seen = [await c.get("/after-failed-save") for c in connections]
        assert {backend for _, backend in seen} == {"blue"}
        assert len({c.worker for c in connections}) == 2
        assert all(slot.version == before["version"] for slot in host.supervisor.slots)

        mend_the_state_file(state_path)
        code, body = await host.call("POST", ROUTE + "/flip", {"to": "green"})
        assert code == 200 and body["version"] == before["version"] + 1, body
        seen = [await c.get("/after-save") for c in connections]
        assert {backend for _, backend in seen} == {"green"}
    finally:
        await close_all(connections)


async def test_sticky_users_land_on_the_same_pool_whichever_worker_serves_them(
    start_host: StartHost, backend_factory: BackendFactory
) -> None:
    blue = await backend_factory("blue", echo("blue"))
    green = await backend_factory("green", echo("green"))
    host = await start_host(
        {"blue": [blue], "green": [green]}, route_extra=STICKY, weights={"blue": 50, "green": 50}
    )
    connections = await pinned_clients(host, 2)
    seen: dict[str, set[str]] = {}
    workers: dict[str, set[str]] = {}
    try:
        for user in range(40):
            for connection in connections[:1] + connections[-1:]:
                # The first and the last connection: on different workers by construction.
                status, backend = await connection.get("/u", {"X-User-Id": f"user-{user}"})
                assert status == 200
                seen.setdefault(f"user-{user}", set()).add(backend)
                workers.setdefault(f"user-{user}", set()).add(connection.worker)
    finally:
        await close_all(connections)
    assert all(len(w) == 2 for w in workers.values()), workers
    assert {u: b for u, b in seen.items() if len(b) != 1} == {}
    pools = Counter(next(iter(b)) for b in seen.values())
    assert set(pools) == {"blue", "green"}, pools


# --- rollouts and shadows see the whole host -------------------------------------------------


async def test_rollout_analysis_counts_the_traffic_of_all_workers(
    start_host: StartHost, backend_factory: BackendFactory
) -> None:
    blue = await backend_factory("blue", echo("blue"))
    green = await backend_factory("green", echo("green", status=500))
    host = await start_host(
        {"blue": [blue], "green": [green]},
        route_extra=RULE,
        # Every answer of green counts, none is turned into an ejection's 503.
        pool_extra={"green": "ejection: {consecutive_failures: 0}"},
    )
    connections = await pinned_clients(host, 2)
    first, last = connections[0], connections[-1]
    assert first.worker != last.worker
    per_worker = 12  # under min_requests on each worker, over it on the host
    spec = {
        "candidate": "green",
        "stable": "blue",
        "steps": [50],
        "step_interval": "60s",
        "analysis": {
            "interval": "0.2s",
            "min_requests": 20,
            "max_error_rate": 0.01,
            "failure_limit": 1,
        },
    }
    try:
        code, body = await host.call("POST", ROUTE + "/rollout", spec)
        assert code == 201, body
        for connection in (first, last):
            for i in range(per_worker):
                status, backend = await connection.get(f"/c/{i}", {"X-Pointsman-Pool": "green"})
                assert (status, backend) == (500, "green")
    finally:
        await close_all(connections)
    deadline = time.monotonic() + LIMIT
    while True:
        code, status = await host.call("GET", ROUTE + "/rollout")
        assert code == 200, status
        if status["phase"] != "running" or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)  # the rollout moves on its own clock: nothing to await
    assert status["phase"] == "failed", status  # and rolled back:
    assert status["weights"] == {"blue": 100, "green": 0}, status
    analysis = status["last_analysis"]
    assert analysis["outcome"] == "fail"
    assert analysis["candidate"]["requests"] == 2 * per_worker
    assert analysis["candidate"]["errors"] == 2 * per_worker


async def test_diffs_show_samples_from_every_worker(
    start_host: StartHost, backend_factory: BackendFactory
) -> None:
    blue = await backend_factory("blue", echo("blue"))
    dark = await backend_factory("dark", echo("dark"))  # answers with another body: mismatch
    host = await start_host(
        {"blue": [blue], "dark": [dark]}, route_extra="    shadows:\n      - {pool: dark}\n"
    )
    connections = await pinned_clients(host, 2)
    first, last = connections[0], connections[-1]
    per_worker = 5
    try:
        for connection in (first, last):
            for i in range(per_worker):
                assert await connection.get(f"/d/{i}") == (200, "blue")
    finally:
        await close_all(connections)
    expected = len(connections) + 2 * per_worker  # every GET so far: mirrored, mismatching
    deadline = time.monotonic() + LIMIT
    while True:
        code, shadow = await host.call("GET", ROUTE + "/shadows/dark")
        assert code == 200, shadow
        if shadow["compared"] >= expected or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)  # comparisons finish after the answers: no event to await
    assert shadow["compared"] == expected, shadow
    assert shadow["mismatched"] == expected, shadow
    code, diffs = await host.call("GET", ROUTE + "/shadows/dark/diffs?limit=100")
    assert code == 200, diffs
    prefixes = {d["request_id"].rsplit("-", 1)[0] for d in diffs["diffs"]}
    assert prefixes == {first.worker, last.worker}
    assert diffs["kept"] == expected


# --- supervision -----------------------------------------------------------------------------


async def wait_replaced(host: Host, slot: int, old_pid: int) -> None:
    """Until the slot has a new, ready worker (the supervisor gives no event to a test)."""
    deadline = time.monotonic() + LIMIT
    target = host.supervisor.slots[slot]
    while not (target.ready and target.pid not in (None, old_pid)):
        assert time.monotonic() < deadline, "the worker was not replaced"
        await asyncio.sleep(0.02)


async def test_a_killed_worker_is_replaced_and_the_others_requests_see_no_error(
    start_host: StartHost, backend_factory: BackendFactory
) -> None:
    blue = await backend_factory("blue", echo("blue"))
    host = await start_host({"blue": [blue]})
    load = Load(await pinned_clients(host, 2) + [Connection(host.proxy) for _ in range(6)])
    loader = asyncio.create_task(load.run())
    totals: list[float] = []
    try:
        await load.more(50)
        totals.append(await host.requests_total())
        before = {s.worker for s in load.sent}
        assert len(before) == 2
        victim = host.supervisor.slots[0]
        pid = victim.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await wait_replaced(host, 0, pid)
        totals.append(await host.requests_total())
        mark = len(load.sent)
        await load.more(100)
        totals.append(await host.requests_total())
    finally:
        load.stop.set()
        await loader
        await close_all(load.connections)
    after = {s.worker for s in load.sent[mark:]}
    survivor = (before & after).pop()
    killed = (before - after).pop()
    # The reconnecting clients may all hash to the survivor's socket; new connections, opened
    # until two workers answer, show that the replacement takes its share of the traffic.
    probes = await pinned_clients(host, 2)
    try:
        assert {c.worker for c in probes} - before, "the replacement serves traffic too"
    finally:
        await close_all(probes)
    # Only connections of the killed worker failed; those of the survivor never did.
    assert [f for f in load.failures if f[0] != killed] == []
    assert all(s.status == 200 for s in load.sent)
    assert survivor != killed
    totals.append(await host.requests_total())
    assert totals == sorted(totals), totals
    samples = await host.metrics()
    assert samples[("pointsman_worker_restarts_total", (("worker", "0"),))] == 1
    assert samples[("pointsman_worker_restarts_total", (("worker", "1"),))] == 0
    assert samples[("pointsman_workers_ready", ())] == 2


@pytest.mark.parametrize(
    ("setting", "count", "allowed", "cpus"),
    [("auto", 2, {0, 1}, [0, 1]), ("auto", 3, {2, 5, 7, 9}, [2, 5, 7]),
     ("auto", 1, {0, 1}, [None]), ("auto", 3, {0, 1}, [None, None, None]),
     ("off", 2, {0, 1}, [None, None]), ("auto", 2, set(), [None, None])],
)  # fmt: skip
def test_worker_cpus_binds_two_to_cpus_workers_one_to_a_cpu(
    setting: WorkerCpuAffinity, count: int, allowed: set[int], cpus: list[int | None]
) -> None:
    assert worker_cpus(setting, count, allowed) == cpus


@pytest.mark.parametrize("setting", ["auto", "off"])
async def test_worker_cpu_affinity_binds_each_worker_and_its_replacement(
    start_host: StartHost, backend_factory: BackendFactory, setting: WorkerCpuAffinity
) -> None:
    blue = await backend_factory("blue", echo("blue"))
    host = await start_host({"blue": [blue]}, affinity=setting)
    allowed = os.sched_getaffinity(0)  # the master runs in this process

    def bound() -> list[set[int]]:
        pids = [slot.pid for slot in host.supervisor.slots]
        assert None not in pids
        return [os.sched_getaffinity(pid) for pid in pids if pid is not None]

    first = bound()
    if setting == "off" or len(allowed) < 2:
        assert first == [allowed, allowed]
    else:  # one CPU each, not the same one, and one the master may use
        assert all(len(cpus) == 1 for cpus in first), first
        assert first[0] != first[1] and first[0] | first[1] <= allowed, first
    victim = host.supervisor.slots[1]
    pid = victim.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    await wait_replaced(host, 1, pid)
    assert bound() == first  # the new worker of the slot runs where the old one did
    connection = Connection(host.proxy)
    try:
        assert await connection.get("/") == (200, "blue")
    finally:
        await connection.close()


async def test_a_worker_that_stops_answering_is_killed_and_replaced(
    start_host: StartHost, backend_factory: BackendFactory
) -> None:
    blue = await backend_factory("blue", echo("blue"))
    host = await start_host({"blue": [blue]})
    slot = host.supervisor.slots[1]
    pid = slot.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # alive, but answers nothing: hung
    try:
        await wait_replaced(host, 1, pid)
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    # The hung one was killed, not left behind.
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    connections = await pinned_clients(host, 2)
    await close_all(connections)


async def test_workers_that_cannot_start_stop_the_master_with_one_line(
    backend_factory: BackendFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blue = await backend_factory("blue", echo("blue"))
    config = config_for({"blue": [blue.address]})
    # A config the workers cannot parse (the master's own was built in code).
    config = replace(config, text="routes: [", state=StateConfig(str(tmp_path / "s.json")))
    monkeypatch.setenv("POINTSMAN_TOKEN", TOKEN)
    service = Service(config, workers=2)
    with pytest.raises(WorkerStartError) as caught:
        await service.start()
    await service.stop()
    assert "worker 0 exited with code 3 before it was ready" in str(caught.value)


async def test_sigterm_drains_every_worker_then_the_master_exits_0(
    backend_factory: BackendFactory, tmp_path: Path
) -> None:
    entered: list[str] = []  # request ids of slow requests that reached the backend
    arrived = asyncio.Event()
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        seen = request.headers.get("X-Request-Id", "")
        if request.path == "/slow":
            entered.append(seen)
            arrived.set()
            async with asyncio.timeout(LIMIT):
                await release.wait()
        return web.Response(text=f"blue {request.path}", headers={"X-Seen-Id": seen})

    backend = await backend_factory("blue", handler)
    port, admin = free_port(), free_port()
    config = tmp_path / "run.yaml"
    config.write_text(run_config(port, admin, backend.address, tmp_path / "state.json"))
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        proc: Process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "control.cli", "run", "--config", str(config),
            "--workers", "2",
            stdout=out, stderr=out, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        await wait_listening(port, proc, log)
        # Raw keep-alive connections until both workers hold one.
        by_worker: dict[str, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}
        for _ in range(64):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            streams.append((reader, writer))
            writer.write(b"GET /fast HTTP/1.1\r\nHost: shop.test\r\n\r\n")
            async with asyncio.timeout(LIMIT):
                status, headers, _ = await read_response(reader)
            assert status == 200
            by_worker.setdefault(headers["x-seen-id"].rsplit("-", 1)[0], (reader, writer))
            if len(by_worker) == 2:
                break
        assert len(by_worker) == 2, tail(log)
        # A slow request in flight on each worker.
        for _, writer in by_worker.values():
            arrived.clear()
            writer.write(b"GET /slow HTTP/1.1\r\nHost: shop.test\r\n\r\n")
            async with asyncio.timeout(LIMIT):
                await arrived.wait()
        assert {i.rsplit("-", 1)[0] for i in entered} == set(by_worker)
        proc.send_signal(signal.SIGTERM)
        for _ in range(200):
            if await refuses_connections(port):
                break
            await asyncio.sleep(0.025)  # the process gives no sign that it stopped accepting
        else:
            raise AssertionError(f"still accepting after SIGTERM:\n{tail(log)}")
        assert proc.returncode is None, "exited with requests in flight"
        release.set()
        for reader, _ in by_worker.values():
            async with asyncio.timeout(LIMIT):
                status, headers, body = await read_response(reader)
            assert (status, body) == (200, b"blue /slow")
            assert headers.get("connection", "").lower() == "close"
        async with asyncio.timeout(LIMIT):
            code = await proc.wait()
        assert code == 0, tail(log)
        text = tail(log)
        assert "worker 0: draining" in text and "worker 1: draining" in text, text
        assert await refuses_connections(admin)
    finally:
        for _, writer in streams:
            writer.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.parametrize("value", ["0", "lots", "513"])
def test_run_refuses_a_bad_workers_option_with_one_line(tmp_path: Path, value: str) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(run_config(free_port(), free_port(), "127.0.0.1:9", tmp_path / "s.json"))
    result = subprocess.run(
        [sys.executable, "-m", "control.cli", "run", "--config", str(config), "--workers", value],
        capture_output=True,
        text=True,
        timeout=LIMIT,
        check=False,
    )
    assert result.returncode == 2
    assert f"argument --workers: expected 'auto' or 1..512, got '{value}'" in result.stderr


async def test_an_endpoint_ejected_by_one_worker_takes_no_traffic_on_any(
    start_host: StartHost, backend_factory: BackendFactory
) -> None:
    good = await backend_factory("good", echo("good"))
    bad = await backend_factory("bad", echo("bad", status=500))
    host = await start_host(
        {"blue": [good, bad]},
        pool_extra={"blue": "ejection: {consecutive_failures: 3, backoff: 60s}"},
    )
    connections = await pinned_clients(host, 2)
    first, last = connections[0], connections[-1]
    try:
        # On the first worker, until it has seen bad fail three times in a row and ejected it.
        for i in range(100):
            await first.get(f"/e/{i}")
            code, route = await host.call("GET", ROUTE)
            assert code == 200, route
            endpoints = route["pools"]["blue"]["endpoints"]
            if not next(e for e in endpoints if e["address"] == bad.address)["healthy"]:
                break
        else:
            raise AssertionError("bad was never ejected")
        await host.metrics()  # a round trip to every worker: each has read what came before
        answers = [await last.get(f"/after/{i}") for i in range(20)]
    finally:
        await close_all(connections)
    assert last.worker != first.worker
    assert answers == [(200, "good")] * 20


async def test_a_worker_that_keeps_dying_before_it_is_ready_stops_the_master(
    backend_factory: BackendFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blue = await backend_factory("blue", echo("blue"))
    config = config_for({"blue": [blue.address]})
    config = replace(config, state=StateConfig(str(tmp_path / "s.json")))
    monkeypatch.setenv("POINTSMAN_TOKEN", TOKEN)
    service = Service(config, workers=2)
    run = asyncio.create_task(service.run())
    deadline = time.monotonic() + LIMIT
    while service.supervisor is None or not all(s.ready for s in service.supervisor.slots):
        assert time.monotonic() < deadline and not run.done(), "not started"
        await asyncio.sleep(0.02)  # run() gives no sign of having started
    supervisor = service.supervisor
    # From now on a new worker cannot start (as after a broken install under a running master).
    supervisor.config_text = "routes: ["
    pid = supervisor.slots[0].pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    async with asyncio.timeout(30):  # five tries with a backoff of 0.2 + 0.4 + 0.8 + 1.6 s
        code = await run
    assert code == 1
    assert supervisor.failure == (
        "worker 0 died before it was ready 5 times in a row (last exit code 3): stopping"
    )
    assert all(slot.process is None or slot.process.returncode is not None
               for slot in supervisor.slots)  # fmt: skip
