"""The Grafana dashboard config/grafana/pointsman.json, checked against a real Prometheus.

The JSON is scripts/grafana_dashboard.py's output (checked byte for byte). Every series its
queries read must be one Pointsman declares. The main test runs a fleet of two Pointsman hosts
on a real etcd (one with 2 workers that takes the traffic, one in-process), has a real
Prometheus (Debian's /usr/bin/prometheus) scrape both admin listeners every second, sends
traffic of a known shape, runs two rollouts, and then evaluates every query of the dashboard
(every panel's targets, the variables' label_values and the annotations) through Prometheus's
HTTP API, with the variables substituted as Grafana would. Each must return data, and the
panels an SRE reads numbers from must show the numbers the traffic was built to give.

Traffic (route shop, pools blue 90 / green 10, client requests GET /item/<n>):
- blue: two endpoints, one of them a port nothing listens on (ejected after one connect error,
  for 60 s: connect errors, a retry, one ejection, 1 healthy endpoint of 2);
- green: 50 ms per answer, every 20th of its answers a 500;
- dark, a shadow of every request with baseline twin: answers 30 ms late, with another price
  when n % 10 == 0 (a mismatch in $.price), after 500 ms (dropped as a timeout, the shadow's
  timeout is 200 ms) when n % 20 == 7; every backend sends a random X-Nonce header, which
  the baseline shows to be noise;
- a few malformed requests (rejected, reason malformed).

Run with -s to see each panel's title, query and values.
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import json
import math
import re
import secrets
import shutil
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from control.service import Service
from proxy.config import EtcdSettings, StateConfig
from tests.conftest import Backend, config_for, free_port, raw_exchange
from tests.etcd_server import EtcdServer
from tests.test_alerts import declared_families
from tests.test_api import TOKEN
from tests.test_workers import run_service

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "config" / "grafana" / "pointsman.json"
GENERATOR = ROOT / "scripts" / "grafana_dashboard.py"
PROVISIONING = ROOT / "config" / "grafana" / "provisioning"

LIMIT = 10.0  # seconds one HTTP exchange or one wait for Prometheus may take
RATE_WINDOW = "15s"  # what $__rate_interval stands for in the test
INTERVAL = 2.0  # seconds: $__interval, and the step of the annotation range queries
TRAFFIC_SECONDS = 6.0  # of the first phase (weights 90/10, no rollout)
CLIENTS = 6  # concurrent client loops
GREEN_DELAY = 0.05
DARK_DELAY = 0.03
DARK_STALL = 0.5  # over the shadow's timeout: a drop counted as `timeout`
TARGET_LABELS = {"job", "instance"}
PROMQL_SPECIAL = set("\\^$.|?*+()[]{}")

pytestmark = pytest.mark.timeout(90)


# -- the dashboard as a file ------------------------------------------------------------------


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("grafana_dashboard", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


@dataclass(frozen=True)
class Query:
    row: str
    title: str
    legend: str
    expr: str


def panel_queries(dashboard: dict[str, Any]) -> list[Query]:
    """Every target of every panel, with its row."""
    queries: list[Query] = []
    row = ""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            row = panel["title"]
            continue
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            queries.append(Query(row, panel["title"], target["legendFormat"], target["expr"]))
    return queries


def annotation_queries(dashboard: dict[str, Any]) -> list[Query]:
    return [
        Query("Annotations", a["name"], a["titleFormat"], a["expr"])
        for a in dashboard["annotations"]["list"]
        if "expr" in a
    ]


def test_committed_dashboard_is_the_generators_output() -> None:
    """config/grafana/pointsman.json is what scripts/grafana_dashboard.py writes."""
    assert DASHBOARD.read_text() == generator().render(), (
        "config/grafana/pointsman.json is stale: run .venv/bin/python scripts/grafana_dashboard.py"
    )


def test_dashboard_shape() -> None:
    """A classic dashboard Grafana imports: its schema version, the variables the queries use,
    a Prometheus data source on every query, the seven rows, unique panel ids."""
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 39
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert list(variables) == ["datasource", "instance", "route", "pool", "shadow"]
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == ["Traffic split", "Errors", "Latency", "Rollouts", "Shadows", "Health", "Fleet"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
    for query in [*panel_queries(dashboard), *annotation_queries(dashboard)]:
        leftover = re.sub(
            r"\$(__rate_interval|__interval|instance|route|pool|shadow)\b", "", query.expr
        )
        assert "$" not in leftover, f"{query.title}: unknown variable in {query.expr}"


def test_provisioning_files() -> None:
    """The provisioning examples are what Grafana reads: a file provider, a Prometheus source."""
    providers = yaml.safe_load((PROVISIONING / "dashboards.yaml").read_text())
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
    sources = yaml.safe_load((PROVISIONING / "datasources.yaml").read_text())
    assert sources["apiVersion"] == 1
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus" and source["url"].startswith("http")


def test_dashboard_reads_only_exported_series_and_labels() -> None:
    """Every pointsman_* series a query reads is one a collector in proxy/ or control/
    declares, and every label it matches or groups by is one of that family's labels (or a
    target label Prometheus adds)."""
    families = declared_families()
    series = {
        name: family for family in families.values() for name in family.series
    }  # pointsman_requests_total -> its family
    dashboard = load_dashboard()
    queries = [*panel_queries(dashboard), *annotation_queries(dashboard)]
    variables = [v["definition"] for v in dashboard["templating"]["list"][1:]]
    exprs = [q.expr for q in queries] + variables
    used: set[str] = set()
    for expr in exprs:
        for name, matchers in re.findall(r"\b(pointsman_[a-z_]+)(?:\{([^}]*)\})?", expr):
            used.add(name)
            assert name in series, f"{name} is not exported by Pointsman ({expr})"
            labels = series[name].labels
            if labels is None:
                continue  # not a literal in the source (the shadows'): the live test covers them
            for label in re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", matchers):
                assert label in labels | TARGET_LABELS, f"{name} has no label {label}"
    for query in queries:
        known = set(TARGET_LABELS) | {"le"}
        for name in set(re.findall(r"\bpointsman_[a-z_]+", query.expr)):
            labels = series[name].labels
            known |= labels if labels is not None else {"route", "shadow", "reason", "path"}
        for group in re.findall(r"\b(?:by|on|ignoring)\s*\(([^)]*)\)", query.expr):
            grouped = {label.strip() for label in group.split(",")} - {""}
            assert grouped <= known, f"{query.title}: groups by unknown {grouped - known}"
    assert "pointsman_endpoint_ejections_total" in used


# -- Prometheus ---------------------------------------------------------------------------------


class Prometheus:
    """A real Prometheus on 127.0.0.1 scraping the targets of a file (file_sd), every second,
    its data in a temporary directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.targets = directory / "targets.json"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("prometheus is not installed: `make unit` installs it (scripts/need.sh)")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.targets.write_text("[]")
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [
                {
                    "job_name": "pointsman",
                    "file_sd_configs": [{"files": [str(self.targets)], "refresh_interval": "1s"}],
                }
            ],
        }
        (self.directory / "prometheus.yml").write_text(yaml.safe_dump(config))
        log = open(self.directory / "prometheus.log", "ab")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={self.directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=log,
        )
        log.close()
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"prometheus exited with {self.process.returncode}: {self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)  # polling a process that offers no readiness signal
        pytest.fail(f"prometheus not ready in 20 s: {self.log()}")

    def scrape(self, targets: list[str]) -> None:
        """Scrape these host:port targets from now on (written atomically; Prometheus watches
        the file)."""
        temporary = self.targets.with_suffix(".tmp")
        temporary.write_text(json.dumps([{"targets": targets}]))
        temporary.rename(self.targets)

    def log(self) -> str:
        path = self.directory / "prometheus.log"
        return path.read_text()[-2000:] if path.exists() else ""

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(10.0)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Prometheus]:
    server = Prometheus(tmp_path / "prometheus")
    server.start()
    yield server
    server.stop()


Sample = tuple[dict[str, str], float]


class PromAPI:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    async def _get(self, path: str, params: dict[str, str]) -> Any:
        async with asyncio.timeout(LIMIT):
            async with self.session.get(self.url + path, params=params) as answer:
                body = await answer.json()
        assert body["status"] == "success", f"{path} {params}: {body}"
        return body["data"]

    async def query(self, expr: str, at: float | None = None) -> list[Sample]:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = await self._get("/api/v1/query", params)
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        return [(r["metric"], float(r["value"][1])) for r in data["result"]]

    async def query_range(
        self, expr: str, start: float, end: float, step: float
    ) -> list[tuple[dict[str, str], list[float]]]:
        params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": str(step)}
        data = await self._get("/api/v1/query_range", params)
        return [(r["metric"], [float(t) for t, _ in r["values"]]) for r in data["result"]]

    async def label_values(self, label: str, selector: str, start: float) -> list[str]:
        params = {"match[]": selector, "start": f"{start:.3f}", "end": f"{time.time():.3f}"}
        return list(await self._get(f"/api/v1/label/{label}/values", params))

    async def until(self, expr: str, what: str, limit: float = 20.0) -> list[Sample]:
        """Poll until `expr` returns something (Prometheus has scraped what we wait for)."""
        deadline = time.monotonic() + limit
        while True:
            found = await self.query(expr)
            if found:
                return found
            assert time.monotonic() < deadline, f"Prometheus never showed {what}: {expr}"
            await asyncio.sleep(0.2)


# -- the traffic --------------------------------------------------------------------------------


def item(request: web.Request) -> int:
    return int(request.path.rsplit("/", 1)[1])


def answer(n: int, price: int, status: int = 200) -> web.Response:
    """The same body for every pool but the differing price; a random header, noise."""
    return web.json_response(
        {"id": n, "price": price}, status=status, headers={"X-Nonce": secrets.token_hex(4)}
    )


@dataclass
class Counts:
    blue: int = 0
    green: int = 0
    green_errors: int = 0


@dataclass
class Traffic:
    """What the clients sent, by phase, and what the backends saw."""

    numbers: itertools.count[int] = field(default_factory=itertools.count)
    sent: list[int] = field(default_factory=list)  # n of each answered request
    counts: Counts = field(default_factory=Counts)
    dead: str = ""  # blue's endpoint that nothing listens on


async def blue_handler(traffic: Traffic, request: web.Request) -> web.StreamResponse:
    traffic.counts.blue += 1
    return answer(item(request), 10)


async def green_handler(traffic: Traffic, request: web.Request) -> web.StreamResponse:
    await asyncio.sleep(GREEN_DELAY)
    traffic.counts.green += 1
    if traffic.counts.green % 20 == 0:
        traffic.counts.green_errors += 1
        return answer(item(request), 10, status=500)  # the same body: only the status differs
    return answer(item(request), 10)


async def dark_handler(request: web.Request) -> web.StreamResponse:
    n = item(request)
    await asyncio.sleep(DARK_STALL if n % 20 == 7 else DARK_DELAY)
    return answer(n, 11 if n % 10 == 0 else 10)


async def twin_handler(request: web.Request) -> web.StreamResponse:
    return answer(item(request), 10)


async def send(
    session: aiohttp.ClientSession, proxy: str, traffic: Traffic, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        n = next(traffic.numbers)
        async with session.get(f"{proxy}/item/{n}", headers={"X-Request-Id": f"dash-{n}"}) as r:
            await r.read()
            assert r.status in (200, 500), f"/item/{n}: {r.status}"
        traffic.sent.append(n)


@dataclass
class Load:
    session: aiohttp.ClientSession
    proxy: str
    traffic: Traffic
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self.stop = asyncio.Event()
        self.tasks = [
            asyncio.create_task(send(self.session, self.proxy, self.traffic, self.stop))
            for _ in range(CLIENTS)
        ]

    async def finish(self) -> None:
        self.stop.set()
        async with asyncio.timeout(LIMIT):
            await asyncio.gather(*self.tasks)


# -- the run ------------------------------------------------------------------------------------


@dataclass
class Member:
    service: Service
    session: aiohttp.ClientSession
    admin: str
    proxy: str

    async def call(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with asyncio.timeout(LIMIT):
            async with self.session.request(
                method, self.admin + path, json=body, headers=headers
            ) as r:
                return r.status, await r.json()


@pytest.fixture
async def fleet_members(
    etcd: EtcdServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Member, Member, Traffic]]:
    """Member a (2 workers, takes the traffic) and member b (in-process) of fleet shop."""
    monkeypatch.setenv("POINTSMAN_TOKEN", TOKEN)
    traffic = Traffic()
    backends = [
        Backend("blue", lambda r: blue_handler(traffic, r)),
        Backend("green", lambda r: green_handler(traffic, r)),
        Backend("dark", dark_handler),
        Backend("twin", twin_handler),
    ]
    for backend in backends:
        await backend.start()
    blue, green, dark, twin = backends
    dead = traffic.dead = f"127.0.0.1:{free_port()}"
    config = config_for(
        {
            "blue": [blue.address, dead],
            "green": [green.address],
            "dark": [dark.address],
            "twin": [twin.address],
        },
        weights={"blue": 90, "green": 10, "dark": 0, "twin": 0},
        pool_extra={"blue": "ejection: {consecutive_failures: 1, backoff: 60s}"},
        route_extra=(
            "    shadows:\n      - {pool: dark, baseline: twin, percent: 100, timeout: 200ms}\n"
        ),
    )
    fleet = EtcdSettings(endpoints=(etcd.url,), prefix="/pointsman/shop", fleet="shop")
    members: list[Member] = []
    try:
        for name, workers in (("a", 2), ("b", None)):
            member_config = replace(
                config,
                state=StateConfig(path=str(tmp_path / f"state-{name}.json"), etcd=fleet),
                timeouts=replace(config.timeouts, grace=1.0),
            )
            members.append(Member(*await run_service(member_config, workers)))
        yield members[0], members[1], traffic
    finally:
        for member in members:
            await member.session.close()
            await member.service.stop()
        for backend in backends:
            await backend.stop()


def grafana_regex(value: str) -> str:
    """A single selected value of a multi-value variable, as Grafana writes it into a
    Prometheus query: regex metacharacters escaped, the backslash doubled for PromQL."""
    return "".join("\\\\" + c if c in PROMQL_SPECIAL else c for c in value)


def substitute(expr: str, values: dict[str, str]) -> str:
    expr = expr.replace("$__rate_interval", RATE_WINDOW)
    expr = expr.replace("$__interval", f"{INTERVAL:g}s")
    for name, value in values.items():
        expr = re.sub(rf"\${name}\b", lambda _, value=value: value, expr)
    assert "$" not in expr, expr
    return expr


def finite(samples: list[Sample]) -> list[Sample]:
    return [(labels, value) for labels, value in samples if math.isfinite(value)]


def by(samples: list[Sample], label: str) -> dict[str, float]:
    return {labels.get(label, ""): value for labels, value in finite(samples)}


def near(value: float | None, expected: float, tolerance: float, what: str) -> None:
    assert value is not None, f"{what}: no value"
    assert abs(value - expected) <= tolerance, f"{what}: {value:.4f}, expected {expected:.4f}"


async def test_every_panel_returns_the_traffics_numbers(
    prometheus: Prometheus, fleet_members: tuple[Member, Member, Traffic]
) -> None:
    started = time.monotonic()
    a, b, traffic = fleet_members
    instance_a = a.admin.removeprefix("http://")
    instance_b = b.admin.removeprefix("http://")
    test_start = time.time()
    prometheus.scrape([instance_a, instance_b])
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=LIMIT)) as session:
        prom = PromAPI(session, prometheus.url)
        at_a = f'instance="{instance_a}"'
        await prom.until('count(up{job="pointsman"} == 1) == 2', "both members scraped")
        await prom.until(
            f"pointsman_endpoint_ejections_total{{{at_a}}}", "the ejections counter at 0"
        )

        # Phase 1: weights 90/10, the shadow, the dead endpoint, malformed requests.
        load = Load(a.session, a.proxy, traffic)
        load.start()
        # A counter series that appears with its first increment has no rate until its second
        # sample (pointsman_rejected_requests_total has a series per reason seen so far): one
        # malformed request makes the series, three more are the rate the panel shows.
        port = int(a.proxy.rsplit(":", 1)[1])
        malformed = b"NOT HTTP AT ALL\r\n\r\n"
        await raw_exchange(port, malformed)
        await prom.until(
            f'pointsman_rejected_requests_total{{{at_a}, reason="malformed"}}', "a rejection"
        )
        for _ in range(3):
            await raw_exchange(port, malformed)
        await asyncio.sleep(TRAFFIC_SECONDS)  # the traffic phase lasts this long
        await load.finish()
        phase1 = list(traffic.sent)
        counts1 = replace(traffic.counts)
        # T1: a sample that holds every answer of phase 1 (the master sums its workers' counters
        # at each scrape).
        total = f'sum(pointsman_requests_total{{{at_a}, route="shop"}})'
        await prom.until(f"{total} >= {len(phase1)}", "every phase-1 answer")
        t1 = time.time()
        print(f"\nphase 1: {len(phase1)} requests in {TRAFFIC_SECONDS:g} s, {counts1}")

        # Phase 2: rollout A promoted by command, then rollout B fails its analysis.
        load.start()
        rollout = "/v1/routes/shop/rollout"
        phase = f'pointsman_rollout_phase{{{at_a}, route="shop", phase="%s"}} == 1'
        status, body = await a.call(
            "POST", rollout, {"candidate": "green", "stable": "blue", "steps": [10, 100],
                              "step_interval": "1h"}
        )  # fmt: skip
        assert status == 201, body
        await prom.until(phase % "running", "rollout A running")
        status, body = await a.call("POST", rollout + "/promote")
        assert status == 200 and body["phase"] == "promoted", body
        await prom.until(phase % "promoted", "rollout A promoted")
        # The annotations read phases, sampled once a step: a phase shorter than the step can
        # fall between two steps. A real promoted phase lasts until the route's next rollout.
        promoted = f'pointsman_rollout_phase{{{at_a}, route="shop", phase="promoted"}}'
        await prom.until(f"{promoted} offset {INTERVAL:g}s == 1", "a step of promoted")
        # Green back to 0 by hand: a rollout starts at the first step strictly above the
        # candidate's share, and B is to fail at its first step (10 %).
        split = {"weights": {"blue": 100, "green": 0, "dark": 0, "twin": 0}}
        status, body = await a.call("PUT", "/v1/routes/shop/weights", split)
        assert status == 200, body
        analysis = {"interval": "1s", "min_requests": 20, "max_error_rate": 0.01,
                    "failure_limit": 2}  # fmt: skip
        status, body = await a.call(
            "POST", rollout, {"candidate": "green", "stable": "blue", "steps": [10, 50],
                              "step_interval": "1m", "analysis": analysis}
        )  # fmt: skip
        assert status == 201, body
        await prom.until(phase % "running", "rollout B running")
        await prom.until(phase % "failed", "rollout B failed", limit=30.0)
        await load.finish()
        # The annotation's range query needs a step after the rollback's first sample.
        failed_before = f'pointsman_rollout_phase{{{at_a}, route="shop", phase="failed"}}'
        await prom.until(f"{failed_before} offset {INTERVAL:g}s == 1", "the rollback's sample")
        status, rollout_b = await a.call("GET", rollout)
        print(f"rollout B: {rollout_b['phase']} at step {rollout_b['step']}: {rollout_b['reason']}")
        # Both members on the same routing state, as Prometheus last saw them.
        await prom.until(
            "count(pointsman_state_store_up == 1) == 2 and on () "
            "(max(pointsman_state_version) - min(pointsman_state_version)) == 0",
            "both members on the newest state",
        )
        t_end = time.time()

        # Every query, with the variables as Grafana fills them in.
        dashboard = load_dashboard()
        values = {
            "instance": grafana_regex(instance_a),
            "route": "(shop)",
            "pool": "(blue|green)",
            "shadow": "(dark)",
        }
        late_rows = {"Rollouts", "Fleet"}
        results: dict[tuple[str, str], list[Sample]] = {}
        report: list[str] = []
        empty: list[str] = []
        for query in panel_queries(dashboard):
            expr = substitute(query.expr, values)
            at = t_end if query.row in late_rows else t1
            samples = await prom.query(expr, at)
            results[(query.title, query.legend)] = samples
            shown = ", ".join(
                f"{{{','.join(f'{k}={v}' for k, v in sorted(labels.items()))}}} {value:.4g}"
                for labels, value in samples
            )
            report.append(f"[{query.row}] {query.title} ({query.legend})\n  {expr}\n  = {shown}")
            if not finite(samples):
                empty.append(f"{query.row} / {query.title} ({query.legend})")
        events: dict[str, list[tuple[dict[str, str], list[float]]]] = {}
        for query in annotation_queries(dashboard):
            expr = substitute(query.expr, values)
            found = await prom.query_range(expr, test_start, t_end, INTERVAL)
            events[query.title] = found
            report.append(f"[annotation] {query.title}\n  {expr}\n  = {found}")
            if not found:
                empty.append(f"annotation {query.title}")
        variables: dict[str, list[str]] = {}
        for variable in dashboard["templating"]["list"][1:]:
            match = re.fullmatch(r"label_values\((.*), (\w+)\)", variable["definition"])
            assert match, variable["definition"]
            selector = substitute(match.group(1), {**values, "pool": ".*"})
            variables[variable["name"]] = await prom.label_values(
                match.group(2), selector, test_start
            )
            report.append(f"[variable] {variable['name']}: {variable['definition']}")
            report.append(f"  = {variables[variable['name']]}")
        print("\n".join(report))
        print(f"wall time to the checks: {time.monotonic() - started:.1f} s")

        assert not empty, f"queries that returned no data: {empty}"
        assert {instance_a, instance_b} <= set(variables["instance"])
        assert variables["route"] == ["shop"]
        assert set(variables["pool"]) == {"blue", "green", "dark", "twin"}
        assert variables["shadow"] == ["dark"]

        def value(title: str, legend: str, label: str, key: str) -> float | None:
            return by(results[(title, legend)], label).get(key)

        # Traffic split: green's share is its weight's.
        green_share = counts1.green / (counts1.green + counts1.blue)
        share = "Traffic share vs configured weight"
        near(value(share, "{{pool}} actual", "pool", "green"), green_share, 0.01, "green share")
        near(value(share, "{{pool}} actual", "pool", "green"), 0.10, 0.04, "green share")
        near(value(share, "{{pool}} weight", "pool", "green"), 0.10, 1e-9, "green weight share")
        near(value(share, "{{pool}} weight", "pool", "blue"), 0.90, 1e-9, "blue weight share")
        weights = by(results[("Configured weight", "{{route}} / {{pool}}")], "pool")
        assert weights == {"blue": 90, "green": 10}
        rates = by(results[("Requests/s by pool", "{{route}} / {{pool}}")], "pool")
        assert rates["blue"] > 0 and rates["green"] > 0

        # Errors: green's 5 %, blue's dead endpoint, the malformed requests.
        five = by(results[("5xx ratio by pool", "{{route}} / {{pool}}")], "pool")
        near(five.get("green"), counts1.green_errors / counts1.green, 0.005, "green 5xx ratio")
        near(five.get("green"), 0.05, 0.015, "green 5xx ratio")
        assert five.get("blue") == 0
        errors = "Proxy errors by kind"
        assert (value(errors, "{{pool}} connect errors", "pool", "blue") or 0) > 0
        assert (value(errors, "{{pool}} retries", "pool", "blue") or 0) > 0
        assert value(errors, "{{pool}} timeouts", "pool", "green") == 0
        rejected = by(results[("Rejected requests by reason", "{{reason}}")], "reason")
        assert rejected.get("malformed", 0) > 0, rejected

        # Latency: green answers 50 ms late.
        p50 = by(results[("p50 latency by pool", "{{route}} / {{pool}}")], "pool")
        p99 = by(results[("p99 latency by pool", "{{route}} / {{pool}}")], "pool")
        assert GREEN_DELAY <= p50["green"] <= 0.1, p50
        assert p50["blue"] < p50["green"], p50
        assert p99["green"] >= p50["green"], p99

        # Shadows: the injected mismatches and timeouts; everything else is noise.
        compared = [n for n in phase1 if n % 20 != 7]
        mismatched = [n for n in compared if n % 10 == 0]
        expected = len(mismatched) / len(compared)
        mismatch = by(results[("Shadow mismatch rate", "{{shadow}}")], "shadow")
        near(mismatch.get("dark"), expected, 0.03, "dark mismatch rate")
        paths = by(results[("Mismatch rate by path", "{{shadow}} {{path}}")], "path")
        near(paths.get("$.price"), expected, 0.03, "dark mismatch rate of $.price")
        noise = by(results[("Noise rate", "{{shadow}}")], "shadow")
        near(noise.get("dark"), 1 - expected, 0.05, "dark noise rate")
        delta = "Shadow latency delta (shadow - live)"
        near(value(delta, "{{shadow}} p50", "shadow", "dark"), DARK_DELAY, 0.025, "delta p50")
        drops = by(results[("Shadow drops by reason", "{{shadow}} {{reason}}")], "reason")
        mirrored = value("Shadow drops by reason", "{{shadow}} mirrored", "shadow", "dark")
        assert mirrored
        near(drops.get("timeout", 0) / mirrored, 1 / 20, 0.02, "timeout drops / mirrored")

        # Health: blue has 1 healthy endpoint of 2 (the dead one was ejected once).
        health = "Healthy endpoints per pool"
        assert by(results[(health, "{{instance}} {{pool}} up")], "pool") == {"blue": 1, "green": 1}
        assert by(results[(health, "{{instance}} {{pool}} all")], "pool") == {"blue": 2, "green": 1}
        out = results[("Endpoints out", "{{instance}} {{pool}} {{endpoint}}")]
        assert [(s["pool"], s["endpoint"]) for s, _ in out] == [("blue", traffic.dead)]
        ejections = by(results[("Ejections", "{{instance}} {{endpoint}}")], "endpoint")
        assert ejections[traffic.dead] >= 0.9, ejections
        assert all(v == 0 for k, v in ejections.items() if k != traffic.dead), ejections
        assert by(results[("Workers ready", "{{instance}}")], "instance") == {instance_a: 2}

        # Rollouts, at the end: B failed at its first step, A was promoted.
        step_phase = "Rollout step and phase"
        assert by(results[(step_phase, "{{route}} {{phase}}")], "phase") == {"failed": 1}
        assert by(results[(step_phase, "{{route}} step")], "route") == {"shop": 0}
        canary = by(results[("Canary weight", "{{route}} {{candidate}}")], "candidate")
        assert canary == {"green": 0}
        checks = "Analysis: value vs threshold"
        error_rate = value(checks, "{{check}} value", "check", "error_rate")
        threshold = value(checks, "{{check}} threshold", "check", "error_rate")
        assert threshold == 0.01
        assert error_rate is not None and error_rate > threshold
        counters = "Promotions and rollbacks"
        assert by(results[(counters, "{{route}} promoted")], "route") == {"shop": 1}
        rolled_back = by(results[(counters, "{{route}} rolled back: {{reason}}")], "reason")
        assert sum(rolled_back.values()) == 1 and set(rolled_back) <= {
            "error_rate",
            "error_rate_vs_stable",
        }, rolled_back
        promoted = events["Rollout promotions"]
        assert [s["phase"] for s, _ in promoted] == ["promoted"]
        assert 1 <= len(promoted[0][1]) <= 2, promoted
        failed = events["Rollout rollbacks"]
        assert [s["phase"] for s, _ in failed] == ["failed"]
        assert 1 <= len(failed[0][1]) <= 2, failed
        assert promoted[0][1][0] < failed[0][1][0]

        # Fleet: two members on the same state, both reaching etcd.
        members = results[("Fleet members", "members")]
        assert [v for _, v in members] == [2]
        assert [v for _, v in results[("Fleet members", "reaching etcd")]] == [2]
        lag = by(results[("State version lag", "{{instance}}")], "instance")
        assert lag == {instance_a: 0, instance_b: 0}
        since = by(results[("Seconds since last sync", "{{instance}}")], "instance")
        assert set(since) == {instance_a, instance_b} and max(since.values()) < 10, since
        assert set(
            by(results[("Store up and refusing", "{{instance}} up")], "instance").values()
        ) == {1}
        refusing = by(results[("Store up and refusing", "{{instance}} refusing")], "instance")
        assert set(refusing.values()) == {0}
    print(f"wall time: {time.monotonic() - started:.1f} s")
