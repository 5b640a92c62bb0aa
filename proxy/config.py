"""Config model: frozen slotted dataclasses, filled by the loader (proxy/config_loader.py)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal

from proxy.shadow_config import ShadowConfig
from proxy.values import Expected as _Expected
from proxy.values import parse_duration, parse_size

__all__ = [
    "ADDRESS_EXPECTED",
    "COMPARE_MEMORY_LIMIT",
    "DEFAULT_DNS_REFRESH",
    "DEFAULT_DNS_TIMEOUT",
    "DEFAULT_ETCD_PASSWORD_ENV",
    "DEFAULT_ETCD_TIMEOUT",
    "DEFAULT_LEADER_TTL",
    "DEFAULT_STATE_PATH",
    "MAX_WEIGHT",
    "Address",
    "AdminConfig",
    "Config",
    "ConfigError",
    "DnsSettings",
    "EjectionConfig",
    "EtcdSettings",
    "HealthCheckConfig",
    "Limits",
    "PoolConfig",
    "RouteConfig",
    "RuleConfig",
    "StateConfig",
    "StickyConfig",
    "Timeouts",
    "UpstreamSettings",
    "address_text",
    "is_dns_name",
    "parse_address",
    "parse_duration",
    "parse_size",
    "routes_with_pools",
    "with_pools",
]

# Weights are relative shares and sticky buckets resolve 1/10,000 anyway; a larger value from an
# operator is a typo (and this keeps every sum far inside a 64-bit JSON integer). The control
# API holds changed weights to the same bound.
MAX_WEIGHT: Final = 1_000_000


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
    # downstream: longest silence while a request body is being received (slow bodies)
    body_read: float = 10.0
    idle: float = 60.0  # downstream keep-alive connection with no request in flight
    # downstream: longest a client may leave a response unread while its write buffer is
    # full (slow read): past it the connection is cut and its upstream connection freed.
    client_write: float = 30.0
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
    # Client connections of the host at once; past it a new one is answered 503 and closed.
    # 0: no limit but the process's open-files limit. Each worker takes its share.
    max_connections: int = 0


@dataclass(frozen=True, slots=True)
class Certificate:
    """A listener's certificate: `cert` holds it and its chain, `key` its private key (PEM)."""

    cert: str
    key: str


@dataclass(frozen=True, slots=True)
class ServerTls:
    """TLS termination on a listener. The certificate for a connection is the one whose
    names (subjectAltName DNS entries) match the client's SNI; the first answers the rest."""

    certificates: tuple[Certificate, ...]


@dataclass(frozen=True, slots=True)
class Listener:
    address: Address
    tls: ServerTls | None = None  # None: plain HTTP


@dataclass(frozen=True, slots=True)
class UpstreamTls:
    """A pool's `tls`: its endpoints speak HTTPS."""

    ca: str | None = None  # PEM bundle the endpoints' certificates must chain to; None: system
    sni: str | None = None  # name sent and verified; None: the endpoint's host
    verify: bool = True  # false: any certificate (test setups only)
    client_cert: str | None = None  # mutual TLS: our certificate and key (PEM)
    client_key: str | None = None


@dataclass(frozen=True, slots=True)
class AccessLogConfig:
    """`access_log`: one JSON line per request."""

    path: str  # a file (appended to, reopened on SIGUSR1), or "-" for stderr
    sample: float = 1.0  # share of requests logged, 0 < sample <= 1


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
    tls: UpstreamTls | None = None  # None: plain HTTP to the endpoints
    # Endpoints being drained (control API): no new requests, in-flight ones finish. Never
    # in `endpoints`; set only in the routes the control plane builds from its state.
    draining: tuple[Address, ...] = ()


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


DEFAULT_STATE_PATH: Final = "var/state.json"
DEFAULT_ETCD_PASSWORD_ENV: Final = "POINTSMAN_ETCD_PASSWORD"
# Per etcd call and endpoint: long enough for an fsync-bound etcd under load, short enough
# that a write meets its answer within a deploy script's patience.
DEFAULT_ETCD_TIMEOUT: Final = 2.0
# Longer than an etcd leader election or a loaded event loop's stall, short against a
# rollout's steps.
DEFAULT_LEADER_TTL: Final = 5


@dataclass(frozen=True, slots=True)
class EtcdSettings:
    """`state: {store: etcd, ...}`: the fleet's state in etcd (control/etcd_store.py)."""

    endpoints: tuple[str, ...]  # http(s)://host:port, tried in turn
    prefix: str  # /pointsman/<fleet>; everything of the fleet lives under it
    fleet: str  # the id `meta` must name; default: the prefix's last part
    username: str | None = None
    password_env: str = DEFAULT_ETCD_PASSWORD_ENV  # a secret stays out of the config file
    ca: str | None = None  # PEM file to verify etcd's certificate (https endpoints)
    cert: str | None = None  # client certificate and key (etcd's --client-cert-auth)
    key: str | None = None
    timeout: float = DEFAULT_ETCD_TIMEOUT
    # Seconds a rollout's driver may be silent before another member takes it over.
    leader_ttl: int = DEFAULT_LEADER_TTL


@dataclass(frozen=True, slots=True)
class StateConfig:
    # The file store's document; with etcd, the member's local copy of the last state it
    # applied, served when it starts while etcd is down.
    path: str = DEFAULT_STATE_PATH
    etcd: EtcdSettings | None = None  # None: the file store

    @property
    def store(self) -> str:
        return "file" if self.etcd is None else "etcd"


# Seconds between resolutions of a DNS endpoint, as Envoy's STRICT_DNS dns_refresh_rate.
DEFAULT_DNS_REFRESH: Final = 5.0
# Seconds one resolution may take: well under the refresh, so resolutions never overlap.
DEFAULT_DNS_TIMEOUT: Final = 2.0


@dataclass(frozen=True, slots=True)
class DnsSettings:
    """`dns`: how endpoints written as `name:port` are resolved (proxy/dns.py)."""

    servers: tuple[str, ...] | None = None  # "ip" or "ip:port"; None: /etc/resolv.conf's
    refresh: float = DEFAULT_DNS_REFRESH
    timeout: float = DEFAULT_DNS_TIMEOUT


def is_dns_name(host: str) -> bool:
    """A host that the DNS watcher resolves: a name, not an IP literal, and not `localhost`
    (which the loop resolves from /etc/hosts when it connects, as before)."""
    if host == "localhost":
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return True
    return False


# `worker_cpu_affinity`: "auto" binds each of 2..CPUs workers to a CPU of its own (see
# control/workers.py `worker_cpus`); "off" leaves every worker to the kernel's scheduler.
WorkerCpuAffinity = Literal["auto", "off"]


@dataclass(frozen=True, slots=True)
class Config:
    listeners: tuple[Listener, ...]  # at least one; the first is `listen`
    routes: tuple[RouteConfig, ...]
    admin: AdminConfig = field(default_factory=AdminConfig)
    timeouts: Timeouts = field(default_factory=Timeouts)
    limits: Limits = field(default_factory=Limits)
    upstream: UpstreamSettings = field(default_factory=UpstreamSettings)
    state: StateConfig = field(default_factory=StateConfig)
    workers: int | None = None  # data-plane processes beside the master; None: `auto` (CPUs)
    # Each worker bound to a CPU of its own ("auto") or left to the scheduler ("off").
    worker_cpu_affinity: WorkerCpuAffinity = "auto"
    dns: DnsSettings = field(default_factory=DnsSettings)
    access_log: AccessLogConfig | None = None  # None: no access log
    source: str = "<string>"  # file the config came from, for messages
    # The YAML it was parsed from (workers parse the very same text); not part of equality.
    text: str = field(default="", compare=False, repr=False)

    @property
    def listen(self) -> Address:
        """The first listener's address (a request without Host gets it as its Host)."""
        return self.listeners[0].address

    @property
    def listen_addresses(self) -> tuple[Address, ...]:
        return tuple(listener.address for listener in self.listeners)


# Workers per host at most: past a few per core they only add context switches, and a typo
# (`workers: 80000`) must not fork the machine to death.
MAX_WORKERS: Final = 512


# --- errors ------------------------------------------------------------------------------


class ConfigError(Exception):
    """Every problem found in a config, one `<source>:<line>: <path>: <message>` per entry."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems: list[str] = list(problems)
        super().__init__("\n".join(self.problems))

    def __str__(self) -> str:
        return "\n".join(self.problems)


# --- value helpers -----------------------------------------------------------------------

ADDRESS_EXPECTED = "expected an address like '127.0.0.1:8080' or '[::1]:8080'"
_HOSTNAME_RE = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_PORT_RE = re.compile(r"[0-9]{1,5}")


def parse_address(value: object) -> Address:
    """`Address` from 'host:port', e.g. '127.0.0.1:8080', 'localhost:80' or '[::1]:8080'
    (an IPv6 host is stored without brackets, as socket APIs want it). Port is 1..65535.
    Raises ValueError naming what was expected."""
    if not isinstance(value, str):
        raise _Expected(ADDRESS_EXPECTED, value)
    text = value.strip()
    if text.startswith("["):
        host, bracket, port = text[1:].partition("]:")
        if not bracket:
            raise _Expected(ADDRESS_EXPECTED, value)
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _Expected("expected an IPv6 address inside the brackets", value) from None
    else:
        host, colon, port = text.rpartition(":")
        if not colon or not host:
            raise _Expected(ADDRESS_EXPECTED, value)
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


def address_text(address: Address) -> str:
    """`address` as `parse_address` reads it back: an IPv6 host in brackets."""
    if ":" in address.host:
        return f"[{address.host}]:{address.port}"
    return f"{address.host}:{address.port}"


# One pool as the control plane's state has it: name, endpoints taking requests, draining ones.
PoolEndpoints = tuple[str, tuple[Address, ...], tuple[Address, ...]]


def with_pools(route: RouteConfig, pools: Sequence[PoolEndpoints]) -> RouteConfig:
    """`route` with its pools as the control plane's state has them (pools and endpoints are
    routing state, like weights). A pool the config has keeps its health and ejection
    settings; a pool created at run time takes those of the route's first configured pool
    (a route's pools are versions of one service). Weights come from the state separately."""
    configured = {pool.name: pool for pool in route.pools}
    model = route.pools[0] if route.pools else None
    built = []
    for name, endpoints, draining in pools:
        base = configured.get(name)
        if base is not None:
            built.append(replace(base, endpoints=endpoints, draining=draining))
        elif model is not None:
            built.append(
                PoolConfig(name, endpoints, 0, model.health, model.ejection, model.tls, draining)
            )
        else:
            built.append(PoolConfig(name, endpoints, 0, draining=draining))
    return replace(route, pools=tuple(built))


def routes_with_pools(
    routes: Sequence[RouteConfig],
    pools: Mapping[str, Sequence[Sequence[Any]]],
    resolved: Mapping[str, Sequence[str]] | None = None,
) -> tuple[RouteConfig, ...]:
    """The config's routes with the pools of a state snapshot (the control plane's, or the
    one a worker is sent): route -> [[pool, [endpoint, ...], [draining endpoint, ...]], ...],
    endpoints as `address_text` writes them. A route the snapshot does not name keeps the
    config's pools. An endpoint written as `name:port` stands for the addresses `resolved`
    gives it (the master's DNS watcher); one not resolved (yet) stays a name, which the loop
    resolves when it connects."""
    found = resolved or {}

    def addresses(texts: Sequence[str]) -> tuple[Address, ...]:
        out: dict[Address, None] = {}
        for text in texts:
            for each in found.get(text) or (text,):
                out[parse_address(each)] = None
        return tuple(out)

    out = []
    for route in routes:
        given = pools.get(route.name)
        if given is None:
            out.append(route)
            continue
        parsed = [
            (str(name), addresses(endpoints), addresses(draining))
            for name, endpoints, draining in given
        ]
        out.append(with_pools(route, parsed))
    return tuple(out)
