"""Pure routing decisions over an immutable RoutingTable.

Everything a request needs is precomputed when the table is built, so a decision is a few dict
lookups and one bisect. No I/O and no awaits here: the control plane builds a new table and swaps it
in whole, so a request is routed entirely by one table.
"""

from __future__ import annotations

import zlib
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from proxy.config import Address, RouteConfig
from proxy.shadow import Shadow
from proxy.shadow_config import ShadowConfig
from proxy.stats import PoolStats
from proxy.upstream import EndpointPool

_crc32: Final = zlib.crc32  # bound once: a module attribute read per call otherwise

# Distinct Host values whose routes are remembered per table; past it, a new Host is worked out
# on each request, so clients sending random Hosts cannot grow the memo without bound.
HOST_MEMO_LIMIT: Final = 1024

# Sticky buckets: a user lands in [0, BUCKETS). 10,000 gives 0.01 % resolution for weights.
BUCKETS: Final = 10_000


def sticky_seed(salt: bytes) -> int:
    """The CRC-32 state after the route's salt, so each user costs one crc32 call."""
    return zlib.crc32(salt + b"\x00")


def sticky_bucket(salt: bytes, user: bytes) -> int:
    """A user's bucket: CRC-32 of salt, NUL, user id, modulo BUCKETS. Stable across processes,
    machines and versions (unlike Python's salted hash()); nginx's consistent hashing uses
    CRC-32 the same way. Only the bucket's stability matters for monotonic ramps."""
    return zlib.crc32(user, sticky_seed(salt)) % BUCKETS


class Pool:
    """A version pool of one route: its endpoints and the round-robin cursor over them."""

    __slots__ = (
        "draining",
        "endpoints",
        "index",
        "name",
        "route_name",
        "rr",
        "stats",
        "targets",
        "weight",
    )

    def __init__(
        self, route_name: str, name: str, endpoints: Sequence[Address], weight: int, index: int
    ) -> None:
        self.route_name = route_name
        self.name = name
        self.endpoints = tuple(endpoints)
        self.weight = weight
        self.index = index  # position in the route's pool order
        self.rr = 0  # round-robin cursor over endpoints
        # Fresh counters for a stand-alone table; Metrics.bind swaps in the persistent ones.
        self.stats = PoolStats()
        # The endpoints' connection pools, in endpoint order; bound by the server that uses
        # this table (the router itself does no I/O).
        self.targets: tuple[EndpointPool, ...] = ()
        # Endpoints being drained: never chosen, shown by the control API until removed.
        self.draining: tuple[Address, ...] = ()

    def __repr__(self) -> str:
        return f"<Pool {self.route_name}/{self.name} weight={self.weight} n={len(self.endpoints)}>"


@dataclass(frozen=True, slots=True)
class Rule:
    pool: Pool
    headers: tuple[tuple[bytes, bytes], ...]  # lower-case name, exact value
    cookies: tuple[tuple[str, str], ...]


class Route:
    __slots__ = (
        "cumulative",
        "mirrors",
        "name",
        "path_prefix",
        "pools",
        "pools_by_name",
        "rules",
        "shadows",
        "sticky_buckets",
        "sticky_cookie",
        "sticky_header",
        "sticky_seed",
        "total_weight",
    )

    def __init__(
        self,
        config: RouteConfig,
        weights: Mapping[str, int] | None = None,
        shadows: Sequence[ShadowConfig] | None = None,
    ) -> None:
        self.name = config.name
        # Shadows from the control plane's state win over the config's (like weights).
        self.shadows: tuple[ShadowConfig, ...] = (
            config.shadows if shadows is None else tuple(shadows)
        )
        # The live Shadow objects for `shadows`, bound by the server (mirroring is I/O).
        self.mirrors: tuple[Shadow, ...] = ()
        self.path_prefix = config.path_prefix.encode()
        pools: list[Pool] = []
        for i, pc in enumerate(config.pools):
            weight = pc.weight if weights is None else weights.get(pc.name, 0)
            pool = Pool(config.name, pc.name, pc.endpoints, weight, i)
            pool.draining = pc.draining
            pools.append(pool)
        self.pools: tuple[Pool, ...] = tuple(pools)
        self.pools_by_name = {p.name: p for p in pools}
        self.total_weight = sum(p.weight for p in pools)
        # Weighted random: cumulative integer weights, then bisect.
        cumulative: list[int] = []
        acc = 0
        for p in pools:
            acc += p.weight
            cumulative.append(acc)
        self.cumulative = tuple(cumulative)
        # Sticky: the same walk in fixed pool order, scaled to BUCKETS. Because the order is fixed,
        # growing the last pool's share only moves users onto it (monotonic canary).
        self.sticky_buckets = tuple(
            (c * BUCKETS) // self.total_weight if self.total_weight else 0 for c in cumulative
        )
        sticky = config.sticky
        self.sticky_header = sticky.header.lower().encode() if sticky and sticky.header else None
        self.sticky_cookie = sticky.cookie if sticky and sticky.cookie else None
        self.sticky_seed = sticky_seed((sticky.salt or config.name).encode() if sticky else b"")
        self.rules = tuple(
            Rule(
                self.pools_by_name[rc.pool],
                tuple((n.lower().encode(), v.encode()) for n, v in rc.headers),
                tuple(rc.cookies),
            )
            for rc in config.rules
        )

    def __repr__(self) -> str:
        weights = ", ".join(f"{p.name}={p.weight}" for p in self.pools)
        return f"<Route {self.name} prefix={self.path_prefix!r} {weights}>"

    def choose(
        self, headers: Mapping[bytes, bytes], cookie_header: bytes | None, rand: float
    ) -> Pool | None:
        """Pick a pool: first matching rule, else sticky bucket, else weighted random.

        `headers` maps lower-case names to values for the names the table asked for
        (RoutingTable.wanted_headers); `rand` is uniform in [0, 1). None: no pool has weight.
        """
        cookies: dict[str, str] | None = None
        for rule in self.rules:
            matched = True
            for name, value in rule.headers:
                if headers.get(name) != value:
                    matched = False
                    break
            if matched and rule.cookies:
                if cookies is None:
                    cookies = parse_cookies(cookie_header)
                for cname, cvalue in rule.cookies:
                    if cookies.get(cname) != cvalue:
                        matched = False
                        break
            if matched:
                return rule.pool
        if self.total_weight == 0:
            return None
        user: bytes | None = None
        if self.sticky_header is not None:
            user = headers.get(self.sticky_header)
        if not user and self.sticky_cookie is not None and cookie_header:
            if cookies is None:
                cookies = parse_cookies(cookie_header)
            cookie_value = cookies.get(self.sticky_cookie)
            user = cookie_value.encode() if cookie_value else None
        if user:
            i = bisect_right(self.sticky_buckets, _crc32(user, self.sticky_seed) % BUCKETS)
            return self.pools[i] if i < len(self.pools) else None
        return self.pools[bisect_right(self.cumulative, rand * self.total_weight)]

    def choice_kind(self, headers: Mapping[bytes, bytes], cookie_header: bytes | None) -> str:
        """How `choose` picked for these headers: "rule", "sticky" or "weighted" (for the
        access log; repeats choose's tests rather than slowing choose down to report it)."""
        cookies: dict[str, str] | None = None
        for rule in self.rules:
            matched = all(headers.get(name) == value for name, value in rule.headers)
            if matched and rule.cookies:
                if cookies is None:
                    cookies = parse_cookies(cookie_header)
                matched = all(cookies.get(name) == value for name, value in rule.cookies)
            if matched:
                return "rule"
        if self.sticky_header is not None and headers.get(self.sticky_header):
            return "sticky"
        if self.sticky_cookie is not None and cookie_header:
            if cookies is None:
                cookies = parse_cookies(cookie_header)
            if cookies.get(self.sticky_cookie):
                return "sticky"
        return "weighted"


def parse_cookies(header: bytes | None) -> dict[str, str]:
    """Cookie header to a dict; the first of duplicate names wins (browsers send the most
    specific first)."""
    cookies: dict[str, str] = {}
    if not header:
        return cookies
    for part in header.decode("latin-1").split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name and name not in cookies:
            cookies[name] = value.strip().strip('"')
    return cookies


class RoutingTable:
    """Immutable after construction; replaced whole when weights change."""

    __slots__ = (
        "by_host",
        "configs",
        "routes",
        "routes_by_raw_host",
        "version",
        "wanted_headers",
        "wildcard",
    )

    def __init__(
        self,
        routes: Sequence[RouteConfig],
        weights: Mapping[str, Mapping[str, int]] | None = None,
        version: int = 0,
        shadows: Mapping[str, Sequence[ShadowConfig]] | None = None,
    ) -> None:
        self.version = version
        # What the table was built from: the server derives health checks and ejection
        # settings of the endpoints in use from it.
        self.configs = tuple(routes)
        built = [
            Route(
                rc,
                None if weights is None else weights.get(rc.name),
                None if shadows is None else shadows.get(rc.name),
            )
            for rc in routes
        ]
        self.routes = {r.name: r for r in built}
        by_host: dict[bytes, list[Route]] = {}
        wildcard: list[Route] = []
        for rc, route in zip(routes, built, strict=True):
            for host in rc.hosts:
                if host == "*":
                    wildcard.append(route)
                else:
                    by_host.setdefault(host.encode(), []).append(route)
        # The host decides first: an exact host's routes (longest prefix first), then `*` routes.
        self.wildcard = tuple(sorted(wildcard, key=lambda r: -len(r.path_prefix)))
        self.by_host = {
            h: tuple(sorted(rs, key=lambda r: -len(r.path_prefix))) + self.wildcard
            for h, rs in by_host.items()
        }
        wanted: set[bytes] = set()
        for r in built:
            if r.sticky_header:
                wanted.add(r.sticky_header)
            for rule in r.rules:
                wanted.update(n for n, _ in rule.headers)
        self.wanted_headers = frozenset(wanted)
        # Host headers as received -> their routes: clients repeat their Host, and one lookup
        # costs less than splitting off the port and lower-casing on every request.
        self.routes_by_raw_host: dict[bytes, tuple[Route, ...]] = {}

    def match(self, host: bytes, path: bytes) -> Route | None:
        """Route by host (exact, port and case ignored, else `*`), then longest path prefix."""
        routes = self.routes_by_raw_host.get(host)
        if routes is None:
            routes = self._routes_for_host(host)
            if len(self.routes_by_raw_host) < HOST_MEMO_LIMIT:
                self.routes_by_raw_host[host] = routes
        for route in routes:
            if path.startswith(route.path_prefix):
                return route
        return None

    def _routes_for_host(self, host: bytes) -> tuple[Route, ...]:
        if not host:
            return self.wildcard
        colon = host.rfind(b":")
        if colon != -1 and host.find(b"]", colon) == -1:
            host = host[:colon]
        return self.by_host.get(host.lower(), self.wildcard)

    def weights(self) -> dict[str, dict[str, int]]:
        return {r.name: {p.name: p.weight for p in r.pools} for r in self.routes.values()}

    def shadows(self) -> dict[str, tuple[ShadowConfig, ...]]:
        return {r.name: r.shadows for r in self.routes.values()}
