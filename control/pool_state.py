"""Pools and endpoints as routing state: pure transitions on a StateDoc, no I/O.

With immutable deploys every release lands on new addresses, so a route's pools and their
endpoints change at run time like weights do: created, extended, replaced, drained, removed,
each a new version that is persisted, pushed to every worker and fleet member, and audited.
A pool the config declares starts with the config's endpoints; from then on the state wins.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, Final

from control.state import PoolState, RouteState, StateDoc, StateError, commit
from proxy.config import RouteConfig, address_text, parse_address

__all__ = [
    "MAX_POOLS",
    "MAX_POOL_ENDPOINTS",
    "add_endpoints",
    "delete_pool",
    "drain_endpoint",
    "remove_endpoint",
    "set_endpoints",
]

# A pool is a set of instances of one version; thousands would be a mistake in a script (and
# every worker rebuilds its table from the list on each change).
MAX_POOL_ENDPOINTS: Final = 1024
# Pools per route: versions side by side. A loop creating pools would otherwise grow the state
# document and every table without bound.
MAX_POOLS: Final = 64

_POOL_NAME_RE: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# Rollout phases after which a rollout no longer holds its pools (control/rollout/spec.py).
_FINISHED_ROLLOUT: Final = frozenset({"promoted", "failed", "aborted"})


def _endpoints(given: Sequence[object], *, allow_empty: bool = False) -> tuple[str, ...]:
    """Endpoints as written ('10.0.0.7:8080', '[::1]:8080') in their canonical form."""
    if not given and not allow_empty:
        raise StateError("bad_endpoint", "expected at least one endpoint")
    if len(given) > MAX_POOL_ENDPOINTS:
        raise StateError(
            "bad_endpoint", f"at most {MAX_POOL_ENDPOINTS} endpoints per pool, got {len(given)}"
        )
    out: list[str] = []
    for value in given:
        try:
            text = address_text(parse_address(value))
        except ValueError as err:
            raise StateError("bad_endpoint", f"endpoint {value!r}: {err}") from None
        if text in out:
            raise StateError("duplicate_endpoint", f"endpoint {text} is given twice")
        out.append(text)
    return tuple(out)


def _with_pool(doc: StateDoc, route: str, pool: PoolState, now: float) -> StateDoc:
    """`doc` with the route's pool `pool.name` replaced by `pool`, version + 1."""
    current = doc.route(route)
    pools = tuple(pool if p.name == pool.name else p for p in current.pools or ())
    return commit(doc, route, replace(current, pools=pools, changed_at=now), now)


def uses_of(state: RouteState, config: RouteConfig, pool: str) -> list[str]:
    """Why a pool takes or may take requests (so it cannot lose its last endpoint or be
    deleted): weight, a rule of the config, a shadow, a running rollout."""
    uses = []
    weight = dict(state.weights).get(pool, 0)
    if weight > 0:
        uses.append(f"it has weight {weight}")
    if any(rule.pool == pool for rule in config.rules):
        uses.append("a rule of the config routes to it")
    for shadow in state.shadows or ():
        if pool == shadow.pool:
            uses.append("it is a shadow")
        elif pool == shadow.baseline:
            uses.append(f"it is the baseline of shadow {shadow.pool!r}")
    rollout = state.rollout
    if rollout is not None and rollout.get("phase") not in _FINISHED_ROLLOUT:
        spec: Mapping[str, Any] = rollout.get("spec") or {}
        if pool in (spec.get("candidate"), spec.get("stable")):
            uses.append("a rollout runs on it")
    return uses


def _refuse_if_used(
    state: RouteState, config: RouteConfig, route: str, pool: str, what: str
) -> None:
    uses = uses_of(state, config, pool)
    if uses:
        raise StateError(
            "pool_in_use", f"route {route!r}: cannot {what} pool {pool!r}: {'; '.join(uses)}"
        )


def add_endpoints(
    doc: StateDoc, config: RouteConfig, route: str, pool: str, given: Sequence[object], now: float
) -> StateDoc:
    """Add endpoints to the pool, creating it (weight 0, after the route's other pools, so a
    canary grows at the end of the sticky walk) when the route has none of that name. An
    endpoint already in the pool is refused (duplicate_endpoint); a draining one is taken
    back (it takes requests again)."""
    current = doc.route(route)
    endpoints = _endpoints(given)
    existing = next((p for p in current.pools or () if p.name == pool), None)
    if existing is None:
        if not _POOL_NAME_RE.fullmatch(pool):
            raise StateError(
                "bad_pool",
                f"pool name {pool!r}: expected 1 to 64 letters, digits, '_', '.' or '-'",
            )
        pools = current.pools or ()
        if len(pools) >= MAX_POOLS:
            raise StateError("bad_pool", f"route {route!r} has {MAX_POOLS} pools, the most")
        at = _position(pools, config, pool)
        created = PoolState(pool, endpoints, added=all(p.name != pool for p in config.pools))
        new = replace(
            current,
            weights=(*current.weights[:at], (pool, 0), *current.weights[at:]),
            previous=None
            if current.previous is None
            else (*current.previous[:at], (pool, 0), *current.previous[at:]),
            pools=(*pools[:at], created, *pools[at:]),
            # A config pool deleted earlier and now made again is the config's pool again.
            removed_pools=tuple(p for p in current.removed_pools if p != pool),
            changed_at=now,
        )
        return commit(doc, route, new, now)
    taken_back = [e for e in endpoints if e in existing.draining]
    already = [e for e in endpoints if e in existing.endpoints and e not in existing.draining]
    if already:
        raise StateError(
            "duplicate_endpoint", f"pool {pool!r} of route {route!r} already has {already[0]}"
        )
    added = tuple(e for e in endpoints if e not in existing.endpoints)
    if len(existing.endpoints) + len(added) > MAX_POOL_ENDPOINTS:
        raise StateError("bad_endpoint", f"at most {MAX_POOL_ENDPOINTS} endpoints per pool")
    updated = replace(
        existing,
        endpoints=existing.endpoints + added,
        draining=tuple(e for e in existing.draining if e not in taken_back),
    )
    return _with_pool(doc, route, updated, now)


def _position(pools: Sequence[PoolState], config: RouteConfig, name: str) -> int:
    """Where a new pool goes, so that a restart (`reconcile`) keeps the order: a pool made
    through the API after every other pool; a config pool made again (after a delete) among
    the config's pools in config order."""
    order = [p.name for p in config.pools]
    if name not in order:
        return len(pools)
    later = set(order[order.index(name) + 1 :])
    for index, pool in enumerate(pools):
        if pool.added or pool.name in later:
            return index
    return len(pools)


def set_endpoints(
    doc: StateDoc, config: RouteConfig, route: str, pool: str, given: Sequence[object], now: float
) -> StateDoc:
    """Replace the pool's endpoints: the listed ones take requests (a draining one listed is
    taken back), the others leave at once (their in-flight requests finish)."""
    current = doc.route(route)
    existing = current.pool(route, pool)
    endpoints = _endpoints(given, allow_empty=True)
    if not endpoints:
        _refuse_if_used(current, config, route, pool, "empty")
    updated = replace(existing, endpoints=endpoints, draining=())
    if updated == existing:
        raise StateError("unchanged", f"pool {pool!r} already has endpoints {', '.join(endpoints)}")
    return _with_pool(doc, route, updated, now)


def _member(state: RouteState, route: str, pool: str, endpoint: object) -> tuple[PoolState, str]:
    existing = state.pool(route, pool)
    try:
        text = address_text(parse_address(endpoint))
    except ValueError as err:
        raise StateError("bad_endpoint", f"endpoint {endpoint!r}: {err}") from None
    if text not in existing.endpoints:
        known = ", ".join(existing.endpoints) or "none"
        raise StateError(
            "unknown_endpoint", f"pool {pool!r} has no endpoint {text} (endpoints: {known})"
        )
    return existing, text


def remove_endpoint(
    doc: StateDoc, config: RouteConfig, route: str, pool: str, endpoint: object, now: float
) -> StateDoc:
    """Take one endpoint out of the pool: no new requests; those in flight finish."""
    current = doc.route(route)
    existing, text = _member(current, route, pool, endpoint)
    if existing.routed() == (text,):
        _refuse_if_used(current, config, route, pool, f"remove the last endpoint {text} of")
    updated = replace(
        existing,
        endpoints=tuple(e for e in existing.endpoints if e != text),
        draining=tuple(e for e in existing.draining if e != text),
    )
    return _with_pool(doc, route, updated, now)


def drain_endpoint(
    doc: StateDoc, config: RouteConfig, route: str, pool: str, endpoint: object, now: float
) -> StateDoc:
    """Drain one endpoint: it stays listed as draining, takes no new requests, and its
    in-flight requests finish (then its connections close). Removing it is a later step."""
    current = doc.route(route)
    existing, text = _member(current, route, pool, endpoint)
    if text in existing.draining:
        raise StateError("unchanged", f"endpoint {text} of pool {pool!r} is already draining")
    if existing.routed() == (text,):
        _refuse_if_used(current, config, route, pool, f"drain the last endpoint {text} of")
    updated = replace(existing, draining=(*existing.draining, text))
    return _with_pool(doc, route, updated, now)


def delete_pool(doc: StateDoc, config: RouteConfig, route: str, pool: str, now: float) -> StateDoc:
    """Delete a pool that takes no requests (weight 0, no rule, shadow or running rollout).
    A rollback target that gave it weight is forgotten (rollback would revive a deleted
    pool); a pool of the config stays deleted across restarts."""
    current = doc.route(route)
    current.pool(route, pool)  # unknown_pool
    _refuse_if_used(current, config, route, pool, "delete")
    previous, previous_live = current.previous, current.previous_live
    if previous is not None:
        if dict(previous).get(pool, 0) > 0:
            previous, previous_live = None, None
        else:
            previous = tuple((name, w) for name, w in previous if name != pool)
    configured = any(p.name == pool for p in config.pools)
    new = replace(
        current,
        weights=tuple((name, w) for name, w in current.weights if name != pool),
        live=None if current.live == pool else current.live,
        previous=previous,
        previous_live=previous_live,
        pools=tuple(p for p in current.pools or () if p.name != pool),
        removed_pools=(*current.removed_pools, pool) if configured else current.removed_pools,
        changed_at=now,
    )
    return commit(doc, route, new, now)
