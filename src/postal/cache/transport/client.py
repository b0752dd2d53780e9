"""RedisClient: Redis behind a read and a write role, and the executor every operation runs in.

The executor (`run_read`, `run_write`) is the one place where deadlines, breakers, redis-py's
errors and events meet. Each operation runs under a deadline (GET 100 ms and SET 200 ms by
default, settable per call with `timeout=`; `None` disables it) that bounds all of it: the wait
for a pooled connection, the dial if one is needed, the write and the read. When the deadline
expires the caller gets `CacheTimeout` (or `PoolTimeout` if no connection was free) at once;
redis-py closes the interrupted connection and the pool drops it, so a late reply can never reach
another caller.

What runs inside is a `call` from `wire` (a command, a pipeline, a script), on the
node the operation was routed to: a role's server, a replica, Sentinel's primary, or the cluster
master owning the key's slot. The plain commands here (`get`, `mget`, `set`, `delete`,
`pipeline`) are such calls; so are the caching policy's (`postal.cache.policy`), which split
their batches with `read_groups`, `write_groups` and `write_nodes`.

Each node has its own circuit breaker (unless the profile has none): while it is open, operations
fail at once with `CircuitOpen`. Timeouts, pool timeouts and unreachable Redis count as failures;
any completed operation, a miss or an error reply included, counts as a success (Redis answered).

This module maps redis-py's exceptions: everything it raises becomes one of
`errors` here. Every operation emits a `CacheEvent` to the subscribed listeners,
one refused by an open breaker too (outcome `circuit_open`, no I/O done).
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, Final, Self, TypeVar

import redis.exceptions as redis_exc

from postal.cache.transport.autopipeline import PipelineStats
from postal.cache.transport.breaker import BreakerListener, BreakerState, CircuitBreaker
from postal.cache.transport.cluster import ClusterRole
from postal.cache.transport.config import NO_TLS, TUNED, Profile, TlsConfig
from postal.cache.transport.deadline import Operation, current_operation
from postal.cache.transport.dns import DnsCache
from postal.cache.transport.durations import format_duration
from postal.cache.transport.errors import (
    CacheError,
    CacheTimeout,
    CacheUnavailable,
    CircuitOpen,
    PoolTimeout,
)
from postal.cache.transport.events import CacheEvent, CacheListener, Outcome, PoolWaitListener
from postal.cache.transport.loop_lag import LoopLag
from postal.cache.transport.nodes import Node, NodeFactory, ServerRole, node_name
from postal.cache.transport.pool import ManagedPool, PoolStats, total_of
from postal.cache.transport.replicas import ReplicaWait, ReplicaWaitStats
from postal.cache.transport.sentinel import SentinelLocator, is_demoted
from postal.cache.transport.shared_deadlines import SharedDeadlines
from postal.cache.transport.tracking import (
    DEAD_AFTER,
    HEARTBEAT,
    FollowingTracking,
    NodeTracking,
    Tracking,
    TrackingListener,
)
from postal.cache.transport.urls import Kind, Topology
from postal.cache.transport.wire import Value, all_of, command_call, pipeline_call, read_call

T = TypeVar("T")

# A deadline that expired while the event loop ran this late (or half the deadline, if more)
# is no verdict on Redis: see `loop_lag`.
LATE_LOOP_FLOOR = 0.020  # seconds


class UseDefault(enum.Enum):
    """`timeout=USE_DEFAULT` takes the role's configured deadline; `timeout=None` means none."""

    USE_DEFAULT = enum.auto()


USE_DEFAULT: Final = UseDefault.USE_DEFAULT
# breaker_state's order: a role is as available as its most available node.
_AVAILABILITY = [BreakerState.CLOSED, BreakerState.HALF_OPEN, BreakerState.OPEN]
Timeout = float | None | UseDefault


Role = ServerRole | ClusterRole


def _build_role(name: str, topology: Topology, factory: NodeFactory) -> Role:
    """The role a URL names: its servers, its Sentinel-located server, or its cluster."""
    if topology.kind is Kind.CLUSTER:
        return ClusterRole(name, topology, factory)
    if topology.kind is Kind.SENTINEL:
        locator = SentinelLocator(topology, timeout=factory.pool_config.dial_timeout)
        sentinels = topology.endpoints[0]
        label = f"sentinel:{topology.service}" + (":replicas" if topology.replicas else "")
        node = factory.build(sentinels, name=label, locate=locator.locate)
        return ServerRole(name, [node], str(topology), on_close=locator.aclose)
    nodes = [factory.build(endpoint, name=node_name(endpoint)) for endpoint in topology.endpoints]
    return ServerRole(name, nodes, str(topology))


class RedisClient:
    """Redis behind two roles: `read` (may be a replica) and `write` (the primary).

    Keys are namespaced with `key_prefix`, so several services, or several test runs, can share
    one Redis. Build with `RedisClient.create(...)`, then `await start()` (warms the pools), and
    `await aclose()` on shutdown; or use it as an async context manager.
    """

    def __init__(
        self,
        *,
        read: Role,
        write: Role,
        profile: Profile,
        dns: DnsCache,
        factories: Sequence[NodeFactory] = (),
        key_prefix: str = "",
        wait_for_replicas: bool = False,
        reads_from_replicas: bool = False,
    ) -> None:
        self._read = read
        self._write = write
        self._profile = profile
        self._dns = dns
        self._factories = list(factories)
        self._prefix = key_prefix
        self._listeners: list[CacheListener] = []
        self._replica_wait = ReplicaWait(self._ask_replication, enabled=wait_for_replicas)
        if wait_for_replicas:  # one primary (or Sentinel's): its node waits with this one
            for node in write.nodes():
                node.replica_wait = self._replica_wait
        self._loop_lag = LoopLag()
        self._deadlines = SharedDeadlines()  # one timer for all operations' deadlines
        self._excused_timeouts = 0
        if wait_for_replicas and reads_from_replicas and isinstance(read, ServerRole):
            read.in_sync = self._replica_in_sync
            for node in read.nodes():
                node.on_lost = partial(self._replica_lost, node)

    @classmethod
    def create(
        cls,
        *,
        read_url: str,
        write_url: str | None = None,
        profile: Profile = TUNED,
        tls: TlsConfig = NO_TLS,
        dns: DnsCache | None = None,
        key_prefix: str = "",
    ) -> Self:
        """Build both roles; nothing connects until `start()`.

        Each URL may name one server, comma-separated replicas (`redis://a,redis://b`), a
        Sentinel service (`redis+sentinel://...`) or a cluster (`redis+cluster://...`): see
        `urls.Topology`. When reads may see another server than writes (replicas, or a
        Sentinel primary that a failover replaces by a replica) and the profile says so,
        invalidations wait for the replicas (`replicas`); in a cluster, each master's
        invalidations wait for that master's replicas."""
        dns = dns if dns is not None else DnsCache(ttl=profile.dns_ttl)
        read = Topology.from_url(read_url, force_tls=tls.enabled)
        write = Topology.from_url(write_url or read_url, force_tls=tls.enabled)
        if write.kind is Kind.SERVER and len(write.endpoints) > 1:
            raise ValueError("the write URL must name one primary, not a list of servers")
        if write.replicas:
            raise ValueError(
                "the write URL cannot ask for replicas (role=replica): writes go to the primary"
            )
        factories = [NodeFactory(role, profile, dns, tls) for role in ("read", "write")]
        # A cluster's masters each wait for their own replicas (for a failover's sake: reads
        # go to masters); they are learnt from the slot table, so each node has its own wait.
        factories[1].waits_per_node = write.kind is Kind.CLUSTER and profile.wait_for_replicas
        reads_from_replicas = not read.same_servers(write)
        waits = write.kind is Kind.SENTINEL or reads_from_replicas
        waits = waits and profile.wait_for_replicas and write.kind is not Kind.CLUSTER
        return cls(
            read=_build_role("read", read, factories[0]),
            write=_build_role("write", write, factories[1]),
            profile=profile,
            dns=dns,
            factories=factories,
            key_prefix=key_prefix,
            wait_for_replicas=profile.wait_for_replicas
            and waits
            and write.kind is not Kind.CLUSTER,
            reads_from_replicas=reads_from_replicas,
        )

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop_lag.start()
        await asyncio.gather(self._read.start(), self._write.start())
        if isinstance(self._read, ServerRole) and self._read.in_sync is not None:
            self._replica_wait.watch()  # which replicas may serve, kept current

    async def aclose(self) -> None:
        self._loop_lag.stop()
        self._replica_wait.close()
        for node in self._write.nodes():
            if node.replica_wait is not None:
                node.replica_wait.close()
        await asyncio.gather(self._read.aclose(), self._write.aclose())

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- observability -----------------------------------------------------------------------

    def subscribe(self, listener: CacheListener) -> None:
        """Call `listener` with a `CacheEvent` after every operation (it must not block)."""
        self._listeners.append(listener)

    def subscribe_pool_waits(self, listener: PoolWaitListener) -> None:
        """Call `listener` after every queued checkout, on every node's pool (those a cluster
        adds later too)."""
        for factory in self._factories:
            factory.wait_listeners.append(listener)
        for node in self.nodes():
            node.pool.subscribe_waits(listener)

    def subscribe_breakers(self, listener: BreakerListener) -> None:
        """Call `listener` on every node's breaker changes (those a cluster adds later too)."""
        for factory in self._factories:
            factory.breaker_listeners.append(listener)
        for node in self.nodes():
            if node.breaker is not None:
                node.breaker.subscribe(listener)

    def stats(self) -> dict[str, PoolStats]:
        """Each role's pools, summed over its nodes (`node_stats` has them one by one)."""
        return {
            role.name: total_of(role.name, role.description, [n.pool.stats() for n in role.nodes()])
            for role in (self._read, self._write)
        }

    def node_stats(self) -> list[PoolStats]:
        """One snapshot per node of each role, labelled by role and node."""
        return [node.pool.stats() for node in self.nodes()]

    def pipeline_stats(self) -> list[PipelineStats]:
        """One snapshot per read-role node's read pipeline (`autopipeline`); empty when off.
        Reads it serves check no connection out of the pool: `stats()` counts the others."""
        return [node.pipeline.stats() for node in self.nodes("read") if node.pipeline]

    def redirections(self) -> dict[str, int]:
        """Cluster MOVED and ASK redirections followed, both roles together, since start."""
        return {
            kind: self._read.redirections[kind] + self._write.redirections[kind]
            for kind in ("moved", "ask")
        }

    def nodes(self, role: str | None = None) -> list[Node]:
        """The nodes of `role` (both roles' if None) known so far."""
        roles = (self._read, self._write) if role is None else (self._role(role),)
        return [node for each in roles for node in each.nodes()]

    @property
    def dns(self) -> DnsCache:
        return self._dns

    @property
    def excused_timeouts(self) -> int:
        """Timeouts the breaker took no verdict from: the event loop stalled through them."""
        return self._excused_timeouts

    @property
    def replica_wait(self) -> ReplicaWait:
        """Whether invalidations to the primary wait for replicas, how many, and how those
        waits went (a cluster's masters have theirs: `replica_wait_stats`)."""
        return self._replica_wait

    def replica_wait_stats(self) -> ReplicaWaitStats:
        """How invalidations' waits went, over the primary or every master of a cluster."""
        waits = {id(w): w for n in self._write.nodes() if (w := n.replica_wait) is not None}
        waits[id(self._replica_wait)] = self._replica_wait
        every = [wait.stats() for wait in waits.values()]
        return ReplicaWaitStats(
            confirmed=sum(s.confirmed for s in every),
            behind=sum(s.behind for s in every),
            skipped=sum(s.skipped for s in every),
            replicas=sum(s.replicas for s in every),
        )

    @property
    def profile(self) -> Profile:
        return self._profile

    def pool(self, role: str) -> ManagedPool:
        """The pool of the role's first node (its only one, on a single server)."""
        return self._role(role).nodes()[0].pool

    def breaker(self, role: str) -> CircuitBreaker | None:
        """The breaker of the role's first node; None if the profile has none."""
        nodes = self._role(role).nodes()
        return nodes[0].breaker if nodes else None

    def breaker_state(self, role: str) -> BreakerState:
        """For /readyz and metrics: the role's most available node's state (CLOSED when any
        node's breaker is closed); a role without breakers is always CLOSED."""
        states = [node.breaker.state for node in self._role(role).nodes() if node.breaker]
        return min(states, key=_AVAILABILITY.index, default=BreakerState.CLOSED)

    def _role(self, role: str) -> Role:
        return self._read if role == "read" else self._write

    def __repr__(self) -> str:
        return (
            f"<RedisClient read={self._read.description} write={self._write.description}"
            f" prefix={self._prefix!r}>"
        )

    # -- operations --------------------------------------------------------------------------

    def tracking(
        self,
        listener: TrackingListener,
        *,
        heartbeat: float = HEARTBEAT,
        dead_after: float = DEAD_AFTER,
    ) -> Tracking:
        """Server-assisted invalidation (`tracking`) of this client's keys (its key prefix), on
        every server the read role reads from: one server, each replica, or Sentinel's choice;
        on a cluster, every master the slot table names (and any node an ASK sends reads to),
        followed as they change. Not started."""
        read = self._read
        if isinstance(read, ServerRole):
            return Tracking(
                [
                    NodeTracking(
                        node, self._prefix, listener, heartbeat=heartbeat, dead_after=dead_after
                    )
                    for node in read.nodes()
                ]
            )

        def track(node: Node) -> NodeTracking:
            return NodeTracking(
                node,
                self._prefix,
                listener,
                heartbeat=heartbeat,
                dead_after=dead_after,
                expect_primary=True,
                on_down=partial(read.note_failure, node),
            )

        following = FollowingTracking(track, listener)
        read.watch_nodes(following.follow)
        return following

    def key(self, key: str) -> str:
        return self._prefix + key

    async def get(self, key: str, *, timeout: Timeout = USE_DEFAULT) -> bytes | None:
        """The value of `key`, or None on a miss; read role, GET deadline."""
        call = read_call("GET", self.key(key))
        value: bytes | None = await self.run_read("GET", key, timeout, call, is_hit=_is_not_none)
        return value

    async def ping(self, *, timeout: Timeout = USE_DEFAULT) -> None:
        """One PING on the read role, routed as a read without a key is (the next server in
        turn that may serve reads), through its breaker, under the GET deadline: whether a read
        could be answered by Redis now. Raises `CacheError` when not (an open breaker
        included)."""
        await self.run_read("PING", None, timeout, command_call("PING"))

    async def mget(
        self, keys: Sequence[str], *, timeout: Timeout = USE_DEFAULT
    ) -> list[bytes | None]:
        """The values of `keys`, None for each miss; one round trip on the read role (one per
        hash slot, concurrently, in a cluster)."""
        full_keys = [self.key(key) for key in keys]
        values: list[bytes | None] = [None] * len(keys)

        async def one_slot(indices: list[int]) -> None:
            call = read_call("MGET", *(full_keys[i] for i in indices))
            found = await self.run_read("MGET", keys[indices[0]], timeout, call)
            for index, value in zip(indices, found, strict=True):
                values[index] = value

        await all_of(one_slot(indices) for indices in self._read.group(full_keys))
        return values

    async def set(
        self, key: str, value: Value, *, ttl: float | None = None, timeout: Timeout = USE_DEFAULT
    ) -> None:
        """Store `value` under `key`, expiring after `ttl` seconds (None: never); write role."""
        call = command_call("SET", self.key(key), value, *_px(ttl))
        await self.run_write("SET", key, timeout, call)

    async def delete(self, *keys: str, timeout: Timeout = USE_DEFAULT) -> int:
        """Delete `keys`; the number that existed. Write role, SET deadline (one DEL per hash
        slot, concurrently, in a cluster)."""
        full_keys = [self.key(key) for key in keys]
        counts: list[int] = []

        async def one_slot(indices: list[int]) -> None:
            call = command_call("DEL", *(full_keys[i] for i in indices))
            counts.append(await self.run_write("DEL", keys[indices[0]], timeout, call))

        await all_of(one_slot(indices) for indices in self._write.group(full_keys))
        return sum(counts)

    def pipeline(self) -> CachePipeline:
        """Queue commands for the write role and send them with `execute()`: one round trip
        (one per node, concurrently, in a cluster)."""
        return CachePipeline(self)

    # -- the executor: the one place deadlines, breakers, errors and events meet ---------------
    # The plain commands above and the caching policy's operations (`postal.cache.policy`) run
    # through `run_read` and `run_write`, with a `call` from `wire`; the call gets
    # the node the operation was routed to: by its key's hash slot in a cluster. Batches ask
    # `read_groups`, `write_groups` or `write_nodes` how to split their keys.

    def run_read(
        self,
        command: str,
        key: str | None,
        timeout: Timeout,
        call: Callable[[Node], Awaitable[T]],
        *,
        is_hit: Callable[[T], bool] | None = None,
    ) -> Awaitable[T]:
        """Run `call` on the read-role node that `key` (prefixed) routes to, any node when None:
        under the GET deadline unless `timeout` says otherwise, pool wait included, through the
        node's breaker. redis-py's and the pool's errors come out as `CacheError`s, and one
        `CacheEvent` named `command` is emitted; `is_hit` tells a hit from a miss for it."""
        default = self._profile.timeouts.get
        return self._run(self._read, command, key, default, timeout, call, is_hit=is_hit)

    def run_write(
        self, command: str, key: str | None, timeout: Timeout, call: Callable[[Node], Awaitable[T]]
    ) -> Awaitable[T]:
        """As `run_read`, on the write role and under the SET deadline."""
        return self._run(self._write, command, key, self._profile.timeouts.set, timeout, call)

    def read_groups(self, keys: Sequence[str]) -> list[list[int]]:
        """Indices of (prefixed) `keys` that one read command may carry: by slot in a cluster."""
        return self._read.group(keys)

    def write_groups(self, keys: Sequence[str]) -> list[list[int]]:
        """Indices of (prefixed) `keys` that one write command may carry: by slot in a cluster."""
        return self._write.group(keys)

    def write_nodes(self, keys: Sequence[str]) -> list[list[int]]:
        """Indices of (prefixed) `keys` by the write-role node that owns them."""
        return self._write.by_node(keys)

    def write_deadline(self, timeout: Timeout) -> float | None:
        """The deadline a write-role operation called with `timeout` runs under."""
        return self._profile.timeouts.set if isinstance(timeout, UseDefault) else timeout

    def _replica_in_sync(self, node: Node) -> bool:
        """Whether `node` may serve reads: the primary's last INFO replication lists it as
        online (matched by the address the primary sees, and the port), or it is the primary
        itself under another name; True until INFO has answered once."""
        online = self._replica_wait.online()
        if online is None:
            return True
        port = node.endpoint.port
        addresses = self._dns.known_addresses(node.endpoint.host)
        if not addresses:
            return True  # not resolved yet (no dial so far): nothing to match
        if any((address, port) in online for address in addresses):
            return True
        return any(
            port == primary.endpoint.port
            and not set(addresses).isdisjoint(self._dns.known_addresses(primary.endpoint.host))
            for primary in self._write.nodes()
        )

    def _replica_lost(self, node: Node) -> None:
        """A connection to the replica `node` was lost: unfit until the primary vouches for it
        again (`ReplicaWait.lost`)."""
        addresses = self._dns.known_addresses(node.endpoint.host)
        self._replica_wait.lost((address, node.endpoint.port) for address in addresses)

    def _ask_replication(self) -> Awaitable[Any]:
        """INFO replication on the write role's primary (for `ReplicaWait`)."""
        return command_call("INFO", "replication")(self._write.route(None))

    async def _run(
        self,
        role: Role,
        command: str,
        key: str | None,
        default_timeout: float | None,
        timeout: Timeout,
        call: Callable[[Node], Awaitable[T]],
        *,
        is_hit: Callable[[T], bool] | None = None,
    ) -> T:
        """Route by `key`, run `call` on that node under the deadline and through its breaker;
        map errors; emit the event.

        `is_hit`: for reads, tells a hit from a miss for the event's outcome.
        """
        started = time.perf_counter()
        full_key = None if key is None else self._prefix + key
        try:
            node = role.route(full_key)
        except CacheError as exc:  # a cluster whose slots are not known yet
            unavailable = CacheUnavailable(f"{command} on {role.name}: {exc}")
            self._emit(role.name, None, command, key, started, _outcome_of(unavailable), str(exc))
            raise unavailable from None
        breaker = node.breaker
        if breaker is not None and not breaker.allow():
            role.note_failure(node)
            refused = CircuitOpen(
                f"{command} on {role.name} ({node.name}): circuit breaker open after"
                f" repeated failures; next probe in {format_duration(breaker.retry_in())}"
            )
            self._emit(role.name, node, command, key, started, Outcome.CIRCUIT_OPEN, str(refused))
            raise refused
        limit = default_timeout if isinstance(timeout, UseDefault) else timeout
        loop = asyncio.get_running_loop()
        operation = Operation(deadline=None if limit is None else loop.time() + limit)
        token = current_operation.set(operation)
        try:
            async with self._deadlines.bound(operation.deadline):
                result = await role.run(node, full_key, call)
        except (redis_exc.RedisError, OSError, TimeoutError, CacheError) as exc:
            current_operation.reset(token)  # listeners run outside the operation
            error = _map_error(exc, role.name, node.name, command, limit, operation)
            late = isinstance(exc, TimeoutError) and self._loop_ran_late(operation, limit)
            if late and isinstance(error, CacheTimeout):
                error.loop_behind = True
            if breaker is not None:
                if late:
                    self._excused_timeouts += 1
                    breaker.record_cancelled()  # no verdict on Redis: see _loop_ran_late
                elif isinstance(error, (CacheTimeout, CacheUnavailable)):
                    breaker.record_failure()
                else:
                    breaker.record_success()  # an error reply: Redis is there and answering
            if is_demoted(exc):
                node.retire_connections()  # a replica now (failover): dial whoever is primary
            if _is_connection_lost(exc):
                node.connection_lost()  # it may come back restarted (a replica: unfit till then)
            if isinstance(error, (CacheTimeout, CacheUnavailable)):
                role.note_failure(node)  # a cluster re-reads its slot table
            self._emit(role.name, node, command, key, started, _outcome_of(error), str(error))
            raise error from exc
        except BaseException:
            current_operation.reset(token)
            if breaker is not None:
                breaker.record_cancelled()
            raise
        current_operation.reset(token)
        if breaker is not None:
            breaker.record_success()
        if self._listeners:
            outcome = Outcome.OK
            if is_hit is not None:
                outcome = Outcome.HIT if is_hit(result) else Outcome.MISS
            self._emit(role.name, node, command, key, started, outcome, None)
        return result

    def _loop_ran_late(self, operation: Operation, limit: float | None) -> bool:
        """Whether this process's own event loop, not Redis, let a deadline of `limit` expire:
        it was behind for `max(20 ms, limit / 2)` or more of the operation (`loop_lag`).
        Half: a loop that late explains a timeout by itself, while everyday hiccups of a few
        tens of milliseconds do not excuse a black-holed Redis.
        Such a timeout is still a timeout to the caller (marked `loop_behind`) and in the
        metrics, but the breaker takes no verdict from it; a black-holed Redis on a healthy
        process still opens it."""
        if limit is None or operation.deadline is None:
            return False
        started = operation.deadline - limit
        return self._loop_lag.behind_since(started) >= max(LATE_LOOP_FLOOR, limit / 2)

    def _emit(
        self,
        role: str,
        node: Node | None,
        command: str,
        key: str | None,
        started: float,
        outcome: Outcome,
        error: str | None,
    ) -> None:
        if not self._listeners:
            return
        event = CacheEvent(
            role=role,
            command=command,
            key=key,
            duration=time.perf_counter() - started,
            outcome=outcome,
            in_use=0 if node is None else node.pool.in_use,
            idle=0 if node is None else node.pool.idle,
            error=error,
            node="" if node is None else node.name,
        )
        for listener in self._listeners:
            listener(event)


class CachePipeline:
    """Commands queued for the write role; `execute()` sends them in one round trip per node
    (the nodes concurrently, in a cluster), and returns one result per command, in order."""

    def __init__(self, client: RedisClient) -> None:
        self._client = client
        self._commands: list[tuple[str, tuple[Value, ...]]] = []  # (key, command)

    def __len__(self) -> int:
        return len(self._commands)

    def set(self, key: str, value: Value, *, ttl: float | None = None) -> Self:
        self._commands.append((key, ("SET", self._client.key(key), value, *_px(ttl))))
        return self

    def delete(self, key: str) -> Self:
        self._commands.append((key, ("DEL", self._client.key(key))))
        return self

    def get(self, key: str) -> Self:
        self._commands.append((key, ("GET", self._client.key(key))))
        return self

    async def execute(self, *, timeout: Timeout = USE_DEFAULT) -> list[Any]:
        """Send everything queued; one result per command. SET deadline unless given."""
        commands, self._commands = self._commands, []
        client = self._client
        results: list[Any] = [None] * len(commands)

        async def one_group(indices: list[int]) -> None:
            call = pipeline_call([commands[i][1] for i in indices])
            replies = await client.run_write("PIPELINE", commands[indices[0]][0], timeout, call)
            for index, reply in zip(indices, replies, strict=True):
                results[index] = reply

        # Single-key commands: any grouping by node works; MOVED or ASK for one of them
        # re-routes its node's part (see ClusterRole.run).
        groups = client.write_nodes([client.key(key) for key, _ in commands])
        await all_of(one_group(indices) for indices in groups if indices)
        return results

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._commands.clear()


def _px(ttl: float | None) -> tuple[str, int] | tuple[()]:
    """SET's expiry arguments: milliseconds, at least 1; none for no expiry."""
    return () if ttl is None else ("PX", max(1, round(ttl * 1000)))


def _is_not_none(value: object) -> bool:
    return value is not None


def _map_error(
    exc: BaseException,
    role: str,
    node: str,
    command: str,
    limit: float | None,
    operation: Operation,
) -> CacheError:
    """The most specific cache error for what redis-py, asyncio or the pool raised."""
    where = f"{command} on {role} ({node})"
    if isinstance(exc, CacheError):
        return type(exc)(f"{where}: {exc}")
    if isinstance(exc, TimeoutError):  # our deadline (`shared_deadlines`)
        if limit is None:
            return CacheTimeout(f"{where}: timed out")
        if operation.acquired:
            return CacheTimeout(f"{where}: deadline of {format_duration(limit)} expired")
        if operation.dialing:
            return CacheTimeout(
                f"{where}: deadline of {format_duration(limit)} expired while connecting"
            )
        return PoolTimeout(
            f"{where}: no pooled connection within the {format_duration(limit)} deadline"
        )
    if isinstance(exc, redis_exc.TimeoutError):
        return CacheTimeout(f"{where}: socket timeout: {exc}")
    if isinstance(exc, (redis_exc.ConnectionError, OSError)):
        return CacheUnavailable(f"{where}: {exc}")
    return CacheError(f"{where}: {exc}")


def _is_connection_lost(exc: BaseException) -> bool:
    """Reset, closed by the server or refused; not a deadline or a socket timeout (a slow
    server, or this process's own loop, is no sign of a restart)."""
    if isinstance(exc, (TimeoutError, redis_exc.TimeoutError)):
        return False
    return isinstance(exc, (redis_exc.ConnectionError, OSError))


def _outcome_of(error: CacheError) -> Outcome:
    if isinstance(error, PoolTimeout):
        return Outcome.POOL_TIMEOUT
    if isinstance(error, CacheTimeout):
        return Outcome.TIMEOUT
    if isinstance(error, CacheUnavailable):
        return Outcome.CONNECTION_ERROR
    return Outcome.ERROR
