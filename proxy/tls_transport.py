"""TLS listeners with OpenSSL on the socket itself (a socket BIO, as nginx drives it).

asyncio's (and uvloop's) TLS runs OpenSSL on memory BIOs: every record is read from the
socket into a buffer, copied into the BIO, decrypted, and the other way round for writes,
with a state machine in between. Measured on a new connection per request (handshake, one
request, close), that costs about 290-300 us of CPU per connection for a bare uvloop server
against about 240 us for the same server on an ssl.SSLSocket. A new connection's cost is
what limits the handshake rate, so the data listeners with `tls` use the classes here
instead of `create_server(ssl=...)`.

`TlsListener` accepts from a listening socket with the loop's reader callbacks, and gives
each connection a `TlsTransport` over the C object under ssl.SSLSocket (`_ssl._SSLSocket`):
the handshake runs on the socket in non-blocking steps, then the protocol gets
`connection_made` (as with asyncio, only after a good handshake), `data_received`,
`eof_received`, `pause_writing`/`resume_writing` and `connection_lost`. The transport offers
what the data plane uses of asyncio.Transport: write, close, abort,
pause_reading/resume_reading, set_write_buffer_limits, is_closing, get_extra_info.

Two OpenSSL rules shape the writing side. CPython sets no partial writes on its SSL objects
(SSL_MODE_ENABLE_PARTIAL_WRITE is off), so a write either takes all its bytes or fails with
want-write, and must then be retried with the same bytes (moving buffers are allowed):
`blocked` holds them, and later writes queue behind it. And a decrypted record can sit
in OpenSSL's buffer after a read, where epoll cannot see it: `pending()` is checked after
each read.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any, Final, Protocol, cast

from proxy.tls import SniOwner

log = logging.getLogger("pointsman.tls")

# One SSL_read returns at most one record, and a record carries at most 16 KiB of data
# (RFC 8446 5.1): a larger buffer would be allocated and shrunk on every read.
READ_SIZE: Final = 16384
# Connections accepted per wake-up of a listening socket before other callbacks get a turn
# (as asyncio's backlog-bounded accept loop), so a burst of connects cannot starve the
# connections already open. A trade: with a new TLS connection per request (make bench),
# 64 gave 0.80x nginx's rate and a request p50 of 12.6 ms (requests wait behind handshakes),
# 1 (nginx's multi_accept off) 0.64x and 2.1 ms (handshakes wait in the accept queue).
ACCEPT_BATCH: Final = 64
# After EMFILE/ENFILE/ENOBUFS/ENOMEM the listener stops accepting for this long (as
# asyncio does) rather than spinning on a socket it cannot take connections from.
ACCEPT_RETRY_DELAY: Final = 1.0
# Default write buffer limits, as asyncio's: pause_writing above HIGH, resume at LOW.
WRITE_HIGH: Final = 64 * 1024
WRITE_LOW_SHARE: Final = 4  # low = high / 4, as asyncio's default

_ACCEPT_RESOURCE_ERRORS: Final = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
)


class TlsProtocol(Protocol):
    """What a TlsTransport calls on its protocol (asyncio.Protocol's interface)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None: ...
    def data_received(self, data: bytes) -> None: ...
    def eof_received(self) -> bool | None: ...
    def connection_lost(self, exc: Exception | None) -> None: ...
    def pause_writing(self) -> None: ...
    def resume_writing(self) -> None: ...


class TlsConnection(Protocol):
    """What the transport calls of `_ssl._SSLSocket`, the C object under ssl.SSLSocket and
    ssl.SSLObject (SSLContext._wrap_socket makes it; Python's ssl.py is its only other user)."""

    context: ssl.SSLContext
    owner: Any  # what the SNI callback is given (held by weak reference)

    def do_handshake(self) -> None: ...
    def read(self, size: int) -> bytes: ...
    def write(self, data: bytes) -> int: ...
    def pending(self) -> int: ...
    def shutdown(self) -> Any: ...
    def version(self) -> str | None: ...
    def selected_alpn_protocol(self) -> str | None: ...


class TlsListener:
    """Accepts TLS connections on a listening socket. The stand-in for the asyncio.Server
    that `create_server` returns: `sockets`, `close`, `wait_closed`."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        context: ssl.SSLContext,
        protocol_factory: Callable[[], TlsProtocol],
        handshake_timeout: float | None,
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.sockets = [sock]  # as asyncio.Server has them
        # The C object under ssl.SSLSocket (the same OpenSSL calls on the socket), made
        # without SSLSocket's Python constructor: that takes another socket object, a
        # getsockname, a getpeername, a getsockopt and two ioctls, 11 us per connection.
        self.wrap: Callable[..., TlsConnection] = context._wrap_socket  # type: ignore[attr-defined]
        self.sni = context.sni_callback is not None
        self.protocol_factory = protocol_factory
        self.handshake_timeout = handshake_timeout
        self.serving = True
        self.retry: asyncio.TimerHandle | None = None  # accepting again after a resource error
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        listening = self.sock
        for _ in range(ACCEPT_BATCH):
            try:
                sock, peer = listening.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the client went before we took it: the next one may be waiting
            except OSError as err:
                if err.errno not in _ACCEPT_RESOURCE_ERRORS:
                    raise
                log.error("cannot accept TLS connections for %.0f s: %s", ACCEPT_RETRY_DELAY, err)
                self._pause_accepting()
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            TlsTransport(self, sock, peer)

    def _pause_accepting(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.retry = self.loop.call_later(ACCEPT_RETRY_DELAY, self._resume_accepting)

    def _resume_accepting(self) -> None:
        self.retry = None
        if self.serving:
            self.loop.add_reader(self.sock.fileno(), self._accept)

    def close(self) -> None:
        """Stop accepting and close the listening socket (connections stay open)."""
        if not self.serving:
            return
        self.serving = False
        if self.retry is not None:
            self.retry.cancel()
            self.retry = None
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()

    async def wait_closed(self) -> None:
        """Nothing to wait for: close() released the socket (asyncio.Server's interface)."""


class TlsTransport:
    """One accepted TLS connection (asyncio.Transport's interface, by its methods: a plain
    class, as the data plane's protocols are)."""

    __slots__ = (
        "blocked",
        "buffered",
        "closing",
        "fd",
        "handshake_timer",
        "high",
        "listener",
        "loop",
        "lost",
        "low",
        "owner",
        "peer",
        "protocol",
        "queue",
        "read_wants_write",
        "reader_on",
        "reading",
        "sock",
        "tls",
        "writer_on",
        "writing_paused",
    )

    def __init__(self, listener: TlsListener, sock: socket.socket, peer: Any) -> None:
        self.listener = listener
        loop = self.loop = listener.loop
        self.protocol: TlsProtocol | None = None  # made once the handshake succeeds
        self.sock = sock  # non-blocking: every TLS call below returns or raises want-*
        tls = self.tls = listener.wrap(sock, True, None, owner=None, session=None)
        # The SNI callback needs an owner whose `context` it can set (see SniOwner).
        self.owner: SniOwner | None = None
        if listener.sni:
            tls.owner = self.owner = SniOwner(tls)
        self.fd = sock.fileno()
        self.peer = peer
        self.blocked: bytes | None = None  # a write OpenSSL refused for now: retried as is
        self.queue: list[bytes] = []  # writes behind `blocked`
        self.buffered = 0  # bytes in blocked and queue
        self.high = WRITE_HIGH
        self.low = WRITE_HIGH // WRITE_LOW_SHARE
        self.writing_paused = False
        self.reading = True  # the protocol wants data (pause_reading/resume_reading)
        self.reader_on = False  # a reader callback is registered for fd
        self.writer_on = False
        self.read_wants_write = False  # a read needs the socket writable first (TLS 1.3 key update)
        self.closing = False  # close() or abort() called, or the connection failed
        self.lost = False  # connection_lost delivered (or no protocol to deliver it to)
        self.handshake_timer: asyncio.TimerHandle | None = None
        timeout = listener.handshake_timeout
        if timeout is not None:
            self.handshake_timer = loop.call_later(timeout, self._handshake_timed_out)
        self._handshake()

    # ----------------------------------------------------------------- the watchers
    #
    # uvloop makes a poll handle for a descriptor on its first add_reader or add_writer and
    # closes it when the last is removed; each one made costs an ioctl and epoll_ctl calls
    # (strace, a new connection per request: 6 ioctl and 12 epoll_ctl per connection while
    # each handshake step and each pause re-registered). So one reader callback serves the
    # handshake and the reads, and pause_reading is lazy: the reader stays registered until
    # it fires while paused, and a pause undone before more data comes costs no system call.

    def _watch_reads(self, on: bool) -> None:
        if on != self.reader_on:
            self.reader_on = on
            if on:
                self.loop.add_reader(self.fd, self._readable)
            else:
                self.loop.remove_reader(self.fd)

    def _watch_writes(self, on: bool) -> None:
        if on != self.writer_on:
            self.writer_on = on
            if on:
                self.loop.add_writer(self.fd, self._writable)
            else:
                self.loop.remove_writer(self.fd)

    # ----------------------------------------------------------------- the handshake

    def _handshake(self) -> None:
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            self._watch_writes(False)
            self._watch_reads(True)
            return
        except ssl.SSLWantWriteError:
            # Reads unwatched meanwhile: bytes waiting from the client would wake the reader
            # again and again while the socket stays full.
            self._watch_reads(False)
            self._watch_writes(True)
            return
        except (ssl.SSLError, OSError):
            # A client that speaks no TLS, offers nothing we accept, or goes away: nothing
            # reached the data plane, so there is no one to tell (as asyncio).
            self._release()
            return
        if self.handshake_timer is not None:
            self.handshake_timer.cancel()
            self.handshake_timer = None
        self._watch_writes(False)
        if not self.listener.serving:
            self._release()  # the listener closed (drain) while this handshake ran
            return
        protocol = self.protocol = self.listener.protocol_factory()
        protocol.connection_made(cast(asyncio.BaseTransport, self))
        if not self.closing and self.reading:
            self._watch_reads(True)
            if self.tls.pending():
                self.loop.call_soon(self._readable)  # bytes that came with the Finished

    def _handshake_timed_out(self) -> None:
        self.handshake_timer = None
        if self.protocol is None and not self.closing:
            self._release()

    # ----------------------------------------------------------------- reading

    def _readable(self) -> None:
        protocol = self.protocol
        if protocol is None:
            self._handshake()
            return
        if not self.reading or self.closing or self.read_wants_write:
            self._watch_reads(False)  # a lazy pause met data: now stop watching
            return
        try:
            data = self.tls.read(READ_SIZE)
        except ssl.SSLWantReadError:
            return
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
            data = b""  # a TCP end without close_notify (SSLSocket's suppress_ragged_eofs)
        except ssl.SSLWantWriteError:
            # OpenSSL must send (a TLS 1.3 KeyUpdate answer) before it can go on reading.
            self.read_wants_write = True
            self._watch_reads(False)
            self._update_writer()
            return
        except (ssl.SSLError, OSError) as exc:
            self._lose(exc)
            return
        if not data:
            # close_notify, or the TCP connection ended: TLS has no
            # half-close here, so whatever the protocol answers, the connection closes once
            # what is queued has been written (as asyncio's SSL transport does).
            self.reading = False
            self._watch_reads(False)
            protocol.eof_received()
            self.close()
            return
        protocol.data_received(data)
        # A decrypted record may wait in OpenSSL's buffer, where epoll cannot see it.
        if self.reading and not self.closing and self.tls.pending():
            self.loop.call_soon(self._readable)

    def pause_reading(self) -> None:
        self.reading = False  # lazily: see the watchers

    def resume_reading(self) -> None:
        if not self.reading and not self.closing:
            self.reading = True
            if self.protocol is not None and not self.read_wants_write:
                self._watch_reads(True)
                if self.tls.pending():
                    self.loop.call_soon(self._readable)

    def is_reading(self) -> bool:
        return self.reading and not self.closing

    # ----------------------------------------------------------------- writing

    def write(self, data: bytes) -> None:
        if self.closing or not data:
            return  # closed: the bytes have nowhere to go (asyncio drops them too)
        if self.blocked is not None or self.read_wants_write:
            self.queue.append(data)
            self.buffered += len(data)
            self._check_high()
            return
        self._send(data)

    def _send(self, data: bytes) -> bool:
        """Write `data` (all or nothing); False if it is held in `blocked` or failed."""
        try:
            self.tls.write(data)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            if self.blocked is None:
                self.blocked = data
                self.buffered += len(data)
            self._update_writer()
            self._check_high()
            return False
        except (ssl.SSLError, OSError) as exc:
            self._lose(exc)
            return False
        return True

    def _update_writer(self) -> None:
        self._watch_writes(self.blocked is not None or self.read_wants_write)

    def _writable(self) -> None:
        if self.protocol is None:
            self._handshake()
            return
        if self.read_wants_write:
            self.read_wants_write = False
            self._update_writer()
            if self.reading and not self.closing:
                self._watch_reads(True)
                self._readable()
            if self.lost:
                return
        blocked = self.blocked
        if blocked is not None:
            try:
                self.tls.write(blocked)
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                return
            except (ssl.SSLError, OSError) as exc:
                self._lose(exc)
                return
            self.blocked = None
            self.buffered -= len(blocked)
            if self.queue:
                rest = self.queue[0] if len(self.queue) == 1 else b"".join(self.queue)
                self.queue = []
                self.buffered -= len(rest)
                if not self._send(rest):
                    return
        self._update_writer()
        if self.blocked is None:
            if self.writing_paused and self.buffered <= self.low and self.protocol is not None:
                self.writing_paused = False
                self.protocol.resume_writing()
            if self.closing and not self.lost:
                self._shutdown()

    def _check_high(self) -> None:
        if not self.writing_paused and self.buffered > self.high and self.protocol is not None:
            self.writing_paused = True
            self.protocol.pause_writing()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = WRITE_HIGH if low is None else 4 * low
        if low is None:
            low = high // WRITE_LOW_SHARE
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self.high = high
        self.low = low

    def get_write_buffer_size(self) -> int:
        return self.buffered

    # ----------------------------------------------------------------- closing

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        """Close once the queued bytes are written: a close_notify, then the socket."""
        if self.closing:
            return
        self.closing = True  # reads stop lazily (see the watchers), or with the socket
        if self.blocked is None and not self.read_wants_write:
            self._shutdown()

    def abort(self) -> None:
        """Close at once: queued bytes are dropped, no close_notify is sent."""
        if not self.lost:
            self._lose(None)

    def _shutdown(self) -> None:
        # One close_notify and no wait for the client's (nginx's no_wait_shutdown): the
        # second SSL_shutdown that shutdown() makes raises want-read, the first sent ours.
        try:
            self.tls.shutdown()
        except (ssl.SSLError, OSError, ValueError):
            pass
        self._lose(None)

    def _lose(self, exc: Exception | None) -> None:
        """Close the socket and tell the protocol, if there is one yet."""
        self._release()
        if self.protocol is not None:
            self.loop.call_soon(self.protocol.connection_lost, exc)

    def _release(self) -> None:
        """Stop watching the socket and close it."""
        self.closing = True
        self.lost = True
        if self.handshake_timer is not None:
            self.handshake_timer.cancel()
            self.handshake_timer = None
        self.blocked = None
        self.queue = []
        self.buffered = 0
        self._watch_reads(False)
        self._watch_writes(False)
        self.sock.close()

    # ----------------------------------------------------------------- about it

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """What the data plane and its tests ask of a transport."""
        if name == "peername":
            return self.peer
        if name == "socket":
            return self.sock
        if name == "ssl_object":
            return self.tls
        return default
