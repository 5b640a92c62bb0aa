"""The host's counters from its workers' counters (proxy/host_counters.py), without sockets:
the sum of what workers send, written into one Metrics, reads as one process that served all
of their requests would."""

from __future__ import annotations

from collections import deque
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.host_counters import Counts, SampleCursor, add_counts, apply, retired, worker_counters
from proxy.metrics import Metrics
from proxy.router import RoutingTable
from proxy.shadow_records import DiffSample
from proxy.shadow_registry import Shadows
from proxy.stats import DURATION_BUCKETS, PoolStats
from tests.conftest import config_for

# A counters tree as a worker sends one: nested objects of ints and int lists.
leaves = st.one_of(st.integers(0, 10**9), st.lists(st.integers(0, 10**6), max_size=6))
trees = st.recursive(
    st.dictionaries(st.sampled_from("abc"), leaves, max_size=3),
    lambda inner: st.dictionaries(st.sampled_from("abcd"), inner, max_size=3),
    max_leaves=12,
)


def same_shape(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return all(same_shape(a[k], b[k]) for k in a.keys() & b.keys())
    return isinstance(a, list) == isinstance(b, list) and isinstance(a, dict) == isinstance(b, dict)


def leaf_total(tree: Any) -> int:
    if isinstance(tree, dict):
        return sum(leaf_total(v) for v in tree.values())
    if isinstance(tree, list):
        return sum(tree)
    return int(tree)


@given(trees, trees)
def test_adding_counts_keeps_every_count_and_does_not_depend_on_order(a: Counts, b: Counts) -> None:
    if not same_shape(a, b):
        with pytest.raises(ValueError, match="disagree in shape"):
            add_counts({}, a) or add_counts(dict(a), b)  # type: ignore[func-returns-value]
        return
    ab: Counts = {}
    add_counts(ab, a)
    add_counts(ab, b)
    ba: Counts = {}
    add_counts(ba, b)
    add_counts(ba, a)
    assert ab == ba
    assert leaf_total(ab) == leaf_total(a) + leaf_total(b)


def test_adding_copies_what_it_takes_so_later_changes_do_not_leak() -> None:
    worker = {"pools": {"shop": {"blue": {"status": [0, 3, 0, 0, 1]}}}}
    host: Counts = {}
    add_counts(host, worker)
    worker["pools"]["shop"]["blue"]["status"][1] = 99
    assert host["pools"]["shop"]["blue"]["status"] == [0, 3, 0, 0, 1]


def test_lists_of_different_lengths_add_item_by_item() -> None:
    host: Counts = {"buckets": [1, 2]}
    add_counts(host, {"buckets": [10, 20, 30]})
    assert host["buckets"] == [11, 22, 30]


def test_a_retired_worker_keeps_its_counters_but_not_its_mirrors_in_flight() -> None:
    counts = {"shadows": {"shop": {"dark": {"compared": 7, "in_flight": 3}}}, "unrouted": 2}
    kept = retired(counts)
    assert kept == {"shadows": {"shop": {"dark": {"compared": 7, "in_flight": 0}}}, "unrouted": 2}
    assert counts["shadows"]["shop"]["dark"]["in_flight"] == 3  # the original is untouched


def worker_metrics(table: RoutingTable, requests: dict[str, list[float]]) -> Metrics:
    """A worker's Metrics after serving `requests` (pool -> durations, all 2xx)."""
    metrics = Metrics()
    metrics.bind(table)
    for pool, durations in requests.items():
        stats = metrics.pools[("shop", pool)]
        for seconds in durations:
            stats.status[2] += 1
            index = next(i for i, bound in enumerate(DURATION_BUCKETS) if seconds <= bound)
            stats.duration_buckets[index] += 1
            stats.duration_sum += seconds
    metrics.reject("malformed")
    return metrics


def test_two_workers_summed_read_as_one_process_that_served_both() -> None:
    config = config_for({"blue": ["127.0.0.1:1"], "green": ["127.0.0.1:2"]})
    table = RoutingTable(config.routes)
    one = worker_metrics(table, {"blue": [0.001, 0.2], "green": [0.004]})
    two = worker_metrics(table, {"blue": [0.03]})
    both = worker_metrics(table, {"blue": [0.001, 0.2, 0.03], "green": [0.004]})
    both.reject("malformed")  # each worker rejected one
    host: Counts = {}
    for metrics in (one, two):
        add_counts(host, worker_counters(metrics, Shadows(), SampleCursor())["counts"])
    master = Metrics()
    master.bind(table)
    apply(host, master, Shadows())

    def view(metrics: Metrics) -> dict[str, Any]:
        pools = {
            key: (s.status, s.duration_buckets, round(s.duration_sum, 9))
            for key, s in metrics.pools.items()
        }
        return {"pools": pools, "rejected": metrics.rejected, "unrouted": metrics.unrouted}

    assert view(master) == view(both)
    assert master.pools[("shop", "blue")].status[2] == 3
    assert isinstance(master.pools[("shop", "green")], PoolStats)


def sample(request_id: str) -> DiffSample:
    return DiffSample(
        at=1.0, request_id=request_id, method="GET", target="/", host="shop", request_headers=(),
        request_body=None, request_body_truncated=False, endpoint="127.0.0.1:1",
        primary_status=200, shadow_status=500, primary_ms=1.0, shadow_ms=2.0,
        differences=(("status", "status", "200", "500", False),),
    )  # fmt: skip


class FakeShadow:
    def __init__(self) -> None:
        self.samples: deque[DiffSample] = deque(maxlen=3)


def test_each_diff_sample_is_sent_once_even_when_the_ring_wraps() -> None:
    shadow = FakeShadow()
    cursor = SampleCursor()
    key = ("shop", "dark")
    sent: list[str] = []

    def send() -> None:
        sent.extend(s.request_id for s in cursor.new_samples(key, shadow))  # type: ignore[arg-type]

    shadow.samples.extend([sample("a"), sample("b")])
    send()
    send()  # nothing new
    shadow.samples.extend([sample("c"), sample("d"), sample("e")])  # a and b fall out
    send()
    assert sent == ["a", "b", "c", "d", "e"]


def test_a_diff_sample_survives_its_trip_to_the_master() -> None:
    original = sample("abc-1")
    assert DiffSample.from_obj(original.to_obj()) == original
