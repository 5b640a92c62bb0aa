"""A rollout's status as text: steps, weights, analysis checks, history, progress lines."""

from __future__ import annotations

import time
from typing import Any

from control.cli.common import (
    _BadAnswer,
    _one_line,
    _text,
    _weights_text,
)

# History events `pointsman rollout ROUTE` shows (the newest ones).
ROLLOUT_HISTORY_SHOWN = 5


def _status_obj(body: object) -> dict[str, Any]:
    if not isinstance(body, dict) or not isinstance(body.get("phase"), str):
        raise _BadAnswer(f"expected a rollout status object, got {_text(body)[:200]}")
    return body


def _seconds_text(value: object) -> str:
    """30 -> 30s, 0.5 -> 500ms, 120 -> 2m, 5400 -> 90m."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return _text(value)
    if 0 < value < 1:
        return f"{value * 1000:g}ms"
    if value >= 60 and value % 60 == 0:
        return f"{value / 60:g}m"
    return f"{value:g}s"


def _step_text(status: dict[str, Any]) -> str:
    """`step 3/5` (`step -/5` before the first)."""
    steps = status.get("steps")
    count = len(steps) if isinstance(steps, list) else "?"
    step = status.get("step")
    shown = step + 1 if isinstance(step, int) and not isinstance(step, bool) and step >= 0 else "-"
    return f"step {shown}/{count}"


def _ramp_weights_text(status: dict[str, Any]) -> str:
    """`green=25 blue=75`: the candidate, the stable pool, then any other pool with traffic."""
    weights = status.get("weights")
    if not isinstance(weights, dict):
        return "weights ?"
    first = [status.get("candidate"), status.get("stable")]
    pools = [pool for pool in first if pool in weights]
    pools += [pool for pool, weight in weights.items() if pool not in pools and weight]
    return " ".join(f"{pool}={_text(weights[pool])}" for pool in pools)


def _rate_text(rate: object) -> str:
    if not isinstance(rate, int | float) or isinstance(rate, bool):
        return "-"
    pct = rate * 100
    return f"{pct:.2g}%" if 0 < pct < 0.1 else f"{pct:.1f}%"


def _ms_text(ms: object) -> str:
    if not isinstance(ms, int | float) or isinstance(ms, bool):
        return "-"
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.3g}"


def _window_text(window: object) -> str:
    """`1,234 req, 0.0% errors, p99 12 ms` for one pool's window of an analysis."""
    if not isinstance(window, dict):
        return "?"
    requests = window.get("requests")
    if requests == 0:
        return "0 req"
    count = f"{requests:,}" if isinstance(requests, int) else _text(requests)
    return (
        f"{count} req, {_rate_text(window.get('error_rate'))} errors, "
        f"p99 {_ms_text(window.get('p99_ms'))} ms"
    )


def analysis_text(status: dict[str, Any]) -> str | None:
    """`analysis pass: candidate 1,234 req, 0.0% errors, p99 12 ms; stable ...`, or None when
    the rollout has had no analysis yet."""
    last = status.get("last_analysis")
    if not isinstance(last, dict):
        return None
    outcome = _text(last.get("outcome")) + _earlier_step(status, last.get("at"))
    summary = _one_line(str(last.get("summary") or ""))
    windows = (
        f"candidate {_window_text(last.get('candidate'))}; "
        f"stable {_window_text(last.get('stable'))}"
    )
    if outcome.startswith("pass"):
        return f"analysis {outcome}: {windows}"
    if outcome.startswith("fail"):
        failures = (
            f" ({_text(status.get('consecutive_failures'))} of "
            f"{_text(status.get('failure_limit'))} in a row)"
        )
        return f"analysis {outcome.upper()}{failures}: {summary}; {windows}"
    return f"analysis {_text(outcome)}: {summary or windows}"


def _earlier_step(status: dict[str, Any], at: object) -> str:
    """` (step 2/5)` when the last analysis is the one that ended the previous step (it ran in
    the same tick that entered the current one), else empty."""
    history = status.get("history")
    step = status.get("step")
    steps = status.get("steps")
    if not isinstance(history, list) or not isinstance(step, int) or step < 1:
        return ""
    entered = next(
        (
            e.get("at")
            for e in reversed(history)
            if isinstance(e, dict) and e.get("event") == "step"
        ),
        None,
    )
    if not isinstance(at, int | float) or not isinstance(entered, int | float) or at > entered:
        return ""
    return f" (step {step}/{len(steps) if isinstance(steps, list) else '?'})"


def _reason(status: dict[str, Any]) -> str:
    reason = status.get("reason")
    return _one_line(reason) if isinstance(reason, str) and reason.strip() else "no reason given"


def final_line(route: str, status: dict[str, Any]) -> str:
    """The last line of `canary --wait` (and of promote/abort): how the rollout ended."""
    candidate = _text(status.get("candidate"))
    phase = status.get("phase")
    if phase == "promoted":
        return f"{route}: {candidate} promoted ({_text(status.get('percent'))} %)"
    if phase == "failed":
        return f"{route}: canary of {candidate} rolled back: {_reason(status)}"
    if phase == "aborted":
        return f"{route}: canary of {candidate} aborted: {_reason(status)}"
    return f"{route}: canary of {candidate} {_text(phase)}"


def progress_line(route: str, status: dict[str, Any], new_analysis: bool) -> str:
    """One line of `canary --wait` for a step, phase or analysis change."""
    phase = status.get("phase")
    step = _step_text(status)
    weights = _ramp_weights_text(status)
    if phase == "paused":
        return (
            f"{route}: paused at {step} {weights}: {_reason(status)} "
            f"(still waiting; `pointsman rollout {route} resume` continues it)"
        )
    if phase == "awaiting_confirm":
        return f"{route}: {step} {weights}  waiting for the confirm hook before the final step"
    line = (
        f"{route}: {step} {weights}  {_fmt_float(status.get('time_in_step'))}s/"
        f"{_seconds_text(status.get('step_interval'))} in step"
    )
    analysis = analysis_text(status) if new_analysis else None
    return f"{line}  {analysis}" if analysis else line


def _fmt_float(value: object) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "?"
    return f"{value:.1f}"


def _analysis_at(status: dict[str, Any]) -> object:
    last = status.get("last_analysis")
    return last.get("at") if isinstance(last, dict) else None


def _when(at: object) -> str:
    if not isinstance(at, int | float) or isinstance(at, bool):
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(at))


def _check_line(check: object, width: int) -> str:
    """`error_rate  0.002 (0.01) ok` and the server's note, if any."""
    if not isinstance(check, dict):
        return f"    {_text(check)}"
    passed = check.get("passed")
    verdict = "ok" if passed is True else "FAIL" if passed is False else "-"
    value = check.get("value")
    threshold = check.get("threshold")
    value_text = f"{value:.4g}" if isinstance(value, int | float) else _text(value)
    limit_text = f"{threshold:.4g}" if isinstance(threshold, int | float) else _text(threshold)
    note = check.get("note")
    note_text = f"  {_one_line(note)}" if isinstance(note, str) and note.strip() else ""
    name = _text(check.get("name"))
    limit = f"({limit_text})"
    return f"    {name:<{width}}  {value_text:>7} {limit:<10} {verdict}{note_text}"


def rollout_lines(route: str, body: object) -> list[str]:
    """`pointsman rollout ROUTE`: where the ramp is, the last analysis and its checks, the
    reason, the newest history events."""
    status = _status_obj(body)
    percent = status.get("percent")
    percent_text = f" ({percent} %)" if isinstance(percent, int) else ""
    lines = [
        f"{route}: canary of {_text(status.get('candidate'))} against "
        f"{_text(status.get('stable'))}: {status['phase']}, {_step_text(status)}{percent_text}"
    ]
    weights = status.get("weights")
    lines.append(f"  weights   {_weights_text(weights) if isinstance(weights, dict) else '?'}")
    in_step = (
        f"  in step   {_fmt_float(status.get('time_in_step'))}s of "
        f"{_seconds_text(status.get('step_interval'))}"
    )
    next_in = status.get("next_analysis_in")
    if isinstance(next_in, int | float) and not isinstance(next_in, bool):
        in_step += f", next analysis in {next_in:.1f}s"
    lines.append(in_step)
    lines.append(
        f"  failures  {_text(status.get('consecutive_failures'))} in a row "
        f"(limit {_text(status.get('failure_limit'))})"
    )
    last = status.get("last_analysis")
    if isinstance(last, dict):
        lines.append(
            f"  analysis  {_text(last.get('outcome'))} at {_when(last.get('at'))}: "
            f"{_one_line(str(last.get('summary') or ''))}"
        )
        checks = last.get("checks")
        if not isinstance(checks, list):
            checks = []
        width = max((len(_text(c.get("name"))) for c in checks if isinstance(c, dict)), default=0)
        lines += [_check_line(check, width) for check in checks]
    else:
        lines.append("  analysis  none yet")
    reason = status.get("reason")
    if isinstance(reason, str) and reason.strip():
        lines.append(f"  reason    {_one_line(reason)}")
    history = status.get("history")
    if isinstance(history, list) and history:
        shown = history[-ROLLOUT_HISTORY_SHOWN:]
        lines.append(f"  history   (newest {len(shown)} of {len(history)})")
        for event in shown:
            if not isinstance(event, dict):
                continue
            event_weights = event.get("weights")
            weights_text = _weights_text(event_weights) if isinstance(event_weights, dict) else "?"
            detail = event.get("detail")
            detail_text = f"  {_one_line(detail)}" if isinstance(detail, str) and detail else ""
            lines.append(
                f"    {_when(event.get('at'))}  {_text(event.get('event'))}  "
                f"{weights_text}{detail_text}"
            )
    return lines


def rollout_action_line(route: str, command: str, body: object) -> str:
    """One line confirming pause, resume, promote or abort."""
    status = _status_obj(body)
    candidate = _text(status.get("candidate"))
    where = f"{_step_text(status)} ({_ramp_weights_text(status)})"
    if command == "pause":
        return f"{route}: rollout of {candidate} paused at {where}"
    if command == "resume":
        if status["phase"] == "awaiting_confirm":
            return f"{route}: rollout of {candidate} resumed, asking the confirm hook again"
        return f"{route}: rollout of {candidate} resumed at {where}"
    if command == "abort":
        return f"{route}: canary of {candidate} aborted ({_ramp_weights_text(status)})"
    return final_line(route, status)
