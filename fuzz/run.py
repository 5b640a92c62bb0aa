"""`make fuzz`: coverage-guided fuzzing (atheris, libFuzzer) of the request path, then of the
response path, for a bounded time in all, and a summary of what it did and found.

    POINTSMAN_PURE=1 .venv/bin/python -m fuzz.run --seconds 600 [--paths request,response]
        [-- extra libFuzzer flags]

Each path gets an equal share of `--seconds` (libFuzzer's -max_total_time). Its working corpus
is fuzz/work/corpus/<path> (kept between runs, git-ignored), seeded from fuzz/corpus/<path>,
which libFuzzer only reads. A crash stops libFuzzer: its input lands in fuzz/work/crashes/
(<path>-crash-<sha1>), the run goes on for the rest of the path's time (at most MAX_RESTARTS
times), and the summary replays each crash file to name its kind. Exit status 1 if anything
crashed. libFuzzer's full output is in fuzz/work/<path>.log.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

FUZZ_DIR = Path(__file__).resolve().parent
ROOT = FUZZ_DIR.parent
WORK = FUZZ_DIR / "work"
CRASHES = WORK / "crashes"
DICTIONARY = FUZZ_DIR / "http.dict"
PATHS = ("request", "response")
# Default time in all, seconds (make fuzz: FUZZ_SECONDS).
DEFAULT_SECONDS = 600
# Restarts of a path's fuzzer after crashes, within its share of the time.
MAX_RESTARTS = 4
# A share shorter than this is not worth starting libFuzzer for.
MIN_RUN_SECONDS = 5
# Inputs longer than this are not generated (libFuzzer -max_len).
MAX_LEN = 4096
# Seconds one input may take before libFuzzer calls it a hang (-timeout).
INPUT_TIMEOUT = 10
# libFuzzer's memory limit (-rss_limit_mb); CPython with the corpus in memory stays far below.
RSS_LIMIT_MB = 3072
# Seconds the replay of one crash file may take, to name its kind.
REPLAY_TIMEOUT = 60

# "#12345	DONE   cov: 1234 ft: 2345 corp: 120/5Kb lim: 4096 exec/s: 800 rss: 100Mb"
_STATUS = re.compile(
    r"^#(\d+)\s+(INITED|DONE|pulse|NEW|REDUCE)\s+cov: (\d+) ft: (\d+) corp: (\d+)/(\S+)"
    r"(?:.*?exec/s: (\d+))?"
)
_STAT = re.compile(r"^stat::(\w+):\s+(\d+)")
_ARTIFACT = re.compile(r"Test unit written to (\S+)")
_SHOWN = ("INITED", "DONE", "pulse")


@dataclass
class PathRun:
    """What fuzzing one path did, over its runs (one, plus one per restart after a crash)."""

    path: str
    seconds: float = 0.0
    executions: int = 0
    inited: tuple[int, int, int] | None = None  # (cov, ft, corpus units) when it began
    done: tuple[int, int, int] | None = None  # ... at its last status line
    new_units: int = 0
    corpus_before: int = 0  # files in the working corpus before
    corpus_after: int = 0
    artifacts: list[str] = field(default_factory=list)
    open_bugs: list[str] = field(default_factory=list)  # open bugs hit again (not crashes)
    exit_codes: list[int] = field(default_factory=list)

    def summary(self) -> str:
        rate = self.executions / self.seconds if self.seconds else 0.0
        lines = [
            f"{self.path} path: {self.seconds:.0f} s, {self.executions} executions "
            f"({rate:.0f}/s), runs ended with {self.exit_codes}"
        ]
        if self.inited and self.done:
            lines.append(
                f"  coverage: cov {self.inited[0]} -> {self.done[0]} edges, "
                f"ft {self.inited[1]} -> {self.done[1]} features; corpus in memory "
                f"{self.inited[2]} -> {self.done[2]} units"
            )
        lines.append(
            f"  working corpus fuzz/work/corpus/{self.path}: {self.corpus_before} -> "
            f"{self.corpus_after} files ({self.new_units} new units this run)"
        )
        for bug in self.open_bugs:
            lines.append(f"  open bug found again (fuzz/regressions/open.txt): {bug}")
        for artifact in self.artifacts:
            lines.append(f"  CRASH {artifact}: {name_crash(artifact)}")
        return "\n".join(lines)


def name_crash(artifact: str) -> str:
    """The failure kind of a crash file, by replaying it (fuzz.replay) the same way."""
    try:
        result = subprocess.run(
            [sys.executable, "-m", "fuzz.replay", artifact],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=REPLAY_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return "its replay did not finish (a hang?)"
    kinds = [
        line.partition(": ")[2].split("  (first")[0]
        for line in result.stdout.splitlines()
        if line.startswith(("failure kind:", "known open bug"))
    ]
    return "; ".join(kinds) or "passes when replayed (flaky, or a libFuzzer timeout/oom)"


def count_files(directory: Path) -> int:
    return sum(1 for p in directory.iterdir() if p.is_file()) if directory.exists() else 0


def fuzz_path(path: str, seconds: float, extra: list[str]) -> PathRun:
    """Fuzz one path for `seconds`, restarting after a crash while time is left."""
    corpus = WORK / "corpus" / path
    corpus.mkdir(parents=True, exist_ok=True)
    CRASHES.mkdir(parents=True, exist_ok=True)
    run = PathRun(path, corpus_before=count_files(corpus))
    deadline = time.monotonic() + seconds
    log_path = WORK / f"{path}.log"
    with log_path.open("w") as log:
        for _ in range(MAX_RESTARTS + 1):
            remaining = deadline - time.monotonic()
            if remaining < MIN_RUN_SECONDS:
                break
            command = [
                sys.executable, "-m", "fuzz.target", path, str(corpus),
                str(FUZZ_DIR / "corpus" / path), f"-max_total_time={int(remaining)}",
                f"-artifact_prefix={CRASHES}/{path}-", f"-dict={DICTIONARY}",
                f"-max_len={MAX_LEN}", f"-timeout={INPUT_TIMEOUT}",
                f"-rss_limit_mb={RSS_LIMIT_MB}", "-print_final_stats=1", *extra,
            ]  # fmt: skip
            started = time.monotonic()
            code = _run_fuzzer(command, log, run)
            run.seconds += time.monotonic() - started
            run.exit_codes.append(code)
            if code == 0:
                break
    run.corpus_after = count_files(corpus)
    return run


def _run_fuzzer(command: list[str], log: TextIO, run: PathRun) -> int:
    """One libFuzzer process; its output to the log, status lines and crashes to stdout."""
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        errors="replace",
    )  # fmt: skip
    assert process.stdout is not None
    crashing = False
    counted = 0  # executions by the last status line, in case the final stats do not come
    final = 0  # ... by the final stats (-print_final_stats)
    for line in process.stdout:
        log.write(line)
        if "Uncaught Python exception" in line or "ERROR: libFuzzer" in line:
            crashing = True
        status = _STATUS.match(line)
        if status:
            counted = int(status[1])
            cov, ft, units = int(status[3]), int(status[4]), int(status[5])
            if status[2] == "INITED" and run.inited is None:
                run.inited = (cov, ft, units)
            run.done = (cov, ft, units)
        stat = _STAT.match(line)
        if stat:
            if stat[1] == "number_of_executed_units":
                final = int(stat[2])
            elif stat[1] == "new_units_added":
                run.new_units += int(stat[2])
        if line.startswith("fuzz.target: open bug hit again: "):
            run.open_bugs.append(line.split(": ", 2)[2].strip())
        artifact = _ARTIFACT.search(line)
        if artifact:
            run.artifacts.append(artifact[1])
        if crashing or (status and status[2] in _SHOWN) or line.startswith("fuzz.target"):
            print(f"[{run.path}] {line}", end="", flush=True)
    run.executions += final or counted
    return process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, help="in all")
    parser.add_argument("--paths", default=",".join(PATHS), help="request,response")
    parser.add_argument("extra", nargs="*", help="libFuzzer flags, after --")
    args = parser.parse_args(argv)
    paths = [p for p in args.paths.split(",") if p]
    unknown = set(paths) - set(PATHS)
    if unknown:
        parser.error(f"unknown paths: {', '.join(sorted(unknown))}")
    build = "pure Python sources" if os.environ.get("POINTSMAN_PURE") == "1" else "default build"
    print(f"fuzzing {', '.join(paths)} for {args.seconds:.0f} s in all, on the {build}")
    runs = [fuzz_path(path, args.seconds / len(paths), args.extra) for path in paths]
    print("\n".join(run.summary() for run in runs))
    return 1 if any(run.artifacts or any(run.exit_codes) for run in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
