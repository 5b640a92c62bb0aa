"""A rollout's spec: limits and defaults, the spec types, and parsing the JSON a deploy script
sends (every error names the key path). Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from control.errors import CodedError
from proxy.values import (
    PlainReader,
    kind,
    seconds_text,
    show,
)

# --- limits and defaults -----------------------------------------------------------------------

# Persisted layout version: bump when the layout changes, so an old binary refuses a newer one.
FORMAT: Final = 1
# Step weights are percentages: at step s the candidate gets s and the stable pool 100 - s.
PERCENT: Final = 100
# One step per percentage point is the finest ramp that means anything; more is a generated typo.
MAX_STEPS: Final = 100
# Shorter intervals would make the I/O shell spin and leave windows too small to judge (tests use
# short ones, so the floor is low).
MIN_INTERVAL: Final = 0.1
# A step or analysis interval over a day is a unit mistake ("30m" meant, "30h" written).
MAX_INTERVAL: Final = 86_400.0
# History is persisted and served by status; the newest events are the ones people read.
HISTORY_LIMIT: Final = 50
# A window needing more requests than this can never fill; the value is a typo.
MAX_MIN_REQUESTS: Final = 100_000_000
# More consecutive failures than this would leave a bad candidate serving for hours.
MAX_FAILURE_LIMIT: Final = 100
# A relative threshold above 1000x compares nothing any more.
MAX_RATIO: Final = 1000.0
# A p99 ceiling above an hour (in ms) is seconds written as milliseconds.
MAX_P99_MS: Final = 3_600_000.0
# Fewer candidate errors than this in a window are Poisson noise around zero (P(X >= 5) is 0.4 %
# at a mean of 1), so no ratio to the stable pool is judged on them.
RELATIVE_MIN_ERRORS: Final = 5
# The latency quantile compared.
QUANTILE: Final = 0.99
# Webhook URLs are persisted and logged; a longer one is not a hand-written address.
MAX_URL_LENGTH: Final = 2048
# A hook that needs more than a minute per attempt holds the rollout hostage.
MAX_HOOK_TIMEOUT: Final = 60.0
# Retries multiply the timeout; ten attempts is already a long stall.
MAX_HOOK_RETRIES: Final = 10
# Float arithmetic on the clock: a tick at exactly `due()` must count as due, never loop short.
TIME_EPSILON: Final = 1e-6

DEFAULT_STEPS: Final = (5, 25, 50, 100)
DEFAULT_STEP_INTERVAL: Final = 60.0
# Capped at step_interval when that is shorter (an analysis must fit in a step).
DEFAULT_ANALYSIS_INTERVAL: Final = 10.0
DEFAULT_HOOK_TIMEOUT: Final = 5.0
DEFAULT_HOOK_RETRIES: Final = 3

Phase = Literal["running", "paused", "awaiting_confirm", "promoted", "failed", "aborted"]
Outcome = Literal["pass", "fail", "inconclusive"]
OnInconclusive = Literal["pause", "wait"]
Weights = tuple[tuple[str, int], ...]

PHASES: Final[tuple[Phase, ...]] = (
    "running",
    "paused",
    "awaiting_confirm",
    "promoted",
    "failed",
    "aborted",
)
FINISHED: Final[frozenset[str]] = frozenset({"promoted", "failed", "aborted"})
OUTCOMES: Final[tuple[Outcome, ...]] = ("pass", "fail", "inconclusive")
ON_INCONCLUSIVE: Final[tuple[OnInconclusive, ...]] = ("pause", "wait")

_STATUS: Final[Mapping[str, int]] = {
    "bad_rollout": 400,
    "unknown_pool": 404,
    "no_rollout": 404,
    "rollout_exists": 409,
    "rollout_finished": 409,
    "bad_command": 409,
    # In a fleet: the command went to a member that does not drive the rollout.
    "not_the_driver": 409,
    # In a fleet: a member's counters could not be gathered, or etcd is unreachable.
    "fleet_incomplete": 503,
    "store_unreachable": 503,
}


class RolloutError(CodedError):
    """A refused spec or command. `code` is one of the keys of the status map; str() is for
    humans and names the offending key path."""

    STATUS = _STATUS


# --- the spec ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AnalysisSpec:
    """Thresholds of one analysis. None switches a check off."""

    interval: float = DEFAULT_ANALYSIS_INTERVAL
    min_requests: int = 100
    max_error_rate: float = 0.01
    max_error_rate_vs_stable: float = 2.0
    max_p99_ms: float | None = None
    max_p99_vs_stable: float | None = None
    max_mismatch_rate: float | None = None
    failure_limit: int = 2


@dataclass(frozen=True, slots=True)
class WebhookSpec:
    """Where events are posted (`url`) and who must approve the final step (`confirm_url`)."""

    url: str | None = None
    confirm_url: str | None = None
    timeout: float = DEFAULT_HOOK_TIMEOUT
    retries: int = DEFAULT_HOOK_RETRIES


@dataclass(frozen=True, slots=True)
class RolloutSpec:
    """A validated rollout request. `steps` are strictly increasing percents ending at
    `max_weight`."""

    candidate: str
    stable: str
    steps: tuple[int, ...] = DEFAULT_STEPS
    step_interval: float = DEFAULT_STEP_INTERVAL
    analysis: AnalysisSpec = field(default_factory=AnalysisSpec)
    on_inconclusive: OnInconclusive = "pause"
    max_weight: int = PERCENT
    webhooks: WebhookSpec | None = None

    @property
    def confirm_url(self) -> str | None:
        return None if self.webhooks is None else self.webhooks.confirm_url


_SPEC_KEYS: Final = (
    "candidate",
    "stable",
    "steps",
    "step_interval",
    "analysis",
    "on_inconclusive",
    "max_weight",
    "webhooks",
)
_ANALYSIS_KEYS: Final = (
    "interval",
    "min_requests",
    "max_error_rate",
    "max_error_rate_vs_stable",
    "max_p99_ms",
    "max_p99_vs_stable",
    "max_mismatch_rate",
    "failure_limit",
)
_HOOK_KEYS: Final = ("url", "confirm_url", "timeout", "retries")


def _steps(r: PlainReader, max_weight: int) -> tuple[int, ...]:
    if not r.given("steps"):
        raw: list[object] = list(DEFAULT_STEPS)
    else:
        raw = r.array("steps")
        if not raw:
            raise r.fail("steps", "expected at least one step")
        if len(raw) > MAX_STEPS:
            raise r.fail("steps", f"at most {MAX_STEPS} steps, got {len(raw)}")
    steps: list[int] = []
    for i, value in enumerate(raw):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= PERCENT:
            raise r.fail_item(
                "steps", i, f"expected an integer percent 1..{PERCENT}, got {show(value)}"
            )
        if steps and value <= steps[-1]:
            raise r.fail_item("steps", i, f"steps must increase ({value} after {steps[-1]})")
        steps.append(value)
    # max_weight caps the ramp: the rollout ends there, never above it.
    capped = [step for step in steps if step < max_weight]
    return (*capped, max_weight)


def _url(r: PlainReader, key: str) -> str | None:
    if not r.given(key):
        return None
    url = r.string(key)
    parts = urlsplit(url)
    if len(url) > MAX_URL_LENGTH or parts.scheme not in ("http", "https") or not parts.hostname:
        raise r.fail(key, f"expected an http:// or https:// URL, got {show(url)}")
    return url


def _webhooks(r: PlainReader) -> WebhookSpec | None:
    if not r.given("webhooks"):
        return None
    w = r.sub("webhooks")
    w.only(_HOOK_KEYS)
    spec = WebhookSpec(
        url=_url(w, "url"),
        confirm_url=_url(w, "confirm_url"),
        timeout=(
            w.duration("timeout", MIN_INTERVAL, MAX_HOOK_TIMEOUT)
            if w.given("timeout")
            else DEFAULT_HOOK_TIMEOUT
        ),
        retries=(
            w.integer("retries", 0, MAX_HOOK_RETRIES)
            if w.given("retries")
            else DEFAULT_HOOK_RETRIES
        ),
    )
    if spec.url is None and spec.confirm_url is None:
        raise r.fail("webhooks", "expected url, confirm_url or both")
    return spec


def _analysis(r: PlainReader, step_interval: float) -> AnalysisSpec:
    if not r.given("analysis"):
        return AnalysisSpec(interval=min(DEFAULT_ANALYSIS_INTERVAL, step_interval))
    a = r.sub("analysis")
    a.only(_ANALYSIS_KEYS)
    default = AnalysisSpec()

    def num(key: str, low: float, high: float, fallback: float) -> float:
        return a.number(key, low, high) if a.given(key) else fallback

    def off(key: str, low: float, high: float) -> float | None:
        return a.number(key, low, high) if a.given(key) else None

    if a.given("interval"):
        interval = a.duration("interval", MIN_INTERVAL, MAX_INTERVAL)
        if interval > step_interval:
            raise a.fail(
                "interval",
                f"must not exceed step_interval ({seconds_text(step_interval)}),"
                f" got {seconds_text(interval)}",
            )
    else:
        interval = min(DEFAULT_ANALYSIS_INTERVAL, step_interval)
    return AnalysisSpec(
        interval=interval,
        min_requests=(
            a.integer("min_requests", 1, MAX_MIN_REQUESTS)
            if a.given("min_requests")
            else default.min_requests
        ),
        max_error_rate=num("max_error_rate", 0.0, 1.0, default.max_error_rate),
        max_error_rate_vs_stable=num(
            "max_error_rate_vs_stable", 1.0, MAX_RATIO, default.max_error_rate_vs_stable
        ),
        max_p99_ms=off("max_p99_ms", 1.0, MAX_P99_MS),
        max_p99_vs_stable=off("max_p99_vs_stable", 1.0, MAX_RATIO),
        max_mismatch_rate=off("max_mismatch_rate", 0.0, 1.0),
        failure_limit=(
            a.integer("failure_limit", 1, MAX_FAILURE_LIMIT)
            if a.given("failure_limit")
            else default.failure_limit
        ),
    )


def _spec(r: PlainReader, pools: Sequence[str] | None) -> RolloutSpec:
    r.only(_SPEC_KEYS)
    candidate = r.string("candidate")
    stable = r.string("stable")
    if pools is not None:
        for key, pool in (("candidate", candidate), ("stable", stable)):
            if pool not in pools:
                raise RolloutError(
                    "unknown_pool",
                    f"{r.at(key)}: the route has no pool {show(pool)} (pools: {', '.join(pools)})",
                )
    if candidate == stable:
        raise r.fail("stable", f"must differ from candidate (both {show(candidate)})")
    max_weight = r.integer("max_weight", 1, PERCENT) if r.given("max_weight") else PERCENT
    step_interval = (
        r.duration("step_interval", MIN_INTERVAL, MAX_INTERVAL)
        if r.given("step_interval")
        else DEFAULT_STEP_INTERVAL
    )
    on_inconclusive: OnInconclusive = "pause"
    if r.given("on_inconclusive"):
        value = r.get("on_inconclusive")
        for choice in ON_INCONCLUSIVE:
            if value == choice:
                on_inconclusive = choice
                break
        else:
            raise r.fail("on_inconclusive", f'expected "pause" or "wait", got {show(value)}')
    return RolloutSpec(
        candidate=candidate,
        stable=stable,
        steps=_steps(r, max_weight),
        step_interval=step_interval,
        analysis=_analysis(r, step_interval),
        on_inconclusive=on_inconclusive,
        max_weight=max_weight,
        webhooks=_webhooks(r),
    )


def _bad_rollout(message: str) -> Exception:
    return RolloutError("bad_rollout", message)


def parse_spec(body: object, pools: Sequence[str]) -> RolloutSpec:
    """Validate a decoded API body against the route's pools. Omitted or null keys take their
    defaults; unknown keys are refused, so a typo in a deploy script cannot pass silently.
    Raises RolloutError ("bad_rollout", or "unknown_pool" for a pool the route lacks)."""
    if not isinstance(body, dict):
        raise RolloutError("bad_rollout", f"body: expected a JSON object, got {kind(body)}")
    return _spec(PlainReader(body, "", _bad_rollout), pools)


def spec_obj(spec: RolloutSpec) -> dict[str, Any]:
    """The spec as an API body (durations in seconds); `parse_spec` reads it back unchanged."""
    a = spec.analysis
    hooks = spec.webhooks
    return {
        "candidate": spec.candidate,
        "stable": spec.stable,
        "steps": list(spec.steps),
        "step_interval": spec.step_interval,
        "analysis": {
            "interval": a.interval,
            "min_requests": a.min_requests,
            "max_error_rate": a.max_error_rate,
            "max_error_rate_vs_stable": a.max_error_rate_vs_stable,
            "max_p99_ms": a.max_p99_ms,
            "max_p99_vs_stable": a.max_p99_vs_stable,
            "max_mismatch_rate": a.max_mismatch_rate,
            "failure_limit": a.failure_limit,
        },
        "on_inconclusive": spec.on_inconclusive,
        "max_weight": spec.max_weight,
        "webhooks": None
        if hooks is None
        else {
            "url": hooks.url,
            "confirm_url": hooks.confirm_url,
            "timeout": hooks.timeout,
            "retries": hooks.retries,
        },
    }


def step_weights(spec: RolloutSpec, percent: int, pools: Sequence[str]) -> dict[str, int]:
    """The route's weights at `percent`, in pool order: candidate `percent`, stable the rest,
    every other pool 0 (a ramp is between two versions; a third one is drained at start)."""
    return {
        pool: percent if pool == spec.candidate else PERCENT - percent if pool == spec.stable else 0
        for pool in pools
    }
