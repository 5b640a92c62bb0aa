"""Fleet propagation under load, for benchmarks/run.sh: COUNT weight changes through member A's
control API, one after another, each timed until member B reports it applied in etcd.

    fleet.py --admin http://127.0.0.1:PORT_A --etcd http://127.0.0.1:PORT --prefix /pointsman/x \\
        --member-admin 127.0.0.1:ADMIN_PORT_B --route shop --pools blue,green --count 200 \\
        --start-delay 0.5 --spread 9 --out results/fleet_changes.json

The token is $POINTSMAN_TOKEN. Change i (from 0) starts at start-delay + i x spread / count
seconds after the start, or right after the one before has been seen on B, whichever is later;
after --give-up changes in a row that B does not show within --timeout, it stops.
The changes are `PUT /v1/routes/ROUTE/weights`, alternating between {first pool: 80, second:
20} and {first: 90, second: 10} (starting with the one not in force), each on a fresh
connection (as the CLI makes it). For each:

- answer: from sending the request to A until the end of its answer (A answers once it and
  all its workers run the new version);
- applied: from sending the request to A until B's member key (`<prefix>/members/<id>`, which
  B rewrites once all its workers run a new version) shows a version >= the one A answered,
  as seen through an etcd watch on that key (etcd's JSON gateway, kept open for the whole
  run). A version B reached before A's answer arrived counts from when it was seen.

Prints one JSON document (and writes it to --out): the count, nearest-rank p50/p99/max of
both latencies in ms, and every change. report.py reads it (`report.py fleet FILE`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

WEIGHT_SETS: tuple[tuple[int, int], ...] = ((80, 20), (90, 10))


@dataclass
class Change:
    n: int
    weights: dict[str, int]
    status: int  # HTTP status, 0 when there was no answer
    version: int | None  # the state version A answered
    answer_ms: float
    applied_ms: float | None  # None: B did not show the version within the timeout
    offset_s: float  # when it was sent, seconds after the start
    error: str = ""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def prefix_end(prefix: bytes) -> bytes:
    """The etcd range end covering every key that starts with `prefix`."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


def nearest_rank(values: list[float], percent: float) -> float | None:
    """The nearest-rank percentile (of 200 values, p99 is the 198th smallest)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(percent / 100.0 * len(ordered))) - 1]


def stats(values: list[float]) -> dict[str, float | None]:
    return {
        "p50": nearest_rank(values, 50),
        "p99": nearest_rank(values, 99),
        "max": max(values) if values else None,
    }


class MemberWatch:
    """One member's key in etcd, watched: every version it showed and when it was seen."""

    def __init__(self, session: aiohttp.ClientSession, etcd: str, prefix: str, admin: str) -> None:
        self.session = session
        self.etcd = etcd.rstrip("/")
        self.members = f"{prefix.rstrip('/')}/members/".encode()
        self.admin = admin
        self.key = b""
        self.seen: list[tuple[int, float]] = []  # (version, monotonic time), in order
        self.error = ""
        self.updated = asyncio.Condition()
        self.created = asyncio.Event()

    @property
    def member_id(self) -> str:
        return self.key[len(self.members) :].decode(errors="replace")

    async def find(self, within: float) -> int:
        """Find the member whose admin address is `admin`; its version now; returns the etcd
        revision read at."""
        deadline = time.monotonic() + within
        while True:
            body = {"key": b64(self.members), "range_end": b64(prefix_end(self.members))}
            async with self.session.post(f"{self.etcd}/v3/kv/range", json=body) as answer:
                answer.raise_for_status()
                doc = await answer.json(content_type=None)
            for kv in doc.get("kvs", []):
                value = json.loads(base64.b64decode(kv["value"]))
                if value.get("admin") == self.admin:
                    self.key = base64.b64decode(kv["key"])
                    self.seen.append((int(value["version"]), time.monotonic()))
                    return int(doc["header"]["revision"])
            if time.monotonic() > deadline:
                raise RuntimeError(f"no member with admin {self.admin} under {self.members!r}")
            await asyncio.sleep(0.1)  # polling a registration that offers no signal but etcd's

    async def run(self, revision: int) -> None:
        """Until cancelled: watch the member key from `revision` on."""
        request = {"create_request": {"key": b64(self.key), "start_revision": str(revision)}}
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        try:
            async with self.session.post(
                f"{self.etcd}/v3/watch", json=request, timeout=timeout
            ) as answer:
                answer.raise_for_status()
                buffer = b""
                async for chunk in answer.content.iter_any():
                    now = time.monotonic()  # when this chunk arrived: every event in it
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        if line.strip():
                            await self._message(json.loads(line), now)
            self.error = self.error or "the watch ended"
        except (aiohttp.ClientError, ValueError, KeyError) as exc:
            self.error = f"watch failed: {exc!r}"
        finally:
            self.created.set()
            async with self.updated:
                self.updated.notify_all()

    async def _message(self, message: dict[str, Any], now: float) -> None:
        result = message.get("result", {})
        if "error" in message:
            self.error = f"watch error: {message['error']}"
        if result.get("canceled") or result.get("compact_revision", "0") != "0":
            self.error = f"watch cancelled: {result.get('cancel_reason') or result}"
        if result.get("created"):
            self.created.set()
        for event in result.get("events", []):
            if event.get("type") == "DELETE":
                self.error = f"member {self.member_id} left the fleet"
                continue
            value = json.loads(base64.b64decode(event["kv"]["value"]))
            self.seen.append((int(value["version"]), now))
        async with self.updated:
            self.updated.notify_all()

    def first_at(self, version: int) -> float | None:
        """When the member first showed `version` or a later one."""
        for shown, at in self.seen:
            if shown >= version:
                return at
        return None

    async def wait_for(self, version: int, within: float) -> float | None:
        try:
            async with asyncio.timeout(within), self.updated:
                await self.updated.wait_for(
                    lambda: self.first_at(version) is not None or bool(self.error)
                )
        except TimeoutError:
            pass
        return self.first_at(version)


async def admin_call(
    base: str, method: str, path: str, body: object | None, seconds: float
) -> tuple[int, dict[str, Any], str]:
    """One call on a fresh connection, bounded by `seconds`: (status, JSON answer, error)."""
    headers = {"Authorization": f"Bearer {os.environ.get('POINTSMAN_TOKEN', '')}"}
    connector = aiohttp.TCPConnector(force_close=True)
    try:
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=seconds)
        ) as session:
            async with session.request(method, base + path, json=body, headers=headers) as answer:
                text = await answer.text()
                try:
                    doc = json.loads(text)
                except ValueError:
                    doc = {}
                if not isinstance(doc, dict):
                    doc = {}
                error = "" if 200 <= answer.status < 300 else text[:300]
                return answer.status, doc, error
    except (aiohttp.ClientError, TimeoutError) as exc:
        return 0, {}, repr(exc)


def weight_sets(pools: list[str]) -> list[dict[str, int]]:
    return [dict(zip(pools, weights, strict=True)) for weights in WEIGHT_SETS]


def in_force(current: dict[str, Any], weights: dict[str, int]) -> bool:
    """Whether `weights` are the route's weights now (pools not named have 0)."""
    names = set(current) | set(weights)
    return all(int(current.get(p, 0)) == weights.get(p, 0) for p in names)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    pools = [p for p in args.pools.split(",") if p]
    sets = weight_sets(pools)
    admin = args.admin.rstrip("/")
    route_path = f"/v1/routes/{args.route}"
    changes: list[Change] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=args.timeout)) as etcd:
        watch = MemberWatch(etcd, args.etcd, args.prefix, args.member_admin)
        revision = await watch.find(args.timeout)
        watcher = asyncio.create_task(watch.run(revision + 1))
        try:
            async with asyncio.timeout(args.timeout):
                await watch.created.wait()
            if watch.error:
                raise RuntimeError(watch.error)
            status, doc, error = await admin_call(admin, "GET", route_path, None, args.timeout)
            if status != 200:
                raise RuntimeError(f"GET {route_path}: HTTP {status} {error}")
            first = 1 if in_force(doc.get("weights", {}), sets[0]) else 0
            start = time.monotonic()
            missed = 0  # changes in a row that B did not show
            for i in range(args.count):
                due = start + args.start_delay + i * args.spread / max(args.count, 1)
                now = time.monotonic()
                if due > now:
                    await asyncio.sleep(due - now)
                weights = sets[(first + i) % len(sets)]
                began = time.monotonic()
                status, doc, error = await admin_call(
                    admin, "PUT", f"{route_path}/weights", {"weights": weights}, args.timeout
                )
                answered = time.monotonic()
                version = doc.get("version") if 200 <= status < 300 else None
                applied = None
                if isinstance(version, int):
                    at = await watch.wait_for(version, args.timeout)
                    applied = None if at is None else (at - began) * 1000.0
                    if at is None:
                        error = watch.error or f"B did not show version {version} in time"
                elif not error:
                    error = "no version in the answer"
                changes.append(
                    Change(
                        n=i + 1,
                        weights=weights,
                        status=status,
                        version=version if isinstance(version, int) else None,
                        answer_ms=(answered - began) * 1000.0,
                        applied_ms=applied,
                        offset_s=began - start,
                        error=error,
                    )
                )
                if error:
                    print(f"# change {i + 1}: HTTP {status}: {error}", file=sys.stderr)
                missed = missed + 1 if applied is None else 0
                if missed >= args.give_up or watch.error:
                    print(f"# giving up after change {i + 1}: {error}", file=sys.stderr)
                    break
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
    answered_ms = [c.answer_ms for c in changes if 200 <= c.status < 300]
    ends = [c.offset_s + (c.applied_ms or c.answer_ms) / 1000 for c in changes]
    applied_ms = [c.applied_ms for c in changes if c.applied_ms is not None]
    return {
        "route": args.route,
        "admin": args.admin,
        "member": watch.member_id,
        "count": len(changes),
        "requested": args.count,
        "answered_2xx": len(answered_ms),
        "applied": len(applied_ms),
        "answer_ms": stats(answered_ms),
        "applied_ms": stats(applied_ms),
        "first_offset_s": changes[0].offset_s if changes else None,
        "last_end_s": max(ends, default=None),
        "changes": [asdict(c) for c in changes],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--admin", required=True, help="member A's admin API base URL")
    parser.add_argument("--etcd", required=True, help="etcd client URL")
    parser.add_argument("--prefix", required=True, help="the fleet's etcd prefix")
    parser.add_argument("--member-admin", required=True, help="member B's admin host:port")
    parser.add_argument("--route", required=True)
    parser.add_argument("--pools", required=True, help="two pools of the route, comma-separated")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--start-delay", type=float, default=0.5)
    parser.add_argument("--spread", type=float, default=0.0, help="seconds the changes spread over")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per API call or wait")
    parser.add_argument(
        "--give-up", type=int, default=3, help="stop after this many changes in a row not applied"
    )
    parser.add_argument("--out", type=Path, help="also write the JSON document here")
    args = parser.parse_args()
    if len([p for p in args.pools.split(",") if p]) != 2 or args.count < 0:
        parser.error("need two pools and a count >= 0")
    try:
        result = asyncio.run(run(args))
    except (RuntimeError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
        print(f"fleet.py: {exc!r}", file=sys.stderr)
        return 1
    text = json.dumps(result, indent=1)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
