"""`pointsman pool add|set|rm|drain`: a route's pools and endpoints at run time."""

from __future__ import annotations

import argparse
import time
from typing import Any, Final

from control.cli.common import (
    EXIT_REFUSED,
    _add_control_parser,
    _BadAnswer,
    _control,
    _fail,
    _text,
    positive_int,
)
from control.client import AdminClient, Reply

# How often `drain --wait` asks for the endpoint's requests in flight: a drain takes as long
# as the slowest request, so a few reads a second are plenty and cost the master nothing.
DRAIN_POLL_INTERVAL: Final = 0.2
# `drain --wait` without --timeout: longer than most requests, short enough for a deploy step.
DEFAULT_DRAIN_TIMEOUT: Final = 60


def _pool_obj(body: object) -> dict[str, Any]:
    if not isinstance(body, dict) or not isinstance(body.get("endpoints"), list):
        raise _BadAnswer(f"expected a pool object with endpoints, got {_text(body)}")
    return body


def endpoint_words(endpoint: object) -> str:
    """`10.0.0.7:8080 up`, `10.0.0.7:8080 draining, 3 in flight`."""
    if not isinstance(endpoint, dict):
        return _text(endpoint)
    words = f"{_text(endpoint.get('address'))} {_text(endpoint.get('state'))}"
    in_flight = endpoint.get("in_flight")
    if endpoint.get("state") == "draining" or in_flight:
        words += f", {_text(in_flight)} in flight"
    return words


def pool_line(route: str, body: object, reply: Reply) -> str:
    """`shop/v2  weight 0  10.0.0.7:8080 up; 10.0.0.8:8080 up  (version 5)`."""
    pool = _pool_obj(body)
    endpoints = "; ".join(endpoint_words(e) for e in pool["endpoints"]) or "no endpoints"
    return (
        f"{route}/{_text(pool.get('pool'))}  weight {_text(pool.get('weight'))}  {endpoints}"
        f"  (version {_text(reply.etag)})"
    )


def cmd_pool_add(args: argparse.Namespace) -> int:
    def describe(reply: Reply) -> list[str]:
        verb = "created" if reply.status == 201 else "extended"
        return [f"pool {verb}: {pool_line(args.route, reply.body, reply)}"]

    return _control(
        args,
        lambda c: c.add_endpoints(args.route, args.pool, args.endpoints, args.if_match),
        describe,
    )


def cmd_pool_set(args: argparse.Namespace) -> int:
    return _control(
        args,
        lambda c: c.set_endpoints(args.route, args.pool, args.endpoints, args.if_match),
        lambda reply: [f"pool set: {pool_line(args.route, reply.body, reply)}"],
    )


def cmd_pool_rm(args: argparse.Namespace) -> int:
    if args.endpoint is None:
        return _control(
            args,
            lambda c: c.delete_pool(args.route, args.pool, args.if_match),
            lambda reply: [f"pool deleted: {args.route}/{args.pool} (version {_text(reply.etag)})"],
        )
    return _control(
        args,
        lambda c: c.remove_endpoint(args.route, args.pool, args.endpoint, args.if_match),
        lambda reply: [f"endpoint removed: {pool_line(args.route, reply.body, reply)}"],
    )


def _in_flight(body: object, endpoint: str) -> int | None:
    """The endpoint's requests in flight; None when the pool no longer lists it."""
    for item in _pool_obj(body)["endpoints"]:
        if isinstance(item, dict) and item.get("address") == endpoint:
            count = item.get("in_flight", 0)
            return count if isinstance(count, int) else 0
    return None


def cmd_pool_drain(args: argparse.Namespace) -> int:
    drained: dict[str, Any] = {}

    def call(client: AdminClient) -> Reply:
        # Draining an endpoint that already drains answers 200 too: a retried step waits.
        reply = client.drain(args.route, args.pool, args.endpoint, args.if_match)
        if not args.wait or not reply.ok:
            return reply
        address = _drained_address(reply.body, args.endpoint)
        started = time.monotonic()
        deadline = started + args.timeout
        while True:
            left = _in_flight(reply.body, address)
            if not left:
                drained["seconds"] = time.monotonic() - started
                return reply
            if time.monotonic() >= deadline:
                drained["left"] = left
                return reply
            time.sleep(DRAIN_POLL_INTERVAL)
            reply = client.pool(args.route, args.pool)
            if not reply.ok:
                return reply

    def describe(reply: Reply) -> list[str]:
        lines = [f"draining: {pool_line(args.route, reply.body, reply)}"]
        if "seconds" in drained:
            lines.append(f"{args.endpoint} is idle ({drained['seconds']:.1f} s)")
        return lines

    code = _control(args, call, describe)
    if code == 0 and "left" in drained:
        _fail(
            f"{args.endpoint} still has {drained['left']} request(s) in flight after"
            f" {args.timeout} s"
        )
        return EXIT_REFUSED
    return code


def _drained_address(body: object, given: str) -> str:
    """The pool's spelling of the endpoint (the server writes addresses canonically)."""
    for item in _pool_obj(body)["endpoints"]:
        if isinstance(item, dict) and item.get("state") == "draining":
            address = str(item.get("address"))
            if address == given or address.strip("[]") == given:
                return address
    return given


def add_pool_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pool = sub.add_parser(
        "pool",
        help="change a route's pools and endpoints (immutable deploys)",
        description="Change a route's pools and endpoints at run time: versioned, persisted"
        " and applied by every worker and fleet member like a flip.",
    )
    verbs = pool.add_subparsers(dest="pool_command", required=True)
    add = _add_control_parser(
        verbs, "add", "add endpoints to a pool, creating it with weight 0 if new", cmd_pool_add
    )
    set_ = _add_control_parser(verbs, "set", "replace a pool's endpoints", cmd_pool_set)
    for parser in (add, set_):
        parser.add_argument("route", metavar="ROUTE")
        parser.add_argument("pool", metavar="POOL")
        parser.add_argument("endpoints", metavar="HOST:PORT", nargs="+")
    rm = _add_control_parser(
        verbs, "rm", "delete a pool (weight 0, no rule, shadow or rollout), or one endpoint",
        cmd_pool_rm,
    )  # fmt: skip
    rm.add_argument("route", metavar="ROUTE")
    rm.add_argument("pool", metavar="POOL")
    rm.add_argument("endpoint", metavar="HOST:PORT", nargs="?", help="remove only this endpoint")
    drain = _add_control_parser(
        verbs, "drain", "stop sending new requests to an endpoint; in-flight ones finish",
        cmd_pool_drain,
    )  # fmt: skip
    drain.add_argument("route", metavar="ROUTE")
    drain.add_argument("pool", metavar="POOL")
    drain.add_argument("endpoint", metavar="HOST:PORT")
    drain.add_argument(
        "--wait", action="store_true", help="return when the endpoint has no request in flight"
    )
    drain.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=positive_int,
        default=DEFAULT_DRAIN_TIMEOUT,
        help=f"with --wait: give up (exit 1) after this long (default {DEFAULT_DRAIN_TIMEOUT})",
    )
