"""DNS endpoints: an endpoint written as `name:port` is every A and AAAA record of the name.

`DnsWatcher` keeps, for each watched `name:port`, the set of addresses the name resolves to
now. It resolves a name when it starts watching it and again every `refresh` seconds (5 s by
default, as Envoy's STRICT_DNS), and calls `on_change(endpoint, addresses)` only when a set
changes. A failed resolution (an error, a timeout, or an answer with no A or AAAA record) keeps
the last good set: a DNS server that is down for a while must not empty a pool that still
serves. Failures are counted per name, and a warning is logged once per streak of failures, not
on every refresh.

Names are asked as written, through the configured name servers (`servers`, "ip:port" each; by
default those of /etc/resolv.conf): no /etc/hosts, no search domains, as nginx's and HAProxy's
resolvers do. An endpoint's address must not depend on the host's search list. Nothing is
cached here: every refresh asks the server (Envoy's STRICT_DNS too refreshes at its own rate
unless told to respect TTLs), so a change is seen on the next refresh whatever the TTL.

The resolver is dnspython's asyncio one: its queries are datagrams on the event loop, no thread.
Measured with benchmarks/dns_resolvers.py under uvloop (which the master and workers run), all
three against the same dnslib server on 127.0.0.1:53 in a private network namespace, A and AAAA
of one name, 1000 resolutions, two runs:

    resolver                  latency p50 / p99         CPU per resolution:     another resolution
                                                        loop thread / process   while 8 wait on a
                                                                                silent server
    getaddrinfo (libuv pool)  0.54-0.70 / 0.85-0.89 ms   61-71 / 193-221 us     3.96 s
    aiodns (c-ares thread)    0.52-0.71 / 0.94-0.96 ms  129-160 / 252-316 us    1.3-1.4 ms
    dnspython (on the loop)   1.00-1.27 / 1.74-1.81 ms  593-965 / 593-965 us    1.7-2.1 ms

- getaddrinfo is out: it runs in a small shared thread pool (libuv's 4 threads under uvloop;
  under asyncio the default executor, where a trivial job then waited 0.95 s, and
  control/plane.py saves state there), so names on a silent server stall every other lookup of
  the process for seconds; it cannot be sent to a name server on another port, so it could not
  be tested against a test server; and a thread stuck in it cannot be cancelled.
- aiodns costs least, but c-ares (1.34.9, inside pycares 5.2.1) caches every answer for its
  TTL, and an empty answer (NOERROR without records) for an hour whatever the SOA says (c-ares
  issue 1293, open; seen here: the AAAA query was not asked again). Once a name answers empty,
  even for a moment during a deploy, c-ares answers "no records" for an hour after the new
  addresses are published, and the watcher keeps serving the old ones. pycares cannot switch
  that cache off (qcache_max_ttl is not among its options).
- dnspython keeps no cache unless given one and cancels like any coroutine. Its loop time,
  about 1 ms per resolution, is 20 ms a second for 100 names every 5 s, in the master, which
  does not proxy.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

import dns.asyncresolver
import dns.exception
import dns.nameserver

from proxy.config import Address, parse_address
from proxy.tasks import cancel_and_wait

log = logging.getLogger("pointsman.dns")

# Seconds between two resolutions of a name, as Envoy's STRICT_DNS dns_refresh_rate.
DEFAULT_REFRESH: Final = 5.0
# Seconds one resolution (A and AAAA asked together) may take before it counts as failed; well
# under the refresh, so a silent server never makes resolutions of one name overlap.
RESOLVE_TIMEOUT: Final = 2.0
# A query is sent this many times within the timeout: one lost UDP datagram is not a failure.
QUERY_TRIES: Final = 2
# Addresses kept per name (the lowest, so the set is stable): more is a wildcard or a broken
# zone, not a pool, and every address becomes an endpoint with its own connections and checks.
MAX_ADDRESSES: Final = 64
# After consecutive failures the wait between resolutions doubles, up to this many refreshes
# (20 s by default): a failing server is asked less, a recovered one is noticed soon.
MAX_BACKOFF: Final = 4

# on_change(endpoint, addresses): endpoint is the watched name:port, addresses its new set.
OnChange = Callable[[Address, tuple[Address, ...]], None]


class DnsError(Exception):
    """A resolution that gave no usable answer; the message says why."""


def is_name(host: str) -> bool:
    """True for a host name, False for an IP literal (IPv4, IPv6, with or without brackets):
    only names are resolved."""
    try:
        ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        return True
    return False


def make_resolver(
    servers: Sequence[str] | None = None, timeout: float = RESOLVE_TIMEOUT
) -> dns.asyncresolver.Resolver:
    """A resolver asking `servers` ("ip", "ip:port" or "[ipv6]:port"; None: those of
    /etc/resolv.conf), sending a query again after timeout / QUERY_TRIES. Raises ValueError for
    a server that is not an IP address."""
    if servers is None:
        resolver = dns.asyncresolver.Resolver()
    else:
        if not servers:
            raise ValueError("no name servers")
        resolver = dns.asyncresolver.Resolver(configure=False)
        nameservers: list[str | dns.nameserver.Nameserver] = []
        for server in servers:
            address = parse_address(server) if is_name(server) else Address(server, 53)
            if is_name(address.host):
                raise ValueError(f"name server {server!r}: expected an IP address")
            nameservers.append(dns.nameserver.Do53Nameserver(address.host, address.port))
        resolver.nameservers = nameservers
    resolver.timeout = timeout / QUERY_TRIES
    resolver.lifetime = 2 * timeout  # the caller's deadline ends a resolution before this
    return resolver


def _ip_order(address: Address) -> tuple[int, int]:
    ip = ipaddress.ip_address(address.host)
    return ip.version, int(ip)


async def _query(resolver: dns.asyncresolver.Resolver, host: str, qtype: str) -> list[str]:
    """The addresses of one A or AAAA query; none if the name has no record of that type."""
    try:
        answer = await resolver.resolve(host, qtype, search=False, raise_on_no_answer=False)
    except dns.exception.DNSException as error:
        raise DnsError(str(error)) from None
    return [str(ipaddress.ip_address(record.to_text())) for record in answer]


async def resolve(resolver: dns.asyncresolver.Resolver, endpoint: Address) -> tuple[Address, ...]:
    """Every A and AAAA record of `endpoint.host` as an address with `endpoint.port`, IPv4 first,
    each family in ascending order. Raises DnsError if either query fails or the name has
    neither record: half an answer would drop half the endpoints, so it is a failure too. The
    caller bounds the time."""
    answers = await asyncio.gather(
        _query(resolver, endpoint.host, "A"),
        _query(resolver, endpoint.host, "AAAA"),
        return_exceptions=True,  # both end before either is raised: no unretrieved error
    )
    ips: set[str] = set()
    for answer in answers:
        if isinstance(answer, BaseException):
            raise answer
        ips.update(answer)
    if not ips:
        raise DnsError("no A or AAAA records")
    return tuple(sorted((Address(ip, endpoint.port) for ip in ips), key=_ip_order))


@dataclass(slots=True)
class DnsEntry:
    """One watched name:port: its current addresses and how its resolutions went."""

    endpoint: Address
    addresses: tuple[Address, ...] = ()  # the last good set; empty until one resolution worked
    resolutions: int = 0  # resolutions that gave addresses
    failures: int = 0  # resolutions that failed, in all
    failing: int = 0  # failures in a row now; 0 once a resolution works again
    last_error: str = ""  # why the last failed resolution failed


class DnsWatcher:
    """Keeps the resolved addresses of the watched `name:port` endpoints: `watch` says which,
    `close` stops. One task per name; no thread."""

    def __init__(
        self,
        on_change: OnChange,
        *,
        refresh: float = DEFAULT_REFRESH,
        timeout: float = RESOLVE_TIMEOUT,
        servers: Sequence[str] | None = None,
    ) -> None:
        """`servers`: name servers as "ip:port" (or "ip" for port 53); None: /etc/resolv.conf's
        (read here, once). Raises ValueError for a bad setting."""
        if refresh <= 0 or timeout <= 0:
            raise ValueError("refresh and timeout must be positive")
        self.on_change = on_change
        self.refresh = refresh
        self.timeout = timeout
        self._resolver = make_resolver(servers, timeout)
        self._entries: dict[Address, DnsEntry] = {}
        self._tasks: dict[Address, asyncio.Task[None]] = {}
        self._closed = False

    @property
    def entries(self) -> Mapping[Address, DnsEntry]:
        """The watched endpoints, read-only (the API and metrics read the counters here)."""
        return MappingProxyType(self._entries)

    def addresses(self, endpoint: Address) -> tuple[Address, ...]:
        """The current set of a watched endpoint (empty if it never resolved)."""
        return self._entries[endpoint].addresses

    async def watch(self, endpoints: Iterable[Address]) -> None:
        """Watch exactly `endpoints` (host names with ports) from now on: the others are
        forgotten, the new ones resolved at once and then every `refresh` seconds. Returns when
        each new one has been resolved once (on_change has been called for those that resolved),
        so the caller can build its pools with them."""
        if self._closed:
            raise RuntimeError("DnsWatcher is closed")
        wanted = list(dict.fromkeys(endpoints))
        for endpoint in wanted:
            if not is_name(endpoint.host):
                raise ValueError(f"{endpoint} is an IP address, not a name to resolve")
        gone = [endpoint for endpoint in self._entries if endpoint not in wanted]
        for endpoint in gone:
            del self._entries[endpoint]
        await cancel_and_wait([self._tasks.pop(endpoint, None) for endpoint in gone])
        loop = asyncio.get_running_loop()
        resolved: list[asyncio.Future[None]] = []
        for endpoint in wanted:
            if endpoint not in self._entries:
                entry = self._entries[endpoint] = DnsEntry(endpoint)
                resolved.append(loop.create_future())
                self._tasks[endpoint] = loop.create_task(
                    self._run(entry, resolved[-1]), name=f"dns {endpoint}"
                )
        if resolved:
            # asyncio.wait, not gather: a caller cancelled here must not cancel the futures;
            # a task cancelled before its first resolution cancels its own future.
            await asyncio.wait(resolved)

    async def _run(self, entry: DnsEntry, resolved: asyncio.Future[None]) -> None:
        try:
            while True:
                await self._refresh(entry)
                if not resolved.done():
                    resolved.set_result(None)
                await asyncio.sleep(self._delay(entry))
        finally:
            resolved.cancel()  # no-op once set

    async def _refresh(self, entry: DnsEntry) -> None:
        endpoint = entry.endpoint
        try:
            async with asyncio.timeout(self.timeout):
                found = await resolve(self._resolver, endpoint)
        except TimeoutError:
            self._failed(entry, f"no answer within {self.timeout:g} s")
            return
        except DnsError as error:
            self._failed(entry, str(error))
            return
        if entry.failing:
            log.info("dns %s: resolves again after %d failures", endpoint, entry.failing)
        entry.failing = 0
        entry.resolutions += 1
        dropped = len(found) - MAX_ADDRESSES
        found = found[:MAX_ADDRESSES]
        if found == entry.addresses:
            return
        if dropped > 0:
            log.warning("dns %s: %d addresses over %d left out", endpoint, dropped, MAX_ADDRESSES)
        entry.addresses = found
        log.info("dns %s: %s", endpoint, ", ".join(map(str, found)))
        try:
            self.on_change(endpoint, found)
        except Exception:
            # One failing subscriber must not stop the refreshes of this name.
            log.exception("dns %s: on_change failed", endpoint)

    def _failed(self, entry: DnsEntry, error: str) -> None:
        """Count a failed resolution; the set stays. One warning per streak of failures."""
        entry.failures += 1
        entry.failing += 1
        entry.last_error = error
        if entry.failing == 1:
            log.warning(
                "dns %s: %s; keeping its last %d addresses",
                entry.endpoint,
                error,
                len(entry.addresses),
            )

    def _delay(self, entry: DnsEntry) -> float:
        """1, 1, 2, 4, 4, ... refreshes after 0, 1, 2, 3, 4, ... failures in a row."""
        doublings = min(max(entry.failing - 1, 0), 16)  # capped: no huge power after days down
        return self.refresh * min(1 << doublings, MAX_BACKOFF)

    async def close(self) -> None:
        """Stop every resolution (each task is cancelled and awaited). The sets stay readable."""
        self._closed = True
        tasks = list(self._tasks.values())
        self._tasks.clear()
        await cancel_and_wait(tasks)
