"""Replays inputs through the harness's checks, without atheris: crash files, the seed corpus,
the regressions, and deterministic mutations of the seeds.

    .venv/bin/python -m fuzz.replay                      # corpus + regressions
    .venv/bin/python -m fuzz.replay --mutations 500      # ... and 500 mutations per path
    .venv/bin/python -m fuzz.replay -v fuzz/work/crashes/request-crash-...   # one input
    POINTSMAN_PURE=1 .venv/bin/python -m fuzz.replay     # on the Python sources

A file's path (request or response) is read from its name or folder: `request-crash-*`,
`.../request/*`. Regressions listed in fuzz/regressions/open.txt are bugs not fixed yet: their
failure is expected, a mutation failing the same way (same `failure_signature`) is counted as
that bug, and an open regression that passes is reported (take its line out). Exit status 1 if
anything else fails.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from fuzz import purity

FUZZ_DIR = Path(__file__).resolve().parent
CORPUS = FUZZ_DIR / "corpus"
REGRESSIONS = FUZZ_DIR / "regressions"
OPEN_LIST = REGRESSIONS / "open.txt"
PATHS = ("request", "response")
# Mutations are drawn with this seed unless told otherwise: the same inputs every run.
MUTATION_SEED = 20_261_206
# Characters of a failure's text shown per failure in a summary.
SHOWN = 3_000

# A frame of the proxy's code: '/work/proxy/http1.py' from the sources, 'proxy/http1.py' from
# the compiled modules.
_PROXY_FRAME = re.compile(r'File "(?:[^"]*/)?proxy/(\w+)\.py", line \d+, in (\w+)')
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit))\b", re.MULTILINE)


def failure_signature(text: str) -> str:
    """What kind of failure a traceback text shows, coarsely: the broken invariant (the
    message up to its first colon) and, for an exception that escaped the proxy, the last
    proxy frame and the last exception's type. Two inputs with one signature are most likely
    one bug, and the two builds give the same signature."""
    message = text.rsplit("AssertionError: ", 1)[-1] if "AssertionError: " in text else text
    kind = message.split(":", 1)[0].split("\n", 1)[0].strip()
    frames = _PROXY_FRAME.findall(text)
    where = f" at {frames[-1][0]}.{frames[-1][1]}" if frames else ""
    types = _EXCEPTION_LINE.findall(message)
    what = f" ({types[-1]})" if types else ""
    return kind + where + what


def path_of(file: Path) -> str:
    """'request' or 'response', from the file's name prefix or one of its folders."""
    for part in (file.name, *reversed(file.parent.parts)):
        for path in PATHS:
            if part == path or part.startswith(path + "-"):
                return path
    raise ValueError(f"{file}: neither a request nor a response input (name or folder)")


def open_regressions() -> dict[str, str]:
    """'request/name' -> why it still fails, from fuzz/regressions/open.txt."""
    if not OPEN_LIST.exists():
        return {}
    entries: dict[str, str] = {}
    for line in OPEN_LIST.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, reason = line.partition(" ")
            entries[key] = reason.strip()
    return entries


def files_under(directory: Path) -> list[Path]:
    if not directory.exists():
        return []
    return sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith("."))


@dataclass(frozen=True)
class Case:
    """One input: its path, a label for people, and whether it is an open regression."""

    path: str
    label: str
    data: bytes
    open_bug: str = ""  # 'request/name' of an open regression


def corpus_cases() -> list[Case]:
    return [
        Case(path, f"{path}/{f.name}", f.read_bytes())
        for path in PATHS
        for f in files_under(CORPUS / path)
    ]


def regression_cases() -> list[Case]:
    opened = open_regressions()
    cases = []
    for path in PATHS:
        for file in files_under(REGRESSIONS / path):
            key = f"{path}/{file.name}"
            open_bug = key if key in opened else ""
            cases.append(Case(path, f"regression {key}", file.read_bytes(), open_bug))
    return cases


def mutation_cases(count: int, seed: int) -> list[Case]:
    """`count` mutations of each path's seeds, the same for the same `seed`."""
    from fuzz.mutate import mutations

    cases = []
    for number, path in enumerate(PATHS):
        seeds = [f.read_bytes() for f in files_under(CORPUS / path)]
        for index, data in enumerate(mutations(seeds, count, seed + number)):
            cases.append(Case(path, f"{path} mutation {index} (seed {seed + number})", data))
    return cases


def file_cases(given: Iterable[Path]) -> list[Case]:
    cases = []
    for item in given:
        for file in files_under(item) if item.is_dir() else [item]:
            cases.append(Case(path_of(file), str(file), file.read_bytes()))
    return cases


@dataclass
class Outcome:
    """What a replay found."""

    checked: int = 0
    failures: list[tuple[Case, str]] = field(default_factory=list)  # new failures
    known: dict[str, int] = field(default_factory=dict)  # open bug's signature -> inputs
    fixed: list[str] = field(default_factory=list)  # open regressions that passed
    notes: dict[str, int] = field(default_factory=dict)

    def report(self) -> str:
        lines = []
        for case, text in self.failures:
            lines.append(f"FAIL {case.label}: {case.data[:500]!r}\n[{failure_signature(text)}]")
            lines.append(text[-SHOWN:])
        for key in self.fixed:
            lines.append(f"FIXED? {key} passes: take its line out of {OPEN_LIST}")
        kinds: dict[str, str] = {}
        for case, text in self.failures:
            kinds.setdefault(failure_signature(text), case.label)
        lines += [f"failure kind: {kind}  (first: {label})" for kind, label in kinds.items()]
        lines += [f"known open bug, {n} inputs: {kind}" for kind, n in self.known.items()]
        lines += [f"note: {n} x {note}" for note, n in sorted(self.notes.items())]
        return "\n".join(lines)


def replay(
    cases: Iterable[Case],
    verbose: bool = False,
    show: Callable[[str], None] = print,
) -> Outcome:
    """Run every case through its check. Open regressions run first: a later case failing
    with the signature of one of them counts as that known bug."""
    from fuzz.harness import Harness

    ordered = sorted(cases, key=lambda case: not case.open_bug)
    outcome = Outcome()
    open_signatures: set[str] = set()
    with Harness() as harness:
        checks = {"request": harness.request_path, "response": harness.response_path}
        for case in ordered:
            outcome.checked += 1
            try:
                checks[case.path](case.data)
            except Exception:
                text = traceback.format_exc()
                if verbose:
                    text += "\n" + harness.last
            else:
                if verbose:
                    show(f"ok {case.label}\n{harness.last}\n")
                if case.open_bug:
                    outcome.fixed.append(case.open_bug)
                continue
            signature = failure_signature(text)
            if case.open_bug:
                open_signatures.add(signature)
            if signature in open_signatures:
                outcome.known[signature] = outcome.known.get(signature, 0) + 1
            else:
                outcome.failures.append((case, text))
        outcome.notes = dict(harness.notes)
    return outcome


def open_bug_signatures() -> set[str]:
    """The failure signatures of the open regressions, on the build imported."""
    return set(replay(case for case in regression_cases() if case.open_bug).known)


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path, help="inputs (files or folders)")
    parser.add_argument("--mutations", type=int, default=0, help="mutations per path")
    parser.add_argument("--seed", type=int, default=MUTATION_SEED)
    parser.add_argument("-v", "--verbose", action="store_true", help="show what happened")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if purity.pure_requested():
        purity.use_pure_sources()
    if args.files:
        cases = file_cases(args.files)
    else:
        cases = corpus_cases() + regression_cases()
    cases += mutation_cases(args.mutations, args.seed)
    print(f"replaying {len(cases)} inputs on the {purity.build_kind()} build")
    started = time.perf_counter()
    outcome = replay(cases, args.verbose)
    elapsed = time.perf_counter() - started
    report = outcome.report()
    if report:
        print(report)
    print(
        f"{outcome.checked} inputs in {elapsed:.1f} s: {len(outcome.failures)} failed, "
        f"{sum(outcome.known.values())} failed as open bugs do, {len(outcome.fixed)} open "
        "regressions passed"
    )
    return 1 if outcome.failures or outcome.fixed else 0


if __name__ == "__main__":
    sys.exit(main())
