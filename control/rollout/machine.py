"""The rollout state machine: start, tick, the operator's commands and the confirm hook's answer,
each returning a Decision (the new Rollout, weights to apply, events). Pure: the clocks come in
as arguments (see the package's docstring)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from control.rollout.analysis import (
    Analysis,
    Counters,
    MismatchCounters,
    PoolCounters,
    _zero,
    analyse,
    mismatch_window,
    window,
)
from control.rollout.spec import (
    FINISHED,
    HISTORY_LIMIT,
    PERCENT,
    TIME_EPSILON,
    Outcome,
    Phase,
    RolloutError,
    RolloutSpec,
    Weights,
    step_weights,
)
from proxy.values import (
    show,
)

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
                "unknown_pool", f"the route has no pool {show(pool)} (pools: {', '.join(pools)})"
            )
    weights = tuple((pool, current_weights.get(pool, 0)) for pool in pools)
    total = sum(weight for _, weight in weights)
    have = dict(weights)[spec.candidate]
    # Integer comparison of step / 100 with have / total: no float rounding at the boundaries.
    if total > 0 and have * PERCENT > spec.max_weight * total:
        raise RolloutError(
            "bad_rollout",
            f"candidate {show(spec.candidate)} already has {have * PERCENT / total:.4g} % of the "
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
