"""The atheris entry point for one path; libFuzzer's arguments follow the path.

    POINTSMAN_PURE=1 .venv/bin/python -m fuzz.target request \\
        fuzz/work/corpus/request fuzz/corpus/request -max_total_time=60 -dict=fuzz/http.dict

`python -m fuzz.run` (make fuzz) starts this once per path; run it by hand for one path or for
libFuzzer flags fuzz.run does not pass (-runs=N, -jobs=N, -minimize_crash=1, ...).

What gets coverage: atheris instruments Python bytecode as it is imported. With POINTSMAN_PURE=1
the proxy's modules load from their sources (fuzz/purity.py) and are instrumented, so
libFuzzer is guided by the branches of DownstreamConnection, UpstreamConnection and the rest.
llhttp (C, inside httptools) is never instrumented, and neither are the mypyc-compiled modules:
fuzzing the compiled build is close to blind, so there h11 is instrumented instead, which at
least rewards inputs whose forwarded and relayed bytes frame differently.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable

from fuzz import purity

USAGE = "usage: python -m fuzz.target request|response [libFuzzer arguments]"


def skipping_open_bugs(check: Callable[[bytes], None]) -> Callable[[bytes], None]:
    """`check`, except that a failure with the signature of an open regression (a bug found
    and not fixed yet, fuzz/regressions/open.txt) is not a crash: libFuzzer stops at the first
    crash, and would spend its time finding the same bug again. The first hit of each is
    printed. FUZZ_OPEN_BUGS=report makes them crashes again."""
    from fuzz.replay import failure_signature, open_bug_signatures

    if os.environ.get("FUZZ_OPEN_BUGS") == "report":
        return check
    known = open_bug_signatures()
    seen: set[str] = set()

    def test_one_input(data: bytes) -> None:
        try:
            check(data)
        except Exception:
            signature = failure_signature(traceback.format_exc())
            if signature not in known:
                raise
            if signature not in seen:
                seen.add(signature)
                print(f"fuzz.target: open bug hit again: {signature}", file=sys.stderr)

    return test_one_input


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in ("request", "response"):
        sys.exit(USAGE)
    path = sys.argv[1]
    try:
        import atheris
    except ImportError:
        sys.exit("atheris is not installed: `make fuzz` installs requirements-dev.txt first")
    if purity.pure_requested():
        purity.use_pure_sources()
    compiled = purity.compiled_present() and not purity.pure_requested()
    include = ["proxy", "h11"] if compiled else ["proxy"]
    with atheris.instrument_imports(include=include):
        from fuzz import harness
    print(
        f"fuzz.target: the {path} path on the {purity.build_kind()} build, "
        f"instrumented: {', '.join(include)}",
        file=sys.stderr,
        flush=True,
    )
    atheris.Setup([sys.argv[0], *sys.argv[2:]], skipping_open_bugs(harness.CHECKS[path]))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
