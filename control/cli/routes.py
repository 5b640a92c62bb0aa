"""The deploy-script commands: `status`, `weights`, `flip` and `rollback`."""

from __future__ import annotations

import argparse
import sys

from control.cli.common import (
    _BadAnswer,
    _control,
    _route_obj,
    _route_version,
    _text,
    _weights_text,
    status_lines,
)
from control.client import (
    AdminClient,
    Reply,
)


def cmd_status(args: argparse.Namespace) -> int:
    def call(client: AdminClient) -> Reply:
        reply = client.status(args.route)
        if not reply.ok or not isinstance(reply.body, dict):
            return reply
        fleet = client.fleet()  # 404 on a single host: nothing to add
        if fleet.ok and isinstance(fleet.body, dict):
            return reply._replace(body={**reply.body, "fleet": fleet.body})
        return reply

    def describe(reply: Reply) -> list[str]:
        body = reply.body
        if not isinstance(body, dict) or "fleet" not in body:
            return status_lines(body)
        routes = {k: v for k, v in body.items() if k != "fleet"}
        return status_lines(routes) + fleet_lines(body["fleet"])

    return _control(args, call, describe)


def fleet_lines(fleet: object) -> list[str]:
    """`fleet shop at /pointsman/shop, version 7: 2 members, 1 lagging` and one line each."""
    if not isinstance(fleet, dict) or not isinstance(fleet.get("members"), list):
        raise _BadAnswer(f"fleet: expected an object with members, got {_text(fleet)}")
    members = [m for m in fleet["members"] if isinstance(m, dict)]
    behind = [m for m in members if m.get("lag")]
    lines = [
        f"fleet {_text(fleet.get('fleet'))} at {_text(fleet.get('prefix'))}, version "
        f"{_text(fleet.get('version'))}: {len(members)} member{'' if len(members) == 1 else 's'}"
        f"{f', {len(behind)} lagging' if behind else ', all in step'}"
    ]
    for m in members:
        member, admin = _text(m.get("id")), _text(m.get("admin"))
        line = f"  {member}  admin {admin}  version {_text(m.get('version'))}"
        if m.get("lag"):
            line += f"  lags {_text(m.get('lag'))}"
        if m.get("error"):
            line += f"  error: {_text(m.get('error'))}"
        lines.append(line)
    return lines


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


def cmd_reload(args: argparse.Namespace) -> int:
    """`pointsman reload`: the reload's outcome, or the config's problems (exit 1)."""

    def describe(reply: Reply) -> list[str]:
        body = _route_obj(reply.body)
        seconds = body.get("seconds")
        took = f" in {seconds * 1000:.1f} ms" if isinstance(seconds, int | float) else ""
        version = _text(body.get("version"))
        lines = [f"reloaded {_text(body.get('config'))}{took}: state version {version}"]
        lines += [f"  state: {_text(w)}" for w in body.get("warnings") or []]
        lines += [
            f"  {_text(key)} changed: it takes effect at the next start"
            for key in body.get("restart_needed") or []
        ]
        return lines

    replies: list[Reply] = []

    def call(client: AdminClient) -> Reply:
        replies.append(client.reload())
        return replies[-1]

    code = _control(args, call, describe)
    if code != 0 and replies and not args.json:
        # After the one-line refusal: each problem as `pointsman check` prints it.
        body = replies[-1].body
        detail = body.get("detail") if isinstance(body, dict) else None
        problems = detail.get("problems") if isinstance(detail, dict) else None
        for problem in problems if isinstance(problems, list) else []:
            print(_text(problem), file=sys.stderr)
    return code


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
