"""Finding a Sentinel service's primary (or its replicas) for a role's pool: redis-py's Sentinel.

`redis.asyncio.sentinel.Sentinel` asks the Sentinels in turn, skips one that does not answer,
and trusts only an answer that says the primary is up (not subjectively or objectively down).
Its own `SentinelConnectionPool` would replace Postal's pool (no min idle, no max idle, no idle
time or lifetime, no fair wait), so Postal keeps its `ManagedPool` and asks Sentinel only where
to dial: the `Locate` hook of the role's `Connector`, called on every new connection.

How a failover is survived:
- the primary dies: its pooled connections come back closed and are dropped, new dials are
  refused until the Sentinels promote a replica, and the breaker keeps requests off Redis
  meanwhile (reads fall back to the database, invalidations stay pending and are retried);
  the breaker's probe dials again, Sentinel now names the new primary, and writes resume;
- the primary is demoted while still up (a manual failover, a partition healing): it answers
  writes with READONLY; `is_demoted` tells the client, which closes that pool's connections so
  the next dials ask Sentinel again;
- invalidations WAIT for the replicas whenever the primary has any (`cache.replicas`), so the
  replica that Sentinel promotes already holds every invalidation whose write has returned.

With `?role=replica`, reads go to the replicas Sentinel lists as up, each new connection to the
next one in turn (so the pool's connections spread over them), the primary if none is up.
"""

from __future__ import annotations

import itertools

from redis.asyncio.sentinel import MasterNotFoundError, Sentinel
from redis.exceptions import ReadOnlyError, RedisError

from postal.cache.connection import Locate
from postal.cache.dns import DnsLookupError
from postal.cache.urls import Topology


class SentinelLocator:
    """Where `topology.service`'s primary, or replicas, are: one `Sentinel` client per role."""

    def __init__(self, topology: Topology, *, timeout: float) -> None:
        assert topology.service is not None
        self.service = topology.service
        self.replicas = topology.replicas
        self._sentinel = Sentinel(  # type: ignore[no-untyped-call]
            [(endpoint.host, endpoint.port) for endpoint in topology.endpoints],
            sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout},
        )
        self._turn = itertools.count()

    @property
    def locate(self) -> Locate:
        return self.replica_places if self.replicas else self.primary_places

    async def primary_places(self) -> list[tuple[str, int]]:
        try:
            host, port = await self._sentinel.discover_master(self.service)
        except MasterNotFoundError as exc:
            # An OSError, as a refused dial is: the pool fails the waiter, the breaker counts it.
            raise DnsLookupError(f"Sentinel: {exc}") from None
        except RedisError as exc:
            raise DnsLookupError(f"Sentinel did not answer: {exc}") from None
        return [(str(host), int(port))]

    async def replica_places(self) -> list[tuple[str, int]]:
        """The up replicas, starting with the next in turn; then the primary, if it is known."""
        try:
            replicas = await self._sentinel.discover_slaves(self.service)
        except RedisError:
            replicas = []
        places = [(str(host), int(port)) for host, port in replicas]
        if places:
            start = next(self._turn) % len(places)
            places = places[start:] + places[:start]
        try:
            places += await self.primary_places()
        except DnsLookupError:
            if not places:
                raise
        return places

    async def aclose(self) -> None:
        for client in self._sentinel.sentinels:
            await client.aclose()


def is_demoted(error: BaseException) -> bool:
    """A write refused because the server we reached is now a replica (READONLY)."""
    return isinstance(error, ReadOnlyError)
