"""The fuzzing harness: Pointsman's request and response paths in-process, on fake transports,
checked against h11 (strict, pure Python, no code shared with llhttp) as the oracle.

Two check functions take one input each and raise AssertionError when an invariant breaks;
the fuzzer (fuzz/target.py), the replayer (fuzz/replay.py) and the smoke test
(tests/test_fuzz_smoke.py) all call them:

- `Harness.request_path(data)`: a client sends the input's bytes to a DownstreamConnection
  whose upstreams are in-memory fakes. Each fake frames what the proxy wrote to it with h11 as
  a server and answers every complete request (`Answer styles` below).
- `Harness.response_path(data)`: a client sends one fixed request and the pooled upstream
  connection it goes to answers with the input's bytes.

An input is two control bytes (request path) or one (response path), then the stream. The
control bytes pick the read sizes, the upstream's answers, the fixed request and the end:
see `RequestModes` and `ResponseModes`. fuzz/make_corpus.py writes seeds in this format.

Invariants, each checked per input:

1. No exception escapes the protocols' callbacks, whether the harness called them or the event
   loop did (timers, WriteBatch flushes, connect tasks), and the proxy logs no ERROR (its
   "internal error" answer to an exception inside a parser callback).
2. Every input ends in a response or a close: after the stream, EOF and the timers (virtual
   time), the client's transport is closed, and what it got frames with h11 as a client into
   complete responses, one per request, with nothing left over; only a connection the proxy
   aborted (the client must see the failure) may end inside a response.
3. Nothing ambiguous is forwarded: what the proxy wrote to each upstream frames with h11 as a
   server, with no partial request left on a connection still open; every complete request is
   answered and its answer relayed, in order, exactly once (the answers are numbered), so the
   requests forwarded are exactly those answered or begun to be answered.
4. What was relayed is what was sent: a relayed body, status and trailers equal what h11 frames
   from the upstream's bytes; a response h11 could not complete is never relayed as complete.

Transports honour pause_reading (nothing is delivered while the proxy has paused it), close and
abort (connection_lost follows on the next loop turn) and a slow client (pause_writing after
each write). Time is virtual: when nothing is left to do the clock jumps to the next timer, so
header, upstream and idle timeouts fire in microseconds.
"""

from __future__ import annotations

import asyncio
import logging
import random
import traceback
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any

import h11

from proxy.config import Config
from proxy.config_loader import parse_config
from proxy.http1 import DownstreamConnection, ProxyContext
from proxy.metrics import Metrics
from proxy.router import RoutingTable
from proxy.upstream import UpstreamConnection, Upstreams, forwarded_trailer

# -- limits ------------------------------------------------------------------------------------

# Loop turns one settle may take before the proxy counts as spinning.
MAX_LOOP_TURNS = 20_000
# Timers the virtual clock may jump to per input (header, upstream and idle timeouts, re-armed).
MAX_TIMER_JUMPS = 16
# Harness steps per input beyond one per read delivered (EOF, timer jumps, settles after a
# close); bounds an input that never ends.
MAX_STEPS = 1_000
# Amplified request streams are repeated up to at least this many bytes: past the proxy's
# 16 KiB parse slice (FEED_SLICE), so the sliced parse and its backlog run.
AMPLIFY_TO = 40 * 1024
# h11 refuses an event larger than this (its default, 16 KiB, is below the proxy's limits).
MAX_EVENT = 1 << 20
# Requests the client-side split of a stream looks at.
MAX_CLIENT_REQUESTS = 2_000
# Virtual time at the start of every input (the same for all: an input replays as it ran),
# and how far past a timer's due time a jump lands. asyncio runs a timer only once
# `when < time() + clock resolution` (1 ns); past about 1.7e7 s that sum rounds back to time(),
# so the clock is kept small and jumps go a little beyond.
START_TIME = 1_000.0
JUMP_PAST = 0.001
# Read sizes the control bits choose from; 0: the whole stream in one read.
READ_SIZES = (0, 1, 2, 3, 5, 8, 17, 64)

# The routes and limits the harness proxies with: two routes (by host and path prefix),
# weights, a sticky header and cookie, a rule, two endpoints in the main pool, and small header
# and body limits, so 413 and 431 are reached by small inputs.
CONFIG = """
listen: 127.0.0.1:8080
admin: {listen: 127.0.0.1:8081}
limits: {max_header_bytes: 1KiB, max_body_bytes: 2KiB}
routes:
  - name: api
    hosts: [api.example]
    path_prefix: /v1
    pools:
      api: {endpoints: ["127.0.0.1:9004"]}
    weights: {api: 100}
  - name: shop
    hosts: ["*"]
    path_prefix: /
    pools:
      blue: {endpoints: ["127.0.0.1:9001", "127.0.0.1:9002"]}
      green: {endpoints: ["127.0.0.1:9003"]}
    weights: {blue: 90, green: 10}
    sticky: {header: X-User-Id, cookie: user_id}
    rules:
      - header: {X-Canary: always}
        pool: green
"""

# Answer styles of the request path's fake upstreams (RequestModes.answer).
ANSWER_LENGTH = 0  # 200 with Content-Length
ANSWER_CHUNKED_TRAILER = 1  # 200 chunked, with a trailer section
ANSWER_CLOSE_DELIMITED = 2  # 200 without a length, then the upstream closes
ANSWER_LENGTH_CLOSE = 3  # 200 with Content-Length and Connection: close, then closes
ANSWER_INTERIM = 4  # 103 Early Hints, then 200 with Content-Length
ANSWER_NO_CONTENT = 5  # 204, or 304 for every other request
ANSWER_EMPTY = 6  # 200 with Content-Length: 0
ANSWER_UPGRADE = 7  # 101 to an upgrade request (then a tunnel), else 200 chunked


def _fuzz_log_record(record: logging.LogRecord) -> str:
    text = f"{record.name}: {record.getMessage()}"
    if record.exc_info and record.exc_info[1] is not None:
        text += "\n" + "".join(traceback.format_exception(record.exc_info[1]))
    return text


class _ErrorLog(logging.Handler):
    """Keeps the proxy's ERROR records: each is an exception it caught and answered with 500."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(_fuzz_log_record(record))


# -- the event loop: virtual time, fake connections, every error kept ----------------------------


class FuzzLoop(asyncio.SelectorEventLoop):
    """An asyncio loop whose clock moves only when told (`jump_to_next_timer`), whose
    create_connection hands out fake upstream connections, and which keeps every exception a
    callback or task raised instead of logging it."""

    def __init__(self) -> None:
        super().__init__()
        self.now = START_TIME
        self.errors: list[str] = []
        self.world: World | None = None
        self.driver: asyncio.Future[None] | None = None
        self.set_exception_handler(self._keep_error)

    def time(self) -> float:
        return self.now

    def create_task(self, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        task = super().create_task(coro, **kwargs)
        task.add_done_callback(self._task_done)
        return task

    async def create_connection(  # type: ignore[override]
        self, protocol_factory: Callable[[], Any], host: str | None = None, port: int | None = None,
        **kwargs: Any,
    ) -> tuple[FakeTransport, Any]:  # fmt: skip
        world = self.world
        assert world is not None, "a connection opened outside an input"
        return world.open_upstream(protocol_factory)

    def busy(self) -> bool:
        """Whether callbacks are ready to run (the loop's own queue)."""
        return bool(self._ready)  # type: ignore[attr-defined]

    def timers(self) -> list[asyncio.TimerHandle]:
        """The timers not yet run (the loop's own heap)."""
        return list(self._scheduled)  # type: ignore[attr-defined]

    def jump_to_next_timer(self) -> bool:
        """Move the clock to the earliest pending timer; False if there is none."""
        pending = [h.when() for h in self.timers() if not h.cancelled()]
        if not pending:
            return False
        self.now = max(self.now, min(pending) + JUMP_PAST)
        return True

    def end_input(self) -> None:
        """Forget everything the input left scheduled, so nothing of it runs in the next."""
        for handle in self.timers():
            handle.cancel()
        ready = self._ready  # type: ignore[attr-defined]
        for handle in ready:
            handle.cancel()
        ready.clear()
        self.now = START_TIME  # every timer is cancelled: time can start again
        self.world = None
        self.driver = None

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if task is self.driver or task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.errors.append("".join(traceback.format_exception(exc)))

    def _keep_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        text = str(context.get("message", ""))
        if isinstance(exc, BaseException):
            text += "\n" + "".join(traceback.format_exception(exc))
        self.errors.append(text)


class FakeTransport:
    """The transport interface the protocols use, in memory. Writes are kept; close and abort
    tell the protocol connection_lost on the next loop turn, as asyncio's transports do."""

    def __init__(self, loop: FuzzLoop, protocol: Any, name: str) -> None:
        self.loop = loop
        self.protocol = protocol
        self.name = name
        self.data = bytearray()
        self.ended = ""  # "", "close", "abort", or "lost" (the peer went away)
        self.lost = False  # connection_lost delivered
        self.paused = False  # reading paused by the protocol
        self.on_write: Callable[[bytes], None] | None = None
        self.on_resume: Callable[[], None] | None = None
        self.late_writes = 0  # writes after close or abort (the bytes go nowhere)

    def write(self, data: bytes) -> None:
        if self.ended:
            self.late_writes += 1
            return
        self.data += data
        if self.on_write is not None:
            self.on_write(bytes(data))

    def is_closing(self) -> bool:
        return bool(self.ended)

    def close(self) -> None:
        self._end("close")

    def abort(self) -> None:
        self._end("abort")

    def _end(self, how: str) -> None:
        if not self.ended:
            self.ended = how
            self.loop.call_soon(self.deliver_lost, None)

    def deliver_lost(self, exc: Exception | None) -> None:
        if not self.lost:
            self.lost = True
            self.protocol.connection_lost(exc)

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        if self.paused:
            self.paused = False
            if self.on_resume is not None:
                self.loop.call_soon(self.on_resume)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("192.0.2.7", 40000) if name == "peername" else default


# -- control bytes ---------------------------------------------------------------------------


def read_size(bits: int) -> int:
    return READ_SIZES[bits & 7]


def split(data: bytes, size: int) -> list[bytes]:
    """`data` as the reads of `size` bytes a socket would deliver (one read for 0)."""
    if not data:
        return []
    if size == 0:
        return [data]
    return [data[i : i + size] for i in range(0, len(data), size)]


@dataclass(frozen=True)
class RequestModes:
    """The request path's two control bytes.

    Byte 0: bits 0-2 the client's read size, 3-5 the answer style (ANSWER_*), 6 stale pooled
    connections (the upstream has closed every connection it is sent a second request on, as
    if idle too long), 7 the client vanishes (connection_lost) instead of sending EOF.
    Byte 1: bit 0 eager client (reads arrive while answers are under way), 1 slow client
    (pause_writing after each write), 2 amplify (the stream repeated past AMPLIFY_TO), 3-5 the
    upstreams' read size, 6 the first connect attempt is refused.
    """

    client_read: int
    answer: int
    stale: bool
    vanish: bool
    eager: bool
    slow_client: bool
    amplify: bool
    upstream_read: int
    refuse_first_connect: bool

    @classmethod
    def parse(cls, data: bytes) -> tuple[RequestModes, bytes]:
        first, second = (data + b"\0\0")[:2]
        modes = cls(
            client_read=read_size(first),
            answer=(first >> 3) & 7,
            stale=bool(first & 0x40),
            vanish=bool(first & 0x80),
            eager=bool(second & 1),
            slow_client=bool(second & 2),
            amplify=bool(second & 4),
            upstream_read=read_size(second >> 3),
            refuse_first_connect=bool(second & 0x40),
        )
        return modes, data[2:]


# The response path's fixed requests: (bytes sent, method, asks for an upgrade, HTTP/1.0).
FIXED_REQUESTS: tuple[tuple[bytes, bytes, bool, bool], ...] = (
    (b"GET /r HTTP/1.1\r\nHost: shop.example\r\n\r\n", b"GET", False, False),
    (b"HEAD /r HTTP/1.1\r\nHost: shop.example\r\n\r\n", b"HEAD", False, False),
    (b"GET /r HTTP/1.0\r\nHost: shop.example\r\n\r\n", b"GET", False, True),
    (
        b"POST /r HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 5\r\n\r\nhello",
        b"POST", False, False,
    ),
    (
        b"POST /r HTTP/1.1\r\nHost: shop.example\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\nX-Sum: 5\r\n\r\n",
        b"POST", False, False,
    ),
    (
        b"GET /ws HTTP/1.1\r\nHost: shop.example\r\nConnection: Upgrade\r\n"
        b"Upgrade: websocket\r\n\r\n",
        b"GET", True, False,
    ),
    (b"GET /r HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n", b"GET", False, False),
    (
        b"PUT /r HTTP/1.1\r\nHost: shop.example\r\nExpect: 100-continue\r\nContent-Length: 3\r\n"
        b"\r\nabc",
        b"PUT", False, False,
    ),
)  # fmt: skip


@dataclass(frozen=True)
class ResponseModes:
    """The response path's control byte: bits 0-2 the upstream's read size, 3-5 the fixed
    request (FIXED_REQUESTS), 6 the upstream keeps the connection open after its bytes (no
    EOF: the upstream timeout ends it), 7 slow client."""

    upstream_read: int
    request: int
    keep_open: bool
    slow_client: bool

    @classmethod
    def parse(cls, data: bytes) -> tuple[ResponseModes, bytes]:
        first = (data + b"\0")[0]
        modes = cls(read_size(first), (first >> 3) & 7, bool(first & 0x40), bool(first & 0x80))
        return modes, data[1:]


# -- h11 framing -------------------------------------------------------------------------------


@dataclass
class Framed:
    """One response as h11 framed it as a client (header names lower-cased)."""

    status: int = 0
    interim: list[int] = field(default_factory=list)
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)
    # "complete", "switched" (a 101: the rest is a tunnel), "incomplete" (the bytes ran out
    # inside it), "error" (h11 refused them) or "none" (no byte of a response)
    outcome: str = "none"
    error: str = ""
    rest: bytes = b""  # bytes after it (after a 101: the tunnel's)
    must_close: bool = False  # it said the connection ends after it

    def get(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key == name]


def frame_response(data: bytes, method: bytes, upgrade: bool, eof: bool) -> Framed:
    """The response at the start of `data` to a request with `method` (and an Upgrade header if
    `upgrade`), as h11 frames it as a client; `eof`: the connection closed after `data`."""
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_EVENT)
    headers = [(b"host", b"fuzz")]
    if upgrade:
        headers += [(b"connection", b"upgrade"), (b"upgrade", b"fuzz")]
    conn.send(h11.Request(method=method, target=b"/", headers=headers))
    conn.send(h11.EndOfMessage())
    framed = Framed()
    conn.receive_data(data)
    if eof:
        conn.receive_data(b"")
    body = bytearray()
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                framed.outcome = "incomplete" if framed.status or framed.interim or data else "none"
                break
            if isinstance(event, h11.InformationalResponse):
                framed.interim.append(event.status_code)
                if event.status_code == 101:
                    framed.status = 101
                    framed.headers = [(bytes(k), bytes(v)) for k, v in event.headers]
                    framed.outcome = "switched"
                    framed.rest = conn.trailing_data[0]
                    return framed
            elif isinstance(event, h11.Response):
                framed.status = event.status_code
                framed.headers = [(bytes(k), bytes(v)) for k, v in event.headers]
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                framed.trailers = [(bytes(k), bytes(v)) for k, v in event.headers]
                framed.outcome = "complete"
                framed.must_close = conn.their_state is h11.MUST_CLOSE
                framed.rest = conn.trailing_data[0]
                break
            elif isinstance(event, h11.ConnectionClosed):
                framed.outcome = "none"
                break
            else:  # PAUSED cannot come before EndOfMessage or a 101
                raise AssertionError(f"harness: unexpected h11 event {event!r}")
    except h11.RemoteProtocolError as exc:
        framed.outcome = "error"
        framed.error = str(exc)
    framed.body = bytes(body)
    return framed


@dataclass
class ClientRequest:
    """A request as h11 split the client's stream: what the client meant to send. `parsed` is
    False for one h11 refused: its method is a guess (the first token), and the proxy, which
    may have refused it before reading its method, may answer it as if it were not a HEAD."""

    method: bytes
    upgrade: bool
    parsed: bool = True


def split_client_stream(data: bytes) -> list[ClientRequest]:
    """The requests in what the client sent, split by h11 as a server. Where h11 refuses one, its
    first token stands for its method and the split ends (the proxy must refuse it or stop
    there too, or h11 and llhttp disagree: the checks then note it, see `Harness.notes`); after
    an upgrade request the rest is a tunnel's."""
    out: list[ClientRequest] = []
    while data and len(out) < MAX_CLIENT_REQUESTS:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_EVENT)
        conn.receive_data(data)
        current: ClientRequest | None = None
        try:
            while True:
                event = conn.next_event()
                if isinstance(event, h11.Request):
                    current = ClientRequest(
                        bytes(event.method),
                        any(name == b"upgrade" for name, _ in event.headers),
                    )
                    out.append(current)
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif event is h11.NEED_DATA or event is h11.PAUSED:
                    return out
        except h11.RemoteProtocolError:
            if current is None:
                token = data.lstrip(b"\r\n").split(b" ", 1)[0]
                out.append(ClientRequest(token, False, parsed=False))
            return out
        assert current is not None
        if current.upgrade:
            return out
        data = conn.trailing_data[0]
    return out


def framing_method(method: bytes) -> bytes:
    """The method h11 is told: only HEAD and CONNECT change how a response is framed."""
    return method if method in (b"HEAD", b"CONNECT") else b"GET"


# -- the world of one input -------------------------------------------------------------------


@dataclass
class Forwarded:
    """A complete request an upstream framed, and the answer it was given (numbered from 1)."""

    number: int
    method: bytes
    upgrade: bool
    status: int
    body: bytes  # what the client must get as the body (none for HEAD, 204, 304)
    trailers: list[tuple[bytes, bytes]]


class FakeUpstream:
    """One upstream connection: frames what the proxy wrote with h11 as a server and, unless
    `scripted`, answers each complete request in the input's answer style."""

    def __init__(self, world: World, protocol: UpstreamConnection, scripted: bool) -> None:
        self.world = world
        self.protocol = protocol
        self.scripted = scripted
        self.name = f"upstream#{len(world.upstreams)}"
        self.transport = FakeTransport(world.loop, protocol, self.name)
        self.transport.on_write = self._received
        self.transport.on_resume = self._deliver
        self.parser = self._new_parser()
        self.requests = 0  # complete requests framed
        self.current: tuple[bytes, bool] | None = None  # (method, upgrade) of the one begun
        self.tunnel = False
        self.error = ""  # what h11 refused
        self.outbox: deque[bytes] = deque()  # reads to deliver to the proxy
        self.close_after = False  # close once the outbox is delivered
        self.delivering = False

    @staticmethod
    def _new_parser() -> h11.Connection:
        return h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_EVENT)

    def _received(self, data: bytes) -> None:
        if self.tunnel or self.error:
            return
        world = self.world
        idle = self.current is None and not self.outbox and not self.parser.trailing_data[0]
        if world.stale and self.requests and idle:
            # A pooled connection the upstream had closed: the request is never read.
            self.world.dropped += 1
            self.transport.ended = "lost"
            self.world.loop.call_soon(self.transport.deliver_lost, None)
            return
        self.parser.receive_data(data)
        self._frame()

    def _frame(self) -> None:
        while not self.error:
            try:
                event = self.parser.next_event()
            except h11.RemoteProtocolError as exc:
                self.error = str(exc) or type(exc).__name__
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                upgrade = any(name == b"upgrade" for name, _ in event.headers)
                self.current = (bytes(event.method), upgrade)
            elif isinstance(event, h11.EndOfMessage):
                leftover = self.parser.trailing_data[0]
                self.parser = self._new_parser()
                self.requests += 1
                assert self.current is not None
                method, upgrade = self.current
                self.current = None
                if not self.scripted:
                    self._answer(method, upgrade)
                if self.tunnel:
                    return
                if leftover:
                    self.parser.receive_data(leftover)

    def _answer(self, method: bytes, upgrade: bool) -> None:
        world = self.world
        number = len(world.forwarded) + 1
        style = world.answer
        head_only = method == b"HEAD"
        body = b"answer %d" % number
        tag = b"X-Fuzz-Answer: %d\r\n" % number
        trailers: list[tuple[bytes, bytes]] = []
        status = 200
        if style == ANSWER_UPGRADE and upgrade:
            status, head_only = 101, True
            data = b"HTTP/1.1 101 Switching Protocols\r\n%bConnection: Upgrade\r\n" % tag
            data += b"Upgrade: fuzz\r\n\r\ntunnel bytes from upstream"
            self.tunnel = True
        elif style in (ANSWER_CHUNKED_TRAILER, ANSWER_UPGRADE):
            trailer = b"X-Checksum: %d\r\n" % number if style == ANSWER_CHUNKED_TRAILER else b""
            if trailer:
                trailers = [(b"x-checksum", b"%d" % number)]
            data = b"HTTP/1.1 200 OK\r\n%bTransfer-Encoding: chunked\r\n\r\n" % tag
            if not head_only:
                data += b"3\r\n%b\r\n%x\r\n%b\r\n0\r\n%b\r\n" % (
                    body[:3],
                    len(body) - 3,
                    body[3:],
                    trailer,
                )
        elif style == ANSWER_CLOSE_DELIMITED:
            data = b"HTTP/1.1 200 OK\r\n%b\r\n" % tag + (b"" if head_only else body)
            self.close_after = True
        elif style == ANSWER_NO_CONTENT:
            status = 304 if number % 2 == 0 else 204
            head_only = True
            extra = b'ETag: "e"\r\n' if status == 304 else b""
            data = b"HTTP/1.1 %d X\r\n%b%b\r\n" % (status, tag, extra)
        elif style == ANSWER_EMPTY:
            body = b""
            data = b"HTTP/1.1 200 OK\r\n%bContent-Length: 0\r\n\r\n" % tag
        else:
            interim = b"HTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\n"
            data = interim if style == ANSWER_INTERIM else b""
            close = b"Connection: close\r\n" if style == ANSWER_LENGTH_CLOSE else b""
            data += b"HTTP/1.1 200 OK\r\n%b%bContent-Length: %d\r\n\r\n" % (tag, close, len(body))
            data += b"" if head_only else body
            self.close_after = style == ANSWER_LENGTH_CLOSE
        world.forwarded.append(
            Forwarded(number, method, upgrade, status, b"" if head_only else body, trailers)
        )
        self.send(data, world.upstream_read)

    def send(self, data: bytes, size: int) -> None:
        """Deliver `data` to the proxy in reads of `size`, one per loop turn."""
        self.outbox.extend(split(data, size))
        if not self.delivering:
            self.delivering = True
            self.world.loop.call_soon(self._deliver)

    def _deliver(self) -> None:
        self.delivering = False
        transport = self.transport
        if transport.ended or self.transport.paused:
            return
        if self.outbox:
            self.protocol.data_received(self.outbox.popleft())
            if self.outbox or self.close_after:
                self.delivering = True
                self.world.loop.call_soon(self._deliver)
            return
        if self.close_after:
            # The upstream closes: EOF, then (eof_received returning falsy) the close.
            self.close_after = False
            keep_open = self.protocol.eof_received()
            if not keep_open:
                transport.ended = "lost"
                transport.deliver_lost(None)

    def partial(self) -> bool:
        """Whether bytes of a request are left unframed (or framing is mid-request)."""
        if self.tunnel or self.error:
            return False
        return self.current is not None or bool(self.parser.trailing_data[0])


class World:
    """The proxy (one client connection, its context and upstream pools) for one input."""

    def __init__(
        self, harness: Harness, answer: int, upstream_read: int, stale: bool, slow: bool
    ) -> None:
        loop = harness.loop
        self.loop = loop
        self.answer = answer
        self.upstream_read = upstream_read
        self.stale = stale
        self.slow = slow
        self.refuse_connects = 0
        self.dropped = 0
        self.upstreams: list[FakeUpstream] = []
        self.forwarded: list[Forwarded] = []
        config = harness.config
        table = RoutingTable(config.routes)
        metrics = Metrics()
        metrics.bind(table)
        upstreams = Upstreams(config.upstream, config.timeouts.connect)
        for route in table.routes.values():
            for pool in route.pools:
                pool.targets = tuple(upstreams.pool(a) for a in pool.endpoints)
        self.upstream_pools = upstreams
        self.ctx = ProxyContext(loop, table, metrics, upstreams, config.timeouts, config.limits)
        self.client = DownstreamConnection(self.ctx)
        self.client_transport = FakeTransport(loop, self.client, "client")
        if slow:
            self.client_transport.on_write = self._client_wrote

    def open_upstream(
        self, factory: Callable[[], Any], scripted: bool = False
    ) -> tuple[FakeTransport, Any]:
        if self.refuse_connects:
            self.refuse_connects -= 1
            raise ConnectionRefusedError("fuzz: connection refused")
        protocol = factory()
        upstream = FakeUpstream(self, protocol, scripted)
        self.upstreams.append(upstream)
        protocol.connection_made(upstream.transport)
        return upstream.transport, protocol

    def _client_wrote(self, data: bytes) -> None:
        self.client.pause_writing()
        self.loop.call_soon(self._resume_client_writing)

    def _resume_client_writing(self) -> None:
        if not self.client_transport.ended:
            self.client.resume_writing()

    def summary(self) -> str:
        """What happened, for a person reading a failure or a replay."""
        transport = self.client_transport
        lines = [f"client: {transport.ended or 'open'}, got {bytes(transport.data)!r}"]
        for upstream in self.upstreams:
            ended = upstream.transport.ended or "open"
            lines.append(
                f"{upstream.name}: {ended}, {upstream.requests} requests framed, "
                f"got {bytes(upstream.transport.data)!r}"
            )
        lines.append(f"answers: {[(f.number, f.method, f.status) for f in self.forwarded]}")
        return "\n".join(lines)

    def close(self) -> None:
        """Cut the references that make this world a cycle."""
        for upstream in self.upstreams:
            upstream.transport.on_write = None
            upstream.transport.on_resume = None
        self.client_transport.on_write = None
        self.client_transport.on_resume = None
        self.upstreams = []


# -- the harness -------------------------------------------------------------------------------


class Harness:
    """One event loop and config for many inputs. Use as a context manager (the loop is
    closed and the proxy's loggers restored on exit)."""

    def __init__(self) -> None:
        self.config: Config = parse_config(CONFIG, "<fuzz>")
        self.loop = FuzzLoop()
        self.notes: Counter[str] = Counter()  # disagreements that are not failures, by kind
        self.last = ""  # World.summary() of the last input
        self._errors = _ErrorLog()
        self._logger = logging.getLogger("pointsman")
        self._saved = (self._logger.level, self._logger.propagate)
        self._logger.addHandler(self._errors)
        # Warnings (bad upstream responses, connect failures) are expected by the thousand.
        self._logger.setLevel(logging.ERROR)
        self._logger.propagate = False

    def __enter__(self) -> Harness:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._logger.removeHandler(self._errors)
        self._logger.setLevel(self._saved[0])
        self._logger.propagate = self._saved[1]
        if not self.loop.is_closed():
            self.loop.close()

    # -- the two paths -----------------------------------------------------------------------

    def request_path(self, data: bytes) -> None:
        """Feed `data` (RequestModes, then the client's stream) through the request path and
        check every invariant; AssertionError names the one broken."""
        modes, stream = RequestModes.parse(data)
        if modes.amplify and stream:
            # Whole reads both ways: the point is one read past FEED_SLICE, and a thousand
            # requests' answers in single bytes would take minutes.
            stream = stream * (AMPLIFY_TO // len(stream) + 1)
            modes = replace(modes, client_read=0, upstream_read=0)
        self._run(self._request_path(modes, stream))

    def response_path(self, data: bytes) -> None:
        """Feed `data` (ResponseModes, then the upstream's bytes) as the answer to a fixed
        request and check every invariant."""
        modes, answer = ResponseModes.parse(data)
        self._run(self._response_path(modes, answer))

    def _run(self, driver: Any) -> None:
        loop = self.loop
        random.seed(0)  # the weighted choice of a pool
        self._errors.records.clear()
        loop.errors.clear()
        task = loop.create_task(driver)
        loop.driver = task
        try:
            loop.run_until_complete(task)
        finally:
            world = loop.world
            loop.end_input()
            if world is not None:
                self.last = world.summary()
                world.close()
        problems = loop.errors + self._errors.records
        if problems:
            raise AssertionError("an exception escaped the proxy:\n" + "\n".join(problems))

    def _world(self, answer: int, upstream_read: int, stale: bool, slow: bool) -> World:
        world = World(self, answer, upstream_read, stale, slow)
        self.loop.world = world
        world.client.connection_made(world.client_transport)
        return world

    async def _settle(self) -> None:
        """Run the loop until nothing is ready (only timers left)."""
        loop = self.loop
        for _ in range(MAX_LOOP_TURNS):
            await asyncio.sleep(0)
            if not loop.busy():
                return
        raise AssertionError(f"the proxy never went quiet ({MAX_LOOP_TURNS} loop turns)")

    async def _finish(self, world: World, reads: deque[bytes], vanish: bool, eager: bool) -> None:
        """Deliver the client's reads (honouring pause_reading), then EOF or a vanished client,
        then jump the clock from timer to timer until the proxy has closed the connection."""
        client, transport = world.client, world.client_transport
        eof_sent = False
        jumps = 0

        def deliver() -> None:
            while reads and not transport.paused and not transport.ended:
                client.data_received(reads.popleft())
                if not eager:
                    return

        if eager:
            transport.on_resume = deliver
        for _ in range(len(reads) + MAX_STEPS):
            await self._settle()
            if transport.lost:
                return
            if transport.ended:
                continue  # connection_lost is on its way
            if reads and not transport.paused:
                deliver()
                continue
            if not reads and not eof_sent and not transport.paused:
                eof_sent = True
                if vanish:
                    transport.ended = "lost"
                    transport.deliver_lost(ConnectionResetError("fuzz: the client vanished"))
                elif not client.eof_received():
                    transport.close()
                continue
            if jumps < MAX_TIMER_JUMPS and self.loop.jump_to_next_timer():
                jumps += 1
                continue
            break
        state = "paused" if transport.paused else "reading"
        raise AssertionError(
            f"the client connection was neither answered to the end nor closed ({state}, "
            f"{len(reads)} reads undelivered, EOF {'sent' if eof_sent else 'not sent'}, "
            f"{jumps} timer jumps): {client!r}"
        )

    async def _request_path(self, modes: RequestModes, stream: bytes) -> None:
        world = self._world(modes.answer, modes.upstream_read, modes.stale, modes.slow_client)
        world.refuse_connects = 1 if modes.refuse_first_connect else 0
        reads = deque(split(stream, modes.client_read))
        await self._finish(world, reads, modes.vanish, modes.eager)
        self._check_upstreams(world)
        if modes.vanish:
            return  # the client is gone: nothing it got is owed to it
        self._check_request_path_client(world, stream)

    async def _response_path(self, modes: ResponseModes, answer: bytes) -> None:
        world = self._world(ANSWER_LENGTH, 0, False, modes.slow_client)
        sent, method, upgrade, http10 = FIXED_REQUESTS[modes.request]
        # The rule sends it to the one endpoint of pool green, where one pooled connection
        # waits: the request takes it, and its answer is the input.
        sent = sent.replace(b"\r\n", b"\r\nX-Canary: always\r\n", 1)
        [pool] = [p for p in world.ctx.table.routes["shop"].pools if p.name == "green"]
        target = pool.targets[0]
        _, protocol = world.open_upstream(lambda: UpstreamConnection(target), scripted=True)
        target.idle.append(protocol)
        scripted = world.upstreams[0]
        world.client.data_received(sent)
        await self._settle()
        if scripted.requests and not scripted.transport.ended:
            scripted.close_after = not modes.keep_open
            scripted.send(answer, modes.upstream_read)
        await self._finish(world, deque(), vanish=False, eager=False)
        self._check_upstreams(world)
        self._check_response_path_client(world, scripted, answer, method, upgrade, http10, modes)

    # -- invariants ----------------------------------------------------------------------------

    def _check_upstreams(self, world: World) -> None:
        """Invariant 3, upstream side: every upstream frames what it got as requests."""
        for upstream in world.upstreams:
            transport = upstream.transport
            assert not upstream.error, (
                f"h11 refused what the proxy forwarded ({upstream.error}): "
                f"{bytes(transport.data)!r}"
            )
            assert not transport.late_writes, f"{transport.late_writes} writes after close"
            if upstream.partial():
                assert transport.ended == "abort", (
                    f"a partial request left on an upstream connection "
                    f"({transport.ended or 'still open'}): {bytes(transport.data)!r}"
                )
        assert not world.client_transport.late_writes, "writes to the client after close"

    def _read_client(
        self, world: World, method_of: Callable[[int, Framed, bytes], tuple[bytes, bool]]
    ) -> tuple[list[Framed], bool]:
        """Frame what the client got, response by response (`method_of(index, head, rest)`
        names the request each answers: its method, and whether it asked for an upgrade);
        (responses, whether the last one was cut by an abort)."""
        transport = world.client_transport
        data = bytes(transport.data)
        aborted = transport.ended == "abort"
        eof = not aborted
        responses: list[Framed] = []
        while data:
            # A first look without the method decides which request this answers.
            peek = frame_response(data, b"GET", True, eof)
            method, upgrade = method_of(len(responses), peek, data)
            framed = frame_response(data, framing_method(method), upgrade, eof)
            if framed.outcome == "error" and not upgrade and peek.status == 101:
                framed = frame_response(data, framing_method(method), True, eof)
            responses.append(framed)
            if framed.outcome == "error":
                raise AssertionError(
                    f"h11 refused what the proxy sent the client ({framed.error}), response "
                    f"{len(responses)} to a {method!r}: {bytes(transport.data)!r}"
                )
            if framed.outcome in ("incomplete", "none"):
                assert aborted, (
                    f"the client's connection ended inside response {len(responses)} without "
                    f"an abort ({transport.ended or 'still open'}): {bytes(transport.data)!r}"
                )
                return responses, True
            if framed.outcome == "switched":
                return responses, False
            data = framed.rest
            if data and framed.must_close:
                raise AssertionError(
                    f"bytes after a response that closes the connection: {data!r} "
                    f"in {bytes(transport.data)!r}"
                )
        return responses, False

    def _check_request_path_client(self, world: World, stream: bytes) -> None:
        """Invariants 2 and 3: complete responses to the client, one per request, and every
        forwarded request's answer relayed once, in order."""
        transport = world.client_transport
        assert transport.ended, "the client connection is still open"
        meant = split_client_stream(stream)
        forwarded = world.forwarded

        def method_of(index: int, head: Framed, rest: bytes) -> tuple[bytes, bool]:
            tag = head.get(b"x-fuzz-answer")
            if tag and tag[0].isdigit() and 0 < int(tag[0]) <= len(forwarded):
                answer = forwarded[int(tag[0]) - 1]
                if index < len(meant) and meant[index].method != answer.method:
                    self.notes["h11 split the client's stream otherwise than the proxy"] += 1
                return answer.method, answer.upgrade
            # The proxy's own answer: a JSON body unless it read a HEAD.
            end = rest.find(b"\r\n\r\n")
            body_follows = rest[end + 4 : end + 13] == b'{"error":'
            if index < len(meant) and meant[index].parsed:
                method = meant[index].method
                if method == b"HEAD" and body_follows:
                    # llhttp refused it before its head was read (h11 took it): the proxy
                    # cannot know it was a HEAD, and closes after the answer anyway.
                    self.notes["a HEAD refused before its head was read got a body"] += 1
                    return b"GET", meant[index].upgrade
                return method, meant[index].upgrade
            if index >= len(meant):
                self.notes["a response past the requests h11 could split"] += 1
            return (b"GET" if body_follows else b"HEAD"), False

        responses, cut = self._read_client(world, method_of)
        relayed = [r for r in responses if r.get(b"x-fuzz-answer")]
        numbers = [int(r.get(b"x-fuzz-answer")[0]) for r in relayed]
        expected = list(range(1, len(numbers) + 1))
        assert numbers == expected, f"answers relayed out of order or twice: {numbers}"
        missing = len(forwarded) - len(numbers)
        allowed = 1 if cut or transport.ended == "abort" else 0
        assert 0 <= missing <= allowed, (
            f"{len(forwarded)} requests forwarded and answered upstream, {len(numbers)} answers "
            f"relayed to the client (connection {transport.ended})"
        )
        for framed in relayed:
            answer = forwarded[int(framed.get(b"x-fuzz-answer")[0]) - 1]
            if framed.outcome == "incomplete":
                continue
            assert framed.status == answer.status, (framed.status, answer)
            if framed.outcome == "complete":
                assert framed.body == answer.body, (framed.body, answer)
                if framed.get(b"transfer-encoding"):
                    assert framed.trailers == answer.trailers, (framed.trailers, answer)

    def _check_response_path_client(
        self,
        world: World,
        scripted: FakeUpstream,
        answer: bytes,
        method: bytes,
        upgrade: bool,
        http10: bool,
        modes: ResponseModes,
    ) -> None:
        """Invariants 2 and 4 for the fixed request: one response, complete unless aborted,
        and a relayed one equal to what h11 frames from the upstream's bytes."""
        transport = world.client_transport
        assert transport.ended, "the client connection is still open"
        assert scripted.requests == 1 or scripted.transport.ended == "abort", (
            f"the fixed request was not forwarded whole: {bytes(scripted.transport.data)!r}"
        )
        responses, _ = self._read_client(world, lambda index, head, rest: (method, upgrade))
        assert len(responses) <= 1, f"{len(responses)} responses to one request"
        if not responses:
            assert transport.ended == "abort" or len(world.upstreams) > 1, (
                "no response and no abort"
            )
            return
        [got] = responses
        relayed = any(value.endswith(b"pointsman") for value in got.get(b"via"))
        if got.status == 101:
            relayed = True
        if len(world.upstreams) > 1 or not relayed:
            return  # a retry on a fresh connection answered, or the proxy's own answer
        eof = not modes.keep_open
        sent = frame_response(answer, framing_method(method), upgrade, eof)
        if got.outcome == "incomplete":
            return  # a cut response: the client sees the failure
        if sent.outcome not in ("complete", "switched"):
            if sent.outcome == "error":
                self.notes["relayed a response h11 refuses: " + sent.error] += 1
                return
            raise AssertionError(
                f"relayed a complete response where h11 sees it {sent.outcome}: "
                f"upstream sent {answer!r}, client got {bytes(transport.data)!r}"
            )
        assert got.status == sent.status, (got.status, sent.status)
        if sent.outcome == "switched":
            return
        assert got.body == sent.body, (
            f"relayed body {got.body!r} but h11 frames {sent.body!r} from {answer!r}"
        )
        if http10:
            assert not got.get(b"transfer-encoding"), "chunked to an HTTP/1.0 client"
        if got.get(b"transfer-encoding"):
            kept = [(name, value) for name, value in sent.trailers if forwarded_trailer(name)]
            assert got.trailers == kept, (got.trailers, sent.trailers)


# -- for the fuzzer: one harness per process ------------------------------------------------------

_harness: Harness | None = None


def shared() -> Harness:
    global _harness
    if _harness is None:
        _harness = Harness()
    return _harness


def check_request_path(data: bytes) -> None:
    shared().request_path(data)


def check_response_path(data: bytes) -> None:
    shared().response_path(data)


CHECKS: dict[str, Callable[[bytes], None]] = {
    "request": check_request_path,
    "response": check_response_path,
}
