"""control/etcd.py against a real etcd (tests/etcd_server.py), and its pure decoders."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from control.etcd import (
    Compacted,
    Compare,
    Delete,
    EtcdClient,
    EtcdError,
    EtcdUnavailable,
    Put,
    WatchBatch,
    decode_watch_message,
    prefix_end,
)
from tests.etcd_server import EtcdServer, Relay

LIMIT = 10.0  # seconds any single wait may take
CALL_TIMEOUT = 1.0  # the client's per-endpoint timeout in these tests

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def client_for() -> AsyncIterator[Callable[..., EtcdClient]]:
    made: list[EtcdClient] = []

    def make(*endpoints: str, **options: object) -> EtcdClient:
        options.setdefault("timeout", CALL_TIMEOUT)
        client = EtcdClient(list(endpoints), **options)  # type: ignore[arg-type]
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens once closed


# --- pure parts ---------------------------------------------------------------------------


@given(st.binary(min_size=1, max_size=8), st.binary(max_size=10))
def test_prefix_end_bounds_exactly_the_keys_with_the_prefix(prefix: bytes, key: bytes) -> None:
    end = prefix_end(prefix)
    inside = prefix <= key and (end == b"\0" or key < end)
    assert inside == key.startswith(prefix)


def test_watch_messages_decode_to_batches_or_errors() -> None:
    header = {"revision": "7", "cluster_id": "12", "member_id": "3", "raft_term": "2"}
    assert decode_watch_message({"result": {"header": header, "created": True}}) is None
    kv = {"key": "L3BtL2E=", "value": "MQ==", "mod_revision": "7", "create_revision": "5"}
    batch = decode_watch_message(
        {"result": {"header": header, "events": [{"kv": kv}, {"type": "DELETE", "kv": kv}]}}
    )
    assert isinstance(batch, WatchBatch)
    assert batch.header.revision == 7 and batch.header.cluster_id == 12
    assert [(e.kind, e.kv.key, e.kv.value, e.kv.mod_revision) for e in batch.events] == [
        ("put", b"/pm/a", b"1", 7),
        ("delete", b"/pm/a", b"1", 7),
    ]
    with pytest.raises(Compacted) as compacted:
        decode_watch_message({"result": {"canceled": True, "compact_revision": "204"}})
    assert compacted.value.compact_revision == 204
    with pytest.raises(EtcdError, match="permission denied"):
        decode_watch_message({"error": {"grpc_code": 7, "message": "permission denied"}})
    with pytest.raises(EtcdError, match="unexpected watch message"):
        decode_watch_message({"neither": 1})


# --- against etcd -------------------------------------------------------------------------


async def test_put_range_and_prefix(
    etcd: EtcdServer, client_for: Callable[..., EtcdClient]
) -> None:
    client = client_for(etcd.url)
    first = await client.put(b"/pm/a", b"1")
    await client.put(b"/pm/b", b"2")
    await client.put(b"/pmx", b"not in the prefix")
    header, kvs = await client.get_prefix(b"/pm/")
    assert [(kv.key, kv.value) for kv in kvs] == [(b"/pm/a", b"1"), (b"/pm/b", b"2")]
    assert header.revision == first.revision + 2 and header.cluster_id != 0
    _, missing = await client.range(b"/nothing")
    assert missing == []


async def test_of_two_writers_expecting_the_same_revision_exactly_one_wins(
    etcd: EtcdServer, client_for: Callable[..., EtcdClient]
) -> None:
    a, b = client_for(etcd.url), client_for(etcd.url)
    await a.put(b"/pm/state", b"v1")
    _, (kv,) = await a.range(b"/pm/state")

    def write(value: bytes) -> tuple[list[Compare], list[Put]]:
        return [Compare(b"/pm/state", "MOD", kv.mod_revision)], [Put(b"/pm/state", value)]

    results = await asyncio.gather(a.txn(*write(b"from a")), b.txn(*write(b"from b")))
    assert sorted(r.succeeded for r in results) == [False, True]
    winner = b"from a" if results[0].succeeded else b"from b"
    _, (now,) = await a.range(b"/pm/state")
    assert now.value == winner and now.mod_revision > kv.mod_revision
    # A key that must not exist yet: CREATE == 0.
    created = await a.txn([Compare(b"/pm/new", "CREATE", 0)], [Put(b"/pm/new", b"x")])
    again = await a.txn([Compare(b"/pm/new", "CREATE", 0)], [Put(b"/pm/new", b"y")])
    assert (created.succeeded, again.succeeded) == (True, False)
    deleted = await a.txn([], [Delete(b"/pm/", prefix_end(b"/pm/"))])
    assert deleted.succeeded and (await a.get_prefix(b"/pm/"))[1] == []


async def test_a_watch_resumes_after_an_etcd_crash_without_a_gap(
    etcd: EtcdServer, client_for: Callable[..., EtcdClient]
) -> None:
    client = client_for(etcd.url)
    start = (await client.put(b"/pm/k", b"0")).revision + 1
    seen: list[tuple[int, bytes]] = []
    broken: list[BaseException] = []
    progressed = asyncio.Event()

    async def follow(from_revision: int) -> None:
        try:
            async for batch in client.watch(b"/pm/", prefix_end(b"/pm/"), from_revision):
                seen.extend((e.kv.mod_revision, e.kv.value) for e in batch.events)
                progressed.set()
        except EtcdError as err:
            broken.append(err)

    async def wait_for(count: int) -> None:
        async with asyncio.timeout(LIMIT):
            while len(seen) < count:
                progressed.clear()
                await progressed.wait()

    follower = asyncio.create_task(follow(start))
    for i in range(1, 6):
        await client.put(b"/pm/k", str(i).encode())
    await wait_for(5)
    etcd.kill()
    async with asyncio.timeout(LIMIT):
        await follower
    assert len(broken) == 1 and isinstance(broken[0], EtcdUnavailable)
    with pytest.raises(EtcdUnavailable, match="no etcd endpoint answered"):
        await client.put(b"/pm/k", b"lost")
    etcd.start()
    for i in range(6, 9):  # made while nobody watches
        await client.put(b"/pm/k", str(i).encode())
    follower = asyncio.create_task(follow(seen[-1][0] + 1))
    await wait_for(8)
    follower.cancel()
    with pytest.raises(asyncio.CancelledError):
        await follower
    revisions = [r for r, _ in seen]
    assert revisions == list(range(start, start + 8))  # in order, none twice, none missing
    assert [v for _, v in seen] == [str(i).encode() for i in range(1, 9)]


async def test_a_watch_from_a_compacted_revision_says_so(
    etcd: EtcdServer, client_for: Callable[..., EtcdClient]
) -> None:
    client = client_for(etcd.url)
    for i in range(5):
        head = await client.put(b"/pm/k", str(i).encode())
    await client.compact(head.revision)
    with pytest.raises(Compacted) as compacted:
        async with asyncio.timeout(LIMIT):
            async for _ in client.watch(b"/pm/", prefix_end(b"/pm/"), 2):
                pass
    assert compacted.value.compact_revision == head.revision
    with pytest.raises(EtcdError, match="compacted"):
        await client.compact(2)  # etcd's own refusal, with its message


async def test_calls_move_on_to_the_next_endpoint_and_fail_clearly_when_none_answers(
    etcd: EtcdServer, client_for: Callable[..., EtcdClient]
) -> None:
    dead = closed_port_url()
    client = client_for(dead, etcd.url)
    await client.put(b"/pm/k", b"1")  # the dead one is skipped
    assert client.endpoints[client._current] == etcd.url
    nobody = client_for(dead, closed_port_url())
    with pytest.raises(EtcdUnavailable) as err:
        await nobody.put(b"/pm/k", b"1")
    message = str(err.value)
    assert message.startswith("no etcd endpoint answered: ")
    assert dead in message and nobody.endpoints[1] in message
    assert message.count("connect call failed") == 2 or message.count("refused") == 2, message


async def test_a_black_holed_etcd_times_out_within_the_call_timeout(
    etcd: EtcdServer, client_for: Callable[..., EtcdClient]
) -> None:
    relay = Relay(etcd.client_port)
    await relay.start()
    try:
        client = client_for(relay.url)
        await client.put(b"/pm/k", b"1")
        relay.mode = "blackhole"
        began = time.monotonic()
        with pytest.raises(EtcdUnavailable, match="TimeoutError"):
            await client.put(b"/pm/k", b"2")
        assert time.monotonic() - began < CALL_TIMEOUT + 1.0
        relay.mode = "pass"
        relay.drop()  # the stuck connection goes; the next call opens a new one
        await client.put(b"/pm/k", b"3")
        _, (kv,) = await client.range(b"/pm/k")
        assert kv.value == b"3"
    finally:
        await relay.stop()


async def test_leases_keep_a_key_alive_until_revoked(
    etcd: EtcdServer, client_for: Callable[..., EtcdClient]
) -> None:
    client = client_for(etcd.url)
    lease = await client.grant(5)
    assert lease != 0
    await client.put(b"/pm/members/a", b"here", lease=lease)
    assert await client.keep_alive(lease) == 5
    _, (kv,) = await client.range(b"/pm/members/a")
    assert kv.lease == lease
    await client.revoke(lease)
    assert (await client.range(b"/pm/members/a"))[1] == []
    assert await client.keep_alive(lease) == 0  # gone: etcd grants no TTL


async def test_username_and_password_and_a_renewed_token(
    tmp_path: Path, client_for: Callable[..., EtcdClient]
) -> None:
    # Tokens that expire after 1 s of idleness, so the renewal is exercised.
    server = EtcdServer(tmp_path / "etcd-auth", "--auth-token=simple", "--auth-token-ttl=1")
    server.start()
    try:
        admin = client_for(server.url)
        await admin._call("/v3/auth/user/add", {"name": "root", "password": "s3cret"})
        await admin._call("/v3/auth/user/grant", {"user": "root", "role": "root"})
        await admin._call("/v3/auth/enable", {})
        anonymous = client_for(server.url)
        with pytest.raises(EtcdError) as refused:
            await anonymous.put(b"/pm/k", b"1")
        assert "user name is empty" in str(refused.value) or refused.value.code != 0
        wrong = client_for(server.url, username="root", password="nope")
        with pytest.raises(EtcdError, match="authentication failed"):
            await wrong.put(b"/pm/k", b"1")
        client = client_for(server.url, username="root", password="s3cret")
        await client.put(b"/pm/k", b"1")
        first_token = client._token
        await asyncio.sleep(2.5)  # the token's TTL passing is the point; no event marks it
        await client.put(b"/pm/k", b"2")
        _, (kv,) = await client.range(b"/pm/k")
        assert kv.value == b"2" and first_token is not None
    finally:
        server.stop()
