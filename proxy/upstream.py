"""Upstream connections and per-endpoint keep-alive pools.

An UpstreamConnection carries one request at a time for one downstream connection (its `client`).
It parses the response with httptools and hands the pieces to the client through the small
`ResponseSink` interface, so this module knows nothing of the downstream protocol.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from dataclasses import replace
from typing import Protocol, cast

import httptools

from proxy.config import Address, EjectionConfig, UpstreamSettings
from proxy.tasks import cancel_and_wait

# Upstream write buffer high-water mark: above it the client's request body stops being read.
UPSTREAM_WRITE_HIGH = 256 * 1024
# How often idle pooled connections are checked for expiry; cheap, and bounds how long a dead
# connection lingers past idle_timeout.
IDLE_SWEEP_INTERVAL = 1.0

# A response head larger than this is refused (502): no sane upstream sends one, and the head
# is held in memory until complete.
MAX_RESPONSE_HEAD = 64 * 1024

# Response headers that describe one hop only (RFC 9110 7.6.1); never forwarded.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Hop-by-hop headers other than Connection, as they appear in a lower-cased head; when none is
# there (nearly always), the head takes the short path.
_RARE_HOP_BY_HOP = re.compile(
    rb"\r\n(?:keep-alive|proxy-connection|proxy-authenticate|proxy-authorization|te|trailer"
    rb"|transfer-encoding|upgrade):"
)
_STANDARD_CONNECTION_TOKENS = frozenset({b"keep-alive", b"close", b"upgrade"})


class ResponseSink(Protocol):
    """What a downstream connection offers the upstream side while a response flows."""

    def response_head(self, conn: UpstreamConnection) -> None: ...
    def response_interim(self, conn: UpstreamConnection) -> None: ...
    def response_body(self, data: bytes) -> None: ...
    def response_complete(self, conn: UpstreamConnection) -> None: ...
    def response_flush(self) -> None: ...
    def upstream_lost(self, conn: UpstreamConnection, exc: BaseException | None) -> None: ...
    def upstream_bad_response(self, conn: UpstreamConnection, exc: BaseException) -> None: ...
    def tunnel_data(self, data: bytes) -> None: ...
    def start_tunnel(self, rest: bytes) -> None: ...
    def upstream_pause_writing(self) -> None: ...
    def upstream_resume_writing(self) -> None: ...


class _NoBody(Exception):
    """Raised from on_headers_complete to stop the parser where a response has no body (HEAD)."""


class UpstreamConnection:
    """An asyncio protocol by its methods (see DownstreamConnection for why no base class)."""

    __slots__ = (
        "chunked",
        "client",
        "closed",
        "content_length",
        "data",
        "endpoint",
        "head_buf",
        "head_done",
        "head_start",
        "header_block",
        "idle_since",
        "keep_alive",
        "no_body",
        "parser",
        "reading_paused",
        "received_any",
        "requests_served",
        "status",
        "status_rest",
        "transport",
        "tunnel",
        "upgrade",
    )

    def __init__(self, endpoint: EndpointPool) -> None:
        self.endpoint = endpoint
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.client: ResponseSink | None = None
        self.closed = False
        self.idle_since = 0.0
        self.requests_served = 0
        self.tunnel = False
        self.reading_paused = False  # paused while the client cannot take more (backpressure)
        self.status = 0
        self.status_rest = b""  # the status line after "HTTP/1.x ", e.g. b"200 OK"
        self.header_block = b""  # end-to-end header lines, each ending in CRLF
        self.keep_alive = True
        self.head_buf = b""  # response bytes up to the end of the head (emptied once taken)
        self.data = b""  # the chunk being parsed, while the head is incomplete
        self.start_request(None, False)

    def start_request(self, client: ResponseSink | None, no_body: bool) -> None:
        """A new request goes out on this connection: reset the response state."""
        self.client = client
        self.no_body = no_body  # a HEAD request: the response has no body whatever it says
        # Set from each head as it completes (status, status_rest, header_block, keep_alive)
        # or only when present in it (these three):
        self.content_length: bytes | None = None
        self.chunked = False
        self.upgrade = b""
        self.head_start = 0  # where the current head starts in head_buf (after any 1xx)
        self.head_done = False
        self.received_any = False

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("busy" if self.client is not None else "idle")
        return f"<UpstreamConnection {self.endpoint.address} {state} served={self.requests_served}>"

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its interface.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=UPSTREAM_WRITE_HIGH)

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is None:
            # Bytes on an idle connection: the upstream is confused; do not reuse it.
            self.close()
            return
        self.received_any = True
        if self.tunnel:
            client.tunnel_data(data)
            return
        if not self.head_done:
            self.data = data
            buf = self.head_buf = self.head_buf + data if self.head_buf else data
            if len(buf) - self.head_start > MAX_RESPONSE_HEAD and b"\r\n\r\n" not in buf:
                client.upstream_bad_response(self, ValueError("response head too large"))
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self.tunnel = True
            client.start_tunnel(data[upgrade.args[0] :])
            return
        except httptools.HttpParserCallbackError as exc:
            if self.client is not client:
                self.close()  # bytes after the end of the response: do not trust this connection
                return
            if isinstance(exc.__context__, _NoBody):
                # HEAD: the head is all there is. A fresh parser for the next response.
                self.parser = httptools.HttpResponseParser(self)
                self.on_message_complete()
            else:
                client.upstream_bad_response(self, exc.__context__ or exc)
                return
        except httptools.HttpParserError as exc:
            client.upstream_bad_response(self, exc)
            return
        if self.client is not None:
            self.client.response_flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        client = self.client
        if client is not None:
            self.client = None
            client.upstream_lost(self, exc)
        else:
            self.endpoint.forget(self)

    def pause_writing(self) -> None:
        if self.client is not None:
            self.client.upstream_pause_writing()

    def resume_writing(self) -> None:
        if self.client is not None:
            self.client.upstream_resume_writing()

    # -- httptools callbacks ---------------------------------------------------------------
    # No on_header: the head is taken from the raw bytes once complete (_take_head), which
    # costs a few C-level scans instead of a Python call per header.

    def on_headers_complete(self) -> None:
        client = self.client
        assert client is not None
        parser = self.parser
        status = self.status = parser.get_status_code()
        self.keep_alive = parser.should_keep_alive()
        buf = self.head_buf
        end = buf.index(b"\r\n\r\n", self.head_start) + 4
        self._take_head(buf[self.head_start : end])
        if status < 200 and status != 101:
            client.response_interim(self)
            self.head_start = end
            self.content_length = None
            self.chunked = False
            return
        self.head_done = True
        self.head_buf = self.data = b""
        client.response_head(self)
        if self.no_body and status != 101:
            raise _NoBody

    def _take_head(self, head: bytes) -> None:
        """Split a raw response head: what the client gets, and what the proxy must read.
        (llhttp has checked the syntax: CRLF line ends, no space before a colon.)

        Most heads carry one hop-by-hop header, Connection, with a standard token: that case
        is a handful of C-level calls. Anything else goes through the line-by-line path."""
        lower = head.lower()
        first = head.find(b"\r\n")
        self.status_rest = head[9:first]  # after "HTTP/1.x "
        if _RARE_HOP_BY_HOP.search(lower) is None:
            length_at = lower.find(b"\r\ncontent-length:")
            if length_at != -1:
                start = length_at + 17
                self.content_length = head[start : head.find(b"\r\n", start)].strip()
            connection_at = lower.find(b"\r\nconnection:")
            if connection_at == -1:
                self.header_block = head[first + 2 : -2]
                return
            end = head.find(b"\r\n", connection_at + 13)
            token = lower[connection_at + 13 : end].strip()
            if token in _STANDARD_CONNECTION_TOKENS and lower.find(b"\r\nconnection:", end) == -1:
                self.header_block = head[first + 2 : connection_at + 2] + head[end + 2 : -2]
                return
        self._take_head_slowly(head)

    def _take_head_slowly(self, head: bytes) -> None:
        lines = head.split(b"\r\n")  # status line, header lines, b"", b""
        kept: list[bytes] = []
        tokens: list[bytes] = []
        for line in lines[1:-2]:
            colon = line.find(b":")
            name = line[:colon].lower()
            if name in _HOP_BY_HOP:
                value = line[colon + 1 :].strip()
                if name == b"connection":  # repeated lines add up (RFC 9110 5.3)
                    tokens += [t.strip() for t in value.lower().split(b",") if t.strip()]
                elif name == b"transfer-encoding":
                    self.chunked = value.lower().endswith(b"chunked")
                elif name == b"upgrade":
                    self.upgrade = value
                continue
            if name == b"content-length":
                self.content_length = line[colon + 1 :].strip()
            kept.append(line)
        if tokens and not _STANDARD_CONNECTION_TOKENS.issuperset(tokens):
            # Headers named in Connection are hop-by-hop too.
            named = frozenset(tokens)
            kept = [line for line in kept if line[: line.find(b":")].lower() not in named]
        kept.append(b"")
        self.header_block = b"\r\n".join(kept)

    def on_body(self, body: bytes) -> None:
        client = self.client
        assert client is not None
        client.response_body(body)

    def on_message_complete(self) -> None:
        if not self.head_done or self.status == 101:
            return  # end of an interim (1xx) response, or the start of a tunnel
        client = self.client
        assert client is not None
        client.response_complete(self)

    # -- pool side -------------------------------------------------------------------------

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def pause_reading(self) -> None:
        if self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()

    def finish(self, reusable: bool) -> None:
        """The client is done with this connection: back to the pool, or closed."""
        self.client = None
        self.requests_served += 1
        if not (reusable and self.keep_alive and not self.closed):
            self.close()
            return
        pool = self.endpoint
        if len(pool.idle) >= pool.settings.max_idle:
            self.close()
            return
        if self.reading_paused:
            self.resume_reading()  # an idle connection must notice the peer closing
        self.idle_since = pool.loop.time()
        pool.idle.append(self)


class EndpointPool:
    """Idle keep-alive connections to one endpoint (LIFO: the warmest connection is reused)."""

    __slots__ = (
        "address",
        "checks_ok",
        "ejected_until",
        "ejection",
        "failures",
        "healthy",
        "idle",
        "loop",
        "settings",
    )

    def __init__(self, address: Address, settings: UpstreamSettings) -> None:
        self.address = address
        self.settings = settings
        # Routing reads only `healthy`: active checks pass (or none run) and not ejected.
        self.healthy = True
        self.checks_ok = True
        self.ejected_until = 0.0
        self.failures = 0  # consecutive connect errors or 5xx answers
        self.ejection = EjectionConfig()
        self.idle: deque[UpstreamConnection] = deque()
        self.loop = asyncio.get_running_loop()

    def __repr__(self) -> str:
        return f"<EndpointPool {self.address} idle={len(self.idle)}>"

    def acquire(self) -> UpstreamConnection | None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:  # connection_lost marks it closed before anything else
                return conn
        return None

    def failed(self) -> bool:
        """Count a connect error or 5xx; True if that ejected the endpoint."""
        self.failures += 1
        limit = self.ejection.consecutive_failures
        if limit and self.failures >= limit and self.ejected_until == 0.0:
            self.ejected_until = self.loop.time() + self.ejection.backoff
            self.healthy = False
            return True
        return False

    def set_checks_ok(self, ok: bool) -> None:
        self.checks_ok = ok
        self.healthy = ok and self.ejected_until == 0.0

    def forget(self, conn: UpstreamConnection) -> None:
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    def sweep(self, now: float) -> None:
        if self.ejected_until and now >= self.ejected_until:
            # Back on probation: one more failure ejects it again at once.
            self.ejected_until = 0.0
            self.failures = max(0, self.ejection.consecutive_failures - 1)
            self.healthy = self.checks_ok
        deadline = now - self.settings.idle_timeout
        idle = self.idle
        while idle and idle[0].idle_since < deadline:
            idle.popleft().close()

    def close_all(self) -> None:
        while self.idle:
            self.idle.pop().close()


class Upstreams:
    """All endpoint pools of one proxy process."""

    def __init__(self, settings: UpstreamSettings, connect_timeout: float) -> None:
        self.settings = settings
        self.connect_timeout = connect_timeout
        self.pools: dict[Address, EndpointPool] = {}
        # Mirrors use their own connections, so a slow shadow never holds one a live request
        # could have used (and health or ejection of live endpoints never sees shadow traffic).
        self.shadow_pools: dict[Address, EndpointPool] = {}
        self._sweeper: asyncio.Task[None] | None = None

    def pool(self, address: Address) -> EndpointPool:
        pool = self.pools.get(address)
        if pool is None:
            pool = self.pools[address] = EndpointPool(address, self.settings)
        return pool

    def shadow_pool(self, address: Address, max_in_flight: int) -> EndpointPool:
        """The mirrors' pool for `address`. It keeps as many idle connections as mirrors may be
        in flight: fewer, and every burst of answers would close connections the next burst
        must open again."""
        pool = self.shadow_pools.get(address)
        if pool is None:
            pool = self.shadow_pools[address] = EndpointPool(address, self.settings)
        if pool.settings.max_idle < max_in_flight:
            pool.settings = replace(pool.settings, max_idle=max_in_flight)
        return pool

    async def connect(self, target: EndpointPool) -> UpstreamConnection:
        """Open a new connection to the target's endpoint; raises OSError or TimeoutError."""
        loop = asyncio.get_running_loop()
        address = target.address
        async with asyncio.timeout(self.connect_timeout):
            _, protocol = await loop.create_connection(
                lambda: cast(asyncio.Protocol, UpstreamConnection(target)),
                address.host,
                address.port,
            )
        return cast(UpstreamConnection, protocol)

    def idle_count(self) -> int:
        return sum(len(p.idle) for p in self.pools.values()) + sum(
            len(p.idle) for p in self.shadow_pools.values()
        )

    def start(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def _sweep_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(IDLE_SWEEP_INTERVAL)
            now = loop.time()
            for pool in self.pools.values():
                pool.sweep(now)
            for pool in self.shadow_pools.values():
                pool.sweep(now)

    async def close(self) -> None:
        sweeper, self._sweeper = self._sweeper, None
        await cancel_and_wait([sweeper])
        for pool in (*self.pools.values(), *self.shadow_pools.values()):
            pool.close_all()
