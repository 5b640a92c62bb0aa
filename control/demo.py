"""Tiny demo upstreams for `make run`: one server per endpoint in the config, each answering
with the name of its pool (its "version"), so routing decisions can be seen with curl.

`/api/products` answers JSON, the same from every version except `dark`, a blind version with a
bug (currencies in lower case); every answer carries a fresh timestamp, which is noise. So the
demo's shadow comparison (`pointsman diffs shop dark`) shows one real difference and one that
the baseline pool `twin` shows to be noise.

To watch a canary roll back, make a version misbehave: `POST /__demo/fault?errors=0.2` on one
of its endpoints makes that endpoint answer 500 to a fifth of requests, `?delay=0.5` adds half
a second to every answer, `?errors=0&delay=0` heals it."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import random
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web

from proxy.config import Address, ConfigError, parse_address
from proxy.config_loader import load_config

log = logging.getLogger("pointsman.demo")

VERSION_KEY = web.AppKey("version", str)
FAULT_KEY = web.AppKey("fault", dict[str, float])  # "errors": share answered 500, "delay": s
# An injected delay longer than this is a typo; the demo must stay responsive.
MAX_FAULT_DELAY = 10.0
ADDRESS_KEY = web.AppKey("address", str)


@web.middleware
async def faults(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Injected misbehaviour (see the module docstring); /__demo/ itself is never affected."""
    fault = request.app[FAULT_KEY]
    if not request.path.startswith("/__demo/"):
        if fault["delay"]:
            await asyncio.sleep(fault["delay"])
        if fault["errors"] and random.random() < fault["errors"]:
            version = request.app[VERSION_KEY]
            return web.Response(status=500, text=f"injected error from {version}\n")
    return await handler(request)


async def set_fault(request: web.Request) -> web.Response:
    fault = request.app[FAULT_KEY]
    for key, top in (("errors", 1.0), ("delay", MAX_FAULT_DELAY)):
        if key in request.query:
            try:
                value = float(request.query[key])
            except ValueError:
                value = -1.0
            if not 0.0 <= value <= top:
                return web.Response(status=400, text=f"{key}: expected a number in 0..{top:g}\n")
            fault[key] = value
    return web.Response(text=f"{request.app[VERSION_KEY]}: errors={fault['errors']:g} "
                             f"delay={fault['delay']:g}s\n")  # fmt: skip


async def hello(request: web.Request) -> web.Response:
    version = request.app[VERSION_KEY]
    user = request.headers.get("X-User-Id") or request.cookies.get("user_id") or "-"
    text = (
        f"hello from {version} ({request.app[ADDRESS_KEY]}): "
        f"{request.method} {request.path_qs} user={user}\n"
    )
    return web.Response(text=text, headers={"X-Version": version})


# The version with the deliberate bug that the shadow comparison is there to find.
BUGGY_VERSION = "dark"
PRODUCTS = (
    {"id": 1, "name": "kettle", "price": 25.0, "currency": "EUR"},
    {"id": 2, "name": "teapot", "price": 19.5, "currency": "EUR"},
    {"id": 3, "name": "cups (6)", "price": 12.0, "currency": "EUR"},
)


async def products(request: web.Request) -> web.Response:
    version = request.app[VERSION_KEY]
    items = [dict(item) for item in PRODUCTS]
    if version == BUGGY_VERSION:
        for item in items:
            item["currency"] = str(item["currency"]).lower()
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds")
    body = {"products": items, "count": len(items), "generated_at": now}
    return web.json_response(body, headers={"X-Version": version})


def build_app(version: str, address: Address) -> web.Application:
    app = web.Application(middlewares=[faults])
    app[VERSION_KEY] = version
    app[ADDRESS_KEY] = str(address)
    app[FAULT_KEY] = {"errors": 0.0, "delay": 0.0}
    app.router.add_post("/__demo/fault", set_fault)
    app.router.add_get("/api/products", products)
    app.router.add_route("*", "/{tail:.*}", hello)
    return app


async def serve(endpoints: Sequence[tuple[str, Address]]) -> None:
    runners: list[web.AppRunner] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        for version, address in endpoints:
            runner = web.AppRunner(build_app(version, address), access_log=None)
            await runner.setup()
            runners.append(runner)
            await web.TCPSite(runner, address.host, address.port, reuse_address=True).start()
            log.info("demo upstream %s on %s", version, address)
        await stop.wait()
    finally:
        for runner in runners:
            await runner.cleanup()


def _version_at(text: str) -> tuple[str, Address]:
    version, sep, address = text.partition("=")
    if not sep or not version:
        raise argparse.ArgumentTypeError(f"expected VERSION=HOST:PORT, got {text!r}")
    try:
        return version, parse_address(address)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r}: {err}") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Demo upstreams, one per endpoint of a config.")
    parser.add_argument("--config", default="config/demo.yaml")
    parser.add_argument(
        "--serve",
        metavar="VERSION=HOST:PORT",
        action="append",
        type=_version_at,
        help="serve only this version at this address (repeatable), e.g. a new release on new"
        " addresses; the config is then not read",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    endpoints: dict[Address, str] = {}
    if args.serve:
        for version, address in args.serve:
            endpoints.setdefault(address, version)
    else:
        try:
            config = load_config(args.config)
        except ConfigError as err:
            print(str(err), file=sys.stderr)
            return 2
        for route in config.routes:
            for pool in route.pools:
                for address in pool.endpoints:
                    endpoints.setdefault(address, pool.name)
    asyncio.run(serve([(version, address) for address, version in endpoints.items()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
