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

from control.rollout.analysis import (
    Analysis,
    Check,
    Counters,
    MismatchCounters,
    MismatchWindow,
    PoolCounters,
    PoolWindow,
    analyse,
    counters_from_obj,
    counters_obj,
    merge_counters,
    mismatch_window,
    window,
)
from control.rollout.machine import (
    Baseline,
    Decision,
    Event,
    Rollout,
    abort,
    confirmed,
    due,
    pause,
    promote,
    rebase,
    resume,
    start,
    tick,
    time_in_step,
)
from control.rollout.persist import (
    from_json_obj,
    status_obj,
    to_json_obj,
)
from control.rollout.spec import (
    FINISHED,
    FORMAT,
    HISTORY_LIMIT,
    MAX_INTERVAL,
    MAX_STEPS,
    MIN_INTERVAL,
    PERCENT,
    RELATIVE_MIN_ERRORS,
    AnalysisSpec,
    RolloutError,
    RolloutSpec,
    WebhookSpec,
    parse_spec,
    spec_obj,
    step_weights,
)

__all__ = [
    "FINISHED",
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
    "counters_from_obj",
    "counters_obj",
    "due",
    "from_json_obj",
    "merge_counters",
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
