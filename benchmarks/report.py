"""Parse benchmark output and render benchmarks/RESULTS.md.

Used by benchmarks/run.sh:

    report.py wrk FILE                     one-line summary of a wrk --latency output
    report.py flips FILE / fleet FILE      one-line summary of flips.py's / fleet.py's output
    report.py render --results DIR --out F  Markdown report from DIR (printed and written)

The results directory holds what run.sh collected:

    meta.env                   key=value: settings of the run (wrk flags, ports, commands, ...)
    mem.env                    key=value: memory measurements (RSS in KiB), may be absent
    wrk_<target>_<round>.txt   raw `wrk --latency` output, target in backend/nginx/pointsman
    shadow_<phase>_<round>.txt raw wrk output of the shadow-isolation phases (SHADOW_PHASES)
    shadow_<phase>_<round>.cpu Pointsman CPU ticks (utime + stime) during that wrk run
    shadow_<phase>_<round>.json the shadow's counts from the control API after the phase
    workers_<target>_<round>.*  the workers phase (wrk, .cpu, .before/.mid/.after.prom);
                               flips.txt, flips_wrk.txt its flips under load
    fleet_<target>_<round>.txt  the fleet phase's wrk runs, target pm_file or pm_etcd, and
                               .cpu (ticks of the instance and of etcd, wall-clock start, end)
    fleet_changes.json         fleet.py's propagation measurements; fleet_load_<a|b>.txt the
                               wrk runs loading the members meanwhile
    tls_<target>_<round>.txt    the TLS phase's wrk runs (nginx_tls, pm_tls, nginx_tls_close,
                               pm_tls_close) and .cpu (ticks of the server's processes)
    alog_<target>_<round>.txt   the access-log phase's wrk runs (pm_log_off, pm_log_on), .cpu,
                               and for pm_log_on .lines (lines and bytes the log grew by);
                               access_log_sample.txt the log's first line

<round> is 1, 2, ... (read as a number: round 10 comes after round 9). run.sh runs the
targets of a round one right after another, odd rounds in the forward order and even rounds
in the reverse order. Ratios between two targets (Pointsman / nginx, 1 s shadow / no shadow,
...) are paired: one ratio per round, from the two runs of that round, and the targets are
judged on the median of these per-round ratios. The tables also show each target's median
over the rounds and the ratio of those medians.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

TARGETS: tuple[tuple[str, str], ...] = (
    ("backend", "backend direct (nginx)"),
    ("nginx", "nginx proxy"),
    ("pointsman", "Pointsman"),
)

# Targets from the project brief.
MIN_RPS_RATIO = 0.7
MAX_P99_RATIO = 1.5
P99_TARGET_CONNS = 50
MAX_IDLE_RSS_MIB = 150.0
IDLE_TARGET_CONNS = 10_000
MAX_STREAM_GROWTH_MIB = 64.0
# Shadow isolation (issue 4): a 1 s shadow at 100 % keeps the primary within 10 % of no shadow;
# a fast shadow at 100 % costs at most 2x the CPU per request.
MAX_SLOW_SHADOW_RPS_DROP = 0.10
MAX_SLOW_SHADOW_P99_RISE = 0.10
MAX_FAST_SHADOW_CPU_RATIO = 2.0
# In the order run.sh runs them in odd rounds (even rounds: reversed).
SHADOW_PHASES: tuple[tuple[str, str], ...] = (
    ("pm_plain", "Pointsman, no shadow"),
    ("pm_slow", "Pointsman, 1 s shadow at 100 %"),
    ("pm_fast", "Pointsman, fast shadow at 100 %"),
    ("nginx_plain", "nginx proxy, no mirror"),
    ("nginx_mirror", "nginx proxy, `mirror` to the 1 s shadow"),
)

# Workers (the process model): Pointsman with 2 workers against nginx with 2, req/s and p99;
# CPU per request with 2 workers against 1 (what the process model costs); the master's own
# CPU at full load; a flip through the control API answered while under load.
MIN_WORKERS_RPS_RATIO = 0.9
MAX_WORKERS_P99_RATIO = 1.2
MAX_WORKERS_CPU_RATIO = 1.10
MAX_MASTER_CPU_PCT = 3.0
MAX_FLIP_P99_MS = 20.0
# Fleet (issue 15): a change through member A is applied on member B within 100 ms at p99 over
# 200 changes under load; routed req/s with the etcd store within 3 % of the file store (the
# store is off the request path).
MIN_FLEET_RPS_RATIO = 0.97
MAX_FLEET_APPLY_P99_MS = 100.0
FLEET_TARGET_CHANGES = 200
# In the order run.sh runs them in odd rounds (even rounds: reversed).
WORKER_TARGETS: tuple[tuple[str, str], ...] = (
    ("nginx_w2", "nginx proxy, `worker_processes 2`"),
    ("pm_w2", "Pointsman, `workers: 2` (one SO_REUSEPORT socket per worker, each bound to a CPU)"),
    ("nginx_w2_bound", "nginx proxy, `worker_processes 2`, `worker_cpu_affinity auto`"),
    ("pm_w2_unbound", "Pointsman, `workers: 2`, `worker_cpu_affinity: off`"),
    ("pm_w1", "Pointsman, `workers: 1`"),
    ("pm_w2_shared", "Pointsman, `workers: 2`, `--shared-socket`"),
)
# No-target comparisons beside (a): the peers with and without their workers bound to CPUs.
WORKER_AFFINITY_PAIRS: tuple[tuple[str, str, str], ...] = (
    ("pm_w2", "nginx_w2_bound",
     "Pointsman `workers: 2` / nginx `worker_processes 2` + `worker_cpu_affinity auto`"),
    ("pm_w2_unbound", "nginx_w2",
     "Pointsman `workers: 2` + `worker_cpu_affinity: off` / nginx `worker_processes 2`"),
    ("pm_w2", "pm_w2_unbound", "Pointsman `workers: 2`, workers bound / unbound"),
)  # fmt: skip

UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
NUMBER_UNIT = re.compile(r"^([0-9.]+)([a-z]+)$")


class ParseError(Exception):
    pass


# --------------------------------------------------------------------------- wrk


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int = 0
    seconds: float = 0.0
    socket_errors: int = 0
    non_2xx: int = 0
    error_detail: dict[str, int] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        return self.socket_errors + self.non_2xx


def latency_ms(text: str) -> float:
    m = NUMBER_UNIT.match(text.strip())
    if not m or m.group(2) not in UNIT_MS:
        raise ParseError(f"cannot parse latency {text!r}")
    return float(m.group(1)) * UNIT_MS[m.group(2)]


def parse_wrk(text: str) -> WrkResult:
    rps_m = re.search(r"^Requests/sec:\s+([0-9.]+)", text, re.M)
    p50_m = re.search(r"^\s+50%\s+(\S+)", text, re.M)
    p99_m = re.search(r"^\s+99%\s+(\S+)", text, re.M)
    if not (rps_m and p50_m and p99_m):
        raise ParseError("no 'Requests/sec' or latency distribution (was --latency given?)")
    result = WrkResult(
        rps=float(rps_m.group(1)),
        p50_ms=latency_ms(p50_m.group(1)),
        p99_ms=latency_ms(p99_m.group(1)),
    )
    total_m = re.search(r"^\s*(\d+) requests in ([0-9.]+)(\w+)", text, re.M)
    if total_m:
        result.requests = int(total_m.group(1))
        result.seconds = latency_ms(total_m.group(2) + total_m.group(3)) / 1000.0
    sock_m = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    if sock_m:
        names = ("connect", "read", "write", "timeout")
        for name, value in zip(names, sock_m.groups(), strict=True):
            if int(value):
                result.error_detail[name] = int(value)
        result.socket_errors = sum(int(v) for v in sock_m.groups())
    non2xx_m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if non2xx_m:
        result.non_2xx = int(non2xx_m.group(1))
        result.error_detail["non-2xx/3xx"] = result.non_2xx
    return result


def combine(results: list[WrkResult]) -> WrkResult:
    """Median of the rounds; error counts are summed."""
    detail: dict[str, int] = {}
    for r in results:
        for key, value in r.error_detail.items():
            detail[key] = detail.get(key, 0) + value
    return WrkResult(
        rps=statistics.median(r.rps for r in results),
        p50_ms=statistics.median(r.p50_ms for r in results),
        p99_ms=statistics.median(r.p99_ms for r in results),
        requests=sum(r.requests for r in results),
        seconds=sum(r.seconds for r in results),
        socket_errors=sum(r.socket_errors for r in results),
        non_2xx=sum(r.non_2xx for r in results),
        error_detail=detail,
    )


# --------------------------------------------------------------------------- rounds


def round_files(results: Path, stem: str, suffix: str = ".txt") -> dict[int, Path]:
    """The files `<stem>_<round><suffix>` by round number, in numeric order (10 after 9)."""
    pattern = re.compile(re.escape(stem) + r"_([0-9]+)" + re.escape(suffix))
    found: dict[int, Path] = {}
    for path in results.glob(f"{stem}_*{suffix}"):
        m = pattern.fullmatch(path.name)
        if m:
            found[int(m.group(1))] = path
    return dict(sorted(found.items()))


def load_rounds(results: Path, stem: str) -> tuple[dict[int, WrkResult], list[str]]:
    """Parsed `<stem>_<round>.txt` wrk outputs by round; and the files that did not parse."""
    parsed: dict[int, WrkResult] = {}
    problems: list[str] = []
    for n, path in round_files(results, stem).items():
        try:
            parsed[n] = parse_wrk(path.read_text())
        except (OSError, ParseError) as exc:
            problems.append(f"{path.name}: {exc}")
    return parsed, problems


def paired_ratios(num: dict[int, float], den: dict[int, float]) -> dict[int, float]:
    """num[r] / den[r] for every round r with both values (and den[r] > 0), by round."""
    return {r: num[r] / den[r] for r in sorted(num.keys() & den.keys()) if den[r] > 0}


def fmt_ratios(ratios: dict[int, float]) -> str:
    """'0.71, 0.74, 0.69 -> median 0.71x', in round order; with round numbers ('r1 0.71')
    when some round is missing from the pairs."""
    contiguous = list(ratios) == list(range(1, len(ratios) + 1))
    values = [f"{v:.2f}" if contiguous else f"r{r} {v:.2f}" for r, v in ratios.items()]
    return f"{', '.join(values)} -> median {statistics.median(ratios.values()):.2f}x"


def fmt_paired(ratios: dict[int, float], of_medians: float | None, detail: str = "") -> str:
    """The Measured column of a paired target: '0.724x (median of 5 per-round ratios
    0.69-0.77; ratio of medians 0.71x: 25,000 vs 35,000)'."""
    values = list(ratios.values())
    if len(values) == 1:
        spread = "1 round"
    else:
        spread = f"median of {len(values)} per-round ratios {min(values):.2f}-{max(values):.2f}"
    tail = ""
    if of_medians is not None:
        tail = f"; ratio of medians {of_medians:.2f}x" + (f": {detail}" if detail else "")
    # Three decimals: a verdict on 0.697 must not read "0.70x ... FAIL".
    return f"{statistics.median(values):.3f}x ({spread}{tail})"


def ratio_list(ratios: dict[int, float]) -> list[dict[str, float]]:
    """Per-round ratios for summary.json, in round order."""
    return [{"round": r, "ratio": v} for r, v in ratios.items()]


def rounds_list(rounds: dict[int, WrkResult]) -> list[dict[str, object]]:
    """Per-round wrk results for summary.json, in round order."""
    return [{"round": n, **asdict(r)} for n, r in rounds.items()]


def order_note(meta: dict[str, str], names: str) -> str:
    """How the runs of a round were ordered (meta.env `round_order`, written by run.sh)."""
    if meta.get("round_order") == "alternating":
        return (
            f"Each round runs them one right after another, odd rounds in the order {names}, "
            "even rounds in the reverse order, so that a drift in machine speed during the run "
            "weighs on both sides of each comparison alike."
        )
    return f"Each round runs them one after another in the same order ({names})."


# --------------------------------------------------------------------------- helpers


def read_env(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    if not path.exists():
        return values
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.startswith("#"):
            values[key.strip()] = value.strip()
    return values


def as_int(values: dict[str, str], key: str) -> int | None:
    try:
        return int(values[key])
    except (KeyError, ValueError):
        return None


def as_float(values: dict[str, str], key: str) -> float | None:
    try:
        return float(values[key])
    except (KeyError, ValueError):
        return None


def command_output(argv: list[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return (proc.stdout + proc.stderr).strip()


def fmt_ms(value: float) -> str:
    if value < 1.0:
        return f"{value * 1000:.0f} µs"
    if value < 100.0:
        return f"{value:.2f} ms"
    return f"{value:.0f} ms"


def fmt_mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


def fmt_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            value = n / size
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.2f} {unit}"
    return f"{n} B"


def md_escape(text: str) -> str:
    return text.replace("|", "\\|")


# --------------------------------------------------------------------------- machine


def machine_info(meta: dict[str, str]) -> list[tuple[str, str]]:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
                break
    except OSError:
        pass
    os_name = ""
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    nginx_v = command_output([meta.get("nginx_bin", "nginx"), "-v"])
    nginx_v = nginx_v.removeprefix("nginx version:").strip()
    wrk_v = command_output([meta.get("wrk_bin", "wrk"), "-v"]).splitlines()
    wrk_version = wrk_v[0].split("Copyright")[0].strip() if wrk_v else ""
    revision = command_output(["git", "rev-parse", "--short", "HEAD"])
    if not re.fullmatch(r"[0-9a-f]{4,40}", revision):
        revision = "(no commit)"
    rows = [
        ("CPUs (nproc)", str(cpus)),
        ("CPU model", model or platform.processor() or "unknown"),
        ("Memory", mem or "unknown"),
        ("OS", os_name or "unknown"),
        ("Kernel", f"{platform.system()} {platform.release()} {platform.machine()}"),
        ("Python", f"{platform.python_version()} ({sys.executable})"),
        ("nginx", nginx_v or "unknown"),
        ("wrk", wrk_version or "unknown"),
        ("Open-files limit", meta.get("nofile", "?")),
        (
            "Load average (start / end of run)",
            f"{meta.get('loadavg_start', '?')} / {meta.get('loadavg_end', '?')}",
        ),
        ("Source revision", revision),
        ("Pointsman command", f"`{meta.get('pointsman_cmd', '?')}`"),
    ]
    return rows


# --------------------------------------------------------------------------- render


@dataclass
class Check:
    name: str
    measured: str
    required: str
    result: str  # PASS / FAIL / SKIPPED, optionally with a note


def status(ok: bool, note: str = "") -> str:
    word = "PASS" if ok else "FAIL"
    return f"**{word}** ({note})" if note else f"**{word}**"


def render(results: Path, out: Path | None) -> tuple[str, dict[str, object], bool]:
    meta = read_env(results / "meta.env")
    mem = read_env(results / "mem.env")
    standin = meta.get("pointsman_label", "")
    lines: list[str] = []
    checks: list[Check] = []
    summary: dict[str, object] = {"meta": meta, "memory": mem}

    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    lines.append("# Pointsman benchmark results")
    lines.append("")
    lines.append(f"Generated by `benchmarks/run.sh` on {now}.")
    if standin:
        lines.append("")
        lines.append(
            "> **Stand-in run:** the rows labelled Pointsman were measured against "
            f"`{meta.get('pointsman_cmd', standin)}`, not Pointsman. Only useful to check "
            "the harness."
        )
    lines.append("")
    lines.append("## Machine")
    lines.append("")
    lines.append("| | |")
    lines.append("|---|---|")
    for key, value in machine_info(meta):
        lines.append(f"| {key} | {md_escape(value)} |")
    lines.append("")

    # ---- throughput / latency
    lines.append("## Throughput and latency")
    lines.append("")
    conns = as_int(meta, "wrk_conns") or 0
    pointsman_label = "Pointsman" + (f" ({standin})" if standin else "")
    if meta.get("skip_wrk") == "1":
        lines.append("Skipped (BENCH_SKIP_WRK=1).")
        lines.append("")
        checks.append(
            Check("Pointsman req/s vs nginx proxy", "-", f"≥ {MIN_RPS_RATIO:.2f}x", "SKIPPED")
        )
        checks.append(
            Check("Pointsman p99 vs nginx proxy", "-", f"≤ {MAX_P99_RATIO:.2f}x", "SKIPPED")
        )
    else:
        wrk_cmd = (
            f"wrk -t{meta.get('wrk_threads', '?')} -c{conns} -d{meta.get('wrk_seconds', '?')}s "
            f"--latency -s benchmarks/sticky.lua"
        )
        rounds = meta.get("rounds", "1")
        lines.append(
            f"wrk settings: `{wrk_cmd}`, {meta.get('wrk_warmup', '?')} s warm-up per target, "
            f"{rounds} round(s) of backend, nginx proxy and Pointsman. "
            + order_note(meta, "backend, nginx proxy, Pointsman")
            + " The rows give each target's median over the rounds. The Pointsman / nginx "
            "ratios the targets are judged on are paired: for each round, Pointsman's req/s "
            "(p99) is divided by nginx's from the same round (adjacent runs), and the median "
            "of these per-round ratios is reported; the ratio of the two medians is shown "
            "beside it. Half of the requests carry `X-User-Id: <random id>`. "
            + (
                ""
                if standin
                else f"Pointsman runs with `workers: {meta.get('pointsman_workers', '1')}` (a "
                "master and one worker process), the nginx proxy with one worker. "
            )
            + f"All processes share the same {os.cpu_count()} CPUs with wrk."
        )
        lines.append("")
        lines.append("| Target | Requests/s | p50 | p99 | Requests | Errors |")
        lines.append("|---|---:|---:|---:|---:|---|")
        combined: dict[str, WrkResult] = {}
        per_round: dict[str, dict[int, WrkResult]] = {}
        for key, label in TARGETS:
            shown = pointsman_label if key == "pointsman" else label
            parsed, problems = load_rounds(results, f"wrk_{key}")
            if not parsed:
                why = "; ".join(problems) or "no wrk output"
                lines.append(f"| {shown} | - | - | - | - | {md_escape(why)} |")
                continue
            r = combine(list(parsed.values()))
            combined[key] = r
            per_round[key] = parsed
            err = ", ".join(f"{k} {v}" for k, v in r.error_detail.items()) or "0"
            lines.append(
                f"| {shown} | {r.rps:,.0f} | {fmt_ms(r.p50_ms)} | {fmt_ms(r.p99_ms)} "
                f"| {r.requests:,} | {err} |"
            )
        summary["wrk"] = {k: asdict(v) for k, v in combined.items()}
        summary["wrk_per_round"] = {k: rounds_list(v) for k, v in per_round.items()}
        ng, pm = combined.get("nginx"), combined.get("pointsman")
        ng_rounds, pm_rounds = per_round.get("nginx", {}), per_round.get("pointsman", {})
        rps_pairs = paired_ratios(
            {n: r.rps for n, r in pm_rounds.items()}, {n: r.rps for n, r in ng_rounds.items()}
        )
        p99_pairs = paired_ratios(
            {n: r.p99_ms for n, r in pm_rounds.items()},
            {n: r.p99_ms for n, r in ng_rounds.items()},
        )
        if ng and pm and ng.rps > 0 and ng.p50_ms > 0 and ng.p99_ms > 0:
            lines.append(
                f"| Pointsman / nginx proxy, ratio of medians | {pm.rps / ng.rps:.2f}x | "
                f"{pm.p50_ms / ng.p50_ms:.2f}x | {pm.p99_ms / ng.p99_ms:.2f}x | | |"
            )
        if ng and pm and rps_pairs and p99_pairs:
            rps_ratio = statistics.median(rps_pairs.values())
            p99_ratio = statistics.median(p99_pairs.values())
            rps_of_medians = pm.rps / ng.rps if ng.rps > 0 else None
            p99_of_medians = pm.p99_ms / ng.p99_ms if ng.p99_ms > 0 else None
            lines.append(
                f"| **Pointsman / nginx proxy, median of per-round ratios** | "
                f"**{rps_ratio:.2f}x** | | **{p99_ratio:.2f}x** | | |"
            )
            lines.append("")
            lines.append(
                f"Per-round ratios (paired), Pointsman / nginx proxy: req/s "
                f"{fmt_ratios(rps_pairs)}; p99 {fmt_ratios(p99_pairs)}."
            )
            summary["ratios"] = {
                "method": "median of per-round ratios (Pointsman and nginx of the same round)",
                "rps": rps_ratio,
                "p99": p99_ratio,
                "rps_of_medians": rps_of_medians,
                "p99_of_medians": p99_of_medians,
                "rps_per_round": ratio_list(rps_pairs),
                "p99_per_round": ratio_list(p99_pairs),
            }
            errors_note = "Pointsman had errors" if pm.errors else ""
            checks.append(
                Check(
                    "Pointsman req/s vs nginx proxy",
                    fmt_paired(rps_pairs, rps_of_medians, f"{pm.rps:,.0f} vs {ng.rps:,.0f}"),
                    f"≥ {MIN_RPS_RATIO:.2f}x",
                    status(rps_ratio >= MIN_RPS_RATIO and not pm.errors, errors_note),
                )
            )
            note = errors_note
            if conns != P99_TARGET_CONNS:
                note = f"target is defined at {P99_TARGET_CONNS} connections"
            checks.append(
                Check(
                    f"Pointsman p99 vs nginx proxy ({conns} connections)",
                    fmt_paired(
                        p99_pairs, p99_of_medians, f"{fmt_ms(pm.p99_ms)} vs {fmt_ms(ng.p99_ms)}"
                    ),
                    f"≤ {MAX_P99_RATIO:.2f}x",
                    status(p99_ratio <= MAX_P99_RATIO and not pm.errors, note),
                )
            )
        else:
            why = "no round with both results" if ng and pm else "no result"
            for name, req in (
                ("Pointsman req/s vs nginx proxy", f"≥ {MIN_RPS_RATIO:.2f}x"),
                ("Pointsman p99 vs nginx proxy", f"≤ {MAX_P99_RATIO:.2f}x"),
            ):
                checks.append(Check(name, "-", req, status(False, why)))
        lines.append("")

    # ---- shadows
    shadow_lines, shadow_checks, shadow_summary = shadow_section(results, meta)
    lines.extend(shadow_lines)
    checks.extend(shadow_checks)
    summary["shadow"] = shadow_summary

    # ---- workers
    workers_lines, workers_checks, workers_summary = workers_section(results, meta)
    lines.extend(workers_lines)
    checks.extend(workers_checks)
    summary["workers"] = workers_summary

    # ---- fleet
    fleet_lines, fleet_checks, fleet_summary_ = fleet_section(results, meta)
    lines.extend(fleet_lines)
    checks.extend(fleet_checks)
    summary["fleet"] = fleet_summary_

    # ---- TLS
    tls_lines, tls_checks, tls_summary = tls_section(results, meta)
    lines.extend(tls_lines)
    checks.extend(tls_checks)
    summary["tls"] = tls_summary

    # ---- access log
    alog_lines, alog_checks, alog_summary = access_log_section(results, meta)
    lines.extend(alog_lines)
    checks.extend(alog_checks)
    summary["access_log"] = alog_summary

    # ---- memory
    lines.append("## Memory (RSS of the Pointsman processes: master and worker)")
    lines.append("")
    mem_rows, mem_checks = memory_section(meta, mem)
    checks.extend(mem_checks)
    if mem_rows:
        lines.append(
            "VmRSS from `/proc/PID/status`, the master's and its worker's summed, sampled every "
            f"{meta.get('sample_interval', '?')} s; growth = peak during the test minus the "
            "value just before it."
        )
        lines.append("")
        lines.append("| Test | Before | Peak | Growth | Details |")
        lines.append("|---|---:|---:|---:|---|")
        lines.extend(mem_rows)
    else:
        lines.append("Skipped.")
    lines.append("")

    # ---- targets
    lines.append("## Targets")
    lines.append("")
    lines.append("| Target | Measured | Required | Result |")
    lines.append("|---|---|---|---|")
    for c in checks:
        lines.append(f"| {c.name} | {md_escape(c.measured)} | {c.required} | {c.result} |")
    lines.append("")
    failed = any("FAIL" in c.result for c in checks)
    summary["checks"] = [asdict(c) for c in checks]
    text = "\n".join(lines)
    if out is not None:
        out.write_text(text)
    return text, summary, failed


def shadow_section(
    results: Path, meta: dict[str, str]
) -> tuple[list[str], list[Check], dict[str, object]]:
    """The shadow-isolation table and its three targets."""
    lines = ["## Shadow isolation", ""]
    names = (
        "1 s shadow at 100 %: Pointsman req/s vs no shadow",
        "1 s shadow at 100 %: Pointsman p99 vs no shadow",
        "Fast shadow at 100 %: CPU per request vs no shadow",
    )
    required = (
        f"≥ {1 - MAX_SLOW_SHADOW_RPS_DROP:.2f}x",
        f"≤ {1 + MAX_SLOW_SHADOW_P99_RISE:.2f}x",
        f"≤ {MAX_FAST_SHADOW_CPU_RATIO:.1f}x",
    )
    if meta.get("skip_shadow") == "1" or meta.get("skip_wrk") == "1":
        lines += ["Skipped (BENCH_SKIP_SHADOW=1 or BENCH_SKIP_WRK=1).", ""]
        return (
            lines,
            [Check(n, "-", r, "SKIPPED") for n, r in zip(names, required, strict=True)],
            {},
        )
    clk_tck = as_int(meta, "clk_tck") or 100
    phase_rounds: dict[str, dict[int, WrkResult]] = {}
    phase_cpu: dict[str, dict[int, float]] = {}  # CPU seconds per request, by round
    for key, _ in SHADOW_PHASES:
        parsed, _problems = load_rounds(results, f"shadow_{key}")
        if not parsed:
            continue
        phase_rounds[key] = parsed
        cpu: dict[int, float] = {}
        if key.startswith("pm_"):
            for n, ticks_file in round_files(results, f"shadow_{key}", ".cpu").items():
                r = parsed.get(n)
                if r is None or not r.requests:
                    continue
                try:
                    ticks = int(ticks_file.read_text().strip() or 0)
                except (OSError, ValueError):
                    continue
                cpu[n] = ticks / clk_tck / r.requests
        phase_cpu[key] = cpu
    delay = meta.get("shadow_delay", "1.0")
    order = ", ".join(key for key, _ in SHADOW_PHASES)
    lines.append(
        f"Same wrk settings as above, {meta.get('rounds', '1')} round(s) of the phases below. "
        + order_note(meta, order)
        + " The rows give each phase's median over the rounds. The ratios the targets are "
        "judged on are paired: for each round, the phase is divided by its no-shadow phase of "
        "the same round, and the median of these per-round ratios is reported (the ratio of "
        "the medians beside it, in the Targets table). The shadow is added and removed "
        "through the control API between phases (`percent: 100`, `methods: [GET]`, "
        f"`timeout: 2s`, `max_in_flight: 256`); the slow shadow (benchmarks/slow.py) answers "
        f"after {delay} s, the fast one is the same nginx backend. CPU per request: "
        "Pointsman's utime + stime during the run (master and worker, all their threads, "
        "comparison included) over the requests wrk completed in that run."
    )
    lines.append("")
    lines.append("| Target | Requests/s | p50 | p99 | CPU per request | Errors | Shadow counts |")
    lines.append("|---|---:|---:|---:|---:|---|---|")
    summary: dict[str, object] = {}
    medians: dict[str, WrkResult] = {}
    cpu_medians: dict[str, float] = {}
    for key, label in SHADOW_PHASES:
        if key not in phase_rounds:
            lines.append(f"| {label} | - | - | - | - | no result | |")
            continue
        r = combine(list(phase_rounds[key].values()))
        medians[key] = r
        cpu_median = None
        if phase_cpu[key]:
            cpu_median = statistics.median(phase_cpu[key].values())
            cpu_medians[key] = cpu_median
        err = ", ".join(f"{k} {v}" for k, v in r.error_detail.items()) or "0"
        counts = ""
        views = round_files(results, f"shadow_{key}", ".json")
        if views:
            last_round, last = list(views.items())[-1]
            try:
                view = json.loads(last.read_text())
                dropped = {k: v for k, v in view.get("dropped", {}).items() if v}
                counts = (
                    f"mirrored {view.get('mirrored', 0):,}, compared {view.get('compared', 0):,}"
                    f", dropped {dropped or 0} (round {last_round})"
                )
            except (OSError, ValueError, AttributeError):
                counts = "unreadable"
        cpu_text = f"{cpu_median * 1e6:.1f} µs" if cpu_median is not None else ""
        lines.append(
            f"| {label} | {r.rps:,.0f} | {fmt_ms(r.p50_ms)} | {fmt_ms(r.p99_ms)} | {cpu_text} "
            f"| {err} | {md_escape(counts)} |"
        )
        summary[key] = {
            "wrk": asdict(r),
            "cpu_per_request": cpu_median,
            "per_round": [
                {"round": n, **asdict(pr), "cpu_per_request": phase_cpu[key].get(n)}
                for n, pr in phase_rounds[key].items()
            ],
        }

    def rounds_of(key: str, value: str) -> dict[int, float]:
        rounds = phase_rounds.get(key, {})
        return {n: r.rps if value == "rps" else r.p99_ms for n, r in rounds.items()}

    def of_medians(num: str, den: str, value: str) -> float | None:
        a, b = medians.get(num), medians.get(den)
        if a is None or b is None:
            return None
        x, y = (a.rps, b.rps) if value == "rps" else (a.p99_ms, b.p99_ms)
        return x / y if y > 0 else None

    checks: list[Check] = []
    notes: list[str] = []
    slow = medians.get("pm_slow")
    slow_rps = paired_ratios(rounds_of("pm_slow", "rps"), rounds_of("pm_plain", "rps"))
    slow_p99 = paired_ratios(rounds_of("pm_slow", "p99"), rounds_of("pm_plain", "p99"))
    if slow and slow_rps and slow_p99:
        rps_ratio = statistics.median(slow_rps.values())
        p99_ratio = statistics.median(slow_p99.values())
        lines.append(
            f"| **1 s shadow / no shadow (Pointsman), median of per-round ratios** | "
            f"**{rps_ratio:.2f}x** | | **{p99_ratio:.2f}x** | | | |"
        )
        notes.append(
            f"- 1 s shadow / no shadow (Pointsman): req/s {fmt_ratios(slow_rps)}; "
            f"p99 {fmt_ratios(slow_p99)}"
        )
        rps_of_medians = of_medians("pm_slow", "pm_plain", "rps")
        p99_of_medians = of_medians("pm_slow", "pm_plain", "p99")
        checks.append(
            Check(names[0], fmt_paired(slow_rps, rps_of_medians), required[0],
                  status(rps_ratio >= 1 - MAX_SLOW_SHADOW_RPS_DROP and not slow.errors))
        )  # fmt: skip
        checks.append(
            Check(names[1], fmt_paired(slow_p99, p99_of_medians), required[1],
                  status(p99_ratio <= 1 + MAX_SLOW_SHADOW_P99_RISE and not slow.errors))
        )  # fmt: skip
        summary["slow_ratios"] = {
            "rps": rps_ratio,
            "p99": p99_ratio,
            "rps_of_medians": rps_of_medians,
            "p99_of_medians": p99_of_medians,
            "rps_per_round": ratio_list(slow_rps),
            "p99_per_round": ratio_list(slow_p99),
        }
    else:
        checks += [
            Check(n, "-", r, status(False, "no result"))
            for n, r in zip(names[:2], required[:2], strict=True)
        ]
    ng_rps = paired_ratios(rounds_of("nginx_mirror", "rps"), rounds_of("nginx_plain", "rps"))
    ng_p99 = paired_ratios(rounds_of("nginx_mirror", "p99"), rounds_of("nginx_plain", "p99"))
    if ng_rps and ng_p99:
        rps_ratio = statistics.median(ng_rps.values())
        p99_ratio = statistics.median(ng_p99.values())
        ok = rps_ratio >= 1 - MAX_SLOW_SHADOW_RPS_DROP and p99_ratio <= 1 + MAX_SLOW_SHADOW_P99_RISE
        verdict = "within" if ok else "fails"
        lines.append(
            f"| **nginx `mirror` / no mirror, median of per-round ratios** ({verdict} the 10 % "
            f"bound) | **{rps_ratio:.2f}x** | | **{p99_ratio:.2f}x** | | | |"
        )
        notes.append(
            f"- nginx `mirror` / no mirror: req/s {fmt_ratios(ng_rps)}; p99 {fmt_ratios(ng_p99)}"
        )
        summary["nginx_mirror_ratios"] = {
            "rps": rps_ratio,
            "p99": p99_ratio,
            "rps_of_medians": of_medians("nginx_mirror", "nginx_plain", "rps"),
            "p99_of_medians": of_medians("nginx_mirror", "nginx_plain", "p99"),
            "rps_per_round": ratio_list(ng_rps),
            "p99_per_round": ratio_list(ng_p99),
        }
    fast = medians.get("pm_fast")
    cpu_pairs = paired_ratios(phase_cpu.get("pm_fast", {}), phase_cpu.get("pm_plain", {}))
    if fast and cpu_pairs:
        cpu_ratio = statistics.median(cpu_pairs.values())
        lines.append(
            "| **fast shadow / no shadow, CPU per request, median of per-round ratios** "
            f"| | | | **{cpu_ratio:.2f}x** | | |"
        )
        notes.append(f"- fast shadow / no shadow, CPU per request: {fmt_ratios(cpu_pairs)}")
        fast_cpu, plain_cpu = cpu_medians.get("pm_fast"), cpu_medians.get("pm_plain")
        cpu_of_medians = fast_cpu / plain_cpu if fast_cpu and plain_cpu else None
        detail = ""
        if fast_cpu and plain_cpu:
            detail = f"{fast_cpu * 1e6:.1f} vs {plain_cpu * 1e6:.1f} µs"
        measured = fmt_paired(cpu_pairs, cpu_of_medians, detail)
        ok = cpu_ratio <= MAX_FAST_SHADOW_CPU_RATIO and not fast.errors
        checks.append(Check(names[2], measured, required[2], status(ok)))
        summary["fast_cpu_ratio"] = cpu_ratio
        summary["fast_cpu_ratios"] = {
            "cpu_per_request": cpu_ratio,
            "cpu_per_request_of_medians": cpu_of_medians,
            "cpu_per_request_per_round": ratio_list(cpu_pairs),
        }
    else:
        checks.append(Check(names[2], "-", required[2], status(False, "no result")))
    if notes:
        lines.append("")
        lines.append("Per-round ratios (paired, the two phases of the same round):")
        lines.append("")
        lines.extend(notes)
    lines.append("")
    return lines, checks, summary


# --------------------------------------------------------------------------- workers


@dataclass
class WorkersRun:
    """One wrk run of the workers phase, with what run.sh read around it."""

    wrk: WrkResult
    cpu_per_request: float | None = None  # seconds, master + workers (nginx: master + workers)
    master_cpu_pct: float | None = None  # master CPU seconds / wall seconds, % of one core
    processes: int | None = None
    requests_by_worker: dict[str, int] = field(default_factory=dict)  # answered in the run
    open_by_worker: dict[str, int] = field(default_factory=dict)  # mid-run
    restarts: int = 0

    @property
    def request_shares(self) -> dict[str, float]:
        total = sum(self.requests_by_worker.values())
        if total <= 0:
            return {}
        return {w: n / total for w, n in self.requests_by_worker.items()}

    @property
    def request_spread(self) -> float | None:
        return max_min(self.requests_by_worker)

    @property
    def open_spread(self) -> float | None:
        return max_min(self.open_by_worker)


def max_min(values: dict[str, int]) -> float | None:
    """max / min of the per-worker values; inf when a worker had none (and another some);
    None with fewer than two workers or nothing at all."""
    if len(values) < 2 or max(values.values()) <= 0:
        return None
    low = min(values.values())
    return max(values.values()) / low if low > 0 else math.inf


PROM_WORKER_LINE = re.compile(
    r'^(pointsman_worker_[a-z_]+)\{worker="([0-9]+)"\}\s+([0-9.eE+-]+|NaN|[+-]Inf)\s*$', re.M
)


def parse_worker_metrics(text: str) -> dict[str, dict[str, float]]:
    """The per-worker series of the master's /metrics: {metric name: {worker: value}}."""
    found: dict[str, dict[str, float]] = {}
    for m in PROM_WORKER_LINE.finditer(text):
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        found.setdefault(m.group(1), {})[m.group(2)] = value
    return found


def read_metrics(path: Path) -> dict[str, dict[str, float]] | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    return parse_worker_metrics(text) if text.strip() else None


def by_worker_index(values: dict[str, float]) -> dict[str, int]:
    return {w: round(values[w]) for w in sorted(values, key=int)}


def load_workers_run(results: Path, key: str, n: int, wrk: WrkResult, clk_tck: int) -> WorkersRun:
    run = WorkersRun(wrk)
    base = results / f"workers_{key}_{n}"
    cpu = read_env(base.with_name(base.name + ".cpu"))
    total, master = as_int(cpu, "total_ticks"), as_int(cpu, "master_ticks")
    start, end = as_float(cpu, "wall_start"), as_float(cpu, "wall_end")
    run.processes = as_int(cpu, "processes")
    if total is not None and wrk.requests:
        run.cpu_per_request = total / clk_tck / wrk.requests
    if master is not None and start is not None and end is not None and end > start:
        run.master_cpu_pct = master / clk_tck / (end - start) * 100.0
    before = read_metrics(base.with_name(base.name + ".before.prom"))
    after = read_metrics(base.with_name(base.name + ".after.prom"))
    mid = read_metrics(base.with_name(base.name + ".mid.prom"))
    if before is not None and after is not None:
        b = before.get("pointsman_worker_requests_total", {})
        a = after.get("pointsman_worker_requests_total", {})
        run.requests_by_worker = by_worker_index({w: max(0.0, a[w] - b.get(w, 0.0)) for w in a})
        rb = before.get("pointsman_worker_restarts_total", {})
        ra = after.get("pointsman_worker_restarts_total", {})
        run.restarts = round(sum(max(0.0, ra[w] - rb.get(w, 0.0)) for w in ra))
    if mid is not None:
        run.open_by_worker = by_worker_index(mid.get("pointsman_worker_open_connections", {}))
    return run


def fmt_spread(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "∞"
    return f"{value:.2f}"


def fmt_pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} %"


def fmt_us(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e6:.1f} µs"


def finite(value: float | None) -> float | None:
    """For summary.json (strict JSON has no Infinity): inf -> None."""
    return None if value is None or math.isinf(value) else value


def median_or_none(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def nearest_rank(values: list[float], percent: float) -> float:
    """The nearest-rank percentile (of 50 values, p99 is the largest)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(percent / 100.0 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Flip:
    n: int
    pool: str
    status: int
    latency_ms: float
    offset_s: float


def parse_flips(text: str) -> list[Flip]:
    """flips.py output: `<n> <pool> <status> <latency ms> <offset s>` per flip, # comments."""
    flips: list[Flip] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 5 or line.startswith("#"):
            continue
        try:
            flips.append(
                Flip(int(parts[0]), parts[1], int(parts[2]), float(parts[3]), float(parts[4]))
            )
        except ValueError:
            continue
    return flips


def flips_summary(flips: list[Flip]) -> str:
    ok = [f.latency_ms for f in flips if 200 <= f.status < 300]
    if not ok:
        return f"{len(flips)} flips, none answered 2xx"
    return (
        f"{len(ok)}/{len(flips)} flips answered 2xx: p50 {fmt_ms(nearest_rank(ok, 50))}, "
        f"p99 {fmt_ms(nearest_rank(ok, 99))}, max {fmt_ms(max(ok))}"
    )


WORKER_CHECKS: tuple[tuple[str, str], ...] = (
    ("Pointsman workers: 2 req/s vs nginx worker_processes 2", f"≥ {MIN_WORKERS_RPS_RATIO:.2f}x"),
    ("Pointsman workers: 2 p99 vs nginx worker_processes 2", f"≤ {MAX_WORKERS_P99_RATIO:.2f}x"),
    ("CPU per request, workers: 2 vs workers: 1", f"≤ {MAX_WORKERS_CPU_RATIO:.2f}x"),
    ("Master CPU at full load (workers: 2)", f"< {MAX_MASTER_CPU_PCT:.0f} % of one core"),
    ("Flip under load (workers: 2): control API answer p99", f"< {MAX_FLIP_P99_MS:.0f} ms"),
)


def workers_section(
    results: Path, meta: dict[str, str]
) -> tuple[list[str], list[Check], dict[str, object]]:
    """The workers phase: 2-worker nginx (unbound and bound to CPUs) and Pointsman with 2
    workers (bound and unbound), 1 worker and a shared socket; its four targets and the
    flip-latency target."""
    lines = ["## Workers", ""]
    names = [n for n, _ in WORKER_CHECKS]
    required = [r for _, r in WORKER_CHECKS]
    if meta.get("skip_workers", "1") == "1":
        why = meta.get("workers_skipped_because") or "not in this run"
        lines += [f"Skipped ({md_escape(why)}).", ""]
        checks = [Check(n, "-", r, "SKIPPED") for n, r in WORKER_CHECKS]
        return lines, checks, {"skipped": why}
    clk_tck = as_int(meta, "clk_tck") or 100
    runs: dict[str, dict[int, WorkersRun]] = {}
    for key, _ in WORKER_TARGETS:
        parsed, _problems = load_rounds(results, f"workers_{key}")
        if parsed:
            runs[key] = {
                n: load_workers_run(results, key, n, r, clk_tck) for n, r in parsed.items()
            }
    conns = meta.get("wrk_conns", "?")
    order = ", ".join(key for key, _ in WORKER_TARGETS)
    lines.append(
        f"Same wrk settings and backend as above, "
        f"{meta.get('workers_rounds', meta.get('rounds', '1'))} round(s) of the "
        "targets below, each a server of its own started once for this phase and kept "
        "running for all its rounds (on ports of its own). "
        + order_note(meta, order)
        + " CPU per request: utime + stime (all threads, plus reaped children's) of the master "
        "and all its workers during the wrk run (`/proc/PID/stat`, read before and after), "
        "over the requests wrk completed; the same for nginx's master and workers. Master CPU: "
        "the master's own CPU seconds over the wall seconds of the run, in % of one core. "
        "Spread: each worker's share of the requests of the run (`pointsman_worker_requests_"
        "total` from the master's /metrics before and after) and its open connections "
        f"(`pointsman_worker_open_connections`, scraped once mid-run) of the {conns} wrk "
        "connections; max/min of these over the workers (∞: a worker had none)."
    )
    lines.append("")
    lines.append(
        "| Target | Requests/s | p50 | p99 | CPU per request | Master CPU (one core) "
        "| Requests max/min | Connections max/min | Errors |"
    )
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    summary: dict[str, object] = {}
    medians: dict[str, WrkResult] = {}
    cpu_medians: dict[str, float] = {}
    for key, label in WORKER_TARGETS:
        if key not in runs:
            lines.append(f"| {label} | - | - | - | - | - | - | - | no result |")
            continue
        rounds = runs[key]
        r = combine([run.wrk for run in rounds.values()])
        medians[key] = r
        cpu = median_or_none([x.cpu_per_request for x in rounds.values()
                              if x.cpu_per_request is not None])  # fmt: skip
        if cpu is not None:
            cpu_medians[key] = cpu
        master = None
        req_spread = conn_spread = None
        if key.startswith("pm_"):
            master = median_or_none([x.master_cpu_pct for x in rounds.values()
                                     if x.master_cpu_pct is not None])  # fmt: skip
            req_spread = median_or_none([s for x in rounds.values()
                                         if (s := x.request_spread) is not None])  # fmt: skip
            conn_spread = median_or_none([s for x in rounds.values()
                                          if (s := x.open_spread) is not None])  # fmt: skip
        err = ", ".join(f"{k} {v}" for k, v in r.error_detail.items()) or "0"
        restarts = sum(x.restarts for x in rounds.values())
        if restarts:
            err += f"; {restarts} worker restart(s)"
        lines.append(
            f"| {label} | {r.rps:,.0f} | {fmt_ms(r.p50_ms)} | {fmt_ms(r.p99_ms)} "
            f"| {fmt_us(cpu)} | {fmt_pct(master)} | {fmt_spread(req_spread)} "
            f"| {fmt_spread(conn_spread)} | {err} |"
        )
        summary[key] = {
            "wrk": asdict(r),
            "cpu_per_request": cpu,
            "master_cpu_pct": master,
            "request_spread": finite(req_spread),
            "open_spread": finite(conn_spread),
            "per_round": [
                {
                    "round": n,
                    **asdict(x.wrk),
                    "cpu_per_request": x.cpu_per_request,
                    "master_cpu_pct": x.master_cpu_pct,
                    "processes": x.processes,
                    "requests_by_worker": x.requests_by_worker,
                    "request_shares": x.request_shares,
                    "request_spread": finite(x.request_spread),
                    "open_by_worker": x.open_by_worker,
                    "open_spread": finite(x.open_spread),
                    "restarts": x.restarts,
                }
                for n, x in rounds.items()
            ],
        }
    lines.append("")

    # per round, the Pointsman runs: how the load spread
    if any(k.startswith("pm_") for k in runs):
        lines.append("Per round (Pointsman):")
        lines.append("")
        lines.append(
            "| Round | Target | Requests/s | p99 | CPU per request | Master CPU "
            "| Request shares (worker 0, 1, ...) | max/min | Open connections mid-run "
            "| max/min |"
        )
        lines.append("|---:|---|---:|---:|---:|---:|---|---:|---|---:|")
        labels = dict(WORKER_TARGETS)
        all_rounds = sorted({n for k in runs for n in runs[k]})
        for n in all_rounds:
            for key, _ in WORKER_TARGETS:
                x = runs.get(key, {}).get(n)
                if x is None or not key.startswith("pm_"):
                    continue
                shares = " / ".join(f"{s * 100:.1f} %" for s in x.request_shares.values())
                opened = " / ".join(str(v) for v in x.open_by_worker.values())
                lines.append(
                    f"| {n} | {labels[key]} | {x.wrk.rps:,.0f} | {fmt_ms(x.wrk.p99_ms)} "
                    f"| {fmt_us(x.cpu_per_request)} | {fmt_pct(x.master_cpu_pct)} "
                    f"| {shares or '-'} | {fmt_spread(x.request_spread)} | {opened or '-'} "
                    f"| {fmt_spread(x.open_spread)} |"
                )
        lines.append("")

    def per_round(key: str, value: Callable[[WorkersRun], float | None]) -> dict[int, float]:
        found: dict[int, float] = {}
        for n, x in runs.get(key, {}).items():
            v = value(x)
            if v is not None:
                found[n] = v
        return found

    def values_text(values: dict[int, float], fmt: Callable[[float], str]) -> str:
        contiguous = list(values) == list(range(1, len(values) + 1))
        return ", ".join(fmt(v) if contiguous else f"r{n} {fmt(v)}" for n, v in values.items())

    checks: list[Check] = []
    rows: list[str] = []
    pm2, ng2, pm1 = medians.get("pm_w2"), medians.get("nginx_w2"), medians.get("pm_w1")

    # (a) workers: 2 vs nginx with 2 workers, req/s and p99
    rps_pairs = paired_ratios(
        per_round("pm_w2", lambda x: x.wrk.rps), per_round("nginx_w2", lambda x: x.wrk.rps)
    )
    p99_pairs = paired_ratios(
        per_round("pm_w2", lambda x: x.wrk.p99_ms),
        per_round("nginx_w2", lambda x: x.wrk.p99_ms),
    )
    for i, (pairs, what, limit, ge) in enumerate(
        (
            (rps_pairs, "req/s", MIN_WORKERS_RPS_RATIO, True),
            (p99_pairs, "p99", MAX_WORKERS_P99_RATIO, False),
        )
    ):
        label = f"(a) {what}, Pointsman `workers: 2` / nginx `worker_processes 2`"
        if not (pm2 and ng2 and pairs):
            rows.append(f"| {label} | - | - | {required[i]} | no result |")
            checks.append(Check(names[i], "-", required[i], status(False, "no result")))
            continue
        ratio = statistics.median(pairs.values())
        if ge:
            of_medians = pm2.rps / ng2.rps if ng2.rps > 0 else None
            detail = f"{pm2.rps:,.0f} vs {ng2.rps:,.0f}"
            ok = ratio >= limit
        else:
            of_medians = pm2.p99_ms / ng2.p99_ms if ng2.p99_ms > 0 else None
            detail = f"{fmt_ms(pm2.p99_ms)} vs {fmt_ms(ng2.p99_ms)}"
            ok = ratio <= limit
        note = "Pointsman had errors" if pm2.errors else ""
        if not ge and meta.get("wrk_conns") != str(P99_TARGET_CONNS):
            note = f"target is defined at {P99_TARGET_CONNS} connections"
        verdict = status(ok and not pm2.errors, note)
        rows.append(
            f"| {label} | {values_text(pairs, lambda v: f'{v:.2f}')} | **{ratio:.2f}x** "
            f"({detail}) | {required[i]} | {verdict} |"
        )
        checks.append(Check(names[i], fmt_paired(pairs, of_medians, detail), required[i], verdict))
        summary["rps_ratios" if ge else "p99_ratios"] = {
            "median": ratio,
            "of_medians": of_medians,
            "per_round": ratio_list(pairs),
        }

    def no_target_row(
        label: str, values: dict[int, float], fmt: Callable[[float], str], suffix: str = ""
    ) -> float | None:
        """A comparison row without a target: the per-round values and their median (None,
        and a row of dashes, when there were no rounds)."""
        if not values:
            rows.append(f"| {label} | - | - | (no target) | |")
            return None
        med = statistics.median(values.values())
        rows.append(
            f"| {label} | {values_text(values, fmt)} | **{fmt(med)}{suffix}** | (no target) | |"
        )
        return med

    # (a') no target: each side with and without its workers bound to CPUs
    others: dict[str, object] = {}
    for num_key, den_key, what in WORKER_AFFINITY_PAIRS:
        for metric, value in (
            ("req/s", lambda x: x.wrk.rps),
            ("p99", lambda x: x.wrk.p99_ms),
        ):
            pairs = paired_ratios(per_round(num_key, value), per_round(den_key, value))
            ratio = no_target_row(f"(a') {metric}, {what}", pairs, lambda v: f"{v:.2f}", "x")
            if ratio is None:
                continue
            others[f"{metric} {num_key}/{den_key}"] = {
                "median": ratio,
                "per_round": ratio_list(pairs),
            }
    summary["affinity_ratios"] = others

    # (b) CPU per request, workers: 2 / workers: 1
    cpu_pairs = paired_ratios(
        per_round("pm_w2", lambda x: x.cpu_per_request),
        per_round("pm_w1", lambda x: x.cpu_per_request),
    )
    label = "(b) CPU per request, `workers: 2` / `workers: 1`"
    if pm2 and pm1 and cpu_pairs:
        ratio = statistics.median(cpu_pairs.values())
        c2, c1 = cpu_medians.get("pm_w2"), cpu_medians.get("pm_w1")
        of_medians = c2 / c1 if c2 and c1 else None
        detail = f"{c2 * 1e6:.1f} vs {c1 * 1e6:.1f} µs" if c2 and c1 else ""
        errors = pm2.errors or pm1.errors
        verdict = status(ratio <= MAX_WORKERS_CPU_RATIO and not errors,
                         "Pointsman had errors" if errors else "")  # fmt: skip
        rows.append(
            f"| {label} | {values_text(cpu_pairs, lambda v: f'{v:.2f}')} | **{ratio:.2f}x** "
            f"({detail}) | {required[2]} | {verdict} |"
        )
        checks.append(
            Check(names[2], fmt_paired(cpu_pairs, of_medians, detail), required[2], verdict)
        )
        summary["cpu_ratios"] = {
            "median": ratio,
            "of_medians": of_medians,
            "per_round": ratio_list(cpu_pairs),
        }
    else:
        rows.append(f"| {label} | - | - | {required[2]} | no result |")
        checks.append(Check(names[2], "-", required[2], status(False, "no result")))

    # (c) the master's CPU share while workers: 2 serves at full load
    master = per_round("pm_w2", lambda x: x.master_cpu_pct)
    label = "(c) master CPU, `workers: 2` at full load (% of one core)"
    if master:
        pct = statistics.median(master.values())
        values = list(master.values())
        spread = "1 round" if len(values) == 1 else (
            f"median of {len(values)} rounds {min(values):.2f}-{max(values):.2f} %"
        )  # fmt: skip
        verdict = status(pct < MAX_MASTER_CPU_PCT)
        rows.append(
            f"| {label} | {values_text(master, lambda v: f'{v:.2f} %')} | **{pct:.2f} %** "
            f"| {required[3]} | {verdict} |"
        )
        checks.append(Check(names[3], f"{pct:.2f} % ({spread})", required[3], verdict))
        summary["master_cpu_pct"] = {"median": pct, "per_round": ratio_list(master)}
    else:
        rows.append(f"| {label} | - | - | {required[3]} | no result |")
        checks.append(Check(names[3], "-", required[3], status(False, "no result")))

    # (d) the spread over the workers: one SO_REUSEPORT socket each vs one shared socket
    spreads: dict[str, object] = {}
    for key, socket_kind in (("pm_w2", "SO_REUSEPORT"), ("pm_w2_shared", "shared socket")):
        for what, value in (
            ("requests", lambda x: x.request_spread),
            ("open connections mid-run", lambda x: x.open_spread),
        ):
            values = per_round(key, value)
            label = f"(d) {what} max/min over the workers, {socket_kind}"
            med = no_target_row(label, values, fmt_spread)
            if med is None:
                continue
            spreads[f"{key}_{what.split()[0]}"] = {
                "median": finite(med),
                "per_round": [{"round": n, "ratio": finite(v)} for n, v in values.items()],
            }
    summary["spread"] = spreads

    # flips under load
    flips_wanted = as_int(meta, "flips") or 0
    label = "flip (control API) answer latency under load, `workers: 2`"
    if flips_wanted <= 0:
        rows.append(f"| {label} | - | - | {required[4]} | SKIPPED |")
        checks.append(Check(names[4], "-", required[4], "SKIPPED"))
    else:
        try:
            flips = parse_flips((results / "flips.txt").read_text())
        except OSError:
            flips = []
        ok_ms = [f.latency_ms for f in flips if 200 <= f.status < 300]
        if not ok_ms:
            rows.append(f"| {label} | - | - | {required[4]} | **FAIL** (no result) |")
            checks.append(Check(names[4], "-", required[4], status(False, "no result")))
        else:
            p50, p99 = nearest_rank(ok_ms, 50), nearest_rank(ok_ms, 99)
            notes = []
            failed_flips = [f for f in flips if not 200 <= f.status < 300]
            if failed_flips:
                codes = ", ".join(str(f.status) for f in failed_flips[:5])
                notes.append(f"{len(failed_flips)} flip(s) failed: HTTP {codes}")
            if len(flips) < flips_wanted:
                notes.append(f"only {len(flips)}/{flips_wanted} flips made")
            wrk_note = ""
            try:
                during = parse_wrk((results / "flips_wrk.txt").read_text())
                wrk_note = f"; wrk meanwhile {during.rps:,.0f} req/s, p99 {fmt_ms(during.p99_ms)}"
                if during.errors:
                    detail = ", ".join(f"{k} {v}" for k, v in during.error_detail.items())
                    notes.append(f"wrk saw errors during the flips: {detail}")
                summary["flips_wrk"] = asdict(during)
            except (OSError, ParseError):
                notes.append("no wrk result for the flip run")
            first = min(f.offset_s for f in flips)
            last = max(f.offset_s + f.latency_ms / 1000 for f in flips)
            measured = (
                f"p99 {fmt_ms(p99)} (nearest rank of {len(ok_ms)}; p50 {fmt_ms(p50)}, "
                f"max {fmt_ms(max(ok_ms))}{wrk_note})"
            )
            verdict = status(p99 < MAX_FLIP_P99_MS and not notes, "; ".join(notes))
            rows.append(
                f"| {label} | {len(flips)} flips, {first:.1f}-{last:.1f} s into a "
                f"{meta.get('wrk_seconds', '?')} s wrk run{wrk_note}; p50 {fmt_ms(p50)}, "
                f"max {fmt_ms(max(ok_ms))} | **p99 {fmt_ms(p99)}** | {required[4]} | {verdict} |"
            )
            checks.append(Check(names[4], measured, required[4], verdict))
            summary["flips"] = {
                "count": len(flips),
                "answered_2xx": len(ok_ms),
                "p50_ms": p50,
                "p99_ms": p99,
                "max_ms": max(ok_ms),
                "latencies_ms": [f.latency_ms for f in flips],
                "statuses": [f.status for f in flips],
            }

    lines.append(
        "Comparisons: (a), (a') and (b) paired by round (the ratio of the two runs of the "
        "same round, then the median of these per-round ratios; (c) the median of the "
        "per-round values); "
        "(d) the median over the rounds. The flips go to the route's pools green and blue in "
        "turn (both the backend nginx), each `POST /v1/routes/shop/flip` on a new connection, "
        "timed by the client from connect to the end of the answer, after one untimed "
        "`GET /v1/routes/shop` (a master's first answer pays a once-per-process cost); p50/p99 "
        "are nearest-rank percentiles (of 50 flips, p99 is the slowest)."
    )
    lines.append("")
    lines.append("| Comparison | Per round | Median | Required | Result |")
    lines.append("|---|---|---|---|---|")
    lines.extend(rows)
    lines.append("")
    return lines, checks, summary


# --------------------------------------------------------------------------- fleet


@dataclass
class FleetRun:
    """One wrk run of the fleet phase's req/s rounds, with the CPU run.sh read around it."""

    wrk: WrkResult
    cpu_per_request: float | None = None  # seconds, master + worker
    etcd_cpu_pct: float | None = None  # etcd's CPU seconds over the wall seconds, % of one core


def load_fleet_run(results: Path, key: str, n: int, wrk: WrkResult, clk_tck: int) -> FleetRun:
    run = FleetRun(wrk)
    cpu = read_env(results / f"fleet_{key}_{n}.cpu")
    total, etcd = as_int(cpu, "total_ticks"), as_int(cpu, "etcd_ticks")
    start, end = as_float(cpu, "wall_start"), as_float(cpu, "wall_end")
    if total is not None and wrk.requests:
        run.cpu_per_request = total / clk_tck / wrk.requests
    if etcd is not None and start is not None and end is not None and end > start:
        run.etcd_cpu_pct = etcd / clk_tck / (end - start) * 100.0
    return run


@dataclass
class FleetChange:
    """One weight change of fleet.py: A's answer, and when B showed the version in etcd."""

    n: int
    status: int
    version: int | None
    answer_ms: float
    applied_ms: float | None  # None: B did not show it within fleet.py's timeout
    offset_s: float
    error: str = ""


def parse_fleet_changes(text: str) -> tuple[dict[str, object], list[FleetChange]]:
    """fleet.py's JSON document: (its top-level fields but the changes, the changes)."""
    doc = json.loads(text)
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    changes: list[FleetChange] = []
    for c in doc.get("changes", []):
        applied = c.get("applied_ms")
        version = c.get("version")
        changes.append(
            FleetChange(
                n=int(c["n"]),
                status=int(c["status"]),
                version=None if version is None else int(version),
                answer_ms=float(c["answer_ms"]),
                applied_ms=None if applied is None else float(applied),
                offset_s=float(c["offset_s"]),
                error=str(c.get("error") or ""),
            )
        )
    return {k: v for k, v in doc.items() if k != "changes"}, changes


def fleet_summary(changes: list[FleetChange]) -> str:
    applied = [c.applied_ms for c in changes if c.applied_ms is not None]
    answered = [c.answer_ms for c in changes if 200 <= c.status < 300]
    if not applied:
        return f"{len(changes)} changes, {len(answered)} answered 2xx, none seen applied on B"
    return (
        f"{len(applied)}/{len(changes)} changes seen applied on B: p50 "
        f"{fmt_ms(nearest_rank(applied, 50))}, p99 {fmt_ms(nearest_rank(applied, 99))}, max "
        f"{fmt_ms(max(applied))}; A's answer p50 {fmt_ms(nearest_rank(answered, 50))}, p99 "
        f"{fmt_ms(nearest_rank(answered, 99))}"
    )


FLEET_TARGETS: tuple[tuple[str, str], ...] = (
    ("pm_file", "Pointsman, file store (`workers: 1`)"),
    ("pm_etcd", "Pointsman, etcd store: fleet member A (`workers: 1`)"),
)
FLEET_CHECKS: tuple[tuple[str, str], ...] = (
    ("Fleet: req/s, etcd store vs file store", f"≥ {MIN_FLEET_RPS_RATIO:.2f}x"),
    (
        "Fleet: change through member A applied on member B under load, p99",
        f"≤ {MAX_FLEET_APPLY_P99_MS:.0f} ms",
    ),
)


def fleet_section(
    results: Path, meta: dict[str, str]
) -> tuple[list[str], list[Check], dict[str, object]]:
    """The fleet phase: req/s of a fleet member (etcd store) against the file store, paired
    by round; and how long a change through member A takes to be applied on member B."""
    lines = ["## Fleet (etcd store)", ""]
    names = [n for n, _ in FLEET_CHECKS]
    required = [r for _, r in FLEET_CHECKS]
    if meta.get("skip_fleet", "1") == "1":
        why = meta.get("fleet_skipped_because") or "not in this run"
        lines += [f"Skipped ({md_escape(why)}).", ""]
        return lines, [Check(n, "-", r, "SKIPPED") for n, r in FLEET_CHECKS], {"skipped": why}
    clk_tck = as_int(meta, "clk_tck") or 100
    runs: dict[str, dict[int, FleetRun]] = {}
    for key, _ in FLEET_TARGETS:
        parsed, _problems = load_rounds(results, f"fleet_{key}")
        if parsed:
            runs[key] = {n: load_fleet_run(results, key, n, r, clk_tck) for n, r in parsed.items()}
    changes_wanted = as_int(meta, "fleet_changes") or 0
    load = {"a": "member A", "b": "member B", "both": "members A and B"}.get(
        meta.get("fleet_load", "both"), "?"
    )
    lines.append(
        f"A throwaway one-member etcd {meta.get('etcd_version', '')} on this machine, and "
        "three Pointsman instances with the same routes and `workers: 1`, each a server of its "
        "own started once for this phase: one with the file store (`state.store: file`) and "
        "members A and B of one fleet (`state.store: etcd`, one prefix). Req/s: the same wrk "
        f"settings as above, {meta.get('rounds', '1')} round(s) of the file-store instance and "
        "member A (B idle). "
        + order_note(meta, "file store, etcd store")
        + " CPU per request as in the workers phase (master + worker); etcd CPU: etcd's CPU "
        "seconds during the run over its wall seconds (the store is off the request path). "
        f"Propagation: {changes_wanted} weight changes of route `shop` through A's control "
        "API (`PUT /v1/routes/shop/weights`, blue/green 80/20 and 90/10 in turn, each on a "
        "fresh connection, one after another, spread over the run), while wrk (same settings) "
        f"loads {load}; `benchmarks/fleet.py` times each from sending it to A until B's member "
        "key (`<prefix>/members/<host>:<admin port>`, which B rewrites once its worker runs a "
        "new version) shows that version, through an etcd watch; and A's own answer. p50/p99 "
        "are nearest-rank percentiles (of 200 changes, p99 is the 198th smallest)."
    )
    lines.append("")
    lines.append(
        "| Target | Requests/s | p50 | p99 | CPU per request | etcd CPU (one core) | Errors |"
    )
    lines.append("|---|---:|---:|---:|---:|---:|---|")
    summary: dict[str, object] = {}
    medians: dict[str, WrkResult] = {}
    cpu_medians: dict[str, float] = {}
    for key, label in FLEET_TARGETS:
        if key not in runs:
            lines.append(f"| {label} | - | - | - | - | - | no result |")
            continue
        rounds = runs[key]
        r = combine([x.wrk for x in rounds.values()])
        medians[key] = r
        cpu = median_or_none([x.cpu_per_request for x in rounds.values()
                              if x.cpu_per_request is not None])  # fmt: skip
        if cpu is not None:
            cpu_medians[key] = cpu
        etcd = median_or_none([x.etcd_cpu_pct for x in rounds.values()
                               if x.etcd_cpu_pct is not None])  # fmt: skip
        err = ", ".join(f"{k} {v}" for k, v in r.error_detail.items()) or "0"
        lines.append(
            f"| {label} | {r.rps:,.0f} | {fmt_ms(r.p50_ms)} | {fmt_ms(r.p99_ms)} "
            f"| {fmt_us(cpu)} | {fmt_pct(etcd)} | {err} |"
        )
        summary[key] = {
            "wrk": asdict(r),
            "cpu_per_request": cpu,
            "etcd_cpu_pct": etcd,
            "per_round": [
                {
                    "round": n,
                    **asdict(x.wrk),
                    "cpu_per_request": x.cpu_per_request,
                    "etcd_cpu_pct": x.etcd_cpu_pct,
                }
                for n, x in rounds.items()
            ],
        }
    lines.append("")

    def per_round(key: str, value: Callable[[FleetRun], float | None]) -> dict[int, float]:
        found: dict[int, float] = {}
        for n, x in runs.get(key, {}).items():
            v = value(x)
            if v is not None:
                found[n] = v
        return found

    def values_text(values: dict[int, float]) -> str:
        contiguous = list(values) == list(range(1, len(values) + 1))
        return ", ".join(f"{v:.2f}" if contiguous else f"r{n} {v:.2f}" for n, v in values.items())

    checks: list[Check] = []
    rows: list[str] = []
    etcd_m, file_m = medians.get("pm_etcd"), medians.get("pm_file")

    # req/s (the target), p99 and CPU per request: etcd store / file store, paired by round
    rps_pairs = paired_ratios(
        per_round("pm_etcd", lambda x: x.wrk.rps), per_round("pm_file", lambda x: x.wrk.rps)
    )
    label = "req/s, etcd store (member A) / file store"
    if etcd_m and file_m and rps_pairs:
        ratio = statistics.median(rps_pairs.values())
        of_medians = etcd_m.rps / file_m.rps if file_m.rps > 0 else None
        detail = f"{etcd_m.rps:,.0f} vs {file_m.rps:,.0f}"
        errors = etcd_m.errors or file_m.errors
        verdict = status(ratio >= MIN_FLEET_RPS_RATIO and not errors,
                         "Pointsman had errors" if errors else "")  # fmt: skip
        rows.append(
            f"| {label} | {values_text(rps_pairs)} | **{ratio:.2f}x** ({detail}) "
            f"| {required[0]} | {verdict} |"
        )
        checks.append(Check(names[0], fmt_paired(rps_pairs, of_medians, detail), required[0],
                            verdict))  # fmt: skip
        summary["rps_ratios"] = {
            "median": ratio,
            "of_medians": of_medians,
            "per_round": ratio_list(rps_pairs),
        }
    else:
        rows.append(f"| {label} | - | - | {required[0]} | **FAIL** (no result) |")
        checks.append(Check(names[0], "-", required[0], status(False, "no result")))
    for what, value, fmt in (
        ("p99", lambda x: x.wrk.p99_ms, fmt_ms),
        ("CPU per request", lambda x: x.cpu_per_request, fmt_us_value),
    ):
        pairs = paired_ratios(per_round("pm_etcd", value), per_round("pm_file", value))
        label = f"{what}, etcd store / file store"
        if not pairs:
            rows.append(f"| {label} | - | - | (no target) | |")
            continue
        a = median_or_none(list(per_round("pm_etcd", value).values()))
        b = median_or_none(list(per_round("pm_file", value).values()))
        detail = f" ({fmt(a)} vs {fmt(b)})" if a is not None and b is not None else ""
        ratio = statistics.median(pairs.values())
        rows.append(f"| {label} | {values_text(pairs)} | **{ratio:.2f}x**{detail} "
                    "| (no target) | |")  # fmt: skip
        key = "p99_ratios" if what == "p99" else "cpu_ratios"
        summary[key] = {"median": ratio, "per_round": ratio_list(pairs)}

    # propagation: a change through A applied on B
    label = "change through A, applied on B (from sending it to A)"
    answer_label = "A's answer to the change (no target)"
    if changes_wanted <= 0:
        rows.append(f"| {label} | - | - | {required[1]} | SKIPPED |")
        checks.append(Check(names[1], "-", required[1], "SKIPPED"))
    else:
        try:
            head, changes = parse_fleet_changes((results / "fleet_changes.json").read_text())
        except (OSError, ValueError, KeyError, TypeError):
            head, changes = {}, []
        applied = [c.applied_ms for c in changes if c.applied_ms is not None]
        answered = [c.answer_ms for c in changes if 200 <= c.status < 300]
        if not applied:
            rows.append(f"| {label} | - | - | {required[1]} | **FAIL** (no result) |")
            checks.append(Check(names[1], "-", required[1], status(False, "no result")))
        else:
            problems: list[str] = []
            remarks: list[str] = []
            failed = [c for c in changes if not 200 <= c.status < 300]
            if failed:
                codes = ", ".join(str(c.status) for c in failed[:5])
                problems.append(f"{len(failed)} change(s) failed: HTTP {codes}")
            missed = [c for c in changes if 200 <= c.status < 300 and c.applied_ms is None]
            if missed:
                problems.append(f"{len(missed)} change(s) never seen applied on B")
            if len(changes) < changes_wanted:
                problems.append(f"only {len(changes)}/{changes_wanted} changes made")
            first = min(c.offset_s for c in changes)
            last = max(c.offset_s + (c.applied_ms or c.answer_ms) / 1000 for c in changes)
            load_notes: list[str] = []
            for member in ("a", "b"):
                try:
                    during = parse_wrk((results / f"fleet_load_{member}.txt").read_text())
                except (OSError, ParseError):
                    continue
                load_notes.append(
                    f"{member.upper()} {during.rps:,.0f} req/s, p99 {fmt_ms(during.p99_ms)}"
                )
                summary[f"load_{member}"] = asdict(during)
                if during.errors:
                    detail = ", ".join(f"{k} {v}" for k, v in during.error_detail.items())
                    problems.append(f"wrk on {member.upper()} saw errors: {detail}")
                if during.seconds and during.seconds < last:
                    problems.append(f"the load on {member.upper()} ended before the changes")
            if not load_notes:
                problems.append("no wrk result for the load")
            if changes_wanted != FLEET_TARGET_CHANGES:
                remarks.append(f"target is defined over {FLEET_TARGET_CHANGES} changes")
            p50, p99 = nearest_rank(applied, 50), nearest_rank(applied, 99)
            wrk_note = f"; wrk meanwhile: {', '.join(load_notes)}" if load_notes else ""
            measured = (
                f"p99 {fmt_ms(p99)} (nearest rank of {len(applied)}; p50 {fmt_ms(p50)}, "
                f"max {fmt_ms(max(applied))}{wrk_note})"
            )
            verdict = status(p99 <= MAX_FLEET_APPLY_P99_MS and not problems,
                             "; ".join(problems + remarks))  # fmt: skip
            rows.append(
                f"| {label} | {len(changes)} changes, {first:.1f}-{last:.1f} s into the load"
                f"{wrk_note}; p50 {fmt_ms(p50)}, max {fmt_ms(max(applied))} "
                f"| **p99 {fmt_ms(p99)}** | {required[1]} | {verdict} |"
            )
            checks.append(Check(names[1], measured, required[1], verdict))
            if answered:
                rows.append(
                    f"| {answer_label} | p50 {fmt_ms(nearest_rank(answered, 50))}, max "
                    f"{fmt_ms(max(answered))} | **p99 {fmt_ms(nearest_rank(answered, 99))}** "
                    "| (no target) | |"
                )
            summary["propagation"] = {
                "member": head.get("member"),
                "count": len(changes),
                "applied": len(applied),
                "answered_2xx": len(answered),
                "applied_p50_ms": p50,
                "applied_p99_ms": p99,
                "applied_max_ms": max(applied),
                "answer_p50_ms": nearest_rank(answered, 50) if answered else None,
                "answer_p99_ms": nearest_rank(answered, 99) if answered else None,
                "answer_max_ms": max(answered) if answered else None,
                "applied_ms": [c.applied_ms for c in changes],
                "answer_ms": [c.answer_ms for c in changes],
                "statuses": [c.status for c in changes],
            }

    lines.append(
        "Comparisons: req/s, p99 and CPU per request paired by round (the ratio of the two "
        "runs of the same round, then the median of these per-round ratios); the propagation "
        "over all changes of the one loaded run."
    )
    lines.append("")
    lines.append("| Comparison | Per round | Median | Required | Result |")
    lines.append("|---|---|---|---|---|")
    lines.extend(rows)
    lines.append("")
    return lines, checks, summary


# --------------------------------------------------------------------------- TLS, access log


@dataclass
class PairedRun:
    """One wrk run of the TLS or access-log phase, with what run.sh read around it."""

    wrk: WrkResult
    cpu_per_request: float | None = None  # seconds: the server's processes (master + workers)
    log_lines: int | None = None  # access-log phase, log on: lines the run added to the log
    log_bytes: int | None = None


def load_paired_runs(results: Path, stem: str, clk_tck: int) -> dict[int, PairedRun]:
    """`<stem>_<round>.txt` (wrk) with its `.cpu` and, if there, `.lines`, by round."""
    parsed, _problems = load_rounds(results, stem)
    runs: dict[int, PairedRun] = {}
    for n, wrk in parsed.items():
        run = PairedRun(wrk)
        total = as_int(read_env(results / f"{stem}_{n}.cpu"), "total_ticks")
        if total is not None and wrk.requests:
            run.cpu_per_request = total / clk_tck / wrk.requests
        logged = read_env(results / f"{stem}_{n}.lines")
        run.log_lines, run.log_bytes = as_int(logged, "lines"), as_int(logged, "bytes")
        runs[n] = run
    return runs


def parse_probe(text: str) -> dict[str, str]:
    """tls_probe.py's line, `protocol=TLSv1.3 cipher=... resumed=3/3 status=200`, as a dict."""
    return dict(part.split("=", 1) for part in text.split() if "=" in part)


def probe_resumes(probe: dict[str, str]) -> bool | None:
    """Whether the probe saw a session resumed; None when it has no answer."""
    m = re.fullmatch(r"([0-9]+)/([0-9]+)", probe.get("resumed", ""))
    if not m or m.group(2) == "0":
        return None
    return int(m.group(1)) > 0


@dataclass
class Comparison:
    """Ratios of one value of two targets, paired by round."""

    pairs: dict[int, float]
    of_medians: float | None
    detail: str  # the two medians, "a vs b"

    @property
    def median(self) -> float:
        return statistics.median(self.pairs.values())

    def per_round_text(self) -> str:
        contiguous = list(self.pairs) == list(range(1, len(self.pairs) + 1))
        return ", ".join(
            f"{v:.2f}" if contiguous else f"r{n} {v:.2f}" for n, v in self.pairs.items()
        )

    def summary(self) -> dict[str, object]:
        return {
            "median": self.median,
            "of_medians": self.of_medians,
            "per_round": ratio_list(self.pairs),
        }


def compare_runs(
    num: dict[int, PairedRun],
    den: dict[int, PairedRun],
    value: Callable[[PairedRun], float | None],
    fmt: Callable[[float], str],
) -> Comparison | None:
    """value(num) / value(den) per round with both; None when no round has both."""

    def values(runs: dict[int, PairedRun]) -> dict[int, float]:
        return {n: v for n, run in runs.items() if (v := value(run)) is not None}

    a, b = values(num), values(den)
    pairs = paired_ratios(a, b)
    if not pairs:
        return None
    ma, mb = statistics.median(a.values()), statistics.median(b.values())
    return Comparison(pairs, ma / mb if mb > 0 else None, f"{fmt(ma)} vs {fmt(mb)}")


def median_runs(runs: dict[int, PairedRun]) -> tuple[WrkResult, float | None]:
    """The median wrk result over the rounds and the median CPU per request."""
    cpu = median_or_none([x.cpu_per_request for x in runs.values()
                          if x.cpu_per_request is not None])  # fmt: skip
    return combine([x.wrk for x in runs.values()]), cpu


def error_text(r: WrkResult) -> str:
    return ", ".join(f"{k} {v}" for k, v in r.error_detail.items()) or "0"


TLS_TARGETS: tuple[tuple[str, str], ...] = (
    ("nginx_tls", "nginx over TLS, keep-alive"),
    ("pm_tls", "Pointsman over TLS, keep-alive"),
    ("nginx_tls_close", "nginx over TLS, a new connection per request"),
    ("pm_tls_close", "Pointsman over TLS, a new connection per request"),
)
# TLS termination: keep-alive req/s and the rate of new TLS connections (one request each)
# at least 0.7x nginx's, both with one worker and the same certificate.
MIN_TLS_RPS_RATIO = 0.7
MIN_TLS_HANDSHAKE_RATIO = 0.7
TLS_CHECKS: tuple[tuple[str, str], ...] = (
    ("TLS: keep-alive req/s vs nginx over TLS", f"≥ {MIN_TLS_RPS_RATIO:.2f}x"),
    (
        "TLS: new-connection rate (`Connection: close`) vs nginx over TLS",
        f"≥ {MIN_TLS_HANDSHAKE_RATIO:.2f}x",
    ),
)


def tls_section(
    results: Path, meta: dict[str, str]
) -> tuple[list[str], list[Check], dict[str, object]]:
    """The TLS phase: nginx and Pointsman terminating TLS, keep-alive and one request per
    connection, paired by round; its two targets."""
    lines = ["## TLS termination", ""]
    if meta.get("skip_tls", "1") == "1":
        why = meta.get("tls_skipped_because") or "not in this run"
        lines += [f"Skipped ({md_escape(why)}).", ""]
        return lines, [Check(n, "-", r, "SKIPPED") for n, r in TLS_CHECKS], {"skipped": why}
    clk_tck = as_int(meta, "clk_tck") or 100
    runs = {key: load_paired_runs(results, f"tls_{key}", clk_tck) for key, _ in TLS_TARGETS}
    pm_probe = parse_probe(meta.get("tls_probe_pm", ""))
    ng_probe = parse_probe(meta.get("tls_probe_nginx", ""))
    pm_resumes, ng_resumes = probe_resumes(pm_probe), probe_resumes(ng_probe)
    resumption = meta.get("tls_resumption", "off")
    if resumption == "on":
        resume_text = (
            "Pointsman lets a client resume a TLS session, so the nginx peer does too "
            "(`ssl_session_cache shared:SSL:10m`, `ssl_session_tickets on`): both resume. wrk "
            "offers a connection's previous session whenever it reconnects, so after each "
            "connection's first request the `Connection: close` runs measure resumed "
            "(abbreviated) handshakes on both sides alike, not full ones."
        )
    else:
        resume_text = (
            "Pointsman does not resume TLS sessions, so the nginx peer does not either "
            "(`ssl_session_cache off`, `ssl_session_tickets off`): every handshake of the "
            "`Connection: close` runs is a full one, on both sides."
        )
    probes = "; ".join(
        f"{who}: {md_escape(text)}"
        for who, text in (
            ("Pointsman", meta.get("tls_probe_pm", "")),
            ("nginx", meta.get("tls_probe_nginx", "")),
        )
        if text
    )
    order = ", ".join(key for key, _ in TLS_TARGETS)
    probe_text = ""
    if probes:
        probe_text = (
            " `benchmarks/tls_probe.py` (two exchanges, the second offering the first's "
            f"session, 3 times) found {probes}."
        )
    lines.append(
        "nginx (1 worker, the phase-1 proxy config plus `X-Forwarded-Proto: https`) and "
        "Pointsman (`workers: 1`) terminate TLS on 127.0.0.1 with the same certificate, "
        f"{meta.get('tls_cert', 'self-signed')}, generated by the run, in front of the same "
        "backend (plain HTTP, keep-alive). The same wrk settings as above, over `https://`, "
        f"{meta.get('rounds', '1')} round(s): keep-alive, and a new connection per request "
        "(`-H 'Connection: close'`: a TCP and a TLS handshake for every request; the rate is "
        "wrk's requests per second). "
        + order_note(meta, order)
        + " CPU per request: utime + stime of the server's processes (master and worker) "
        "during the run over the requests wrk completed. " + resume_text + probe_text
    )
    lines.append("")
    lines.append("| Target | Requests/s | p50 | p99 | CPU per request | Errors |")
    lines.append("|---|---:|---:|---:|---:|---|")
    summary: dict[str, object] = {
        "resumption": resumption,
        "probe_pointsman": pm_probe,
        "probe_nginx": ng_probe,
        "certificate": meta.get("tls_cert", ""),
    }
    medians: dict[str, WrkResult] = {}
    for key, label in TLS_TARGETS:
        if not runs[key]:
            lines.append(f"| {label} | - | - | - | - | no result |")
            continue
        r, cpu = median_runs(runs[key])
        medians[key] = r
        lines.append(
            f"| {label} | {r.rps:,.0f} | {fmt_ms(r.p50_ms)} | {fmt_ms(r.p99_ms)} "
            f"| {fmt_us(cpu)} | {error_text(r)} |"
        )
        summary[key] = {
            "wrk": asdict(r),
            "cpu_per_request": cpu,
            "per_round": [
                {"round": n, **asdict(x.wrk), "cpu_per_request": x.cpu_per_request}
                for n, x in runs[key].items()
            ],
        }
    lines.append("")

    checks: list[Check] = []
    rows: list[str] = []
    names = [n for n, _ in TLS_CHECKS]
    required = [r for _, r in TLS_CHECKS]
    mismatch = ""
    if pm_resumes is not None and ng_resumes is not None and pm_resumes != ng_resumes:
        mismatch = "nginx and Pointsman differ in session resumption: not like for like"
    for i, (pm_key, ng_key, what, limit) in enumerate(
        (
            ("pm_tls", "nginx_tls", "keep-alive", MIN_TLS_RPS_RATIO),
            (
                "pm_tls_close",
                "nginx_tls_close",
                "new connection per request",
                MIN_TLS_HANDSHAKE_RATIO,
            ),
        )
    ):
        pm, ng = runs[pm_key], runs[ng_key]
        rps = compare_runs(pm, ng, lambda x: x.wrk.rps, lambda v: f"{v:,.0f}")
        label = f"req/s, {what}, Pointsman / nginx"
        if rps is None:
            rows.append(f"| {label} | - | - | {required[i]} | **FAIL** (no result) |")
            checks.append(Check(names[i], "-", required[i], status(False, "no result")))
        else:
            notes = []
            if medians[pm_key].errors:
                notes.append("Pointsman had errors")
            if i == 1 and mismatch:
                notes.append(mismatch)
            verdict = status(rps.median >= limit and not notes, "; ".join(notes))
            rows.append(
                f"| {label} | {rps.per_round_text()} | **{rps.median:.2f}x** ({rps.detail}) "
                f"| {required[i]} | {verdict} |"
            )
            checks.append(
                Check(names[i], fmt_paired(rps.pairs, rps.of_medians, rps.detail),
                      required[i], verdict)
            )  # fmt: skip
            summary[f"{pm_key}_rps_ratios"] = rps.summary()
        for value_name, value, fmt in (
            ("p99", lambda x: x.wrk.p99_ms, fmt_ms),
            ("CPU per request", lambda x: x.cpu_per_request, fmt_us_value),
        ):
            c = compare_runs(pm, ng, value, fmt)
            label = f"{value_name}, {what}, Pointsman / nginx"
            if c is None:
                rows.append(f"| {label} | - | - | (no target) | |")
                continue
            rows.append(
                f"| {label} | {c.per_round_text()} | **{c.median:.2f}x** ({c.detail}) "
                "| (no target) | |"
            )
            key = "p99" if value_name == "p99" else "cpu"
            summary[f"{pm_key}_{key}_ratios"] = c.summary()
    lines.append(
        "Comparisons paired by round (the ratio of the two runs of the same round, then the "
        "median of these per-round ratios; the medians of the two targets in brackets)."
    )
    lines.append("")
    lines.append("| Comparison | Per round | Median | Required | Result |")
    lines.append("|---|---|---|---|---|")
    lines.extend(rows)
    lines.append("")
    return lines, checks, summary


ACCESS_LOG_TARGETS: tuple[tuple[str, str], ...] = (
    ("pm_log_off", "Pointsman, no access log"),
    ("pm_log_on", "Pointsman, access log of every request"),
)
# The access log: a line for every request at most 15 % more CPU per request than none.
MAX_ACCESS_LOG_CPU_RATIO = 1.15
ACCESS_LOG_CHECKS: tuple[tuple[str, str], ...] = (
    ("Access log on: CPU per request vs off", f"≤ {MAX_ACCESS_LOG_CPU_RATIO:.2f}x"),
    ("Access log: a line for every request wrk counted", "lines ≥ requests, every round"),
)


def access_log_section(
    results: Path, meta: dict[str, str]
) -> tuple[list[str], list[Check], dict[str, object]]:
    """The access-log phase: the same Pointsman without and with `access_log`, paired by
    round: CPU per request (the target), req/s and p99; and the log's lines per run against
    the requests wrk counted."""
    lines = ["## Access log", ""]
    names = [n for n, _ in ACCESS_LOG_CHECKS]
    required = [r for _, r in ACCESS_LOG_CHECKS]
    if meta.get("skip_access_log", "1") == "1":
        why = meta.get("access_log_skipped_because") or "not in this run"
        lines += [f"Skipped ({md_escape(why)}).", ""]
        checks = [Check(n, "-", r, "SKIPPED") for n, r in ACCESS_LOG_CHECKS]
        return lines, checks, {"skipped": why}
    clk_tck = as_int(meta, "clk_tck") or 100
    runs = {key: load_paired_runs(results, f"alog_{key}", clk_tck) for key, _ in ACCESS_LOG_TARGETS}
    order = ", ".join(key for key, _ in ACCESS_LOG_TARGETS)
    settle = as_int(meta, "access_log_settle_ms") or 1000
    lines.append(
        "Two Pointsman instances with the same config and `workers: 1`, one of them with "
        "`access_log: {path: <work dir>/alog/pm_log_on/access.log}` (every request, one JSON "
        "line each, written in batches), both started for this phase and kept for all its "
        f"rounds. The same wrk settings as above, {meta.get('rounds', '1')} round(s). "
        + order_note(meta, order)
        + " CPU per request: utime + stime of the master and its worker (all threads) during "
        "the run over the requests wrk completed. Log lines: the lines the log file grew by "
        "from just before the run (once the warm-up's lines were in) to after it (once the "
        f"file had kept its size for {settle / 1000:g} s), against wrk's requests: requests "
        "still in flight when wrk stops are logged but not counted by wrk, so the lines may "
        "exceed the requests by up to the number of connections."
    )
    lines.append("")
    sample = ""
    try:
        sample = (results / "access_log_sample.txt").read_text().strip()
    except OSError:
        pass
    if sample:
        lines += ["A line of the log (the first request):", "", "```", sample, "```", ""]
    if meta.get("access_log_problem"):
        lines += [f"Problem: {md_escape(meta['access_log_problem'])}.", ""]
    lines.append(
        "| Target | Requests/s | p50 | p99 | CPU per request | Log lines / requests | Errors |"
    )
    lines.append("|---|---:|---:|---:|---:|---|---|")
    summary: dict[str, object] = {}
    medians: dict[str, WrkResult] = {}
    for key, label in ACCESS_LOG_TARGETS:
        if not runs[key]:
            lines.append(f"| {label} | - | - | - | - | - | no result |")
            continue
        r, cpu = median_runs(runs[key])
        medians[key] = r
        logged = ""
        if key == "pm_log_on":
            logged = ", ".join(
                f"r{n} {x.log_lines:,} / {x.wrk.requests:,}"
                for n, x in runs[key].items()
                if x.log_lines is not None
            )
        lines.append(
            f"| {label} | {r.rps:,.0f} | {fmt_ms(r.p50_ms)} | {fmt_ms(r.p99_ms)} "
            f"| {fmt_us(cpu)} | {logged or '-'} | {error_text(r)} |"
        )
        summary[key] = {
            "wrk": asdict(r),
            "cpu_per_request": cpu,
            "per_round": [
                {
                    "round": n,
                    **asdict(x.wrk),
                    "cpu_per_request": x.cpu_per_request,
                    "log_lines": x.log_lines,
                    "log_bytes": x.log_bytes,
                }
                for n, x in runs[key].items()
            ],
        }
    lines.append("")

    checks: list[Check] = []
    rows: list[str] = []
    on, off = runs["pm_log_on"], runs["pm_log_off"]
    cpu = compare_runs(on, off, lambda x: x.cpu_per_request, fmt_us_value)
    label = "CPU per request, log on / off"
    if cpu is None:
        rows.append(f"| {label} | - | - | {required[0]} | **FAIL** (no result) |")
        checks.append(Check(names[0], "-", required[0], status(False, "no result")))
    else:
        errors = medians["pm_log_on"].errors or medians["pm_log_off"].errors
        verdict = status(cpu.median <= MAX_ACCESS_LOG_CPU_RATIO and not errors,
                         "Pointsman had errors" if errors else "")  # fmt: skip
        rows.append(
            f"| {label} | {cpu.per_round_text()} | **{cpu.median:.2f}x** ({cpu.detail}) "
            f"| {required[0]} | {verdict} |"
        )
        checks.append(
            Check(names[0], fmt_paired(cpu.pairs, cpu.of_medians, cpu.detail), required[0],
                  verdict)
        )  # fmt: skip
        summary["cpu_ratios"] = cpu.summary()
    for value_name, value, fmt in (
        ("req/s", lambda x: x.wrk.rps, lambda v: f"{v:,.0f}"),
        ("p99", lambda x: x.wrk.p99_ms, fmt_ms),
    ):
        c = compare_runs(on, off, value, fmt)
        label = f"{value_name}, log on / off"
        if c is None:
            rows.append(f"| {label} | - | - | (no target) | |")
            continue
        rows.append(
            f"| {label} | {c.per_round_text()} | **{c.median:.2f}x** ({c.detail}) | (no target) | |"
        )
        summary["rps_ratios" if value_name == "req/s" else "p99_ratios"] = c.summary()

    # a line per request
    counted = {n: x for n, x in on.items() if x.log_lines is not None}
    label = "log lines / requests wrk counted, per run"
    if not counted:
        rows.append(f"| {label} | - | - | {required[1]} | **FAIL** (no result) |")
        checks.append(Check(names[1], "-", required[1], status(False, "no result")))
    else:
        short = {n: x for n, x in counted.items() if (x.log_lines or 0) < x.wrk.requests}
        per_line = [
            x.log_bytes / x.log_lines for x in counted.values() if x.log_bytes and x.log_lines
        ]
        text = ", ".join(f"r{n} {x.log_lines:,} / {x.wrk.requests:,}" for n, x in counted.items())
        size = f"; {statistics.median(per_line):.0f} bytes a line" if per_line else ""
        notes = [
            f"round {n}: {x.wrk.requests - (x.log_lines or 0):,} requests without a line"
            for n, x in short.items()
        ]
        missing = sorted(on.keys() - counted.keys())
        if missing:
            notes.append("no line count for round(s) " + ", ".join(str(n) for n in missing))
        verdict = status(not notes, "; ".join(notes))
        total_lines = sum(x.log_lines or 0 for x in counted.values())
        total_requests = sum(x.wrk.requests for x in counted.values())
        rows.append(
            f"| {label} | {text}{size} | **{total_lines:,} / {total_requests:,}** "
            f"| {required[1]} | {verdict} |"
        )
        checks.append(
            Check(names[1], f"{total_lines:,} lines for {total_requests:,} requests over "
                  f"{len(counted)} run(s) ({text}{size})", required[1], verdict)
        )  # fmt: skip
        summary["lines"] = {
            "per_round": [
                {"round": n, "lines": x.log_lines, "requests": x.wrk.requests,
                 "bytes": x.log_bytes}
                for n, x in counted.items()
            ],
            "bytes_per_line": statistics.median(per_line) if per_line else None,
        }  # fmt: skip
    lines.append(
        "Comparisons paired by round (the ratio of the two runs of the same round, then the "
        "median of these per-round ratios; the medians of the two targets in brackets); the "
        "log lines of every run with the log on."
    )
    lines.append("")
    lines.append("| Comparison | Per round | Median | Required | Result |")
    lines.append("|---|---|---|---|---|")
    lines.extend(rows)
    lines.append("")
    return lines, checks, summary


def fmt_us_value(seconds: float) -> str:
    return f"{seconds * 1e6:.1f} µs"


def memory_section(meta: dict[str, str], mem: dict[str, str]) -> tuple[list[str], list[Check]]:
    rows: list[str] = []
    checks: list[Check] = []
    skip_idle = meta.get("skip_idle") == "1"
    skip_stream = meta.get("skip_stream") == "1"

    # idle connections
    n_req = as_int(mem, "idle_requested") or as_int(meta, "idle_conns") or 0
    idle_name = f"RSS holding {n_req:,} idle keep-alive connections"
    before, peak = as_int(mem, "idle_rss_before_kib"), as_int(mem, "idle_rss_peak_kib")
    if skip_idle:
        checks.append(Check(idle_name, "-", f"< {MAX_IDLE_RSS_MIB:.0f} MiB", "SKIPPED"))
    elif before is None or peak is None:
        checks.append(
            Check(idle_name, "-", f"< {MAX_IDLE_RSS_MIB:.0f} MiB", status(False, "no result"))
        )
    else:
        opened = as_int(mem, "idle_opened") or 0
        alive = as_int(mem, "idle_alive") or 0
        per_conn = (peak - before) / opened if opened else 0.0
        detail = (
            f"{opened:,}/{n_req:,} opened in {mem.get('idle_open_seconds', '?')} s, "
            f"{alive:,} still open after {mem.get('idle_hold_seconds', '?')} s idle; "
            f"{per_conn:.1f} KiB/connection"
        )
        if mem.get("idle_errors", "none") != "none":
            detail += f"; errors: {mem['idle_errors']}"
        rows.append(
            f"| {n_req:,} idle keep-alive connections | {fmt_mib(before)} | {fmt_mib(peak)} "
            f"| +{fmt_mib(peak - before)} | {md_escape(detail)} |"
        )
        notes: list[str] = []
        if opened < n_req or alive < n_req:
            notes.append(f"only {min(opened, alive):,}/{n_req:,} connections held")
        if n_req < IDLE_TARGET_CONNS:
            notes.append(f"target is defined at {IDLE_TARGET_CONNS:,} connections")
        ok = peak / 1024 < MAX_IDLE_RSS_MIB and opened >= n_req and alive >= n_req
        checks.append(
            Check(
                idle_name,
                fmt_mib(peak),
                f"< {MAX_IDLE_RSS_MIB:.0f} MiB",
                status(ok, "; ".join(notes)),
            )
        )

    # streaming
    size = as_int(meta, "stream_bytes") or 0
    size_text = fmt_bytes(size) if size else "1 GiB"
    for key, what in (
        ("download", f"{size_text} response (download)"),
        ("upload_cl", f"{size_text} upload, Content-Length"),
        ("upload_chunked", f"{size_text} upload, chunked"),
    ):
        name = f"RSS growth streaming {what}"
        required = f"< {MAX_STREAM_GROWTH_MIB:.0f} MiB"
        if skip_stream or mem.get(f"{key}_skipped") == "1":
            checks.append(Check(name, "-", required, "SKIPPED"))
            continue
        base, top = as_int(mem, f"{key}_rss_before_kib"), as_int(mem, f"{key}_rss_peak_kib")
        if base is None or top is None:
            checks.append(Check(name, "-", required, status(False, "no result")))
            continue
        moved = as_int(mem, f"{key}_bytes") or 0
        seconds = as_float(mem, f"{key}_seconds") or 0.0
        http = mem.get(f"{key}_http", "?")
        samples = mem.get(f"{key}_samples", "?")
        rate = f"{moved / (1 << 20) / seconds:.0f} MiB/s" if seconds > 0 else "?"
        detail = f"HTTP {http}, {moved:,} bytes in {seconds:.1f} s ({rate}), {samples} samples"
        if mem.get(f"{key}_curl_rc", "0") != "0":
            detail += f", curl exit {mem[f'{key}_curl_rc']}"
        growth = max(0, top - base)
        rows.append(
            f"| {what} | {fmt_mib(base)} | {fmt_mib(top)} | +{fmt_mib(growth)} "
            f"| {md_escape(detail)} |"
        )
        notes = []
        complete = moved == size and http.startswith("2")
        if not complete:
            notes.append(f"transfer incomplete: {moved:,}/{size:,} bytes, HTTP {http}")
        if size and size != 1 << 30:
            notes.append("target is defined for 1 GiB")
        ok = growth / 1024 < MAX_STREAM_GROWTH_MIB and complete
        checks.append(Check(name, f"+{fmt_mib(growth)}", required, status(ok, "; ".join(notes))))
    return rows, checks


# --------------------------------------------------------------------------- cli


def main() -> None:
    parser = argparse.ArgumentParser(description="Pointsman benchmark report")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_wrk = sub.add_parser("wrk", help="summarise one wrk --latency output file")
    p_wrk.add_argument("file", type=Path)
    p_flips = sub.add_parser("flips", help="summarise one flips.py output file")
    p_flips.add_argument("file", type=Path)
    p_fleet = sub.add_parser("fleet", help="summarise fleet.py's JSON output")
    p_fleet.add_argument("file", type=Path)
    p_render = sub.add_parser("render", help="render the Markdown report")
    p_render.add_argument("--results", type=Path, required=True)
    p_render.add_argument("--out", type=Path)
    p_render.add_argument("--json", type=Path, help="also write a machine-readable summary")
    p_render.add_argument("--strict", action="store_true", help="exit 3 if a target fails")
    args = parser.parse_args()

    if args.cmd == "wrk":
        try:
            r = parse_wrk(args.file.read_text())
        except (OSError, ParseError) as exc:
            print(f"cannot parse {args.file}: {exc}")
            sys.exit(1)
        err = ", ".join(f"{k} {v}" for k, v in r.error_detail.items()) or "no errors"
        print(f"{r.rps:,.0f} req/s, p50 {fmt_ms(r.p50_ms)}, p99 {fmt_ms(r.p99_ms)}, {err}")
        return

    if args.cmd == "flips":
        try:
            print(flips_summary(parse_flips(args.file.read_text())))
        except OSError as exc:
            print(f"cannot read {args.file}: {exc}")
            sys.exit(1)
        return

    if args.cmd == "fleet":
        try:
            _head, changes = parse_fleet_changes(args.file.read_text())
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"cannot read {args.file}: {exc}")
            sys.exit(1)
        print(fleet_summary(changes))
        return

    text, summary, failed = render(args.results, args.out)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    if failed and args.strict:
        sys.exit(3)


if __name__ == "__main__":
    main()
