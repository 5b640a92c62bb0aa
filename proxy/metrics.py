"""In-process counters, exported by a prometheus_client Collector at scrape time.

The request path only increments plain ints in preallocated objects (no `labels()` per request,
DESIGN.md); the Collector walks them when Prometheus scrapes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Final

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

if TYPE_CHECKING:
    from proxy.router import RoutingTable


# Request duration buckets (seconds): sub-millisecond proxying up to slow upstreams.
DURATION_BUCKETS: Final[tuple[float, ...]] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
STATUS_CLASSES: Final = ("1xx", "2xx", "3xx", "4xx", "5xx")


class PoolStats:
    """Counters of one (route, pool). Survives routing-table swaps (kept by Metrics by name)."""

    __slots__ = (
        "connect_errors",
        "duration_buckets",
        "duration_sum",
        "retries",
        "status",
        "timeouts",
    )

    def __init__(self) -> None:
        self.status = [0, 0, 0, 0, 0, 0]  # index status // 100; index 0 unused
        self.duration_buckets = [0] * (len(DURATION_BUCKETS) + 1)  # last one is +Inf
        self.duration_sum = 0.0
        self.connect_errors = 0
        self.timeouts = 0
        self.retries = 0

    def cumulative_buckets(self) -> list[int]:
        """Requests at or under each bound of DURATION_BUCKETS, then all (+Inf): Prometheus
        `le` counts. (observe() keeps per-bucket counts, one increment per request.)"""
        out: list[int] = []
        total = 0
        for count in self.duration_buckets:
            total += count
            out.append(total)
        return out

    def observe(self, status: int, seconds: float) -> None:
        self.status[status // 100 if 100 <= status < 600 else 5] += 1
        # The bucket of the first bound >= seconds (bisect_left's answer): scanned from the
        # bottom, since proxied requests mostly land in the first few buckets.
        index = 0
        last = len(DURATION_BUCKETS)
        while index < last and seconds > DURATION_BUCKETS[index]:
            index += 1
        self.duration_buckets[index] += 1
        self.duration_sum += seconds


class Metrics:
    """All counters of one proxy process, and the gauges' sources."""

    def __init__(self) -> None:
        self.pools: dict[tuple[str, str], PoolStats] = {}
        self.unrouted = 0  # requests that matched no route (404)
        self.rejected: dict[str, int] = {}  # requests refused before routing, by reason
        self.table: RoutingTable | None = None
        self.open_connections: Callable[[], int] = lambda: 0
        self.idle_upstream_connections: Callable[[], int] = lambda: 0
        self.collectors: list[Collector] = []  # more families (shadows), exported alongside

    def bind(self, table: RoutingTable) -> None:
        """Give every pool of a new table its persistent stats object."""
        for route in table.routes.values():
            for pool in route.pools:
                key = (route.name, pool.name)
                stats = self.pools.get(key)
                if stats is None:
                    stats = self.pools[key] = PoolStats()
                pool.stats = stats
        self.table = table

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def registry(self) -> CollectorRegistry:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(ProxyCollector(self))
        for collector in self.collectors:
            registry.register(collector)
        return registry


class ProxyCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        requests = CounterMetricFamily(
            "pointsman_requests",
            "Requests answered, by route, pool and status class.",
            labels=["route", "pool", "code"],
        )
        duration = HistogramMetricFamily(
            "pointsman_request_duration_seconds",
            "Time from request head received to response end, by route and pool.",
            labels=["route", "pool"],
        )
        connect_errors = CounterMetricFamily(
            "pointsman_upstream_connect_errors",
            "Upstream connections that failed to open.",
            labels=["route", "pool"],
        )
        timeouts = CounterMetricFamily(
            "pointsman_upstream_timeouts", "Upstream requests that timed out.",
            labels=["route", "pool"],
        )  # fmt: skip
        retries = CounterMetricFamily(
            "pointsman_upstream_retries",
            "Requests retried on another endpoint after a connect failure.",
            labels=["route", "pool"],
        )
        for (route, pool), s in list(m.pools.items()):
            for i, cls in enumerate(STATUS_CLASSES, start=1):
                requests.add_metric([route, pool, cls], s.status[i])
            counts = s.cumulative_buckets()
            buckets = [(repr(b), float(c)) for b, c in zip(DURATION_BUCKETS, counts, strict=False)]
            buckets.append(("+Inf", float(counts[-1])))
            duration.add_metric([route, pool], buckets, s.duration_sum)
            connect_errors.add_metric([route, pool], s.connect_errors)
            timeouts.add_metric([route, pool], s.timeouts)
            retries.add_metric([route, pool], s.retries)
        yield from (requests, duration, connect_errors, timeouts, retries)

        unrouted = CounterMetricFamily(
            "pointsman_unrouted_requests", "Requests that matched no route (answered 404)."
        )
        unrouted.add_metric([], m.unrouted)
        yield unrouted
        rejected = CounterMetricFamily(
            "pointsman_rejected_requests",
            "Requests refused before routing (malformed, too large, timed out), by reason.",
            labels=["reason"],
        )
        for reason, count in sorted(m.rejected.items()):
            rejected.add_metric([reason], count)
        yield rejected

        open_conns = GaugeMetricFamily(
            "pointsman_open_connections", "Open downstream (client) connections."
        )
        open_conns.add_metric([], m.open_connections())
        yield open_conns
        idle = GaugeMetricFamily(
            "pointsman_upstream_idle_connections", "Idle keep-alive upstream connections."
        )
        idle.add_metric([], m.idle_upstream_connections())
        yield idle

        weight = GaugeMetricFamily(
            "pointsman_pool_weight", "Configured weight of each pool.", labels=["route", "pool"]
        )
        if m.table is not None:
            for route_obj in m.table.routes.values():
                for pool_obj in route_obj.pools:
                    weight.add_metric([route_obj.name, pool_obj.name], pool_obj.weight)
        yield weight
