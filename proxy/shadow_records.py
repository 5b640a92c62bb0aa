"""What a shadow counts and keeps, and the primary's side of a mirror: the per-shadow counters
(`ShadowStats`, read by proxy/shadow_metrics.py), the diff samples `pointsman diffs` shows, the
capture of the primary response, and the helpers that turn captured bytes into what
proxy/compare.py compares. No I/O; proxy/shadow.py does the mirroring.
"""

from __future__ import annotations

import zlib
from bisect import bisect_left
from dataclasses import dataclass
from typing import Any, Final

from proxy.compare import OTHER_PATH, Captured

__all__ = [
    "DROP_REASONS",
    "LATENCY_DELTA_BUCKETS",
    "MAX_COUNTED_PATHS",
    "MAX_SAMPLE_BODY",
    "PARTS",
    "SAMPLE_BUCKETS",
    "CompareMemory",
    "DiffSample",
    "PrimaryCapture",
    "ShadowStats",
    "capture_of",
    "header_pairs",
    "kept_header_lines",
    "sample_bucket",
]

# JSON paths with their own metric label per shadow; past it they count as `other`, so a
# response with ever-new keys cannot blow up the time series count.
MAX_COUNTED_PATHS: Final = 100
# A diff sample keeps this much of the request body, enough to replay a typical API call.
MAX_SAMPLE_BODY: Final = 8 * 1024
# Shadow minus primary latency, seconds: symmetric, since a candidate can be faster or slower.
LATENCY_DELTA_BUCKETS: Final[tuple[float, ...]] = (
    -5.0, -1.0, -0.5, -0.25, -0.1, -0.05, -0.025, -0.01, -0.005, -0.001,
    0.0, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
)  # fmt: skip
# Why a mirror was dropped. Before sending: the in-flight bound was reached (`full`), the request
# body was over compare.max_body (`body_too_large`), the bytes held for comparison were over
# limits.compare_memory_bytes (`memory`, also while it runs). After: the leg took longer than its
# timeout, could not connect, or its upstream broke the exchange; or the primary itself failed,
# leaving nothing to compare with.
DROP_REASONS: Final = (
    "full",
    "memory",
    "body_too_large",
    "timeout",
    "connect_error",
    "upstream_error",
    "primary_failed",
)
PARTS: Final = ("status", "header", "body")


# Sampling buckets: a request id lands in [0, SAMPLE_BUCKETS); percent 100 takes them all.
SAMPLE_BUCKETS: Final = 10_000


def sample_bucket(request_id: bytes) -> int:
    """A request id's bucket in [0, SAMPLE_BUCKETS): the same id is always sampled the same
    way."""
    return zlib.crc32(request_id) % SAMPLE_BUCKETS


class ShadowStats:
    """Counters of one shadow; plain ints, read by ShadowCollector at scrape time."""

    __slots__ = (
        "compared",
        "delta_buckets",
        "delta_sum",
        "dropped",
        "matched",
        "mirrored",
        "mismatched",
        "noise",
        "parts",
        "paths",
    )

    def __init__(self) -> None:
        self.mirrored = 0  # copies sent to the shadow
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        self.compared = 0
        self.matched = 0  # no difference at all
        self.mismatched = 0  # a difference that counts (with a baseline: above the noise)
        self.noise = 0  # differences, all on paths the baseline shows to be noise
        self.parts = dict.fromkeys(PARTS, 0)  # mismatches by differing part
        self.paths: dict[str, int] = {}  # mismatches by collapsed path, capped
        self.delta_buckets = [0] * (len(LATENCY_DELTA_BUCKETS) + 1)
        self.delta_sum = 0.0

    def count_path(self, path: str) -> None:
        if path not in self.paths and len(self.paths) >= MAX_COUNTED_PATHS:
            path = OTHER_PATH
        self.paths[path] = self.paths.get(path, 0) + 1

    def observe_delta(self, seconds: float) -> None:
        self.delta_buckets[bisect_left(LATENCY_DELTA_BUCKETS, seconds)] += 1
        self.delta_sum += seconds


@dataclass(frozen=True, slots=True)
class DiffSample:
    """One mismatching exchange, as `GET .../diffs` shows it (credentials redacted)."""

    at: float  # unix time
    request_id: str
    method: str
    target: str  # the request target (path and query)
    host: str
    request_headers: tuple[tuple[str, str], ...]  # as sent to the shadow, redacted
    request_body: str | None  # latin-1 text of the body (first MAX_SAMPLE_BODY bytes)
    request_body_truncated: bool
    endpoint: str  # the shadow endpoint that answered
    primary_status: int
    shadow_status: int
    primary_ms: float
    shadow_ms: float
    differences: tuple[tuple[str, str, str, str, bool], ...]  # part, path, primary, shadow, noise

    @classmethod
    def from_obj(cls, obj: dict[str, Any]) -> DiffSample:
        """The inverse of `to_obj` (a worker's samples, read by the master)."""
        return cls(
            at=float(obj["at"]),
            request_id=str(obj["request_id"]),
            method=str(obj["method"]),
            target=str(obj["target"]),
            host=str(obj["host"]),
            request_headers=tuple((str(k), str(v)) for k, v in obj["request_headers"]),
            request_body=None if obj["request_body"] is None else str(obj["request_body"]),
            request_body_truncated=bool(obj["request_body_truncated"]),
            endpoint=str(obj["endpoint"]),
            primary_status=int(obj["primary_status"]),
            shadow_status=int(obj["shadow_status"]),
            primary_ms=float(obj["primary_ms"]),
            shadow_ms=float(obj["shadow_ms"]),
            differences=tuple(
                (
                    str(d["part"]),
                    str(d["path"]),
                    str(d["primary"]),
                    str(d["shadow"]),
                    bool(d["noise"]),
                )
                for d in obj["differences"]
            ),
        )

    def to_obj(self) -> dict[str, object]:
        return {
            "at": self.at,
            "request_id": self.request_id,
            "method": self.method,
            "target": self.target,
            "host": self.host,
            "request_headers": [list(pair) for pair in self.request_headers],
            "request_body": self.request_body,
            "request_body_truncated": self.request_body_truncated,
            "endpoint": self.endpoint,
            "primary_status": self.primary_status,
            "shadow_status": self.shadow_status,
            "primary_ms": round(self.primary_ms, 3),
            "shadow_ms": round(self.shadow_ms, 3),
            "differences": [
                {"part": part, "path": path, "primary": a, "shadow": b, "noise": noise}
                for part, path, a, b, noise in self.differences
            ],
        }


class CompareMemory:
    """The bytes all mirrors of a process hold for comparison (Exchange.charge), against
    limits.compare_memory_bytes: past the limit no mirror starts and running ones drop."""

    __slots__ = ("held", "limit")

    def __init__(self, limit: int) -> None:
        self.held = 0
        self.limit = limit


class PrimaryCapture:
    """The primary response of a mirrored request, captured as it streams to the client."""

    __slots__ = ("chunks", "header_block", "limit", "size", "status")

    def __init__(self, status: int, header_block: bytes, limit: int) -> None:
        self.status = status
        self.header_block = header_block
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0

    def add(self, data: bytes) -> None:
        room = self.limit - self.size
        if room > 0:
            self.chunks.append(data if len(data) <= room else data[:room])
        self.size += len(data)


def header_pairs(header_block: bytes) -> tuple[tuple[str, str], ...]:
    pairs = []
    for line in header_block.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if sep:
            pairs.append((name.decode("latin-1"), value.strip().decode("latin-1")))
    return tuple(pairs)


def kept_header_lines(header_block: bytes, skip: frozenset[bytes]) -> list[bytes]:
    """Header lines whose lower-case name is not in `skip`, in order (for the quick match)."""
    return [
        line
        for line in header_block.split(b"\r\n")
        if line and line[: line.find(b":")].lower() not in skip
    ]


def capture_of(
    status: int, header_block: bytes, chunks: list[bytes], size: int, limit: int, latency: float
) -> Captured:
    body = b"".join(chunks)
    return Captured(
        status=status,
        headers=header_pairs(header_block),
        body=body[:limit],
        body_truncated=size > limit,
        body_size=size,
        latency=latency,
    )
