"""The master's side of the process model: N data-plane workers, their listening sockets, the
routing state pushed to them, their counters summed, and their supervision.

Each worker slot has its own SO_REUSEPORT listening socket, opened here and kept open for the
life of the master, so a worker that dies or is replaced leaves the connections queued on its
socket for the next one. A worker is a fresh interpreter (`python -m proxy.worker`, fork+exec
with the socket and one end of a socketpair passed), never a fork of this process.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from proxy.config import Address, Config, WorkerCpuAffinity
from proxy.host_counters import Counts, add_counts, add_samples, apply, retired
from proxy.ipc import ChannelClosed, encode, read_message
from proxy.server import ProxyServer, listening_socket
from proxy.tasks import cancel_and_wait

log = logging.getLogger("pointsman.workers")

# A fresh interpreter imports, parses the config and binds its table in well under a second;
# a worker not ready after this is broken.
READY_TIMEOUT: Final = 20.0
# A worker swaps its table in microseconds between requests; no ack after this means it is
# stuck, and it is replaced (the replacement starts with the current state).
ACK_TIMEOUT: Final = 2.0
# A scrape must answer: a worker slower than this is summed with the values it sent last.
COUNTERS_TIMEOUT: Final = 0.5
# How often counters are summed without a scrape, for the rollout analysis and the shadow API.
COUNTERS_INTERVAL: Final = 1.0
# Heartbeat: a worker that answers no ping for HEARTBEAT_TIMEOUT is killed and replaced.
HEARTBEAT_INTERVAL: Final = 1.0
HEARTBEAT_TIMEOUT: Final = 5.0
# Restart backoff after a worker dies: doubled per death in a row, reset once it has served
# for RESTART_RESET seconds.
RESTART_FIRST: Final = 0.1
RESTART_MAX: Final = 5.0
RESTART_RESET: Final = 30.0
# Workers in a row that die before they are ready: past this the master gives up (exit 1),
# since the config or the machine, not chance, is what kills them.
CRASH_LOOP_LIMIT: Final = 5
# After the drain's grace, how long a worker may take to exit before it is killed.
EXIT_MARGIN: Final = 5.0


class WorkerStartError(Exception):
    """Workers cannot be started or keep dying before they are ready (one line)."""


def allowed_cpus() -> set[int]:
    """The CPUs this process may run on (empty where the OS cannot say: no binding)."""
    try:
        return os.sched_getaffinity(0)
    except (AttributeError, OSError):  # not Linux
        return set()


def worker_count(setting: int | None) -> int:
    """`workers: auto` (None) is the number of CPUs this process may run on (where the OS
    cannot say, the number of CPUs)."""
    if setting is not None:
        return setting
    return len(allowed_cpus()) or max(1, os.cpu_count() or 1)


def worker_cpus(setting: WorkerCpuAffinity, count: int, allowed: Iterable[int]) -> list[int | None]:
    """The CPU each worker slot is bound to (None: not bound), from the CPUs the master may
    run on.

    `auto` binds 2..len(allowed) workers one to a CPU, in CPU order. Unbound, two busy
    workers can land on one core, and the one that waits stalls all its connections for up
    to a scheduler tick (4 ms at HZ=250): that was most of the p99 gap to nginx in make
    bench (see ARCHITECTURE.md). One worker has no such neighbour and may move to whichever
    core is free; with more workers than CPUs some must share anyway.
    """
    cpus = sorted(allowed)
    if setting == "off" or not 2 <= count <= len(cpus):
        return [None] * count
    return list(cpus[:count])


class WorkerSlot:
    """One worker position: its listening sockets (one per listener), and the worker process
    now serving them."""

    def __init__(self, index: int, socks: list[socket.socket], cpu: int | None = None) -> None:
        self.index = index
        self.socks = socks
        self.cpu = cpu  # the CPU its workers are bound to; None: any
        self.process: asyncio.subprocess.Process | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.reader_task: asyncio.Task[None] | None = None
        self.up = asyncio.Event()  # the worker's interpreter is running and connected
        self.ready = False  # accepting, with a state the master sent
        self.version = -1  # the state version it last acknowledged
        self.ready_at = 0.0
        self.last_seen = 0.0  # loop time of its last message
        self.counts: Counts = {}  # cumulative counters it last sent
        self.gauges: dict[str, Any] = {}
        self.acks: list[tuple[int, asyncio.Future[None]]] = []
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.ready_event = asyncio.Event()
        self.restarts = 0
        self.retired_requests = 0  # answered by the slot's earlier workers

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def send(self, message: dict[str, Any]) -> bool:
        writer = self.writer
        if writer is None or writer.is_closing():
            return False
        writer.write(encode(message))
        return True


class Supervisor:
    """Starts, feeds, watches and stops the workers of one host."""

    def __init__(
        self,
        proxy: ProxyServer,
        count: int,
        config_text: str,
        snapshot: Callable[[], dict[str, Any]],
        lock: asyncio.Lock,
        log_level: str = "info",
        shared_socket: bool = False,
    ) -> None:
        self.proxy = proxy  # the master's: no listener; its counters hold the host's sums
        self.config = proxy.config
        self.count = count
        self.config_text = config_text
        self.snapshot = snapshot  # the current routing state as workers take it
        self.lock = lock  # the control plane's: no change lands between a hello and its ready
        self.log_level = log_level
        self.shared_socket = shared_socket  # one socket for all slots (for measuring only)
        self.slots: list[WorkerSlot] = []
        self.retired_counts: Counts = {}  # what workers that have exited had counted
        self.ejections: dict[str, int] = {}  # host-wide ejections by endpoint (address)
        self.stopping = False
        self.failed = asyncio.Event()  # set with `failure` when the master must stop
        self.failure = ""
        self._tasks: list[asyncio.Task[None]] = []
        self._ids = itertools.count(1)
        self._refreshing: asyncio.Task[None] | None = None
        self.ports: list[int] = []  # each listener's port, once started

    @property
    def port(self) -> int:
        """The first listener's port."""
        return self.ports[0]

    # -- start ------------------------------------------------------------------------------

    async def start(self) -> None:
        addresses = list(self.config.listen_addresses)
        shared = (
            [listening_socket(address, False) for address in addresses]
            if self.shared_socket
            else None
        )
        cpus = worker_cpus(self.config.worker_cpu_affinity, self.count, allowed_cpus())
        for index in range(self.count):
            socks = []
            for position, address in enumerate(addresses):
                sock = shared[position] if shared else listening_socket(address, True)
                if index == 0 and address.port == 0:
                    # Port 0 (tests): the kernel picked one; every other slot joins that port.
                    addresses[position] = Address(address.host, int(sock.getsockname()[1]))
                socks.append(sock)
            self.slots.append(WorkerSlot(index, socks, cpus[index]))
        self.ports = [address.port for address in addresses]
        listen = ", ".join(str(address) for address in addresses)
        loop = asyncio.get_running_loop()
        for slot in self.slots:
            code = await self._spawn(slot)
            if code is not None:
                await self.stop(0.0)  # the workers already started, and the sockets
                raise WorkerStartError(
                    f"worker {slot.index} exited with code {code} before it was ready"
                    " (its own log line above says why)"
                )
        for slot in self.slots:
            self._tasks.append(loop.create_task(self._keep(slot)))
        self._tasks.append(loop.create_task(self._heartbeat()))
        self._tasks.append(loop.create_task(self._refresh_forever()))
        self.proxy.metrics.open_connections = self.open_connections
        self.proxy.metrics.idle_upstream_connections = lambda: self._gauge_sum(
            "idle_upstream_connections"
        )
        self.proxy.metrics.endpoints_in_flight = self.endpoints_in_flight
        self.proxy.metrics.collectors.append(WorkerCollector(self))
        log.info(
            "%d workers serving %s (%s)", self.count, listen,
            "one shared socket" if shared else "one SO_REUSEPORT socket each",
        )  # fmt: skip

    async def _spawn(self, slot: WorkerSlot) -> int | None:
        """Start a worker for the slot and wait until it is ready. None when it is; else its
        exit code (it died or hung before it was ready, and is gone)."""
        parent, child = socket.socketpair()
        listen_fds = [sock.fileno() for sock in slot.socks]
        listen_args = [arg for fd in listen_fds for arg in ("--listen-fd", str(fd))]
        cpu_args = [] if slot.cpu is None else ["--cpu", str(slot.cpu)]
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "proxy.worker", "--slot", str(slot.index),
                *listen_args, *cpu_args, "--control-fd", str(child.fileno()),
                "--log-level", self.log_level,
                pass_fds=(*listen_fds, child.fileno()),
                # Its own session: a terminal's Ctrl-C reaches the master only, which drains
                # the workers in order.
                start_new_session=True,
            )  # fmt: skip
        finally:
            child.close()
        slot.process = process
        slot.up = asyncio.Event()
        slot.ready = False
        slot.ready_event = asyncio.Event()
        reader, writer = await asyncio.open_connection(sock=parent)
        slot.writer = writer
        slot.last_seen = asyncio.get_running_loop().time()
        slot.reader_task = asyncio.get_running_loop().create_task(self._read(slot, reader))
        exited = asyncio.get_running_loop().create_task(process.wait())
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                await self._first_of(slot.up.wait(), exited)
                if exited.done():
                    return await self._gone(slot, exited)
                # Under the plane's lock: no change can land between this state and the
                # worker's first request, so it starts with the current state.
                async with self.lock:
                    slot.send(
                        {
                            "type": "hello",
                            "config": self.config_text,
                            "source": self.config.source,
                            "state": self.snapshot(),
                            "health": self.health(),
                            "ejected": self.ejected(),
                            "workers": self.count,  # they share limits.max_connections
                        }
                    )
                    await self._first_of(slot.ready_event.wait(), exited)
                if exited.done():
                    return await self._gone(slot, exited)
        except TimeoutError:
            log.error("worker %d (pid %d) not ready after %gs: killed",
                      slot.index, process.pid, READY_TIMEOUT)  # fmt: skip
            process.kill()
            return await self._gone(slot, exited)
        finally:
            if not exited.done():
                exited.cancel()
        slot.ready = True
        slot.ready_at = time.monotonic()
        log.info("worker %d ready (pid %d, state version %d%s)", slot.index, process.pid,
                 slot.version, "" if slot.cpu is None else f", CPU {slot.cpu}")  # fmt: skip
        return None

    @staticmethod
    async def _first_of(wait: Awaitable[object], exited: asyncio.Task[int]) -> None:
        waiter = asyncio.ensure_future(wait)
        try:
            await asyncio.wait({waiter, exited}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()

    async def _gone(self, slot: WorkerSlot, exited: asyncio.Task[int]) -> int:
        code = await exited
        await self._detach(slot)
        return code

    async def _detach(self, slot: WorkerSlot) -> None:
        """Forget the slot's worker: keep what it counted, fail what waited on it."""
        slot.ready = False
        if slot.counts:
            add_counts(self.retired_counts, retired(slot.counts))
            slot.retired_requests += requests_in(slot.counts)
        slot.counts = {}
        slot.gauges = {}
        for _, acked in slot.acks:
            if not acked.done():
                acked.set_result(None)  # a dead worker serves nothing: nothing to wait for
        slot.acks.clear()
        for answer in slot.pending.values():
            if not answer.done():
                answer.cancel()
        slot.pending.clear()
        if slot.writer is not None:
            slot.writer.close()
            slot.writer = None
        task, slot.reader_task = slot.reader_task, None
        if task is not None and task is not asyncio.current_task():
            await cancel_and_wait([task])

    async def _read(self, slot: WorkerSlot, reader: asyncio.StreamReader) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                message = await read_message(reader)
                slot.last_seen = loop.time()
                kind = message["type"]
                if kind == "up":
                    slot.up.set()
                elif kind in ("ready", "ack"):
                    # What it runs now: messages come in order, and a version only goes
                    # down when a change whose save failed is taken back.
                    version = int(message["version"])
                    slot.version = version
                    if kind == "ready":
                        slot.ready_event.set()
                    # Acks come in the order the states were sent: this one answers the
                    # first send of this version and every send before it.
                    for index, (wanted, _) in enumerate(slot.acks):
                        if wanted == version:
                            answered, slot.acks = slot.acks[: index + 1], slot.acks[index + 1 :]
                            for _, future in answered:
                                if not future.done():
                                    future.set_result(None)
                            break
                elif kind == "ejected":
                    self.eject(slot, str(message["endpoint"]), float(message["for"]))
                elif kind == "counters":
                    answer = slot.pending.pop(int(message["id"]), None)
                    if answer is not None and not answer.done():
                        answer.set_result(message)
        except ChannelClosed:
            pass  # the process is exiting; _keep sees it

    # -- supervision ------------------------------------------------------------------------

    async def _keep(self, slot: WorkerSlot) -> None:
        """Restart the slot's worker whenever it exits, with backoff, until stopping."""
        backoff = RESTART_FIRST
        early_deaths = 0
        while True:
            process = slot.process
            assert process is not None
            code = await process.wait()
            await self._detach(slot)
            if self.stopping:
                return
            served = time.monotonic() - slot.ready_at
            log.error("worker %d (pid %d) exited with code %d after %.1fs: restarting in %gs",
                      slot.index, process.pid, code, served, backoff)  # fmt: skip
            if served >= RESTART_RESET:
                backoff = RESTART_FIRST
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RESTART_MAX)
            while not self.stopping:
                slot.restarts += 1
                code_before_ready = await self._spawn(slot)
                if code_before_ready is None:
                    early_deaths = 0
                    break
                early_deaths += 1
                if early_deaths >= CRASH_LOOP_LIMIT:
                    self.failure = (
                        f"worker {slot.index} died before it was ready {early_deaths} times in"
                        f" a row (last exit code {code_before_ready}): stopping"
                    )
                    self.failed.set()
                    return
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RESTART_MAX)

    async def _heartbeat(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            now = loop.time()
            for slot in self.slots:
                if not slot.ready or slot.process is None:
                    continue
                if now - slot.last_seen > HEARTBEAT_TIMEOUT:
                    log.error("worker %d (pid %d) answered nothing for %gs: killed",
                              slot.index, slot.process.pid, HEARTBEAT_TIMEOUT)  # fmt: skip
                    slot.process.kill()
                    slot.ready = False
                else:
                    slot.send({"type": "ping"})

    # -- state ------------------------------------------------------------------------------

    def push_config(self, config: Config) -> Awaitable[None]:
        """A reloaded config and the current state to every live worker (and to the workers
        started from now on). Awaiting the result returns once each has applied both."""
        self.config = config
        self.config_text = config.text
        state = self.snapshot()
        version = int(state["version"])
        loop = asyncio.get_running_loop()
        waits: list[tuple[WorkerSlot, asyncio.Future[None]]] = []
        message = {"type": "config", "config": config.text, "source": config.source}
        for slot in self.slots:
            if not slot.ready:
                continue  # it gets the new config in its hello
            future: asyncio.Future[None] = loop.create_future()
            slot.acks.append((version, future))
            if slot.send({**message, "state": state}):
                waits.append((slot, future))
            else:
                future.cancel()
        return self._acknowledged(version, waits)

    def push_state(self, force: bool = False) -> Awaitable[None]:
        """Send the current state to every live worker now (`force`: also to those that run
        its version, for new DNS addresses). Awaiting the result returns once each has
        applied it; a worker that does not acknowledge in time is replaced (and starts with
        the state current then)."""
        state = self.snapshot()
        version = int(state["version"])
        loop = asyncio.get_running_loop()
        waits: list[tuple[WorkerSlot, asyncio.Future[None]]] = []
        for slot in self.slots:
            # `!=`, not `<`: a change whose save failed is taken back with the version before.
            if not slot.ready or (slot.version == version and not force):
                continue
            future: asyncio.Future[None] = loop.create_future()
            slot.acks.append((version, future))
            if slot.send({"type": "state", **state}):
                waits.append((slot, future))
            else:
                future.cancel()
        return self._acknowledged(version, waits)

    async def _acknowledged(
        self, version: int, waits: list[tuple[WorkerSlot, asyncio.Future[None]]]
    ) -> None:
        if not waits:
            return
        _, late = await asyncio.wait([f for _, f in waits], timeout=ACK_TIMEOUT)
        for slot, future in waits:
            if future in late and slot.process is not None:
                log.error("worker %d (pid %d) did not apply version %d in %gs: killed",
                          slot.index, slot.process.pid, version, ACK_TIMEOUT)  # fmt: skip
                slot.ready = False
                slot.process.kill()

    def health(self) -> dict[str, bool]:
        """Active-check results of the master, by endpoint address."""
        upstreams = self.proxy.upstreams
        if upstreams is None:
            return {}
        return {str(address): target.checks_ok for address, target in upstreams.pools.items()}

    def eject(self, reporter: WorkerSlot, endpoint: str, seconds: float) -> None:
        """A worker ejected `endpoint` for `seconds`: eject it on every worker of the host
        (and in the master's view, for the API and /metrics). Failures are counted per worker,
        so the first worker to see enough of them decides for the host."""
        loop = asyncio.get_running_loop()
        upstreams = self.proxy.upstreams
        target = None
        if upstreams is not None:
            target = next((t for a, t in upstreams.pools.items() if str(a) == endpoint), None)
        if target is None:
            return
        if target.ejected_until > loop.time():
            return  # already ejected for the host: the other workers were told
        target.ejected_until = loop.time() + seconds
        target.healthy = False
        self.ejections[endpoint] = self.ejections.get(endpoint, 0) + 1
        log.warning("endpoint %s ejected for the host for %gs (reported by worker %d)",
                    endpoint, seconds, reporter.index)  # fmt: skip
        for slot in self.slots:
            if slot is not reporter and slot.ready:
                slot.send({"type": "eject", "endpoint": endpoint, "for": seconds})

    def ejected(self) -> dict[str, float]:
        """Endpoints ejected for the host now, with the seconds left (for a new worker)."""
        upstreams = self.proxy.upstreams
        if upstreams is None:
            return {}
        now = asyncio.get_running_loop().time()
        return {
            str(address): target.ejected_until - now
            for address, target in upstreams.pools.items()
            if target.ejected_until > now
        }

    def push_health(self) -> None:
        endpoints = self.health()
        for slot in self.slots:
            if slot.ready:
                slot.send({"type": "health", "endpoints": endpoints})

    # -- counters ---------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Ask every live worker for its counters (COUNTERS_TIMEOUT at most) and write the
        host's sums into the master's counters. Concurrent callers share one round."""
        task = self._refreshing
        if task is None or task.done():
            task = self._refreshing = asyncio.get_running_loop().create_task(self._refresh())
        await asyncio.shield(task)

    async def _refresh(self) -> None:
        loop = asyncio.get_running_loop()
        asked: list[tuple[WorkerSlot, asyncio.Future[dict[str, Any]]]] = []
        for slot in self.slots:
            if not slot.ready:
                continue
            ident = next(self._ids)
            future: asyncio.Future[dict[str, Any]] = loop.create_future()
            slot.pending[ident] = future
            if slot.send({"type": "counters", "id": ident}):
                asked.append((slot, future))
            else:
                slot.pending.pop(ident, None)
        if asked:
            await asyncio.wait([f for _, f in asked], timeout=COUNTERS_TIMEOUT)
        for slot, future in asked:
            if future.done() and not future.cancelled():
                answer = future.result()
                slot.counts = answer["counts"]
                slot.gauges = answer["gauges"]
                add_samples(self.proxy.shadows, answer.get("samples", {}))
            else:
                future.cancel()
                for key, pending in list(slot.pending.items()):
                    if pending is future:
                        del slot.pending[key]
        totals: Counts = {}
        add_counts(totals, self.retired_counts)
        for slot in self.slots:
            if slot.counts:
                add_counts(totals, slot.counts)
        apply(totals, self.proxy.metrics, self.proxy.shadows)

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(COUNTERS_INTERVAL)
            try:
                await self.refresh()
            except ValueError as err:
                log.error("counters from the workers not summed: %s", err)

    def _gauge_sum(self, name: str) -> int:
        return sum(slot.gauges.get(name, 0) for slot in self.slots if slot.ready)

    def open_connections(self) -> int:
        return self._gauge_sum("open_connections")

    def endpoints_in_flight(self) -> dict[str, int]:
        """Requests under way per endpoint on the whole host, as the workers last said."""
        total: dict[str, int] = {}
        for slot in self.slots:
            if slot.ready:
                for endpoint, count in slot.gauges.get("endpoints_in_flight", {}).items():
                    total[endpoint] = total.get(endpoint, 0) + int(count)
        return total

    def reopen_logs(self) -> None:
        """SIGUSR1 to the master (logrotate's postrotate): every worker reopens its log."""
        for slot in self.slots:
            slot.send({"type": "reopen_logs"})

    # -- stop -------------------------------------------------------------------------------

    async def stop(self, grace: float) -> None:
        """Close the listening sockets, drain every worker at once (each finishes in flight
        for up to `grace`), kill what is left after EXIT_MARGIN more."""
        self.stopping = True
        background, self._tasks = self._tasks, []
        await cancel_and_wait(background)
        if self._refreshing is not None:
            await cancel_and_wait([self._refreshing])
        # New connections are refused from now on, as one draining process refuses them: the
        # master's copies of the listening sockets close first, then each worker closes its own.
        for sock in {id(sock): sock for s in self.slots for sock in s.socks}.values():
            sock.close()
        running = [s for s in self.slots if s.process is not None and s.process.returncode is None]
        for slot in running:
            if not slot.send({"type": "drain", "grace": grace}) and slot.process is not None:
                slot.process.send_signal(signal.SIGTERM)
        for slot in running:
            process = slot.process
            assert process is not None
            try:
                async with asyncio.timeout(grace + EXIT_MARGIN):
                    await process.wait()
            except TimeoutError:
                log.error("worker %d (pid %d) still running after the drain: killed",
                          slot.index, process.pid)  # fmt: skip
                process.kill()
                await process.wait()
        for slot in self.slots:
            await self._detach(slot)


class WorkerCollector(Collector):
    """Per-worker series: open connections and requests (how evenly the kernel spreads the
    load), restarts; and the host's passive ejections per endpoint (decided here)."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("pointsman_workers_ready", "Workers serving traffic now.")
        up.add_metric([], sum(1 for s in self.supervisor.slots if s.ready))
        yield up
        conns = GaugeMetricFamily(
            "pointsman_worker_open_connections",
            "Open downstream connections of each worker (as of the last counters round).",
            labels=["worker"],
        )
        restarts = CounterMetricFamily(
            "pointsman_worker_restarts", "Times each worker slot was restarted.",
            labels=["worker"],
        )  # fmt: skip
        served = CounterMetricFamily(
            "pointsman_worker_requests",
            "Requests answered by each worker slot (as of the last counters round).",
            labels=["worker"],
        )
        for slot in self.supervisor.slots:
            conns.add_metric([str(slot.index)], slot.gauges.get("open_connections", 0))
            restarts.add_metric([str(slot.index)], slot.restarts)
            served.add_metric([str(slot.index)], slot.retired_requests + requests_in(slot.counts))
        yield conns
        yield restarts
        yield served
        # Every endpoint from the start (0 until ejected), so that the first ejection is an
        # increase a dashboard or rule can see, not a series appearing at 1.
        ejections = CounterMetricFamily(
            "pointsman_endpoint_ejections",
            "Passive ejections of each endpoint for the host (reported by a worker).",
            labels=["endpoint"],
        )
        upstreams = self.supervisor.proxy.upstreams
        known = [] if upstreams is None else [str(address) for address in upstreams.pools]
        counted = self.supervisor.ejections
        for endpoint in sorted({*known, *counted}):
            ejections.add_metric([endpoint], counted.get(endpoint, 0))
        yield ejections


def requests_in(counts: Counts) -> int:
    """Requests answered, in one worker's counters: every pool's status classes."""
    return sum(
        sum(values["status"])
        for by_pool in counts.get("pools", {}).values()
        for values in by_pool.values()
    )
