"""The state document's pure transitions, reconciliation with the config, and JSON form."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import orjson
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from control.state import (
    FLIP_WEIGHT,
    MAX_WEIGHT,
    RouteState,
    StateDoc,
    StateError,
    flip,
    from_json,
    initial_state,
    reconcile,
    remove_shadow,
    rollback,
    set_shadow,
    set_weights,
    to_json,
)
from proxy.config import Address, PoolConfig, RouteConfig
from proxy.router import RoutingTable
from proxy.shadow_config import CompareConfig, ShadowConfig, shadow_to_obj

T0 = 1_700_000_000.0
T1 = T0 + 60


def route(name: str, **weights: int) -> RouteConfig:
    pools = tuple(
        PoolConfig(pool, (Address("127.0.0.1", 9000 + i),), weight)
        for i, (pool, weight) in enumerate(weights.items())
    )
    return RouteConfig(name=name, hosts=("*",), path_prefix=f"/{name}", pools=pools)


SHOP = route("shop", blue=100, green=0)
API = route("api", stable=90, canary=10)
ROUTES = (SHOP, API)


@pytest.fixture
def doc() -> StateDoc:
    return initial_state(ROUTES, T0)


# --- initial state -----------------------------------------------------------------------------


def test_initial_state_takes_config_weights_in_order(doc: StateDoc) -> None:
    assert doc.version == 1
    assert doc.updated_at == T0
    assert [name for name, _ in doc.routes] == ["shop", "api"]
    shop = doc.route("shop")
    assert shop.weights == (("blue", 100), ("green", 0))
    assert shop.live == "blue"  # the only pool with weight
    assert shop.previous is None and shop.previous_live is None
    assert (shop.flips, shop.rollbacks, shop.changed_at) == (0, 0, T0)
    assert doc.route("api").live is None  # split traffic: no live pool
    assert doc.weights() == {"shop": {"blue": 100, "green": 0}, "api": {"stable": 90, "canary": 10}}


def test_weights_feed_the_routing_table(doc: StateDoc) -> None:
    doc = flip(doc, "shop", "green", T1)
    table = RoutingTable(ROUTES, weights=doc.weights(), version=doc.version)
    assert table.weights() == doc.weights()
    assert table.version == 2


def test_unknown_route(doc: StateDoc) -> None:
    with pytest.raises(StateError) as info:
        doc.route("nope")
    assert info.value.code == "unknown_route"
    assert info.value.status == 404
    assert "'nope'" in str(info.value) and "shop, api" in str(info.value)
    attempts: list[Callable[[], StateDoc]] = [
        lambda: set_weights(doc, "nope", {"blue": 1}, T1),
        lambda: flip(doc, "nope", "blue", T1),
        lambda: rollback(doc, "nope", T1),
    ]
    for attempt in attempts:
        with pytest.raises(StateError) as info:
            attempt()
        assert info.value.code == "unknown_route"


def test_state_error_status_map() -> None:
    expected = {
        "unknown_route": 404,
        "unknown_pool": 404,
        "bad_weights": 400,
        "nothing_to_roll_back": 409,
        "unchanged": 409,
    }
    for code, status in expected.items():
        err = StateError(code, "why")
        assert (err.code, err.status, str(err)) == (code, status, "why")
    with pytest.raises(ValueError, match="unknown StateError code"):
        StateError("oops", "why")


# --- set_weights -------------------------------------------------------------------------------


def test_set_weights_replaces_the_map(doc: StateDoc) -> None:
    new = set_weights(doc, "api", {"canary": 25, "stable": 75}, T1)
    api = new.route("api")
    assert api.weights == (("stable", 75), ("canary", 25))  # config order, not the body's
    assert api.live is None
    assert api.previous == (("stable", 90), ("canary", 10))
    assert api.previous_live is None
    assert (api.changed_at, new.updated_at, new.version) == (T1, T1, 2)
    assert (api.flips, api.rollbacks) == (0, 0)
    assert new.route("shop") == doc.route("shop")  # other routes untouched
    assert doc.route("api").weights == (("stable", 90), ("canary", 10))  # the old doc too


def test_set_weights_unnamed_pools_get_zero_and_sole_pool_is_live(doc: StateDoc) -> None:
    new = set_weights(doc, "api", {"canary": 5}, T1)
    assert new.route("api").weights == (("stable", 0), ("canary", 5))
    assert new.route("api").live == "canary"


def test_set_weights_clears_live_when_split(doc: StateDoc) -> None:
    new = set_weights(doc, "shop", {"blue": 50, "green": 50}, T1)
    assert new.route("shop").live is None
    assert new.route("shop").previous_live == "blue"


def test_set_weights_unknown_pool_names_the_pools(doc: StateDoc) -> None:
    with pytest.raises(StateError) as info:
        set_weights(doc, "shop", {"blue": 50, "purple": 50}, T1)
    assert info.value.code == "unknown_pool"
    assert info.value.status == 404
    assert "'purple'" in str(info.value) and "blue, green" in str(info.value)


@pytest.mark.parametrize(
    "weights",
    [
        {},
        {"blue": 0, "green": 0},
        {"blue": -1, "green": 10},
        {"blue": True},
        {"blue": 1.0},
        {"blue": "100"},
        {"blue": None},
        {"blue": MAX_WEIGHT + 1},
    ],
    ids=["empty", "all-zero", "negative", "bool", "float", "string", "null", "too-big"],
)
def test_set_weights_bad_weights(doc: StateDoc, weights: dict[str, Any]) -> None:
    with pytest.raises(StateError) as info:
        set_weights(doc, "shop", weights, T1)
    assert info.value.code == "bad_weights"
    assert info.value.status == 400


def test_set_weights_max_weight_is_allowed(doc: StateDoc) -> None:
    new = set_weights(doc, "shop", {"blue": MAX_WEIGHT, "green": 1}, T1)
    assert new.route("shop").weights_dict() == {"blue": MAX_WEIGHT, "green": 1}


def test_set_weights_same_weights_is_unchanged(doc: StateDoc) -> None:
    # Refused, so a retried PUT cannot overwrite what rollback would restore.
    with pytest.raises(StateError) as info:
        set_weights(doc, "api", {"stable": 90, "canary": 10}, T1)
    assert info.value.code == "unchanged"
    assert info.value.status == 409


# --- flip --------------------------------------------------------------------------------------


def test_flip_moves_all_traffic_and_remembers_previous(doc: StateDoc) -> None:
    new = flip(doc, "shop", "green", T1)
    shop = new.route("shop")
    assert shop.weights == (("blue", 0), ("green", FLIP_WEIGHT))
    assert shop.live == "green"
    assert shop.previous == (("blue", 100), ("green", 0))
    assert shop.previous_live == "blue"
    assert (shop.flips, shop.rollbacks, shop.changed_at) == (1, 0, T1)
    assert (new.version, new.updated_at) == (2, T1)


def test_flip_from_a_split(doc: StateDoc) -> None:
    new = flip(doc, "api", "canary", T1)
    api = new.route("api")
    assert api.weights_dict() == {"stable": 0, "canary": FLIP_WEIGHT}
    assert api.previous_live is None
    assert api.previous == (("stable", 90), ("canary", 10))


def test_flip_to_the_live_pool_is_unchanged(doc: StateDoc) -> None:
    with pytest.raises(StateError) as info:
        flip(doc, "shop", "blue", T1)
    assert info.value.code == "unchanged"
    assert info.value.status == 409
    green = flip(doc, "shop", "green", T1)
    with pytest.raises(StateError):
        flip(green, "shop", "green", T1)


def test_flip_unknown_pool(doc: StateDoc) -> None:
    with pytest.raises(StateError) as info:
        flip(doc, "shop", "purple", T1)
    assert info.value.code == "unknown_pool"
    assert "blue, green" in str(info.value)


def test_flip_blue_green_blue_counts(doc: StateDoc) -> None:
    for i in range(20):
        doc = flip(doc, "shop", "green" if i % 2 == 0 else "blue", T0 + i)
    shop = doc.route("shop")
    assert (doc.version, shop.flips, shop.live) == (21, 20, "blue")


# --- rollback ----------------------------------------------------------------------------------


def test_rollback_with_nothing_to_roll_back(doc: StateDoc) -> None:
    with pytest.raises(StateError) as info:
        rollback(doc, "shop", T1)
    assert info.value.code == "nothing_to_roll_back"
    assert info.value.status == 409


def test_rollback_undoes_a_flip(doc: StateDoc) -> None:
    flipped = flip(doc, "shop", "green", T1)
    back = rollback(flipped, "shop", T1 + 1)
    shop = back.route("shop")
    assert shop.weights == doc.route("shop").weights
    assert shop.live == "blue"
    assert shop.previous == flipped.route("shop").weights
    assert shop.previous_live == "green"
    assert (shop.flips, shop.rollbacks, shop.changed_at) == (1, 1, T1 + 1)
    assert back.version == 3


def test_rollback_twice_returns_to_where_you_were(doc: StateDoc) -> None:
    changed = set_weights(doc, "api", {"stable": 50, "canary": 50}, T1)
    once = rollback(changed, "api", T1 + 1)
    twice = rollback(once, "api", T1 + 2)
    assert once.route("api").weights == doc.route("api").weights
    assert twice.route("api").weights == changed.route("api").weights
    assert twice.route("api").live == changed.route("api").live
    assert twice.route("api").rollbacks == 2
    assert [d.version for d in (doc, changed, once, twice)] == [1, 2, 3, 4]


# --- reconcile ---------------------------------------------------------------------------------


def test_reconcile_same_config_changes_nothing(doc: StateDoc) -> None:
    doc = flip(doc, "shop", "green", T1)
    result, warnings = reconcile(doc, ROUTES)
    assert result is doc
    assert warnings == []


def test_reconcile_persisted_weights_win(doc: StateDoc) -> None:
    doc = set_weights(doc, "api", {"stable": 75, "canary": 25}, T1)
    result, _ = reconcile(doc, ROUTES)
    assert result.route("api").weights_dict() == {"stable": 75, "canary": 25}


def test_reconcile_drops_a_route(doc: StateDoc) -> None:
    result, warnings = reconcile(doc, (SHOP,))
    assert [name for name, _ in result.routes] == ["shop"]
    assert result.version == doc.version + 1
    assert len(warnings) == 1 and "'api'" in warnings[0] and "dropped" in warnings[0]


def test_reconcile_drops_a_pool(doc: StateDoc) -> None:
    doc = set_weights(doc, "api", {"stable": 75, "canary": 25}, T1)
    result, warnings = reconcile(doc, (SHOP, route("api", stable=100)), now=T1 + 5)
    api = result.route("api")
    assert api.weights == (("stable", 75),)
    assert api.previous == (("stable", 90),)
    assert (result.version, result.updated_at) == (doc.version + 1, T1 + 5)
    assert len(warnings) == 1
    assert "'canary'" in warnings[0] and "no longer in the config" in warnings[0]


def test_reconcile_all_zero_falls_back_to_config(doc: StateDoc) -> None:
    doc = flip(doc, "shop", "green", T1)  # green has everything
    config = (route("shop", blue=100, purple=0), API)
    result, warnings = reconcile(doc, config)
    shop = result.route("shop")
    assert shop.weights == (("blue", 100), ("purple", 0))
    assert shop.live == "blue"  # the dropped green was live
    # The previous assignment (blue=100) still applies, but equals the current one: no use.
    assert shop.previous is None
    assert result.version == doc.version + 1
    text = "\n".join(warnings)
    assert "'green' is no longer in the config" in text
    assert "using the config's weights (blue=100, purple=0)" in text
    assert "rollback is unavailable" in text


def test_reconcile_adds_a_route(doc: StateDoc) -> None:
    extra = route("admin", old=0, new=100)
    result, warnings = reconcile(doc, (*ROUTES, extra), now=T1)
    assert [name for name, _ in result.routes] == ["shop", "api", "admin"]
    admin = result.route("admin")
    assert admin.weights == (("old", 0), ("new", 100))
    assert (admin.live, admin.changed_at) == ("new", T1)
    assert result.version == doc.version + 1
    assert len(warnings) == 1 and "'admin' is new" in warnings[0]


def test_reconcile_adds_a_pool_with_weight_zero(doc: StateDoc) -> None:
    doc = flip(doc, "shop", "green", T1)
    config = (route("shop", blue=50, green=0, canary=50), API)
    result, warnings = reconcile(doc, config)
    shop = result.route("shop")
    assert shop.weights == (("blue", 0), ("green", 100), ("canary", 0))
    assert shop.live == "green"
    assert shop.previous == (("blue", 100), ("green", 0), ("canary", 0))
    assert len(warnings) == 1 and "'canary' is new" in warnings[0]
    assert "config's 50" in warnings[0]


def test_reconcile_follows_config_order(doc: StateDoc) -> None:
    config = (route("api", canary=10, stable=90), SHOP)
    result, warnings = reconcile(doc, config)
    assert [name for name, _ in result.routes] == ["api", "shop"]
    assert result.route("api").weights == (("canary", 10), ("stable", 90))
    # Only the endpoints are reported: the state's are kept, in the new pool order.
    assert len(warnings) == 2 and all("the state's are used" in w for w in warnings), warnings
    assert result.version == doc.version + 1


# --- JSON --------------------------------------------------------------------------------------


def test_to_json_is_stable_and_readable(doc: StateDoc) -> None:
    doc = flip(doc, "shop", "green", T1)
    text = to_json(doc)
    assert text == to_json(from_json(text))
    assert text.endswith(b"\n") and b'\n  "version": 2' in text
    parsed = orjson.loads(text)
    assert list(parsed) == ["format", "version", "updated_at", "routes"]
    assert parsed["routes"][0]["weights"] == {"blue": 0, "green": 100}
    assert list(parsed["routes"][0]["weights"]) == ["blue", "green"]


def test_from_json_accepts_integer_times(doc: StateDoc) -> None:
    raw = orjson.loads(to_json(doc))
    raw["updated_at"] = 5
    assert from_json(orjson.dumps(raw)).updated_at == 5.0


names = st.text(alphabet="abcdefgh-_.0123456789", min_size=1, max_size=8)
weight_values = st.integers(min_value=0, max_value=MAX_WEIGHT)
times = st.floats(min_value=0, max_value=4e9, allow_nan=False, allow_infinity=False)


@st.composite
def route_states(draw: st.DrawFn) -> RouteState:
    pools = draw(st.lists(names, min_size=1, max_size=5, unique=True))
    weights = tuple((p, draw(weight_values)) for p in pools)
    previous = draw(st.none() | st.just(tuple((p, draw(weight_values)) for p in pools)))
    return RouteState(
        weights=weights,
        live=draw(st.none() | st.sampled_from(pools)),
        previous=previous,
        previous_live=None if previous is None else draw(st.none() | st.sampled_from(pools)),
        flips=draw(st.integers(0, 2**40)),
        rollbacks=draw(st.integers(0, 2**40)),
        changed_at=draw(times),
    )


@st.composite
def docs(draw: st.DrawFn) -> StateDoc:
    route_names = draw(st.lists(names, max_size=4, unique=True))
    return StateDoc(
        version=draw(st.integers(0, 2**53)),
        routes=tuple((n, draw(route_states())) for n in route_names),
        updated_at=draw(times),
    )


@given(docs())
def test_json_round_trip(doc: StateDoc) -> None:
    assert from_json(to_json(doc)) == doc


@given(st.data())
def test_set_weights_then_rollback_restores(data: st.DataObject) -> None:
    pools = data.draw(st.lists(names, min_size=1, max_size=5, unique=True))
    start = {p: data.draw(weight_values) for p in pools}
    assume(any(start.values()))
    config = RouteConfig(
        name="r",
        hosts=("*",),
        path_prefix="/",
        pools=tuple(
            PoolConfig(p, (Address("127.0.0.1", 9000 + i),), w)
            for i, (p, w) in enumerate(start.items())
        ),
    )
    doc = initial_state((config,), T0)
    # Any valid map naming a subset of the pools (the rest get 0).
    named = data.draw(st.lists(st.sampled_from(pools), unique=True, min_size=1))
    new = {p: data.draw(weight_values) for p in named}
    assume(any(new.values()))
    assume({p: new.get(p, 0) for p in pools} != start)
    changed = set_weights(doc, "r", new, T1)
    assert changed.route("r").weights_dict() == {p: new.get(p, 0) for p in pools}
    back = rollback(changed, "r", T1 + 1)
    assert back.route("r").weights_dict() == start
    assert back.route("r").live == doc.route("r").live
    assert back.version == doc.version + 2


def _valid() -> dict[str, Any]:
    doc = flip(initial_state(ROUTES, T0), "shop", "green", T1)
    raw: dict[str, Any] = orjson.loads(to_json(doc))
    return raw


def _mutate(path: list[str | int], value: Any) -> bytes:
    raw = _valid()
    target: Any = raw
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return orjson.dumps(raw)


_DELETE = object()
R0: list[str | int] = ["routes", 0]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[]", "state: expected an object"),
        (_mutate(["format"], 3), "state.format"),
        (_mutate(["format"], True), "state.format"),
        (_mutate(["format"], _DELETE), "state.format: missing"),
        (_mutate(["version"], _DELETE), "state.version: missing"),
        (_mutate(["version"], "3"), "state.version"),
        (_mutate(["version"], True), "state.version"),
        (_mutate(["version"], -1), "state.version"),
        (_mutate(["updated_at"], None), "state.updated_at"),
        (_mutate(["routes"], {}), "state.routes: expected an array"),
        (_mutate(["routes", 0], []), "state.routes[0]: expected an object"),
        (_mutate([*R0, "name"], 7), "state.routes[0].name"),
        (_mutate([*R0, "name"], ""), "state.routes[0].name"),
        (_mutate([*R0, "weights"], {}), ".weights: expected a non-empty object"),
        (_mutate([*R0, "weights"], None), ".weights: expected a non-empty object"),
        (_mutate([*R0, "weights"], [["blue", 1]]), ".weights: expected a non-empty object"),
        (_mutate([*R0, "weights", "blue"], -5), ".weights.blue"),
        (_mutate([*R0, "weights", "blue"], 2.5), ".weights.blue"),
        (_mutate([*R0, "weights", "blue"], False), ".weights.blue"),
        (_mutate([*R0, "live"], "purple"), ".live: expected null or one of its pools"),
        (_mutate([*R0, "live"], 1), ".live"),
        (_mutate([*R0, "previous"], {"green": 1, "blue": 0}), ".previous: expected the same"),
        (_mutate([*R0, "previous"], {"blue": 1}), ".previous: expected the same"),
        (_mutate([*R0, "previous"], None), ".previous_live: expected null"),
        (_mutate([*R0, "flips"], _DELETE), ".flips: missing"),
        (_mutate([*R0, "rollbacks"], 1.5), ".rollbacks"),
        (_mutate([*R0, "changed_at"], "yesterday"), ".changed_at"),
        (_mutate(["routes", 1], _valid()["routes"][0]), "'shop' appears more than once"),
    ],
)
def test_from_json_rejects_malformed(data: bytes, message: str) -> None:
    with pytest.raises(ValueError) as info:
        from_json(data)
    assert message in str(info.value)


def test_from_json_rejects_every_truncation() -> None:
    text = orjson.dumps(_valid())
    for end in range(len(text)):
        with pytest.raises(ValueError):
            from_json(text[:end])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | names,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(names, inner, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_from_json_only_ever_raises_value_error(value: Any) -> None:
    try:
        data = orjson.dumps(value)
    except orjson.JSONEncodeError:
        return  # NaN and friends are not JSON
    try:
        from_json(data)
    except ValueError:
        pass


# --- shadows -----------------------------------------------------------------------------------

# Every setting away from its default, so a round trip that loses one shows.
DARK = ShadowConfig(
    pool="dark",
    percent=12.5,
    methods=("GET", "POST"),
    timeout=0.25,
    max_in_flight=7,
    baseline="twin",
    compare=CompareConfig(
        max_body=4096,
        ignore_headers=("date", "x-trace-id"),
        ignore_json=("$.served_at", "$.items[*].id"),
        samples=9,
        relative_threshold=0.5,
        absolute_threshold=0.1,
    ),
)
TWIN = ShadowConfig(pool="twin")
# The config's route: blue live, dark and twin dark pools, dark mirrored with defaults.
MIRRORED = replace(route("shop", blue=100, dark=0, twin=0), shadows=(ShadowConfig(pool="dark"),))


@pytest.fixture
def mirrored() -> StateDoc:
    return initial_state((MIRRORED, API), T0)


def test_initial_state_takes_the_configs_shadows(mirrored: StateDoc) -> None:
    assert mirrored.route("shop").shadows == (ShadowConfig(pool="dark"),)
    assert mirrored.route("api").shadows == ()
    assert mirrored.shadows() == {"shop": (ShadowConfig(pool="dark"),), "api": ()}


def test_shadow_error_codes_map_to_http_statuses() -> None:
    assert StateError("no_shadow", "why").status == 404
    assert StateError("shadow_conflict", "why").status == 409


def test_set_shadow_replaces_or_adds_and_leaves_routing_alone(mirrored: StateDoc) -> None:
    doc = set_weights(mirrored, "api", {"stable": 50, "canary": 50}, T0 + 1)
    replaced = set_shadow(doc, "shop", DARK, T1)
    shop = replaced.route("shop")
    assert shop.shadows == (DARK,)  # the config's dark shadow, replaced in place
    assert (replaced.version, replaced.updated_at, shop.changed_at) == (doc.version + 1, T1, T1)
    assert (shop.weights, shop.live, shop.previous) == (
        doc.route("shop").weights, "blue", None,
    )  # fmt: skip
    assert replaced.route("api") == doc.route("api")  # its rollback target too
    added = set_shadow(replaced, "shop", TWIN, T1 + 1)
    assert added.route("shop").shadows == (DARK, TWIN)
    assert added.version == doc.version + 2
    assert doc.route("shop").shadows == (ShadowConfig(pool="dark"),)  # the old doc is intact


def test_set_shadow_refuses_live_pools_unknown_pools_and_repeats(mirrored: StateDoc) -> None:
    cases: list[tuple[ShadowConfig, str, str]] = [
        (ShadowConfig(pool="blue"), "shadow_conflict", "'blue' takes live traffic (weight 100)"),
        (ShadowConfig(pool="twin", baseline="blue"), "shadow_conflict", "a baseline pool"),
        (ShadowConfig(pool="purple"), "unknown_pool", "'purple' (pools: blue, dark, twin)"),
        (ShadowConfig(pool="twin", baseline="purple"), "unknown_pool", "'purple'"),
        (ShadowConfig(pool="dark"), "unchanged", "already has this shadow of 'dark'"),
    ]
    for shadow, code, text in cases:
        with pytest.raises(StateError) as info:
            set_shadow(mirrored, "shop", shadow, T1)
        assert info.value.code == code, shadow
        assert text in info.value.message, info.value.message
    with pytest.raises(StateError) as info:
        set_shadow(mirrored, "nope", TWIN, T1)
    assert info.value.code == "unknown_route"


def test_remove_shadow(mirrored: StateDoc) -> None:
    doc = set_shadow(mirrored, "shop", TWIN, T1)
    removed = remove_shadow(doc, "shop", "dark", T1 + 1)
    assert removed.route("shop").shadows == (TWIN,)
    assert removed.version == doc.version + 1
    assert removed.route("shop").weights == doc.route("shop").weights
    with pytest.raises(StateError) as info:
        remove_shadow(removed, "shop", "dark", T1 + 2)
    assert (info.value.code, info.value.status) == ("no_shadow", 404)
    assert "no shadow 'dark' (shadows: twin)" in info.value.message
    with pytest.raises(StateError) as info:
        remove_shadow(mirrored, "api", "canary", T1)
    assert "(shadows: none)" in info.value.message


def test_json_round_trip_with_shadows(mirrored: StateDoc) -> None:
    doc = set_shadow(set_shadow(mirrored, "shop", DARK, T1), "shop", TWIN, T1)
    text = to_json(doc)
    assert from_json(text) == doc
    assert to_json(from_json(text)) == text
    routes = orjson.loads(text)["routes"]
    assert routes[0]["shadows"] == [shadow_to_obj(DARK), shadow_to_obj(TWIN)]
    assert routes[0]["shadows"][0]["compare"]["ignore_json"] == ["$.served_at", "$.items[*].id"]
    assert routes[1]["shadows"] == []


def test_a_state_file_from_before_shadows_takes_the_configs(mirrored: StateDoc) -> None:
    raw = orjson.loads(to_json(mirrored))
    for item in raw["routes"]:
        del item["shadows"]
    old = from_json(orjson.dumps(raw))
    assert old.route("shop").shadows is None
    assert old.shadows() == {}  # RoutingTable then keeps each route's configured shadows
    result, warnings = reconcile(old, (MIRRORED, API), now=T1)
    assert result.route("shop").shadows == (ShadowConfig(pool="dark"),)
    assert result.route("api").shadows == ()
    assert warnings == []
    # Written again, the document now says so explicitly.
    assert orjson.loads(to_json(result))["routes"][0]["shadows"] == [
        shadow_to_obj(ShadowConfig(pool="dark"))
    ]


def test_reconcile_keeps_persisted_shadows_over_the_configs(mirrored: StateDoc) -> None:
    doc = remove_shadow(set_shadow(mirrored, "shop", TWIN, T1), "shop", "dark", T1)
    result, warnings = reconcile(doc, (MIRRORED, API))
    assert result is doc  # nothing to fit: the persisted shadows win
    assert result.route("shop").shadows == (TWIN,)
    assert warnings == []


def test_reconcile_drops_a_shadow_whose_pool_left_the_config(mirrored: StateDoc) -> None:
    doc = set_shadow(
        set_shadow(mirrored, "shop", DARK, T1), "shop", TWIN, T1
    )  # dark's baseline: twin
    without_twin = replace(route("shop", blue=100, dark=0), shadows=MIRRORED.shadows)
    result, warnings = reconcile(doc, (without_twin, API), now=T1 + 5)
    assert result.route("shop").shadows == ()
    assert result.version == doc.version + 1
    text = "\n".join(warnings)
    assert "route 'shop': shadow 'dark' names pool 'twin', which is no longer in the config" in text
    assert "route 'shop': shadow 'twin' names pool 'twin'" in text
    assert sum("shadow" in line for line in warnings) == 2
    assert all("\n" not in line for line in warnings)

    without_dark = replace(route("shop", blue=100, twin=0), shadows=())
    result, warnings = reconcile(doc, (without_dark, API))
    assert result.route("shop").shadows == (TWIN,)
    assert [line for line in warnings if "shadow" in line] == [
        "route 'shop': shadow 'dark' names pool 'dark', which is no longer in the config; dropped"
    ]


header_names = st.text(alphabet="abcdefghxyz-0123456789", min_size=1, max_size=10)
json_patterns = st.sampled_from(["$", "$.a", "$.items[*].id", "$.*", '$["odd key"]', "$.a[3]"])


@st.composite
def shadow_configs(draw: st.DrawFn, pools: list[str]) -> ShadowConfig:
    pool = draw(st.sampled_from(pools))
    others = [p for p in pools if p != pool]
    unit = st.floats(min_value=0, max_value=1, allow_nan=False)
    return ShadowConfig(
        pool=pool,
        percent=draw(st.floats(min_value=0, max_value=100, allow_nan=False)),
        methods=tuple(
            draw(
                st.lists(st.sampled_from(["GET", "HEAD", "POST", "PURGE"]), min_size=1, unique=True)
            )
        ),
        timeout=draw(st.floats(min_value=0.001, max_value=300, allow_nan=False)),
        max_in_flight=draw(st.integers(1, 10_000)),
        baseline=draw(st.none() | st.sampled_from(others)) if others else None,
        compare=CompareConfig(
            max_body=draw(st.integers(0, 16 * 1024 * 1024)),
            ignore_headers=tuple(draw(st.lists(header_names, max_size=3, unique=True))),
            ignore_json=tuple(draw(st.lists(json_patterns, max_size=3))),
            samples=draw(st.integers(1, 10_000)),
            relative_threshold=draw(st.floats(min_value=0, max_value=1e6, allow_nan=False)),
            absolute_threshold=draw(unit),
        ),
    )


@given(st.data())
def test_json_round_trip_of_any_shadows(data: st.DataObject) -> None:
    state = data.draw(route_states())
    pools = [name for name, _ in state.weights]
    shadows = data.draw(st.lists(shadow_configs(pools), max_size=3, unique_by=lambda s: s.pool))
    doc = StateDoc(
        version=3, routes=(("r", replace(state, shadows=tuple(shadows))),), updated_at=T0
    )
    assert from_json(to_json(doc)) == doc
