"""Hold N idle HTTP/1.1 keep-alive connections open against a proxy.

Opens N plain TCP connections to HOST:PORT, sends one complete small GET on
each and reads the complete response, so every connection is a real keep-alive
connection that has been served once.  Then it writes a "ready" file, holds all
connections idle for --hold seconds (while benchmarks/run.sh samples the
proxy's RSS), checks how many are still open, prints a summary as key=value
lines on stdout and exits.  It runs at most --timeout + --hold seconds.

Usage: python benchmarks/idle_conns.py N --port PORT [--hold 5] [--ready-file F]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import os
import resource
import socket
import sys
import time

HEAD_LIMIT = 64 * 1024


class ResponseError(Exception):
    pass


def raise_nofile_limit(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def response_complete(buf: bytes) -> tuple[bool, bytes]:
    """Return (complete, head) for a buffered response to a GET."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > HEAD_LIMIT:
            raise ResponseError("response head too large")
        return False, b""
    head = buf[:end]
    body = buf[end + 4 :]
    lowered = head.lower()
    length = 0
    for line in lowered.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding" and b"chunked" in value:
            return body.endswith(b"0\r\n\r\n"), head
    return len(body) >= length, head


async def open_one(
    loop: asyncio.AbstractEventLoop, host: str, port: int, request: bytes, io_timeout: float
) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        async with asyncio.timeout(io_timeout):
            await loop.sock_connect(sock, (host, port))
            await loop.sock_sendall(sock, request)
            buf = b""
            while True:
                chunk = await loop.sock_recv(sock, 65536)
                if not chunk:
                    raise ResponseError("connection closed before the response was complete")
                buf += chunk
                complete, head = response_complete(buf)
                if complete:
                    break
        status_line = head.split(b"\r\n", 1)[0]
        parts = status_line.split(b" ")
        if len(parts) < 2 or not parts[1].startswith(b"2"):
            raise ResponseError(f"unexpected status: {status_line!r}")
        if b"\r\nconnection: close" in head.lower():
            raise ResponseError("server answered Connection: close")
    except BaseException:
        sock.close()
        raise
    return sock


def is_alive(sock: socket.socket) -> bool:
    try:
        data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return True  # open and nothing to read: idle keep-alive connection
    except OSError as exc:
        return exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK)
    return bool(data)  # b"" means the peer closed it


def write_ready(path: str, opened: int) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(f"opened={opened}\n")
    os.replace(tmp, path)


async def run(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.timeout
    request = (
        f"GET {args.path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n"
        "User-Agent: pointsman-idle-conns\r\nAccept: */*\r\n\r\n"
    ).encode()
    socks: list[socket.socket] = []
    errors: dict[str, int] = {}
    sem = asyncio.Semaphore(args.concurrency)

    async def worker() -> None:
        async with sem:
            for attempt in range(args.retries + 1):
                if loop.time() >= deadline:
                    errors["deadline"] = errors.get("deadline", 0) + 1
                    return
                try:
                    socks.append(
                        await open_one(loop, args.host, args.port, request, args.io_timeout)
                    )
                    return
                except (OSError, ResponseError, TimeoutError, ValueError) as exc:
                    if attempt == args.retries:
                        key = type(exc).__name__
                        if isinstance(exc, ResponseError):
                            key += f": {exc}"
                        errors[key] = errors.get(key, 0) + 1
                    else:
                        await asyncio.sleep(0.05 * (attempt + 1))

    started = time.monotonic()
    tasks = [asyncio.create_task(worker()) for _ in range(args.n)]
    remaining = max(0.1, deadline - loop.time())
    _done, pending = await asyncio.wait(tasks, timeout=remaining)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
        errors["timeout"] = errors.get("timeout", 0) + len(pending)
    open_seconds = time.monotonic() - started
    print(
        f"idle_conns: opened {len(socks)}/{args.n} in {open_seconds:.1f}s, errors={errors}",
        file=sys.stderr,
        flush=True,
    )

    if args.ready_file:
        write_ready(args.ready_file, len(socks))

    hold = max(0.0, args.hold)
    await asyncio.sleep(hold)
    alive = sum(1 for s in socks if is_alive(s))
    for s in socks:
        s.close()

    print(f"idle_requested={args.n}")
    print(f"idle_opened={len(socks)}")
    print(f"idle_alive={alive}")
    print(f"idle_open_seconds={open_seconds:.2f}")
    print(f"idle_hold_seconds={hold:.2f}")
    print("idle_errors=" + (";".join(f"{k}={v}" for k, v in sorted(errors.items())) or "none"))
    return 0 if len(socks) == args.n and alive == args.n else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", type=int, help="number of connections to hold")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/")
    parser.add_argument("--hold", type=float, default=5.0, help="seconds to hold them idle")
    parser.add_argument("--ready-file", default="", help="written once all connections are open")
    parser.add_argument("--concurrency", type=int, default=256, help="connections opened at once")
    parser.add_argument("--retries", type=int, default=2)
    parser.add_argument("--io-timeout", type=float, default=10.0, help="per connection")
    parser.add_argument("--timeout", type=float, default=120.0, help="for opening them all")
    args = parser.parse_args()

    limit = raise_nofile_limit(args.n + 256)
    if limit < args.n + 16:
        print(
            f"idle_conns: open-files limit {limit} is too low for {args.n} connections",
            file=sys.stderr,
        )
        sys.exit(2)
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
