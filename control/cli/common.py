"""What every control command shares: exit codes, argument types, the admin client, the
answer's text (status lines, refusals) and the subparser every control command starts from."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from control.client import (
    DEFAULT_ADMIN_URL,
    AdminClient,
    AdminUnreachable,
    Reply,
    parse_admin_url,
)

# Pool names as the config allows them (proxy/config.py): checked locally for POOL=N.
POOL_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")


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
    """`127.0.0.1:9001 up` (or `down`, or `draining, 2 in flight`) and whether it takes
    requests."""
    if not isinstance(endpoint, dict):
        return _text(endpoint), False
    if endpoint.get("state") == "draining":
        in_flight = _text(endpoint.get("in_flight", 0))
        return f"{_text(endpoint.get('address'))} draining, {in_flight} in flight", False
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
        return AdminClient(url, token, wait_fleet=getattr(args, "wait_fleet", None))
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


def positive_int(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def wait_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= 120:
        raise argparse.ArgumentTypeError(f"expected seconds in (0, 120], got {text!r}")
    return seconds


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
        parser.add_argument(
            "--wait-fleet",
            metavar="SECONDS",
            nargs="?",
            const=10.0,
            type=wait_seconds,
            default=None,
            help="with state.store: etcd, answer once every member of the fleet has the change"
            " (default 10 s; exit 1 naming the members that lag)",
        )
    parser.set_defaults(func=func, parser=parser)
    return parser
