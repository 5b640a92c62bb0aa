"""The demo upstreams: versions by pool name, the products JSON, and injected faults."""

from __future__ import annotations

import argparse

import aiohttp
import pytest

from control.demo import _version_at, build_app
from proxy.config import Address
from tests.conftest import serve_app


async def test_the_demo_products_differ_only_for_the_buggy_version_and_faults_switch() -> None:
    blue_runner, blue_port = await serve_app(build_app("blue", Address("127.0.0.1", 1)))
    dark_runner, dark_port = await serve_app(build_app("dark", Address("127.0.0.1", 2)))
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{blue_port}/api/products") as resp:
                blue = await resp.json()
            async with session.get(f"http://127.0.0.1:{dark_port}/api/products") as resp:
                dark = await resp.json()
            assert {p["currency"] for p in blue["products"]} == {"EUR"}
            assert {p["currency"] for p in dark["products"]} == {"eur"}
            assert blue["products"][0]["price"] == dark["products"][0]["price"]

            url = f"http://127.0.0.1:{blue_port}"
            async with session.post(f"{url}/__demo/fault?errors=1") as resp:
                assert resp.status == 200
            async with session.get(f"{url}/") as resp:
                assert resp.status == 500
                assert "injected error from blue" in await resp.text()
            async with session.post(f"{url}/__demo/fault?errors=2") as resp:
                assert resp.status == 400  # out of range: refused, the fault stays as it was
            async with session.post(f"{url}/__demo/fault?errors=0&delay=0") as resp:
                assert resp.status == 200
            async with session.get(f"{url}/") as resp:
                assert resp.status == 200
                assert (await resp.text()).startswith("hello from blue")
    finally:
        await blue_runner.cleanup()
        await dark_runner.cleanup()


def test_serve_takes_version_at_address() -> None:
    assert _version_at("v2=127.0.0.1:9401") == ("v2", Address("127.0.0.1", 9401))
    for bad in ("v2", "=127.0.0.1:1", "v2=nowhere"):
        with pytest.raises(argparse.ArgumentTypeError):
            _version_at(bad)
