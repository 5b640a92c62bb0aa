"""TLS listeners on `ssl.SSLSocket`: OpenSSL reads and writes the socket itself.

asyncio's (and uvloop's) TLS runs OpenSSL on memory BIOs: every record is read from the
socket into a buffer, copied into the BIO, decrypted, and the other way round for writes,
with a state machine in between. Measured on a new connection per request (handshake, one
request, close), that costs about 290-300 us of CPU per connection for a bare uvloop server
against about 240 us for the same server on an SSLSocket, which is how nginx drives OpenSSL
(a socket BIO). A new connection's cost is what limits the handshake rate, so the data
listeners with `tls` use the classes here instead of `create_server(ssl=...)`.

`TlsListener` accepts from a listening socket with the loop's reader callbacks, and gives
each connection a `TlsTransport`: the handshake runs on the socket in non-blocking steps,
then the protocol gets `connection_made` (as with asyncio, only after a good handshake),
`data_received`, `eof_received`, `pause_writing`/`resume_writing` and `connection_lost`.
The transport offers what the data plane uses of asyncio.Transport: write, close, abort,
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

log = logging.getLogger("pointsman.tls")

# One SSL_read returns at most one record, and a record carries at most 16 KiB of data
# (RFC 8446 5.1): a larger buffer would be allocated and shrunk on every read.
READ_SIZE: Final = 16384
# Connections accepted per wake-up of a listening socket before other callbacks get a turn
# (as asyncio's backlog-bounded accept loop), so a burst of connects cannot starve the
# connections already open.
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


class TlsListener:
    """Accepts TLS connections on `sockets` (listening, non-blocking). The stand-in for the
    asyncio.Server that `create_server` returns: `sockets`, `close`, `wait_closed`."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sockets: list[socket.socket],
        context: ssl.SSLContext,
        protocol_factory: Callable[[], TlsProtocol],
        handshake_timeout: float | None,
    ) -> None:
        self.loop = loop
        self.sockets = sockets
        self.context = context
        self.protocol_factory = protocol_factory
        self.handshake_timeout = handshake_timeout
        self.serving = True
        self.retry: asyncio.TimerHandle | None = None  # accepting again after a resource error
        for sock in sockets:
            sock.setblocking(False)
            loop.add_reader(sock.fileno(), self._accept, sock)

    def _accept(self, listening: socket.socket) -> None:
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
        for sock in self.sockets:
            self.loop.remove_reader(sock.fileno())
        self.retry = self.loop.call_later(ACCEPT_RETRY_DELAY, self._resume_accepting)

    def _resume_accepting(self) -> None:
        self.retry = None
        if self.serving:
            for sock in self.sockets:
                self.loop.add_reader(sock.fileno(), self._accept, sock)

    def close(self) -> None:
        """Stop accepting and close the listening sockets (connections stay open)."""
        if not self.serving:
            return
        self.serving = False
        if self.retry is not None:
            self.retry.cancel()
            self.retry = None
        for sock in self.sockets:
            self.loop.remove_reader(sock.fileno())
            sock.close()

    async def wait_closed(self) -> None:
        """Nothing to wait for: close() released the sockets (asyncio.Server's interface)."""


class TlsTransport:
    """One accepted TLS connection (asyncio.Transport's interface, by its methods: a plain
    class, as the data plane's protocols are)."""

    __slots__ = (
        "blocked",
        "buffered",
        "closing",
        "extra",
        "fd",
        "handshake_timer",
        "high",
        "listener",
        "loop",
        "lost",
        "low",
        "protocol",
        "queue",
        "read_wants_write",
        "reader_on",
        "reading",
        "sock",
        "writer_on",
        "writing_paused",
    )

    def __init__(self, listener: TlsListener, sock: socket.socket, peer: Any) -> None:
        self.listener = listener
        loop = self.loop = listener.loop
        self.protocol: TlsProtocol | None = None  # made once the handshake succeeds
        # wrap_socket takes over the descriptor (`sock` is detached) and keeps its
        # non-blocking mode: every TLS call below returns at once or raises want-read/write.
        self.sock: ssl.SSLSocket = listener.context.wrap_socket(
            sock, server_side=True, do_handshake_on_connect=False
        )
        self.fd = self.sock.fileno()
        self.extra: dict[str, Any] = {"peername": peer}
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

    # ----------------------------------------------------------------- the handshake

    def _handshake(self) -> None:
        try:
            self.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._want(read=True, write=False, callback=self._handshake)
            return
        except ssl.SSLWantWriteError:
            self._want(read=False, write=True, callback=self._handshake)
            return
        except (ssl.SSLError, OSError):
            # A client that speaks no TLS, offers nothing we accept, or goes away: nothing
            # reached the data plane, so there is no one to tell (as asyncio).
            self._release()
            return
        if self.handshake_timer is not None:
            self.handshake_timer.cancel()
            self.handshake_timer = None
        self._want(read=False, write=False, callback=self._handshake)
        if not self.listener.serving:
            self._release()  # the listener closed (drain) while this handshake ran
            return
        protocol = self.protocol = self.listener.protocol_factory()
        protocol.connection_made(cast(asyncio.BaseTransport, self))
        if not self.closing:
            self._update_reader()
            if self.reading and self.sock.pending():
                self.loop.call_soon(self._read)  # the client's first bytes came with its Finished

    def _handshake_timed_out(self) -> None:
        self.handshake_timer = None
        if self.protocol is None and not self.closing:
            self._release()

    def _want(self, *, read: bool, write: bool, callback: Callable[[], None]) -> None:
        loop = self.loop
        if read:
            loop.add_reader(self.fd, callback)
        elif self.reader_on:
            loop.remove_reader(self.fd)
        self.reader_on = read
        if write:
            loop.add_writer(self.fd, callback)
        elif self.writer_on:
            loop.remove_writer(self.fd)
        self.writer_on = write

    # ----------------------------------------------------------------- reading

    def _update_reader(self) -> None:
        want = self.reading and not self.closing and not self.read_wants_write
        if want and not self.reader_on:
            self.loop.add_reader(self.fd, self._read)
            self.reader_on = True
        elif not want and self.reader_on:
            self.loop.remove_reader(self.fd)
            self.reader_on = False

    def _read(self) -> None:
        if not self.reading or self.closing:
            return
        protocol = self.protocol
        assert protocol is not None
        try:
            data = self.sock.recv(READ_SIZE)
        except ssl.SSLWantReadError:
            return
        except ssl.SSLWantWriteError:
            # OpenSSL must send (a TLS 1.3 KeyUpdate answer) before it can go on reading.
            self.read_wants_write = True
            self._update_reader()
            self._update_writer()
            return
        except (ssl.SSLError, OSError) as exc:
            self._fail(exc)
            return
        if not data:
            # close_notify, or the TCP connection ended (suppress_ragged_eofs): TLS has no
            # half-close here, so whatever the protocol answers, the connection closes once
            # what is queued has been written (as asyncio's SSL transport does).
            self.reading = False
            self._update_reader()
            protocol.eof_received()
            self.close()
            return
        protocol.data_received(data)
        # A decrypted record may wait in OpenSSL's buffer, where epoll cannot see it.
        if self.reading and not self.closing and self.sock.pending():
            self.loop.call_soon(self._read)

    def pause_reading(self) -> None:
        if self.reading:
            self.reading = False
            self._update_reader()

    def resume_reading(self) -> None:
        if not self.reading and not self.closing:
            self.reading = True
            self._update_reader()
            if self.protocol is not None and self.sock.pending():
                self.loop.call_soon(self._read)

    def is_reading(self) -> bool:
        return self.reading and not self.closing

    # ----------------------------------------------------------------- writing

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.closing or not data:
            return  # closed: the bytes have nowhere to go (asyncio drops them too)
        if self.blocked is not None or self.read_wants_write:
            chunk = bytes(data)
            self.queue.append(chunk)
            self.buffered += len(chunk)
            self._check_high()
            return
        self._send(bytes(data) if not isinstance(data, bytes) else data)

    def writelines(self, chunks: Any) -> None:
        self.write(b"".join(chunks))

    def _send(self, data: bytes) -> bool:
        """Write `data` (all or nothing); False if it is held in `blocked` or failed."""
        try:
            self.sock.send(data)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            if self.blocked is None:
                self.blocked = data
                self.buffered += len(data)
            self._update_writer()
            self._check_high()
            return False
        except (ssl.SSLError, OSError) as exc:
            self._fail(exc)
            return False
        return True

    def _update_writer(self) -> None:
        want = self.blocked is not None or self.read_wants_write
        if want and not self.writer_on:
            self.loop.add_writer(self.fd, self._writable)
            self.writer_on = True
        elif not want and self.writer_on:
            self.loop.remove_writer(self.fd)
            self.writer_on = False

    def _writable(self) -> None:
        if self.read_wants_write:
            self.read_wants_write = False
            self._update_writer()
            self._update_reader()
            self._read()
            if self.lost:
                return
        blocked = self.blocked
        if blocked is not None:
            try:
                self.sock.send(blocked)
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                return
            except (ssl.SSLError, OSError) as exc:
                self._fail(exc)
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

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self.low, self.high)

    def can_write_eof(self) -> bool:
        return False

    # ----------------------------------------------------------------- closing

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        """Close once the queued bytes are written: a close_notify, then the socket."""
        if self.closing:
            return
        self.closing = True
        self._update_reader()
        if self.blocked is None and not self.read_wants_write:
            self._shutdown()

    def abort(self) -> None:
        """Close at once: queued bytes are dropped, no close_notify is sent."""
        if self.lost:
            return
        self.closing = True
        self._lose(None)

    def _shutdown(self) -> None:
        # One close_notify and no wait for the client's (nginx's no_wait_shutdown): the
        # second SSL_shutdown that unwrap() makes raises want-read, the first has sent ours.
        try:
            self.sock.unwrap()
        except (ssl.SSLError, OSError, ValueError):
            pass
        self._lose(None)

    def _fail(self, exc: Exception) -> None:
        self.closing = True
        self._lose(exc)

    def _lose(self, exc: Exception | None) -> None:
        self.lost = True
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
        if self.reader_on:
            self.loop.remove_reader(self.fd)
            self.reader_on = False
        if self.writer_on:
            self.loop.remove_writer(self.fd)
            self.writer_on = False
        self.sock.close()

    # ----------------------------------------------------------------- about it

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        extra = self.extra
        if name in extra:
            return extra[name]
        sock = self.sock
        if name == "socket":
            return sock
        if name == "ssl_object":
            return sock
        if name == "sslcontext":
            return sock.context
        if name == "sockname":
            try:
                return sock.getsockname()
            except OSError:
                return default
        if name == "peercert":
            return sock.getpeercert()
        if name == "cipher":
            return sock.cipher()
        if name == "compression":
            return sock.compression()
        return default

    def set_protocol(self, protocol: TlsProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> TlsProtocol | None:
        return self.protocol


def listening_sockets(host: str, port: int, backlog: int) -> list[socket.socket]:
    """Bound, listening sockets for host:port: one per address the name resolves to (as
    create_server makes them: SO_REUSEADDR, IPv6 sockets IPv6-only)."""
    sockets: list[socket.socket] = []
    seen: set[tuple[Any, ...]] = set()
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets
