"""Upload sink backend for the Pointsman benchmark harness.

A tiny HTTP/1.1 server that reads and discards request bodies (``Content-Length``
or ``Transfer-Encoding: chunked``) and answers ``200`` with the number of body
bytes it received as the response body.  Connections are kept alive.  Used by
``benchmarks/run.sh`` as the upstream of the 1 GiB upload test, so the proxy's
memory behaviour can be measured without a buffering backend in the way.

Usage: python benchmarks/sink.py --port PORT [--host 127.0.0.1] [--max-seconds N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

READ_SIZE = 1 << 18
MAX_HEADER_BYTES = 64 * 1024


class BadRequest(Exception):
    pass


async def discard_exact(reader: asyncio.StreamReader, n: int) -> int:
    left = n
    while left > 0:
        data = await reader.read(min(left, READ_SIZE))
        if not data:
            raise BadRequest("connection closed in the middle of the body")
        left -= len(data)
    return n


async def discard_chunked(reader: asyncio.StreamReader) -> int:
    total = 0
    while True:
        line = await reader.readline()
        if not line.endswith(b"\n"):
            raise BadRequest("connection closed in a chunk header")
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError as exc:
            raise BadRequest(f"bad chunk size {size_text!r}") from exc
        if size == 0:
            # trailer section, terminated by an empty line
            while True:
                trailer = await reader.readline()
                if not trailer.endswith(b"\n"):
                    raise BadRequest("connection closed in the trailer")
                if trailer in (b"\r\n", b"\n"):
                    return total
        total += await discard_exact(reader, size)
        crlf = await reader.readexactly(2)
        if crlf != b"\r\n":
            raise BadRequest("chunk not followed by CRLF")


def parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise BadRequest(f"bad request line {lines[0]!r}")
    method, _target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise BadRequest(f"bad header line {line!r}")
        key = name.strip().lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return method, version, headers


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return  # client closed between requests
            except asyncio.LimitOverrunError:
                raise BadRequest("request head too large") from None
            _method, version, headers = parse_head(head[:-4])
            if "chunked" in headers.get("transfer-encoding", "").lower():
                received = await discard_chunked(reader)
            else:
                received = await discard_exact(reader, int(headers.get("content-length", "0")))
            connection = headers.get("connection", "").lower()
            keep_alive = "close" not in connection and (
                version == "HTTP/1.1" or "keep-alive" in connection
            )
            body = f"{received}\n".encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                + f"Content-Length: {len(body)}\r\n".encode()
                + (b"" if keep_alive else b"Connection: close\r\n")
                + b"\r\n"
                + body
            )
            await writer.drain()
            if not keep_alive:
                return
    except (BadRequest, ValueError) as exc:
        with contextlib.suppress(ConnectionError):
            writer.write(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            await writer.drain()
        print(f"sink: bad request: {exc}", file=sys.stderr)
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def serve(host: str, port: int, max_seconds: float) -> None:
    server = await asyncio.start_server(
        handle, host, port, limit=MAX_HEADER_BYTES, backlog=1024, reuse_address=True
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"sink: listening on {host}:{port}", flush=True)
    async with server:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=max_seconds)
    print("sink: stopped", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=1800.0,
        help="exit by itself after this many seconds (safety net)",
    )
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.host, args.port, args.max_seconds))
    else:
        uvloop.run(serve(args.host, args.port, args.max_seconds))


if __name__ == "__main__":
    main()
