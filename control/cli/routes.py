"""The deploy-script commands: `status`, `weights`, `flip` and `rollback`."""

from __future__ import annotations

import argparse

from control.cli.common import (
    _control,
    _route_obj,
    _route_version,
    _text,
    _weights_text,
    status_lines,
)
from control.client import (
    Reply,
)


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
