"""Counters, the windows between two snapshots of them, and the analysis of a step: the
candidate against its thresholds and against the stable pool. Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from control.rollout.spec import (
    QUANTILE,
    RELATIVE_MIN_ERRORS,
    AnalysisSpec,
    Outcome,
)

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


def merge_counters(parts: Sequence[Counters]) -> Counters:
    """The counters of several hosts as one (a fleet's): per pool, requests, errors and each
    cumulative bucket summed; mismatch counts summed over the hosts that shadow the
    candidate. Every part must use the same bucket bounds (the same Pointsman)."""
    if not parts:
        raise ValueError("no counters to merge")
    bounds = parts[0].bounds
    pools: dict[str, PoolCounters] = {}
    compared = mismatched = 0
    shadowed = False
    for part in parts:
        if part.bounds != bounds:
            raise ValueError(f"bucket bounds differ: {part.bounds} vs {bounds}")
        for name, pool in part.pools.items():
            have = pools.get(name)
            if have is None:
                pools[name] = pool
                continue
            if len(have.buckets) != len(pool.buckets):
                raise ValueError(f"pool {name!r}: bucket counts differ")
            buckets = tuple(a + b for a, b in zip(have.buckets, pool.buckets, strict=True))
            pools[name] = PoolCounters(have.requests + pool.requests, have.errors + pool.errors,
                                       buckets)  # fmt: skip
        if part.mismatch is not None:
            shadowed = True
            compared += part.mismatch.compared
            mismatched += part.mismatch.mismatched
    mismatch = MismatchCounters(compared, mismatched) if shadowed else None
    return Counters(pools=pools, bounds=bounds, mismatch=mismatch)


def counters_obj(counters: Counters) -> dict[str, object]:
    """JSON for the admin API (a fleet's driver gathers every member's)."""
    mismatch = counters.mismatch
    return {
        "bounds": list(counters.bounds),
        "pools": {
            name: {"requests": p.requests, "errors": p.errors, "buckets": list(p.buckets)}
            for name, p in counters.pools.items()
        },
        "mismatch": None
        if mismatch is None
        else {"compared": mismatch.compared, "mismatched": mismatch.mismatched},
    }


def counters_from_obj(obj: object) -> Counters:
    """`counters_obj`'s output back; ValueError for anything else."""
    if not isinstance(obj, dict):
        raise ValueError(f"not a counters object: {type(obj).__name__}")
    try:
        bounds = tuple(float(b) for b in obj["bounds"])
        pools = {}
        for name, p in obj["pools"].items():
            buckets = tuple(_count(b) for b in p["buckets"])
            pools[str(name)] = PoolCounters(_count(p["requests"]), _count(p["errors"]), buckets)
        m = obj["mismatch"]
        mismatch = None if m is None else MismatchCounters(_count(m["compared"]),
                                                          _count(m["mismatched"]))  # fmt: skip
    except (KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"not a counters object: {err!r}") from None
    return Counters(pools=pools, bounds=bounds, mismatch=mismatch)


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a count, got {value!r}")
    return value


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
