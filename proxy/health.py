"""Active health checks: one small loop per checked endpoint, off the request path.

Each check opens a connection (with the pool's TLS settings if it has any), sends `GET <path>`
with `Connection: close` and reads the status line; 2xx and 3xx pass, anything else (refused,
timed out, 4xx, 5xx, garbage) fails. An endpoint is taken out after `unhealthy_threshold`
consecutive failures and back in after `healthy_threshold` consecutive passes. Endpoints start
in (optimistic), so a restart does not answer 503 until the first checks have run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from proxy.config import HealthCheckConfig
from proxy.tasks import cancel_and_wait
from proxy.upstream import EndpointPool

log = logging.getLogger("pointsman.health")

# A status line longer than this is not HTTP; the check fails rather than reading on.
MAX_STATUS_LINE = 1024


async def probe(target: EndpointPool, config: HealthCheckConfig) -> bool:
    """One check; True if the endpoint answered 2xx or 3xx within the timeout."""
    address = target.address
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(config.timeout):
            if target.tls is None:
                reader, writer = await asyncio.open_connection(address.host, address.port)
            else:  # the pool's TLS settings, as the proxied requests use them
                reader, writer = await asyncio.open_connection(
                    address.host, address.port, ssl=target.tls,
                    server_hostname=target.server_name or address.host,
                )  # fmt: skip
            writer.write(
                b"GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: pointsman-health\r\n"
                b"Connection: close\r\n\r\n" % (config.path.encode(), str(address).encode())
            )
            line = await reader.readuntil(b"\r\n")
    except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return False
    finally:
        if writer is not None:
            writer.close()
    if len(line) > MAX_STATUS_LINE:
        return False
    parts = line.split(b" ", 2)
    return len(parts) >= 2 and parts[0].startswith(b"HTTP/1.") and parts[1][:1] in (b"2", b"3")


class HealthChecker:
    """Runs the check loops; `start` with the endpoints to check, `stop` cancels them."""

    def __init__(self) -> None:
        self._tasks: dict[EndpointPool, asyncio.Task[None]] = {}
        self._configs: dict[EndpointPool, HealthCheckConfig] = {}  # what each task checks with
        # Loops of endpoints no longer checked, cancelled and not yet finished: kept so that
        # `stop` waits for them too.
        self._stopping: set[asyncio.Task[None]] = set()
        # Called after an endpoint goes out or comes back (the master pushes it to workers).
        self.on_change: Callable[[], None] | None = None

    def start(self, checks: Mapping[EndpointPool, HealthCheckConfig]) -> None:
        loop = asyncio.get_running_loop()
        for target, config in checks.items():
            if target not in self._tasks:
                self._tasks[target] = loop.create_task(self._run(target, config))
                self._configs[target] = config

    def update(self, checks: Mapping[EndpointPool, HealthCheckConfig]) -> None:
        """Check exactly these endpoints from now on (pools and endpoints change at run
        time, settings at a reload): new ones start checked, removed ones stop, and one whose
        settings changed starts again with them (keeping its current verdict)."""
        for target in [t for t in self._tasks if checks.get(t) != self._configs.get(t)]:
            del self._configs[target]
            task = self._tasks.pop(target)
            task.cancel()
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)
        self.start(checks)

    async def _run(self, target: EndpointPool, config: HealthCheckConfig) -> None:
        passes = failures = 0
        while True:
            ok = await probe(target, config)
            if ok:
                passes, failures = passes + 1, 0
                if not target.checks_ok and passes >= config.healthy_threshold:
                    target.set_checks_ok(True)
                    log.info("endpoint %s passed %d checks: back in", target.address, passes)
                    if self.on_change is not None:
                        self.on_change()
            else:
                passes, failures = 0, failures + 1
                if target.checks_ok and failures >= config.unhealthy_threshold:
                    target.set_checks_ok(False)
                    log.warning("endpoint %s failed %d checks: out", target.address, failures)
                    if self.on_change is not None:
                        self.on_change()
            await asyncio.sleep(config.interval)

    async def stop(self) -> None:
        tasks = [*self._tasks.values(), *self._stopping]
        self._tasks.clear()
        self._configs.clear()
        await cancel_and_wait(tasks)
