"""`pointsman top`'s pure part: two successive reads of the admin API (`Snapshot`s) turned into
the rows a frame shows (requests/s, 5xx share, p99, endpoints, shadow mismatches, a rollout's
step), and the text of each cell. No I/O: control/cli/top.py reads and draws.

Rates are differences between the two reads over the time between them. The windows, their p99
(Prometheus `histogram_quantile` over the bucket deltas) and counter resets are the canary
analysis's own (control/rollout/analysis.py), so top shows what a rollout would judge."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from control.cli.rollout_text import (
    _ramp_weights_text,
    _seconds_text,
    _step_text,
    analysis_text,
)
from control.rollout.analysis import (
    Counters,
    MismatchCounters,
    PoolCounters,
    mismatch_window,
    window,
)

# Rollout phases after which a rollout no longer changes anything: not shown.
FINISHED_PHASES = frozenset({"promoted", "failed", "aborted"})


@dataclass(frozen=True, slots=True)
class RouteRead:
    """One route as one round of reads saw it.

    `route` is the route object of GET /v1/routes; `at` the monotonic time its counters
    (GET /v1/routes/ROUTE/counters) were read, None with `counters` when they could not be;
    `shadows` each shadow pool's cumulative comparisons (GET /v1/routes/ROUTE/shadows);
    `rollout` the rollout status (GET /v1/routes/ROUTE/rollout), None when there is none;
    `problem` one line about a read that failed."""

    route: Mapping[str, Any]
    at: float | None = None
    counters: Counters | None = None
    shadows: Mapping[str, MismatchCounters] = field(default_factory=dict)
    rollout: Mapping[str, Any] | None = None
    problem: str | None = None

    @property
    def name(self) -> str:
        return str(self.route.get("name", "?"))


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One round of reads: the state version and every route shown."""

    version: object
    routes: tuple[RouteRead, ...]


@dataclass(frozen=True, slots=True)
class ShadowRow:
    """A shadow pool's comparisons: in the window (None before a second read, or when none
    were compared) and since the start."""

    compared_per_s: float | None
    mismatch_rate: float | None
    overall_rate: float | None


@dataclass(frozen=True, slots=True)
class PoolRow:
    """One pool of a route. Rates are None when unknown (no earlier read, or the counters could
    not be read); `error_rate` and `p99_ms` are also None when the window had no request."""

    pool: str
    weight: int | None
    rps: float | None
    error_rate: float | None
    p99_ms: float | None
    up: int
    total: int
    draining: int
    shadow: ShadowRow | None = None


@dataclass(frozen=True, slots=True)
class RouteView:
    name: str
    live: str | None
    rps: float | None  # all pools together
    error_rate: float | None
    pools: tuple[PoolRow, ...]
    rollout: str | None  # one line about a rollout under way
    problem: str | None


@dataclass(frozen=True, slots=True)
class Frame:
    version: object
    seconds: float | None  # the window the rates cover (the route's, when all agree)
    routes: tuple[RouteView, ...]


# --- snapshots to rows ---------------------------------------------------------------------


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _endpoints(pool: object) -> tuple[int, int, int]:
    """(up, total, draining): `up` counts endpoints that take requests (healthy, not
    draining); `total` counts them all, draining ones included (as `pointsman status`)."""
    endpoints = pool.get("endpoints") if isinstance(pool, dict) else None
    if not isinstance(endpoints, list):
        return 0, 0, 0
    up = draining = 0
    for endpoint in endpoints:
        if not isinstance(endpoint, dict):
            continue
        if endpoint.get("state") == "draining":
            draining += 1
        elif endpoint.get("healthy") is True:
            up += 1
    return up, len(endpoints), draining


def _zero(counters: Counters) -> PoolCounters:
    return PoolCounters(0, 0, (0,) * (len(counters.bounds) + 1))


def _pool_window(
    name: str, before: Counters | None, after: Counters | None, seconds: float | None
) -> tuple[int, int, float | None, float | None, float | None] | None:
    """(requests, errors, rps, error rate, p99 ms) of one pool over the window, or None when
    it is unknown. A pool missing from a counters read has counted nothing (yet)."""
    if before is None or after is None or seconds is None:
        return None
    if before.bounds != after.bounds:
        before = Counters(pools={}, bounds=after.bounds)
    now = after.pools.get(name, _zero(after))
    then = before.pools.get(name, _zero(after))
    try:
        w = window(then, now, after.bounds)
    except ValueError:  # counts that do not fit the bounds: not a counters answer we can read
        return None
    return w.requests, w.errors, w.requests / seconds, w.error_rate, w.p99_ms


def _shadow_row(
    pool: str, before: RouteRead | None, after: RouteRead, seconds: float | None
) -> ShadowRow | None:
    now = after.shadows.get(pool)
    if now is None:
        return None
    overall = now.mismatched / now.compared if now.compared > 0 else None
    then = before.shadows.get(pool) if before is not None else None
    if then is None or seconds is None:
        return ShadowRow(None, None, overall)
    w = mismatch_window(then, now)
    return ShadowRow(w.compared / seconds, w.rate, overall)


def rollout_line(status: Mapping[str, Any] | None) -> str | None:
    """`canary green against blue: running, step 2/5 green=10 blue=90, 12.0s/30s in step;
    analysis pass: ...`, or None when no rollout is under way."""
    if status is None:
        return None
    phase = status.get("phase")
    if not isinstance(phase, str) or phase in FINISHED_PHASES:
        return None
    s = dict(status)
    line = (
        f"canary {s.get('candidate', '?')} against {s.get('stable', '?')}: {phase}, "
        f"{_step_text(s)} {_ramp_weights_text(s)}"
    )
    in_step = s.get("time_in_step")
    if isinstance(in_step, int | float) and not isinstance(in_step, bool):
        line += f", {in_step:.1f}s/{_seconds_text(s.get('step_interval'))} in step"
    analysis = analysis_text(s)
    return f"{line}; {analysis}" if analysis else f"{line}; no analysis yet"


def route_view(before: RouteRead | None, after: RouteRead) -> RouteView:
    """One route's rows from two reads of it (`before` None: the first read, no rates)."""
    seconds = None
    if before is not None and before.at is not None and after.at is not None:
        if after.at > before.at:
            seconds = after.at - before.at
    before_counters = before.counters if before is not None else None
    pools_obj = after.route.get("pools")
    pools: Mapping[str, Any] = pools_obj if isinstance(pools_obj, dict) else {}
    weights_obj = after.route.get("weights")
    weights: Mapping[str, Any] = weights_obj if isinstance(weights_obj, dict) else {}
    rows = []
    requests = errors = 0
    known = seconds is not None and before_counters is not None and after.counters is not None
    for name in list(pools) + [p for p in weights if p not in pools]:
        pool = pools.get(name)
        weight = _int(pool.get("weight")) if isinstance(pool, dict) else None
        if weight is None:
            weight = _int(weights.get(name))
        counted = _pool_window(name, before_counters, after.counters, seconds)
        if counted is None:
            known = False
            rps = error_rate = p99 = None
        else:
            requests += counted[0]
            errors += counted[1]
            rps, error_rate, p99 = counted[2:]
        up, total, draining = _endpoints(pool)
        shadow = _shadow_row(name, before, after, seconds)
        rows.append(PoolRow(name, weight, rps, error_rate, p99, up, total, draining, shadow))
    live = after.route.get("live")
    return RouteView(
        name=after.name,
        live=live if isinstance(live, str) else None,
        rps=requests / seconds if known and seconds else None,
        error_rate=errors / requests if known and requests > 0 else None,
        pools=tuple(rows),
        rollout=rollout_line(after.rollout),
        problem=after.problem,
    )


def frame(before: Snapshot | None, after: Snapshot) -> Frame:
    """The frame for `after`, with rates over the time since `before` (routes matched by
    name: a route new since `before` has no rates yet)."""
    earlier = {read.name: read for read in before.routes} if before is not None else {}
    views = []
    windows = set()
    for read in after.routes:
        then = earlier.get(read.name)
        views.append(route_view(then, read))
        if then is not None and then.at is not None and read.at is not None:
            windows.add(round(read.at - then.at, 1))
    seconds = windows.pop() if len(windows) == 1 else None
    return Frame(version=after.version, seconds=seconds, routes=tuple(views))


def frame_obj(frame: Frame) -> dict[str, Any]:
    """The frame as JSON (`pointsman top --json`)."""
    return asdict(frame)


# --- cells -----------------------------------------------------------------------------------


def rate_text(rps: float | None) -> str:
    """Requests per second: `-` unknown, `0`, `0.5`, `12.3`, `1,234`."""
    if rps is None or not math.isfinite(rps):
        return "-"
    if rps == 0:
        return "0"
    if rps < 100:
        return f"{rps:.1f}"
    return f"{rps:,.0f}"


def percent_text(rate: float | None) -> str:
    """A share (0..1) as a percent: `-` when there was nothing to count."""
    if rate is None or not math.isfinite(rate):
        return "-"
    pct = rate * 100
    if 0 < pct < 0.1:
        return "<0.1%"
    return f"{pct:.1f}%"


def ms_text(ms: float | None) -> str:
    if ms is None or not math.isfinite(ms):
        return "-"
    if ms >= 100:
        return f"{ms:,.0f}"
    return f"{ms:.2f}" if ms < 10 else f"{ms:.1f}"


def endpoints_text(row: PoolRow) -> str:
    """`2/2 up`, or `1/3 up, 1 draining`."""
    text = f"{row.up}/{row.total} up"
    return f"{text}, {row.draining} draining" if row.draining else text


def shadow_text(shadow: ShadowRow | None) -> str:
    """`12.5% of 40.0/s (9.8% overall)` for a shadow pool, empty for the others."""
    if shadow is None:
        return ""
    overall = f"{percent_text(shadow.overall_rate)} overall"
    if shadow.compared_per_s is None:
        return overall
    window = f"{percent_text(shadow.mismatch_rate)} of {rate_text(shadow.compared_per_s)}/s"
    return f"{window} ({overall})"
