"""In-process counters, exported by a prometheus_client Collector at scrape time.

The request path only increments plain ints in preallocated objects (no `labels()` per request,
DESIGN.md); the Collector walks them when Prometheus scrapes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from proxy.router import RoutingTable
from proxy.stats import DURATION_BUCKETS, STATUS_CLASSES, PoolStats

# Every `reason` of pointsman_rejected_requests_total, exported at 0 from the start: a series
# that appears only with its first event has no rate until its second one (alerts and
# dashboards miss a single burst). tests/test_metrics.py holds it to the reasons the code uses.
REJECT_REASONS: tuple[str, ...] = (
    "ambiguous_framing", "bad_host", "body_timeout", "body_too_large", "client_closed",
    "client_write_timeout", "connection_limit", "header_timeout", "header_too_large",
    "internal_error", "malformed", "unsupported",
)  # fmt: skip


class Metrics:
    """All counters of one proxy process, and the gauges' sources."""

    def __init__(self) -> None:
        self.pools: dict[tuple[str, str], PoolStats] = {}
        self.unrouted = 0  # requests that matched no route (404)
        self.rejected: dict[str, int] = {}  # requests refused before routing, by reason
        self.table: RoutingTable | None = None
        self.open_connections: Callable[[], int] = lambda: 0
        self.idle_upstream_connections: Callable[[], int] = lambda: 0
        # Requests under way per endpoint (address_text), the non-zero ones: what a drain
        # waits for. Set by the server (one process) or the master (summed over workers).
        self.endpoints_in_flight: Callable[[], dict[str, int]] = dict
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
        tls_errors = CounterMetricFamily(
            "pointsman_upstream_tls_errors",
            "Upstream connections whose TLS handshake failed (certificate verification, ...);"
            " also counted in pointsman_upstream_connect_errors.",
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
            tls_errors.add_metric([route, pool], s.tls_errors)
            timeouts.add_metric([route, pool], s.timeouts)
            retries.add_metric([route, pool], s.retries)
        yield from (requests, duration, connect_errors, tls_errors, timeouts, retries)

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
        by_reason = m.rejected
        for reason in sorted(set(REJECT_REASONS).union(by_reason)):
            rejected.add_metric([reason], by_reason.get(reason, 0))
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
