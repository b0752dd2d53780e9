"""Finding a Sentinel service's primary (or its replicas) for a role's pool: redis-py's Sentinel
commands, asked of every Sentinel at once.

redis-py's `Sentinel` client does not fit as it is. Its `SentinelConnectionPool` would replace
Postal's pool (no min idle, no max idle, no idle time or lifetime, no fair wait), so Postal keeps
its `ManagedPool` and asks Sentinel only where to dial: the `Locate` hook of the role's
`Connector`, called on every new connection. And its `discover_master` asks the Sentinels one
after another, moving a Sentinel to the front only once it has answered: a Sentinel that hangs
(stopped, partitioned, swapping) is asked first on every dial and spends the whole dial timeout,
which `Connector.open` shares between locating and name resolution, so one hung Sentinel out of
three failed every dial. Here:

- every Sentinel is asked at once, each with its own redis-py client (`Sentinel.sentinels`) and
  within `ASK_SHARE` of the dial timeout (the name resolution gets the rest); the first valid
  answer wins and the questions still running are cancelled. Valid is what redis-py trusts: a
  primary that the Sentinel sees up, not subjectively or objectively down
  (`Sentinel.check_master_state`); replicas not down (`Sentinel.filter_slaves`);
- the last valid answer is kept: when no Sentinel answers in time, it is used again
  (stale-if-error, as `DnsCache` does for names), with a warning at most every
  `STALE_LOG_INTERVAL`. A Sentinel that answers that no primary is up is believed: that raises
  `DnsLookupError`, as does no Sentinel answering when nothing is known yet.

How a failover is survived:
- the primary dies: its pooled connections come back closed and are dropped, new dials are
  refused until the Sentinels promote a replica, and the breaker keeps requests off Redis
  meanwhile (reads fall back to the database, invalidations stay pending and are retried);
  the breaker's probe dials again, Sentinel now names the new primary, and writes resume;
- the primary is demoted while still up (a manual failover, a partition healing): it answers
  writes with READONLY; `is_demoted` tells the client, which closes that pool's connections so
  the next dials ask Sentinel again;
- invalidations WAIT for the replicas whenever the primary has any (`replicas`), so the
  replica that Sentinel promotes already holds every invalidation whose write has returned.

With `?role=replica`, reads go to the replicas Sentinel lists as up, each new connection to the
next one in turn (so the pool's connections spread over them), the primary if none is up.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ReadOnlyError, RedisError, ResponseError

from postal.cache.transport.connection import Locate
from postal.cache.transport.dns import DnsLookupError
from postal.cache.transport.urls import Topology

ASK_SHARE = 0.5  # of the dial timeout, the time each Sentinel is given to answer
STALE_LOG_INTERVAL = 10.0  # seconds between two warnings that a stale answer is used

logger = logging.getLogger("postal.cache.sentinel")

Place = tuple[str, int]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Silent:
    """A Sentinel that gave no answer in time (as opposed to answering that it knows nothing)."""

    reason: str


class SentinelLocator:
    """Where `topology.service`'s primary, or replicas, are: one `Sentinel` client per role.

    `timeout` is the dial timeout that locating shares with name resolution; each Sentinel is
    given `ASK_SHARE` of it (`ask_timeout`).
    """

    def __init__(
        self, topology: Topology, *, timeout: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        assert topology.service is not None
        self.service = topology.service
        self.replicas = topology.replicas
        self.ask_timeout = timeout * ASK_SHARE
        self._sentinel = Sentinel(
            [(endpoint.host, endpoint.port) for endpoint in topology.endpoints],
            sentinel_kwargs={
                "socket_timeout": self.ask_timeout,
                "socket_connect_timeout": self.ask_timeout,
                "retry": Retry(NoBackoff(), 0),  # a retry would only spend the same time again
            },
        )
        self._clock = clock
        self._turn = itertools.count()
        self._last_primary: Place | None = None
        self._last_replicas: list[Place] = []
        self._stale_answers = 0
        self._stale_logged_at = -math.inf

    @property
    def locate(self) -> Locate:
        return self.replica_places if self.replicas else self.primary_places

    @property
    def stale_answers(self) -> int:
        """How many times no Sentinel answered in time and the last valid answer was used."""
        return self._stale_answers

    async def primary_places(self) -> list[Place]:
        return [await self._primary()]

    async def replica_places(self) -> list[Place]:
        """The up replicas, starting with the next in turn; then the primary, if it is known."""
        replicas, primary = await asyncio.gather(self._up_replicas(), self._primary_or_error())
        places = list(replicas)
        if places:
            start = next(self._turn) % len(places)
            places = places[start:] + places[:start]
        if isinstance(primary, DnsLookupError):
            if not places:
                raise primary
        else:
            places.append(primary)
        return places

    async def aclose(self) -> None:
        for client in self._sentinel.sentinels:
            await client.aclose()

    async def _primary(self) -> Place:
        primary, silent = await self._first_answer(self._ask_primary)
        if primary is not None:
            self._last_primary = primary
            return primary
        reasons = "; ".join(s.reason for s in silent)
        if len(silent) < len(self._sentinel.sentinels):
            # An OSError, as a refused dial is: the pool fails the waiter, the breaker counts it.
            answered = len(self._sentinel.sentinels) - len(silent)
            raise DnsLookupError(
                f"Sentinel: no primary of {self.service!r} is up, say the {answered} Sentinels"
                " that answered" + (f" (no answer: {reasons})" if silent else "")
            )
        if self._last_primary is not None:
            self._note_stale("primary", [self._last_primary])
            return self._last_primary
        raise DnsLookupError(f"Sentinel did not answer: {reasons}")

    async def _primary_or_error(self) -> Place | DnsLookupError:
        try:
            return await self._primary()
        except DnsLookupError as exc:
            return exc

    async def _up_replicas(self) -> list[Place]:
        replicas, silent = await self._first_answer(self._ask_replicas)
        if replicas is not None:
            self._last_replicas = replicas
            return replicas
        if len(silent) < len(self._sentinel.sentinels):
            self._last_replicas = []  # answered: no replica is up
            return []
        if self._last_replicas:
            self._note_stale("replicas", self._last_replicas)
        return list(self._last_replicas)

    async def _first_answer(
        self, question: Callable[[Redis], Awaitable[T | None]]
    ) -> tuple[T | None, list[_Silent]]:
        """The first valid answer to `question` from any Sentinel (None if none gave one), and
        the Sentinels that gave no answer so far. Asked of all at once; whatever is still
        running when this returns, or is cancelled, is cancelled and awaited."""
        asking = [
            asyncio.ensure_future(self._ask(client, question))
            for client in self._sentinel.sentinels
        ]
        silent: list[_Silent] = []
        try:
            for next_reply in asyncio.as_completed(asking):
                reply = await next_reply
                if isinstance(reply, _Silent):
                    silent.append(reply)
                elif reply is not None:
                    return reply, silent
            return None, silent
        finally:
            for task in asking:
                task.cancel()
            await asyncio.wait(asking)  # a cancelled question closes its connection first

    async def _ask(
        self, client: Redis, question: Callable[[Redis], Awaitable[T | None]]
    ) -> T | _Silent | None:
        """One Sentinel's answer within `ask_timeout`: never raises but when cancelled."""
        try:
            async with asyncio.timeout(self.ask_timeout):
                return await question(client)
        except TimeoutError:
            return _Silent(f"{_address(client)}: no answer within {self.ask_timeout:g} s")
        except (RedisError, OSError) as exc:
            return _Silent(f"{_address(client)}: {exc}")

    async def _ask_primary(self, client: Redis) -> Place | None:
        masters = await client.sentinel_masters()
        if isinstance(masters, list):  # the reply's shape in redis-py's RESP3 modes
            masters = {str(state.get("name")): state for state in masters}
        state = masters.get(self.service)
        if not state or not self._sentinel.check_master_state(state, self.service):
            return None
        return str(state["ip"]), int(state["port"])

    async def _ask_replicas(self, client: Redis) -> list[Place] | None:
        try:
            replicas = await client.sentinel_slaves(self.service)
        except ResponseError:
            return None  # an answer: it watches no service of that name
        up = self._sentinel.filter_slaves(replicas)
        return [(str(host), int(port)) for host, port in up] or None

    def _note_stale(self, what: str, places: list[Place]) -> None:
        self._stale_answers += 1
        now = self._clock()
        if now - self._stale_logged_at < STALE_LOG_INTERVAL:
            return
        self._stale_logged_at = now
        logger.warning(
            "sentinel:%s: no Sentinel answered within %g s; using the last known %s %s"
            " (said at most every %g s)",
            self.service,
            self.ask_timeout,
            what,
            ", ".join(f"{host}:{port}" for host, port in places),
            STALE_LOG_INTERVAL,
        )


def _address(client: Redis) -> str:
    arguments = client.connection_pool.connection_kwargs
    return f"{arguments.get('host')}:{arguments.get('port')}"


def is_demoted(error: BaseException) -> bool:
    """A write refused because the server we reached is now a replica (READONLY)."""
    return isinstance(error, ReadOnlyError)
