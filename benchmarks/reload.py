"""How long a config reload of 100 routes takes to be in force on every worker.

Starts `pointsman run` (2 workers) on 127.0.0.1 with a generated config of ROUTES routes, then
alternates the file between two versions (every route's rule and sticky header differ) and
asks for a reload through `POST /v1/reload` COUNT times, one after another. The answer comes
when the master and every worker run the new config, so the client's round trip is the time
to be in force; the server's own `seconds` (read, parse, fit, apply, acks) is shown beside it.

    .venv/bin/python -m benchmarks.reload [--routes 100] [--count 30] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "reload-bench"
START_TIMEOUT = 30.0  # seconds for `pointsman run` to answer on its admin port


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def config_text(routes: int, port: int, admin: int, state: Path, variant: int) -> str:
    lines = [
        f"listen: 127.0.0.1:{port}",
        f"admin: {{listen: 127.0.0.1:{admin}}}",
        f'state: {{path: "{state}"}}',
        "routes:",
    ]
    for i in range(routes):
        lines += [
            f"  - name: r{i}",
            f'    hosts: ["r{i}.test"]',
            "    path_prefix: /",
            "    pools:",
            f'      blue: {{endpoints: ["127.0.0.1:{20000 + i}"]}}',
            f'      green: {{endpoints: ["127.0.0.1:{30000 + i}"]}}',
            "    weights: {blue: 90, green: 10}",
            f"    sticky: {{header: X-User-{variant}}}",
            "    rules:",
            f"      - {{pool: green, header: {{X-Variant: v{variant}}}}}",
        ]
    return "\n".join(lines) + "\n"


def call(admin: int, method: str, path: str) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{admin}{path}",
        data=b"{}" if method == "POST" else None,
        method=method,
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routes", type=int, default=100)
    parser.add_argument("--count", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pointsman-reload-"))
    port, admin = free_port(), free_port()
    path = work / "pointsman.yaml"

    def write(variant: int) -> None:
        text = config_text(args.routes, port, admin, work / "state.json", variant)
        path.write_text(f"workers: {args.workers}\n" + text)

    write(0)
    env = {**os.environ, "POINTSMAN_TOKEN": TOKEN}
    log = (work / "run.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "control.cli", "--log-level", "warning", "run",
         "--config", str(path)],
        cwd=ROOT, env=env, stdout=log, stderr=log, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                if call(admin, "GET", "/healthz")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                print((work / "run.log").read_text()[-2000:], file=sys.stderr)
                return 1
            time.sleep(0.1)
        client: list[float] = []
        server: list[float] = []
        for i in range(args.count):
            write((i + 1) % 2)
            started = time.perf_counter()
            status, body = call(admin, "POST", "/v1/reload")
            client.append((time.perf_counter() - started) * 1000)
            if status != 200:
                print(f"reload {i}: {status} {body}", file=sys.stderr)
                return 1
            seconds = body["seconds"]
            assert isinstance(seconds, float | int)
            server.append(float(seconds) * 1000)
        print(
            f"{args.count} reloads of {args.routes} routes, {args.workers} workers:"
            f" answer (in force on every worker) p50 {statistics.median(client):.1f} ms,"
            f" p99 {percentile(client, 0.99):.1f} ms, max {max(client):.1f} ms;"
            f" server-side p50 {statistics.median(server):.1f} ms,"
            f" max {max(server):.1f} ms"
        )
        return 0
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


if __name__ == "__main__":
    sys.exit(main())
