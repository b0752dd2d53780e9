"""A role on a Redis Cluster: redis-py's cluster client knows the slots, Postal's pools do the I/O.

redis-py's `RedisCluster` discovers the cluster (CLUSTER SLOTS), hashes keys to slots, and keeps
the slot table current when a MOVED says a slot has changed hands (`NodesManager.move_slot`) or
when a node fails (a full refresh). Postal uses exactly that, and nothing home-made for sharding.

The commands themselves do not go through `RedisCluster.execute_command`: its per-node
connection lists (`ClusterNode`) have no wait for a free connection (a busy node raises
`MaxConnectionsError`), no min idle kept warm, no idle time or lifetime, and no place for
Postal's per-operation deadline or breaker. So each cluster node gets a `Node` of its own (a
`ManagedPool` with the role's pool settings, and a breaker), made the first time the slot table
names it, and `ClusterRole.run` follows redirections within the operation's deadline:

- MOVED: the slot has moved for good. The slot table is updated from the error (redis-py's
  `move_slot`), and the command is sent again to the new owner;
- ASK: the slot is being migrated and this key is already on the target. The command is sent
  once to the target, preceded by ASKING on the same connection (what makes the target accept
  it); the slot table is not changed;
- a node that cannot be reached (killed, failed over): the slot table is refreshed in the
  background (at most once per `REFRESH_INTERVAL`) so later operations find the new primary;
  this operation fails as any unreachable Redis does, and the read falls back to the database.

Reads go to masters only. Each master's invalidations wait for that master's replicas (a
`ReplicaWait` per write node, `NodeFactory.waits_per_node`), so a replica promoted by a
failover holds every invalidation whose write has returned.

Multi-key operations must stay within one slot: guarded keys put a value and its generation in
one slot (`cache.keys`), and `group` splits any other batch by slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import AskError, MovedError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError

from postal.cache.errors import CacheUnavailable
from postal.cache.nodes import Node, NodeFactory
from postal.cache.pool import ManagedPool
from postal.cache.urls import RedisEndpoint, Topology

logger = logging.getLogger("postal.cache.cluster")

T = TypeVar("T")

MAX_REDIRECTS = 3  # MOVED/ASK followed per operation; more means the cluster is reshaping
REFRESH_INTERVAL = 1.0  # seconds between background refreshes of the slot table


class ClusterRole:
    """A role whose node for a key is the primary that owns the key's hash slot."""

    def __init__(self, name: str, topology: Topology, factory: NodeFactory) -> None:
        self.name = name
        self.description = str(topology)
        self._factory = factory
        self._seed = topology.endpoints[0]  # credentials and TLS, the same on every node
        config = factory.pool_config
        self._cluster = RedisCluster(
            startup_nodes=[ClusterNode(e.host, e.port) for e in topology.endpoints],
            username=self._seed.username,
            password=self._seed.password,
            ssl=self._seed.tls,
            socket_connect_timeout=config.dial_timeout,
            socket_timeout=config.read_timeout,
            max_connections=2,  # topology queries only; commands use the Nodes' pools
        )
        self._nodes: dict[str, Node] = {}
        self.redirections = {"moved": 0, "ask": 0}  # followed since start
        self._ready = False
        self._last_refresh = -REFRESH_INTERVAL
        self._refresh: asyncio.Task[None] | None = None
        self._warming: set[asyncio.Task[None]] = set()  # held: the loop keeps weak references
        self._started = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Read the slot table and warm a pool per primary. A cluster that cannot be reached
        is not an error at start-up (the service runs on the database); it is retried."""
        self._started = True
        try:
            await self._cluster.initialize()
        except (RedisError, OSError) as exc:
            logger.warning("%s: cannot read the cluster's slots yet: %s", self.description, exc)
            self.refresh_soon()
            return
        self._ready = True
        await asyncio.gather(*(self._node(n).pool.start() for n in self._primaries()))

    async def aclose(self) -> None:
        for task in [self._refresh, *self._warming]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await asyncio.gather(*(node.pool.aclose() for node in self._nodes.values()))
        await self._cluster.aclose()

    # -- routing -----------------------------------------------------------------------------

    def nodes(self) -> list[Node]:
        return list(self._nodes.values())

    def route(self, key: str | None) -> Node:
        """The node owning `key`'s slot (any primary for no key)."""
        if not self._ready:
            self.refresh_soon()
            raise CacheUnavailable(f"{self.description}: the cluster's slots are not known yet")
        if key is None:
            return self._node(self._cluster.get_random_primary_node())
        slot = self._cluster.keyslot(key)
        return self._node(self._cluster.nodes_manager.get_node_from_slot(slot))

    def group(self, keys: Sequence[str]) -> list[list[int]]:
        """Indices of `keys` grouped by hash slot: each group may be one multi-key command."""
        slots: dict[int, list[int]] = {}
        for index, key in enumerate(keys):
            slots.setdefault(self._cluster.keyslot(key), []).append(index)
        return list(slots.values())

    def by_node(self, keys: Sequence[str]) -> list[list[int]]:
        """Indices of `keys` by the primary that owns their slot (for pipelining a batch)."""
        nodes: dict[str, list[int]] = {}
        manager = self._cluster.nodes_manager
        for index, key in enumerate(keys):
            owner = manager.get_node_from_slot(self._cluster.keyslot(key))
            nodes.setdefault(owner.name, []).append(index)
        return list(nodes.values())

    async def run(self, node: Node, key: str | None, call: Callable[[Node], Awaitable[T]]) -> T:
        """`call` on `node`, following MOVED and ASK (see the module docstring)."""
        for _ in range(MAX_REDIRECTS):
            try:
                return await call(node)
            except MovedError as moved:
                self.redirections["moved"] += 1
                await self._cluster.nodes_manager.move_slot(moved)
                self.refresh_soon()
                node = self.route(key)
            except AskError as ask:
                self.redirections["ask"] += 1
                target = self._node_at(ask.host, ask.port)
                return await call(_asking(target))
            except (RedisConnectionError, OSError):
                self.refresh_soon()  # a node gone: its slots will be someone else's
                raise
        return await call(node)  # the last try's error, if any, is the caller's

    def refresh_soon(self) -> None:
        """Re-read the slot table in the background, at most once per REFRESH_INTERVAL."""
        now = time.monotonic()
        if not self._started or (self._refresh is not None and not self._refresh.done()):
            return
        if now - self._last_refresh < REFRESH_INTERVAL:
            return
        self._last_refresh = now
        self._refresh = asyncio.create_task(self._reinitialize(), name=f"postal-slots-{self.name}")

    async def _reinitialize(self) -> None:
        try:
            await self._cluster.nodes_manager.initialize()
        except (RedisError, OSError) as exc:
            logger.warning("%s: cannot refresh the cluster's slots: %s", self.description, exc)
            return
        self._ready = True
        for node in self._primaries():
            await self._node(node).pool.start()

    # -- nodes -------------------------------------------------------------------------------

    def _primaries(self) -> list[ClusterNode]:
        return list(self._cluster.get_primaries())

    def _node(self, cluster_node: ClusterNode) -> Node:
        return self._node_at(cluster_node.host, int(cluster_node.port))

    def _node_at(self, host: str, port: int) -> Node:
        name = f"{host}:{port}"
        node = self._nodes.get(name)
        if node is None:
            endpoint = RedisEndpoint(
                host=host,
                port=port,
                db=0,
                tls=self._seed.tls,
                username=self._seed.username,
                password=self._seed.password,
            )
            node = self._factory.build(endpoint, name=name)
            self._nodes[name] = node
            if self._started:
                # Warm it in the background; the first caller dials on demand meanwhile.
                warming = asyncio.get_running_loop().create_task(node.pool.start())
                self._warming.add(warming)
                warming.add_done_callback(self._warming.discard)
        return node

    def __repr__(self) -> str:
        return f"<ClusterRole {self.name} {self.description} nodes={sorted(self._nodes)}>"


class _AskingPool:
    """A node's pool whose connections are handed out after ASKING: the one next command on
    each is accepted for a slot being imported (ASK redirection)."""

    def __init__(self, pool: ManagedPool) -> None:
        self._pool = pool

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        connection = await self._pool.get_connection()
        try:
            await connection.send_command("ASKING")
            await connection.read_response()
        except BaseException:
            await self._pool.release(connection)
            raise
        return connection

    async def release(self, connection: Any) -> None:
        await self._pool.release(connection)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


def _asking(node: Node) -> Node:
    """`node` whose pool sends ASKING before handing a connection out."""
    return Node(
        node.role,
        node.name,
        node.endpoint,
        _AskingPool(node.pool),  # type: ignore[arg-type]
        node.breaker,
        node.redis,
    )
