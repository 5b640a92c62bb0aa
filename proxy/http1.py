"""Downstream HTTP/1.1 connection: an asyncio protocol driving the httptools request parser.

One DownstreamConnection serves one client connection. Requests are proxied one at a time in
arrival order (pipelined requests wait in `pending`, with reading paused), each streamed to an
upstream connection taken from the endpoint's keep-alive pool. Bodies flow both ways chunk by
chunk under backpressure; nothing is buffered whole.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import ssl
import struct
from collections import deque
from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING, Final, cast

import httptools
import orjson

from proxy.access_log import AccessLog, Entry
from proxy.request import Reject, Request, split_absolute_form
from proxy.shadow_records import PrimaryCapture
from proxy.upstream import (
    NO_BODY_STATUSES,
    STANDARD_CONNECTION_TOKENS,
    EndpointPool,
    UpstreamConnection,
    WriteBatch,
    add_trailer,
    canonical_length,
    last_chunk,
    usual_spellings,
    without_named,
)

if TYPE_CHECKING:
    from proxy.config import Limits, Timeouts
    from proxy.metrics import Metrics
    from proxy.router import Pool, Route, RoutingTable
    from proxy.shadow import Exchange
    from proxy.upstream import Upstreams

log = logging.getLogger("pointsman.http1")
_random: Final = random.random
_H: Final = ord("H")

# Client write buffer high-water mark: above it the upstream is no longer read (backpressure).
DOWNSTREAM_WRITE_HIGH: Final = 256 * 1024
_LINGER_RESET: Final = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close sends RST
# What a connection over limits.max_connections gets before it is closed.
_LIMIT_BODY: Final = b'{"error": "too many connections", "status": 503}\n'
CONNECTION_LIMIT_RESPONSE: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
    % len(_LIMIT_BODY)
    + _LIMIT_BODY
)
# Request body bytes held while no upstream connection is attached yet (connecting, or a pipelined
# request waiting its turn); above it the client is no longer read.
PENDING_BODY_LIMIT: Final = 256 * 1024
# Pipelined requests parsed ahead of the one in flight. Reading pauses as soon as one is
# queued; past this many, the rest of a read waits unparsed (see FEED_SLICE).
MAX_PIPELINED: Final = 32
# Reads longer than this are parsed in slices of this size, checking the pipeline queue between
# slices: bounds the requests one read can queue to what a slice holds.
FEED_SLICE: Final = 16 * 1024

# Why reading from the client is paused (bit flags; reading resumes when none is left).
PAUSE_UPSTREAM_FULL: Final = 1  # upstream write buffer above its high-water mark
PAUSE_PIPELINE: Final = 2  # a request is queued behind the one in flight
PAUSE_BUFFERED: Final = 4  # body bytes held for a request with no upstream yet
PAUSE_ERROR: Final = (
    8  # a pipelined request was malformed; answer it after the ones ahead, then close
)

# Response framing towards the client.
MODE_NONE: Final = 0  # no body (HEAD, 204, 304)
MODE_LENGTH: Final = 1  # Content-Length from upstream, bytes passed through
MODE_CHUNKED: Final = 2  # re-chunked (upstream chunked or close-delimited; client speaks HTTP/1.1)
MODE_CLOSE: Final = 3  # close-delimited (HTTP/1.0 client without a length)

# Request headers the proxy looks at; codes for on_header's dispatch. Codes below _COPIED are
# hop-by-hop or rewritten by the proxy, so they are not copied through as they came.
_H_DROP: Final = 0
_H_TE: Final = 1
_H_CONNECTION: Final = 2
_H_EXPECT: Final = 3
_H_UPGRADE: Final = 4
_H_XFF: Final = 5
_H_VIA: Final = 6
_COPIED: Final = 10
_H_HOST: Final = 10
_H_CONTENT_LENGTH: Final = 11
_H_COOKIE: Final = 12
_H_REQUEST_ID: Final = 13
_REQUEST_HEADER_CODES: Final = {
    b"keep-alive": _H_DROP,
    b"proxy-connection": _H_DROP,
    b"te": _H_DROP,
    b"trailer": _H_DROP,
    b"x-forwarded-proto": _H_DROP,
    b"x-forwarded-host": _H_DROP,
    b"transfer-encoding": _H_TE,
    b"connection": _H_CONNECTION,
    b"expect": _H_EXPECT,
    b"upgrade": _H_UPGRADE,
    b"x-forwarded-for": _H_XFF,
    b"via": _H_VIA,
    b"host": _H_HOST,
    b"content-length": _H_CONTENT_LENGTH,
    b"cookie": _H_COOKIE,
    b"x-request-id": _H_REQUEST_ID,
}
# Other request headers clients commonly send (see request_spellings).
_COMMON_REQUEST_HEADERS: Final = (
    b"accept", b"accept-encoding", b"accept-language", b"authorization", b"cache-control",
    b"content-type", b"if-modified-since", b"if-none-match", b"origin", b"pragma", b"referer",
    b"user-agent",
)  # fmt: skip


def request_spellings(wanted: frozenset[bytes]) -> dict[bytes, bytes]:
    """Request header name as clients usually spell it -> lower-cased (see usual_spellings;
    the lower-cased name on_header gets here also has its hash cached for the lookups that
    follow)."""
    return {
        spelling: lname
        for lname in [*_REQUEST_HEADER_CODES, *_COMMON_REQUEST_HEADERS, *sorted(wanted)]
        for spelling in usual_spellings(lname)
    }


VIA: Final = b"1.1 pointsman"
VIA_LINE_END: Final = b"Via: 1.1 pointsman\r\n\r\n"  # the end of a response head, as one constant
REASONS: Final = {
    400: b"Bad Request",
    404: b"Not Found",
    408: b"Request Timeout",
    413: b"Content Too Large",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}


class DownstreamConnection:
    """An asyncio protocol (by its methods, not by inheritance: a plain class compiles to a
    mypyc native class, whose attribute access is a C struct field)."""

    __slots__ = (
        "activity",
        "backlog",
        "body_at",
        "capture",
        "closed",
        "connect_task",
        "ctx",
        "current",
        "deferred_error",
        "draining",
        "first_of_read",
        "forwarded_lines",
        "fresh",
        "head_end",
        "head_end_host",
        "idle_since",
        "loop",
        "out",
        "parser",
        "parsing",
        "paused_at",
        "paused_by",
        "peer",
        "peer_text",
        "pending",
        "pool",
        "reading",
        "request_sent",
        "resp_bytes",
        "resp_close",
        "resp_flushed",
        "resp_mode",
        "resp_started",
        "resp_status",
        "retried",
        "reused",
        "route",
        "starting",
        "target",
        "timer",
        "timer_at",
        "tls",
        "transport",
        "tunnel",
        "upgrading",
        "upstream",
        "upstream_at",
        "upstream_head",
        "writes",
        "writing_paused",
    )

    def __init__(self, ctx: ProxyContext, tls: bool = False) -> None:
        self.ctx = ctx
        self.tls = tls  # the connection came through a TLS listener
        self.loop = ctx.loop
        self.writes = ctx.writes  # every write goes through it, in order (see WriteBatch)
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer = b""
        self.peer_text = ""  # the client's address as text, for the access log
        self.forwarded_lines = b""  # X-Forwarded-For/-Proto for requests that bring none
        self.head_end_host = b""  # the Host of the last common-case request, and
        self.head_end = b""  # the end of its upstream head (see _build_upstream_head)
        self.parsing: Request | None = None
        self.current: Request | None = None
        self.starting: Request | None = None  # head parsed; forwarded once the read is parsed
        self.pending: deque[Request] = deque()
        self.backlog = b""  # bytes read but not yet parsed: the pipeline queue was full
        self.upstream: UpstreamConnection | None = None
        self.connect_task: asyncio.Task[None] | None = None
        self.route: Route | None = None
        self.pool: Pool | None = None
        self.upstream_head = b""
        self.out: list[bytes] = []
        self.paused_by = 0
        self.writing_paused = False
        self.closed = False
        self.draining = False
        self.tunnel = False
        self.upgrading = False  # an Upgrade request is out; its later bytes wait for the 101
        self.deferred_error: Reject | None = None
        self.reading = b""  # the read being parsed, for the request-line check
        self.first_of_read = False  # the message being parsed began this read
        self.capture: PrimaryCapture | None = None  # the response of a mirrored request
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0
        self.idle_since = 0.0
        self.fresh = True  # no request has begun yet: header_read, not idle, bounds the wait
        self.activity = 0.0
        self.body_at = 0.0  # loop time of the last request-body bytes (timeouts.body_read)
        self.paused_at = 0.0  # loop time writing to the client paused (timeouts.client_write)
        # For the access log: the endpoint of the exchange, when its request went out (loop
        # time), and the response bytes written so far.
        self.target: EndpointPool | None = None
        self.upstream_at = 0.0
        self.resp_bytes = 0
        self._reset_exchange()

    def _reset_exchange(self) -> None:
        self.resp_started = False
        self.resp_flushed = False  # a byte of the final response head reached the client
        self.resp_mode = MODE_NONE
        self.resp_close = False
        self.resp_status = 0
        self.request_sent = False
        self.retried = False
        self.reused = False

    def __repr__(self) -> str:
        if self.closed:
            state = "closed"
        elif self.tunnel:
            state = "tunnel"
        elif self.current is not None:
            state = "busy"
        else:
            state = "idle"
        return (
            f"<DownstreamConnection {self.peer.decode()} {state} pending={len(self.pending)}"
            f" paused_by={self.paused_by}>"
        )

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its interface.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=DOWNSTREAM_WRITE_HIGH)
        ctx = self.ctx
        limit = ctx.max_connections
        if limit and len(ctx.connections) >= limit:
            # Over limits.max_connections: answered and closed at once, never read from, so
            # it holds no buffer, timer or upstream connection.
            transport.pause_reading()
            self.closed = True
            self.writes.write(transport, CONNECTION_LIMIT_RESPONSE)
            self.writes.close(transport)
            ctx.metrics.reject("connection_limit")
            return
        peer = transport.get_extra_info("peername")
        self.peer_text = str(peer[0]) if peer else "unknown"
        self.peer = self.peer_text.encode()
        self.forwarded_lines = b"X-Forwarded-For: %b\r\nX-Forwarded-Proto: %b\r\n" % (
            self.peer,
            b"https" if self.tls else b"http",
        )
        self.ctx.connections.add(self)
        now = self.loop.time()
        self.idle_since = now
        # A fresh connection must send its first request head within header_read.
        self._arm(now + self.ctx.header_read_timeout)
        if self.ctx.draining:
            self.draining = True

    def data_received(self, data: bytes) -> None:
        if self.tunnel:
            self._tunnel_to_upstream(data)
            return
        if len(data) > FEED_SLICE:
            self._feed_in_slices(data)
            return
        # Between messages, a read begins with a request line: on_headers_complete checks
        # its protocol token in place (see _not_http).
        self.reading = data
        self.first_of_read = self.parsing is None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._upgrade_requested(data[upgrade.args[0] :])
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, Reject):
                self._reject(cause)
            else:
                log.error("internal error handling a request", exc_info=cause or exc)
                self._reject(Reject(500, "internal error", "internal_error"))
            return
        except httptools.HttpParserError as exc:
            self._reject(Reject(400, f"malformed request: {exc}", "malformed"))
            return
        # Forward only once everything this read carried has parsed: a bad chunk after the
        # head in the same read must reject the request before any byte of it goes upstream.
        self.reading = b""
        req = self.starting
        if req is not None:
            self.starting = None
            self._start(req)

    def _not_http(self, reading: bytes) -> bool:
        """Whether the request line `reading` begins with ends in a protocol other than HTTP/
        (llhttp also takes RTSP/ and ICE/, and reports only the version number)."""
        reading = reading.lstrip(b"\r\n")  # llhttp skips empty lines before a request
        line_end = reading.find(b"\n")
        if line_end == -1:
            return False
        space = reading.rfind(b" ", 0, line_end)
        return space != -1 and not reading.startswith(b"HTTP/", space + 1)

    def _feed_in_slices(self, data: bytes) -> None:
        """Parse a large read in slices, so a burst of pipelined requests stops being parsed
        once MAX_PIPELINED wait; the rest is kept unparsed until the queue drains."""
        for start in range(0, len(data), FEED_SLICE):
            if self.paused_by & PAUSE_ERROR:
                return  # refused: nothing after a framing error is parsed or trusted
            if self.upgrading and self.current is not None:
                self.current.hold(data[start:])  # the new protocol's bytes, for the tunnel
                return
            if len(self.pending) >= MAX_PIPELINED or self.closed:
                self.backlog = data[start:]
                self._pause(PAUSE_PIPELINE)
                return
            self.data_received(data[start : start + FEED_SLICE])

    def eof_received(self) -> bool | None:
        # A half-closed client may still be waiting for the response in flight: answer it,
        # then close.
        if self.current is None:
            self.close()
        self.draining = True
        # TLS has no half-close: the transport closes whatever this returns (and warns
        # about a True).
        return None if self.tls else True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        ctx = self.ctx
        ctx.connections.discard(self)
        if ctx.draining and not ctx.connections:
            ctx.drained.set()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.connect_task is not None:
            self.connect_task.cancel()
            self.connect_task = None
        req = self.current
        if req is not None and not self.tunnel and self.upstream is not None:
            self._log_if_sampled(req, 499)  # as nginx: the client went before its answer
        if req is not None and req.mirrors is not None:
            self._end_mirrors(req, 0)
        if self.upstream is not None:
            if self.current is not None and not self.tunnel:
                self.ctx.metrics.reject("client_closed")
            self._drop_upstream()

    def pause_writing(self) -> None:
        self.writing_paused = True
        now = self.paused_at = self.loop.time()
        self._arm(now + self.ctx.client_write_timeout)
        upstream = self.upstream
        if upstream is not None:
            upstream.pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        upstream = self.upstream
        if upstream is not None:
            upstream.resume_reading()

    # -- flow control ----------------------------------------------------------------------

    def _pause(self, reason: int) -> None:
        if not self.paused_by and self.transport is not None:
            self.transport.pause_reading()
        self.paused_by |= reason

    def _resume(self, reason: int) -> None:
        if self.paused_by & reason:
            self.paused_by &= ~reason
            if not self.paused_by and self.transport is not None and not self.closed:
                self.transport.resume_reading()

    def upstream_pause_writing(self) -> None:
        self._pause(PAUSE_UPSTREAM_FULL)

    def upstream_resume_writing(self) -> None:
        self._resume(PAUSE_UPSTREAM_FULL)

    # -- timers: one lazy timer per connection ---------------------------------------------

    def _arm(self, deadline: float) -> None:
        """Make sure the timer fires no later than `deadline`; _tick works out what is due."""
        timer = self.timer
        if timer is not None:
            if self.timer_at <= deadline:
                return
            timer.cancel()
        self.timer_at = deadline
        self.timer = self.loop.call_at(deadline, self._tick)

    def _tick(self) -> None:
        self.timer = None
        if self.closed:
            return
        now = self.loop.time()
        timeouts = self.ctx.timeouts
        if self.writing_paused:
            # The client has read nothing of what is queued for it for client_write: a slow
            # reader holding a response (and its upstream connection) open. Cut off.
            write_deadline = self.paused_at + timeouts.client_write
            if now >= write_deadline:
                self._write_timed_out()
                return
            self._arm(write_deadline)
        if self.tunnel:
            deadline = self.activity + timeouts.idle
            if now >= deadline:
                self.close()
                return
        elif self.current is not None:
            deadline = self.activity + timeouts.upstream
            req = self.current
            if not req.complete:
                body_deadline = max(self.body_at, req.begun) + timeouts.body_read
                if now >= body_deadline:
                    self._body_timed_out()
                    return
                deadline = min(deadline, body_deadline)
            if now >= deadline:
                self._upstream_timed_out()
                return
        elif self.parsing is not None:
            deadline = self.parsing.begun + timeouts.header_read
            if now >= deadline:
                self._reject(Reject(408, "request head not received in time", "header_timeout"))
                return
        else:
            # As nginx: a new connection gets header_read for its first byte, a kept-alive
            # one idle (a connect-and-wait flood is shed as fast as a slowloris).
            wait = timeouts.header_read if self.fresh else timeouts.idle
            deadline = self.idle_since + wait
            if now >= deadline:
                self.close()
                return
        self._arm(deadline)

    # -- httptools callbacks (request side) ------------------------------------------------

    def on_message_begin(self) -> None:
        now = self.loop.time()
        self.parsing = Request(now)
        self.fresh = False
        if self.current is None:
            deadline = now + self.ctx.header_read_timeout
            if self.timer is None or self.timer_at > deadline:
                self._arm(deadline)

    def on_url(self, url: bytes) -> None:
        req = self.parsing
        assert req is not None
        req.url += url
        req.head_size += len(url)
        if req.head_size > self.ctx.max_header_bytes:
            raise Reject(431, "request head too large", "header_too_large")

    def on_header(self, name: bytes, value: bytes) -> None:
        req = self.parsing
        assert req is not None
        size = req.head_size + len(name) + len(value) + 4
        req.head_size = size
        ctx = self.ctx
        if size > ctx.max_header_bytes:
            raise Reject(431, "request head too large", "header_too_large")
        if req.chunked:
            # Set when the head completed: llhttp reports the trailer section through this
            # same callback. Trailers stay trailers (RFC 9110 6.5.1): never part of the head.
            req.trailers = add_trailer(req.trailers, name, value)
            return
        lname = ctx.request_names.get(name)
        if lname is None:
            lname = name.lower()
        if lname in ctx.wanted_headers:
            if not req.wanted:
                req.wanted = {lname: value}
            elif lname not in req.wanted:
                req.wanted[lname] = value
        code = _REQUEST_HEADER_CODES.get(lname)
        if code is None or code >= _COPIED:
            if code == _H_HOST:
                if req.host:
                    raise Reject(400, "more than one Host header", "bad_host")
                if not value:
                    # An empty Host would hide a second one from the check above.
                    raise Reject(400, "empty Host header", "bad_host")
                req.host = value
            elif code == _H_CONTENT_LENGTH:
                value = req.content_length = canonical_length(value)
            elif code == _H_COOKIE:
                req.cookie = value if req.cookie is None else req.cookie + b"; " + value
            elif code == _H_REQUEST_ID:
                req.request_id = value
            req.lines.append(name + b": " + value + b"\r\n")
        elif code == _H_TE:
            if req.te is not None:
                raise Reject(400, "more than one Transfer-Encoding", "ambiguous_framing")
            req.te = value
        elif code == _H_CONNECTION:
            tokens = [t.strip().lower() for t in value.split(b",") if t.strip()]
            if req.connection_tokens is None:
                req.connection_tokens = tokens
            else:
                req.connection_tokens.extend(tokens)
        elif code == _H_EXPECT:
            if value.strip().lower() == b"100-continue":
                req.expect_continue = True
            else:
                req.lines.append(name + b": " + value + b"\r\n")
        elif code == _H_UPGRADE:
            req.upgrade_value = value
        elif code == _H_XFF:
            req.forwarded_for = (
                value if req.forwarded_for is None else req.forwarded_for + b", " + value
            )
        elif code == _H_VIA:
            req.via = value if req.via is None else req.via + b", " + value

    def on_headers_complete(self) -> None:
        req = self.parsing
        assert req is not None
        req.started = perf_counter()
        parser = self.parser
        method = req.method = parser.get_method()
        if self.first_of_read:
            # Where "HTTP/" starts if the line is "METHOD SP target SP HTTP/x.y": one byte
            # checked per read; only a miss (another protocol, or leading empty lines) looks
            # at the whole line.
            self.first_of_read = False
            reading = self.reading
            at = len(method) + len(req.url) + 2
            if at < len(reading) and reading[at] != _H and self._not_http(reading):
                raise Reject(400, "not an HTTP/1.x request", "malformed")
        keep_alive = req.keep_alive = parser.should_keep_alive()
        if keep_alive and req.connection_tokens is None:
            # llhttp takes HTTP/0.9, 1.0, 1.1 and 2.0, and only 1.1 stays alive with no
            # "Connection: keep-alive" (tests/test_http1.py pins this): the version is known
            # without get_http_version(), which formats a new string on every call (3 % of
            # a proxied request's instructions).
            version = req.version = "1.1"
        else:
            version = req.version = parser.get_http_version()
            if version != "1.0" and version != "1.1":
                # llhttp also takes HTTP/0.9 (a request line without a version) and 2.0; a
                # proxy that forwarded those as 1.1 would make up a message the client never
                # sent (HAProxy and Envoy refuse both too).
                if version == "2.0":
                    raise Reject(505, "HTTP/2.0 is not spoken here", "unsupported")
                raise Reject(400, f"HTTP/{version} request refused", "malformed")
        if req.upgrade_value and parser.should_upgrade():
            req.upgrade = True
        if req.te is not None:
            # Only a lone, plain "chunked" is understood; anything else (xchunked, gzip, a
            # list) could be read differently by the next hop: refuse rather than forward.
            if req.te.strip().lower() != b"chunked":
                raise Reject(400, "unsupported Transfer-Encoding", "ambiguous_framing")
            if req.content_length is not None:
                raise Reject(400, "both Content-Length and Transfer-Encoding", "ambiguous_framing")
            req.chunked = True
        if req.content_length is not None:
            max_body = self.ctx.max_body_bytes
            if max_body and int(req.content_length) > max_body:
                raise Reject(413, "request body too large", "body_too_large")
        if not req.host and version == "1.1":
            raise Reject(400, "HTTP/1.1 request without Host", "bad_host")
        if req.upgrade and req.has_body():
            # llhttp hands every byte after an Upgrade head to the new protocol, so the body
            # cannot be told from the tunnel's first bytes.
            raise Reject(400, "Upgrade request with a body", "ambiguous_framing")
        if self.current is None and self.deferred_error is None:
            self.current = req
            self.starting = req
        else:
            self.pending.append(req)
            self._pause(PAUSE_PIPELINE)

    def on_body(self, body: bytes) -> None:
        req = self.parsing
        assert req is not None
        self.body_at = self.loop.time()
        req.body_size += len(body)
        max_body = self.ctx.max_body_bytes
        if max_body and req.body_size > max_body:
            raise Reject(413, "request body too large", "body_too_large")
        if req.mirrors is not None:
            for exchange in req.mirrors:
                exchange.tee(body)
        upstream = self.upstream
        if upstream is not None and req is self.current and upstream.transport is not None:
            self.activity = self.loop.time()
            if req.chunked:
                self.writes.write(upstream.transport, b"%x\r\n%b\r\n" % (len(body), body))
            else:
                self.writes.write(upstream.transport, body)
        else:
            req.hold(body)
            if req.body_size > PENDING_BODY_LIMIT:
                self._pause(PAUSE_BUFFERED)

    def on_message_complete(self) -> None:
        req = self.parsing
        assert req is not None
        req.complete = True
        self.parsing = None
        if req.mirrors is not None:
            for exchange in req.mirrors:
                exchange.request_complete()
        upstream = self.upstream
        if upstream is not None and req is self.current and upstream.transport is not None:
            if req.chunked:
                self.writes.write(upstream.transport, last_chunk(req.trailers))
            self.request_sent = True

    # -- proxying one request --------------------------------------------------------------

    def _start(self, req: Request) -> None:
        ctx = self.ctx
        url = req.url
        if url[:1] == b"/":
            path = url
        elif url == b"*":
            path = b"*"
        elif req.method == b"CONNECT":
            ctx.metrics.reject("unsupported")
            self._local_response(501, "CONNECT is not supported", close=True)
            return
        else:
            # absolute-form (RFC 9112 3.2.2): its authority replaces any Host header (3.2.2:
            # a Host the client sent is ignored), and the origin-form goes upstream.
            split = split_absolute_form(url)
            if isinstance(split, str):
                ctx.metrics.reject("malformed")
                self._local_response(400, split, close=True)
                return
            req.host, path = split
            req.url = path
            req.lines = [line for line in req.lines if line[:5].lower() != b"host:"]
            req.lines.append(b"Host: " + req.host + b"\r\n")
        query = path.find(b"?")
        route = ctx.table.match(req.host, path if query == -1 else path[:query])
        if route is None:
            ctx.metrics.unrouted += 1
            self._local_response(404, "no route matches this host and path")
            return
        pool = route.choose(req.wanted, req.cookie, _random())
        self.route = route
        self.pool = pool
        if pool is None:
            self._local_response(503, "no pool of this route takes traffic")
            return
        self.upstream_head = self._build_upstream_head(req)
        if route.mirrors and not req.upgrade:
            self._mirror(req, route, pool)
        if req.expect_continue and not req.complete and req.version == "1.1":
            assert self.transport is not None
            self.writes.write(self.transport, b"HTTP/1.1 100 Continue\r\n\r\n")
        targets = pool.targets
        index = pool.rr
        pool.rr = index + 1
        count = len(targets)
        target = targets[index % count]
        if not target.healthy:
            for step in range(1, count):
                if targets[(index + step) % count].healthy:
                    target = targets[(index + step) % count]
                    break
            else:
                self._local_response(503, "no healthy endpoint in this pool")
                return
        conn = target.acquire()
        if conn is not None:
            self._attach(conn, reused=True)
        else:
            self._connect_new(target)

    def _mirror(self, req: Request, route: Route, pool: Pool) -> None:
        """Ask each shadow of the route whether it mirrors this request; hand the body read so
        far to those that do."""
        request_id = req.request_id
        assert request_id is not None  # set by _build_upstream_head
        mirrors: list[Exchange] | None = None  # allocated only when one is started
        for shadow in route.mirrors:
            exchange = shadow.begin(
                pool.name, req.method, request_id, self.upstream_head, req.content_length
            )
            if exchange is not None:
                exchange.chunked = req.chunked
                if mirrors is None:
                    mirrors = [exchange]
                else:
                    mirrors.append(exchange)
        if mirrors is None:
            return
        req.mirrors = mirrors
        for exchange in mirrors:
            for chunk in req.body or ():
                exchange.tee(chunk)
            if req.complete:
                exchange.request_complete()

    def _end_mirrors(self, req: Request, status: int) -> None:
        """The primary exchange is over: give its capture to the mirrors (None: it failed)."""
        mirrors = req.mirrors
        assert mirrors is not None
        req.mirrors = None
        capture = self.capture
        self.capture = None
        latency = perf_counter() - req.started
        for exchange in mirrors:
            if capture is None or status == 0:
                exchange.primary_failed()
            else:
                exchange.primary_done(capture, latency)

    def _build_upstream_head(self, req: Request) -> bytes:
        host = req.host
        lines = req.lines
        tokens = req.connection_tokens
        if tokens and not STANDARD_CONNECTION_TOKENS.issuperset(tokens):
            lines = without_named(lines, tokens)
        # One join of the pieces: cheaper than %-formatting, which parses its format each time.
        parts = [req.method, b" ", req.url, b" HTTP/1.1\r\n", *lines]
        if not host:
            host = self.ctx.host_fallback
            parts += (b"Host: ", host, b"\r\n")
        if req.request_id is None:
            request_id = req.request_id = self.ctx.next_request_id()
            parts += (b"X-Request-Id: ", request_id, b"\r\n")
        if req.forwarded_for is None and req.via is None and not req.chunked and not req.upgrade:
            # The common case: the head ends the same way for every request of this connection
            # to the same host, so those pieces are joined once (the connection remembers the
            # last host's ending).
            if host != self.head_end_host:
                self.head_end_host = host
                self.head_end = b"%bX-Forwarded-Host: %b\r\nVia: %b\r\n\r\n" % (
                    self.forwarded_lines,
                    host,
                    VIA,
                )
            parts.append(self.head_end)
            return b"".join(parts)
        if req.forwarded_for is None:
            parts.append(self.forwarded_lines)
        else:
            parts += (b"X-Forwarded-For: ", req.forwarded_for, b", ", self.peer, b"\r\n")
            parts.append(
                b"X-Forwarded-Proto: https\r\n" if self.tls else b"X-Forwarded-Proto: http\r\n"
            )
        via = VIA if req.via is None else req.via + b", " + VIA
        parts += (b"X-Forwarded-Host: ", host, b"\r\nVia: ", via, b"\r\n")
        if req.chunked:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        if req.upgrade:
            parts += (b"Connection: upgrade\r\nUpgrade: ", req.upgrade_value, b"\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    def _dispatch(self, target: EndpointPool, fresh: bool) -> None:
        conn = None if fresh else target.acquire()
        if conn is not None:
            self._attach(conn, reused=True)
        else:
            self._connect_new(target)

    def _connect_new(self, target: EndpointPool) -> None:
        self.activity = self.loop.time()
        self.connect_task = self.loop.create_task(self._connect(target))

    async def _connect(self, target: EndpointPool) -> None:
        try:
            conn = await self.ctx.upstreams.connect(target)
        except (OSError, TimeoutError) as exc:
            self.connect_task = None
            self._connect_failed(target, exc)
            return
        self.connect_task = None
        if self.closed or self.current is None:
            conn.finish(reusable=True)  # a fresh, unused connection: keep it warm
            return
        self._attach(conn, reused=False)

    def _connect_failed(self, target: EndpointPool, exc: BaseException) -> None:
        pool = self.pool
        if pool is None:
            return  # the exchange it was for has ended (refused, timed out)
        pool.stats.connect_errors += 1
        tls_failed = isinstance(exc, ssl.SSLError)
        if tls_failed:
            pool.stats.tls_errors += 1
        if target.failed():
            log.warning("endpoint %s ejected after %d failures", target.address, target.failures)
            if self.ctx.on_eject is not None:
                self.ctx.on_eject(target)
        log.warning(
            "connect to %s failed (route %s, pool %s): %s",
            target.address, pool.route_name, pool.name, exc or type(exc).__name__,
        )  # fmt: skip
        if not self.retried:
            # Nothing was sent yet, so another healthy endpoint of the same pool may take it.
            targets = pool.targets
            index = pool.rr
            pool.rr = index + 1
            for step in range(len(targets)):
                candidate = targets[(index + step) % len(targets)]
                if candidate is not target and candidate.healthy:
                    self.retried = True
                    pool.stats.retries += 1
                    self._dispatch(candidate, fresh=False)
                    return
        if isinstance(exc, TimeoutError):
            pool.stats.timeouts += 1
            self._local_response(504, "upstream connect timed out", close=True)
        elif tls_failed:
            reason = getattr(exc, "verify_message", None) or getattr(exc, "reason", None)
            self._local_response(502, f"upstream TLS handshake failed: {reason or exc}", close=True)
        else:
            self._local_response(502, "upstream connection failed", close=True)

    def _attach(self, conn: UpstreamConnection, reused: bool) -> None:
        req = self.current
        assert req is not None
        transport = conn.transport
        assert transport is not None
        self.upstream = conn
        self.reused = reused
        self.target = conn.endpoint
        conn.start_request(self, req.method == b"HEAD")
        head = self.upstream_head
        body = req.body
        if body and not req.upgrade:  # an upgrade's early bytes wait for the 101
            data = [head]
            if req.chunked:
                data.extend(b"%x\r\n%b\r\n" % (len(chunk), chunk) for chunk in body)
            else:
                data.extend(body)
            req.body = None
            self._resume(PAUSE_BUFFERED)
            if req.complete and req.chunked:
                data.append(last_chunk(req.trailers))
            head = b"".join(data)
        elif req.complete and req.chunked:
            head += last_chunk(req.trailers)
        if req.complete:
            self.request_sent = True
        self.writes.write(transport, head)
        if self.writing_paused:
            conn.pause_reading()
        now = self.loop.time()
        self.activity = now
        self.upstream_at = now
        deadline = now + self.ctx.upstream_timeout
        if not req.complete:
            deadline = min(deadline, now + self.ctx.body_read_timeout)
        if self.timer is None or self.timer_at > deadline:
            self._arm(deadline)

    # -- ResponseSink: called by the UpstreamConnection ------------------------------------

    def response_interim(self, conn: UpstreamConnection) -> None:
        req = self.current
        # 100 Continue was answered by us already; other 1xx go to HTTP/1.1 clients only.
        if req is not None and req.version == "1.1" and conn.status != 100:
            self.out.append(b"HTTP/1.1 " + conn.status_rest + b"\r\n" + conn.header_block + b"\r\n")

    def response_head(self, conn: UpstreamConnection) -> None:
        req = self.current
        assert req is not None
        status = conn.status
        self.resp_status = status
        self.resp_started = True
        self.resp_flushed = False
        if req.mirrors is not None:
            limit = 0  # the largest of the mirrors' (a loop: max() over a generator costs more)
            for exchange in req.mirrors:
                if exchange.limit > limit:
                    limit = exchange.limit
            self.capture = PrimaryCapture(status, conn.header_block, limit)
        if (
            conn.content_length is not None
            and 200 <= status < 300
            and status != 204
            and req.keep_alive
            and req.version == "1.1"
            and req.method != b"HEAD"
            and not req.upgrade
            and not self.draining
        ):
            # The common case, kept short: a framed body to a keep-alive HTTP/1.1 client.
            self.resp_mode = MODE_LENGTH
            self.out.append(
                b"HTTP/1.1 " + conn.status_rest + b"\r\n" + conn.header_block + VIA_LINE_END
            )
            return
        client_11 = req.version == "1.1"
        # A refused upgrade leaves the client's stream in an unknown state: close after it.
        close = not req.keep_alive or self.draining or (req.upgrade and status != 101)
        extra: list[bytes] = []
        if status == 101:
            if not req.upgrade:
                raise ValueError("101 Switching Protocols to a request that asked for none")
            mode = MODE_NONE
            extra.append(b"Connection: upgrade\r\nUpgrade: %s\r\n" % conn.upgrade)
        elif req.method == b"HEAD" or status in NO_BODY_STATUSES:
            mode = MODE_NONE
        elif conn.content_length is not None:
            mode = MODE_LENGTH
        elif client_11:
            mode = MODE_CHUNKED
            extra.append(b"Transfer-Encoding: chunked\r\n")
        else:
            mode = MODE_CLOSE
            close = True
        if status != 101:
            if close:
                extra.append(b"Connection: close\r\n")
            elif not client_11:
                extra.append(b"Connection: keep-alive\r\n")
        self.resp_mode = mode
        self.resp_close = close
        self.out.append(
            b"HTTP/1.1 %b\r\n%bVia: %b\r\n%b\r\n"
            % (conn.status_rest, conn.header_block, VIA, b"".join(extra))
        )

    def response_body(self, data: bytes) -> None:
        if self.capture is not None:
            self.capture.add(data)
        mode = self.resp_mode
        if mode == MODE_CHUNKED:
            self.out.extend((b"%x\r\n" % len(data), data, b"\r\n"))
        elif mode != MODE_NONE:
            self.out.append(data)

    def response_flush(self) -> None:
        self.activity = self.loop.time()
        out = self.out
        if out and self.transport is not None:
            self.resp_flushed = True
            self.out = []
            data = out[0] if len(out) == 1 else b"".join(out)
            self.resp_bytes += len(data)
            self.writes.write(self.transport, data)

    def response_complete(self, conn: UpstreamConnection) -> None:
        req = self.current
        assert req is not None
        if self.resp_mode == MODE_CHUNKED:
            self.out.append(last_chunk(conn.trailers))
        self.upstream = None
        endpoint = conn.endpoint
        if self.resp_status >= 500:
            if endpoint.failed():
                log.warning("endpoint %s ejected after %d 5xx", endpoint.address, endpoint.failures)
                if self.ctx.on_eject is not None:
                    self.ctx.on_eject(endpoint)
        elif endpoint.failures:
            endpoint.failures = 0
        # Reusable only if the upstream got the whole request and framed the whole response.
        conn.finish(reusable=self.request_sent and self.resp_mode != MODE_CLOSE)
        self._finish(self.resp_status, close=self.resp_close or not req.complete)

    def upstream_lost(self, conn: UpstreamConnection, exc: BaseException | None) -> None:
        self.upstream = None
        req = self.current
        if self.tunnel or req is None:
            self.close()
            return
        if not conn.received_any and self.reused and not self.retried and not req.has_body():
            # A pooled connection the upstream had closed while idle: nothing was processed,
            # so the request goes again on a new connection.
            self.retried = True
            pool = self.pool
            assert pool is not None
            pool.stats.retries += 1
            self._dispatch(conn.endpoint, fresh=True)
            return
        if conn.head_done:
            close_delimited = not conn.chunked and conn.content_length is None
            if close_delimited and self.resp_mode in (MODE_CLOSE, MODE_CHUNKED):
                self._response_complete_eof()
                return
            self._abort_exchange()  # truncated response: the client must see it fail
            return
        self._local_response(502, "upstream closed the connection before responding", close=True)

    def _response_complete_eof(self) -> None:
        """End of a close-delimited upstream response."""
        req = self.current
        assert req is not None
        if self.resp_mode == MODE_CHUNKED:
            self.out.append(b"0\r\n\r\n")
        self._finish(self.resp_status, close=self.resp_close or not req.complete)

    def upstream_bad_response(self, conn: UpstreamConnection, exc: BaseException) -> None:
        pool = self.pool
        log.warning(
            "bad response from %s (route %s, pool %s): %s", conn.endpoint.address,
            pool.route_name if pool else "-", pool.name if pool else "-", exc,
        )  # fmt: skip
        self._drop_upstream()
        self._fail_exchange(502, "upstream sent a malformed response")

    def tunnel_data(self, data: bytes) -> None:
        self.activity = self.loop.time()
        if self.transport is not None:
            self.writes.write(self.transport, data)

    # -- upgrade tunnels -------------------------------------------------------------------

    def _upgrade_requested(self, rest: bytes) -> None:
        # The parser stops at the end of an Upgrade request head; what follows belongs to the
        # new protocol and is held until the upstream agrees (101) or refuses.
        req = self.current
        if req is None:
            return
        pending = self.pending
        if pending:
            # An Upgrade queued behind a request in flight: its bytes could only be held on
            # that other request, which would forward them after its own head (smuggling).
            # Refused, never forwarded; the requests ahead of it are answered first.
            pending.pop()  # the last request parsed is the one the parser stopped after
            self._reject(
                Reject(400, "Upgrade request pipelined behind another request", "ambiguous_framing")
            )
            return
        req.complete = True
        self.parsing = None
        self.upgrading = True
        if rest:
            req.hold(rest)
        self._pause(PAUSE_PIPELINE)  # nothing more is read until the upstream has answered

    def start_tunnel(self, rest: bytes) -> None:
        """The upstream answered 101: from now on bytes are relayed as they are, both ways."""
        self.tunnel = True
        self.response_flush()
        if rest and self.transport is not None:
            self.writes.write(self.transport, rest)
        req = self.current
        upstream = self.upstream
        if req is not None and req.body and upstream is not None and upstream.transport:
            self.writes.write(upstream.transport, b"".join(req.body))
            req.body = None
        self._resume(PAUSE_PIPELINE)

    def _tunnel_to_upstream(self, data: bytes) -> None:
        self.activity = self.loop.time()
        upstream = self.upstream
        if upstream is not None and upstream.transport is not None:
            self.writes.write(upstream.transport, data)

    # -- ending an exchange ----------------------------------------------------------------

    def _finish(self, status: int, close: bool) -> None:
        """The response is complete: count it, then close or move on to the next request."""
        req = self.current
        assert req is not None
        self._log_if_sampled(req, status)
        self.target = None
        self.upstream_at = 0.0
        self.resp_bytes = 0
        if req.mirrors is not None:
            self._end_mirrors(req, status)
        pool = self.pool
        if pool is not None:
            # perf_counter, not loop.time(): uvloop's clock has millisecond resolution.
            pool.stats.observe(status, perf_counter() - req.started)
        out = self.out
        if out and self.transport is not None:
            self.out = []
            self.writes.write(self.transport, out[0] if len(out) == 1 else b"".join(out))
        self.current = None
        self.route = None
        self.pool = None
        self.resp_started = False
        self.resp_close = False
        self.request_sent = False
        self.retried = False
        if close or self.draining:
            self.close()
            return
        pending = self.pending
        if pending:
            nxt = pending.popleft()
            self.current = nxt
            self._start(nxt)
            backlog = self.backlog
            if backlog and len(pending) < MAX_PIPELINED and not self.closed:
                self.backlog = b""
                self.data_received(backlog)
            if not pending and not self.backlog:
                self._resume(PAUSE_PIPELINE)
            return
        if self.deferred_error is not None:
            err, self.deferred_error = self.deferred_error, None
            self._local_error(err)
            return
        if self.paused_by:
            self._resume(PAUSE_PIPELINE)
        now = self.loop.time()
        self.idle_since = now
        deadline = now + self.ctx.idle_timeout
        if self.timer is None or self.timer_at > deadline:
            self._arm(deadline)

    def _log_if_sampled(self, req: Request, status: int) -> None:
        access_log = self.ctx.access_log
        if access_log is not None and (access_log.sample >= 1.0 or _random() < access_log.sample):
            self._log_access(access_log, req, status)

    def _log_access(self, access_log: AccessLog, req: Request, status: int) -> None:
        """Queue the access-log entry of the exchange ending now; formatted and written in
        batches (proxy/access_log.py), never here."""
        end = perf_counter()
        route = self.route
        pool = self.pool
        target = self.target
        upstream_seconds = self.loop.time() - self.upstream_at if self.upstream_at else -1.0
        out_bytes = self.resp_bytes
        for chunk in self.out:
            out_bytes += len(chunk)
        access_log.add(
            Entry(
                end,
                self.peer_text,
                req.method,
                req.url,
                req.host,
                req.version,
                status,
                req.head_size + req.body_size,
                out_bytes,
                end - req.started if req.started else 0.0,
                upstream_seconds,
                route.name if route is not None else "",
                pool.name if pool is not None else "",
                target.text if target is not None else "",
                req.request_id or b"",
                route.choice_kind(req.wanted, req.cookie) if pool is not None and route else "",
                req.mirrors is not None,
                self.tls,
            )
        )

    def _drop_upstream(self) -> None:
        """Detach and cut the upstream connection of the exchange: its state is unknown, so it
        must not go back to the pool. A connect still under way is cancelled: it was for this
        exchange, not for the next request."""
        task = self.connect_task
        if task is not None:
            self.connect_task = None
            task.cancel()
        upstream = self.upstream
        if upstream is not None:
            self.upstream = None
            upstream.client = None
            upstream.abort()

    def _fail_exchange(self, status: int, error: str) -> None:
        """An error answer if no byte of the response reached the client yet; else cut the
        client off, since a started response cannot be turned into an error."""
        if self.resp_started and self.resp_flushed:
            self._abort_exchange()
            return
        if self.resp_started:
            # The head is still queued (a bad body or head in the same read): drop it, and
            # the capture of it, so the client gets the error and mirrors see a failure.
            self.out = []
            self.capture = None
            self.resp_started = False
        self._local_response(status, error, close=True)

    def _abort_exchange(self) -> None:
        """The response cannot be completed: cut both sides so the client sees a failure."""
        pool = self.pool
        req = self.current
        if pool is not None and req is not None:
            pool.stats.observe(502, perf_counter() - req.started)
        if req is not None:
            self._log_if_sampled(req, 502)
            if req.mirrors is not None:
                self._end_mirrors(req, 0)
        self._drop_upstream()
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _body_timed_out(self) -> None:
        """The client stopped sending the request body (timeouts.body_read): 408 if nothing
        of the response went out yet, else cut off; the upstream connection is dropped."""
        self.ctx.metrics.reject("body_timeout")
        if self.connect_task is not None:
            self.connect_task.cancel()
            self.connect_task = None
        self._drop_upstream()
        self._fail_exchange(408, "request body not received in time")

    def _write_timed_out(self) -> None:
        self.ctx.metrics.reject("client_write_timeout")
        self._drop_upstream()
        req = self.current
        if req is not None:
            pool = self.pool
            if pool is not None:
                pool.stats.observe(502, perf_counter() - req.started)
            self._log_if_sampled(req, 502)
            if req.mirrors is not None:
                self._end_mirrors(req, 0)
        self.closed = True
        transport = self.transport
        if transport is not None:
            reset_on_close(transport)
            transport.abort()

    def _upstream_timed_out(self) -> None:
        pool = self.pool
        if pool is not None:
            pool.stats.timeouts += 1
        if self.connect_task is not None:
            self.connect_task.cancel()
            self.connect_task = None
        self._drop_upstream()
        self._fail_exchange(504, "upstream timed out")

    def _reject(self, err: Reject) -> None:
        """A request was refused by the parser or our checks."""
        starting = self.starting
        self.starting = None
        self.ctx.metrics.reject(err.metric)
        req = self.parsing
        self._pause(PAUSE_ERROR)  # nothing after a framing error can be trusted
        if self.current is not None and req is not self.current:
            # Answer the requests ahead of it first, in order; the refused one (queued if its
            # head was complete) is never forwarded.
            if req is not None and self.pending and self.pending[-1] is req:
                self.pending.pop()
            if self.deferred_error is None:
                self.deferred_error = err
            if starting is not None:
                # A complete request parsed earlier in the same read: it goes ahead as if
                # the bad bytes had come in a later read.
                self._start(starting)
            return
        if self.current is not None:
            # The in-flight request's own body was bad.
            self._drop_upstream()
            if self.resp_started:
                self._abort_exchange()
                return
        self._local_error(err)

    def _local_error(self, err: Reject) -> None:
        if self.current is None:
            self.current = self.parsing or Request(self.loop.time())
        self._local_response(err.status, err.reason, close=True)

    def _local_response(self, status: int, error: str, close: bool = False) -> None:
        """Answer the current request from the proxy itself, with a small JSON body."""
        req = self.current
        assert req is not None
        if not req.complete:
            close = True  # its body was not read; the stream cannot be resynchronised
        body_doc: dict[str, object] = {"error": error, "status": status}
        if self.route is not None:
            body_doc["route"] = self.route.name
        if self.pool is not None:
            body_doc["pool"] = self.pool.name
        body = orjson.dumps(body_doc) + b"\n"
        head = (
            b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"
            % (
                status,
                REASONS.get(status, b"Error"),
                len(body),
                b"Connection: close\r\n" if close or self.draining else b"",
            )
        )
        self.out.append(head if req.method == b"HEAD" else head + body)
        self._drop_upstream()
        self._finish(status, close=close)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.writes.close(self.transport)  # after the bytes queued before it
        self.closed = True

    def drain(self) -> None:
        """Shutdown: finish the exchange in flight (if any), then close."""
        self.draining = True
        if self.current is None and self.parsing is None:
            self.close()


class ProxyContext:
    """What every downstream connection of one proxy process shares."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        table: RoutingTable,
        metrics: Metrics,
        upstreams: Upstreams,
        timeouts: Timeouts,
        limits: Limits,
    ) -> None:
        self.loop = loop
        self.table = table
        self.metrics = metrics
        self.upstreams = upstreams
        # Told of each passive ejection (a worker reports it to the master, which ejects the
        # endpoint on every worker of the host).
        self.on_eject: Callable[[EndpointPool], None] | None = None
        self.timeouts = timeouts
        self.limits = limits
        # Flattened copies for the request path (plain fields of this compiled class).
        self.max_header_bytes = limits.max_header_bytes
        self.max_body_bytes = limits.max_body_bytes
        # This process's share of limits.max_connections (0: none); see `use_settings`.
        self.connection_share = 1  # processes sharing the limit: the host's workers
        self.max_connections = share_of(limits.max_connections, 1)
        self.header_read_timeout = timeouts.header_read
        self.body_read_timeout = timeouts.body_read
        self.upstream_timeout = timeouts.upstream
        self.idle_timeout = timeouts.idle
        self.client_write_timeout = timeouts.client_write
        self.access_log: AccessLog | None = None  # set by the server when configured
        self.connections: set[DownstreamConnection] = set()
        self.wanted_headers = table.wanted_headers
        self.request_names = request_spellings(table.wanted_headers)
        self.draining = False
        self.drained = asyncio.Event()  # set when draining and the last connection has gone
        self.host_fallback = b"localhost"
        self._id_prefix = request_id_prefix() + b"-"
        self._id_counter = 0
        self.writes: WriteBatch = upstreams.writes

    def use_settings(self, timeouts: Timeouts, limits: Limits) -> None:
        """Timeouts and limits of a reloaded config, for the requests that start from now."""
        self.timeouts = timeouts
        self.limits = limits
        self.max_header_bytes = limits.max_header_bytes
        self.max_body_bytes = limits.max_body_bytes
        self.max_connections = share_of(limits.max_connections, self.connection_share)
        self.header_read_timeout = timeouts.header_read
        self.body_read_timeout = timeouts.body_read
        self.upstream_timeout = timeouts.upstream
        self.idle_timeout = timeouts.idle
        self.client_write_timeout = timeouts.client_write

    def use_table(self, table: RoutingTable) -> None:
        """Route the requests whose heads complete from now on by `table`."""
        self.wanted_headers = table.wanted_headers
        self.request_names = request_spellings(table.wanted_headers)
        self.table = table

    def next_request_id(self) -> bytes:
        self._id_counter += 1
        return self._id_prefix + str(self._id_counter).encode()


def reset_on_close(transport: asyncio.Transport) -> None:
    """Make the coming close a reset (SO_LINGER 0), as nginx's reset_timedout_connection: a
    plain close of a client that reads nothing keeps its socket in FIN_WAIT1 with the unsent
    bytes (up to the kernel's send buffer) until the orphan times out."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        except OSError:
            pass  # already gone: nothing left to free


def share_of(limit: int, processes: int) -> int:
    """One process's part of a host-wide limit (0 stays 0: no limit): rounded up, so the
    host never takes fewer than the limit."""
    return -(-limit // processes) if limit else 0


def request_id_prefix() -> bytes:
    """Random per process, so ids from a fleet of proxies do not collide."""
    return os.urandom(6).hex().encode()
