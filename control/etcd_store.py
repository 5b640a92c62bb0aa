"""The fleet's routing state in etcd: create, read and compare-and-set writes, with the audit
record in the same transaction. The layout and the read decisions are control/fleet_sync.py's.

A write lands only on the state it was computed from: the transaction compares the state key's
mod revision with the one this member last applied (and that `meta` is still this fleet's), so
of two members writing from the same version exactly one wins; the other gets `StateConflict`
with the state now in etcd, which the API answers as 409 with its version. The audit record
goes to `P/audit/<version, 20 digits>` in the same transaction, so there is never a change
without its record, nor a record of a change that did not happen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from control.etcd import Compare, EtcdClient, EtcdError, Header, KeyValue, Put
from control.fleet_sync import Apply, Refuse, meta_value, on_full_read
from control.state import StateDoc, to_json

__all__ = ["EtcdStore", "Fence", "FenceLost", "FleetExists", "StateConflict"]

AUDIT_DIGITS: Final = 20  # zero-padded versions sort as numbers in etcd's byte order


class StateConflict(Exception):
    """Someone else wrote the state first. `current` is what etcd holds now."""

    def __init__(self, current: StateDoc, state_revision: int) -> None:
        super().__init__(f"the state changed in etcd (now version {current.version})")
        self.current = current
        self.state_revision = state_revision


@dataclass(frozen=True, slots=True)
class Fence:
    """A write lands only while `key` is still at `revision`: the leader key of the rollout
    driver that makes the write (control/leadership.py)."""

    key: bytes
    revision: int


class FenceLost(Exception):
    """The write's fence no longer holds: its writer lost the lease it was elected with."""


class FleetExists(Exception):
    """`create` found a fleet (or something else) under the prefix already."""


class EtcdStore:
    def __init__(self, client: EtcdClient, prefix: str, fleet: str) -> None:
        self.client = client
        self.prefix = prefix.rstrip("/")
        self.fleet = fleet
        self.meta_key = f"{self.prefix}/meta".encode()
        self.state_key = f"{self.prefix}/state".encode()
        # The mod revision of the state key this member last applied: what a write compares.
        self.state_revision = 0

    def audit_key(self, version: int) -> bytes:
        return f"{self.prefix}/audit/{version:0{AUDIT_DIGITS}d}".encode()

    async def create(self, doc: StateDoc) -> Apply:
        """Start a fleet with `doc`, only if nothing is under `meta` and `state` yet."""
        result = await self.client.txn(
            [Compare(self.meta_key, "CREATE", 0), Compare(self.state_key, "CREATE", 0)],
            [Put(self.meta_key, meta_value(self.fleet)), Put(self.state_key, to_json(doc))],
        )
        if not result.succeeded:
            raise FleetExists(f"{self.prefix} already holds a fleet's meta or state")
        read = await self.read(applied=None)
        if isinstance(read, Refuse):
            raise EtcdError(f"the fleet just created does not read back: {read.reason}")
        return read

    async def open(self, first: StateDoc) -> Apply | Refuse:
        """At a member's start: the fleet's state, creating the fleet with `first` if
        nothing at all is under the prefix (the first member to start makes it). A prefix
        holding something else (another fleet, a meta without state) is refused, not
        overwritten."""
        _, kvs = await self.client.get_prefix(f"{self.prefix}/".encode(), limit=1)
        if not kvs:
            try:
                return await self.create(first)
            except FleetExists:
                pass  # another member made it meanwhile
        return await self.read(applied=None)

    async def _read_keys(self) -> tuple[Header, list[KeyValue]]:
        """`meta` and `state` at one revision: one range from `meta` to just after `state`.
        It skips `audit/` and `members/` (they sort before `meta`), so a full read stays the
        size of the state however many changes the fleet has made."""
        return await self.client.range(self.meta_key, self.state_key + b"\0")

    async def read(self, applied: StateDoc | None) -> Apply | Refuse:
        """The fleet's meta and state, decided by fleet_sync.on_full_read."""
        header, kvs = await self._read_keys()
        decision = on_full_read(self.prefix, self.fleet, header, kvs, applied)
        if isinstance(decision, Apply):
            self.state_revision = decision.state_revision
        return decision

    async def newer(self) -> Apply | None:
        """The state in etcd if it is not the one this member last applied (None: it is).
        For an answer that rests on the state being current without writing (a change
        that is already in force)."""
        header, kvs = await self._read_keys()
        now = on_full_read(self.prefix, self.fleet, header, kvs, applied=None)
        if isinstance(now, Refuse):
            raise EtcdError(f"not confirmed: {now.reason}")
        return None if now.state_revision == self.state_revision else now

    def applied(self, decision: Apply) -> None:
        """The member applied a state from the watch: writes compare against it from now
        (never an older one: a write of this member may have moved it on already)."""
        self.state_revision = max(self.state_revision, decision.state_revision)

    async def save(self, new: StateDoc, audit_record: bytes, fence: Fence | None = None) -> int:
        """Write `new` and its audit record if the state is still the one last applied (and
        `fence` holds). Returns the new state's mod revision; raises StateConflict if someone
        wrote first, FenceLost if the fence broke."""
        compares = [
            Compare(self.state_key, "MOD", self.state_revision),
            Compare(self.meta_key, "VALUE", meta_value(self.fleet)),
        ]
        if fence is not None:
            compares.append(Compare(fence.key, "MOD", fence.revision))
        result = await self.client.txn(
            compares,
            [Put(self.state_key, to_json(new)), Put(self.audit_key(new.version), audit_record)],
        )
        if result.succeeded:
            self.state_revision = result.header.revision
            return result.header.revision
        # Why: read what is there now (not adopting it: the member applies states from its
        # watch only). Another fleet's or no meta is an error; otherwise someone wrote first.
        header, kvs = await self._read_keys()
        now = on_full_read(self.prefix, self.fleet, header, kvs, applied=None)
        if isinstance(now, Refuse):
            raise EtcdError(f"not written: {now.reason}")
        if fence is not None and now.state_revision == self.state_revision:
            raise FenceLost(f"not written: {fence.key.decode(errors='replace')} changed")
        raise StateConflict(now.doc, now.state_revision)
