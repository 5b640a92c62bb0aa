"""A slow backend for the shadow-isolation benchmark: answers every request with `ok` after a
fixed delay, on keep-alive connections; `/__healthz` answers at once. A bare asyncio protocol
on uvloop, so that the slow shadow itself takes little of the machine's CPU from the processes
being measured. Requests must have no body (the benchmark mirrors GETs). Stops by itself after
--max-seconds.

Usage: python benchmarks/slow.py --port PORT [--delay 1.0] [--max-seconds N]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections import deque
from typing import cast

import uvloop

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n"
MAX_HEAD = 64 * 1024  # a request head larger than this closes the connection


class SlowProtocol(asyncio.Protocol):
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        # Answers due, oldest first (one delay for all, so they fire in order); answer() drops
        # the one that fired, so the list stays as long as the requests in flight.
        self.timers: deque[asyncio.TimerHandle] = deque()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's: not a subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        loop = asyncio.get_running_loop()
        while (end := self.buffer.find(b"\r\n\r\n")) != -1:
            head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
            delay = 0.0 if head.startswith(b"GET /__healthz ") else self.delay
            self.timers.append(loop.call_later(delay, self.answer))
        if len(self.buffer) > MAX_HEAD and self.transport is not None:
            self.transport.close()

    def answer(self) -> None:
        if self.timers:
            self.timers.popleft()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(RESPONSE)

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in self.timers:
            timer.cancel()
        self.transport = None


async def serve(port: int, delay: float, max_seconds: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SlowProtocol(delay), "127.0.0.1", port, backlog=4096, reuse_address=True
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), max_seconds)
    except TimeoutError:
        pass
    finally:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=1.0, help="seconds before each answer")
    parser.add_argument("--max-seconds", type=float, default=900.0)
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.delay, args.max_seconds))


if __name__ == "__main__":
    main()
