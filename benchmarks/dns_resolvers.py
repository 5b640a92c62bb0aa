"""Three ways to resolve a name without blocking the event loop, the figures behind
proxy/dns.py's choice: the loop's getaddrinfo (in a thread pool), aiodns (c-ares, in its own
thread) and dnspython's asyncio resolver as proxy/dns.py uses it (on the loop). As root, from
the repository's root (aiodns is a dev dependency for this script only):

    .venv/bin/python -m benchmarks.dns_resolvers [--loop uvloop|asyncio] [--count 2000]

getaddrinfo only asks the name servers of /etc/resolv.conf, on port 53. So the script runs
itself again under `unshare --net --mount`: a private network namespace with only lo, where
tests/dns_server.py answers on 127.0.0.1:53 (in a child process, so its CPU is not counted), and
a resolv.conf naming it (`options timeout:1 attempts:1`) bind-mounted over /etc/resolv.conf.
All three ask that one server for the A and AAAA records of `app.test` (two A, one AAAA, TTL 0
so no cache answers); nothing leaves the namespace. For each, twice, it prints:

- latency: COUNT resolutions one after another, p50 and p99 in microseconds;
- CPU per resolution, COUNT of them CONCURRENCY at a time: of the loop's thread (what the
  proxy's event loop pays) and of the whole process (the resolver's own threads too);
- with STUCK resolutions of a name the server never answers in flight (each gives up after
  1 s), how long a trivial job in the default executor (which control/plane.py saves state
  with) and a resolution of the answering name take meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable

import aiodns
import uvloop
from dnslib import DNSRecord

from proxy.config import Address
from proxy.dns import DnsError, make_resolver, resolve
from tests.dns_server import DnsServer

NAME = "app.test"
SILENT = "silent.test"  # the server never answers this one
CONCURRENCY = 50
STUCK = 8  # more than uvloop's 4 getaddrinfo threads and asyncio's 6 executor threads here
TIMEOUT = 1.0  # seconds, both resolvers (resolv.conf's timeout:1 attempts:1)
INSIDE = "POINTSMAN_DNS_BENCH_INSIDE"

Resolver = Callable[[str], Awaitable[object]]


class BenchServer(DnsServer):
    def answer(self, data: bytes) -> bytes | None:
        if str(DNSRecord.parse(data).q.qname).rstrip(".") == SILENT:
            return None
        return super().answer(data)


def serve() -> None:
    async def run() -> None:
        server = await BenchServer().start(port=53)
        server.set(NAME, "127.0.0.2", "127.0.0.3", "::1")
        await asyncio.Event().wait()

    asyncio.run(run())


def nearest_rank(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, round(fraction * len(ordered)) - 1)]


async def measure(label: str, resolver: Resolver, count: int) -> None:
    loop = asyncio.get_running_loop()
    for _ in range(50):  # warm up: threads started, caches filled
        await resolver(NAME)
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        await resolver(NAME)
        latencies.append((time.perf_counter() - started) * 1e6)

    semaphore = asyncio.Semaphore(CONCURRENCY)

    async def one() -> None:
        async with semaphore:
            await resolver(NAME)

    thread, process, wall = time.thread_time(), time.process_time(), time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    thread, process = time.thread_time() - thread, time.process_time() - process
    wall = time.perf_counter() - wall

    stuck = [loop.create_task(resolver(SILENT)) for _ in range(STUCK)]
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    await loop.run_in_executor(None, lambda: None)
    executor_wait = time.perf_counter() - started
    started = time.perf_counter()
    await resolver(NAME)
    resolve_wait = time.perf_counter() - started
    await asyncio.gather(*stuck, return_exceptions=True)

    print(
        f"{label:12} latency p50 {statistics.median(latencies):6.0f} us, "
        f"p99 {nearest_rank(latencies, 0.99):6.0f} us | "
        f"CPU per resolution: loop thread {thread / count * 1e6:5.0f} us, "
        f"process {process / count * 1e6:5.0f} us, {count / wall:6.0f}/s | "
        f"with {STUCK} stuck: executor job {executor_wait * 1e3:6.1f} ms, "
        f"a resolution {resolve_wait * 1e3:6.1f} ms"
    )


async def main(count: int) -> None:
    loop = asyncio.get_running_loop()

    async def with_getaddrinfo(name: str) -> object:
        try:
            return await loop.getaddrinfo(name, 8080, type=socket.SOCK_STREAM)
        except OSError:
            return None

    ares = aiodns.DNSResolver(["127.0.0.1:53"], loop, timeout=TIMEOUT, tries=1)

    async def with_aiodns(name: str) -> object:
        try:
            async with asyncio.timeout(TIMEOUT):
                return await asyncio.gather(ares.query_dns(name, "A"), ares.query_dns(name, "AAAA"))
        except (aiodns.error.DNSError, TimeoutError):
            return None

    stub = make_resolver(["127.0.0.1"], TIMEOUT)

    async def with_dnspython(name: str) -> object:
        try:
            async with asyncio.timeout(TIMEOUT):
                return await resolve(stub, Address(name, 8080))
        except (DnsError, TimeoutError):
            return None

    print(f"loop: {type(loop).__module__}, {count} resolutions of {NAME}")
    for _ in range(2):  # twice, to see the noise
        await measure("getaddrinfo", with_getaddrinfo, count)
        await measure("aiodns", with_aiodns, count)
        await measure("dnspython", with_dnspython, count)
    await ares.close()


def inside(args: argparse.Namespace) -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as conf:
        conf.write("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    subprocess.run(["mount", "--bind", conf.name, "/etc/resolv.conf"], check=True)
    server = multiprocessing.get_context("fork").Process(target=serve, daemon=True)
    server.start()
    time.sleep(0.5)
    try:
        run = uvloop.run if args.loop == "uvloop" else asyncio.run
        run(main(args.count))
    finally:
        server.kill()
        os.unlink(conf.name)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--count", type=int, default=2000)
    arguments = parser.parse_args()
    if os.environ.get(INSIDE):
        inside(arguments)
    else:
        command = [
            "unshare",
            "--net",
            "--mount",
            "--",
            sys.executable,
            "-m",
            "benchmarks.dns_resolvers",
        ]
        os.execvpe(command[0], command + sys.argv[1:], {**os.environ, INSIDE: "1"})
