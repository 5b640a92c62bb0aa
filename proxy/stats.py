"""Per-pool request counters: plain ints the request path increments (no labels() calls,
DESIGN.md), read by the Prometheus collector (proxy/metrics.py) and the rollout analysis.

Below both the router, whose pools carry them, and the metrics that export them.
"""

from __future__ import annotations

from typing import Final

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
        "tls_errors",
    )

    def __init__(self) -> None:
        self.status = [0, 0, 0, 0, 0, 0]  # index status // 100; index 0 unused
        self.duration_buckets = [0] * (len(DURATION_BUCKETS) + 1)  # last one is +Inf
        self.duration_sum = 0.0
        self.connect_errors = 0
        self.tls_errors = 0  # of connect_errors: the TLS handshake failed (verification, ...)
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
