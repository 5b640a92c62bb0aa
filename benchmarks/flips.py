"""Flips under load, for benchmarks/run.sh: `POST /v1/routes/ROUTE/flip` COUNT times, the
target pool alternating, each on a fresh connection (as `pointsman flip` makes it), timing
every answer on the client side.

    flips.py --admin http://127.0.0.1:PORT --route shop --pools green,blue --count 50 \\
        --start-delay 0.5 --spread 9

The token is $POINTSMAN_TOKEN. Before the flips, one untimed `GET /v1/routes/ROUTE`: a
master's first answer after it started takes a few ms more than the ones after it (2.4-4.1 ms
against 0.3-0.8 ms for `/healthz` on this machine), a once-per-process cost that is not the
flip's. Flip i (from 0) starts at start-delay + i x spread / count
seconds after the start (or right after the one before, if that one took longer). One line per
flip on stdout:

    <n> <pool> <HTTP status, 0 when there was no answer> <latency ms> <start offset s>

Lines starting with `#` are comments. report.py reads the file (`report.py flips FILE`).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import time
from urllib.parse import urlsplit


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--admin", required=True, help="admin API base URL")
    parser.add_argument("--route", required=True)
    parser.add_argument("--pools", required=True, help="comma-separated pools to flip to, in turn")
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--start-delay", type=float, default=0.5)
    parser.add_argument("--spread", type=float, default=0.0, help="seconds the flips spread over")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per API call")
    args = parser.parse_args()
    pools = [p for p in args.pools.split(",") if p]
    if not pools or args.count < 0:
        parser.error("need at least one pool and a count >= 0")
    url = urlsplit(args.admin)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    path = f"{url.path.rstrip('/')}/v1/routes/{args.route}/flip"
    headers = {
        "Authorization": f"Bearer {os.environ.get('POINTSMAN_TOKEN', '')}",
        "Content-Type": "application/json",
    }
    warm_up = f"{url.path.rstrip('/')}/v1/routes/{args.route}"
    conn = http.client.HTTPConnection(host, port, timeout=args.timeout)
    try:
        conn.request("GET", warm_up, headers=headers)
        warm_status = conn.getresponse().status
        print(f"# warm-up GET {warm_up}: {warm_status}", flush=True)
    except (OSError, http.client.HTTPException) as exc:
        print(f"# warm-up GET {warm_up}: {exc}", flush=True)
    finally:
        conn.close()
    print(f"# POST {path} on {host}:{port}: flip pool status latency_ms offset_s", flush=True)
    start = time.monotonic()
    for i in range(args.count):
        due = start + args.start_delay + i * args.spread / max(args.count, 1)
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        pool = pools[i % len(pools)]
        body = json.dumps({"to": pool}).encode()
        began = time.monotonic()
        status = 0
        conn = http.client.HTTPConnection(host, port, timeout=args.timeout)
        try:
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            answer = response.read()
            status = response.status
        except (OSError, http.client.HTTPException) as exc:
            answer = str(exc).encode()
        finally:
            conn.close()
        latency_ms = (time.monotonic() - began) * 1000.0
        print(f"{i + 1} {pool} {status} {latency_ms:.3f} {began - start:.3f}", flush=True)
        if not 200 <= status < 300:
            print(f"# flip {i + 1}: {answer[:300].decode(errors='replace')}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
