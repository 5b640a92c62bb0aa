"""Canary rollouts: the per-route ramp state machine and its analysis. Pure: no I/O, no clocks.

A rollout moves a *candidate* pool through increasing weight steps (percent) against a *stable*
pool. Each step is held for `step_interval`; while it runs, the candidate is compared with the
stable pool every `analysis.interval` over the same window (error rate, p99 latency, absolute and
relative to stable, and the shadow mismatch rate when the route shadows the candidate). A step
advances only when its interval is over and its latest analysis passed; `failure_limit` failed
analyses in a row roll the candidate back to 0 %.

The I/O shell around this module owns the clocks, the counters and the webhooks. It calls
`start`, then sleeps until `due(rollout, now)` and calls `tick` with a fresh counter snapshot;
operator commands map to `pause`, `resume`, `promote` and `abort`; the confirm hook's answer goes
to `confirmed`. Every call returns a `Decision`: the new immutable `Rollout`, the weights to apply
now (or None) and the events to notify. `now` is a monotonic clock in seconds; `wall` is unix time
and only ever shown to people (history, status).

The step clock is `step_elapsed` (seconds spent in the step before the current running segment)
plus `now - segment_start` while running, so time spent paused, awaiting confirmation or with the
process down never counts. `to_json_obj` folds the running segment into `step_elapsed` and
`from_json_obj` starts a new segment at the new process's `now`: a restarted rollout continues
the step it was on with the time it had already spent there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import orjson

from control.errors import CodedError
from proxy.config import parse_duration

__all__ = [
    "FORMAT",
    "HISTORY_LIMIT",
    "MAX_INTERVAL",
    "MAX_STEPS",
    "MIN_INTERVAL",
    "PERCENT",
    "RELATIVE_MIN_ERRORS",
    "Analysis",
    "AnalysisSpec",
    "Baseline",
    "Check",
    "Counters",
    "Decision",
    "Event",
    "MismatchCounters",
    "MismatchWindow",
    "PoolCounters",
    "PoolWindow",
    "Rollout",
    "RolloutError",
    "RolloutSpec",
    "WebhookSpec",
    "abort",
    "analyse",
    "confirmed",
    "due",
    "from_json_obj",
    "mismatch_window",
    "parse_spec",
    "pause",
    "promote",
    "rebase",
    "resume",
    "spec_obj",
    "start",
    "status_obj",
    "step_weights",
    "tick",
    "time_in_step",
    "to_json_obj",
    "window",
]

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


ErrorFactory = Callable[[str], Exception]


def _show(value: object) -> str:
    """A value as the JSON the client sent (`"x"`, `[1, 2]`), for error messages."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return repr(value)


def _kind(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", type(None): "null"}
    return names.get(type(value), _show(value))


def _secs(seconds: float) -> str:
    return f"{seconds:g}s"


class _Reader:
    """Typed field access on a decoded JSON object; every error names the key path."""

    __slots__ = ("error", "obj", "path")

    def __init__(self, obj: object, path: str, error: ErrorFactory) -> None:
        if not isinstance(obj, dict):
            raise error(f"{path}: expected an object, got {_kind(obj)}")
        self.obj: dict[str, object] = obj
        self.path = path
        self.error = error

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def fail(self, key: str, message: str) -> Exception:
        return self.error(f"{self.at(key)}: {message}")

    def only(self, allowed: Sequence[str]) -> None:
        for key in self.obj:
            if key not in allowed:
                raise self.fail(key, f"unknown key (allowed: {', '.join(allowed)})")

    def given(self, key: str) -> bool:
        """The key is present and not null (null means "use the default")."""
        return self.obj.get(key) is not None

    def get(self, key: str) -> object:
        if key not in self.obj:
            raise self.error(f"{self.at(key)}: missing")
        return self.obj[key]

    def sub(self, key: str) -> _Reader:
        return _Reader(self.get(key), self.at(key), self.error)

    def number(self, key: str, low: float, high: float) -> float:
        value = self.get(key)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not low <= value <= high
        ):
            raise self.fail(
                key, f"expected a number between {low:g} and {high:g}, got {_show(value)}"
            )
        return float(value)

    def integer(self, key: str, low: int, high: int) -> int:
        value = self.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(
                key, f"expected an integer between {low} and {high}, got {_show(value)}"
            )
        return value

    def string(self, key: str) -> str:
        value = self.get(key)
        if not isinstance(value, str) or not value:
            got = _show(value) if isinstance(value, str) else _kind(value)
            raise self.fail(key, f"expected a non-empty string, got {got}")
        return value

    def duration(self, key: str, low: float, high: float) -> float:
        value = self.get(key)
        try:
            seconds = parse_duration(value)
        except ValueError:
            raise self.fail(
                key, f'expected a duration like "30s", "500ms" or seconds, got {_show(value)}'
            ) from None
        if not low <= seconds <= high:
            raise self.fail(
                key,
                f"expected a duration between {_secs(low)} and {_secs(high)}, got {_show(value)}",
            )
        return seconds

    def array(self, key: str) -> list[object]:
        value = self.get(key)
        if not isinstance(value, list):
            raise self.fail(key, f"expected an array, got {_kind(value)}")
        return value

    def time(self, key: str) -> float:
        """Any finite number (clock readings in the persisted document)."""
        value = self.get(key)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise self.fail(key, f"expected a finite number, got {_show(value)}")
        return float(value)

    def optional_time(self, key: str) -> float | None:
        return self.time(key) if self.given(key) else None

    def boolean(self, key: str) -> bool:
        value = self.get(key)
        if not isinstance(value, bool):
            raise self.fail(key, f"expected true or false, got {_show(value)}")
        return value

    def text(self, key: str) -> str:
        """Any string, empty included (reasons, details)."""
        value = self.get(key)
        if not isinstance(value, str):
            raise self.fail(key, f"expected a string, got {_kind(value)}")
        return value


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


def _steps(r: _Reader, max_weight: int) -> tuple[int, ...]:
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
        where = f"{r.at('steps')}[{i}]"
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= PERCENT:
            raise r.error(f"{where}: expected an integer percent 1..{PERCENT}, got {_show(value)}")
        if steps and value <= steps[-1]:
            raise r.error(f"{where}: steps must increase ({value} after {steps[-1]})")
        steps.append(value)
    # max_weight caps the ramp: the rollout ends there, never above it.
    capped = [step for step in steps if step < max_weight]
    return (*capped, max_weight)


def _url(r: _Reader, key: str) -> str | None:
    if not r.given(key):
        return None
    url = r.string(key)
    parts = urlsplit(url)
    if len(url) > MAX_URL_LENGTH or parts.scheme not in ("http", "https") or not parts.hostname:
        raise r.fail(key, f"expected an http:// or https:// URL, got {_show(url)}")
    return url


def _webhooks(r: _Reader) -> WebhookSpec | None:
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


def _analysis(r: _Reader, step_interval: float) -> AnalysisSpec:
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
                f"must not exceed step_interval ({_secs(step_interval)}), got {_secs(interval)}",
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


def _spec(r: _Reader, pools: Sequence[str] | None) -> RolloutSpec:
    r.only(_SPEC_KEYS)
    candidate = r.string("candidate")
    stable = r.string("stable")
    if pools is not None:
        for key, pool in (("candidate", candidate), ("stable", stable)):
            if pool not in pools:
                raise RolloutError(
                    "unknown_pool",
                    f"{r.at(key)}: the route has no pool {_show(pool)} (pools: {', '.join(pools)})",
                )
    if candidate == stable:
        raise r.fail("stable", f"must differ from candidate (both {_show(candidate)})")
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
            raise r.fail("on_inconclusive", f'expected "pause" or "wait", got {_show(value)}')
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
        raise RolloutError("bad_rollout", f"body: expected a JSON object, got {_kind(body)}")
    return _spec(_Reader(body, "", _bad_rollout), pools)


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


# --- counters, windows, analysis ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PoolCounters:
    """A snapshot of one pool's cumulative counters. `buckets[i]` counts requests that took at
    most `bounds[i]` seconds (Prometheus `le` style); the last entry is +Inf, i.e. every timed
    request."""

    requests: int
    errors: int  # 5xx answers, the proxy's own error responses included
    buckets: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class MismatchCounters:
    """A snapshot of the candidate's shadow comparisons (cumulative)."""

    compared: int
    mismatched: int


@dataclass(frozen=True, slots=True)
class Counters:
    """What the I/O shell snapshots for a tick. A pool missing from `pools` counts as idle;
    `mismatch` is None when the route does not shadow the candidate."""

    pools: Mapping[str, PoolCounters]
    bounds: tuple[float, ...]
    mismatch: MismatchCounters | None = None


@dataclass(frozen=True, slots=True)
class PoolWindow:
    """One pool's traffic between two snapshots. Rates are None when there were no requests."""

    requests: int
    errors: int
    error_rate: float | None
    p99_ms: float | None


@dataclass(frozen=True, slots=True)
class MismatchWindow:
    compared: int
    mismatched: int
    rate: float | None


def _quantile_ms(bounds: Sequence[float], cumulative: Sequence[int]) -> float | None:
    """Prometheus `histogram_quantile`: linear interpolation inside the bucket holding the rank;
    the highest finite bound when the rank falls in +Inf."""
    if not bounds or not cumulative or cumulative[-1] <= 0:
        return None
    rank = QUANTILE * cumulative[-1]
    below = 0
    for i, count in enumerate(cumulative):
        if count >= rank:
            if i >= len(bounds):
                return bounds[-1] * 1000.0
            lower = 0.0 if i == 0 else bounds[i - 1]
            inside = count - below
            seconds = lower + (bounds[i] - lower) * (rank - below) / inside
            return seconds * 1000.0
        below = count
    return bounds[-1] * 1000.0  # only reached with inconsistent (decreasing) counts


def _is_reset(before: PoolCounters, after: PoolCounters) -> bool:
    return (
        after.requests < before.requests
        or after.errors < before.errors
        or len(after.buckets) != len(before.buckets)
        or any(a < b for a, b in zip(after.buckets, before.buckets, strict=True))
    )


def window(before: PoolCounters, after: PoolCounters, bounds: Sequence[float]) -> PoolWindow:
    """The traffic between two snapshots of one pool. A counter that went backwards (process
    restart) or a changed bucket layout means the counters started afresh: `after` alone."""
    if len(after.buckets) != len(bounds) + 1:
        raise ValueError(f"expected {len(bounds) + 1} bucket counts, got {len(after.buckets)}")
    if _is_reset(before, after):
        before = _zero(bounds)
    requests = after.requests - before.requests
    errors = after.errors - before.errors
    deltas = [a - b for a, b in zip(after.buckets, before.buckets, strict=True)]
    return PoolWindow(
        requests=requests,
        errors=errors,
        error_rate=errors / requests if requests > 0 else None,
        p99_ms=_quantile_ms(bounds, deltas),
    )


def mismatch_window(before: MismatchCounters | None, after: MismatchCounters) -> MismatchWindow:
    """Shadow comparisons between two snapshots (no `before`, or a reset: `after` alone)."""
    if before is None or after.compared < before.compared or after.mismatched < before.mismatched:
        before = MismatchCounters(0, 0)
    compared = after.compared - before.compared
    mismatched = after.mismatched - before.mismatched
    return MismatchWindow(compared, mismatched, mismatched / compared if compared > 0 else None)


def _zero(bounds: Sequence[float]) -> PoolCounters:
    return PoolCounters(0, 0, (0,) * (len(bounds) + 1))


@dataclass(frozen=True, slots=True)
class Check:
    """One threshold. `passed` None: not evaluated (switched off, or nothing to judge), and
    `note` says why."""

    name: str
    value: float | None
    threshold: float | None
    passed: bool | None
    note: str = ""


@dataclass(frozen=True, slots=True)
class Analysis:
    outcome: Outcome
    checks: tuple[Check, ...]
    candidate: PoolWindow
    stable: PoolWindow
    mismatch: MismatchWindow | None
    summary: str  # one line for reasons and logs, with the numbers


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _ceiling(name: str, value: float | None, threshold: float, unit: str) -> Check:
    if value is None:
        return Check(name, None, threshold, None, f"no candidate {unit} in the window")
    return Check(name, value, threshold, value <= threshold)


def _relative_errors(
    spec: AnalysisSpec, candidate: PoolWindow, stable: PoolWindow, stable_note: str
) -> Check:
    name = "error_rate_vs_stable"
    if stable_note:
        return Check(name, candidate.error_rate, None, None, stable_note)
    if candidate.error_rate is None or stable.error_rate is None:
        return Check(name, candidate.error_rate, None, None, "no candidate requests in the window")
    threshold = spec.max_error_rate_vs_stable * stable.error_rate
    if candidate.error_rate <= threshold:
        return Check(name, candidate.error_rate, threshold, True)
    if candidate.errors < RELATIVE_MIN_ERRORS:
        note = (
            f"{candidate.errors} candidate errors are too few to compare (< {RELATIVE_MIN_ERRORS})"
        )
        return Check(name, candidate.error_rate, threshold, True, note)
    return Check(name, candidate.error_rate, threshold, False)


def _relative_p99(
    spec: AnalysisSpec, candidate: PoolWindow, stable: PoolWindow, stable_note: str
) -> Check:
    name = "p99_vs_stable_ms"
    if spec.max_p99_vs_stable is None:
        return Check(name, candidate.p99_ms, None, None, "off (max_p99_vs_stable not set)")
    if stable_note:
        return Check(name, candidate.p99_ms, None, None, stable_note)
    if candidate.p99_ms is None or stable.p99_ms is None:
        return Check(name, candidate.p99_ms, None, None, "no latency observations in the window")
    threshold = spec.max_p99_vs_stable * stable.p99_ms
    return Check(name, candidate.p99_ms, threshold, candidate.p99_ms <= threshold)


def _mismatch_check(spec: AnalysisSpec, mismatch: MismatchWindow | None) -> Check:
    name = "mismatch_rate"
    limit = spec.max_mismatch_rate
    if limit is None:
        return Check(name, None if mismatch is None else mismatch.rate, None, None, "off")
    if mismatch is None:
        return Check(name, None, limit, None, "the route does not shadow the candidate")
    if mismatch.rate is None or mismatch.compared < spec.min_requests:
        note = (
            f"{mismatch.compared} shadow comparisons in the window, "
            f"fewer than min_requests {spec.min_requests}"
        )
        return Check(name, mismatch.rate, limit, None, note)
    return Check(name, mismatch.rate, limit, mismatch.rate <= limit)


def analyse(
    spec: AnalysisSpec,
    candidate: PoolWindow,
    stable: PoolWindow,
    mismatch: MismatchWindow | None,
) -> Analysis:
    """Judge the candidate against its thresholds and against the stable pool over one window.

    - inconclusive: the candidate had fewer than `min_requests` (never a silent pass); the
      checks are still computed for display, none is judged;
    - fail: any evaluated check failed; pass: otherwise.

    Relative checks need `min_requests` on the stable pool too, else they are not evaluated
    (noted). The relative error check fails when the candidate's error rate exceeds
    `max_error_rate_vs_stable` x the stable rate AND the candidate had at least
    RELATIVE_MIN_ERRORS errors: with a clean stable pool (0 errors) a single stray candidate
    error would otherwise be "infinitely worse", while a candidate at 10 % errors still fails
    (here and in the absolute check).
    """
    stable_note = ""
    if stable.requests < spec.min_requests:
        stable_note = (
            f"stable had {stable.requests} requests in the window, fewer than "
            f"min_requests {spec.min_requests}: not compared"
        )
    p99: Check
    if spec.max_p99_ms is None:
        p99 = Check("p99_ms", candidate.p99_ms, None, None, "off (max_p99_ms not set)")
    else:
        p99 = _ceiling("p99_ms", candidate.p99_ms, spec.max_p99_ms, "latency observations")
    checks = (
        _ceiling("error_rate", candidate.error_rate, spec.max_error_rate, "requests"),
        _relative_errors(spec, candidate, stable, stable_note),
        p99,
        _relative_p99(spec, candidate, stable, stable_note),
        _mismatch_check(spec, mismatch),
    )
    if candidate.requests < spec.min_requests:
        why = (
            f"candidate had {candidate.requests} requests in the window, "
            f"fewer than min_requests {spec.min_requests}"
        )
        unjudged = tuple(
            replace(c, passed=None, note=f"not judged: {why}") if c.passed is not None else c
            for c in checks
        )
        return Analysis("inconclusive", unjudged, candidate, stable, mismatch, why)
    failed = [c for c in checks if c.passed is False]
    if failed:
        summary = "; ".join(f"{c.name} {_num(c.value)} > {_num(c.threshold)}" for c in failed)
        return Analysis("fail", checks, candidate, stable, mismatch, summary)
    summary = (
        f"passed: candidate {candidate.requests} requests, {candidate.errors} errors, "
        f"p99 {_num(candidate.p99_ms)} ms; stable {stable.requests} requests, "
        f"{stable.errors} errors, p99 {_num(stable.p99_ms)} ms"
    )
    return Analysis("pass", checks, candidate, stable, mismatch, summary)


# --- the machine -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Baseline:
    """The counters at the start of the current analysis window (candidate, stable, shadow)."""

    candidate: PoolCounters
    stable: PoolCounters
    mismatch: MismatchCounters | None


@dataclass(frozen=True, slots=True)
class Event:
    """A history entry, and a notification: webhook event names are "start", "step",
    "promoted", "rolled_back", "aborted", "paused", "resumed"; "confirm" asks the shell to call
    the confirm hook. `step` is the step index then (-1: no step applied yet), `weights` the
    route's weights after the event, `at` unix time."""

    event: str
    step: int
    weights: Weights
    at: float
    detail: str


@dataclass(frozen=True, slots=True)
class Rollout:
    """One route's rollout. Times `step_elapsed`, `next_analysis` and `window_start` are seconds
    of step time (the step clock); `segment_start` is the monotonic `now` at which the current
    running segment began, None unless running."""

    spec: RolloutSpec
    weights: Weights  # the route's weights as this machine last set (or found) them, pool order
    phase: Phase
    step_index: int  # the step applied; -1 before the first (only while it awaits confirmation)
    step_elapsed: float
    segment_start: float | None
    next_analysis: float  # step time of the next analysis
    window_start: float  # step time at which `baseline` was taken
    baseline: Baseline
    step_outcome: Outcome | None  # the latest analysis of this step (since it began or resumed)
    consecutive_failures: int
    last_analysis: Analysis | None
    last_analysis_at: float | None  # unix time
    pending_confirm: bool  # the next step is the final one and still needs the confirm hook
    reason: str
    started_at_wall: float
    updated_at_wall: float
    history: tuple[Event, ...] = ()

    @property
    def pools(self) -> tuple[str, ...]:
        return tuple(pool for pool, _ in self.weights)

    @property
    def percent(self) -> int | None:
        """The step's candidate percent, None before the first step."""
        return self.spec.steps[self.step_index] if self.step_index >= 0 else None


@dataclass(frozen=True, slots=True)
class Decision:
    """What the caller does: keep `rollout`, apply `weights` now if not None, notify `events`."""

    rollout: Rollout
    weights: dict[str, int] | None
    events: tuple[Event, ...]


def time_in_step(rollout: Rollout, now: float) -> float:
    """Seconds the current step has been running: paused and confirm-waiting time excluded."""
    if rollout.segment_start is None:
        return rollout.step_elapsed
    return rollout.step_elapsed + max(0.0, now - rollout.segment_start)


def _snapshot(spec: RolloutSpec, counters: Counters) -> Baseline:
    zero = _zero(counters.bounds)
    return Baseline(
        candidate=counters.pools.get(spec.candidate, zero),
        stable=counters.pools.get(spec.stable, zero),
        mismatch=counters.mismatch,
    )


def _as_weights(weights: Mapping[str, int]) -> Weights:
    return tuple(weights.items())


def _step_name(rollout: Rollout, index: int) -> str:
    return f"step {index + 1}/{len(rollout.spec.steps)} ({rollout.spec.steps[index]} %)"


def _emit(rollout: Rollout, wall: float, apply: bool, *named: tuple[str, str]) -> Decision:
    """`rollout` with the events appended to its bounded history; the caller's Decision."""
    events = tuple(
        Event(name, rollout.step_index, rollout.weights, wall, detail) for name, detail in named
    )
    new = replace(
        rollout, history=(rollout.history + events)[-HISTORY_LIMIT:], updated_at_wall=wall
    )
    return Decision(new, dict(new.weights) if apply else None, events)


def _enter(rollout: Rollout, index: int, counters: Counters, now: float) -> Rollout:
    """Apply step `index` with a fresh step clock and window."""
    spec = rollout.spec
    return replace(
        rollout,
        phase="running",
        step_index=index,
        weights=_as_weights(step_weights(spec, spec.steps[index], rollout.pools)),
        step_elapsed=0.0,
        segment_start=now,
        next_analysis=spec.analysis.interval,
        window_start=0.0,
        baseline=_snapshot(spec, counters),
        step_outcome=None,
        pending_confirm=False,
        reason="",
    )


def _stop_clock(rollout: Rollout, now: float) -> Rollout:
    return replace(rollout, step_elapsed=time_in_step(rollout, now), segment_start=None)


def _needs_confirm(spec: RolloutSpec, index: int) -> bool:
    return index == len(spec.steps) - 1 and spec.confirm_url is not None


def start(
    spec: RolloutSpec,
    current_weights: Mapping[str, int],
    pools: Sequence[str],
    counters: Counters,
    now: float,
    wall: float,
) -> Decision:
    """Begin at the first step strictly above the candidate's current share (the last step if
    none is): the candidate never loses traffic it already has. Refused ("bad_rollout") when the
    candidate already has more than `max_weight`, which could only be reached by shrinking it."""
    for pool in (spec.candidate, spec.stable):
        if pool not in pools:
            raise RolloutError(
                "unknown_pool", f"the route has no pool {_show(pool)} (pools: {', '.join(pools)})"
            )
    weights = tuple((pool, current_weights.get(pool, 0)) for pool in pools)
    total = sum(weight for _, weight in weights)
    have = dict(weights)[spec.candidate]
    # Integer comparison of step / 100 with have / total: no float rounding at the boundaries.
    if total > 0 and have * PERCENT > spec.max_weight * total:
        raise RolloutError(
            "bad_rollout",
            f"candidate {_show(spec.candidate)} already has {have * PERCENT / total:.4g} % of the "
            f"traffic, above max_weight {spec.max_weight}",
        )
    index = next(
        (i for i, step in enumerate(spec.steps) if step * total > have * PERCENT or total == 0),
        len(spec.steps) - 1,
    )
    rollout = Rollout(
        spec=spec,
        weights=weights,
        phase="running",
        step_index=-1,
        step_elapsed=0.0,
        segment_start=None,
        next_analysis=spec.analysis.interval,
        window_start=0.0,
        baseline=_snapshot(spec, counters),
        step_outcome=None,
        consecutive_failures=0,
        last_analysis=None,
        last_analysis_at=None,
        pending_confirm=False,
        reason="",
        started_at_wall=wall,
        updated_at_wall=wall,
    )
    steps = ", ".join(str(step) for step in spec.steps)
    begin = ("start", f"{spec.candidate} against {spec.stable}, steps {steps} %")
    if _needs_confirm(spec, index):
        rollout = replace(rollout, phase="awaiting_confirm", pending_confirm=True)
        ask = ("confirm", f"confirm before the final step ({spec.steps[index]} %)")
        return _emit(rollout, wall, False, begin, ask)
    return _emit(_enter(rollout, index, counters, now), wall, True, begin)


def _step_end_acts(rollout: Rollout) -> bool:
    """Whether reaching the step's end leads to a transition on the next tick."""
    return rollout.step_outcome == "pass" or (
        rollout.step_outcome == "inconclusive" and rollout.spec.on_inconclusive == "pause"
    )


def due(rollout: Rollout, now: float) -> float:
    """The monotonic time of the next thing to do (next analysis or step end, whichever comes
    first; earlier than `now` when overdue); inf when the machine waits for someone else
    (paused, awaiting confirmation) or has finished."""
    if rollout.phase != "running" or rollout.segment_start is None:
        return math.inf
    target = rollout.next_analysis
    if time_in_step(rollout, now) + TIME_EPSILON < rollout.spec.step_interval or _step_end_acts(
        rollout
    ):
        target = min(target, rollout.spec.step_interval)
    return rollout.segment_start + (target - rollout.step_elapsed)


def _analyse_now(rollout: Rollout, counters: Counters, t: float, wall: float) -> Rollout:
    spec = rollout.spec
    a = spec.analysis
    zero = _zero(counters.bounds)
    mismatch = None
    if counters.mismatch is not None:
        mismatch = mismatch_window(rollout.baseline.mismatch, counters.mismatch)
    result = analyse(
        a,
        window(
            rollout.baseline.candidate, counters.pools.get(spec.candidate, zero), counters.bounds
        ),
        window(rollout.baseline.stable, counters.pools.get(spec.stable, zero), counters.bounds),
        mismatch,
    )
    failures = rollout.consecutive_failures
    if result.outcome == "fail":
        failures += 1
    elif result.outcome == "pass":
        failures = 0
    next_analysis = rollout.next_analysis + a.interval  # on the grid, unless ticks fell behind
    if next_analysis <= t + TIME_EPSILON:
        next_analysis = t + a.interval
    conclusive = result.outcome != "inconclusive"
    return replace(
        rollout,
        last_analysis=result,
        last_analysis_at=wall,
        step_outcome=result.outcome,
        consecutive_failures=failures,
        next_analysis=next_analysis,
        # A verdict closes the window; without one it grows until it holds min_requests.
        baseline=_snapshot(spec, counters) if conclusive else rollout.baseline,
        window_start=t if conclusive else rollout.window_start,
        updated_at_wall=wall,
    )


def _rollback_weights(rollout: Rollout) -> Weights:
    return _as_weights(step_weights(rollout.spec, 0, rollout.pools))


def tick(rollout: Rollout, counters: Counters, now: float, wall: float) -> Decision:
    """Run the analysis if one is due, then the step logic: roll back after `failure_limit`
    failures in a row; at the step's end advance on a pass, pause (or keep waiting, per
    `on_inconclusive`) on an inconclusive result, keep analysing after a failure. Does nothing
    unless running."""
    if rollout.phase != "running":
        return Decision(rollout, None, ())
    spec = rollout.spec
    t = time_in_step(rollout, now)
    window_seconds = t - rollout.window_start
    if t + TIME_EPSILON >= rollout.next_analysis:
        rollout = _analyse_now(rollout, counters, t, wall)
        assert rollout.last_analysis is not None  # just set
        if rollout.consecutive_failures >= spec.analysis.failure_limit:
            reason = (
                f"rolled back at {_step_name(rollout, rollout.step_index)}: analysis failed "
                f"{rollout.consecutive_failures} times in a row; last: "
                f"{rollout.last_analysis.summary}"
            )
            failed = replace(
                _stop_clock(rollout, now),
                phase="failed",
                weights=_rollback_weights(rollout),
                reason=reason,
            )
            return _emit(failed, wall, True, ("rolled_back", reason))
    if t + TIME_EPSILON < spec.step_interval or rollout.step_outcome in (None, "fail"):
        return Decision(rollout, None, ())
    if rollout.step_outcome == "inconclusive":
        if spec.on_inconclusive == "wait":
            return Decision(rollout, None, ())
        assert rollout.last_analysis is not None  # step_outcome comes from it
        reason = (
            f"{_step_name(rollout, rollout.step_index)} ended without a verdict after "
            f"{window_seconds:.1f}s of window: {rollout.last_analysis.summary}"
        )
        paused = replace(_stop_clock(rollout, now), phase="paused", reason=reason)
        return _emit(paused, wall, False, ("paused", reason))
    return _advance(rollout, counters, now, wall)


def _advance(rollout: Rollout, counters: Counters, now: float, wall: float) -> Decision:
    spec = rollout.spec
    index = rollout.step_index + 1
    if index >= len(spec.steps):
        reason = f"promoted: the final {_step_name(rollout, rollout.step_index)} passed"
        done = replace(_stop_clock(rollout, now), phase="promoted", reason=reason)
        return _emit(done, wall, False, ("promoted", reason))
    if _needs_confirm(spec, index):
        waiting = replace(_stop_clock(rollout, now), phase="awaiting_confirm", pending_confirm=True)
        return _emit(
            waiting, wall, False, ("confirm", f"confirm before {_step_name(rollout, index)}")
        )
    entered = _enter(rollout, index, counters, now)
    return _emit(entered, wall, True, ("step", _step_name(rollout, index)))


def _active(rollout: Rollout, command: str) -> None:
    if rollout.phase in FINISHED:
        raise RolloutError(
            "rollout_finished", f"the rollout has finished ({rollout.phase}); cannot {command}"
        )


def pause(rollout: Rollout, now: float, wall: float, detail: str = "paused by command") -> Decision:
    """Stop the step clock and the analyses until `resume`."""
    _active(rollout, "pause")
    if rollout.phase == "paused":
        raise RolloutError("bad_command", "the rollout is already paused")
    paused = replace(_stop_clock(rollout, now), phase="paused", reason=detail)
    return _emit(paused, wall, False, ("paused", detail))


def resume(rollout: Rollout, counters: Counters, now: float, wall: float) -> Decision:
    """Continue the step with the time it already had. The window restarts here, and the step
    needs a fresh analysis before it can advance; if it was waiting for the confirm hook (or the
    hook refused), the hook is asked again."""
    _active(rollout, "resume")
    if rollout.phase != "paused":
        raise RolloutError("bad_command", f"the rollout is not paused ({rollout.phase})")
    if rollout.pending_confirm:
        waiting = replace(rollout, phase="awaiting_confirm", reason="")
        final = len(rollout.spec.steps) - 1
        ask = ("confirm", f"confirm before {_step_name(rollout, final)}")
        return _emit(waiting, wall, False, ("resumed", "resumed by command"), ask)
    t = rollout.step_elapsed
    running = replace(
        rollout,
        phase="running",
        segment_start=now,
        baseline=_snapshot(rollout.spec, counters),
        window_start=t,
        next_analysis=t + rollout.spec.analysis.interval,
        step_outcome=None,
        reason="",
    )
    return _emit(running, wall, False, ("resumed", "resumed by command"))


def promote(rollout: Rollout, now: float, wall: float) -> Decision:
    """Jump to the final step (100 % or max_weight) and finish. The operator's command is the
    confirmation: the confirm hook is not asked."""
    _active(rollout, "promote")
    final = len(rollout.spec.steps) - 1
    reason = f"promoted by command to {rollout.spec.steps[final]} %"
    done = replace(
        _stop_clock(rollout, now),
        phase="promoted",
        step_index=final,
        weights=_as_weights(step_weights(rollout.spec, rollout.spec.steps[final], rollout.pools)),
        pending_confirm=False,
        reason=reason,
    )
    return _emit(done, wall, True, ("promoted", reason))


def abort(
    rollout: Rollout, now: float, wall: float, detail: str = "aborted by command"
) -> Decision:
    """The candidate to 0 % now (stable 100 %) and finish."""
    _active(rollout, "abort")
    done = replace(
        _stop_clock(rollout, now),
        phase="aborted",
        weights=_rollback_weights(rollout),
        pending_confirm=False,
        reason=detail,
    )
    return _emit(done, wall, True, ("aborted", detail))


def confirmed(
    rollout: Rollout, ok: bool, detail: str, counters: Counters, now: float, wall: float
) -> Decision:
    """The confirm hook's answer: ok applies the final step, a refusal pauses (resume asks
    again). An answer that arrives when nothing waits for it (the rollout was paused, aborted or
    promoted meanwhile) is ignored."""
    if rollout.phase != "awaiting_confirm":
        return Decision(rollout, None, ())
    final = len(rollout.spec.steps) - 1
    if ok:
        entered = _enter(rollout, final, counters, now)
        return _emit(entered, wall, True, ("step", f"{_step_name(rollout, final)}, confirmed"))
    reason = f"confirm hook refused: {detail}"
    return _emit(replace(rollout, phase="paused", reason=reason), wall, False, ("paused", reason))


def rebase(rollout: Rollout, counters: Counters, now: float) -> Rollout:
    """Restart the analysis window at these counters (for the shell, after `from_json_obj`, when
    its counters restarted with the process: a persisted baseline the new counters have already
    overtaken would not be recognised as a reset)."""
    return replace(
        rollout, baseline=_snapshot(rollout.spec, counters), window_start=time_in_step(rollout, now)
    )


# --- JSON: status and persistence --------------------------------------------------------------


def _window_obj(w: PoolWindow) -> dict[str, Any]:
    return {
        "requests": w.requests,
        "errors": w.errors,
        "error_rate": w.error_rate,
        "p99_ms": w.p99_ms,
    }


def _analysis_obj(a: Analysis) -> dict[str, Any]:
    return {
        "outcome": a.outcome,
        "summary": a.summary,
        "checks": [
            {
                "name": c.name,
                "value": c.value,
                "threshold": c.threshold,
                "passed": c.passed,
                "note": c.note,
            }
            for c in a.checks
        ],
        "candidate": _window_obj(a.candidate),
        "stable": _window_obj(a.stable),
        "mismatch": None
        if a.mismatch is None
        else {
            "compared": a.mismatch.compared,
            "mismatched": a.mismatch.mismatched,
            "rate": a.mismatch.rate,
        },
    }


def _event_obj(e: Event) -> dict[str, Any]:
    return {
        "event": e.event,
        "step": e.step,
        "weights": dict(e.weights),
        "at": e.at,
        "detail": e.detail,
    }


def _counters_obj(c: PoolCounters) -> dict[str, Any]:
    return {"requests": c.requests, "errors": c.errors, "buckets": list(c.buckets)}


def status_obj(rollout: Rollout, now: float) -> dict[str, Any]:
    """GET /v1/routes/{route}/rollout: where the ramp is, why, and every number behind it."""
    spec = rollout.spec
    t = time_in_step(rollout, now)
    next_in = None
    if rollout.phase == "running":
        next_in = max(0.0, rollout.next_analysis - t)
    last = None
    if rollout.last_analysis is not None:
        last = {"at": rollout.last_analysis_at, **_analysis_obj(rollout.last_analysis)}
    return {
        "phase": rollout.phase,
        "candidate": spec.candidate,
        "stable": spec.stable,
        "step": rollout.step_index,
        "percent": rollout.percent,
        "steps": list(spec.steps),
        "weights": dict(rollout.weights),
        "time_in_step": t,
        "step_interval": spec.step_interval,
        "next_analysis_in": next_in,
        "window_seconds": t - rollout.window_start,
        "consecutive_failures": rollout.consecutive_failures,
        "failure_limit": spec.analysis.failure_limit,
        "reason": rollout.reason or None,
        "last_analysis": last,
        "spec": spec_obj(spec),
        "started_at": rollout.started_at_wall,
        "updated_at": rollout.updated_at_wall,
        "history": [_event_obj(e) for e in rollout.history],
    }


def to_json_obj(rollout: Rollout, now: float) -> dict[str, Any]:
    """The persisted form. The running segment is folded into `step_elapsed`, so the document
    holds the time already spent in the step and nothing tied to this process's clock."""
    analysis = rollout.last_analysis
    b = rollout.baseline
    return {
        "format": FORMAT,
        "spec": spec_obj(rollout.spec),
        "weights": dict(rollout.weights),
        "phase": rollout.phase,
        "step_index": rollout.step_index,
        "step_elapsed": time_in_step(rollout, now),
        "next_analysis": rollout.next_analysis,
        "window_start": rollout.window_start,
        "baseline": {
            "candidate": _counters_obj(b.candidate),
            "stable": _counters_obj(b.stable),
            "mismatch": None
            if b.mismatch is None
            else {"compared": b.mismatch.compared, "mismatched": b.mismatch.mismatched},
        },
        "step_outcome": rollout.step_outcome,
        "consecutive_failures": rollout.consecutive_failures,
        "last_analysis": None if analysis is None else _analysis_obj(analysis),
        "last_analysis_at": rollout.last_analysis_at,
        "pending_confirm": rollout.pending_confirm,
        "reason": rollout.reason,
        "started_at": rollout.started_at_wall,
        "updated_at": rollout.updated_at_wall,
        "history": [_event_obj(e) for e in rollout.history],
    }


def _value_error(message: str) -> Exception:
    return ValueError(message)


def _count(r: _Reader, key: str) -> int:
    return r.integer(key, 0, 2**63 - 1)


def _choice(r: _Reader, key: str, choices: Sequence[str]) -> str:
    value = r.get(key)
    if not isinstance(value, str) or value not in choices:
        raise r.fail(key, f"expected one of {', '.join(choices)}, got {_show(value)}")
    return value


def _phase(r: _Reader, key: str) -> Phase:
    value = _choice(r, key, PHASES)
    return next(p for p in PHASES if p == value)


def _outcome(r: _Reader, key: str) -> Outcome:
    value = _choice(r, key, OUTCOMES)
    return next(o for o in OUTCOMES if o == value)


def _weights_from(r: _Reader, key: str) -> Weights:
    w = r.sub(key)
    if not w.obj:
        raise r.fail(key, "expected at least one pool")
    return tuple((pool, _count(w, pool)) for pool in w.obj)


def _pool_counters_from(r: _Reader) -> PoolCounters:
    buckets = r.array("buckets")
    counts: list[int] = []
    for i, count in enumerate(buckets):
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise r.error(f"{r.at('buckets')}[{i}]: expected an integer >= 0, got {_show(count)}")
        counts.append(count)
    return PoolCounters(_count(r, "requests"), _count(r, "errors"), tuple(counts))


def _pool_window_from(r: _Reader) -> PoolWindow:
    return PoolWindow(
        _count(r, "requests"),
        _count(r, "errors"),
        r.optional_time("error_rate"),
        r.optional_time("p99_ms"),
    )


def _analysis_from(r: _Reader) -> Analysis:
    checks: list[Check] = []
    for i, item in enumerate(r.array("checks")):
        c = _Reader(item, f"{r.at('checks')}[{i}]", r.error)
        passed = c.get("passed")
        if passed is not None and not isinstance(passed, bool):
            raise c.fail("passed", f"expected true, false or null, got {_show(passed)}")
        checks.append(
            Check(
                c.string("name"),
                c.optional_time("value"),
                c.optional_time("threshold"),
                passed,
                c.text("note"),
            )
        )
    mismatch = None
    if r.given("mismatch"):
        m = r.sub("mismatch")
        mismatch = MismatchWindow(
            _count(m, "compared"), _count(m, "mismatched"), m.optional_time("rate")
        )
    return Analysis(
        outcome=_outcome(r, "outcome"),
        checks=tuple(checks),
        candidate=_pool_window_from(r.sub("candidate")),
        stable=_pool_window_from(r.sub("stable")),
        mismatch=mismatch,
        summary=r.text("summary"),
    )


def _event_from(r: _Reader) -> Event:
    return Event(
        event=r.string("event"),
        step=r.integer("step", -1, MAX_STEPS),
        weights=_weights_from(r, "weights"),
        at=r.time("at"),
        detail=r.text("detail"),
    )


def from_json_obj(obj: object, now: float, where: str = "rollout") -> Rollout:
    """Restore `to_json_obj` output in a (possibly new) process whose monotonic clock reads
    `now`. A running rollout continues its step from the saved time: the downtime does not
    count. Raises ValueError naming the offending path under `where`.

    A rollout restored in "awaiting_confirm" lost the hook's answer with the old process: the
    shell asks the confirm hook again."""
    r = _Reader(obj, where, _value_error)
    fmt = r.get("format")
    if isinstance(fmt, bool) or fmt != FORMAT:  # True == 1 in Python
        raise r.fail("format", f"expected {FORMAT}, got {_show(fmt)}")
    weights = _weights_from(r, "weights")
    pools = [pool for pool, _ in weights]
    try:
        spec = _spec(r.sub("spec"), pools)
    except RolloutError as err:  # unknown_pool: a document that contradicts itself
        raise ValueError(err.message) from None
    phase = _phase(r, "phase")
    step_index = r.integer("step_index", -1, len(spec.steps) - 1)
    pending_confirm = r.boolean("pending_confirm")
    # Before the first step only a confirmation can be outstanding (or the rollout aborted).
    if step_index < 0 and not (pending_confirm or phase == "aborted"):
        raise r.fail("step_index", f"expected a step 0..{len(spec.steps) - 1} in phase {phase}")
    b = r.sub("baseline")
    mismatch = None
    if b.given("mismatch"):
        m = b.sub("mismatch")
        mismatch = MismatchCounters(_count(m, "compared"), _count(m, "mismatched"))
    elapsed = r.time("step_elapsed")
    if elapsed < 0:
        raise r.fail("step_elapsed", f"expected a number >= 0, got {_show(elapsed)}")
    history = [
        _event_from(_Reader(item, f"{r.at('history')}[{i}]", r.error))
        for i, item in enumerate(r.array("history"))
    ]
    return Rollout(
        spec=spec,
        weights=weights,
        phase=phase,
        step_index=step_index,
        step_elapsed=elapsed,
        segment_start=now if phase == "running" else None,
        next_analysis=r.time("next_analysis"),
        window_start=r.time("window_start"),
        baseline=Baseline(
            _pool_counters_from(b.sub("candidate")), _pool_counters_from(b.sub("stable")), mismatch
        ),
        step_outcome=_outcome(r, "step_outcome") if r.given("step_outcome") else None,
        consecutive_failures=r.integer("consecutive_failures", 0, MAX_FAILURE_LIMIT),
        last_analysis=_analysis_from(r.sub("last_analysis")) if r.given("last_analysis") else None,
        last_analysis_at=r.optional_time("last_analysis_at"),
        pending_confirm=pending_confirm,
        reason=r.text("reason"),
        started_at_wall=r.time("started_at"),
        updated_at_wall=r.time("updated_at"),
        history=tuple(history[-HISTORY_LIMIT:]),
    )
