"""Mirroring end to end on real sockets: what reaches a shadow, what never reaches the client,
drops and their reasons, comparison, noise cancellation and diff samples."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import time
from collections.abc import Callable

import aiohttp
import pytest
from aiohttp import web

import proxy.shadow
from proxy.server import ProxyServer
from proxy.shadow import Shadow
from proxy.shadow_records import sample_bucket
from tests.conftest import BackendFactory, Handler, ProxyFactory, config_for, free_port

WAIT_LIMIT = 10.0  # seconds any awaited condition may take before the test fails


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Await a condition of the proxy's state (mirrors finish off the request path, so there
    is no response to await); fails the test after WAIT_LIMIT."""
    deadline = time.monotonic() + WAIT_LIMIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def shadow_yaml(pool: str = "dark", **settings: object) -> str:
    lines = [f"      - pool: {pool}"]
    compare = settings.pop("compare", None)
    for key, value in settings.items():
        lines.append(f"        {key}: {json.dumps(value)}")
    if compare is not None:
        lines.append(f"        compare: {json.dumps(compare)}")
    return "    shadows:\n" + "\n".join(lines)


async def start(
    proxy_factory: ProxyFactory,
    primary: str,
    dark: str,
    baseline: str | None = None,
    extra: str = "",
    **settings: object,
) -> tuple[ProxyServer, Shadow]:
    pools = {"blue": [primary], "dark": [dark]}
    if baseline is not None:
        pools["twin"] = [baseline]
        settings["baseline"] = "twin"
    config = config_for(pools, extra=extra, route_extra=shadow_yaml(**settings))
    server = await proxy_factory(config)
    shadow = server.shadows.get("shop", "dark")
    assert shadow is not None
    return server, shadow


async def get(port: int, path: str = "/", **kwargs: object) -> tuple[int, bytes, float]:
    began = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}{path}", **kwargs) as resp:  # type: ignore[arg-type]
            body = await resp.read()
            return resp.status, body, time.perf_counter() - began


def held_until(release: asyncio.Event, text: str) -> Handler:
    """A shadow handler that answers `text` only once `release` is set."""

    async def held(request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.Response(text=text)

    return held


def json_handler(doc: Callable[[web.Request], object]) -> Callable[[web.Request], object]:
    async def handle(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.json_response(doc(request))

    return handle


async def test_a_mirrored_copy_reaches_the_shadow_marked_and_with_the_original_host(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    blue = await backend_factory("blue")
    dark = await backend_factory("dark")
    server, shadow = await start(proxy_factory, blue.address, dark.address)
    status, body, _ = await get(server.port, "/items?x=1", headers={"Host": "shop.example"})
    assert (status, body) == (200, b"blue GET /items?x=1 0")
    await wait_until(lambda: shadow.stats.compared == 1, "the comparison")
    assert len(dark.seen) == 1
    copy = dark.seen[0]
    assert copy.headers["X-Pointsman-Shadow"] == "1"
    assert copy.headers["Host"] == "shop.example"
    assert copy.path_qs == "/items?x=1"
    assert copy.headers["X-Request-Id"] == blue.seen[0].headers["X-Request-Id"]
    assert "X-Pointsman-Shadow" not in blue.seen[0].headers
    # The two versions answer differently: one mismatch on the body, nothing else.
    assert (shadow.stats.mirrored, shadow.stats.mismatched) == (1, 1)
    assert shadow.stats.parts == {"status": 0, "header": 1, "body": 1}


@pytest.mark.parametrize("kind", ["slow", "failing", "refusing", "cutting"])
async def test_a_bad_shadow_never_changes_the_primary(
    kind: str, backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    release = asyncio.Event()
    slow = held_until(release, "late")  # answers only after the test is over

    async def failing(request: web.Request) -> web.StreamResponse:
        return web.Response(status=500, text="boom")

    async def cutting(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "100"})
        await response.prepare(request)
        await response.write(b"partial")
        assert request.transport is not None
        request.transport.close()
        return response

    blue = await backend_factory("blue")
    handlers = {"slow": slow, "failing": failing, "cutting": cutting}
    if kind == "refusing":
        dark_address = f"127.0.0.1:{free_port()}"
    else:
        dark_address = (await backend_factory("dark", handlers[kind])).address
    server, shadow = await start(proxy_factory, blue.address, dark_address, timeout="5s")
    try:
        results = [await get(server.port, f"/r{i}") for i in range(10)]
    finally:
        release.set()
    for i, (status, body, took) in enumerate(results):
        assert (status, body) == (200, f"blue GET /r{i} 0".encode())
        # The shadow holds each copy for 5 s (slow) or fails it: the client never waits on it.
        assert took < 2.5, f"request {i} took {took:.2f}s"
    if kind == "slow":
        assert shadow.in_flight == 10 and shadow.stats.compared == 0
    elif kind == "failing":
        await wait_until(lambda: shadow.stats.compared == 10, "10 comparisons")
        assert shadow.stats.parts["status"] == 10
    else:
        reason = "connect_error" if kind == "refusing" else "upstream_error"
        await wait_until(lambda: shadow.stats.dropped[reason] == 10, f"10 {reason} drops")
        assert shadow.in_flight == 0


async def test_mirrors_that_would_hold_more_than_the_memory_limit_are_dropped(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    big = b"x" * 100_000

    async def large(request: web.Request) -> web.StreamResponse:
        return web.Response(body=big)

    blue = await backend_factory("blue", large)
    dark = await backend_factory("dark", large)
    # The primary's answer and the shadow's, 100 kB each, do not fit in 150 kB together.
    server, shadow = await start(
        proxy_factory, blue.address, dark.address, extra="limits: {compare_memory_bytes: 150000}"
    )
    assert server.shadows.memory.limit == 150_000
    for i in range(5):
        status, body, _ = await get(server.port, f"/big{i}")
        assert (status, body) == (200, big)  # the client gets every byte regardless
    await wait_until(lambda: shadow.stats.dropped["memory"] == 5, "5 memory drops")
    assert shadow.stats.compared == 0
    assert server.shadows.memory.held == 0 and shadow.in_flight == 0  # all of it given back
    # With room for them, the same mirrors are compared.
    server.shadows.memory.limit = 1_000_000
    status, _, _ = await get(server.port, "/big5")
    assert status == 200
    await wait_until(lambda: shadow.stats.compared == 1, "the comparison")
    assert server.shadows.memory.held == 0


async def test_no_mirror_starts_while_the_memory_limit_is_reached(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    blue = await backend_factory("blue")
    dark = await backend_factory("dark")
    server, shadow = await start(proxy_factory, blue.address, dark.address)
    server.shadows.memory.held = server.shadows.memory.limit  # as if other mirrors held it all
    for i in range(3):
        status, body, _ = await get(server.port, f"/r{i}")
        assert (status, body) == (200, f"blue GET /r{i} 0".encode())
    assert shadow.stats.dropped["memory"] == 3
    assert shadow.stats.mirrored == 0 and dark.seen == []


async def test_a_shadow_past_its_timeout_is_dropped_and_counted(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(3)
        return web.Response(text="late")

    blue = await backend_factory("blue")
    dark = await backend_factory("dark", slow)
    server, shadow = await start(proxy_factory, blue.address, dark.address, timeout="100ms")
    status, _, _ = await get(server.port)
    assert status == 200
    await wait_until(lambda: shadow.stats.dropped["timeout"] == 1, "the timeout drop")
    assert shadow.in_flight == 0 and shadow.stats.compared == 0


async def test_a_shorter_timeout_applies_to_mirrors_sent_after_it_while_older_ones_wait(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    release = asyncio.Event()
    blue = await backend_factory("blue")
    dark = await backend_factory("dark", held_until(release, "late"))
    server, shadow = await start(proxy_factory, blue.address, dark.address, timeout="5s")
    try:
        assert (await get(server.port))[0] == 200
        await wait_until(lambda: shadow.in_flight == 1, "the first mirror in flight")
        shadow.configure(dataclasses.replace(shadow.config, timeout=0.1))
        began = time.monotonic()
        assert (await get(server.port))[0] == 200
        await wait_until(
            lambda: shadow.stats.dropped["timeout"] == 1, "the second mirror's timeout"
        )
        # Failed at its own deadline (plus a sweep), not behind the first one's 5 s.
        assert time.monotonic() - began < 2.5
        assert shadow.in_flight == 1
    finally:
        release.set()  # a failed assertion must not leave the backend holding a request
    await wait_until(lambda: shadow.stats.compared == 1, "the first mirror compared")
    assert shadow.in_flight == 0 and not any(shadow.due.values())  # none waits for a sweep


async def test_when_in_flight_is_full_mirrors_are_dropped_not_queued(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    release = asyncio.Event()
    blue = await backend_factory("blue")
    dark = await backend_factory("dark", held_until(release, "dark"))
    server, shadow = await start(proxy_factory, blue.address, dark.address, max_in_flight=2)
    try:
        for i in range(5):
            assert (await get(server.port, f"/{i}"))[0] == 200
        assert shadow.in_flight == 2
        assert shadow.stats.dropped["full"] == 3
        assert shadow.stats.mirrored == 2
    finally:
        release.set()
    await wait_until(lambda: shadow.in_flight == 0, "the held mirrors to finish")


async def test_only_listed_methods_are_mirrored(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    blue = await backend_factory("blue")
    dark = await backend_factory("dark")
    server, shadow = await start(proxy_factory, blue.address, dark.address)  # GET, HEAD
    url = f"http://127.0.0.1:{server.port}/x"
    async with aiohttp.ClientSession() as session:
        for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "GET"):
            async with session.request(method, url, data=b"abc") as resp:
                assert resp.status == 200
                await resp.read()
    await wait_until(lambda: shadow.stats.compared == 2, "two comparisons")
    assert sorted(r.method for r in dark.seen) == ["GET", "HEAD"]
    assert len(blue.seen) == 7


@pytest.mark.parametrize("chunked", [False, True])
async def test_request_bodies_are_teed_up_to_max_body_and_skipped_beyond(
    chunked: bool, backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    bodies: list[bytes] = []

    async def record(request: web.Request) -> web.StreamResponse:
        bodies.append(await request.read())
        return web.Response(text="ok")

    blue = await backend_factory("blue", record)
    dark = await backend_factory("dark", record)
    server, shadow = await start(
        proxy_factory, blue.address, dark.address, methods=["POST"],
        compare={"max_body": "1KiB"},
    )  # fmt: skip
    url = f"http://127.0.0.1:{server.port}/upload"

    async def pieces(data: bytes) -> object:
        for i in range(0, len(data), 300):
            yield data[i : i + 300]

    small, large = b"s" * 1000, b"L" * 5000
    async with aiohttp.ClientSession() as session:
        for data in (small, large):
            payload = pieces(data) if chunked else data
            async with session.post(url, data=payload) as resp:
                assert resp.status == 200
                assert await resp.read() == b"ok"
    await wait_until(lambda: shadow.stats.compared == 1, "the small body's comparison")
    await wait_until(lambda: shadow.stats.dropped["body_too_large"] == 1, "the large body's drop")
    # The primary got both bodies whole; the shadow only the one within the limit.
    assert sorted(bodies) == sorted([small, small, large])
    assert len(dark.seen) == 1
    assert shadow.stats.matched == 1


async def test_sampling_is_stable_by_request_id(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    blue = await backend_factory("blue")
    dark = await backend_factory("dark")
    server, shadow = await start(proxy_factory, blue.address, dark.address, percent=30)
    ids = [f"req-{i}" for i in range(60)]
    for request_id in ids + ids:  # every id twice
        await get(server.port, headers={"X-Request-Id": request_id})
    expected = [i for i in ids if sample_bucket(i.encode()) < 3000]
    assert 5 < len(expected) < 40  # the ids really straddle the threshold
    await wait_until(lambda: shadow.stats.compared == 2 * len(expected), "the sampled ones")
    seen = sorted(r.headers["X-Request-Id"] for r in dark.seen)
    assert seen == sorted(expected + expected)


async def test_json_differences_are_counted_by_path_and_sampled_redacted(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    def doc(request: web.Request, price: int) -> object:
        return {"items": [{"id": 1, "price": 5}, {"id": 2, "price": price}], "at": time.time()}

    blue = await backend_factory("blue", json_handler(lambda r: doc(r, 10)))
    dark = await backend_factory("dark", json_handler(lambda r: doc(r, 11)))
    server, shadow = await start(
        proxy_factory, blue.address, dark.address,
        compare={"ignore_json": ["$.at"], "samples": 3},
    )  # fmt: skip
    for i in range(5):
        await get(
            server.port, f"/cart/{i}",
            headers={"Authorization": "Bearer secret", "Cookie": "sid=abc"},
        )  # fmt: skip
    await wait_until(lambda: shadow.stats.compared == 5, "five comparisons")
    assert shadow.stats.mismatched == 5
    assert shadow.stats.paths == {"$.items[*].price": 5}
    assert shadow.stats.parts["body"] == 5
    samples = list(shadow.samples)
    assert [s.target for s in samples] == ["/cart/2", "/cart/3", "/cart/4"]  # bounded: 3
    sample = samples[-1].to_obj()
    assert sample["differences"] == [
        {"part": "body", "path": "$.items[1].price", "primary": "10", "shadow": "11",
         "noise": False}
    ]  # fmt: skip
    headers = dict(sample["request_headers"])  # type: ignore[arg-type]
    assert headers["Authorization"] == "[redacted]"
    assert headers["Cookie"] == "[redacted]"
    assert "secret" not in json.dumps(sample) and "sid=abc" not in json.dumps(sample)
    assert sample["endpoint"] == dark.address


async def test_a_baseline_cancels_timestamp_noise_but_not_a_real_change(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    rng = random.Random(7)

    def doc(price: int) -> Callable[[web.Request], object]:
        return lambda request: {"price": price, "generated_at": rng.random()}

    blue = await backend_factory("blue", json_handler(doc(10)))
    twin = await backend_factory("twin", json_handler(doc(10)))
    dark = await backend_factory("dark", json_handler(doc(12)))
    server, shadow = await start(proxy_factory, blue.address, dark.address, twin.address)
    for i in range(20):
        await get(server.port, f"/p/{i}")
    await wait_until(lambda: shadow.stats.compared == 20, "twenty comparisons")
    report = {r.path: r for r in shadow.report()}
    assert report["$.generated_at"].noise_rate == 1.0
    assert not report["$.generated_at"].counts_as_mismatch
    assert report["$.price"].counts_as_mismatch
    assert report["$.price"].noise_rate == 0.0
    assert shadow.stats.mismatched == 20
    assert shadow.stats.paths == {"$.price": 20}  # the timestamp is never counted
    noise_flags = {d[1]: d[4] for d in shadow.samples[-1].differences}
    assert noise_flags == {"$.generated_at": True, "$.price": False}


async def test_identical_versions_match(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    same = json_handler(lambda request: {"ok": True, "path": request.path})
    blue = await backend_factory("blue", same)
    dark = await backend_factory("dark", same)
    server, shadow = await start(proxy_factory, blue.address, dark.address)
    for i in range(10):
        await get(server.port, f"/same/{i}")
    await wait_until(lambda: shadow.stats.compared == 10, "ten comparisons")
    assert (shadow.stats.matched, shadow.stats.mismatched) == (10, 0)
    assert not shadow.samples
    assert shadow.in_flight == 0 and not shadow.live and not any(shadow.due.values())


async def test_a_shadow_that_differs_in_a_header_only_is_counted_every_time(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    # The same body, one extra header: after the first, comparisons come from the memo.
    async def version(request: web.Request) -> web.StreamResponse:
        response = web.json_response({"ok": True})
        if request.headers.get("X-Pointsman-Shadow") == "1":
            response.headers["X-Version"] = "2"
        return response

    blue = await backend_factory("blue", version)
    dark = await backend_factory("dark", version)
    server, shadow = await start(proxy_factory, blue.address, dark.address)
    for i in range(6):
        status, body, _ = await get(server.port, f"/v/{i}")
        assert (status, json.loads(body)) == (200, {"ok": True})
    await wait_until(lambda: shadow.stats.compared == 6, "six comparisons")
    assert (shadow.stats.matched, shadow.stats.mismatched) == (0, 6)
    assert shadow.stats.parts == {"status": 0, "header": 6, "body": 0}
    assert shadow.stats.paths == {"header:x-version": 6}
    assert [d[:4] for d in shadow.samples[-1].differences] == [
        ("header", "header:x-version", "(absent)", "2")
    ]
    assert shadow.samples[-1].target == "/v/5"


@pytest.mark.parametrize("differs_in", ["header", "body"])
async def test_a_comparison_that_raises_frees_its_slot_and_is_logged(
    differs_in: str,
    backend_factory: BackendFactory,
    proxy_factory: ProxyFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Both ways to a comparison (a header-only difference, a body difference) end in the same
    # place when the comparison itself fails: logged, nothing counted, the slot given back.
    def broken(*args: object) -> object:
        raise RuntimeError("comparison bug")

    monkeypatch.setattr(proxy.shadow, "compare", broken)

    async def answer(request: web.Request) -> web.StreamResponse:
        shadow_copy = request.headers.get("X-Pointsman-Shadow") == "1"
        if differs_in == "header":
            headers = {"X-Version": "2"} if shadow_copy else {}
            return web.json_response({"n": 1}, headers=headers)
        return web.json_response({"n": 2 if shadow_copy else 1})

    blue = await backend_factory("blue", answer)
    dark = await backend_factory("dark", answer)
    server, shadow = await start(proxy_factory, blue.address, dark.address)
    for _ in range(3):
        status, body, _ = await get(server.port)
        assert (status, json.loads(body)) == (200, {"n": 1})
    await wait_until(
        lambda: shadow.stats.mirrored == 3 and shadow.in_flight == 0, "three mirrors ended"
    )
    assert shadow.stats.compared == 0 and not shadow.samples
    assert caplog.text.count("comparison failed (route shop, shadow dark)") == 3


async def test_large_bodies_are_compared_off_the_event_loop(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    big = {"rows": [{"n": i, "text": "x" * 50} for i in range(4000)]}  # ~250 KB of JSON
    changed = {"rows": [*big["rows"][:-1], {"n": -1, "text": "x" * 50}]}
    blue = await backend_factory("blue", json_handler(lambda r: big))
    dark = await backend_factory("dark", json_handler(lambda r: changed))
    server, shadow = await start(proxy_factory, blue.address, dark.address)
    status, body, _ = await get(server.port)
    assert status == 200 and json.loads(body) == big
    await wait_until(lambda: shadow.stats.compared == 1, "the comparison")
    assert shadow.stats.paths == {"$.rows[*].n": 1}
    assert shadow.in_flight == 0


async def test_shadow_metrics_are_exported(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    from prometheus_client import generate_latest

    blue = await backend_factory("blue")
    dark = await backend_factory("dark")
    server, shadow = await start(proxy_factory, blue.address, dark.address)
    await get(server.port)
    await wait_until(lambda: shadow.stats.compared == 1, "the comparison")
    text = generate_latest(server.metrics.registry()).decode()
    assert 'pointsman_shadow_mirrored_total{route="shop",shadow="dark"} 1.0' in text
    assert 'pointsman_shadow_mismatched_total{route="shop",shadow="dark"} 1.0' in text
    assert 'pointsman_shadow_dropped_total{reason="full",route="shop",shadow="dark"} 0.0' in text
    assert (
        'pointsman_shadow_mismatch_parts_total{part="body",route="shop",shadow="dark"} 1.0' in text
    )
    # Negative bounds: prometheus-client leaves out _sum and _count; +Inf carries the count.
    bucket = 'pointsman_shadow_latency_delta_seconds_bucket{le="+Inf",route="shop",shadow="dark"}'
    assert f"{bucket} 1.0" in text


async def test_a_removed_shadow_stops_and_one_added_again_starts_afresh(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    from proxy.router import RoutingTable

    blue = await backend_factory("blue")
    dark = await backend_factory("dark")
    server, shadow = await start(proxy_factory, blue.address, dark.address)
    await get(server.port)
    await wait_until(lambda: shadow.stats.compared == 1, "the first comparison")
    server.set_table(RoutingTable(server.config.routes, shadows={"shop": ()}))
    assert server.shadows.get("shop", "dark") is None
    assert (await get(server.port))[0] == 200
    assert len(dark.seen) == 1  # no copy while the shadow is gone
    server.set_table(RoutingTable(server.config.routes))  # the config's shadow again
    again = server.shadows.get("shop", "dark")
    assert again is not None and again is not shadow
    assert (again.stats.mirrored, len(again.samples)) == (0, 0)
    await get(server.port)
    await wait_until(lambda: again.stats.compared == 1, "the new shadow's comparison")
    assert len(dark.seen) == 2


async def test_a_refusing_shadow_is_paced_not_tried_on_every_request(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    blue = await backend_factory("blue")
    refusing = f"127.0.0.1:{free_port()}"
    # A refused connect counts as an answer at the timeout (60 s), so new mirrors are then
    # admitted at max_in_flight / 60 s (about 4 a second) after a first burst of 16.
    server, shadow = await start(proxy_factory, blue.address, refusing, timeout="60s")
    for i in range(60):
        assert (await get(server.port, f"/{i}"))[0] == 200
    await wait_until(lambda: shadow.in_flight == 0, "the attempts to end")
    tried = shadow.stats.dropped["connect_error"]
    assert tried + shadow.stats.dropped["full"] == 60
    assert 1 <= tried <= 30, tried  # the burst, plus what the pace allowed meanwhile


async def test_a_table_published_after_shutdown_starts_no_mirrors_and_no_task(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    from proxy.router import RoutingTable

    blue = await backend_factory("blue")
    dark = await backend_factory("dark")
    server, _ = await start(proxy_factory, blue.address, dark.address)
    tasks_before = asyncio.all_tasks()
    await server.shadows.close()
    server.set_table(RoutingTable(server.config.routes))  # e.g. an API change during the drain
    assert all(not route.mirrors for route in server.table.routes.values())
    assert asyncio.all_tasks() <= tasks_before  # no new sweeper
