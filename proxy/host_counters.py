"""One host's counters from its workers' counters.

Each worker counts in its own process (plain ints, proxy/stats.py and shadow_records.py). On
the master's request it sends `worker_counters`: every counter as plain JSON, plus the diff
samples kept since it last sent. The master sums what its live workers sent last with what
retired workers had counted (`add_counts`), and `apply` writes the sums into the master's own
`Metrics` and `Shadows`, so the Prometheus collectors, the rollout analysis and the shadow API
read one host through the code that reads one process. No I/O here.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from itertools import zip_longest
from typing import Any

from proxy.metrics import Metrics
from proxy.shadow import Shadow
from proxy.shadow_records import DiffSample, ShadowStats
from proxy.shadow_registry import Shadows
from proxy.stats import PoolStats

__all__ = ["SampleCursor", "add_counts", "add_samples", "apply", "retired", "worker_counters"]

Counts = dict[str, Any]  # nested: str keys, int / float / list-of-number / Counts values


def add_counts(into: Counts, more: Counts) -> None:
    """Add `more` into `into` key by key: numbers add, lists add item by item (the longer one
    wins its tail), objects recurse. What `into` lacks is copied."""
    for key, value in more.items():
        have = into.get(key)
        if have is None:
            into[key] = copy.deepcopy(value)
        elif isinstance(value, dict) and isinstance(have, dict):
            add_counts(have, value)
        elif isinstance(value, list) and isinstance(have, list):
            into[key] = [a + b for a, b in zip_longest(have, value, fillvalue=0)]
        elif isinstance(value, int | float) and isinstance(have, int | float):
            into[key] = have + value
        else:
            raise ValueError(f"counters disagree in shape at {key!r}")


def retired(counts: Counts) -> Counts:
    """What a worker that has exited still adds to the host: its counters, not its gauges
    (the mirrors it had in flight are gone with it)."""
    kept = copy.deepcopy(counts)
    for by_pool in kept.get("shadows", {}).values():
        for values in by_pool.values():
            values["in_flight"] = 0
    return kept


def _pool_counts(stats: PoolStats) -> Counts:
    return {
        "status": list(stats.status),
        "buckets": list(stats.duration_buckets),
        "sum": stats.duration_sum,
        "connect_errors": stats.connect_errors,
        "tls_errors": stats.tls_errors,
        "timeouts": stats.timeouts,
        "retries": stats.retries,
    }


def _shadow_counts(shadow: Shadow) -> Counts:
    stats = shadow.stats
    noise = shadow.noise
    return {
        "mirrored": stats.mirrored,
        "dropped": dict(stats.dropped),
        "compared": stats.compared,
        "matched": stats.matched,
        "mismatched": stats.mismatched,
        "noise": stats.noise,
        "parts": dict(stats.parts),
        "paths": dict(stats.paths),
        "delta_buckets": list(stats.delta_buckets),
        "delta_sum": stats.delta_sum,
        "noise_model": noise.to_obj(),
        "in_flight": shadow.in_flight,  # a gauge: zeroed when the worker retires
    }


class SampleCursor:
    """Which diff samples of each shadow a worker has sent, so each goes to the master once."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], DiffSample] = {}

    def new_samples(self, key: tuple[str, str], shadow: Shadow) -> list[DiffSample]:
        last = self._last.get(key)
        fresh: list[DiffSample] = []
        for sample in reversed(shadow.samples):
            if sample is last:
                break
            fresh.append(sample)
        fresh.reverse()
        if fresh:
            self._last[key] = fresh[-1]
        return fresh


def worker_counters(metrics: Metrics, shadows: Shadows, cursor: SampleCursor) -> dict[str, Any]:
    """What one worker sends: `counts` (summed across workers), `gauges` (this worker's now)
    and `samples` (new diff samples by route and pool)."""
    pools: Counts = {}
    for (route, pool), stats in list(metrics.pools.items()):
        pools.setdefault(route, {})[pool] = _pool_counts(stats)
    shadow_counts: Counts = {}
    samples: dict[str, dict[str, list[dict[str, object]]]] = {}
    for (route, pool), shadow in list(shadows.by_key.items()):
        shadow_counts.setdefault(route, {})[pool] = _shadow_counts(shadow)
        fresh = cursor.new_samples((route, pool), shadow)
        if fresh:
            samples.setdefault(route, {})[pool] = [s.to_obj() for s in fresh]
    return {
        "counts": {
            "pools": pools,
            "unrouted": metrics.unrouted,
            "rejected": dict(metrics.rejected),
            "shadows": shadow_counts,
        },
        "gauges": {
            "open_connections": metrics.open_connections(),
            "idle_upstream_connections": metrics.idle_upstream_connections(),
            "endpoints_in_flight": metrics.endpoints_in_flight(),
        },
        "samples": samples,
    }


def _items(counts: Counts, key: str) -> Iterator[tuple[str, str, Counts]]:
    for route, by_pool in counts.get(key, {}).items():
        for pool, values in by_pool.items():
            yield route, pool, values


def apply(totals: Counts, metrics: Metrics, shadows: Shadows) -> None:
    """Write host totals (the sum of `counts` of every worker, live and retired) into the
    master's counters, which count nothing themselves."""
    for route, pool, values in _items(totals, "pools"):
        stats = metrics.pools.get((route, pool))
        if stats is None:  # a pool no longer in the table: its series stay, as in one process
            stats = metrics.pools[(route, pool)] = PoolStats()
        stats.status = list(values["status"])
        stats.duration_buckets = list(values["buckets"])
        stats.duration_sum = float(values["sum"])
        stats.connect_errors = int(values["connect_errors"])
        stats.tls_errors = int(values.get("tls_errors", 0))
        stats.timeouts = int(values["timeouts"])
        stats.retries = int(values["retries"])
    metrics.unrouted = int(totals.get("unrouted", 0))
    metrics.rejected = {reason: int(n) for reason, n in totals.get("rejected", {}).items()}
    for route, pool, values in _items(totals, "shadows"):
        shadow = shadows.get(route, pool)
        if shadow is None:
            continue  # removed from the table: one process would have discarded it too
        _apply_shadow(shadow, values)


def _apply_shadow(shadow: Shadow, values: Counts) -> None:
    stats: ShadowStats = shadow.stats
    stats.mirrored = int(values["mirrored"])
    stats.dropped = {reason: int(n) for reason, n in values["dropped"].items()}
    stats.compared = int(values["compared"])
    stats.matched = int(values["matched"])
    stats.mismatched = int(values["mismatched"])
    stats.noise = int(values["noise"])
    stats.parts = {part: int(n) for part, n in values["parts"].items()}
    stats.paths = {path: int(n) for path, n in values["paths"].items()}
    stats.delta_buckets = [int(n) for n in values["delta_buckets"]]
    stats.delta_sum = float(values["delta_sum"])
    shadow.noise.load_obj(values["noise_model"])
    shadow.in_flight = int(values.get("in_flight", 0))


def add_samples(shadows: Shadows, samples: dict[str, dict[str, list[dict[str, Any]]]]) -> None:
    """Keep the diff samples a worker sent in the master's shadow, newest last."""
    for route, by_pool in samples.items():
        for pool, items in by_pool.items():
            shadow = shadows.get(route, pool)
            if shadow is None:
                continue
            for item in items:
                shadow.samples.append(DiffSample.from_obj(item))
