"""The Redis servers behind a role: each a `Node` (pool, breaker, label), and how a role picks one.

A role is what a URL names (`urls.Topology`), built into one of:

- `ServerRole`: fixed servers. One Redis, or several replicas of one primary (a comma-separated
  `READ_REDIS_URL`): each replica has its own pool and its own breaker, reads go round-robin
  over the replicas whose breaker is not open, so a failed replica is skipped until a probe
  finds it answering again; and only over those the primary lists as online (`in_sync`), so a
  replica restarted, re-syncing or cut off from its primary serves nothing stale. Sentinel
  roles are a `ServerRole` too: one node whose connector asks
  the Sentinels where to dial (`sentinel`);
- `ClusterRole` (`cluster`): a node per cluster node, picked by the key's hash slot.

Pools and breakers are per node, so one dead replica or one failed cluster node opens its own
breaker and leaves the others serving; and pool sizes multiply: per process, per role, per node.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

from postal.cache.transport.autopipeline import ReadPipeline
from postal.cache.transport.breaker import BreakerListener, BreakerState, CircuitBreaker
from postal.cache.transport.config import PoolConfig, Profile, TlsConfig
from postal.cache.transport.connection import Connector, Locate
from postal.cache.transport.dns import DnsCache
from postal.cache.transport.errors import CacheUnavailable
from postal.cache.transport.events import PoolWaitListener
from postal.cache.transport.pool import ManagedPool
from postal.cache.transport.replicas import ReplicaWait
from postal.cache.transport.urls import RedisEndpoint
from postal.cache.transport.wire import command_call

T = TypeVar("T")


@dataclass(eq=False, slots=True)
class Node:
    """One server of one role: its pool, its breaker, and the label stats and metrics show."""

    role: str
    name: str  # "host:port" as configured or announced: the `node` label
    endpoint: RedisEndpoint
    pool: ManagedPool
    breaker: CircuitBreaker | None
    # Write role: how many replicas this server's invalidations wait for (`replicas`);
    # None: none (reads cannot see a replica of it).
    replica_wait: ReplicaWait | None = field(default=None, repr=False)
    # Read role: the connection concurrent GETs and MGETs share (`autopipeline`); None: reads
    # check a connection out of the pool.
    pipeline: ReadPipeline | None = field(default=None, repr=False)
    # Told when a connection to this server is lost rather than closed by us (the read
    # pipeline's, or a pooled one's mid-command): the server may come back restarted. Set by
    # the client for replicas (`ReplicaWait.lost`); None: nobody asks.
    on_lost: Callable[[], None] | None = field(default=None, repr=False)
    losses: int = field(default=0, repr=False)  # connections lost so far (`connection_lost`)

    def connection_lost(self) -> None:
        self.losses += 1
        if self.on_lost is not None:
            self.on_lost()

    async def start(self) -> None:
        """Warm the pool and dial the read pipeline."""
        if self.pipeline is None:
            await self.pool.start()
        else:
            await asyncio.gather(self.pool.start(), self.pipeline.warm())

    async def aclose(self) -> None:
        if self.pipeline is not None:
            await self.pipeline.aclose()
        await self.pool.aclose()

    def retire_connections(self) -> None:
        """Close every connection to this server (a failover made it a replica): the pool's
        idle ones now and those in use on return, and the read pipeline, which redials."""
        self.pool.retire_all()
        if self.pipeline is not None:
            self.pipeline.retire()

    @property
    def is_refusing(self) -> bool:
        """Open and still cooling down: a call would be refused (without using up the probe)."""
        breaker = self.breaker
        return breaker is not None and breaker.state is BreakerState.OPEN and breaker.retry_in() > 0


@dataclass(slots=True)
class NodeFactory:
    """Builds the nodes of one role with that role's pool settings, the profile's breaker, and
    the client's shared DNS cache and TLS settings; subscribes each new node's pool and breaker
    to the listeners given so far (a cluster adds nodes as it learns of them)."""

    role: str
    profile: Profile
    dns: DnsCache
    tls: TlsConfig
    # Give each node its own ReplicaWait (a cluster's masters: each has its own replicas).
    waits_per_node: bool = False
    wait_listeners: list[PoolWaitListener] = field(default_factory=list)
    breaker_listeners: list[BreakerListener] = field(default_factory=list)

    @property
    def pool_config(self) -> PoolConfig:
        return self.profile.read_pool if self.role == "read" else self.profile.write_pool

    def build(self, endpoint: RedisEndpoint, *, name: str, locate: Locate | None = None) -> Node:
        config = self.pool_config
        connector = Connector(
            endpoint,
            config,
            dns=self.dns,
            tls=self.tls,
            client_name=f"postal-{self.role}",
            locate=locate,
        )
        pool = ManagedPool(self.role, connector, config, node=name)
        for wait_listener in self.wait_listeners:
            pool.subscribe_waits(wait_listener)
        breaker = None
        if self.profile.breaker is not None:
            breaker = CircuitBreaker(
                self.profile.breaker.failure_threshold,
                self.profile.breaker.cooldown,
                failure_window=self.profile.breaker.failure_window,
                name=self.role,
                node=name,
            )
            for breaker_listener in self.breaker_listeners:
                breaker.subscribe(breaker_listener)
        node = Node(self.role, name, endpoint, pool, breaker)
        pool.on_lost = node.connection_lost
        if self.role == "read" and self.profile.read_pipeline is not None:
            node.pipeline = ReadPipeline(
                self.role, name, connector, self.profile.read_pipeline, config
            )
            node.pipeline.on_lost = node.connection_lost
        if self.waits_per_node:
            ask = partial(command_call("INFO", "replication"), node)  # ReplicaWait bounds it
            node.replica_wait = ReplicaWait(ask, enabled=True)
        return node


def node_name(endpoint: RedisEndpoint) -> str:
    return f"{endpoint.host}:{endpoint.port}"


class ServerRole:
    """A role on fixed servers: one, or replicas that reads are spread over."""

    def __init__(
        self,
        name: str,
        nodes: Sequence[Node],
        description: str,
        *,
        on_close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        if not nodes:
            raise ValueError("a role needs at least one server")
        self._on_close = on_close  # Sentinel: close its connections to the Sentinels
        self.name = name
        self.description = description  # the masked URL, for messages
        self._nodes = list(nodes)
        self._turns = itertools.cycle(range(len(self._nodes)))
        self.redirections = {"moved": 0, "ask": 0}  # never, on fixed servers (see ClusterRole)
        # Replicas: whether a node is fit to read from (in sync with its primary); None: all are.
        self.in_sync: Callable[[Node], bool] | None = None

    def nodes(self) -> list[Node]:
        return list(self._nodes)

    def route(self, key: str | None) -> Node:
        """The next server in turn that is in sync and whose breaker is not refusing; when none
        is in sync, `CacheUnavailable` (the read goes to the database); when all in sync are
        refusing, the next of those anyway (its breaker refuses: `CircuitOpen`)."""
        nodes = self._nodes
        in_sync = self.in_sync
        if len(nodes) == 1 and in_sync is None:
            return nodes[0]
        fallback = None
        for _ in range(len(nodes)):
            candidate = nodes[next(self._turns)]
            if in_sync is not None and not in_sync(candidate):
                continue
            if not candidate.is_refusing:
                return candidate
            fallback = fallback or candidate
        if fallback is None:
            raise CacheUnavailable(f"{self.description}: no replica is in sync with the primary")
        return fallback

    async def run(self, node: Node, key: str | None, call: Callable[[Node], Awaitable[T]]) -> T:
        """`call` on `node`: a server role has no redirections to follow.

        On replicas, a reply is refused (`CacheUnavailable`) when a connection to its server was
        found lost while it was on its way: the pool's checkout finds a connection the server
        closed only after the read was routed, and a new one may then reach a replica that
        restarted with old data (`ReplicaWait.lost`)."""
        if self.in_sync is None:
            return await call(node)
        losses = node.losses
        result = await call(node)
        if node.losses != losses:
            raise CacheUnavailable(f"{node.name}: a connection to it was lost during the read")
        return result

    def group(self, keys: Sequence[str]) -> list[list[int]]:
        """Indices of `keys` that may go in one multi-key command: here, all of them."""
        return [list(range(len(keys)))] if keys else []

    def note_failure(self, node: Node) -> None:
        """A failed operation on `node`: its breaker keeps the count; nothing to re-read."""

    def by_node(self, keys: Sequence[str]) -> list[list[int]]:
        """Indices of `keys` by the node that serves them: here, all on the one routed to."""
        return self.group(keys)

    async def start(self) -> None:
        await asyncio.gather(*(node.start() for node in self._nodes))

    async def aclose(self) -> None:
        await asyncio.gather(*(node.aclose() for node in self._nodes))
        if self._on_close is not None:
            await self._on_close()

    def __repr__(self) -> str:
        return f"<ServerRole {self.name} {self.description}>"
