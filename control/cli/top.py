"""`pointsman top`: a live view of the routes for whoever is on call without a dashboard: per
route its pools with weights, requests/s, 5xx share, p99 latency and endpoints, its shadows'
mismatches and a canary rollout's step and last analysis, redrawn every --interval from the
admin API. This module reads and draws; control/cli/top_rows.py turns two reads into rows."""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import sys
import termios
import time
import tty
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from types import FrameType
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from control.cli.common import (
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    _add_control_parser,
    _admin_client,
    _BadAnswer,
    _fail,
    _text,
    refusal,
)
from control.cli.top_rows import (
    Frame,
    PoolRow,
    RouteRead,
    RouteView,
    Snapshot,
    endpoints_text,
    frame,
    frame_obj,
    ms_text,
    percent_text,
    rate_text,
    shadow_text,
)
from control.client import AdminClient, AdminUnreachable, Reply
from control.rollout.analysis import MismatchCounters, counters_from_obj

TOP_DESCRIPTION = """\
A live view of the routes, redrawn every --interval seconds from the admin API: per route its
pools with their weights, requests per second, share of 5xx answers and p99 latency over the
last interval, and endpoints up of total (and draining); each shadow pool's mismatches; a
canary rollout's step and last analysis. Rates are the differences between two reads of the
host's counters (GET /v1/routes/ROUTE/counters), so the first frame shows `-` until the
second read. q or Ctrl-C quits."""

TOP_EPILOG = """\
exit codes: 0 quit (q or Ctrl-C) or one frame printed (--once, --json); 1 the admin API refused
the first read (4xx/5xx, reason on stderr); 2 usage error; 3 the admin API could not be
reached at the first read. Later failures are shown in the frame, and top keeps trying.
Admin URL: --admin, else POINTSMAN_ADMIN, else http://127.0.0.1:8081.
Token: POINTSMAN_TOKEN, sent as "Authorization: Bearer <token>".
"""

# Shares of 5xx answers drawn in red from here on (and in yellow above 0).
ERROR_RATE_RED = 0.01
# Tests replace it to skip the wait between the two reads of --once.
_sleep = time.sleep


class _Refused(Exception):
    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


def interval_arg(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0.1 <= seconds <= 3600:
        raise argparse.ArgumentTypeError(f"expected seconds in [0.1, 3600], got {text!r}")
    return seconds


# --- reading ---------------------------------------------------------------------------------


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _read_route(client: AdminClient, route: dict[str, Any]) -> RouteRead:
    name = _text(route.get("name"))
    token = client.token is not None
    problems: list[str] = []
    at = counters = None
    reply = client.counters(name)
    if reply.ok:
        at = time.monotonic()
        try:
            counters = counters_from_obj(reply.body)
        except ValueError as err:
            problems.append(f"counters: unexpected answer ({err})")
    else:
        problems.append(f"counters: {refusal(reply, token)}")
    shadows: dict[str, MismatchCounters] = {}
    if route.get("shadows"):
        reply = client.shadows(name)
        views = reply.body.get("shadows") if isinstance(reply.body, dict) else None
        if reply.ok and isinstance(views, list):
            for view in views:
                if not isinstance(view, dict):
                    continue
                compared, mismatched = _count(view.get("compared")), _count(view.get("mismatched"))
                if compared is not None and mismatched is not None:
                    shadows[_text(view.get("pool"))] = MismatchCounters(compared, mismatched)
        else:
            problems.append(f"shadows: {refusal(reply, token)}")
    rollout = None
    reply = client.rollout(name)
    if reply.ok and isinstance(reply.body, dict):
        rollout = reply.body
    elif reply.status != 404:  # 404: the route has never had a rollout
        problems.append(f"rollout: {refusal(reply, token)}")
    return RouteRead(route, at, counters, shadows, rollout, "; ".join(problems) or None)


def read_snapshot(client: AdminClient, route: str | None) -> Snapshot:
    """One round of reads: the routes (or the one asked for), then each one's counters,
    shadows and rollout. Raises AdminUnreachable, or _Refused when the routes' read is
    refused."""
    reply = client.status(route)
    if not reply.ok:
        raise _Refused(reply)
    body = reply.body
    if not isinstance(body, dict):
        raise _BadAnswer(f"expected a JSON object, got {_text(body)[:200]}")
    routes = [body] if route is not None else body.get("routes")
    if not isinstance(routes, list):
        raise _BadAnswer(f"routes: expected an array, got {_text(routes)[:200]}")
    reads = tuple(_read_route(client, r) for r in routes if isinstance(r, dict))
    return Snapshot(version=body.get("version", reply.etag), routes=reads)


# --- drawing ---------------------------------------------------------------------------------


def _error_style(rate: float | None) -> str:
    if rate is None or rate <= 0:
        return ""
    return "bold red" if rate >= ERROR_RATE_RED else "yellow"


def _endpoints_style(row: PoolRow) -> str:
    taking = row.total - row.draining
    if taking > 0 and row.up == 0:
        return "bold red"
    return "yellow" if row.up < taking else ""


def _route_table(route: RouteView) -> RenderableType:
    shadows = any(row.shadow is not None for row in route.pools)
    title = Text.assemble(
        (route.name, "bold"),
        f"  {rate_text(route.rps)} req/s  ",
        (f"{percent_text(route.error_rate)} 5xx", _error_style(route.error_rate)),
        f"  live {route.live or '-'}",
    )
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("POOL")
    table.add_column("WEIGHT", justify="right")
    table.add_column("REQ/S", justify="right")
    table.add_column("5XX", justify="right")
    table.add_column("P99 MS", justify="right")
    table.add_column("ENDPOINTS")
    if shadows:
        table.add_column("SHADOW MISMATCH")
    for row in route.pools:
        cells: list[RenderableType] = [
            row.pool,
            Text("-" if row.weight is None else str(row.weight), "dim" if not row.weight else ""),
            rate_text(row.rps),
            Text(percent_text(row.error_rate), _error_style(row.error_rate)),
            ms_text(row.p99_ms),
            Text(endpoints_text(row), _endpoints_style(row)),
        ]
        if shadows:
            mismatch = row.shadow.mismatch_rate if row.shadow is not None else None
            cells.append(Text(shadow_text(row.shadow), "yellow" if mismatch else ""))
        table.add_row(*cells)
    parts: list[RenderableType] = [table]
    # Indented by two, wrapped lines too.
    if route.rollout:
        parts.append(Padding(Text(route.rollout, "cyan"), (0, 0, 0, 2)))
    if route.problem:
        parts.append(Padding(Text(route.problem, "red"), (0, 0, 0, 2)))
    parts.append(Text(""))
    return Group(*parts)


def render(shown: Frame, admin: str, interval: float, error: str | None = None) -> RenderableType:
    window = f"rates over {shown.seconds:.1f}s" if shown.seconds else "rates from the next read"
    header = Text.assemble(
        ("pointsman top", "bold"),
        f"  {admin}  state version {_text(shown.version)}  every {interval:g}s, {window}  "
        f"{time.strftime('%H:%M:%S')}",
        ("  q quits", "dim"),
    )
    parts: list[RenderableType] = [header]
    if error:
        parts.append(Text(error, "bold red"))
    parts.append(Text(""))
    parts += [_route_table(route) for route in shown.routes]
    if not shown.routes:
        parts.append(Text("no routes"))
    return Group(*parts)


# --- the terminal ----------------------------------------------------------------------------


class _Keys:
    """Key presses on a terminal's stdin, read without echo or line buffering (cbreak: Ctrl-C
    still interrupts); nothing to read when stdin is not a terminal."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def wait_for_quit(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds; True when q was pressed."""
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            left = deadline - time.monotonic()
            if self.fd is None:
                if left > 0:
                    time.sleep(left)
                return False
            ready, _, _ = select.select([self.fd], [], [], max(left, 0.0))
            if not ready:
                return False
            data = os.read(self.fd, 64)
            if not data:  # end of input: no more keys to wait for
                self.fd = None
            elif b"q" in data.lower():
                return True


@contextmanager
def _keyboard() -> Iterator[_Keys]:
    fd = sys.stdin.fileno() if sys.stdin is not None and sys.stdin.isatty() else None
    saved = termios.tcgetattr(fd) if fd is not None else None
    if fd is not None:
        tty.setcbreak(fd)
    previous = signal.getsignal(signal.SIGTERM)

    def terminate(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)  # unwinds through the restores below

    signal.signal(signal.SIGTERM, terminate)
    try:
        yield _Keys(fd)
    finally:
        signal.signal(signal.SIGTERM, previous)
        if fd is not None and saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _first_failure(client: AdminClient, err: Exception) -> int:
    if isinstance(err, AdminUnreachable):
        _fail(str(err))
        return EXIT_UNREACHABLE
    if isinstance(err, _Refused):
        _fail(refusal(err.reply, client.token is not None))
    else:
        _fail(f"unexpected answer from admin API at {client.base_url}: {err}")
    return EXIT_REFUSED


def _failure_line(client: AdminClient, err: Exception, interval: float) -> str:
    if isinstance(err, _Refused):
        reason = refusal(err.reply, client.token is not None)
    else:
        reason = str(err)
    return f"{reason}; showing the last frame, trying again every {interval:g}s"


def cmd_top(args: argparse.Namespace) -> int:
    client = _admin_client(args)
    try:
        first = read_snapshot(client, args.route)
        if args.once or args.json:
            _sleep(args.interval)
            shown = frame(first, read_snapshot(client, args.route))
    except (AdminUnreachable, _Refused, _BadAnswer) as err:
        return _first_failure(client, err)
    except KeyboardInterrupt:
        return 0
    if args.json:
        print(json.dumps(frame_obj(shown), indent=2))
        return 0
    console = Console()
    if args.once:
        console.print(render(shown, client.base_url, args.interval))
        return 0
    try:
        return _live(args, client, console, first)
    except KeyboardInterrupt:
        return 0


def _live(args: argparse.Namespace, client: AdminClient, console: Console, first: Snapshot) -> int:
    """Redraw every interval until q (or Ctrl-C, or SIGTERM); on a terminal in its alternate
    screen, restored on the way out. Not on a terminal: one frame after another."""
    interval: float = args.interval
    previous = first
    shown = frame(None, first)
    with ExitStack() as stack:
        keys = stack.enter_context(_keyboard())
        drawn = render(shown, client.base_url, interval)
        live = None
        if console.is_terminal:
            live = Live(drawn, console=console, screen=True, auto_refresh=False,
                        redirect_stdout=False, redirect_stderr=False)  # fmt: skip
            stack.enter_context(live)
        else:
            console.print(drawn)
        deadline = time.monotonic()
        while True:
            deadline = max(deadline + interval, time.monotonic())
            if keys.wait_for_quit(deadline - time.monotonic()):
                return 0
            error = None
            try:
                snapshot = read_snapshot(client, args.route)
            except (AdminUnreachable, _Refused, _BadAnswer) as err:
                error = _failure_line(client, err, interval)
            else:
                shown = frame(previous, snapshot)
                previous = snapshot
            drawn = render(shown, client.base_url, interval, error)
            if live is not None:
                live.update(drawn, refresh=True)
            else:
                console.print(drawn)


def add_top_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    top = _add_control_parser(
        sub, "top", "live view of the routes: weights, requests/s, 5xx, p99, endpoints",
        cmd_top, if_match=False, epilog=TOP_EPILOG, description=TOP_DESCRIPTION,
    )  # fmt: skip
    top.add_argument("route", metavar="ROUTE", nargs="?", help="one route (default: all)")
    top.add_argument(
        "--interval", metavar="SECONDS", type=interval_arg, default=1.0,
        help="seconds between two reads, and the window the rates cover (default 1)",
    )  # fmt: skip
    top.add_argument(
        "--once", action="store_true",
        help="read twice, --interval apart, print one frame and exit (for scripts)",
    )  # fmt: skip
    for action in top._actions:
        if action.dest == "json":
            action.help = "print one frame's rows as JSON and exit (implies --once)"
