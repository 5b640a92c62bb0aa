"""The request path in-process, for instruction counts (callgrind): one DownstreamConnection
and one pooled UpstreamConnection on fake transports, fed raw bytes, N keep-alive requests.

Instruction counts do not drift with the machine's speed the way wall-clock figures do on a
shared VM, so two builds compare exactly. Usage, from the repo root (after `make build`):

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        .venv/bin/python benchmarks/instructions.py 2000
    ... and again with 4000: (total at 4000 - total at 2000) / 2000 = instructions per request.

PYTHONPATH=<other tree> runs another build the same way. A second argument `shadow` mirrors
every request to a shadow pool (on its own fake connection) and compares the answers: the
mirroring path, for changes to proxy/shadow.py. `access_log` instead logs every request to
/dev/null (entries queued on the request path and formatted in batches, as in a server): the
difference to a plain run is what the access log costs per request.
"""

from __future__ import annotations

import asyncio
import gc
import sys
from typing import Any

from proxy.config import Address, Limits, Timeouts, UpstreamSettings

try:
    from proxy.access_log import AccessLog
    from proxy.config import AccessLogConfig
except ImportError:  # a build from before the access log (PYTHONPATH=<tree>)
    AccessLog = AccessLogConfig = None  # type: ignore[assignment,misc]

try:
    from proxy.config_loader import parse_config
except ImportError:  # a build from before the loader had its own module (PYTHONPATH=<tree>)
    from proxy.config import parse_config  # type: ignore[attr-defined,no-redef]
from proxy.http1 import DownstreamConnection, ProxyContext
from proxy.metrics import Metrics
from proxy.router import RoutingTable
from proxy.shadow_registry import ShadowedRoute, Shadows
from proxy.upstream import UpstreamConnection, Upstreams

CONFIG = """
listen: 127.0.0.1:8080
admin: {listen: 127.0.0.1:8081}
routes:
  - name: shop
    hosts: ["*"]
    path_prefix: /
    pools:
      blue: {endpoints: ["127.0.0.1:9001"]}
      green: {endpoints: ["127.0.0.1:9002"]}
    weights: {blue: 90, green: 10}
    sticky: {header: X-User-Id}
"""
SHADOWED_CONFIG = CONFIG.replace(
    "    weights: {blue: 90, green: 10}\n",
    '      dark: {endpoints: ["127.0.0.1:9003"]}\n'
    "    weights: {blue: 90, green: 10, dark: 0}\n"
    "    shadows:\n      - {pool: dark, percent: 100, max_in_flight: 10000}\n",
)
REQUEST = (
    b"GET /api/products?page=2 HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: wrk\r\n"
    b"Accept: */*\r\nX-User-Id: user-42\r\n\r\n"
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Thu, 03 Dec 2026 18:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nok\n"
)

# The shadow answers with another Date and body: a header-and-body mismatch every time.
SHADOW_RESPONSE = RESPONSE.replace(b"18:00:00", b"18:00:01").replace(b"ok\n", b"no\n")


class FakeTransport:
    """The part of a transport the protocols use; writes are counted and dropped."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default


async def run(requests: int, shadowed: bool, logged: bool = False) -> None:
    config = parse_config(SHADOWED_CONFIG if shadowed else CONFIG, "<instructions>")
    loop = asyncio.get_running_loop()
    table = RoutingTable(config.routes)
    metrics = Metrics()
    metrics.bind(table)
    upstreams = Upstreams(UpstreamSettings(), 1.0)
    for route in table.routes.values():
        for pool in route.pools:
            pool.targets = tuple(upstreams.pool(a) for a in pool.endpoints)
    # One warm pooled connection per endpoint, on a fake transport.
    for address in (Address("127.0.0.1", 9001), Address("127.0.0.1", 9002)):
        target = upstreams.pool(address)
        conn = UpstreamConnection(target)
        conn.connection_made(FakeTransport())  # type: ignore[arg-type]
        target.idle.append(conn)
    shadows = Shadows()
    shadow_conn: UpstreamConnection | None = None
    if shadowed:
        route = table.routes["shop"]
        bound = shadows.bind(
            [ShadowedRoute(route.name, route.shadows, {p.name: p.endpoints for p in route.pools})],
            upstreams,
        )
        route.mirrors = bound["shop"]
        shadow_target = upstreams.shadow_pool(Address("127.0.0.1", 9003), 10_000)
        shadow_conn = UpstreamConnection(shadow_target)
        shadow_conn.connection_made(FakeTransport())  # type: ignore[arg-type]
        shadow_target.idle.append(shadow_conn)
    ctx = ProxyContext(loop, table, metrics, upstreams, Timeouts(), Limits())
    access_log = None
    if logged:
        access_log = ctx.access_log = AccessLog(loop, AccessLogConfig("/dev/null"))
    client = DownstreamConnection(ctx)
    client_transport = FakeTransport()
    client.connection_made(client_transport)  # type: ignore[arg-type]
    # No collections during the loop: what they cost depends on the whole heap's layout, and
    # moved the count by up to 2,000 instructions per request between builds whose request
    # path was the same. (The request path creates no reference cycles; nothing piles up.)
    gc.freeze()
    gc.disable()
    for _ in range(requests):
        client.data_received(REQUEST)
        upstream = client.upstream
        assert upstream is not None
        upstream.data_received(RESPONSE)
        if shadow_conn is not None:
            shadow_conn.data_received(SHADOW_RESPONSE)
        ctx.writes.flush()
        if access_log is not None and len(access_log.entries) >= 1024:
            access_log.flush()  # what its timer does in a server, every 1024 entries at most
    if access_log is not None:
        access_log.close()
        assert access_log.written == requests, access_log.written
    assert client_transport.written > 0
    answered = sum(sum(s.status) for s in metrics.pools.values())
    assert answered == requests, answered
    if shadowed:
        stats = shadows.by_key[("shop", "dark")].stats
        assert stats.mirrored == requests and stats.mismatched == requests, (
            stats.mirrored,
            stats.mismatched,
            stats.dropped,
        )
    if client.timer is not None:
        client.timer.cancel()
    await shadows.close()


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    mode = sys.argv[2] if len(sys.argv) > 2 else ""
    asyncio.run(run(count, mode == "shadow", mode == "access_log"))
