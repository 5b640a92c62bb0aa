"""The access log: one JSON line per request with what on-call engineers grep for, written in
batches, sampled, reopened on SIGUSR1 (logrotate), off by default."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from proxy import access_log
from proxy.config import AccessLogConfig, ConfigError
from proxy.config_loader import parse_config
from tests.conftest import BackendFactory, ProxyFactory, config_for, free_port
from tests.test_cli import run_config, tail, wait_listening

LIMIT = 10.0  # seconds any exchange or wait may take

pytestmark = pytest.mark.timeout(60)


def read_text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


async def lines_of(path: Path, count: int) -> list[dict[str, Any]]:
    """The log's lines once it has at least `count` (a batch is written within 0.2 s)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LIMIT
    while True:
        text = read_text(path)
        lines = [json.loads(line) for line in text.splitlines()]
        if len(lines) >= count:
            return lines
        assert loop.time() < deadline, f"{len(lines)} of {count} lines in {path}"
        await asyncio.sleep(0.05)


ROUTES = 'routes:\n  - name: shop\n    pools:\n      blue: {endpoints: ["127.0.0.1:9001"]}\n'
ROUTE_EXTRA = """\
    sticky: {header: X-User-Id}
    rules:
      - header: {X-Pool: green}
        pool: green
    shadows:
      - {pool: dark, percent: 100, methods: [GET]}
"""


async def test_each_field_of_a_line(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    blue = await backend_factory("blue")
    green = await backend_factory("green")
    dark = await backend_factory("dark")
    config = config_for(
        {"blue": [blue.address], "green": [green.address], "dark": [dark.address]},
        weights={"blue": 100, "green": 0, "dark": 0},
        route_extra=ROUTE_EXTRA,
    )
    log_path = tmp_path / "logs" / "access.log"
    proxy = await proxy_factory(config, access_log=AccessLogConfig(str(log_path)))
    base = f"http://127.0.0.1:{proxy.port}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=LIMIT)) as session:
        async with session.get(base + "/weighted?q=1", headers={"X-Request-Id": "r-1"}) as resp:
            assert resp.status == 200
            weighted_body = await resp.read()
        async with session.post(base + "/rule", data=b"x" * 100,
                                headers={"X-Pool": "green"}) as resp:  # fmt: skip
            assert resp.status == 200
        async with session.get(base + "/sticky", headers={"X-User-Id": "u-7"}) as resp:
            assert resp.status == 200
    lines = await lines_of(log_path, 3)
    weighted, rule, sticky = [
        next(line for line in lines if line["path"] == path)
        for path in ("/weighted?q=1", "/rule", "/sticky")
    ]
    assert set(weighted) == {
        "time", "client", "method", "path", "host", "protocol", "status", "bytes_in",
        "bytes_out", "duration", "upstream_duration", "route", "pool", "endpoint",
        "request_id", "choice", "shadowed", "tls",
    }  # fmt: skip
    assert weighted["client"] == "127.0.0.1"
    assert (weighted["method"], weighted["status"], weighted["protocol"]) == (
        "GET", 200, "HTTP/1.1",
    )  # fmt: skip
    assert weighted["host"] == f"127.0.0.1:{proxy.port}"
    assert (weighted["route"], weighted["pool"], weighted["endpoint"]) == (
        "shop", "blue", blue.address,
    )  # fmt: skip
    assert (weighted["request_id"], weighted["choice"]) == ("r-1", "weighted")
    assert weighted["shadowed"] is True and rule["shadowed"] is False  # GETs only
    assert weighted["tls"] is False
    # Bytes out: the whole response as the client got it (head and body).
    assert weighted["bytes_out"] > len(weighted_body) > 0
    assert rule["bytes_in"] >= 100 + len("POST /rule HTTP/1.1")
    assert (rule["method"], rule["pool"], rule["choice"]) == ("POST", "green", "rule")
    assert (sticky["pool"], sticky["choice"]) == ("blue", "sticky")
    for line in lines:
        assert 0 <= line["upstream_duration"] <= line["duration"] + 0.002 < LIMIT
        assert abs(line["time"] - time.time()) < LIMIT
    assert proxy.access_log is not None and proxy.access_log.written == 3


async def test_answers_of_the_proxy_itself_are_logged_too(
    proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    config = config_for({"blue": [f"127.0.0.1:{free_port()}"]})  # nothing listens there
    config = replace(config, routes=(replace(config.routes[0], hosts=("shop.test",)),))
    log_path = tmp_path / "access.log"
    proxy = await proxy_factory(config, access_log=AccessLogConfig(str(log_path)))
    base = f"http://127.0.0.1:{proxy.port}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=LIMIT)) as session:
        async with session.get(base + "/nowhere", headers={"Host": "other.test"}) as resp:
            assert resp.status == 404
        async with session.get(base + "/down", headers={"Host": "shop.test"}) as resp:
            assert resp.status == 502
    unrouted, refused = await lines_of(log_path, 2)
    assert (unrouted["status"], unrouted["route"], unrouted["pool"]) == (404, None, None)
    assert unrouted["upstream_duration"] is None and unrouted["choice"] is None
    assert (refused["status"], refused["route"], refused["pool"]) == (502, "shop", "blue")
    assert refused["endpoint"] is None  # no connection was made


async def test_a_sample_logs_that_share_of_requests(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    blue = await backend_factory("blue")
    log_path = tmp_path / "access.log"
    proxy = await proxy_factory(
        config_for({"blue": [blue.address]}), access_log=AccessLogConfig(str(log_path), 0.1)
    )
    sent = 1000
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=LIMIT)) as session:
        for index in range(sent):
            async with session.get(f"http://127.0.0.1:{proxy.port}/{index}") as resp:
                assert resp.status == 200
    assert proxy.access_log is not None
    proxy.access_log.flush()
    logged = len(log_path.read_text().splitlines())
    # 10 % of 1000: 100 expected, standard deviation 9.5; outside 40..160 is a 6-sigma event.
    assert 40 <= logged <= 160, logged


async def test_no_access_log_unless_configured(
    backend_factory: BackendFactory, proxy_factory: ProxyFactory
) -> None:
    blue = await backend_factory("blue")
    proxy = await proxy_factory(config_for({"blue": [blue.address]}))
    assert proxy.access_log is None and proxy.ctx is not None and proxy.ctx.access_log is None
    off = parse_config("listen: 127.0.0.1:8080\naccess_log: off\n" + ROUTES)
    assert off.access_log is None


def test_bad_access_log_settings_name_their_line() -> None:
    base = "listen: 127.0.0.1:8080\naccess_log: "
    cases = {
        "{sample: 0.5}": "p.yaml:2: access_log.path: required key missing",
        "{path: a.log, sample: 0}": (
            "p.yaml:2: access_log.sample: expected a share of requests in (0, 1], e.g. 0.1, got 0"
        ),
        "{path: a.log, sample: 2}": "p.yaml:2: access_log.sample: expected a share",
        "{path: a.log, format: json}": "p.yaml:2: access_log.format: unknown key",
        "yes": "p.yaml:2: access_log: expected off or a mapping with path, got true",
    }
    for value, expected in cases.items():
        with pytest.raises(ConfigError) as caught:
            parse_config(base + value + "\n" + ROUTES, "p.yaml")
        assert len(caught.value.problems) == 1, caught.value.problems
        assert caught.value.problems[0].startswith(expected), caught.value.problems


async def test_sigusr1_reopens_the_log_after_logrotate_moved_it(
    backend_factory: BackendFactory, tmp_path: Path
) -> None:
    """`pointsman run` with 2 workers: lines go to the moved file until SIGUSR1 reaches the
    master, then to a new file at the configured path; none is lost."""

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(text="blue")

    blue = await backend_factory("blue", handler)
    port, admin_port = free_port(), free_port()
    log_path = tmp_path / "access.log"
    config = tmp_path / "pointsman.yaml"
    config.write_text(
        run_config(port, admin_port, blue.address, tmp_path / "state.json")
        + f'access_log: {{path: "{log_path}"}}\nworkers: 2\n'
    )
    output = tmp_path / "out.log"
    with output.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "control.cli", "run", "--config", str(config),
            stdout=out, stderr=out, env={**os.environ, "POINTSMAN_TOKEN": "t"},
        )  # fmt: skip
    try:
        await wait_listening(port, proc, output)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=LIMIT)) as session:

            async def send(paths: range) -> None:
                for index in paths:
                    # A new connection each: both workers take some.
                    async with session.get(
                        f"http://127.0.0.1:{port}/{index}", headers={"Connection": "close"}
                    ) as resp:
                        assert resp.status == 200

            await send(range(20))
            await lines_of(log_path, 20)
            rotated = tmp_path / "access.log.1"
            log_path.rename(rotated)
            await send(range(20, 30))  # still written to the moved file (same inode)
            await lines_of(rotated, 30)
            proc.send_signal(signal.SIGUSR1)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + LIMIT
            while output.read_text(errors="replace").count("reopened") < 2:
                assert loop.time() < deadline, tail(output)  # each worker says it reopened
                await asyncio.sleep(0.05)
            await send(range(30, 40))
            fresh = await lines_of(log_path, 10)
        old = await lines_of(rotated, 30)
        assert sorted(int(line["path"][1:]) for line in old) == list(range(30))
        assert sorted(int(line["path"][1:]) for line in fresh) == list(range(30, 40))
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(LIMIT):
                await proc.wait()
    assert proc.returncode == 0, tail(output)


# --- the line's two writers ----------------------------------------------------------------

_text_bytes = st.binary(max_size=40) | st.sampled_from([b"", b"/", b"/a?b=c&d", b'/"q"', b"\\"])
_names = st.sampled_from(["", "shop", "blue", "127.0.0.1:9001", "[::1]:8080", "weighted"])
_seconds = st.floats(min_value=0, max_value=1e5, allow_nan=False)


@given(
    end=st.floats(min_value=0, max_value=1e6, allow_nan=False),
    offset=st.floats(min_value=1.7e9, max_value=1.9e9, allow_nan=False),
    method=_text_bytes,
    url=_text_bytes,
    host=_text_bytes,
    request_id=_text_bytes,
    version=st.sampled_from(["1.1", "1.0", "0.9"]),
    numbers=st.tuples(*[st.integers(min_value=0, max_value=2**40)] * 3),
    duration=_seconds,
    upstream=_seconds | st.just(-1.0),
    names=st.tuples(_names, _names, _names, _names),
    flags=st.tuples(st.booleans(), st.booleans()),
)
def test_the_fast_line_says_what_the_json_encoder_says(
    end: float,
    offset: float,
    method: bytes,
    url: bytes,
    host: bytes,
    request_id: bytes,
    version: str,
    numbers: tuple[int, int, int],
    duration: float,
    upstream: float,
    names: tuple[str, str, str, str],
    flags: tuple[bool, bool],
) -> None:
    # `line` writes plain lines itself and hands the rest to orjson (`json_line`): both must
    # read back as the same JSON object, whatever bytes a client sent.
    entry = access_log.Entry(
        end, "127.0.0.1", method, url, host, version, *numbers, duration, upstream,
        *names[:3], request_id, names[3], *flags,
    )  # fmt: skip
    fast = access_log.line(entry, offset)
    assert fast.endswith(b"\n") and fast.count(b"\n") == 1
    assert json.loads(fast) == json.loads(access_log.json_line(entry, offset))
