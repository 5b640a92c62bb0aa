"""Every shadow of one process: binding them to each new routing table (so counters, noise and
samples survive a swap), the sweeper that fails mirrors past their timeout, the comparison
thread for large answers, and the memory all mirrors hold for comparison."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from proxy.compare import Comparison
from proxy.config import COMPARE_MEMORY_LIMIT, Address
from proxy.shadow import SWEEP_INTERVAL, Exchange, Shadow, run_compare
from proxy.shadow_config import ShadowConfig
from proxy.shadow_records import CompareMemory
from proxy.tasks import cancel_and_wait
from proxy.upstream import EndpointPool, Upstreams

__all__ = ["ShadowedRoute", "Shadows"]

log = logging.getLogger("pointsman.shadow")


@dataclass(frozen=True, slots=True)
class ShadowedRoute:
    """What binding needs of a route: its name, its shadows and its pools' endpoints. (The
    router's Route holds the bound Shadows, so this module cannot know Route itself.)"""

    name: str
    shadows: tuple[ShadowConfig, ...]
    endpoints: Mapping[str, tuple[Address, ...]]  # pool name -> its endpoints


class Shadows:
    """Every Shadow of one proxy process, the comparison thread, and binding to tables."""

    def __init__(self, memory_limit: int = COMPARE_MEMORY_LIMIT) -> None:
        self.by_key: dict[tuple[str, str], Shadow] = {}
        self.upstreams: Upstreams | None = None
        # One thread: comparisons are CPU-bound under the GIL, so more threads would only
        # take more of the loop's time; their number is bounded by the shadows' in-flight caps.
        self._executor: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._closed = False  # after close(), a late table swap must not start a new sweeper
        self.memory = CompareMemory(memory_limit)

    def get(self, route: str, pool: str) -> Shadow | None:
        return self.by_key.get((route, pool))

    def bind(
        self, routes: Sequence[ShadowedRoute], upstreams: Upstreams | None
    ) -> dict[str, tuple[Shadow, ...]]:
        """The live Shadow objects of every route of a new table (kept by route and pool, so
        counters, noise and samples survive the swap), by route name."""
        if upstreams is not None:
            self.upstreams = upstreams
            if self._sweeper is None and not self._closed:
                self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())
        configured = {(r.name, c.pool) for r in routes for c in r.shadows}
        for key in [key for key in self.by_key if key not in configured]:
            # A removed shadow: its mirrors stop, and one added again later starts afresh.
            self.by_key.pop(key).cancel_all()
        bound: dict[str, tuple[Shadow, ...]] = {}
        for route in routes:
            if self._closed:
                bound[route.name] = ()  # shut down: nothing would end new mirrors any more
                continue
            mirrors = []
            for config in route.shadows:
                shadow = self.by_key.get((route.name, config.pool))
                if shadow is None:
                    shadow = self.by_key[(route.name, config.pool)] = Shadow(
                        route.name, config, self.memory, self.compare_later
                    )
                shadow.configure(config)
                shadow.upstreams = self.upstreams
                if self.upstreams is not None:
                    limit = config.max_in_flight
                    shadow.targets = self._targets(route.endpoints[config.pool], limit)
                    baseline = config.baseline
                    shadow.baseline_targets = (
                        self._targets(route.endpoints[baseline], limit) if baseline else ()
                    )
                mirrors.append(shadow)
            bound[route.name] = tuple(mirrors)
        return bound

    def _targets(
        self, endpoints: tuple[Address, ...], max_in_flight: int
    ) -> tuple[EndpointPool, ...]:
        upstreams = self.upstreams
        assert upstreams is not None
        return tuple(upstreams.shadow_pool(address, max_in_flight) for address in endpoints)

    async def _sweep_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = loop.time()
            for shadow in list(self.by_key.values()):
                shadow.sweep(now)

    def compare_later(self, shadow: Shadow, exchange: Exchange) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="pointsman-compare")
            self._loop = asyncio.get_running_loop()
        future = self._executor.submit(run_compare, exchange, shadow.config)
        loop = self._loop
        assert loop is not None

        def done(f: Future[tuple[Comparison, Comparison | None]]) -> None:
            try:
                loop.call_soon_threadsafe(self._compared, shadow, exchange, f)
            except RuntimeError:
                pass  # the loop has closed: shutting down, nothing left to count

        future.add_done_callback(done)

    def _compared(
        self,
        shadow: Shadow,
        exchange: Exchange,
        future: Future[tuple[Comparison, Comparison | None]],
    ) -> None:
        if future.cancelled():
            shadow._release(exchange)
            return
        exc = future.exception()
        if exc is not None:
            log.error("comparison failed (route %s, shadow %s)", shadow.route, shadow.pool,
                      exc_info=exc)  # fmt: skip
            shadow._release(exchange)
            return
        shadow.record(exchange, future.result())

    async def close(self) -> None:
        self._closed = True
        sweeper, self._sweeper = self._sweeper, None
        await cancel_and_wait([sweeper])
        for shadow in self.by_key.values():
            shadow.cancel_all()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
