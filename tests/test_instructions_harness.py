"""benchmarks/instructions.py drives the real request path; this keeps it working."""

from __future__ import annotations

import importlib.util
from pathlib import Path

HARNESS = Path(__file__).resolve().parent.parent / "benchmarks" / "instructions.py"


async def test_the_instruction_harness_answers_every_request() -> None:
    spec = importlib.util.spec_from_file_location("instructions_harness", HARNESS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    await module.run(50, False)  # asserts that all 50 were answered and written to the client


async def test_the_shadowed_harness_mirrors_and_compares_every_request() -> None:
    spec = importlib.util.spec_from_file_location("instructions_harness", HARNESS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    await module.run(50, True)  # asserts that all 50 were mirrored and found to mismatch
