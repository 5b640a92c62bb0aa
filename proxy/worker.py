"""A data-plane worker: one process started by the master (control/workers.py), serving the
listening socket the master holds for its slot, with the routing state the master pushes.

It runs uvloop and the data plane only: no admin listener, no state file, no health checks,
no rollouts. Start-up: connect the control channel, say `up`, take `hello` (the config text and
the current routing state), build the table, start accepting, say `ready`. Then it applies
`state`, `health` and `eject` messages between requests, reports its own passive ejections
(`ejected`), answers `counters` and `ping`, and on `drain`, SIGTERM or a closed channel (the
master is gone) it drains as one process does and exits.

    python -m proxy.worker --slot N --listen-fd F [--listen-fd F2 ...] --control-fd C [--cpu K]

(one --listen-fd per listener of the config, in its order; --cpu: the CPU to run on, from
`worker_cpu_affinity`).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Final

import uvloop

from proxy.config import Config, ConfigError, routes_with_pools
from proxy.config_loader import parse_config
from proxy.host_counters import SampleCursor, worker_counters
from proxy.ipc import ChannelClosed, encode, read_message
from proxy.router import RoutingTable
from proxy.server import ProxyServer
from proxy.shadow_config import ShadowConfig, parse_shadow
from proxy.tasks import cancel_and_wait
from proxy.upstream import EndpointPool

log = logging.getLogger("pointsman.worker")

# As in `pointsman run`: the request path allocates many short-lived containers.
GC_YOUNG_THRESHOLD: Final = 20_000
# Exit codes the master reads: the hello was unusable (a master/worker mismatch, not a crash).
EXIT_BAD_HELLO: Final = 3


def table_from(config: Config, state: Mapping[str, Any]) -> RoutingTable:
    """The routing table for a state message: {"version", "weights", "shadows", "pools",
    "resolved"} as the master has them (control/plane.py `snapshot`)."""
    shadows: dict[str, tuple[ShadowConfig, ...]] = {
        route: tuple(parse_shadow(item) for item in items)
        for route, items in state.get("shadows", {}).items()
    }
    return RoutingTable(
        routes_with_pools(config.routes, state.get("pools", {}), state.get("resolved")),
        weights=state["weights"],
        version=int(state["version"]),
        shadows=shadows,
    )


def apply_ejections(server: ProxyServer, ejected: Mapping[str, float]) -> None:
    """Ejections decided for the host (endpoint address -> seconds left): the endpoint takes
    no traffic here either, and comes back on probation when they are over, as if this worker
    had ejected it itself."""
    upstreams = server.upstreams
    if upstreams is None:
        return
    now = asyncio.get_running_loop().time()
    for address, target in upstreams.pools.items():
        left = ejected.get(str(address))
        if left is not None and target.ejected_until == 0.0 and left > 0:
            target.ejected_until = now + left
            target.healthy = False


def apply_health(server: ProxyServer, endpoints: Mapping[str, bool]) -> None:
    """Active-check results decided by the master, by endpoint address."""
    upstreams = server.upstreams
    if upstreams is None:
        return
    for address, target in upstreams.pools.items():
        ok = endpoints.get(str(address))
        if ok is not None and ok != target.checks_ok:
            target.set_checks_ok(ok)


class Worker:
    def __init__(self, slot: int, listen_fds: Sequence[int], control_fd: int) -> None:
        self.slot = slot
        self.listen_fds = listen_fds
        self.control_fd = control_fd
        self.stop = asyncio.Event()
        self.server: ProxyServer | None = None
        self.cursor = SampleCursor()
        self.grace: float | None = None  # the master's drain grace; None: the config's

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        # Ctrl-C in a terminal reaches the master, which drains the workers itself; a
        # reload (SIGHUP) is the master's too, which sends the new config.
        loop.add_signal_handler(signal.SIGINT, lambda: None)
        loop.add_signal_handler(signal.SIGHUP, lambda: None)
        loop.add_signal_handler(signal.SIGUSR1, self._reopen_logs)
        channel = socket.socket(fileno=self.control_fd)
        reader, writer = await asyncio.open_connection(sock=channel)
        writer.write(encode({"type": "up", "pid": os.getpid()}))
        try:
            hello = await read_message(reader)
            config = parse_config(hello["config"], hello["source"])
            table = table_from(config, hello["state"])
        except (ChannelClosed, ConfigError, KeyError, TypeError, ValueError) as err:
            log.error("worker %d: unusable hello from the master: %s", self.slot, err)
            return EXIT_BAD_HELLO
        if len(self.listen_fds) != len(config.listeners):
            log.error("worker %d: %d listening sockets for %d listeners", self.slot,
                      len(self.listen_fds), len(config.listeners))  # fmt: skip
            return EXIT_BAD_HELLO
        server = self.server = ProxyServer(config, table)
        socks = [socket.socket(fileno=fd) for fd in self.listen_fds]
        try:
            await server.start(socks, health_checks=False)
        except ConfigError as err:  # the access log cannot be opened here
            log.error("worker %d: %s", self.slot, err)
            return EXIT_BAD_HELLO
        assert server.ctx is not None
        server.ctx.connection_share = max(1, int(hello.get("workers", 1)))
        server.ctx.use_settings(config.timeouts, config.limits)
        apply_health(server, hello.get("health", {}))
        apply_ejections(server, hello.get("ejected", {}))

        def report_ejection(target: EndpointPool) -> None:
            left = target.ejected_until - loop.time()
            writer.write(encode({"type": "ejected", "endpoint": str(target.address), "for": left}))

        server.ctx.on_eject = report_ejection
        writer.write(encode({"type": "ready", "version": table.version, "pid": os.getpid()}))
        listener = loop.create_task(self._listen(reader, writer, config))
        try:
            await self.stop.wait()
        finally:
            await cancel_and_wait([listener])
            await server.stop(self.grace)
            writer.close()
        return 0

    async def _listen(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, config: Config
    ) -> None:
        server = self.server
        assert server is not None
        try:
            while True:
                message = await read_message(reader)
                kind = message["type"]
                if kind == "state":
                    table = table_from(config, message)
                    server.set_table(table)
                    writer.write(encode({"type": "ack", "version": table.version}))
                elif kind == "config":
                    # A reload: the master has checked the text; settings first, so the
                    # new table's endpoints take the new upstream settings.
                    try:
                        reloaded = parse_config(message["config"], message["source"])
                    except ConfigError as err:
                        # No ack: the master replaces this worker, and the new one starts
                        # from the master's config.
                        log.error("worker %d: the reloaded config does not parse here: %s",
                                  self.slot, err)  # fmt: skip
                        continue
                    config = reloaded
                    server.use_config(config)
                    table = table_from(config, message["state"])
                    server.set_table(table)
                    writer.write(encode({"type": "ack", "version": table.version}))
                elif kind == "health":
                    apply_health(server, message["endpoints"])
                elif kind == "eject":
                    apply_ejections(server, {message["endpoint"]: float(message["for"])})
                elif kind == "counters":
                    body = worker_counters(server.metrics, server.shadows, self.cursor)
                    writer.write(encode({"type": "counters", "id": message["id"], **body}))
                elif kind == "reopen_logs":
                    self._reopen_logs()
                elif kind == "ping":
                    writer.write(encode({"type": "pong"}))
                elif kind == "drain":
                    self.grace = float(message["grace"])
                    log.info("worker %d: draining (asked by the master)", self.slot)
                    break
                else:
                    log.warning("worker %d: unknown message %r ignored", self.slot, kind)
        except ChannelClosed:
            log.warning("worker %d: the master is gone: draining", self.slot)
        finally:
            self.stop.set()

    def _reopen_logs(self) -> None:
        if self.server is not None:
            self.server.reopen_logs()


def bind_to_cpu(cpu: int) -> None:
    """Run on `cpu` only. A CPU taken away since the master looked (a changed cpuset) costs
    the binding, not the worker."""
    try:
        os.sched_setaffinity(0, {cpu})
    except (AttributeError, OSError) as err:
        log.warning("cannot bind to CPU %d (%s): running on any", cpu, err)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m proxy.worker")
    parser.add_argument("--slot", type=int, required=True)
    parser.add_argument("--listen-fd", type=int, action="append", required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--cpu", type=int)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format=f"%(asctime)s %(levelname)s worker {args.slot} %(name)s: %(message)s",
    )
    if args.cpu is not None:
        bind_to_cpu(args.cpu)
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 50, 100)
    return uvloop.run(Worker(args.slot, args.listen_fd, args.control_fd).run())


if __name__ == "__main__":
    sys.exit(main())
