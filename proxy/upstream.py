"""Upstream connections and per-endpoint keep-alive pools.

An UpstreamConnection carries one request at a time for one downstream connection (its `client`).
It parses the response with httptools and hands the pieces to the client through the small
`ResponseSink` interface, so this module knows nothing of the downstream protocol.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Protocol, cast

import httptools

from proxy.config import Address, UpstreamSettings

# Upstream write buffer high-water mark: above it the client's request body stops being read.
UPSTREAM_WRITE_HIGH = 256 * 1024
# How often idle pooled connections are checked for expiry; cheap, and bounds how long a dead
# connection lingers past idle_timeout.
IDLE_SWEEP_INTERVAL = 1.0

# Response headers that describe one hop only (RFC 9110 7.6.1); never forwarded.
HOP_BY_HOP = frozenset(
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


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "chunked",
        "client",
        "closed",
        "connection_tokens",
        "content_length",
        "endpoint",
        "head_done",
        "header_lines",
        "idle_since",
        "keep_alive",
        "no_body",
        "parser",
        "reason",
        "received_any",
        "requests_served",
        "status",
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
        self._reset_response()

    def _reset_response(self) -> None:
        self.status = 0
        self.reason = b""
        self.header_lines: list[tuple[bytes, bytes]] = []  # (lower-case name, "Name: value\r\n")
        self.content_length: bytes | None = None
        self.chunked = False
        self.connection_tokens: tuple[bytes, ...] = ()
        self.head_done = False
        self.keep_alive = True
        self.no_body = False  # set by the client before sending a HEAD request
        self.received_any = False
        self.upgrade = b""

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

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        lname = name.lower()
        if lname in HOP_BY_HOP:
            if lname == b"transfer-encoding":
                self.chunked = value.strip().lower().endswith(b"chunked")
            elif lname == b"upgrade":
                self.upgrade = value
            elif lname == b"connection":
                self.connection_tokens = tuple(
                    t.strip().lower() for t in value.split(b",") if t.strip()
                )
            return
        if lname == b"content-length":
            self.content_length = value
        self.header_lines.append((lname, b"%s: %s\r\n" % (name, value)))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        assert self.client is not None
        if self.status < 200 and self.status != 101:
            self.client.response_interim(self)
            self.header_lines = []
            self.reason = b""
            return
        self.head_done = True
        self.client.response_head(self)
        if self.no_body and self.status != 101:
            raise _NoBody

    def on_body(self, body: bytes) -> None:
        assert self.client is not None
        self.client.response_body(body)

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

    def start_request(self, client: ResponseSink, no_body: bool) -> None:
        self.client = client
        self._reset_response()
        self.no_body = no_body

    def finish(self, reusable: bool) -> None:
        """The client is done with this connection: back to the pool, or closed."""
        self.client = None
        self.requests_served += 1
        if reusable and self.keep_alive and not self.closed:
            self.endpoint.release(self)
        else:
            self.close()


class EndpointPool:
    """Idle keep-alive connections to one endpoint (LIFO: the warmest connection is reused)."""

    __slots__ = ("address", "idle", "loop", "settings")

    def __init__(self, address: Address, settings: UpstreamSettings) -> None:
        self.address = address
        self.settings = settings
        self.idle: deque[UpstreamConnection] = deque()
        self.loop = asyncio.get_running_loop()

    def __repr__(self) -> str:
        return f"<EndpointPool {self.address} idle={len(self.idle)}>"

    def acquire(self) -> UpstreamConnection | None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            transport = conn.transport
            if not conn.closed and transport is not None and not transport.is_closing():
                transport.resume_reading()
                return conn
        return None

    def release(self, conn: UpstreamConnection) -> None:
        if len(self.idle) >= self.settings.max_idle:
            conn.close()
            return
        assert conn.transport is not None
        conn.transport.resume_reading()  # an idle connection must notice the peer closing
        conn.idle_since = self.loop.time()
        self.idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    def sweep(self, now: float) -> None:
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
        self._sweeper: asyncio.Task[None] | None = None

    def pool(self, address: Address) -> EndpointPool:
        pool = self.pools.get(address)
        if pool is None:
            pool = self.pools[address] = EndpointPool(address, self.settings)
        return pool

    async def connect(self, address: Address) -> UpstreamConnection:
        """Open a new connection; raises OSError or TimeoutError."""
        pool = self.pool(address)
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.connect_timeout):
            _, protocol = await loop.create_connection(
                lambda: UpstreamConnection(pool), address.host, address.port
            )
        return protocol

    def idle_count(self) -> int:
        return sum(len(p.idle) for p in self.pools.values())

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

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            try:
                await self._sweeper
            except asyncio.CancelledError:
                # Our own cancellation of the sweeper; re-raise if we are being cancelled too.
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
            self._sweeper = None
        for pool in self.pools.values():
            pool.close_all()
