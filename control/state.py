"""The routing state document and its transitions: pure functions, no I/O.

The control plane owns the mutable part of routing (per-route weights, the live pool of a
blue/green pair, what to roll back to) as one versioned, immutable `StateDoc`. Every transition
validates, then returns a new document with `version + 1`; the caller persists it, publishes a
new RoutingTable built from `doc.weights()`, and writes the audit line. Errors are `StateError`
with a stable `code` the control API maps to an HTTP status.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

import orjson

from control.errors import CodedError
from proxy.config import MAX_WEIGHT, PoolConfig, RouteConfig, address_text, parse_address
from proxy.shadow_config import ShadowConfig, ShadowSpecError, parse_shadow, shadow_to_obj
from proxy.values import PlainReader, kind, show

__all__ = [
    "FLIP_WEIGHT",
    "FORMAT",
    "MAX_WEIGHT",
    "PoolState",
    "RouteState",
    "StateDoc",
    "StateError",
    "commit",
    "flip",
    "from_json",
    "initial_state",
    "reconcile",
    "remove_shadow",
    "rollback",
    "rollout_progress",
    "rollout_step",
    "set_shadow",
    "set_weights",
    "to_json",
]

# On-disk layout version: bump when the layout changes, so an old binary refuses a newer file
# instead of misreading it. 2: routes carry their pools and endpoints (1 is still read).
FORMAT: Final = 2
READABLE_FORMATS: Final = (1, 2)
# A flip is all-or-nothing; 100 reads as "100 %" in status output and in the audit log.
FLIP_WEIGHT: Final = 100

Weights = tuple[tuple[str, int], ...]

_STATUS: Final[Mapping[str, int]] = {
    "unknown_route": 404,
    "unknown_pool": 404,
    "bad_weights": 400,
    "nothing_to_roll_back": 409,
    "unchanged": 409,
    "no_shadow": 404,
    "shadow_conflict": 409,
    "bad_pool": 400,
    "bad_endpoint": 400,
    "duplicate_endpoint": 409,
    "unknown_endpoint": 404,
    "pool_in_use": 409,
    "no_endpoints": 409,
}


class StateError(CodedError):
    """A refused transition. `code` is one of the keys of the status map; str() is for humans."""

    STATUS = _STATUS


@dataclass(frozen=True, slots=True)
class PoolState:
    """One pool's endpoints as routing state (control/pool_state.py changes them)."""

    name: str
    endpoints: tuple[str, ...]  # address_text form, in the order requests rotate over them
    draining: tuple[str, ...] = ()  # of `endpoints`: no new requests, in-flight ones finish
    added: bool = False  # created through the control API; not in the config

    def routed(self) -> tuple[str, ...]:
        """The endpoints that take new requests."""
        return tuple(e for e in self.endpoints if e not in self.draining)


@dataclass(frozen=True, slots=True)
class RouteState:
    """One route's mutable routing: weights in the config's pool order, and what to roll back to."""

    weights: Weights
    live: str | None  # the pool that got all traffic by the last flip (or sole-weight PUT)
    previous: Weights | None  # the weights before the last change; None: nothing to roll back
    previous_live: str | None
    flips: int = 0
    rollbacks: int = 0
    changed_at: float = 0.0  # unix time of the last transition
    # The route's shadows; None only in a document read from a file that predates them, until
    # `reconcile` fills in the config's.
    shadows: tuple[ShadowConfig, ...] | None = None
    # The route's canary rollout in its persisted form (control/rollout.to_json_obj), current or
    # last finished; validated by control/rollout.from_json_obj when the service starts.
    rollout: Mapping[str, Any] | None = None
    # The route's pools in `weights` order, with their endpoints; None only in a document
    # from a file that predates them, until `reconcile` fills in the config's.
    pools: tuple[PoolState, ...] | None = None
    # Pools of the config deleted through the control API: they stay deleted across restarts.
    removed_pools: tuple[str, ...] = ()

    def weights_dict(self) -> dict[str, int]:
        return dict(self.weights)

    def pool(self, route: str, name: str) -> PoolState:
        for pool in self.pools or ():
            if pool.name == name:
                return pool
        raise _unknown_pool(route, name, self.weights)


@dataclass(frozen=True, slots=True)
class StateDoc:
    """The whole versioned state: routes in the config's route order."""

    version: int
    routes: tuple[tuple[str, RouteState], ...]
    updated_at: float

    def route(self, name: str) -> RouteState:
        for route_name, state in self.routes:
            if route_name == name:
                return state
        known = ", ".join(n for n, _ in self.routes) or "none"
        raise StateError("unknown_route", f"no route {name!r} (routes: {known})")

    def weights(self) -> dict[str, dict[str, int]]:
        """Per-route weights, as `proxy.router.RoutingTable(weights=...)` takes them."""
        return {name: state.weights_dict() for name, state in self.routes}

    def shadows(self) -> dict[str, tuple[ShadowConfig, ...]]:
        """Per-route shadows, as `RoutingTable(shadows=...)` takes them (None: the config's)."""
        return {name: state.shadows for name, state in self.routes if state.shadows is not None}

    def pools(self) -> dict[str, list[list[Any]]]:
        """Per-route pools as `proxy.config.routes_with_pools` takes them:
        [[pool, [routed endpoint, ...], [draining endpoint, ...]], ...]."""
        return {
            name: [[p.name, list(p.routed()), list(p.draining)] for p in state.pools]
            for name, state in self.routes
            if state.pools is not None
        }


# --- transitions -------------------------------------------------------------------------------


def _sole_pool(weights: Weights) -> str | None:
    """The pool that gets all traffic, if exactly one has weight > 0."""
    positive = [name for name, weight in weights if weight > 0]
    return positive[0] if len(positive) == 1 else None


def _show(weights: Weights) -> str:
    return ", ".join(f"{name}={weight}" for name, weight in weights)


def _unknown_pool(route: str, pool: object, weights: Weights) -> StateError:
    known = ", ".join(name for name, _ in weights)
    return StateError("unknown_pool", f"route {route!r} has no pool {pool!r} (pools: {known})")


def commit(doc: StateDoc, route: str, new: RouteState, now: float) -> StateDoc:
    """`doc` with `route` replaced by `new`, version + 1."""
    routes = tuple((name, new if name == route else state) for name, state in doc.routes)
    return StateDoc(version=doc.version + 1, routes=routes, updated_at=now)


def _change(
    doc: StateDoc,
    route: str,
    weights: Weights,
    live: str | None,
    now: float,
    *,
    flips: int = 0,
    rollbacks: int = 0,
) -> StateDoc:
    """Move `route` to a new assignment, remembering the current one for rollback. A pool
    given weight must have an endpoint that takes requests: else its share gets 503s."""
    old = doc.route(route)
    for pool in old.pools or ():
        if dict(weights).get(pool.name, 0) > 0 and not pool.routed():
            raise StateError(
                "no_endpoints",
                f"pool {pool.name!r} of route {route!r} has no endpoint that takes requests;"
                " add one before giving it traffic",
            )
    new = replace(
        old,
        weights=weights,
        live=live,
        previous=old.weights,
        previous_live=old.live,
        flips=old.flips + flips,
        rollbacks=old.rollbacks + rollbacks,
        changed_at=now,
    )
    return commit(doc, route, new, now)


def set_weights(doc: StateDoc, route: str, weights: Mapping[str, int], now: float) -> StateDoc:
    """Replace the route's whole weights map (a PUT): pools not named get 0.

    Every named pool must exist in the route (unknown_pool); every weight must be an int in
    [0, MAX_WEIGHT] (bool is not an int) and at least one > 0 (bad_weights). The same weights
    again is refused as `unchanged`, so a retry cannot overwrite what rollback would restore.
    `live` becomes the sole pool with weight > 0, else None.
    """
    current = doc.route(route)
    pools = [name for name, _ in current.weights]
    for name in weights:
        if name not in pools:
            raise _unknown_pool(route, name, current.weights)
    for name, weight in weights.items():
        # Values come from JSON bodies; the annotation is a promise the caller may not keep.
        value: object = weight
        if isinstance(value, bool) or not isinstance(value, int):
            raise StateError("bad_weights", f"weight of {name!r} must be an integer, got {value!r}")
        if not 0 <= value <= MAX_WEIGHT:
            raise StateError(
                "bad_weights", f"weight of {name!r} must be in 0..{MAX_WEIGHT}, got {value}"
            )
    new = tuple((name, weights.get(name, 0)) for name in pools)
    if not any(weight > 0 for _, weight in new):
        raise StateError("bad_weights", "at least one pool needs a weight > 0")
    if new == current.weights:
        raise StateError("unchanged", f"route {route!r} already has weights {_show(new)}")
    return _change(doc, route, new, _sole_pool(new), now)


def flip(doc: StateDoc, route: str, to_pool: str, now: float) -> StateDoc:
    """All of the route's traffic to `to_pool` (FLIP_WEIGHT, others 0); `live` = to_pool."""
    current = doc.route(route)
    pools = [name for name, _ in current.weights]
    if to_pool not in pools:
        raise _unknown_pool(route, to_pool, current.weights)
    if _sole_pool(current.weights) == to_pool and current.live == to_pool:
        raise StateError("unchanged", f"route {route!r} already sends all traffic to {to_pool!r}")
    new = tuple((name, FLIP_WEIGHT if name == to_pool else 0) for name in pools)
    return _change(doc, route, new, to_pool, now, flips=1)


def rollback(doc: StateDoc, route: str, now: float) -> StateDoc:
    """Back to the assignment before the last change; the current one becomes `previous`, so a
    second rollback returns to where the first started."""
    current = doc.route(route)
    if current.previous is None:
        raise StateError("nothing_to_roll_back", f"route {route!r} has no earlier assignment")
    return _change(doc, route, current.previous, current.previous_live, now, rollbacks=1)


def set_shadow(doc: StateDoc, route: str, shadow: ShadowConfig, now: float) -> StateDoc:
    """Add the shadow, or replace the route's shadow of the same pool. Its pool and baseline
    must be pools of the route taking no live traffic (shadow_conflict): live traffic on a
    shadow would be compared with itself. Weights and the rollback target are untouched."""
    current = doc.route(route)
    for role, pool in (("shadow", shadow.pool), ("baseline", shadow.baseline)):
        if pool is None:
            continue
        if pool not in dict(current.weights):
            raise _unknown_pool(route, pool, current.weights)
        if dict(current.weights)[pool] > 0:
            raise StateError(
                "shadow_conflict",
                f"pool {pool!r} takes live traffic (weight {dict(current.weights)[pool]}); "
                f"a {role} pool must have weight 0",
            )
    shadows = current.shadows or ()
    if shadow in shadows:
        raise StateError("unchanged", f"route {route!r} already has this shadow of {shadow.pool!r}")
    if any(s.pool == shadow.pool for s in shadows):
        new_shadows = tuple(shadow if s.pool == shadow.pool else s for s in shadows)
    else:
        new_shadows = (*shadows, shadow)
    return commit(doc, route, replace(current, shadows=new_shadows, changed_at=now), now)


def rollout_step(
    doc: StateDoc,
    route: str,
    weights: Mapping[str, int] | None,
    rollout: Mapping[str, Any],
    now: float,
) -> StateDoc:
    """A rollout's visible change (start, step, pause, promotion, rollback...): the rollout
    document replaced and, with `weights`, the route's weights set (remembered for rollback,
    like any change). Version + 1. Weights are the rollout machine's, already checked."""
    current = doc.route(route)
    if weights is not None:
        new_weights = tuple((name, weights.get(name, 0)) for name, _ in current.weights)
        if new_weights != current.weights:
            doc = _change(doc, route, new_weights, _sole_pool(new_weights), now)
            current = doc.route(route)
    return commit(doc, route, replace(current, rollout=dict(rollout), changed_at=now), now)


def rollout_progress(doc: StateDoc, route: str, rollout: Mapping[str, Any], now: float) -> StateDoc:
    """A rollout's quiet progress (time spent, analysis windows), saved so a restart resumes
    where it was: same version, since no routing changed and no one's If-Match should break."""
    doc.route(route)  # unknown_route if it is not there
    routes = tuple(
        (name, replace(state, rollout=dict(rollout)) if name == route else state)
        for name, state in doc.routes
    )
    return StateDoc(version=doc.version, routes=routes, updated_at=now)


def remove_shadow(doc: StateDoc, route: str, pool: str, now: float) -> StateDoc:
    current = doc.route(route)
    shadows = current.shadows or ()
    if not any(s.pool == pool for s in shadows):
        known = ", ".join(s.pool for s in shadows) or "none"
        raise StateError("no_shadow", f"route {route!r} has no shadow {pool!r} (shadows: {known})")
    kept = tuple(s for s in shadows if s.pool != pool)
    return commit(doc, route, replace(current, shadows=kept, changed_at=now), now)


# --- from config -------------------------------------------------------------------------------


def _config_weights(route: RouteConfig) -> Weights:
    return tuple((pool.name, pool.weight) for pool in route.pools)


def _config_pool(pool: PoolConfig) -> PoolState:
    return PoolState(pool.name, tuple(address_text(a) for a in pool.endpoints))


def _fresh(route: RouteConfig, now: float) -> RouteState:
    weights = _config_weights(route)
    return RouteState(
        weights=weights,
        live=_sole_pool(weights),
        previous=None,
        previous_live=None,
        changed_at=now,
        shadows=route.shadows,
        pools=tuple(_config_pool(p) for p in route.pools),
    )


def initial_state(routes: Sequence[RouteConfig], now: float) -> StateDoc:
    """Version 1 from the config's weights (used when nothing is persisted yet)."""
    return StateDoc(
        version=1, routes=tuple((rc.name, _fresh(rc, now)) for rc in routes), updated_at=now
    )


def _keep_known(weights: Weights, pools: Sequence[str]) -> tuple[Weights, list[str]]:
    """`weights` in `pools` order: unknown pools dropped (returned), missing pools at 0."""
    given = dict(weights)
    dropped = [name for name in given if name not in pools]
    return tuple((name, given.get(name, 0)) for name in pools), dropped


def _reconcile_pools(
    name: str, state: RouteState, rc: RouteConfig, warnings: list[str]
) -> tuple[tuple[PoolState, ...], tuple[str, ...]]:
    """The route's pools: the config's (minus those deleted through the API) with the
    state's endpoints where it has them, then the pools created through the API. Returns
    them and the deletions that still name a configured pool."""
    configured = {pool.name: pool for pool in rc.pools}
    removed = tuple(p for p in state.removed_pools if p in configured)
    if state.pools is None:  # a file from before pools were persisted
        return tuple(_config_pool(p) for p in rc.pools if p.name not in removed), removed
    persisted = {pool.name: pool for pool in state.pools}
    out: list[PoolState] = []
    for pc in rc.pools:
        if pc.name in removed:
            continue
        kept = persisted.get(pc.name)
        if kept is None:
            out.append(_config_pool(pc))
            continue
        written = [address_text(a) for a in pc.endpoints]
        if sorted(kept.endpoints) != sorted(written):
            warnings.append(
                f"route {name!r}: pool {pc.name!r} has endpoints {', '.join(kept.endpoints)}"
                f" in the state and {', '.join(written)} in the config; the state's are used"
            )
        out.append(replace(kept, added=False) if kept.added else kept)
    out.extend(p for p in state.pools if p.added and p.name not in configured)
    return tuple(out), removed


def _reconcile_route(
    name: str, state: RouteState, rc: RouteConfig, warnings: list[str]
) -> RouteState:
    pool_states, removed = _reconcile_pools(name, state, rc, warnings)
    pools = [pool.name for pool in pool_states]
    weights, dropped = _keep_known(state.weights, pools)
    for pool in dropped:
        warnings.append(
            f"route {name!r}: pool {pool!r} is no longer in the config; dropped "
            f"(it had weight {dict(state.weights)[pool]})"
        )
    live = state.live if state.live in pools else None
    if any(weight > 0 for _, weight in weights):
        known = {pool for pool, _ in state.weights}
        for pc in rc.pools:
            if pc.name not in known and pc.name in pools:
                warnings.append(
                    f"route {name!r}: pool {pc.name!r} is new in the config; added with "
                    f"weight 0 (the persisted weights win over the config's {pc.weight})"
                )
    else:
        configured = {pc.name: pc.weight for pc in rc.pools}
        weights = tuple((pool, configured.get(pool, 0)) for pool in pools)
        live = _sole_pool(weights)
        warnings.append(
            f"route {name!r}: no remaining pool has a weight > 0; "
            f"using the config's weights ({_show(weights)})"
        )
    previous: Weights | None = None
    previous_live: str | None = None
    if state.previous is not None:
        previous, _ = _keep_known(state.previous, pools)
        previous_live = state.previous_live if state.previous_live in pools else None
        if not any(weight > 0 for _, weight in previous) or (previous, previous_live) == (
            weights,
            live,
        ):
            # Rolling back to "no traffic anywhere" or to the current assignment is useless.
            previous, previous_live = None, None
            warnings.append(
                f"route {name!r}: the assignment to roll back to no longer applies to the "
                "configured pools; rollback is unavailable until the next change"
            )
    return replace(
        state,
        weights=weights,
        live=live,
        previous=previous,
        previous_live=previous_live,
        shadows=_reconcile_shadows(name, state.shadows, rc, weights, warnings),
        pools=pool_states,
        removed_pools=removed,
    )


def _reconcile_shadows(
    name: str,
    shadows: tuple[ShadowConfig, ...] | None,
    rc: RouteConfig,
    weights: Weights,
    warnings: list[str],
) -> tuple[ShadowConfig, ...]:
    """Persisted shadows win over the config's; one naming a pool gone from the config is
    dropped with a warning. (One whose pool has since got weight, as a canary, is kept:
    mirroring skips the requests routed to that pool itself.)"""
    if shadows is None:
        return rc.shadows  # a file from before shadows were persisted
    kept: list[ShadowConfig] = []
    live = dict(weights)
    for shadow in shadows:
        pools = [p for p in (shadow.pool, shadow.baseline) if p is not None]
        missing = [p for p in pools if p not in live]
        if missing:
            warnings.append(
                f"route {name!r}: shadow {shadow.pool!r} names pool {missing[0]!r}, which is no "
                "longer in the config; dropped"
            )
            continue
        kept.append(shadow)
    return tuple(kept)


def reconcile(
    doc: StateDoc, routes: Sequence[RouteConfig], now: float | None = None
) -> tuple[StateDoc, list[str]]:
    """Fit a persisted document to the current config. The persisted weights win, except:

    - a route no longer in the config is dropped;
    - a pool no longer in a route is dropped; if no remaining pool has weight > 0 the route
      falls back to the config's weights;
    - a route new in the config gets the config's weights; a pool new in an existing route gets 0.

    Routes and pools end up in config order. Returns the document (version + 1 and, when given,
    `updated_at = now` if anything changed; else `doc` itself) and one warning line per
    adjustment, for the operator.
    """
    warnings: list[str] = []
    persisted = dict(doc.routes)
    configured = {rc.name for rc in routes}
    for name, state in doc.routes:
        if name not in configured:
            warnings.append(
                f"route {name!r} is no longer in the config; dropped its persisted state "
                f"(weights {_show(state.weights)})"
            )
    stamp = doc.updated_at if now is None else now
    result: list[tuple[str, RouteState]] = []
    for rc in routes:
        if rc.name in persisted:
            result.append((rc.name, _reconcile_route(rc.name, persisted[rc.name], rc, warnings)))
        else:
            fresh = _fresh(rc, stamp)
            warnings.append(
                f"route {rc.name!r} is new in the config; using the config's weights "
                f"({_show(fresh.weights)})"
            )
            result.append((rc.name, fresh))
    routes_out = tuple(result)
    if routes_out == doc.routes:
        return doc, warnings
    return StateDoc(version=doc.version + 1, routes=routes_out, updated_at=stamp), warnings


# --- JSON --------------------------------------------------------------------------------------


def _route_json(name: str, state: RouteState) -> dict[str, Any]:
    # Keys in a fixed order (not sorted: weights keep the pool order, which means something).
    return {
        "name": name,
        "weights": dict(state.weights),
        "live": state.live,
        "previous": None if state.previous is None else dict(state.previous),
        "previous_live": state.previous_live,
        "flips": state.flips,
        "rollbacks": state.rollbacks,
        "changed_at": state.changed_at,
        "shadows": None if state.shadows is None else [shadow_to_obj(s) for s in state.shadows],
        "rollout": None if state.rollout is None else dict(state.rollout),
        "pools": None if state.pools is None else [_pool_json(p) for p in state.pools],
        "removed_pools": list(state.removed_pools),
    }


def _pool_json(pool: PoolState) -> dict[str, Any]:
    return {
        "name": pool.name,
        "endpoints": list(pool.endpoints),
        "draining": list(pool.draining),
        "added": pool.added,
    }


def to_json(doc: StateDoc) -> bytes:
    """The document as indented JSON with a stable key order, newline-terminated."""
    body = {
        "format": FORMAT,
        "version": doc.version,
        "updated_at": doc.updated_at,
        "routes": [_route_json(name, state) for name, state in doc.routes],
    }
    return orjson.dumps(body, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)


class _StateReader(PlainReader):
    """PlainReader (proxy/values.py) plus the two shapes only the state file has."""

    __slots__ = ()

    def __init__(self, obj: object, path: str) -> None:
        super().__init__(obj, path, ValueError)

    def name_or_null(self, key: str, allowed: Weights | None) -> str | None:
        value = self.get(key)
        if value is None:
            return None
        if allowed is None or not isinstance(value, str) or value not in dict(allowed):
            pools = "none" if allowed is None else ", ".join(n for n, _ in allowed)
            raise self.fail(key, f"expected null or one of its pools ({pools}), got {show(value)}")
        return value

    def weights(self, key: str, nullable: bool) -> Weights | None:
        value = self.get(key)
        where = self.at(key)
        if value is None and nullable:
            return None
        if not isinstance(value, dict) or not value:
            expected = "a non-empty object of pool -> weight" + (" or null" if nullable else "")
            raise ValueError(f"{where}: expected {expected}, got {kind(value)}")
        out: list[tuple[str, int]] = []
        for pool, weight in value.items():
            if not pool:
                raise ValueError(f"{where}: empty pool name")
            if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
                raise ValueError(f"{where}.{pool}: expected an integer >= 0, got {show(weight)}")
            out.append((pool, weight))
        return tuple(out)


def _route_from(obj: object, where: str) -> tuple[str, RouteState]:
    r = _StateReader(obj, where)
    name = r.string("name")
    r.path = f"{where} ({name!r})"
    weights = r.weights("weights", nullable=False)
    assert weights is not None  # not nullable
    previous = r.weights("previous", nullable=True)
    if previous is not None and [p for p, _ in previous] != [p for p, _ in weights]:
        raise r.fail("previous", "expected the same pools as weights, in order")
    state = RouteState(
        weights=weights,
        live=r.name_or_null("live", weights),
        previous=previous,
        previous_live=r.name_or_null("previous_live", previous),
        flips=r.count("flips"),
        rollbacks=r.count("rollbacks"),
        changed_at=r.time("changed_at"),
        shadows=_shadows_from(r.obj.get("shadows"), r.path),
        rollout=_rollout_from(r.obj.get("rollout"), r.path),
        pools=_pools_from(r, weights),
        removed_pools=tuple(r.strings("removed_pools")) if "removed_pools" in r.obj else (),
    )
    return name, state


def _pools_from(route: _StateReader, weights: Weights) -> tuple[PoolState, ...] | None:
    if route.obj.get("pools") is None:
        return None  # absent: written before pools were persisted
    pools = []
    for index, item in enumerate(route.array("pools")):
        r = _StateReader(item, f"{route.path}.pools[{index}]")
        endpoints = tuple(r.strings("endpoints"))
        draining = tuple(r.strings("draining"))
        for endpoint in endpoints:
            try:
                parse_address(endpoint)
            except ValueError as err:
                raise r.fail("endpoints", str(err)) from None
        if len(set(endpoints)) != len(endpoints):
            raise r.fail("endpoints", "expected each endpoint once")
        if any(e not in endpoints for e in draining):
            raise r.fail("draining", "expected endpoints of the pool")
        pools.append(PoolState(r.string("name"), endpoints, draining, r.boolean("added")))
    if [p.name for p in pools] != [name for name, _ in weights]:
        raise route.fail("pools", "expected the pools of weights, in order")
    return tuple(pools)


def _rollout_from(value: object, where: str) -> Mapping[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"{where}.rollout: expected an object or null, got {kind(value)}")
    return value


def _shadows_from(value: object, where: str) -> tuple[ShadowConfig, ...] | None:
    if value is None:
        return None  # absent: written before shadows were persisted
    if not isinstance(value, list):
        raise ValueError(f"{where}.shadows: expected an array or null, got {kind(value)}")
    shadows = []
    for index, item in enumerate(value):
        try:
            shadows.append(parse_shadow(item))
        except ShadowSpecError as err:
            raise ValueError(f"{err.path(f'{where}.shadows[{index}]')}: {err.message}") from None
    return tuple(shadows)


def from_json(data: bytes) -> StateDoc:
    """Parse and validate `to_json` output. Raises ValueError naming the first problem.

    Validates types and shape only: an all-zero route is accepted here and repaired (with a
    warning) by `reconcile`, which every load goes through.
    """
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as err:
        raise ValueError(f"not valid JSON: {err}") from None
    r = _StateReader(obj, "state")
    fmt = r.get("format")
    if isinstance(fmt, bool) or fmt not in READABLE_FORMATS:  # True == 1 in Python
        raise r.fail("format", f"expected one of {READABLE_FORMATS}, got {show(fmt)}")
    version = r.count("version")
    updated_at = r.time("updated_at")
    items = r.array("routes")
    routes = [_route_from(item, f"state.routes[{i}]") for i, item in enumerate(items)]
    names = [name for name, _ in routes]
    for name in names:
        if names.count(name) > 1:
            raise ValueError(f"state.routes: route {name!r} appears more than once")
    return StateDoc(version=version, routes=tuple(routes), updated_at=updated_at)
