"""The `pointsman` command: `run` and `check`, the deploy-script commands `status`, `weights`,
`flip` and `rollback`, `diffs` for reading a shadow's comparison, and `canary` and `rollout` for
automated canary rollouts (start one and optionally follow it to its end; show, pause, resume,
promote or abort one); all but the first two call the control API (control/client.py)."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import re
import shlex
import sys
import time
import urllib.parse
from collections.abc import Callable, Sequence
from http import HTTPStatus
from typing import Any

import uvloop

from control.client import (
    DEFAULT_ADMIN_URL,
    ROLLOUT_COMMANDS,
    AdminClient,
    AdminUnreachable,
    Reply,
    parse_admin_url,
)
from proxy.config import ConfigError, load_config, parse_duration

# Allocations between young-generation collections (CPython's default is 700): the request
# path allocates a few dozen containers per request, so the default runs the collector every
# ~30 requests.
GC_YOUNG_THRESHOLD = 20_000
# Pool names as the config allows them (proxy/config.py): checked locally for POOL=N.
POOL_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")


def cmd_run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as err:
        print(str(err), file=sys.stderr)
        return 2
    except OSError as err:
        print(f"{args.config}: cannot read config: {err.strerror}", file=sys.stderr)
        return 2
    from control.service import Service, StartupError

    # The request path allocates many short-lived containers; a larger young generation and
    # freezing what start-up allocated keep collector pauses out of the latency tail.
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 50, 100)
    try:
        uvloop.run(Service(config).run())
    except StartupError as err:
        print(f"pointsman: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"pointsman: {err}", file=sys.stderr)
        return 1
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    try:
        load_config(args.config)
    except ConfigError as err:
        print(str(err), file=sys.stderr)
        return 2
    except OSError as err:
        print(f"{args.config}: cannot read config: {err.strerror}", file=sys.stderr)
        return 2
    print(f"{args.config}: ok")
    return 0


# --- control commands: status, weights, flip, rollback, ... over the control API ----------

EXIT_CODES = """\
exit codes:
  run, check:
    0  clean stop / the config is valid
    1  start-up failure (run)
    2  the config is invalid or cannot be read
  status, weights, flip, rollback, diffs, rollout:
    0  success
    1  the admin API refused the call (4xx/5xx); one line on stderr says why
    2  usage error
    3  the admin API could not be reached (refused, timed out, not HTTP)
  canary:
    0  the rollout started (without --wait) / the candidate was promoted (--wait)
    1  the candidate was rolled back or the rollout aborted (--wait), or the admin API
       refused the start; one line on stderr says why
    2  usage error, or the admin API could not be reached (at the start, or for several
       polls in a row while waiting)
    130  interrupted while waiting; the rollout continues server-side

environment:
  POINTSMAN_ADMIN  admin API URL (default http://127.0.0.1:8081); --admin overrides it
  POINTSMAN_TOKEN  bearer token, sent with every control call when set
"""

CONTROL_EPILOG = """\
exit codes: 0 success; 1 the admin API refused the call (4xx/5xx, reason on stderr);
2 usage error; 3 the admin API could not be reached.
With --json the answer's body is printed to stdout, also for a refusal (exit 1).
Admin URL: --admin, else POINTSMAN_ADMIN, else http://127.0.0.1:8081.
Token: POINTSMAN_TOKEN, sent as "Authorization: Bearer <token>".
"""

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

EXIT_REFUSED = 1
EXIT_UNREACHABLE = 3
EXIT_INTERRUPTED = 130


class _BadAnswer(ValueError):
    """A 2xx answer whose body is not the documented shape."""


def admin_url(text: str) -> str:
    try:
        return parse_admin_url(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def pool_weight(text: str) -> tuple[str, int]:
    """One POOL=N argument of `weights`."""
    pool, sep, weight = text.partition("=")
    if not sep or not pool or not weight:
        raise argparse.ArgumentTypeError(f"expected POOL=N, got {text!r}")
    if not POOL_NAME_RE.fullmatch(pool):
        raise argparse.ArgumentTypeError(
            f"bad pool name in {text!r} (letters, digits, '_', '.' and '-')"
        )
    if not weight.isascii() or not weight.isdigit():
        raise argparse.ArgumentTypeError(f"expected an integer >= 0 after '=', got {text!r}")
    return pool, int(weight)


def version_arg(text: str) -> int:
    """--if-match VERSION: a version number, also accepted as an ETag ("7")."""
    value = text.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    if not value.isascii() or not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected a version number, got {text!r}")
    return int(value)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _text(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return str(value)
    return json.dumps(value)


def _weights_text(weights: object) -> str:
    if not isinstance(weights, dict):
        raise _BadAnswer(f"weights: expected an object, got {_text(weights)}")
    return " ".join(f"{pool}={_text(weight)}" for pool, weight in weights.items())


def _route_obj(route: object) -> dict[str, Any]:
    if not isinstance(route, dict):
        raise _BadAnswer(f"expected a route object, got {_text(route)}")
    return route


def _endpoint_text(endpoint: object) -> tuple[str, bool]:
    """`127.0.0.1:9001 up` and whether it is known to be healthy."""
    if not isinstance(endpoint, dict):
        return _text(endpoint), False
    healthy = endpoint.get("healthy")
    state = "?" if not isinstance(healthy, bool) else "up" if healthy else "down"
    return f"{_text(endpoint.get('address'))} {state}", healthy is True


def route_lines(route: object) -> list[str]:
    """`shop  version 7  live green  weights blue=0 green=100  (flips 3, rollbacks 1)` and one
    line per pool: `  blue   1/2 healthy  127.0.0.1:9001 up  127.0.0.1:9002 down`."""
    r = _route_obj(route)
    lines = [
        f"{_text(r.get('name'))}  version {_text(r.get('version'))}  live {_text(r.get('live'))}"
        f"  weights {_weights_text(r.get('weights', {}))}"
        f"  (flips {_text(r.get('flips', 0))}, rollbacks {_text(r.get('rollbacks', 0))})"
    ]
    pools = r.get("pools") or {}
    if not isinstance(pools, dict):
        raise _BadAnswer(f"pools: expected an object, got {_text(pools)}")
    width = max((len(str(name)) for name in pools), default=0)
    for name, pool in pools.items():
        endpoints = pool.get("endpoints", []) if isinstance(pool, dict) else []
        if not isinstance(endpoints, list):
            raise _BadAnswer(f"pools.{name}.endpoints: expected an array")
        shown = [_endpoint_text(endpoint) for endpoint in endpoints]
        healthy = sum(1 for _, up in shown if up)
        listing = "  ".join(text for text, _ in shown) or "no endpoints"
        lines.append(f"  {name:<{width}}  {healthy}/{len(shown)} healthy  {listing}")
    return lines


def status_lines(body: object) -> list[str]:
    if isinstance(body, dict) and "routes" in body:
        routes = body["routes"]
        if not isinstance(routes, list):
            raise _BadAnswer(f"routes: expected an array, got {_text(routes)}")
        if not routes:
            return ["no routes"]
        return [line for route in routes for line in route_lines(route)]
    return route_lines(body)


def _route_version(route: dict[str, Any], reply: Reply) -> str:
    return _text(route.get("version", reply.etag))


def refusal(reply: Reply, token_set: bool) -> str:
    """The one-line reason for a non-2xx answer: `409 version conflict (current version 9)`."""
    body = reply.body if isinstance(reply.body, dict) else {}
    error = body.get("error")
    if isinstance(error, str) and error.strip():
        reason = error
    else:
        try:
            reason = HTTPStatus(reply.status).phrase
        except ValueError:
            reason = "error"
        if reply.body is None:
            reason += " (not a control API answer)"
    detail = body.get("detail")
    if isinstance(detail, dict) and "current_version" in detail:
        if "current version" not in reason:
            reason += f" (current version {_text(detail['current_version'])})"
    elif isinstance(detail, str) and detail.strip():
        reason += f": {detail}"
    if reply.status == 401 and not token_set:
        reason += " (POINTSMAN_TOKEN is not set)"
    return _one_line(f"{reply.status} {reason}")


def _fail(message: str) -> None:
    print(f"pointsman: {_one_line(message)}", file=sys.stderr)


def _admin_client(args: argparse.Namespace) -> AdminClient:
    """The client for --admin (else $POINTSMAN_ADMIN, else the default) and $POINTSMAN_TOKEN;
    a usage error (exit 2) when either is unusable."""
    parser: argparse.ArgumentParser = args.parser
    url = args.admin
    if url is None:
        url = os.environ.get("POINTSMAN_ADMIN", "").strip() or DEFAULT_ADMIN_URL
        try:
            url = parse_admin_url(url)
        except ValueError as err:
            parser.error(f"POINTSMAN_ADMIN: {err}")
    token = os.environ.get("POINTSMAN_TOKEN")
    try:
        return AdminClient(url, token)
    except ValueError as err:
        parser.error(f"POINTSMAN_TOKEN: {err}")


def _control(
    args: argparse.Namespace,
    call: Callable[[AdminClient], Reply],
    describe: Callable[[Reply], list[str]],
) -> int:
    """Make one control call and report it: the shared part of every control command."""
    client = _admin_client(args)
    try:
        reply = call(client)
    except AdminUnreachable as err:
        _fail(str(err))
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    if args.json and reply.body is not None:
        print(json.dumps(reply.body, indent=2))
    if not reply.ok:
        _fail(refusal(reply, client.token is not None))
        return EXIT_REFUSED
    if reply.body is None:
        _fail(f"unexpected answer from admin API at {client.base_url} ({reply.status}, not JSON)")
        return EXIT_REFUSED
    if args.json:
        return 0
    try:
        lines = describe(reply)
    except _BadAnswer as err:
        _fail(f"unexpected answer from admin API at {client.base_url}: {err}")
        return EXIT_REFUSED
    for line in lines:
        print(line)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    return _control(
        args, lambda client: client.status(args.route), lambda reply: status_lines(reply.body)
    )


def cmd_weights(args: argparse.Namespace) -> int:
    weights: dict[str, int] = {}
    for pool, weight in args.weights:
        if pool in weights:
            args.parser.error(f"pool {pool!r} given more than once")
        weights[pool] = weight

    def describe(reply: Reply) -> list[str]:
        route = _route_obj(reply.body)
        name = _text(route.get("name", args.route))
        weights_text = _weights_text(route.get("weights", weights))
        return [f"{name}: weights set to {weights_text} (version {_route_version(route, reply)})"]

    return _control(
        args, lambda client: client.set_weights(args.route, weights, args.if_match), describe
    )


def cmd_flip(args: argparse.Namespace) -> int:
    def describe(reply: Reply) -> list[str]:
        route = _route_obj(reply.body)
        name = _text(route.get("name", args.route))
        live = _text(route.get("live") or args.pool)
        return [f"{name}: flipped to {live} (version {_route_version(route, reply)})"]

    return _control(
        args,
        lambda client: client.flip(args.route, args.pool, args.force, args.if_match),
        describe,
    )


def cmd_rollback(args: argparse.Namespace) -> int:
    def describe(reply: Reply) -> list[str]:
        route = _route_obj(reply.body)
        name = _text(route.get("name", args.route))
        weights_text = _weights_text(route.get("weights", {}))
        live = route.get("live")
        live_text = f"live {_text(live)}, " if live is not None else ""
        version = _route_version(route, reply)
        return [f"{name}: rolled back to {weights_text} ({live_text}version {version})"]

    return _control(args, lambda client: client.rollback(args.route, args.if_match), describe)


# Request headers left out of a replay command: the proxy adds them again (or curl does), and a
# redacted credential would only be sent as the text "[redacted]".
_REPLAY_SKIPPED = frozenset(
    {"content-length", "transfer-encoding", "x-forwarded-for", "x-forwarded-proto",
     "x-forwarded-host", "via", "connection"}
)  # fmt: skip
REDACTED = "[redacted]"


def _percent(value: object) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value * 100:.1f}%"
    return _text(value)


def replay_command(diff: dict[str, Any]) -> str:
    """A curl command that sends the mirrored request to the shadow endpoint again."""
    url = f"http://{diff.get('endpoint', '')}{diff.get('target', '/')}"
    method = str(diff.get("method", "GET"))
    # curl -X HEAD would wait for the body the answer's Content-Length announces; -I does not.
    verb = ["-I"] if method == "HEAD" else ["-i", "-X", shlex.quote(method)]
    parts = ["curl", "-sS", *verb, shlex.quote(url)]
    omitted = []
    for pair in diff.get("request_headers") or []:
        if not isinstance(pair, list) or len(pair) != 2:
            continue
        name, value = str(pair[0]), str(pair[1])
        if name.lower() in _REPLAY_SKIPPED:
            continue
        if value == REDACTED:
            omitted.append(name)
            continue
        parts += ["-H", shlex.quote(f"{name}: {value}")]
    body = diff.get("request_body")
    if isinstance(body, str):
        parts += ["--data-binary", shlex.quote(body)]
    command = " ".join(parts)
    if omitted:
        command += f"   # left out (redacted): {', '.join(omitted)}"
    if diff.get("request_body_truncated"):
        command += "   # body truncated in the sample"
    return command


def diffs_lines(body: object) -> list[str]:
    """The summary of a shadow, its paths, then each kept mismatch with a replay command."""
    if not isinstance(body, dict) or not isinstance(body.get("summary"), dict):
        raise _BadAnswer("expected an object with 'summary' and 'diffs'")
    summary: dict[str, Any] = body["summary"]
    dropped = summary.get("dropped") or {}
    dropped_total = sum(v for v in dropped.values() if isinstance(v, int))
    dropped_text = ", ".join(f"{k} {v}" for k, v in dropped.items() if v) or "none"
    lines = [
        f"{_text(body.get('route'))}/{_text(body.get('pool'))}: "
        f"{_text(summary.get('compared'))} compared, {_text(summary.get('mismatched'))} "
        f"mismatched ({_percent(summary.get('mismatch_rate'))}), "
        f"{_text(summary.get('matched'))} matched, {_text(summary.get('noise'))} noise only; "
        f"{_text(summary.get('mirrored'))} mirrored, {dropped_total} dropped ({dropped_text})"
    ]
    paths = summary.get("paths") or []
    if paths:
        baseline = bool(summary.get("baseline_samples"))
        lines.append("paths: diff rate" + (", noise rate (baseline)" if baseline else ""))
        width = max(len(str(p.get("path"))) for p in paths if isinstance(p, dict))
        for p in paths:
            if not isinstance(p, dict):
                continue
            noise = f"  noise {_percent(p.get('noise_rate')):>6}" if baseline else ""
            verdict = "counts" if p.get("counts") else "noise" if baseline else "below threshold"
            lines.append(
                f"  {p.get('path')!s:<{width}}  diff {_percent(p.get('diff_rate')):>6}"
                f"{noise}  {verdict}"
            )
    diffs = body.get("diffs")
    if not isinstance(diffs, list):
        raise _BadAnswer("diffs: expected an array")
    if not diffs:
        lines.append("no mismatches kept")
        return lines
    lines.append(f"newest {len(diffs)} of {_text(body.get('kept'))} kept mismatches:")
    for number, diff in enumerate(diffs, start=1):
        if not isinstance(diff, dict):
            raise _BadAnswer("diffs: expected objects")
        at = diff.get("at")
        when = (
            time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(at))
            if isinstance(at, int | float)
            else "?"
        )
        lines.append("")
        lines.append(
            f"#{number} {_text(diff.get('method'))} {_text(diff.get('target'))}  {when}  "
            f"id {_text(diff.get('request_id'))}  primary {_text(diff.get('primary_status'))} "
            f"in {_text(diff.get('primary_ms'))} ms, shadow {_text(diff.get('shadow_status'))} "
            f"in {_text(diff.get('shadow_ms'))} ms"
        )
        for d in diff.get("differences") or []:
            if not isinstance(d, dict):
                continue
            noise = "  (noise)" if d.get("noise") else ""
            lines.append(
                f"  {_text(d.get('path'))}: primary {_text(d.get('primary'))}  "
                f"shadow {_text(d.get('shadow'))}{noise}"
            )
        lines.append(f"  replay: {replay_command(diff)}")
    return lines


def cmd_diffs(args: argparse.Namespace) -> int:
    return _control(
        args,
        lambda client: client.diffs(args.route, args.pool, args.limit),
        lambda reply: diffs_lines(reply.body),
    )


# --- canary and rollout: automated ramps over the control API ------------------------------

# Seconds between two GET .../rollout while `canary --wait` follows a rollout.
WAIT_POLL_INTERVAL = 1.0
# Failed polls in a row (admin unreachable, or a 5xx) before `canary --wait` gives up: enough to
# ride out a restart of the admin listener, short enough to tell a deploy script it is blind.
WAIT_POLL_FAILURES = 5
# History events `pointsman rollout ROUTE` shows (the newest ones).
ROLLOUT_HISTORY_SHOWN = 5
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


def positive_int(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _add_control_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help_text: str,
    func: Callable[[argparse.Namespace], int],
    if_match: bool = True,
    epilog: str = CONTROL_EPILOG,
    description: str | None = None,
) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        name,
        help=help_text,
        description=description or help_text[0].upper() + help_text[1:] + ".",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Also accepted after the subcommand; SUPPRESS keeps a value given before it.
    parser.add_argument(
        "--admin",
        metavar="URL",
        type=admin_url,
        default=argparse.SUPPRESS,
        help=f"admin API URL (default: $POINTSMAN_ADMIN or {DEFAULT_ADMIN_URL})",
    )
    parser.add_argument("--json", action="store_true", help="print the answer's JSON body")
    if if_match:
        parser.add_argument(
            "--if-match",
            metavar="VERSION",
            type=version_arg,
            default=None,
            help="refuse (409) unless the state is still at this version",
        )
    parser.set_defaults(func=func, parser=parser)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pointsman",
        description="Traffic-shifting HTTP reverse proxy.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    parser.add_argument(
        "--admin",
        metavar="URL",
        type=admin_url,
        default=None,
        help=f"admin API URL for the control commands (default: $POINTSMAN_ADMIN or "
        f"{DEFAULT_ADMIN_URL})",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the proxy")
    run.add_argument("--config", required=True, help="YAML config file")
    run.set_defaults(func=cmd_run)
    check = sub.add_parser("check", help="validate a config file and exit")
    check.add_argument("--config", required=True, help="YAML config file")
    check.set_defaults(func=cmd_check)

    status = _add_control_parser(
        sub, "status", "show routes: version, live pool, weights, endpoint health", cmd_status,
        if_match=False,
    )  # fmt: skip
    status.add_argument("route", metavar="ROUTE", nargs="?", help="one route (default: all)")
    weights = _add_control_parser(sub, "weights", "set a route's pool weights", cmd_weights)
    weights.add_argument("route", metavar="ROUTE")
    weights.add_argument(
        "weights", metavar="POOL=N", nargs="+", type=pool_weight, help="e.g. blue=75 green=25"
    )
    flip = _add_control_parser(sub, "flip", "send all of a route's traffic to one pool", cmd_flip)
    flip.add_argument("route", metavar="ROUTE")
    flip.add_argument("pool", metavar="POOL")
    flip.add_argument(
        "--force", action="store_true", help="flip even if the pool has no healthy endpoint"
    )
    rollback = _add_control_parser(
        sub, "rollback", "restore a route's assignment before its last change", cmd_rollback
    )
    rollback.add_argument("route", metavar="ROUTE")
    diffs = _add_control_parser(
        sub, "diffs", "show a shadow's comparison: rates per path and the latest mismatches",
        cmd_diffs, if_match=False,
    )  # fmt: skip
    diffs.add_argument("route", metavar="ROUTE")
    diffs.add_argument("pool", metavar="POOL", help="the shadow pool")
    diffs.add_argument(
        "--limit", type=positive_int, default=5, help="mismatches to show (default 5)"
    )
    _add_canary_parsers(sub)
    return parser


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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        result: int = args.func(args)
    except BrokenPipeError:
        # The reader went away (`pointsman status --json | head`): not an error worth a
        # traceback. Point stdout at /dev/null so the interpreter's final flush is quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return result


if __name__ == "__main__":
    sys.exit(main())
