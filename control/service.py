"""Run Pointsman: the admin listener, the routing state and its store, health checks and
rollouts, and either the data plane in this process (`workers=None`, as the tests embed it)
or N worker processes that serve it (control/workers.py); signals and ordered shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import ssl
import time
from dataclasses import replace
from typing import Final

from aiohttp import web

from control.api import build_admin_app, is_loopback, load_token
from control.errors import ApiError
from control.etcd import EtcdClient, EtcdError, EtcdUnavailable
from control.etcd_store import EtcdStore, StateConflict
from control.fleet import FleetSync
from control.fleet_sync import Refuse
from control.leadership import Leadership
from control.members import Member, MemberRegistration, list_members
from control.plane import ControlPlane
from control.rollouts import FleetRollouts, RolloutRunner
from control.state import initial_state, reconcile
from control.store import FileStore, audit_record
from control.workers import Supervisor
from proxy.config import Config, ConfigError, EtcdSettings
from proxy.config_loader import load_config
from proxy.server import ProxyServer
from proxy.tasks import cancel_and_wait

log = logging.getLogger("pointsman")


# At start, fitting the fleet's state to this config and writing it back can lose to another
# member starting at the same moment; each loss re-reads what it wrote.
FITTING_ATTEMPTS: Final = 5
# gRPC codes etcd answers a bad login or missing rights with.
GRPC_INVALID_ARGUMENT: Final = 3  # "authentication failed, invalid user ID or password"
GRPC_PERMISSION_DENIED: Final = 7
GRPC_UNAUTHENTICATED: Final = 16
# The etcd calls of a member's registration (grant, put): start waits that many call timeouts.
REGISTER_CALLS: Final = 2
# Settings a reload cannot change: the listeners are bound, the workers started and the
# state store opened with them. A reload keeps them and says which differ.
RESTART_ONLY: Final = ("listen", "admin", "workers", "worker_cpu_affinity", "state", "dns")


def _restart_value(config: Config, key: str) -> object:
    """What a reload compares for a RESTART_ONLY key: for `listen` the addresses only (the
    listeners' certificates are reloaded)."""
    return config.listen_addresses if key == "listen" else getattr(config, key)


def check_access_log(config: Config) -> None:
    """The access log's file can be opened for appending (by the workers, which would only
    exit on it): one line now instead. Raises ConfigError."""
    settings = config.access_log
    if settings is None or settings.path == "-":
        return
    try:
        directory = os.path.dirname(settings.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        os.close(os.open(settings.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
    except OSError as err:
        raise ConfigError(
            [f"{config.source}: access_log.path: cannot open {settings.path}: {err.strerror}"]
        ) from None


def etcd_client(settings: EtcdSettings) -> EtcdClient:
    """The client for `state.etcd`: password from the environment, TLS files when given."""
    context = None
    if settings.ca is not None or settings.cert is not None:
        try:
            context = ssl.create_default_context(cafile=settings.ca)
        except (OSError, ssl.SSLError) as err:
            raise StartupError(f"state.ca: cannot load {settings.ca}: {_reason(err)}") from None
        if settings.cert is not None:
            try:
                context.load_cert_chain(settings.cert, settings.key)
            except (OSError, ssl.SSLError) as err:
                raise StartupError(
                    f"state.cert, state.key: cannot load {settings.cert} and {settings.key}:"
                    f" {_reason(err)}"
                ) from None
    return EtcdClient(
        settings.endpoints,
        timeout=settings.timeout,
        username=settings.username,
        password=os.environ.get(settings.password_env),
        ssl_context=context,
    )


def _reason(err: Exception) -> str:
    return getattr(err, "strerror", None) or getattr(err, "reason", None) or str(err)


class StartupError(Exception):
    """Pointsman must not start as configured (one line for the operator)."""


class Service:
    """Admin listener plus the data plane (in-process or in workers); `start` then `stop`, or
    `run` until a signal."""

    def __init__(
        self,
        config: Config,
        workers: int | None = None,
        log_level: str = "info",
        shared_socket: bool = False,
    ) -> None:
        self.config = config
        # In master mode this server never listens: it holds the endpoint pools the health
        # checks probe, and its counters hold the sums of the workers' counters.
        self.proxy = ProxyServer(config)
        self.workers = workers
        self.log_level = log_level
        self.shared_socket = shared_socket
        self.supervisor: Supervisor | None = None
        self.plane: ControlPlane | None = None
        self.rollouts: RolloutRunner | None = None
        self.fleet_sync: FleetSync | None = None  # with state.store: etcd
        self._fleet_task: asyncio.Task[None] | None = None
        self.registration: MemberRegistration | None = None  # this member's key in etcd
        self._registration_task: asyncio.Task[None] | None = None
        self._etcd: EtcdClient | None = None
        self._admin_runner: web.AppRunner | None = None
        self._reloads: set[asyncio.Task[None]] = set()  # started by SIGHUP
        self._started = asyncio.Event()  # a SIGHUP during start waits for it

    @property
    def data_port(self) -> int:
        """The port the data plane listens on (the workers' when there are workers)."""
        if self.supervisor is not None:
            return self.supervisor.port
        return self.proxy.port

    @property
    def data_ports(self) -> list[int]:
        """Each listener's port, in the config's order."""
        if self.supervisor is not None:
            return self.supervisor.ports
        return self.proxy.ports

    def _reopen_logs(self) -> None:
        log.info("SIGUSR1: reopening the access log")
        if self.supervisor is not None:
            self.supervisor.reopen_logs()
        else:
            self.proxy.reopen_logs()

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

    async def _open_fleet(self, settings: EtcdSettings) -> ControlPlane:
        """The fleet's state from etcd (the first member creates the fleet), fitted to this
        config and written back if that changed it. etcd down or refusing: the local copy
        (or the config's initial state) is served, and the sync loop converges later."""
        local = FileStore(self.config.state.path)
        copy = local.load()
        client = self._etcd = etcd_client(settings)
        fleet = EtcdStore(client, settings.prefix, settings.fleet)
        now = time.time()
        doc = None
        try:
            for _ in range(FITTING_ATTEMPTS):
                read = await fleet.open(copy or initial_state(self.config.routes, now))
                if isinstance(read, Refuse):
                    log.error("fleet: %s; serving the local copy", read.reason)
                    break
                fitted, warnings = reconcile(read.doc, self.config.routes, now)
                if fitted is read.doc:
                    doc = fitted
                    break
                for warning in warnings:
                    log.warning("state: %s", warning)
                try:
                    record = audit_record(
                        "start", "reconcile", "*", None, None, fitted.version, now
                    )
                    await fleet.save(fitted, record)
                except StateConflict:
                    continue  # another member wrote meanwhile: fit what it wrote
                doc = fitted
                break
        except EtcdUnavailable as err:
            log.warning("fleet: etcd at %s does not answer (%s); serving the local copy",
                        ", ".join(settings.endpoints), err)  # fmt: skip
        except EtcdError as err:
            # etcd answered and refused: wrong credentials or rights, or not an etcd v3
            # gateway. Settings to fix, not an outage to ride out.
            await client.close()
            self._etcd = None
            hint = ""
            if err.code in (GRPC_INVALID_ARGUMENT, GRPC_PERMISSION_DENIED, GRPC_UNAUTHENTICATED):
                hint = f" (check state.username and ${settings.password_env})"
            raise StartupError(
                f"state: etcd at {', '.join(settings.endpoints)} refused: {err}{hint}"
            ) from None
        if doc is not None:
            log.info("state: fleet %s at %s (version %d)", settings.fleet, settings.prefix,
                     doc.version)  # fmt: skip
            local.save(doc)
            applied = doc
        else:
            # Unconfirmed: whatever etcd holds when it answers is applied, even if its
            # version is not newer (the copy was fitted here, not written there).
            base = copy or initial_state(self.config.routes, now)
            fitted, warnings = reconcile(base, self.config.routes, now)
            for warning in warnings:
                log.warning("state: %s", warning)
            doc = replace(fitted, version=base.version)
            applied = None
            log.info("state: local copy %s (version %d)", local.path, doc.version)
        plane = ControlPlane(self.config, self.proxy, local, doc, fleet=fleet)
        plane.fleet_confirmed = applied is not None
        self.fleet_sync = FleetSync(client, fleet, plane.apply_from_fleet, applied)
        plane.fleet_sync = self.fleet_sync
        return plane

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
            etcd = self.config.state.etcd
            plane = self._load_state() if etcd is None else await self._open_fleet(etcd)
        except (OSError, ValueError, ssl.SSLError) as err:
            raise StartupError(f"state: {err}") from None
        self.plane = plane
        rollouts = self.rollouts = RolloutRunner(plane)
        await plane.discover(plane.doc)  # the first table has the DNS endpoints' addresses
        plane.publish()
        try:
            check_access_log(self.config)
        except ConfigError as err:
            raise StartupError(str(err)) from None
        if self.workers is None:
            try:
                await self.proxy.start()
            except ConfigError as err:
                raise StartupError(str(err)) from None
        else:
            await self.proxy.start(accept=False)
            supervisor = self.supervisor = Supervisor(
                self.proxy, self.workers, self.config.text, plane.snapshot, plane.lock,
                log_level=self.log_level, shared_socket=self.shared_socket,
            )  # fmt: skip
            plane.push_to_workers = supervisor.push_state
            plane.push_config_to_workers = supervisor.push_config
            plane.push_resolved_to_workers = lambda: supervisor.push_state(force=True)
            plane.refresh_counters = supervisor.refresh
            self.proxy.health.on_change = supervisor.push_health
            await supervisor.start()
        await rollouts.restore()
        if self.fleet_sync is not None:
            self._fleet_task = asyncio.create_task(self.fleet_sync.run(), name="fleet-sync")
        app = build_admin_app(self.proxy, plane, token, rollouts, reload=self.reload)
        # access_log off: /metrics is scraped every few seconds and would drown the log.
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        listen = admin.listen
        site = web.TCPSite(runner, listen.host, listen.port, reuse_address=True)
        await site.start()
        self._admin_runner = runner
        log.info("admin listening on %s", listen)
        if self.fleet_sync is not None:
            registration = self._register(plane, int(runner.addresses[0][1]))
            self._drive_rollouts_in_fleet(rollouts, registration, token)
            # Registered before start() returns, so a `?wait=fleet` from now on waits for this
            # member too; with etcd down it registers when etcd is back.
            etcd = self.config.state.etcd
            assert etcd is not None
            try:
                async with asyncio.timeout(REGISTER_CALLS * etcd.timeout):
                    await registration.registered.wait()
            except TimeoutError:
                log.warning("fleet: not registered as a member yet (etcd does not answer)")
        self._started.set()

    def _drive_rollouts_in_fleet(
        self, rollouts: RolloutRunner, registration: MemberRegistration, token: str | None
    ) -> None:
        """One member drives each rollout (an etcd lease); the runner follows the others'."""
        assert self._etcd is not None and self.config.state.etcd is not None
        etcd, settings = self._etcd, self.config.state.etcd
        member_id = registration.member_id

        async def members() -> list[Member]:
            _, found = await list_members(etcd, settings.prefix)
            return found

        leadership = Leadership(etcd, settings.prefix, member_id, settings.leader_ttl)
        rollouts.start_fleet(FleetRollouts(leadership, members, member_id, token))
        assert self.plane is not None
        told = self.plane.on_install

        def installed() -> None:
            told()
            rollouts.follow_state()  # the drivers' latest, for status and the manual guard

        self.plane.on_install = installed

    def _register(self, plane: ControlPlane, admin_port: int) -> MemberRegistration:
        """This member's key under the prefix: what it serves, for `?wait=fleet` and the
        fleet view. Its id is unique per host and admin port."""
        assert self._etcd is not None and self.config.state.etcd is not None
        host = self.config.admin.listen.host
        if host in ("0.0.0.0", "::", ""):
            host = socket.gethostname()
        admin = f"{host}:{admin_port}" if ":" not in host else f"[{host}]:{admin_port}"
        member_id = f"{socket.gethostname()}:{admin_port}"
        sync = self.fleet_sync

        def info() -> Member:
            error = None if sync is None else sync.problem
            return Member(member_id, admin, plane.installed_version, self.workers, error)

        registration = self.registration = MemberRegistration(
            self._etcd, self.config.state.etcd.prefix, member_id, info
        )
        plane.on_install = registration.changed.set
        self._registration_task = asyncio.create_task(registration.run(), name="fleet-member")
        return registration

    async def reload(self, actor: str) -> dict[str, object]:
        """Read the config file again and serve it: routes, pools, rules, sticky settings,
        shadows, limits and timeouts for new requests on every worker, no connection
        closed; the state fitted to it as at start. Raises ConfigError (nothing changed)
        when the file has problems; ApiError when the fitted state cannot be stored."""
        plane = self.plane
        assert plane is not None, "reload before start"
        started = time.monotonic()
        config = await asyncio.to_thread(load_config, self.config.source)
        old = self.config
        restart = [
            key for key in RESTART_ONLY if _restart_value(config, key) != _restart_value(old, key)
        ]
        check_access_log(config)
        config = replace(
            config,
            listeners=old.listeners if "listen" in restart else config.listeners,
            admin=old.admin,
            workers=old.workers,
            worker_cpu_affinity=old.worker_cpu_affinity,
            state=old.state,
            dns=old.dns,
        )
        doc, warnings = await plane.reload(config, actor)
        self.config = config
        for warning in warnings:
            log.warning("state: %s", warning)
        for key in restart:
            log.warning("reload: %s changed in %s; it takes effect at the next start",
                        key, config.source)  # fmt: skip
        return {
            "config": config.source,
            "version": doc.version,
            "warnings": warnings,
            "restart_needed": restart,
            "seconds": round(time.monotonic() - started, 4),
        }

    def _reload_on_signal(self) -> None:
        async def reload() -> None:
            await self._started.wait()
            try:
                await self.reload("SIGHUP")
            except ConfigError as err:
                log.error("reload (SIGHUP): %s has problems; nothing changed:\n%s",
                          self.config.source, err)  # fmt: skip
            except ApiError as err:
                log.error("reload (SIGHUP): %s", err.error)

        task = asyncio.get_running_loop().create_task(reload(), name="reload")
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def stop(self) -> None:
        await cancel_and_wait(list(self._reloads))
        # Rollouts first (their time in step is saved; no step may change during the drain),
        # then the data plane (drains in-flight requests), admin last so /metrics and /healthz
        # answer (healthz says draining) while it drains.
        if self.rollouts is not None:
            await self.rollouts.close()
        if self._registration_task is not None:
            await cancel_and_wait([self._registration_task])
            self._registration_task = None
            if self.registration is not None:
                await self.registration.close()  # leaves the fleet at once, not after the TTL
        if self._fleet_task is not None:
            await cancel_and_wait([self._fleet_task])
            self._fleet_task = None
        if self._etcd is not None:
            await self._etcd.close()
            self._etcd = None
        if self.plane is not None:
            await self.plane.close()  # DNS resolutions
        if self.supervisor is not None:
            ctx = self.proxy.ctx
            if ctx is not None:
                ctx.draining = True  # /healthz says so while the workers drain
            await self.supervisor.stop(self.config.timeouts.grace)
        await self.proxy.stop()
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
            self._admin_runner = None

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT (0) or until the workers cannot be kept running (1)."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        code = 0
        try:
            # Before start: a SIGHUP's default action would end the process.
            loop.add_signal_handler(signal.SIGHUP, self._reload_on_signal)
            loop.add_signal_handler(signal.SIGUSR1, self._reopen_logs)
            await self.start()
            waits = [loop.create_task(stop.wait())]
            if self.supervisor is not None:
                waits.append(loop.create_task(self.supervisor.failed.wait()))
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                await cancel_and_wait(waits)
            if self.supervisor is not None and self.supervisor.failed.is_set():
                log.error("%s", self.supervisor.failure)
                code = 1
            else:
                log.info("signal received: draining (grace %.1fs)", self.config.timeouts.grace)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
                loop.remove_signal_handler(sig)
            await self.stop()
        log.info("stopped")
        return code
