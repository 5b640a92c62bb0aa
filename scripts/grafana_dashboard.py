"""Generate config/grafana/pointsman.json, the Grafana dashboard for Pointsman.

    .venv/bin/python scripts/grafana_dashboard.py          # rewrite the JSON
    .venv/bin/python scripts/grafana_dashboard.py --check  # exit 1 if the JSON is stale

The committed JSON is this script's output byte for byte (tests/test_dashboard.py checks it):
change the dashboard here, run the script, commit both. Every series the queries read is one
Pointsman exports on its admin listener's /metrics (README, "Metrics and health"); the test
runs every query against a real Prometheus scraping a real Pointsman.

Classic dashboard JSON model (importable through the UI or provisioned from a file), with a
Prometheus data-source variable, so it is not bound to one data source's uid.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "config" / "grafana" / "pointsman.json"
SCHEMA_VERSION = 41  # Grafana 12's classic dashboard model
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# Label matchers every panel of one kind uses. Multi-value variables are formatted by Grafana
# as a regex alternation, hence =~ everywhere.
INST = 'instance=~"$instance"'
ROUTE = 'route=~"$route"'
POOL = 'pool=~"$pool"'
SHADOW = 'shadow=~"$shadow"'
POOLS = "{" + f"{INST}, {ROUTE}, {POOL}" + "}"
ROUTES = "{" + f"{INST}, {ROUTE}" + "}"
SHADOWS = "{" + f"{INST}, {ROUTE}, {SHADOW}" + "}"
RATE = "[$__rate_interval]"

Panel = dict[str, Any]


def target(expr: str, legend: str, ref: str, instant: bool = False) -> dict[str, Any]:
    t: dict[str, Any] = {
        "datasource": DATASOURCE,
        "expr": expr,
        "legendFormat": legend,
        "refId": ref,
        "range": not instant,
        "instant": instant,
    }
    return t


def panel(
    kind: str,
    title: str,
    description: str,
    targets: list[tuple[str, str]],
    unit: str = "short",
    width: int = 8,
    height: int = 8,
    thresholds: list[tuple[str, float | None]] | None = None,
    instant: bool = False,
    extra: dict[str, Any] | None = None,
) -> Panel:
    """One panel; `targets` are (expr, legend) pairs, refIds A, B, ..."""
    steps = [{"color": color, "value": value} for color, value in (thresholds or [])]
    if not steps:
        steps = [{"color": "green", "value": None}]
    field_config: dict[str, Any] = {
        "defaults": {
            "unit": unit,
            "thresholds": {"mode": "absolute", "steps": steps},
            "color": {"mode": "palette-classic" if kind == "timeseries" else "thresholds"},
        },
        "overrides": [],
    }
    if kind == "timeseries" and thresholds:
        field_config["defaults"]["custom"] = {"thresholdsStyle": {"mode": "line+area"}}
    out: Panel = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"w": width, "h": height},
        "fieldConfig": field_config,
        "options": {},
        "targets": [
            target(expr, legend, chr(ord("A") + i), instant)
            for i, (expr, legend) in enumerate(targets)
        ],
    }
    if kind == "timeseries":
        out["options"] = {
            "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    elif kind == "stat":
        out["options"] = {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value"}
    out.update(extra or {})
    return out


def ratio(numerator: str, denominator: str) -> str:
    """numerator / denominator, leaving out series whose denominator is 0 (idle pools)."""
    return f"{numerator}\n/\n({denominator} > 0)"


def quantile(q: float, by: str, series: str) -> str:
    return f"histogram_quantile({q}, sum by ({by}, le) (rate({series}{RATE})))"


def traffic_row() -> list[Panel]:
    requests = f"sum by (route, pool) (rate(pointsman_requests_total{POOLS}{RATE}))"
    route_requests = f"sum by (route) (rate(pointsman_requests_total{ROUTES}{RATE}))"
    weight = f"avg by (route, pool) (pointsman_pool_weight{POOLS})"
    route_weight = f"sum by (route) (avg by (route, pool) (pointsman_pool_weight{ROUTES}))"
    return [
        panel(
            "timeseries",
            "Requests/s by pool",
            "Answers per second of each route's pools, summed over the selected instances "
            "(pointsman_requests_total, every status class).",
            [(requests, "{{route}} / {{pool}}")],
            unit="reqps",
        ),
        panel(
            "timeseries",
            "Traffic share vs configured weight",
            "Each pool's share of its route's answers (solid) beside the share its configured "
            "weight gives it (pointsman_pool_weight / the route's total weight). They differ "
            "while rules or sticky sessions pin requests, or a pool has no healthy endpoint.",
            [
                (f"{requests}\n/ ignoring (pool) group_left\n{route_requests}", "{{pool}} actual"),
                (f"{weight}\n/ ignoring (pool) group_left\n{route_weight}", "{{pool}} weight"),
            ],
            unit="percentunit",
        ),
        panel(
            "stat",
            "Configured weight",
            "pointsman_pool_weight now (the same on every instance of a fleet once synced).",
            [(f"max by (route, pool) (pointsman_pool_weight{POOLS})", "{{route}} / {{pool}}")],
            instant=True,
        ),
    ]


def errors_row() -> list[Panel]:
    def by_pool(metric: str) -> str:
        return f"sum by (route, pool) (rate({metric}{POOLS}{RATE}))"

    errors = "{" + f'code="5xx", {INST}, {ROUTE}, {POOL}' + "}"
    five = f"sum by (route, pool) (rate(pointsman_requests_total{errors}{RATE}))"
    every = f"sum by (route, pool) (rate(pointsman_requests_total{POOLS}{RATE}))"
    return [
        panel(
            "timeseries",
            "5xx ratio by pool",
            "Share of each pool's answers that were 5xx, the proxy's own 502/503/504 included. "
            "The line is PointsmanHigh5xxRatio's 5 %. Pools without traffic are left out.",
            [(ratio(five, every), "{{route}} / {{pool}}")],
            unit="percentunit",
            thresholds=[("green", None), ("red", 0.05)],
        ),
        panel(
            "timeseries",
            "Proxy errors by kind",
            "Upstream connect errors, upstream timeouts and retries per second, by pool.",
            [
                (by_pool("pointsman_upstream_connect_errors_total"), "{{pool}} connect errors"),
                (by_pool("pointsman_upstream_timeouts_total"), "{{pool}} timeouts"),
                (by_pool("pointsman_upstream_retries_total"), "{{pool}} retries"),
            ],
            unit="reqps",
        ),
        panel(
            "timeseries",
            "Rejected requests by reason",
            "Requests the proxy refused or gave up on, by reason (malformed, bad_host, "
            "header_timeout, client_closed, connection_limit, ...), and requests that matched "
            "no route (404).",
            [
                (
                    f"sum by (reason) (rate(pointsman_rejected_requests_total{{{INST}}}{RATE}))",
                    "{{reason}}",
                ),
                (
                    f"sum (rate(pointsman_unrouted_requests_total{{{INST}}}{RATE}))",
                    "unrouted (404)",
                ),
            ],
            unit="reqps",
        ),
    ]


def latency_row() -> list[Panel]:
    series = f"pointsman_request_duration_seconds_bucket{POOLS}"
    return [
        panel(
            "timeseries",
            "p50 latency by pool",
            "Median time from request head received to response end, from the "
            "pointsman_request_duration_seconds histogram (buckets 0.5 ms to 30 s).",
            [(quantile(0.5, "route, pool", series), "{{route}} / {{pool}}")],
            unit="s",
            width=12,
        ),
        panel(
            "timeseries",
            "p99 latency by pool",
            "99th percentile of the same histogram.",
            [(quantile(0.99, "route, pool", series), "{{route}} / {{pool}}")],
            unit="s",
            width=12,
        ),
    ]


def rollouts_row() -> list[Panel]:
    return [
        panel(
            "timeseries",
            "Rollout step and phase",
            "The index of each route's rollout step (pointsman_rollout_step) and its current "
            "phase (running, paused, awaiting_confirm, promoted, failed, aborted). A failed "
            "or aborted rollout keeps its phase until the route's next rollout.",
            [
                (f"max by (route) (pointsman_rollout_step{ROUTES})", "{{route}} step"),
                (
                    f"max by (route, phase) (pointsman_rollout_phase{ROUTES}) == 1",
                    "{{route}} {{phase}}",
                ),
            ],
            width=6,
        ),
        panel(
            "timeseries",
            "Canary weight",
            "The candidate's share of its route's weight set by the rollout, percent "
            "(pointsman_rollout_candidate_percent); 0 after a rollback.",
            [
                (
                    f"max by (route, candidate) (pointsman_rollout_candidate_percent{ROUTES})",
                    "{{route}} {{candidate}}",
                )
            ],
            unit="percent",
            width=6,
        ),
        panel(
            "timeseries",
            "Analysis: value vs threshold",
            "The last analysis's value of each check (error_rate, error_rate_vs_stable, "
            "p99_ms, p99_vs_stable_ms, mismatch_rate) beside its threshold: a value above its "
            "threshold fails the check.",
            [
                (
                    f"max by (route, check) (pointsman_rollout_analysis_value{ROUTES})",
                    "{{check}} value",
                ),
                (
                    f"max by (route, check) (pointsman_rollout_analysis_threshold{ROUTES})",
                    "{{check}} threshold",
                ),
            ],
            width=6,
        ),
        panel(
            "stat",
            "Promotions and rollbacks",
            "Rollouts promoted, and rolled back by reason (the failed check, or aborted), "
            "since each instance started. The dashboard's annotations mark when.",
            [
                (
                    f"sum by (route) (pointsman_rollout_promotions_total{ROUTES})",
                    "{{route}} promoted",
                ),
                (
                    f"sum by (route, reason) (pointsman_rollout_rollbacks_total{ROUTES})",
                    "{{route}} rolled back: {{reason}}",
                ),
            ],
            instant=True,
            width=6,
        ),
    ]


def shadows_row() -> list[Panel]:
    def by_shadow(metric: str) -> str:
        return f"sum by (route, shadow) (rate({metric}{SHADOWS}{RATE}))"

    compared = by_shadow("pointsman_shadow_compared_total")
    paths = (
        f"sum by (route, shadow, path) (rate(pointsman_shadow_mismatch_paths_total{SHADOWS}{RATE}))"
    )
    deltas = f"pointsman_shadow_latency_delta_seconds_bucket{SHADOWS}"
    return [
        panel(
            "timeseries",
            "Shadow mismatch rate",
            "Share of each shadow's compared exchanges that differ in a way that counts "
            "(above the noise seen against the baseline). The line is "
            "PointsmanShadowMismatchHigh's 1 %.",
            [(ratio(by_shadow("pointsman_shadow_mismatched_total"), compared), "{{shadow}}")],
            unit="percentunit",
            thresholds=[("green", None), ("red", 0.01)],
        ),
        panel(
            "timeseries",
            "Mismatch rate by path",
            "Share of the shadow's compared exchanges that mismatched in each path "
            "($.items[*].price, header:etag, status, ...; past 100 paths: other).",
            [(f"{paths}\n/ ignoring (path) group_left\n{compared}", "{{shadow}} {{path}}")],
            unit="percentunit",
        ),
        panel(
            "timeseries",
            "Noise rate",
            "Share of compared exchanges whose differences were all noise (they differ "
            "against the baseline copy too). Always 0 for a shadow without a baseline.",
            [(ratio(by_shadow("pointsman_shadow_noise_total"), compared), "{{shadow}}")],
            unit="percentunit",
        ),
        panel(
            "timeseries",
            "Shadow latency delta (shadow - live)",
            "Shadow minus live latency on the same request, from the "
            "pointsman_shadow_latency_delta_seconds histogram (-5 s to +5 s): above 0 the "
            "shadow is slower.",
            [
                (quantile(0.5, "route, shadow", deltas), "{{shadow}} p50"),
                (quantile(0.99, "route, shadow", deltas), "{{shadow}} p99"),
            ],
            unit="s",
            width=12,
        ),
        panel(
            "timeseries",
            "Shadow drops by reason",
            "Mirrors dropped per second by reason (full, memory, body_too_large, timeout, "
            "connect_error, upstream_error, primary_failed), beside the copies sent.",
            [
                (
                    f"sum by (route, shadow, reason) "
                    f"(rate(pointsman_shadow_dropped_total{SHADOWS}{RATE}))",
                    "{{shadow}} {{reason}}",
                ),
                (by_shadow("pointsman_shadow_mirrored_total"), "{{shadow}} mirrored"),
            ],
            unit="reqps",
            width=12,
        ),
    ]


def health_row() -> list[Panel]:
    healthy = f"pointsman_endpoint_healthy{POOLS}"
    return [
        panel(
            "timeseries",
            "Healthy endpoints per pool",
            "Endpoints taking traffic (active checks pass and not ejected) beside the "
            "endpoints the pool has, per instance: each host checks and ejects on its own.",
            [
                (f"sum by (instance, route, pool) ({healthy})", "{{instance}} {{pool}} up"),
                (f"count by (instance, route, pool) ({healthy})", "{{instance}} {{pool}} all"),
            ],
        ),
        panel(
            "table",
            "Endpoints out",
            "Endpoints that take no traffic now: failed active checks or passive ejection.",
            [(f"{healthy} == 0", "{{instance}} {{pool}} {{endpoint}}")],
            instant=True,
            width=6,
            extra={"options": {"showHeader": True}},
        ),
        panel(
            "timeseries",
            "Ejections",
            "Passive ejections per endpoint (consecutive connect errors or 5xx answers), for "
            "the endpoints of the selected pools (pointsman_endpoint_ejections_total; "
            "exported by a master with workers).",
            [
                (
                    f"sum by (instance, endpoint) "
                    f"(increase(pointsman_endpoint_ejections_total{{{INST}}}{RATE}))\n"
                    f"and on (instance, endpoint) {healthy}",
                    "{{instance}} {{endpoint}}",
                ),
            ],
            width=6,
        ),
        panel(
            "stat",
            "Workers ready",
            "Worker processes running with the current routing state, per instance.",
            [(f"sum by (instance) (pointsman_workers_ready{{{INST}}})", "{{instance}}")],
            instant=True,
            width=4,
        ),
    ]


def fleet_row() -> list[Panel]:
    # Fleet members are the instances that export the etcd store's series; not filtered by
    # $instance, since lag is a comparison between members.
    members = "pointsman_state_version and on (job, instance) pointsman_state_store_up"
    return [
        panel(
            "stat",
            "Fleet members",
            "Instances with state.store: etcd that Prometheus scrapes, and how many of them "
            "reach etcd now.",
            [
                ("count (pointsman_state_store_up)", "members"),
                ("count (pointsman_state_store_up == 1)", "reaching etcd"),
            ],
            instant=True,
            width=6,
        ),
        panel(
            "timeseries",
            "State version lag",
            "How many routing-state versions each member is behind the newest one in the "
            "fleet (0 once it has applied every change).",
            [(f"scalar(max({members}))\n- ({members})", "{{instance}}")],
            width=6,
        ),
        panel(
            "timeseries",
            "Seconds since last sync",
            "Seconds since etcd last answered each member (normally under 5 s; "
            "PointsmanFleetMemberLagging fires past 30 s).",
            [("pointsman_state_store_seconds_since_sync", "{{instance}}")],
            unit="s",
            width=6,
            thresholds=[("green", None), ("red", 30)],
        ),
        panel(
            "timeseries",
            "Store up and refusing",
            "1 while the member's last call to etcd succeeded (up), and 1 while it refuses "
            "the fleet's newest state because it does not fit its config (refusing).",
            [
                ("pointsman_state_store_up", "{{instance}} up"),
                ("pointsman_state_store_refusing", "{{instance}} refusing"),
            ],
            width=6,
        ),
    ]


ROWS = [
    ("Traffic split", traffic_row),
    ("Errors", errors_row),
    ("Latency", latency_row),
    ("Rollouts", rollouts_row),
    ("Shadows", shadows_row),
    ("Health", health_row),
    ("Fleet", fleet_row),
]


def layout() -> list[Panel]:
    """Rows and their panels, with ids and grid positions (24 columns, rows of panels)."""
    panels: list[Panel] = []
    y = 0
    next_id = 1
    for title, build in ROWS:
        panels.append(
            {
                "type": "row",
                "title": title,
                "id": next_id,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        next_id += 1
        y += 1
        x = 0
        line_height = 0
        for p in build():
            w, h = p["gridPos"]["w"], p["gridPos"]["h"]
            if x + w > 24:
                x, y, line_height = 0, y + line_height, 0
            p["gridPos"] = {"h": h, "w": w, "x": x, "y": y}
            p["id"] = next_id
            next_id += 1
            x += w
            line_height = max(line_height, h)
            panels.append(p)
        y += line_height
    return panels


def variable(name: str, label: str, query: str, include_all: bool = True) -> dict[str, Any]:
    return {
        "type": "query",
        "name": name,
        "label": label,
        "datasource": DATASOURCE,
        "definition": query,
        "query": {"qryType": 1, "query": query, "refId": f"PrometheusVariableQueryEditor-{name}"},
        "refresh": 2,  # on time range change
        "sort": 1,
        "multi": True,
        "includeAll": include_all,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "hide": 0,
        "regex": "",
    }


VARIABLES: list[dict[str, Any]] = [
    {
        "type": "datasource",
        "name": "datasource",
        "label": "Data source",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "refresh": 1,
        "regex": "",
        "options": [],
    },
    variable("instance", "Instance", "label_values(pointsman_state_version, instance)"),
    variable("route", "Route", 'label_values(pointsman_pool_weight{instance=~"$instance"}, route)'),
    variable(
        "pool",
        "Pool",
        'label_values(pointsman_pool_weight{instance=~"$instance", route=~"$route"}, pool)',
    ),
    variable(
        "shadow",
        "Shadow",
        "label_values(pointsman_shadow_compared_total"
        '{instance=~"$instance", route=~"$route"}, shadow)',
    ),
]


def rollout_annotation(name: str, phases: str, color: str) -> dict[str, Any]:
    """An event where a route's rollout phase turns to one of `phases`: the phase is 1 now and
    was not 1 one interval ago (0, or no rollout yet: a rollout promoted or rolled back within
    one interval of its start is marked too). A host restarting with a finished rollout in its
    state marks nothing unless it was down longer than Prometheus's lookback (5 min)."""
    selector = f'pointsman_rollout_phase{{phase=~"{phases}", {INST}, {ROUTE}}}'
    now = f"max by (route, phase) ({selector})"
    before = f"max by (route, phase) ({selector} offset $__interval)"
    return {
        "name": name,
        "enable": True,
        "iconColor": color,
        "datasource": DATASOURCE,
        "expr": f"{now} == 1\nunless\n{before} == 1",
        "step": "$__interval",
        "titleFormat": "Rollout {{route}}: {{phase}}",
        "textFormat": "",
        "tagKeys": "route,phase",
        "useValueForTime": False,
    }


def dashboard() -> dict[str, Any]:
    return {
        "uid": "pointsman",
        "title": "Pointsman",
        "description": "Traffic split, errors, latency, rollouts, shadows, health and fleet "
        "of Pointsman hosts (generated by scripts/grafana_dashboard.py).",
        "tags": ["pointsman", "proxy"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "refresh": "30s",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "links": [],
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                },
                rollout_annotation("Rollout promotions", "promoted", "green"),
                rollout_annotation("Rollout rollbacks", "failed|aborted", "red"),
            ]
        },
        "templating": {"list": VARIABLES},
        "panels": layout(),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if argv[1:] == ["--check"]:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            print(f"{OUTPUT} is stale: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
