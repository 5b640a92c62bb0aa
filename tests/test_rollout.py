"""The canary rollout state machine: spec parsing, windows, analysis, the ramp on a fake clock,
commands, the confirm hook and persistence. Pure: no sockets, no sleeps."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control.rollout import (
    HISTORY_LIMIT,
    RELATIVE_MIN_ERRORS,
    AnalysisSpec,
    Counters,
    Decision,
    MismatchCounters,
    MismatchWindow,
    PoolCounters,
    PoolWindow,
    Rollout,
    RolloutError,
    RolloutSpec,
    abort,
    analyse,
    confirmed,
    counters_from_obj,
    counters_obj,
    due,
    from_json_obj,
    merge_counters,
    mismatch_window,
    parse_spec,
    pause,
    promote,
    resume,
    spec_obj,
    start,
    status_obj,
    tick,
    time_in_step,
    to_json_obj,
    window,
)

POOLS = ("blue", "green")
BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
WALL = 1_700_000_000.0
EXAMPLE: dict[str, Any] = {
    "candidate": "green",
    "stable": "blue",
    "steps": [1, 5, 25, 50, 100],
    "step_interval": "30s",
    "analysis": {
        "interval": "5s",
        "min_requests": 200,
        "max_error_rate": 0.01,
        "max_error_rate_vs_stable": 2.0,
        "max_p99_ms": 500,
        "max_p99_vs_stable": 1.5,
        "max_mismatch_rate": 0.05,
        "failure_limit": 2,
    },
    "on_inconclusive": "pause",
    "max_weight": 100,
    "webhooks": {
        "url": "http://127.0.0.1:9999/hook",
        "confirm_url": "http://127.0.0.1:9999/confirm",
        "timeout": "2s",
        "retries": 3,
    },
}


def body(**changes: Any) -> dict[str, Any]:
    """EXAMPLE without webhooks, with `changes` (dotted names for analysis keys, None deletes)."""
    out = copy.deepcopy(EXAMPLE)
    del out["webhooks"]
    for key, value in changes.items():
        target, name = (out["analysis"], key[9:]) if key.startswith("analysis.") else (out, key)
        if value is None:
            target.pop(name, None)
        else:
            target[name] = value
    return out


# --- fake traffic and clock ---------------------------------------------------------------------


class Traffic:
    """Cumulative per-pool counters fed at `rps`, split by the weights in force."""

    def __init__(self, rps: float = 100_000) -> None:
        self.rps = rps
        self.error_rate = {pool: 0.0 for pool in POOLS}
        self.latency = {pool: 1 for pool in POOLS}  # bucket index every request lands in
        self.requests = {pool: 0 for pool in POOLS}
        self.errors = {pool: 0 for pool in POOLS}
        self.buckets = {pool: [0] * (len(BOUNDS) + 1) for pool in POOLS}

    def serve(self, weights: dict[str, int], seconds: float) -> None:
        for pool, weight in weights.items():
            n = round(self.rps * seconds * weight / 100)
            self.requests[pool] += n
            self.errors[pool] += round(n * self.error_rate[pool])
            buckets = self.buckets[pool]
            for i in range(self.latency[pool], len(buckets)):
                buckets[i] += n

    def counters(self) -> Counters:
        pools = {
            p: PoolCounters(self.requests[p], self.errors[p], tuple(self.buckets[p])) for p in POOLS
        }
        return Counters(pools, BOUNDS)


class Run:
    """The I/O shell in miniature: a fake monotonic clock, traffic, and the weights applied."""

    def __init__(self, spec_body: dict[str, Any], rps: float = 100_000, **weights: int) -> None:
        self.now = 1000.0
        self.traffic = Traffic(rps)
        self.weights = weights or {"blue": 100, "green": 0}
        self.applied: list[tuple[float, dict[str, int]]] = []
        self.events: list[str] = []
        spec = parse_spec(spec_body, POOLS)
        self.take(start(spec, self.weights, POOLS, self.traffic.counters(), self.now, WALL))

    def take(self, decision: Decision) -> None:
        self.r = decision.rollout
        if decision.weights is not None:
            self.weights = decision.weights
            self.applied.append((self.now, decision.weights))
        self.events += [e.event for e in decision.events]

    def wait(self, seconds: float) -> None:
        self.traffic.serve(self.weights, seconds)
        self.now += seconds

    def tick(self) -> None:
        self.take(tick(self.r, self.traffic.counters(), self.now, WALL + self.now))

    def step(self, seconds: float) -> None:
        self.wait(seconds)
        self.tick()

    def run_until(self, phase_or_step: str | int, limit: int = 200) -> None:
        """Wake at due() (as the shell does) until the phase, or step index, is reached."""
        for _ in range(limit):
            if phase_or_step in (self.r.phase, self.r.step_index):
                return
            self.step(due(self.r, self.now) - self.now)
        raise AssertionError(f"never reached {phase_or_step!r}: {self.r.phase} {self.r.reason}")

    @property
    def green(self) -> int:
        return dict(self.r.weights)["green"]


# --- spec parsing -------------------------------------------------------------------------------


def test_defaults_for_omitted_keys() -> None:
    spec = parse_spec({"candidate": "green", "stable": "blue"}, POOLS)
    assert spec == RolloutSpec("green", "blue")
    assert spec.steps == (5, 25, 50, 100) and spec.step_interval == 60.0
    assert spec.analysis == AnalysisSpec(interval=10.0, min_requests=100, failure_limit=2)
    assert spec.analysis.max_p99_ms is None and spec.webhooks is None
    assert spec.on_inconclusive == "pause" and spec.max_weight == 100
    # The default analysis interval shrinks to fit a short step.
    short = parse_spec({"candidate": "green", "stable": "blue", "step_interval": "2s"}, POOLS)
    assert short.analysis.interval == 2.0


def test_the_issue_example_parses() -> None:
    spec = parse_spec(EXAMPLE, POOLS)
    assert spec.steps == (1, 5, 25, 50, 100) and spec.step_interval == 30.0
    assert spec.analysis.interval == 5.0 and spec.analysis.max_p99_vs_stable == 1.5
    assert spec.webhooks is not None and spec.webhooks.timeout == 2.0
    assert spec.confirm_url == "http://127.0.0.1:9999/confirm"
    assert parse_spec(spec_obj(spec), POOLS) == spec  # the persisted form reads back


@pytest.mark.parametrize(
    ("max_weight", "steps"),
    [(30, (1, 5, 25, 30)), (25, (1, 5, 25)), (1, (1,))],
)
def test_max_weight_caps_the_steps(max_weight: int, steps: tuple[int, ...]) -> None:
    assert parse_spec(body(max_weight=max_weight), POOLS).steps == steps


@pytest.mark.parametrize(
    ("spec_body", "code", "message"),
    [
        (
            body(**{"analysis.max_error_rate": "x"}),
            "bad_rollout",
            'analysis.max_error_rate: expected a number between 0 and 1, got "x"',
        ),
        (body(steps=[1, 50, 25]), "bad_rollout", "steps[2]: steps must increase (25 after 50)"),
        (body(steps=[5, 5]), "bad_rollout", "steps[1]: steps must increase (5 after 5)"),
        (body(steps=[0]), "bad_rollout", "steps[0]: expected an integer percent 1..100, got 0"),
        (body(steps=[5.0]), "bad_rollout", "steps[0]: expected an integer percent 1..100, got 5.0"),
        (body(steps=[]), "bad_rollout", "steps: expected at least one step"),
        (body(steps="5,25"), "bad_rollout", "steps: expected an array, got a string"),
        (body(steps=list(range(1, 102))), "bad_rollout", "steps: at most 100 steps, got 101"),
        (body(stepz=[1]), "bad_rollout", "stepz: unknown key (allowed: candidate, stable, steps"),
        (body(**{"analysis.intervl": "5s"}), "bad_rollout", "analysis.intervl: unknown key"),
        (body(stable="green"), "bad_rollout", 'stable: must differ from candidate (both "green")'),
        (body(candidate="red"), "unknown_pool", 'candidate: the route has no pool "red"'),
        (body(candidate=None), "bad_rollout", "candidate: missing"),
        (
            body(step_interval="soon"),
            "bad_rollout",
            'step_interval: expected a duration like "30s"',
        ),
        (body(step_interval="50ms"), "bad_rollout", "step_interval: expected a duration between"),
        (body(step_interval="2d"), "bad_rollout", "step_interval: expected a duration"),
        (
            body(**{"analysis.interval": "1m"}),
            "bad_rollout",
            "analysis.interval: must not exceed step_interval (30s), got 60s",
        ),
        (
            body(on_inconclusive="stop"),
            "bad_rollout",
            'on_inconclusive: expected "pause" or "wait"',
        ),
        (body(max_weight=0), "bad_rollout", "max_weight: expected an integer between 1 and 100"),
        (body(**{"analysis.failure_limit": 0}), "bad_rollout", "analysis.failure_limit:"),
        (body(**{"analysis.min_requests": True}), "bad_rollout", "analysis.min_requests:"),
        (
            body(**{"analysis.max_error_rate_vs_stable": 0.5}),
            "bad_rollout",
            "analysis.max_error_rate_vs_stable:",
        ),
        (body(webhooks={}), "bad_rollout", "webhooks: expected url, confirm_url or both"),
        (body(webhooks={"url": "ftp://x/"}), "bad_rollout", "webhooks.url: expected an http://"),
        (body(webhooks={"url": "http://h/", "retries": 99}), "bad_rollout", "webhooks.retries:"),
        (body(analysis=[]), "bad_rollout", "analysis: expected an object, got an array"),
        ([1], "bad_rollout", "body: expected a JSON object, got an array"),
    ],
)
def test_spec_errors_name_the_key_path(spec_body: object, code: str, message: str) -> None:
    with pytest.raises(RolloutError) as info:
        parse_spec(spec_body, POOLS)
    assert info.value.code == code
    assert info.value.message.startswith(message), info.value.message
    assert info.value.status == (404 if code == "unknown_pool" else 400)


# --- windows and p99 ----------------------------------------------------------------------------

B3 = (0.01, 0.1, 1.0)


@pytest.mark.parametrize(
    ("buckets", "p99_ms"),
    [
        # rank 99 of 100 falls in (0.1, 1.0] holding 2, 1 below it: 0.1 + 0.9 * 1/2 = 0.55 s.
        ((50, 98, 100, 100), 550.0),
        # all in the first bucket: 0 + 0.01 * 99/100.
        ((100, 100, 100, 100), 9.9),
        # rank 198 of 200 in (0.01, 0.1] holding 200, 0 below: 0.01 + 0.09 * 198/200.
        ((0, 200, 200, 200), 99.1),
        # in the +Inf bucket: the highest finite bound.
        ((0, 0, 0, 100), 1000.0),
        ((0, 0, 0, 0), None),
    ],
)
def test_p99_is_interpolated_inside_its_bucket(
    buckets: tuple[int, ...], p99_ms: float | None
) -> None:
    w = window(PoolCounters(0, 0, (0, 0, 0, 0)), PoolCounters(buckets[-1], 0, buckets), B3)
    assert w.p99_ms == (None if p99_ms is None else pytest.approx(p99_ms))


def test_window_diffs_two_snapshots() -> None:
    before = PoolCounters(10, 1, (10, 10, 10, 10))
    after = PoolCounters(110, 6, (60, 108, 110, 110))
    assert window(before, after, B3) == PoolWindow(100, 5, 0.05, pytest.approx(550.0))
    assert window(after, after, B3) == PoolWindow(0, 0, None, None)


def test_a_counter_reset_starts_afresh() -> None:
    before = PoolCounters(1000, 50, (500, 1000, 1000, 1000))
    after = PoolCounters(100, 2, (50, 98, 100, 100))  # the process restarted
    assert window(before, after, B3) == PoolWindow(100, 2, 0.02, pytest.approx(550.0))
    relaid = PoolCounters(0, 0, (0, 0))  # a baseline from another bucket layout
    assert window(relaid, after, B3).requests == 100
    with pytest.raises(ValueError, match="expected 4 bucket counts"):
        window(before, PoolCounters(1, 0, (1,)), B3)
    assert mismatch_window(MismatchCounters(90, 9), MismatchCounters(10, 1)).rate == 0.1
    assert mismatch_window(None, MismatchCounters(10, 1)) == MismatchWindow(10, 1, 0.1)


# --- analysis -----------------------------------------------------------------------------------

SPEC = parse_spec(EXAMPLE, POOLS).analysis  # min_requests 200
GOOD = PoolWindow(1000, 0, 0.0, 40.0)
SHADOW_OK = MismatchWindow(500, 5, 0.01)


def checks(candidate: PoolWindow, stable: PoolWindow = GOOD, **kw: Any) -> dict[str, Any]:
    result = analyse(SPEC, candidate, stable, kw.get("mismatch", SHADOW_OK))
    return {"outcome": result.outcome, **{c.name: c.passed for c in result.checks}}


def test_a_healthy_candidate_passes() -> None:
    result = analyse(SPEC, GOOD, GOOD, SHADOW_OK)
    assert result.outcome == "pass" and all(c.passed for c in result.checks)


@pytest.mark.parametrize(
    ("candidate", "stable", "mismatch", "failing"),
    [
        (PoolWindow(1000, 20, 0.02, 40.0), GOOD, SHADOW_OK, {"error_rate", "error_rate_vs_stable"}),
        # Under the absolute ceiling, but four times the stable pool's rate.
        (PoolWindow(1000, 8, 0.008, 40.0), PoolWindow(10_000, 20, 0.002, 40.0), SHADOW_OK,
         {"error_rate_vs_stable"}),
        (PoolWindow(1000, 0, 0.0, 600.0), PoolWindow(1000, 0, 0.0, 450.0), SHADOW_OK, {"p99_ms"}),
        (PoolWindow(1000, 0, 0.0, 100.0), GOOD, SHADOW_OK, {"p99_vs_stable_ms"}),
        (GOOD, GOOD, MismatchWindow(500, 50, 0.1), {"mismatch_rate"}),
    ],
)  # fmt: skip
def test_each_check_can_fail(
    candidate: PoolWindow, stable: PoolWindow, mismatch: MismatchWindow, failing: set[str]
) -> None:
    result = analyse(SPEC, candidate, stable, mismatch)
    assert result.outcome == "fail"
    assert {c.name for c in result.checks if c.passed is False} == failing
    for name in failing:
        assert name in result.summary


def test_stray_errors_against_a_clean_stable_pool_pass() -> None:
    stray = PoolWindow(1000, RELATIVE_MIN_ERRORS - 1, (RELATIVE_MIN_ERRORS - 1) / 1000, 40.0)
    result = analyse(SPEC, stray, GOOD, SHADOW_OK)
    assert result.outcome == "pass"
    assert "too few to compare" in result.checks[1].note
    # ... while 10 % errors against 0 % fail both error checks.
    bad = PoolWindow(1000, 100, 0.1, 40.0)
    assert checks(bad)["error_rate_vs_stable"] is False


def test_too_few_candidate_requests_is_inconclusive_never_a_pass() -> None:
    result = analyse(SPEC, PoolWindow(150, 0, 0.0, 40.0), GOOD, SHADOW_OK)
    assert result.outcome == "inconclusive"
    assert result.summary == "candidate had 150 requests in the window, fewer than min_requests 200"
    assert all(c.passed is None for c in result.checks)
    assert analyse(SPEC, PoolWindow(0, 0, None, None), GOOD, None).outcome == "inconclusive"


def test_relative_checks_are_skipped_when_stable_has_too_few_requests() -> None:
    quiet_stable = PoolWindow(10, 5, 0.5, 1.0)
    result = analyse(SPEC, GOOD, quiet_stable, SHADOW_OK)
    assert result.outcome == "pass"
    relative = [c for c in result.checks if "vs_stable" in c.name]
    assert [c.passed for c in relative] == [None, None]
    assert all("stable had 10 requests" in c.note for c in relative)


def test_switched_off_and_unshadowed_checks_are_not_evaluated() -> None:
    result = analyse(AnalysisSpec(min_requests=200, max_mismatch_rate=0.05), GOOD, GOOD, None)
    notes = {c.name: (c.passed, c.note) for c in result.checks}
    assert notes["p99_ms"] == (None, "off (max_p99_ms not set)")
    assert notes["mismatch_rate"] == (None, "the route does not shadow the candidate")
    few = analyse(SPEC, GOOD, GOOD, MismatchWindow(20, 19, 0.95))
    assert few.outcome == "pass" and "20 shadow comparisons" in few.checks[4].note


# --- the ramp -----------------------------------------------------------------------------------


def test_a_healthy_candidate_is_promoted_through_every_step_on_time() -> None:
    run = Run(body())
    assert run.applied == [(1000.0, {"blue": 99, "green": 1})]
    while run.r.phase == "running":
        # The shell wakes at due(): here every analysis interval (30 s is a multiple of 5 s).
        assert due(run.r, run.now) == pytest.approx(run.now + 5.0)
        run.step(5.0)
    assert run.r.phase == "promoted" and run.r.reason.startswith("promoted")
    assert [w["green"] for _, w in run.applied] == [1, 5, 25, 50, 100]
    assert [w["blue"] for _, w in run.applied] == [99, 95, 75, 50, 0]
    # Steps are only ever left on an analysis tick, so the granularity is one analysis interval;
    # with the interval dividing step_interval (and the shell waking at due()) it is exact.
    times = [at for at, _ in run.applied] + [run.now]
    assert [b - a for a, b in itertools.pairwise(times)] == [pytest.approx(30.0)] * 5
    assert run.events == ["start", "step", "step", "step", "step", "promoted"]
    assert due(run.r, run.now) == float("inf")


def test_5xx_at_the_25_percent_step_rolls_back_within_two_intervals() -> None:
    run = Run(body())
    run.run_until(2)  # the 25 % step
    run.step(5.0)
    run.step(5.0)
    run.wait(2.5)
    breach = run.now
    run.traffic.error_rate["green"] = 0.10
    run.run_until("failed")
    assert run.now - breach <= 2 * 5.0
    assert run.r.weights == (("blue", 100), ("green", 0))
    assert run.applied[-1] == (run.now, {"blue": 100, "green": 0})
    assert run.events[-1] == "rolled_back"
    assert "step 3/5 (25 %)" in run.r.reason and "failed 2 times in a row" in run.r.reason
    assert "error_rate 0.1 > 0.01" in run.r.reason
    with pytest.raises(RolloutError) as info:
        resume(run.r, run.traffic.counters(), run.now, WALL)
    assert info.value.code == "rollout_finished"


def test_one_failure_then_a_pass_does_not_roll_back() -> None:
    run = Run(body())
    run.run_until(2)
    run.traffic.error_rate["green"] = 0.10
    run.step(5.0)
    assert run.r.consecutive_failures == 1 and run.r.phase == "running"
    run.traffic.error_rate["green"] = 0.0
    run.step(5.0)
    assert run.r.consecutive_failures == 0
    run.run_until("promoted")
    assert "rolled_back" not in run.events


def test_a_failed_last_analysis_holds_the_step_until_a_pass() -> None:
    run = Run(body())
    run.step(25.0)  # analysis at 25 s of the step: passes
    run.traffic.error_rate["green"] = 0.5
    run.step(5.0)  # step end, but the latest analysis failed: stay
    assert run.r.step_index == 0 and run.r.step_outcome == "fail"
    run.traffic.error_rate["green"] = 0.0
    run.step(5.0)
    assert run.r.step_index == 1


def test_inconclusive_with_pause_pauses_with_the_numbers() -> None:
    # 1 % of 1000/s is 50 requests per 5 s; the window keeps growing while inconclusive.
    run = Run(body(**{"analysis.min_requests": 1000}), rps=1000)
    run.run_until("paused")
    assert run.r.step_index == 0 and time_in_step(run.r, run.now) == pytest.approx(30.0)
    assert run.r.reason == (
        "step 1/5 (1 %) ended without a verdict after 30.0s of window: candidate had 300 "
        "requests in the window, fewer than min_requests 1000"
    )
    assert run.events[-1] == "paused" and due(run.r, run.now) == float("inf")
    assert run.r.consecutive_failures == 0  # inconclusive never counts as a failure


def test_inconclusive_with_wait_keeps_waiting_and_advances_when_traffic_arrives() -> None:
    run = Run(body(on_inconclusive="wait", **{"analysis.min_requests": 1000}), rps=1000)
    for _ in range(12):
        run.step(5.0)
    assert run.r.phase == "running" and run.r.step_index == 0
    assert run.r.step_outcome == "inconclusive"
    assert time_in_step(run.r, run.now) == pytest.approx(60.0)
    run.traffic.rps = 100_000
    run.step(5.0)
    assert run.r.step_index == 1 and run.applied[-1][1]["green"] == 5


def test_pause_stops_the_step_clock_and_resume_continues_it() -> None:
    run = Run(body())
    run.step(5.0)
    run.step(5.0)
    run.wait(2.0)
    run.take(pause(run.r, run.now, WALL))
    assert run.r.phase == "paused" and time_in_step(run.r, run.now) == pytest.approx(12.0)
    run.wait(100.0)
    run.tick()  # nothing happens while paused
    assert time_in_step(run.r, run.now) == pytest.approx(12.0) and due(run.r, run.now) == float(
        "inf"
    )
    with pytest.raises(RolloutError, match="already paused"):
        pause(run.r, run.now, WALL)
    paused_at = run.now
    run.take(resume(run.r, run.traffic.counters(), run.now, WALL))
    assert run.r.phase == "running" and run.events[-2:] == ["paused", "resumed"]
    assert due(run.r, run.now) == pytest.approx(run.now + 5.0)  # a fresh window from here
    with pytest.raises(RolloutError) as info:
        resume(run.r, run.traffic.counters(), run.now, WALL)
    assert info.value.code == "bad_command"
    run.run_until(1)
    # 12 s before the pause + 18 s after it: the 100 s paused do not count.
    assert run.applied[-1][0] - paused_at == pytest.approx(18.0)


def test_promote_jumps_to_the_final_step() -> None:
    run = Run(body())
    run.step(5.0)
    run.take(promote(run.r, run.now, WALL))
    assert run.r.phase == "promoted" and run.r.step_index == 4
    assert run.applied[-1][1] == {"blue": 0, "green": 100} and run.events[-1] == "promoted"
    capped = Run(body(max_weight=40))
    capped.take(promote(capped.r, capped.now, WALL))
    assert capped.applied[-1][1] == {"blue": 60, "green": 40}


def test_abort_sends_the_candidate_to_zero_and_finished_rollouts_refuse_commands() -> None:
    run = Run(body())
    run.run_until(2)
    run.take(abort(run.r, run.now, WALL))
    assert run.r.phase == "aborted" and run.applied[-1][1] == {"blue": 100, "green": 0}
    assert run.events[-1] == "aborted"
    counters = run.traffic.counters()
    for command in (
        lambda r: pause(r, 0.0, WALL),
        lambda r: resume(r, counters, 0.0, WALL),
        lambda r: promote(r, 0.0, WALL),
        lambda r: abort(r, 0.0, WALL),
    ):
        with pytest.raises(RolloutError) as info:
            command(run.r)
        assert info.value.code == "rollout_finished" and info.value.status == 409
    assert tick(run.r, counters, run.now + 100, WALL) == Decision(run.r, None, ())


def test_the_confirm_hook_gates_the_final_step() -> None:
    run = Run(body(webhooks=EXAMPLE["webhooks"]))
    run.run_until("awaiting_confirm")
    assert run.r.step_index == 3 and run.green == 50 and run.events[-1] == "confirm"
    assert due(run.r, run.now) == float("inf")
    counters = run.traffic.counters()
    run.take(confirmed(run.r, False, "HTTP 503 from hook", counters, run.now, WALL))
    assert run.r.phase == "paused" and run.r.reason == "confirm hook refused: HTTP 503 from hook"
    assert run.green == 50
    # A stale answer (nothing is waiting for one) is ignored.
    assert confirmed(run.r, True, "late", counters, run.now, WALL).rollout is run.r
    run.take(resume(run.r, counters, run.now, WALL))
    assert run.r.phase == "awaiting_confirm" and run.events[-2:] == ["resumed", "confirm"]
    run.wait(7.0)  # the hook takes its time; that is not step time
    run.take(confirmed(run.r, True, "HTTP 200", run.traffic.counters(), run.now, WALL))
    assert run.r.phase == "running" and run.applied[-1] == (run.now, {"blue": 0, "green": 100})
    confirmed_at = run.now
    run.run_until("promoted")
    assert run.now - confirmed_at == pytest.approx(30.0)


def test_a_single_step_rollout_with_a_confirm_hook_asks_first() -> None:
    run = Run(body(steps=[100], webhooks={"confirm_url": "http://h/c"}))
    assert run.r.phase == "awaiting_confirm" and run.r.step_index == -1
    assert run.applied == [] and run.events == ["start", "confirm"]


def test_start_picks_the_first_step_above_the_current_share() -> None:
    assert Run(body(), blue=90, green=10).applied[0][1] == {"blue": 75, "green": 25}
    assert Run(body(), blue=95, green=5).applied[0][1]["green"] == 25  # strictly greater
    assert Run(body(), blue=1, green=1).applied[0][1]["green"] == 100  # the first above 50 %
    assert Run(body(), blue=0, green=7).applied[0][1]["green"] == 100  # none above: the last
    spec = parse_spec(body(), ("blue", "green", "red"))
    counters = Traffic().counters()
    drained = start(spec, {"blue": 80, "green": 5, "red": 15}, ("blue", "green", "red"), counters,
                    0.0, WALL)  # fmt: skip
    assert drained.weights == {"blue": 75, "green": 25, "red": 0}
    with pytest.raises(RolloutError, match="above max_weight 40") as info:
        Run(body(max_weight=40), blue=50, green=50)
    assert info.value.code == "bad_rollout"
    with pytest.raises(RolloutError) as missing:
        start(spec, {"blue": 1}, POOLS[:1], counters, 0.0, WALL)
    assert missing.value.code == "unknown_pool"


# --- persistence and status ---------------------------------------------------------------------


def test_a_restart_resumes_the_step_with_the_time_already_spent() -> None:
    run = Run(body())
    run.run_until(2)
    run.step(5.0)
    run.step(5.0)
    run.wait(2.0)  # 12 s into the 25 % step
    saved = orjson.loads(orjson.dumps(to_json_obj(run.r, run.now)))
    # A new process: its monotonic clock starts elsewhere, its counters start at zero.
    later = 7.0
    restored = from_json_obj(saved, later)
    assert restored.step_index == 2 and restored.weights == run.r.weights
    assert time_in_step(restored, later) == pytest.approx(12.0)
    assert time_in_step(restored, later + 3.0) == pytest.approx(15.0)  # not 15 + downtime
    assert due(restored, later) == pytest.approx(later + 3.0)
    assert to_json_obj(restored, later) == saved  # the round trip is lossless
    assert status_obj(restored, later)["history"] == status_obj(run.r, run.now)["history"]
    run.r, run.now, run.traffic = restored, later, Traffic()
    run.run_until(3)
    assert run.applied[-1] == (pytest.approx(later + 18.0), {"blue": 50, "green": 50})
    run.run_until("promoted")


def test_a_paused_rollout_stays_paused_across_a_restart() -> None:
    run = Run(body())
    run.step(5.0)
    run.take(pause(run.r, run.now, WALL))
    restored = from_json_obj(to_json_obj(run.r, run.now), 3.0)
    assert restored.phase == "paused" and restored.segment_start is None
    assert time_in_step(restored, 500.0) == pytest.approx(5.0)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("step_index",), "x", 'rollout.step_index: expected an integer between -1 and 4, got "x"'),
        (("format",), 2, "rollout.format: expected 1, got 2"),
        (("phase",), "done", "rollout.phase: expected one of running, paused"),
        (("spec", "analysis", "max_error_rate"), 5, "rollout.spec.analysis.max_error_rate:"),
        (("spec", "candidate"), "red", 'rollout.spec.candidate: the route has no pool "red"'),
        (("baseline", "stable", "buckets"), [1, -1], "rollout.baseline.stable.buckets[1]:"),
        (("history",), [{}], "rollout.history[0].event: missing"),
    ],
)
def test_a_bad_document_names_the_path(path: tuple[str, ...], value: Any, message: str) -> None:
    run = Run(body())
    run.step(5.0)
    doc = to_json_obj(run.r, run.now)
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ValueError) as info:
        from_json_obj(doc, 0.0)
    assert str(info.value).startswith(message), str(info.value)


def test_status_shows_every_number_behind_the_decision() -> None:
    run = Run(body())
    run.step(5.0)
    run.wait(1.0)
    status = status_obj(run.r, run.now)
    assert status["phase"] == "running" and status["step"] == 0 and status["percent"] == 1
    assert status["weights"] == {"blue": 99, "green": 1} and status["steps"] == [1, 5, 25, 50, 100]
    assert status["time_in_step"] == pytest.approx(6.0)
    assert status["next_analysis_in"] == pytest.approx(4.0)
    assert status["step_interval"] == 30.0 and status["failure_limit"] == 2
    last = status["last_analysis"]
    assert last["outcome"] == "pass" and last["candidate"]["requests"] == 5000
    assert [c["name"] for c in last["checks"]] == [
        "error_rate",
        "error_rate_vs_stable",
        "p99_ms",
        "p99_vs_stable_ms",
        "mismatch_rate",
    ]
    assert last["checks"][0] == {
        "name": "error_rate",
        "value": 0.0,
        "threshold": 0.01,
        "passed": True,
        "note": "",
    }
    assert [e["event"] for e in status["history"]] == ["start"]
    orjson.dumps(status)  # serialisable as is


# --- properties ---------------------------------------------------------------------------------

# Mostly ticks, so that ramps get far before a promote or abort ends them.
ACTIONS = ["tick"] * 20 + ["pause", "resume"] * 2 + ["yes", "no", "promote", "abort"]
OPS = st.lists(
    st.tuples(
        st.sampled_from(ACTIONS),
        st.sampled_from([0.5, 5.0, 17.0]),  # seconds of traffic before the op
        st.sampled_from([0, 500, 50_000, 50_000]),  # requests per second
        st.sampled_from([0.0, 0.0, 0.0, 0.005, 0.3]),  # candidate error rate
    ),
    max_size=60,
)


def command(op: str, r: Rollout, counters: Counters, now: float) -> Decision:
    if op == "tick":
        return tick(r, counters, now, WALL)
    if op in ("pause", "promote", "abort"):
        return {"pause": pause, "promote": promote, "abort": abort}[op](r, now, WALL)
    if op == "resume":
        return resume(r, counters, now, WALL)
    return confirmed(r, op == "yes", op, counters, now, WALL)


@settings(database=None, max_examples=60, deadline=None)
@given(OPS, st.booleans())
def test_the_candidate_only_loses_weight_by_rollback_or_abort(
    ops: list[tuple[str, float, int, float]], hook: bool
) -> None:
    run = Run(body(webhooks={"confirm_url": "http://h/c"} if hook else None))
    steps = len(run.r.spec.steps)
    for op, seconds, rps, errors in ops:
        before = run.green
        run.traffic.rps, run.traffic.error_rate["green"] = rps, errors
        run.wait(seconds)
        counters = run.traffic.counters()
        try:
            decision = command(op, run.r, counters, run.now)
        except RolloutError as err:
            assert err.code in ("rollout_finished", "bad_command")
            continue
        run.take(decision)
        names = [e.event for e in decision.events]
        if run.green < before:
            assert run.green == 0 and run.r.phase in ("failed", "aborted")
            assert names in (["rolled_back"], ["aborted"])
        assert -1 <= run.r.step_index < steps
        assert sum(w for _, w in run.r.weights) == 100
        assert len(run.r.history) <= HISTORY_LIMIT
        if run.r.phase != "running":
            assert due(run.r, run.now) == float("inf")


# --- a fleet's counters -----------------------------------------------------------------------

FLEET_BOUNDS = (0.01, 0.1, 1.0)


@st.composite
def host_counters(draw: st.DrawFn) -> Counters:
    pools = {}
    for name in draw(st.lists(st.sampled_from(["blue", "green", "dark"]), unique=True)):
        cumulative = list(itertools.accumulate(draw(st.lists(st.integers(0, 50), min_size=4,
                                                             max_size=4))))  # fmt: skip
        errors = draw(st.integers(0, cumulative[-1]))
        pools[name] = PoolCounters(cumulative[-1], errors, tuple(cumulative))
    mismatch = None
    if draw(st.booleans()):
        compared = draw(st.integers(0, 100))
        mismatch = MismatchCounters(compared, draw(st.integers(0, compared)))
    return Counters(pools=pools, bounds=FLEET_BOUNDS, mismatch=mismatch)


@given(st.lists(host_counters(), min_size=1, max_size=5))
def test_a_fleets_counters_are_every_hosts_summed(parts: list[Counters]) -> None:
    merged = merge_counters(parts)
    for name in {name for part in parts for name in part.pools}:
        mine = [part.pools[name] for part in parts if name in part.pools]
        assert merged.pools[name].requests == sum(p.requests for p in mine)
        assert merged.pools[name].errors == sum(p.errors for p in mine)
        for i in range(len(FLEET_BOUNDS) + 1):
            assert merged.pools[name].buckets[i] == sum(p.buckets[i] for p in mine)
    shadowed = [p.mismatch for p in parts if p.mismatch is not None]
    if shadowed:
        assert merged.mismatch == MismatchCounters(
            sum(m.compared for m in shadowed), sum(m.mismatched for m in shadowed)
        )
    else:
        assert merged.mismatch is None
    # In any grouping: the driver may sum members in any order.
    assert merge_counters([merge_counters(parts[:1]), *parts[1:]]) == merged
    # And what goes over the admin API comes back the same.
    for part in parts:
        assert counters_from_obj(orjson.loads(orjson.dumps(counters_obj(part)))) == part


def test_counters_of_different_shapes_or_bad_json_are_refused() -> None:
    one = Counters(pools={"blue": PoolCounters(1, 0, (1, 1, 1, 1))}, bounds=FLEET_BOUNDS)
    other = Counters(pools={}, bounds=(0.5,))
    with pytest.raises(ValueError, match="bounds differ"):
        merge_counters([one, other])
    with pytest.raises(ValueError, match="no counters"):
        merge_counters([])
    good = counters_obj(one)
    bad_values: list[object] = [
        [],
        {"bounds": [0.1]},
        {**good, "pools": {"blue": {"requests": -1, "errors": 0, "buckets": [1]}}},
        {**good, "pools": {"blue": {"requests": True, "errors": 0, "buckets": [1]}}},
        {**good, "mismatch": {"compared": 1}},
    ]
    for bad in bad_values:
        with pytest.raises(ValueError):
            counters_from_obj(bad)
