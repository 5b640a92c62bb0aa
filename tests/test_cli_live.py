"""The deploy-script CLI against a running Pointsman (a real Service, not a stand-in): exit
codes and output a `set -e` script relies on, and where traffic lands after each command."""

from __future__ import annotations

import json

from tests.conftest import free_port
from tests.test_api import TOKEN, Running, StartService, start_service
from tests.test_cli_control import pointsman as run_cli

__all__ = ["start_service"]  # the fixture, imported for pytest


async def pointsman(
    running: Running | None, *args: str, token: str | None = TOKEN
) -> tuple[int, str, str]:
    """Run the CLI against the instance (None: an address nothing listens on)."""
    admin = running.admin if running else f"http://127.0.0.1:{free_port()}"
    run = await run_cli(*args, admin=admin, token=token)
    return run.code, run.out, run.err


async def test_blue_green_walkthrough_against_a_running_instance(
    start_service: StartService,
) -> None:
    rs = await start_service()

    code, out, _ = await pointsman(rs, "status", "shop")
    assert code == 0
    assert out.startswith("shop  version 1  live blue  weights blue=100 green=0")

    code, out, _ = await pointsman(rs, "flip", "shop", "green", "--if-match", "1")
    assert (code, out.strip()) == (0, "shop: flipped to green (version 2)")
    assert set(await rs.backends_of(10)) == {"green"}

    # A retry of the same flip succeeds (set -e scripts may retry).
    code, _, _ = await pointsman(rs, "flip", "shop", "green")
    assert code == 0

    code, out, _ = await pointsman(rs, "weights", "shop", "blue=75", "green=25", "--json")
    assert code == 0
    assert json.loads(out)["weights"] == {"blue": 75, "green": 25}

    code, out, _ = await pointsman(rs, "rollback", "shop")
    assert code == 0
    assert "rolled back to blue=0 green=100" in out
    assert set(await rs.backends_of(10)) == {"green"}


async def test_refusals_exit_1_with_one_line_and_change_nothing(
    start_service: StartService,
) -> None:
    rs = await start_service()
    cases = [
        (("flip", "shop", "gren"), TOKEN, "404"),
        (("weights", "shop", "blue=1", "--if-match", "7"), TOKEN, "409"),
        (("rollback", "shop"), TOKEN, "409"),
        (("flip", "shop", "green"), None, "401"),
        (("flip", "shop", "green"), "wrong", "403"),
        (("status", "nope"), TOKEN, "404"),
    ]
    for args, token, status in cases:
        code, _, err = await pointsman(rs, *args, token=token)
        assert code == 1, (args, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"pointsman: {status}"), (args, err)
    code, out, _ = await pointsman(rs, "status", "shop", "--json")
    assert json.loads(out)["version"] == 1
    assert set(await rs.backends_of(5)) == {"blue"}


async def test_usage_errors_exit_2_and_an_unreachable_admin_exits_3(
    start_service: StartService,
) -> None:
    rs = await start_service()
    code, _, _ = await pointsman(rs, "weights", "shop", "blue:5")
    assert code == 2
    code, _, err = await pointsman(None, "status")
    assert code == 3
    assert err.startswith("pointsman: cannot reach admin API at http://127.0.0.1:")
