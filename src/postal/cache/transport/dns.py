"""A TTL-caching resolver for Redis host names, shared by both pools.

Python's `getaddrinfo` caches nothing, so without this every new connection pays a lookup: in
Kubernetes, with ndots:5 and search domains, that is several queries and tens of milliseconds, the
"DNS lookup per connection" of the incident. The cache here:

- keeps an answer for `ttl` seconds (0 disables caching: every dial resolves);
- coalesces concurrent lookups of one name into one (a burst of dials costs one query);
- serves the last good answer when a lookup fails (stale-if-error), asking again every few
  seconds for as long as lookups keep failing;
- forgets a name on request, so that after a connection failure the next dial re-resolves and a
  Redis that moved (a failover, a rescheduled pod) is found again.

The resolver and the clock are injected, so tests count lookups and move time by hand. Written by
hand because no maintained asyncio library offers a TTL cache with stale-if-error and coalescing
that can sit under redis-py's dialer.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

Resolver = Callable[[str, int], Awaitable[list[str]]]
Clock = Callable[[], float]

STALE_GRACE = 5.0  # seconds a stale answer is served before the next lookup is tried


class DnsLookupError(OSError):
    """The name could not be resolved and no earlier answer is known."""


async def system_resolver(host: str, port: int) -> list[str]:
    """The operating system's resolver, without blocking the event loop."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[str] = []
    for _family, _type, _proto, _canonname, sockaddr in infos:
        address = str(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


@dataclass(slots=True)
class _Entry:
    addresses: list[str]
    expires_at: float


@dataclass(frozen=True, slots=True)
class DnsStats:
    cached: int  # answered from the cache
    resolved: int  # a lookup was made and succeeded
    stale: int  # a lookup failed; the last good answer was served
    failed: int  # a lookup failed and nothing was known


def is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class DnsCache:
    def __init__(
        self,
        resolver: Resolver = system_resolver,
        *,
        ttl: float = 30.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self._resolver = resolver
        self._ttl = ttl
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._inflight: dict[str, asyncio.Task[list[str]]] = {}
        self._cached = self._resolved = self._stale = self._failed = 0

    @property
    def ttl(self) -> float:
        return self._ttl

    def stats(self) -> DnsStats:
        return DnsStats(self._cached, self._resolved, self._stale, self._failed)

    async def resolve(self, host: str, port: int) -> list[str]:
        """The addresses of `host`, in the resolver's order: cached when fresh, else looked up
        once for all concurrent callers."""
        if is_ip_address(host):
            return [host]
        entry = self._entries.get(host)
        if entry is not None and self._clock() < entry.expires_at:
            self._cached += 1
            return entry.addresses
        lookup = self._inflight.get(host)
        if lookup is None:
            lookup = asyncio.ensure_future(self._lookup(host, port))
            self._inflight[host] = lookup
            lookup.add_done_callback(lambda _: self._inflight.pop(host, None))
        else:
            self._cached += 1  # coalesced: this caller caused no query of its own
        # Shielded: one caller's deadline must not cancel the lookup the others are waiting for.
        return await asyncio.shield(lookup)

    def known_addresses(self, host: str) -> list[str]:
        """The addresses last resolved for `host` (itself if an IP address), fresh or not;
        empty if never resolved. No lookup: for matching, not for dialling."""
        if is_ip_address(host):
            return [host]
        entry = self._entries.get(host)
        return list(entry.addresses) if entry is not None else []

    def forget(self, host: str) -> None:
        """Make the next dial re-resolve `host`; the old answer stays, for stale-if-error."""
        entry = self._entries.get(host)
        if entry is not None:
            entry.expires_at = self._clock()

    async def _lookup(self, host: str, port: int) -> list[str]:
        try:
            addresses = await self._resolver(host, port)
            if not addresses:
                raise DnsLookupError(f"no address found for {host}")
        except Exception as exc:
            known = self._entries.get(host)
            if known is None:
                self._failed += 1
                raise DnsLookupError(f"cannot resolve {host}: {exc}") from exc
            self._stale += 1
            known.expires_at = self._clock() + min(self._ttl, STALE_GRACE)
            return known.addresses
        self._resolved += 1
        if self._ttl > 0:
            self._entries[host] = _Entry(addresses, self._clock() + self._ttl)
        return addresses
