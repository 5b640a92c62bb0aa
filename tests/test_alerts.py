"""The Prometheus alert rules of config/prometheus/alerts.yml, as an operator loads them.

promtool (Debian's prometheus package, installed by `make test`) checks the file and runs its
unit tests, config/prometheus/alerts_test.yml; every rule must be unit-tested both ways (it
fires on a series that should fire, and a healthy host fires nothing). The series the rules
read must be ones Pointsman exports: checked against the /metrics of a real running service
(with a shadow and a rollout, so their families have series), and for the families that only
exist with etcd, DNS endpoints or workers, against the collectors' source.
"""

from __future__ import annotations

import ast
import asyncio
import re
import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from control.service import Service
from proxy.config import Address, StateConfig
from tests.conftest import BackendFactory, config_for

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "config" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "config" / "prometheus" / "alerts_test.yml"
PROMTOOL_TIMEOUT = 30.0  # seconds; both promtool runs take well under one
LIMIT = 5.0  # seconds any HTTP exchange with the running service may take
TOKEN = "alerts-test-token"
SEVERITIES = {"critical", "warning"}
TARGET_LABELS = {"job", "instance"}  # added by Prometheus to every series it scrapes

# Series the rules read that a plain service does not export, with what makes them appear.
# These are checked against the collectors' source instead of a scrape.
ONLY_WITH = {
    "pointsman_state_store_up": "state.store: etcd",
    "pointsman_state_store_seconds_since_sync": "state.store: etcd",
    "pointsman_state_store_refusing": "state.store: etcd",
    "pointsman_dns_failures_total": "a DNS endpoint",
    "pointsman_dns_resolutions_total": "a DNS endpoint",
    "pointsman_dns_addresses": "a DNS endpoint",
    "pointsman_worker_restarts_total": "workers > 1",
}

SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
KIND_OF_CLASS = {
    "CounterMetricFamily": "counter",
    "GaugeMetricFamily": "gauge",
    "HistogramMetricFamily": "histogram",
}
METRIC_NAME = re.compile(r"\bpointsman_[a-z_]+")
GROUPING = re.compile(r"\b(?:by|on|ignoring|without)\s*\(([^)]*)\)")
MATCHERS = re.compile(r"\b(pointsman_[a-z_]+)\s*\{([^}]*)\}")
MATCHER_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
LABEL_REFERENCE = re.compile(r"\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)")


@dataclass(frozen=True)
class Family:
    """A metric family as exported: its kind, the names of its series, their label names."""

    kind: str
    series: frozenset[str]
    labels: frozenset[str] | None  # None: the source does not spell them out as a literal


def load_rules() -> list[dict[str, Any]]:
    """The alerting rules of alerts.yml, from every group."""
    document = yaml.safe_load(RULES.read_text())
    rules = [rule for group in document["groups"] for rule in group["rules"]]
    assert rules, f"{RULES} has no rules"
    return rules


def rule_metrics(rule: dict[str, Any]) -> set[str]:
    """The Pointsman series names a rule's expression reads."""
    return set(METRIC_NAME.findall(rule["expr"]))


def promtool() -> str:
    """promtool's path; a clear failure, not a skip, where it is missing."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not installed: run `make test`, which installs it "
            "(Debian package prometheus, through scripts/need.sh)"
        )
    return path


def run_promtool(*args: str) -> str:
    """Run promtool from the repository root; its output, after asserting it exited 0."""
    done = subprocess.run(
        [promtool(), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=PROMTOOL_TIMEOUT,
        check=False,
    )
    output = done.stdout + done.stderr
    print(output)
    assert done.returncode == 0, f"promtool {' '.join(args)} exited {done.returncode}:\n{output}"
    return output


def declared_families() -> dict[str, Family]:
    """Every `*MetricFamily("pointsman_...", ...)` in proxy/ and control/, read from the source:
    its kind from the class, its series names from the kind (as prometheus-client names them),
    and its label names where they are a literal list."""
    families: dict[str, Family] = {}
    for path in sorted([*(ROOT / "proxy").rglob("*.py"), *(ROOT / "control").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            class_name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            first = node.args[0]
            if not class_name.endswith("MetricFamily"):
                continue
            assert isinstance(first, ast.Constant) and isinstance(first.value, str), (
                f"{path}:{node.lineno}: a metric family whose name is not a literal"
            )
            assert class_name in KIND_OF_CLASS, f"{path}:{node.lineno}: unknown {class_name}"
            kind = KIND_OF_CLASS[class_name]
            labels: frozenset[str] | None = frozenset()
            for keyword in node.keywords:
                if keyword.arg == "labels":
                    try:
                        labels = frozenset(ast.literal_eval(keyword.value))
                    except ValueError:
                        labels = None  # a variable: known from the scrape only
            name = first.value
            series = frozenset(name + suffix for suffix in SUFFIXES[kind])
            families[name] = Family(kind, series, labels)
    assert len(families) > 20, f"only {len(families)} metric families found in the source"
    return families


def declared_series(families: dict[str, Family]) -> dict[str, Family]:
    """The declared families by the name of each of their series."""
    return {series: family for family in families.values() for series in family.series}


async def scrape_running_service(
    backend_factory: BackendFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Family]:
    """Start a real Service (route shop: blue live, green its rollout's candidate, dark a
    shadow), start a rollout through the API, and parse its /metrics; families by name."""
    blue = await backend_factory("blue")
    green = await backend_factory("green")
    dark = await backend_factory("dark")
    config = config_for(
        {"blue": [blue.address], "green": [green.address], "dark": [dark.address]},
        weights={"blue": 100, "green": 0, "dark": 0},
        route_extra="    shadows:\n      - {pool: dark, percent: 100}",
    )
    config = replace(
        config,
        state=StateConfig(path=str(tmp_path / "state.json")),
        admin=replace(config.admin, listen=Address("127.0.0.1", 0)),
        timeouts=replace(config.timeouts, grace=1.0),
    )
    monkeypatch.setenv(config.admin.token_env, TOKEN)
    service = Service(config)
    await service.start()
    try:
        runner = service._admin_runner
        assert runner is not None, "the admin listener is not running"
        admin = f"http://127.0.0.1:{runner.addresses[0][1]}"
        rollout = {
            "candidate": "green",
            "stable": "blue",
            "steps": [10, 100],
            "step_interval": "1h",
            "analysis": {"interval": "1m", "max_error_rate": 0.01},
        }
        headers = {"Authorization": f"Bearer {TOKEN}"}
        timeout = aiohttp.ClientTimeout(total=LIMIT)
        async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:
            async with session.post(admin + "/v1/routes/shop/rollout", json=rollout) as answer:
                assert answer.status == 201, await answer.text()
            async with session.get(admin + "/metrics") as answer:
                assert answer.status == 200, await answer.text()
                text = await answer.text()
    finally:
        await asyncio.wait_for(service.stop(), LIMIT)
    families: dict[str, Family] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("pointsman_"):
            continue
        families[family.name] = Family(
            family.type,
            frozenset(sample.name for sample in family.samples),
            frozenset(label for sample in family.samples for label in sample.labels),
        )
    return families


def test_promtool_checks_the_rules() -> None:
    """`promtool check rules` accepts the file and finds every rule in it."""
    output = run_promtool("check", "rules", str(RULES.relative_to(ROOT)))
    assert f"SUCCESS: {len(load_rules())} rules found" in output, output


def test_promtool_unit_tests_pass() -> None:
    """`promtool test rules alerts_test.yml`: every expected alert fires, with its labels and
    annotations, and no other does."""
    output = run_promtool("test", "rules", str(RULE_TESTS.relative_to(ROOT)))
    assert "SUCCESS" in output, output


def test_every_rule_is_unit_tested_both_ways() -> None:
    """Each rule has a unit test where it fires, and the healthy-host test where it does not;
    no unit test names a rule that does not exist (promtool would pass it: nothing fires)."""
    names = {rule["alert"] for rule in load_rules()}
    document = yaml.safe_load(RULE_TESTS.read_text())
    assert document["rule_files"] == [RULES.name], "the unit tests load another rule file"
    tests = document["tests"]
    fires: set[str] = set()
    tested: set[str] = set()
    healthy_groups: list[set[str]] = []
    for group in tests:
        checks = group["alert_rule_test"]
        tested |= {check["alertname"] for check in checks}
        fires |= {check["alertname"] for check in checks if check.get("exp_alerts")}
        if not any(check.get("exp_alerts") for check in checks):
            healthy_groups.append({check["alertname"] for check in checks})
    assert tested <= names, f"unit tests of rules not in alerts.yml: {sorted(tested - names)}"
    assert fires == names, f"rules never seen firing: {sorted(names - fires)}"
    assert any(group == names for group in healthy_groups), (
        "no test group checks that a healthy host fires none of the rules"
    )


def test_every_rule_has_for_severity_and_annotations() -> None:
    """An operator gets a severity to route on, a summary and a description, and every rule
    says how long its condition must hold (0m for events)."""
    for rule in load_rules():
        name = rule["alert"]
        assert "for" in rule, f"{name}: no `for:`"
        assert rule.get("labels", {}).get("severity") in SEVERITIES, f"{name}: severity"
        annotations = rule.get("annotations", {})
        for key in ("summary", "description"):
            assert annotations.get(key, "").strip(), f"{name}: no {key} annotation"


def test_rule_metrics_are_declared_in_the_source() -> None:
    """Every Pointsman series a rule reads is one of the exported families' series, as
    prometheus-client names them (counters with `_total`)."""
    series = declared_series(declared_families())
    used = {name for rule in load_rules() for name in rule_metrics(rule)}
    assert used, "the rules read no Pointsman series"
    assert used <= set(series), f"not exported by Pointsman: {sorted(used - set(series))}"


async def test_rule_metrics_and_labels_are_what_a_running_service_exports(
    backend_factory: BackendFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every series a rule reads is in a running service's /metrics, but for those that need
    etcd, DNS endpoints or workers (ONLY_WITH), which are checked against the source. Every
    label a rule matches, groups or joins on, or names in an annotation, is one of the series'
    labels. The source's idea of each scraped family's kind agrees with the scrape."""
    scraped = await scrape_running_service(backend_factory, tmp_path, monkeypatch)
    declared = declared_families()
    for name, exported in scraped.items():
        assert name in declared, f"{name} is exported but not found in the source"
        assert declared[name].kind == exported.kind, f"{name}: {declared[name].kind} in the source"
    live = declared_series(scraped)
    source = declared_series(declared)
    rules = load_rules()
    used = {name for rule in rules for name in rule_metrics(rule)}
    assert set(ONLY_WITH) <= used, f"excused but unused: {sorted(set(ONLY_WITH) - used)}"
    for rule in rules:
        alert = rule["alert"]
        labels_of: dict[str, frozenset[str]] = {}
        for name in rule_metrics(rule):
            if name in ONLY_WITH:
                family = source.get(name)
                where = f"the source (it needs {ONLY_WITH[name]})"
            else:
                family = live.get(name)
                where = "the running service's /metrics"
            assert family is not None and name in family.series, f"{alert}: {name} not in {where}"
            assert family.labels is not None, f"{alert}: labels of {name} unknown"
            labels_of[name] = family.labels | TARGET_LABELS
        expr = rule["expr"]
        for metric, matchers in MATCHERS.findall(expr):
            for label in MATCHER_LABEL.findall(matchers):
                assert label in labels_of[metric], f"{alert}: {metric} has no label {label}"
        grouped = {label.strip() for found in GROUPING.findall(expr) for label in found.split(",")}
        for metric, labels in labels_of.items():
            assert grouped - {""} <= labels, f"{alert}: {metric} lacks {grouped - labels}"
        known = set().union(TARGET_LABELS, *labels_of.values())
        for text in rule["annotations"].values():
            for label in LABEL_REFERENCE.findall(text):
                assert label in known, f"{alert}: annotations name label {label}, never set"
