"""WriteBatch: the writes of one loop turn go out together, in order, and a close waits for them."""

from __future__ import annotations

import asyncio
from typing import cast

from proxy.upstream import WriteBatch


class FakeTransport:
    def __init__(self, log: list[tuple[str, bytes]], name: str) -> None:
        self.log = log
        self.name = name
        self.closing = False

    def write(self, data: bytes) -> None:
        assert not self.closing, "write after close"
        self.log.append((self.name, data))

    def close(self) -> None:
        self.closing = True
        self.log.append((self.name, b"<close>"))

    def abort(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing


def transports(log: list[tuple[str, bytes]], *names: str) -> list[asyncio.Transport]:
    return [cast(asyncio.Transport, FakeTransport(log, name)) for name in names]


async def next_turn() -> None:
    # call_soon callbacks queued before this one have run once it resumes
    done = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(done.set_result, None)
    await done


async def test_writes_wait_for_the_end_of_the_turn_then_go_out_in_order() -> None:
    log: list[tuple[str, bytes]] = []
    a, b = transports(log, "a", "b")
    batch = WriteBatch(asyncio.get_running_loop())
    batch.write(a, b"1")
    batch.write(b, b"x")
    batch.write(a, b"2")
    assert log == []  # nothing is sent from inside the turn that queued it
    await next_turn()
    assert log == [("a", b"1"), ("b", b"x"), ("a", b"2")]
    batch.write(a, b"3")  # a later turn gets a batch of its own
    await next_turn()
    assert log[-1] == ("a", b"3")


async def test_a_close_happens_after_the_writes_queued_before_it() -> None:
    log: list[tuple[str, bytes]] = []
    (a,) = transports(log, "a")
    batch = WriteBatch(asyncio.get_running_loop())
    batch.write(a, b"response")
    batch.close(a)
    batch.write(a, b"late")  # queued after the close: dropped, not written to a closed transport
    await next_turn()
    assert log == [("a", b"response"), ("a", b"<close>")]


async def test_writes_to_a_transport_aborted_meanwhile_are_dropped() -> None:
    log: list[tuple[str, bytes]] = []
    a, b = transports(log, "a", "b")
    batch = WriteBatch(asyncio.get_running_loop())
    batch.write(a, b"lost")
    batch.write(b, b"kept")
    a.abort()
    await next_turn()
    assert log == [("b", b"kept")]
