"""Tests for proxy.config: the YAML loader, its error reporting and the value helpers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config import (
    Address,
    AdminConfig,
    Config,
    ConfigError,
    EtcdSettings,
    Limits,
    Listener,
    PoolConfig,
    RouteConfig,
    RuleConfig,
    StateConfig,
    StickyConfig,
    Timeouts,
    UpstreamSettings,
    parse_address,
    parse_duration,
    parse_size,
)
from proxy.config_loader import load_config, parse_config
from proxy.shadow_config import CompareConfig, ShadowConfig

SRC = "config/x.yaml"

# The schema example from the spec; `weights` is on line 14.
EXAMPLE = """\
listen: 127.0.0.1:8080
admin: {listen: 127.0.0.1:8081, token_env: POINTSMAN_TOKEN}
timeouts: {connect: 2s, upstream: 30s, header_read: 10s, idle: 60s, grace: 10s}
limits: {max_header_bytes: 16KiB, max_body_bytes: 64MiB}
upstream: {max_idle: 64, idle_timeout: 30s}
state: {path: var/state.json}
routes:
  - name: shop
    hosts: ["*"]
    path_prefix: /
    pools:
      blue:  {endpoints: ["127.0.0.1:9001", "127.0.0.1:9002"]}
      green: {endpoints: ["127.0.0.1:9101"]}
    weights: {blue: 90, green: 10}
    sticky: {header: X-User-Id, cookie: user_id, salt: shop}
    rules:
      - header: {X-Pointsman-Pool: green}
        pool: green
"""

# Smallest valid config; line numbers: 1 listen, 2 routes, 3 name, 4 pools, 5 blue.
MINIMAL = """\
listen: 127.0.0.1:8080
routes:
  - name: shop
    pools:
      blue: {endpoints: ["127.0.0.1:9001"]}
"""


def problems(text: str, source: str = SRC) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source)
    return info.value.problems


# --- valid configs -------------------------------------------------------------------------


def test_example_parses_into_the_model() -> None:
    config = parse_config(EXAMPLE, SRC)
    assert config == Config(
        listeners=(Listener(Address("127.0.0.1", 8080)),),
        routes=(
            RouteConfig(
                name="shop",
                hosts=("*",),
                path_prefix="/",
                pools=(
                    PoolConfig(
                        "blue", (Address("127.0.0.1", 9001), Address("127.0.0.1", 9002)), 90
                    ),
                    PoolConfig("green", (Address("127.0.0.1", 9101),), 10),
                ),
                sticky=StickyConfig(header="X-User-Id", cookie="user_id", salt="shop"),
                rules=(RuleConfig(pool="green", headers=(("X-Pointsman-Pool", "green"),)),),
            ),
        ),
        admin=AdminConfig(Address("127.0.0.1", 8081), "POINTSMAN_TOKEN"),
        timeouts=Timeouts(connect=2.0, upstream=30.0, header_read=10.0, idle=60.0, grace=10.0),
        limits=Limits(max_header_bytes=16 * 1024, max_body_bytes=64 * 1024 * 1024),
        upstream=UpstreamSettings(max_idle=64, idle_timeout=30.0),
        state=StateConfig(path="var/state.json"),
        source=SRC,
    )


def test_defaults_applied() -> None:
    config = parse_config(MINIMAL)
    assert config.source == "<string>"
    assert config.admin == AdminConfig()
    assert config.timeouts == Timeouts()
    assert config.limits == Limits()
    assert config.upstream == UpstreamSettings()
    assert config.state == StateConfig()
    (route,) = config.routes
    assert route == RouteConfig(
        name="shop",
        hosts=("*",),
        path_prefix="/",
        # A lone pool without `weights` takes all the traffic.
        pools=(PoolConfig("blue", (Address("127.0.0.1", 9001),), 100),),
        sticky=None,
        rules=(),
    )


def test_non_default_values_and_normalisation() -> None:
    text = """\
listen: "[::1]:8080"
admin: {token_env: MY_TOKEN}
timeouts: {connect: 500ms, idle: 1m, grace: 1.5}
limits: {max_header_bytes: 1KiB, max_body_bytes: 0, compare_memory_bytes: 1MiB}
upstream: {max_idle: 0}
routes:
  - name: api.v2
    hosts: [API.Example.COM, www.example.com]
    path_prefix: /api
    pools:
      old: {endpoints: ["localhost:80"]}
      new: {endpoints: ["10.0.0.1:8000"]}
      spare: {endpoints: ["10.0.0.2:8000"]}
    weights: {new: 3, old: 1}
    sticky: {cookie: sid}
    rules:
      - cookie: {beta: "1"}
        header: {X-Env: staging, X-Team: web}
        pool: new
  - name: site
    pools:
      main: {endpoints: ["127.0.0.1:9000"]}
"""
    config = parse_config(text)
    assert config.listen == Address("::1", 8080)
    assert config.admin == AdminConfig(Address("127.0.0.1", 8081), "MY_TOKEN")
    assert config.timeouts == Timeouts(connect=0.5, idle=60.0, grace=1.5)
    assert config.limits == Limits(
        max_header_bytes=1024, max_body_bytes=0, compare_memory_bytes=1024 * 1024
    )
    assert config.upstream == UpstreamSettings(max_idle=0, idle_timeout=30.0)
    api, site = config.routes
    assert api.hosts == ("api.example.com", "www.example.com")
    assert api.path_prefix == "/api"
    # YAML order is kept (it is the sticky walk order); unnamed pools get weight 0.
    assert [(p.name, p.weight) for p in api.pools] == [("old", 1), ("new", 3), ("spare", 0)]
    assert api.pools[0].endpoints == (Address("localhost", 80),)
    # The salt defaults to the route name.
    assert api.sticky == StickyConfig(header=None, cookie="sid", salt="api.v2")
    assert api.rules == (
        RuleConfig(
            pool="new",
            headers=(("X-Env", "staging"), ("X-Team", "web")),
            cookies=(("beta", "1"),),
        ),
    )
    assert site.pools == (PoolConfig("main", (Address("127.0.0.1", 9000),), 100),)


def test_null_optional_sections_mean_defaults() -> None:
    config = parse_config(MINIMAL + "admin:\ntimeouts:\n")
    assert config.admin == AdminConfig()
    assert config.timeouts == Timeouts()


def test_merge_keys_are_resolved_and_can_be_overridden() -> None:
    text = """\
listen: 127.0.0.1:8080
timeouts: {<<: {connect: 1s, idle: 5s}, connect: 3s}
routes:
  - name: shop
    pools:
      blue: {endpoints: ["127.0.0.1:9001"]}
"""
    config = parse_config(text)
    assert config.timeouts == Timeouts(connect=3.0, idle=5.0)


def test_load_config_reads_file_and_names_it(tmp_path: Path) -> None:
    path = tmp_path / "pointsman.yaml"
    path.write_text(EXAMPLE, encoding="utf-8")
    config = load_config(str(path))
    assert config.source == str(path)
    assert config.routes[0].name == "shop"

    path.write_text(EXAMPLE.replace("green: 10", "gren: 10"), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert info.value.problems == [
        f"{path}:14: routes[0].weights.gren: unknown pool 'gren' (pools: blue, green)"
    ]


def test_load_config_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [f"{path}: cannot read config: No such file or directory"]


# --- errors: exact lines -------------------------------------------------------------------


def test_unknown_pool_in_weights() -> None:
    assert problems(EXAMPLE.replace("green: 10", "gren: 10")) == [
        "config/x.yaml:14: routes[0].weights.gren: unknown pool 'gren' (pools: blue, green)"
    ]


def test_state_in_etcd() -> None:
    text = """
listen: 127.0.0.1:8080
state:
  store: etcd
  path: var/copy.json
  endpoints: [http://10.0.0.1:2379, https://10.0.0.2:2379]
  prefix: /pointsman/shop
  username: pointsman
  ca: etcd-ca.pem
  timeout: 500ms
routes:
  - name: shop
    pools: {blue: {endpoints: [127.0.0.1:9001]}}
    weights: {blue: 100}
"""
    state = parse_config(text, SRC).state
    assert state.store == "etcd"
    assert state == StateConfig(
        path="var/copy.json",
        etcd=EtcdSettings(
            endpoints=("http://10.0.0.1:2379", "https://10.0.0.2:2379"),
            prefix="/pointsman/shop",
            fleet="shop",  # the prefix's last part
            username="pointsman",
            ca="etcd-ca.pem",
            timeout=0.5,
        ),
    )
    assert parse_config(text.replace("  timeout: 500ms", "  fleet: eu-shop"), SRC).state.etcd
    assert parse_config(EXAMPLE, SRC).state.store == "file"


def test_bad_duration() -> None:
    assert problems(MINIMAL + "timeouts: {connect: fast}\n") == [
        "config/x.yaml:6: timeouts.connect: expected a duration like '2s' or '500ms', got 'fast'"
    ]


def test_missing_listen_uses_line_of_the_containing_mapping() -> None:
    text = "# comment\n" + MINIMAL.replace("listen: 127.0.0.1:8080\n", "")
    assert problems(text) == ["config/x.yaml:2: listen: required key missing"]


def test_unknown_keys_name_the_allowed_ones() -> None:
    assert problems(MINIMAL + "colour: red\n") == [
        "config/x.yaml:6: colour: unknown key "
        "(allowed: listen, admin, workers, worker_cpu_affinity, timeouts, limits, upstream, "
        "state, dns, access_log, routes)"
    ]
    assert problems(MINIMAL + "    colour: red\n") == [
        "config/x.yaml:6: routes[0].colour: unknown key "
        "(allowed: name, hosts, path_prefix, pools, weights, sticky, rules, shadows)"
    ]
    assert problems(MINIMAL.replace('"]}', '"], weight: 5}')) == [
        "config/x.yaml:5: routes[0].pools.blue.weight: unknown key "
        "(allowed: endpoints, health, ejection, tls)"
    ]


def test_yaml_syntax_error() -> None:
    text = MINIMAL.replace("    pools:", "   pools:")
    assert problems(text) == [
        "config/x.yaml:4: YAML syntax error: did not find expected '-' indicator"
        " (while parsing a block collection started on line 3)"
    ]
    assert problems('listen: "127.0.0.1:8080\n') == [
        "config/x.yaml:2: YAML syntax error: found unexpected end of stream "
        "(while scanning a quoted scalar started on line 1)"
    ]


def test_routes_must_be_a_non_empty_list() -> None:
    assert problems("listen: 127.0.0.1:8080\nroutes: []\n") == [
        "config/x.yaml:2: routes: expected a non-empty list of routes, got an empty list"
    ]
    assert problems("listen: 127.0.0.1:8080\nroutes: {name: shop}\n") == [
        "config/x.yaml:2: routes: expected a non-empty list of routes, got a mapping"
    ]


def test_duplicate_route_names() -> None:
    text = (
        MINIMAL
        + """\
  - name: shop
    path_prefix: /other
    pools:
      blue: {endpoints: ["127.0.0.1:9001"]}
"""
    )
    assert problems(text) == [
        "config/x.yaml:6: routes[1].name: duplicate route name 'shop' "
        "(first used by routes[0] on line 3)"
    ]


def test_duplicate_host_and_prefix() -> None:
    text = """\
listen: 127.0.0.1:8080
routes:
  - name: a
    hosts: [Example.com, other.com]
    pools: {p: {endpoints: ["h:1"]}}
  - name: b
    hosts: [example.COM]
    pools: {p: {endpoints: ["h:1"]}}
  - name: c
    hosts: [example.com]
    path_prefix: /c
    pools: {p: {endpoints: ["h:1"]}}
"""
    assert problems(text) == [
        "config/x.yaml:6: routes[1]: host 'example.com' with path_prefix '/' "
        "is already used by route 'a' (routes[0])"
    ]


@pytest.mark.parametrize(
    ("value", "shown"),
    [("0", "0"), ("lots", "'lots'"), ("513", "513"), ("-2", "-2"), ("true", "true"),
     ("2.5", "2.5"), ("[2]", "a list")],
)  # fmt: skip
def test_workers_must_be_auto_or_a_count_in_range(value: str, shown: str) -> None:
    assert problems(MINIMAL + f"workers: {value}\n") == [
        f"config/x.yaml:6: workers: expected 'auto' or a number of workers in 1..512, got {shown}"
    ]


@pytest.mark.parametrize(("value", "shown"), [("sometimes", "'sometimes'"), ("1", "1"),
                                              ("true", "true"), ("[0, 1]", "a list")])  # fmt: skip
def test_worker_cpu_affinity_must_be_auto_or_off(value: str, shown: str) -> None:
    assert problems(MINIMAL + f"worker_cpu_affinity: {value}\n") == [
        f"config/x.yaml:6: worker_cpu_affinity: expected 'auto' or 'off', got {shown}"
    ]


@pytest.mark.parametrize(("value", "setting"), [("auto", "auto"), ("off", "off"), ("'off'", "off")])
def test_worker_cpu_affinity_auto_or_off(value: str, setting: str) -> None:
    assert (
        parse_config(MINIMAL + f"worker_cpu_affinity: {value}\n", SRC).worker_cpu_affinity
        == setting
    )
    assert parse_config(MINIMAL, SRC).worker_cpu_affinity == "auto"  # the default


@pytest.mark.parametrize(("value", "count"), [("auto", None), ("1", 1), ("512", 512)])
def test_workers_auto_or_a_count(value: str, count: int | None) -> None:
    assert parse_config(MINIMAL + f"workers: {value}\n", SRC).workers == count
    assert parse_config(MINIMAL, SRC).workers is None  # auto when not given


def test_duplicate_keys_are_reported() -> None:
    assert problems(MINIMAL + "listen: 127.0.0.1:9999\n") == [
        "config/x.yaml:6: listen: duplicate key (first on line 1)"
    ]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "listen: 127.0.0.1:8080",
            "listen: 127.0.0.1:0",
            "config/x.yaml:1: listen: expected a port in 1..65535, got '127.0.0.1:0'",
        ),
        (
            "listen: 127.0.0.1:8080",
            "listen: 8080",
            "config/x.yaml:1: listen: expected an address like '127.0.0.1:8080' or "
            "'[::1]:8080', got 8080",
        ),
        (
            "listen: 127.0.0.1:8080",
            "listen:",
            "config/x.yaml:1: listen: expected an address like '127.0.0.1:8080' or "
            "'[::1]:8080', got null",
        ),
        (
            "listen: 127.0.0.1:8080",
            "listen: 127.0.0.1:8080\nadmin: {listen: 127.0.0.1:8080}",
            "config/x.yaml:2: admin.listen: same address as listen",
        ),
        (
            "listen: 127.0.0.1:8080",
            "listen: 127.0.0.1:8081",
            "config/x.yaml:1: listen: same address as admin.listen (default 127.0.0.1:8081)",
        ),
        (
            "listen: 127.0.0.1:8080",
            "listen: 127.0.0.1:8080\nadmin: [1]",
            "config/x.yaml:2: admin: expected a mapping, got a list",
        ),
        (
            "listen: 127.0.0.1:8080",
            "listen: 127.0.0.1:8080\nadmin: {token_env: 1BAD}",
            "config/x.yaml:2: admin.token_env: expected an environment variable name, got '1BAD'",
        ),
        (
            "listen: 127.0.0.1:8080",
            "listen: 127.0.0.1:8080\ntimeouts: {idle: 0s}",
            "config/x.yaml:2: timeouts.idle: expected a duration > 0, got '0s'",
        ),
        (
            "listen: 127.0.0.1:8080",
            "listen: 127.0.0.1:8080\nlimits: {max_header_bytes: 512B}",
            "config/x.yaml:2: limits.max_header_bytes: expected a size >= 1KiB, got '512B'",
        ),
        (
            "listen: 127.0.0.1:8080",
            "listen: 127.0.0.1:8080\nlimits: {max_body_bytes: -1}",
            "config/x.yaml:2: limits.max_body_bytes: expected a size like '64KiB' or '1MiB', "
            "got -1",
        ),
        (
            "listen: 127.0.0.1:8080",
            "listen: 127.0.0.1:8080\nlimits: {compare_memory_bytes: plenty}",
            "config/x.yaml:2: limits.compare_memory_bytes: expected a size like '64KiB' or "
            "'1MiB', got 'plenty'",
        ),
        (
            "listen: 127.0.0.1:8080",
            "listen: 127.0.0.1:8080\nupstream: {max_idle: ninety}",
            "config/x.yaml:2: upstream.max_idle: expected an integer >= 0, got 'ninety'",
        ),
        (
            "listen: 127.0.0.1:8080",
            "listen: 127.0.0.1:8080\nstate: {path: ''}",
            "config/x.yaml:2: state.path: expected a file path, got ''",
        ),
        (
            "listen: 127.0.0.1:8080",
            "listen: 127.0.0.1:8080\nstate: {store: consul}",
            "config/x.yaml:2: state.store: expected file or etcd, got 'consul'",
        ),
        (
            "listen: 127.0.0.1:8080",
            "listen: 127.0.0.1:8080\nstate: {endpoints: ['http://127.0.0.1:2379']}",
            "config/x.yaml:2: state.endpoints: only with store: etcd",
        ),
        (
            "listen: 127.0.0.1:8080",
            "listen: 127.0.0.1:8080\nstate: {store: etcd, prefix: /pointsman/shop}",
            "config/x.yaml:2: state.endpoints: required key missing (with store: etcd)",
        ),
        (
            "listen: 127.0.0.1:8080",
            "listen: 127.0.0.1:8080\n"
            "state: {store: etcd, prefix: /p/shop, endpoints: ['127.0.0.1:2379']}",
            "config/x.yaml:2: state.endpoints[0]: expected http(s)://host:port, got "
            "'127.0.0.1:2379'",
        ),
        (
            "listen: 127.0.0.1:8080",
            "listen: 127.0.0.1:8080\n"
            "state: {store: etcd, prefix: shop, endpoints: ['http://127.0.0.1:2379']}",
            "config/x.yaml:2: state.prefix: expected a key prefix such as /pointsman/shop, "
            "got 'shop'",
        ),
        (
            "listen: 127.0.0.1:8080",
            "listen: 127.0.0.1:8080\n"
            "state: {store: etcd, prefix: /p/shop, endpoints: ['http://e:2379'], cert: c.pem}",
            "config/x.yaml:2: state.cert: cert and key go together (client TLS)",
        ),
        (
            "  - name: shop",
            "  - name: my shop",
            "config/x.yaml:3: routes[0].name: expected a name of letters, digits, '_', '.' "
            "and '-', got 'my shop'",
        ),
        (
            "  - name: shop",
            "  - name: shop\n    hosts: '*'",
            "config/x.yaml:4: routes[0].hosts: expected a non-empty list of strings, got '*'",
        ),
        (
            "  - name: shop",
            "  - name: shop\n    hosts: [example.com, 7]",
            "config/x.yaml:4: routes[0].hosts[1]: expected a host name or '*', got 7 "
            "(put it in quotes if it is meant as text)",
        ),
        (
            "  - name: shop",
            "  - name: shop\n    path_prefix: api",
            "config/x.yaml:4: routes[0].path_prefix: expected a path starting with '/', got 'api'",
        ),
        (
            '    pools:\n      blue: {endpoints: ["127.0.0.1:9001"]}',
            "    pools: {}",
            "config/x.yaml:4: routes[0].pools: expected a mapping of pool name -> "
            "{endpoints: [...]} with at least one pool",
        ),
        (
            'blue: {endpoints: ["127.0.0.1:9001"]}',
            "blue: {endpoints: []}",
            "config/x.yaml:5: routes[0].pools.blue.endpoints: expected a non-empty list of "
            "addresses, got an empty list",
        ),
        (
            'blue: {endpoints: ["127.0.0.1:9001"]}',
            'blue: {endpoints: ["::1:9001"]}',
            "config/x.yaml:5: routes[0].pools.blue.endpoints[0]: expected an IPv6 host in "
            "brackets, like '[::1]:8080', got '::1:9001'",
        ),
        (
            'blue: {endpoints: ["127.0.0.1:9001"]}',
            'blue/1: {endpoints: ["127.0.0.1:9001"]}',
            "config/x.yaml:5: routes[0].pools.blue/1: expected a name of letters, digits, '_', "
            "'.' and '-', got 'blue/1'",
        ),
        (
            'blue: {endpoints: ["127.0.0.1:9001"]}',
            'blue: ["127.0.0.1:9001"]',
            "config/x.yaml:5: routes[0].pools.blue: expected a mapping, got a list",
        ),
    ],
)
def test_single_problem(old: str, new: str, expected: str) -> None:
    assert old in MINIMAL
    assert problems(MINIMAL.replace(old, new)) == [expected]


TWO_POOLS = """\
listen: 127.0.0.1:8080
routes:
  - name: shop
    pools:
      blue: {endpoints: ["127.0.0.1:9001"]}
      green: {endpoints: ["127.0.0.1:9101"]}
"""


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("", "config/x.yaml:3: routes[0].weights: required when a route has more than one pool"),
        (
            "    weights: {blue: 0}\n",
            "config/x.yaml:7: routes[0].weights: total must be > 0 "
            "(give at least one pool a weight)",
        ),
        (
            "    weights: {blue: true}\n",
            "config/x.yaml:7: routes[0].weights.blue: expected an integer in 0..1000000, got true",
        ),
        (
            "    weights: {blue: ninety}\n",
            "config/x.yaml:7: routes[0].weights.blue: expected an integer in 0..1000000, "
            "got 'ninety'",
        ),
        (
            "    weights: {blue: 1.5}\n",
            "config/x.yaml:7: routes[0].weights.blue: expected an integer in 0..1000000, got 1.5",
        ),
        (
            "    weights: {blue: -1}\n",
            "config/x.yaml:7: routes[0].weights.blue: expected an integer in 0..1000000, got -1",
        ),
        (
            "    weights: {blue: 1000001}\n",
            "config/x.yaml:7: routes[0].weights.blue: expected an integer in 0..1000000, "
            "got 1000001",
        ),
        (
            "    weights: [blue]\n",
            "config/x.yaml:7: routes[0].weights: expected a mapping of pool name -> weight, "
            "got a list",
        ),
        (
            "    weights: {blue: 1}\n    sticky: {salt: x}\n",
            "config/x.yaml:8: routes[0].sticky: expected at least one of 'header' or 'cookie'",
        ),
        (
            "    weights: {blue: 1}\n    sticky: {header: X User}\n",
            "config/x.yaml:8: routes[0].sticky.header: expected a header name, got 'X User'",
        ),
        (
            "    weights: {blue: 1}\n    rules:\n      - {pool: grey, header: {X-A: b}}\n",
            "config/x.yaml:9: routes[0].rules[0].pool: unknown pool 'grey' (pools: blue, green)",
        ),
        (
            "    weights: {blue: 1}\n    rules:\n      - {pool: green}\n",
            "config/x.yaml:9: routes[0].rules[0]: expected at least one of 'header' or 'cookie'",
        ),
        (
            "    weights: {blue: 1}\n    rules:\n      - {header: {X-A: b}}\n",
            "config/x.yaml:9: routes[0].rules[0].pool: required key missing",
        ),
        (
            "    weights: {blue: 1}\n    rules:\n      - {pool: green, header: {X-Version: 2}}\n",
            "config/x.yaml:9: routes[0].rules[0].header.X-Version: expected a string, got 2 "
            "(put it in quotes if it is meant as text)",
        ),
        (
            "    weights: {blue: 1}\n    rules:\n      - {pool: green, cookie: {}}\n",
            "config/x.yaml:9: routes[0].rules[0].cookie: expected at least one cookie name "
            "-> value",
        ),
        (
            "    weights: {blue: 1}\n    rules: {pool: green}\n",
            "config/x.yaml:8: routes[0].rules: expected a list of rules, got a mapping",
        ),
    ],
)
def test_route_problem(extra: str, expected: str) -> None:
    assert problems(TWO_POOLS + extra) == [expected]


def test_all_problems_reported_at_once_in_file_order() -> None:
    text = """\
listen: localhost:99999
timeouts: {connect: fast, idle: 0}
limits: {max_header_bytes: 16KiB, max_body_bytes: lots}
extra: 1
routes:
  - name: shop
    pools:
      blue:  {endpoints: ["127.0.0.1:9001"]}
      green: {endpoints: ["127.0.0.1:9101"]}
    weights: {blue: 90, gren: 10}
  - name: shop
    path_prefix: /b
    pools:
      blue:  {endpoints: ["127.0.0.1:9001"]}
  - path_prefix: /c
"""
    assert problems(text) == [
        "config/x.yaml:1: listen: expected a port in 1..65535, got 'localhost:99999'",
        "config/x.yaml:2: timeouts.connect: expected a duration like '2s' or '500ms', got 'fast'",
        "config/x.yaml:2: timeouts.idle: expected a duration > 0, got 0",
        "config/x.yaml:3: limits.max_body_bytes: expected a size like '64KiB' or '1MiB', "
        "got 'lots'",
        "config/x.yaml:4: extra: unknown key "
        "(allowed: listen, admin, workers, worker_cpu_affinity, timeouts, limits, upstream, "
        "state, dns, access_log, routes)",
        "config/x.yaml:10: routes[0].weights.gren: unknown pool 'gren' (pools: blue, green)",
        "config/x.yaml:11: routes[1].name: duplicate route name 'shop' "
        "(first used by routes[0] on line 6)",
        "config/x.yaml:15: routes[2].name: required key missing",
        "config/x.yaml:15: routes[2].pools: required key missing",
    ]


def test_config_error_str_is_the_problem_lines() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("listen: x\nroutes: 1\n", "c.yaml")
    err = info.value
    assert len(err.problems) == 2
    assert str(err) == "\n".join(err.problems)
    assert str(err).splitlines()[0].startswith("c.yaml:1: listen: ")
    assert isinstance(ConfigError(["a", "b"]), Exception)
    assert str(ConfigError(["a", "b"])) == "a\nb"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "config/x.yaml:1: expected a mapping with 'listen' and 'routes', got nothing"),
        (
            "# only a comment\n",
            "config/x.yaml:1: expected a mapping with 'listen' and 'routes', got nothing",
        ),
        ("- 1\n- 2\n", "config/x.yaml:1: expected a mapping, got a list"),
        (
            "a: 1\n---\nb: 2\n",
            "config/x.yaml:2: YAML syntax error: but found another document "
            "(expected a single document in the stream started on line 1)",
        ),
    ],
)
def test_document_level_problems(text: str, expected: str) -> None:
    assert problems(text) == [expected]


# --- value helpers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("500ms", 0.5),
        ("2s", 2.0),
        ("1.5s", 1.5),
        ("1m", 60.0),
        ("1h", 3600.0),
        ("0s", 0.0),
        ("10", 10.0),
        (" 250 ms ", 0.25),
        (3, 3.0),
        (0.25, 0.25),
    ],
)
def test_parse_duration_good(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds
    assert isinstance(parse_duration(value), float)


@pytest.mark.parametrize(
    "value", ["fast", "", "2 seconds", "-1s", "1d", "s", "1.2.3s", "٣s", -1, math.inf, True, None]
)
def test_parse_duration_bad(value: object) -> None:
    with pytest.raises(ValueError, match=r"^expected a duration like '2s' or '500ms', got "):
        parse_duration(value)


def test_parse_duration_error_message() -> None:
    with pytest.raises(ValueError) as info:
        parse_duration("fast")
    assert str(info.value) == "expected a duration like '2s' or '500ms', got 'fast'"


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("64KiB", 64 * 1024),
        ("1MiB", 1024**2),
        ("2GiB", 2 * 1024**3),
        ("1KB", 1000),
        ("512B", 512),
        ("1.5KiB", 1536),
        ("16 kib", 16 * 1024),
        ("100", 100),
        (0, 0),
        (4096, 4096),
        (2048.0, 2048),
    ],
)
def test_parse_size_good(value: object, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize("value", ["lots", "", "-1KiB", "1KiBs", "1 K", "0x10", -1, 1.5, False])
def test_parse_size_bad(value: object) -> None:
    with pytest.raises(ValueError, match=r"^expected a size like '64KiB' or '1MiB', got "):
        parse_size(value)


def test_parse_size_fractional_bytes() -> None:
    with pytest.raises(ValueError, match=r"^expected a whole number of bytes, got '1.5B'$"):
        parse_size("1.5B")


@pytest.mark.parametrize(
    ("value", "address"),
    [
        ("127.0.0.1:8080", Address("127.0.0.1", 8080)),
        ("[::1]:8080", Address("::1", 8080)),
        ("localhost:80", Address("localhost", 80)),
        ("backend-1.internal:65535", Address("backend-1.internal", 65535)),
        ("0.0.0.0:1", Address("0.0.0.0", 1)),
    ],
)
def test_parse_address_good(value: str, address: Address) -> None:
    assert parse_address(value) == address


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("127.0.0.1", "expected an address like '127.0.0.1:8080' or '[::1]:8080'"),
        (":8080", "expected an address like '127.0.0.1:8080' or '[::1]:8080'"),
        (8080, "expected an address like '127.0.0.1:8080' or '[::1]:8080'"),
        ("[::1]8080", "expected an address like '127.0.0.1:8080' or '[::1]:8080'"),
        ("localhost:0", "expected a port in 1..65535"),
        ("localhost:65536", "expected a port in 1..65535"),
        ("localhost:http", "expected a port in 1..65535"),
        ("localhost:-1", "expected a port in 1..65535"),
        ("::1:8080", "expected an IPv6 host in brackets, like '[::1]:8080'"),
        ("[nope]:80", "expected an IPv6 address inside the brackets"),
        ("300.1.1.1:80", "expected a valid IPv4 address"),
        ("bad host:80", "expected a host name or IP address before the port"),
        ("-bad:80", "expected a host name or IP address before the port"),
    ],
)
def test_parse_address_bad(value: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_address(value)
    assert str(info.value) == f"{message}, got {value!r}"


@settings(database=None)  # keep hypothesis from writing a .hypothesis/ directory
@given(st.integers(min_value=0))
def test_units_scale_exactly(n: int) -> None:
    assert parse_size(f"{n}KiB") == n * 1024
    assert parse_duration(f"{n}ms") == n / 1000


# --- shadows ---------------------------------------------------------------------------------

SHADOWED = TWO_POOLS + "    weights: {blue: 1, green: 0}\n    shadows:\n"  # line 8: shadows


def test_the_issue_shadow_example_parses_with_defaults_for_the_rest() -> None:
    text = (
        SHADOWED
        + """\
      - pool: green
        percent: 100
        methods: [GET, HEAD]
        timeout: 2s
        max_in_flight: 256
        compare:
          max_body: 1MiB
          ignore_headers: [date, X-Request-Id]
          ignore_json: ["$.generated_at", "$.items[*].etag"]
"""
    )
    (shadow,) = parse_config(text, SRC).routes[0].shadows
    assert shadow == ShadowConfig(
        pool="green",
        percent=100.0,
        methods=("GET", "HEAD"),
        timeout=2.0,
        max_in_flight=256,
        compare=CompareConfig(
            max_body=1024 * 1024,
            ignore_headers=("date", "x-request-id"),
            ignore_json=("$.generated_at", "$.items[*].etag"),
        ),
    )
    minimal = parse_config(SHADOWED + "      - pool: green\n", SRC).routes[0].shadows[0]
    assert minimal == ShadowConfig(pool="green")
    assert minimal.compare.ignore_headers == ("date",)


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (
            "      - pool: gren\n",
            "config/x.yaml:9: routes[0].shadows[0].pool: unknown pool 'gren' (pools: blue, green)",
        ),
        (
            "      - pool: blue\n",
            "config/x.yaml:9: routes[0].shadows[0].pool: pool 'blue' takes live traffic "
            "(weight 1); give it weight 0",
        ),
        (
            "      - {percent: 5}\n",
            "config/x.yaml:9: routes[0].shadows[0].pool: required key missing",
        ),
        (
            "      - pool: green\n        percent: 150\n",
            "config/x.yaml:10: routes[0].shadows[0].percent: expected a percentage in 0..100, "
            "got 150",
        ),
        (
            "      - pool: green\n        methods: [GET, 'P OST']\n",
            "config/x.yaml:10: routes[0].shadows[0].methods[1]: expected an HTTP method, "
            "got 'P OST'",
        ),
        (
            "      - pool: green\n        timeout: soon\n",
            "config/x.yaml:10: routes[0].shadows[0].timeout: expected a duration like '2s' or "
            "'500ms', got 'soon'",
        ),
        (
            "      - pool: green\n        compare:\n          max_body: 1GiB\n",
            "config/x.yaml:11: routes[0].shadows[0].compare.max_body: expected a size <= 16MiB, "
            "got '1GiB'",
        ),
        (
            "      - pool: green\n        compare:\n          ignore_json: ['$.a[']\n",
            "config/x.yaml:11: routes[0].shadows[0].compare.ignore_json[0]: JSON path '$.a[': "
            "cannot read from '['",
        ),
        (
            "      - pool: green\n        colour: dark\n",
            "config/x.yaml:10: routes[0].shadows[0].colour: unknown key (allowed: pool, percent, "
            "methods, timeout, max_in_flight, baseline, compare)",
        ),
        (
            "      - pool: green\n        baseline: green\n",
            "config/x.yaml:10: routes[0].shadows[0].baseline: the baseline must be another pool "
            "than the shadow",
        ),
        (
            "      - pool: green\n      - pool: green\n",
            "config/x.yaml:10: routes[0].shadows[1].pool: pool 'green' is shadowed twice",
        ),
    ],
)
def test_shadow_problem(entry: str, expected: str) -> None:
    assert problems(SHADOWED + entry) == [expected]
