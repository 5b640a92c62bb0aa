"""Raw HTTP/1.1 helpers for framing tests: a raw client side, a raw recording upstream.

Where the exact bytes matter the client is a raw socket, and the upstream is `RawUpstream`, a tiny
asyncio server whose handler writes exact bytes and which records what it received.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

# Bound on any single network wait in these tests.
WAIT = 5.0


# -- raw HTTP/1.1 parsing helpers (client and upstream side) -------------------------------------


@dataclass
class Message:
    """A parsed HTTP message: a request (method/target) or a response (status/reason)."""

    start_line: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    head: bytes = b""

    @property
    def status(self) -> int:
        return int(self.start_line.split(" ", 2)[1])

    @property
    def method(self) -> str:
        return self.start_line.split(" ", 1)[0]

    @property
    def target(self) -> str:
        return self.start_line.split(" ", 2)[1]

    def get(self, name: str) -> str | None:
        values = self.get_all(name)
        return ", ".join(values) if values else None

    def get_all(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for k, v in self.headers if k.lower() == lname]

    def names(self) -> set[str]:
        return {k.lower() for k, _ in self.headers}

    def is_chunked(self) -> bool:
        te = self.get("Transfer-Encoding")
        return te is not None and te.strip().lower().endswith("chunked")


def parse_head(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        headers.append((name, value.strip()))
    return lines[0], headers


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            # Trailer section, ended by an empty line.
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass
            return bytes(body)
        body += await reader.readexactly(size)
        assert await reader.readexactly(2) == b"\r\n", "chunk not followed by CRLF"


async def read_response(reader: asyncio.StreamReader, head_request: bool = False) -> Message:
    """Read one response the way a correct HTTP/1.1 client would frame it."""
    async with asyncio.timeout(WAIT):
        head = await reader.readuntil(b"\r\n\r\n")
        start, headers = parse_head(head)
        msg = Message(start, headers, head=head)
        status = msg.status
        if head_request or status < 200 or status in (204, 304):
            return msg
        if msg.get("Transfer-Encoding") is not None:
            assert msg.is_chunked(), f"unexpected Transfer-Encoding: {msg.get('Transfer-Encoding')}"
            msg.body = await read_chunked(reader)
        elif msg.get("Content-Length") is not None:
            msg.body = await reader.readexactly(int(msg.get_all("Content-Length")[0]))
        else:
            msg.body = await reader.read(-1)  # close-delimited
        return msg


async def read_final_response(reader: asyncio.StreamReader) -> tuple[list[Message], Message]:
    """Skip (and return) interim 1xx responses, then the final one."""
    interim: list[Message] = []
    while True:
        msg = await read_response(reader)
        if msg.status >= 200 or msg.status == 101:
            return interim, msg
        interim.append(msg)


def parse_responses(data: bytes) -> list[Message]:
    """Split everything a connection sent into responses (Content-Length framed or none)."""
    out: list[Message] = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, f"incomplete response head: {data!r}"
        start, headers = parse_head(head + sep)
        msg = Message(start, headers, head=head + sep)
        length = msg.get_all("Content-Length")
        if length and msg.status >= 200 and msg.status not in (204, 304):
            n = int(length[0])
            msg.body, data = rest[:n], rest[n:]
        else:
            msg.body, data = b"", rest
        out.append(msg)
    return out


@contextlib.asynccontextmanager
async def client(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def send(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    async with asyncio.timeout(WAIT):
        await writer.drain()


async def wait_eof(reader: asyncio.StreamReader, limit: float = WAIT) -> bytes:
    """Read until the peer closes (or resets) the connection; everything it sent."""
    data = bytearray()
    async with asyncio.timeout(limit):
        try:
            while chunk := await reader.read(65536):
                data += chunk
        except ConnectionResetError:
            pass
    return bytes(data)


def get(path: str, host: str = "shop.example", extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


def error_doc(msg: Message) -> dict[str, object]:
    assert (msg.get("Content-Type") or "").startswith("application/json"), msg.headers
    doc = json.loads(msg.body)
    assert isinstance(doc, dict)
    return doc


# -- raw upstream --------------------------------------------------------------------------------

RawHandler = Callable[["RawUpstream", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawUpstream:
    """A tiny asyncio HTTP server whose handler writes exact bytes; records what it received."""

    def __init__(self, handler: RawHandler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[Message] = []
        self.received = bytearray()
        self.request_arrived = asyncio.Event()
        self.server: asyncio.Server | None = None
        self.port = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> RawUpstream:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        try:
            await self.handler(self, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            # Only stop() cancels these tasks. Ending normally keeps asyncio's stream callback
            # from logging the cancellation as an unhandled error.
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self._tasks.discard(task)

    async def read_request(self, reader: asyncio.StreamReader) -> Message | None:
        """One request (head and body), or None if the proxy closed the connection cleanly."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            self.received += exc.partial
            if exc.partial:
                raise
            return None
        self.received += head
        start, headers = parse_head(head)
        msg = Message(start, headers, head=head)
        self.requests.append(msg)
        self.request_arrived.set()
        if msg.is_chunked():
            msg.body = await read_chunked(reader)
        elif msg.get("Content-Length") is not None:
            msg.body = await reader.readexactly(int(msg.get_all("Content-Length")[0]))
        self.received += msg.body
        return msg

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        # Closing a connection ends its handler (its reads hit EOF); cancel only stragglers.
        for writer in list(self._writers):
            writer.close()
        tasks = list(self._tasks)
        if tasks:
            _, stragglers = await asyncio.wait(tasks, timeout=1.0)
            for task in stragglers:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()


def responding(make: Callable[[Message], bytes], close: bool = False) -> RawHandler:
    """A handler answering each request on a connection with make(request); closes after the
    first response if `close`."""

    async def handler(
        up: RawUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while (req := await up.read_request(reader)) is not None:
            writer.write(make(req))
            await writer.drain()
            if close:
                return

    return handler


def ok_path(req: Message) -> bytes:
    body = req.target.encode()
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


RawUpstreamFactory = Callable[[RawHandler], Awaitable[RawUpstream]]
