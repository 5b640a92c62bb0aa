"""DNS endpoints of the routing state: which `name:port` endpoints the state names, what they
resolve to now (proxy/dns.py's watcher, in the master only), and a new table for the whole
host when a set changes.

Resolved addresses are not routing state: every host resolves for itself, so a DNS change is
no new version, nothing is written to the state file or to etcd, and fleet members never
write each other's resolutions. The master builds its table with them and sends them to its
workers with the state snapshot (`resolved`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import dns.exception

from control.state import StateDoc
from proxy.config import Address, DnsSettings, address_text, is_dns_name, parse_address
from proxy.dns import DnsEntry, DnsWatcher

log = logging.getLogger("pointsman.dns")


def dns_names(doc: StateDoc) -> set[Address]:
    """The `name:port` endpoints of every pool of the state (draining ones included: their
    requests in flight need their addresses kept as draining)."""
    names: set[Address] = set()
    for _, route in doc.routes:
        for pool in route.pools or ():
            for text in pool.endpoints:
                address = parse_address(text)
                if is_dns_name(address.host):
                    names.add(address)
    return names


class Discovery:
    """The master's DNS endpoints: `follow` a state (watch its names; returns once new names
    have been asked once), `resolved` for the tables, `close` at shutdown."""

    def __init__(self, settings: DnsSettings, on_change: Callable[[], None]) -> None:
        self.settings = settings
        self.on_change = on_change  # a set changed: the host needs a new table
        self.resolved: dict[str, tuple[str, ...]] = {}  # name:port -> its addresses now
        # Made when the first name appears: reading /etc/resolv.conf can fail on a host that
        # has none, and a config without names must not care.
        self._watcher: DnsWatcher | None = None

    @property
    def entries(self) -> dict[str, DnsEntry]:
        """Each watched name:port with its counters (the API and /metrics show them)."""
        if self._watcher is None:
            return {}
        return {address_text(a): entry for a, entry in self._watcher.entries.items()}

    async def follow(self, *docs: StateDoc) -> None:
        """Watch exactly the names `docs` use (the one in force and the one about to be, while
        a change may still fail). Raises ValueError if the name servers cannot be set up
        (dns.servers unusable, or no /etc/resolv.conf)."""
        names = set().union(*(dns_names(doc) for doc in docs))
        if self._watcher is None:
            if not names:
                return
            try:
                self._watcher = DnsWatcher(
                    self._changed,
                    refresh=self.settings.refresh,
                    timeout=self.settings.timeout,
                    servers=self.settings.servers,
                )
            except dns.exception.DNSException as err:  # e.g. no /etc/resolv.conf
                raise ValueError(f"dns: no name servers to ask ({err}); set dns.servers") from None
        await self._watcher.watch(names)
        wanted = {address_text(a) for a in names}
        for name in [n for n in self.resolved if n not in wanted]:
            del self.resolved[name]

    def _changed(self, endpoint: Address, addresses: tuple[Address, ...]) -> None:
        self.resolved[address_text(endpoint)] = tuple(address_text(a) for a in addresses)
        self.on_change()

    async def close(self) -> None:
        if self._watcher is not None:
            await self._watcher.close()
