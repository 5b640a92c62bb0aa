"""What a TLS server offers, for benchmarks/run.sh's TLS phase: the protocol and cipher it
negotiates with a default client, and whether it lets a client resume a session.

    tls_probe.py --port PORT [--host 127.0.0.1] [--tries 3]

Each try makes two `GET /` exchanges with `Connection: close`: the first on a full handshake
(its answer is read to the end, so TLS 1.3 session tickets sent after the handshake arrive),
the second offering the first one's session. One line on stdout:

    protocol=TLSv1.3 cipher=TLS_AES_256_GCM_SHA384 resumed=0/3 status=200

`resumed` counts the tries whose second handshake was a resumption. wrk offers the session of a
connection's previous TLS connection whenever it reconnects, so a server that resumes sessions
makes wrk's `Connection: close` runs mostly resumptions rather than full handshakes: run.sh sets
the nginx peer to what this probe finds on Pointsman. Exit status 1 when no exchange worked.
"""

from __future__ import annotations

import argparse
import socket
import ssl
import sys
from dataclasses import dataclass


@dataclass
class Exchange:
    protocol: str
    cipher: str
    session: ssl.SSLSession | None
    reused: bool
    status: int


def exchange(
    context: ssl.SSLContext, host: str, port: int, session: ssl.SSLSession | None, timeout: float
) -> Exchange:
    """One GET / on a new connection, the TLS facts read before it is closed."""
    raw = socket.create_connection((host, port), timeout=timeout)
    tls = context.wrap_socket(raw, server_hostname="localhost", session=session)
    data = b""
    try:
        tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        while chunk := tls.recv(65536):
            data += chunk
    except (ssl.SSLError, OSError):
        pass  # a close without close_notify: what was read still counts
    parts = data.split(b" ", 2)
    try:
        return Exchange(
            protocol=tls.version() or "?",
            cipher=(tls.cipher() or ("?",))[0],
            session=tls.session,
            reused=bool(tls.session_reused),
            status=int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0,
        )
    finally:
        tls.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tries", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args()
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the bench's certificate is self-signed
    protocol = cipher = "?"
    status = 0
    resumed = 0
    done = 0
    for _ in range(args.tries):
        try:
            first = exchange(context, args.host, args.port, None, args.timeout)
            protocol, cipher, status = first.protocol, first.cipher, first.status
            second = exchange(context, args.host, args.port, first.session, args.timeout)
        except (OSError, ssl.SSLError) as exc:
            print(f"# {args.host}:{args.port}: {exc}", file=sys.stderr)
            continue
        done += 1
        resumed += int(second.reused)
    print(f"protocol={protocol} cipher={cipher} resumed={resumed}/{done} status={status}")
    return 0 if done else 1


if __name__ == "__main__":
    sys.exit(main())
