"""Slow-client attacks with Debian's `slowhttptest` against a real Pointsman: a Service master in
the test's event loop and one `python -m proxy.worker` process, in front of a Backend, with
short client timeouts (header_read, body_read and client_write 2 s, idle 5 s).

Three attacks, each a few hundred connections at most and bounded in time (`-l`):

- slowloris (`-H`): request heads that never end, a header line a second;
- slow body (`-B`): a POST whose body comes in pieces, each after a pause longer than
  body_read;
- slow read (`-X`): `GET /big` (4 MiB) read through a TCP window of a few hundred bytes.

While each runs, the test checks what an operator would watch: a normal client keeps getting
200 within PROBE_DEADLINE on new connections, the RSS of Pointsman's processes (master and
worker; the master is this test's process, so its share also holds pytest and the backend)
grows less than a bound, the connections to the backend stay bounded; and at the end that
the attack really held connections open (slowhttptest's CSV: `connected`), that Pointsman
closed every one of them soon after the timeout that applies (its open-connections gauge and
the kernel's ESTABLISHED sockets), counted under the matching
`pointsman_rejected_requests_total` reason, that slowhttptest saw them closed before its
time limit (not for slow readers, which cannot see the cut: see that test), and that its own
probe found the service available every second.

slowhttptest is Debian's package of the same name (`make unit` installs it with
`bash scripts/need.sh slowhttptest slowhttptest`).
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import re
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp
import pytest
import trustme
from aiohttp import web

from control.service import Service
from proxy.config import StateConfig
from proxy.config_loader import parse_config
from tests.conftest import Backend, BackendFactory, config_for, on_free_ports
from tests.test_tls import write_pems
from tests.test_workers import run_service

TIMEOUT = 2.0  # header_read, body_read and client_write, seconds
TIMEOUTS = (
    f"timeouts: {{header_read: {TIMEOUT}s, body_read: {TIMEOUT}s, client_write: {TIMEOUT}s, "
    "idle: 5s, grace: 1s}"
)
BIG = 4 * 1024 * 1024  # GET /big: enough to fill the socket buffers of a slow reader many times
CHUNK = b"x" * (64 * 1024)
PROBE_DEADLINE = 1.0  # seconds a normal request may take during an attack
SAMPLE_EVERY = 0.5  # seconds between the checks while an attack runs
# Extra seconds beyond the timeout for the server to close an attack connection: the timeout
# counts from the connection's last progress, slowhttptest writes its CSV once a second, and
# the 2 CPUs are shared.
CLOSE_MARGIN = 3.0


def slowhttptest_path() -> str:
    """slowhttptest's path; a clear failure, not a skip, where it is missing."""
    path = shutil.which("slowhttptest")
    if path is None:
        pytest.fail(
            "slowhttptest is not installed: `make unit` installs it "
            "(bash scripts/need.sh slowhttptest slowhttptest)"
        )
    return path


async def backend_handler(request: web.Request) -> web.StreamResponse:
    """`/big`: 4 MiB, written a chunk at a time with back-pressure, so the backend holds at
    most a chunk per connection whatever the client does; else `ok` and the body's length."""
    if request.path == "/big":
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = BIG
        await response.prepare(request)
        for _ in range(BIG // len(CHUNK)):
            await response.write(CHUNK)
        await response.write_eof()
        return response
    body = await request.read()
    return web.Response(text=f"ok {len(body)}")


@dataclass
class Proxy:
    service: Service
    session: aiohttp.ClientSession
    admin: str
    url: str
    backend: Backend


async def start_proxy(
    backend_factory: BackendFactory, tmp_path: Path, tls: tuple[Path, Path] | None
) -> tuple[Proxy, Callable[[], Awaitable[None]]]:
    """Pointsman on a plain listener, or a TLS one with `tls` (certificate, key)."""
    backend = await backend_factory("blue", backend_handler)
    config = config_for({"blue": [backend.address]}, extra=TIMEOUTS)
    if tls is not None:
        # The workers parse the config's text: the listener gets its `tls` there.
        listen = "listen: 127.0.0.1:1\n"
        assert listen in config.text
        tls_listen = f"listen: {{address: 127.0.0.1:1, tls: {{cert: {tls[0]}, key: {tls[1]}}}}}\n"
        config = on_free_ports(parse_config(config.text.replace(listen, tls_listen), "<test>"))
    config = replace(config, state=StateConfig(path=str(tmp_path / "state.json")))
    service, session, admin, url = await run_service(config, workers=1)
    if tls is not None:
        url = url.replace("http://", "https://", 1)

    async def stop() -> None:
        await session.close()
        await service.stop()

    return Proxy(service, session, admin, url, backend), stop


@pytest.fixture
async def proxy(
    backend_factory: BackendFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Proxy]:
    """Pointsman (master + 1 worker) in front of one backend, with the short timeouts."""
    monkeypatch.delenv("POINTSMAN_TOKEN", raising=False)
    started, stop = await start_proxy(backend_factory, tmp_path, None)
    try:
        yield started
    finally:
        await stop()


@pytest.fixture
async def tls_proxy(
    backend_factory: BackendFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Proxy]:
    """The same behind a TLS listener (a certificate for 127.0.0.1 made with trustme; the
    probes and slowhttptest do not verify it)."""
    monkeypatch.delenv("POINTSMAN_TOKEN", raising=False)
    pems = write_pems(trustme.CA().issue_cert("127.0.0.1"), tmp_path, "listener")
    started, stop = await start_proxy(backend_factory, tmp_path, (pems.cert, pems.key))
    try:
        yield started
    finally:
        await stop()


# --------------------------------------------------------------------------- what is watched


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tcp_sockets(local_port: int) -> list[tuple[str, int]]:
    """(state, bytes queued to send) of each TCP socket whose local port is `local_port`
    (states as /proc/net/tcp has them: 01 ESTABLISHED, 04 FIN_WAIT1, 0A LISTEN, ...)."""
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == local_port:
            found.append((fields[3], int(fields[4].split(":")[0], 16)))
    return found


def established_to(port: int) -> int:
    """ESTABLISHED TCP connections whose remote end is 127.0.0.1:port (Pointsman's upstream
    connections to the backend; the backend's own ends have the port as their local one)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote, state = fields[2], fields[3]
        if state == "01" and int(remote.split(":")[1], 16) == port:
            count += 1
    return count


async def metric(proxy: Proxy, name: str, labels: str = "") -> float:
    """One sample of the host's /metrics (0 when absent)."""
    async with proxy.session.get(proxy.admin + "/metrics") as resp:
        text = await resp.text()
    pattern = re.escape(name + (f"{{{labels}}}" if labels else "")) + r" ([0-9.eE+-]+)$"
    m = re.search(pattern, text, re.M)
    return float(m.group(1)) if m else 0.0


@dataclass
class Sample:
    """One round of checks while an attack runs."""

    at: float  # seconds since slowhttptest started
    status: int  # the normal client's GET /: its status, 0 when none came in time
    seconds: float  # and how long it took
    rss_kib: int  # master + worker
    worker_rss_kib: int
    upstream: int  # ESTABLISHED connections to the backend
    open_connections: float  # pointsman_open_connections (the host's)
    established: int  # ESTABLISHED sockets on Pointsman's data port (the kernel's view)
    fin_wait: int  # its sockets in FIN_WAIT1: closed by Pointsman, data still queued
    fin_wait_bytes: int  # and the bytes they still hold in the kernel


async def probe(session: aiohttp.ClientSession, url: str) -> tuple[int, float]:
    """GET / on a new connection: (status, 0 when none in time; seconds)."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(PROBE_DEADLINE * 2):
            async with session.get(url + "/") as resp:
                await resp.read()
                status = resp.status
    except (TimeoutError, aiohttp.ClientError):
        status = 0
    return status, time.monotonic() - started


@dataclass
class Attack:
    name: str
    connections: int  # slowhttptest's -c
    samples: list[Sample]
    baseline_rss_kib: int
    stdout: str  # slowhttptest's, without colours
    rows: list[dict[str, int]]  # slowhttptest's CSV, a row a second

    @property
    def most_connected(self) -> int:
        return max(row["Connected"] for row in self.rows)

    @property
    def exit_status(self) -> str:
        m = re.search(r"Exit status: *(.*)", self.stdout)
        return m.group(1).strip() if m else "?"

    @property
    def ended_on(self) -> int | None:
        """The second slowhttptest stopped on."""
        m = re.search(r"Test ended on (\d+)", self.stdout)
        return int(m.group(1)) if m else None

    def failed_probes(self) -> list[Sample]:
        return [s for s in self.samples if s.status != 200 or s.seconds > PROBE_DEADLINE]

    def unavailable_seconds(self) -> list[int]:
        """Seconds in which slowhttptest's own probe got no answer within -p."""
        return [row["Seconds"] for row in self.rows if row["Service Available"] == 0]

    def all_closed_at(self) -> float | None:
        """When Pointsman's open connections went back to at most the normal client's, after
        the attack had them up."""
        peaked = False
        for s in self.samples:
            if s.open_connections >= self.connections * 0.9:
                peaked = True
            elif peaked and s.open_connections <= 2:
                return s.at
        return None

    def growth_mib(self) -> float:
        return (max(s.rss_kib for s in self.samples) - self.baseline_rss_kib) / 1024

    def __str__(self) -> str:
        worker = max(s.worker_rss_kib for s in self.samples) / 1024
        closed_at = self.all_closed_at()
        return (
            f"{self.name}: slowhttptest: {self.most_connected}/{self.connections} connected at "
            f"once, ended on second {self.ended_on} ({self.exit_status}), its probe unavailable "
            f"in {len(self.unavailable_seconds())} s; Pointsman: open connections at most "
            f"{max(s.open_connections for s in self.samples):.0f}, back to the normal client's "
            + (f"{closed_at:.1f} s in" if closed_at is not None else "never")
            + f"; normal GETs {len(self.samples)}, failed {len(self.failed_probes())}, slowest "
            f"{max(s.seconds for s in self.samples):.3f} s; RSS {self.baseline_rss_kib / 1024:.1f}"
            f" MiB, growth at most {self.growth_mib():.1f} MiB (worker at most {worker:.1f} MiB); "
            f"upstream connections at most {max(s.upstream for s in self.samples)}; sockets "
            f"in FIN_WAIT1 at most {max(s.fin_wait for s in self.samples)}, holding "
            f"{max(s.fin_wait_bytes for s in self.samples) / 1e6:.1f} MB"
        )


async def attack(
    proxy: Proxy, tmp_path: Path, name: str, connections: int, args: list[str], limit: int
) -> Attack:
    """Run slowhttptest (`-c connections`, `args`) for at most `limit` seconds, checking
    Pointsman every SAMPLE_EVERY meanwhile."""
    supervisor = proxy.service.supervisor
    assert supervisor is not None and len(supervisor.slots) == 1
    worker = supervisor.slots[0].pid
    assert worker is not None, "the worker is not running"
    pids = [os.getpid(), worker]  # the master (this process) and its worker
    baseline = sum(rss_kib(p) for p in pids)
    prefix = tmp_path / "slowhttptest"
    argv = [slowhttptest_path(), *args, "-c", str(connections), "-r", str(connections)]
    argv += ["-l", str(limit), "-p", "2", "-g", "-o", str(prefix)]
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output = asyncio.ensure_future(process.communicate())
    samples: list[Sample] = []
    # ssl=False: the TLS variant's certificate is the test's own (plain URLs ignore it)
    probes = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, ssl=False))

    port = int(proxy.url.rsplit(":", 1)[1])

    async def sample() -> Sample:
        at = time.monotonic() - started
        status, seconds = await probe(probes, proxy.url)
        # The gauge first, the kernel's sockets after: a transport closes its socket before
        # the protocol hears of it, so a gauge that shows a connection gone implies a socket
        # read later is gone too (the other order raced: a socket snapshot taken just before
        # the closes, a gauge just after).
        open_connections = await metric(proxy, "pointsman_open_connections")
        sockets = tcp_sockets(port)
        fin_wait = [queued for state, queued in sockets if state == "04"]
        samples.append(
            Sample(
                at=at,
                status=status,
                seconds=seconds,
                rss_kib=sum(rss_kib(p) for p in pids),
                worker_rss_kib=rss_kib(pids[1]),
                upstream=established_to(proxy.backend.port),
                open_connections=open_connections,
                established=sum(1 for state, _ in sockets if state == "01"),
                fin_wait=len(fin_wait),
                fin_wait_bytes=sum(fin_wait),
            )
        )
        return samples[-1]

    try:
        while not output.done():
            await sample()
            await asyncio.wait([output], timeout=SAMPLE_EVERY)
        stdout, _ = await output
        # slowhttptest stops once it sees its last connection closed, which may be before a
        # check saw Pointsman's count go down: a few more, until it has
        for _ in range(round(CLOSE_MARGIN / SAMPLE_EVERY)):
            if (await sample()).open_connections <= 2:
                break
            await asyncio.sleep(SAMPLE_EVERY)
    finally:
        await probes.close()
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stdout.decode(errors="replace")
    text = await asyncio.to_thread(Path(f"{prefix}.csv").read_text)
    rows = [{k: int(v) for k, v in row.items()} for row in csv.DictReader(io.StringIO(text))]
    assert rows, "slowhttptest wrote no statistics"
    plain = re.sub(r"\x1b\[[0-9;]*m", "", stdout.decode(errors="replace"))
    result = Attack(name, connections, samples, baseline, plain, rows)
    print(result)
    return result


async def upstream_settles(proxy: Proxy, most: int) -> int:
    """ESTABLISHED connections to the backend once they are at most `most` (or after 3 s)."""
    for _ in range(30):
        if (count := established_to(proxy.backend.port)) <= most:
            break
        await asyncio.sleep(0.1)
    return count


def check_attack(
    a: Attack, *, growth_mib: float, closed_within: float, client_sees_close: bool = True
) -> None:
    """What every attack must show; `closed_within`: seconds from the start by which
    Pointsman must have closed all the attack's connections; `client_sees_close`: and
    slowhttptest saw every one closed before its time limit."""
    # the attack held its connections open at once (else it tested nothing)
    assert a.most_connected >= a.connections * 0.9, a
    assert max(s.open_connections for s in a.samples) >= a.connections * 0.9, a
    # a normal client got 200 within PROBE_DEADLINE all along, on new connections
    assert len(a.samples) >= 4, a
    assert not a.failed_probes(), (a.failed_probes(), str(a))
    # and slowhttptest's own probe found the service available every second
    assert not a.unavailable_seconds(), a
    # Pointsman's memory stayed bounded
    assert a.growth_mib() < growth_mib, a
    # Pointsman closed the attack's connections once the timeout had passed, and the kernel
    # agrees: none of them is ESTABLISHED any more
    closed_at = a.all_closed_at()
    assert closed_at is not None and closed_at <= closed_within, a
    assert all(s.established <= 2 for s in a.samples if s.at >= closed_at), a
    if client_sees_close:
        # and slowhttptest saw them closed, before its time limit
        assert a.exit_status == "No open connections left", a


async def rejected(proxy: Proxy, reason: str) -> float:
    return await metric(proxy, "pointsman_rejected_requests_total", f'reason="{reason}"')


# --------------------------------------------------------------------------- the attacks


@pytest.mark.timeout(30)
async def test_slowloris_heads_are_cut_at_header_read(proxy: Proxy, tmp_path: Path) -> None:
    before = await rejected(proxy, "header_timeout")

    # 200 heads, a header line each second (-i 1) that never ends them
    a = await attack(
        proxy,
        tmp_path,
        "slowloris",
        200,
        ["-H", "-i", "1", "-x", "8", "-u", proxy.url + "/"],
        limit=10,
    )

    # Each connection holds at most limits.max_header_bytes (16 KiB) of head and no upstream
    # connection: 200 of them are at most 3 MiB, the rest is slack for the allocator.
    # Opened within the first second, cut header_read later; the line that comes meanwhile
    # does not help.
    check_attack(a, growth_mib=16, closed_within=1 + TIMEOUT + CLOSE_MARGIN)
    # no head was complete, so nothing went upstream but the normal client's requests
    assert max(s.upstream for s in a.samples) <= 2, a
    assert await rejected(proxy, "header_timeout") - before >= a.connections


@pytest.mark.timeout(30)
async def test_slow_bodies_are_cut_at_body_read(proxy: Proxy, tmp_path: Path) -> None:
    before = await rejected(proxy, "body_timeout")

    # 200 POSTs of 8 KiB (-s) whose body comes a few bytes every 3 s (-i 3): silent for
    # longer than body_read between pieces
    a = await attack(
        proxy,
        tmp_path,
        "slow body",
        200,
        ["-B", "-i", "3", "-s", "8192", "-x", "8", "-u", proxy.url + "/upload"],
        limit=12,
    )

    # The head goes upstream at once and the body's pieces are streamed after it, not
    # buffered: each connection holds a request and an upstream connection, some KiB.
    # Opened within the first second, cut body_read after a piece (one comes every 3 s).
    check_attack(a, growth_mib=16, closed_within=1 + 3 + TIMEOUT + CLOSE_MARGIN)
    # at most an upstream connection per attack connection (plus the normal client's), and
    # the cut ones are closed, not kept for reuse
    assert max(s.upstream for s in a.samples) <= a.connections + 2, a
    assert await upstream_settles(proxy, 2) <= 2
    assert await rejected(proxy, "body_timeout") - before >= a.connections


@pytest.mark.timeout(30)
async def test_slow_readers_are_cut_at_client_write(proxy: Proxy, tmp_path: Path) -> None:
    await slow_readers_are_cut(proxy, tmp_path)


@pytest.mark.timeout(30)
async def test_slow_readers_over_tls_are_cut_at_client_write(
    tls_proxy: Proxy, tmp_path: Path
) -> None:
    """The same through a TLS listener: its own transport (proxy/tls_transport.py) holds
    what OpenSSL could not write and pauses the protocol, as uvloop's plain one does."""
    await slow_readers_are_cut(tls_proxy, tmp_path)


async def slow_readers_are_cut(proxy: Proxy, tmp_path: Path) -> None:
    before = await rejected(proxy, "client_write_timeout")

    # 64 GETs of /big (4 MiB) through a TCP window of 512-1024 bytes (-w, -y), 32 bytes (-z)
    # read a second (-n 1)
    window = "-X -w 512 -y 1024 -n 1 -z 32 -k 1".split()
    a = await attack(proxy, tmp_path, "slow read", 64, [*window, "-u", f"{proxy.url}/big"], limit=8)

    # Past its write buffer's high-water mark (256 KiB) a slow reader's connection stops
    # reading its upstream: it holds that buffer and at most one more read (256 KiB), 32 MiB
    # for 64 of them; the rest is slack for the allocator. (The kernel's socket buffers,
    # about 1.6 MB each here, are not in RSS.)
    #
    # slowhttptest does not see these cuts: what Pointsman sent before the cut still sits in
    # the kernel's send buffer ahead of the FIN, and a reset is dropped by a receiver whose
    # window is full. So the check is on Pointsman's side: its open connections, the kernel's
    # ESTABLISHED sockets, the rejection count.
    check_attack(
        a, growth_mib=48, closed_within=1 + TIMEOUT + CLOSE_MARGIN, client_sees_close=False
    )
    # an upstream connection per slow reader at most, each let go when its reader is cut
    assert max(s.upstream for s in a.samples) <= a.connections + 2, a
    assert await upstream_settles(proxy, 2) <= 2
    assert await rejected(proxy, "client_write_timeout") - before >= a.connections
