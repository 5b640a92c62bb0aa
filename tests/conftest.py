"""Shared fixtures: real upstreams and a real proxy on 127.0.0.1 with OS-chosen ports."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from proxy.config import Address, Config
from proxy.config_loader import parse_config
from proxy.server import ProxyServer
from tests.etcd_server import EtcdServer
from tests.rawhttp import RawHandler, RawUpstream, RawUpstreamFactory


def _stale_extensions() -> list[str]:
    """Compiled hot modules older than their source would hide the source from the tests."""
    root = Path(__file__).resolve().parent.parent / "proxy"
    stale = []
    for extension in root.glob("*.so"):
        source = root / (extension.name.split(".", 1)[0] + ".py")
        if source.exists() and source.stat().st_mtime > extension.stat().st_mtime:
            stale.append(f"{extension.name} is older than {source.name}")
    return stale


if _stale_extensions():
    pytest.exit(
        "stale compiled modules: " + "; ".join(_stale_extensions()) + " (run `make build`)",
        returncode=2,
    )

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def serve_app(app: web.Application) -> tuple[web.AppRunner, int]:
    """Serve an aiohttp app on 127.0.0.1 at an OS-chosen port; (runner to clean up, port)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, int(runner.addresses[0][1])


class Backend:
    """An aiohttp upstream on 127.0.0.1:<port>; records the requests it saw."""

    def __init__(self, name: str, handler: Handler | None = None) -> None:
        self.name = name
        self.handler = handler
        self.seen: list[web.Request] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(request)
        if self.handler is not None:
            return await self.handler(request)
        body = await request.read()
        return web.Response(
            text=f"{self.name} {request.method} {request.path_qs} {len(body)}",
            headers={"X-Backend": self.name},
        )

    async def start(self) -> Backend:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner, self.port = await serve_app(app)
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def free_port() -> int:
    """A port nothing listens on (for refused-connection tests)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def config_for(
    pools: dict[str, list[str]],
    extra: str = "",
    route_extra: str = "",
    weights: dict[str, int] | None = None,
    pool_extra: dict[str, str] | None = None,
) -> Config:
    """A one-route config over the given pools (name -> endpoints), listening on port 0;
    `pool_extra` adds settings to a pool's mapping (e.g. "ejection: {...}")."""
    if weights is None:
        first = next(iter(pools))
        weights = {name: (100 if name == first else 0) for name in pools}
    extra_of = pool_extra or {}
    pool_lines = "\n".join(
        f"      {name}: {{endpoints: [{', '.join(repr(e) for e in eps)}]"
        + (f", {extra_of[name]}" if name in extra_of else "")
        + "}"
        for name, eps in pools.items()
    )
    weight_text = ", ".join(f"{k}: {v}" for k, v in weights.items())
    text = f"""
listen: 127.0.0.1:1
admin: {{listen: 127.0.0.1:2}}
{extra}
routes:
  - name: shop
    hosts: ["*"]
    path_prefix: /
    pools:
{pool_lines}
    weights: {{{weight_text}}}
{route_extra}
"""
    return on_free_ports(parse_config(text, "<test>"))


def on_free_ports(config: Config) -> Config:
    """`config` listening on OS-chosen ports (a config text's ports only satisfy validation)."""
    return replace(
        config,
        listeners=tuple(
            replace(item, address=Address("127.0.0.1", 0)) for item in config.listeners
        ),
        admin=replace(config.admin, listen=Address("127.0.0.1", 0)),
    )


ProxyFactory = Callable[..., Awaitable[ProxyServer]]
BackendFactory = Callable[..., Awaitable[Backend]]


@pytest.fixture
async def backend_factory() -> AsyncIterator[BackendFactory]:
    started: list[Backend] = []

    async def make(name: str = "blue", handler: Handler | None = None) -> Backend:
        backend = await Backend(name, handler).start()
        started.append(backend)
        return backend

    yield make
    for backend in started:
        await backend.stop()


@pytest.fixture
async def proxy_factory() -> AsyncIterator[ProxyFactory]:
    started: list[ProxyServer] = []

    async def make(config: Config, **overrides: Any) -> ProxyServer:
        if overrides:
            config = replace(config, **overrides)
        server = ProxyServer(config)
        await server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        await server.stop(grace=1.0)


async def raw_exchange(port: int, data: bytes, limit: float = 5.0) -> bytes:
    """Send raw bytes, read until the proxy closes the connection, return all it sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(limit):
            return await reader.read(-1)
    finally:
        writer.close()


@pytest.fixture
async def raw_upstream_factory() -> AsyncIterator[RawUpstreamFactory]:
    started: list[RawUpstream] = []

    async def make(handler: RawHandler) -> RawUpstream:
        upstream = await RawUpstream(handler).start()
        started.append(upstream)
        return upstream

    yield make
    for upstream in started:
        await upstream.stop()


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """A real one-member etcd on 127.0.0.1, its data in the test's temporary directory."""
    server = EtcdServer(tmp_path / "etcd")
    server.start()
    yield server
    server.stop()
