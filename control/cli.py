"""The `pointsman` command: `run` and `check`, the deploy-script commands `status`, `weights`,
`flip` and `rollback`, and `diffs` for reading a shadow's comparison; all but the first two call
the control API (control/client.py)."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import re
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from http import HTTPStatus
from typing import Any

import uvloop

from control.client import DEFAULT_ADMIN_URL, AdminClient, AdminUnreachable, Reply, parse_admin_url
from proxy.config import ConfigError, load_config

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


# --- control commands: status, weights, flip, rollback over the control API --------------

EXIT_CODES = """\
exit codes:
  run, check:
    0  clean stop / the config is valid
    1  start-up failure (run)
    2  the config is invalid or cannot be read
  status, weights, flip, rollback, diffs:
    0  success
    1  the admin API refused the call (4xx/5xx); one line on stderr says why
    2  usage error
    3  the admin API could not be reached (refused, timed out, not HTTP)

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


def _control(
    args: argparse.Namespace,
    call: Callable[[AdminClient], Reply],
    describe: Callable[[Reply], list[str]],
) -> int:
    """Make one control call and report it: the shared part of every control command."""
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
        client = AdminClient(url, token)
    except ValueError as err:
        parser.error(f"POINTSMAN_TOKEN: {err}")
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
) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        name,
        help=help_text,
        description=help_text[0].upper() + help_text[1:] + ".",
        epilog=CONTROL_EPILOG,
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
    return parser


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
