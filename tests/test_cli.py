"""The `pointsman` command: `check` on good and bad configs, and `run` as a real process that
serves, drains on SIGTERM and exits cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from aiohttp import web

from tests.conftest import BackendFactory, free_port

ROOT = Path(__file__).resolve().parents[1]

GOOD = """\
listen: 127.0.0.1:18080
admin: {listen: 127.0.0.1:18081}
routes:
  - name: shop
    hosts: ["*"]
    path_prefix: /
    pools:
      blue:  {endpoints: ["127.0.0.1:9001", "127.0.0.1:9002"]}
      green: {endpoints: ["127.0.0.1:9101"]}
    weights: {blue: 90, green: 10}
    sticky: {header: X-User-Id, cookie: user_id}
"""

# Two problems: a negative weight on line 10 and an unknown pool in a rule on line 13.
BAD = """\
listen: 127.0.0.1:18080
admin: {listen: 127.0.0.1:18081}
routes:
  - name: shop
    hosts: ["*"]
    path_prefix: /
    pools:
      blue:  {endpoints: ["127.0.0.1:9001"]}
      green: {endpoints: ["127.0.0.1:9101"]}
    weights: {blue: -1, green: 10}
    rules:
      - header: {X-Pointsman-Pool: green}
        pool: purple
"""


def pointsman(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "control.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_check_accepts_a_good_config(tmp_path: Path) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    result = pointsman("check", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert f"{path}: ok" in result.stdout


def test_check_accepts_the_demo_config() -> None:
    result = pointsman("check", "--config", "config/demo.yaml")
    assert result.returncode == 0, result.stderr


def test_check_rejects_a_bad_config_naming_file_line_and_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    result = pointsman("check", "--config", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"{path}:10: routes[0].weights.blue: expected an integer in 0..1000000, got -1",
        f"{path}:13: routes[0].rules[0].pool: unknown pool 'purple' (pools: blue, green)",
    ]


def test_check_rejects_yaml_syntax_error_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(GOOD.replace("    path_prefix: /\n", "    path_prefix: [/\n"))
    result = pointsman("check", "--config", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith(f"{path}:")
    assert "YAML syntax error" in result.stderr


def test_check_missing_file_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "missing.yaml"
    result = pointsman("check", "--config", str(path))
    assert result.returncode == 2
    assert str(path) in result.stderr
    assert "cannot read config" in result.stderr


def test_run_with_a_bad_config_exits_2_without_listening(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    result = pointsman("run", "--config", str(path))
    assert result.returncode == 2
    assert f"{path}:10: routes[0].weights.blue:" in result.stderr


# --- `pointsman run` as a process ----------------------------------------------------------

GRACE = 5.0


def run_config(port: int, admin_port: int, backend: str, state: Path) -> str:
    return f"""\
listen: 127.0.0.1:{port}
admin: {{listen: 127.0.0.1:{admin_port}}}
state: {{path: "{state}"}}
timeouts: {{grace: {GRACE}s}}
routes:
  - name: shop
    hosts: ["*"]
    path_prefix: /
    pools:
      blue: {{endpoints: ["{backend}"]}}
"""


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


async def wait_listening(port: int, proc: asyncio.subprocess.Process, log: Path) -> None:
    """A short poll loop: the process gives no other sign that it is listening."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        if proc.returncode is not None:
            raise AssertionError(f"pointsman exited {proc.returncode}:\n{tail(log)}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if loop.time() > deadline:
                raise AssertionError(f"not listening on {port}:\n{tail(log)}") from None
            await asyncio.sleep(0.05)
        else:
            writer.close()
            await writer.wait_closed()
            return


async def refuses_connections(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    await writer.wait_closed()
    return False


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def test_run_serves_then_drains_on_sigterm(
    backend_factory: BackendFactory, tmp_path: Path
) -> None:
    entered = asyncio.Event()  # the slow request reached the backend
    release = asyncio.Event()  # let the slow request finish

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/slow":
            entered.set()
            async with asyncio.timeout(10):
                await release.wait()
        return web.Response(text=f"blue {request.path}", headers={"X-Backend": "blue"})

    backend = await backend_factory("blue", handler)
    port, admin_port = free_port(), free_port()
    config = tmp_path / "run.yaml"
    config.write_text(run_config(port, admin_port, backend.address, tmp_path / "state.json"))
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "control.cli", "run", "--config", str(config),
            cwd=ROOT, stdout=out, stderr=out, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    writer: asyncio.StreamWriter | None = None
    try:
        await wait_listening(port, proc, log)

        # It serves.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /fast HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        async with asyncio.timeout(5):
            status, headers, body = await read_response(reader)
        assert (status, headers["x-backend"], body) == (200, "blue", b"blue /fast")

        # A slow request in flight on the same keep-alive connection.
        writer.write(b"GET /slow HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        async with asyncio.timeout(5):
            await entered.wait()
        signalled_at = asyncio.get_running_loop().time()
        proc.send_signal(signal.SIGTERM)

        # Draining: new connections are refused while the slow request is still in flight.
        for _ in range(100):
            if await refuses_connections(port):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"still accepting 5 s after SIGTERM:\n{tail(log)}")
        assert proc.returncode is None, "exited with a request in flight"

        # The in-flight request completes normally.
        release.set()
        async with asyncio.timeout(5):
            status, headers, body = await read_response(reader)
        assert (status, body) == (200, b"blue /slow")
        # Draining: the connection is closed after that response.
        assert headers.get("connection", "").lower() == "close"
        async with asyncio.timeout(5):
            assert await reader.read() == b""

        # And the process exits 0 within the grace period.
        async with asyncio.timeout(GRACE):
            returncode = await proc.wait()
        assert returncode == 0, tail(log)
        assert asyncio.get_running_loop().time() - signalled_at < GRACE
        assert await refuses_connections(port)
        assert await refuses_connections(admin_port)
    finally:
        if writer is not None:
            writer.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
