"""benchmarks/report.py: paired per-round ratios, on synthetic result directories."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPORT_PY = Path(__file__).resolve().parent.parent / "benchmarks" / "report.py"


def _load_report() -> ModuleType:
    # benchmarks/ is not a package: load the script by its path.
    spec = importlib.util.spec_from_file_location("bench_report", REPORT_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


report = _load_report()

RPS_CHECK = "Pointsman req/s vs nginx proxy"
P99_CHECK = "Pointsman p99 vs nginx proxy (50 connections)"
SLOW_RPS_CHECK = "1 s shadow at 100 %: Pointsman req/s vs no shadow"
SLOW_P99_CHECK = "1 s shadow at 100 %: Pointsman p99 vs no shadow"
FAST_CPU_CHECK = "Fast shadow at 100 %: CPU per request vs no shadow"


def wrk_text(rps: float, p99_ms: float, p50_ms: float = 1.5, seconds: int = 10) -> str:
    """What `wrk -t2 -c50 -d10s --latency` prints (the figures that matter are consistent:
    requests = rps x seconds)."""
    requests = round(rps * seconds)
    return (
        f"Running {seconds}s test @ http://127.0.0.1:40000/\n"
        "  2 threads and 50 connections\n"
        "  Thread Stats   Avg      Stdev     Max   +/- Stdev\n"
        f"    Latency     {p50_ms * 1.1:.2f}ms    0.94ms  25.48ms   92.08%\n"
        f"    Req/Sec    {rps / 2000:.2f}k     1.17k   20.71k    72.50%\n"
        "  Latency Distribution\n"
        f"     50%    {p50_ms:.2f}ms\n"
        f"     75%    {p50_ms * 1.2:.2f}ms\n"
        f"     90%    {p50_ms * 1.5:.2f}ms\n"
        f"     99%    {p99_ms:.2f}ms\n"
        f"  {requests} requests in {seconds}.00s, 49.49MB read\n"
        f"Requests/sec:  {rps:.2f}\n"
        "Transfer/sec:      4.95MB\n"
    )


def write_results(
    results: Path,
    rounds: int,
    *,
    skip_shadow: bool = True,
    extra_meta: dict[str, str] | None = None,
) -> None:
    results.mkdir(parents=True, exist_ok=True)
    meta = {
        "wrk_threads": "2",
        "wrk_conns": "50",
        "wrk_seconds": "10",
        "wrk_warmup": "2",
        "rounds": str(rounds),
        "round_order": "alternating",
        "skip_wrk": "0",
        "skip_idle": "1",
        "skip_stream": "1",
        "skip_shadow": "1" if skip_shadow else "0",
        "shadow_delay": "1.0",
        "nginx_bin": "/nonexistent/nginx",
        "wrk_bin": "/nonexistent/wrk",
        "pointsman_cmd": "pointsman run --config x.yaml",
        "pointsman_label": "",
        "clk_tck": "100",
    }
    meta.update(extra_meta or {})
    (results / "meta.env").write_text("".join(f"{k}={v}\n" for k, v in meta.items()))


def write_wrk(results: Path, target: str, per_round: dict[int, tuple[float, float]]) -> None:
    """wrk_<target>_<round>.txt for {round: (req/s, p99 ms)}."""
    for n, (rps, p99) in per_round.items():
        (results / f"wrk_{target}_{n}.txt").write_text(wrk_text(rps, p99))


def render(results: Path) -> tuple[str, dict[str, Any], bool, dict[str, dict[str, str]]]:
    out = results / "RESULTS.md"
    text, summary, failed = report.render(results, out)
    assert out.read_text() == text
    json.dumps(summary)  # what run.sh writes to summary.json must serialise
    checks = {c["name"]: c for c in summary["checks"]}
    return text, summary, failed, checks


def test_targets_follow_the_median_of_per_round_ratios_not_the_ratio_of_medians(
    tmp_path: Path,
) -> None:
    write_results(tmp_path, 3)
    write_wrk(tmp_path, "backend", {1: (70000, 4.0), 2: (60000, 4.0), 3: (65000, 4.0)})
    # nginx medians: 30,000 req/s, p99 4 ms
    write_wrk(tmp_path, "nginx", {1: (40000, 2.0), 2: (30000, 4.0), 3: (20000, 6.0)})
    # Pointsman medians: 24,000 req/s (0.80x nginx: would pass), p99 6.6 ms (1.65x: would
    # fail); per round: req/s 0.65, 0.68, 1.20 (median 0.68: fails), p99 3.5, 0.7, 1.1
    # (median 1.1: passes)
    write_wrk(tmp_path, "pointsman", {1: (26000, 7.0), 2: (20400, 2.8), 3: (24000, 6.6)})

    text, summary, failed, checks = render(tmp_path)

    rps_check = checks[RPS_CHECK]
    assert rps_check["result"] == "**FAIL**"
    assert rps_check["measured"] == (
        "0.680x (median of 3 per-round ratios 0.65-1.20; ratio of medians 0.80x: 24,000 vs 30,000)"
    )
    p99_check = checks[P99_CHECK]
    assert p99_check["result"] == "**PASS**"
    assert p99_check["measured"] == (
        "1.100x (median of 3 per-round ratios 0.70-3.50; "
        "ratio of medians 1.65x: 6.60 ms vs 4.00 ms)"
    )
    assert failed

    assert (
        "Per-round ratios (paired), Pointsman / nginx proxy: req/s 0.65, 0.68, 1.20 -> median "
        "0.68x; p99 3.50, 0.70, 1.10 -> median 1.10x." in text
    )
    assert "| Pointsman / nginx proxy, ratio of medians | 0.80x | 1.00x | 1.65x | | |" in text
    assert (
        "| **Pointsman / nginx proxy, median of per-round ratios** | **0.68x** | | **1.10x** "
        "| | |" in text
    )
    # the text says how the ratios are computed
    assert "even rounds in the reverse order" in text
    assert "divided by nginx's from the same round (adjacent runs)" in text
    assert "median of these per-round ratios" in text

    ratios = summary["ratios"]
    assert ratios["rps"] == pytest.approx(20400 / 30000)
    assert ratios["p99"] == pytest.approx(1.1)
    assert ratios["rps_of_medians"] == pytest.approx(0.8)
    assert ratios["p99_of_medians"] == pytest.approx(1.65)
    assert [r["round"] for r in ratios["rps_per_round"]] == [1, 2, 3]
    assert [r["ratio"] for r in ratios["rps_per_round"]] == pytest.approx([0.65, 0.68, 1.2])
    assert [r["ratio"] for r in ratios["p99_per_round"]] == pytest.approx([3.5, 0.7, 1.1])
    assert [r["rps"] for r in summary["wrk_per_round"]["nginx"]] == [40000, 30000, 20000]


def test_rounds_from_ten_on_are_ordered_by_number(tmp_path: Path) -> None:
    rounds = range(1, 12)
    write_results(tmp_path, len(rounds))
    write_wrk(tmp_path, "nginx", {n: (10000, 4.0) for n in rounds})
    # round n: 0.50 + n / 100 of nginx
    write_wrk(tmp_path, "pointsman", {n: (5000 + 100 * n, 4.0) for n in rounds})

    text, summary, failed, checks = render(tmp_path)

    expected = ", ".join(f"{0.5 + n / 100:.2f}" for n in rounds)
    assert expected.startswith("0.51, 0.52, 0.53") and expected.endswith("0.60, 0.61")
    assert f"req/s {expected} -> median 0.56x" in text
    assert [r["round"] for r in summary["ratios"]["rps_per_round"]] == list(rounds)
    assert [r["round"] for r in summary["wrk_per_round"]["pointsman"]] == list(rounds)
    assert checks[RPS_CHECK]["measured"].startswith(
        "0.560x (median of 11 per-round ratios 0.51-0.61;"
    )
    assert checks[RPS_CHECK]["result"] == "**FAIL**"
    assert checks[P99_CHECK]["result"] == "**PASS**"
    assert failed


def test_round_files_reads_the_round_as_a_number(tmp_path: Path) -> None:
    for name in ("shadow_pm_slow_10.json", "shadow_pm_slow_9.json", "shadow_pm_slow_2.json",
                 "shadow_pm_slow_x.json", "shadow_pm_slow_plain_3.json"):  # fmt: skip
        (tmp_path / name).write_text("{}")
    found = report.round_files(tmp_path, "shadow_pm_slow", ".json")
    assert list(found) == [2, 9, 10]
    assert found[10].name == "shadow_pm_slow_10.json"


def test_a_single_round_is_its_own_paired_median(tmp_path: Path) -> None:
    write_results(tmp_path, 1)
    write_wrk(tmp_path, "nginx", {1: (32000, 4.0)})
    write_wrk(tmp_path, "pointsman", {1: (24000, 5.0)})

    text, summary, failed, checks = render(tmp_path)

    assert checks[RPS_CHECK]["measured"] == (
        "0.750x (1 round; ratio of medians 0.75x: 24,000 vs 32,000)"
    )
    assert checks[RPS_CHECK]["result"] == "**PASS**"
    assert checks[P99_CHECK]["measured"] == (
        "1.250x (1 round; ratio of medians 1.25x: 5.00 ms vs 4.00 ms)"
    )
    assert checks[P99_CHECK]["result"] == "**PASS**"
    assert "req/s 0.75 -> median 0.75x; p99 1.25 -> median 1.25x." in text
    assert summary["ratios"]["rps"] == pytest.approx(0.75)
    assert summary["ratios"]["rps_per_round"] == [{"round": 1, "ratio": pytest.approx(0.75)}]
    assert not failed


def test_only_rounds_with_both_results_are_paired(tmp_path: Path) -> None:
    write_results(tmp_path, 3)
    write_wrk(tmp_path, "nginx", {1: (30000, 4.0), 2: (30000, 4.0), 3: (30000, 4.0)})
    write_wrk(tmp_path, "pointsman", {1: (24000, 4.0), 3: (18000, 4.0)})
    (tmp_path / "wrk_pointsman_2.txt").write_text("unable to connect to 127.0.0.1:1\n")

    text, summary, _failed, checks = render(tmp_path)

    assert "req/s r1 0.80, r3 0.60 -> median 0.70x" in text
    assert checks[RPS_CHECK]["measured"].startswith("0.700x (median of 2 per-round ratios")
    assert [r["round"] for r in summary["ratios"]["rps_per_round"]] == [1, 3]


def write_shadow(
    results: Path,
    phase: str,
    per_round: dict[int, tuple[float, float]],
    ticks: dict[int, int] | None = None,
) -> None:
    """shadow_<phase>_<round>.txt for {round: (req/s, p99 ms)}, .cpu for {round: ticks}."""
    for n, (rps, p99) in per_round.items():
        (results / f"shadow_{phase}_{n}.txt").write_text(wrk_text(rps, p99))
    for n, t in (ticks or {}).items():
        (results / f"shadow_{phase}_{n}.cpu").write_text(f"{t}\n")


def test_shadow_targets_use_per_round_ratios(tmp_path: Path) -> None:
    write_results(tmp_path, 3, skip_shadow=False)
    write_wrk(tmp_path, "nginx", {n: (30000, 4.0) for n in (1, 2, 3)})
    write_wrk(tmp_path, "pointsman", {n: (24000, 4.0) for n in (1, 2, 3)})
    # CPU per request (ticks / 100 / requests): no shadow 30, 40, 25 µs (median 30);
    # fast shadow 55, 70, 65 µs (median 65: 2.17x, would fail); per round 1.83, 1.75, 2.60
    # (median 1.83: passes)
    write_shadow(
        tmp_path,
        "pm_plain",
        {1: (20000, 4.0), 2: (10000, 5.0), 3: (20000, 4.0)},
        {1: 600, 2: 400, 3: 500},
    )
    write_shadow(
        tmp_path,
        "pm_fast",
        {1: (12000, 9.0), 2: (8000, 9.0), 3: (10000, 9.0)},
        {1: 660, 2: 560, 3: 650},
    )
    # 1 s shadow: req/s per round 0.95, 0.98, 0.85 (median 0.95: passes; medians 17,000 vs
    # 20,000 = 0.85 would fail); p99 1.05, 1.00, 1.50 (median 1.05: passes)
    write_shadow(
        tmp_path,
        "pm_slow",
        {1: (19000, 4.2), 2: (9800, 5.0), 3: (17000, 6.0)},
        {1: 580, 2: 390, 3: 510},
    )
    write_shadow(tmp_path, "nginx_plain", {1: (30000, 5.0), 2: (28000, 5.0), 3: (32000, 5.0)})
    write_shadow(tmp_path, "nginx_mirror", {n: (50, 1010.0) for n in (1, 2, 3)})
    for n in (1, 2, 3):
        view = {"mirrored": 1000 * n, "compared": 900 * n, "dropped": {"full": n, "timeout": 0}}
        (tmp_path / f"shadow_pm_slow_{n}.json").write_text(json.dumps(view))

    text, summary, failed, checks = render(tmp_path)

    fast = checks[FAST_CPU_CHECK]
    assert fast["measured"] == (
        "1.833x (median of 3 per-round ratios 1.75-2.60; ratio of medians 2.17x: 65.0 vs 30.0 µs)"
    )
    assert fast["result"] == "**PASS**"
    assert "- fast shadow / no shadow, CPU per request: 1.83, 1.75, 2.60 -> median 1.83x" in text
    assert summary["shadow"]["fast_cpu_ratio"] == pytest.approx(55 / 30)
    per_round = summary["shadow"]["fast_cpu_ratios"]["cpu_per_request_per_round"]
    assert [r["ratio"] for r in per_round] == pytest.approx([55 / 30, 70 / 40, 65 / 25])
    plain_rounds = summary["shadow"]["pm_plain"]["per_round"]
    assert [r["cpu_per_request"] for r in plain_rounds] == pytest.approx([30e-6, 40e-6, 25e-6])

    assert checks[SLOW_RPS_CHECK]["measured"] == (
        "0.950x (median of 3 per-round ratios 0.85-0.98; ratio of medians 0.85x)"
    )
    assert checks[SLOW_RPS_CHECK]["result"] == "**PASS**"
    assert checks[SLOW_P99_CHECK]["measured"] == (
        "1.050x (median of 3 per-round ratios 1.00-1.50; ratio of medians 1.25x)"
    )
    assert checks[SLOW_P99_CHECK]["result"] == "**PASS**"
    assert (
        "- 1 s shadow / no shadow (Pointsman): req/s 0.95, 0.98, 0.85 -> median 0.95x; "
        "p99 1.05, 1.00, 1.50 -> median 1.05x" in text
    )
    assert summary["shadow"]["slow_ratios"]["rps"] == pytest.approx(0.95)

    assert (
        "- nginx `mirror` / no mirror: req/s 0.00, 0.00, 0.00 -> median 0.00x; "
        "p99 202.00, 202.00, 202.00 -> median 202.00x" in text
    )
    assert "(fails the 10 % bound)" in text
    ng = summary["shadow"]["nginx_mirror_ratios"]
    assert [r["ratio"] for r in ng["p99_per_round"]] == pytest.approx([202.0] * 3)
    # the shadow counts are from the last round
    assert "mirrored 3,000, compared 2,700, dropped {'full': 3} (round 3)" in text
    assert not failed


def test_shadow_cpu_target_fails_on_the_paired_median(tmp_path: Path) -> None:
    write_results(tmp_path, 2, skip_shadow=False)
    write_shadow(tmp_path, "pm_plain", {1: (20000, 4.0), 2: (20000, 4.0)}, {1: 600, 2: 600})
    write_shadow(tmp_path, "pm_slow", {1: (20000, 4.0), 2: (20000, 4.0)}, {1: 600, 2: 600})
    # 2.1x and 2.3x of no shadow per round
    write_shadow(tmp_path, "pm_fast", {1: (10000, 4.0), 2: (10000, 4.0)}, {1: 630, 2: 690})

    text, summary, failed, checks = render(tmp_path)

    assert checks[FAST_CPU_CHECK]["result"] == "**FAIL**"
    assert checks[FAST_CPU_CHECK]["measured"].startswith(
        "2.200x (median of 2 per-round ratios 2.10-2.30;"
    )
    assert "CPU per request: 2.10, 2.30 -> median 2.20x" in text
    assert summary["shadow"]["fast_cpu_ratio"] == pytest.approx(2.2)
    assert failed


# --------------------------------------------------------------------------- workers phase

WORKERS_RPS_CHECK = "Pointsman workers: 2 req/s vs nginx worker_processes 2"
WORKERS_P99_CHECK = "Pointsman workers: 2 p99 vs nginx worker_processes 2"
WORKERS_CPU_CHECK = "CPU per request, workers: 2 vs workers: 1"
MASTER_CPU_CHECK = "Master CPU at full load (workers: 2)"
FLIP_CHECK = "Flip under load (workers: 2): control API answer p99"
WORKER_CHECKS = (
    WORKERS_RPS_CHECK,
    WORKERS_P99_CHECK,
    WORKERS_CPU_CHECK,
    MASTER_CPU_CHECK,
    FLIP_CHECK,
)


def prom_text(requests: dict[int, int], open_conns: dict[int, int], restarts: int = 0) -> str:
    """The per-worker series of the master's /metrics, as prometheus_client prints them."""
    lines = [
        "# HELP pointsman_workers_ready Workers serving traffic now.",
        "# TYPE pointsman_workers_ready gauge",
        f"pointsman_workers_ready {float(len(requests))}",
        "# TYPE pointsman_worker_open_connections gauge",
    ]
    lines += [
        f'pointsman_worker_open_connections{{worker="{w}"}} {float(n)}'
        for w, n in open_conns.items()
    ]
    lines.append("# TYPE pointsman_worker_restarts_total counter")
    lines += [
        f'pointsman_worker_restarts_total{{worker="{w}"}} {float(restarts if w == 0 else 0)}'
        for w in requests
    ]
    lines.append("# TYPE pointsman_worker_requests_total counter")
    lines += [
        f'pointsman_worker_requests_total{{worker="{w}"}} {float(n)}' for w, n in requests.items()
    ]
    lines.append('pointsman_requests_total{route="shop",pool="blue",status="2xx"} 1.0e+06')
    return "\n".join(lines) + "\n"


def write_workers_run(
    results: Path,
    target: str,
    n: int,
    rps: float,
    p99_ms: float,
    *,
    total_ticks: int,
    master_ticks: int | None = None,
    wall: float = 10.0,
    requests: dict[int, int] | None = None,
    open_conns: dict[int, int] | None = None,
    restarts: int = 0,
) -> None:
    """workers_<target>_<n>.txt (wrk), .cpu, and for Pointsman the .before/.mid/.after.prom
    scrapes: `requests` is what each worker answered during the run (the counters start at
    1,000 per worker), `open_conns` the mid-run gauge."""
    base = results / f"workers_{target}_{n}"
    base.with_suffix(".txt").write_text(wrk_text(rps, p99_ms))
    cpu = {
        "total_ticks": total_ticks,
        "master_ticks": master_ticks or 0,
        "processes": 3,
        "wall_start": 1796391000.25,
        "wall_end": 1796391000.25 + wall,
    }
    base.with_suffix(".cpu").write_text("".join(f"{k}={v}\n" for k, v in cpu.items()))
    if requests is None:
        return
    start = dict.fromkeys(requests, 1000)
    end = {w: 1000 + r for w, r in requests.items()}
    (results / f"{base.name}.before.prom").write_text(prom_text(start, dict.fromkeys(requests, 0)))
    (results / f"{base.name}.mid.prom").write_text(prom_text(start, open_conns or {}))
    (results / f"{base.name}.after.prom").write_text(prom_text(end, {}, restarts))


def write_flips(
    results: Path, latencies_ms: list[float], statuses: list[int] | None = None
) -> None:
    lines = ["# POST /v1/routes/shop/flip on 127.0.0.1:1: flip pool status latency_ms offset_s"]
    for i, ms in enumerate(latencies_ms):
        status = statuses[i] if statuses else 200
        lines.append(
            f"{i + 1} {'green' if i % 2 == 0 else 'blue'} {status} {ms:.3f} {0.5 + i * 0.18:.3f}"
        )
    (results / "flips.txt").write_text("\n".join(lines) + "\n")
    (results / "flips_wrk.txt").write_text(wrk_text(20000, 5.0))


def workers_meta(flips: int = 50) -> dict[str, str]:
    return {"skip_workers": "0", "workers_skipped_because": "", "flips": str(flips)}


def write_workers_phase(results: Path) -> None:
    """Three rounds of the workers phase; see test_workers_targets_use_per_round_ratios. (And
    phase 1, passing.)"""
    write_wrk(results, "nginx", {n: (30000, 4.0) for n in (1, 2, 3)})
    write_wrk(results, "pointsman", {n: (27000, 4.0) for n in (1, 2, 3)})
    # nginx, 2 workers: medians 30,000 req/s, p99 4 ms; 15 µs per request
    for n, (rps, p99) in {1: (40000, 2.0), 2: (30000, 4.0), 3: (20000, 6.0)}.items():
        write_workers_run(results, "nginx_w2", n, rps, p99, total_ticks=round(rps * 10 * 15e-4))
    # workers: 2, req/s 0.65, 0.95, 1.20 of nginx (median 0.95: passes; the medians, 26,000 vs
    # 30,000 = 0.87, would fail); p99 1.1, 1.1, 1.5 (median 1.1: passes); 40, 38, 36 µs per
    # request; the master 1, 2 and 3 % of one core over the 10 s runs
    pm2 = {1: (26000, 2.2, 1040, 10), 2: (28500, 4.4, 1083, 20), 3: (24000, 9.0, 864, 30)}
    spread = {
        1: ({0: 140000, 1: 120000}, {0: 26, 1: 24}),  # 1.17, 1.08
        2: ({0: 150000, 1: 135000}, {0: 25, 1: 25}),  # 1.11, 1.00
        3: ({0: 120000, 1: 120000}, {0: 30, 1: 20}),  # 1.00, 1.50
    }
    for n, (rps, p99, ticks, master) in pm2.items():
        requests, opened = spread[n]
        write_workers_run(
            results,
            "pm_w2",
            n,
            rps,
            p99,
            total_ticks=ticks,
            master_ticks=master,
            requests=requests,
            open_conns=opened,
        )
    # workers: 1, 36 µs per request: CPU ratios 1.11, 1.06, 1.00 (median 1.06: passes)
    for n in (1, 2, 3):
        write_workers_run(
            results,
            "pm_w1",
            n,
            25000,
            4.0,
            total_ticks=900,
            master_ticks=5,
            requests={0: 250000},
            open_conns={0: 50},
        )
    shared = {
        1: ({0: 200000, 1: 60000}, {0: 40, 1: 10}),  # 3.33, 4.00
        2: ({0: 180000, 1: 90000}, {0: 35, 1: 15}),  # 2.00, 2.33
        3: ({0: 0, 1: 240000}, {0: 0, 1: 50}),  # inf, inf
    }
    for n, (requests, opened) in shared.items():
        write_workers_run(
            results,
            "pm_w2_shared",
            n,
            26000,
            4.0,
            total_ticks=1000,
            master_ticks=8,
            requests=requests,
            open_conns=opened,
        )


def test_the_workers_phase_says_its_own_round_count(tmp_path: Path) -> None:
    # BENCH_WORKERS_ROUNDS: the workers phase runs more rounds than the others
    write_results(tmp_path, 2, extra_meta={**workers_meta(), "workers_rounds": "3"})
    write_workers_phase(tmp_path)

    text, _summary, _failed, checks = render(tmp_path)

    assert "Same wrk settings and backend as above, 3 round(s) of the targets below" in text
    assert checks[WORKERS_RPS_CHECK]["measured"].startswith("0.950x (median of 3 per-round")


def test_workers_targets_use_per_round_ratios(tmp_path: Path) -> None:
    write_results(tmp_path, 3, extra_meta=workers_meta())
    write_workers_phase(tmp_path)
    write_flips(tmp_path, [0.3 * (i + 1) for i in range(50)])  # 0.3 ... 15 ms

    text, summary, failed, checks = render(tmp_path)

    rps = checks[WORKERS_RPS_CHECK]
    assert rps["measured"] == (
        "0.950x (median of 3 per-round ratios 0.65-1.20; ratio of medians 0.87x: 26,000 vs 30,000)"
    )
    assert rps["required"] == "≥ 0.90x"
    assert rps["result"] == "**PASS**"
    p99 = checks[WORKERS_P99_CHECK]
    assert p99["measured"].startswith("1.100x (median of 3 per-round ratios 1.10-1.50;")
    assert p99["result"] == "**PASS**"
    cpu = checks[WORKERS_CPU_CHECK]
    assert cpu["measured"] == (
        "1.056x (median of 3 per-round ratios 1.00-1.11; ratio of medians 1.06x: 38.0 vs 36.0 µs)"
    )
    assert cpu["result"] == "**PASS**"
    master = checks[MASTER_CPU_CHECK]
    assert master["measured"] == "2.00 % (median of 3 rounds 1.00-3.00 %)"
    assert master["required"] == "< 3 % of one core"
    assert master["result"] == "**PASS**"
    flip = checks[FLIP_CHECK]
    assert flip["measured"].startswith("p99 15.00 ms (nearest rank of 50; p50 7.50 ms, max 15.00")
    assert flip["result"] == "**PASS**"
    assert not failed

    # the comparisons table: per-round values and their median
    assert (
        "| (a) req/s, Pointsman `workers: 2` / nginx `worker_processes 2` | 0.65, 0.95, 1.20 "
        "| **0.95x** (26,000 vs 30,000) | ≥ 0.90x | **PASS** |" in text
    )
    assert (
        "| (b) CPU per request, `workers: 2` / `workers: 1` | 1.11, 1.06, 1.00 | **1.06x** "
        "(38.0 vs 36.0 µs) | ≤ 1.10x | **PASS** |" in text
    )
    assert (
        "| (c) master CPU, `workers: 2` at full load (% of one core) | 1.00 %, 2.00 %, 3.00 % "
        "| **2.00 %** | < 3 % of one core | **PASS** |" in text
    )
    assert (
        "| (d) requests max/min over the workers, SO_REUSEPORT | 1.17, 1.11, 1.00 | **1.11** "
        "| (no target) | |" in text
    )
    assert (
        "| (d) requests max/min over the workers, shared socket | 3.33, 2.00, ∞ | **3.33** "
        "| (no target) | |" in text
    )
    assert "| (d) open connections mid-run max/min over the workers, shared socket | 4.00, " in text
    # the absolute figures: medians per target, and the spread per round
    assert (
        "| Pointsman, `workers: 2` (one SO_REUSEPORT socket per worker, each bound to a CPU) "
        "| 26,000 | 1.50 ms "
        "| 4.40 ms | 38.0 µs | 2.00 % | 1.11 | 1.08 | 0 |" in text
    )
    assert (
        "| nginx proxy, `worker_processes 2` | 30,000 | 1.50 ms | 4.00 ms | 15.0 µs | - |" in text
    )
    assert (
        "| 1 | Pointsman, `workers: 2` (one SO_REUSEPORT socket per worker, each bound to a CPU) "
        "| 26,000 | 2.20 ms "
        "| 40.0 µs | 1.00 % | 53.8 % / 46.2 % | 1.17 | 26 / 24 | 1.08 |" in text
    )
    assert "| 3 | Pointsman, `workers: 2`, `--shared-socket` | 26,000 | 4.00 ms | 38.5 µs " in text
    assert "| 0.0 % / 100.0 % | ∞ | 0 / 50 | ∞ |" in text

    workers = summary["workers"]
    assert workers["rps_ratios"]["median"] == pytest.approx(0.95)
    assert [r["ratio"] for r in workers["rps_ratios"]["per_round"]] == pytest.approx(
        [0.65, 0.95, 1.2]
    )
    assert workers["cpu_ratios"]["median"] == pytest.approx(38 / 36)
    assert workers["master_cpu_pct"]["median"] == pytest.approx(2.0)
    shared_rounds = workers["pm_w2_shared"]["per_round"]
    assert [r["request_spread"] for r in shared_rounds] == pytest.approx([10 / 3, 2.0, None])
    assert shared_rounds[0]["requests_by_worker"] == {"0": 200000, "1": 60000}
    assert shared_rounds[0]["open_by_worker"] == {"0": 40, "1": 10}
    assert workers["spread"]["pm_w2_shared_requests"]["median"] == pytest.approx(10 / 3)
    assert workers["flips"]["p99_ms"] == pytest.approx(15.0)
    assert workers["flips"]["p50_ms"] == pytest.approx(7.5)
    assert workers["pm_w2"]["per_round"][0]["cpu_per_request"] == pytest.approx(40e-6)


def test_workers_targets_fail_on_cpu_master_share_and_slow_flips(tmp_path: Path) -> None:
    write_results(tmp_path, 2, extra_meta=workers_meta())
    for n in (1, 2):
        write_workers_run(tmp_path, "nginx_w2", n, 30000, 4.0, total_ticks=450)
        # 1.15x and 1.25x the CPU per request of workers: 1; the master 3.5 % and 4.5 %
        write_workers_run(
            tmp_path,
            "pm_w2",
            n,
            25000,
            5.0,
            total_ticks=(1035, 1125)[n - 1],
            master_ticks=(35, 45)[n - 1],
            requests={0: 125000, 1: 125000},
            open_conns={0: 25, 1: 25},
            restarts=n - 1,
        )
        write_workers_run(
            tmp_path,
            "pm_w1",
            n,
            25000,
            4.0,
            total_ticks=900,
            master_ticks=5,
            requests={0: 250000},
            open_conns={0: 50},
        )
    # 49 flips at 5 ms, one at 25 ms: p99 (nearest rank of 50) is the slow one
    write_flips(tmp_path, [5.0] * 49 + [25.0])

    text, _summary, failed, checks = render(tmp_path)

    assert checks[WORKERS_RPS_CHECK]["result"] == "**FAIL**"  # 0.83x
    assert checks[WORKERS_P99_CHECK]["result"] == "**FAIL**"  # 1.25x
    assert checks[WORKERS_CPU_CHECK]["measured"].startswith(
        "1.200x (median of 2 per-round ratios 1.15-1.25;"
    )
    assert checks[WORKERS_CPU_CHECK]["result"] == "**FAIL**"
    assert checks[MASTER_CPU_CHECK]["measured"] == "4.00 % (median of 2 rounds 3.50-4.50 %)"
    assert checks[MASTER_CPU_CHECK]["result"] == "**FAIL**"
    assert checks[FLIP_CHECK]["measured"].startswith("p99 25.00 ms (nearest rank of 50; p50 5.00")
    assert checks[FLIP_CHECK]["result"] == "**FAIL**"
    assert "| (d) requests max/min over the workers, shared socket | - | - | (no target) |" in text
    row = "| Pointsman, `workers: 2`, `--shared-socket` | - | - | - | - | - | - | - | no result |"
    assert row in text
    # a worker replaced during a run shows beside the errors
    assert "| 1.00 | 1.00 | 0; 1 worker restart(s) |" in text
    assert failed


def test_workers_compare_each_side_with_and_without_its_workers_bound(tmp_path: Path) -> None:
    write_results(tmp_path, 2, extra_meta=workers_meta(flips=0))
    spread = {"requests": {0: 150000, 1: 150000}, "open_conns": {0: 25, 1: 25}}
    for n in (1, 2):
        write_workers_run(tmp_path, "nginx_w2", n, 30000, 4.0, total_ticks=450)
        write_workers_run(tmp_path, "nginx_w2_bound", n, 30000, (2.0, 4.0)[n - 1],
                          total_ticks=450)  # fmt: skip
        write_workers_run(tmp_path, "pm_w2", n, 27000, 3.0, total_ticks=500, **spread)
        write_workers_run(tmp_path, "pm_w2_unbound", n, (24000, 30000)[n - 1], 6.0,
                          total_ticks=500, **spread)  # fmt: skip

    text, summary, _failed, _checks = render(tmp_path)

    row = "| (a') p99, Pointsman `workers: 2` / nginx `worker_processes 2` + `worker_cpu_affinity"
    assert f"{row} auto` | 1.50, 0.75 | **1.12x** | (no target) | |" in text
    row = "| (a') req/s, Pointsman `workers: 2` + `worker_cpu_affinity: off` / nginx"
    assert f"{row} `worker_processes 2` | 0.80, 1.00 | **0.90x** | (no target) | |" in text
    row = "| (a') p99, Pointsman `workers: 2`, workers bound / unbound | 0.50, 0.50 | **0.50x** |"
    assert row in text
    ratios = summary["workers"]["affinity_ratios"]
    assert ratios["p99 pm_w2/pm_w2_unbound"]["median"] == pytest.approx(0.5)
    bound_row = "| nginx proxy, `worker_processes 2`, `worker_cpu_affinity auto` | 30,000 |"
    assert bound_row in text


def test_strict_exits_3_when_a_workers_target_fails(tmp_path: Path) -> None:
    write_results(tmp_path, 1, extra_meta=workers_meta(flips=0))
    write_wrk(tmp_path, "nginx", {1: (30000, 4.0)})
    write_wrk(tmp_path, "pointsman", {1: (27000, 4.0)})
    write_workers_run(tmp_path, "nginx_w2", 1, 30000, 4.0, total_ticks=450)
    write_workers_run(
        tmp_path,
        "pm_w2",
        1,
        30000,
        4.0,
        total_ticks=1200,
        master_ticks=10,
        requests={0: 150000, 1: 150000},
        open_conns={0: 25, 1: 25},
    )
    write_workers_run(
        tmp_path,
        "pm_w1",
        1,
        30000,
        4.0,
        total_ticks=900,
        master_ticks=5,
        requests={0: 300000},
        open_conns={0: 50},
    )
    argv = [sys.executable, str(REPORT_PY), "render", "--results", str(tmp_path)]

    lenient = subprocess.run(argv, capture_output=True, text=True, check=False)
    strict = subprocess.run([*argv, "--strict"], capture_output=True, text=True, check=False)

    # CPU per request 1.33x of workers: 1 fails (in the comparisons table and in Targets); the
    # rest passes; no flips asked for
    assert "| CPU per request, workers: 2 vs workers: 1 | 1.333x (1 round;" in lenient.stdout
    assert lenient.stdout.count("**FAIL**") == 2
    assert "| Flip under load (workers: 2): control API answer p99 | - | < 20 ms | SKIPPED |" in (
        lenient.stdout
    )
    assert lenient.returncode == 0
    assert strict.returncode == 3


def test_failed_flips_fail_the_flip_target(tmp_path: Path) -> None:
    write_results(tmp_path, 1, extra_meta=workers_meta(flips=4))
    write_wrk(tmp_path, "nginx", {1: (30000, 4.0)})
    write_wrk(tmp_path, "pointsman", {1: (27000, 4.0)})
    write_flips(tmp_path, [2.0, 3.0, 4.0], statuses=[200, 409, 200])

    _text, summary, failed, checks = render(tmp_path)

    assert checks[FLIP_CHECK]["result"] == (
        "**FAIL** (1 flip(s) failed: HTTP 409; only 3/4 flips made)"
    )
    assert checks[FLIP_CHECK]["measured"].startswith("p99 4.00 ms (nearest rank of 2;")
    assert summary["workers"]["flips"]["statuses"] == [200, 409, 200]
    assert failed


def test_workers_phase_skipped(tmp_path: Path) -> None:
    skipped = {"skip_workers": "1", "workers_skipped_because": "BENCH_SKIP_WORKERS=1"}
    write_results(tmp_path, 1, extra_meta=skipped)
    write_wrk(tmp_path, "nginx", {1: (30000, 4.0)})
    write_wrk(tmp_path, "pointsman", {1: (27000, 4.0)})

    text, summary, failed, checks = render(tmp_path)

    assert "## Workers\n\nSkipped (BENCH_SKIP_WORKERS=1)." in text
    assert all(checks[name]["result"] == "SKIPPED" for name in WORKER_CHECKS)
    assert summary["workers"] == {"skipped": "BENCH_SKIP_WORKERS=1"}
    assert not failed


def test_parse_worker_metrics_reads_the_per_worker_series() -> None:
    text = prom_text({0: 12, 1: 30}, {0: 3, 1: 4}, restarts=2)

    found = report.parse_worker_metrics(text)

    assert found["pointsman_worker_requests_total"] == {"0": 12.0, "1": 30.0}
    assert found["pointsman_worker_open_connections"] == {"0": 3.0, "1": 4.0}
    assert found["pointsman_worker_restarts_total"] == {"0": 2.0, "1": 0.0}
    assert "pointsman_requests_total" not in found
    assert report.max_min({"0": 3, "1": 0}) == float("inf")
    assert report.max_min({"0": 3}) is None
    assert report.nearest_rank([float(v) for v in range(1, 51)], 99) == 50.0
    assert report.nearest_rank([float(v) for v in range(1, 51)], 50) == 25.0


# --------------------------------------------------------------------------- fleet

FLEET_RPS_CHECK = "Fleet: req/s, etcd store vs file store"
FLEET_APPLY_CHECK = "Fleet: change through member A applied on member B under load, p99"


def write_fleet_run(
    results: Path, target: str, n: int, rps: float, p99_ms: float, *, ticks: int, etcd: int = 0
) -> None:
    """fleet_<target>_<n>.txt (wrk) and .cpu (ticks of the instance and of etcd)."""
    base = results / f"fleet_{target}_{n}"
    base.with_suffix(".txt").write_text(wrk_text(rps, p99_ms))
    cpu = {
        "total_ticks": ticks,
        "master_ticks": 1,
        "processes": 2,
        "wall_start": 1796391000.25,
        "wall_end": 1796391010.25,
        "etcd_ticks": etcd,
    }
    base.with_suffix(".cpu").write_text("".join(f"{k}={v}\n" for k, v in cpu.items()))


def write_fleet_changes(
    results: Path,
    applied_ms: list[float | None],
    *,
    answer_ms: float = 4.0,
    statuses: list[int] | None = None,
) -> None:
    """What fleet.py writes: one change per entry of `applied_ms` (None: never seen on B)."""
    changes = []
    for i, applied in enumerate(applied_ms):
        status = statuses[i] if statuses else 200
        changes.append(
            {
                "n": i + 1,
                "weights": {"blue": 80, "green": 20} if i % 2 == 0 else {"blue": 90, "green": 10},
                "status": status,
                "version": i + 2 if 200 <= status < 300 else None,
                "answer_ms": answer_ms,
                "applied_ms": applied,
                "offset_s": 0.5 + i * 0.045,
                "error": "" if applied is not None else "B did not show it in time",
            }
        )
    doc = {"route": "shop", "member": "host:2", "count": len(changes), "changes": changes}
    (results / "fleet_changes.json").write_text(json.dumps(doc))
    for member in ("a", "b"):
        (results / f"fleet_load_{member}.txt").write_text(wrk_text(12000, 9.0))


def fleet_meta(changes: int = 200) -> dict[str, str]:
    return {
        "skip_fleet": "0",
        "fleet_skipped_because": "",
        "fleet_changes": str(changes),
        "fleet_load": "both",
        "etcd_version": "3.4.23",
    }


def test_fleet_targets_use_per_round_ratios(tmp_path: Path) -> None:
    write_results(tmp_path, 3, extra_meta=fleet_meta())
    write_wrk(tmp_path, "nginx", {n: (30000, 4.0) for n in (1, 2, 3)})
    write_wrk(tmp_path, "pointsman", {n: (27000, 4.0) for n in (1, 2, 3)})
    # file store: median 30,000 req/s; etcd store 0.98, 0.90, 0.99 of it (median 0.98: passes;
    # the ratio of the medians, 27,000 / 30,000 = 0.90, would fail)
    for n, (file_rps, etcd_rps) in {
        1: (40000, 39200),
        2: (30000, 27000),
        3: (20000, 19800),
    }.items():
        write_fleet_run(tmp_path, "pm_file", n, file_rps, 5.0, ticks=round(file_rps * 10 * 3e-3))
        write_fleet_run(
            tmp_path, "pm_etcd", n, etcd_rps, 5.5, ticks=round(etcd_rps * 10 * 3e-3), etcd=7
        )
    # 200 changes: 197 at 20 ms, then 90, 95, 150 ms: p99 (the 198th) is 90 ms
    write_fleet_changes(tmp_path, [20.0] * 197 + [90.0, 95.0, 150.0])

    text, summary, failed, checks = render(tmp_path)

    rps = checks[FLEET_RPS_CHECK]
    assert rps["measured"] == (
        "0.980x (median of 3 per-round ratios 0.90-0.99; ratio of medians 0.90x: 27,000 vs 30,000)"
    )
    assert rps["required"] == "≥ 0.97x"
    assert rps["result"] == "**PASS**"
    apply = checks[FLEET_APPLY_CHECK]
    assert apply["measured"] == (
        "p99 90.00 ms (nearest rank of 200; p50 20.00 ms, max 150 ms; wrk meanwhile: A 12,000 "
        "req/s, p99 9.00 ms, B 12,000 req/s, p99 9.00 ms)"
    )
    assert apply["required"] == "≤ 100 ms"
    assert apply["result"] == "**PASS**"
    assert not failed

    assert "## Fleet (etcd store)" in text
    assert (
        "| req/s, etcd store (member A) / file store | 0.98, 0.90, 0.99 | **0.98x** "
        "(27,000 vs 30,000) | ≥ 0.97x | **PASS** |" in text
    )
    assert "| p99, etcd store / file store | 1.10, 1.10, 1.10 | **1.10x** (5.50 ms vs 5.00 ms)" in (
        text
    )
    assert "| CPU per request, etcd store / file store | 1.00, 1.00, 1.00 | **1.00x** " in text
    assert (
        "| Pointsman, etcd store: fleet member A (`workers: 1`) | 27,000 | 1.50 ms | 5.50 ms "
        "| 30.0 µs | 0.70 % | 0 |" in text
    )
    assert (
        "| A's answer to the change (no target) | p50 4.00 ms, max 4.00 ms | **p99 4.00 ms**"
        in (text)
    )
    fleet = summary["fleet"]
    assert fleet["rps_ratios"]["median"] == pytest.approx(0.98)
    assert [r["ratio"] for r in fleet["rps_ratios"]["per_round"]] == pytest.approx(
        [0.98, 0.90, 0.99]
    )
    assert fleet["propagation"]["applied_p99_ms"] == pytest.approx(90.0)
    assert fleet["propagation"]["applied_max_ms"] == pytest.approx(150.0)
    assert fleet["propagation"]["count"] == 200
    assert fleet["pm_etcd"]["etcd_cpu_pct"] == pytest.approx(0.7)


def test_fleet_targets_fail_on_rps_slow_and_lost_changes(tmp_path: Path) -> None:
    write_results(tmp_path, 2, extra_meta=fleet_meta(changes=5))
    for n in (1, 2):
        write_fleet_run(tmp_path, "pm_file", n, 30000, 5.0, ticks=900)
        write_fleet_run(tmp_path, "pm_etcd", n, (28500, 28800)[n - 1], 5.0, ticks=900)
    # one change refused, one never seen on B; of the three applied, p99 is the slowest
    write_fleet_changes(
        tmp_path, [30.0, None, None, 40.0, 120.0], statuses=[200, 200, 409, 200, 200]
    )

    _text, summary, failed, checks = render(tmp_path)

    assert checks[FLEET_RPS_CHECK]["measured"].startswith(
        "0.955x (median of 2 per-round ratios 0.95-0.96;"
    )
    assert checks[FLEET_RPS_CHECK]["result"] == "**FAIL**"
    assert checks[FLEET_APPLY_CHECK]["measured"].startswith("p99 120 ms (nearest rank of 3;")
    assert checks[FLEET_APPLY_CHECK]["result"] == (
        "**FAIL** (1 change(s) failed: HTTP 409; 1 change(s) never seen applied on B; "
        "target is defined over 200 changes)"
    )
    assert summary["fleet"]["propagation"]["statuses"] == [200, 200, 409, 200, 200]
    assert failed


def test_fleet_phase_skipped_and_missing(tmp_path: Path) -> None:
    write_results(tmp_path, 1)  # an older meta.env: no fleet keys at all
    write_wrk(tmp_path, "nginx", {1: (30000, 4.0)})
    write_wrk(tmp_path, "pointsman", {1: (27000, 4.0)})

    text, summary, failed, checks = render(tmp_path)

    assert "## Fleet (etcd store)\n\nSkipped (not in this run)." in text
    assert checks[FLEET_RPS_CHECK]["result"] == "SKIPPED"
    assert checks[FLEET_APPLY_CHECK]["result"] == "SKIPPED"
    assert summary["fleet"] == {"skipped": "not in this run"}
    assert not failed

    # the phase ran, but left nothing: both targets fail
    write_results(tmp_path, 1, extra_meta=fleet_meta())
    _text, _summary, failed, checks = render(tmp_path)
    assert checks[FLEET_RPS_CHECK]["result"] == "**FAIL** (no result)"
    assert checks[FLEET_APPLY_CHECK]["result"] == "**FAIL** (no result)"
    assert failed


def test_report_fleet_summarises_fleet_py_output(tmp_path: Path) -> None:
    write_fleet_changes(tmp_path, [10.0, 12.0, 30.0], answer_ms=8.0)

    out = subprocess.run(
        [sys.executable, str(REPORT_PY), "fleet", str(tmp_path / "fleet_changes.json")],
        capture_output=True,
        text=True,
        check=True,
    )

    assert out.stdout.strip() == (
        "3/3 changes seen applied on B: p50 12.00 ms, p99 30.00 ms, max 30.00 ms; "
        "A's answer p50 8.00 ms, p99 8.00 ms"
    )


# --------------------------------------------------------------------------- TLS, access log

TLS_RPS_CHECK = "TLS: keep-alive req/s vs nginx over TLS"
TLS_HANDSHAKE_CHECK = "TLS: new-connection rate (`Connection: close`) vs nginx over TLS"
ALOG_CPU_CHECK = "Access log on: CPU per request vs off"
ALOG_LINES_CHECK = "Access log: a line for every request wrk counted"


def write_cpu_run(
    results: Path, stem: str, n: int, rps: float, p99_ms: float, *, us_per_request: float
) -> None:
    """<stem>_<n>.txt (wrk, 10 s) and .cpu with the ticks that make `us_per_request`."""
    base = results / f"{stem}_{n}"
    base.with_suffix(".txt").write_text(wrk_text(rps, p99_ms))
    ticks = round(rps * 10 * us_per_request * 1e-6 * 100)  # CLK_TCK 100
    cpu = {
        "total_ticks": ticks,
        "master_ticks": 1,
        "processes": 2,
        "wall_start": 1796391000.25,
        "wall_end": 1796391010.25,
    }
    base.with_suffix(".cpu").write_text("".join(f"{k}={v}\n" for k, v in cpu.items()))


def tls_meta(pm_resumed: str = "3/3", nginx_resumed: str = "3/3") -> dict[str, str]:
    probe = "protocol=TLSv1.3 cipher=TLS_AES_256_GCM_SHA384 resumed={} status=200"
    return {
        "skip_tls": "0",
        "tls_skipped_because": "",
        "tls_cert": "ECDSA P-256 (prime256v1), self-signed, SHA-256",
        "tls_resumption": "on" if pm_resumed != "0/3" else "off",
        "tls_probe_pm": probe.format(pm_resumed),
        "tls_probe_nginx": probe.format(nginx_resumed),
    }


def test_tls_targets_use_per_round_ratios(tmp_path: Path) -> None:
    write_results(tmp_path, 3, extra_meta=tls_meta())
    # keep-alive: nginx median 30,000; Pointsman 0.72, 0.66, 0.75 of its round (median 0.72:
    # passes; the ratio of the medians, 19,800 / 30,000 = 0.66, would fail)
    for n, (ng, pm) in {1: (40000, 28800), 2: (30000, 19800), 3: (20000, 15000)}.items():
        write_cpu_run(tmp_path, "tls_nginx_tls", n, ng, 4.0, us_per_request=20.0)
        write_cpu_run(tmp_path, "tls_pm_tls", n, pm, 5.0, us_per_request=25.0)
    # new connections: 0.65, 0.80, 0.60 (median 0.65: fails; the ratio of the medians,
    # 1,950 / 2,500 = 0.78, would pass)
    for n, (ng, pm) in {1: (3000, 1950), 2: (2500, 2000), 3: (2000, 1200)}.items():
        write_cpu_run(tmp_path, "tls_nginx_tls_close", n, ng, 10.0, us_per_request=300.0)
        write_cpu_run(tmp_path, "tls_pm_tls_close", n, pm, 20.0, us_per_request=480.0)

    text, summary, failed, checks = render(tmp_path)

    keep_alive = checks[TLS_RPS_CHECK]
    assert keep_alive["measured"] == (
        "0.720x (median of 3 per-round ratios 0.66-0.75; ratio of medians 0.66x: 19,800 vs 30,000)"
    )
    assert keep_alive["required"] == "≥ 0.70x"
    assert keep_alive["result"] == "**PASS**"
    handshakes = checks[TLS_HANDSHAKE_CHECK]
    assert handshakes["measured"].startswith("0.650x (median of 3 per-round ratios 0.60-0.80;")
    assert handshakes["result"] == "**FAIL**"
    assert failed

    assert "## TLS termination" in text
    assert "ECDSA P-256 (prime256v1)" in text
    assert "both resume" in text  # the report says how sessions were handled
    assert (
        "| req/s, keep-alive, Pointsman / nginx | 0.72, 0.66, 0.75 | **0.72x** "
        "(19,800 vs 30,000) | ≥ 0.70x | **PASS** |" in text
    )
    assert (
        "| CPU per request, new connection per request, Pointsman / nginx | 1.60, 1.60, 1.60 "
        "| **1.60x** (480.0 µs vs 300.0 µs) | (no target) | |" in text
    )
    assert "| Pointsman over TLS, keep-alive | 19,800 | 1.50 ms | 5.00 ms | 25.0 µs | 0 |" in text
    tls = summary["tls"]
    assert tls["resumption"] == "on"
    assert tls["pm_tls_rps_ratios"]["median"] == pytest.approx(0.72)
    assert [r["ratio"] for r in tls["pm_tls_close_rps_ratios"]["per_round"]] == pytest.approx(
        [0.65, 0.80, 0.60]
    )
    assert tls["pm_tls_cpu_ratios"]["median"] == pytest.approx(1.25)


def test_tls_handshake_target_fails_when_only_one_side_resumes(tmp_path: Path) -> None:
    write_results(tmp_path, 1, extra_meta=tls_meta(pm_resumed="3/3", nginx_resumed="0/3"))
    write_cpu_run(tmp_path, "tls_nginx_tls", 1, 30000, 4.0, us_per_request=20.0)
    write_cpu_run(tmp_path, "tls_pm_tls", 1, 27000, 4.0, us_per_request=22.0)
    write_cpu_run(tmp_path, "tls_nginx_tls_close", 1, 1000, 10.0, us_per_request=900.0)
    write_cpu_run(tmp_path, "tls_pm_tls_close", 1, 2500, 10.0, us_per_request=400.0)

    _text, _summary, failed, checks = render(tmp_path)

    assert checks[TLS_RPS_CHECK]["result"] == "**PASS**"
    # 2.5x nginx, but a resumed handshake against a full one says nothing
    assert checks[TLS_HANDSHAKE_CHECK]["measured"].startswith("2.500x (1 round;")
    assert checks[TLS_HANDSHAKE_CHECK]["result"] == (
        "**FAIL** (nginx and Pointsman differ in session resumption: not like for like)"
    )
    assert failed


def alog_meta() -> dict[str, str]:
    return {
        "skip_access_log": "0",
        "access_log_skipped_because": "",
        "access_log_settle_ms": "1000",
    }


def write_alog_lines(results: Path, n: int, lines: int, bytes_per_line: int = 350) -> None:
    (results / f"alog_pm_log_on_{n}.lines").write_text(
        f"lines={lines}\nbytes={lines * bytes_per_line}\n"
    )


def test_access_log_targets_use_per_round_ratios_and_count_lines(tmp_path: Path) -> None:
    write_results(tmp_path, 3, extra_meta=alog_meta())
    write_wrk(tmp_path, "nginx", {n: (30000, 4.0) for n in (1, 2, 3)})
    write_wrk(tmp_path, "pointsman", {n: (27000, 4.0) for n in (1, 2, 3)})
    (tmp_path / "access_log_sample.txt").write_text('{"status":200,"path":"/"}\n')
    # CPU per request, log on / off: 1.10, 1.20, 1.12 (median 1.12: passes; the ratio of the
    # medians, 22.4 / 19.0 = 1.18, would fail)
    for n, (off_us, on_us, on_rps) in {
        1: (20.0, 22.0, 27000),
        2: (19.0, 22.8, 26000),
        3: (17.0, 19.04, 28000),
    }.items():
        write_cpu_run(tmp_path, "alog_pm_log_off", n, 30000, 4.0, us_per_request=off_us)
        write_cpu_run(tmp_path, "alog_pm_log_on", n, on_rps, 4.4, us_per_request=on_us)
        write_alog_lines(tmp_path, n, on_rps * 10 + 50)  # requests in flight at the end: logged

    text, summary, failed, checks = render(tmp_path)

    cpu = checks[ALOG_CPU_CHECK]
    assert cpu["measured"].startswith("1.120x (median of 3 per-round ratios 1.10-1.20;")
    assert cpu["required"] == "≤ 1.15x"
    assert cpu["result"] == "**PASS**"
    lines = checks[ALOG_LINES_CHECK]
    assert lines["measured"] == (
        "810,150 lines for 810,000 requests over 3 run(s) (r1 270,050 / 270,000, "
        "r2 260,050 / 260,000, r3 280,050 / 280,000; 350 bytes a line)"
    )
    assert lines["result"] == "**PASS**"
    assert not failed

    assert "## Access log" in text
    assert '```\n{"status":200,"path":"/"}\n```' in text
    assert (
        "| req/s, log on / off | 0.90, 0.87, 0.93 | **0.90x** (27,000 vs 30,000) | (no target) |"
        in text
    )
    alog = summary["access_log"]
    assert alog["cpu_ratios"]["median"] == pytest.approx(1.12, abs=1e-3)
    assert alog["lines"]["bytes_per_line"] == pytest.approx(350)
    assert [r["lines"] for r in alog["lines"]["per_round"]] == [270050, 260050, 280050]


def test_access_log_fails_on_cpu_and_lost_lines(tmp_path: Path) -> None:
    write_results(tmp_path, 2, extra_meta=alog_meta())
    for n in (1, 2):
        write_cpu_run(tmp_path, "alog_pm_log_off", n, 30000, 4.0, us_per_request=20.0)
        write_cpu_run(tmp_path, "alog_pm_log_on", n, 20000, 9.0, us_per_request=31.0)
    write_alog_lines(tmp_path, 1, 200_000)
    write_alog_lines(tmp_path, 2, 150_000)  # 50,000 requests never logged (dropped)

    _text, summary, failed, checks = render(tmp_path)

    assert checks[ALOG_CPU_CHECK]["measured"].startswith("1.550x (median of 2 per-round")
    assert checks[ALOG_CPU_CHECK]["result"] == "**FAIL**"
    assert checks[ALOG_LINES_CHECK]["result"] == (
        "**FAIL** (round 2: 50,000 requests without a line)"
    )
    assert summary["access_log"]["lines"]["per_round"][1] == {
        "round": 2,
        "lines": 150000,
        "requests": 200000,
        "bytes": 150000 * 350,
    }
    assert failed


def test_tls_and_access_log_phases_skipped_and_missing(tmp_path: Path) -> None:
    write_results(tmp_path, 1)  # an older meta.env: no keys of these phases at all
    write_wrk(tmp_path, "nginx", {1: (30000, 4.0)})
    write_wrk(tmp_path, "pointsman", {1: (27000, 4.0)})

    text, summary, failed, checks = render(tmp_path)

    assert "## TLS termination\n\nSkipped (not in this run)." in text
    assert "## Access log\n\nSkipped (not in this run)." in text
    for name in (TLS_RPS_CHECK, TLS_HANDSHAKE_CHECK, ALOG_CPU_CHECK, ALOG_LINES_CHECK):
        assert checks[name]["result"] == "SKIPPED"
    assert not failed

    # skipped for a reason run.sh found
    why = "pointsman check refuses a TLS listener: x.yaml:1: listen: expected host:port"
    write_results(tmp_path, 1, extra_meta={"skip_tls": "1", "tls_skipped_because": why})
    text, summary, failed, checks = render(tmp_path)
    assert f"## TLS termination\n\nSkipped ({why})." in text
    assert summary["tls"] == {"skipped": why}

    # the phases ran, but left nothing: every target fails
    write_results(tmp_path, 1, extra_meta={**tls_meta(), **alog_meta()})
    _text, _summary, failed, checks = render(tmp_path)
    for name in (TLS_RPS_CHECK, TLS_HANDSHAKE_CHECK, ALOG_CPU_CHECK, ALOG_LINES_CHECK):
        assert checks[name]["result"] == "**FAIL** (no result)"
    assert failed
