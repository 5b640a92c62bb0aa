"""A fleet member's sync loop: read the prefix, apply, watch from the next revision; on a broken
watch resume from the last applied revision after a jittered backoff; read everything again
on compaction, a changed cluster, a revision gone back or a touched meta/state. The decisions
are control/fleet_sync.py's; this is the I/O around them.

What it applies goes to `on_apply` (the control plane publishes it to the data plane and keeps
the local copy); `on_apply` may refuse a state (it does not fit this member's config), which
stays reported in `refusal` until a state is applied. A prefix it refuses (wiped or foreign
etcd, an older version) is reported in `last_error` and the member keeps serving what it has,
reading again after the backoff.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import Final

from control.etcd import Compacted, EtcdClient, EtcdError, EtcdUnavailable, prefix_end
from control.etcd_store import EtcdStore
from control.fleet_sync import Apply, ApplyEach, Ignore, Refuse, Resync, SyncPoint, on_watch_batch
from control.state import StateDoc
from proxy.tasks import cancel_and_wait

__all__ = ["FleetSync"]

log = logging.getLogger("pointsman.fleet")

# Backoff between attempts while etcd is unreachable or refuses: doubled per failure in a row,
# jittered (so a fleet does not reconnect in step after an etcd restart), reset once a read
# or a watch batch succeeds.
BACKOFF_FIRST: Final = 0.1
BACKOFF_MAX: Final = 5.0
# While watching, how often to ask etcd where it is: an idle watch stream says nothing for
# minutes (etcd's progress notices come every 10 min by default), and one cut off without a
# reset (a partition) says nothing ever. A range each interval finds both, within
# interval + the client's timeout, and keeps `last_sync` meaning "etcd answered".
CHECK_INTERVAL: Final = 5.0


class FleetSync:
    def __init__(
        self,
        client: EtcdClient,
        store: EtcdStore,
        on_apply: Callable[[StateDoc, int], Awaitable[str | None]],
        applied: StateDoc | None = None,
    ) -> None:
        self.client = client
        self.store = store
        self.on_apply = on_apply
        self.applied = applied  # what the member serves (its local copy at start)
        self.point: SyncPoint | None = None  # None: a full read comes next
        self.check_interval = CHECK_INTERVAL
        self.started = time.time()
        self.last_sync: float | None = None  # time.time() of the last read or batch
        self.last_error: str | None = None  # etcd unreachable, refusing, or not ours
        self.refusal: str | None = None  # why the newest state read was not applied
        self.full_reads = 0
        self.resumes = 0  # watches started again from the point after a break
        self.synced = asyncio.Event()  # set whenever a read or a batch succeeded
        self.error_reported = asyncio.Event()  # set whenever a failure is reported

    @property
    def reachable(self) -> bool:
        """etcd answered the last call, and the prefix is this fleet's."""
        return self.last_error is None and self.last_sync is not None

    @property
    def problem(self) -> str | None:
        """What to report: the last error, else why the newest state was not applied."""
        return self.last_error or self.refusal

    async def run(self) -> None:
        """Until cancelled."""
        backoff = BACKOFF_FIRST
        while True:
            try:
                if self.point is None:
                    if not await self._full_read():
                        await self._pause(backoff)
                        backoff = min(backoff * 2, BACKOFF_MAX)
                        continue
                    backoff = BACKOFF_FIRST
                await self._follow()
            except Compacted as err:
                log.warning("fleet: %s; reading the whole state again", err)
                self.point = None
            except EtcdUnavailable as err:
                self._failed(f"etcd unreachable: {err}")
                await self._pause(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                if self.point is not None:
                    self.resumes += 1
            except EtcdError as err:
                self._failed(f"etcd refused: {err}")
                self.point = None
                await self._pause(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    async def _full_read(self) -> bool:
        decision = await self.store.read(self.applied)
        self.full_reads += 1
        if isinstance(decision, Refuse):
            self._failed(decision.reason)
            return False
        await self._apply(decision)
        return True

    async def _follow(self) -> None:
        assert self.point is not None
        if not await self._still_there():
            return
        watching = asyncio.create_task(self._watch(self.point.revision + 1), name="fleet-watch")
        try:
            while True:
                done, _ = await asyncio.wait([watching], timeout=self.check_interval)
                if done:
                    return watching.result()  # the watch ended: its error, or a resync
                if not await self._still_there():
                    return
        finally:
            if not watching.done():  # else its outcome was taken above
                await cancel_and_wait([watching])

    async def _still_there(self) -> bool:
        """Whether etcd is still the cluster and history this member follows. A watch from a
        revision etcd has not reached waits silently: after an etcd that came back wiped or
        restored, or another cluster at the address, no batch would ever tell."""
        assert self.point is not None
        header, _ = await self.client.range(self.store.meta_key)
        if header.cluster_id != self.point.cluster_id or header.revision < self.point.revision:
            log.warning("fleet: etcd is at revision %d of cluster %d, this member at %d of %d; "
                        "reading the whole state again", header.revision, header.cluster_id,
                        self.point.revision, self.point.cluster_id)  # fmt: skip
            self.point = None
            return False
        self._succeeded()
        return True

    async def _watch(self, start: int) -> None:
        prefix = f"{self.store.prefix}/".encode()
        # Closed on the way out (a resync returns mid-stream), not left to the collector.
        async with aclosing(self.client.watch(prefix, prefix_end(prefix), start)) as batches:
            async for batch in batches:
                assert self.point is not None
                decision = on_watch_batch(self.store.prefix, self.point, batch)
                if isinstance(decision, Resync):
                    log.warning("fleet: %s; reading the whole state again", decision.reason)
                    self.point = None
                    return
                if isinstance(decision, Apply):
                    await self._apply(decision)
                elif isinstance(decision, ApplyEach):
                    for step in decision.steps:
                        await self._apply(step)
                elif isinstance(decision, Ignore):
                    self.point = decision.point
                    self._succeeded()

    async def _apply(self, decision: Apply) -> None:
        self.point = decision.point  # read either way: a refused state is not read again
        if self.applied is None or decision.doc != self.applied:
            refusal = await self.on_apply(decision.doc, decision.state_revision)
            if refusal is not None:
                if refusal != self.refusal:
                    log.error("fleet: %s", refusal)
                self.refusal = refusal
                self._succeeded()  # etcd itself answered
                return
        self.refusal = None
        self.applied = decision.doc
        self.store.applied(decision)
        self._succeeded()

    def _succeeded(self) -> None:
        if self.last_error is not None:
            log.info("fleet: in sync again at revision %d",
                     self.point.revision if self.point else 0)  # fmt: skip
        self.last_error = None
        self.last_sync = time.time()
        self.synced.set()

    def _failed(self, reason: str) -> None:
        if reason != self.last_error:
            log.error("fleet: %s (serving version %s)",
                      reason, self.applied.version if self.applied else "none")  # fmt: skip
        self.last_error = reason
        self.error_reported.set()

    @staticmethod
    async def _pause(backoff: float) -> None:
        await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
