"""Data-plane listener, shared per-process context, and graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Sequence
from typing import cast

from proxy.access_log import AccessLog
from proxy.config import (
    Address,
    Config,
    ConfigError,
    HealthCheckConfig,
    Listener,
    UpstreamTls,
)
from proxy.health import HealthChecker
from proxy.http1 import DownstreamConnection, ProxyContext
from proxy.metrics import Metrics
from proxy.router import RoutingTable
from proxy.shadow_metrics import ShadowCollector
from proxy.shadow_registry import ShadowedRoute, Shadows
from proxy.tls import CertificateCollector, ServerCertificates, client_context
from proxy.tls_transport import TlsListener
from proxy.upstream import EndpointPool, Upstreams

log = logging.getLogger("pointsman.server")

# Listen backlog: bursts of new connections queue in the kernel rather than being refused.
LISTEN_BACKLOG = 4096


def listening_socket(listen: Address, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((listen.host, listen.port))
        sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


class ProxyServer:
    """The data plane of one process: listener, routing table, upstream pools, metrics."""

    def __init__(self, config: Config, table: RoutingTable | None = None) -> None:
        self.config = config
        self.metrics = Metrics()
        self._table = table if table is not None else RoutingTable(config.routes)
        self.metrics.bind(self._table)
        self.upstreams: Upstreams | None = None
        self.health = HealthChecker()
        self.shadows = Shadows(config.limits.compare_memory_bytes)
        self.metrics.collectors.append(ShadowCollector(self.shadows))
        self.metrics.collectors.append(CertificateCollector(lambda: self.config))
        self.ctx: ProxyContext | None = None
        # One per listener, in the config's order.
        self._servers: list[asyncio.Server | TlsListener] = []
        # Per TLS listener (by index in config.listeners): its certificates, reloadable.
        self.certificates: dict[int, ServerCertificates] = {}
        self.access_log: AccessLog | None = None
        # The active checks the current table asks for, and whether this process runs them
        # (a worker does not: the master's results reach it as messages).
        self._checks: dict[EndpointPool, HealthCheckConfig] = {}
        self._checks_on = False

    @property
    def table(self) -> RoutingTable:
        return self._table

    def use_config(self, config: Config) -> None:
        """A reloaded config's timeouts, limits and upstream settings, for what starts from
        now. The listener stays (a new listen address needs a restart); the routes come with
        the next `set_table`."""
        self.config = config
        for index, listener in enumerate(config.listeners):
            certificates = self.certificates.get(index)
            if certificates is not None and listener.tls is not None:
                try:
                    certificates.load(listener.tls)
                except (OSError, ssl.SSLError) as err:
                    # The master checked them before sending the config: a file changed
                    # in between. The listener keeps serving its current certificates.
                    log.error("listen[%d].tls: certificates not reloaded: %s", index, err)
        if self.ctx is not None:
            self.ctx.use_settings(config.timeouts, config.limits)
            self._use_access_log(self.ctx)
        if self.upstreams is not None:
            self.upstreams.use_settings(config.upstream, config.timeouts.connect)
        self.shadows.memory.limit = config.limits.compare_memory_bytes

    def set_table(self, table: RoutingTable) -> None:
        """Publish a new routing table: each request is routed by the old one or the new one
        whole, since a request reads `ctx.table` once when its head completes."""
        self.metrics.bind(table)
        if self.upstreams is not None:
            self._bind_targets(table, self.upstreams)
            self._bind_shadows(table, self.upstreams)
            self._configure_endpoints(table, self.upstreams)
        self._table = table
        if self.ctx is not None:
            self.ctx.use_table(table)

    def _configure_endpoints(self, table: RoutingTable, upstreams: Upstreams) -> None:
        """The endpoints `table` routes to: their ejection settings and health checks; the
        ones it no longer routes to (removed or draining) are retired, their connections
        closing once idle. Health is kept per address: an endpoint in several pools takes
        its settings from the first pool (in the table's order) that lists it."""
        checks: dict[EndpointPool, HealthCheckConfig] = {}
        configured: set[EndpointPool] = set()
        contexts: dict[UpstreamTls, ssl.SSLContext] = {}
        in_use: set[Address] = set()
        for route in table.configs:
            for pool in route.pools:
                for address in pool.endpoints:
                    in_use.add(address)
                    target = upstreams.pool(address)
                    if target in configured:
                        continue
                    configured.add(target)
                    target.ejection = pool.ejection
                    self._use_upstream_tls(target, pool.tls, contexts)
                    if pool.health is not None:
                        checks[target] = pool.health
        upstreams.retire_unused(in_use)
        self._checks = checks
        if self._checks_on:
            self.health.update(checks)

    @staticmethod
    def _use_upstream_tls(
        target: EndpointPool, tls: UpstreamTls | None, contexts: dict[UpstreamTls, ssl.SSLContext]
    ) -> None:
        """The endpoint's TLS settings (those of the first pool that lists it). A change
        closes its idle connections: they were opened with the settings it had."""
        if tls == target.tls_settings:
            return
        context = None
        if tls is not None:
            context = contexts.get(tls)
            if context is None:
                try:
                    context = contexts[tls] = client_context(tls)
                except (OSError, ssl.SSLError) as err:
                    # Checked when the config was read: a file changed since. Keep the old.
                    log.error("endpoint %s: TLS settings not applied: %s", target.address, err)
                    return
        target.tls_settings = tls
        target.tls = context
        target.server_name = tls.sni if tls is not None else None
        target.close_all()

    @staticmethod
    def _bind_targets(table: RoutingTable, upstreams: Upstreams) -> None:
        for route in table.routes.values():
            for pool in route.pools:
                pool.targets = tuple(upstreams.pool(address) for address in pool.endpoints)

    def _bind_shadows(self, table: RoutingTable, upstreams: Upstreams | None) -> None:
        routes = table.routes.values()
        mirrors = self.shadows.bind(
            [
                ShadowedRoute(r.name, r.shadows, {p.name: p.endpoints for p in r.pools})
                for r in routes
            ],
            upstreams,
        )
        for route in routes:
            route.mirrors = mirrors[route.name]

    @property
    def port(self) -> int:
        return self.ports[0]

    @property
    def ports(self) -> list[int]:
        """The port of each listener, in the config's order."""
        return [int(server.sockets[0].getsockname()[1]) for server in self._servers]

    def _use_access_log(self, ctx: ProxyContext) -> None:
        settings = self.config.access_log
        current = self.access_log
        if settings is None:
            if current is not None:
                current.close()
            self.access_log = None
        elif current is None:
            try:
                self.access_log = AccessLog(ctx.loop, settings)
            except OSError as err:
                raise ConfigError(
                    [f"access_log.path: cannot open {settings.path}: {err.strerror}"]
                ) from None
        else:
            current.use(settings)
        ctx.access_log = self.access_log

    def reopen_logs(self) -> None:
        """SIGUSR1 (logrotate): the access log goes to a new file from now on."""
        if self.access_log is not None:
            self.access_log.reopen()

    async def _listen(
        self, ctx: ProxyContext, index: int, listener: Listener, sock: socket.socket | None
    ) -> asyncio.Server | TlsListener:
        loop = ctx.loop
        context = None
        if listener.tls is not None:
            certificates = ServerCertificates(f"listen[{index}]", listener.tls)
            self.certificates[index] = certificates
            context = certificates.listener_context
        tls = context is not None

        def connection() -> asyncio.Protocol:
            return cast(asyncio.Protocol, DownstreamConnection(ctx, tls))

        address = listener.address
        if context is not None:
            # OpenSSL on the socket itself (proxy/tls_transport.py says why). A handshake is
            # part of the request head's time (timeouts.header_read).
            if sock is None:
                sock = listening_socket(address, reuse_port=False)
            return TlsListener(loop, sock, context, connection, self.config.timeouts.header_read)
        if sock is not None:
            return await loop.create_server(connection, sock=sock, backlog=LISTEN_BACKLOG)
        return await loop.create_server(
            connection, address.host, address.port, backlog=LISTEN_BACKLOG, reuse_address=True
        )

    async def start(
        self,
        socks: Sequence[socket.socket] | None = None,
        *,
        accept: bool = True,
        health_checks: bool = True,
    ) -> None:
        """Start serving `socks` (a worker's, passed by the master: one per listener, in the
        config's order) or config.listeners. With
        `accept=False` (the master of workers) everything but the listener runs: endpoint
        pools for the health checks, shadows and counters that hold the host's sums. A worker
        runs no `health_checks`: the master's results reach it as messages."""
        loop = asyncio.get_running_loop()
        self.upstreams = Upstreams(self.config.upstream, self.config.timeouts.connect)
        self.upstreams.start()
        self._bind_targets(self._table, self.upstreams)
        self._bind_shadows(self._table, self.upstreams)
        self._configure_endpoints(self._table, self.upstreams)
        self._checks_on = health_checks
        if health_checks:
            self.health.start(self._checks)
        ctx = ProxyContext(
            loop, self._table, self.metrics, self.upstreams, self.config.timeouts,
            self.config.limits,
        )  # fmt: skip
        ctx.host_fallback = str(self.config.listen).encode()
        self.ctx = ctx
        self.metrics.open_connections = lambda: len(ctx.connections)
        upstreams = self.upstreams
        self.metrics.idle_upstream_connections = upstreams.idle_count
        self.metrics.endpoints_in_flight = upstreams.in_flight
        if not accept:
            return
        self._use_access_log(ctx)
        for index, listener in enumerate(self.config.listeners):
            server = await self._listen(ctx, index, listener, socks[index] if socks else None)
            self._servers.append(server)
            host, port = server.sockets[0].getsockname()[:2]
            log.info("data plane listening on %s%s", Address(host, port),
                     " (TLS)" if listener.tls is not None else "")  # fmt: skip

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let in-flight requests finish for up to `grace`, then close."""
        if grace is None:
            grace = self.config.timeouts.grace
        ctx = self.ctx
        for server in self._servers:
            server.close()
        if ctx is not None:
            ctx.draining = True
            for conn in list(ctx.connections):
                conn.drain()
            if ctx.connections:
                try:
                    async with asyncio.timeout(grace):
                        await ctx.drained.wait()
                except TimeoutError:
                    log.warning("grace period over: closing %d connections", len(ctx.connections))
            for conn in list(ctx.connections):
                if conn.transport is not None:
                    conn.transport.abort()
        for server in self._servers:
            await server.wait_closed()
        self._servers = []
        if self.access_log is not None:
            self.access_log.close()
            self.access_log = None
        await self.health.stop()
        await self.shadows.close()
        if self.upstreams is not None:
            await self.upstreams.close()
