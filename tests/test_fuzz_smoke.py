"""A short fuzz run inside `make test`: the fuzzer's own checks (fuzz/harness.py), without
atheris, over the seed corpus, the regressions and a few hundred deterministic mutations of the
seeds, on the build the tests import (compiled after `make build`); then the corpus, the
regressions and fewer mutations on the pure Python sources, in a subprocess, since that is the
build `make fuzz` fuzzes.

Every crash the fuzzer found is a regression input under fuzz/regressions/. Those listed in
fuzz/regressions/open.txt are bugs not fixed yet: each must still fail (strict xfail: the fix
takes its line out), and a mutation that fails the way one of them does counts as that bug.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fuzz.harness import Harness
from fuzz.replay import (
    MUTATION_SEED,
    Case,
    corpus_cases,
    mutation_cases,
    open_regressions,
    regression_cases,
    replay,
)

ROOT = Path(__file__).resolve().parent.parent
# Mutations per path in this process, and in the pure-source subprocess (about 3 ms each).
MUTATIONS = 200
PURE_MUTATIONS = 50
# Bounds on the whole of each run: a few seconds is expected; far more means a hang.
IN_PROCESS_LIMIT = 30.0
SUBPROCESS_LIMIT = 120.0


def test_the_corpus_has_a_dozen_seeds_a_path() -> None:
    cases = corpus_cases()
    for path in ("request", "response"):
        assert len([case for case in cases if case.path == path]) >= 12


def test_seeds_regressions_and_mutations_keep_every_invariant() -> None:
    started = time.perf_counter()
    cases = corpus_cases() + regression_cases() + mutation_cases(MUTATIONS, MUTATION_SEED)
    outcome = replay(cases)
    elapsed = time.perf_counter() - started
    assert not outcome.failures and not outcome.fixed, outcome.report()
    assert outcome.checked == len(cases)
    assert elapsed < IN_PROCESS_LIMIT, f"{len(cases)} inputs took {elapsed:.1f} s"


def _regression_params() -> list[object]:
    opened = open_regressions()
    params: list[object] = []
    for case in regression_cases():
        marks = []
        if case.open_bug:
            marks.append(pytest.mark.xfail(strict=True, reason=opened[case.open_bug]))
        params.append(pytest.param(case, marks=marks, id=case.label.split(" ", 1)[1]))
    return params


@pytest.mark.parametrize("case", _regression_params())
def test_regression(case: Case) -> None:
    with Harness() as harness:
        check = harness.request_path if case.path == "request" else harness.response_path
        check(case.data)


def test_open_regressions_are_files() -> None:
    known = {case.label.split(" ", 1)[1] for case in regression_cases()}
    assert set(open_regressions()) <= known


def test_the_pure_sources_keep_every_invariant_too() -> None:
    env = {**os.environ, "POINTSMAN_PURE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "fuzz.replay", "--mutations", str(PURE_MUTATIONS)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_LIMIT,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-20_000:] + result.stderr[-5_000:]
    assert "on the pure build" in result.stdout, result.stdout
