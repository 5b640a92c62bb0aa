"""Tests for proxy.router: pure routing decisions over a RoutingTable (no sockets)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config import RouteConfig
from proxy.config_loader import parse_config
from proxy.router import BUCKETS, HOST_MEMO_LIMIT, Route, RoutingTable, sticky_bucket

ROOT = Path(__file__).resolve().parents[1]

# Routes: an exact-host route, a wildcard catch-all, a longer wildcard prefix, and a
# host-specific prefix that only covers part of that host's paths.
HOSTS_YAML = """\
listen: 127.0.0.1:8080
routes:
  - name: api
    hosts: [api.example.com]
    path_prefix: /
    pools:
      api: {endpoints: ["127.0.0.1:9001"]}
  - name: shop
    hosts: ["*"]
    path_prefix: /
    pools:
      shop: {endpoints: ["127.0.0.1:9002"]}
  - name: static
    hosts: ["*"]
    path_prefix: /static
    pools:
      static: {endpoints: ["127.0.0.1:9003"]}
  - name: admin-v2
    hosts: [Admin.Example.com]
    path_prefix: /v2
    pools:
      admin: {endpoints: ["127.0.0.1:9004"]}
  - name: admin-v2-reports
    hosts: [admin.example.com]
    path_prefix: /v2/reports
    pools:
      reports: {endpoints: ["127.0.0.1:9005"]}
"""


def table_from(text: str) -> RoutingTable:
    return RoutingTable(parse_config(text, "<test>").routes)


def route_name(table: RoutingTable, host: bytes, path: bytes) -> str | None:
    route = table.match(host, path)
    return None if route is None else route.name


def one_route(
    pools: dict[str, int], sticky: str = "", rules: str = "", name: str = "shop"
) -> RouteConfig:
    """A single route over `pools` (name -> weight, in this order)."""
    pool_lines = "\n".join(
        f'      {p}: {{endpoints: ["127.0.0.1:{9001 + i}"]}}' for i, p in enumerate(pools)
    )
    weights = ", ".join(f"{p}: {w}" for p, w in pools.items())
    text = f"""\
listen: 127.0.0.1:8080
routes:
  - name: {name}
    hosts: ["*"]
    path_prefix: /
    pools:
{pool_lines}
    weights: {{{weights}}}
{sticky}
{rules}
"""
    (route,) = parse_config(text, "<test>").routes
    return route


STICKY = "    sticky: {header: X-User-Id, cookie: user_id}"


# --- host and path matching ----------------------------------------------------------------


def test_exact_host_matches_its_route() -> None:
    table = table_from(HOSTS_YAML)
    assert route_name(table, b"api.example.com", b"/orders") == "api"


def test_exact_host_beats_wildcard_even_with_a_longer_wildcard_prefix() -> None:
    table = table_from(HOSTS_YAML)
    # The host decides first: /static on api.example.com stays on the api route.
    assert route_name(table, b"api.example.com", b"/static/app.css") == "api"


def test_host_match_ignores_port_and_case() -> None:
    table = table_from(HOSTS_YAML)
    assert route_name(table, b"API.Example.COM", b"/") == "api"
    assert route_name(table, b"api.example.com:8443", b"/") == "api"
    assert route_name(table, b"Api.Example.Com:80", b"/x") == "api"
    # The config's host was written in mixed case too.
    assert route_name(table, b"ADMIN.example.com:9000", b"/v2/users") == "admin-v2"


def test_unknown_or_missing_host_uses_wildcard_routes() -> None:
    table = table_from(HOSTS_YAML)
    assert route_name(table, b"www.example.com", b"/cart") == "shop"
    assert route_name(table, b"", b"/cart") == "shop"
    assert route_name(table, b"10.0.0.1:8080", b"/cart") == "shop"


def test_a_host_seen_before_routes_the_same_and_random_hosts_do_not_grow_the_memo() -> None:
    table = table_from(HOSTS_YAML)
    for _ in range(2):  # the second round is answered from the memo
        assert route_name(table, b"Api.Example.Com:80", b"/x") == "api"
        assert route_name(table, b"www.example.com", b"/cart") == "shop"
    for i in range(HOST_MEMO_LIMIT + 100):
        assert route_name(table, b"h%d.example.com" % i, b"/cart") == "shop"
    assert len(table.routes_by_raw_host) == HOST_MEMO_LIMIT
    assert route_name(table, b"API.example.com:1", b"/") == "api"  # past the limit: still right


def test_longest_path_prefix_wins() -> None:
    table = table_from(HOSTS_YAML)
    assert route_name(table, b"www.example.com", b"/static/app.css") == "static"
    assert route_name(table, b"www.example.com", b"/static") == "static"
    assert route_name(table, b"www.example.com", b"/stat") == "shop"
    assert route_name(table, b"admin.example.com", b"/v2/reports/2024") == "admin-v2-reports"
    assert route_name(table, b"admin.example.com", b"/v2/users") == "admin-v2"


def test_exact_host_falls_back_to_wildcard_for_paths_it_does_not_cover() -> None:
    table = table_from(HOSTS_YAML)
    assert route_name(table, b"admin.example.com", b"/v1/users") == "shop"
    assert route_name(table, b"admin.example.com", b"/static/x.js") == "static"


def test_no_match_returns_none() -> None:
    table = table_from(
        """\
listen: 127.0.0.1:8080
routes:
  - name: api
    hosts: [api.example.com]
    path_prefix: /api
    pools:
      blue: {endpoints: ["127.0.0.1:9001"]}
"""
    )
    assert table.match(b"other.example.com", b"/api/x") is None
    assert table.match(b"api.example.com", b"/web") is None
    assert table.match(b"", b"/api") is None
    assert route_name(table, b"api.example.com", b"/api/x") == "api"


# --- rules ---------------------------------------------------------------------------------

RULES = """\
    rules:
      - header: {X-Pointsman-Pool: green}
        pool: green
      - cookie: {pointsman_pool: canary}
        pool: canary
      - header: {X-Team: qa, X-Beta: "yes"}
        cookie: {beta: "1"}
        pool: canary
      - header: {X-Team: qa}
        pool: green
"""


def rules_route() -> Route:
    return Route(one_route({"blue": 100, "green": 0, "canary": 0}, rules=RULES))


def chosen(
    route: Route, headers: dict[bytes, bytes], cookie: bytes | None = None, rand: float = 0.0
) -> str | None:
    pool = route.choose(headers, cookie, rand)
    return None if pool is None else pool.name


def test_rule_header_names_are_requested_lower_case() -> None:
    table = RoutingTable((one_route({"blue": 100, "green": 0, "canary": 0}, STICKY, RULES),))
    assert table.wanted_headers == {b"x-pointsman-pool", b"x-team", b"x-beta", b"x-user-id"}


def test_header_rule_routes_to_its_pool() -> None:
    route = rules_route()
    assert chosen(route, {}) == "blue"
    assert chosen(route, {b"x-pointsman-pool": b"green"}) == "green"


def test_header_rule_value_must_match_exactly() -> None:
    route = rules_route()
    assert chosen(route, {b"x-pointsman-pool": b"Green"}) == "blue"
    assert chosen(route, {b"x-pointsman-pool": b"green "}) == "blue"
    assert chosen(route, {b"x-pointsman-pool": b""}) == "blue"


def test_cookie_rule_routes_to_its_pool() -> None:
    route = rules_route()
    assert chosen(route, {}, b"pointsman_pool=canary") == "canary"
    assert chosen(route, {}, b"session=abc; pointsman_pool=canary; theme=dark") == "canary"
    assert chosen(route, {}, b"pointsman_pool=green") == "blue"
    assert chosen(route, {}, b"other_pointsman_pool=canary") == "blue"


def test_rule_matches_only_when_all_entries_match() -> None:
    route = rules_route()
    full = {b"x-team": b"qa", b"x-beta": b"yes"}
    assert chosen(route, full, b"beta=1") == "canary"
    # Missing the cookie: the combined rule fails; the later X-Team-only rule matches.
    assert chosen(route, full) == "green"
    assert chosen(route, full, b"beta=0") == "green"
    # Missing one header: same.
    assert chosen(route, {b"x-team": b"qa"}, b"beta=1") == "green"
    # Missing the X-Team header: nothing but the cookie-less rules could match; none do.
    assert chosen(route, {b"x-beta": b"yes"}, b"beta=1") == "blue"


def test_first_matching_rule_wins() -> None:
    route = rules_route()
    # Matches rule 0 (green) and rule 1 (canary): rule 0 is first.
    assert chosen(route, {b"x-pointsman-pool": b"green"}, b"pointsman_pool=canary") == "green"
    # Matches rule 2 (canary) and rule 3 (green): rule 2 is first.
    assert chosen(route, {b"x-team": b"qa", b"x-beta": b"yes"}, b"beta=1") == "canary"


def test_rule_beats_sticky_and_weights() -> None:
    route = Route(one_route({"blue": 100, "green": 0}, STICKY, RULES.replace("canary", "green")))
    for user in (b"alice", b"bob", b"carol"):
        assert chosen(route, {b"x-user-id": user}) == "blue"
        assert chosen(route, {b"x-user-id": user, b"x-pointsman-pool": b"green"}) == "green"


# --- sticky --------------------------------------------------------------------------------


def expected_sticky(salt: bytes, user: bytes, weights: list[tuple[str, int]]) -> str:
    """The documented walk: bucket against cumulative weights scaled to BUCKETS."""
    bucket = sticky_bucket(salt, user)
    total = sum(w for _, w in weights)
    acc = 0
    for name, weight in weights:
        acc += weight
        if bucket < acc * BUCKETS // total:
            return name
    raise AssertionError("walk fell off the end")


USERS = [f"user-{i}".encode() for i in range(500)]


def test_sticky_by_header_ignores_rand_and_follows_the_bucket() -> None:
    route = Route(one_route({"blue": 50, "green": 50}, STICKY))
    seen = set()
    for user in USERS:
        picks = {chosen(route, {b"x-user-id": user}, rand=r) for r in (0.0, 0.3, 0.7, 0.999)}
        assert len(picks) == 1, user
        (pick,) = picks
        assert pick == expected_sticky(b"shop", user, [("blue", 50), ("green", 50)])
        seen.add(pick)
    assert seen == {"blue", "green"}


def test_sticky_by_cookie_matches_sticky_by_header() -> None:
    route = Route(one_route({"blue": 50, "green": 50}, STICKY))
    for user in USERS:
        by_header = chosen(route, {b"x-user-id": user})
        cookie = b"theme=dark; user_id=" + user + b"; lang=en"
        for rand in (0.0, 0.999):
            assert chosen(route, {}, cookie, rand) == by_header


def test_sticky_cookie_only_route() -> None:
    route = Route(one_route({"blue": 50, "green": 50}, "    sticky: {cookie: sid, salt: s1}"))
    for user in USERS[:100]:
        pick = chosen(route, {}, b"sid=" + user, rand=0.999)
        assert pick == expected_sticky(b"s1", user, [("blue", 50), ("green", 50)])


def test_sticky_salt_defaults_to_route_name() -> None:
    a = Route(one_route({"blue": 50, "green": 50}, STICKY, name="shop"))
    b = Route(one_route({"blue": 50, "green": 50}, STICKY, name="checkout"))
    picks_a = [chosen(a, {b"x-user-id": u}) for u in USERS]
    picks_b = [chosen(b, {b"x-user-id": u}) for u in USERS]
    assert picks_a == [expected_sticky(b"shop", u, [("blue", 50), ("green", 50)]) for u in USERS]
    assert picks_b == [
        expected_sticky(b"checkout", u, [("blue", 50), ("green", 50)]) for u in USERS
    ]
    assert picks_a != picks_b  # different salts spread users differently


def test_no_user_falls_back_to_weighted_random() -> None:
    route = Route(one_route({"blue": 50, "green": 50}, STICKY))
    assert chosen(route, {}, None, 0.1) == "blue"
    assert chosen(route, {}, None, 0.9) == "green"
    assert chosen(route, {b"x-user-id": b""}, b"user_id=", 0.9) == "green"


def test_sticky_users_never_land_on_weight_zero_pool() -> None:
    route = Route(one_route({"blue": 0, "green": 100, "canary": 0}, STICKY))
    assert {chosen(route, {b"x-user-id": u}) for u in USERS} == {"green"}


def test_rollback_moves_every_sticky_user_back() -> None:
    ramped = Route(one_route({"blue": 50, "green": 50}, STICKY))
    rolled_back = Route(one_route({"blue": 100, "green": 0}, STICKY))
    assert "green" in {chosen(ramped, {b"x-user-id": u}) for u in USERS}
    assert {chosen(rolled_back, {b"x-user-id": u}) for u in USERS} == {"blue"}


# --- weighted random -----------------------------------------------------------------------

# rand values at the edges of [0, 1) and a fine sweep in between.
EDGE_RANDS = [0.0, 5e-324, 0.5, math.nextafter(1.0, 0.0)]


def test_weight_zero_pool_never_chosen_by_weighted_random() -> None:
    for weights in (
        {"blue": 0, "green": 100},
        {"blue": 100, "green": 0},
        {"blue": 0, "green": 7, "canary": 0},
        {"blue": 3, "green": 0, "canary": 5},
    ):
        route = Route(one_route(weights))
        rands = [i / 10_000 for i in range(10_000)] + EDGE_RANDS
        picks = {chosen(route, {}, None, r) for r in rands}
        assert picks == {name for name, w in weights.items() if w > 0}, weights


def test_all_weights_zero_chooses_no_pool() -> None:
    route = Route(one_route({"blue": 50, "green": 50}, STICKY), weights={"blue": 0, "green": 0})
    assert chosen(route, {}, None, 0.5) is None
    assert chosen(route, {b"x-user-id": b"alice"}, None, 0.5) is None


def test_table_weights_override_config_weights() -> None:
    route_config = one_route({"blue": 90, "green": 10})
    table = RoutingTable((route_config,), weights={"shop": {"blue": 0, "green": 100}})
    assert table.weights() == {"shop": {"blue": 0, "green": 100}}
    route = table.routes["shop"]
    assert {chosen(route, {}, None, r / 100) for r in range(100)} == {"green"}


FIVE_POOLS = one_route({f"p{i}": 1 for i in range(5)})


@settings(max_examples=100, deadline=None)
@given(weights=st.lists(st.integers(0, 1000), min_size=1, max_size=5).filter(lambda w: sum(w) > 0))
def test_weighted_random_covers_pools_in_proportion(weights: list[int]) -> None:
    names = [f"p{i}" for i in range(len(weights))]
    # Pools not given a weight get 0: they must get no traffic at all.
    route = Route(FIVE_POOLS, weights=dict(zip(names, weights, strict=True)))
    names = [f"p{i}" for i in range(5)]
    weights = weights + [0] * (5 - len(weights))
    grid = 10_000
    counts = dict.fromkeys(names, 0)
    for i in range(grid):
        pick = chosen(route, {}, None, (i + 0.5) / grid)
        assert pick is not None
        counts[pick] += 1
    total = sum(weights)
    for name, weight in zip(names, weights, strict=True):
        # A pool owns an interval of length weight/total of [0, 1): the grid midpoints in it
        # differ from grid * weight/total by less than one grid step.
        assert abs(counts[name] - grid * weight / total) <= 1, (name, counts, weights)
    for rand in EDGE_RANDS:
        pick = chosen(route, {}, None, rand)
        assert pick is not None and weights[names.index(pick)] > 0


# --- stickiness properties -----------------------------------------------------------------


BLUE_GREEN = one_route({"blue": 50, "green": 50}, STICKY)


def green_users(users: list[bytes], blue: int, green: int) -> set[bytes]:
    route = Route(BLUE_GREEN, weights={"blue": blue, "green": green})
    return {u for u in users if chosen(route, {b"x-user-id": u}) == "green"}


def test_canary_growth_10_to_30_percent_keeps_every_green_user() -> None:
    users = [f"user-{i}".encode() for i in range(5000)]
    at_10 = green_users(users, 90, 10)
    at_30 = green_users(users, 70, 30)
    assert at_10 <= at_30
    # And the shares are what the weights say (sanity: the sets are not trivially empty).
    assert 400 <= len(at_10) <= 600
    assert 1350 <= len(at_30) <= 1650


@settings(max_examples=200, deadline=None)
@given(
    users=st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=60, unique=True),
    blue=st.integers(0, 10_000),
    green_low=st.integers(0, 10_000),
    growth=st.integers(0, 10_000),
)
def test_growing_green_only_moves_users_onto_green(
    users: list[bytes], blue: int, green_low: int, growth: int
) -> None:
    green_high = green_low + growth
    if blue + green_low == 0:
        green_low, green_high = 0, max(green_high, 1)
        blue = 1
    low = green_users(users, blue, green_low)
    high = green_users(users, blue, green_high)
    assert low <= high


@settings(max_examples=200, deadline=None)
@given(
    users=st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=60, unique=True),
    first=st.tuples(st.integers(0, 1000), st.integers(0, 1000)),
    second=st.tuples(st.integers(0, 1000), st.integers(0, 1000)),
)
def test_growing_green_share_only_moves_users_onto_green(
    users: list[str], first: tuple[int, int], second: tuple[int, int]
) -> None:
    """Any two weight settings (blue, green): the one with the larger green share has a
    superset of the other's green users."""
    if sum(first) == 0 or sum(second) == 0:
        return
    (b1, g1), (b2, g2) = first, second
    low, high = (first, second) if g1 * (b2 + g2) <= g2 * (b1 + g1) else (second, first)
    encoded = [u.encode() for u in users]
    assert green_users(encoded, *low) <= green_users(encoded, *high)


@settings(max_examples=300, deadline=None)
@given(salt=st.binary(max_size=100), user=st.binary(max_size=200))
def test_sticky_bucket_is_deterministic_and_in_range(salt: bytes, user: bytes) -> None:
    bucket = sticky_bucket(salt, user)
    assert isinstance(bucket, int)
    assert 0 <= bucket < BUCKETS
    assert sticky_bucket(bytes(salt), bytes(user)) == bucket


def test_sticky_buckets_spread_over_the_whole_range() -> None:
    buckets = [sticky_bucket(b"shop", u) for u in (f"u{i}".encode() for i in range(20_000))]
    tenths = [0] * 10
    for b in buckets:
        tenths[b * 10 // BUCKETS] += 1
    assert all(1700 <= n <= 2300 for n in tenths), tenths


# Pinned: a change of hash function moves every sticky user. (CRC-32 of salt, NUL, user id,
# modulo 10,000: e.g. zlib.crc32(b"shop\x00alice") % 10000 == 7175.)
PINNED = [
    (b"shop", b"alice", 7175),
    (b"shop", b"bob", 698),
    (b"shop", b"user-1", 4280),
    (b"checkout", b"alice", 5123),
    (b"", b"x", 2849),
]


def test_sticky_bucket_pinned_values() -> None:
    assert [sticky_bucket(salt, user) for salt, user, _ in PINNED] == [b for _, _, b in PINNED]


CHILD = """\
import json
from proxy.router import sticky_bucket
print(json.dumps([sticky_bucket(b"shop", f"user-{i}".encode()) for i in range(200)]))
"""


def test_sticky_bucket_is_stable_across_processes() -> None:
    here = [sticky_bucket(b"shop", f"user-{i}".encode()) for i in range(200)]
    for seed in ("1", "2"):
        # Different hash seeds: Python's salted hash() would differ between these children.
        env = {**os.environ, "PYTHONHASHSEED": seed}
        result = subprocess.run(
            [sys.executable, "-c", CHILD],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == here
