"""An independent check of framing: h11 (strict, pure Python, no code shared with llhttp) parses
what Pointsman forwarded upstream and what it relayed to the client.

`StrictUpstream` is an upstream whose own parser is h11: it records the raw bytes of each
connection and the requests h11 framed from them, and answers each with bytes the test chooses.
`read_responses` frames what a raw client socket receives, with h11 as the client.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import h11

# Bound on any single network wait.
WAIT = 5.0
# Bytes read at a time from a socket.
READ_SIZE = 65536

Fields = tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True)
class Framed:
    """One message as h11 framed it; header names lower-cased (h11 does that)."""

    start: tuple[bytes, ...]  # (method, target) of a request, (status,) of a response
    headers: Fields
    body: bytes
    trailers: Fields = ()

    def get(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key == name]

    @property
    def status(self) -> int:
        return int(self.start[0])


def _fields(headers: Iterable[tuple[bytes, bytes]]) -> Fields:
    return tuple((bytes(name), bytes(value)) for name, value in headers)


@dataclass
class UpstreamConnection:
    raw: bytearray = field(default_factory=bytearray)
    requests: list[Framed] = field(default_factory=list)
    error: str | None = None  # what h11 refused, if it refused anything


Answer = Callable[[Framed], bytes]


def ok_target(request: Framed) -> bytes:
    """200 with the request target as the body."""
    body = request.start[1]
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


class StrictUpstream:
    """An HTTP/1.1 upstream framed by h11; answers each request with `answer(request)`."""

    def __init__(self, answer: Answer = ok_target) -> None:
        self.answer = answer
        self.connections: list[UpstreamConnection] = []
        self.server: asyncio.Server | None = None
        self.port = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._received = asyncio.Event()  # set at each read, for wait_for

    async def wait_for(self, needle: bytes) -> None:
        """Until some connection has received `needle`."""
        async with asyncio.timeout(WAIT):
            while not any(needle in conn.raw for conn in self.connections):
                self._received.clear()
                await self._received.wait()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def requests(self) -> list[Framed]:
        return [req for conn in self.connections for req in conn.requests]

    @property
    def errors(self) -> list[str]:
        return [conn.error for conn in self.connections if conn.error is not None]

    async def start(self) -> StrictUpstream:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in list(self._writers):
            writer.close()
        if self.server is not None:
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        record = UpstreamConnection()
        self.connections.append(record)
        self._writers.add(writer)
        leftover = b""
        try:
            while True:
                parser = h11.Connection(h11.SERVER)
                if leftover:  # (b"" would tell h11 the peer closed)
                    parser.receive_data(leftover)
                request = await _next_message(parser, reader, record.raw, self._received)
                if request is None:
                    return
                record.requests.append(request)
                writer.write(self.answer(request))
                await writer.drain()
                leftover = parser.trailing_data[0]
        except h11.RemoteProtocolError as exc:
            record.error = str(exc)
        except ConnectionError:
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def _next_message(
    parser: h11.Connection,
    reader: asyncio.StreamReader,
    raw: bytearray | None = None,
    received: asyncio.Event | None = None,
) -> Framed | None:
    """One message framed by `parser`, reading more as it needs; None on a clean close before
    any byte of one. Raises h11.RemoteProtocolError on anything h11 refuses, including a close
    in the middle of a message."""
    start: tuple[bytes, ...] = ()
    headers: Fields = ()
    body = bytearray()
    async with asyncio.timeout(WAIT):
        while True:
            event = parser.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(READ_SIZE)
                if raw is not None:
                    raw += data
                if received is not None:
                    received.set()
                parser.receive_data(data)  # b"" tells h11 the peer closed
            elif isinstance(event, h11.Request):
                start, headers = (bytes(event.method), bytes(event.target)), _fields(event.headers)
            elif isinstance(event, h11.Response):
                start, headers = (b"%d" % event.status_code,), _fields(event.headers)
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return Framed(start, headers, bytes(body), _fields(event.headers))
            elif isinstance(event, h11.ConnectionClosed):
                return None
            elif isinstance(event, h11.InformationalResponse):
                continue  # interim responses are checked by the tests that send them
            else:
                raise AssertionError(f"unexpected h11 event {event!r}")


async def read_responses(
    reader: asyncio.StreamReader, methods: list[bytes], expect_close: bool = False
) -> list[Framed]:
    """The responses to requests with these methods, in order, framed by h11 as a client; with
    `expect_close`, also that the proxy closed the connection after the last one."""
    responses: list[Framed] = []
    leftover = b""
    for method in methods:
        parser = h11.Connection(h11.CLIENT)
        parser.send(h11.Request(method=method, target="/", headers=[("Host", "check")]))
        parser.send(h11.EndOfMessage())
        if leftover:
            parser.receive_data(leftover)
        response = await _next_message(parser, reader)
        assert response is not None, f"connection closed after {len(responses)} responses"
        responses.append(response)
        leftover = parser.trailing_data[0]
    if expect_close:
        assert leftover == b"", f"bytes after the last response: {leftover!r}"
        async with asyncio.timeout(WAIT):
            with contextlib.suppress(ConnectionResetError):
                rest = await reader.read()
                assert rest == b"", f"bytes after the last response: {rest!r}"
    return responses
