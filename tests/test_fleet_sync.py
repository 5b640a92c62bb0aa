"""control/fleet_sync.py: a member's decisions on what it reads from etcd (no sockets)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from control.etcd import Event, Header, KeyValue, WatchBatch
from control.fleet_sync import (
    Apply,
    ApplyEach,
    Ignore,
    Refuse,
    Resync,
    SyncPoint,
    meta_value,
    on_full_read,
    on_watch_batch,
)
from control.state import StateDoc, initial_state, to_json
from tests.conftest import config_for

PREFIX = "/pointsman/shop"
FLEET = "shop"
CLUSTER = 77
BASE = initial_state(config_for({"blue": ["127.0.0.1:1"], "green": ["127.0.0.1:2"]}).routes, 0.0)


def doc(version: int) -> StateDoc:
    return replace(BASE, version=version)


def kv(key: str, value: bytes, revision: int) -> KeyValue:
    return KeyValue(
        key=f"{PREFIX}/{key}".encode(),
        value=value,
        create_revision=1,
        mod_revision=revision,
        version=1,
        lease=0,
    )


def header(revision: int, cluster: int = CLUSTER) -> Header:
    return Header(revision=revision, cluster_id=cluster, member_id=1, raft_term=1)


def state_kv(version: int, revision: int) -> KeyValue:
    return kv("state", to_json(doc(version)), revision)


def batch(revision: int, *events: Event, cluster: int = CLUSTER) -> WatchBatch:
    return WatchBatch(header(revision, cluster), events)


# --- the full read ------------------------------------------------------------------------


def test_a_full_read_of_this_fleets_prefix_applies_its_state() -> None:
    kvs = [kv("meta", meta_value(FLEET), 2), state_kv(5, 9)]
    decision = on_full_read(PREFIX, FLEET, header(12), kvs, applied=doc(4))
    assert decision == Apply(doc(5), SyncPoint(CLUSTER, 12), state_revision=9)


def test_a_full_read_refuses_an_empty_foreign_or_broken_prefix() -> None:
    cases = {
        "empty (wiped, or never created)": [],
        "belongs to fleet 'other'": [kv("meta", meta_value("other"), 2), state_kv(5, 9)],
        "has format 2": [kv("meta", b'{"fleet": "shop", "format": 2}', 2), state_kv(5, 9)],
        "meta is not JSON": [kv("meta", b"{", 2), state_kv(5, 9)],
        "but no /pointsman/shop/state": [kv("meta", meta_value(FLEET), 2)],
        "is not a valid state": [kv("meta", meta_value(FLEET), 2), kv("state", b"[]", 9)],
    }
    for expected, kvs in cases.items():
        decision = on_full_read(PREFIX, FLEET, header(12), kvs, applied=doc(4))
        assert isinstance(decision, Refuse), expected
        assert expected in decision.reason, (expected, decision.reason)


def test_a_full_read_never_goes_back_to_an_older_version() -> None:
    kvs = [kv("meta", meta_value(FLEET), 2), state_kv(3, 9)]
    decision = on_full_read(PREFIX, FLEET, header(12), kvs, applied=doc(4))
    assert isinstance(decision, Refuse)
    assert "version 3, older than the version 4" in decision.reason
    # At a first start (nothing applied yet) any valid version is taken.
    assert isinstance(on_full_read(PREFIX, FLEET, header(12), kvs, applied=None), Apply)


# --- the watch ----------------------------------------------------------------------------


def test_every_write_of_a_batch_is_applied_in_order_and_repeats_are_skipped() -> None:
    point = SyncPoint(CLUSTER, 10)
    events = (
        Event("put", state_kv(6, 9)),  # before the point: delivered again after a resume
        Event("put", state_kv(7, 11)),
        Event("put", kv("members/a", b"{}", 12)),
        Event("put", state_kv(8, 14)),
        Event("put", kv("members/b", b"{}", 15)),
    )
    assert on_watch_batch(PREFIX, point, batch(15, *events)) == ApplyEach(
        (
            Apply(doc(7), SyncPoint(CLUSTER, 11), state_revision=11),
            Apply(doc(8), SyncPoint(CLUSTER, 15), state_revision=14),
        )
    )
    one = batch(14, Event("put", state_kv(8, 14)))
    assert on_watch_batch(PREFIX, point, one) == Apply(doc(8), SyncPoint(CLUSTER, 14), 14)
    only_repeats = batch(14, Event("put", state_kv(6, 9)))
    assert on_watch_batch(PREFIX, point, only_repeats) == Ignore(point)


def test_other_keys_and_progress_messages_only_move_the_point() -> None:
    point = SyncPoint(CLUSTER, 10)
    members = batch(20, Event("put", kv("members/a", b"{}", 13)))
    assert on_watch_batch(PREFIX, point, members) == Ignore(SyncPoint(CLUSTER, 13))
    assert on_watch_batch(PREFIX, point, batch(30)) == Ignore(SyncPoint(CLUSTER, 30))


def test_a_changed_cluster_a_revision_gone_back_or_a_touched_meta_means_a_full_read() -> None:
    point = SyncPoint(CLUSTER, 10)
    other_cluster = on_watch_batch(PREFIX, point, batch(12, cluster=99))
    assert isinstance(other_cluster, Resync) and "cluster id changed" in other_cluster.reason
    back = on_watch_batch(PREFIX, point, batch(4))
    assert isinstance(back, Resync) and "went back" in back.reason
    for event in (
        Event("delete", kv("meta", b"", 11)),
        Event("put", kv("meta", meta_value("other"), 11)),
        Event("delete", kv("state", b"", 11)),
    ):
        decision = on_watch_batch(PREFIX, point, batch(11, event))
        assert isinstance(decision, Resync), event
    broken = on_watch_batch(PREFIX, point, batch(11, Event("put", kv("state", b"{", 11))))
    assert isinstance(broken, Resync) and "not a valid state" in broken.reason


# The whole loop, modelled: writes of the state and of other keys get increasing revisions;
# the member reads everything once, then gets the rest in batches cut anywhere, and after
# each "broken watch" resumes from its point, so a batch may begin with events it has seen.


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[Event], int, list[int], list[bool]]:
    """(events in revision order, the last state version written, batch sizes, resumes)."""
    kinds = draw(st.lists(st.sampled_from(["state", "other"]), min_size=1, max_size=40))
    revision, version, events = 10, 1, []
    for kind in kinds:
        revision += draw(st.integers(1, 5))  # other prefixes' keys use revisions too
        if kind == "state":
            version += 1
            events.append(Event("put", state_kv(version, revision)))
        else:
            events.append(Event("put", kv("members/a", b"{}", revision)))
    cuts = draw(st.lists(st.integers(1, 6), min_size=1, max_size=60))
    resumes = draw(st.lists(st.booleans(), min_size=len(cuts), max_size=len(cuts)))
    return events, version, cuts, resumes


def steps_of(decision: Apply | ApplyEach | Ignore) -> tuple[Apply, ...]:
    if isinstance(decision, ApplyEach):
        return decision.steps
    return (decision,) if isinstance(decision, Apply) else ()


@given(histories())
def test_a_member_applies_every_version_in_order_across_cuts_and_resumes(
    history: tuple[list[Event], int, list[int], list[bool]],
) -> None:
    events, last_version, cuts, resumes = history
    first = on_full_read(
        PREFIX, FLEET, header(10), [kv("meta", meta_value(FLEET), 2), state_kv(1, 10)], None
    )
    assert isinstance(first, Apply)
    applied, point = first.doc, first.point
    versions = [applied.version]
    position = 0  # the next event the watch (from point + 1) delivers
    for cut, resume in zip(cuts, resumes, strict=True):
        if position >= len(events):
            break
        if resume:  # a new watch from point + 1: redelivers what the point does not cover
            position = next(
                (i for i, e in enumerate(events) if e.kv.mod_revision > point.revision),
                len(events),
            )
            # ... and etcd may repeat the last event before it (at-least-once across resumes)
            position = max(0, position - 1)
        chunk = tuple(events[position : position + cut])
        position += cut
        if not chunk:
            continue
        decision = on_watch_batch(
            PREFIX, point, WatchBatch(header(chunk[-1].kv.mod_revision), chunk)
        )
        assert not isinstance(decision, Resync)
        for step in steps_of(decision):
            applied = step.doc
            versions.append(applied.version)
        assert decision.point.revision >= point.revision
        point = decision.point
    # Deliver what is left in one batch, as a caught-up watch would.
    rest = tuple(e for e in events if e.kv.mod_revision > point.revision)
    if rest:
        decision = on_watch_batch(PREFIX, point, WatchBatch(header(rest[-1].kv.mod_revision), rest))
        assert not isinstance(decision, Resync)
        for step in steps_of(decision):
            applied = step.doc
            versions.append(applied.version)
        point = decision.point
    assert applied.version == last_version
    assert versions == list(range(1, last_version + 1))  # every version, in order, no gap
    assert point.revision == events[-1].kv.mod_revision
