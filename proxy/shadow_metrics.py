"""Prometheus families of the shadows (proxy/shadow.py), read at scrape time. Kept apart from
the compiled mirroring code: a Collector subclass cannot be a native class."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from proxy.shadow_records import LATENCY_DELTA_BUCKETS, MAX_COUNTED_PATHS
from proxy.shadow_registry import Shadows

__all__ = ["ShadowCollector"]


class ShadowCollector(Collector):
    """Prometheus families for every shadow, read at scrape time."""

    def __init__(self, shadows: Shadows) -> None:
        self.shadows = shadows

    def collect(self) -> Iterator[Metric]:
        labels = ["route", "shadow"]
        mirrored = CounterMetricFamily(
            "pointsman_shadow_mirrored", "Request copies sent to a shadow.", labels=labels
        )
        dropped = CounterMetricFamily(
            "pointsman_shadow_dropped",
            "Mirrors dropped, by reason (full, body_too_large, timeout, connect_error, "
            "upstream_error, primary_failed).",
            labels=[*labels, "reason"],
        )
        compared = CounterMetricFamily(
            "pointsman_shadow_compared", "Mirrored exchanges compared.", labels=labels
        )
        matched = CounterMetricFamily(
            "pointsman_shadow_matched", "Comparisons with no difference.", labels=labels
        )
        mismatched = CounterMetricFamily(
            "pointsman_shadow_mismatched",
            "Comparisons with a difference that counts (above the noise, with a baseline).",
            labels=labels,
        )
        noise = CounterMetricFamily(
            "pointsman_shadow_noise",
            "Comparisons whose differences were all noise (seen against the baseline too).",
            labels=labels,
        )
        parts = CounterMetricFamily(
            "pointsman_shadow_mismatch_parts",
            "Mismatches by differing part (status, header, body).",
            labels=[*labels, "part"],
        )
        paths = CounterMetricFamily(
            "pointsman_shadow_mismatch_paths",
            f"Mismatches by differing path (indices as [*]; past {MAX_COUNTED_PATHS}: other).",
            labels=[*labels, "path"],
        )
        delta = HistogramMetricFamily(
            "pointsman_shadow_latency_delta_seconds",
            "Shadow minus primary latency on the same request (negative: shadow faster).",
            labels=labels,
        )
        in_flight = GaugeMetricFamily(
            "pointsman_shadow_in_flight", "Mirrors in flight.", labels=labels
        )
        for (route, pool), shadow in list(self.shadows.by_key.items()):
            s = shadow.stats
            key = [route, pool]
            mirrored.add_metric(key, s.mirrored)
            for reason, count in s.dropped.items():
                dropped.add_metric([*key, reason], count)
            compared.add_metric(key, s.compared)
            matched.add_metric(key, s.matched)
            mismatched.add_metric(key, s.mismatched)
            noise.add_metric(key, s.noise)
            for part, count in s.parts.items():
                parts.add_metric([*key, part], count)
            for path, count in list(s.paths.items()):
                paths.add_metric([*key, path], count)
            buckets: list[tuple[str, float]] = []
            acc = 0
            for bound, count in zip(LATENCY_DELTA_BUCKETS, s.delta_buckets, strict=False):
                acc += count
                buckets.append((repr(bound), acc))
            buckets.append(("+Inf", acc + s.delta_buckets[-1]))
            delta.add_metric(key, buckets, s.delta_sum)
            in_flight.add_metric(key, shadow.in_flight)
        yield from (mirrored, dropped, compared, matched, mismatched, noise, parts, paths, delta)
        yield in_flight
