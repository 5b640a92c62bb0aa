"""The `pointsman` command: `run` and `check`, the deploy-script commands `status`, `weights`,
`flip`, `rollback`, `reload` and `pool` (pools and endpoints at run time), `diffs` for reading
a shadow's comparison, and `canary` and `rollout` for automated canary rollouts (start one and
optionally follow it to its end; show, pause, resume, promote or abort one); all but the first
two call the control API (control/client.py)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from control.cli.canary import (
    _add_canary_parsers,
)
from control.cli.common import (
    EXIT_CODES,
    _add_control_parser,
    admin_url,
    pool_weight,
    positive_int,
    refusal,
    status_lines,
)
from control.cli.diffs import (
    cmd_diffs,
)
from control.cli.pools import add_pool_parsers
from control.cli.routes import (
    cmd_flip,
    cmd_reload,
    cmd_rollback,
    cmd_status,
    cmd_weights,
)
from control.cli.run import (
    cmd_check,
    cmd_run,
    workers_arg,
)
from control.cli.top import add_top_parser
from control.client import DEFAULT_ADMIN_URL

__all__ = ["build_parser", "main", "refusal", "status_lines"]


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
    run.add_argument(
        "--workers",
        type=workers_arg,
        help="data-plane worker processes: 'auto' (one per CPU) or 1..512; overrides the"
        " config's `workers`",
    )
    run.add_argument(
        "--shared-socket",
        action="store_true",
        help="one listening socket shared by all workers instead of one SO_REUSEPORT socket"
        " each (for comparing how evenly connections spread; see ARCHITECTURE.md)",
    )
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
    _add_control_parser(
        sub, "reload", "read the config file again and serve it (as SIGHUP does)", cmd_reload,
        if_match=False,
    )  # fmt: skip
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
    add_pool_parsers(sub)
    add_top_parser(sub)
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
