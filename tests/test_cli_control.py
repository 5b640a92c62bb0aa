"""The deploy-script commands (`pointsman status|weights|flip|rollback`) and AdminClient, against
a fake control API: an aiohttp app on 127.0.0.1 implementing the documented contract with
in-memory state. The CLI runs as a real process (asyncio subprocess, so the fake keeps serving).
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from control.cli import build_parser, refusal, status_lines
from control.client import (
    DEFAULT_ADMIN_URL,
    REQUEST_TIMEOUT,
    AdminClient,
    AdminUnreachable,
    Reply,
    parse_admin_url,
)
from tests.conftest import free_port, serve_app

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "s3cret-token"


# --- the fake control API -------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    raw_path: str
    headers: dict[str, str]
    body: Any


def _endpoint(address: str, healthy: bool) -> dict[str, Any]:
    return {"address": address, "healthy": healthy}


def initial_routes() -> dict[str, dict[str, Any]]:
    return {
        "shop": {
            "weights": {"blue": 90, "green": 10, "dark": 0},
            "live": None,
            "previous": None,
            "flips": 0,
            "rollbacks": 0,
            "changed_at": 1700000000.0,
            "pools": {
                "blue": {
                    "endpoints": [
                        _endpoint("127.0.0.1:9001", True),
                        _endpoint("127.0.0.1:9002", False),
                    ]
                },
                "green": {"endpoints": [_endpoint("127.0.0.1:9101", True)]},
                "dark": {"endpoints": [_endpoint("127.0.0.1:9201", False)]},
            },
        },
        "api": {
            "weights": {"main": 100},
            "live": None,
            "previous": None,
            "flips": 0,
            "rollbacks": 0,
            "changed_at": 1700000000.0,
            "pools": {"main": {"endpoints": [_endpoint("127.0.0.1:9301", True)]}},
        },
    }


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: object = None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.detail = detail


class FakeControlApi:
    """The control API contract, in memory. Reads are open; writes need the bearer token."""

    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.version = 1
        self.routes = initial_routes()
        self.seen: list[Seen] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def writes(self) -> list[Seen]:
        return [seen for seen in self.seen if seen.method != "GET"]

    async def start(self) -> FakeControlApi:
        app = web.Application(middlewares=[self._errors])
        app.router.add_get("/v1/routes", self._list)
        app.router.add_get("/v1/routes/{route}", self._get)
        app.router.add_put("/v1/routes/{route}/weights", self._weights)
        app.router.add_post("/v1/routes/{route}/flip", self._flip)
        app.router.add_post("/v1/routes/{route}/rollback", self._rollback)
        self.runner, self.port = await serve_app(app)
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def route_doc(self, name: str) -> dict[str, Any]:
        return {"name": name, "version": self.version, **copy.deepcopy(self.routes[name])}

    def _answer(self, body: object, status: int = 200) -> web.Response:
        return web.json_response(body, status=status, headers={"ETag": f'"{self.version}"'})

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        raw = await request.read()
        body = json.loads(raw) if raw else None
        self.seen.append(
            Seen(request.method, request.path, request.raw_path, dict(request.headers), body)
        )
        try:
            response: web.StreamResponse = await handler(request)
        except ApiError as err:
            return self._answer({"error": err.error, "detail": err.detail}, err.status)
        return response

    # --- helpers of the handlers

    def _route(self, request: web.Request) -> tuple[str, dict[str, Any]]:
        name = request.match_info["route"]
        if name not in self.routes:
            raise ApiError(404, f"unknown route '{name}'", {"routes": list(self.routes)})
        return name, self.routes[name]

    def _authorize(self, request: web.Request) -> None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "missing bearer token")
        if token != self.token:
            raise ApiError(403, "wrong token")

    def _check_version(self, request: web.Request) -> None:
        value = request.headers.get("If-Match")
        if value is None:
            return
        text = value.strip().strip('"')
        if not text.isdigit():
            raise ApiError(400, "If-Match must be a version number", {"got": value})
        if int(text) != self.version:
            raise ApiError(409, "version conflict", {"current_version": self.version})

    async def _write(self, request: web.Request) -> tuple[str, dict[str, Any], dict[str, Any]]:
        self._authorize(request)
        name, route = self._route(request)
        self._check_version(request)
        body = await request.json() if await request.read() else {}
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object")
        return name, route, body

    def _commit(
        self, name: str, route: dict[str, Any], weights: dict[str, int], live: object
    ) -> web.Response:
        route["previous"] = {"weights": route["weights"], "live": route["live"]}
        route["weights"], route["live"] = weights, live
        route["changed_at"] = time.time()
        self.version += 1
        return self._answer(self.route_doc(name))

    # --- the handlers

    async def _list(self, request: web.Request) -> web.Response:
        return self._answer(
            {"version": self.version, "routes": [*map(self.route_doc, self.routes)]}
        )

    async def _get(self, request: web.Request) -> web.Response:
        name, _ = self._route(request)
        return self._answer(self.route_doc(name))

    async def _weights(self, request: web.Request) -> web.Response:
        name, route, body = await self._write(request)
        weights = body.get("weights")
        if not isinstance(weights, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in weights.values()
        ):
            raise ApiError(400, 'expected {"weights": {"<pool>": <integer>, ...}}')
        for pool in weights:
            if pool not in route["pools"]:
                raise ApiError(404, f"unknown pool '{pool}' in route '{name}'")
        new = {pool: weights.get(pool, 0) for pool in route["pools"]}
        return self._commit(name, route, new, None)

    async def _flip(self, request: web.Request) -> web.Response:
        name, route, body = await self._write(request)
        to, force = body.get("to"), body.get("force", False)
        if not isinstance(to, str) or not isinstance(force, bool):
            raise ApiError(400, 'expected {"to": "<pool>", "force": <bool>}')
        if to not in route["pools"]:
            raise ApiError(404, f"unknown pool '{to}' in route '{name}'")
        healthy = [e for e in route["pools"][to]["endpoints"] if e["healthy"]]
        if not healthy and not force:
            raise ApiError(409, f"pool '{to}' has no healthy endpoint", {"pool": to})
        route["flips"] += 1
        new = {pool: (100 if pool == to else 0) for pool in route["pools"]}
        return self._commit(name, route, new, to)

    async def _rollback(self, request: web.Request) -> web.Response:
        name, route, _ = await self._write(request)
        previous = route["previous"]
        if previous is None:
            raise ApiError(409, "nothing to roll back", None)
        route["rollbacks"] += 1
        return self._commit(name, route, previous["weights"], previous["live"])


async def odd_answers(request: web.Request) -> web.Response:
    """Answers that are not the contract: a plain-text 500, JSON of the wrong shape, a redirect."""
    route = request.match_info["route"]
    if route == "boom":
        return web.Response(status=500, text="500 Internal Server Error\n\nServer got in trouble")
    if route == "weird":
        return web.json_response([1, 2, 3], headers={"ETag": '"1"'})
    if route == "moved":
        return web.Response(status=307, headers={"Location": "/v1/routes/shop"})
    raise web.HTTPNotFound()


@pytest.fixture
async def api() -> AsyncIterator[FakeControlApi]:
    fake = await FakeControlApi().start()
    yield fake
    await fake.stop()


@pytest.fixture
async def odd_api() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/v1/routes/{route}", odd_answers)
    runner, port = await serve_app(app)
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.fixture
async def not_http() -> AsyncIterator[str]:
    """A TCP listener that answers with something other than HTTP, then closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    server.close()
    await server.wait_closed()


# --- running the CLI as a process -----------------------------------------------------------


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


async def pointsman(*args: str, admin: str | None = None, token: str | None = TOKEN) -> Run:
    env = {k: v for k, v in os.environ.items() if k not in ("POINTSMAN_ADMIN", "POINTSMAN_TOKEN")}
    if admin is not None:
        env["POINTSMAN_ADMIN"] = admin
    if token is not None:
        env["POINTSMAN_TOKEN"] = token
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "control.cli", *args,
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    run = Run(proc.returncode, out.decode(), err.decode())
    assert "Traceback" not in run.err, run.err
    return run


SHOP_STATUS = [
    "shop  version 1  live -  weights blue=90 green=10 dark=0  (flips 0, rollbacks 0)",
    "  blue   1/2 healthy  127.0.0.1:9001 up  127.0.0.1:9002 down",
    "  green  1/1 healthy  127.0.0.1:9101 up",
    "  dark   0/1 healthy  127.0.0.1:9201 down",
]


async def test_status_lists_every_route_with_pool_health(api: FakeControlApi) -> None:
    run = await pointsman("status", admin=api.url)
    assert (run.code, run.err) == (0, "")
    assert run.out.splitlines() == [
        *SHOP_STATUS,
        "api  version 1  live -  weights main=100  (flips 0, rollbacks 0)",
        "  main  1/1 healthy  127.0.0.1:9301 up",
    ]
    # Then the fleet's members, if it is one (this stand-in, like a single host, is not).
    assert [(s.method, s.path) for s in api.seen] == [("GET", "/v1/routes"), ("GET", "/v1/fleet")]


async def test_status_of_one_route(api: FakeControlApi) -> None:
    run = await pointsman("status", "shop", admin=api.url)
    assert (run.code, run.err) == (0, "")
    assert run.out.splitlines() == SHOP_STATUS
    assert [(s.method, s.path) for s in api.seen] == [
        ("GET", "/v1/routes/shop"),
        ("GET", "/v1/fleet"),
    ]


async def test_status_json_is_the_answer_body(api: FakeControlApi) -> None:
    run = await pointsman("status", "--json", admin=api.url)
    assert run.code == 0
    assert run.json() == {"version": 1, "routes": [api.route_doc("shop"), api.route_doc("api")]}
    run = await pointsman("status", "shop", "--json", admin=api.url)
    assert run.code == 0
    assert run.json() == api.route_doc("shop")


async def test_the_token_is_sent_on_every_call(api: FakeControlApi) -> None:
    assert (await pointsman("status", admin=api.url)).code == 0
    assert (await pointsman("flip", "shop", "green", admin=api.url)).code == 0
    assert [s.headers.get("Authorization") for s in api.seen] == [f"Bearer {TOKEN}"] * 3
    assert (await pointsman("status", admin=api.url, token=None)).code == 0
    assert "Authorization" not in api.seen[-1].headers


@pytest.mark.parametrize("where", ["before", "after"])
async def test_admin_option_before_or_after_the_subcommand_beats_the_env(
    api: FakeControlApi, where: str
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    option = ["--admin", api.url]
    args = [*option, "status", "shop"] if where == "before" else ["status", "shop", *option]
    run = await pointsman(*args, admin=dead)
    assert (run.code, run.out.splitlines()) == (0, SHOP_STATUS)


async def test_admin_url_from_the_env_with_a_trailing_slash(api: FakeControlApi) -> None:
    run = await pointsman("status", "shop", admin=api.url + "/")
    assert run.code == 0
    assert api.seen[0].path == "/v1/routes/shop"


async def test_status_of_an_unknown_route_exits_1(api: FakeControlApi) -> None:
    run = await pointsman("status", "nope", admin=api.url)
    assert (run.code, run.out, run.err) == (1, "", "pointsman: 404 unknown route 'nope'\n")


async def test_json_refusal_prints_the_error_body_too(api: FakeControlApi) -> None:
    run = await pointsman("status", "nope", "--json", admin=api.url)
    assert run.code == 1
    assert run.json() == {"error": "unknown route 'nope'", "detail": {"routes": ["shop", "api"]}}
    assert run.err == "pointsman: 404 unknown route 'nope'\n"


# --- weights --------------------------------------------------------------------------------


async def test_weights_sets_and_confirms(api: FakeControlApi) -> None:
    run = await pointsman("weights", "shop", "blue=75", "green=25", admin=api.url)
    assert (run.code, run.err) == (0, "")
    assert run.out == "shop: weights set to blue=75 green=25 dark=0 (version 2)\n"
    [write] = api.writes
    assert (write.method, write.path) == ("PUT", "/v1/routes/shop/weights")
    assert write.body == {"weights": {"blue": 75, "green": 25}}
    assert write.headers["Content-Type"] == "application/json"
    assert "If-Match" not in write.headers
    assert api.routes["shop"]["weights"] == {"blue": 75, "green": 25, "dark": 0}


async def test_weights_json(api: FakeControlApi) -> None:
    run = await pointsman("weights", "shop", "blue=0", "green=100", "--json", admin=api.url)
    assert run.code == 0
    body = run.json()
    assert (body["version"], body["weights"]) == (2, {"blue": 0, "green": 100, "dark": 0})
    assert body["previous"] == {"weights": {"blue": 90, "green": 10, "dark": 0}, "live": None}


async def test_weights_unknown_pool_exits_1_with_the_reason(api: FakeControlApi) -> None:
    run = await pointsman("weights", "shop", "gren=100", admin=api.url)
    assert (run.code, run.out) == (1, "")
    assert run.err == "pointsman: 404 unknown pool 'gren' in route 'shop'\n"
    assert api.version == 1


@pytest.mark.parametrize(
    "pools",
    [
        ["blue"],
        ["blue="],
        ["=5"],
        ["blue=-1"],
        ["blue=x"],
        ["blue=1.5"],
        ["blue=1e3"],
        ["bl ue=1"],
        ["blue=²"],
        ["blue=1", "blue=2"],
        [],
    ],
)
async def test_malformed_pool_weights_are_a_usage_error(
    api: FakeControlApi, pools: list[str]
) -> None:
    run = await pointsman("weights", "shop", *pools, admin=api.url)
    assert (run.code, run.out) == (2, "")
    assert run.err.startswith("usage: pointsman weights")
    assert "pointsman weights: error:" in run.err
    assert api.seen == []


# --- flip and rollback ----------------------------------------------------------------------


async def test_flip_then_status_then_rollback(api: FakeControlApi) -> None:
    run = await pointsman("flip", "shop", "green", admin=api.url)
    assert (run.code, run.out, run.err) == (0, "shop: flipped to green (version 2)\n", "")
    assert (api.writes[0].path, api.writes[0].body) == (
        "/v1/routes/shop/flip",
        {"to": "green", "force": False},
    )

    run = await pointsman("status", "shop", admin=api.url)
    assert run.out.splitlines()[0] == (
        "shop  version 2  live green  weights blue=0 green=100 dark=0  (flips 1, rollbacks 0)"
    )

    run = await pointsman("rollback", "shop", admin=api.url)
    assert (run.code, run.err) == (0, "")
    assert run.out == "shop: rolled back to blue=90 green=10 dark=0 (version 3)\n"
    assert (api.writes[1].path, api.writes[1].body) == ("/v1/routes/shop/rollback", {})

    # Rolling back the rollback returns to the flip, which names the live pool.
    run = await pointsman("rollback", "shop", admin=api.url)
    assert run.out == "shop: rolled back to blue=0 green=100 dark=0 (live green, version 4)\n"


async def test_flip_and_rollback_json(api: FakeControlApi) -> None:
    run = await pointsman("flip", "shop", "green", "--json", admin=api.url)
    assert run.code == 0
    assert run.json() == api.route_doc("shop")
    assert run.json()["live"] == "green"
    run = await pointsman("rollback", "--json", "shop", admin=api.url)
    assert run.code == 0
    assert (run.json()["version"], run.json()["live"]) == (3, None)


async def test_flip_to_an_unknown_pool_exits_1(api: FakeControlApi) -> None:
    run = await pointsman("flip", "shop", "gren", admin=api.url)
    assert (run.code, run.err) == (1, "pointsman: 404 unknown pool 'gren' in route 'shop'\n")


async def test_flip_to_an_unhealthy_pool_needs_force(api: FakeControlApi) -> None:
    run = await pointsman("flip", "shop", "dark", admin=api.url)
    assert (run.code, run.err) == (1, "pointsman: 409 pool 'dark' has no healthy endpoint\n")
    run = await pointsman("flip", "shop", "dark", "--force", admin=api.url)
    assert (run.code, run.out) == (0, "shop: flipped to dark (version 2)\n")
    assert api.writes[-1].body == {"to": "dark", "force": True}


async def test_rollback_with_nothing_to_roll_back_exits_1(api: FakeControlApi) -> None:
    run = await pointsman("rollback", "shop", admin=api.url)
    assert (run.code, run.out, run.err) == (1, "", "pointsman: 409 nothing to roll back\n")


async def test_write_to_an_unknown_route_exits_1(api: FakeControlApi) -> None:
    run = await pointsman("rollback", "nope", admin=api.url)
    assert (run.code, run.err) == (1, "pointsman: 404 unknown route 'nope'\n")


# --- If-Match -------------------------------------------------------------------------------


async def test_if_match_stale_version_is_a_409_naming_the_current_one(
    api: FakeControlApi,
) -> None:
    assert (await pointsman("flip", "shop", "green", admin=api.url)).code == 0
    for args in (
        ["weights", "shop", "blue=50", "green=50", "--if-match", "1"],
        ["flip", "shop", "blue", "--if-match", "1"],
        ["rollback", "shop", "--if-match", "1"],
    ):
        run = await pointsman(*args, admin=api.url)
        assert (run.code, run.out) == (1, ""), args
        assert run.err == "pointsman: 409 version conflict (current version 2)\n", args
        assert api.writes[-1].headers["If-Match"] == '"1"'
    assert api.version == 2


async def test_if_match_current_version_goes_through(api: FakeControlApi) -> None:
    run = await pointsman(
        "weights", "shop", "blue=50", "green=50", "--if-match", "1", admin=api.url
    )
    assert (run.code, run.out) == (0, "shop: weights set to blue=50 green=50 dark=0 (version 2)\n")
    # An ETag as the API sends it is accepted too.
    run = await pointsman("flip", "shop", "green", "--if-match", '"2"', admin=api.url)
    assert (run.code, run.out) == (0, "shop: flipped to green (version 3)\n")
    assert [w.headers["If-Match"] for w in api.writes] == ['"1"', '"2"']


@pytest.mark.parametrize("version", ["abc", "-1", "1.0", ""])
async def test_malformed_if_match_is_a_usage_error(api: FakeControlApi, version: str) -> None:
    run = await pointsman("rollback", "shop", "--if-match", version, admin=api.url)
    assert run.code == 2
    assert "argument --if-match" in run.err
    assert api.seen == []


# --- auth -----------------------------------------------------------------------------------


async def test_write_without_a_token_is_401_with_a_hint(api: FakeControlApi) -> None:
    run = await pointsman("flip", "shop", "green", admin=api.url, token=None)
    assert (run.code, run.out) == (1, "")
    assert run.err == "pointsman: 401 missing bearer token (POINTSMAN_TOKEN is not set)\n"
    assert api.version == 1


async def test_write_with_a_wrong_token_is_403(api: FakeControlApi) -> None:
    run = await pointsman("weights", "shop", "blue=1", admin=api.url, token="guess")
    assert (run.code, run.err) == (1, "pointsman: 403 wrong token\n")
    assert api.writes[0].headers["Authorization"] == "Bearer guess"
    assert api.version == 1


async def test_a_token_that_cannot_be_a_header_is_a_usage_error(api: FakeControlApi) -> None:
    run = await pointsman("status", admin=api.url, token="two words")
    assert run.code == 2
    assert "POINTSMAN_TOKEN" in run.err
    assert api.seen == []


# --- unreachable and odd answers ------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["status"],
        ["status", "shop", "--json"],
        ["weights", "shop", "blue=1"],
        ["flip", "shop", "green", "--force"],
        ["rollback", "shop"],
    ],
)
async def test_unreachable_admin_exits_3_with_one_line(args: list[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    run = await pointsman(*args, admin=url)
    assert (run.code, run.out) == (3, "")
    assert run.err == f"pointsman: cannot reach admin API at {url}: Connection refused\n"


async def test_a_peer_that_is_not_http_exits_3(not_http: str) -> None:
    run = await pointsman("status", admin=not_http)
    assert (run.code, run.out) == (3, "")
    assert run.err.startswith(f"pointsman: cannot reach admin API at {not_http}: ")
    assert run.err.count("\n") == 1


async def test_a_non_json_error_answer_exits_1_with_the_status(odd_api: str) -> None:
    run = await pointsman("status", "boom", admin=odd_api)
    assert (run.code, run.out) == (1, "")
    assert run.err == "pointsman: 500 Internal Server Error (not a control API answer)\n"
    # Not the control API at all (no /v1/routes): aiohttp's plain 404.
    run = await pointsman("status", admin=odd_api)
    assert run.err == "pointsman: 404 Not Found (not a control API answer)\n"


async def test_a_success_of_the_wrong_shape_exits_1(odd_api: str) -> None:
    run = await pointsman("status", "weird", admin=odd_api)
    assert (run.code, run.out) == (1, "")
    assert run.err.startswith(f"pointsman: unexpected answer from admin API at {odd_api}: ")
    assert run.err.count("\n") == 1


async def test_a_redirect_is_not_followed(odd_api: str) -> None:
    run = await pointsman("status", "moved", admin=odd_api)
    assert (run.code, run.err) == (
        1,
        "pointsman: 307 Temporary Redirect (not a control API answer)\n",
    )


async def test_a_bad_admin_url_is_a_usage_error() -> None:
    run = await pointsman("status", "--admin", "127.0.0.1:8081")
    assert run.code == 2
    assert "argument --admin: expected a URL like http://127.0.0.1:8081" in run.err
    run = await pointsman("status", admin="ftp://127.0.0.1:8081")
    assert run.code == 2
    assert "POINTSMAN_ADMIN: expected a URL like" in run.err


def test_help_documents_the_exit_codes() -> None:
    text = build_parser().format_help()
    for line in (
        "0  success",
        "1  the admin API refused the call",
        "2  usage error",
        "3  the admin API could not be reached",
        "POINTSMAN_ADMIN",
        "POINTSMAN_TOKEN",
    ):
        assert line in text
    sub = build_parser()._subparsers
    assert sub is not None
    [choices] = [a.choices for a in sub._group_actions if isinstance(a.choices, dict)]
    for name in ("status", "weights", "flip", "rollback"):
        assert "3 the admin API could not be reached" in choices[name].format_help()


# --- pure formatting ------------------------------------------------------------------------


def test_status_lines_tolerate_unknown_health_and_empty_pools() -> None:
    route = {
        "name": "x",
        "version": 4,
        "weights": {"a": 1, "b": 0},
        "live": None,
        "flips": 0,
        "rollbacks": 0,
        "pools": {
            "a": {"endpoints": [{"address": "h:1", "healthy": None}]},
            "b": {"endpoints": []},
        },
    }
    assert status_lines(route) == [
        "x  version 4  live -  weights a=1 b=0  (flips 0, rollbacks 0)",
        "  a  0/1 healthy  h:1 ?",
        "  b  0/0 healthy  no endpoints",
    ]
    assert status_lines({"version": 4, "routes": []}) == ["no routes"]


def test_refusal_is_one_line() -> None:
    body = {"error": "request body is not valid JSON", "detail": "line 1\ncolumn 2"}
    assert refusal(Reply(400, body, "3"), token_set=True) == (
        "400 request body is not valid JSON: line 1 column 2"
    )
    assert refusal(Reply(599, None, None), token_set=True) == "599 error (not a control API answer)"


# --- AdminClient ----------------------------------------------------------------------------


def test_parse_admin_url() -> None:
    assert parse_admin_url("http://127.0.0.1:8081/") == "http://127.0.0.1:8081"
    assert (
        parse_admin_url(" https://admin.example/pointsman/ ") == "https://admin.example/pointsman"
    )
    for bad in ("127.0.0.1:8081", "ftp://x", "http://", "http://x:99999", "http://x/?a=1"):
        with pytest.raises(ValueError):
            parse_admin_url(bad)
    assert DEFAULT_ADMIN_URL == "http://127.0.0.1:8081"


def test_the_timeout_is_five_seconds_by_default() -> None:
    assert REQUEST_TIMEOUT == 5.0
    assert AdminClient(DEFAULT_ADMIN_URL).timeout == REQUEST_TIMEOUT


async def test_client_status_returns_status_body_and_version(api: FakeControlApi) -> None:
    client = AdminClient(api.url, TOKEN)
    status, body, etag = await asyncio.to_thread(client.status)
    assert (status, etag) == (200, "1")
    assert [route["name"] for route in body["routes"]] == ["shop", "api"]
    reply = await asyncio.to_thread(client.status, "shop")
    assert reply.ok
    assert reply == (200, api.route_doc("shop"), "1")
    assert api.seen[-1].headers["Accept"] == "application/json"


async def test_client_answers_errors_as_replies(api: FakeControlApi) -> None:
    client = AdminClient(api.url)
    reply = await asyncio.to_thread(client.status, "nope")
    assert not reply.ok
    assert reply.status == 404
    assert reply.body["error"] == "unknown route 'nope'"
    assert reply.etag == "1"
    reply = await asyncio.to_thread(client.flip, "shop", "green")
    assert (reply.status, reply.body["error"]) == (401, "missing bearer token")


async def test_client_writes(api: FakeControlApi) -> None:
    client = AdminClient(api.url, f"  {TOKEN}\n")  # whitespace around the token is dropped
    reply = await asyncio.to_thread(client.set_weights, "shop", {"blue": 75, "green": 25}, 1)
    assert (reply.status, reply.etag, reply.body["weights"]["blue"]) == (200, "2", 75)
    assert api.writes[-1].body == {"weights": {"blue": 75, "green": 25}}
    assert api.writes[-1].headers["If-Match"] == '"1"'
    assert api.writes[-1].headers["Authorization"] == f"Bearer {TOKEN}"

    reply = await asyncio.to_thread(client.flip, "shop", "dark", True)
    assert (reply.status, reply.body["live"], reply.etag) == (200, "dark", "3")
    assert api.writes[-1].body == {"to": "dark", "force": True}
    assert "If-Match" not in api.writes[-1].headers

    reply = await asyncio.to_thread(client.rollback, "shop", 2)
    assert reply.status == 409
    assert reply.body == {"error": "version conflict", "detail": {"current_version": 3}}
    reply = await asyncio.to_thread(client.rollback, "shop", 3)
    assert (reply.status, reply.body["weights"]["blue"], reply.etag) == (200, 75, "4")
    assert api.writes[-1].body == {}


async def test_client_path_segments_are_quoted(api: FakeControlApi) -> None:
    client = AdminClient(api.url)
    reply = await asyncio.to_thread(client.status, "a/b c")
    assert reply.status == 404
    assert api.seen[-1].raw_path == "/v1/routes/a%2Fb%20c"


async def test_client_does_not_follow_redirects(odd_api: str) -> None:
    reply = await asyncio.to_thread(AdminClient(odd_api, TOKEN).status, "moved")
    assert (reply.status, reply.body, reply.etag) == (307, None, None)


async def test_client_unreachable_raises() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(AdminUnreachable) as caught:
        await asyncio.to_thread(AdminClient(url).status)
    assert (caught.value.url, caught.value.reason) == (url, "Connection refused")
    assert str(caught.value) == f"cannot reach admin API at {url}: Connection refused"


async def test_client_times_out_on_a_silent_server() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers; ends when the client gives up
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        started = time.monotonic()
        with pytest.raises(AdminUnreachable) as caught:
            await asyncio.to_thread(AdminClient(url, timeout=0.3).status)
        assert caught.value.reason == "timed out"
        assert time.monotonic() - started < 3
    finally:
        server.close()
        await server.wait_closed()


async def test_client_not_http_raises(not_http: str) -> None:
    with pytest.raises(AdminUnreachable) as caught:
        await asyncio.to_thread(AdminClient(not_http).status)
    assert caught.value.reason.startswith("not an HTTP answer")


def test_client_rejects_a_token_that_cannot_be_a_header() -> None:
    with pytest.raises(ValueError, match="printable ASCII"):
        AdminClient(DEFAULT_ADMIN_URL, "tok\nen")
    assert AdminClient(DEFAULT_ADMIN_URL, "").token is None
    assert repr(AdminClient(DEFAULT_ADMIN_URL, "x")) == (
        "<AdminClient http://127.0.0.1:8081 token timeout=5.0s>"
    )


async def test_a_reader_that_goes_away_gets_no_traceback(api: FakeControlApi) -> None:
    """`pointsman status --json | head -c 10`: the pipe closes before the output is written."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is already gone
    env = dict(os.environ, POINTSMAN_ADMIN=api.url, POINTSMAN_TOKEN=TOKEN)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "control.cli", "status", "--json",
        cwd=ROOT, env=env, stdout=write_end, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    os.close(write_end)
    async with asyncio.timeout(30):
        _, err = await proc.communicate()
    assert "Traceback" not in err.decode()
    assert proc.returncode == 1
