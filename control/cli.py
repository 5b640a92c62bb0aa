"""The `pointsman` command."""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from collections.abc import Sequence

import uvloop

from proxy.config import ConfigError, load_config

# Allocations between young-generation collections (CPython's default is 700): the request
# path allocates a few dozen containers per request, so the default runs the collector every
# ~30 requests.
GC_YOUNG_THRESHOLD = 20_000


def cmd_run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as err:
        print(str(err), file=sys.stderr)
        return 2
    except OSError as err:
        print(f"{args.config}: cannot read config: {err.strerror}", file=sys.stderr)
        return 2
    from control.service import Service

    # The request path allocates many short-lived containers; a larger young generation and
    # freezing what start-up allocated keep collector pauses out of the latency tail.
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 50, 100)
    try:
        uvloop.run(Service(config).run())
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pointsman", description="Traffic-shifting HTTP reverse proxy."
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the proxy")
    run.add_argument("--config", required=True, help="YAML config file")
    run.set_defaults(func=cmd_run)
    check = sub.add_parser("check", help="validate a config file and exit")
    check.add_argument("--config", required=True, help="YAML config file")
    check.set_defaults(func=cmd_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
