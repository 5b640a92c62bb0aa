"""The admin listener: the control API (/v1/...), Prometheus /metrics and /healthz.

Handlers check the caller and the body, then hand the change to ControlPlane.change
(control/plane.py), which refuses, persists, publishes and audits it, and answer with the
route's new view.
"""

from __future__ import annotations

import hmac
import importlib.resources
import ipaddress
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, Final, cast

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from control.errors import ApiError
from control.etcd import EtcdError
from control.fleet import FleetSync
from control.members import list_members, member_table, wait_for_version
from control.plane import ControlPlane
from control.pool_state import (
    add_endpoints,
    delete_pool,
    drain_endpoint,
    remove_endpoint,
    set_endpoints,
)
from control.rollout import RolloutError, counters_obj
from control.rollouts import RolloutCollector, RolloutRunner
from control.state import (
    StateDoc,
    flip,
    remove_shadow,
    rollback,
    set_shadow,
    set_weights,
)
from proxy.config import Config, ConfigError, RouteConfig, address_text
from proxy.router import Pool
from proxy.server import ProxyServer
from proxy.shadow import Shadow
from proxy.shadow_config import ShadowConfig, ShadowSpecError, parse_shadow, shadow_to_obj
from proxy.values import PlainReader

log = logging.getLogger("pointsman.api")

# Request bodies of the control API are a few hundred bytes; anything far larger is a mistake.
MAX_API_BODY = 64 * 1024
# Diff samples in one answer unless ?limit= says otherwise (a shadow keeps compare.samples).
DEFAULT_DIFFS_LIMIT = 20


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_token(config: Config) -> str | None:
    """The admin token: from admin.token_file if set, else the environment variable named by
    admin.token_env. Empty means none."""
    admin = config.admin
    if admin.token_file:
        with open(admin.token_file, encoding="utf-8") as handle:
            token = handle.read().strip()
    else:
        token = os.environ.get(admin.token_env, "").strip()
    return token or None


def route_view(plane: ControlPlane, name: str) -> dict[str, object]:
    doc = plane.doc
    state = doc.route(name)
    route = plane.proxy.table.routes[name]
    in_flight = plane.proxy.metrics.endpoints_in_flight()
    names = resolved_names(plane)
    pools = {pool.name: pool_view(pool, in_flight, names) for pool in route.pools}
    previous = None
    if state.previous is not None:
        previous = {"weights": dict(state.previous), "live": state.previous_live}
    return {
        "name": name,
        "version": doc.version,
        "weights": state.weights_dict(),
        "live": state.live,
        "previous": previous,
        "flips": state.flips,
        "rollbacks": state.rollbacks,
        "changed_at": state.changed_at,
        "pools": pools,
        "shadows": [s.pool for s in route.shadows],
    }


def pool_view(
    pool: Pool, in_flight: Mapping[str, int], names: Mapping[str, str] | None = None
) -> dict[str, object]:
    """A pool as the API shows it: weight and endpoints, each `up` (takes requests), `down`
    (failed its checks or ejected) or `draining`, with its requests under way (as of the
    last counters round when there are workers) and, for an address of a DNS endpoint, the
    `name` it was resolved from (`names`: address -> name:port)."""
    names = names or {}
    endpoints: list[dict[str, object]] = []
    for index, address in enumerate(pool.endpoints):
        target = pool.targets[index] if index < len(pool.targets) else None
        healthy = True if target is None else target.healthy
        text = address_text(address)
        endpoints.append(
            {
                "address": text,
                "state": "up" if healthy else "down",
                "healthy": healthy,
                "in_flight": in_flight.get(text, 0),
            }
        )
    for address in pool.draining:
        text = address_text(address)
        endpoints.append(
            {
                "address": text,
                "state": "draining",
                "healthy": None,
                "in_flight": in_flight.get(text, 0),
            }
        )
    for endpoint in endpoints:
        if endpoint["address"] in names:
            endpoint["name"] = names[str(endpoint["address"])]
    return {"weight": pool.weight, "endpoints": endpoints}


def resolved_names(plane: ControlPlane) -> dict[str, str]:
    """Each address of a DNS endpoint -> the name:port it was resolved from."""
    return {a: name for name, addresses in plane.discovery.resolved.items() for a in addresses}


def dns_view(plane: ControlPlane, route: str, pool: str) -> list[dict[str, object]]:
    """The pool's DNS endpoints: what each resolves to now, and how its resolutions went."""
    state = plane.doc.route(route).pool(route, pool)
    entries = plane.discovery.entries
    return [
        {
            "name": name,
            "addresses": list(plane.discovery.resolved.get(name, ())),
            "resolutions": entries[name].resolutions,
            "failures": entries[name].failures,
            "last_error": entries[name].last_error or None,
        }
        for name in state.endpoints
        if name in entries
    ]


def _rate(count: int, total: int) -> float:
    return round(count / total, 6) if total else 0.0


def shadow_view(plane: ControlPlane, route: str, shadow: Shadow) -> dict[str, object]:
    """What GET /v1/routes/{route}/shadows/{pool} answers: settings, counts, rates per path."""
    stats = shadow.stats
    paths = [
        {
            "path": r.path,
            "diff_rate": round(r.candidate_rate, 6),
            "noise_rate": round(r.noise_rate, 6),
            "diffs": r.candidate_diffs,
            "noise_diffs": r.baseline_diffs,
            "counts": r.counts_as_mismatch,
        }
        for r in shadow.report()
    ]
    return {
        "route": route,
        "pool": shadow.pool,
        "version": plane.doc.version,
        "settings": shadow_to_obj(shadow.config),
        "endpoints": [str(t.address) for t in shadow.targets],
        "in_flight": shadow.in_flight,
        "mirrored": stats.mirrored,
        "dropped": dict(stats.dropped),
        "compared": stats.compared,
        "matched": stats.matched,
        "mismatched": stats.mismatched,
        "noise": stats.noise,
        "mismatch_rate": _rate(stats.mismatched, stats.compared),
        "mismatched_parts": dict(stats.parts),
        "samples": shadow.noise.candidate_samples,
        "baseline_samples": shadow.noise.baseline_samples,
        "paths": paths,
        "diffs_kept": len(shadow.samples),
    }


# Reads the config file again and serves it (control/service.py `Service.reload`).
Reload = Callable[[str], Awaitable[dict[str, object]]]

PLANE_KEY = web.AppKey("control_plane", ControlPlane)
RELOAD_KEY: web.AppKey[Reload] = web.AppKey("reload")
ROLLOUTS_KEY = web.AppKey("rollouts", RolloutRunner)
PROXY_KEY = web.AppKey("proxy", ProxyServer)
REGISTRY_KEY = web.AppKey("registry", CollectorRegistry)
TOKEN_KEY = web.AppKey("token", str)
OPEN_READS_KEY = web.AppKey("open_reads", bool)
OPENAPI_KEY = web.AppKey("openapi", bytes)


def json_answer(body: object, version: int, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(body),
        status=status,
        content_type="application/json",
        headers={"ETag": f'"{version}"'},
    )


@web.middleware
async def errors_as_json(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every error is JSON {"error", "detail"}; no traceback ever reaches a client."""
    plane = request.app.get(PLANE_KEY)
    version = plane.doc.version if plane is not None else 0
    try:
        return await handler(request)
    except ApiError as err:
        return json_answer({"error": err.error, "detail": err.detail}, version, err.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        answer = json_answer({"error": exc.reason.lower(), "detail": None}, version, exc.status)
        if "Allow" in exc.headers:  # a 405 must say which methods the path takes (RFC 9110)
            answer.headers["Allow"] = exc.headers["Allow"]
        return answer
    except Exception:
        log.exception("control API error on %s %s", request.method, request.path)
        return json_answer({"error": "internal error", "detail": None}, version, 500)


# ?wait=fleet: how long a write waits for every member by default, and at most. The default
# covers a watch delivery and a member's push to its workers many times over; the cap keeps a
# client's request from holding the admin API for minutes.
FLEET_WAIT_DEFAULT: Final = 10.0
FLEET_WAIT_MAX: Final = 120.0


@web.middleware
async def fleet_wait(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """`?wait=fleet[&wait_timeout=<seconds>]` on a write: answer once every live member of
    the fleet reports the version this write made (504 naming the laggards on timeout)."""
    wait = request.query.get("wait")
    if wait is None or request.method in ("GET", "HEAD"):
        return await handler(request)
    # Credentials first, as the handler would: the query is no business of an unknown caller.
    check_auth(request, mutating=True)
    if wait != "fleet":
        raise ApiError(400, f"wait: expected fleet, got {wait!r}", {"code": "bad_query"})
    plane = request.app.get(PLANE_KEY)
    if plane is None or plane.fleet is None:
        raise ApiError(400, "wait=fleet needs state.store: etcd", {"code": "not_a_fleet"})
    timeout = FLEET_WAIT_DEFAULT
    if "wait_timeout" in request.query:
        text = request.query["wait_timeout"]
        try:
            timeout = float(text)
        except ValueError:
            timeout = -1.0
        if not 0 < timeout <= FLEET_WAIT_MAX:
            raise ApiError(400, f"wait_timeout: expected seconds in (0, {FLEET_WAIT_MAX:g}],"
                           f" got {text!r}", {"code": "bad_query"})  # fmt: skip
    response = await handler(request)
    if response.status >= 300:
        return response
    version = int(response.headers["ETag"].strip('"'))
    fleet = plane.fleet
    try:
        behind = await wait_for_version(fleet.client, fleet.prefix, version, timeout)
    except EtcdError as err:
        raise ApiError(
            503,
            f"version {version} is in force on this member, but the fleet cannot be asked: {err}",
            {"code": "store_unreachable", "current_version": version},
        ) from None
    if behind:
        names = ", ".join(f"{m.id} (version {m.version})" for m in behind)
        raise ApiError(
            504,
            f"version {version} is in force on this member; after {timeout:g}s not yet on {names}",
            {"code": "fleet_wait_timeout", "current_version": version,
             "lagging": member_table(behind, version)},
        )  # fmt: skip
    return response


async def get_counters(request: web.Request) -> web.Response:
    """This host's cumulative counters for a route's pools (and the candidate's shadow
    comparisons): what a fleet's rollout driver sums over the members."""
    check_auth(request, mutating=False)
    plane = request.app[PLANE_KEY]
    name = route_name(request, plane)
    candidate = request.query.get("candidate", "")
    counters = await request.app[ROLLOUTS_KEY].host_counters(name, candidate)
    return json_answer(counters_obj(counters), plane.doc.version)


async def get_fleet(request: web.Request) -> web.Response:
    """The members of the fleet with their applied version and how far each lags."""
    check_auth(request, mutating=False)
    plane = request.app[PLANE_KEY]
    fleet = plane.fleet
    if fleet is None:
        raise ApiError(404, "this Pointsman is not in a fleet (state.store: file)",
                       {"code": "not_a_fleet"})  # fmt: skip
    try:
        _, members = await list_members(fleet.client, fleet.prefix)
    except EtcdError as err:
        raise ApiError(503, f"the state store (etcd) cannot be asked: {err}",
                       {"code": "store_unreachable"}) from None  # fmt: skip
    version = plane.doc.version
    body = {
        "fleet": fleet.fleet,
        "prefix": fleet.prefix,
        "version": version,
        "members": member_table(members, version),
    }
    return json_answer(body, version)


def check_auth(request: web.Request, mutating: bool) -> str:
    """Returns the actor for the audit log; raises 401 (no credentials) or 403 (wrong)."""
    token = request.app[TOKEN_KEY]
    if not mutating and request.app[OPEN_READS_KEY]:
        return "anonymous"
    if not token:
        raise ApiError(403, "no admin token is configured: changes are disabled")
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise ApiError(401, "missing bearer token", None)
    # Bytes that are not UTF-8 reach us as surrogate escapes: compare the bytes as sent.
    if not hmac.compare_digest(
        presented.strip().encode("utf-8", "surrogateescape"), token.encode()
    ):
        raise ApiError(403, "wrong token", None)
    return "token"


async def read_body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_API_BODY:
        raise ApiError(400, "request body too large", {"limit": MAX_API_BODY})
    raw = await request.content.read(MAX_API_BODY + 1)
    if len(raw) > MAX_API_BODY:
        raise ApiError(400, "request body too large", {"limit": MAX_API_BODY})
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise ApiError(400, "request body is not valid JSON", str(err)) from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object", None)
    return body


def bad_body(message: str) -> ApiError:
    """A body PlainReader refused: 400 with the key path in the message."""
    return ApiError(400, message, None)


# A version, a count or a limit as a request writes it: ASCII digits (str.isdigit also takes
# "²", which int() refuses), at most 19 of them (beyond 2**63: no version, no count, and
# int() refuses past 4300 digits).
NUMBER_TEXT: Final = re.compile(r"[0-9]{1,19}")


def header_text(value: str) -> str:
    """A header value as text a JSON answer can carry: aiohttp keeps bytes that are not
    UTF-8 as surrogate escapes, which orjson refuses; they become U+FFFD."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def expected_version(request: web.Request) -> int | None:
    value = request.headers.get("If-Match")
    if value is None or value.strip() == "*":
        return None
    text = value.strip()
    if text.startswith("W/"):
        text = text[2:]
    text = text.strip('"')
    if not NUMBER_TEXT.fullmatch(text):
        raise ApiError(400, "If-Match must be a version number", {"got": header_text(value)})
    return int(text)


def route_name(request: web.Request, plane: ControlPlane) -> str:
    name = request.match_info["route"]
    if name not in plane.proxy.table.routes:
        known = ", ".join(plane.proxy.table.routes)
        raise ApiError(404, f"unknown route '{name}'", {"routes": known.split(", ")})
    return name


async def list_routes(request: web.Request) -> web.Response:
    check_auth(request, mutating=False)
    plane = request.app[PLANE_KEY]
    routes = [route_view(plane, name) for name, _ in plane.doc.routes]
    return json_answer({"version": plane.doc.version, "routes": routes}, plane.doc.version)


async def get_route(request: web.Request) -> web.Response:
    check_auth(request, mutating=False)
    plane = request.app[PLANE_KEY]
    name = route_name(request, plane)
    await plane.refresh_counters()  # the endpoints' requests under way
    return json_answer(route_view(plane, name), plane.doc.version)


async def write_request(
    request: web.Request,
) -> tuple[str, ControlPlane, str, int | None, dict[str, Any]]:
    """What every write starts with: (actor, plane, route name, If-Match version, body)."""
    actor = check_auth(request, mutating=True)
    plane = request.app[PLANE_KEY]
    name = route_name(request, plane)
    version = expected_version(request)
    body = await read_body(request)
    return actor, plane, name, version, body


async def put_weights(request: web.Request) -> web.Response:
    actor, plane, name, version, body = await write_request(request)
    r = PlainReader(body, "", bad_body)
    r.only(("weights",))
    # set_weights checks each weight (JSON may hold anything there) and names its pool.
    weights = cast(dict[str, int], r.sub("weights").obj)
    if not weights:
        raise r.fail("weights", 'expected at least one pool, as {"<pool>": <integer>, ...}')
    doc = await plane.change(
        actor, "weights", name, version, lambda d, now: set_weights(d, name, weights, now)
    )
    return json_answer(route_view(plane, name), doc.version)


async def post_flip(request: web.Request) -> web.Response:
    actor, plane, name, version, body = await write_request(request)
    r = PlainReader(body, "", bad_body)
    r.only(("to", "force"))
    target = r.string("to")
    force = r.boolean("force") if "force" in r.obj else False  # null is not a default here
    route = plane.proxy.table.routes[name]
    pool = route.pools_by_name.get(target)
    if pool is not None and not force and pool.targets and not any(t.healthy for t in pool.targets):
        raise ApiError(
            409,
            f"pool '{target}' has no healthy endpoint; pass force to flip anyway",
            {"pool": target},
        )
    doc = await plane.change(
        actor, "flip", name, version, lambda d, now: flip(d, name, target, now)
    )
    return json_answer(route_view(plane, name), doc.version)


async def post_rollback(request: web.Request) -> web.Response:
    actor, plane, name, version, _ = await write_request(request)
    doc = await plane.change(
        actor, "rollback", name, version, lambda d, now: rollback(d, name, now)
    )
    return json_answer(route_view(plane, name), doc.version)


async def post_reload(request: web.Request) -> web.Response:
    """Read the config file again: 200 with what changed, or 400 with every problem (the old
    config keeps serving)."""
    actor = check_auth(request, mutating=True)
    plane = request.app[PLANE_KEY]
    await read_body(request)  # none is expected; a body over the limit is still refused
    try:
        outcome = await request.app[RELOAD_KEY](actor)
    except ConfigError as err:
        raise ApiError(
            400,
            f"{plane.config.source} has problems; nothing changed",
            {"code": "bad_config", "problems": err.problems},
        ) from None
    return json_answer(outcome, plane.doc.version)


# --- pools and endpoints ----------------------------------------------------------------------


def route_config(plane: ControlPlane, name: str) -> RouteConfig:
    return next(rc for rc in plane.config.routes if rc.name == name)


def table_pool(plane: ControlPlane, route: str, pool: str) -> Pool:
    found = plane.proxy.table.routes[route].pools_by_name.get(pool)
    if found is None:
        known = list(plane.proxy.table.routes[route].pools_by_name)
        raise ApiError(404, f"route '{route}' has no pool '{pool}'", {"pools": known})
    return found


async def get_pool(request: web.Request) -> web.Response:
    check_auth(request, mutating=False)
    plane = request.app[PLANE_KEY]
    name = route_name(request, plane)
    pool = table_pool(plane, name, request.match_info["pool"])
    await plane.refresh_counters()
    view = pool_view(pool, plane.proxy.metrics.endpoints_in_flight(), resolved_names(plane))
    body = {"route": name, "pool": pool.name, **view, "dns": dns_view(plane, name, pool.name)}
    return json_answer(body, plane.doc.version)


def pool_answer(
    plane: ControlPlane, route: str, pool: str, version: int, status: int = 200
) -> web.Response:
    """The pool after a change, as GET shows it (without the DNS listing)."""
    view = pool_view(
        table_pool(plane, route, pool),
        plane.proxy.metrics.endpoints_in_flight(),
        resolved_names(plane),
    )
    return json_answer({"route": route, "pool": pool, **view}, version, status)


async def _write_endpoints(request: web.Request, create: bool) -> web.Response:
    actor, plane, name, version, body = await write_request(request)
    pool = request.match_info["pool"]
    r = PlainReader(body, "", bad_body)
    r.only(("endpoints",))
    endpoints = r.strings("endpoints")
    config = route_config(plane, name)
    existed = pool in plane.doc.route(name).weights_dict()
    if create:
        change = add_endpoints
        action = "endpoints_add" if existed else "pool_add"
    else:
        change, action = set_endpoints, "endpoints_set"
    doc = await plane.change(
        actor, action, name, version,
        lambda d, now: change(d, config, name, pool, endpoints, now),
    )  # fmt: skip
    return pool_answer(plane, name, pool, doc.version, 201 if create and not existed else 200)


async def post_endpoints(request: web.Request) -> web.Response:
    return await _write_endpoints(request, create=True)


async def put_endpoints(request: web.Request) -> web.Response:
    return await _write_endpoints(request, create=False)


async def _endpoint_change(
    request: web.Request, action: str, change: Callable[..., StateDoc]
) -> web.Response:
    actor, plane, name, version, _ = await write_request(request)
    pool = request.match_info["pool"]
    endpoint = request.match_info["endpoint"]
    config = route_config(plane, name)
    doc = await plane.change(
        actor, action, name, version,
        lambda d, now: change(d, config, name, pool, endpoint, now),
    )  # fmt: skip
    return pool_answer(plane, name, pool, doc.version)


async def delete_endpoint(request: web.Request) -> web.Response:
    return await _endpoint_change(request, "endpoint_remove", remove_endpoint)


async def post_drain(request: web.Request) -> web.Response:
    return await _endpoint_change(request, "endpoint_drain", drain_endpoint)


async def delete_pool_handler(request: web.Request) -> web.Response:
    actor, plane, name, version, _ = await write_request(request)
    pool = request.match_info["pool"]
    config = route_config(plane, name)
    doc = await plane.change(
        actor, "pool_delete", name, version,
        lambda d, now: delete_pool(d, config, name, pool, now),
    )  # fmt: skip
    return json_answer(route_view(plane, name), doc.version)


def live_shadow(request: web.Request, plane: ControlPlane, route: str) -> Shadow:
    pool = request.match_info["pool"]
    table_route = plane.proxy.table.routes[route]
    shadow = plane.proxy.shadows.get(route, pool)
    if shadow is None or all(s.pool != pool for s in table_route.shadows):
        known = [s.pool for s in table_route.shadows]
        raise ApiError(404, f"route '{route}' has no shadow '{pool}'", {"shadows": known})
    return shadow


async def list_shadows(request: web.Request) -> web.Response:
    check_auth(request, mutating=False)
    plane = request.app[PLANE_KEY]
    await plane.refresh_counters()
    name = route_name(request, plane)
    views = []
    for config in plane.proxy.table.routes[name].shadows:
        shadow = plane.proxy.shadows.get(name, config.pool)
        if shadow is not None:
            views.append(shadow_view(plane, name, shadow))
    return json_answer({"route": name, "shadows": views}, plane.doc.version)


async def get_shadow(request: web.Request) -> web.Response:
    check_auth(request, mutating=False)
    plane = request.app[PLANE_KEY]
    await plane.refresh_counters()
    name = route_name(request, plane)
    shadow = live_shadow(request, plane, name)
    return json_answer(shadow_view(plane, name, shadow), plane.doc.version)


async def get_diffs(request: web.Request) -> web.Response:
    check_auth(request, mutating=False)
    plane = request.app[PLANE_KEY]
    await plane.refresh_counters()
    name = route_name(request, plane)
    shadow = live_shadow(request, plane, name)
    text = request.query.get("limit", str(DEFAULT_DIFFS_LIMIT))
    if not NUMBER_TEXT.fullmatch(text) or int(text) < 1:
        raise ApiError(400, "limit must be a positive integer", {"got": text})
    samples = list(shadow.samples)[::-1][: int(text)]  # newest first
    body = {
        "route": name,
        "pool": shadow.pool,
        "kept": len(shadow.samples),
        "summary": shadow_view(plane, name, shadow),
        "diffs": [sample.to_obj() for sample in samples],
    }
    return json_answer(body, plane.doc.version)


def _shadow_from_body(
    plane: ControlPlane, route: str, pool: str, body: dict[str, Any], merge: bool
) -> ShadowConfig:
    """PUT: the body is the whole shadow (defaults for what it omits); PATCH: the body's keys
    change the current shadow (e.g. {"percent": 5})."""
    value: dict[str, Any] = dict(body)
    if merge:
        current = next((s for s in plane.proxy.table.routes[route].shadows if s.pool == pool), None)
        if current is None:
            raise ApiError(404, f"route '{route}' has no shadow '{pool}'", None)
        value = shadow_to_obj(current)
        for key, item in body.items():
            if key == "compare" and isinstance(item, dict) and isinstance(value["compare"], dict):
                value["compare"] = {**value["compare"], **item}
            else:
                value[key] = item
    pools = [p.name for p in plane.proxy.table.routes[route].pools]
    if pool not in pools:
        # The URL names a pool the route lacks: not found, as for a flip to an unknown pool.
        raise ApiError(404, f"route '{route}' has no pool '{pool}'", {"pools": pools})
    try:
        return parse_shadow(value, pools, pool=pool)
    except ShadowSpecError as err:
        raise ApiError(400, f"{err.path('')}: {err.message}", {"path": err.path("")}) from None


async def put_shadow(request: web.Request) -> web.Response:
    return await _write_shadow(request, merge=False)


async def patch_shadow(request: web.Request) -> web.Response:
    return await _write_shadow(request, merge=True)


async def _write_shadow(request: web.Request, merge: bool) -> web.Response:
    actor, plane, name, version, body = await write_request(request)
    pool = request.match_info["pool"]
    shadow = _shadow_from_body(plane, name, pool, body, merge)
    doc = await plane.change(
        actor, "shadow", name, version, lambda d, now: set_shadow(d, name, shadow, now)
    )
    live = plane.proxy.shadows.get(name, pool)
    assert live is not None  # bound by the table just published
    return json_answer(shadow_view(plane, name, live), doc.version)


async def delete_shadow(request: web.Request) -> web.Response:
    actor, plane, name, version, _ = await write_request(request)
    pool = request.match_info["pool"]
    doc = await plane.change(
        actor, "unshadow", name, version, lambda d, now: remove_shadow(d, name, pool, now)
    )
    return json_answer(route_view(plane, name), doc.version)


def rollout_error(err: RolloutError) -> ApiError:
    return ApiError(err.status, err.message, {"code": err.code})


async def post_rollout(request: web.Request) -> web.Response:
    actor, plane, name, version, body = await write_request(request)
    plane.check_version(version)
    try:
        status = await request.app[ROLLOUTS_KEY].start(name, body, actor)
    except RolloutError as err:
        raise rollout_error(err) from None
    return json_answer(status, plane.doc.version, 201)


async def get_rollout(request: web.Request) -> web.Response:
    check_auth(request, mutating=False)
    plane = request.app[PLANE_KEY]
    name = route_name(request, plane)
    try:
        return json_answer(request.app[ROLLOUTS_KEY].status(name), plane.doc.version)
    except RolloutError as err:
        raise rollout_error(err) from None


async def post_rollout_command(request: web.Request) -> web.Response:
    actor, plane, name, version, _ = await write_request(request)
    command = request.match_info["command"]
    if command not in ("pause", "resume", "promote", "abort"):
        raise ApiError(404, f"unknown rollout command '{command}'",
                       {"commands": ["pause", "resume", "promote", "abort"]})  # fmt: skip
    plane.check_version(version)
    try:
        status = await request.app[ROLLOUTS_KEY].command(name, command, actor)
    except RolloutError as err:
        raise rollout_error(err) from None
    return json_answer(status, plane.doc.version)


def load_openapi() -> bytes:
    """control/openapi.json, the API's OpenAPI 3.1 document (package data; control/openapi.py
    builds it)."""
    return importlib.resources.files("control").joinpath("openapi.json").read_bytes()


async def get_openapi(request: web.Request) -> web.Response:
    # No token, even where reads need one: the document is the same static file for every
    # installation (it ships in the package), holds no routing state, and a client or a
    # tool (code generator, schemathesis) reads it before it is set up with the token.
    return web.Response(body=request.app[OPENAPI_KEY], content_type="application/json")


async def metrics(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY_KEY]
    if PLANE_KEY in request.app:
        # With workers: the host's sums, not the master's own (it proxies nothing).
        await request.app[PLANE_KEY].refresh_counters()
    body = generate_latest(registry)
    # CONTENT_TYPE_LATEST carries its own charset parameter; aiohttp wants it in the header.
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    proxy = request.app[PROXY_KEY]
    ctx = proxy.ctx
    draining = ctx is not None and ctx.draining
    status = 503 if draining else 200
    body: dict[str, object] = {
        "status": "draining" if draining else "ok",
        "version": proxy.table.version,
    }
    plane = request.app.get(PLANE_KEY)
    if plane is not None and plane.fleet_sync is not None:
        # Still 200 with etcd down: this host serves traffic with the state it has.
        body["store"] = fleet_health(plane.fleet_sync, time.time())
    return web.json_response(body, status=status)


def fleet_health(sync: FleetSync, now: float) -> dict[str, object]:
    return {
        "kind": "etcd",
        "reachable": sync.reachable,
        "seconds_since_sync": None if sync.last_sync is None else round(now - sync.last_sync, 3),
        "error": sync.problem,
    }


class ControlCollector(Collector):
    """State version, last change time, flips and rollbacks, endpoint health."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane

    def collect(self) -> Iterator[Metric]:
        plane = self.plane
        version = GaugeMetricFamily("pointsman_state_version", "Version of the routing state.")
        version.add_metric([], plane.doc.version)
        yield version
        changed = GaugeMetricFamily(
            "pointsman_state_last_change_timestamp_seconds",
            "Unix time of the last routing-state change.",
        )
        changed.add_metric([], plane.last_change)
        yield changed
        flips = CounterMetricFamily(
            "pointsman_flips", "Blue/green flips, by route.", labels=["route"]
        )
        rollbacks = CounterMetricFamily(
            "pointsman_rollbacks", "Rollbacks, by route.", labels=["route"]
        )
        for name, state in plane.doc.routes:
            flips.add_metric([name], state.flips)
            rollbacks.add_metric([name], state.rollbacks)
        yield flips
        yield rollbacks
        healthy = GaugeMetricFamily(
            "pointsman_endpoint_healthy",
            "1 if the endpoint takes traffic, 0 if ejected.",
            labels=["route", "pool", "endpoint"],
        )
        for route in plane.proxy.table.routes.values():
            for pool in route.pools:
                for target in pool.targets:
                    healthy.add_metric(
                        [route.name, pool.name, str(target.address)], 1 if target.healthy else 0
                    )
        yield healthy
        entries = plane.discovery.entries
        if entries:
            resolutions = CounterMetricFamily(
                "pointsman_dns_resolutions",
                "Resolutions of a DNS endpoint (name:port) that gave addresses.",
                labels=["endpoint"],
            )
            failures = CounterMetricFamily(
                "pointsman_dns_failures",
                "Resolutions of a DNS endpoint that failed (its last addresses were kept).",
                labels=["endpoint"],
            )
            addresses = GaugeMetricFamily(
                "pointsman_dns_addresses",
                "Addresses a DNS endpoint resolves to now.",
                labels=["endpoint"],
            )
            for name, entry in sorted(entries.items()):
                resolutions.add_metric([name], entry.resolutions)
                failures.add_metric([name], entry.failures)
                addresses.add_metric([name], len(entry.addresses))
            yield resolutions
            yield failures
            yield addresses
        sync = plane.fleet_sync
        if sync is not None:
            up = GaugeMetricFamily(
                "pointsman_state_store_up",
                "1 if the last call to the fleet's etcd succeeded and its state was ours.",
            )
            up.add_metric([], 1 if sync.reachable else 0)
            yield up
            age = GaugeMetricFamily(
                "pointsman_state_store_seconds_since_sync",
                "Seconds since this member last read from etcd (a watch batch, progress"
                " notice or full read); since start if it never did.",
            )
            age.add_metric([], time.time() - (sync.last_sync or sync.started))
            yield age
            reads = CounterMetricFamily(
                "pointsman_state_store_full_reads",
                "Reads of the whole fleet state (start, compaction, etcd wiped or restored).",
            )
            reads.add_metric([], sync.full_reads)
            yield reads
            resumes = CounterMetricFamily(
                "pointsman_state_store_watch_resumes",
                "Watches of the fleet state resumed from the last applied revision after a break.",
            )
            resumes.add_metric([], sync.resumes)
            yield resumes
            refused = GaugeMetricFamily(
                "pointsman_state_store_refusing",
                "1 while the newest fleet state is not applied (it does not fit this config).",
            )
            refused.add_metric([], 1 if sync.refusal else 0)
            yield refused


def build_admin_app(
    proxy: ProxyServer,
    plane: ControlPlane | None = None,
    token: str | None = None,
    rollouts: RolloutRunner | None = None,
    reload: Reload | None = None,
) -> web.Application:
    """The admin app: /metrics and /healthz, and with a plane the control API (whose rollouts
    the runner drives: the service's own, else a new one); `POST /v1/reload` with `reload`
    (the service's, which reads the config file again)."""
    app = web.Application(middlewares=[errors_as_json, fleet_wait], client_max_size=MAX_API_BODY)
    app[PROXY_KEY] = proxy
    registry = proxy.metrics.registry()
    app[REGISTRY_KEY] = registry
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    if plane is not None:
        app[PLANE_KEY] = plane
        if rollouts is None:
            rollouts = RolloutRunner(plane)
        app[ROLLOUTS_KEY] = rollouts
        app[TOKEN_KEY] = token or ""
        # Reads are open only where nobody off the machine can reach them.
        app[OPEN_READS_KEY] = is_loopback(plane.config.admin.listen.host)
        registry.register(ControlCollector(plane))
        registry.register(RolloutCollector(rollouts))
        app[OPENAPI_KEY] = load_openapi()  # read once: the file does not change at run time
        app.router.add_get("/v1/openapi.json", get_openapi)
        app.router.add_get("/v1/fleet", get_fleet)
        if reload is not None:
            app[RELOAD_KEY] = reload
            app.router.add_post("/v1/reload", post_reload)
        app.router.add_get("/v1/routes", list_routes)
        app.router.add_get("/v1/routes/{route}", get_route)
        app.router.add_put("/v1/routes/{route}/weights", put_weights)
        app.router.add_post("/v1/routes/{route}/flip", post_flip)
        app.router.add_post("/v1/routes/{route}/rollback", post_rollback)
        app.router.add_get("/v1/routes/{route}/counters", get_counters)
        pool_path = "/v1/routes/{route}/pools/{pool}"
        app.router.add_get(pool_path, get_pool)
        app.router.add_delete(pool_path, delete_pool_handler)
        app.router.add_post(pool_path + "/endpoints", post_endpoints)
        app.router.add_put(pool_path + "/endpoints", put_endpoints)
        app.router.add_delete(pool_path + "/endpoints/{endpoint}", delete_endpoint)
        app.router.add_post(pool_path + "/endpoints/{endpoint}/drain", post_drain)
        app.router.add_get("/v1/routes/{route}/shadows", list_shadows)
        app.router.add_get("/v1/routes/{route}/shadows/{pool}", get_shadow)
        app.router.add_put("/v1/routes/{route}/shadows/{pool}", put_shadow)
        app.router.add_patch("/v1/routes/{route}/shadows/{pool}", patch_shadow)
        app.router.add_delete("/v1/routes/{route}/shadows/{pool}", delete_shadow)
        app.router.add_get("/v1/routes/{route}/shadows/{pool}/diffs", get_diffs)
        app.router.add_post("/v1/routes/{route}/rollout", post_rollout)
        app.router.add_get("/v1/routes/{route}/rollout", get_rollout)
        app.router.add_post("/v1/routes/{route}/rollout/{command}", post_rollout_command)
    return app
