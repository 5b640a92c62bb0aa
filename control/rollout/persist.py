"""A rollout as JSON: the status the API serves, and the persisted form with its reader
(to_json_obj / from_json_obj). Pure."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from control.rollout.analysis import (
    Analysis,
    Check,
    MismatchCounters,
    MismatchWindow,
    PoolCounters,
    PoolWindow,
)
from control.rollout.machine import (
    Baseline,
    Event,
    Rollout,
    time_in_step,
)
from control.rollout.spec import (
    FORMAT,
    HISTORY_LIMIT,
    MAX_FAILURE_LIMIT,
    MAX_STEPS,
    OUTCOMES,
    PHASES,
    Outcome,
    Phase,
    RolloutError,
    Weights,
    _spec,
    spec_obj,
)
from proxy.values import (
    PlainReader,
    show,
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


def _count(r: PlainReader, key: str) -> int:
    return r.count(key)


def _choice(r: PlainReader, key: str, choices: Sequence[str]) -> str:
    value = r.get(key)
    if not isinstance(value, str) or value not in choices:
        raise r.fail(key, f"expected one of {', '.join(choices)}, got {show(value)}")
    return value


def _phase(r: PlainReader, key: str) -> Phase:
    value = _choice(r, key, PHASES)
    return next(p for p in PHASES if p == value)


def _outcome(r: PlainReader, key: str) -> Outcome:
    value = _choice(r, key, OUTCOMES)
    return next(o for o in OUTCOMES if o == value)


def _weights_from(r: PlainReader, key: str) -> Weights:
    w = r.sub(key)
    if not w.obj:
        raise r.fail(key, "expected at least one pool")
    return tuple((pool, _count(w, pool)) for pool in w.obj)


def _pool_counters_from(r: PlainReader) -> PoolCounters:
    buckets = r.array("buckets")
    counts: list[int] = []
    for i, count in enumerate(buckets):
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise r.fail_item("buckets", i, f"expected an integer >= 0, got {show(count)}")
        counts.append(count)
    return PoolCounters(_count(r, "requests"), _count(r, "errors"), tuple(counts))


def _pool_window_from(r: PlainReader) -> PoolWindow:
    return PoolWindow(
        _count(r, "requests"),
        _count(r, "errors"),
        r.optional_time("error_rate"),
        r.optional_time("p99_ms"),
    )


def _analysis_from(r: PlainReader) -> Analysis:
    checks: list[Check] = []
    for i, item in enumerate(r.array("checks")):
        c = PlainReader(item, f"{r.at('checks')}[{i}]", r.error)
        passed = c.get("passed")
        if passed is not None and not isinstance(passed, bool):
            raise c.fail("passed", f"expected true, false or null, got {show(passed)}")
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


def _event_from(r: PlainReader) -> Event:
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
    r = PlainReader(obj, where, _value_error)
    fmt = r.get("format")
    if isinstance(fmt, bool) or fmt != FORMAT:  # True == 1 in Python
        raise r.fail("format", f"expected {FORMAT}, got {show(fmt)}")
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
        raise r.fail("step_elapsed", f"expected a number >= 0, got {show(elapsed)}")
    history = [
        _event_from(PlainReader(item, f"{r.at('history')}[{i}]", r.error))
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
