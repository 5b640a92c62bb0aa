"""`pointsman top` against a running Pointsman (a real Service with a worker process, real
backends, paced traffic): in a real terminal (a detached tmux session on its own socket), the
frame a user reads, then q or Ctrl-C and the terminal as it was; and `--once`/`--json` for
scripts.

The traffic: 60 requests/s over four keep-alive loops to route shop, blue weight 75 (two
backends that take 20 ms), green weight 25 (one backend that answers every 4th request with a
503)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import shutil
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import BackendFactory, free_port
from tests.test_workers import Host, StartHost, start_host

__all__ = ["start_host"]  # the fixture, imported for pytest

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 30.0  # seconds any wait for the terminal may take
RATE = 60.0  # requests/s the traffic sends
LOOPS = 4
SESSION = "top"

pytestmark = pytest.mark.timeout(120)


# --- the Service and its traffic -------------------------------------------------------------


def slow(name: str, seconds: float) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return web.Response(text=f"{name} {request.path}")

    return handler


def every_fourth_fails(name: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    counter = itertools.count(1)

    async def handler(request: web.Request) -> web.StreamResponse:
        status = 503 if next(counter) % 4 == 0 else 200
        return web.Response(status=status, text=f"{name} {request.path}")

    return handler


@dataclass
class Shop:
    host: Host


async def _traffic(shop: Shop, stop: asyncio.Event) -> None:
    """LOOPS keep-alive loops, each paced to RATE / LOOPS requests/s on an absolute schedule."""
    loop = asyncio.get_running_loop()
    period = LOOPS / RATE

    async def one(offset: int) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            due = loop.time() + offset * period / LOOPS
            while not stop.is_set():
                async with session.get(f"{shop.host.proxy}/shop/item") as response:
                    await response.read()
                due += period
                await asyncio.sleep(max(0.0, due - loop.time()))

    await asyncio.gather(*(one(i) for i in range(LOOPS)))


@pytest.fixture
async def shop(
    start_host: StartHost, backend_factory: BackendFactory
) -> AsyncIterator[Callable[..., Awaitable[Shop]]]:
    """shop(route_extra="", dark=False, failing=True) -> a Service (one worker) with traffic
    flowing; dark: a third pool, weight 0; failing: green answers every 4th request with 503."""
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    async def make(route_extra: str = "", dark: bool = False, failing: bool = True) -> Shop:
        blue = [await backend_factory("blue", slow("blue", 0.02)) for _ in range(2)]
        green = [await backend_factory("green", every_fourth_fails("green") if failing else None)]
        pools = {"blue": blue, "green": green}
        weights = {"blue": 75, "green": 25}
        if dark:
            pools["dark"] = [await backend_factory("dark")]
            weights["dark"] = 0
        host = await start_host(pools, workers=1, route_extra=route_extra, weights=weights)
        made = Shop(host)
        tasks.append(asyncio.create_task(_traffic(made, stop)))
        return made

    yield make
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)


# --- a real terminal: tmux on its own socket -------------------------------------------------


class Tmux:
    """A tmux server of the test's own (-S socket, no config file), 160x50, running `sh`."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket

    async def run(self, *args: str, check: bool = True) -> tuple[int, str]:
        env = {k: v for k, v in os.environ.items() if k != "TMUX"}
        proc = await asyncio.create_subprocess_exec(
            "tmux", "-S", str(self.socket), "-f", "/dev/null", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        async with asyncio.timeout(10):
            out, err = await proc.communicate()
        assert proc.returncode is not None
        if check:
            assert proc.returncode == 0, (args, err.decode())
        return proc.returncode, out.decode()

    async def start(self) -> None:
        # A plain shell with a known prompt, so what top leaves behind is easy to read.
        await self.run(
            "new-session", "-d", "-x", "160", "-y", "50", "-s", SESSION,
            "env", "PS1=$ ", "sh",
        )  # fmt: skip

    async def screen(self) -> str:
        return (await self.run("capture-pane", "-p", "-t", SESSION))[1]

    async def type(self, *keys: str) -> None:
        await self.run("send-keys", "-t", SESSION, *keys)

    async def pane(self, fmt: str) -> str:
        return (await self.run("display-message", "-p", "-t", SESSION, fmt))[1].strip()

    async def alive(self) -> bool:
        return (await self.run("has-session", "-t", SESSION, check=False))[0] == 0

    async def kill(self) -> None:
        await self.run("kill-server", check=False)


@pytest.fixture
async def tmux(tmp_path: Path) -> AsyncIterator[Tmux]:
    if shutil.which("tmux") is None:
        pytest.fail("tmux is missing: `bash scripts/need.sh tmux tmux` installs it")
    # A short path: a unix socket's path is limited to about 100 bytes.
    server = Tmux(Path(f"/tmp/pointsman-top-{os.getpid()}-{id(tmp_path):x}.sock"))
    await server.start()
    try:
        yield server
    finally:
        await server.kill()
        server.socket.unlink(missing_ok=True)


async def wait_for(
    what: str,
    check: Callable[[], Awaitable[object]],
    limit: float = LIMIT,
    tmux: Tmux | None = None,
) -> object:
    """Poll `check` until it answers something true; fail naming `what` after `limit` s (and
    showing the terminal's screen)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while loop.time() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.1)
    screen = f"; the screen:\n{await tmux.screen()}" if tmux is not None else ""
    pytest.fail(f"no {what} after {limit:g}s{screen}")


def top_command(host: Host, *args: str) -> str:
    """The line typed into the pane's shell: top, then its exit code."""
    python = sys.executable
    top = f"{python} -m control.cli top --admin {host.admin} {' '.join(args)}"
    return f"cd {ROOT} && {top}; echo top-exit=$?"


# --- reading a frame -------------------------------------------------------------------------

TITLE = re.compile(r"^(\S+)\s+(\S+) req/s\s+(\S+) 5xx\s+live (\S+)\s*$")


@dataclass
class Row:
    weight: int
    rps: float
    errors: str  # `25.0%`, or `-` when the window had no request
    p99: str
    endpoints: str


@dataclass
class Seen:
    route: str
    rps: float
    rows: dict[str, Row]


def _number(text: str) -> float:
    return -1.0 if text == "-" else float(text.replace(",", ""))


def parse_frame(screen: str) -> Seen | None:
    """The route and its pool rows as a user reads them off the screen; None before the first
    frame with rates."""
    lines = screen.splitlines()
    for i, line in enumerate(lines):
        title = TITLE.match(line.strip())
        if title is None or title.group(2) == "-":
            continue
        rows: dict[str, Row] = {}
        for row_line in lines[i + 1 :]:
            parts = row_line.split()
            if not parts:
                if rows:
                    break
                continue
            if parts[0] == "POOL" or set(row_line.strip()) <= set("─ "):
                continue
            pool, weight, rps, errors, p99, *endpoints = parts
            rows[pool] = Row(int(weight), _number(rps), errors, p99, " ".join(endpoints))
        return Seen(title.group(1), _number(title.group(2)), rows)
    return None


def percent(text: str) -> float:
    assert text.endswith("%"), text
    return float(text[:-1])


# --- the terminal tests ----------------------------------------------------------------------


async def test_top_in_a_terminal_shows_the_route_live_and_q_restores_the_terminal(
    shop: Callable[..., Awaitable[Shop]], tmux: Tmux
) -> None:
    running = await shop()
    await tmux.type(top_command(running.host), "Enter")

    async def busy_frame() -> Seen | None:
        seen = parse_frame(await tmux.screen())
        if seen is None or not {"blue", "green"} <= set(seen.rows):
            return None
        if min(seen.rows["blue"].rps, seen.rows["green"].rps) <= 0:
            return None
        return seen

    seen = await wait_for("frame with requests/s for both pools", busy_frame, tmux=tmux)
    assert isinstance(seen, Seen)
    screen = await tmux.screen()
    assert screen.splitlines()[0].startswith(f"pointsman top  {running.host.admin}"), screen
    assert await tmux.pane("#{alternate_on}") == "1", "top draws on the alternate screen"
    assert seen.route == "shop"
    blue, green = seen.rows["blue"], seen.rows["green"]
    # The weights configured, both backends of blue and green's one up.
    assert (blue.weight, green.weight) == (75, 25), screen
    assert (blue.endpoints, green.endpoints) == ("2/2 up", "1/1 up"), screen
    # About RATE requests/s, split about 75:25; every 4th of green's answers is a 503.
    assert RATE * 0.5 <= seen.rps <= RATE * 1.5, screen
    assert seen.rps == pytest.approx(blue.rps + green.rps, abs=0.2), screen
    assert 0.5 <= blue.rps / seen.rps <= 0.95, screen
    assert blue.errors == "0.0%", screen
    assert 10.0 <= percent(green.errors) <= 40.0, screen
    # Blue's backends take 20 ms: its p99 lies in the (10 ms, 25 ms] bucket or, on a busy
    # machine, a later one. With about 35 requests in the rate window the p99 is the slowest
    # of them: one slow request in a full `make test` run showed 196 ms (the (100, 250]
    # bucket). The bound still catches a wrong unit or the +Inf bucket.
    assert 10.0 < _number(blue.p99) <= 250.0, screen

    await tmux.type("q")

    async def exited() -> str | None:
        screen = await tmux.screen()
        return screen if "top-exit=0" in screen else None

    screen_after = await wait_for("top-exit=0 after q", exited, tmux=tmux)
    assert "REQ/S" not in str(screen_after), "the frame is gone with the alternate screen"
    assert await tmux.pane("#{alternate_on}") == "0"
    assert await tmux.pane("#{cursor_flag}") == "1", "the cursor is shown again"
    await assert_terminal_restored(tmux)

    await tmux.type("exit", "Enter")

    async def ended() -> bool:
        return not await tmux.alive()

    await wait_for("end of the tmux session", ended)


async def assert_terminal_restored(tmux: Tmux) -> None:
    """The shell's terminal echoes and reads lines again (top had switched both off)."""
    modes = "grep -x -e -icanon -e -echo -e icanon -e echo"
    await tmux.type(f"stty -a | tr ' ' '\\n' | {modes} | sort | tr '\\n' ' '; echo", "Enter")

    async def shown() -> str | None:
        lines = (await tmux.screen()).splitlines()
        found = [line for line in lines if "icanon" in line and "stty" not in line]
        return found[-1] if found else None

    assert str(await wait_for("stty output", shown, tmux=tmux)).split() == ["echo", "icanon"]


async def test_ctrl_c_quits_top_and_restores_the_terminal(
    shop: Callable[..., Awaitable[Shop]], tmux: Tmux
) -> None:
    running = await shop()
    await tmux.type(top_command(running.host, "--interval", "0.5"), "Enter")

    async def frame_shown() -> bool:
        return parse_frame(await tmux.screen()) is not None

    await wait_for("frame with rates", frame_shown, tmux=tmux)
    await tmux.type("C-c")

    async def exited() -> bool:
        return "top-exit=0" in await tmux.screen()

    await wait_for("top-exit=0 after Ctrl-C", exited, tmux=tmux)
    assert "Traceback" not in await tmux.screen()
    assert await tmux.pane("#{alternate_on}") == "0"
    await assert_terminal_restored(tmux)


# --- for scripts: --once and --json ----------------------------------------------------------


async def top(host_admin: str, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k != "POINTSMAN_ADMIN"}
    env["COLUMNS"] = "160"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "control.cli", "top", "--admin", host_admin, *args,
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(LIMIT):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    assert "Traceback" not in err.decode(), err.decode()
    return proc.returncode, out.decode(), err.decode()


SHADOW = "    shadows:\n      - {pool: dark, percent: 100}\n"


async def test_json_gives_the_rows_with_shadow_mismatches(
    shop: Callable[..., Awaitable[Shop]],
) -> None:
    running = await shop(route_extra=SHADOW, dark=True)

    async def compared() -> bool:  # dark has compared answers for a while
        status, body = await running.host.call("GET", "/v1/routes/shop/shadows/dark")
        return status == 200 and body["compared"] >= 20

    await wait_for("comparisons", compared)
    code, out, err = await top(running.host.admin, "--json")
    assert (code, err) == (0, "")
    body = json.loads(out)
    # The window is the time between the two reads of the counters: --interval (1 s), and
    # whatever the second read took longer than the first on a busy machine.
    assert 1.0 <= body["seconds"] <= 1.5
    (route,) = body["routes"]
    pools = {p["pool"]: p for p in route["pools"]}
    assert [(p, pools[p]["weight"]) for p in pools] == [("blue", 75), ("green", 25), ("dark", 0)]
    assert RATE * 0.5 <= route["rps"] <= RATE * 1.5
    assert pools["blue"]["error_rate"] == 0.0
    assert 0.1 <= pools["green"]["error_rate"] <= 0.4
    assert (pools["blue"]["up"], pools["blue"]["total"], pools["blue"]["draining"]) == (2, 2, 0)
    # dark answers "dark ..." where the live pools answer "blue ..." or "green ...".
    shadow = pools["dark"]["shadow"]
    assert shadow["mismatch_rate"] == 1.0 and shadow["overall_rate"] == 1.0
    assert shadow["compared_per_s"] > 0
    assert pools["blue"]["shadow"] is None
    assert route["rollout"] is None


async def test_once_prints_one_frame_with_a_running_canary(
    shop: Callable[..., Awaitable[Shop]],
) -> None:
    running = await shop(failing=False)  # so that green passes its analyses
    spec = {
        "candidate": "green", "stable": "blue", "steps": [30, 60, 100], "step_interval": "60s",
        "analysis": {"interval": "1s", "min_requests": 5, "max_error_rate": 0.5},
    }  # fmt: skip
    status, body = await running.host.call("POST", "/v1/routes/shop/rollout", spec)
    assert status == 201, body

    async def analysed() -> bool:
        status, body = await running.host.call("GET", "/v1/routes/shop/rollout")
        return status == 200 and body.get("last_analysis") is not None

    await wait_for("a first analysis", analysed)
    code, out, err = await top(running.host.admin, "--once", "--interval", "0.5")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith(f"pointsman top  {running.host.admin}  state version ")
    assert re.search(r"every 0\.5s, rates over 0\.[5-9]s", lines[0]), lines[0]
    seen = parse_frame(out)
    assert seen is not None and seen.route == "shop"
    assert (seen.rows["blue"].weight, seen.rows["green"].weight) == (70, 30)
    rollout = " ".join(out.split())  # the rollout's line, wrapped at the terminal's width
    assert "canary green against blue: running, step 1/3 green=30 blue=70" in rollout, out
    assert "analysis pass: candidate" in rollout, out


async def test_an_admin_api_that_is_not_there_exits_3_and_a_refusal_1(
    shop: Callable[..., Awaitable[Shop]],
) -> None:
    code, out, err = await top(f"http://127.0.0.1:{free_port()}", "--once")
    assert (code, out) == (3, "")
    assert err.startswith("pointsman: cannot reach admin API at http://127.0.0.1:")
    running = await shop()
    code, out, err = await top(running.host.admin, "nope", "--once")
    assert (code, out) == (1, "")
    assert err.startswith("pointsman: 404 unknown route 'nope'"), err
