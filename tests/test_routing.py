"""End-to-end routing through the proxy on real sockets: weights, rules, stickiness, retries,
routing-table swaps, and the same sticky decisions in separate proxy processes."""

from __future__ import annotations

import asyncio
import functools
import os
import sys
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from proxy.router import RoutingTable, sticky_bucket
from tests.conftest import BackendFactory, ProxyFactory, config_for, free_port

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-case names; last value wins
    body: bytes


async def read_response(reader: asyncio.StreamReader) -> Response:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    assert "transfer-encoding" not in headers, "test client reads Content-Length bodies only"
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Response(status, headers, body)


def request(path: str = "/", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: shop.test"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# Requests written per pipelined batch: within the proxy's queue of requests parsed ahead
# (proxy/http1.py MAX_PIPELINED = 32), so that the feature tests below are not confounded by
# how bigger bursts are handled; test_pipelined_burst_of_100_is_answered covers those.
BATCH = 32


async def exchange(port: int, requests: list[bytes], batch: int = BATCH) -> list[Response]:
    """Send requests on one keep-alive connection, pipelined `batch` at a time."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    responses: list[Response] = []
    try:
        async with asyncio.timeout(30):
            for start in range(0, len(requests), batch):
                chunk = requests[start : start + batch]
                writer.write(b"".join(chunk))
                await writer.drain()
                for _ in chunk:
                    responses.append(await read_response(reader))
    finally:
        writer.close()
        await writer.wait_closed()
    return responses


async def get(port: int, path: str = "/", headers: dict[str, str] | None = None) -> Response:
    (response,) = await exchange(port, [request(path, headers)])
    return response


class FastBackend(asyncio.Protocol):
    """A minimal upstream for volume tests: answers every body-less request head with
    `<name> <path>` and X-Backend: <name> (aiohttp would dominate the run time)."""

    def __init__(self, name: str) -> None:
        self.name = name.encode()
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        out = []
        while (end := self.buffer.find(b"\r\n\r\n")) != -1:
            head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
            path = head.split(b" ", 2)[1]
            body = self.name + b" " + path
            out.append(
                b"HTTP/1.1 200 OK\r\nX-Backend: %s\r\nContent-Length: %d\r\n\r\n%s"
                % (self.name, len(body), body)
            )
        self.transport.write(b"".join(out))


@pytest.fixture
async def fast_backends() -> AsyncIterator[dict[str, str]]:
    """Two FastBackends, blue and green: name -> address."""
    loop = asyncio.get_running_loop()
    servers: dict[str, asyncio.Server] = {}
    for name in ("blue", "green"):
        servers[name] = await loop.create_server(
            functools.partial(FastBackend, name), "127.0.0.1", 0
        )
    yield {n: f"127.0.0.1:{s.sockets[0].getsockname()[1]}" for n, s in servers.items()}
    for server in servers.values():
        server.close()
        await server.wait_closed()


async def test_weights_90_10_are_honoured(
    fast_backends: dict[str, str], proxy_factory: ProxyFactory
) -> None:
    config = config_for(
        {"blue": [fast_backends["blue"]], "green": [fast_backends["green"]]},
        weights={"blue": 90, "green": 10},
    )
    proxy = await proxy_factory(config)
    total, connections = 20_000, 4
    per_connection = [request(f"/item/{i}") for i in range(total // connections)]
    results = await asyncio.gather(
        *(exchange(proxy.port, per_connection) for _ in range(connections))
    )
    responses = [r for rs in results for r in rs]
    assert len(responses) == total
    assert Counter(r.status for r in responses) == {200: total}
    by_backend = Counter(r.headers["x-backend"] for r in responses)
    assert set(by_backend) == {"blue", "green"}
    green_share = by_backend["green"] / total
    assert abs(green_share - 0.10) <= 0.02, by_backend
    # Each response answers its own request and comes from the backend its header names.
    for rs in results:
        for i, r in enumerate(rs):
            assert r.body == f"{r.headers['x-backend']} /item/{i}".encode()


async def test_pipelined_burst_of_100_is_answered(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    """A client may pipeline a burst of small requests in one write (about 5 KB here); each
    gets its response, in order."""
    blue = await backend_factory("blue")
    proxy = await proxy_factory(config_for({"blue": [blue.address]}))
    async with asyncio.timeout(5):  # 100 tiny requests take milliseconds
        responses = await exchange(
            proxy.port, [request(f"/burst/{i}") for i in range(100)], batch=100
        )
    assert [r.status for r in responses] == [200] * 100
    assert [r.body for r in responses] == [f"blue GET /burst/{i} 0".encode() for i in range(100)]


RULES = """\
    rules:
      - header: {X-Pointsman-Pool: green}
        pool: green
      - cookie: {pointsman_pool: green}
        pool: green
"""


async def test_header_and_cookie_rules_route_to_green(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    blue = await backend_factory("blue")
    green = await backend_factory("green")
    config = config_for(
        {"blue": [blue.address], "green": [green.address]},
        weights={"blue": 100, "green": 0},
        route_extra=RULES,
    )
    proxy = await proxy_factory(config)
    plain = await exchange(proxy.port, [request("/a")] * 20)
    assert {r.headers["x-backend"] for r in plain} == {"blue"}
    by_header = await exchange(proxy.port, [request("/a", {"X-Pointsman-Pool": "green"})] * 20)
    assert {r.headers["x-backend"] for r in by_header} == {"green"}
    # Header names are case-insensitive on the wire.
    lower = await get(proxy.port, "/a", {"x-pointsman-pool": "green"})
    assert lower.headers["x-backend"] == "green"
    by_cookie = await exchange(
        proxy.port, [request("/a", {"Cookie": "theme=dark; pointsman_pool=green"})] * 20
    )
    assert {r.headers["x-backend"] for r in by_cookie} == {"green"}
    wrong_value = await get(proxy.port, "/a", {"Cookie": "pointsman_pool=blue"})
    assert wrong_value.headers["x-backend"] == "blue"


STICKY = "    sticky: {header: X-User-Id, cookie: user_id}\n"


async def test_sticky_user_always_lands_on_the_same_pool(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    blue = await backend_factory("blue")
    green = await backend_factory("green")
    config = config_for(
        {"blue": [blue.address], "green": [green.address]},
        weights={"blue": 50, "green": 50},
        route_extra=STICKY,
    )
    proxy = await proxy_factory(config)
    pools_seen = set()
    for user in ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"):
        responses = await exchange(proxy.port, [request("/", {"X-User-Id": user})] * 50)
        backends = {r.headers["x-backend"] for r in responses}
        assert len(backends) == 1, (user, backends)
        (backend,) = backends
        # The pool the documented walk gives: bucket below 5000 -> blue (first pool).
        expected = "blue" if sticky_bucket(b"shop", user.encode()) < 5000 else "green"
        assert backend == expected, user
        # The same user by cookie lands on the same pool.
        by_cookie = await exchange(proxy.port, [request("/", {"Cookie": f"user_id={user}"})] * 10)
        assert {r.headers["x-backend"] for r in by_cookie} == {backend}
        pools_seen.add(backend)
    assert pools_seen == {"blue", "green"}
    # Without a user id the proxy spreads requests over both pools.
    anonymous = await exchange(proxy.port, [request("/")] * 200)
    assert {r.headers["x-backend"] for r in anonymous} == {"blue", "green"}


async def test_refused_endpoint_is_retried_on_the_other_endpoint(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    blue = await backend_factory("blue")
    dead = f"127.0.0.1:{free_port()}"
    config = config_for({"blue": [dead, blue.address]})
    proxy = await proxy_factory(config)
    stats = proxy.metrics.pools[("shop", "blue")]
    assert stats.retries == 0
    # Separate connections and one keep-alive connection: both must be retried.
    singles = [await get(proxy.port, f"/single/{i}") for i in range(10)]
    batch = await exchange(proxy.port, [request(f"/batch/{i}") for i in range(10)], batch=1)
    for response in singles + batch:
        assert response.status == 200
        assert response.headers["x-backend"] == "blue"
    assert len(blue.seen) == 20
    assert stats.connect_errors >= 1
    assert stats.retries >= 1
    assert stats.status[2] == 20 and stats.status[5] == 0


async def test_swapped_routing_table_takes_effect_for_the_next_request(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    blue = await backend_factory("blue")
    green = await backend_factory("green")
    config = config_for({"blue": [blue.address], "green": [green.address]})
    proxy = await proxy_factory(config)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        async with asyncio.timeout(10):
            for _ in range(5):
                writer.write(request("/before"))
                assert (await read_response(reader)).headers["x-backend"] == "blue"
            proxy.set_table(
                RoutingTable(config.routes, weights={"shop": {"blue": 0, "green": 100}})
            )
            # Same keep-alive connection, next request: the new table decides.
            for _ in range(5):
                writer.write(request("/after"))
                assert (await read_response(reader)).headers["x-backend"] == "green"
            proxy.set_table(
                RoutingTable(config.routes, weights={"shop": {"blue": 100, "green": 0}})
            )
            writer.write(request("/back"))
            assert (await read_response(reader)).headers["x-backend"] == "blue"
    finally:
        writer.close()
        await writer.wait_closed()
    # A fresh connection sees the current table too.
    assert (await get(proxy.port, "/fresh")).headers["x-backend"] == "blue"
    assert len(green.seen) == 5


# --- two real proxy processes --------------------------------------------------------------


def process_config(port: int, admin_port: int, blue: str, green: str, state: Path) -> str:
    return f"""\
listen: 127.0.0.1:{port}
admin: {{listen: 127.0.0.1:{admin_port}}}
state: {{path: "{state}"}}
timeouts: {{grace: 2s}}
routes:
  - name: shop
    hosts: ["*"]
    path_prefix: /
    pools:
      blue: {{endpoints: ["{blue}"]}}
      green: {{endpoints: ["{green}"]}}
    weights: {{blue: 50, green: 50}}
    sticky: {{header: X-User-Id}}
"""


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


async def wait_listening(port: int, proc: asyncio.subprocess.Process, log: Path) -> None:
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        if proc.returncode is not None:
            raise AssertionError(f"proxy exited {proc.returncode}: {tail(log)}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"proxy not listening on {port}: {tail(log)}") from None
            await asyncio.sleep(0.05)
        else:
            writer.close()
            await writer.wait_closed()
            return


async def stop_process(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            async with asyncio.timeout(10):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def test_two_processes_make_the_same_sticky_decisions(
    backend_factory: BackendFactory, tmp_path: Path
) -> None:
    blue = await backend_factory("blue")
    green = await backend_factory("green")
    procs: list[asyncio.subprocess.Process] = []
    ports: list[int] = []
    try:
        for n, seed in ((1, "1"), (2, "2")):
            port, admin_port = free_port(), free_port()
            config_path = tmp_path / f"proxy{n}.yaml"
            config_path.write_text(
                process_config(
                    port, admin_port, blue.address, green.address, tmp_path / f"state{n}.json"
                )
            )
            log = tmp_path / f"proxy{n}.log"
            with log.open("wb") as out:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "control.cli", "run", "--config", str(config_path),
                    cwd=ROOT, stdout=out, stderr=out, env={**os.environ, "PYTHONHASHSEED": seed},
                )  # fmt: skip
            procs.append(proc)
            await wait_listening(port, proc, log)
            ports.append(port)
        users = [f"user-{i}" for i in range(100)]
        answers = []
        for port in ports:
            responses = await exchange(port, [request("/", {"X-User-Id": u}) for u in users])
            assert all(r.status == 200 for r in responses)
            answers.append([r.headers["x-backend"] for r in responses])
        assert answers[0] == answers[1]
        assert set(answers[0]) == {"blue", "green"}
    finally:
        for proc in procs:
            await stop_process(proc)
