"""The config loader: YAML text to a validated Config (proxy/config.py).

The loader walks the composed YAML node tree itself (rather than `yaml.safe_load`)
so that every problem can be reported as `<source>:<line>: <key path>: <message>`,
and it collects all problems before raising one `ConfigError`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import fields, replace
from typing import Final

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from proxy.config import (
    DEFAULT_ETCD_PASSWORD_ENV,
    DEFAULT_ETCD_TIMEOUT,
    DEFAULT_LEADER_TTL,
    DEFAULT_STATE_PATH,
    MAX_WEIGHT,
    MAX_WORKERS,
    AccessLogConfig,
    Address,
    AdminConfig,
    Certificate,
    Config,
    ConfigError,
    DnsSettings,
    EjectionConfig,
    EtcdSettings,
    HealthCheckConfig,
    Limits,
    Listener,
    PoolConfig,
    RouteConfig,
    RuleConfig,
    ServerTls,
    StateConfig,
    StickyConfig,
    Timeouts,
    UpstreamSettings,
    UpstreamTls,
    WorkerCpuAffinity,
    parse_address,
)
from proxy.shadow_config import ShadowConfig, ShadowSpecError, parse_shadow
from proxy.tls import certificate_problem, upstream_tls_problem
from proxy.values import Expected
from proxy.yaml_nodes import (
    TOKEN_RE,
    Fields,
    NodeReader,
    line_of,
    sub_path,
)

__all__ = ["load_config", "parse_config"]

_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
_NAME_EXPECTED = "expected a name of letters, digits, '_', '.' and '-'"
_ENV_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


_TOP_KEYS = (
    "listen", "admin", "workers", "worker_cpu_affinity", "timeouts", "limits", "upstream",
    "state", "dns", "access_log", "routes",
)  # fmt: skip
_LISTENER_KEYS = ("address", "tls")
_SERVER_TLS_KEYS = ("cert", "key", "certificates")
_CERTIFICATE_KEYS = ("cert", "key")
_UPSTREAM_TLS_KEYS = ("ca", "sni", "verify", "client_cert", "client_key")
_ACCESS_LOG_KEYS = ("path", "sample")
_DNS_KEYS = ("servers", "refresh", "timeout")
_ADMIN_KEYS = ("listen", "token_env", "token_file")
_TIMEOUT_KEYS = tuple(f.name for f in fields(Timeouts))
_LIMIT_KEYS = ("max_header_bytes", "max_body_bytes", "compare_memory_bytes", "max_connections")
_UPSTREAM_KEYS = ("max_idle", "idle_timeout")
_STATE_KEYS = (
    "store", "path", "endpoints", "prefix", "fleet", "username", "password_env",
    "ca", "cert", "key", "timeout", "leader_ttl",
)  # fmt: skip
_ETCD_ONLY_KEYS = _STATE_KEYS[2:]
_ENDPOINT_RE = re.compile(r"https?://[^/\s]+")
_PREFIX_RE = re.compile(r"(/[A-Za-z0-9_.-]+)+")
_ROUTE_KEYS = ("name", "hosts", "path_prefix", "pools", "weights", "sticky", "rules", "shadows")
_POOL_KEYS = ("endpoints", "health", "ejection", "tls")
_HEALTH_KEYS = ("path", "interval", "timeout", "healthy_threshold", "unhealthy_threshold")
_EJECTION_KEYS = ("consecutive_failures", "backoff")
_PoolParts = tuple[
    tuple[Address, ...], HealthCheckConfig | None, EjectionConfig, UpstreamTls | None
]
_STICKY_KEYS = ("header", "cookie", "salt")
_RULE_KEYS = ("pool", "header", "cookie")


class ConfigLoader(NodeReader):
    """One pass over a composed config document (see NodeReader)."""

    def config(self, root: Node) -> Config | None:
        top = self.mapping(root, "", _TOP_KEYS, required=("listen", "routes"))
        if top is None:
            return None
        listeners = self.listeners(top["listen"]) if "listen" in top else None
        admin, admin_listen_node = (
            self.admin(top["admin"]) if "admin" in top else (AdminConfig(), None)
        )
        if listeners is not None and admin.listen in [item.address for item in listeners]:
            # Both servers cannot bind one socket; the default admin port can collide too.
            if admin_listen_node is not None:
                self.report(admin_listen_node, "admin.listen", "same address as listen")
            else:
                self.report(
                    top["listen"], "listen",
                    f"same address as admin.listen (default {admin.listen})",
                )  # fmt: skip
        timeouts = self.timeouts(top["timeouts"]) if "timeouts" in top else Timeouts()
        limits = self.limits(top["limits"]) if "limits" in top else Limits()
        upstream = self.upstream(top["upstream"]) if "upstream" in top else UpstreamSettings()
        state = self.state(top["state"]) if "state" in top else StateConfig()
        workers = self.workers(top["workers"]) if "workers" in top else None
        affinity: WorkerCpuAffinity = "auto"
        if "worker_cpu_affinity" in top:
            affinity = self.worker_cpu_affinity(top["worker_cpu_affinity"]) or affinity
        dns = self.dns(top["dns"]) if "dns" in top else DnsSettings()
        access_log = self.access_log(top["access_log"]) if "access_log" in top else None
        routes = self.routes(top["routes"]) if "routes" in top else None
        if listeners is None or routes is None:
            return None
        return Config(
            listeners=listeners,
            access_log=access_log,
            routes=routes,
            admin=admin,
            timeouts=timeouts,
            limits=limits,
            upstream=upstream,
            state=state,
            workers=workers,
            worker_cpu_affinity=affinity,
            dns=dns,
            source=self.source,
        )

    def listeners(self, node: Node) -> tuple[Listener, ...] | None:
        """`listen`: one listener or a list of them, each an address or {address, tls}."""
        if not isinstance(node, SequenceNode):
            listener = self.listener(node, "listen")
            return None if listener is None else (listener,)
        items = self.sequence(node, "listen", "expected a non-empty list of listeners", True)
        found: list[Listener] = []
        seen: dict[Address, int] = {}
        for index, item in enumerate(items or []):
            listener = self.listener(item, f"listen[{index}]")
            if listener is None:
                continue
            if listener.address in seen:
                self.report(item, f"listen[{index}]",
                            f"same address as listen[{seen[listener.address]}]")  # fmt: skip
                continue
            seen[listener.address] = index
            found.append(listener)
        return tuple(found) if items and len(found) == len(items) else None

    def listener(self, node: Node, path: str) -> Listener | None:
        if not isinstance(node, MappingNode):
            address = self.address(node, path)
            return None if address is None else Listener(address)
        section = self.mapping(node, path, _LISTENER_KEYS, required=("address",))
        if section is None or "address" not in section:
            return None
        address = self.address(section["address"], f"{path}.address")
        tls = self.server_tls(section["tls"], f"{path}.tls") if "tls" in section else None
        if address is None or ("tls" in section and tls is None):
            return None
        return Listener(address, tls)

    def server_tls(self, node: Node, path: str) -> ServerTls | None:
        """{cert, key} or {certificates: [{cert, key}, ...]}; each pair is loaded here, so a
        missing file or a key that does not fit fails `check`, start and reload alike."""
        section = self.mapping(node, path, _SERVER_TLS_KEYS)
        if section is None:
            return None
        pairs: list[tuple[Node, Fields, str]] = []
        if "certificates" in section:
            if "cert" in section or "key" in section:
                self.report(node, path, "expected either cert and key, or certificates")
                return None
            items = self.sequence(section["certificates"], f"{path}.certificates",
                                  "expected a non-empty list of {cert, key}", True)  # fmt: skip
            for index, item in enumerate(items or []):
                where = f"{path}.certificates[{index}]"
                fields_ = self.mapping(item, where, _CERTIFICATE_KEYS, required=_CERTIFICATE_KEYS)
                if fields_ is None:
                    return None
                pairs.append((item, fields_, where))
            if not items:
                return None
        else:
            pairs.append((node, section, path))
        certificates: list[Certificate] = []
        for item, fields_, where in pairs:
            if "cert" not in fields_ or "key" not in fields_:
                self.report(item, where, "expected cert and key (PEM files)")
                continue
            cert = self.string(fields_["cert"], f"{where}.cert", "expected a PEM file path")
            key = self.string(fields_["key"], f"{where}.key", "expected a PEM file path")
            if cert is None or key is None:
                continue
            problem = certificate_problem(cert, key)
            if problem is not None:
                self.report(fields_["cert"], f"{where}.cert", problem)
                continue
            certificates.append(Certificate(cert, key))
        if len(certificates) != len(pairs):
            return None
        return ServerTls(tuple(certificates))

    def upstream_tls(self, node: Node, path: str) -> UpstreamTls | None:
        section = self.mapping(node, path, _UPSTREAM_TLS_KEYS)
        if section is None:
            return None
        ok = True
        files: dict[str, str | None] = {}
        for key in ("ca", "client_cert", "client_key"):
            if key in section:
                value = self.string(section[key], f"{path}.{key}", "expected a PEM file path")
                ok = ok and value is not None
                files[key] = value
        sni = None
        if "sni" in section:
            sni = self.string(section["sni"], f"{path}.sni", "expected a host name")
            ok = ok and sni is not None
        verify = True
        if "verify" in section:
            flag = self.converted(section["verify"], f"{path}.verify", _boolean,
                                  "expected true or false")  # fmt: skip
            ok = ok and flag is not None
            verify = bool(flag)
        if ("client_cert" in section) != ("client_key" in section):
            self.report(node, path, "client_cert and client_key go together")
            return None
        tls = UpstreamTls(
            ca=files.get("ca"), sni=sni, verify=verify,
            client_cert=files.get("client_cert"), client_key=files.get("client_key"),
        )  # fmt: skip
        if not ok:
            return None
        problem = upstream_tls_problem(tls)
        if problem is not None:
            self.report(node, path, problem)
            return None
        return tls

    def access_log(self, node: Node) -> AccessLogConfig | None:
        """`access_log: off`, or {path, sample}."""
        if isinstance(node, ScalarNode) and node.value == "off":
            return None
        section = self.mapping(node, "access_log", _ACCESS_LOG_KEYS, required=("path",),
                               expected="expected off or a mapping with path")  # fmt: skip
        if section is None or "path" not in section:
            return None
        path = self.string(section["path"], "access_log.path", "expected a file path or '-'")
        sample = 1.0
        if "sample" in section:
            value = self.converted(section["sample"], "access_log.sample", _sample,
                                   _SAMPLE_EXPECTED)  # fmt: skip
            if value is None:
                return None
            sample = value
        return None if path is None else AccessLogConfig(path, sample)

    def dns(self, node: Node) -> DnsSettings:
        section = self.mapping(node, "dns", _DNS_KEYS) or {}
        result = DnsSettings()
        if "servers" in section:
            expected = "expected a non-empty list of name servers as 'ip' or 'ip:port'"
            items = self.sequence(section["servers"], "dns.servers", expected, True) or []
            servers: list[str] = []
            for index, item in enumerate(items):
                server = self.converted(
                    item, f"dns.servers[{index}]", _name_server, "expected 'ip' or 'ip:port'"
                )
                if server is not None:
                    servers.append(server)
            if servers and len(servers) == len(items):
                result = replace(result, servers=tuple(servers))
        if "refresh" in section:
            refresh = self.duration(section["refresh"], "dns.refresh")
            result = replace(result, refresh=refresh or result.refresh)
        if "timeout" in section:
            timeout = self.duration(section["timeout"], "dns.timeout")
            result = replace(result, timeout=timeout or result.timeout)
        if result.timeout >= result.refresh:
            where = section.get("timeout") or section.get("refresh") or node
            self.report(where, "dns.timeout", "expected a timeout shorter than dns.refresh")
        return result

    def workers(self, node: Node) -> int | None:
        """`auto` (None: as many as the CPUs this process may use) or 1..MAX_WORKERS."""
        expected = f"expected 'auto' or a number of workers in 1..{MAX_WORKERS}"

        def convert(value: object) -> int:
            if value == "auto":
                return 0  # stands for None below: converted() takes None as "reported"
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or not 1 <= value <= MAX_WORKERS
            ):
                raise Expected(expected, value)
            return value

        count = self.converted(node, "workers", convert, expected)
        return count or None

    def worker_cpu_affinity(self, node: Node) -> WorkerCpuAffinity | None:
        """`auto` (each worker on a CPU of its own) or `off` (YAML reads a bare off as false)."""
        expected = "expected 'auto' or 'off'"

        def convert(value: object) -> WorkerCpuAffinity:
            if value == "auto":
                return "auto"
            if value is False or value == "off":
                return "off"
            raise Expected(expected, value)

        return self.converted(node, "worker_cpu_affinity", convert, expected)

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
        if "max_connections" in section:
            count = self.integer(section["max_connections"], "limits.max_connections", 0)
            if count is not None:
                result = replace(result, max_connections=count)
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
        path = DEFAULT_STATE_PATH
        if "path" in section:
            path = self.string(section["path"], "state.path", "expected a file path") or path
        store = "file"
        if "store" in section:
            store = self.string(section["store"], "state.store", "expected file or etcd",
                                re.compile("file|etcd")) or "file"  # fmt: skip
        if store == "file":
            for key in _ETCD_ONLY_KEYS:
                if key in section:
                    self.report(section[key], f"state.{key}", "only with store: etcd")
            return StateConfig(path=path)
        return StateConfig(path=path, etcd=self.etcd_settings(node, section))

    def etcd_settings(self, node: Node, section: Fields) -> EtcdSettings | None:
        endpoints: list[str] = []
        if "endpoints" not in section:
            self.report(node, "state.endpoints", "required key missing (with store: etcd)")
        else:
            expected = "expected a non-empty list of http(s)://host:port"
            items = self.sequence(section["endpoints"], "state.endpoints", expected, True) or []
            for index, item in enumerate(items):
                url = self.string(item, f"state.endpoints[{index}]",
                                  "expected http(s)://host:port", _ENDPOINT_RE)  # fmt: skip
                if url is not None:
                    endpoints.append(url)
            if len(endpoints) != len(items):
                endpoints = []
        prefix = None
        if "prefix" not in section:
            self.report(node, "state.prefix", "required key missing (with store: etcd)")
        else:
            expected = "expected a key prefix such as /pointsman/shop"
            prefix = self.string(section["prefix"], "state.prefix", expected, _PREFIX_RE)
        fleet = prefix.rsplit("/", 1)[-1] if prefix else None
        if "fleet" in section:
            fleet = self.string(section["fleet"], "state.fleet", _NAME_EXPECTED, _NAME_RE)
        text: dict[str, str | None] = {}
        for key in ("username", "ca", "cert", "key"):
            if key in section:
                text[key] = self.string(section[key], f"state.{key}")
        password_env = DEFAULT_ETCD_PASSWORD_ENV
        if "password_env" in section:
            expected = "expected an environment variable name"
            env = self.string(section["password_env"], "state.password_env", expected, _ENV_RE)
            password_env = env or password_env
        if ("cert" in section) != ("key" in section):
            self.report(node, "state.cert", "cert and key go together (client TLS)")
        timeout = DEFAULT_ETCD_TIMEOUT
        if "timeout" in section:
            timeout = self.duration(section["timeout"], "state.timeout") or timeout
        leader_ttl = DEFAULT_LEADER_TTL
        if "leader_ttl" in section:
            ttl = self.integer(section["leader_ttl"], "state.leader_ttl", 2, 300)
            leader_ttl = ttl or leader_ttl
        if not endpoints or prefix is None or fleet is None:
            return None
        return EtcdSettings(
            endpoints=tuple(endpoints), prefix=prefix, fleet=fleet,
            username=text.get("username"), password_env=password_env,
            ca=text.get("ca"), cert=text.get("cert"), key=text.get("key"), timeout=timeout,
            leader_ttl=leader_ttl,
        )  # fmt: skip

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
                names[name] = f"{path} on line {line_of(section['name'])}"

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
                PoolConfig(pool_name, endpoints, weights.get(pool_name, 0), health, ejection, tls)
                for pool_name, (endpoints, health, ejection, tls) in pools
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
            parts = self.pool(pool_name, pool_node, sub_path(path, pool_name))
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
        tls = None
        if "tls" in section:
            tls = self.upstream_tls(section["tls"], f"{path}.tls")
            ok = ok and tls is not None
        if not ok or ejection is None:
            return None
        return tuple(endpoints), health, ejection, tls

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
        self, route_node: Node, section: Fields, path: str, pool_names: list[str] | None
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
            sub = sub_path(path, pool_name)
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
                section["header"], f"{path}.header", "expected a header name", TOKEN_RE
            )
            ok = ok and header is not None
        if "cookie" in section:
            cookie = self.string(
                section["cookie"], f"{path}.cookie", "expected a cookie name", TOKEN_RE
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


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise Expected("expected true or false", value)
    return value


_SAMPLE_EXPECTED: Final = "expected a share of requests in (0, 1], e.g. 0.1"


def _sample(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise Expected(_SAMPLE_EXPECTED, value)
    return float(value)


def _name_server(value: object) -> str:
    """A name server as `ip` or `ip:port` (an IP address: a name would need a resolver)."""
    text = str(value) if isinstance(value, str) else ""
    try:
        ipaddress.ip_address(text.strip("[]"))
        return text
    except ValueError:
        pass
    try:
        address = parse_address(text)
    except ValueError:
        raise Expected("expected 'ip' or 'ip:port'", value) from None
    try:
        ipaddress.ip_address(address.host)
    except ValueError:
        raise Expected("expected an IP address, not a name", value) from None
    return text


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


# libyaml's composer when PyYAML was built with it (the wheels are): 8 ms instead of 74 ms
# for 100 routes, and every reload and every worker start parses the whole file.
_YAML_LOADER: Final = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_config(text: str, source: str = "<string>") -> Config:
    """Parse and validate YAML config text. Raises ConfigError listing every problem."""
    try:
        root = yaml.compose(text, Loader=_YAML_LOADER)
    except yaml.YAMLError as err:
        raise ConfigError([_yaml_error(source, text, err)]) from None
    if root is None:
        message = "expected a mapping with 'listen' and 'routes', got nothing"
        raise ConfigError([f"{source}:1: {message}"])
    loader = ConfigLoader(source)
    config = loader.config(root)
    if loader.problems or config is None:
        # `config is None` without problems would be a loader bug; never hide it as success.
        raise ConfigError(loader.problems or [f"{source}:1: invalid config"])
    return replace(config, text=text)


def load_config(path: str) -> Config:
    """Read and parse the config file at `path` (messages name the path as given)."""
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except (OSError, UnicodeDecodeError) as err:
        reason = (err.strerror if isinstance(err, OSError) else None) or str(err)
        raise ConfigError([f"{path}: cannot read config: {reason}"]) from None
    return parse_config(text, source=path)
