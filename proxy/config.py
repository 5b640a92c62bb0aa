"""Config model: frozen slotted dataclasses (the loader fills them).

The loader walks the composed YAML node tree itself (rather than `yaml.safe_load`)
so that every problem can be reported as `<source>:<line>: <key path>: <message>`,
and it collects all problems before raising one `ConfigError`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Final, TypeVar

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from proxy.shadow_config import ShadowConfig, ShadowSpecError, parse_shadow
from proxy.values import DURATION_EXPECTED as _DURATION_EXPECTED
from proxy.values import SIZE_EXPECTED as _SIZE_EXPECTED
from proxy.values import Expected as _Expected
from proxy.values import parse_duration, parse_size

__all__ = [
    "Address",
    "AdminConfig",
    "Config",
    "ConfigError",
    "Limits",
    "PoolConfig",
    "RouteConfig",
    "RuleConfig",
    "StateConfig",
    "StickyConfig",
    "Timeouts",
    "UpstreamSettings",
    "load_config",
    "parse_address",
    "parse_config",
    "parse_duration",
    "parse_size",
]


# --- model (verbatim from the spec) ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 2.0  # upstream TCP connect; a dead host must not hold a request long
    upstream: float = 30.0  # max silence from upstream while waiting for/reading a response
    header_read: float = 10.0  # downstream: whole request head must arrive within this (slowloris)
    idle: float = 60.0  # downstream keep-alive connection with no request in flight
    grace: float = 10.0  # on SIGTERM, in-flight requests get this long to finish


# Bytes all mirrors of the process may hold for comparison together (request copies, the
# primary's captured answer, the shadows' answers): each mirror holds up to compare.max_body
# per side, so 256 in flight at 1 MiB could otherwise hold a gigabyte. Past it, no new mirror
# starts and one that would grow past it is dropped (`memory`). The default of
# limits.compare_memory_bytes.
COMPARE_MEMORY_LIMIT: Final = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    max_header_bytes: int = 16 * 1024  # request line + headers; above -> 431
    max_body_bytes: int = 64 * 1024 * 1024  # request body; above -> 413 (0 = no limit)
    compare_memory_bytes: int = COMPARE_MEMORY_LIMIT


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    max_idle: int = 64  # idle keep-alive connections kept per endpoint
    idle_timeout: float = 30.0  # an idle upstream connection older than this is closed


@dataclass(frozen=True, slots=True)
class HealthCheckConfig:
    """Active checks: GET `path` on each endpoint every `interval`."""

    path: str = "/healthz"
    interval: float = 5.0
    timeout: float = 1.0  # a check slower than this counts as failed
    healthy_threshold: int = 2  # consecutive passes to take an endpoint back
    unhealthy_threshold: int = 3  # consecutive failures to take it out


@dataclass(frozen=True, slots=True)
class EjectionConfig:
    """Passive ejection: consecutive connect errors or 5xx answers take an endpoint out of
    rotation for `backoff` seconds (0 failures = never)."""

    consecutive_failures: int = 5
    backoff: float = 10.0


@dataclass(frozen=True, slots=True)
class PoolConfig:
    name: str
    endpoints: tuple[Address, ...]
    weight: int  # from the route's `weights` mapping; pools not named there get 0
    health: HealthCheckConfig | None = None  # None: no active checks
    ejection: EjectionConfig = field(default_factory=EjectionConfig)


@dataclass(frozen=True, slots=True)
class RuleConfig:
    pool: str
    headers: tuple[tuple[str, str], ...] = ()  # (name, exact value); name kept as written
    cookies: tuple[tuple[str, str], ...] = ()  # (cookie name, exact value)


@dataclass(frozen=True, slots=True)
class StickyConfig:
    header: str | None = None
    cookie: str | None = None
    salt: str = ""  # loader sets the route name when the YAML gives none


@dataclass(frozen=True, slots=True)
class RouteConfig:
    name: str
    hosts: tuple[str, ...]  # lower-cased; "*" means any host
    path_prefix: str  # starts with "/"
    pools: tuple[PoolConfig, ...]  # in the YAML's order (this order is the sticky walk order)
    sticky: StickyConfig | None = None
    rules: tuple[RuleConfig, ...] = ()
    shadows: tuple[ShadowConfig, ...] = ()  # blind versions that get mirrored copies


@dataclass(frozen=True, slots=True)
class AdminConfig:
    listen: Address = Address("127.0.0.1", 8081)
    token_env: str = "POINTSMAN_TOKEN"
    token_file: str | None = None  # read at start when set; wins over token_env


@dataclass(frozen=True, slots=True)
class StateConfig:
    path: str = "var/state.json"


@dataclass(frozen=True, slots=True)
class Config:
    listen: Address
    routes: tuple[RouteConfig, ...]
    admin: AdminConfig = field(default_factory=AdminConfig)
    timeouts: Timeouts = field(default_factory=Timeouts)
    limits: Limits = field(default_factory=Limits)
    upstream: UpstreamSettings = field(default_factory=UpstreamSettings)
    state: StateConfig = field(default_factory=StateConfig)
    source: str = "<string>"  # file the config came from, for messages


# --- errors ------------------------------------------------------------------------------


class ConfigError(Exception):
    """Every problem found in a config, one `<source>:<line>: <path>: <message>` per entry."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems: list[str] = list(problems)
        super().__init__("\n".join(self.problems))

    def __str__(self) -> str:
        return "\n".join(self.problems)


# --- value helpers -----------------------------------------------------------------------

_ADDRESS_EXPECTED = "expected an address like '127.0.0.1:8080' or '[::1]:8080'"
_HOSTNAME_RE = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_PORT_RE = re.compile(r"[0-9]{1,5}")


def parse_address(value: object) -> Address:
    """`Address` from 'host:port', e.g. '127.0.0.1:8080', 'localhost:80' or '[::1]:8080'
    (an IPv6 host is stored without brackets, as socket APIs want it). Port is 1..65535.
    Raises ValueError naming what was expected."""
    if not isinstance(value, str):
        raise _Expected(_ADDRESS_EXPECTED, value)
    text = value.strip()
    if text.startswith("["):
        host, bracket, port = text[1:].partition("]:")
        if not bracket:
            raise _Expected(_ADDRESS_EXPECTED, value)
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _Expected("expected an IPv6 address inside the brackets", value) from None
    else:
        host, colon, port = text.rpartition(":")
        if not colon or not host:
            raise _Expected(_ADDRESS_EXPECTED, value)
        if ":" in host:
            raise _Expected("expected an IPv6 host in brackets, like '[::1]:8080'", value)
        if re.fullmatch(r"[0-9.]+", host):
            # All digits and dots: only an IPv4 address makes sense, so validate it as one.
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise _Expected("expected a valid IPv4 address", value) from None
        elif not _HOSTNAME_RE.fullmatch(host):
            raise _Expected("expected a host name or IP address before the port", value)
    if not _PORT_RE.fullmatch(port) or not 1 <= int(port) <= 65535:
        raise _Expected("expected a port in 1..65535", value)
    return Address(host, int(port))


# --- loader ------------------------------------------------------------------------------

_T = TypeVar("_T")

_STR_TAG = "tag:yaml.org,2002:str"
_NULL_TAG = "tag:yaml.org,2002:null"
_BOOL_TAG = "tag:yaml.org,2002:bool"

_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
_NAME_EXPECTED = "expected a name of letters, digits, '_', '.' and '-'"
# RFC 9110 token: header and cookie names that contain anything else could never match.
_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_ENV_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Weights are relative shares and sticky buckets resolve 1/10,000 anyway; a larger value from an
# operator is a typo (and this keeps every sum far inside a 64-bit JSON integer). The control
# API holds changed weights to the same bound.
MAX_WEIGHT: Final = 1_000_000

_TOP_KEYS = ("listen", "admin", "timeouts", "limits", "upstream", "state", "routes")
_ADMIN_KEYS = ("listen", "token_env", "token_file")
_TIMEOUT_KEYS = tuple(f.name for f in fields(Timeouts))
_LIMIT_KEYS = ("max_header_bytes", "max_body_bytes", "compare_memory_bytes")
_UPSTREAM_KEYS = ("max_idle", "idle_timeout")
_STATE_KEYS = ("path",)
_ROUTE_KEYS = ("name", "hosts", "path_prefix", "pools", "weights", "sticky", "rules", "shadows")
_POOL_KEYS = ("endpoints", "health", "ejection")
_HEALTH_KEYS = ("path", "interval", "timeout", "healthy_threshold", "unhealthy_threshold")
_EJECTION_KEYS = ("consecutive_failures", "backoff")
_PoolParts = tuple[tuple[Address, ...], HealthCheckConfig | None, EjectionConfig]
_STICKY_KEYS = ("header", "cookie", "salt")
_RULE_KEYS = ("pool", "header", "cookie")

_Fields = dict[str, Node]


def _sub(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _NULL_TAG


class _Loader:
    """One pass over a composed document; every check appends to `problems` and carries on
    with a default, so that a single run reports everything that is wrong."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._found: list[tuple[int, str]] = []
        self._constructor = SafeConstructor()
        # id(mapping node) -> ids of the key nodes written in it (as opposed to merged in
        # by `<<`); kept because flattening is in place and an aliased node is seen twice.
        self._own_keys: dict[int, frozenset[int]] = {}

    # -- reporting

    def report(self, node: Node, path: str, message: str) -> None:
        where = f"{self.source}:{_line(node)}"
        text = f"{where}: {path}: {message}" if path else f"{where}: {message}"
        self._found.append((_line(node), text))

    @property
    def problems(self) -> list[str]:
        # In file order (stable for one line), which is how people fix a config.
        return [text for _, text in sorted(self._found, key=lambda found: found[0])]

    def show(self, node: Node) -> str:
        """The offending value as the YAML author would recognise it."""
        if isinstance(node, MappingNode):
            return "a mapping" if node.value else "an empty mapping"
        if isinstance(node, SequenceNode):
            return "a list" if node.value else "an empty list"
        if node.tag == _NULL_TAG:
            return "null"
        if node.tag == _STR_TAG:
            return repr(node.value)
        if node.tag == _BOOL_TAG:
            return "true" if self._constructor.construct_object(node) else "false"
        return str(node.value)

    # -- structure

    def mapping(
        self,
        node: Node,
        path: str,
        allowed: Sequence[str] | None,
        required: Sequence[str] = (),
        expected: str = "expected a mapping",
    ) -> _Fields | None:
        """Key -> value node. `allowed=None` means free-form names (pools, weights, ...).
        A null value for an optional key counts as the key being absent, so an emptied
        section such as `admin:` means "defaults"."""
        if not isinstance(node, MappingNode):
            self.report(node, path, f"{expected}, got {self.show(node)}")
            return None
        own = self._own_keys.get(id(node))
        if own is None:
            pairs: list[tuple[Node, Node]] = node.value
            own = self._own_keys[id(node)] = frozenset(id(key) for key, _ in pairs)
            try:
                self._constructor.flatten_mapping(node)  # resolve `<<: *anchor` merge keys
            except yaml.YAMLError as err:
                self.report(node, path, f"bad merge key: {getattr(err, 'problem', err)}")
                return None
        out: _Fields = {}
        first_line: dict[str, int] = {}
        inherited: set[str] = set()  # keys whose current value came from a `<<` merge
        pairs = node.value
        for key_node, value_node in pairs:
            if not isinstance(key_node, ScalarNode):
                self.report(key_node, path, f"expected a plain key, got {self.show(key_node)}")
                continue
            # Raw text, so a pool called `2024` or a header called `on` stays as written.
            key = str(key_node.value)
            key_path = _sub(path, key)
            known = allowed is None or key in allowed
            if key in first_line and (key not in inherited or not known):
                # An unknown key was reported already; a repeat of it is just noise.
                if known:
                    message = f"duplicate key (first on line {first_line[key]})"
                    self.report(key_node, key_path, message)
                continue
            # Merged-in keys come first and a later key overrides them: YAML merge semantics.
            first_line[key] = _line(key_node)
            inherited.discard(key)
            if id(key_node) not in own:
                inherited.add(key)
            if not known:
                assert allowed is not None
                self.report(key_node, key_path, f"unknown key (allowed: {', '.join(allowed)})")
            elif _is_null(value_node) and key not in required:
                out.pop(key, None)
            else:
                out[key] = value_node
        for key in required:
            if key not in first_line:
                self.report(node, _sub(path, key), "required key missing")
        return out

    def sequence(
        self, node: Node, path: str, expected: str, non_empty: bool = False
    ) -> list[Node] | None:
        if not isinstance(node, SequenceNode) or (non_empty and not node.value):
            self.report(node, path, f"{expected}, got {self.show(node)}")
            return None
        items: list[Node] = node.value
        return items

    # -- scalars

    def string(
        self,
        node: Node,
        path: str,
        expected: str = "expected a string",
        pattern: re.Pattern[str] | None = None,
        non_empty: bool = True,
    ) -> str | None:
        # Strict on type: YAML turns unquoted `on`, `010` or `1.10` into non-strings, and
        # silently stringifying them would not give back what the author typed.
        if not isinstance(node, ScalarNode) or node.tag != _STR_TAG:
            hint = ""
            if isinstance(node, ScalarNode) and node.tag != _NULL_TAG:
                hint = " (put it in quotes if it is meant as text)"
            self.report(node, path, f"{expected}, got {self.show(node)}{hint}")
            return None
        text = str(node.value)
        if (non_empty and not text) or (pattern is not None and not pattern.fullmatch(text)):
            self.report(node, path, f"{expected}, got {self.show(node)}")
            return None
        return text

    def converted(
        self, node: Node, path: str, convert: Callable[[object], _T], expected: str
    ) -> _T | None:
        """Run a value helper on a scalar, reporting its complaint with the YAML's text."""
        if not isinstance(node, ScalarNode):
            self.report(node, path, f"{expected}, got {self.show(node)}")
            return None
        try:
            value = self._constructor.construct_object(node)
        except yaml.YAMLError as err:
            self.report(node, path, f"cannot read value: {getattr(err, 'problem', err)}")
            return None
        try:
            return convert(value)
        except _Expected as err:
            self.report(node, path, f"{err.expected}, got {self.show(node)}")
            return None

    def integer(
        self, node: Node, path: str, minimum: int, maximum: int | None = None
    ) -> int | None:
        if maximum is None:
            expected = f"expected an integer >= {minimum}"
        else:
            expected = f"expected an integer in {minimum}..{maximum}"

        def convert(value: object) -> int:
            # bool is an int subclass; `weight: yes` must not mean 1.
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or value < minimum
                or (maximum is not None and value > maximum)
            ):
                raise _Expected(expected, value)
            return value

        return self.converted(node, path, convert, expected)

    def duration(self, node: Node, path: str) -> float | None:
        seconds = self.converted(node, path, parse_duration, _DURATION_EXPECTED)
        if seconds is not None and seconds <= 0:
            self.report(node, path, f"expected a duration > 0, got {self.show(node)}")
            return None
        return seconds

    def size(self, node: Node, path: str, minimum: int, minimum_text: str) -> int | None:
        size = self.converted(node, path, parse_size, _SIZE_EXPECTED)
        if size is not None and size < minimum:
            self.report(node, path, f"expected a size >= {minimum_text}, got {self.show(node)}")
            return None
        return size

    def address(self, node: Node, path: str) -> Address | None:
        return self.converted(node, path, parse_address, _ADDRESS_EXPECTED)

    def pairs(self, node: Node, path: str, what: str) -> tuple[tuple[str, str], ...] | None:
        """A rule's `header`/`cookie` mapping: name -> exact string value."""
        fields_ = self.mapping(node, path, None, expected=f"expected a mapping of {what} -> value")
        if fields_ is None:
            return None
        if not fields_:
            self.report(node, path, f"expected at least one {what} -> value")
            return None
        out: list[tuple[str, str]] = []
        for name, value_node in fields_.items():
            sub = _sub(path, name)
            ok = True
            if not _TOKEN_RE.fullmatch(name):
                self.report(value_node, sub, f"expected a valid {what}, got {name!r}")
                ok = False
            value = self.string(value_node, sub, non_empty=False)
            if ok and value is not None:
                out.append((name, value))
        return tuple(out)

    # -- sections

    def config(self, root: Node) -> Config | None:
        top = self.mapping(root, "", _TOP_KEYS, required=("listen", "routes"))
        if top is None:
            return None
        listen = self.address(top["listen"], "listen") if "listen" in top else None
        admin, admin_listen_node = (
            self.admin(top["admin"]) if "admin" in top else (AdminConfig(), None)
        )
        if listen is not None and admin.listen == listen:
            # Both servers cannot bind one socket; the default admin port can collide too.
            if admin_listen_node is not None:
                self.report(admin_listen_node, "admin.listen", "same address as listen")
            else:
                self.report(
                    top["listen"], "listen", f"same address as admin.listen (default {listen})"
                )
        timeouts = self.timeouts(top["timeouts"]) if "timeouts" in top else Timeouts()
        limits = self.limits(top["limits"]) if "limits" in top else Limits()
        upstream = self.upstream(top["upstream"]) if "upstream" in top else UpstreamSettings()
        state = self.state(top["state"]) if "state" in top else StateConfig()
        routes = self.routes(top["routes"]) if "routes" in top else None
        if listen is None or routes is None:
            return None
        return Config(
            listen=listen,
            routes=routes,
            admin=admin,
            timeouts=timeouts,
            limits=limits,
            upstream=upstream,
            state=state,
            source=self.source,
        )

    def admin(self, node: Node) -> tuple[AdminConfig, Node | None]:
        """The admin section, plus the node of its `listen` (for the clash check)."""
        section = self.mapping(node, "admin", _ADMIN_KEYS)
        if section is None:
            return AdminConfig(), None
        result = AdminConfig()
        if "listen" in section:
            listen = self.address(section["listen"], "admin.listen")
            if listen is not None:
                result = replace(result, listen=listen)
        if "token_env" in section:
            expected = "expected an environment variable name"
            token_env = self.string(section["token_env"], "admin.token_env", expected, _ENV_RE)
            if token_env is not None:
                result = replace(result, token_env=token_env)
        if "token_file" in section:
            token_file = self.string(section["token_file"], "admin.token_file", "expected a path")
            if token_file is not None:
                result = replace(result, token_file=token_file)
        return result, section.get("listen")

    def timeouts(self, node: Node) -> Timeouts:
        section = self.mapping(node, "timeouts", _TIMEOUT_KEYS)
        values: dict[str, float] = {}
        for key, value_node in (section or {}).items():
            seconds = self.duration(value_node, f"timeouts.{key}")
            if seconds is not None:
                values[key] = seconds
        return Timeouts(**values)

    def limits(self, node: Node) -> Limits:
        section = self.mapping(node, "limits", _LIMIT_KEYS) or {}
        result = Limits()
        for key, minimum, minimum_text in (
            ("max_header_bytes", 1024, "1KiB"),
            ("max_body_bytes", 0, "0"),
            ("compare_memory_bytes", 0, "0"),
        ):
            if key in section:
                size = self.size(section[key], f"limits.{key}", minimum, minimum_text)
                if size is not None:
                    result = replace(result, **{key: size})
        return result

    def upstream(self, node: Node) -> UpstreamSettings:
        section = self.mapping(node, "upstream", _UPSTREAM_KEYS) or {}
        result = UpstreamSettings()
        if "max_idle" in section:
            max_idle = self.integer(section["max_idle"], "upstream.max_idle", 0)
            if max_idle is not None:
                result = UpstreamSettings(max_idle=max_idle, idle_timeout=result.idle_timeout)
        if "idle_timeout" in section:
            idle = self.duration(section["idle_timeout"], "upstream.idle_timeout")
            if idle is not None:
                result = UpstreamSettings(max_idle=result.max_idle, idle_timeout=idle)
        return result

    def state(self, node: Node) -> StateConfig:
        section = self.mapping(node, "state", _STATE_KEYS) or {}
        if "path" in section:
            path = self.string(section["path"], "state.path", "expected a file path")
            if path is not None:
                return StateConfig(path=path)
        return StateConfig()

    def routes(self, node: Node) -> tuple[RouteConfig, ...] | None:
        items = self.sequence(node, "routes", "expected a non-empty list of routes", True)
        if items is None:
            return None
        names: dict[str, str] = {}  # route name -> where it was first defined
        claimed: dict[tuple[str, str], str] = {}  # (host, path_prefix) -> owning route
        routes: list[RouteConfig] = []
        for index, item in enumerate(items):
            route = self.route(item, f"routes[{index}]", names, claimed)
            if route is not None:
                routes.append(route)
        # A partial list is useless to the caller; problems were reported for the rest.
        return tuple(routes) if len(routes) == len(items) else None

    def route(
        self,
        node: Node,
        path: str,
        names: dict[str, str],
        claimed: dict[tuple[str, str], str],
    ) -> RouteConfig | None:
        section = self.mapping(node, path, _ROUTE_KEYS, required=("name", "pools"))
        if section is None:
            return None
        ok = True

        name = None
        if "name" in section:
            name = self.string(section["name"], f"{path}.name", _NAME_EXPECTED, _NAME_RE)
        if name is not None:
            if name in names:
                self.report(
                    section["name"],
                    f"{path}.name",
                    f"duplicate route name {name!r} (first used by {names[name]})",
                )
                ok = False
            else:
                names[name] = f"{path} on line {_line(section['name'])}"

        hosts: tuple[str, ...] | None = ("*",)
        if "hosts" in section:
            hosts = self.hosts(section["hosts"], f"{path}.hosts")

        path_prefix: str | None = "/"
        if "path_prefix" in section:
            path_prefix = self.string(
                section["path_prefix"], f"{path}.path_prefix", "expected a path starting with '/'"
            )
            if path_prefix is not None and not path_prefix.startswith("/"):
                self.report(
                    section["path_prefix"],
                    f"{path}.path_prefix",
                    f"expected a path starting with '/', got {path_prefix!r}",
                )
                path_prefix = None

        # Without a valid name the route is broken anyway; claiming its hosts would only
        # produce confusing overlap reports for the routes after it.
        if name is not None and hosts is not None and path_prefix is not None:
            owner = f"route {name!r} ({path})"
            for host in hosts:
                other = claimed.setdefault((host, path_prefix), owner)
                if other != owner:
                    self.report(
                        node,
                        path,
                        f"host {host!r} with path_prefix {path_prefix!r} "
                        f"is already used by {other}",
                    )
                    ok = False

        pools, pool_names = (
            self.pools(section["pools"], f"{path}.pools") if "pools" in section else (None, None)
        )
        weights = self.weights(node, section, path, pool_names)

        sticky = None
        if "sticky" in section:
            sticky = self.sticky(section["sticky"], f"{path}.sticky", name or "")
            ok = ok and sticky is not None

        rules: list[RuleConfig] = []
        if "rules" in section:
            items = self.sequence(section["rules"], f"{path}.rules", "expected a list of rules")
            ok = ok and items is not None
            for index, item in enumerate(items or []):
                rule = self.rule(item, f"{path}.rules[{index}]", pool_names)
                ok = ok and rule is not None
                if rule is not None:
                    rules.append(rule)

        shadows: tuple[ShadowConfig, ...] = ()
        if "shadows" in section:
            found = self.shadows(section["shadows"], f"{path}.shadows", pool_names, weights, rules)
            ok = ok and found is not None
            shadows = found or ()

        if not ok or name is None or hosts is None or path_prefix is None:
            return None
        if pools is None or weights is None:
            return None
        return RouteConfig(
            name=name,
            hosts=hosts,
            path_prefix=path_prefix,
            pools=tuple(
                PoolConfig(pool_name, endpoints, weights.get(pool_name, 0), health, ejection)
                for pool_name, (endpoints, health, ejection) in pools
            ),
            sticky=sticky,
            rules=tuple(rules),
            shadows=shadows,
        )

    def shadows(
        self,
        node: Node,
        path: str,
        pool_names: list[str] | None,
        weights: dict[str, int] | None,
        rules: list[RuleConfig],
    ) -> tuple[ShadowConfig, ...] | None:
        items = self.sequence(node, path, "expected a list of shadows")
        if items is None:
            return None
        shadows: list[ShadowConfig] = []
        ok = True
        for index, item in enumerate(items):
            item_path = f"{path}[{index}]"
            try:
                value = self._constructor.construct_object(item, deep=True)
                shadow = parse_shadow(value, pool_names)
            except yaml.YAMLError as err:
                self.report(item, item_path, f"cannot read value: {getattr(err, 'problem', err)}")
                ok = False
                continue
            except ShadowSpecError as err:
                self.report(_node_at(item, err.steps), err.path(item_path), err.message)
                ok = False
                continue
            if any(s.pool == shadow.pool for s in shadows):
                self.report(item, f"{item_path}.pool", f"pool {shadow.pool!r} is shadowed twice")
                ok = False
            # A shadow or baseline pool answers only mirrored copies; live traffic sent there
            # would be compared with itself.
            for key, pool in (("pool", shadow.pool), ("baseline", shadow.baseline)):
                if pool is None:
                    continue
                if weights is not None and weights.get(pool, 0) > 0:
                    message = f"pool {pool!r} takes live traffic (weight {weights[pool]}); "
                    self.report(
                        _node_at(item, [key]), f"{item_path}.{key}", message + "give it weight 0"
                    )
                    ok = False
                elif any(rule.pool == pool for rule in rules):
                    message = f"pool {pool!r} takes live traffic (a rule sends requests to it)"
                    self.report(_node_at(item, [key]), f"{item_path}.{key}", message)
                    ok = False
            shadows.append(shadow)
        return tuple(shadows) if ok else None

    def hosts(self, node: Node, path: str) -> tuple[str, ...] | None:
        expected = "expected a non-empty list of strings"
        items = self.sequence(node, path, expected, non_empty=True)
        if items is None:
            return None
        hosts: list[str] = []
        ok = True
        for index, item in enumerate(items):
            host = self.string(item, f"{path}[{index}]", "expected a host name or '*'")
            if host is not None and any(c.isspace() for c in host):
                self.report(item, f"{path}[{index}]", f"expected a host name or '*', got {host!r}")
                host = None
            if host is None:
                ok = False
            # Host matching is case-insensitive; lower-case once here, not per request.
            elif host.lower() not in hosts:
                hosts.append(host.lower())
        return tuple(hosts) if ok else None

    def pools(
        self, node: Node, path: str
    ) -> tuple[list[tuple[str, _PoolParts]] | None, list[str] | None]:
        """(pools in YAML order, or None if any is bad; pool names as written, for checking
        `weights` and `rules` even when a pool's own body is broken)."""
        expected = "expected a mapping of pool name -> {endpoints: [...]}"
        section = self.mapping(node, path, None, expected=expected)
        if section is None:
            return None, None
        if not section:
            self.report(node, path, f"{expected} with at least one pool")
            return None, []
        pools: list[tuple[str, _PoolParts]] | None = []
        for pool_name, pool_node in section.items():
            parts = self.pool(pool_name, pool_node, _sub(path, pool_name))
            if parts is None or pools is None:
                pools = None
            else:
                pools.append((pool_name, parts))
        return pools, list(section)

    def pool(self, pool_name: str, node: Node, path: str) -> _PoolParts | None:
        ok = True
        if not _NAME_RE.fullmatch(pool_name):
            self.report(node, path, f"{_NAME_EXPECTED}, got {pool_name!r}")
            ok = False
        section = self.mapping(node, path, _POOL_KEYS, required=("endpoints",))
        if section is None or "endpoints" not in section:
            return None
        items = self.sequence(
            section["endpoints"],
            f"{path}.endpoints",
            "expected a non-empty list of addresses",
            non_empty=True,
        )
        if items is None:
            return None
        endpoints: list[Address] = []
        for index, item in enumerate(items):
            address = self.address(item, f"{path}.endpoints[{index}]")
            if address is None:
                ok = False
            else:
                endpoints.append(address)
        health = None
        if "health" in section:
            health = self.health(section["health"], f"{path}.health")
            ok = ok and health is not None
        ejection: EjectionConfig | None = EjectionConfig()
        if "ejection" in section:
            ejection = self.ejection(section["ejection"], f"{path}.ejection")
        if not ok or ejection is None:
            return None
        return tuple(endpoints), health, ejection

    def health(self, node: Node, path: str) -> HealthCheckConfig | None:
        section = self.mapping(node, path, _HEALTH_KEYS)
        if section is None:
            return None
        values: dict[str, object] = {}
        ok = True
        for key, value_node in section.items():
            value: object
            if key == "path":
                value = self.string(value_node, f"{path}.path", "expected a path starting with /")
                if isinstance(value, str) and not value.startswith("/"):
                    self.report(
                        value_node,
                        f"{path}.path",
                        f"expected a path starting with /, got {value!r}",
                    )
                    value = None
            elif key in ("interval", "timeout"):
                value = self.duration(value_node, f"{path}.{key}")
            else:
                value = self.integer(value_node, f"{path}.{key}", 1)
            if value is None:
                ok = False
            else:
                values[key] = value
        return HealthCheckConfig(**values) if ok else None  # type: ignore[arg-type]

    def ejection(self, node: Node, path: str) -> EjectionConfig | None:
        section = self.mapping(node, path, _EJECTION_KEYS)
        if section is None:
            return None
        result = EjectionConfig()
        ok = True
        if "consecutive_failures" in section:
            failures = self.integer(
                section["consecutive_failures"], f"{path}.consecutive_failures", 0
            )
            if failures is None:
                ok = False
            else:
                result = replace(result, consecutive_failures=failures)
        if "backoff" in section:
            backoff = self.duration(section["backoff"], f"{path}.backoff")
            if backoff is None:
                ok = False
            else:
                result = replace(result, backoff=backoff)
        return result if ok else None

    def weights(
        self, route_node: Node, section: _Fields, path: str, pool_names: list[str] | None
    ) -> dict[str, int] | None:
        path = f"{path}.weights"
        if "weights" not in section:
            if pool_names is None or not pool_names:
                return None  # the pools problem is already reported
            if len(pool_names) == 1:
                return {pool_names[0]: 100}
            self.report(route_node, path, "required when a route has more than one pool")
            return None
        node = section["weights"]
        given = self.mapping(node, path, None, expected="expected a mapping of pool name -> weight")
        if given is None:
            return None
        weights: dict[str, int] | None = {}
        for pool_name, value_node in given.items():
            sub = _sub(path, pool_name)
            weight = self.integer(value_node, sub, 0, MAX_WEIGHT)
            if pool_names is not None and pool_name not in pool_names:
                self.report(value_node, sub, self.unknown_pool(pool_name, pool_names))
                weight = None
            if weight is None or weights is None:
                weights = None
            else:
                weights[pool_name] = weight
        # Only judge the total when every entry is sound, or it would just repeat them.
        if weights is not None and pool_names is not None and sum(weights.values()) <= 0:
            self.report(node, path, "total must be > 0 (give at least one pool a weight)")
            return None
        return weights

    def unknown_pool(self, pool_name: str, pool_names: list[str]) -> str:
        return f"unknown pool {pool_name!r} (pools: {', '.join(pool_names)})"

    def sticky(self, node: Node, path: str, route_name: str) -> StickyConfig | None:
        section = self.mapping(node, path, _STICKY_KEYS)
        if section is None:
            return None
        ok = True
        header = cookie = None
        if "header" in section:
            header = self.string(
                section["header"], f"{path}.header", "expected a header name", _TOKEN_RE
            )
            ok = ok and header is not None
        if "cookie" in section:
            cookie = self.string(
                section["cookie"], f"{path}.cookie", "expected a cookie name", _TOKEN_RE
            )
            ok = ok and cookie is not None
        salt: str | None = route_name
        if "salt" in section:
            salt = self.string(section["salt"], f"{path}.salt", non_empty=False)
            ok = ok and salt is not None
        if "header" not in section and "cookie" not in section:
            self.report(node, path, "expected at least one of 'header' or 'cookie'")
            return None
        if not ok or salt is None:
            return None
        return StickyConfig(header=header, cookie=cookie, salt=salt)

    def rule(self, node: Node, path: str, pool_names: list[str] | None) -> RuleConfig | None:
        section = self.mapping(node, path, _RULE_KEYS, required=("pool",))
        if section is None:
            return None
        ok = True
        pool = None
        if "pool" in section:
            pool = self.string(section["pool"], f"{path}.pool", "expected a pool name")
            if pool is not None and pool_names is not None and pool not in pool_names:
                self.report(section["pool"], f"{path}.pool", self.unknown_pool(pool, pool_names))
                pool = None
        headers: tuple[tuple[str, str], ...] | None = ()
        cookies: tuple[tuple[str, str], ...] | None = ()
        if "header" in section:
            headers = self.pairs(section["header"], f"{path}.header", "header name")
        if "cookie" in section:
            cookies = self.pairs(section["cookie"], f"{path}.cookie", "cookie name")
        if "header" not in section and "cookie" not in section:
            # A rule with no condition would capture all traffic; that is what weights are for.
            self.report(node, path, "expected at least one of 'header' or 'cookie'")
            ok = False
        if not ok or pool is None or headers is None or cookies is None:
            return None
        return RuleConfig(pool=pool, headers=headers, cookies=cookies)


def _node_at(node: Node, steps: Sequence[str | int]) -> Node:
    """The node at `steps` (keys and indices) below `node`, or the deepest one that exists."""
    for step in steps:
        found = None
        if isinstance(node, MappingNode) and isinstance(step, str):
            found = next((v for k, v in node.value if getattr(k, "value", None) == step), None)
            if found is None:  # an unknown key: point at the key itself
                found = next((k for k, _ in node.value if getattr(k, "value", None) == step), None)
        elif isinstance(node, SequenceNode) and isinstance(step, int) and step < len(node.value):
            found = node.value[step]
        if found is None:
            break
        node = found
    return node


def _yaml_error(source: str, text: str, err: yaml.YAMLError) -> str:
    """One problem line for a YAML syntax error."""
    if isinstance(err, yaml.MarkedYAMLError):
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark is not None else 1
        message = err.problem or err.context or "invalid YAML"
        if err.problem and err.context:
            context_line = err.context_mark.line + 1 if err.context_mark is not None else line
            where = "" if context_line == line else f" started on line {context_line}"
            message = f"{message} ({err.context}{where})"
        return f"{source}:{line}: YAML syntax error: {message}"
    if isinstance(err, yaml.reader.ReaderError):
        line = text.count("\n", 0, err.position) + 1
        return f"{source}:{line}: YAML syntax error: {err.reason} (character #x{err.character:04x})"
    return f"{source}:1: YAML syntax error: {err}"


def parse_config(text: str, source: str = "<string>") -> Config:
    """Parse and validate YAML config text. Raises ConfigError listing every problem."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        raise ConfigError([_yaml_error(source, text, err)]) from None
    if root is None:
        message = "expected a mapping with 'listen' and 'routes', got nothing"
        raise ConfigError([f"{source}:1: {message}"])
    loader = _Loader(source)
    config = loader.config(root)
    if loader.problems or config is None:
        # `config is None` without problems would be a loader bug; never hide it as success.
        raise ConfigError(loader.problems or [f"{source}:1: invalid config"])
    return config


def load_config(path: str) -> Config:
    """Read and parse the config file at `path` (messages name the path as given)."""
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except (OSError, UnicodeDecodeError) as err:
        reason = (err.strerror if isinstance(err, OSError) else None) or str(err)
        raise ConfigError([f"{path}: cannot read config: {reason}"]) from None
    return parse_config(text, source=path)
