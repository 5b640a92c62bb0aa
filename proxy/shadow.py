"""Mirroring: sampled copies of live requests go to shadow ("blind") pools off the request path.

The downstream connection asks each of its route's `Shadow`s whether to mirror a request
(`Shadow.begin`). A yes gives an `Exchange`: the request head and its teed body (up to
`compare.max_body`), the primary's response as captured while it streams to the client, and one
`Leg` per pool the copy goes to (the shadow, plus its baseline when noise cancellation is on).
Legs use their own upstream connections (`Upstreams.shadow_pool`), a deadline each, and write the
whole copy at once; their responses are read, kept up to `max_body` and never reach the client.
When the primary and every leg are done, the responses are compared (proxy/compare.py) inline
when small, else on one comparison thread, and the result is counted and maybe sampled.

Nothing here can delay or fail the primary: the downstream connection only calls `tee`,
`request_complete`, `primary_done` / `primary_failed`, each of which returns at once, and every
error of a leg ends in a counted drop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Final

from proxy.compare import (
    MORE_PATH,
    Captured,
    Comparison,
    collapse,
    compare,
    redact_headers,
)
from proxy.noise import NoiseModel, PathReport
from proxy.shadow_config import ShadowConfig
from proxy.shadow_records import (
    MAX_SAMPLE_BODY,
    SAMPLE_BUCKETS,
    CompareMemory,
    DiffSample,
    PrimaryCapture,
    ShadowStats,
    capture_of,
    header_pairs,
    kept_header_lines,
    sample_bucket,
)
from proxy.upstream import EndpointPool, UpstreamConnection, Upstreams, WriteBatch

__all__ = [
    "SHADOW_HEADER",
    "Exchange",
    "Leg",
    "Shadow",
    "run_compare",
]

log = logging.getLogger("pointsman.shadow")

SHADOW_HEADER: Final = b"X-Pointsman-Shadow: 1\r\n"
# Bodies up to this (both sides together) are compared on the event loop: a small JSON diff
# costs tens of microseconds, less than a hop to a thread. Larger ones go to the comparison
# thread, since a megabyte of JSON takes tens of milliseconds the loop must not spend.
INLINE_COMPARE_BYTES: Final = 64 * 1024
# Pacing: a shadow takes new mirrors at most at max_in_flight / (its typical latency) per
# second (Little's law), so a slow shadow's slots come back spread out instead of all at once;
# freed in one burst, they would be refilled, sent and compared in one burst that delays the
# live requests of that moment. Up to this many mirrors may start back to back.
PACE_BURST: Final = 16
# Weight of the newest latency in the shadow's moving average.
LATENCY_EWMA_WEIGHT: Final = 0.2
# Diff samples kept per second per shadow, at most: building one costs more than the
# comparison itself, and when everything mismatches the ring is refreshed many times a second
# for nobody. The ring still holds the latest mismatches; counts are never sampled.
SAMPLES_PER_SECOND: Final = 20.0
# Comparisons of a leg whose body is the primary's, memoised per shadow by the two statuses and
# header blocks (all such a comparison depends on): a shadow answers with the same head, or the
# same difference, until a Date ticks over or a header varies. Entries kept before the memo is
# cleared, and the largest pair of heads kept (a few KiB each), so it holds at most ~1 MiB.
HEAD_MEMO_SIZE: Final = 256
HEAD_MEMO_BYTES: Final = 4096
# What a comparison that found nothing returns (latency_delta unused, as in every memoised one).
NO_DIFFERENCE: Final = Comparison((), 0.0)
# How often mirrors past their timeout are failed: a timeout fires up to this much late, in
# exchange for no timer per mirrored request. Mirrors wait for the sweep in buckets by the
# sweep due after their deadline (Shadow.due), so a sweep looks at expired mirrors only.
SWEEP_INTERVAL: Final = 0.05


class Leg:
    """One copy of a request on its way to one pool (the shadow or its baseline): a
    ResponseSink for its upstream connection, which keeps the response up to max_body."""

    __slots__ = (
        "chunks",
        "conn",
        "connect_task",
        "deadline",
        "done",
        "endpoint",
        "exchange",
        "failed",
        "header_block",
        "retried",
        "reused",
        "sent_at",
        "size",
        "status",
        "took",
    )
    # Deleted once its exchange is over (Exchange.unlink), to break the exchange <-> leg cycle.
    __deletable__ = ("exchange",)

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.conn: UpstreamConnection | None = None
        self.connect_task: asyncio.Task[None] | None = None
        self.deadline = 0.0  # loop time past which the sweeper fails it (0: not sent yet)
        self.endpoint: EndpointPool | None = None
        self.reused = False
        self.retried = False
        self.done = False
        self.failed: str | None = None  # the drop reason, when it failed
        self.status = 0
        self.header_block = b""
        self.chunks: list[bytes] = []
        self.size = 0
        self.sent_at = 0.0
        self.took = 0.0

    # -- sending ---------------------------------------------------------------------------

    def send(
        self, targets: tuple[EndpointPool, ...], rr: int, upstreams: Upstreams, deadline: float
    ) -> None:
        loop = self.exchange.shadow.loop
        # A deadline checked by the Shadows sweeper, not a timer per mirror: a timer costs an
        # allocation and two libuv calls on every mirrored request.
        self.deadline = deadline
        target = targets[rr % len(targets)]
        self.endpoint = target
        conn = target.acquire()
        if conn is not None:
            self._attach(conn, True, upstreams.writes)
        else:
            self.connect_task = loop.create_task(self._connect(target, upstreams))

    async def _connect(self, target: EndpointPool, upstreams: Upstreams) -> None:
        try:
            conn = await upstreams.connect(target)
        except (OSError, TimeoutError):
            self.connect_task = None
            self.fail("connect_error")
            return
        self.connect_task = None
        if self.done:
            conn.finish(reusable=True)  # timed out meanwhile; keep the fresh connection warm
            return
        self._attach(conn, False, upstreams.writes)

    def _attach(self, conn: UpstreamConnection, reused: bool, writes: WriteBatch) -> None:
        exchange = self.exchange
        self.conn = conn
        self.reused = reused
        conn.start_request(self, exchange.method == b"HEAD")
        self.sent_at = time.perf_counter()
        assert conn.transport is not None
        writes.write(conn.transport, exchange.wire())

    # -- ResponseSink ----------------------------------------------------------------------

    def response_head(self, conn: UpstreamConnection) -> None:
        self.status = conn.status
        self.header_block = conn.header_block

    def response_interim(self, conn: UpstreamConnection) -> None:
        pass  # 1xx: nothing to compare

    def response_body(self, data: bytes) -> None:
        exchange = self.exchange
        room = exchange.shadow.max_body - self.size
        self.size += len(data)
        if room > 0 and not exchange.ended:
            kept = data if len(data) <= room else data[:room]
            self.chunks.append(kept)
            exchange.charge(len(kept))

    def response_flush(self) -> None:
        pass

    def response_complete(self, conn: UpstreamConnection) -> None:
        self.took = time.perf_counter() - self.sent_at
        self.exchange.shadow.observe_latency(self.took)
        self.conn = None
        conn.finish(reusable=True)  # finish() closes it instead unless the upstream kept it alive
        self._end(None)

    def upstream_lost(self, conn: UpstreamConnection, exc: BaseException | None) -> None:
        self.conn = None
        if self.done:
            return
        if not conn.received_any and self.reused and not self.retried and self.endpoint:
            # A pooled connection the shadow had closed while idle: send again on a new one.
            self.retried = True
            upstreams = self.exchange.shadow.upstreams
            assert upstreams is not None
            loop = self.exchange.shadow.loop
            self.connect_task = loop.create_task(self._connect(self.endpoint, upstreams))
            return
        self.fail("upstream_error")

    def upstream_bad_response(self, conn: UpstreamConnection, exc: BaseException) -> None:
        self.fail("upstream_error")

    def tunnel_data(self, data: bytes) -> None:
        self.fail("upstream_error")  # a shadow never asked to switch protocols

    def start_tunnel(self, rest: bytes) -> None:
        self.fail("upstream_error")

    def upstream_pause_writing(self) -> None:
        pass  # the copy was written whole; its size is bounded by max_body

    def upstream_resume_writing(self) -> None:
        pass

    # -- ending ----------------------------------------------------------------------------

    def fail(self, reason: str) -> None:
        if self.done:
            return
        if reason in ("timeout", "connect_error"):
            # A hung or refusing shadow is paced like one that answers at the timeout: it
            # must not cost a connection attempt per live request.
            shadow = self.exchange.shadow
            shadow.observe_latency(shadow.config.timeout)
        if self.connect_task is not None:
            self.connect_task.cancel()
            self.connect_task = None
        conn = self.conn
        if conn is not None:
            self.conn = None
            conn.client = None
            conn.abort()  # its state is unknown: never back to the pool
        self._end(reason)

    def _end(self, reason: str | None) -> None:
        if self.done:
            return
        self.done = True
        self.failed = reason
        self.exchange.leg_done()

    def captured(self) -> Captured:
        return capture_of(
            self.status, self.header_block, self.chunks, self.size,
            self.exchange.shadow.max_body, self.took,
        )  # fmt: skip


class Exchange:
    """One mirrored request for one shadow: the copy's bytes, the primary's capture, the legs."""

    __slots__ = (
        "baseline",
        "body",
        "body_size",
        "candidate",
        "chunked",
        "due_tick",
        "ended",
        "head",
        "held",
        "method",
        "primary",
        "primary_latency",
        "primary_state",
        "request_id",
        "sent",
        "shadow",
        "started_at",
    )

    def __init__(self, shadow: Shadow, method: bytes, request_id: bytes, head: bytes) -> None:
        self.shadow = shadow
        self.method = method
        self.request_id = request_id
        self.head = head  # the upstream request head, X-Pointsman-Shadow added
        self.chunked = False
        self.body: list[bytes] = []
        self.body_size = 0
        self.sent = False
        self.ended = False
        self.held = 0  # bytes charged to the process's comparison memory (CompareMemory.held)
        self.due_tick = 0  # the sweep that fails it if still running (Shadow.due); 0: not sent
        self.primary: PrimaryCapture | None = None
        self.primary_latency = 0.0
        self.primary_state = 0  # 0: in flight, 1: done, 2: failed
        self.candidate = Leg(self)
        self.baseline = Leg(self) if shadow.config.baseline is not None else None
        self.started_at = time.time()

    @property
    def limit(self) -> int:
        return self.shadow.max_body

    # -- fed by the downstream connection --------------------------------------------------

    def tee(self, data: bytes) -> None:
        """A piece of the request body, as it streams upstream."""
        if self.ended or self.sent:
            return
        self.body_size += len(data)
        if self.body_size > self.limit:
            self.drop("body_too_large")
            return
        self.body.append(data)
        self.charge(len(data))

    def request_complete(self) -> None:
        """The whole request is read: send the copies."""
        if self.ended or self.sent:
            return
        self.sent = True
        self.shadow.send(self)

    def primary_done(self, capture: PrimaryCapture | None, latency: float) -> None:
        if self.ended:
            return
        if capture is None:
            self.primary_failed()
            return
        self.primary = capture
        self.primary_latency = latency
        self.primary_state = 1
        # Charged to each of its exchanges (it may serve several): an overcount, never under.
        self.charge(min(capture.size, capture.limit))
        if not self.ended:
            self._maybe_compare()

    def primary_failed(self) -> None:
        """The primary answered with a proxy error or was cut: there is nothing to compare."""
        if self.ended:
            return
        self.primary_state = 2
        if not self.sent:
            self.drop("primary_failed")
        else:
            self._maybe_compare()

    # -- the copy --------------------------------------------------------------------------

    def wire(self) -> bytes:
        """The copy as bytes: the head plus the teed body (re-chunked as one chunk if chunked)."""
        if not self.body:
            return self.head + (b"0\r\n\r\n" if self.chunked else b"")
        body = b"".join(self.body)
        if self.chunked:
            return self.head + b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body)
        return self.head + body

    # -- ending ----------------------------------------------------------------------------

    def charge(self, size: int) -> None:
        """Bytes kept for the comparison; past the process's limit this mirror is dropped."""
        memory = self.shadow.memory
        self.held += size
        memory.held += size
        if memory.held > memory.limit and not self.ended:
            self.drop("memory")

    def leg_done(self) -> None:
        self._maybe_compare()

    def expire(self, now: float) -> bool:
        """Fail the legs past their deadline (called by the sweeper); True if a leg is still
        running before its deadline."""
        running = False
        for leg in (self.candidate, self.baseline):
            if leg is not None and not leg.done:
                if 0.0 < leg.deadline <= now:
                    leg.fail("timeout")
                else:
                    running = True
        return running

    def _maybe_compare(self) -> None:
        if self.ended or self.primary_state == 0 or not self.candidate.done:
            return
        if self.baseline is not None and not self.baseline.done:
            return
        if self.candidate.failed is not None:
            self.drop(self.candidate.failed)
        elif self.primary_state == 2:
            self.drop("primary_failed")
        else:
            self.ended = True  # the slot is given back once the comparison is recorded
            self.shadow.compare(self)

    def drop(self, reason: str) -> None:
        if self.ended:
            return
        self.ended = True
        self.body = []  # nothing will be sent or compared: free the copy now
        for leg in (self.candidate, self.baseline):
            if leg is not None and not leg.done:
                leg.fail(reason)
        self.shadow.dropped(self, reason)

    def cancel(self) -> None:
        """Shutdown: stop every leg without counting anything."""
        self.ended = True
        for leg in (self.candidate, self.baseline):
            if leg is not None and not leg.done:
                leg.done = True
                if leg.connect_task is not None:
                    leg.connect_task.cancel()
                if leg.conn is not None:
                    leg.conn.client = None
                    leg.conn.abort()

    # -- comparison (may run on the comparison thread: reads only immutable inputs) ----------

    def unlink(self) -> None:
        """Its legs are done and nothing calls them any more: cut their references back to
        this exchange. Left as a cycle, every mirrored request's objects would wait for the
        cycle collector (about 4,000 instructions per mirrored request in collections, and
        young objects piling up between them); cut, reference counting frees them at once."""
        del self.candidate.exchange
        if self.baseline is not None:
            del self.baseline.exchange

    def inputs(self) -> tuple[Captured, Captured, Captured | None]:
        primary = self.primary
        assert primary is not None
        limit = self.limit
        first = capture_of(
            primary.status, primary.header_block, primary.chunks, primary.size, limit,
            self.primary_latency,
        )  # fmt: skip
        baseline = None
        if self.baseline is not None and self.baseline.failed is None:
            baseline = self.baseline.captured()  # a failed baseline leg just adds no noise sample
        return first, self.candidate.captured(), baseline

    def sample(self, comparison: Comparison, real: set[str]) -> DiffSample:
        head = self.head
        line_end = head.find(b"\r\n")
        method, _, rest = head[:line_end].partition(b" ")
        target = rest.rpartition(b" ")[0]
        headers = header_pairs(head[line_end + 2 :])
        host = next((value for name, value in headers if name.lower() == "host"), "")
        body = b"".join(self.body)
        endpoint = self.candidate.endpoint
        primary = self.primary
        assert primary is not None
        return DiffSample(
            at=self.started_at,
            request_id=self.request_id.decode("latin-1"),
            method=method.decode("latin-1"),
            target=target.decode("latin-1"),
            host=host,
            request_headers=redact_headers(headers),
            request_body=body[:MAX_SAMPLE_BODY].decode("latin-1") if body else None,
            request_body_truncated=len(body) > MAX_SAMPLE_BODY,
            endpoint=str(endpoint.address) if endpoint is not None else "",
            primary_status=primary.status,
            shadow_status=self.candidate.status,
            primary_ms=self.primary_latency * 1000,
            shadow_ms=self.candidate.took * 1000,
            differences=tuple(
                (d.part, d.path, d.primary, d.candidate, collapse(d.path) not in real)
                for d in comparison.differences
            ),
        )


class Shadow:
    """One shadow of one route: its settings, connections, counters, samples and noise model.
    Kept across routing-table swaps (by route and pool) while the route keeps the shadow, so
    counts survive weight and percent changes; removing the shadow discards it."""

    def __init__(
        self,
        route: str,
        config: ShadowConfig,
        memory: CompareMemory,
        compare_later: Callable[[Shadow, Exchange], None],
    ) -> None:
        self.route = route
        self.memory = memory  # shared by every shadow of the process
        # Large comparisons go to the process's comparison thread (Shadows.compare_later).
        self.compare_later = compare_later
        self.loop = asyncio.get_running_loop()
        self.upstreams: Upstreams | None = None
        self.stats = ShadowStats()
        self.in_flight = 0
        self.live: set[Exchange] = set()  # for shutdown
        # Sent mirrors by the sweep tick (loop time / SWEEP_INTERVAL) at which they are past
        # their deadline: the sweeper visits due buckets only, not every mirror in flight. At
        # most timeout / SWEEP_INTERVAL buckets (6,000 at the longest timeout, 300 s).
        self.due: dict[int, set[Exchange]] = {}
        self.swept_tick = int(self.loop.time() / SWEEP_INTERVAL)
        self.rr = 0
        self.targets: tuple[EndpointPool, ...] = ()
        self.baseline_targets: tuple[EndpointPool, ...] = ()
        self.config = config
        self.methods: frozenset[bytes] = frozenset()
        self.buckets = 0
        self.pool_name = ""
        self.baseline_name: str | None = None
        self.max_in_flight = 0
        self.max_body = 0
        self.skip_headers: frozenset[bytes] = frozenset()  # not compared (quick match)
        self.ignore_headers: frozenset[str] = frozenset()
        self.head_memo: dict[tuple[int, bytes, int, bytes], Comparison] = {}
        self.latency = 0.0  # moving average of the shadow's answer time, seconds (pacing)
        self.sample_tokens = SAMPLES_PER_SECOND
        self.sample_tokens_at = 0.0
        self.tokens = float(PACE_BURST)
        self.tokens_at = 0.0
        self.samples: deque[DiffSample] = deque(maxlen=config.compare.samples)
        self.noise = NoiseModel()
        self.configure(config)

    def __repr__(self) -> str:
        config = self.config
        return f"<Shadow {self.route}/{config.pool} {config.percent}% in_flight={self.in_flight}>"

    @property
    def pool(self) -> str:
        return self.config.pool

    def configure(self, config: ShadowConfig) -> None:
        if config.compare != self.config.compare or config.baseline != self.config.baseline:
            # Other comparison rules make the old rates meaningless.
            self.noise = NoiseModel()
            self.samples = deque(self.samples, maxlen=config.compare.samples)
        self.config = config
        self.methods = frozenset(m.encode() for m in config.methods)
        self.buckets = config.sample_buckets
        # Plain fields for begin(), which every request of the route reaches (config is a
        # dataclass: each attribute read there would be a dictionary lookup).
        self.pool_name = config.pool
        self.baseline_name = config.baseline
        self.max_in_flight = config.max_in_flight
        self.max_body = config.compare.max_body
        # Content-Length is judged with the body; hop-by-hop lines never reach a header block.
        self.skip_headers = frozenset(
            [b"content-length", *(name.encode() for name in config.compare.ignore_headers)]
        )
        self.ignore_headers = frozenset(config.compare.ignore_headers)
        self.head_memo.clear()  # other ignore rules, other comparisons

    # -- called on the request path --------------------------------------------------------

    def begin(
        self,
        primary_pool: str,
        method: bytes,
        request_id: bytes,
        head: bytes,
        content_length: bytes | None,
    ) -> Exchange | None:
        """A new Exchange if this request is to be mirrored (and there is room), else None."""
        if method not in self.methods:
            return None
        # At 100 % every id is in: no hash on a path every request of the route takes.
        if self.buckets < SAMPLE_BUCKETS and sample_bucket(request_id) >= self.buckets:
            return None
        if primary_pool == self.pool_name or primary_pool == self.baseline_name:
            return None  # live traffic on the shadow itself (a canary of it): nothing to compare
        if content_length is not None and content_length.isdigit():
            if int(content_length) > self.max_body:
                self.stats.dropped["body_too_large"] += 1
                return None
        if self.in_flight >= self.max_in_flight or not self._take_token():
            self.stats.dropped["full"] += 1
            return None
        if self.memory.held >= self.memory.limit:
            self.stats.dropped["memory"] += 1
            return None
        self.in_flight += 1
        exchange = Exchange(self, method, request_id, head[:-2] + SHADOW_HEADER + b"\r\n")
        self.live.add(exchange)
        return exchange

    def _take_token(self) -> bool:
        """The pacing bucket (PACE_BURST): refilled at max_in_flight / latency per second."""
        latency = self.latency
        if latency <= 0.0:
            return True  # nothing measured yet
        now = time.perf_counter()
        rate = self.config.max_in_flight / latency
        tokens = min(PACE_BURST, self.tokens + (now - self.tokens_at) * rate)
        self.tokens_at = now
        if tokens < 1.0:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1.0
        return True

    def observe_latency(self, seconds: float) -> None:
        if self.latency <= 0.0:
            self.latency = seconds
        else:
            self.latency += LATENCY_EWMA_WEIGHT * (seconds - self.latency)

    def send(self, exchange: Exchange) -> None:
        upstreams = self.upstreams
        if upstreams is None or not self.targets:
            exchange.drop("connect_error")
            return
        self.stats.mirrored += 1
        rr = self.rr
        self.rr = rr + 1
        deadline = self.loop.time() + self.config.timeout
        # The first sweep after the deadline (+1: int() rounds down).
        self._schedule(exchange, int(deadline / SWEEP_INTERVAL) + 1)
        exchange.candidate.send(self.targets, rr, upstreams, deadline)
        if exchange.baseline is not None and self.baseline_targets:
            exchange.baseline.send(self.baseline_targets, rr, upstreams, deadline)
        elif exchange.baseline is not None:
            exchange.baseline.fail("connect_error")

    def _schedule(self, exchange: Exchange, tick: int) -> None:
        exchange.due_tick = tick
        bucket = self.due.get(tick)
        if bucket is None:
            self.due[tick] = {exchange}
        else:
            bucket.add(exchange)

    def sweep(self, now: float) -> None:
        """Fail the mirrors past their deadline: those of the ticks passed since the last sweep
        (the Shadows sweeper calls this every SWEEP_INTERVAL)."""
        tick = int(now / SWEEP_INTERVAL)
        due = self.due
        if due:
            for passed in range(self.swept_tick + 1, tick + 1):
                bucket = due.pop(passed, None)
                if bucket is None:
                    continue
                for exchange in bucket:  # popped: a release cannot change it meanwhile
                    exchange.due_tick = 0
                    if exchange.expire(now):
                        self._schedule(exchange, tick + 1)  # not yet due (clock rounding)
        self.swept_tick = tick

    # -- called when an exchange ends ------------------------------------------------------

    def _release(self, exchange: Exchange) -> None:
        if exchange in self.live:
            self.live.discard(exchange)
            self.in_flight -= 1
            exchange.unlink()
        tick = exchange.due_tick
        if tick:
            exchange.due_tick = 0
            bucket = self.due.get(tick)
            if bucket is not None:
                # An emptied bucket stays until its sweep: with fast shadows, deleting it
                # would create and drop a set for almost every mirror.
                bucket.discard(exchange)
        if exchange.held:
            self.memory.held -= exchange.held
            exchange.held = 0

    def dropped(self, exchange: Exchange, reason: str) -> None:
        self.stats.dropped[reason] += 1
        self._release(exchange)

    def compare(self, exchange: Exchange) -> None:
        primary = exchange.primary
        assert primary is not None
        baseline = exchange.baseline
        if baseline is not None and baseline.failed is not None:
            baseline = None  # a failed baseline leg just adds no noise sample
        # The common cases, a healthy shadow or one that differs in its headers only, are
        # settled without building and diffing whole responses: see same_body_comparison.
        body = b"".join(primary.chunks)
        try:
            candidate = self.same_body_comparison(primary, body, exchange.candidate)
            other = None if baseline is None else self.same_body_comparison(primary, body, baseline)
        except Exception:
            log.exception("comparison failed (route %s, shadow %s)", self.route, self.pool)
            self._release(exchange)
            return
        if candidate is not None and (baseline is None or other is not None):
            if candidate.matched and (other is None or other.matched):
                self._release(exchange)
                stats = self.stats
                stats.compared += 1
                stats.matched += 1
                stats.observe_delta(exchange.candidate.took - exchange.primary_latency)
                self.noise.count_matched(baseline is not None)
                return
            self.record(exchange, (candidate, other))
            return
        limit = exchange.limit
        if min(primary.size, limit) + min(exchange.candidate.size, limit) <= INLINE_COMPARE_BYTES:
            try:
                result = run_compare(exchange, self.config)
            except Exception:
                log.exception("comparison failed (route %s, shadow %s)", self.route, self.pool)
                self._release(exchange)
                return
            self.record(exchange, result)
        else:
            self.compare_later(self, exchange)

    def same_body_comparison(
        self, primary: PrimaryCapture, primary_body: bytes, leg: Leg
    ) -> Comparison | None:
        """The comparison of `leg` with the primary when its body is byte-for-byte the
        primary's (None when it is not). It then depends only on the two statuses and header
        blocks, and is memoised by them (HEAD_MEMO_SIZE). Its latency_delta is 0: record()
        takes the latencies from the exchange."""
        if leg.size != primary.size or b"".join(leg.chunks) != primary_body:
            return None
        status = primary.status
        head = primary.header_block
        if leg.status == status and leg.header_block == head:
            return NO_DIFFERENCE  # often: the same server software, Date in the same second
        key = (status, head, leg.status, leg.header_block)
        memo = self.head_memo
        found = memo.get(key)
        if found is not None:
            return found
        skip = self.skip_headers
        if leg.status == status and kept_header_lines(head, skip) == kept_header_lines(
            leg.header_block, skip
        ):
            found = NO_DIFFERENCE
        else:
            # The bodies are equal, so the comparison is of statuses and headers: empty bodies
            # stand in for them (ignore_json applies to bodies only).
            found = compare(
                capture_of(status, head, [], 0, 0, 0.0),
                capture_of(leg.status, leg.header_block, [], 0, 0, 0.0),
                self.ignore_headers,
                (),
            )
        if len(head) + len(leg.header_block) <= HEAD_MEMO_BYTES:
            if len(memo) >= HEAD_MEMO_SIZE:
                memo.clear()
            memo[key] = found
        return found

    def record(self, exchange: Exchange, result: tuple[Comparison, Comparison | None]) -> None:
        """Count one comparison (on the event loop)."""
        self._release(exchange)
        candidate, baseline = result
        stats = self.stats
        stats.compared += 1
        # From the exchange, not the comparison: a memoised one has no latencies of its own.
        stats.observe_delta(exchange.candidate.took - exchange.primary_latency)
        noise = self.noise
        noise.record_candidate(candidate)
        if baseline is not None:
            noise.record_baseline(baseline)
        if candidate.matched:
            stats.matched += 1
            return
        paths = candidate.paths
        compare_cfg = self.config.compare
        if self.config.baseline is not None:
            real = set(
                noise.real_paths(
                    candidate, compare_cfg.relative_threshold, compare_cfg.absolute_threshold
                )
            )
        else:
            real = set(paths)
        if not real:
            stats.noise += 1
            return
        stats.mismatched += 1
        parts = {d.part for d in candidate.differences if collapse(d.path) in real}
        for part in parts:
            stats.parts[part] += 1
        for path in sorted(real):
            if path != MORE_PATH:
                stats.count_path(path)
        now = time.perf_counter()
        tokens = min(
            SAMPLES_PER_SECOND,
            self.sample_tokens + (now - self.sample_tokens_at) * SAMPLES_PER_SECOND,
        )
        self.sample_tokens_at = now
        if tokens >= 1.0:
            self.samples.append(exchange.sample(candidate, real))
            tokens -= 1.0
        self.sample_tokens = tokens

    # -- reading -----------------------------------------------------------------------------

    def report(self) -> list[PathReport]:
        compare_cfg = self.config.compare
        return self.noise.report(compare_cfg.relative_threshold, compare_cfg.absolute_threshold)

    def cancel_all(self) -> None:
        for exchange in list(self.live):
            exchange.cancel()
            self.memory.held -= exchange.held
            exchange.held = 0
        self.live.clear()
        self.due.clear()
        self.in_flight = 0


def run_compare(exchange: Exchange, config: ShadowConfig) -> tuple[Comparison, Comparison | None]:
    primary, candidate, baseline = exchange.inputs()
    compare_cfg = config.compare
    ignore_headers = frozenset(compare_cfg.ignore_headers)
    first = compare(primary, candidate, ignore_headers, compare_cfg.ignore_json)
    second = None
    if baseline is not None:
        second = compare(primary, baseline, ignore_headers, compare_cfg.ignore_json)
    return first, second
