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
- ASK: the slot is being migrated and this key is already on the target. The operation is
  sent once to the target, each of its commands preceded by ASKING on the same connection
  (what makes the target accept the one command after it); the slot table is not changed;
- a node that cannot be reached, times out, or whose breaker is open (killed, hung, failed
  over; a hung master sends no MOVED): the slot table is refreshed in the background (at most
  once per `REFRESH_INTERVAL`) so later operations find the new primary; this operation fails
  as any unreachable Redis does, and the read falls back to the database. A slot the table
  does not cover (mid-failover), or no table yet (the cluster unreachable at start-up, which is
  not an error), is `CacheUnavailable` until a refresh finds it.

Reads go to masters only. Each master's invalidations wait for that master's replicas (a
`ReplicaWait` per write node, `NodeFactory.waits_per_node`), so a replica promoted by a
failover holds every invalidation whose write has returned.

The nodes a read may go to (`read_nodes`: the slot table's masters, and the targets of ASK
redirections since the table was last read whole) are told to whoever watches them
(`watch_nodes`: the near cache's tracking) each time they may have changed: once the table is
read at start-up or again, after a MOVED has updated it, and before a command is sent to a
node an ASK named, so a watcher hears of a node before any reply from it. (redis-py has an
event for a refreshed slot table, but none for ASK, whose target is not in the table.)

Multi-key operations must stay within one slot: guarded keys put a value and its generation in
one slot (`cache.policy.keys`), and `group` splits any other batch by slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import AskError, MovedError, RedisClusterException, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError

from postal.cache.transport.connection import PostalConnection
from postal.cache.transport.errors import CacheUnavailable
from postal.cache.transport.nodes import Node, NodeFactory
from postal.cache.transport.pool import ManagedPool
from postal.cache.transport.urls import RedisEndpoint, Topology

logger = logging.getLogger("postal.cache.cluster")

T = TypeVar("T")

# What reading the slot table may raise: redis-py's cluster errors ("cannot connect", "not all
# slots covered") are not RedisErrors.
TOPOLOGY_ERRORS = (RedisError, RedisClusterException, OSError)
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
        tls = factory.tls
        self._cluster = RedisCluster(
            startup_nodes=[ClusterNode(e.host, e.port) for e in topology.endpoints],
            username=self._seed.username,
            password=self._seed.password,
            ssl=self._seed.tls,
            ssl_ca_certs=tls.ca_file,
            ssl_certfile=tls.cert_file,
            ssl_keyfile=tls.key_file,
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
        self._asked: dict[str, Node] = {}  # ASK targets since the table was last read whole
        self._node_watchers: list[Callable[[list[Node]], None]] = []
        self._started = False
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Read the slot table and warm a pool per primary. A cluster that cannot be reached
        is not an error at start-up (the service runs on the database); it is retried."""
        self._started = True
        try:
            await self._cluster.initialize()
        except TOPOLOGY_ERRORS as exc:
            logger.warning("%s: cannot read the cluster's slots yet: %s", self.description, exc)
            self.refresh_soon()
            return
        self._ready = True
        await asyncio.gather(*(self._node(n, warm=False).start() for n in self._primaries()))
        self._nodes_may_have_changed()

    async def aclose(self) -> None:
        self._closed = True  # from here on no refresh, no new node, no warming
        tasks = [task for task in (self._refresh, *self._warming) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(node.aclose() for node in self._nodes.values()))
        with contextlib.suppress(*TOPOLOGY_ERRORS):
            await self._cluster.aclose()

    # -- routing -----------------------------------------------------------------------------

    def nodes(self) -> list[Node]:
        return list(self._nodes.values())

    def read_nodes(self) -> list[Node]:
        """Every node a read may go to now: the masters of the slot table, and the nodes ASK
        sent commands to since the table was last read whole (a migration's target, which may
        own no slot yet); none while the table is not known."""
        if not self._ready or self._closed:
            return []
        nodes = {node.name: node for node in map(self._node, self._primaries())}
        nodes.update(self._asked)
        return list(nodes.values())

    def watch_nodes(self, watcher: Callable[[list[Node]], None]) -> None:
        """Call `watcher` with `read_nodes()` now, and again each time they may have changed,
        before any command goes to a node it has not been told of (synchronously: it must not
        block)."""
        self._node_watchers.append(watcher)
        watcher(self.read_nodes())

    def _nodes_may_have_changed(self) -> None:
        if self._node_watchers:
            nodes = self.read_nodes()
            for watcher in self._node_watchers:
                watcher(nodes)

    def route(self, key: str | None) -> Node:
        """The node owning `key`'s slot (any primary for no key); CacheUnavailable while the
        slot table is unknown or does not cover the slot (it is read again meanwhile)."""
        return self._node(self._owner(None if key is None else self._cluster.keyslot(key)))

    def group(self, keys: Sequence[str]) -> list[list[int]]:
        """Indices of `keys` grouped by hash slot: each group may be one multi-key command."""
        slots: dict[int, list[int]] = {}
        for index, key in enumerate(keys):
            slots.setdefault(self._cluster.keyslot(key), []).append(index)
        return list(slots.values())

    def by_node(self, keys: Sequence[str]) -> list[list[int]]:
        """Indices of `keys` by the primary that owns their slot (for pipelining a batch)."""
        nodes: dict[str, list[int]] = {}
        for index, key in enumerate(keys):
            owner = self._owner(self._cluster.keyslot(key))
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
                self._nodes_may_have_changed()  # a new master, or a replica promoted
                self.refresh_soon()
                node = self.route(key)
            except AskError as ask:
                self.redirections["ask"] += 1
                target = self._node_at(ask.host, ask.port)
                if target.name not in self._asked:
                    self._asked[target.name] = target
                    self._nodes_may_have_changed()  # before its reply can be used
                return await call(_asking(target))
            except (RedisConnectionError, OSError):
                self.refresh_soon()  # a node gone: its slots will be someone else's
                raise
        return await call(node)  # the last try's error, if any, is the caller's

    def note_failure(self, node: Node) -> None:
        """An operation on `node` timed out, found it unreachable, or was refused by its open
        breaker: the cluster may have failed it over (a hung master sends no MOVED), so read
        the slot table again (at most once per REFRESH_INTERVAL)."""
        self.refresh_soon()

    def refresh_soon(self) -> None:
        """Re-read the slot table in the background, at most once per REFRESH_INTERVAL."""
        now = time.monotonic()
        if not self._started or self._closed:
            return
        if self._refresh is not None and not self._refresh.done():
            return
        if now - self._last_refresh < REFRESH_INTERVAL:
            return
        self._last_refresh = now
        self._refresh = asyncio.create_task(self._reinitialize(), name=f"postal-slots-{self.name}")

    async def _reinitialize(self) -> None:
        try:
            await self._cluster.nodes_manager.initialize()
        except TOPOLOGY_ERRORS as exc:
            logger.warning("%s: cannot refresh the cluster's slots: %s", self.description, exc)
            return
        self._ready = True
        for node in self._primaries():
            self._node(node)  # a new master's pool starts warming
        self._asked.clear()  # a migration still under way is asked for again
        self._nodes_may_have_changed()

    # -- nodes -------------------------------------------------------------------------------

    def _owner(self, slot: int | None) -> ClusterNode:
        """The primary serving `slot` (any primary for None), from redis-py's slot table."""
        if self._ready:
            try:
                if slot is None:
                    return self._cluster.get_random_primary_node()
                return self._cluster.nodes_manager.get_node_from_slot(slot)
            except (*TOPOLOGY_ERRORS, KeyError, IndexError, ValueError):
                pass  # not covered (a failover under way): as if not known
        self.refresh_soon()
        raise CacheUnavailable(f"{self.description}: no primary known for this key's slot yet")

    def _primaries(self) -> list[ClusterNode]:
        return list(self._cluster.get_primaries())

    def _node(self, cluster_node: ClusterNode, *, warm: bool = True) -> Node:
        return self._node_at(cluster_node.host, int(cluster_node.port), warm=warm)

    def _node_at(self, host: str, port: int, *, warm: bool = True) -> Node:
        """The Node for `host:port`, made (and, with `warm`, warmed in the background) the
        first time; after `aclose`, nothing is made: CacheUnavailable."""
        name = f"{host}:{port}"
        node = self._nodes.get(name)
        if node is not None:
            return node
        if self._closed:
            raise CacheUnavailable(f"{self.description}: closed")
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
        if warm and self._started:
            # Warmed in the background; the first caller dials on demand meanwhile.
            warming = asyncio.get_running_loop().create_task(node.start())
            self._warming.add(warming)
            warming.add_done_callback(self._warming.discard)
        return node

    def __repr__(self) -> str:
        return f"<ClusterRole {self.name} {self.description} nodes={sorted(self._nodes)}>"


class _AskingConnection:
    """A pooled connection whose every command goes out preceded by ASKING, whose `+OK` is
    read and dropped before the command's own reply: ASKING admits only the one command after
    it, and a script's NOSCRIPT fallback or a pipeline sends several."""

    def __init__(self, connection: PostalConnection) -> None:
        self.connection = connection
        self._unread_askings = 0

    def pack_commands(self, commands: Sequence[Sequence[Any]]) -> list[bytes]:
        asked = [part for command in commands for part in (("ASKING",), command)]
        packed: list[bytes] = self.connection.pack_commands(asked)
        self._unread_askings += len(commands)
        return packed

    async def send_packed_command(self, packed: list[bytes]) -> None:
        await self.connection.send_packed_command(packed)

    async def send_command(self, *args: Any) -> None:
        await self.send_packed_command(self.pack_commands([args]))

    async def read_response(self) -> Any:
        if self._unread_askings:
            self._unread_askings -= 1
            await self.connection.read_response()  # ASKING's +OK
        return await self.connection.read_response()


class _AskingPool:
    """A node's pool handing out `_AskingConnection`s (ASK redirection), and taking back the
    connections inside them."""

    def __init__(self, pool: ManagedPool) -> None:
        self._pool = pool

    async def get_connection(self, *args: Any, **kwargs: Any) -> _AskingConnection:
        return _AskingConnection(await self._pool.get_connection())

    async def release(self, connection: _AskingConnection) -> None:
        await self._pool.release(connection.connection)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


def _asking(node: Node) -> Node:
    """`node` whose connections send ASKING before each command."""
    # No read pipeline: ASKING must go before the command on the same connection.
    return replace(node, pool=_AskingPool(node.pool), pipeline=None)  # type: ignore[arg-type]
