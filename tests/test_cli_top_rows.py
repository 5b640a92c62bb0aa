"""`pointsman top`'s pure part (control/cli/top_rows.py): two reads of the admin API turned into
rows: requests/s, 5xx share, p99 from bucket deltas, endpoints, shadows, a rollout's line."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from control.cli.top_rows import (
    RouteRead,
    ShadowRow,
    Snapshot,
    endpoints_text,
    frame,
    frame_obj,
    ms_text,
    percent_text,
    rate_text,
    rollout_line,
    route_view,
    shadow_text,
)
from control.rollout.analysis import Counters, MismatchCounters, PoolCounters
from proxy.stats import DURATION_BUCKETS

BOUNDS = DURATION_BUCKETS


def cumulative(per_bucket: list[int]) -> tuple[int, ...]:
    out, total = [], 0
    for count in per_bucket:
        total += count
        out.append(total)
    return tuple(out)


def pool_counters(per_bucket: list[int], errors: int = 0) -> PoolCounters:
    buckets = cumulative(per_bucket)
    return PoolCounters(buckets[-1], errors, buckets)


def idle() -> list[int]:
    return [0] * (len(BOUNDS) + 1)


def route_obj(**pools: tuple[int, list[str]]) -> dict[str, Any]:
    """A route object as GET /v1/routes answers it: pool -> (weight, endpoint states)."""
    return {
        "name": "shop",
        "version": 3,
        "live": None,
        "weights": {name: weight for name, (weight, _) in pools.items()},
        "pools": {
            name: {
                "weight": weight,
                "endpoints": [
                    {"address": f"127.0.0.1:{9000 + i}", "state": state,
                     "healthy": state == "up", "in_flight": 0}
                    for i, state in enumerate(states)
                ],
            }
            for name, (weight, states) in pools.items()
        },
        "shadows": [],
    }  # fmt: skip


def read(
    at: float, pools: dict[str, PoolCounters], route: dict[str, Any] | None = None, **kw: Any
) -> RouteRead:
    route = route or route_obj(blue=(90, ["up", "up"]), green=(10, ["up"]))
    return RouteRead(route, at, Counters(pools=pools, bounds=BOUNDS), **kw)


def test_rates_5xx_and_p99_come_from_the_difference_between_two_reads() -> None:
    before = read(100.0, {"blue": pool_counters([100] + [0] * 15, errors=3)})
    # 2 s later: 200 more blue requests, all in (5 ms, 10 ms], 10 of them 5xx; green's first 40.
    blue_after = [100, 0, 0, 0, 200] + [0] * 11
    green = [0, 0, 0, 0, 0, 40] + [0] * 10
    after = read(102.0, {"blue": pool_counters(blue_after, 13), "green": pool_counters(green, 4)})
    view = route_view(before, after)
    blue, green_row = view.pools
    assert (blue.pool, blue.weight, blue.rps, blue.error_rate) == ("blue", 90, 100.0, 0.05)
    assert blue.p99_ms == pytest.approx(5 + 5 * 0.99)  # inside the (5, 10] ms bucket
    assert (green_row.pool, green_row.weight, green_row.rps) == ("green", 10, 20.0)
    assert green_row.error_rate == 0.1
    assert view.rps == 120.0
    assert view.error_rate == pytest.approx(14 / 240)


def test_the_first_read_has_no_rates_and_a_quiet_window_no_5xx_share() -> None:
    first = read(1.0, {"blue": pool_counters([5] + [0] * 15)})
    view = route_view(None, first)
    assert [(r.rps, r.error_rate, r.p99_ms) for r in view.pools] == [(None, None, None)] * 2
    assert view.rps is None
    quiet = route_view(first, read(2.0, {"blue": pool_counters([5] + [0] * 15)}))
    assert [(r.rps, r.error_rate, r.p99_ms) for r in quiet.pools] == [(0.0, None, None)] * 2
    assert (quiet.rps, quiet.error_rate) == (0.0, None)


def test_counters_that_went_back_count_from_zero_and_unreadable_counters_show_nothing() -> None:
    before = read(10.0, {"blue": pool_counters([500] + [0] * 15, errors=50)})
    restarted = read(11.0, {"blue": pool_counters([30] + [0] * 15, errors=3)})
    assert route_view(before, restarted).pools[0].rps == 30.0
    assert route_view(before, restarted).pools[0].error_rate == 0.1
    failed = RouteRead(before.route, None, None, problem="counters: 500 internal error")
    view = route_view(before, failed)
    assert all(row.rps is None for row in view.pools)
    assert view.problem == "counters: 500 internal error"


def test_endpoints_count_up_of_total_and_draining() -> None:
    route = route_obj(blue=(100, ["up", "down", "draining"]), green=(0, []))
    blue, green = route_view(None, read(1.0, {}, route)).pools
    assert (blue.up, blue.total, blue.draining) == (1, 3, 1)
    assert endpoints_text(blue) == "1/3 up, 1 draining"
    assert endpoints_text(green) == "0/0 up"


def test_a_shadow_shows_its_window_and_overall_mismatch_share() -> None:
    route = route_obj(blue=(100, ["up"]), dark=(0, ["up"]))
    before = read(0.0, {}, route, shadows={"dark": MismatchCounters(100, 10)})
    after = read(2.0, {}, route, shadows={"dark": MismatchCounters(140, 30)})
    blue, dark = route_view(before, after).pools
    assert blue.shadow is None
    assert dark.shadow == ShadowRow(compared_per_s=20.0, mismatch_rate=0.5, overall_rate=30 / 140)
    assert shadow_text(dark.shadow) == "50.0% of 20.0/s (21.4% overall)"
    first = route_view(None, before).pools[1].shadow
    assert shadow_text(first) == "10.0% overall"


ROLLOUT = {
    "phase": "running", "candidate": "green", "stable": "blue", "steps": [10, 50, 100],
    "step": 1, "weights": {"blue": 50, "green": 50}, "step_interval": 30,
    "time_in_step": 12.04, "history": [],
    "last_analysis": {
        "outcome": "pass", "at": 5.0, "summary": "",
        "candidate": {"requests": 49, "error_rate": 0.0, "p99_ms": 2.48},
        "stable": {"requests": 427, "error_rate": 0.0, "p99_ms": 2.49},
    },
}  # fmt: skip


def test_a_running_rollout_is_one_line_and_a_finished_one_none() -> None:
    assert rollout_line(ROLLOUT) == (
        "canary green against blue: running, step 2/3 green=50 blue=50, 12.0s/30s in step; "
        "analysis pass: candidate 49 req, 0.0% errors, p99 2.48 ms; "
        "stable 427 req, 0.0% errors, p99 2.49 ms"
    )
    fresh = rollout_line({**ROLLOUT, "step": 0, "last_analysis": None})
    assert fresh is not None and fresh.endswith(
        "step 1/3 green=50 blue=50, 12.0s/30s in step; no analysis yet"
    )
    for phase in ("promoted", "failed", "aborted"):
        assert rollout_line({**ROLLOUT, "phase": phase}) is None
    assert rollout_line(None) is None


def test_a_frame_matches_routes_by_name_and_names_its_window() -> None:
    one = Snapshot(4, (read(1.0, {"blue": pool_counters([1] + [0] * 15)}),))
    two = Snapshot(5, (read(2.0, {"blue": pool_counters([11] + [0] * 15)}),))
    shown = frame(one, two)
    assert (shown.version, shown.seconds, shown.routes[0].rps) == (5, 1.0, 10.0)
    assert frame_obj(shown)["routes"][0]["pools"][0]["rps"] == 10.0
    assert frame(None, two).seconds is None


def test_cells() -> None:
    assert [rate_text(v) for v in (None, 0.0, 0.04, 12.34, 1234.5)] == [
        "-", "0", "0.0", "12.3", "1,234"
    ]  # fmt: skip
    assert [percent_text(v) for v in (None, 0.0, 0.0004, 0.0625, 1.0)] == [
        "-", "0.0%", "<0.1%", "6.2%", "100.0%"
    ]  # fmt: skip
    assert [ms_text(v) for v in (None, 2.484, 21.25, 1234.0)] == ["-", "2.48", "21.2", "1,234"]
    assert shadow_text(None) == ""


# --- the property: p99 from bucket deltas ---------------------------------------------------

per_bucket = st.lists(
    st.integers(min_value=0, max_value=10_000), min_size=len(BOUNDS) + 1, max_size=len(BOUNDS) + 1
)


@given(
    base=per_bucket,
    delta=per_bucket,
    errors=st.integers(0, 10_000),
    seconds=st.floats(0.05, 600, allow_nan=False),
)
def test_the_window_is_the_delta_whatever_the_counts(
    base: list[int], delta: list[int], errors: int, seconds: float
) -> None:
    """Whatever came before, the window's rate, 5xx share and p99 are those of the requests
    between the reads: the p99 lies in the bucket that holds the 99th percentile's rank."""
    total = sum(delta)
    errors = min(errors, total)
    before = read(50.0, {"blue": pool_counters(base, errors=sum(base) // 2)})
    after_buckets = [a + b for a, b in zip(base, delta, strict=True)]
    after = read(50.0 + seconds, {"blue": pool_counters(after_buckets, sum(base) // 2 + errors)})
    row = route_view(before, after).pools[0]
    assert row.rps == pytest.approx(total / seconds)
    if total == 0:
        assert (row.error_rate, row.p99_ms) == (None, None)
        return
    assert row.error_rate == pytest.approx(errors / total)
    assert row.p99_ms is not None and math.isfinite(row.p99_ms)
    rank = 0.99 * total
    running, index = 0, 0
    for index, count in enumerate(delta):  # noqa: B007 - the bucket holding the rank
        running += count
        if running >= rank:
            break
    upper = BOUNDS[min(index, len(BOUNDS) - 1)] * 1000
    lower = 0.0 if index == 0 else BOUNDS[min(index, len(BOUNDS)) - 1] * 1000
    assert lower - 1e-9 <= row.p99_ms <= upper + 1e-9


@given(st.lists(st.integers(0, 1000), min_size=2, max_size=8))
def test_p99_grows_with_slower_requests(counts: list[int]) -> None:
    """Moving requests to a slower bucket never lowers the p99."""
    fast = [*counts, *([0] * (len(BOUNDS) + 1 - len(counts)))]
    slow = [0, *fast[:-1]]
    slow[-1] += fast[-1]
    zero = read(0.0, {"blue": pool_counters(idle())})
    p_fast = route_view(zero, read(1.0, {"blue": pool_counters(fast)})).pools[0].p99_ms
    p_slow = route_view(zero, read(1.0, {"blue": pool_counters(slow)})).pools[0].p99_ms
    if sum(fast) == 0:
        assert p_fast is None and p_slow is None
    else:
        assert p_fast is not None and p_slow is not None and p_slow >= p_fast - 1e-9
