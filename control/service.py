"""Run one Pointsman process: data plane, admin listener, signals, ordered shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from control.api import build_admin_app
from proxy.config import Config
from proxy.server import ProxyServer

log = logging.getLogger("pointsman")


class Service:
    """Data plane plus admin listener; `start` then `stop`, or `run` until a signal."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.proxy = ProxyServer(config)
        self._admin_runner: web.AppRunner | None = None

    async def start(self) -> None:
        await self.proxy.start()
        app = build_admin_app(self.proxy)
        # access_log off: /metrics is scraped every few seconds and would drown the log.
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        admin = self.config.admin.listen
        site = web.TCPSite(runner, admin.host, admin.port, reuse_address=True)
        await site.start()
        self._admin_runner = runner
        log.info("admin listening on %s", admin)

    async def stop(self) -> None:
        # Data plane first (drains in-flight requests), admin last so /metrics and /healthz
        # answer (healthz says draining) while it drains.
        await self.proxy.stop()
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
            self._admin_runner = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        try:
            await stop.wait()
            log.info("signal received: draining (grace %.1fs)", self.config.timeouts.grace)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self.stop()
        log.info("stopped")
