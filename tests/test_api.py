"""The control API as a deploy script and an operator see it: a real `control.service.Service`
on 127.0.0.1 (OS-chosen ports), driven over HTTP with aiohttp, with real upstreams behind it.

What is checked is what a script would check: status codes, the JSON bodies, the ETag version,
where proxied traffic actually lands after a change, the audit log and /metrics.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDictProxy
from prometheus_client.parser import text_string_to_metric_families

from control.plane import ControlPlane
from control.service import Service
from proxy.config import Address, Config, StateConfig
from tests.conftest import Backend, BackendFactory, config_for

TOKEN = "test-token-4f1c9e"
LIMIT = 5.0  # seconds any single HTTP exchange may take
ROUTE = "/v1/routes/shop"


@dataclass
class Answer:
    status: int
    headers: CIMultiDictProxy[str]
    text: str

    @property
    def body(self) -> Any:
        return json.loads(self.text)


@dataclass
class Running:
    """One started Service with its upstreams and a client session."""

    service: Service
    config: Config
    session: aiohttp.ClientSession
    admin: str  # http://127.0.0.1:<admin port>
    proxy: str  # http://127.0.0.1:<data port>
    state_path: Path
    blue: Backend
    green: Backend

    @property
    def plane(self) -> ControlPlane:
        assert self.service.plane is not None
        return self.service.plane

    @property
    def audit_path(self) -> Path:
        return self.state_path.with_name(self.state_path.stem + ".audit.jsonl")

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
        data: bytes | None = raw
        if body is not None:
            data = json.dumps(body).encode()
        if data is not None:
            sent["Content-Type"] = "application/json"
        sent.update(headers or {})
        async with asyncio.timeout(LIMIT):
            async with self.session.request(
                method, self.admin + path, data=data, headers=sent
            ) as resp:
                return Answer(resp.status, resp.headers, await resp.text())

    async def backend_of_next_request(self, path: str = "/item") -> str:
        """Send one request through the proxy; the name of the upstream that answered."""
        async with asyncio.timeout(LIMIT):
            async with self.session.get(self.proxy + path) as resp:
                text = await resp.text()
                assert resp.status == 200, text
                return resp.headers["X-Backend"]

    async def backends_of(self, count: int) -> list[str]:
        return [await self.backend_of_next_request(f"/item/{i}") for i in range(count)]


def admin_port(service: Service) -> int:
    runner = service._admin_runner
    assert runner is not None, "the admin listener is not running"
    return int(runner.addresses[0][1])


def service_config(
    tmp_path: Path,
    blue: Backend,
    green: Backend,
    *,
    weights: dict[str, int] | None = None,
    admin_host: str = "127.0.0.1",
) -> Config:
    config = config_for({"blue": [blue.address], "green": [green.address]}, weights=weights)
    return replace(
        config,
        state=StateConfig(path=str(tmp_path / "state.json")),
        admin=replace(config.admin, listen=Address(admin_host, 0)),
        timeouts=replace(config.timeouts, grace=1.0),
    )


async def start_running(
    config: Config, blue: Backend, green: Backend, session: aiohttp.ClientSession
) -> Running:
    service = Service(config)
    await service.start()
    return Running(
        service=service,
        config=config,
        session=session,
        admin=f"http://127.0.0.1:{admin_port(service)}",
        proxy=f"http://127.0.0.1:{service.proxy.port}",
        state_path=Path(config.state.path),
        blue=blue,
        green=green,
    )


StartService = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start_service(
    backend_factory: BackendFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[StartService]:
    """start_service(token=TOKEN, admin_host="127.0.0.1", weights=None) -> Running.
    token=None: no token in the environment."""
    started: list[Running] = []
    sessions: list[aiohttp.ClientSession] = []

    async def make(
        token: str | None = TOKEN,
        admin_host: str = "127.0.0.1",
        weights: dict[str, int] | None = None,
    ) -> Running:
        blue = await backend_factory("blue")
        green = await backend_factory("green")
        config = service_config(tmp_path, blue, green, weights=weights, admin_host=admin_host)
        if token is None:
            monkeypatch.delenv(config.admin.token_env, raising=False)
        else:
            monkeypatch.setenv(config.admin.token_env, token)
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=LIMIT))
        sessions.append(session)
        running = await start_running(config, blue, green, session)
        started.append(running)
        return running

    yield make
    # Close the clients' keep-alive connections first so the proxy has nothing to drain.
    for session in sessions:
        await session.close()
    for running in started:
        await running.service.stop()


def assert_version(answer: Answer, version: int) -> None:
    assert answer.headers.get("ETag") == f'"{version}"', answer.headers


def assert_json_error(answer: Answer, status: int) -> dict[str, Any]:
    """The error contract: the status, a JSON object {"error": str, "detail": ...}, no traceback,
    and the current version in the ETag like every other answer."""
    assert answer.status == status, answer.text
    assert "Traceback" not in answer.text
    assert answer.headers.get("Content-Type", "").startswith("application/json"), answer.headers
    body = answer.body
    assert isinstance(body, dict) and set(body) == {"error", "detail"}, body
    assert isinstance(body["error"], str) and body["error"], body
    assert answer.headers.get("ETag", "").strip('"').isdigit(), answer.headers
    return body


async def current_version(running: Running) -> int:
    answer = await running.call("GET", ROUTE)
    assert answer.status == 200, answer.text
    version = answer.body["version"]
    assert isinstance(version, int)
    return version


# --- reads ---------------------------------------------------------------------------------


async def test_get_routes_lists_every_route_with_version_weights_and_health(
    start_service: StartService,
) -> None:
    rs = await start_service()
    answer = await rs.call("GET", "/v1/routes", token=None)
    assert answer.status == 200, answer.text
    assert answer.headers["Content-Type"].startswith("application/json")
    body = answer.body
    assert body["version"] == 1
    assert_version(answer, 1)
    assert [route["name"] for route in body["routes"]] == ["shop"]
    shop = body["routes"][0]
    assert shop["version"] == 1
    assert shop["weights"] == {"blue": 100, "green": 0}
    assert shop["live"] == "blue"


async def test_get_one_route_has_the_documented_shape(start_service: StartService) -> None:
    rs = await start_service()
    answer = await rs.call("GET", ROUTE, token=None)
    assert answer.status == 200, answer.text
    body = answer.body
    assert set(body) == {
        "name", "version", "weights", "live", "previous", "flips", "rollbacks", "changed_at",
        "pools", "shadows",
    }  # fmt: skip
    assert body["name"] == "shop"
    assert body["version"] == 1
    assert_version(answer, body["version"])
    assert body["weights"] == {"blue": 100, "green": 0}
    assert body["live"] == "blue"
    assert body["previous"] is None
    assert (body["flips"], body["rollbacks"]) == (0, 0)
    assert isinstance(body["changed_at"], int | float) and body["changed_at"] > 0
    up = {"state": "up", "healthy": True, "in_flight": 0}
    assert body["pools"] == {
        "blue": {"weight": 100, "endpoints": [{"address": rs.blue.address, **up}]},
        "green": {"weight": 0, "endpoints": [{"address": rs.green.address, **up}]},
    }


async def test_reads_are_open_without_a_token_on_a_loopback_admin_listener(
    start_service: StartService,
) -> None:
    rs = await start_service()
    for path in ("/v1/routes", ROUTE, "/metrics", "/healthz"):
        answer = await rs.call("GET", path, token=None)
        assert answer.status == 200, (path, answer.text)


async def test_reads_need_the_token_on_a_non_loopback_admin_listener(
    start_service: StartService,
) -> None:
    rs = await start_service(admin_host="0.0.0.0")
    for path in ("/v1/routes", ROUTE):
        assert_json_error(await rs.call("GET", path, token=None), 401)
        assert_json_error(await rs.call("GET", path, token="wrong"), 403)
        answer = await rs.call("GET", path)
        assert answer.status == 200, answer.text


async def test_head_answers_as_get_does_without_a_body(start_service: StartService) -> None:
    rs = await start_service(admin_host="0.0.0.0")
    get = await rs.call("GET", ROUTE)
    head = await rs.call("HEAD", ROUTE)
    assert (head.status, head.text) == (200, "")
    assert head.headers["ETag"] == get.headers["ETag"]
    assert head.headers["Content-Type"] == get.headers["Content-Type"]
    # the same token check as GET (no body to carry the error, only the status)
    assert (await rs.call("HEAD", ROUTE, token=None)).status == 401
    assert (await rs.call("HEAD", ROUTE, token="wrong")).status == 403


# --- writes --------------------------------------------------------------------------------


async def test_put_weights_answers_the_new_state_and_traffic_follows(
    start_service: StartService,
) -> None:
    rs = await start_service()
    assert set(await rs.backends_of(10)) == {"blue"}

    answer = await rs.call("PUT", ROUTE + "/weights", {"weights": {"blue": 0, "green": 100}})
    assert answer.status == 200, answer.text
    body = answer.body
    assert body["version"] == 2
    assert_version(answer, 2)
    assert body["weights"] == {"blue": 0, "green": 100}
    assert body["live"] == "green"  # the sole pool with weight
    assert body["previous"] == {"weights": {"blue": 100, "green": 0}, "live": "blue"}
    assert set(await rs.backends_of(20)) == {"green"}

    # Pools not named get 0; a split sends traffic to both.
    answer = await rs.call("PUT", ROUTE + "/weights", {"weights": {"blue": 50, "green": 50}})
    assert answer.status == 200, answer.text
    assert answer.body["weights"] == {"blue": 50, "green": 50}
    assert answer.body["live"] is None
    assert_version(answer, 3)
    assert set(await rs.backends_of(100)) == {"blue", "green"}

    answer = await rs.call("PUT", ROUTE + "/weights", {"weights": {"blue": 7}})
    assert answer.status == 200, answer.text
    assert answer.body["weights"] == {"blue": 7, "green": 0}
    assert set(await rs.backends_of(20)) == {"blue"}

    # GET agrees with what the PUT answered.
    answer = await rs.call("GET", ROUTE)
    assert answer.body["weights"] == {"blue": 7, "green": 0}
    assert_version(answer, 4)


async def test_flip_then_rollback_moves_all_traffic_and_back(start_service: StartService) -> None:
    rs = await start_service()
    assert set(await rs.backends_of(20)) == {"blue"}

    answer = await rs.call("POST", ROUTE + "/flip", {"to": "green"})
    assert answer.status == 200, answer.text
    body = answer.body
    assert_version(answer, 2)
    assert body["version"] == 2
    assert body["live"] == "green"
    assert body["weights"] == {"blue": 0, "green": 100}
    assert body["previous"] == {"weights": {"blue": 100, "green": 0}, "live": "blue"}
    assert (body["flips"], body["rollbacks"]) == (1, 0)
    assert set(await rs.backends_of(20)) == {"green"}

    answer = await rs.call("POST", ROUTE + "/rollback")
    assert answer.status == 200, answer.text
    body = answer.body
    assert_version(answer, 3)
    assert body["live"] == "blue"
    assert body["weights"] == {"blue": 100, "green": 0}
    assert (body["flips"], body["rollbacks"]) == (1, 1)
    assert set(await rs.backends_of(20)) == {"blue"}

    # A second rollback returns to where the first started.
    answer = await rs.call("POST", ROUTE + "/rollback")
    assert answer.status == 200, answer.text
    assert answer.body["live"] == "green"
    assert set(await rs.backends_of(20)) == {"green"}


async def test_repeating_a_flip_or_weights_succeeds_without_a_new_version(
    start_service: StartService,
) -> None:
    """A deploy script may retry: asking for what is in force is a 200 no-op, and the
    rollback target stays the assignment before the first call."""
    rs = await start_service()
    assert (await rs.call("POST", ROUTE + "/flip", {"to": "green"})).status == 200
    for _ in range(2):
        answer = await rs.call("POST", ROUTE + "/flip", {"to": "green"})
        assert answer.status == 200, answer.text
        assert_version(answer, 2)
        assert answer.body["previous"] == {"weights": {"blue": 100, "green": 0}, "live": "blue"}
    answer = await rs.call("PUT", ROUTE + "/weights", {"weights": {"blue": 0, "green": 100}})
    assert answer.status == 200, answer.text
    assert_version(answer, 2)
    answer = await rs.call("POST", ROUTE + "/rollback")
    assert answer.body["live"] == "blue"
    assert set(await rs.backends_of(10)) == {"blue"}


async def test_if_match_with_the_current_version_is_accepted(start_service: StartService) -> None:
    rs = await start_service()
    for i, if_match in enumerate(['"1"', "2", 'W/"3"', "*"]):
        pool = "green" if i % 2 == 0 else "blue"
        answer = await rs.call(
            "POST", ROUTE + "/flip", {"to": pool}, headers={"If-Match": if_match}
        )
        assert answer.status == 200, (if_match, answer.text)
        assert_version(answer, i + 2)


async def test_stale_if_match_is_409_with_the_current_version_and_changes_nothing(
    start_service: StartService,
) -> None:
    rs = await start_service()
    answer = await rs.call("POST", ROUTE + "/flip", {"to": "green"})
    assert answer.status == 200, answer.text
    assert_version(answer, 2)

    calls: list[tuple[str, str, object]] = [
        ("PUT", ROUTE + "/weights", {"weights": {"blue": 10, "green": 90}}),
        ("POST", ROUTE + "/flip", {"to": "blue"}),
        ("POST", ROUTE + "/rollback", None),
    ]
    for method, path, body in calls:
        for stale in ('"1"', "1", "3", "0"):
            answer = await rs.call(method, path, body, headers={"If-Match": stale})
            error = assert_json_error(answer, 409)
            assert error["detail"]["current_version"] == 2, error
            assert_version(answer, 2)

    answer = await rs.call("GET", ROUTE)
    assert answer.body["version"] == 2
    assert answer.body["weights"] == {"blue": 0, "green": 100}
    assert set(await rs.backends_of(10)) == {"green"}


async def test_rollback_with_nothing_to_roll_back_is_409(start_service: StartService) -> None:
    rs = await start_service()
    error = assert_json_error(await rs.call("POST", ROUTE + "/rollback"), 409)
    assert "roll back" in error["error"] or "earlier" in error["error"], error
    assert await current_version(rs) == 1


async def test_flip_to_a_pool_without_healthy_endpoints_needs_force(
    start_service: StartService,
) -> None:
    rs = await start_service()
    green = rs.plane.proxy.table.routes["shop"].pools_by_name["green"]
    assert green.targets, "the data plane has no endpoint objects for green"
    for target in green.targets:
        target.healthy = False

    answer = await rs.call("GET", ROUTE)
    assert answer.body["pools"]["green"]["endpoints"][0]["healthy"] is False
    assert answer.body["pools"]["blue"]["endpoints"][0]["healthy"] is True

    for body in ({"to": "green"}, {"to": "green", "force": False}):
        error = assert_json_error(await rs.call("POST", ROUTE + "/flip", body), 409)
        assert "healthy" in error["error"], error
        assert error["detail"]["pool"] == "green"
    assert await current_version(rs) == 1
    assert not rs.audit_path.exists() or rs.audit_path.read_text() == ""

    answer = await rs.call("POST", ROUTE + "/flip", {"to": "green", "force": True})
    assert answer.status == 200, answer.text
    assert answer.body["live"] == "green"
    assert_version(answer, 2)


# --- every error case ----------------------------------------------------------------------

W, F, R = ROUTE + "/weights", ROUTE + "/flip", ROUTE + "/rollback"
# (id, method, path, raw body, expected status)
BAD_REQUESTS: list[tuple[str, str, str, bytes | None, int]] = [
    ("weights: invalid JSON", "PUT", W, b'{"weights": {"blue": ', 400),
    ("weights: body is an array", "PUT", W, b'[{"weights": {}}]', 400),
    ("weights: body is a string", "PUT", W, b'"blue=100"', 400),
    ("weights: body is null", "PUT", W, b"null", 400),
    ("weights: empty body", "PUT", W, None, 400),
    ("weights: missing", "PUT", W, b'{"blue": 100}', 400),
    ("weights: not an object", "PUT", W, b'{"weights": [100, 0]}', 400),
    ("weights: empty object", "PUT", W, b'{"weights": {}}', 400),
    ("weights: negative", "PUT", W, b'{"weights": {"blue": -1, "green": 5}}', 400),
    ("weights: float", "PUT", W, b'{"weights": {"blue": 1.5}}', 400),
    ("weights: string", "PUT", W, b'{"weights": {"blue": "50"}}', 400),
    ("weights: bool", "PUT", W, b'{"weights": {"blue": 0, "green": true}}', 400),
    ("weights: null value", "PUT", W, b'{"weights": {"blue": null}}', 400),
    ("weights: all zero", "PUT", W, b'{"weights": {"blue": 0, "green": 0}}', 400),
    ("weights: huge", "PUT", W, b'{"weights": {"blue": 10000000000}}', 400),
    ("weights: body too large", "PUT", W, b" " * 100_000 + b"{}", 400),
    ("weights: unknown key", "PUT", W, b'{"weights": {"blue": 1}, "wieghts": {}}', 400),
    ("flip: invalid JSON", "POST", F, b"{to: green}", 400),
    ("flip: body is an array", "POST", F, b'["green"]', 400),
    ("flip: missing to", "POST", F, b"{}", 400),
    ("flip: empty body", "POST", F, None, 400),
    ("flip: to is a number", "POST", F, b'{"to": 2}', 400),
    ("flip: to is empty", "POST", F, b'{"to": ""}', 400),
    ("flip: force is a string", "POST", F, b'{"to": "green", "force": "yes"}', 400),
    ("flip: force is a number", "POST", F, b'{"to": "green", "force": 1}', 400),
    ("flip: force is null", "POST", F, b'{"to": "green", "force": null}', 400),
    ("flip: unknown key", "POST", F, b'{"to": "green", "froce": true}', 400),
    ("rollback: invalid JSON", "POST", R, b"{", 400),
    ("rollback: body is an array", "POST", R, b"[]", 400),
    ("unknown route: get", "GET", "/v1/routes/nope", None, 404),
    ("unknown route: weights", "PUT", "/v1/routes/nope/weights", b'{"weights": {"a": 1}}', 404),
    ("unknown route: flip", "POST", "/v1/routes/nope/flip", b'{"to": "green"}', 404),
    ("unknown route: rollback", "POST", "/v1/routes/nope/rollback", None, 404),
    ("unknown pool: weights", "PUT", W, b'{"weights": {"purple": 10}}', 404),
    ("unknown pool: beside known", "PUT", W, b'{"weights": {"green": 1, "x": 1}}', 404),
    ("unknown pool: flip", "POST", F, b'{"to": "purple"}', 404),
    ("unknown path", "GET", "/v1/nothing-here", None, 404),
    ("wrong method", "GET", F, None, 405),
]


@pytest.mark.parametrize(
    ("method", "path", "raw", "status"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
async def test_bad_requests_get_a_json_error_and_change_nothing(
    start_service: StartService, method: str, path: str, raw: bytes | None, status: int
) -> None:
    rs = await start_service()
    answer = await rs.call(method, path, raw=raw)
    assert_json_error(answer, status)
    assert_version(answer, 1)
    assert await current_version(rs) == 1
    assert not rs.audit_path.exists() or rs.audit_path.read_text() == ""
    assert set(await rs.backends_of(5)) == {"blue"}


@pytest.mark.parametrize("if_match", ["abc", "-1", "1.0", '"v1"', "1, 2"])
async def test_if_match_that_is_not_a_version_is_400(
    start_service: StartService, if_match: str
) -> None:
    rs = await start_service()
    answer = await rs.call("POST", ROUTE + "/flip", {"to": "green"}, headers={"If-Match": if_match})
    assert_json_error(answer, 400)
    assert await current_version(rs) == 1


WRITES: list[tuple[str, str, object]] = [
    ("PUT", ROUTE + "/weights", {"weights": {"blue": 0, "green": 100}}),
    ("POST", ROUTE + "/flip", {"to": "green"}),
    ("POST", ROUTE + "/rollback", None),
]
WRITE_IDS = ["weights", "flip", "rollback"]

# (id, Authorization header or None, expected status)
BAD_CREDENTIALS: list[tuple[str, str | None, int]] = [
    ("no header", None, 401),
    ("basic scheme", "Basic dXNlcjp0ZXN0LXRva2VuLTRmMWM5ZQ==", 401),
    ("token scheme", f"Token {TOKEN}", 401),
    ("bearer without token", "Bearer", 401),
    ("bearer blank", "Bearer   ", 401),
    ("wrong token", "Bearer not-the-token", 403),
    ("token prefix", f"Bearer {TOKEN[:-1]}", 403),
    ("token with suffix", f"Bearer {TOKEN}x", 403),
]


@pytest.mark.parametrize(("method", "path", "body"), WRITES, ids=WRITE_IDS)
async def test_writes_without_the_right_token_are_refused(
    start_service: StartService, method: str, path: str, body: object
) -> None:
    rs = await start_service()
    for case, authorization, status in BAD_CREDENTIALS:
        headers = {} if authorization is None else {"Authorization": authorization}
        answer = await rs.call(method, path, body, token=None, headers=headers)
        assert answer.status == status, (case, answer.text)
        assert_json_error(answer, status)
    assert await current_version(rs) == 1
    assert not rs.audit_path.exists() or rs.audit_path.read_text() == ""
    assert set(await rs.backends_of(5)) == {"blue"}


async def test_the_bearer_scheme_is_case_insensitive(start_service: StartService) -> None:
    rs = await start_service()
    answer = await rs.call(
        "POST", ROUTE + "/flip", {"to": "green"}, token=None,
        headers={"Authorization": f"bearer {TOKEN}"},
    )  # fmt: skip
    assert answer.status == 200, answer.text


@pytest.mark.parametrize(("method", "path", "body"), WRITES, ids=WRITE_IDS)
async def test_every_write_is_403_when_no_token_is_configured(
    start_service: StartService, method: str, path: str, body: object
) -> None:
    rs = await start_service(token=None)
    for token in (None, "anything", ""):
        answer = await rs.call(method, path, body, token=token)
        error = assert_json_error(answer, 403)
        assert "token" in error["error"], error
    # Reads stay open on loopback.
    answer = await rs.call("GET", ROUTE, token=None)
    assert answer.status == 200, answer.text
    assert answer.body["version"] == 1
    assert set(await rs.backends_of(5)) == {"blue"}


# --- effect on the data plane --------------------------------------------------------------


async def test_a_change_is_in_effect_for_the_very_next_request(
    start_service: StartService,
) -> None:
    """The routing table is published before the API answers, so the first request sent
    after the answer is routed by the change: stronger than the issue's 10 ms budget, and
    not a timing test on a shared machine."""
    rs = await start_service()
    for i in range(40):
        pool = "green" if i % 2 == 0 else "blue"
        if i % 4 < 2:
            answer = await rs.call("POST", ROUTE + "/flip", {"to": pool})
        else:
            weights = {"blue": 0, "green": 0, pool: 1}
            answer = await rs.call("PUT", ROUTE + "/weights", {"weights": weights})
        assert answer.status == 200, answer.text
        assert await rs.backend_of_next_request(f"/after/{i}") == pool, f"change {i} to {pool}"


async def test_flips_under_concurrent_load_lose_nothing_and_land_on_the_live_pool(
    start_service: StartService,
) -> None:
    rs = await start_service()
    loop = asyncio.get_running_loop()
    workers = 8
    per_phase = 2 * workers  # requests started after each flip before the next flip
    results: list[tuple[float, int, str]] = []  # (started, status, X-Backend)
    failures: list[str] = []
    progress = asyncio.Condition()
    stop = asyncio.Event()

    async def load(worker: int) -> None:
        # One keep-alive connection per worker, reused across every flip.
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=LIMIT)
        ) as session:
            n = 0
            while not stop.is_set():
                started = loop.time()
                try:
                    async with session.get(f"{rs.proxy}/load/{worker}/{n}") as resp:
                        await resp.read()
                        results.append((started, resp.status, resp.headers.get("X-Backend", "")))
                except (aiohttp.ClientError, TimeoutError) as err:
                    failures.append(f"worker {worker} request {n}: {err!r}")
                n += 1
                async with progress:
                    progress.notify_all()

    def started_since(moment: float) -> int:
        return sum(1 for started, _, _ in results if started >= moment)

    async def wait_for_requests_since(moment: float) -> None:
        async with asyncio.timeout(LIMIT), progress:
            await progress.wait_for(lambda: started_since(moment) >= per_phase or bool(failures))

    flips: list[tuple[float, float, str]] = []  # (sent, answered, pool)
    tasks = [asyncio.create_task(load(w)) for w in range(workers)]
    try:
        await wait_for_requests_since(loop.time())
        for i in range(20):
            pool = "green" if i % 2 == 0 else "blue"
            sent = loop.time()
            answer = await rs.call("POST", ROUTE + "/flip", {"to": pool})
            answered = loop.time()
            assert answer.status == 200, answer.text
            assert answer.body["live"] == pool
            flips.append((sent, answered, pool))
            await wait_for_requests_since(answered)
    finally:
        stop.set()
        async with asyncio.timeout(LIMIT):
            await asyncio.gather(*tasks)

    assert failures == []
    assert [r for r in results if not 200 <= r[1] < 300] == []
    # Every request started after a flip answered, and before the next flip was sent, went to
    # the pool that flip made live; those before the first flip to blue.
    wrong: list[tuple[int, str, str]] = []
    checked = 0
    for started, _, backend in results:
        done = [k for k, (_, answered, _) in enumerate(flips) if answered <= started]
        k = done[-1] if done else -1
        if k + 1 < len(flips) and started >= flips[k + 1][0]:
            continue  # started while the next flip was in progress: either pool is right
        expected = flips[k][2] if k >= 0 else "blue"
        checked += 1
        if backend != expected:
            wrong.append((k, expected, backend))
    assert wrong == []
    assert checked >= 20 * per_phase
    assert {backend for _, _, backend in results} == {"blue", "green"}


# --- audit log and metrics -----------------------------------------------------------------


def break_the_state_file(path: Path) -> None:
    """Make the next save fail as it renames: the state path becomes a non-empty directory
    (works as root too, unlike a read-only directory)."""
    path.unlink(missing_ok=True)
    path.mkdir()
    (path / "in-the-way").write_text("x")


def mend_the_state_file(path: Path) -> None:
    """Undo break_the_state_file: the next save can write the file again."""
    (path / "in-the-way").unlink()
    path.rmdir()


async def test_a_change_that_cannot_be_saved_answers_500_and_is_not_made(
    start_service: StartService,
) -> None:
    rs = await start_service()
    assert (await rs.call("POST", ROUTE + "/flip", {"to": "blue"})).status == 200
    before = (await rs.call("GET", ROUTE)).body
    lines_before = rs.audit_path.read_text() if rs.audit_path.exists() else ""
    break_the_state_file(rs.state_path)

    answer = await rs.call("POST", ROUTE + "/flip", {"to": "green"})
    assert answer.status == 500, answer.text
    assert "could not be saved" in answer.body["error"]
    assert answer.body["detail"]["code"] == "state_not_saved"
    assert answer.body["detail"]["current_version"] == before["version"]
    after = (await rs.call("GET", ROUTE)).body
    assert after["version"] == before["version"] and after["live"] == "blue"
    assert set(await rs.backends_of(20)) == {"blue"}
    assert (rs.audit_path.read_text() if rs.audit_path.exists() else "") == lines_before

    # Once the file can be written again, the same change goes through with the next version.
    mend_the_state_file(rs.state_path)
    answer = await rs.call("POST", ROUTE + "/flip", {"to": "green"})
    assert answer.status == 200, answer.text
    assert answer.body["version"] == before["version"] + 1
    assert set(await rs.backends_of(20)) == {"green"}


async def test_each_change_appends_one_audit_line(start_service: StartService) -> None:
    rs = await start_service()
    steps: list[tuple[str, str, object]] = [
        ("weights", "PUT", {"weights": {"blue": 75, "green": 25}}),
        ("flip", "POST", {"to": "green"}),
        ("rollback", "POST", None),
    ]
    versions = []
    for action, method, body in steps:
        answer = await rs.call(method, f"{ROUTE}/{action}", body)
        assert answer.status == 200, answer.text
        versions.append(answer.body["version"])
    # Refused changes leave no line.
    assert (await rs.call("POST", ROUTE + "/flip", {"to": "purple"})).status == 404
    stale = await rs.call("POST", ROUTE + "/rollback", headers={"If-Match": "1"})
    assert stale.status == 409

    lines = rs.audit_path.read_text().splitlines()
    assert len(lines) == 3, lines
    records = [json.loads(line) for line in lines]
    for record in records:
        assert {"time", "actor", "action", "route", "before", "after", "version"} <= set(record)
        assert record["route"] == "shop"
        assert isinstance(record["time"], str) and record["time"]
        assert isinstance(record["actor"], str) and record["actor"]
        assert TOKEN not in json.dumps(record)
    assert [r["action"] for r in records] == ["weights", "flip", "rollback"]
    assert [r["version"] for r in records] == versions == [2, 3, 4]
    endpoints = {"blue": [rs.blue.address], "green": [rs.green.address]}
    initial = {"weights": {"blue": 100, "green": 0}, "live": "blue", "shadows": {}}
    split = {"weights": {"blue": 75, "green": 25}, "live": None, "shadows": {}}
    flipped = {"weights": {"blue": 0, "green": 100}, "live": "green", "shadows": {}}
    for assignment in (initial, split, flipped):
        assignment["endpoints"] = endpoints
    assert [(r["before"], r["after"]) for r in records] == [
        (initial, split),
        (split, flipped),
        (flipped, split),
    ]


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def test_metrics_show_version_and_flips_and_rollbacks_by_route(
    start_service: StartService,
) -> None:
    rs = await start_service()

    async def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        answer = await rs.call("GET", "/metrics", token=None)
        assert answer.status == 200, answer.text
        return metric_samples(answer.text)

    shop = (("route", "shop"),)
    samples = await scrape()
    assert samples[("pointsman_state_version", ())] == 1
    assert samples[("pointsman_flips_total", shop)] == 0
    assert samples[("pointsman_rollbacks_total", shop)] == 0

    for body in ({"to": "green"}, {"to": "blue"}, {"to": "green"}):
        assert (await rs.call("POST", ROUTE + "/flip", body)).status == 200
    answer = await rs.call("POST", ROUTE + "/rollback")
    assert answer.status == 200
    version = answer.body["version"]

    samples = await scrape()
    assert samples[("pointsman_state_version", ())] == version == 5
    assert samples[("pointsman_flips_total", shop)] == 3
    assert samples[("pointsman_rollbacks_total", shop)] == 1
    assert samples[("pointsman_state_last_change_timestamp_seconds", ())] == pytest.approx(
        answer.body["changed_at"]
    )


async def test_fleet_requests_on_a_single_host_say_it_is_not_a_fleet(
    start_service: StartService,
) -> None:
    rs = await start_service()
    answer = await rs.call("POST", ROUTE + "/flip?wait=fleet", {"to": "green"})
    body = assert_json_error(answer, 400)
    assert body["detail"]["code"] == "not_a_fleet" and "state.store: etcd" in body["error"]
    assert await rs.backend_of_next_request() == "blue"  # nothing changed
    body = assert_json_error(await rs.call("GET", "/v1/fleet"), 404)
    assert body["detail"]["code"] == "not_a_fleet"


async def test_wait_is_read_only_after_the_token(start_service: StartService) -> None:
    # ?wait on a write is checked by a middleware before the handler: it must refuse an
    # unknown caller as the handler would (401/403), not tell it about its query (400).
    rs = await start_service()
    flip = ROUTE + "/flip?wait=soon"
    assert_json_error(await rs.call("POST", flip, {"to": "green"}, token=None), 401)
    assert_json_error(await rs.call("POST", flip, {"to": "green"}, token="wrong"), 403)
    body = assert_json_error(await rs.call("POST", flip, {"to": "green"}), 400)
    assert body["detail"]["code"] == "bad_query"
    assert await rs.backend_of_next_request() == "blue"  # nothing changed


async def test_a_wrong_method_is_405_with_the_methods_the_path_takes(
    start_service: StartService,
) -> None:
    rs = await start_service()
    answer = await rs.call("GET", ROUTE + "/flip")
    assert_json_error(answer, 405)
    assert answer.headers["Allow"] == "POST"
