"""`pointsman run` and `pointsman check`: the proxy process itself, and config validation."""

from __future__ import annotations

import argparse
import gc
import sys
from typing import Final

import uvloop

from proxy.config import MAX_WORKERS, Config, ConfigError
from proxy.config_loader import load_config

# Allocations between young-generation collections (CPython's default is 700): the request
# path allocates a few dozen containers per request, so the default runs the collector every
# ~30 requests.
GC_YOUNG_THRESHOLD = 20_000


def _load(path: str) -> Config | None:
    """The config at `path`, or None after printing every problem (load_config reports an
    unreadable file as a ConfigError too)."""
    try:
        return load_config(path)
    except ConfigError as err:
        print(str(err), file=sys.stderr)
        return None


AUTO_WORKERS: Final = 0  # what `--workers auto` parses to: one worker per usable CPU


def workers_arg(text: str) -> int:
    """`--workers`: 'auto' or 1..MAX_WORKERS."""
    if text == "auto":
        return AUTO_WORKERS
    if text.isdigit() and 1 <= int(text) <= MAX_WORKERS:
        return int(text)
    raise argparse.ArgumentTypeError(f"expected 'auto' or 1..{MAX_WORKERS}, got {text!r}")


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 2
    from control.service import Service, StartupError
    from control.workers import WorkerStartError, worker_count

    setting = config.workers
    if args.workers is not None:
        setting = None if args.workers == AUTO_WORKERS else args.workers

    # The request path allocates many short-lived containers; a larger young generation and
    # freezing what start-up allocated keep collector pauses out of the latency tail.
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 50, 100)
    service = Service(
        config,
        workers=worker_count(setting),
        log_level=args.log_level,
        shared_socket=args.shared_socket,
    )
    try:
        return uvloop.run(service.run())
    except (StartupError, WorkerStartError) as err:
        print(f"pointsman: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"pointsman: {err}", file=sys.stderr)
        return 1


def cmd_check(args: argparse.Namespace) -> int:
    if _load(args.config) is None:
        return 2
    print(f"{args.config}: ok")
    return 0
