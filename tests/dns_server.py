"""A small real DNS server for tests (dnslib): UDP on 127.0.0.1 at an OS-chosen port, answering
A and AAAA queries from a table the test changes while it runs, or failing as the test says.
"""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Literal, cast

from dnslib import AAAA, QTYPE, RCODE, RR, SOA, A, DNSRecord

# What the server does with a query: answer from `records` (NXDOMAIN for a name not in it),
# answer SERVFAIL or NXDOMAIN whatever the name, or not answer at all.
Mode = Literal["answer", "servfail", "nxdomain", "silent"]


def _name(name: str) -> str:
    return name.lower().rstrip(".")


class DnsServer(asyncio.DatagramProtocol):
    """`start`, then `set` records; `mode` (for every query type, or only `mode_qtype`) makes it
    fail. Counts the queries it received, and lets a test wait for more of them."""

    def __init__(self) -> None:
        self.records: dict[str, list[str]] = {}
        self.mode: Mode = "answer"
        self.mode_qtype: str | None = None  # "A" or "AAAA": the mode applies to that type only
        self.ttl = 0  # TTL of every record and negative answer; 0: resolvers do not cache them
        self.queries: list[tuple[str, str]] = []  # (name, type) of every query, in order
        self.port = 0
        self._transport: asyncio.DatagramTransport | None = None
        self._query_seen = asyncio.Event()

    async def start(self, port: int = 0) -> DnsServer:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", port))
        assert self._transport is not None
        self.port = int(self._transport.get_extra_info("sockname")[1])
        return self

    @property
    def address(self) -> str:
        """As DnsWatcher's `servers` take it."""
        return f"127.0.0.1:{self.port}"

    def set(self, name: str, *ips: str) -> None:
        """`name` now has these A and AAAA records (none: it exists with no records)."""
        self.records[_name(name)] = list(ips)

    def remove(self, name: str) -> None:
        self.records.pop(_name(name), None)

    def behave(self, mode: Mode, qtype: str | None = None) -> None:
        self.mode, self.mode_qtype = mode, qtype

    async def wait_queries(self, count: int) -> None:
        """Until `count` more queries than now have arrived."""
        target = len(self.queries) + count
        while len(self.queries) < target:
            self._query_seen.clear()
            await self._query_seen.wait()

    def stop(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast: Python 3.11's selector datagram transport does not subclass DatagramTransport
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        reply = self.answer(data)
        if reply is not None and self._transport is not None:
            self._transport.sendto(reply, addr)

    def answer(self, data: bytes) -> bytes | None:
        """The reply to one query packet, or None to stay silent."""
        request = DNSRecord.parse(data)
        name, qtype = _name(str(request.q.qname)), QTYPE[request.q.qtype]
        self.queries.append((name, qtype))
        self._query_seen.set()
        mode = self.mode if self.mode_qtype in (None, qtype) else "answer"
        if mode == "silent":
            return None
        reply = request.reply()
        qname = request.q.qname
        if mode == "servfail":
            reply.header.rcode = RCODE.SERVFAIL
        elif mode == "nxdomain" or name not in self.records:
            reply.header.rcode = RCODE.NXDOMAIN
        else:
            for ip in self.records[name]:
                version = ipaddress.ip_address(ip).version
                if (version, qtype) == (4, "A"):
                    reply.add_answer(RR(qname, QTYPE.A, rdata=A(ip), ttl=self.ttl))
                elif (version, qtype) == (6, "AAAA"):
                    reply.add_answer(RR(qname, QTYPE.AAAA, rdata=AAAA(ip), ttl=self.ttl))
        if mode != "servfail" and not reply.rr:
            # A negative answer carries the zone's SOA, whose minimum is how long resolvers may
            # cache it (RFC 2308), as an authoritative server's does.
            times = (1, 60, 60, 60, self.ttl)
            soa = SOA("ns." + name, "admin." + name, times)
            reply.add_auth(RR(qname, QTYPE.SOA, rdata=soa, ttl=self.ttl))
        return bytes(reply.pack())
