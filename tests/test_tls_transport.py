"""The TLS transport of the data listeners (proxy/tls_transport.py): OpenSSL on the socket
itself, under the loop's reader and writer callbacks.

Each scenario runs a TlsListener with a small protocol on a real socket on 127.0.0.1, on
uvloop (as the workers run) and on asyncio's own loop, against clients of the ssl module:
asyncio streams, or a blocking SSLSocket in a thread where a test must see the TLS records
themselves (close_notify or none). Certificates are made with trustme. The data plane's own
use of it (Pointsman over TLS end to end) is covered in tests/test_tls.py and below."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import trustme
import uvloop
from aiohttp import web

from proxy.config import Address, Certificate
from proxy.server import listening_socket
from proxy.tls import server_context
from proxy.tls_transport import TlsListener, TlsTransport
from tests.conftest import Backend
from tests.test_cli import read_response
from tests.test_tls import StartTls, client_context, start_tls, write_pems  # noqa: F401

LIMIT = 10.0  # seconds any exchange or wait may take
HOST = "shop.example"

pytestmark = pytest.mark.timeout(60)

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "uvloop": uvloop.new_event_loop,
    "asyncio": asyncio.new_event_loop,
}


RunOnLoop = Callable[[Coroutine[Any, Any, None]], None]


@pytest.fixture(params=list(LOOPS))
def run(request: pytest.FixtureRequest) -> RunOnLoop:
    """Runs a test's scenario on a new loop of each kind (the test runs once per kind)."""

    def run_on(scenario: Coroutine[Any, Any, None]) -> None:
        with asyncio.Runner(loop_factory=LOOPS[request.param]) as runner:
            runner.run(asyncio.wait_for(scenario, LIMIT * 3))

    return run_on


class Recorder:
    """A protocol that records what the transport tells it, and can answer with a hook."""

    def __init__(self, on_data: Callable[[Recorder, bytes], None] | None = None) -> None:
        self.transport: TlsTransport | None = None
        self.data = bytearray()
        self.events: list[str] = []
        self.lost = asyncio.Event()
        self.lost_with: Exception | None = None
        self.on_data = on_data
        self.paused = asyncio.Event()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.events.append("made")

    def data_received(self, data: bytes) -> None:
        self.data += data
        if self.on_data is not None:
            self.on_data(self, data)

    def eof_received(self) -> bool | None:
        self.events.append("eof")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append("lost")
        self.lost_with = exc
        self.lost.set()

    def pause_writing(self) -> None:
        self.events.append("pause_writing")
        self.paused.set()

    def resume_writing(self) -> None:
        self.events.append("resume_writing")


class Server:
    """A TlsListener on a free port whose connections get Recorders (made by `factory`)."""

    def __init__(
        self, context: ssl.SSLContext, factory: Callable[[], Recorder], timeout: float | None
    ) -> None:
        self.made: list[Recorder] = []
        self.connected = asyncio.Event()

        def make() -> Recorder:
            protocol = factory()
            self.made.append(protocol)
            self.connected.set()
            return protocol

        self.listener = TlsListener(
            asyncio.get_running_loop(),
            listening_socket(Address("127.0.0.1", 0), reuse_port=False),
            context,
            make,
            timeout,
        )
        self.port = int(self.listener.sockets[0].getsockname()[1])

    async def first(self) -> Recorder:
        await self.connected.wait()
        return self.made[0]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_tls(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    pems = write_pems(ca.issue_cert(HOST), tmp_path_factory.mktemp("pems"), "shop")
    return server_context(Certificate(str(pems.cert), str(pems.key)))


async def open_tls(port: int, ca: trustme.CA) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(
        "127.0.0.1", port, ssl=client_context(ca), server_hostname=HOST
    )


def blocking_client(port: int, ca: trustme.CA) -> ssl.SSLSocket:
    """A blocking TLS client that reports an EOF without close_notify as an error."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=LIMIT)
    return client_context(ca).wrap_socket(raw, server_hostname=HOST, suppress_ragged_eofs=False)


def read_to_end(client: ssl.SSLSocket) -> bytes:
    """Everything until the server's close_notify (SSLEOFError if it closes without one)."""
    got = bytearray()
    while chunk := client.recv(65536):
        got += chunk
    return bytes(got)


def test_bytes_cross_both_ways_and_close_sends_close_notify_after_them(
    run: RunOnLoop, ca: trustme.CA, server_tls: ssl.SSLContext
) -> None:
    async def scenario() -> None:
        def answer(protocol: Recorder, _: bytes) -> None:
            if protocol.data.endswith(b"\n"):
                assert protocol.transport is not None
                protocol.transport.write(b"echo " + bytes(protocol.data))
                protocol.transport.close()

        server = Server(server_tls, lambda: Recorder(answer), None)

        def client() -> bytes:
            with blocking_client(server.port, ca) as sock:
                sock.sendall(b"hello\n")
                return read_to_end(sock)  # raises if no close_notify came

        assert await asyncio.to_thread(client) == b"echo hello\n"
        protocol = await server.first()
        await protocol.lost.wait()
        assert protocol.events == ["made", "lost"]
        assert protocol.lost_with is None
        assert protocol.transport is not None and protocol.transport.is_closing()
        server.listener.close()

    run(scenario())


def test_abort_drops_queued_bytes_and_sends_no_close_notify(
    run: RunOnLoop, ca: trustme.CA, server_tls: ssl.SSLContext
) -> None:
    async def scenario() -> None:
        def abort(protocol: Recorder, _: bytes) -> None:
            assert protocol.transport is not None
            protocol.transport.abort()

        server = Server(server_tls, lambda: Recorder(abort), None)

        def client() -> type[BaseException]:
            with blocking_client(server.port, ca) as sock:
                sock.sendall(b"x")
                try:
                    read_to_end(sock)
                except (ssl.SSLEOFError, ConnectionResetError) as err:
                    return type(err)
                raise AssertionError("a clean close_notify after abort()")

        assert await asyncio.to_thread(client) in (ssl.SSLEOFError, ConnectionResetError)
        protocol = await server.first()
        await protocol.lost.wait()
        assert protocol.lost_with is None
        server.listener.close()

    run(scenario())


def test_a_client_eof_reaches_the_protocol_then_the_connection_closes(
    run: RunOnLoop, ca: trustme.CA, server_tls: ssl.SSLContext
) -> None:
    async def scenario() -> None:
        server = Server(server_tls, Recorder, None)
        _, writer = await open_tls(server.port, ca)
        writer.write(b"last words")
        await writer.drain()
        protocol = await server.first()
        writer.close()  # close_notify, then FIN
        await protocol.lost.wait()
        assert bytes(protocol.data) == b"last words"
        assert protocol.events == ["made", "eof", "lost"]
        server.listener.close()

    run(scenario())


def test_writes_past_the_high_mark_pause_the_protocol_and_arrive_whole(
    run: RunOnLoop, ca: trustme.CA, server_tls: ssl.SSLContext
) -> None:
    """8 MiB written at once to a client that reads only after a pause: OpenSSL refuses
    (want-write) once the socket buffer is full, the transport holds the bytes, tells the
    protocol to pause, and sends them in order when the client reads, then close_notify."""
    size = 8 * 1024 * 1024
    payload = bytes(range(256)) * (size // 256)

    async def scenario() -> None:
        def flood(protocol: Recorder, _: bytes) -> None:
            assert protocol.transport is not None
            for start in range(0, size, 100_000):  # writes of a size no record boundary has
                protocol.transport.write(payload[start : start + 100_000])
            protocol.transport.close()

        server = Server(server_tls, lambda: Recorder(flood), None)
        paused = threading.Event()

        def client() -> bytes:
            # A blocking client: uvloop's own TLS client drops what it holds unread when a
            # close_notify arrives while its reading is paused (MagicStack/uvloop#661).
            with blocking_client(server.port, ca) as sock:
                sock.sendall(b"go")
                paused.wait(LIMIT)  # read only once the server has had to hold bytes back
                return read_to_end(sock)

        reading = asyncio.ensure_future(asyncio.to_thread(client))
        protocol = await server.first()
        await protocol.paused.wait()
        transport = protocol.transport
        assert transport is not None and transport.get_write_buffer_size() > 64 * 1024
        paused.set()
        got = await reading
        assert len(got) == size
        assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
        await protocol.lost.wait()
        assert protocol.events == ["made", "pause_writing", "resume_writing", "lost"]
        assert protocol.lost_with is None
        assert transport.get_write_buffer_size() == 0
        server.listener.close()

    run(scenario())


def test_pause_reading_holds_data_and_resume_delivers_all_of_it_in_order(
    run: RunOnLoop, ca: trustme.CA, server_tls: ssl.SSLContext
) -> None:
    size = 2 * 1024 * 1024
    payload = hashlib.sha256(b"seed").digest() * (size // 32)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        pauses = 0

        def stutter(protocol: Recorder, _: bytes) -> None:
            nonlocal pauses
            transport = protocol.transport
            assert transport is not None
            transport.pause_reading()
            assert not transport.is_reading()
            pauses += 1
            loop.call_later(0.001, transport.resume_reading)
            if len(protocol.data) == size:
                transport.write(hashlib.sha256(protocol.data).digest())
                transport.close()

        server = Server(server_tls, lambda: Recorder(stutter), None)
        reader, writer = await open_tls(server.port, ca)
        writer.write(payload)
        assert await reader.read() == hashlib.sha256(payload).digest()
        assert pauses >= size // 16384  # one record at most between pauses
        writer.close()
        server.listener.close()

    run(scenario())


def test_a_silent_client_is_dropped_after_the_handshake_timeout(
    run: RunOnLoop, ca: trustme.CA, server_tls: ssl.SSLContext
) -> None:
    async def scenario() -> None:
        server = Server(server_tls, Recorder, 0.2)
        started = asyncio.get_running_loop().time()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        assert await reader.read() == b""  # closed by the server, nothing said
        # uvloop's clock and timers count whole milliseconds: allow one either side.
        assert asyncio.get_running_loop().time() - started >= 0.2 - 0.002
        assert server.made == []  # no protocol for a connection that never shook hands
        # The listener goes on: a real client gets through.
        _, tls_writer = await open_tls(server.port, ca)
        await server.first()
        tls_writer.close()
        writer.close()
        server.listener.close()

    run(scenario())


def test_plain_http_on_a_tls_port_is_closed_and_the_listener_goes_on(
    run: RunOnLoop, ca: trustme.CA, server_tls: ssl.SSLContext
) -> None:
    async def scenario() -> None:
        server = Server(server_tls, Recorder, None)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: shop.example\r\n\r\n")
        try:
            answer = await reader.read()
        except ConnectionResetError:
            answer = b""
        # OpenSSL may answer with an alert record (type 21), never with HTTP.
        assert answer == b"" or answer[:1] == b"\x15"
        assert server.made == []
        _, tls_writer = await open_tls(server.port, ca)
        protocol = await server.first()
        assert protocol.transport is not None
        peer = protocol.transport.get_extra_info("peername")
        assert peer[0] == "127.0.0.1"
        ssl_object = protocol.transport.get_extra_info("ssl_object")
        assert ssl_object.version() in ("TLSv1.2", "TLSv1.3")
        assert ssl_object.selected_alpn_protocol() is None  # the client offered none
        tls_writer.close()
        writer.close()
        server.listener.close()

    run(scenario())


def test_a_closed_listener_takes_no_connection_and_keeps_the_open_ones(
    run: RunOnLoop, ca: trustme.CA, server_tls: ssl.SSLContext
) -> None:
    async def scenario() -> None:
        def echo(protocol: Recorder, data: bytes) -> None:
            assert protocol.transport is not None
            protocol.transport.write(data)

        server = Server(server_tls, lambda: Recorder(echo), None)
        reader, writer = await open_tls(server.port, ca)
        await server.first()
        server.listener.close()
        await server.listener.wait_closed()
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"still here")
        assert await reader.readexactly(10) == b"still here"
        writer.close()

    run(scenario())


# ---------------------------------------------------------------- through Pointsman


async def pattern(request: web.Request) -> web.StreamResponse:
    """GET: `size` bytes of a known pattern. POST: the body's length and SHA-256."""
    if request.method == "POST":
        body = await request.read()
        return web.Response(text=f"{len(body)} {hashlib.sha256(body).hexdigest()}")
    size = int(request.query["size"])
    return web.Response(body=(bytes(range(256)) * (size // 256 + 1))[:size])


async def test_pointsman_over_tls_relays_a_large_response_to_a_slow_reader_and_a_large_upload(
    start_tls: StartTls,  # noqa: F811  (the fixture, imported from test_tls)
    tmp_path: Path,
    ca: trustme.CA,
) -> None:
    backend = await Backend("blue", pattern).start()
    try:
        shop = write_pems(ca.issue_cert(HOST), tmp_path, "shop")
        host = await start_tls(backend.address, f'{{cert: "{shop.cert}", key: "{shop.key}"}}', 1)
        tls_port = host.ports[1]
        size = 6 * 1024 * 1024
        expected = (bytes(range(256)) * (size // 256 + 1))[:size]
        async with asyncio.timeout(LIMIT * 2):
            reader, writer = await open_tls(tls_port, ca)
            writer.write(f"GET /big?size={size} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
            await asyncio.sleep(0.5)  # a client that reads late: the proxy's buffers fill
            status, _, body = await read_response(reader)
            assert status == 200
            assert hashlib.sha256(body).digest() == hashlib.sha256(expected).digest()
            # The same connection, kept alive: an upload of 3 MiB, in writes of odd sizes.
            upload = expected[: 3 * 1024 * 1024]
            head = f"POST /up HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {len(upload)}\r\n\r\n"
            writer.write(head.encode())
            for start in range(0, len(upload), 70_001):
                writer.write(upload[start : start + 70_001])
                await writer.drain()
            status, _, body = await read_response(reader)
            assert (status, body.decode()) == (
                200, f"{len(upload)} {hashlib.sha256(upload).hexdigest()}"
            )  # fmt: skip
            # Pipelined: three requests in one TLS write, three answers in order.
            writer.write(
                b"".join(
                    f"GET /p?size={n} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode() for n in (1, 2, 3)
                )
            )
            sizes = [len((await read_response(reader))[2]) for _ in range(3)]
            assert sizes == [1, 2, 3]
            writer.close()
    finally:
        await backend.stop()
