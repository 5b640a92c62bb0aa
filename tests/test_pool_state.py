"""Pools and endpoints as routing state: the pure transitions (control/pool_state.py), the
state file's form of them, and how a restart fits them to the config (control/state.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control.pool_state import (
    MAX_POOL_ENDPOINTS,
    add_endpoints,
    delete_pool,
    drain_endpoint,
    remove_endpoint,
    set_endpoints,
)
from control.state import (
    StateDoc,
    StateError,
    flip,
    from_json,
    initial_state,
    reconcile,
    set_shadow,
    set_weights,
    to_json,
)
from proxy.config import RouteConfig, routes_with_pools
from proxy.config_loader import parse_config
from proxy.router import RoutingTable
from proxy.shadow_config import parse_shadow

CONFIG = parse_config(
    """
listen: 127.0.0.1:8080
routes:
  - name: shop
    hosts: ["*"]
    path_prefix: /
    pools:
      blue: {endpoints: ["127.0.0.1:9001", "127.0.0.1:9002"]}
      green: {endpoints: ["127.0.0.1:9101"]}
      dark: {endpoints: ["127.0.0.1:9201"]}
    weights: {blue: 100}
    rules:
      - {pool: green, header: {x-version: green}}
""",
    "<test>",
)
SHOP: RouteConfig = CONFIG.routes[0]
NOW = 1_700_000_000.0


def fresh() -> StateDoc:
    return initial_state(CONFIG.routes, NOW)


def pools_of(doc: StateDoc) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    return {p.name: (p.endpoints, p.draining) for p in doc.route("shop").pools or ()}


def refused(code: str, call: object, *args: object) -> StateError:
    with pytest.raises(StateError) as info:
        call(*args)  # type: ignore[operator]
    assert info.value.code == code, info.value
    return info.value


def test_the_config_gives_the_first_pools_and_endpoints() -> None:
    assert pools_of(fresh()) == {
        "blue": (("127.0.0.1:9001", "127.0.0.1:9002"), ()),
        "green": (("127.0.0.1:9101",), ()),
        "dark": (("127.0.0.1:9201",), ()),
    }


def test_adding_to_a_new_pool_creates_it_last_with_weight_0() -> None:
    doc = add_endpoints(fresh(), SHOP, "shop", "v2", ["10.0.0.7:8080", "[::1]:8080"], NOW + 1)
    assert doc.version == 2
    route = doc.route("shop")
    assert route.weights == (("blue", 100), ("green", 0), ("dark", 0), ("v2", 0))
    assert pools_of(doc)["v2"] == (("10.0.0.7:8080", "[::1]:8080"), ())
    assert route.pool("shop", "v2").added


def test_adding_to_an_existing_pool_appends_and_takes_a_draining_one_back() -> None:
    doc = add_endpoints(fresh(), SHOP, "shop", "blue", ["127.0.0.1:9003"], NOW)
    assert pools_of(doc)["blue"][0] == ("127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003")
    doc = drain_endpoint(doc, SHOP, "shop", "blue", "127.0.0.1:9001", NOW)
    assert pools_of(doc)["blue"][1] == ("127.0.0.1:9001",)
    doc = add_endpoints(doc, SHOP, "shop", "blue", ["127.0.0.1:9001"], NOW)
    assert pools_of(doc)["blue"] == (("127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"), ())


@pytest.mark.parametrize(
    ("endpoints", "code"),
    [
        ([], "bad_endpoint"),
        (["10.0.0.7"], "bad_endpoint"),
        (["10.0.0.7:0"], "bad_endpoint"),
        (["999.0.0.1:80"], "bad_endpoint"),
        ([8080], "bad_endpoint"),
        (["10.0.0.7:8080", "10.0.0.7:8080"], "duplicate_endpoint"),
        (["127.0.0.1:9001"], "duplicate_endpoint"),
    ],
)
def test_bad_or_duplicate_endpoints_are_refused(endpoints: list[object], code: str) -> None:
    err = refused(code, add_endpoints, fresh(), SHOP, "shop", "blue", endpoints, NOW)
    assert str(err)


def test_too_many_endpoints_and_bad_pool_names_are_refused() -> None:
    many = [f"10.0.{i // 250}.{i % 250 + 1}:80" for i in range(MAX_POOL_ENDPOINTS + 1)]
    refused("bad_endpoint", add_endpoints, fresh(), SHOP, "shop", "v2", many, NOW)
    refused("bad_pool", add_endpoints, fresh(), SHOP, "shop", "v 2", ["10.0.0.1:80"], NOW)
    refused("unknown_route", add_endpoints, fresh(), SHOP, "nope", "v2", ["10.0.0.1:80"], NOW)


def test_set_replaces_and_an_unknown_pool_is_404() -> None:
    doc = set_endpoints(fresh(), SHOP, "shop", "blue", ["10.0.0.9:80"], NOW)
    assert pools_of(doc)["blue"] == (("10.0.0.9:80",), ())
    # The same list again is 'unchanged' (which the control plane answers as a success).
    refused("unchanged", set_endpoints, doc, SHOP, "shop", "blue", ["10.0.0.9:80"], NOW)
    refused("unknown_pool", set_endpoints, doc, SHOP, "shop", "v9", ["10.0.0.9:80"], NOW)


def test_a_pool_that_takes_requests_keeps_at_least_one_endpoint() -> None:
    doc = fresh()
    err = refused("pool_in_use", set_endpoints, doc, SHOP, "shop", "blue", [], NOW)
    assert "weight 100" in str(err)
    doc = remove_endpoint(doc, SHOP, "shop", "blue", "127.0.0.1:9001", NOW)
    refused("pool_in_use", remove_endpoint, doc, SHOP, "shop", "blue", "127.0.0.1:9002", NOW)
    refused("pool_in_use", drain_endpoint, doc, SHOP, "shop", "blue", "127.0.0.1:9002", NOW)
    # green has weight 0 but a rule of the config routes to it
    err = refused("pool_in_use", set_endpoints, doc, SHOP, "shop", "green", [], NOW)
    assert "rule" in str(err)
    # dark takes nothing: it may be emptied
    assert pools_of(set_endpoints(doc, SHOP, "shop", "dark", [], NOW))["dark"] == ((), ())


def test_remove_and_drain_name_an_endpoint_of_the_pool() -> None:
    refused("unknown_endpoint", remove_endpoint, fresh(), SHOP, "shop", "blue", "1.2.3.4:5", NOW)
    refused("bad_endpoint", drain_endpoint, fresh(), SHOP, "shop", "blue", "nonsense", NOW)
    doc = drain_endpoint(fresh(), SHOP, "shop", "blue", "127.0.0.1:9002", NOW)
    refused("unchanged", drain_endpoint, doc, SHOP, "shop", "blue", "127.0.0.1:9002", NOW)
    doc = remove_endpoint(doc, SHOP, "shop", "blue", "127.0.0.1:9002", NOW)
    assert pools_of(doc)["blue"] == (("127.0.0.1:9001",), ())


def test_delete_only_a_pool_that_takes_nothing() -> None:
    doc = fresh()
    assert "weight 100" in str(refused("pool_in_use", delete_pool, doc, SHOP, "shop", "blue", NOW))
    assert "rule" in str(refused("pool_in_use", delete_pool, doc, SHOP, "shop", "green", NOW))
    shadowed = set_shadow(doc, "shop", parse_shadow({"pool": "dark"}), NOW)
    err = refused("pool_in_use", delete_pool, shadowed, SHOP, "shop", "dark", NOW)
    assert "shadow" in str(err)
    running = replace(
        doc.route("shop"), rollout={"phase": "running", "spec": {"candidate": "dark"}}
    )
    with_rollout = StateDoc(doc.version, (("shop", running),), NOW)
    assert "rollout" in str(
        refused("pool_in_use", delete_pool, with_rollout, SHOP, "shop", "dark", NOW)
    )
    refused("unknown_pool", delete_pool, doc, SHOP, "shop", "v9", NOW)


def test_delete_forgets_a_rollback_target_that_needs_the_pool() -> None:
    doc = add_endpoints(fresh(), SHOP, "shop", "v2", ["10.0.0.7:8080"], NOW)
    doc = flip(doc, "shop", "v2", NOW)  # previous: blue=100
    doc = flip(doc, "shop", "blue", NOW)  # previous: v2=100
    deleted = delete_pool(doc, SHOP, "shop", "v2", NOW)
    route = deleted.route("shop")
    assert route.previous is None
    assert [n for n, _ in route.weights] == ["blue", "green", "dark"]


def test_a_deleted_config_pool_stays_deleted_after_a_restart() -> None:
    doc = delete_pool(fresh(), SHOP, "shop", "dark", NOW)
    assert "dark" not in pools_of(doc)
    again, _ = reconcile(from_json(to_json(doc)), CONFIG.routes, NOW)
    assert again == from_json(to_json(doc))
    assert "dark" not in pools_of(again)


def test_a_deleted_config_pool_made_again_takes_its_config_place() -> None:
    doc = delete_pool(fresh(), SHOP, "shop", "dark", NOW)
    doc = add_endpoints(doc, SHOP, "shop", "v2", ["10.0.0.7:8080"], NOW)
    doc = add_endpoints(doc, SHOP, "shop", "dark", ["10.0.0.9:80"], NOW)
    route = doc.route("shop")
    assert [n for n, _ in route.weights] == ["blue", "green", "dark", "v2"]
    assert route.removed_pools == ()
    assert not route.pool("shop", "dark").added
    assert reconcile(doc, CONFIG.routes, NOW)[0] is doc


def test_runtime_pools_and_endpoints_survive_a_restart_and_fit_the_config() -> None:
    doc = add_endpoints(fresh(), SHOP, "shop", "v2", ["10.0.0.7:8080"], NOW)
    doc = set_endpoints(doc, SHOP, "shop", "blue", ["10.0.0.1:80", "10.0.0.2:80"], NOW)
    doc = drain_endpoint(doc, SHOP, "shop", "blue", "10.0.0.2:80", NOW)
    loaded = from_json(to_json(doc))
    assert loaded == doc
    fitted, warnings = reconcile(loaded, CONFIG.routes, NOW)
    assert fitted is loaded  # nothing to fit: a fleet member would apply it as it is
    assert any("blue" in w and "the state's are used" in w for w in warnings), warnings


def test_a_version_1_file_gets_the_configs_pools() -> None:
    text = to_json(fresh()).replace(b'"format": 2', b'"format": 1')
    old = from_json(text.replace(b'"pools"', b'"_pools"'))
    assert old.route("shop").pools is None
    fitted, _ = reconcile(old, CONFIG.routes, NOW)
    assert pools_of(fitted) == pools_of(fresh())


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ((b'"127.0.0.1:9101"', b'"nowhere"'), "endpoints"),
        ((b'"draining": []', b'"draining": ["10.9.9.9:1"]'), "draining"),
        ((b'"name": "dark"', b'"name": "night"'), "pools"),
    ],
)
def test_a_broken_state_file_names_what_is_wrong(patch: tuple[bytes, bytes], message: str) -> None:
    text = to_json(fresh()).replace(*patch, 1)
    with pytest.raises(ValueError, match=message):
        from_json(text)


def test_weight_goes_only_to_a_pool_with_an_endpoint_that_takes_requests() -> None:
    doc = set_endpoints(fresh(), SHOP, "shop", "dark", [], NOW)
    err = refused("no_endpoints", set_weights, doc, "shop", {"dark": 10, "blue": 90}, NOW)
    assert "dark" in str(err)
    refused("no_endpoints", flip, doc, "shop", "dark", NOW)


def test_the_routing_table_routes_only_to_endpoints_that_are_not_draining() -> None:
    doc = add_endpoints(fresh(), SHOP, "shop", "v2", ["10.0.0.7:8080"], NOW)
    doc = drain_endpoint(doc, SHOP, "shop", "blue", "127.0.0.1:9001", NOW)
    table = RoutingTable(routes_with_pools(CONFIG.routes, doc.pools()), weights=doc.weights())
    route = table.routes["shop"]
    blue = route.pools_by_name["blue"]
    assert [str(a) for a in blue.endpoints] == ["127.0.0.1:9002"]
    assert [str(a) for a in blue.draining] == ["127.0.0.1:9001"]
    v2 = route.pools_by_name["v2"]
    assert (v2.index, v2.weight) == (3, 0)
    # A pool made at run time takes the health and ejection settings of the route's first pool.
    assert table.configs[0].pools[3].ejection == SHOP.pools[0].ejection


OPERATIONS = st.sampled_from(["add", "set", "remove", "drain", "delete", "weights"])
POOLS = st.sampled_from(["blue", "green", "dark", "v2", "v3"])
ENDPOINTS = st.lists(
    st.sampled_from([f"10.0.0.{i}:80" for i in range(1, 6)]), min_size=0, max_size=4
)


def apply_step(doc: StateDoc, operation: str, pool: str, endpoints: list[str]) -> StateDoc:
    first = endpoints[0] if endpoints else "10.0.0.1:80"
    if operation == "add":
        return add_endpoints(doc, SHOP, "shop", pool, endpoints, NOW)
    if operation == "set":
        return set_endpoints(doc, SHOP, "shop", pool, endpoints, NOW)
    if operation == "remove":
        return remove_endpoint(doc, SHOP, "shop", pool, first, NOW)
    if operation == "drain":
        return drain_endpoint(doc, SHOP, "shop", pool, first, NOW)
    if operation == "delete":
        return delete_pool(doc, SHOP, "shop", pool, NOW)
    return set_weights(doc, "shop", {pool: 10}, NOW)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(OPERATIONS, POOLS, ENDPOINTS), max_size=25))
def test_any_sequence_of_changes_keeps_the_document_consistent(
    steps: list[tuple[str, str, list[str]]],
) -> None:
    """Whatever is accepted: weights and pools name the same pools in the same order,
    draining endpoints are endpoints of their pool, versions only grow, a pool taking
    traffic keeps an endpoint that takes requests, and the document survives a restart
    unchanged (so fleet members apply it as written)."""
    doc = fresh()
    for operation, pool, endpoints in steps:
        try:
            new = apply_step(doc, operation, pool, endpoints)
        except StateError:
            continue
        assert new.version == doc.version + 1
        doc = new
        route = doc.route("shop")
        assert route.pools is not None
        assert [p.name for p in route.pools] == [n for n, _ in route.weights]
        for p in route.pools:
            assert set(p.draining) <= set(p.endpoints)
            assert len(set(p.endpoints)) == len(p.endpoints)
            if dict(route.weights)[p.name] > 0:
                assert p.routed(), p
        assert from_json(to_json(doc)) == doc
        assert reconcile(doc, CONFIG.routes, NOW)[0] is doc
