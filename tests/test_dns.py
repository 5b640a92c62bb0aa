"""DNS endpoints: the watcher's real resolver against a real DNS server on 127.0.0.1 whose
answers each test changes (tests/dns_server.py)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable

import pytest

import proxy.dns
from proxy.config import Address
from proxy.dns import DnsWatcher, is_name
from proxy.tasks import cancel_and_wait
from tests.dns_server import DnsServer, Mode

pytestmark = pytest.mark.timeout(5)

REFRESH = 0.05  # seconds; the default is 5
TIMEOUT = 0.3  # seconds a resolution may take against a silent server
APP = Address("app.test", 8080)


@pytest.fixture
async def server() -> AsyncIterator[DnsServer]:
    server = await DnsServer().start()
    yield server
    server.stop()


class Changes:
    """An on_change that queues what it was called with, for the test to await."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[Address, tuple[Address, ...]]] = asyncio.Queue()

    def __call__(self, endpoint: Address, addresses: tuple[Address, ...]) -> None:
        self.queue.put_nowait((endpoint, addresses))

    async def next(self) -> tuple[Address, ...]:
        async with asyncio.timeout(2):
            endpoint, addresses = await self.queue.get()
        assert endpoint == APP
        return addresses

    async def until(self, expected: tuple[Address, ...]) -> None:
        """The next calls, up to one with `expected`. A and AAAA are two queries, so one
        resolution may see one family before a change and the other after it: a set in between
        may come first, as with any DNS server."""
        seen = []
        while not seen or seen[-1] != expected:
            seen.append(await self.next())
        assert len(seen) <= 2, seen


@pytest.fixture
def changes() -> Changes:
    return Changes()


@pytest.fixture
async def watcher(server: DnsServer, changes: Changes) -> AsyncIterator[DnsWatcher]:
    watcher = DnsWatcher(changes, refresh=REFRESH, timeout=TIMEOUT, servers=[server.address])
    yield watcher
    await watcher.close()


def at(*ips: str, port: int = 8080) -> tuple[Address, ...]:
    return tuple(Address(ip, port) for ip in ips)


async def wait_until(condition: Callable[[], bool], limit: float = 3.0) -> None:
    """Counters change on the watcher's own schedule; poll them with a deadline."""
    async with asyncio.timeout(limit):
        while not condition():  # noqa: ASYNC110 - plain counters, no event to wait on
            await asyncio.sleep(0.01)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("app.test", True),
        ("localhost", True),
        ("a-1.example.com", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("::1", False),
        ("[::1]", False),
        ("2001:db8::7", False),
        ("fe80::1%eth0", False),
    ],
)
def test_is_name(host: str, expected: bool) -> None:
    assert is_name(host) is expected


async def test_resolves_every_a_and_aaaa_record(
    server: DnsServer, watcher: DnsWatcher, changes: Changes
) -> None:
    server.set("app.test", "::1", "127.0.0.3", "127.0.0.2")
    await watcher.watch([APP])
    expected = at("127.0.0.2", "127.0.0.3", "::1")  # IPv4 first, each family in order
    assert watcher.addresses(APP) == expected
    assert await changes.next() == expected
    entry = watcher.entries[APP]
    assert (entry.resolutions, entry.failures, entry.last_error) == (1, 0, "")
    assert {("app.test", "A"), ("app.test", "AAAA")} <= set(server.queries)


async def test_a_name_with_one_family_only(server: DnsServer, watcher: DnsWatcher) -> None:
    server.set("app.test", "::1")
    await watcher.watch([APP])
    assert watcher.addresses(APP) == at("::1")


async def test_reresolution_adds_and_removes_records(
    server: DnsServer, watcher: DnsWatcher, changes: Changes
) -> None:
    server.set("app.test", "127.0.0.2")
    await watcher.watch([APP])
    assert await changes.next() == at("127.0.0.2")

    server.set("app.test", "127.0.0.2", "127.0.0.3", "::1")
    await changes.until(at("127.0.0.2", "127.0.0.3", "::1"))

    server.set("app.test", "127.0.0.3")
    await changes.until(at("127.0.0.3"))
    assert watcher.addresses(APP) == at("127.0.0.3")

    # Unchanged answers call nobody.
    entry = watcher.entries[APP]
    resolutions = entry.resolutions
    await wait_until(lambda: entry.resolutions >= resolutions + 3)
    assert changes.queue.empty()


async def test_every_refresh_asks_the_server_whatever_the_ttl(
    server: DnsServer, watcher: DnsWatcher, changes: Changes
) -> None:
    server.ttl = 3600  # an hour: a caching resolver would not see the change in this test
    server.set("app.test", "127.0.0.2")
    await watcher.watch([APP])
    assert await changes.next() == at("127.0.0.2")
    server.set("app.test", "127.0.0.3")
    await changes.until(at("127.0.0.3"))


async def test_each_name_keeps_its_own_port(server: DnsServer, changes: Changes) -> None:
    server.set("app.test", "127.0.0.2")
    server.set("api.test", "127.0.0.4")
    watcher = DnsWatcher(changes, refresh=REFRESH, servers=[server.address])
    api = Address("api.test", 9000)
    try:
        await watcher.watch([APP, api, Address("app.test", 8443)])
        assert watcher.addresses(APP) == at("127.0.0.2")
        assert watcher.addresses(api) == at("127.0.0.4", port=9000)
        assert watcher.addresses(Address("app.test", 8443)) == at("127.0.0.2", port=8443)
    finally:
        await watcher.close()


@pytest.mark.parametrize(
    ("mode", "qtype", "error"),
    [
        ("servfail", None, "app.test. IN A: Server Do53:127.0.0.1@{port} answered SERVFAIL"),
        ("nxdomain", None, "The DNS query name does not exist: app.test."),
        ("silent", None, "no answer within 0.3 s"),
        # Half an answer is a failure too.
        ("servfail", "AAAA", "app.test. IN AAAA: Server Do53:127.0.0.1@{port} answered SERVFAIL"),
    ],
)
async def test_a_failing_server_keeps_the_last_set(
    server: DnsServer,
    watcher: DnsWatcher,
    changes: Changes,
    caplog: pytest.LogCaptureFixture,
    mode: Mode,
    qtype: str | None,
    error: str,
) -> None:
    server.set("app.test", "127.0.0.2", "::1")
    await watcher.watch([APP])
    assert await changes.next() == at("127.0.0.2", "::1")
    entry = watcher.entries[APP]

    caplog.set_level(logging.INFO, "pointsman.dns")
    server.behave(mode, qtype)
    await wait_until(lambda: entry.failures >= 3)
    assert watcher.addresses(APP) == at("127.0.0.2", "::1")
    assert entry.failing == entry.failures
    assert error.format(port=server.port) in entry.last_error
    assert changes.queue.empty()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"dns app.test:8080: {entry.last_error}; keeping its last 2 addresses"]

    # Recovery: the new set arrives, the streak ends, the count stays.
    server.set("app.test", "127.0.0.5")
    server.behave("answer")
    await changes.until(at("127.0.0.5"))
    assert entry.failing == 0
    assert entry.failures >= 3
    assert any("resolves again after" in r.getMessage() for r in caplog.records)


async def test_an_empty_answer_keeps_the_last_set(
    server: DnsServer, watcher: DnsWatcher, changes: Changes
) -> None:
    server.set("app.test", "127.0.0.2")
    await watcher.watch([APP])
    assert await changes.next() == at("127.0.0.2")
    server.set("app.test")  # the name exists, with no A or AAAA record
    entry = watcher.entries[APP]
    await wait_until(lambda: entry.failures >= 2)
    assert watcher.addresses(APP) == at("127.0.0.2")
    assert entry.last_error == "no A or AAAA records"
    assert changes.queue.empty()
    # As in a deploy that empties the name for a moment: the new records are seen at once
    # (c-ares would answer "no records" from its cache for an hour).
    server.set("app.test", "127.0.0.3")
    await changes.until(at("127.0.0.3"))


async def test_a_stopped_server_counts_failures_until_it_is_back(
    server: DnsServer, watcher: DnsWatcher, changes: Changes
) -> None:
    server.set("app.test", "127.0.0.2")
    await watcher.watch([APP])
    assert await changes.next() == at("127.0.0.2")
    server.stop()  # queries now meet a closed port
    entry = watcher.entries[APP]
    await wait_until(lambda: entry.failures >= 2)
    assert watcher.addresses(APP) == at("127.0.0.2")
    assert entry.last_error
    await server.start(port=server.port)
    server.set("app.test", "127.0.0.4")
    await changes.until(at("127.0.0.4"))
    assert entry.failing == 0


async def test_a_name_that_never_resolved_starts_empty_and_fills_later(
    server: DnsServer, watcher: DnsWatcher, changes: Changes
) -> None:
    await watcher.watch([APP])  # returns after the first (failed) resolution
    entry = watcher.entries[APP]
    assert (watcher.addresses(APP), entry.failures, entry.resolutions) == ((), 1, 0)
    assert changes.queue.empty()
    server.set("app.test", "127.0.0.2")
    await changes.until(at("127.0.0.2"))


async def test_failures_back_off_and_recover(
    server: DnsServer, watcher: DnsWatcher, changes: Changes
) -> None:
    server.set("app.test", "127.0.0.2")
    await watcher.watch([APP])
    server.behave("servfail")
    entry = watcher.entries[APP]
    await wait_until(lambda: entry.failures >= 4)
    # Between the 3rd and 4th failures in a row the wait is MAX_BACKOFF refreshes.
    started = time.monotonic()
    failures = entry.failures
    await wait_until(lambda: entry.failures > failures)
    assert time.monotonic() - started >= 0.8 * proxy.dns.MAX_BACKOFF * REFRESH
    server.behave("answer")
    await wait_until(lambda: entry.failing == 0)


async def test_more_addresses_than_the_limit_keeps_the_lowest(
    server: DnsServer,
    watcher: DnsWatcher,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(proxy.dns, "MAX_ADDRESSES", 3)
    server.set("app.test", "127.0.0.9", "::1", "127.0.0.7", "127.0.0.8", "127.0.0.6")
    await watcher.watch([APP])
    assert watcher.addresses(APP) == at("127.0.0.6", "127.0.0.7", "127.0.0.8")
    assert "dns app.test:8080: 2 addresses over 3 left out" in caplog.messages


async def test_watch_replaces_the_watched_set(
    server: DnsServer, watcher: DnsWatcher, changes: Changes
) -> None:
    api = Address("api.test", 9000)
    server.set("app.test", "127.0.0.2")
    server.set("api.test", "127.0.0.4")
    await watcher.watch([APP, api])
    await watcher.watch([api])
    assert list(watcher.entries) == [api]
    await server.wait_queries(4)  # past any query of app.test sent before it was dropped
    asked = len(server.queries)
    await server.wait_queries(10)  # five more resolutions of api.test...
    assert {name for name, _ in server.queries[asked:]} == {"api.test"}  # ...and none of app.test
    with pytest.raises(KeyError):
        watcher.addresses(APP)


@pytest.mark.parametrize(
    ("servers", "problem"),
    [
        ([], "no name servers"),
        (["ns.example:53"], "expected an IP address"),
        (["127.0.0.1:0"], "expected a port in 1..65535"),
    ],
)
def test_bad_name_servers_are_refused(servers: list[str], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        DnsWatcher(Changes(), servers=servers)


def test_name_servers_with_and_without_ports() -> None:
    resolver = proxy.dns.make_resolver(["127.0.0.1:5353", "[::1]:5354", "127.0.0.53", "::2"])
    assert [(ns.address, ns.port) for ns in resolver.nameservers] == [
        ("127.0.0.1", 5353),
        ("::1", 5354),
        ("127.0.0.53", 53),
        ("::2", 53),
    ]


async def test_an_ip_address_is_not_watched(watcher: DnsWatcher) -> None:
    with pytest.raises(ValueError, match="not a name"):
        await watcher.watch([Address("127.0.0.1", 8080)])
    assert not watcher.entries


async def test_close_cancels_every_resolution(server: DnsServer, changes: Changes) -> None:
    server.set("app.test", "127.0.0.2")
    watcher = DnsWatcher(changes, refresh=REFRESH, timeout=TIMEOUT, servers=[server.address])
    await watcher.watch([APP, Address("api.test", 9000)])
    tasks = [task for task in asyncio.all_tasks() if task.get_name().startswith("dns ")]
    assert len(tasks) == 2
    server.behave("silent")  # so the next resolutions hang until close cancels them
    await server.wait_queries(2)
    started = time.monotonic()
    await watcher.close()
    assert time.monotonic() - started < TIMEOUT  # cancelled, not waited out
    assert all(task.done() for task in tasks)
    assert not [task for task in asyncio.all_tasks() if task.get_name().startswith("dns ")]
    seen = len(server.queries)
    await asyncio.sleep(5 * REFRESH)  # a stopped watcher asks nothing more
    assert len(server.queries) == seen
    assert watcher.addresses(APP) == at("127.0.0.2")
    with pytest.raises(RuntimeError, match="closed"):
        await watcher.watch([APP])


async def test_cancelled_watch_leaves_the_watcher_usable(
    server: DnsServer, watcher: DnsWatcher
) -> None:
    server.behave("silent")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(TIMEOUT / 3):
            await watcher.watch([APP])
    server.set("app.test", "127.0.0.2")
    server.behave("answer")
    await wait_until(lambda: watcher.addresses(APP) == at("127.0.0.2"))


async def test_the_loop_runs_while_a_resolution_waits(
    server: DnsServer, watcher: DnsWatcher
) -> None:
    server.behave("silent")
    ticks: list[float] = []

    async def tick() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.005)

    ticker = asyncio.get_running_loop().create_task(tick())
    started = time.monotonic()
    try:
        await watcher.watch([APP])
    finally:
        await cancel_and_wait([ticker])
    assert time.monotonic() - started >= TIMEOUT * 0.9  # the resolution did wait...
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert len(ticks) >= 20  # ...while the loop went on running other work
    assert max(gaps) < 0.1
    assert watcher.entries[APP].last_error == f"no answer within {TIMEOUT:g} s"
