"""`pointsman canary` (start a rollout, optionally follow it to its end) and `pointsman rollout`
(show, pause, resume, promote or abort one), with their argument types and subparsers."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import urllib.parse
from typing import Any

from control.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_REFUSED,
    _add_control_parser,
    _admin_client,
    _BadAnswer,
    _control,
    _fail,
    _route_obj,
    _text,
    positive_int,
    refusal,
)
from control.cli.rollout_text import (
    _analysis_at,
    _seconds_text,
    _status_obj,
    final_line,
    progress_line,
    rollout_action_line,
    rollout_lines,
)
from control.client import (
    ROLLOUT_COMMANDS,
    AdminClient,
    AdminUnreachable,
    Reply,
)
from proxy.config import parse_duration

CANARY_DESCRIPTION = """\
Start an automated canary rollout (POST /v1/routes/ROUTE/rollout): the server moves CANDIDATE
through the --steps, holding each for --interval, and compares it with the stable pool every
analysis interval; it advances on passed analyses and rolls the candidate back to 0 % after
--failure-limit failures in a row. Without --wait the command returns once the rollout has
started; `pointsman rollout ROUTE` shows it later.

Only the options given are sent; the server applies its defaults to the rest. Durations (30s,
500ms, 2m, 1h, or plain seconds) are checked here and sent as typed."""

CANARY_EPILOG = """\
exit codes: 0 started (without --wait) or promoted (with --wait); 1 rolled back or aborted,
or the admin API refused the start (4xx/5xx, reason on stderr); 2 usage error, or the admin
API could not be reached (also after several failed polls in a row with --wait);
130 interrupted (Ctrl-C): the rollout continues server-side.
Admin URL: --admin, else POINTSMAN_ADMIN, else http://127.0.0.1:8081.
Token: POINTSMAN_TOKEN, sent as "Authorization: Bearer <token>".
"""


# --- canary and rollout: automated ramps over the control API ------------------------------

# Seconds between two GET .../rollout while `canary --wait` follows a rollout.
WAIT_POLL_INTERVAL = 1.0
# Failed polls in a row (admin unreachable, or a 5xx) before `canary --wait` gives up: enough to
# ride out a restart of the admin listener, short enough to tell a deploy script it is blind.
WAIT_POLL_FAILURES = 5
# Candidate percentages: a step is the candidate's share of the route's traffic.
PERCENT = 100
# `canary` exits 2 for usage errors and for connection errors alike (the deploy-script contract
# of the issue): 1 is kept for "the candidate did not make it".
EXIT_CANARY_UNREACHABLE = 2
FINISHED_PHASES = frozenset({"promoted", "failed", "aborted"})

# Tests replace it to interrupt a wait.
_sleep = time.sleep


def steps_arg(text: str) -> list[int]:
    """--steps 1,5,25,50,100: increasing integer percents of the candidate."""
    steps: list[int] = []
    for part in text.split(","):
        value = part.strip()
        if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= PERCENT:
            raise argparse.ArgumentTypeError(
                f"expected increasing integer percents 1..{PERCENT} separated by commas "
                f"(like 1,5,25,50,100), got {text!r}"
            )
        if steps and int(value) <= steps[-1]:
            raise argparse.ArgumentTypeError(
                f"steps must increase ({int(value)} after {steps[-1]}), got {text!r}"
            )
        steps.append(int(value))
    return steps


def duration_arg(text: str) -> str:
    """A duration as the config and the API read it (30s, 500ms, 2m, 1h, or seconds); checked
    here with the same parser and passed on as typed."""
    try:
        seconds = parse_duration(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a duration like 30s, 500ms, 2m or a number of seconds, got {text!r}"
        ) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"expected a duration > 0, got {text!r}")
    return text.strip()


def _number(text: str) -> float | int:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return (
        int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value
    )


def rate_arg(text: str) -> float:
    """A fraction of requests: 0.01 is 1 %."""
    value = _number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(
            f"expected a rate between 0 and 1 (0.01 = 1 %), got {text!r}"
        )
    return float(value)


def ratio_arg(text: str) -> float | int:
    """How many times the stable pool's value the candidate may reach (>= 1)."""
    value = _number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"expected a factor >= 1 (2 = twice stable's), got {text!r}"
        )
    return value


def milliseconds_arg(text: str) -> float | int:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected milliseconds > 0, got {text!r}")
    return value


def percent_arg(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= PERCENT:
        raise argparse.ArgumentTypeError(f"expected an integer percent 1..{PERCENT}, got {text!r}")
    return int(text)


def hook_url_arg(text: str) -> str:
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"expected an http:// or https:// URL, got {text!r}")
    return text


# Analysis options of `canary` -> keys of the spec's "analysis" object.
_ANALYSIS_OPTIONS = (
    ("analysis_interval", "interval"),
    ("min_requests", "min_requests"),
    ("max_error_rate", "max_error_rate"),
    ("max_error_rate_vs_stable", "max_error_rate_vs_stable"),
    ("max_p99_ms", "max_p99_ms"),
    ("max_p99_vs_stable", "max_p99_vs_stable"),
    ("max_mismatch_rate", "max_mismatch_rate"),
    ("failure_limit", "failure_limit"),
)


def canary_spec(args: argparse.Namespace, stable: str) -> dict[str, Any]:
    """The POST .../rollout body: only what was given on the command line (the server fills in
    its defaults); durations as typed."""
    spec: dict[str, Any] = {
        "candidate": args.candidate,
        "stable": stable,
        "steps": list(args.steps),
        "step_interval": args.interval,
    }
    analysis = {
        key: getattr(args, option)
        for option, key in _ANALYSIS_OPTIONS
        if getattr(args, option) is not None
    }
    if analysis:
        spec["analysis"] = analysis
    if args.on_inconclusive is not None:
        spec["on_inconclusive"] = args.on_inconclusive
    if args.max_weight is not None:
        spec["max_weight"] = args.max_weight
    hooks = {
        key: value
        for key, value in (("url", args.webhook), ("confirm_url", args.confirm_url))
        if value is not None
    }
    if hooks:
        spec["webhooks"] = hooks
    return spec


def pick_stable(route: object, candidate: str) -> str | None:
    """The pool with the largest weight other than the candidate (the first one on a tie), or
    None when no other pool takes traffic."""
    weights = _route_obj(route).get("weights")
    if not isinstance(weights, dict):
        raise _BadAnswer(f"weights: expected an object, got {_text(weights)}")
    best: tuple[int, str] | None = None
    for pool, weight in weights.items():
        if pool == candidate or isinstance(weight, bool) or not isinstance(weight, int):
            continue
        if weight > 0 and (best is None or weight > best[0]):
            best = (weight, pool)
    return None if best is None else best[1]


def cmd_rollout(args: argparse.Namespace) -> int:
    if args.action is None:
        return _control(
            args,
            lambda client: client.rollout(args.route),
            lambda reply: rollout_lines(args.route, reply.body),
        )
    return _control(
        args,
        lambda client: client.rollout_command(args.route, args.action),
        lambda reply: [rollout_action_line(args.route, args.action, reply.body)],
    )


def _canary_refused(args: argparse.Namespace, client: AdminClient, reply: Reply) -> int:
    if args.json and reply.body is not None:
        print(json.dumps(reply.body, indent=2))
    _fail(refusal(reply, client.token is not None))
    return EXIT_REFUSED


def cmd_canary(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.parser
    if args.stable is not None and args.stable == args.candidate:
        parser.error(f"--stable must differ from the candidate (both {args.candidate!r})")
    if args.analysis_interval is not None and parse_duration(
        args.analysis_interval
    ) > parse_duration(args.interval):
        parser.error(
            f"--analysis-interval {args.analysis_interval} must not exceed "
            f"--interval {args.interval} (an analysis must fit in a step)"
        )
    client = _admin_client(args)
    try:
        stable = args.stable
        if stable is None:
            reply = client.status(args.route)
            if not reply.ok:
                return _canary_refused(args, client, reply)
            try:
                stable = pick_stable(reply.body, args.candidate)
            except _BadAnswer as err:
                _fail(f"unexpected answer from admin API at {client.base_url}: {err}")
                return EXIT_REFUSED
            if stable is None:
                parser.error(
                    f"no pool of route {args.route!r} other than {args.candidate!r} takes "
                    f"traffic: name the stable pool with --stable"
                )
        reply = client.start_rollout(args.route, canary_spec(args, stable))
    except AdminUnreachable as err:
        _fail(str(err))
        return EXIT_CANARY_UNREACHABLE
    except KeyboardInterrupt:
        _fail(
            f"interrupted; the rollout may have started: `pointsman rollout {args.route}` shows it"
        )
        return EXIT_INTERRUPTED
    if not reply.ok:
        return _canary_refused(args, client, reply)
    try:
        status = _status_obj(reply.body)
    except _BadAnswer as err:
        _fail(f"unexpected answer from admin API at {client.base_url}: {err}")
        return EXIT_REFUSED
    steps = status.get("steps")
    steps_text = ",".join(map(str, steps)) if isinstance(steps, list) else _text(steps)
    started = (
        f"{args.route}: canary of {args.candidate} started (steps {steps_text} every "
        f"{_seconds_text(status.get('step_interval'))}; stable {_text(status.get('stable'))})"
    )
    if not args.wait:
        print(json.dumps(status, indent=2) if args.json else started)
        return 0
    # With --json, stdout is kept for the final status object; the progress goes to stderr.
    out = sys.stderr if args.json else sys.stdout
    print(started, file=out, flush=True)
    try:
        return _follow(args, client, status, out)
    except KeyboardInterrupt:
        _fail(
            f"stopped waiting; the rollout continues server-side "
            f"(`pointsman rollout {args.route}` shows it, `... abort` stops it)"
        )
        return EXIT_INTERRUPTED


def _follow(args: argparse.Namespace, client: AdminClient, status: dict[str, Any], out: Any) -> int:
    """`canary --wait`: poll the rollout until it finishes, printing a line per change."""
    route = args.route
    seen: tuple[object, ...] | None = None
    seen_analysis: object = None
    failures = 0
    while True:
        phase = status["phase"]
        if phase in FINISHED_PHASES:
            print(final_line(route, status), file=out, flush=True)
            if args.json:
                print(json.dumps(status, indent=2), flush=True)
            return 0 if phase == "promoted" else EXIT_REFUSED
        analysis_at = _analysis_at(status)
        key = (phase, status.get("step"), analysis_at)
        if key != seen:
            new_analysis = analysis_at is not None and analysis_at != seen_analysis
            print(progress_line(route, status, new_analysis), file=out, flush=True)
            seen, seen_analysis = key, analysis_at
        _sleep(WAIT_POLL_INTERVAL)
        try:
            reply = client.rollout(route)
        except AdminUnreachable as err:
            failures += 1
            if failures >= WAIT_POLL_FAILURES:
                _fail(
                    f"{err} ({failures} polls in a row); stopped waiting, the rollout may still "
                    f"be running server-side"
                )
                return EXIT_CANARY_UNREACHABLE
            continue
        if not reply.ok:
            failures += 1
            if reply.status >= 500 and failures < WAIT_POLL_FAILURES:
                continue
            _fail(f"while waiting: {refusal(reply, client.token is not None)}")
            return EXIT_REFUSED
        try:
            status = _status_obj(reply.body)
        except _BadAnswer as err:
            _fail(f"unexpected answer from admin API at {client.base_url}: {err}")
            return EXIT_REFUSED
        failures = 0


def _add_canary_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    canary = _add_control_parser(
        sub, "canary", "start an automated canary rollout of a pool, and optionally follow it",
        cmd_canary, if_match=False, epilog=CANARY_EPILOG, description=CANARY_DESCRIPTION,
    )  # fmt: skip
    canary.add_argument("route", metavar="ROUTE")
    canary.add_argument("candidate", metavar="CANDIDATE", help="the pool to ramp up")
    canary.add_argument(
        "--stable",
        metavar="POOL",
        help="the pool it is compared with and takes traffic from (default: the route's pool "
        "with the largest weight other than CANDIDATE, read with GET /v1/routes/ROUTE first)",
    )
    canary.add_argument(
        "--steps", metavar="LIST", type=steps_arg, required=True,
        help="the candidate's percent at each step, increasing, e.g. 1,5,25,50,100",
    )  # fmt: skip
    canary.add_argument(
        "--interval", metavar="DURATION", type=duration_arg, required=True,
        help="how long each step lasts, e.g. 30s, 2m (a step advances only after a passed "
        "analysis)",
    )  # fmt: skip
    analysis = canary.add_argument_group(
        "analysis (server defaults when not given)",
        "Each window compares the candidate with the stable pool; a step passes when no "
        "check fails.",
    )
    analysis.add_argument(
        "--analysis-interval", metavar="DURATION", type=duration_arg,
        help="how often the candidate is judged (at most --interval)",
    )  # fmt: skip
    analysis.add_argument(
        "--min-requests", metavar="N", type=positive_int,
        help="candidate requests a window needs for a verdict",
    )  # fmt: skip
    analysis.add_argument(
        "--max-error-rate", metavar="RATE", type=rate_arg,
        help="the candidate's highest 5xx rate (0.01 = 1 %%)",
    )  # fmt: skip
    analysis.add_argument(
        "--max-error-rate-vs-stable", metavar="FACTOR", type=ratio_arg,
        help="the candidate's highest 5xx rate as a multiple of stable's",
    )  # fmt: skip
    analysis.add_argument(
        "--max-p99-ms", metavar="MS", type=milliseconds_arg,
        help="the candidate's highest p99 latency in milliseconds",
    )  # fmt: skip
    analysis.add_argument(
        "--max-p99-vs-stable", metavar="FACTOR", type=ratio_arg,
        help="the candidate's highest p99 as a multiple of stable's",
    )  # fmt: skip
    analysis.add_argument(
        "--max-mismatch-rate", metavar="RATE", type=rate_arg,
        help="the highest shadow mismatch rate (when the route shadows the candidate)",
    )  # fmt: skip
    analysis.add_argument(
        "--failure-limit", metavar="N", type=positive_int,
        help="failed analyses in a row that roll the candidate back",
    )  # fmt: skip
    analysis.add_argument(
        "--on-inconclusive", choices=("pause", "wait"),
        help="at a step's end without a verdict (too few requests): pause, or keep waiting",
    )  # fmt: skip
    canary.add_argument(
        "--max-weight", metavar="N", type=percent_arg,
        help="end the ramp at this percent (it replaces the steps at or above it)",
    )  # fmt: skip
    canary.add_argument(
        "--webhook", metavar="URL", type=hook_url_arg, help="POST every rollout event here"
    )
    canary.add_argument(
        "--confirm-url", metavar="URL", type=hook_url_arg,
        help="ask this URL to approve the final step",
    )  # fmt: skip
    canary.add_argument(
        "--wait", action="store_true",
        help="follow the rollout until it is promoted, rolled back or aborted, printing each "
        "step and analysis (with --json: progress on stderr, the final status on stdout)",
    )  # fmt: skip

    rollout = _add_control_parser(
        sub, "rollout", "show a route's canary rollout, or pause, resume, promote or abort it",
        cmd_rollout, if_match=False,
    )  # fmt: skip
    rollout.add_argument("route", metavar="ROUTE")
    rollout.add_argument(
        "action", nargs="?", choices=ROLLOUT_COMMANDS,
        help="without one: the rollout's status (phase, step, weights, last analysis, history)",
    )  # fmt: skip
