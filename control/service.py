"""Run one Pointsman process: data plane, admin listener, signals, ordered shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
import time

from aiohttp import web

from control.api import build_admin_app, is_loopback, load_token
from control.plane import ControlPlane
from control.rollouts import RolloutRunner
from control.state import initial_state, reconcile
from control.store import FileStore
from proxy.config import Config
from proxy.server import ProxyServer

log = logging.getLogger("pointsman")


class StartupError(Exception):
    """Pointsman must not start as configured (one line for the operator)."""


class Service:
    """Data plane plus admin listener; `start` then `stop`, or `run` until a signal."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.proxy = ProxyServer(config)
        self.plane: ControlPlane | None = None
        self.rollouts: RolloutRunner | None = None
        self._admin_runner: web.AppRunner | None = None

    def _load_state(self) -> ControlPlane:
        """Persisted state wins over the config's initial weights; routes or pools the config
        no longer has are dropped with a warning, not fatal."""
        store = FileStore(self.config.state.path)
        now = time.time()
        doc = store.load()
        if doc is None:
            doc = initial_state(self.config.routes, now)
            store.save(doc)
            log.info("state: new document at %s (version %d)", store.path, doc.version)
        else:
            reconciled, warnings = reconcile(doc, self.config.routes, now)
            for warning in warnings:
                log.warning("state: %s", warning)
            if reconciled is not doc:
                store.save(reconciled)
            doc = reconciled
            log.info("state: resumed from %s (version %d)", store.path, doc.version)
        return ControlPlane(self.config, self.proxy, store, doc)

    async def start(self) -> None:
        try:
            token = load_token(self.config)
        except OSError as err:
            raise StartupError(f"admin.token_file: cannot read token: {err.strerror}") from None
        admin = self.config.admin
        if token is None and not is_loopback(admin.listen.host):
            raise StartupError(
                f"admin.listen is {admin.listen}, not a loopback address, and no admin token is"
                f" set (environment variable {admin.token_env} or admin.token_file): refusing"
                " to start with an open control API"
            )
        try:
            plane = self._load_state()
        except (OSError, ValueError) as err:
            raise StartupError(f"state: {err}") from None
        self.plane = plane
        rollouts = self.rollouts = RolloutRunner(plane)
        plane.publish()
        await self.proxy.start()
        await rollouts.restore()
        app = build_admin_app(self.proxy, plane, token, rollouts)
        # access_log off: /metrics is scraped every few seconds and would drown the log.
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        listen = admin.listen
        site = web.TCPSite(runner, listen.host, listen.port, reuse_address=True)
        await site.start()
        self._admin_runner = runner
        log.info("admin listening on %s", listen)

    async def stop(self) -> None:
        # Rollouts first (their time in step is saved; no step may change during the drain),
        # then the data plane (drains in-flight requests), admin last so /metrics and /healthz
        # answer (healthz says draining) while it drains.
        if self.rollouts is not None:
            await self.rollouts.close()
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
