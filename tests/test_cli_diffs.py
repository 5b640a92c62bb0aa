"""`pointsman diffs ROUTE POOL` against a running Pointsman (a real Service with real upstreams,
see tests/test_api_shadows.py): what an operator reads, and the replay command run for real."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal

from tests.conftest import free_port
from tests.test_api_shadows import CREDENTIALS, SHADOWS, Shop, StartShop, start_shop
from tests.test_cli_control import Run
from tests.test_cli_control import pointsman as run_cli

__all__ = ["start_shop"]  # the fixture, imported for pytest

REPLAY_LIMIT = 3.0  # seconds a replayed request to a local upstream may take


async def diffs(shop: Shop | None, *args: str) -> Run:
    """`pointsman diffs ...` as a process (None: an admin address nothing listens on)."""
    if shop is None:
        return await run_cli("diffs", *args, admin=f"http://127.0.0.1:{free_port()}")
    return await run_cli("diffs", *args, admin=shop.admin)


async def bash(command: str) -> tuple[int, str, str]:
    """Run a shell command line as an operator would paste it; kill its whole process group if
    it takes longer than REPLAY_LIMIT (a hung curl must not outlive the test)."""
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", command,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        async with asyncio.timeout(REPLAY_LIMIT):
            out, err = await proc.communicate()
    except TimeoutError:
        os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        raise AssertionError(f"did not finish within {REPLAY_LIMIT}s: {command}") from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def replay_lines(out: str) -> list[str]:
    return [line.removeprefix("  replay: ") for line in out.splitlines() if "replay: " in line]


def http_body(out: str) -> str:
    """The body of `curl -i` output (after the blank line ending the head)."""
    return out.replace("\r\n", "\n").split("\n\n", 1)[1]


async def test_diffs_prints_summary_paths_and_replayable_mismatches(start_shop: StartShop) -> None:
    shop = await start_shop()
    await shop.browse("/items/1?x=1", "/about", "/static", headers=CREDENTIALS)
    await shop.browse("/items/2")

    run = await diffs(shop, "shop", "dark")
    assert (run.code, run.err) == (0, ""), run.err
    assert "sekrit" not in run.out
    lines = run.out.splitlines()
    assert lines[:5] == [
        "shop/dark: 4 compared, 2 mismatched (50.0%), 1 matched, 1 noise only; "
        "4 mirrored, 0 dropped (none)",
        "paths: diff rate, noise rate (baseline)",
        "  $.price      diff  50.0%  noise   0.0%  counts",
        "  $.served_at  diff  75.0%  noise  75.0%  noise",
        "newest 2 of 2 kept mismatches:",
    ]
    # Two mismatches, newest first: a header line, its differences, its replay command.
    blocks = run.out.split("\n\n")[1:]
    assert len(blocks) == 2, run.out
    for block, target in zip(blocks, ["/items/2", "/items/1?x=1"], strict=True):
        head, first, second, replay = block.splitlines()
        price, served = sorted([first, second])  # "  $.p..." before "  $.s..."
        assert re.fullmatch(
            rf"#\d GET {re.escape(target)}  \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\dZ  id \S+  "
            r"primary 200 in [0-9.]+ ms, shadow 200 in [0-9.]+ ms",
            head,
        ), head
        assert price == "  $.price: primary 10  shadow 12"
        assert re.fullmatch(
            r"  \$\.served_at: primary [0-9.e-]+  shadow [0-9.e-]+  \(noise\)", served
        )
        assert replay.startswith(
            f"  replay: curl -sS -i -X GET {shlex.quote(f'http://{shop.dark.address}{target}')} "
        ), replay
        assert "-H 'X-Pointsman-Shadow: 1'" in replay
        assert f"-H 'Host: {shop.proxy.removeprefix('http://')}'" in replay
        assert "X-Forwarded-For" not in replay
    assert blocks[0].startswith("#1 ") and blocks[1].startswith("#2 ")

    # The request sent with credentials: they are left out of its replay, and it says so.
    credentialed = replay_lines(run.out)[1]
    assert credentialed.endswith("   # left out (redacted): Authorization, Cookie")
    assert "Authorization:" not in credentialed and "Cookie:" not in credentialed
    assert "# left out" not in replay_lines(run.out)[0]

    # Pasted into a shell, each replay reaches the dark backend and gets its answer.
    targets = ["/items/2", "/items/1?x=1"]
    for command, target in zip(replay_lines(run.out), targets, strict=True):
        seen = len(shop.dark.seen)
        code, out, err = await bash(command)
        assert (code, err) == (0, ""), err
        assert out.startswith("HTTP/1.1 200 "), out
        document = json.loads(http_body(out))
        assert (document["path"], document["price"]) == (target.split("?")[0], 12)
        assert len(shop.dark.seen) == seen + 1
        replayed = shop.dark.seen[-1]
        assert replayed.headers["X-Pointsman-Shadow"] == "1"
        assert replayed.path_qs == target
        assert "Authorization" not in replayed.headers


async def test_diffs_json_and_limit(start_shop: StartShop) -> None:
    shop = await start_shop()
    await shop.browse("/items/1", "/items/2", "/items/3")

    run = await diffs(shop, "shop", "dark", "--json", "--limit", "2")
    assert (run.code, run.err) == (0, ""), run.err
    body = run.json()
    api = await shop.call("GET", SHADOWS + "/dark/diffs?limit=2")
    assert body == api.body
    assert [d["target"] for d in body["diffs"]] == ["/items/3", "/items/2"]
    assert body["summary"]["mismatched"] == 3

    run = await diffs(shop, "shop", "dark", "--limit", "1")
    assert run.code == 0, run.err
    assert "newest 1 of 3 kept mismatches:" in run.out.splitlines()
    assert len(replay_lines(run.out)) == 1


async def test_diffs_of_a_quiet_shadow_say_so(start_shop: StartShop) -> None:
    shop = await start_shop()
    run = await diffs(shop, "shop", "dark")
    assert (run.code, run.err) == (0, "")
    assert run.out.splitlines() == [
        "shop/dark: 0 compared, 0 mismatched (0.0%), 0 matched, 0 noise only; "
        "0 mirrored, 0 dropped (none)",
        "no mismatches kept",
    ]


async def test_diffs_refusals_usage_errors_and_an_unreachable_admin(start_shop: StartShop) -> None:
    shop = await start_shop()
    for args, reason in [
        (("shop", "twin"), "404 route 'shop' has no shadow 'twin'"),
        (("nope", "dark"), "404 unknown route 'nope'"),
    ]:
        run = await diffs(shop, *args)
        assert run.code == 1, (args, run.err)
        assert run.out == ""
        assert run.err.splitlines() == [f"pointsman: {reason}"], run.err
    for limit in ("0", "-3", "x"):
        run = await diffs(shop, "shop", "dark", "--limit", limit)
        assert run.code == 2, (limit, run.err)
        assert "--limit" in run.err and run.out == ""
    run = await diffs(None, "shop", "dark")
    assert run.code == 3, run.err
    assert run.err.startswith("pointsman: cannot reach admin API at http://127.0.0.1:")
    assert len(run.err.splitlines()) == 1


async def test_the_replay_of_a_mirrored_head_request_completes(start_shop: StartShop) -> None:
    """HEAD is mirrored by default. Its replay must end on its own: `curl -X HEAD` waits for
    the body the Content-Length announces, which a HEAD answer never has."""
    shop = await start_shop()
    await shop.browse("/discontinued/7", method="HEAD")  # blue 200, dark 404
    run = await diffs(shop, "shop", "dark")
    assert run.code == 0, run.err
    assert "#1 HEAD /discontinued/7 " in run.out
    assert "  status: primary 200  shadow 404" in run.out.splitlines()
    (command,) = replay_lines(run.out)
    code, out, err = await bash(command)
    assert (code, err) == (0, ""), err
    assert out.startswith("HTTP/1.1 404 "), out
    assert shop.dark.seen[-1].method == "HEAD"
