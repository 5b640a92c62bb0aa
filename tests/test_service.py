"""The service's lifecycle around the routing state: restarts (clean and SIGKILL) keep what the
control API acknowledged, the persisted state wins over the config, config drift is reported and
survived, and startups that must not happen (corrupt state, open admin API) fail with one line.

In-process tests run `control.service.Service`; the crash and start-up-refusal tests run
`python -m control.cli run` as a real process, as an init system would.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from control.service import Service, StartupError
from proxy.config import Address, Config
from tests.conftest import Backend, BackendFactory, free_port
from tests.test_api import (
    LIMIT,
    ROUTE,
    TOKEN,
    Running,
    assert_version,
    service_config,
    start_running,
)

ROOT = Path(__file__).resolve().parents[1]
TOKEN_ENV = "POINTSMAN_TOKEN"
READY_WITHIN = 15.0  # seconds for a `pointsman run` process to answer on its admin listener


@asynccontextmanager
async def running(config: Config, blue: Backend, green: Backend) -> AsyncIterator[Running]:
    """A started Service with its own client session; stopped (clients first) on exit."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=LIMIT)) as session:
        rs = await start_running(config, blue, green, session)
        try:
            yield rs
        finally:
            await session.close()
            await rs.service.stop()


async def two_backends(backend_factory: BackendFactory) -> tuple[Backend, Backend]:
    return await backend_factory("blue"), await backend_factory("green")


# --- in-process restarts -------------------------------------------------------------------


async def test_restart_keeps_the_flip_its_version_and_what_to_roll_back_to(
    backend_factory: BackendFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blue, green = await two_backends(backend_factory)
    config = service_config(tmp_path, blue, green)
    monkeypatch.setenv(config.admin.token_env, TOKEN)

    async with running(config, blue, green) as rs:
        answer = await rs.call("POST", ROUTE + "/flip", {"to": "green"})
        assert answer.status == 200, answer.text
        version = answer.body["version"]
        assert set(await rs.backends_of(10)) == {"green"}

    async with running(config, blue, green) as rs:
        answer = await rs.call("GET", ROUTE)
        assert answer.status == 200, answer.text
        body = answer.body
        assert body["version"] == version
        assert_version(answer, version)
        assert body["weights"] == {"blue": 0, "green": 100}
        assert body["live"] == "green"
        assert body["flips"] == 1
        assert body["previous"] == {"weights": {"blue": 100, "green": 0}, "live": "blue"}
        assert set(await rs.backends_of(20)) == {"green"}
        # The rollback target survived too.
        answer = await rs.call("POST", ROUTE + "/rollback")
        assert answer.status == 200, answer.text
        assert answer.body["version"] == version + 1
        assert set(await rs.backends_of(20)) == {"blue"}


async def test_persisted_weights_win_over_the_configs_weights(
    backend_factory: BackendFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blue, green = await two_backends(backend_factory)
    config = service_config(tmp_path, blue, green, weights={"blue": 100, "green": 0})
    monkeypatch.setenv(config.admin.token_env, TOKEN)
    async with running(config, blue, green) as rs:
        answer = await rs.call("PUT", ROUTE + "/weights", {"weights": {"blue": 0, "green": 3}})
        assert answer.status == 200, answer.text
        version = answer.body["version"]

    # The operator edits the config's weights; the persisted state still decides.
    edited = service_config(tmp_path, blue, green, weights={"blue": 50, "green": 50})
    async with running(edited, blue, green) as rs:
        answer = await rs.call("GET", ROUTE)
        assert answer.body["weights"] == {"blue": 0, "green": 3}
        assert answer.body["version"] == version
        assert set(await rs.backends_of(20)) == {"green"}


def with_second_route(config: Config) -> Config:
    shop = config.routes[0]
    extra = replace(shop, name="catalog", path_prefix="/catalog")
    return replace(config, routes=(extra, shop))


async def test_a_route_removed_from_the_config_is_dropped_with_a_warning(
    backend_factory: BackendFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    blue, green = await two_backends(backend_factory)
    config = service_config(tmp_path, blue, green)
    monkeypatch.setenv(config.admin.token_env, TOKEN)
    async with running(with_second_route(config), blue, green) as rs:
        for route in ("catalog", "shop"):
            answer = await rs.call("POST", f"/v1/routes/{route}/flip", {"to": "green"})
            assert answer.status == 200, answer.text
        version = answer.body["version"]

    caplog.set_level(logging.INFO, logger="pointsman")
    caplog.clear()
    async with running(config, blue, green) as rs:
        answer = await rs.call("GET", "/v1/routes")
        assert answer.status == 200, answer.text
        assert [route["name"] for route in answer.body["routes"]] == ["shop"]
        assert answer.body["version"] >= version
        shop = answer.body["routes"][0]
        assert (shop["weights"], shop["live"]) == ({"blue": 0, "green": 100}, "green")
        assert (await rs.call("GET", "/v1/routes/catalog")).status == 404
        assert set(await rs.backends_of(10)) == {"green"}

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("'catalog'" in w and "no longer in the config" in w for w in warnings), warnings


async def test_a_pool_removed_from_the_config_is_dropped_with_a_warning(
    backend_factory: BackendFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    blue, green = await two_backends(backend_factory)
    config = service_config(tmp_path, blue, green)
    monkeypatch.setenv(config.admin.token_env, TOKEN)
    async with running(config, blue, green) as rs:
        answer = await rs.call("PUT", ROUTE + "/weights", {"weights": {"blue": 40, "green": 60}})
        assert answer.status == 200, answer.text

    shop = config.routes[0]
    blue_only = replace(config, routes=(replace(shop, pools=shop.pools[:1]),))
    caplog.set_level(logging.INFO, logger="pointsman")
    caplog.clear()
    async with running(blue_only, blue, green) as rs:
        answer = await rs.call("GET", ROUTE)
        assert answer.status == 200, answer.text
        assert answer.body["weights"] == {"blue": 40}
        assert list(answer.body["pools"]) == ["blue"]
        assert set(await rs.backends_of(10)) == {"blue"}

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("'green'" in w and "no longer in the config" in w for w in warnings), warnings


CORRUPT_STATES: list[tuple[str, bytes]] = [
    ("not JSON", b"{this is not json"),
    ("empty file", b""),
    ("truncated", b'{"format": 1, "version": 3, "updated_at": 1.0, "routes": [{"na'),
    ("wrong shape", b'{"format": 1, "version": "three", "updated_at": 1.0, "routes": []}'),
    ("newer format", b'{"format": 99, "version": 3, "updated_at": 1.0, "routes": []}'),
]


@pytest.mark.parametrize(
    "content", [c for _, c in CORRUPT_STATES], ids=[i for i, _ in CORRUPT_STATES]
)
async def test_a_corrupt_state_file_refuses_startup_naming_the_file(
    backend_factory: BackendFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    content: bytes,
) -> None:
    blue, green = await two_backends(backend_factory)
    config = service_config(tmp_path, blue, green)
    monkeypatch.setenv(config.admin.token_env, TOKEN)
    state = tmp_path / "state.json"
    assert config.state.path == str(state)
    state.write_bytes(content)
    service = Service(config)
    try:
        with pytest.raises(StartupError) as raised:
            await service.start()
    finally:
        await service.stop()
    message = str(raised.value)
    assert config.state.path in message
    assert "\n" not in message
    # Nothing was overwritten: the operator can still inspect (or repair) the file.
    assert state.read_bytes() == content


async def test_a_non_loopback_admin_listener_needs_a_token(
    backend_factory: BackendFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blue, green = await two_backends(backend_factory)
    config = service_config(tmp_path, blue, green, admin_host="0.0.0.0")
    monkeypatch.delenv(config.admin.token_env, raising=False)
    service = Service(config)
    try:
        with pytest.raises(StartupError) as raised:
            await service.start()
    finally:
        await service.stop()
    message = str(raised.value)
    assert config.admin.token_env in message
    assert "\n" not in message

    monkeypatch.setenv(config.admin.token_env, TOKEN)
    async with running(config, blue, green) as rs:
        assert (await rs.call("GET", ROUTE)).status == 200


# --- `pointsman run` as a process ----------------------------------------------------------


def run_config(
    tmp_path: Path,
    port: int,
    admin: Address,
    blue: str,
    green: str,
    state: Path | None = None,
) -> Path:
    state = state or tmp_path / "state" / "state.json"
    path = tmp_path / "pointsman.yaml"
    path.write_text(f"""\
listen: 127.0.0.1:{port}
admin: {{listen: "{admin}"}}
timeouts: {{grace: 1s}}
state: {{path: "{state}"}}
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


def process_env(token: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    if token is not None:
        env[TOKEN_ENV] = token
    return env


def run_to_exit(config: Path, token: str | None) -> subprocess.CompletedProcess[str]:
    """`pointsman run` that is expected to refuse to start (so it exits by itself)."""
    try:
        return subprocess.run(
            [sys.executable, "-m", "control.cli", "run", "--config", str(config)],
            cwd=ROOT,
            env=process_env(token),
            capture_output=True,
            text=True,
            timeout=READY_WITHIN,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        raise AssertionError(f"pointsman run did not refuse to start: {err.stderr!r}") from None


def assert_one_line_refusal(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit code non-zero, no traceback, and exactly one line on stderr that names `needles`."""
    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


class Process:
    """One `pointsman run` process; its output goes to a log file for failure messages."""

    def __init__(self, config: Path, log: Path, token: str | None) -> None:
        self.config = config
        self.log = log
        self.token = token
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> Process:
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "control.cli", "run", "--config", str(self.config),
                cwd=ROOT, stdout=out, stderr=out, env=process_env(self.token),
            )  # fmt: skip
        return self

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    async def wait_ready(self, admin_url: str, session: aiohttp.ClientSession) -> None:
        """Poll /healthz until it answers 200 (the process gives no other sign)."""
        assert self.proc is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_WITHIN
        while True:
            if self.proc.returncode is not None:
                raise AssertionError(f"pointsman exited {self.proc.returncode}:\n{self.tail()}")
            try:
                async with session.get(admin_url + "/healthz") as resp:
                    if resp.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            if loop.time() > deadline:
                raise AssertionError(f"not ready within {READY_WITHIN} s:\n{self.tail()}")
            await asyncio.sleep(0.05)

    async def kill(self) -> int:
        """SIGKILL (no chance to flush or clean up) and reap."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.kill()
        async with asyncio.timeout(LIMIT):
            return await self.proc.wait()

    async def terminate(self) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(LIMIT):
            return await self.proc.wait()


async def call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    body: object = None,
    token: str | None = TOKEN,
) -> tuple[int, Any]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    async with session.request(method, url, json=body, headers=headers) as resp:
        return resp.status, await resp.json()


async def backends_via(session: aiohttp.ClientSession, proxy_url: str, count: int) -> set[str]:
    seen = set()
    for i in range(count):
        async with session.get(f"{proxy_url}/item/{i}") as resp:
            await resp.read()
            assert resp.status == 200
            seen.add(resp.headers["X-Backend"])
    return seen


# A route's weights, its live pool, and the backends 20 requests through the proxy reach.
Outcome = tuple[dict[str, int], str | None, set[str]]


async def test_sigkill_right_after_an_acknowledged_change_keeps_it(
    backend_factory: BackendFactory, tmp_path: Path
) -> None:
    blue, green = await two_backends(backend_factory)
    port, admin = free_port(), Address("127.0.0.1", free_port())
    config = run_config(tmp_path, port, admin, blue.address, green.address)
    admin_url, proxy_url = f"http://{admin}", f"http://127.0.0.1:{port}"
    log = tmp_path / "pointsman.log"
    flipped: Outcome = ({"blue": 0, "green": 100}, "green", {"green"})
    initial: Outcome = ({"blue": 100, "green": 0}, "blue", {"blue"})
    split: Outcome = ({"blue": 0, "green": 9}, "green", {"green"})
    changes: list[tuple[tuple[str, str, object], Outcome]] = [
        (("POST", "/flip", {"to": "green"}), flipped),
        (("POST", "/rollback", None), initial),
        (("PUT", "/weights", {"weights": {"green": 9}}), split),
    ]
    # What the next process must show: the version and the outcome of the last acknowledged change.
    version, outcome = 1, initial
    process: Process | None = None
    try:
        for step in [*changes, None]:
            process = await Process(config, log, TOKEN).start()
            # A fresh client per process: nothing pooled to a killed process gets reused.
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=LIMIT)) as session:
                await process.wait_ready(admin_url, session)
                weights, live, backends = outcome
                status, route = await call(session, "GET", admin_url + ROUTE)
                assert status == 200, route
                assert route["version"] == version, route
                assert (route["weights"], route["live"]) == (weights, live)
                assert await backends_via(session, proxy_url, 20) == backends, process.tail()
                if step is None:
                    break
                method, suffix, body = step[0]
                async with session.request(
                    method,
                    admin_url + ROUTE + suffix,
                    json=body,
                    headers={"Authorization": f"Bearer {TOKEN}"},
                ) as resp:
                    status, answered = resp.status, await resp.json()
                if status == 200:
                    await process.kill()  # the moment the change is acknowledged
                assert status == 200, answered
                assert process.proc is not None
                assert process.proc.returncode == -signal.SIGKILL
                version, outcome = answered["version"], step[1]
        assert version == 1 + len(changes)
    finally:
        if process is not None:
            await process.kill()


async def test_run_refuses_a_corrupt_state_file_with_one_line(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state.json"
    state.write_bytes(b'{"format": 1, "version": 7, "routes": [')  # torn by hand, not by us
    config = run_config(
        tmp_path,
        free_port(),
        Address("127.0.0.1", free_port()),
        f"127.0.0.1:{free_port()}",
        f"127.0.0.1:{free_port()}",
        state=state,
    )
    result = await asyncio.to_thread(run_to_exit, config, TOKEN)
    assert_one_line_refusal(result, str(state))
    assert state.read_bytes().endswith(b"[")  # left as it was for the operator


async def test_run_refuses_a_non_loopback_admin_listener_without_a_token(
    tmp_path: Path,
) -> None:
    admin = Address("0.0.0.0", free_port())
    config = run_config(
        tmp_path,
        free_port(),
        admin,
        f"127.0.0.1:{free_port()}",
        f"127.0.0.1:{free_port()}",
    )
    result = await asyncio.to_thread(run_to_exit, config, None)
    assert_one_line_refusal(result, TOKEN_ENV)
    # An empty token is no token.
    result = await asyncio.to_thread(run_to_exit, config, "   ")
    assert_one_line_refusal(result, TOKEN_ENV)


async def test_run_starts_with_a_non_loopback_admin_listener_and_a_token(
    backend_factory: BackendFactory, tmp_path: Path
) -> None:
    blue, green = await two_backends(backend_factory)
    port, admin_port = free_port(), free_port()
    config = run_config(tmp_path, port, Address("0.0.0.0", admin_port), blue.address, green.address)
    admin_url = f"http://127.0.0.1:{admin_port}"
    process = await Process(config, tmp_path / "pointsman.log", TOKEN).start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=LIMIT)) as session:
            await process.wait_ready(admin_url, session)
            status, body = await call(session, "GET", admin_url + ROUTE, token=None)
            assert status == 401, body  # reads are not open off loopback
            status, body = await call(session, "GET", admin_url + ROUTE)
            assert status == 200, body
            assert await backends_via(session, f"http://127.0.0.1:{port}", 5) == {"blue"}
        assert await process.terminate() == 0, process.tail()
    finally:
        await process.kill()
