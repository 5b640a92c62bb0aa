"""Canary rollouts end to end on 127.0.0.1: a real Service with real upstreams under a steady
load, driven through the control API with short intervals. Checked as an operator would:
where the traffic goes, whether any request failed, the rollout's status, the timing, the
webhooks, and what survives a restart."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from control.service import Service
from proxy.config import Address, StateConfig
from tests.conftest import Backend, BackendFactory, config_for, serve_app
from tests.test_api import TOKEN, admin_port

LIMIT = 5.0  # seconds any single HTTP exchange may take
ROLLOUT = "/v1/routes/shop/rollout"
# Load: concurrent clients sending requests back to back through the proxy.
LOAD_CLIENTS = 6


@dataclass
class Green:
    """The candidate's behaviour, switched by the test while the rollout runs."""

    error_share: float = 0.0  # share of requests answered 500
    delay: float = 0.0  # seconds added to every answer
    rng: random.Random = field(default_factory=lambda: random.Random(11))


@dataclass
class Load:
    """What the clients saw: (status, backend) per request, and transport failures."""

    results: Counter[tuple[int, str]] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)


@dataclass
class Running:
    service: Service
    session: aiohttp.ClientSession
    admin: str
    proxy: str
    green: Green
    state_path: Path

    async def call(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        data = None if body is None else json.dumps(body).encode()
        async with asyncio.timeout(LIMIT):
            async with self.session.request(
                method, self.admin + path, data=data, headers=headers
            ) as resp:
                return resp.status, json.loads(await resp.text())

    async def status(self) -> dict[str, Any]:
        code, body = await self.call("GET", ROLLOUT)
        assert code == 200, body
        return dict(body)

    async def wait_for(self, done: Callable[[dict[str, Any]], bool], limit: float) -> float:
        """Poll the rollout until `done(status)`; returns the monotonic time it held. The
        rollout changes server-side on its own clock: there is no event to await here."""
        deadline = time.monotonic() + limit
        while True:
            status = await self.status()
            if done(status):
                return time.monotonic()
            assert time.monotonic() < deadline, f"timed out; last status: {status}"
            await asyncio.sleep(0.02)


async def run_load(proxy: str, stop: asyncio.Event, load: Load) -> None:
    async def client(session: aiohttp.ClientSession, n: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                async with session.get(f"{proxy}/item/{n}/{i}") as resp:
                    await resp.read()
                    load.results[(resp.status, resp.headers.get("X-Backend", "-"))] += 1
            except (aiohttp.ClientError, TimeoutError) as err:
                load.failures.append(repr(err))

    timeout = aiohttp.ClientTimeout(total=LIMIT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(client(session, n) for n in range(LOAD_CLIENTS)))


StartRollouts = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start_rollouts(
    backend_factory: BackendFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[StartRollouts]:
    started: list[Running] = []
    green = Green()

    async def green_handler(request: web.Request) -> web.StreamResponse:
        if green.delay:
            await asyncio.sleep(green.delay)
        if green.error_share and green.rng.random() < green.error_share:
            return web.Response(status=500, text="injected", headers={"X-Backend": "green"})
        return web.Response(text="green", headers={"X-Backend": "green"})

    backends: dict[str, Backend] = {}

    async def make(state_path: Path | None = None) -> Running:
        if not backends:
            backends["blue"] = await backend_factory("blue")
            backends["green"] = await backend_factory("green", green_handler)
        monkeypatch.setenv("POINTSMAN_TOKEN", TOKEN)
        config = config_for(
            {"blue": [backends["blue"].address], "green": [backends["green"].address]},
            weights={"blue": 100, "green": 0},
        )
        path = state_path or tmp_path / "state.json"
        config = replace(
            config,
            state=StateConfig(path=str(path)),
            admin=replace(config.admin, listen=Address("127.0.0.1", 0)),
            timeouts=replace(config.timeouts, grace=1.0),
        )
        service = Service(config)
        await service.start()
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=LIMIT))
        running = Running(
            service=service,
            session=session,
            admin=f"http://127.0.0.1:{admin_port(service)}",
            proxy=f"http://127.0.0.1:{service.proxy.port}",
            green=green,
            state_path=path,
        )
        started.append(running)
        return running

    yield make
    for running in started:
        await running.session.close()
        if running.service.plane is not None:
            await running.service.stop()


DOWNTIME = 0.5  # seconds between a stop and the start again
TICK_LAG = 0.1  # seconds an analysis tick (and its save) may run late on a busy machine


def spec(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "candidate": "green",
        "stable": "blue",
        "steps": [20, 50, 100],
        "step_interval": "0.6s",
        "analysis": {
            "interval": "0.2s",
            "min_requests": 5,
            "max_error_rate": 0.01,
            "max_p99_ms": 150,
            "failure_limit": 2,
        },
    }
    body.update(overrides)
    return body


async def test_a_healthy_candidate_is_promoted_step_by_step_with_no_failed_request(
    start_rollouts: StartRollouts,
) -> None:
    rs = await start_rollouts()
    load, stop = Load(), asyncio.Event()
    loader = asyncio.create_task(run_load(rs.proxy, stop, load))
    try:
        code, body = await rs.call("POST", ROLLOUT, spec())
        assert code == 201, body
        started = time.monotonic()
        seen_steps: dict[int, float] = {}

        def watch(status: dict[str, Any]) -> bool:
            seen_steps.setdefault(status["step"], time.monotonic())
            return bool(status["phase"] == "promoted")

        promoted = await rs.wait_for(watch, limit=15)
    finally:
        stop.set()
        await loader
    status = await rs.status()
    assert status["weights"] == {"blue": 0, "green": 100}
    # "start" enters the first step; the last step, held its interval, ends in "promoted".
    assert [e["event"] for e in status["history"]] == ["start", "step", "step", "promoted"]
    # Every request answered 200, by blue or by green; none failed in transport.
    assert load.failures == []
    assert {code for code, _ in load.results} == {200}
    assert load.results[(200, "green")] > 0 and load.results[(200, "blue")] > 0
    # Three steps of 0.6 s: promotion after 1.8 s, within 10 % (plus the polling grain).
    took = promoted - started
    assert 1.8 * 0.9 <= took <= 1.8 * 1.1 + 0.1, took
    assert sorted(seen_steps) == [0, 1, 2]
    _, route = await rs.call("GET", "/v1/routes/shop")
    assert route["weights"] == {"blue": 0, "green": 100}
    async with rs.session.get(rs.admin + "/metrics") as resp:
        metrics = await resp.text()
    assert 'pointsman_rollout_phase{phase="promoted",route="shop"} 1.0' in metrics
    assert 'pointsman_rollout_promotions_total{route="shop"} 1.0' in metrics
    assert 'pointsman_rollout_candidate_percent{candidate="green",route="shop"} 100.0' in metrics
    assert 'pointsman_rollout_analysis_threshold{check="error_rate",route="shop"} 0.01' in metrics
    assert 'pointsman_rollout_analysis_value{check="error_rate",route="shop"} 0.0' in metrics


@pytest.mark.parametrize("fault", ["errors", "latency"])
async def test_a_misbehaving_candidate_is_rolled_back_within_two_analysis_intervals(
    fault: str, start_rollouts: StartRollouts
) -> None:
    rs = await start_rollouts()
    interval = 0.25
    body = spec(
        steps=[5, 25, 50, 100],
        step_interval="2s",
        analysis={"interval": f"{interval}s", "min_requests": 5, "max_error_rate": 0.01,
                  "max_p99_ms": 100, "failure_limit": 2},
    )  # fmt: skip
    load, stop = Load(), asyncio.Event()
    loader = asyncio.create_task(run_load(rs.proxy, stop, load))
    try:
        code, answer = await rs.call("POST", ROLLOUT, body)
        assert code == 201, answer
        await rs.wait_for(lambda s: s["percent"] == 25, limit=10)
        if fault == "errors":
            rs.green.error_share = 0.10
        else:
            rs.green.delay = 0.2
        breach = time.time()  # wall clock, like the rollout's own analysis times
        await rs.wait_for(lambda s: s["phase"] == "failed", limit=10)
    finally:
        stop.set()
        await loader
    status = await rs.status()
    assert status["weights"] == {"blue": 100, "green": 0}
    check = "error_rate" if fault == "errors" else "p99_ms"
    assert check in status["reason"]
    failing = [c for c in status["last_analysis"]["checks"] if c["passed"] is False]
    assert check in {c["name"] for c in failing}
    # Rolled back within two analysis intervals of the breach, timed by the analysis that
    # failed it (so the test's polling is not counted; 0.1 s is left for the event loop of a
    # busy machine). A slow answer is only seen when it completes, so latency gets the
    # injected delay on top.
    allowed = 2 * interval + 0.1 + (rs.green.delay if fault == "latency" else 0.0)
    failed_after = status["last_analysis"]["at"] - breach
    assert 0 < failed_after <= allowed, failed_after
    # No request failed because of the rollback: the only errors are the injected ones.
    assert load.failures == []
    assert set(load.results) <= {(200, "blue"), (200, "green"), (500, "green")}
    _, route = await rs.call("GET", "/v1/routes/shop")
    assert route["weights"] == {"blue": 100, "green": 0}


async def test_manual_changes_wait_while_a_rollout_runs_and_one_rollout_per_route(
    start_rollouts: StartRollouts,
) -> None:
    rs = await start_rollouts()
    code, _ = await rs.call("POST", ROLLOUT, spec(step_interval="30s"))
    assert code == 201
    code, route = await rs.call("GET", "/v1/routes/shop")
    assert code == 200
    # ControlPlane.change refuses every manual traffic change while the rollout runs.
    for method, path, body in [
        ("PUT", "/v1/routes/shop/weights", {"weights": {"blue": 1}}),
        ("POST", "/v1/routes/shop/flip", {"to": "green"}),
        ("POST", "/v1/routes/shop/rollback", None),
    ]:
        code, answer = await rs.call(method, path, body)
        assert code == 409 and "rollout" in answer["error"], answer
        assert answer["detail"] == {"code": "rollout_in_progress"}, answer
    code, unchanged = await rs.call("GET", "/v1/routes/shop")
    assert unchanged["version"] == route["version"]
    assert unchanged["weights"] == route["weights"]
    code, body = await rs.call("POST", ROLLOUT, spec())
    assert code == 409 and body["detail"]["code"] == "rollout_exists", body
    code, body = await rs.call("POST", ROLLOUT + "/pause")
    assert code == 200 and body["phase"] == "paused"
    code, body = await rs.call(
        "PUT", "/v1/routes/shop/weights", {"weights": {"blue": 90, "green": 10}}
    )
    assert code == 200, body
    code, body = await rs.call("POST", ROLLOUT + "/abort")
    assert code == 200 and body["phase"] == "aborted"
    assert body["weights"] == {"blue": 100, "green": 0}
    code, body = await rs.call("POST", ROLLOUT + "/resume")
    assert code == 409, body


async def test_promote_and_bad_specs(start_rollouts: StartRollouts) -> None:
    rs = await start_rollouts()
    code, body = await rs.call("POST", ROLLOUT, spec(steps=[50, 20]))
    assert code == 400 and "steps" in body["error"], body
    code, body = await rs.call("POST", ROLLOUT, spec(candidate="purple"))
    assert code == 404, body
    code, body = await rs.call("GET", ROLLOUT)
    assert code == 404, body
    code, body = await rs.call("POST", ROLLOUT, spec(step_interval="30s"))
    assert code == 201
    code, body = await rs.call("POST", ROLLOUT + "/promote")
    assert code == 200 and body["phase"] == "promoted", body
    _, route = await rs.call("GET", "/v1/routes/shop")
    assert route["weights"] == {"blue": 0, "green": 100}


async def test_a_restart_resumes_the_step_with_the_time_already_spent(
    start_rollouts: StartRollouts, tmp_path: Path
) -> None:
    rs = await start_rollouts()
    code, _ = await rs.call("POST", ROLLOUT, spec(step_interval="30s"))
    assert code == 201
    await rs.wait_for(lambda s: s["time_in_step"] >= 1.0, limit=5)
    before = (await rs.status())["time_in_step"]
    read_at = time.monotonic()
    await rs.session.close()
    await rs.service.stop()
    rs.service.plane = None  # stopped: the fixture must not stop it again
    await asyncio.sleep(DOWNTIME)  # which must not count
    again = await start_rollouts(rs.state_path)
    status = await again.status()
    elapsed = time.monotonic() - read_at  # the bounds come from the clock, not a guess
    assert status["phase"] == "running"
    assert status["step"] == 0 and status["percent"] == 20
    # Nothing spent is lost (a clean stop saves), and the downtime is not counted.
    assert before <= status["time_in_step"] <= before + elapsed - DOWNTIME, (before, elapsed)
    _, route = await again.call("GET", "/v1/routes/shop")
    assert route["weights"] == {"blue": 80, "green": 20}


async def test_a_crash_loses_at_most_one_analysis_interval_of_step_time(
    start_rollouts: StartRollouts, tmp_path: Path
) -> None:
    rs = await start_rollouts()
    code, _ = await rs.call("POST", ROLLOUT, spec(step_interval="30s"))
    assert code == 201
    await rs.wait_for(lambda s: s["time_in_step"] >= 1.1, limit=5)
    before = (await rs.status())["time_in_step"]
    read_at = time.monotonic()
    # What a SIGKILL leaves behind: the state file as last written, no shutdown save.
    crashed = tmp_path / "crashed.json"
    crashed.write_bytes(rs.state_path.read_bytes())
    again = await start_rollouts(crashed)
    status = await again.status()
    elapsed = time.monotonic() - read_at  # the bounds come from the clock, not a guess
    assert status["step"] == 0 and status["phase"] == "running"
    # The file is saved every analysis interval (0.2 s): at most that much is lost (plus
    # TICK_LAG for a tick that runs late), and the time to start again counts at most.
    after = status["time_in_step"]
    assert before - 0.2 - TICK_LAG <= after <= before + elapsed, (before, after, elapsed)


async def test_webhooks_in_order_and_a_refusing_confirm_hook_stops_the_final_step(
    start_rollouts: StartRollouts,
) -> None:
    events: list[str] = []
    confirms = asyncio.Queue[int]()
    paused = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        events.append((await request.json())["event"])
        if events[-1] == "paused":
            paused.set()
        return web.Response(text="ok")

    async def confirm(request: web.Request) -> web.Response:
        events.append("confirm")
        await confirms.put(1)
        return web.Response(status=403, text="not on a friday")

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_post("/confirm", confirm)
    runner, port = await serve_app(app)
    try:
        rs = await start_rollouts()
        hooks = {"url": f"http://127.0.0.1:{port}/hook",
                 "confirm_url": f"http://127.0.0.1:{port}/confirm", "timeout": "1s"}  # fmt: skip
        body = spec(steps=[20, 100], step_interval="0.3s", webhooks=hooks,
                    analysis={"interval": "0.1s", "min_requests": 1})  # fmt: skip
        load, stop = Load(), asyncio.Event()
        loader = asyncio.create_task(run_load(rs.proxy, stop, load))
        try:
            code, answer = await rs.call("POST", ROLLOUT, body)
            assert code == 201, answer
            async with asyncio.timeout(10):
                await confirms.get()
            status = await rs.wait_for(lambda s: s["phase"] == "paused", limit=5)
            assert status
        finally:
            stop.set()
            await loader
        final = await rs.status()
        assert final["weights"] == {"blue": 80, "green": 20}  # never the final step
        assert "confirm hook refused" in final["reason"] and "403" in final["reason"]
        async with asyncio.timeout(5):
            await paused.wait()
        # "start" enters the first step (20 %); before the final one the confirm hook is asked.
        assert events == ["start", "confirm", "paused"]
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(("fault", "exit_code"), [(None, 0), ("errors", 1)])
async def test_canary_wait_exits_0_when_promoted_and_1_when_rolled_back(
    fault: str | None, exit_code: int, start_rollouts: StartRollouts
) -> None:
    import os
    import sys

    rs = await start_rollouts()
    if fault == "errors":
        rs.green.error_share = 0.5
    load, stop = Load(), asyncio.Event()
    loader = asyncio.create_task(run_load(rs.proxy, stop, load))
    env = {**os.environ, "POINTSMAN_ADMIN": rs.admin, "POINTSMAN_TOKEN": TOKEN}
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "control.cli", "canary", "shop", "green",
            "--steps", "20,100", "--interval", "0.5s", "--analysis-interval", "0.1s",
            "--min-requests", "3", "--max-error-rate", "0.05", "--wait",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        async with asyncio.timeout(20):
            out, err = await proc.communicate()
    finally:
        stop.set()
        await loader
    assert proc.returncode == exit_code, (out.decode(), err.decode())
    last = out.decode().strip().splitlines()[-1]
    if exit_code == 0:
        assert "promoted" in last, out.decode()
    else:
        assert "rolled back" in last and "error_rate" in last, out.decode()
    assert load.failures == []
