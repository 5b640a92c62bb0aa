"""Upstream connections and per-endpoint keep-alive pools.

An UpstreamConnection carries one request at a time for one downstream connection (its `client`).
It parses the response with httptools and hands the pieces to the client through the small
`ResponseSink` interface, so this module knows nothing of the downstream protocol.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from dataclasses import replace
from typing import Final, Protocol, cast

import httptools

from proxy.config import Address, EjectionConfig, UpstreamSettings, UpstreamTls, address_text
from proxy.tasks import cancel_and_wait

# Upstream write buffer high-water mark: above it the client's request body stops being read.
UPSTREAM_WRITE_HIGH: Final = 256 * 1024
# A WriteBatch holding this much writes it at once, so back-pressure sees it (see WriteBatch).
BATCH_FLUSH_BYTES: Final = 256 * 1024
# How often idle pooled connections are checked for expiry; cheap, and bounds how long a dead
# connection lingers past idle_timeout.
IDLE_SWEEP_INTERVAL: Final = 1.0

_H: Final = ord("H")

# A response head larger than this is refused (502): no sane upstream sends one, and the head
# is held in memory until complete.
MAX_RESPONSE_HEAD: Final = 64 * 1024

# Response header names the proxy looks at, lower-cased, with what it does with each. All but
# Content-Length describe one hop only (RFC 9110 7.6.1) and are never forwarded.
_R_END_TO_END: Final = 0  # any other name: forwarded as it came
_R_CONTENT_LENGTH: Final = 1
_R_CONNECTION: Final = 2
_R_TRANSFER_ENCODING: Final = 3
_R_UPGRADE: Final = 4
_R_HOP: Final = 5
_RESPONSE_HEADER_CODES: Final = {
    b"content-length": _R_CONTENT_LENGTH,
    b"connection": _R_CONNECTION,
    b"transfer-encoding": _R_TRANSFER_ENCODING,
    b"upgrade": _R_UPGRADE,
    b"keep-alive": _R_HOP,
    b"proxy-connection": _R_HOP,
    b"proxy-authenticate": _R_HOP,
    b"proxy-authorization": _R_HOP,
    b"te": _R_HOP,
    b"trailer": _R_HOP,
}
# By a header line's first byte: the lengths a name the proxy reads may have with that first
# letter (the index of the colon after it). A line none of _USUAL_NAMES starts is looked up
# only where this table allows; most (Server, Date...) are ruled out with no lower().
_CANDIDATE_LENGTHS: Final = [
    tuple(sorted({len(name) for name in _RESPONSE_HEADER_CODES if name[0] == byte | 0x20}))
    if 0x41 <= byte <= 0x5A or 0x61 <= byte <= 0x7A
    else ()
    for byte in range(256)
]
_COLON: Final = ord(":")
_CR: Final = ord("\r")
_SP: Final = ord(" ")
_HTAB: Final = ord("\t")

# Names whose usual spelling is not Canonical-Case.
_IRREGULAR_CASE: Final = {b"te": b"TE", b"etag": b"ETag"}


def usual_spellings(lname: bytes) -> tuple[bytes, bytes]:
    """A lower-case header name as peers usually write it: as is, and b"X-User-Id"-style.
    The request side looks a received name up among these spellings before lower-casing it: a
    hit saves the bytes.lower() call (about a third of the cost of a header line)."""
    canonical = _IRREGULAR_CASE.get(lname)
    if canonical is None:
        canonical = b"-".join(part.capitalize() for part in lname.split(b"-"))
    return lname, canonical


# By a header line's first byte: those names as peers usually spell them, with the colon, and
# what the proxy does with each. A line that starts with one is read with no slice, lower()
# or hash (startswith compiles to a memcmp); others fall back on _CANDIDATE_LENGTHS.
_USUAL_NAMES: Final = [
    tuple(
        (spelling + b":", code)
        for lname, code in _RESPONSE_HEADER_CODES.items()
        for spelling in usual_spellings(lname)
        if spelling[0] == byte
    )
    for byte in range(256)
]


# Fields never forwarded from a trailer section, in either direction: RFC 9110 6.5.1 forbids
# these in trailers (framing, routing, request modifiers, authentication, response control,
# and, below, every Content-* field), hop-by-hop fields describe one hop, and the proxy's own
# headers are its to set. A recipient must not merge trailers into the head; a next hop that
# did would get these past every check made on the head.
_TRAILERS_DROPPED: Final = frozenset({
    b"age", b"authorization", b"cache-control", b"connection", b"cookie", b"date", b"expect",
    b"expires", b"host", b"if-match", b"if-modified-since", b"if-none-match", b"if-range",
    b"if-unmodified-since", b"keep-alive", b"location", b"max-forwards", b"pragma",
    b"proxy-authenticate", b"proxy-authorization", b"proxy-connection", b"range",
    b"retry-after", b"set-cookie", b"te", b"trailer", b"transfer-encoding", b"upgrade", b"vary",
    b"via", b"warning", b"www-authenticate", b"x-forwarded-for", b"x-forwarded-host",
    b"x-forwarded-proto", b"x-request-id",
})  # fmt: skip


def forwarded_trailer(name: bytes) -> bool:
    """Whether a trailer field goes on to the next hop (as a trailer: never as a header)."""
    lname = name.lower()
    return lname not in _TRAILERS_DROPPED and not lname.startswith(b"content-")


_ZERO: Final = ord("0")


def canonical_length(value: bytes) -> bytes:
    """A Content-Length value as the next hop gets it: llhttp has checked it is digits that fit
    in 64 bits but takes leading zeros, any number of them, which a next hop may refuse (h11
    refuses more than 20 digits) or read otherwise; nginx re-spells it too. Free when it is
    already canonical (no leading zero), as nearly every value is."""
    if len(value) > 1 and value[0] == _ZERO:
        return b"%d" % int(value)
    return value


def add_trailer(trailers: list[bytes] | None, name: bytes, value: bytes) -> list[bytes] | None:
    """`trailers` ("Name: value\r\n" lines) with this field added if it is forwarded."""
    if not forwarded_trailer(name):
        return trailers
    line = name + b": " + value + b"\r\n"
    if trailers is None:
        return [line]
    trailers.append(line)
    return trailers


def last_chunk(trailers: list[bytes] | None) -> bytes:
    """The end of a chunked body as sent on: the last chunk, then the trailer section."""
    return b"0\r\n\r\n" if trailers is None else b"0\r\n%b\r\n" % b"".join(trailers)


# Connection tokens that name no header; any other token makes that header hop-by-hop too.
STANDARD_CONNECTION_TOKENS: Final = frozenset({b"keep-alive", b"close", b"upgrade"})
# Connection values as peers usually send them, made of those tokens alone: nothing to split.
STANDARD_CONNECTION_VALUES: Final = frozenset(
    spelling for token in STANDARD_CONNECTION_TOKENS for spelling in (token, token.title())
)


def without_named(lines: list[bytes], tokens: list[bytes]) -> list[bytes]:
    """The "Name: value\r\n" lines whose header a Connection header does not name (RFC 9110
    7.6.1); both directions call it only when a token is not a standard one."""
    named = frozenset(tokens)
    return [line for line in lines if line[: line.index(b":")].lower() not in named]


# b"200" for 200, and so on: the status code of a status line, without formatting per response.
_STATUS_CODES: Final = [b"%d" % code for code in range(1000)]


def bad_reason(reason: bytes) -> bool:
    """Whether a reason phrase holds what RFC 9112 4 does not allow (only HTAB, SP, VCHAR and
    obs-text): relayed, a NUL or a CR would make the client's status line invalid. A plain
    loop: compiled, it costs a few instructions a byte; a regex or bytes method call from
    compiled code costs about a thousand."""
    for i in range(len(reason)):
        c = reason[i]
        if (c < 0x20 and c != 0x09) or c == 0x7F:
            return True
    return False


class WriteBatch:
    """Writes of one loop iteration, sent together once its I/O callbacks have run.

    Every write the data plane makes goes through here, so each transport's bytes keep their
    order. Sent back to back, the writes of one iteration wake each peer (client, upstream)
    once rather than once per write: on loopback under load that cut the CPU per proxied
    request by about a quarter (make bench: 45-47 us to 30-37 us). A write waits at most
    until the loop's next turn; a close queued here happens after the writes queued before
    it. Nothing stays past one turn, and once BATCH_FLUSH_BYTES are queued the batch is
    written at once: one turn can carry up to 32 reads of 256 KiB from one socket (libuv reads
    a ready socket until it runs dry), and a transport's own back-pressure (pause_writing, which
    stops the upstream read) only sees bytes once they are written to it.
    """

    __slots__ = ("flushing", "loop", "pending", "queued", "scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: list[tuple[asyncio.Transport, bytes | None]] = []  # None: close
        self.scheduled = False
        self.queued = 0  # bytes in pending
        self.flushing = False  # a write made from flush's own callees waits for the next one

    def write(self, transport: asyncio.Transport, data: bytes) -> None:
        self.pending.append((transport, data))
        queued = self.queued + len(data)
        self.queued = queued
        if queued >= BATCH_FLUSH_BYTES and not self.flushing:
            self.flush()
        elif not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.flush)

    def close(self, transport: asyncio.Transport) -> None:
        """Close the transport once what was queued for it has been written."""
        self.pending.append((transport, None))
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.scheduled = False
        pending = self.pending
        if not pending:
            return
        self.pending = []
        self.queued = 0
        self.flushing = True
        try:
            for transport, data in pending:
                if transport.is_closing():
                    continue  # aborted or lost meanwhile: its bytes have nowhere to go
                if data is None:
                    transport.close()
                else:
                    transport.write(data)
        finally:
            self.flushing = False


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


class _ChunkedBody(Exception):
    """Raised from on_headers_complete to hand a chunked body to a ChunkedBodyReader: the head
    parser has no on_header, so it would not report the trailer section."""

    def __init__(self, body_at: int) -> None:
        super().__init__()
        self.body_at = body_at  # where the body begins in the bytes being parsed


# A chunked response's head as a ChunkedBodyReader is told it: the body that follows is parsed
# as the real one was framed. (Keep-alive and status were taken from the real head.)
_CHUNKED_HEAD: Final = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"

# Final statuses whose response has no body whatever its head says (RFC 9110 6.4.1; llhttp
# reads none either). 1xx heads are interim, or 101's tunnel.
NO_BODY_STATUSES: Final = frozenset({204, 304})


class ChunkedBodyReader:
    """Parses one chunked response body, from just after its head: a parser with on_header,
    since llhttp reports the trailer section only through it. Response heads are parsed by the
    connection's own parser, which has no on_header (see UpstreamConnection.on_headers_complete),
    so each chunked body gets one of these; it is used once and dropped."""

    __slots__ = ("conn", "parser", "priming")

    def __init__(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        self.parser = httptools.HttpResponseParser(self)
        self.priming = True  # while the stand-in head is parsed
        self.parser.feed_data(_CHUNKED_HEAD)

    def reading(self) -> bool:
        """Whether the body is being read: the connection holds this reader from just after
        priming until the body has ended (bytes after that are not the upstream's answer)."""
        return self.conn.chunked_body is self

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.reading():
            self.conn.trailer(name, value)

    def on_headers_complete(self) -> None:
        if not self.priming:
            # A second message on this stream: bytes after the end of the response.
            raise ValueError("data after the end of the response")
        self.priming = False

    def on_body(self, body: bytes) -> None:
        self.conn.on_body(body)

    def on_message_complete(self) -> None:
        conn = self.conn
        conn.chunked_body = None
        conn.on_message_complete()


class UpstreamConnection:
    """An asyncio protocol by its methods (see DownstreamConnection for why no base class)."""

    __slots__ = (
        "chunk",  # the bytes being parsed, while the head parser runs: heads are cut from them
        "chunked",
        "chunked_body",
        "client",
        "closed",
        "content_length",
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
        "trailer_size",
        "trailers",
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
        self.start_request(None, False)

    def start_request(self, client: ResponseSink | None, no_body: bool) -> None:
        """A new request goes out on this connection: reset the response state."""
        self.client = client
        self.no_body = no_body  # a HEAD request: the response has no body whatever it says
        self.head_done = False
        self.received_any = False
        self.chunked_body: ChunkedBodyReader | None = None  # set while a chunked body is read
        self.trailers: list[bytes] | None = None  # "Name: value\r\n" of the trailers forwarded
        self.trailer_size = 0
        self.head_start = 0  # where the next head begins in the bytes being parsed
        self.chunk = b""  # bytes being parsed belong to the exchange before this one
        self._reset_head()

    def _reset_head(self) -> None:
        """Before a response head (the final one, or one after a 1xx): what the head sets.
        (status, status_rest, header_block and keep_alive are set as each head completes.)"""
        self.head_buf = b""  # the head's bytes from earlier reads, bounded by MAX_RESPONSE_HEAD
        self.content_length: bytes | None = None
        self.chunked = False
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
        self.endpoint.connections += 1

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is None:
            # Bytes on an idle connection: the upstream is confused; do not reuse it.
            self.close()
            return
        if not self.received_any and data[0] != _H:
            # The first byte of the exchange: llhttp also takes RTSP/ and ICE/ status lines,
            # and only HTTP/ begins with an H.
            client.upstream_bad_response(self, ValueError("not an HTTP/1.x response"))
            return
        self.received_any = True
        if self.tunnel:
            client.tunnel_data(data)
            return
        reader = self.chunked_body
        if reader is not None:
            if not self._read_chunked(reader, data, client):
                return
        elif not self._read(data, client):
            return
        if self.client is not None:
            self.client.response_flush()

    def _read(self, data: bytes, client: ResponseSink) -> bool:
        """Parse `data` with the head parser; False where the exchange is over in a bad way."""
        self.chunk = data
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self.chunk = b""
            self.tunnel = True
            client.start_tunnel(data[upgrade.args[0] :])
            return False
        except httptools.HttpParserError as exc:
            # Bytes after a complete response: the client's next exchange may have begun on
            # this connection inside feed_data (start_request clears self.chunk), or it may be
            # over (llhttp's "data after close"). They answer nothing: only this connection is
            # bad, and it is not trusted again.
            stray = self.chunk is not data or self.client is not client
            self.chunk = b""
            if stray:
                self.close()
                return False
            if not isinstance(exc, httptools.HttpParserCallbackError):
                client.upstream_bad_response(self, exc)
                return False
            cause = exc.__context__
            # The aborted parser cannot go on: a fresh one for the next response.
            self.parser = httptools.HttpResponseParser(self)
            if isinstance(cause, _ChunkedBody):
                reader = self.chunked_body = ChunkedBodyReader(self)
                return self._read_chunked(reader, data[cause.body_at :], client)
            if isinstance(cause, _NoBody):
                self.on_message_complete()  # HEAD: the head is all there is
                return True
            client.upstream_bad_response(self, cause or exc)
            return False
        # A head still incomplete at the end of the read that began it (start_request clears
        # self.chunk: a pipelined request may start its exchange inside feed_data).
        partial = not self.head_done and self.chunk is data
        self.chunk = b""  # not held past the read (it may be a large one)
        if partial:
            # Keep the head's bytes so far, bounded (a body may follow a head in one read, so
            # only bytes of the incomplete head count).
            if self.head_buf:
                self.head_buf += data
            else:
                self.head_buf = data[self.head_start :] if self.head_start else data
            self.head_start = 0
            if len(self.head_buf) > MAX_RESPONSE_HEAD:
                client.upstream_bad_response(self, ValueError("response head too large"))
                return False
        return True

    def _read_chunked(self, reader: ChunkedBodyReader, data: bytes, client: ResponseSink) -> bool:
        """Parse `data` as the chunked body being read; False as for _read."""
        try:
            reader.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if not reader.reading() or self.client is not client:
                # Bytes after the end of the response (the client may have sent its next
                # request on this connection already): do not trust this connection.
                self.close()
                return False
            cause = exc.__context__ if isinstance(exc, httptools.HttpParserCallbackError) else None
            client.upstream_bad_response(self, cause or exc)
            return False
        return True

    def eof_received(self) -> bool | None:
        # The upstream closed its side: nothing more can come, and a close-delimited body has
        # ended. Falsy: the transport closes, and connection_lost tells the client.
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.endpoint.connections -= 1
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

    def on_headers_complete(self) -> None:
        client = self.client
        assert client is not None
        parser = self.parser
        status = self.status = parser.get_status_code()
        if status < 100:
            raise ValueError(f"status code {status:03d}")  # llhttp takes any three digits
        # The head is taken from the bytes as received, not rebuilt from a callback per header
        # line (two new bytes objects and a Python call each, a tenth of a request's CPU): llhttp
        # has just checked all of it, so it is "HTTP/d.d ddd[ reason]" and lines of
        # "Name:[OWS]value", each ending in CRLF (no bare CR or LF, no obs-fold, no control
        # character but HTAB in a value), then an empty line.
        buffered = self.head_buf
        if buffered:
            raw = buffered + self.chunk
            start = 0
        else:
            raw = self.chunk
            start = self.head_start
            if not raw:  # start_request cleared it: a new exchange began inside this read
                raise ValueError("data after the end of the response")  # see _read
        while raw[start] != _H:
            start += 1  # CR and LF, which llhttp skips between messages
        line_end = start + 12  # after "HTTP/1.1 200"; then nothing, or SP and a reason
        while raw[line_end] != _CR:
            line_end += 1
        if line_end > start + 13:  # a reason phrase: relayed once checked
            status_rest = raw[start + 9 : line_end]  # "200 OK"
            if bad_reason(status_rest):
                raise ValueError("a control character in the reason phrase")
            self.status_rest = status_rest
        else:
            self.status_rest = _STATUS_CODES[status]
        self.keep_alive = parser.should_keep_alive()
        head_end = self._read_head_lines(raw, line_end)
        body_at = head_end + 4 - len(buffered)  # where the body begins in self.chunk
        self.head_buf = b""
        if status < 200 and status != 101:
            client.response_interim(self)
            self.head_start = body_at
            self._reset_head()
            return
        self.head_done = True
        client.response_head(self)
        if status == 101:
            return
        if self.no_body:
            raise _NoBody
        if self.chunked and status not in NO_BODY_STATUSES:
            raise _ChunkedBody(body_at)

    def _read_head_lines(self, raw: bytes, line_end: int) -> int:
        """Read the header lines that follow the status line ending at raw[line_end] (its CR):
        set header_block to the end-to-end lines, as they came where they can (hop-by-hop
        lines cut out, Content-Length made canonical), and content_length, chunked and
        upgrade. Returns where the empty line that ends the head begins.

        Written for compiled code: a method call on bytes costs about 700 instructions from
        here, indexing and slicing a tenth of that, so the lines come from one split, names are
        looked up as spelled before any lower(), and the block is cut from `raw` in slices."""
        head_end = raw.find(b"\r\n\r\n", line_end)
        if head_end == line_end:
            self.header_block = b""
            return head_end
        block_end = head_end + 2  # the end of the last line's CRLF
        kept_from = line_end + 2  # where the run of lines relayed as they came begins
        parts: list[bytes] | None = None  # the block so far, where a line was cut or changed
        tokens: list[bytes] | None = None  # Connection tokens that name a header
        line_at = kept_from
        for line in raw[kept_from:head_end].split(b"\r\n"):
            next_line = line_at + len(line) + 2
            code = _R_END_TO_END
            colon = 0
            first = line[0]
            for spelled, spelled_code in _USUAL_NAMES[first]:
                if line.startswith(spelled):
                    code = spelled_code
                    colon = len(spelled) - 1
                    break
            else:
                for length in _CANDIDATE_LENGTHS[first]:
                    if len(line) > length and line[length] == _COLON:
                        code = _RESPONSE_HEADER_CODES.get(line[:length].lower(), _R_END_TO_END)
                        colon = length
                        break
            if code == _R_END_TO_END:
                line_at = next_line
                continue
            value_at = colon + 1
            while value_at < len(line) and (line[value_at] == _SP or line[value_at] == _HTAB):
                value_at += 1  # llhttp strips leading OWS and keeps trailing
            value = line[value_at:]
            replacement = b""
            if code == _R_CONTENT_LENGTH:
                length_value = self.content_length = canonical_length(value)
                if length_value is value:
                    line_at = next_line
                    continue  # relayed as it came
                replacement = line[:value_at] + length_value + b"\r\n"
            elif code == _R_CONNECTION:
                # (The usual value compared first: a set lookup hashes it.)
                if value != b"keep-alive" and value not in STANDARD_CONNECTION_VALUES:
                    found = [t.strip() for t in value.lower().split(b",") if t.strip()]
                    named = [t for t in found if t not in STANDARD_CONNECTION_TOKENS]
                    if named:
                        tokens = named if tokens is None else tokens + named
            elif code == _R_TRANSFER_ENCODING:
                # Only one plain "chunked" is relayed, as on the request side (and as nginx
                # does): a body in any other coding (gzip, chunkedchunked, a list) is read to
                # the close, and forwarding it without its coding, which is hop-by-hop, would
                # change it.
                if self.chunked or value.strip().lower() != b"chunked":
                    raise ValueError(f"unsupported Transfer-Encoding {value.decode('latin-1')!r}")
                self.chunked = True
            elif code == _R_UPGRADE:
                self.upgrade = value
            if parts is None:
                parts = []
            if line_at > kept_from:
                parts.append(raw[kept_from:line_at])
            if replacement:
                parts.append(replacement)
            kept_from = line_at = next_line
        if parts is None:
            block = raw[kept_from:block_end]
        else:
            if kept_from < block_end:
                parts.append(raw[kept_from:block_end])
            block = parts[0] if len(parts) == 1 else b"".join(parts)
        if tokens is not None:
            block = b"".join(without_named(block.splitlines(keepends=True), tokens))
        self.header_block = block
        return head_end

    def trailer(self, name: bytes, value: bytes) -> None:
        """A field of the trailer section after the last chunk, from the ChunkedBodyReader."""
        self.trailer_size += len(name) + len(value) + 4
        if self.trailer_size > MAX_RESPONSE_HEAD:
            raise ValueError("response trailers too large")
        self.trailers = add_trailer(self.trailers, name, value)

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
        if len(pool.idle) >= pool.max_idle:
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
        "connecting",
        "connections",
        "ejected_until",
        "ejection",
        "failures",
        "healthy",
        "idle",
        "loop",
        "max_idle",
        "retired",
        "server_name",
        "settings",
        "text",
        "tls",
        "tls_settings",
    )

    def __init__(self, address: Address, settings: UpstreamSettings) -> None:
        self.address = address
        self.text = address_text(address)  # as logs and the access log write it
        self.settings = settings
        self.max_idle = settings.max_idle  # read on every return to the pool: a plain field
        # Routing reads only `healthy`: active checks pass (or none run) and not ejected.
        self.healthy = True
        self.checks_ok = True
        self.ejected_until = 0.0
        self.failures = 0  # consecutive connect errors or 5xx answers
        self.ejection = EjectionConfig()
        self.idle: deque[UpstreamConnection] = deque()
        self.loop = asyncio.get_running_loop()
        self.connections = 0  # open, idle or busy (counted per connection, not per request)
        self.connecting = 0  # connections being opened, each for a request
        self.retired = False  # no table routes here (`retire`)
        # HTTPS endpoints: the client context, the name sent and verified, and the settings
        # they came from (a change closes the idle connections made with the old ones).
        self.tls: ssl.SSLContext | None = None
        self.server_name: str | None = None
        self.tls_settings: UpstreamTls | None = None

    def __repr__(self) -> str:
        state = " retired" if self.retired else ""
        return f"<EndpointPool {self.address} idle={len(self.idle)} open={self.connections}{state}>"

    @property
    def in_flight(self) -> int:
        """Requests under way to this endpoint: one per connection that is not idle, and
        one per connection being opened."""
        return self.connections - len(self.idle) + self.connecting

    def retire(self) -> None:
        """No table routes here any more (removed or draining): idle connections close now,
        busy ones after their exchange (`finish` keeps none when max_idle is 0), so the
        endpoint drains without a check on the request path."""
        self.retired = True
        self.max_idle = 0
        self.close_all()

    def reinstate(self) -> None:
        self.retired = False
        self.max_idle = self.settings.max_idle

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
        # Shared by every connection of the process, downstream and upstream (see WriteBatch).
        self.writes = WriteBatch(asyncio.get_running_loop())

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
        if pool.max_idle < max_in_flight:
            pool.settings = replace(pool.settings, max_idle=max_in_flight)
            pool.max_idle = max_in_flight
        return pool

    async def connect(self, target: EndpointPool) -> UpstreamConnection:
        """Open a new connection to the target's endpoint; raises OSError or TimeoutError."""
        loop = asyncio.get_running_loop()
        address = target.address
        target.connecting += 1  # a drain waits for these too: each carries a request
        try:
            async with asyncio.timeout(self.connect_timeout):
                if target.tls is None:
                    _, protocol = await loop.create_connection(
                        lambda: cast(asyncio.Protocol, UpstreamConnection(target)),
                        address.host,
                        address.port,
                    )
                else:
                    _, protocol = await loop.create_connection(
                        lambda: cast(asyncio.Protocol, UpstreamConnection(target)),
                        address.host,
                        address.port,
                        ssl=target.tls,
                        server_hostname=target.server_name or address.host,
                        ssl_handshake_timeout=self.connect_timeout,
                    )
        finally:
            target.connecting -= 1
        return cast(UpstreamConnection, protocol)

    def use_settings(self, settings: UpstreamSettings, connect_timeout: float) -> None:
        """The upstream settings of a reloaded config: new connections and every endpoint's
        idle pool follow them from now on."""
        self.settings = settings
        self.connect_timeout = connect_timeout
        for pool in self.pools.values():
            pool.settings = settings
            if not pool.retired:
                pool.max_idle = settings.max_idle

    def retire_unused(self, in_use: set[Address]) -> None:
        """Retire the endpoints no table routes to; take back those routed to again."""
        for address, pool in self.pools.items():
            if address in in_use:
                if pool.retired:
                    pool.reinstate()
            elif not pool.retired:
                pool.retire()

    def in_flight(self) -> dict[str, int]:
        """Requests under way per endpoint (`address_text`), the endpoints that have any."""
        return {
            address_text(address): pool.in_flight
            for address, pool in self.pools.items()
            if pool.in_flight
        }

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
            for address, pool in list(self.pools.items()):
                if pool.retired and pool.connections == 0 and pool.connecting == 0:
                    del self.pools[address]  # drained: a later table gets a fresh one
                    continue
                pool.sweep(now)
            for pool in self.shadow_pools.values():
                pool.sweep(now)

    async def close(self) -> None:
        sweeper, self._sweeper = self._sweeper, None
        await cancel_and_wait([sweeper])
        for pool in (*self.pools.values(), *self.shadow_pools.values()):
            pool.close_all()
