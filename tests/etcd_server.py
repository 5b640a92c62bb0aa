"""A real etcd (Debian's etcd-server; `make test` installs it) for tests: one member on
127.0.0.1 with OS-chosen ports and a temporary data directory, started and stopped by the
test; and a TCP relay in front of it that a test can switch to black-holing or dropping.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Literal

START_LIMIT = 20.0  # seconds etcd may take to answer /health (it takes well under 2 here)
STOP_LIMIT = 10.0  # seconds a SIGTERMed etcd may take to exit before it is killed
RELAY_CHUNK = 65536  # bytes the relay copies per read


def etcd_binary() -> str:
    path = shutil.which("etcd")
    if path is None:
        raise RuntimeError("etcd is not installed: `make test` installs etcd-server")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EtcdServer:
    """One etcd member; `start` (again after `kill`) keeps the data directory and ports."""

    def __init__(self, data_dir: Path, *extra_args: str, tls: ssl.SSLContext | None = None) -> None:
        """`tls`: the client context to reach it over https (extra_args then carry etcd's
        --cert-file, --key-file and so on)."""
        self.tls = tls
        self.data_dir = data_dir
        self.client_port = _free_port()
        self.peer_port = _free_port()
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.client_port}"

    def start(self) -> None:
        peer = f"http://127.0.0.1:{self.peer_port}"
        log = open(self.data_dir.parent / f"{self.data_dir.name}.log", "ab")
        self.process = subprocess.Popen(
            [
                etcd_binary(),
                "--name=test",
                f"--data-dir={self.data_dir}",
                f"--listen-client-urls={self.url}",
                f"--advertise-client-urls={self.url}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=test={peer}",
                "--logger=zap",
                *self.extra_args,
            ],
            stdout=log,
            stderr=log,
        )
        log.close()
        deadline = time.monotonic() + START_LIMIT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.process.returncode} at start")
            try:
                with urllib.request.urlopen(
                    self.url + "/health", timeout=1, context=self.tls
                ) as answer:
                    if b"true" in answer.read():
                        return
            except OSError:
                pass
            time.sleep(0.05)  # polling a process that offers no readiness signal
        raise RuntimeError(f"etcd did not answer /health in {START_LIMIT}s")

    def kill(self) -> None:
        """kill -9, as a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGCONT)
        self.process.terminate()
        try:
            self.process.wait(STOP_LIMIT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


RelayMode = Literal["pass", "blackhole"]


class Relay:
    """TCP relay 127.0.0.1:port -> target. `mode = "blackhole"`: new and open connections
    stay open but nothing more is forwarded (a partitioned network); `drop()` resets every
    open connection (a broken network path). `delay`: seconds each chunk is held before it
    is forwarded (a slow link; order is kept)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.mode: RelayMode = "pass"
        self.delay = 0.0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    def drop(self) -> None:
        for writer in list(self._writers):
            transport = writer.transport
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    # RST instead of FIN: SO_LINGER 0
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            transport.abort()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self.drop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            self._writers.discard(writer)
            return
        self._writers.add(up_writer)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._copy(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _copy(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(RELAY_CHUNK):
                if self.mode == "blackhole":
                    continue  # swallowed: the peer waits for an answer that never comes
                if self.delay:
                    await asyncio.sleep(self.delay)  # the emulated link's latency
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(sink)
            sink.close()
