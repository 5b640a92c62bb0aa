"""The shadow part of the control API as an operator and a deploy script see it: a real
`control.service.Service` on 127.0.0.1 with three real upstreams, driven over HTTP.

The route `shop` has pools blue (live), dark and twin (both weight 0). All three answer JSON
about an item: blue and twin agree except for a random `served_at`, dark also asks another
`price`. The config mirrors every GET/HEAD to dark, with twin as its baseline (noise
cancellation), unless a test asks for dark alone.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from control.service import Service
from proxy.config import Config, StateConfig
from proxy.shadow import Shadow
from tests.conftest import Backend, BackendFactory, config_for
from tests.test_api import (
    LIMIT,
    ROUTE,
    TOKEN,
    Answer,
    admin_port,
    assert_json_error,
    assert_version,
)
from tests.test_shadow import wait_until

SHADOWS = ROUTE + "/shadows"
# Credentials a client sends through the proxy; they must never show in a diff sample.
SECRET_BEARER = "Bearer sekrit-bearer-7d1f"
SECRET_COOKIE = "session=sekrit-cookie-93b2"
CREDENTIALS = {"Authorization": SECRET_BEARER, "Cookie": SECRET_COOKIE}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def catalog(price: int, discontinued: bool = False) -> Handler:
    """An item service. /static/...: the same document everywhere; /about/...: only the random
    `served_at` differs between any two answers; anything else also has a `price`. With
    `discontinued`, /discontinued/... answers 404 (the other versions 200)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        await request.read()
        path = request.path
        if path.startswith("/static"):
            return web.json_response({"path": path})
        if path.startswith("/discontinued") and discontinued:
            return web.json_response({"path": path, "error": "discontinued"}, status=404)
        doc: dict[str, object] = {"path": path, "served_at": random.random()}
        if not path.startswith("/about"):
            doc["price"] = price
        return web.json_response(doc)

    return handle


def default_settings(pool: str, baseline: str | None = None) -> dict[str, Any]:
    """A shadow's settings as the API shows them when only the pool (and baseline) is given."""
    return {
        "pool": pool,
        "percent": 100.0,
        "methods": ["GET", "HEAD"],
        "timeout": 2.0,
        "max_in_flight": 256,
        "baseline": baseline,
        "compare": {
            "max_body": 1024 * 1024,
            "ignore_headers": ["date"],
            "ignore_json": [],
            "samples": 100,
            "relative_threshold": 0.2,
            "absolute_threshold": 0.03,
        },
    }


@dataclass
class Shop:
    """A Service over blue/dark/twin that can be stopped and started again on the same state."""

    config: Config
    session: aiohttp.ClientSession
    blue: Backend
    dark: Backend
    twin: Backend
    service: Service | None = None
    admin: str = ""  # http://127.0.0.1:<admin port>
    proxy: str = ""  # http://127.0.0.1:<data port>

    @property
    def state_path(self) -> Path:
        return Path(self.config.state.path)

    @property
    def audit_path(self) -> Path:
        return self.state_path.with_name(self.state_path.stem + ".audit.jsonl")

    def audit_lines(self) -> list[dict[str, Any]]:
        if not self.audit_path.exists():
            return []
        return [json.loads(line) for line in self.audit_path.read_text().splitlines()]

    def persisted_shadows(self) -> list[dict[str, Any]]:
        """The route's shadows as written in the state file on disk."""
        state = json.loads(self.state_path.read_text())
        shadows: list[dict[str, Any]] = state["routes"][0]["shadows"]
        return shadows

    async def start(self) -> Shop:
        service = Service(self.config)
        await service.start()
        self.service = service
        self.admin = f"http://127.0.0.1:{admin_port(service)}"
        self.proxy = f"http://127.0.0.1:{service.proxy.port}"
        return self

    async def stop(self) -> None:
        if self.service is not None:
            service, self.service = self.service, None
            await service.stop()

    async def restart(self) -> None:
        """Stop, then a new Service with the same config and state file."""
        await self.session.close()  # no keep-alive connection for the proxy to drain
        await self.stop()
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=LIMIT))
        await self.start()

    def shadow(self, pool: str) -> Shadow:
        """The live Shadow object (to await mirrors finishing: there is no event for it)."""
        assert self.service is not None
        shadow = self.service.proxy.shadows.get("shop", pool)
        assert shadow is not None, pool
        return shadow

    async def call(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        raw: bytes | None = None,
        token: str | None = TOKEN,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        """One control-API request. `body` is sent as JSON; `raw` as is; `token` as Bearer."""
        sent: dict[str, str] = {}
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        data = raw if body is None else json.dumps(body).encode()
        if data is not None:
            sent["Content-Type"] = "application/json"
        sent.update(headers or {})
        async with asyncio.timeout(LIMIT):
            async with self.session.request(
                method, self.admin + path, data=data, headers=sent
            ) as resp:
                return Answer(resp.status, resp.headers, await resp.text())

    async def browse(
        self,
        *targets: str,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        mirrored_to: str = "dark",
    ) -> None:
        """Requests through the proxy, one at a time; after each, wait until the shadow
        `mirrored_to` has compared it, so samples are kept in request order."""
        shadow = self.shadow(mirrored_to)
        for target in targets:
            before = shadow.stats.compared
            async with asyncio.timeout(LIMIT):
                async with self.session.request(
                    method, self.proxy + target, headers=headers
                ) as resp:
                    await resp.read()
                    assert resp.status == 200, (target, resp.status)
            await compared(shadow, before + 1, f"the comparison of {target} on {mirrored_to}")


async def compared(shadow: Shadow, count: int, what: str) -> None:
    """Wait until `shadow` has compared `count` exchanges in all."""
    await wait_until(lambda: shadow.stats.compared == count, what)


StartShop = Callable[..., Awaitable[Shop]]


@pytest.fixture
async def start_shop(
    backend_factory: BackendFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[StartShop]:
    """start_shop(baseline=True) -> a started Shop. baseline=False: dark has no baseline, so
    twin receives no copies until a test makes it a shadow itself."""
    started: list[Shop] = []

    async def make(baseline: bool = True) -> Shop:
        blue = await backend_factory("blue", catalog(10))
        dark = await backend_factory("dark", catalog(12, discontinued=True))
        twin = await backend_factory("twin", catalog(10))
        shadow = "{pool: dark, baseline: twin}" if baseline else "{pool: dark}"
        config = config_for(
            {"blue": [blue.address], "dark": [dark.address], "twin": [twin.address]},
            route_extra=f"    shadows:\n      - {shadow}",
        )
        config = replace(
            config,
            state=StateConfig(path=str(tmp_path / "state.json")),
            timeouts=replace(config.timeouts, grace=1.0),
        )
        monkeypatch.setenv(config.admin.token_env, TOKEN)
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=LIMIT))
        shop = Shop(config, session, blue, dark, twin)
        started.append(shop)
        return await shop.start()

    yield make
    for shop in started:
        await shop.session.close()
        await shop.stop()


def shadow_pools(answer: Answer) -> list[str]:
    assert answer.status == 200, answer.text
    return [view["pool"] for view in answer.body["shadows"]]


# --- reads ---------------------------------------------------------------------------------


async def test_a_shadow_view_has_its_settings_counts_and_paths(start_shop: StartShop) -> None:
    shop = await start_shop()
    answer = await shop.call("GET", SHADOWS, token=None)  # reads are open on loopback
    assert answer.status == 200, answer.text
    assert answer.headers["Content-Type"].startswith("application/json")
    assert_version(answer, 1)
    assert answer.body["route"] == "shop"
    assert shadow_pools(answer) == ["dark"]
    fresh = answer.body["shadows"][0]
    assert fresh["settings"] == default_settings("dark", baseline="twin")
    assert (fresh["mirrored"], fresh["compared"], fresh["mismatch_rate"]) == (0, 0, 0.0)
    assert fresh["paths"] == []

    # Priced items differ (price), /about only in the random served_at (noise: the baseline
    # twin differs there too), /static is the same everywhere.
    await shop.browse("/items/1", "/items/2", "/about", "/static", "/items/3")
    assert len(shop.blue.seen) == 5
    assert len(shop.dark.seen) == len(shop.twin.seen) == 5
    assert all(r.headers.get("X-Pointsman-Shadow") == "1" for r in shop.dark.seen)

    answer = await shop.call("GET", SHADOWS + "/dark", token=None)
    assert answer.status == 200, answer.text
    assert_version(answer, 1)
    view = answer.body
    assert (view["route"], view["pool"], view["version"]) == ("shop", "dark", 1)
    assert view["settings"] == default_settings("dark", baseline="twin")
    assert view["endpoints"] == [shop.dark.address]
    assert view["in_flight"] == 0
    assert view["mirrored"] == 5
    assert view["dropped"] == {
        "full": 0, "memory": 0, "body_too_large": 0, "timeout": 0, "connect_error": 0,
        "upstream_error": 0, "primary_failed": 0,
    }  # fmt: skip
    assert (view["compared"], view["matched"], view["mismatched"], view["noise"]) == (5, 1, 3, 1)
    assert view["mismatch_rate"] == 0.6
    assert view["mismatched_parts"] == {"status": 0, "header": 0, "body": 3}
    assert (view["samples"], view["baseline_samples"]) == (5, 5)
    assert view["diffs_kept"] == 3
    assert view["paths"] == [
        {"path": "$.price", "diff_rate": 0.6, "noise_rate": 0.0, "diffs": 3,
         "noise_diffs": 0, "counts": True},
        {"path": "$.served_at", "diff_rate": 0.8, "noise_rate": 0.8, "diffs": 4,
         "noise_diffs": 4, "counts": False},
    ]  # fmt: skip

    # The list shows the same view.
    listing = await shop.call("GET", SHADOWS)
    assert listing.body["shadows"] == [view]


@pytest.mark.parametrize(
    "path",
    [SHADOWS + "/twin", SHADOWS + "/blue", SHADOWS + "/purple", SHADOWS + "/twin/diffs"],
    ids=["pool-without-shadow", "live-pool", "no-such-pool", "diffs-of-no-shadow"],
)
async def test_reading_a_shadow_that_does_not_exist_is_404_naming_the_shadows(
    start_shop: StartShop, path: str
) -> None:
    shop = await start_shop()
    error = assert_json_error(await shop.call("GET", path), 404)
    pool = path.removeprefix(SHADOWS + "/").removesuffix("/diffs")
    assert f"no shadow '{pool}'" in error["error"], error
    assert error["detail"] == {"shadows": ["dark"]}, error


@pytest.mark.parametrize(
    "path",
    [
        "/v1/routes/nope/shadows",
        "/v1/routes/nope/shadows/dark",
        "/v1/routes/nope/shadows/dark/diffs",
    ],
)
async def test_shadows_of_an_unknown_route_are_404(start_shop: StartShop, path: str) -> None:
    shop = await start_shop()
    error = assert_json_error(await shop.call("GET", path), 404)
    assert "'nope'" in error["error"], error
    assert error["detail"] == {"routes": ["shop"]}, error


async def test_diffs_are_newest_first_limited_and_redacted(start_shop: StartShop) -> None:
    shop = await start_shop()
    await shop.browse(
        "/items/1?x=1", "/about", "/items/2", "/static", "/items/3?q=a%20b", headers=CREDENTIALS
    )
    # The copy itself is faithful: the shadow got the client's credentials...
    assert shop.dark.seen[0].headers["Authorization"] == SECRET_BEARER
    assert shop.dark.seen[0].headers["Cookie"] == SECRET_COOKIE

    answer = await shop.call("GET", SHADOWS + "/dark/diffs", token=None)
    assert answer.status == 200, answer.text
    assert_version(answer, 1)
    # ...but no sample shows them.
    assert "sekrit" not in answer.text
    body = answer.body
    assert (body["route"], body["pool"], body["kept"]) == ("shop", "dark", 3)
    diffs = body["diffs"]
    assert [d["target"] for d in diffs] == ["/items/3?q=a%20b", "/items/2", "/items/1?x=1"]
    assert [d["at"] for d in diffs] == sorted((d["at"] for d in diffs), reverse=True)
    host = shop.proxy.removeprefix("http://")
    for diff in diffs:
        assert diff["method"] == "GET"
        assert (diff["primary_status"], diff["shadow_status"]) == (200, 200)
        assert diff["endpoint"] == shop.dark.address
        assert diff["host"] == host
        assert diff["request_body"] is None and diff["request_body_truncated"] is False
        assert isinstance(diff["request_id"], str) and diff["request_id"]
        headers = {name.lower(): value for name, value in diff["request_headers"]}
        assert headers["authorization"] == "[redacted]"
        assert headers["cookie"] == "[redacted]"
        assert headers["x-pointsman-shadow"] == "1"
        assert headers["x-request-id"] == diff["request_id"]
        by_path = {d["path"]: d for d in diff["differences"]}
        assert set(by_path) == {"$.price", "$.served_at"}, diff["differences"]
        assert by_path["$.price"] == {
            "part": "body", "path": "$.price", "primary": "10", "shadow": "12", "noise": False
        }  # fmt: skip
        served = by_path["$.served_at"]
        assert served["part"] == "body" and served["noise"] is True
        assert served["primary"] != served["shadow"]
        # Both values, as JSON renders them (random.random() on each side).
        assert 0 <= float(served["primary"]) < 1 and 0 <= float(served["shadow"]) < 1

    # The summary is what GET .../shadows/dark answers.
    view = await shop.call("GET", SHADOWS + "/dark")
    assert body["summary"] == view.body
    assert (body["summary"]["mismatched"], body["summary"]["noise"]) == (3, 1)

    for limit, expected in ((1, ["/items/3?q=a%20b"]), (2, ["/items/3?q=a%20b", "/items/2"])):
        answer = await shop.call("GET", f"{SHADOWS}/dark/diffs?limit={limit}")
        assert answer.status == 200, answer.text
        assert [d["target"] for d in answer.body["diffs"]] == expected
        assert answer.body["kept"] == 3
    answer = await shop.call("GET", f"{SHADOWS}/dark/diffs?limit=1000")
    assert len(answer.body["diffs"]) == 3


@pytest.mark.parametrize("limit", ["0", "x", "-1", "", "1.5"])
async def test_a_bad_diffs_limit_is_400(start_shop: StartShop, limit: str) -> None:
    shop = await start_shop()
    error = assert_json_error(await shop.call("GET", f"{SHADOWS}/dark/diffs?limit={limit}"), 400)
    assert "limit" in error["error"], error


# --- writes --------------------------------------------------------------------------------

TWIN_BODY = {
    "percent": 100,
    "methods": ["get"],
    "timeout": "1500ms",
    "max_in_flight": 8,
    "compare": {"ignore_json": ["$.served_at"], "samples": 7},
}
TWIN_SETTINGS = {
    **default_settings("twin"),
    "methods": ["GET"],
    "timeout": 1.5,
    "max_in_flight": 8,
    "compare": {
        **default_settings("twin")["compare"],
        "ignore_json": ["$.served_at"],
        "samples": 7,
    },
}


async def test_put_patch_delete_a_shadow_persist_and_steer_mirroring(
    start_shop: StartShop,
) -> None:
    shop = await start_shop(baseline=False)

    # PUT creates it: version 2, in effect for the next request, on disk.
    answer = await shop.call("PUT", SHADOWS + "/twin", TWIN_BODY)
    assert answer.status == 200, answer.text
    assert_version(answer, 2)
    assert (answer.body["pool"], answer.body["version"]) == ("twin", 2)
    assert answer.body["settings"] == TWIN_SETTINGS
    assert answer.body["endpoints"] == [shop.twin.address]
    assert [s["pool"] for s in shop.persisted_shadows()] == ["dark", "twin"]
    assert shop.persisted_shadows()[1] == TWIN_SETTINGS
    assert shadow_pools(await shop.call("GET", SHADOWS)) == ["dark", "twin"]
    assert (await shop.call("GET", ROUTE)).body["shadows"] == ["dark", "twin"]

    await shop.browse("/items/1", "/items/2", mirrored_to="twin")
    assert len(shop.twin.seen) == 2
    assert all(r.headers.get("X-Pointsman-Shadow") == "1" for r in shop.twin.seen)
    assert "X-Pointsman-Shadow" not in shop.blue.seen[0].headers
    twin = (await shop.call("GET", SHADOWS + "/twin")).body
    # served_at is ignored for twin, so blue and twin agree.
    assert (twin["mirrored"], twin["compared"], twin["matched"]) == (2, 2, 2)

    # The same PUT again: 200, no new version, no audit line.
    answer = await shop.call("PUT", SHADOWS + "/twin", TWIN_BODY)
    assert answer.status == 200, answer.text
    assert_version(answer, 2)
    assert answer.body["settings"] == TWIN_SETTINGS
    assert len(shop.audit_lines()) == 1

    # PATCH changes the percent only.
    answer = await shop.call("PATCH", SHADOWS + "/twin", {"percent": 0})
    assert answer.status == 200, answer.text
    assert_version(answer, 3)
    patched = {**TWIN_SETTINGS, "percent": 0.0}
    assert answer.body["settings"] == patched
    assert shop.persisted_shadows()[1] == patched
    await shop.browse("/items/3", "/items/4", "/items/5")  # dark still gets its copies
    assert len(shop.dark.seen) == 5
    assert len(shop.twin.seen) == 2
    assert (await shop.call("GET", SHADOWS + "/twin")).body["mirrored"] == 2

    # A new process on the same state file has the shadow, with the same settings.
    await shop.restart()
    answer = await shop.call("GET", SHADOWS + "/twin")
    assert answer.status == 200, answer.text
    assert_version(answer, 3)
    assert answer.body["settings"] == patched
    assert shadow_pools(await shop.call("GET", SHADOWS)) == ["dark", "twin"]
    await shop.browse("/items/6")
    assert (len(shop.dark.seen), len(shop.twin.seen)) == (6, 2)

    # DELETE removes it: the route view, version 4, gone on disk and after a restart.
    answer = await shop.call("DELETE", SHADOWS + "/twin")
    assert answer.status == 200, answer.text
    assert_version(answer, 4)
    assert (answer.body["name"], answer.body["version"]) == ("shop", 4)
    assert answer.body["shadows"] == ["dark"]
    assert answer.body["weights"] == {"blue": 100, "dark": 0, "twin": 0}
    assert_json_error(await shop.call("GET", SHADOWS + "/twin"), 404)
    assert [s["pool"] for s in shop.persisted_shadows()] == ["dark"]
    await shop.restart()
    assert_json_error(await shop.call("GET", SHADOWS + "/twin"), 404)
    assert shadow_pools(await shop.call("GET", SHADOWS)) == ["dark"]

    # One audit line per change, with the shadows (pool -> percent) before and after.
    records = shop.audit_lines()
    assert [(r["action"], r["version"], r["route"]) for r in records] == [
        ("shadow", 2, "shop"),
        ("shadow", 3, "shop"),
        ("unshadow", 4, "shop"),
    ]
    assert [(r["before"]["shadows"], r["after"]["shadows"]) for r in records] == [
        ({"dark": 100.0}, {"dark": 100.0, "twin": 100.0}),
        ({"dark": 100.0, "twin": 100.0}, {"dark": 100.0, "twin": 0.0}),
        ({"dark": 100.0, "twin": 0.0}, {"dark": 100.0}),
    ]
    assert all(r["after"]["weights"] == {"blue": 100, "dark": 0, "twin": 0} for r in records)
    assert TOKEN not in shop.audit_path.read_text()


async def test_patch_merges_compare_and_keeps_the_counts(start_shop: StartShop) -> None:
    shop = await start_shop()
    await shop.browse("/items/1")
    answer = await shop.call("PATCH", SHADOWS + "/dark", {"compare": {"samples": 3}})
    assert answer.status == 200, answer.text
    assert_version(answer, 2)
    expected = default_settings("dark", baseline="twin")
    expected["compare"]["samples"] = 3
    assert answer.body["settings"] == expected
    assert answer.body["mirrored"] == 1
    # Same PATCH again: a no-op.
    answer = await shop.call("PATCH", SHADOWS + "/dark", {"compare": {"samples": 3}})
    assert answer.status == 200, answer.text
    assert_version(answer, 2)


async def test_if_match_with_the_current_version_is_accepted(start_shop: StartShop) -> None:
    shop = await start_shop()
    answer = await shop.call("PUT", SHADOWS + "/twin", {}, headers={"If-Match": '"1"'})
    assert answer.status == 200, answer.text
    assert_version(answer, 2)
    assert answer.body["settings"] == default_settings("twin")
    answer = await shop.call("DELETE", SHADOWS + "/twin", headers={"If-Match": "2"})
    assert answer.status == 200, answer.text
    assert_version(answer, 3)


# (id, method, pool in the URL, JSON body, raw body, token, extra headers, status, error text)
BAD_WRITES: list[tuple[str, str, str, object, bytes | None, str | None, dict[str, str], int, str]]
BAD_WRITES = [
    ("put-no-token", "PUT", "twin", {"percent": 5}, None, None, {}, 401, "bearer"),
    ("patch-no-token", "PATCH", "dark", {"percent": 5}, None, None, {}, 401, "bearer"),
    ("delete-no-token", "DELETE", "dark", None, None, None, {}, 401, "bearer"),
    ("put-wrong-token", "PUT", "twin", {}, None, "wrong", {}, 403, "token"),
    ("bad-json", "PUT", "twin", None, b'{"percent": ', TOKEN, {}, 400, "JSON"),
    ("body-not-an-object", "PUT", "twin", [1, 2], None, TOKEN, {}, 400, "object"),
    ("percent-150", "PUT", "twin", {"percent": 150}, None, TOKEN, {}, 400, "percent"),
    ("patch-percent-negative", "PATCH", "dark", {"percent": -1}, None, TOKEN, {}, 400, "percent"),
    ("unknown-key", "PUT", "twin", {"colour": "red"}, None, TOKEN, {}, 400, "colour"),
    (
        "unknown-compare-key", "PUT", "twin", {"compare": {"ignore_body": True}}, None, TOKEN,
        {}, 400, "compare.ignore_body",
    ),
    ("bad-duration", "PUT", "twin", {"timeout": "soon"}, None, TOKEN, {}, 400, "timeout"),
    (
        "bad-ignore-json", "PUT", "twin", {"compare": {"ignore_json": ["$.ok", "price"]}}, None,
        TOKEN, {}, 400, "compare.ignore_json[1]",
    ),
    ("body-names-another-pool", "PUT", "twin", {"pool": "dark"}, None, TOKEN, {}, 400, "pool"),
    ("unknown-pool-in-url", "PUT", "purple", {}, None, TOKEN, {}, 404, "purple"),
    ("shadow-of-the-live-pool", "PUT", "blue", {}, None, TOKEN, {}, 409, "blue"),
    ("baseline-with-live-traffic", "PUT", "twin", {"baseline": "blue"}, None, TOKEN, {}, 409,
     "blue"),
    ("put-stale-if-match", "PUT", "twin", {}, None, TOKEN, {"If-Match": '"7"'}, 409, "version"),
    ("patch-stale-if-match", "PATCH", "dark", {"percent": 5}, None, TOKEN, {"If-Match": "0"},
     409, "version"),
    ("delete-stale-if-match", "DELETE", "dark", None, None, TOKEN, {"If-Match": "2"}, 409,
     "version"),
    ("delete-no-such-shadow", "DELETE", "twin", None, None, TOKEN, {}, 404, "twin"),
    ("delete-no-such-pool", "DELETE", "purple", None, None, TOKEN, {}, 404, "purple"),
    ("patch-no-such-shadow", "PATCH", "twin", {"percent": 5}, None, TOKEN, {}, 404, "twin"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "pool", "body", "raw", "token", "headers", "status", "text"),
    [case[1:] for case in BAD_WRITES],
    ids=[case[0] for case in BAD_WRITES],
)
async def test_refused_shadow_writes_are_json_errors_and_change_nothing(
    start_shop: StartShop,
    method: str,
    pool: str,
    body: object,
    raw: bytes | None,
    token: str | None,
    headers: dict[str, str],
    status: int,
    text: str,
) -> None:
    shop = await start_shop()
    before = (await shop.call("GET", SHADOWS)).body
    answer = await shop.call(
        method, f"{SHADOWS}/{pool}", body, raw=raw, token=token, headers=headers
    )
    error = assert_json_error(answer, status)
    assert text.lower() in error["error"].lower(), error
    if status == 400 and isinstance(error["detail"], dict) and "path" in error["detail"]:
        assert error["error"].startswith(error["detail"]["path"] + ": "), error
    if status == 409 and text == "version":
        assert error["detail"] == {"current_version": 1}, error
    assert_version(answer, 1)
    after = await shop.call("GET", SHADOWS)
    assert_version(after, 1)
    assert after.body == before
    assert [s["pool"] for s in shop.persisted_shadows()] == ["dark"]
    assert shop.audit_lines() == []
