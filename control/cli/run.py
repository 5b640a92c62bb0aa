"""`pointsman run` and `pointsman check`: the proxy process itself, and config validation."""

from __future__ import annotations

import argparse
import gc
import sys

import uvloop

from proxy.config import ConfigError
from proxy.config_loader import load_config

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
