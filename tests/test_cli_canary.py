"""`pointsman canary` and `pointsman rollout` (and their AdminClient calls) against a stand-in
control API: an aiohttp app on 127.0.0.1 that implements the rollout contract with the real
state machine of control/rollout.py (parse_spec, start, tick, the commands, status_obj) on a
fake clock, so the status objects the CLI reads have the documented shape.

The fake clock advances `advance` seconds on every GET of a rollout, and the route gets
`requests` more requests by then, split by the weights (`error_rates` of them errors): a
`canary --wait` walks through the steps in a few polls. The CLI runs in-process
(`control.cli.main` in a thread, so the stand-in keeps serving) with the poll interval patched
to nothing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

import control.cli as cli
import control.cli.canary as cli_canary
import control.rollout as machine
from control.client import AdminClient
from tests.conftest import free_port, serve_app

TOKEN = "canary-token"
WALL = 1_700_000_000.0
BOUNDS = (0.005, 0.01, 0.05, 0.1)
# The ramp most tests start: three steps of 10 s, analysed every 5 s, so with the clock moving
# 5 s per poll a step takes two polls (analysis, then analysis + advance).
RAMP = ["--steps", "25,50,100", "--interval", "10s", "--analysis-interval", "5s"]
RAMP += ["--min-requests", "100"]


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeRolloutApi:
    """GET /v1/routes/{route}, and the rollout endpoints of the contract, in memory."""

    weights: dict[str, int] = field(default_factory=lambda: {"blue": 100, "green": 0, "dark": 0})
    # Seconds of fake time per GET of a rollout, the route's requests meanwhile (split by the
    # weights), and the share of each pool's answers that are errors.
    advance: float = 5.0
    requests: int = 1000
    error_rates: dict[str, float] = field(default_factory=dict)
    # Called with (the fake, number of the GET) before a GET of the rollout answers: what an
    # operator or the admin server does meanwhile.
    on_get: Callable[[FakeRolloutApi, int], None] | None = None
    # GETs of the rollout that get their connection closed without an answer.
    drop_gets: bool = False
    seen: list[Seen] = field(default_factory=list)
    rollout: machine.Rollout | None = None
    clock: float = 1000.0
    gets: int = 0
    counts: dict[str, list[int]] = field(default_factory=dict)
    runner: web.AppRunner | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def posts(self) -> list[Seen]:
        return [s for s in self.seen if s.method == "POST"]

    async def start(self) -> FakeRolloutApi:
        app = web.Application(middlewares=[self._record])
        app.router.add_get("/v1/routes/{route}", self._route)
        app.router.add_post("/v1/routes/{route}/rollout", self._start)
        app.router.add_get("/v1/routes/{route}/rollout", self._status)
        app.router.add_post("/v1/routes/{route}/rollout/{command}", self._command)
        self.runner, self.port = await serve_app(app)
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    # --- plumbing

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        raw = await request.read()
        self.seen.append(
            Seen(
                request.method,
                request.path,
                dict(request.headers),
                json.loads(raw) if raw else None,
            )
        )
        try:
            response: web.StreamResponse = await handler(request)
        except machine.RolloutError as err:
            return self._answer({"error": err.message, "detail": {"code": err.code}}, err.status)
        except web.HTTPException as err:
            return self._answer({"error": err.reason, "detail": None}, err.status)
        return response

    def _answer(self, body: object, status: int = 200) -> web.Response:
        return web.json_response(body, status=status, headers={"ETag": '"7"'})

    def _check_route(self, request: web.Request) -> None:
        if request.match_info["route"] != "shop":
            raise web.HTTPNotFound(reason=f"unknown route '{request.match_info['route']}'")

    def _authorize(self, request: web.Request) -> None:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            raise web.HTTPUnauthorized(reason="missing bearer token")

    @property
    def wall(self) -> float:
        return WALL + self.clock - 1000.0

    def _counters(self) -> machine.Counters:
        pools = {
            pool: machine.PoolCounters(requests, errors, (requests,) * (len(BOUNDS) + 1))
            for pool, (requests, errors) in self.counts.items()
        }
        return machine.Counters(pools, BOUNDS)

    def _status_obj(self) -> dict[str, Any]:
        assert self.rollout is not None
        return machine.status_obj(self.rollout, self.clock)

    def _apply(self, decision: machine.Decision) -> None:
        self.rollout = decision.rollout
        if decision.weights is not None:
            self.weights = dict(decision.weights)

    def _current(self) -> machine.Rollout:
        if self.rollout is None:
            raise machine.RolloutError("no_rollout", "route 'shop' has no rollout")
        return self.rollout

    # --- handlers

    async def _route(self, request: web.Request) -> web.Response:
        self._check_route(request)
        return self._answer({"name": "shop", "version": 7, "weights": self.weights})

    async def _start(self, request: web.Request) -> web.Response:
        self._authorize(request)
        self._check_route(request)
        if self.rollout is not None and self.rollout.phase not in machine.FINISHED:
            raise machine.RolloutError(
                "rollout_exists", "a rollout is already running on route 'shop'"
            )
        spec = machine.parse_spec(await request.json(), list(self.weights))
        self.counts = {pool: [0, 0] for pool in self.weights}
        decision = machine.start(
            spec, self.weights, list(self.weights), self._counters(), self.clock, WALL
        )
        self._apply(decision)
        return self._answer(self._status_obj(), 201)

    async def _status(self, request: web.Request) -> web.StreamResponse:
        self._check_route(request)
        if self.drop_gets:
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        rollout = self._current()
        self.gets += 1
        self.clock += self.advance
        for pool, weight in self.weights.items():
            requests = self.requests * weight // 100
            self.counts[pool][0] += requests
            self.counts[pool][1] += round(requests * self.error_rates.get(pool, 0.0))
        if self.on_get is not None:
            self.on_get(self, self.gets)
            rollout = self._current()
        wall = self.wall
        for _ in range(10):  # what the server's runner does: every tick that is due
            if machine.due(rollout, self.clock) > self.clock:
                break
            decision = machine.tick(rollout, self._counters(), self.clock, wall)
            self._apply(decision)
            rollout = decision.rollout
        self.rollout = rollout
        return self._answer(self._status_obj())

    async def _command(self, request: web.Request) -> web.Response:
        self._authorize(request)
        self._check_route(request)
        rollout = self._current()
        wall = self.wall
        command = request.match_info["command"]
        if command == "pause":
            decision = machine.pause(rollout, self.clock, wall)
        elif command == "resume":
            decision = machine.resume(rollout, self._counters(), self.clock, wall)
        elif command == "promote":
            decision = machine.promote(rollout, self.clock, wall)
        elif command == "abort":
            decision = machine.abort(rollout, self.clock, wall)
        else:
            raise web.HTTPNotFound(reason=f"unknown rollout command '{command}'")
        self._apply(decision)
        return self._answer(self._status_obj())


@pytest.fixture
async def api() -> AsyncIterator[FakeRolloutApi]:
    fake = await FakeRolloutApi().start()
    yield fake
    await fake.stop()


@pytest.fixture(autouse=True)
def _cli_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POINTSMAN_TOKEN", TOKEN)
    monkeypatch.delenv("POINTSMAN_ADMIN", raising=False)
    monkeypatch.setattr(cli_canary, "WAIT_POLL_INTERVAL", 0.0)


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


async def pointsman(capsys: pytest.CaptureFixture[str], *args: str, admin: str) -> Run:
    """`pointsman --admin ADMIN ARGS...` in-process, in a thread (the stand-in keeps serving)."""

    def run() -> int:
        try:
            return cli.main(["--admin", admin, *args])
        except SystemExit as stop:  # argparse's usage errors
            return int(stop.code or 0)

    capsys.readouterr()
    async with asyncio.timeout(10):
        code = await asyncio.to_thread(run)
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return Run(code, out, err)


def start(api: FakeRolloutApi, **spec: Any) -> None:
    """Start a rollout directly (as another operator would have)."""
    body: dict[str, Any] = {
        "candidate": "green",
        "stable": "blue",
        "steps": [25, 50, 100],
        "step_interval": "10s",
        "analysis": {"interval": "5s", "min_requests": 100},
    }
    parsed = machine.parse_spec({**body, **spec}, list(api.weights))
    api.counts = {pool: [0, 0] for pool in api.weights}
    api._apply(
        machine.start(parsed, api.weights, list(api.weights), api._counters(), api.clock, WALL)
    )


# --- canary: the request --------------------------------------------------------------------


async def test_canary_sends_only_the_options_given(
    api: FakeRolloutApi, capsys: pytest.CaptureFixture[str]
) -> None:
    run = await pointsman(
        capsys, "canary", "shop", "green", "--stable", "blue", "--steps", "1,5,25,50,100",
        "--interval", "30s", admin=api.url,
    )  # fmt: skip
    assert (run.code, run.err) == (0, "")
    assert run.out == (
        "shop: canary of green started (steps 1,5,25,50,100 every 30s; stable blue)\n"
    )
    [post] = api.seen
    assert (post.method, post.path) == ("POST", "/v1/routes/shop/rollout")
    assert post.body == {
        "candidate": "green",
        "stable": "blue",
        "steps": [1, 5, 25, 50, 100],
        "step_interval": "30s",
    }
    assert post.headers["Authorization"] == f"Bearer {TOKEN}"
    assert post.headers["Content-Type"] == "application/json"


async def test_canary_sends_every_option_with_its_type(
    api: FakeRolloutApi, capsys: pytest.CaptureFixture[str]
) -> None:
    run = await pointsman(
        capsys, "canary", "shop", "green", "--stable", "blue", "--steps", " 1, 5,25 ,50",
        "--interval", "2m", "--analysis-interval", "500ms", "--min-requests", "200",
        "--max-error-rate", "0.01", "--max-error-rate-vs-stable", "2",
        "--max-p99-ms", "500", "--max-p99-vs-stable", "1.5", "--max-mismatch-rate", "0.05",
        "--failure-limit", "3", "--on-inconclusive", "wait", "--max-weight", "50",
        "--webhook", "http://hooks.example/events", "--confirm-url", "https://ok.example/",
        admin=api.url,
    )  # fmt: skip
    assert (run.code, run.err) == (0, "")
    # Durations go as typed: the server reads them with the same parser the CLI checked them
    # with. Counts are integers, rates and factors numbers.
    body = api.posts[0].body
    assert body == {
        "candidate": "green",
        "stable": "blue",
        "steps": [1, 5, 25, 50],
        "step_interval": "2m",
        "analysis": {
            "interval": "500ms",
            "min_requests": 200,
            "max_error_rate": 0.01,
            "max_error_rate_vs_stable": 2,
            "max_p99_ms": 500,
            "max_p99_vs_stable": 1.5,
            "max_mismatch_rate": 0.05,
            "failure_limit": 3,
        },
        "on_inconclusive": "wait",
        "max_weight": 50,
        "webhooks": {"url": "http://hooks.example/events", "confirm_url": "https://ok.example/"},
    }
    assert [type(body["analysis"][k]) for k in ("min_requests", "max_error_rate")] == [int, float]
    # The answer's steps (capped at max_weight by the server) and interval are what is shown.
    assert run.out == "shop: canary of green started (steps 1,5,25,50 every 2m; stable blue)\n"


async def test_canary_picks_the_heaviest_other_pool_as_stable(
    api: FakeRolloutApi, capsys: pytest.CaptureFixture[str]
) -> None:
    api.weights = {"dark": 5, "green": 0, "blue": 90, "twin": 5}
    run = await pointsman(capsys, "canary", "shop", "green", *RAMP, admin=api.url)
    assert (run.code, run.err) == (0, "")
    assert [(s.method, s.path) for s in api.seen] == [
        ("GET", "/v1/routes/shop"),
        ("POST", "/v1/routes/shop/rollout"),
    ]
    assert api.posts[0].body["stable"] == "blue"
    assert run.out.endswith("; stable blue)\n")


async def test_canary_without_a_stable_pool_to_pick_is_a_usage_error(
    api: FakeRolloutApi, capsys: pytest.CaptureFixture[str]
) -> None:
    api.weights = {"blue": 0, "green": 100}
    run = await pointsman(capsys, "canary", "shop", "green", *RAMP, admin=api.url)
    assert (run.code, run.out) == (2, "")
    assert "name the stable pool with --stable" in run.err
    assert api.posts == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "1,5,x"], "argument --steps: expected increasing integer percents"),
        (["--steps", "0,50"], "argument --steps: expected increasing integer percents"),
        (["--steps", "5,101"], "argument --steps: expected increasing integer percents"),
        (["--steps", "1,,5"], "argument --steps: expected increasing integer percents"),
        (["--steps", "25,5"], "argument --steps: steps must increase (5 after 25)"),
        (["--interval", "30x"], "argument --interval: expected a duration like 30s"),
        (["--interval", "0s"], "argument --interval: expected a duration > 0"),
        (["--analysis-interval", "-5s"], "argument --analysis-interval: expected a duration"),
        (["--analysis-interval", "1m"], "--analysis-interval 1m must not exceed --interval 30s"),
        (["--max-error-rate", "lots"], "argument --max-error-rate: expected a number"),
        (["--max-error-rate", "5"], "argument --max-error-rate: expected a rate between 0 and 1"),
        (["--max-p99-vs-stable", "0.5"], "argument --max-p99-vs-stable: expected a factor >= 1"),
        (["--max-p99-ms", "nan"], "argument --max-p99-ms: expected a finite number"),
        (["--min-requests", "0"], "argument --min-requests: expected a positive integer"),
        (["--max-weight", "150"], "argument --max-weight: expected an integer percent"),
        (["--on-inconclusive", "skip"], "argument --on-inconclusive: invalid choice"),
        (["--webhook", "hooks.example"], "argument --webhook: expected an http:// or https://"),
        (["--stable", "green"], "--stable must differ from the candidate"),
    ],
)
async def test_canary_usage_errors_exit_2_and_send_nothing(
    api: FakeRolloutApi, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    base = {"--steps": "1,5,25", "--interval": "30s"}
    for option, value in zip(args[::2], args[1::2], strict=True):
        base[option] = value
    argv = [f"{option}={value}" for option, value in base.items()]  # "=": values like -5s
    run = await pointsman(capsys, "canary", "shop", "green", *argv, admin=api.url)
    assert (run.code, run.out) == (2, "")
    assert run.err.startswith("usage: pointsman canary")
    assert f"pointsman canary: error: {message}" in run.err
    assert api.seen == []


async def test_canary_steps_and_interval_are_required(
    api: FakeRolloutApi, capsys: pytest.CaptureFixture[str]
) -> None:
    run = await pointsman(capsys, "canary", "shop", "green", "--steps", "5,100", admin=api.url)
    assert run.code == 2
    assert "the following arguments are required: --interval" in run.err
    assert api.seen == []


# --- canary: refusals and connection errors -------------------------------------------------


async def test_canary_refused_because_a_rollout_runs_exits_1_with_one_line(
    api: FakeRolloutApi, capsys: pytest.CaptureFixture[str]
) -> None:
    start(api)
    run = await pointsman(capsys, "canary", "shop", "green", *RAMP, "--wait", admin=api.url)
    assert (run.code, run.out) == (1, "")
    assert run.err == "pointsman: 409 a rollout is already running on route 'shop'\n"


async def test_canary_refused_by_the_spec_check_names_the_key(
    api: FakeRolloutApi, capsys: pytest.CaptureFixture[str]
) -> None:
    run = await pointsman(
        capsys, "canary", "shop", "green", *RAMP, "--max-p99-vs-stable", "5000", "--json",
        admin=api.url,
    )  # fmt: skip
    assert run.code == 1
    assert run.err == (
        "pointsman: 400 analysis.max_p99_vs_stable: expected a number between 1 and 1000, "
        "got 5000\n"
    )
    assert run.json()["detail"] == {"code": "bad_rollout"}  # --json prints the refusal's body


async def test_canary_unknown_pool_or_route_exits_1(
    api: FakeRolloutApi, capsys: pytest.CaptureFixture[str]
) -> None:
    run = await pointsman(
        capsys, "canary", "shop", "gren", *RAMP, "--stable", "blue", admin=api.url
    )
    assert (run.code, run.out) == (1, "")
    assert run.err.startswith('pointsman: 404 candidate: the route has no pool "gren"')
    # Without --stable the route is read first; an unknown route ends it there.
    run = await pointsman(capsys, "canary", "nope", "green", *RAMP, admin=api.url)
    assert (run.code, run.err) == (1, "pointsman: 404 unknown route 'nope'\n")
    assert [s.method for s in api.seen] == ["POST", "GET"]


async def test_canary_without_a_token_is_refused_with_a_hint(
    api: FakeRolloutApi, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("POINTSMAN_TOKEN")
    run = await pointsman(
        capsys, "canary", "shop", "green", "--stable", "blue", *RAMP, admin=api.url
    )
    assert (run.code, run.err) == (
        1,
        "pointsman: 401 missing bearer token (POINTSMAN_TOKEN is not set)\n",
    )


@pytest.mark.parametrize("stable", [[], ["--stable", "blue"]])
async def test_canary_with_the_admin_unreachable_exits_2(
    capsys: pytest.CaptureFixture[str], stable: list[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    run = await pointsman(capsys, "canary", "shop", "green", *stable, *RAMP, "--wait", admin=url)
    assert (run.code, run.out) == (2, "")
    assert run.err == f"pointsman: cannot reach admin API at {url}: Connection refused\n"


# --- canary --wait --------------------------------------------------------------------------

PASS = (
    "analysis pass: candidate {c} req, 0.0% errors, p99 4.95 ms; "
    "stable {s} req, 0.0% errors, p99 4.95 ms"
)


def windows(candidate: str, stable: str) -> str:
    """The two windows of a passed analysis in a progress line (a pool without requests in the
    window shows only its count)."""
    rest = ", 0.0% errors, p99 4.95 ms"
    return f"candidate {candidate} req{rest}; stable {stable} req" + (rest if stable != "0" else "")


async def test_canary_wait_follows_the_steps_to_promotion(
    api: FakeRolloutApi, capsys: pytest.CaptureFixture[str]
) -> None:
    run = await pointsman(capsys, "canary", "shop", "green", *RAMP, "--wait", admin=api.url)
    assert (run.code, run.err) == (0, "")
    # A line per step and per analysis; the analysis that ends a step shows on the next
    # step's first line, labelled with the step it judged.
    assert run.out.splitlines() == [
        "shop: canary of green started (steps 25,50,100 every 10s; stable blue)",
        "shop: step 1/3 green=25 blue=75  0.0s/10s in step",
        f"shop: step 1/3 green=25 blue=75  5.0s/10s in step  "
        f"analysis pass: {windows('250', '750')}",
        "shop: step 2/3 green=50 blue=50  0.0s/10s in step  "
        f"analysis pass (step 1/3): {windows('250', '750')}",
        f"shop: step 2/3 green=50 blue=50  5.0s/10s in step  "
        f"analysis pass: {windows('500', '500')}",
        "shop: step 3/3 green=100 blue=0  0.0s/10s in step  "
        f"analysis pass (step 2/3): {windows('500', '500')}",
        "shop: step 3/3 green=100 blue=0  5.0s/10s in step  "
        f"analysis pass: {windows('1,000', '0')}",
        "shop: green promoted (100 %)",
    ]
    assert api.weights == {"blue": 0, "green": 100, "dark": 0}
    # After the start only reads, one per poll, none after the rollout finished.
    assert [s.method for s in api.seen] == ["GET", "POST"] + ["GET"] * 6


async def test_canary_wait_exits_1_with_the_reason_when_rolled_back(
    api: FakeRolloutApi, capsys: pytest.CaptureFixture[str]
) -> None:
    api.error_rates = {"green": 0.1}
    run = await pointsman(capsys, "canary", "shop", "green", *RAMP, "--wait", admin=api.url)
    assert (run.code, run.err) == (1, "")
    failed = "error_rate 0.1 > 0.01; error_rate_vs_stable 0.1 > 0"
    assert run.out.splitlines()[2:] == [
        "shop: step 1/3 green=25 blue=75  5.0s/10s in step  analysis FAIL (1 of 2 in a row): "
        f"{failed}; candidate 250 req, 10.0% errors, p99 4.95 ms; "
        "stable 750 req, 0.0% errors, p99 4.95 ms",
        "shop: canary of green rolled back: rolled back at step 1/3 (25 %): analysis failed 2 "
        f"times in a row; last: {failed}",
    ]
    assert api.weights == {"blue": 100, "green": 0, "dark": 0}


async def test_canary_wait_exits_1_when_aborted(
    api: FakeRolloutApi, capsys: pytest.CaptureFixture[str]
) -> None:
    def operator(fake: FakeRolloutApi, get: int) -> None:
        if get == 2:
            fake._apply(machine.abort(fake._current(), fake.clock, fake.wall, "aborted by alice"))

    api.on_get = operator
    run = await pointsman(capsys, "canary", "shop", "green", *RAMP, "--wait", admin=api.url)
    assert (run.code, run.err) == (1, "")
    assert run.out.splitlines()[-1] == "shop: canary of green aborted: aborted by alice"
    assert api.gets == 2


async def test_canary_wait_keeps_waiting_while_paused_and_says_so_once(
    api: FakeRolloutApi, capsys: pytest.CaptureFixture[str]
) -> None:
    def operator(fake: FakeRolloutApi, get: int) -> None:
        if get == 2:
            fake._apply(machine.pause(fake._current(), fake.clock, fake.wall, "paused by bob"))
        if get == 5:
            fake._apply(machine.resume(fake._current(), fake._counters(), fake.clock, fake.wall))

    api.on_get = operator
    run = await pointsman(capsys, "canary", "shop", "green", *RAMP, "--wait", admin=api.url)
    assert (run.code, run.err) == (0, "")
    lines = run.out.splitlines()
    paused = [line for line in lines if "paused" in line]
    assert paused == [
        "shop: paused at step 1/3 green=25 blue=75: paused by bob (still waiting; "
        "`pointsman rollout shop resume` continues it)"
    ]
    assert lines[lines.index(paused[0]) + 1] == "shop: step 1/3 green=25 blue=75  10.0s/10s in step"
    assert lines[-1] == "shop: green promoted (100 %)"
    assert api.gets > 5


async def test_canary_wait_shows_the_wait_for_the_confirm_hook(
    api: FakeRolloutApi, capsys: pytest.CaptureFixture[str]
) -> None:
    def hook(fake: FakeRolloutApi, get: int) -> None:
        if get == 4:  # the confirm hook answers two polls after it was asked
            decision = machine.confirmed(
                fake._current(), True, "ok", fake._counters(), fake.clock, fake.wall
            )
            fake._apply(decision)

    api.on_get = hook
    run = await pointsman(
        capsys, "canary", "shop", "green", "--steps", "50,100", "--interval", "10s",
        "--analysis-interval", "5s", "--confirm-url", "http://ci.example/ok", "--wait",
        admin=api.url,
    )  # fmt: skip
    assert (run.code, run.err) == (0, "")
    assert api.posts[0].body["webhooks"] == {"confirm_url": "http://ci.example/ok"}
    waiting = "shop: step 1/2 green=50 blue=50  waiting for the confirm hook before the final step"
    assert run.out.splitlines().count(waiting) == 1
    assert run.out.splitlines()[-1] == "shop: green promoted (100 %)"


async def test_canary_wait_rides_out_a_server_error(
    api: FakeRolloutApi, capsys: pytest.CaptureFixture[str]
) -> None:
    def flaky(fake: FakeRolloutApi, get: int) -> None:
        if get in (2, 3):
            raise web.HTTPServiceUnavailable(reason="busy")

    api.on_get = flaky
    run = await pointsman(capsys, "canary", "shop", "green", *RAMP, "--wait", admin=api.url)
    assert (run.code, run.err) == (0, "")
    assert run.out.splitlines()[-1] == "shop: green promoted (100 %)"


async def test_canary_wait_gives_up_with_exit_2_when_the_admin_goes_away(
    api: FakeRolloutApi, capsys: pytest.CaptureFixture[str]
) -> None:
    def vanish(fake: FakeRolloutApi, get: int) -> None:
        fake.drop_gets = True

    api.on_get = vanish
    run = await pointsman(capsys, "canary", "shop", "green", *RAMP, "--wait", admin=api.url)
    assert run.code == 2
    assert run.err == (
        f"pointsman: cannot reach admin API at {api.url}: connection closed without an answer "
        f"({cli_canary.WAIT_POLL_FAILURES} polls in a row); stopped waiting, the rollout may "
        "still be running server-side\n"
    )
    polls = [s for s in api.seen if s.path == "/v1/routes/shop/rollout" and s.method == "GET"]
    assert len(polls) == 1 + cli_canary.WAIT_POLL_FAILURES


async def test_canary_wait_json_prints_the_final_status_and_progress_on_stderr(
    api: FakeRolloutApi, capsys: pytest.CaptureFixture[str]
) -> None:
    run = await pointsman(
        capsys, "canary", "shop", "green", *RAMP, "--wait", "--json", admin=api.url
    )
    assert run.code == 0
    status = run.json()
    assert (status["phase"], status["percent"], status["weights"]["green"]) == (
        "promoted",
        100,
        100,
    )
    assert status == api._status_obj()
    err = run.err.splitlines()
    assert err[0] == "shop: canary of green started (steps 25,50,100 every 10s; stable blue)"
    assert err[-1] == "shop: green promoted (100 %)"


async def test_canary_json_without_wait_prints_the_start_answer(
    api: FakeRolloutApi, capsys: pytest.CaptureFixture[str]
) -> None:
    run = await pointsman(capsys, "canary", "shop", "green", *RAMP, "--json", admin=api.url)
    assert (run.code, run.err) == (0, "")
    assert run.json() == api._status_obj()
    assert (run.json()["phase"], run.json()["step"]) == ("running", 0)


async def test_ctrl_c_while_waiting_leaves_the_rollout_running(
    api: FakeRolloutApi, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_canary, "_sleep", interrupt)
    run = await pointsman(capsys, "canary", "shop", "green", *RAMP, "--wait", admin=api.url)
    assert run.code == 130
    assert run.out.splitlines() == [
        "shop: canary of green started (steps 25,50,100 every 10s; stable blue)",
        "shop: step 1/3 green=25 blue=75  0.0s/10s in step",
    ]
    assert run.err == (
        "pointsman: stopped waiting; the rollout continues server-side "
        "(`pointsman rollout shop` shows it, `... abort` stops it)\n"
    )
    assert api.rollout is not None and api.rollout.phase == "running"


# --- rollout --------------------------------------------------------------------------------


async def test_rollout_status_lines(
    api: FakeRolloutApi, capsys: pytest.CaptureFixture[str]
) -> None:
    start(api, analysis={"interval": "5s", "min_requests": 100, "max_p99_ms": 250})
    api.error_rates = {"green": 0.1}
    run = await pointsman(capsys, "rollout", "shop", admin=api.url)
    assert (run.code, run.err) == (0, "")
    assert run.out.splitlines() == [
        "shop: canary of green against blue: running, step 1/3 (25 %)",
        "  weights   blue=75 green=25 dark=0",
        "  in step   5.0s of 10s, next analysis in 5.0s",
        "  failures  1 in a row (limit 2)",
        "  analysis  fail at 2023-11-14 22:13:25Z: error_rate 0.1 > 0.01; "
        "error_rate_vs_stable 0.1 > 0",
        "    error_rate                0.1 (0.01)     FAIL",
        "    error_rate_vs_stable      0.1 (0)        FAIL",
        "    p99_ms                   4.95 (250)      ok",
        "    p99_vs_stable_ms         4.95 (-)        -  off (max_p99_vs_stable not set)",
        "    mismatch_rate               - (-)        -  off",
        "  history   (newest 1 of 1)",
        "    2023-11-14 22:13:20Z  start  blue=75 green=25 dark=0  "
        "green against blue, steps 25, 50, 100 %",
    ]


async def test_rollout_status_of_a_paused_rollout_shows_the_reason_and_recent_history(
    api: FakeRolloutApi, capsys: pytest.CaptureFixture[str]
) -> None:
    start(api)
    for _ in range(2):
        api._apply(machine.pause(api._current(), api.clock, api.wall, "paused by dave"))
        api._apply(machine.resume(api._current(), api._counters(), api.clock, api.wall))
    api._apply(machine.pause(api._current(), api.clock, api.wall, "paused by carol"))
    api.advance = 0.0
    run = await pointsman(capsys, "rollout", "shop", admin=api.url)
    assert run.code == 0
    lines = run.out.splitlines()
    assert lines[0] == "shop: canary of green against blue: paused, step 1/3 (25 %)"
    assert "  in step   0.0s of 10s" in lines  # no next analysis while paused
    assert "  analysis  none yet" in lines
    assert "  reason    paused by carol" in lines
    history = lines[lines.index("  history   (newest 5 of 6)") + 1 :]
    assert [line.split()[2] for line in history] == [
        "paused", "resumed", "paused", "resumed", "paused",
    ]  # fmt: skip
    assert history[-1].endswith("  paused  blue=75 green=25 dark=0  paused by carol")


async def test_rollout_json_is_the_answer(
    api: FakeRolloutApi, capsys: pytest.CaptureFixture[str]
) -> None:
    start(api)
    run = await pointsman(capsys, "rollout", "shop", "--json", admin=api.url)
    assert run.code == 0
    assert run.json() == api._status_obj()
    assert [(s.method, s.path) for s in api.seen] == [("GET", "/v1/routes/shop/rollout")]


async def test_rollout_actions_post_and_print_one_line(
    api: FakeRolloutApi, capsys: pytest.CaptureFixture[str]
) -> None:
    start(api)
    expected = [
        ("pause", 0, "shop: rollout of green paused at step 1/3 (green=25 blue=75)\n", ""),
        ("pause", 1, "", "pointsman: 409 the rollout is already paused\n"),
        ("resume", 0, "shop: rollout of green resumed at step 1/3 (green=25 blue=75)\n", ""),
        ("promote", 0, "shop: green promoted (100 %)\n", ""),
        ("abort", 1, "", "pointsman: 409 the rollout has finished (promoted); cannot abort\n"),
    ]
    for action, code, out, err in expected:
        run = await pointsman(capsys, "rollout", "shop", action, admin=api.url)
        assert (run.code, run.out, run.err) == (code, out, err), action
        seen = api.seen[-1]
        assert (seen.method, seen.path, seen.body) == (
            "POST",
            f"/v1/routes/shop/rollout/{action}",
            None,
        )
        assert seen.headers["Authorization"] == f"Bearer {TOKEN}"
    assert api.weights == {"blue": 0, "green": 100, "dark": 0}


async def test_rollout_abort_line_and_json(
    api: FakeRolloutApi, capsys: pytest.CaptureFixture[str]
) -> None:
    start(api)
    run = await pointsman(capsys, "rollout", "shop", "abort", "--json", admin=api.url)
    assert run.code == 0
    assert (run.json()["phase"], run.json()["reason"]) == ("aborted", "aborted by command")
    start(api)
    run = await pointsman(capsys, "rollout", "shop", "abort", admin=api.url)
    assert run.out == "shop: canary of green aborted (green=0 blue=100)\n"


async def test_rollout_refusals_and_errors(
    api: FakeRolloutApi, capsys: pytest.CaptureFixture[str]
) -> None:
    run = await pointsman(capsys, "rollout", "shop", admin=api.url)
    assert (run.code, run.out, run.err) == (1, "", "pointsman: 404 route 'shop' has no rollout\n")
    run = await pointsman(capsys, "rollout", "shop", "pause", admin=api.url)
    assert (run.code, run.err) == (1, "pointsman: 404 route 'shop' has no rollout\n")
    run = await pointsman(capsys, "rollout", "shop", "restart", admin=api.url)
    assert run.code == 2
    assert "argument action: invalid choice: 'restart'" in run.err
    url = f"http://127.0.0.1:{free_port()}"
    for args in (["rollout", "shop"], ["rollout", "shop", "resume"]):
        run = await pointsman(capsys, *args, admin=url)
        assert (run.code, run.out) == (3, "")
        assert run.err == f"pointsman: cannot reach admin API at {url}: Connection refused\n"


# --- AdminClient and help -------------------------------------------------------------------


async def test_client_rollout_calls(api: FakeRolloutApi) -> None:
    client = AdminClient(api.url, TOKEN)
    spec = {"candidate": "green", "stable": "blue", "steps": [50, 100], "step_interval": 10}
    reply = await asyncio.to_thread(client.start_rollout, "shop", spec)
    assert (reply.status, reply.etag, reply.body["steps"]) == (201, "7", [50, 100])
    assert api.seen[-1].body == spec
    reply = await asyncio.to_thread(client.rollout, "shop")
    assert (reply.status, reply.body["phase"]) == (200, "running")
    reply = await asyncio.to_thread(client.rollout_command, "shop", "pause")
    assert (reply.status, reply.body["phase"]) == (200, "paused")
    assert (api.seen[-1].path, api.seen[-1].body) == ("/v1/routes/shop/rollout/pause", None)
    reply = await asyncio.to_thread(client.rollout, "a/b")
    assert reply.status == 404
    with pytest.raises(ValueError, match="unknown rollout command"):
        client.rollout_command("shop", "restart")


def test_help_documents_the_canary_exit_codes() -> None:
    parser = cli.build_parser()
    text = parser.format_help()
    assert "status, weights, flip, rollback, diffs, rollout:" in text
    assert "canary:" in text and "130  interrupted while waiting" in text
    sub = parser._subparsers
    assert sub is not None
    [choices] = [a.choices for a in sub._group_actions if isinstance(a.choices, dict)]
    canary = choices["canary"].format_help()
    assert "2 usage error, or the admin\nAPI could not be reached" in canary
    assert "largest weight" in canary
    assert "3 the admin API could not be reached" in choices["rollout"].format_help()
