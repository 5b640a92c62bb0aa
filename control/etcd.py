"""A thin etcd v3 client over etcd's JSON gateway (`/v3/...`), on the aiohttp we already use.

Why not a gRPC client: aetcd 1.0.0 (the maintained asyncio one) works under uvloop, and its
watches resume from a revision and report compaction, but it opens only a plaintext channel to
one `host:port` and authenticates once, while a fleet needs client TLS, several endpoints and
a token renewed when etcd drops it. The gateway is etcd's documented HTTP/JSON mapping of the
same API: keys and values are base64, 64-bit numbers are strings, and a watch is one long
response of JSON objects. Measured on this machine (200 puts, each awaited, then its watch
event): put-to-event p50 0.8-1.0 ms / p99 1.3-1.8 ms with aetcd, 1.2 / 2.7 ms here, far
below what a change costs anyway.

Pure parts (`prefix_end`, the decoders) take and return plain values; `EtcdClient` is the
I/O. Every call goes to the endpoint that answered last; a connection error or timeout moves
on to the next, and when none answers the call raises `EtcdUnavailable`.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import aiohttp
import orjson

__all__ = [
    "Compacted",
    "Compare",
    "Delete",
    "EtcdClient",
    "EtcdError",
    "EtcdUnavailable",
    "Event",
    "Header",
    "KeyValue",
    "Put",
    "TxnResult",
    "WatchBatch",
    "prefix_end",
]

# One watch message (a batch of events) larger than this is refused: the state of a fleet is
# kilobytes, and the stream must not grow a buffer without bound.
MAX_WATCH_MESSAGE: Final = 16 * 1024 * 1024
# gRPC code etcd answers with when a simple-auth token has expired (it lives 5 min idle).
_UNAUTHENTICATED: Final = 16
_INVALID_TOKEN_TEXT: Final = "invalid auth token"


class EtcdError(Exception):
    """etcd refused a request. `code` is the gRPC status code etcd gave (0 if none)."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class EtcdUnavailable(EtcdError):
    """No endpoint answered (refused, reset, timed out)."""


class Compacted(EtcdError):
    """A watch asked for revisions etcd has compacted away: read everything again."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revisions before {compact_revision} are compacted")
        self.compact_revision = compact_revision


@dataclass(frozen=True, slots=True)
class Header:
    revision: int  # the store's revision when etcd answered
    cluster_id: int  # changes when etcd is a different cluster (wiped and re-created)
    member_id: int
    raft_term: int


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


@dataclass(frozen=True, slots=True)
class Event:
    kind: Literal["put", "delete"]
    kv: KeyValue


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """One watch message: events in revision order (none for a progress message)."""

    header: Header
    events: tuple[Event, ...]


@dataclass(frozen=True, slots=True)
class Compare:
    """A transaction guard on one key: `target` of `key` `result` `value`. The MOD, CREATE and
    VERSION targets compare revisions or counts (0: the key does not exist); VALUE, bytes."""

    key: bytes
    target: Literal["MOD", "CREATE", "VERSION", "VALUE"]
    value: int | bytes
    result: Literal["EQUAL", "GREATER", "LESS", "NOT_EQUAL"] = "EQUAL"


@dataclass(frozen=True, slots=True)
class Put:
    key: bytes
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    key: bytes
    range_end: bytes | None = None  # [key, range_end); prefix_end(key) for a prefix


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool  # the compares held, and the success ops ran
    header: Header
    responses: tuple[Mapping[str, Any], ...] = field(default=())


# --- pure parts ---------------------------------------------------------------------------


def prefix_end(prefix: bytes) -> bytes:
    """The range end covering every key that starts with `prefix` (etcd's convention: the
    prefix with its last byte below 0xff incremented; b"\\0" means "to the end")."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return b"\0"
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: object) -> bytes:
    if not isinstance(text, str):
        return b""
    return base64.b64decode(text, validate=True)


def _int(value: object) -> int:
    """A proto3 JSON int64: a decimal string (or a number); absent means 0."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise EtcdError(f"expected an integer from etcd, got {value!r}")
    return int(value)


def decode_header(obj: object) -> Header:
    h = obj if isinstance(obj, dict) else {}
    return Header(
        revision=_int(h.get("revision")),
        cluster_id=_int(h.get("cluster_id")),
        member_id=_int(h.get("member_id")),
        raft_term=_int(h.get("raft_term")),
    )


def decode_kv(obj: Mapping[str, Any]) -> KeyValue:
    return KeyValue(
        key=_unb64(obj.get("key")),
        value=_unb64(obj.get("value")),
        create_revision=_int(obj.get("create_revision")),
        mod_revision=_int(obj.get("mod_revision")),
        version=_int(obj.get("version")),
        lease=_int(obj.get("lease")),
    )


def decode_watch_message(obj: Mapping[str, Any]) -> WatchBatch | None:
    """One message of a watch stream: a batch, or None for the "created" acknowledgement.
    Raises Compacted when etcd cancelled the watch for compaction, EtcdError for any other
    cancel or error."""
    if "error" in obj:
        err = obj["error"] if isinstance(obj["error"], dict) else {}
        raise EtcdError(str(err.get("message", err)), _int(err.get("grpc_code", err.get("code"))))
    result = obj.get("result")
    if not isinstance(result, dict):
        raise EtcdError(f"unexpected watch message: {str(obj)[:200]}")
    compact = _int(result.get("compact_revision"))
    if compact:
        raise Compacted(compact)
    if result.get("canceled"):
        raise EtcdError(f"watch cancelled by etcd: {result.get('cancel_reason', '')}")
    events = tuple(
        Event("delete" if ev.get("type") == "DELETE" else "put", decode_kv(ev.get("kv", {})))
        for ev in result.get("events", ())
    )
    if result.get("created") and not events:
        return None
    return WatchBatch(decode_header(result.get("header")), events)


def encode_compare(c: Compare) -> dict[str, object]:
    obj: dict[str, object] = {"key": _b64(c.key), "target": c.target, "result": c.result}
    if c.target == "VALUE":
        if not isinstance(c.value, bytes):
            raise TypeError("a VALUE compare takes bytes")
        obj["value"] = _b64(c.value)
    else:
        if not isinstance(c.value, int):
            raise TypeError(f"a {c.target} compare takes an integer")
        name = {"MOD": "mod_revision", "CREATE": "create_revision", "VERSION": "version"}
        obj[name[c.target]] = str(c.value)
    return obj


def encode_op(op: Put | Delete) -> dict[str, object]:
    if isinstance(op, Put):
        put: dict[str, object] = {"key": _b64(op.key), "value": _b64(op.value)}
        if op.lease:
            put["lease"] = str(op.lease)
        return {"request_put": put}
    delete: dict[str, object] = {"key": _b64(op.key)}
    if op.range_end is not None:
        delete["range_end"] = _b64(op.range_end)
    return {"request_delete_range": delete}


# --- I/O ----------------------------------------------------------------------------------


class EtcdClient:
    """Calls to a set of etcd endpoints (`http://host:port` or `https://...`)."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout: float,
        username: str | None = None,
        password: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.timeout = timeout  # per call and per endpoint tried
        self.username = username
        self.password = password
        self.ssl_context = ssl_context
        self._current = 0  # the endpoint that answered last
        self._token: str | None = None
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self.ssl_context or True)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    # -- calls ---------------------------------------------------------------------------

    async def range(
        self, key: bytes, range_end: bytes | None = None, limit: int = 0
    ) -> tuple[Header, list[KeyValue]]:
        """Keys in [key, range_end) (just `key` without an end); `limit` > 0: at most that
        many, in key order."""
        body: dict[str, object] = {"key": _b64(key)}
        if range_end is not None:
            body["range_end"] = _b64(range_end)
        if limit:
            body["limit"] = str(limit)
        answer = await self._call("/v3/kv/range", body)
        return decode_header(answer.get("header")), [decode_kv(kv) for kv in answer.get("kvs", ())]

    async def get_prefix(self, prefix: bytes, limit: int = 0) -> tuple[Header, list[KeyValue]]:
        return await self.range(prefix, prefix_end(prefix), limit)

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> Header:
        body: dict[str, object] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        return decode_header((await self._call("/v3/kv/put", body)).get("header"))

    async def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[Put | Delete],
        failure: Sequence[Put | Delete] = (),
    ) -> TxnResult:
        body = {
            "compare": [encode_compare(c) for c in compare],
            "success": [encode_op(op) for op in success],
            "failure": [encode_op(op) for op in failure],
        }
        answer = await self._call("/v3/kv/txn", body)
        return TxnResult(
            bool(answer.get("succeeded", False)),
            decode_header(answer.get("header")),
            tuple(answer.get("responses", ())),
        )

    async def compact(self, revision: int) -> None:
        await self._call("/v3/kv/compaction", {"revision": str(revision)})

    async def grant(self, ttl: int) -> int:
        """A new lease of `ttl` seconds; its id."""
        return _int((await self._call("/v3/lease/grant", {"TTL": str(ttl)})).get("ID"))

    async def keep_alive(self, lease: int) -> int:
        """Renew the lease once; the TTL etcd granted (0: the lease is gone)."""
        answer = await self._call("/v3/lease/keepalive", {"ID": str(lease)})
        result = answer.get("result", answer)
        return _int(result.get("TTL")) if isinstance(result, dict) else 0

    async def revoke(self, lease: int) -> None:
        await self._call("/v3/lease/revoke", {"ID": str(lease)})

    async def watch(
        self, key: bytes, range_end: bytes, start_revision: int
    ) -> AsyncGenerator[WatchBatch, None]:
        """Events on [key, range_end) from `start_revision` on, batch by batch, on one stream.
        Ends by raising: EtcdUnavailable when the stream breaks (resume from the revision after
        the last one applied), Compacted when that revision is gone (read everything again).
        `progress_notify` makes etcd send an empty batch every few minutes of silence."""
        body = {
            "create_request": {
                "key": _b64(key),
                "range_end": _b64(range_end),
                "start_revision": str(start_revision),
                "progress_notify": True,
            }
        }
        url = self.endpoints[self._current] + "/v3/watch"
        try:
            async with asyncio.timeout(self.timeout):
                response = await self._http().post(
                    url, data=orjson.dumps(body), headers=self._headers()
                )
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            self._next_endpoint()
            raise EtcdUnavailable(f"{url}: {self._reason(err)}") from None
        async with response:
            if response.status != 200:
                raise await self._refusal(response)
            pending = b""
            try:
                async for chunk in response.content.iter_any():
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    if len(pending) > MAX_WATCH_MESSAGE:
                        raise EtcdError(f"watch message over {MAX_WATCH_MESSAGE} bytes")
                    for line in lines:
                        if not line.strip():
                            continue
                        try:
                            message = orjson.loads(line)
                        except orjson.JSONDecodeError as err:
                            raise EtcdError(f"watch stream is not JSON: {err}") from None
                        batch = decode_watch_message(message)
                        if batch is not None:
                            yield batch
            except (aiohttp.ClientError, OSError) as err:
                self._next_endpoint()
                raise EtcdUnavailable(f"{url}: watch broken: {type(err).__name__}") from None
        self._next_endpoint()
        raise EtcdUnavailable(f"{url}: watch stream ended")

    # -- plumbing ------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self._token is not None:
            headers["Authorization"] = self._token
        return headers

    def _reason(self, err: BaseException) -> str:
        """Why an endpoint did not answer, in a few words."""
        if isinstance(err, TimeoutError):
            return f"no answer in {self.timeout:g}s (TimeoutError)"
        if isinstance(err, aiohttp.ClientConnectorError):
            return (err.os_error.strerror or str(err.os_error)).lower()
        return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__

    def _next_endpoint(self) -> None:
        self._current = (self._current + 1) % len(self.endpoints)

    async def _refusal(self, response: aiohttp.ClientResponse) -> EtcdError:
        text = await response.text()
        try:
            obj = orjson.loads(text)
        except orjson.JSONDecodeError:
            return EtcdError(f"etcd answered {response.status}: {text[:200]}")
        message = obj.get("message") or obj.get("error") or text[:200]
        return EtcdError(str(message), _int(obj.get("code")))

    async def _authenticate(self) -> None:
        self._token = None
        answer = await self._call(
            "/v3/auth/authenticate",
            {"name": self.username, "password": self.password},
            authenticate=False,
        )
        token = answer.get("token")
        if not isinstance(token, str) or not token:
            raise EtcdError("etcd gave no auth token")
        self._token = token

    async def _call(
        self, path: str, body: Mapping[str, object], *, authenticate: bool = True
    ) -> dict[str, Any]:
        """POST to the endpoint that answered last, then to each other one in turn."""
        if authenticate and self.username is not None and self._token is None:
            await self._authenticate()
        data = orjson.dumps(body)
        failures: list[str] = []
        for _ in range(len(self.endpoints)):
            url = self.endpoints[self._current] + path
            try:
                async with asyncio.timeout(self.timeout):
                    async with self._http().post(url, data=data, headers=self._headers()) as resp:
                        if resp.status == 200:
                            answer = orjson.loads(await resp.read())
                            return answer if isinstance(answer, dict) else {}
                        refusal = await self._refusal(resp)
            except aiohttp.ClientSSLError as err:
                # A certificate etcd or this client does not accept: settings to fix, not an
                # outage to wait out (a member refuses to start on it).
                raise EtcdError(
                    f"TLS with {self.endpoints[self._current]} failed: {self._reason(err)}"
                ) from None
            except (aiohttp.ClientError, TimeoutError, OSError) as err:
                failures.append(f"{self.endpoints[self._current]}: {self._reason(err)}")
                self._next_endpoint()
                continue
            if (
                authenticate
                and self.username is not None
                and (refusal.code == _UNAUTHENTICATED or _INVALID_TOKEN_TEXT in str(refusal))
            ):
                await self._authenticate()  # the token expired: once more with a new one
                return await self._call(path, body, authenticate=False)
            raise refusal
        raise EtcdUnavailable("no etcd endpoint answered: " + "; ".join(failures))
