"""What a fleet member does with what it reads from etcd: pure decisions, no I/O.

Layout under the fleet's prefix P (every value JSON):

    P/meta    {"fleet": "<id>", "format": 1}   written once, when the fleet is created
    P/state   the state document, exactly as the file store writes it (control/state.py)

A member reads P at revision R, applies P/state, then watches P from R + 1. Revisions are
etcd's, shared by every key of the cluster, so numbers jump between our events; what keeps a
member from missing one is resuming the watch from the revision after the last one it applied,
and reading everything again when etcd says that revision is compacted, when etcd's revision
went below ours (it was restored from an older snapshot or wiped) or when the cluster id
changed (another cluster answers at the same address). A member never applies a state from a
prefix whose `meta` is missing or names another fleet or format: a wiped or wrong etcd is
reported, and the member keeps serving what it has.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import orjson

from control.etcd import Header, KeyValue, WatchBatch
from control.state import StateDoc, from_json

__all__ = [
    "FORMAT_VERSION",
    "Apply",
    "ApplyEach",
    "Ignore",
    "Refuse",
    "Resync",
    "SyncPoint",
    "meta_value",
    "on_full_read",
    "on_watch_batch",
]

FORMAT_VERSION: Final = 1  # of the layout above; a member refuses any other


@dataclass(frozen=True, slots=True)
class SyncPoint:
    """Where a member's applied state came from."""

    cluster_id: int
    revision: int  # the etcd revision the applied state is current at


@dataclass(frozen=True, slots=True)
class Apply:
    """Apply `doc`; the member is now at `point`. `state_revision` is the mod revision of the
    state key that held `doc`: a write compares it, so it lands only on the state it read."""

    doc: StateDoc
    point: SyncPoint
    state_revision: int


@dataclass(frozen=True, slots=True)
class ApplyEach:
    """Several writes arrived in one batch: apply each, in order (so a member goes through
    every version the fleet went through, as its log and audit readers expect)."""

    steps: tuple[Apply, ...]

    @property
    def point(self) -> SyncPoint:
        return self.steps[-1].point


@dataclass(frozen=True, slots=True)
class Ignore:
    """Nothing to apply (events of other keys, or already applied); the member is now at
    `point` (so a later resume starts after them)."""

    point: SyncPoint


@dataclass(frozen=True, slots=True)
class Resync:
    """Stop watching and read the whole prefix again."""

    reason: str


@dataclass(frozen=True, slots=True)
class Refuse:
    """Keep serving the last good state; report `reason` (and retry later)."""

    reason: str


def meta_value(fleet: str) -> bytes:
    """The `meta` value of a new fleet."""
    return orjson.dumps({"fleet": fleet, "format": FORMAT_VERSION})


def _check_meta(prefix: str, fleet: str, meta: KeyValue | None) -> str | None:
    """Why the prefix is not this fleet's, or None."""
    if meta is None:
        return f"etcd has no {prefix}/meta: the prefix is empty (wiped, or never created)"
    try:
        obj = orjson.loads(meta.value)
    except orjson.JSONDecodeError:
        return f"{prefix}/meta is not JSON"
    if not isinstance(obj, dict):
        return f"{prefix}/meta is not a JSON object"
    if obj.get("format") != FORMAT_VERSION:
        return (
            f"{prefix}/meta has format {obj.get('format')!r}; this Pointsman reads format "
            f"{FORMAT_VERSION}"
        )
    if obj.get("fleet") != fleet:
        return f"{prefix}/meta belongs to fleet {obj.get('fleet')!r}, not {fleet!r}"
    return None


def _decode_state(prefix: str, kv: KeyValue) -> StateDoc | str:
    try:
        return from_json(kv.value)
    except ValueError as err:
        return f"{prefix}/state (revision {kv.mod_revision}) is not a valid state: {err}"


def on_full_read(
    prefix: str, fleet: str, header: Header, kvs: list[KeyValue], applied: StateDoc | None
) -> Apply | Refuse:
    """After reading every key under `prefix` at `header.revision`. `applied` is what the
    member serves now (None at a first start with no local copy)."""
    by_key = {kv.key: kv for kv in kvs}
    problem = _check_meta(prefix, fleet, by_key.get(f"{prefix}/meta".encode()))
    if problem is not None:
        return Refuse(problem)
    state = by_key.get(f"{prefix}/state".encode())
    if state is None:
        return Refuse(f"etcd has {prefix}/meta but no {prefix}/state")
    doc = _decode_state(prefix, state)
    if isinstance(doc, str):
        return Refuse(doc)
    if applied is not None and doc.version < applied.version:
        # Not an error of ours to fix by going back: an operator restored an old backup, or
        # this member's copy came from a newer etcd. Report it and keep serving.
        return Refuse(
            f"{prefix}/state has version {doc.version}, older than the version "
            f"{applied.version} this member serves"
        )
    return Apply(doc, SyncPoint(header.cluster_id, header.revision), state.mod_revision)


def on_watch_batch(
    prefix: str, point: SyncPoint, batch: WatchBatch
) -> Apply | ApplyEach | Ignore | Resync:
    """One batch of the watch that started after `point`."""
    if batch.header.cluster_id != point.cluster_id:
        return Resync(
            f"etcd's cluster id changed ({point.cluster_id} -> {batch.header.cluster_id})"
        )
    if batch.header.revision < point.revision:
        return Resync(
            f"etcd's revision went back ({point.revision} -> {batch.header.revision}): "
            "restored or wiped"
        )
    meta_key = f"{prefix}/meta".encode()
    state_key = f"{prefix}/state".encode()
    writes: list[KeyValue] = []
    last_revision = point.revision
    for event in batch.events:
        revision = event.kv.mod_revision
        if revision <= point.revision:
            continue  # delivered again after a resume: already applied
        last_revision = max(last_revision, revision)
        if event.kv.key == meta_key or (event.kv.key == state_key and event.kind == "delete"):
            # The fleet's identity or its state went away or changed under us: read it all
            # again, and the meta check decides.
            return Resync(f"{event.kv.key.decode(errors='replace')} was {event.kind} in etcd")
        if event.kv.key == state_key:
            writes.append(event.kv)
    # A progress message (no events) moves the point to its header's revision: everything up
    # to it has been delivered. A batch of events only vouches for its own events.
    seen = last_revision if batch.events else max(point.revision, batch.header.revision)
    if not writes:
        return Ignore(SyncPoint(point.cluster_id, seen))
    steps = []
    for index, write in enumerate(writes):
        doc = _decode_state(prefix, write)
        if isinstance(doc, str):
            return Resync(doc)  # the full read reports it and keeps the last good state
        # Each step's point is its own write, the last one's all the batch vouches for.
        at = seen if index == len(writes) - 1 else write.mod_revision
        steps.append(Apply(doc, SyncPoint(point.cluster_id, at), write.mod_revision))
    return steps[0] if len(steps) == 1 else ApplyEach(tuple(steps))
