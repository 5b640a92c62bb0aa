"""WriteBatch: the writes of one loop turn go out together, in order, and a close waits for them."""

from __future__ import annotations

import asyncio
from typing import cast

from proxy.upstream import BATCH_FLUSH_BYTES, WriteBatch


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
    assert log == []  # small writes are not sent from inside the turn that queued them
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


async def test_a_batch_holding_the_flush_bound_is_written_at_once() -> None:
    # One turn may carry many 256 KiB reads from an upstream: back-pressure (pause_writing)
    # only sees bytes written to the transport, so a batch that big cannot wait for the turn.
    log: list[tuple[str, bytes]] = []
    a, b = transports(log, "a", "b")
    batch = WriteBatch(asyncio.get_running_loop())
    batch.write(b, b"head")
    big = b"x" * (BATCH_FLUSH_BYTES - len(b"head"))
    batch.write(a, big[:100])
    assert log == []
    batch.write(a, big[100:])  # the batch now holds the bound: out in order, now
    assert log == [("b", b"head"), ("a", big[:100]), ("a", big[100:])]
    batch.write(a, b"after")  # counting starts again from nothing
    assert len(log) == 3
    await next_turn()
    assert log[-1] == ("a", b"after")


async def test_a_write_made_while_the_batch_is_written_waits_for_the_next_flush() -> None:
    # A transport's write can call back into the proxy (pause_writing), which may queue more;
    # flushing again from inside the flush would reorder writes: it waits instead.
    log: list[tuple[str, bytes]] = []
    loop = asyncio.get_running_loop()
    batch = WriteBatch(loop)
    (b,) = transports(log, "b")
    big = b"y" * BATCH_FLUSH_BYTES

    class CallingBack(FakeTransport):
        def write(self, data: bytes) -> None:
            super().write(data)
            if data == b"first":
                batch.write(b, big)  # at the bound, but inside the flush

    a = cast(asyncio.Transport, CallingBack(log, "a"))
    batch.write(a, b"first")
    batch.write(a, big)  # the bound: flushes now, and a's first write queues b's
    assert log == [("a", b"first"), ("a", big)]
    await next_turn()
    assert log == [("a", b"first"), ("a", big), ("b", big)]
