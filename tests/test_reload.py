"""Config reload: `POST /v1/reload`, `pointsman reload` and SIGHUP read the config file again.
A valid one serves new requests on every worker without closing a connection; an invalid one
changes nothing and says why."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from control.service import Service
from proxy.config import Address, Listener
from proxy.config_loader import load_config
from tests.conftest import BackendFactory, free_port
from tests.test_api import TOKEN
from tests.test_cli import ROOT, read_response, tail, wait_listening
from tests.test_cli_control import pointsman
from tests.test_workers import (
    Connection,
    Host,
    Load,
    close_all,
    echo,
    pinned_clients,
    run_service,
)

pytestmark = pytest.mark.timeout(120)

LIMIT = 10.0  # seconds any single exchange may take


def config_text(
    blue: str,
    green: str,
    *,
    state: Path,
    port: int = 0,
    admin: int = 0,
    load_route: bool = False,
    upstream_timeout: str = "30s",
) -> str:
    """Route `shop` (blue 100, green 0) and, with `load_route`, route `load` sending /load/
    to green. Port 0 is replaced by the running service's ports."""
    extra = ""
    if load_route:
        extra = (
            "\n  - name: load\n    hosts: ['*']\n    path_prefix: /load/\n    pools:\n"
            f"      green: {{endpoints: ['{green}']}}\n"
        )
    return f"""\
listen: 127.0.0.1:{port or 1}
admin: {{listen: 127.0.0.1:{admin or 2}}}
state: {{path: "{state}"}}
timeouts: {{grace: 2s, upstream: {upstream_timeout}}}
routes:
  - name: shop
    hosts: ["*"]
    path_prefix: /
    pools:
      blue: {{endpoints: ["{blue}"]}}
      green: {{endpoints: ["{green}"]}}
    weights: {{blue: 100}}
{extra}"""


@dataclass
class Reloadable:
    service: Service
    path: Path
    session: aiohttp.ClientSession
    admin: str
    proxy: str

    async def reload(self) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with asyncio.timeout(LIMIT):
            async with self.session.post(self.admin + "/v1/reload", headers=headers) as resp:
                return resp.status, json.loads(await resp.text())


Start = Callable[..., Awaitable[Reloadable]]


@pytest.fixture
async def start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Start]:
    """start(text, workers=None) -> Reloadable: a Service reading its config from a file."""
    monkeypatch.setenv("POINTSMAN_TOKEN", TOKEN)
    started: list[Reloadable] = []

    async def make(text: str, workers: int | None = None) -> Reloadable:
        path = tmp_path / "pointsman.yaml"
        path.write_text(text)
        config = load_config(str(path))
        config = replace(
            config,
            listeners=(Listener(Address("127.0.0.1", 0)),),
            admin=replace(config.admin, listen=Address("127.0.0.1", 0)),
        )
        service, session, admin, proxy = await run_service(config, workers)
        running = Reloadable(service, path, session, admin, proxy)
        started.append(running)
        return running

    yield make
    for running in started:
        await running.session.close()
        await running.service.stop()


async def backend_of(session: aiohttp.ClientSession, url: str) -> str:
    async with asyncio.timeout(LIMIT):
        async with session.get(url) as resp:
            await resp.read()
            assert resp.status == 200, resp.status
            return resp.headers["X-Backend"]


async def test_a_valid_reload_serves_the_new_routes_on_the_same_connection(
    start: Start, backend_factory: BackendFactory, tmp_path: Path
) -> None:
    blue = await backend_factory("blue", echo("blue"))
    green = await backend_factory("green", echo("green"))
    state = tmp_path / "state.json"
    rs = await start(config_text(blue.address, green.address, state=state))
    # One keep-alive connection across the reload.
    client = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1), timeout=aiohttp.ClientTimeout(total=LIMIT)
    )
    try:
        assert await backend_of(client, rs.proxy + "/load/1") == "blue"
        rs.path.write_text(
            config_text(
                blue.address, green.address, state=state, load_route=True, upstream_timeout="5s"
            )
        )
        code, body = await rs.reload()
        assert code == 200, body
        assert body["config"] == str(rs.path)
        assert body["version"] == 2  # route `load` is new: its state is added
        assert any("'load' is new" in w for w in body["warnings"]), body
        assert body["restart_needed"] == ["listen", "admin"]  # the test runs on port 0
        assert 0 < body["seconds"] < LIMIT
        assert await backend_of(client, rs.proxy + "/load/2") == "green"
        assert await backend_of(client, rs.proxy + "/other") == "blue"
        connector = client.connector
        assert connector is not None
        # Still the one connection: the reload closed none.
        assert sum(len(v) for v in connector._conns.values()) == 1
        assert rs.service.proxy.ctx is not None
        assert rs.service.proxy.ctx.upstream_timeout == 5.0
        routes = (await (await rs.session.get(rs.admin + "/v1/routes")).json())["routes"]
        assert [r["name"] for r in routes] == ["shop", "load"]
    finally:
        await client.close()


async def test_an_invalid_config_changes_nothing_and_names_its_problems(
    start: Start, backend_factory: BackendFactory, tmp_path: Path
) -> None:
    blue = await backend_factory("blue", echo("blue"))
    green = await backend_factory("green", echo("green"))
    state = tmp_path / "state.json"
    rs = await start(config_text(blue.address, green.address, state=state))
    before = state.read_bytes()
    rs.path.write_text(
        config_text(blue.address, green.address, state=state).replace("blue: 100", "blue: lots")
    )
    code, body = await rs.reload()
    assert code == 400, body
    assert body["detail"]["code"] == "bad_config"
    assert body["detail"]["problems"] == [
        f"{rs.path}:12: routes[0].weights.blue: expected an integer in 0..1000000, got 'lots'"
    ], body
    assert state.read_bytes() == before
    assert await backend_of(rs.session, rs.proxy + "/x") == "blue"

    run = await pointsman("reload", admin=rs.admin, token=TOKEN)
    assert run.code == 1
    lines = run.err.strip().splitlines()
    assert lines[0].startswith(f"pointsman: 400 {rs.path} has problems; nothing changed")
    assert lines[1:] == body["detail"]["problems"]

    rs.path.write_text(config_text(blue.address, green.address, state=state, load_route=True))
    run = await pointsman("reload", admin=rs.admin, token=TOKEN)
    assert run.code == 0, run.err
    assert run.out.startswith(f"reloaded {rs.path} in ")
    assert "state version 2" in run.out


async def test_reloads_under_keep_alive_load_on_two_workers(
    start: Start, backend_factory: BackendFactory, tmp_path: Path
) -> None:
    """20 reloads, the route for /load/ appearing and going: no request fails, and after
    each answer every worker routes by the config just reloaded."""
    blue = await backend_factory("blue", echo("blue"))
    green = await backend_factory("green", echo("green"))
    state = tmp_path / "state.json"
    texts = [
        config_text(blue.address, green.address, state=state, load_route=route)
        for route in (True, False)
    ]
    rs = await start(texts[1], workers=2)
    host = Host(rs.service, rs.session, rs.admin, rs.proxy)
    load = Load(await pinned_clients(host, 2))
    loader = asyncio.create_task(load.run())
    changes: list[tuple[float, float, str]] = []
    try:
        await load.more(len(load.connections))
        for i in range(20):
            rs.path.write_text(texts[i % 2])
            asked = time.monotonic()
            code, body = await rs.reload()
            assert code == 200, body
            changes.append((asked, time.monotonic(), "green" if i % 2 == 0 else "blue"))
            await load.more(2 * len(load.connections))
    finally:
        load.stop.set()
        await loader
        await close_all(load.connections)
    assert load.failures == []
    assert {s.status for s in load.sent} == {200}
    assert len({s.worker for s in load.sent}) == 2
    wrong = []
    for k, (_, answered, expected) in enumerate(changes):
        until = changes[k + 1][0] if k + 1 < len(changes) else float("inf")
        window = [s for s in load.sent if answered < s.started < until]
        assert window, f"no request after reload {k}"
        wrong += [(k, s.backend) for s in window if s.backend != expected]
    assert wrong == []


async def logged(log: Path, text: str) -> None:
    """Wait until the process's log says `text` (its only sign that a signal was handled)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LIMIT
    while text not in tail(log):
        if loop.time() > deadline:
            raise AssertionError(f"the log never said {text!r}:\n{tail(log)}")
        await asyncio.sleep(0.05)


async def test_sighup_reloads_a_running_pointsman(
    backend_factory: BackendFactory, tmp_path: Path
) -> None:
    blue = await backend_factory("blue", echo("blue"))
    green = await backend_factory("green", echo("green"))
    port, admin = free_port(), free_port()
    state = tmp_path / "state.json"
    config = tmp_path / "run.yaml"

    def write(text: str) -> None:
        config.write_text("workers: 2\n" + text)

    write(config_text(blue.address, green.address, state=state, port=port, admin=admin))
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "control.cli", "run", "--config", str(config),
            cwd=ROOT, stdout=out, stderr=out, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    writer: asyncio.StreamWriter | None = None
    try:
        await wait_listening(port, proc, log)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)

        async def get(path: str) -> str:
            assert writer is not None
            writer.write(f"GET {path} HTTP/1.1\r\nHost: shop.test\r\n\r\n".encode())
            async with asyncio.timeout(5):
                status, headers, _ = await read_response(reader)
            assert status == 200
            return headers["x-backend"]

        assert await get("/load/1") == "blue"
        load = Load([Connection(f"http://127.0.0.1:{port}") for _ in range(4)])
        loader = asyncio.create_task(load.run())
        await load.more(8)
        # An invalid config: logged, nothing changes.
        write(config_text(blue.address, green.address, state=state, port=port, admin=admin)
              .replace("path_prefix: /", "path_prefix: nope"))  # fmt: skip
        proc.send_signal(signal.SIGHUP)
        await logged(log, "nothing changed")
        assert "routes[0].path_prefix" in log.read_text(errors="replace")
        assert await get("/load/2") == "blue"
        # A valid one: the same connection is routed by it.
        write(
            config_text(
                blue.address, green.address, state=state, port=port, admin=admin,
                load_route=True,
            )
        )  # fmt: skip
        proc.send_signal(signal.SIGHUP)
        await logged(log, "reload by SIGHUP")
        assert await get("/load/3") == "green"
        await load.more(8)
        load.stop.set()
        await loader
        await close_all(load.connections)
        # The load went on through both signals: nothing failed, every answer a 200, from
        # blue before the valid reload and from green after it.
        assert load.failures == []
        assert {s.status for s in load.sent} == {200}
        assert {s.backend for s in load.sent} == {"blue", "green"}
        assert proc.returncode is None, tail(log)
    finally:
        if writer is not None:
            writer.close()
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(LIMIT):
                await proc.wait()
    assert proc.returncode == 0, tail(log)
