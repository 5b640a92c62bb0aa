"""The access log: one JSON line per request, written in batches.

The request path only appends an Entry of values it already has (http1.py `_log_access`);
turning them into JSON and writing happen here, every FLUSH_INTERVAL or once FLUSH_BATCH
entries wait, in one write per batch. The file is opened for appending (several workers
write to one file: each batch is one `write` of whole lines, which O_APPEND keeps from
interleaving) and reopened on SIGUSR1 after logrotate has moved it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from time import perf_counter
from typing import Final

import orjson

from proxy.config import AccessLogConfig

log = logging.getLogger("pointsman.access_log")

# Entries wait at most this long: a tail -f shows a request within a fraction of a second.
FLUSH_INTERVAL: Final = 0.2
# Or until this many wait: one write per batch, and a batch's JSON stays a few hundred KiB.
FLUSH_BATCH: Final = 1024
# Entries held while writes fail or lag (a full disk, a stalled pipe): past it new entries
# are dropped and counted, so a broken log cannot grow the process without bound.
MAX_PENDING: Final = 50_000


class Entry:
    """One request as http1.py queues it: the values it already has, nothing formatted. A
    native class when compiled, so the floats and ints stay unboxed until `line`."""

    __slots__ = (
        "bytes_in", "bytes_out", "choice", "client", "duration", "end", "endpoint", "host",
        "method", "pool", "request_id", "route", "shadowed", "status", "tls",
        "upstream_seconds", "url", "version",
    )  # fmt: skip

    def __init__(
        self,
        end: float,  # perf_counter() when the exchange ended
        client: str,
        method: bytes,
        url: bytes,
        host: bytes,
        version: str,
        status: int,
        bytes_in: int,
        bytes_out: int,
        duration: float,
        upstream_seconds: float,  # < 0: never went upstream
        route: str,
        pool: str,
        endpoint: str,
        request_id: bytes,
        choice: str,
        shadowed: bool,
        tls: bool,
    ) -> None:
        self.end = end
        self.client = client
        self.method = method
        self.url = url
        self.host = host
        self.version = version
        self.status = status
        self.bytes_in = bytes_in
        self.bytes_out = bytes_out
        self.duration = duration
        self.upstream_seconds = upstream_seconds
        self.route = route
        self.pool = pool
        self.endpoint = endpoint
        self.request_id = request_id
        self.choice = choice
        self.shadowed = shadowed
        self.tls = tls


_PROTOCOLS: Final = {"1.1": "HTTP/1.1", "1.0": "HTTP/1.0"}


def line(entry: Entry, clock_offset: float) -> bytes:
    """One JSON line; `clock_offset` turns perf_counter() into wall time.

    An f-string, which mypyc builds in one allocation, not a dict for orjson: with orjson,
    CPU per request with the log on was 1.29x off in make bench, with this 1.10x (the same
    settings, 5 paired rounds each; timeit puts both near 0.8 us a line, so the difference
    is in the server, not in the formatting alone). The values a client chose (method, path,
    host, request id) are checked first and a line with a character that needs escaping (a
    quote, a backslash, a control character or anything outside ASCII) goes through orjson
    (`json_line`); names and the client address are made of plain characters by the
    config's and the API's rules. Times are truncated to the millisecond and durations to
    the microsecond, by integer arithmetic.
    """
    method = entry.method.decode("latin-1")
    url = entry.url.decode("latin-1")
    host = entry.host.decode("latin-1")
    request_id = entry.request_id.decode("latin-1")
    chosen = method + url + host + request_id
    if not (chosen.isascii() and chosen.isprintable()) or '"' in chosen or "\\" in chosen:
        return json_line(entry, clock_offset)
    time_ms = int((entry.end + clock_offset) * 1000.0)
    duration_us = int(entry.duration * 1e6)
    upstream_seconds = entry.upstream_seconds
    if upstream_seconds >= 0:
        upstream_us = int(upstream_seconds * 1e6)
        upstream = f"{upstream_us // 1_000_000}.{str(1_000_000 + upstream_us % 1_000_000)[1:]}"
    else:
        upstream = "null"
    version = entry.version
    # str(10**k + remainder)[1:] is the remainder zero-padded to k digits. Written out three
    # times: a helper function for it cost 70 ns a line (8 %, timeit, compiled).
    return (
        f'{{"time":{time_ms // 1000}.{str(1000 + time_ms % 1000)[1:]},'
        f'"client":"{entry.client}","method":"{method}","path":"{url}","host":"{host}",'
        f'"protocol":"{_PROTOCOLS.get(version) or "HTTP/" + version}",'
        f'"status":{entry.status},"bytes_in":{entry.bytes_in},"bytes_out":{entry.bytes_out},'
        f'"duration":{duration_us // 1_000_000}.{str(1_000_000 + duration_us % 1_000_000)[1:]},'
        f'"upstream_duration":{upstream},"route":{_quoted(entry.route)},'
        f'"pool":{_quoted(entry.pool)},"endpoint":{_quoted(entry.endpoint)},'
        f'"request_id":{_quoted(request_id)},"choice":{_quoted(entry.choice)},'
        f'"shadowed":{"true" if entry.shadowed else "false"},'
        f'"tls":{"true" if entry.tls else "false"}}}\n'
    ).encode()


def _quoted(text: str) -> str:
    """A JSON string ("" as null) of a text known to need no escaping."""
    return f'"{text}"' if text else "null"


def json_line(entry: Entry, clock_offset: float) -> bytes:
    """The line through orjson, which escapes what needs it; the same fields and numbers."""
    upstream_seconds = entry.upstream_seconds
    version = entry.version
    return orjson.dumps(
        {
            "time": int((entry.end + clock_offset) * 1000.0) / 1000.0,
            "client": entry.client,
            "method": entry.method.decode("latin-1"),
            "path": entry.url.decode("latin-1"),
            "host": entry.host.decode("latin-1"),
            "protocol": _PROTOCOLS.get(version) or "HTTP/" + version,
            "status": entry.status,
            "bytes_in": entry.bytes_in,
            "bytes_out": entry.bytes_out,
            "duration": int(entry.duration * 1e6) / 1e6,
            "upstream_duration": (
                int(upstream_seconds * 1e6) / 1e6 if upstream_seconds >= 0 else None
            ),
            "route": entry.route or None,
            "pool": entry.pool or None,
            "endpoint": entry.endpoint or None,
            "request_id": entry.request_id.decode("latin-1") or None,
            "choice": entry.choice or None,
            "shadowed": entry.shadowed,
            "tls": entry.tls,
        },
        option=orjson.OPT_APPEND_NEWLINE,
    )


class AccessLog:
    """The log of one process. `add` is called on the request path; the rest is not."""

    def __init__(self, loop: asyncio.AbstractEventLoop, config: AccessLogConfig) -> None:
        self.loop = loop
        self.config = config
        self.sample = config.sample
        self.entries: list[Entry] = []
        self.dropped = 0  # entries lost since the last warning
        self.written = 0  # lines written, for tests and the log
        self._fd = -1
        self._timer: asyncio.Handle | None = None
        self._failing = False
        self._open()

    def _open(self) -> None:
        if self.config.path == "-":
            self._fd = 2
            return
        directory = os.path.dirname(self.config.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        self._fd = os.open(self.config.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _close_fd(self) -> None:
        if self._fd > 2:
            os.close(self._fd)
        self._fd = -1

    def add(self, entry: Entry) -> None:
        entries = self.entries
        if len(entries) >= MAX_PENDING:
            self.dropped += 1
            return
        entries.append(entry)
        if self._timer is None:
            self._timer = self.loop.call_later(FLUSH_INTERVAL, self.flush)
        elif len(entries) == FLUSH_BATCH:
            self._timer.cancel()
            self._timer = self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write what waits, in one write (a retry writes what a short write left)."""
        self._timer = None
        entries = self.entries
        if not entries:
            return
        self.entries = []
        offset = time.time() - perf_counter()
        data = b"".join([line(entry, offset) for entry in entries])
        try:
            while data:
                written = os.write(self._fd, data)
                data = data[written:]
        except OSError as err:
            if not self._failing:
                log.error("access log %s: write failed (%s); lines are lost until it works",
                          self.config.path, err.strerror or err)  # fmt: skip
            self._failing = True
            self.dropped += len(entries)
            return
        self._failing = False
        self.written += len(entries)
        if self.dropped:
            log.warning("access log %s: %d lines were dropped", self.config.path, self.dropped)
            self.dropped = 0

    def reopen(self) -> None:
        """After logrotate moved the file: lines written from now on go to a new one."""
        self.flush()
        if self.config.path == "-":
            return
        self._close_fd()
        try:
            self._open()
        except OSError as err:
            log.error("access log %s: cannot reopen: %s", self.config.path, err.strerror)
            self._fd = -1
            return
        log.info("access log %s reopened", self.config.path)

    def use(self, config: AccessLogConfig) -> None:
        """A reloaded config's settings: the sample at once, a new path from now on."""
        self.sample = config.sample
        if config.path != self.config.path:
            self.flush()
            self._close_fd()
            self.config = config
            self._open()
        self.config = config

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush()
        self._close_fd()
