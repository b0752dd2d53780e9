"""Plain redis-py on whatever Redis topology a bench's URL names, and the topologies a bench
starts to measure side by side.

A bench's Redis URL may name one server, replicas of one primary (comma-separated), a Sentinel
service or a cluster (`cache.urls.Topology`). Postal's client takes each as it is; what a bench
does with plain redis-py (writing and deleting its keys, the reference peers) takes each the way
a redis-py user would: a pool per server, Sentinel's `master_for`, `RedisCluster`. Every host,
and every server a Sentinel names or a cluster announces, must be on loopback.
"""

from __future__ import annotations

import itertools
import logging
import os
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from typing import Any

import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel

from postal.cache import Kind, RedisEndpoint, Topology, mask_url
from postal_bench.errors import BenchError, NotLoopback
from postal_bench.loopback import is_loopback_host
from postal_testing.cluster_set import ClusterSet

logger = logging.getLogger("postal_bench")

KEY_TTL_MS = 3_600_000  # 1 h: a bench's keys expire even if its clean-up never runs
PLAIN_TIMEOUT = 10.0  # seconds: bounds the bench's own redis-py calls (writing, deleting keys)
REPLICATION_WAIT_MS = 5000  # how long writing the keys waits for the replicas to have them

SINGLE, REPLICAS, SENTINEL, CLUSTER = "single", "replicas", "sentinel", "cluster"
STARTED_TOPOLOGIES = (SINGLE, CLUSTER)  # what `--topologies` may name
CLUSTER_MASTERS = 3  # the Redis Cluster a bench starts for "cluster"
CLUSTER_NODE_CONNECTIONS = 100  # RedisCluster's default cap per node; past it: an error, no wait

GetFn = Callable[[str], Awaitable[object]]  # a GET of one (full) key


def masked(url: str) -> str:
    """`url` without its passwords, those of every server of a list included."""
    try:
        return str(Topology.from_url(url))
    except ValueError:
        return mask_url(url)


def topology_name(topology: Topology) -> str:
    """single, replicas, sentinel or cluster: what the report calls the topology."""
    if topology.kind is Kind.SERVER:
        return SINGLE if len(topology.endpoints) == 1 else REPLICAS
    return SENTINEL if topology.kind is Kind.SENTINEL else CLUSTER


def require_loopback_redis(url: str) -> Topology:
    """`url` parsed; NotLoopback unless it is a Redis URL whose every host is this machine."""
    try:
        topology: Topology | None = Topology.from_url(url)
    except ValueError:
        topology = None
    if topology is None or not all(is_loopback_host(e.host) for e in topology.endpoints):
        raise NotLoopback(
            f"refusing to send load to {masked(url)}: benchmarks only target loopback (every host"
            " of a redis, rediss, redis+sentinel or redis+cluster URL on 127.0.0.0/8, ::1 or"
            " localhost)"
        )
    return topology


def require_writable(url: str, option: str = "--write-url") -> Topology:
    """`url` parsed (on loopback); BenchError if it names no one server that takes writes."""
    topology = require_loopback_redis(url)
    if topology_name(topology) == REPLICAS:
        raise BenchError(
            f"{masked(url)} is a list of replicas, which take no writes: give their primary"
            f" with {option}"
        )
    if topology.replicas:
        raise BenchError(
            f"{masked(url)} reads from replicas (role=replica), which take no writes: give the"
            f" service's primary with {option} (the same URL without ?role=replica)"
        )
    return topology


def _login(endpoint: RedisEndpoint, timeout: float | None) -> dict[str, Any]:
    """redis-py's keyword arguments for logging in to `endpoint`'s servers."""
    return {
        "username": endpoint.username,
        "password": endpoint.password,
        "ssl": endpoint.tls,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
    }


def _cluster(topology: Topology, timeout: float | None, connections: int) -> RedisCluster:
    seed = topology.endpoints[0]  # as Postal's ClusterRole: the cluster names the other nodes
    return RedisCluster(
        host=seed.host, port=seed.port, max_connections=connections, **_login(seed, timeout)
    )


def _sentinel(topology: Topology, timeout: float | None) -> Sentinel:
    """Sentinel answers without a login (as Postal asks it); the login is the data servers'."""
    return Sentinel(
        [(endpoint.host, endpoint.port) for endpoint in topology.endpoints],
        sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout},
        **_login(topology.endpoints[0], timeout),
    )


async def _sentinel_places(sentinel: Sentinel, topology: Topology) -> list[RedisEndpoint]:
    """The service's replicas (role=replica) or its primary, as the Sentinels name them."""
    assert topology.service is not None
    if topology.replicas:
        found = await sentinel.discover_slaves(topology.service)
    else:
        found = [await sentinel.discover_master(topology.service)]
    if not found:
        raise BenchError(f"the Sentinels of {masked(str(topology))} name no replica")
    seed = topology.endpoints[0]
    return [replace(seed, host=str(host), port=int(port), db=0) for host, port in found]


async def sentinel_servers(topology: Topology) -> list[RedisEndpoint]:
    """The servers a Sentinel URL reads from, as its Sentinels name them now."""
    sentinel = _sentinel(topology, PLAIN_TIMEOUT)
    try:
        return await _sentinel_places(sentinel, topology)
    finally:
        await sentinel.aclose()


async def require_loopback_servers(url: str) -> None:
    """NotLoopback if a server that `url`'s Sentinels or cluster name is not on this machine: a
    Sentinel on loopback may name a remote primary, a cluster node announce a remote address."""
    topology = require_loopback_redis(url)
    hosts: list[str] = []
    try:
        if topology.kind is Kind.CLUSTER:
            async with _cluster(topology, PLAIN_TIMEOUT, CLUSTER_NODE_CONNECTIONS) as cluster:
                hosts = [node.host for node in cluster.get_nodes()]
        elif topology.kind is Kind.SENTINEL:
            hosts = [server.host for server in await sentinel_servers(topology)]
    except Exception as exc:  # whatever redis-py raises, the servers are unknown
        raise BenchError(f"cannot find the servers of {masked(url)}: {exc}") from exc
    remote = sorted({host for host in hosts if not is_loopback_host(host)})
    if remote:
        raise NotLoopback(
            f"refusing to send load to {', '.join(remote)}, named by {masked(url)}:"
            " benchmarks only target loopback"
        )


@asynccontextmanager
async def plain_primary(url: str) -> AsyncIterator[redis.Redis | RedisCluster]:
    """redis-py on what takes `url`'s writes: the server, the Sentinel service's primary
    (`master_for`), or the cluster (`RedisCluster`). BenchError for a list of replicas."""
    topology = require_writable(url)
    async with AsyncExitStack() as stack:
        client: redis.Redis | RedisCluster
        if topology.kind is Kind.CLUSTER:
            client = _cluster(topology, PLAIN_TIMEOUT, CLUSTER_NODE_CONNECTIONS)
        elif topology.kind is Kind.SENTINEL:
            assert topology.service is not None  # a Sentinel URL names its service
            sentinel = _sentinel(topology, PLAIN_TIMEOUT)
            stack.push_async_callback(sentinel.aclose)
            client = sentinel.master_for(topology.service)
        else:
            client = redis.Redis.from_url(
                url, socket_timeout=PLAIN_TIMEOUT, socket_connect_timeout=PLAIN_TIMEOUT
            )
        stack.push_async_callback(client.aclose)
        yield client


@asynccontextmanager
async def plain_reads(url: str, *, pool_size: int, timeout: float) -> AsyncIterator[GetFn]:
    """GETs on redis.asyncio, as a user would write them for `url` (see `plain_description`)."""
    topology = require_loopback_redis(url)
    async with AsyncExitStack() as stack:
        if topology.kind is Kind.CLUSTER:
            cluster = _cluster(topology, timeout, max(pool_size, CLUSTER_NODE_CONNECTIONS))
            stack.push_async_callback(cluster.aclose)
            # Before any GET: concurrent first commands on an uninitialized RedisCluster race
            # (redis-py 8.1: "'NoneType' object has no attribute 'writelines'").
            await cluster.initialize()
            yield cluster.get
            return
        if topology.kind is Kind.SENTINEL:
            assert topology.service is not None
            sentinel = _sentinel(topology, timeout)
            stack.push_async_callback(sentinel.aclose)
            role = sentinel.slave_for if topology.replicas else sentinel.master_for
            client = role(topology.service)
            stack.push_async_callback(client.aclose)
            yield client.get
            return
        clients = []
        for endpoint in topology.endpoints:
            pool = redis.BlockingConnectionPool(
                host=endpoint.host,
                port=endpoint.port,
                db=endpoint.db,
                max_connections=pool_size,
                timeout=timeout,
                connection_class=redis.SSLConnection if endpoint.tls else redis.Connection,
                **{k: v for k, v in _login(endpoint, timeout).items() if k != "ssl"},
            )
            client = redis.Redis.from_pool(pool)  # owns the pool: aclose() closes it
            stack.push_async_callback(client.aclose)
            clients.append(client)
        if len(clients) == 1:
            yield clients[0].get
            return
        turns = itertools.cycle(clients)  # replicas: each read on the next one
        yield lambda key: next(turns).get(key)


def plain_description(url: str, pool_size: int) -> str:
    """What `plain_reads` does on `url`, for a report's legend."""
    topology = Topology.from_url(url)
    name = topology_name(topology)
    if name == SINGLE:
        return f"redis.asyncio, BlockingConnectionPool({pool_size})"
    if name == REPLICAS:
        return f"redis.asyncio, a BlockingConnectionPool({pool_size}) per replica, reads in turn"
    if name == SENTINEL:
        role = "slave_for" if topology.replicas else "master_for"
        return f"redis.asyncio Sentinel.{role}: a SentinelConnectionPool (no cap, no wait)"
    cap = max(pool_size, CLUSTER_NODE_CONNECTIONS)
    return f"redis.asyncio RedisCluster, up to {cap} connections per node (no wait)"


@asynccontextmanager
async def new_connection_reads(url: str, *, timeout: float) -> AsyncIterator[GetFn]:
    """GETs each on a new redis.asyncio connection (dial, handshake, GET, close; no cap) to the
    server that holds the key: the server, the replicas in turn, Sentinel's primary (or its
    replicas, in turn), or the cluster node that owns the key's slot."""
    topology = require_loopback_redis(url)
    async with AsyncExitStack() as stack:
        place: Callable[[str], RedisEndpoint]
        if topology.kind is Kind.CLUSTER:
            cluster = _cluster(topology, timeout, CLUSTER_NODE_CONNECTIONS)
            stack.push_async_callback(cluster.aclose)
            await cluster.initialize()  # the slot table; no data connection is kept
            seed = topology.endpoints[0]

            def place(key: str) -> RedisEndpoint:
                node = cluster.get_node_from_key(key)
                if node is None:  # a slot no node serves: the cluster is not ok
                    raise LookupError(f"no node serves the slot of {key!r}")
                return replace(seed, host=node.host, port=int(node.port), db=0)

        else:
            places = list(topology.endpoints)
            if topology.kind is Kind.SENTINEL:
                sentinel = _sentinel(topology, timeout)
                stack.push_async_callback(sentinel.aclose)
                places = await _sentinel_places(sentinel, topology)
            turns = itertools.cycle(places)

            def place(key: str) -> RedisEndpoint:
                return next(turns)

        async def get_on_new_connection(key: str) -> object:
            endpoint = place(key)
            client = redis.Redis(
                host=endpoint.host, port=endpoint.port, db=endpoint.db, **_login(endpoint, timeout)
            )
            try:
                return await client.get(key)
            finally:
                await client.aclose()

        yield get_on_new_connection


async def populate_keys(url: str, keys: Sequence[str], value_size: int) -> None:
    """Write `keys`, each a random value of `value_size` bytes (see `write_keys`)."""
    await write_keys(url, keys, os.urandom(value_size))


async def write_keys(url: str, keys: Sequence[str], value: bytes) -> None:
    """Write `keys` on what takes `url`'s writes, each holding `value` and expiring after 1 h,
    in one batch; then wait until every replica of the primary has them."""
    try:
        async with plain_primary(url) as client:
            replicas = 0
            if not isinstance(client, RedisCluster):
                replicas = int((await client.info("replication")).get("connected_slaves", 0))
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.set(key, value, px=KEY_TTL_MS)
            if replicas:  # on the same connection as the writes: WAIT counts those
                pipe.execute_command("WAIT", replicas, REPLICATION_WAIT_MS)
            replies = await pipe.execute()
    except BenchError:
        raise
    except Exception as exc:  # whatever redis-py raises, the bench cannot start
        raise BenchError(f"cannot prepare keys on {masked(url)}: {exc}") from exc
    if replicas and int(replies[-1]) < replicas:
        raise BenchError(
            f"only {replies[-1]} of the {replicas} replicas of {masked(url)} had the bench's"
            f" keys after {REPLICATION_WAIT_MS / 1000:g} s"
        )


async def delete_prefix(url: str, prefix: str) -> int:
    """Delete every key under `prefix` (on every node of a cluster); the number deleted. Logs,
    never raises, on failure."""
    deleted = 0
    try:
        async with plain_primary(url) as client:
            batch: list[bytes] = []
            async for key in client.scan_iter(match=f"{prefix}*", count=1000):
                batch.append(key)
                if len(batch) >= 500:
                    deleted += await client.delete(*batch)
                    batch.clear()
            if batch:
                deleted += await client.delete(*batch)
    except Exception as exc:
        logger.warning("bench: could not delete keys under %s: %s", prefix, exc)
    return deleted


@dataclass(frozen=True, slots=True)
class RedisSetup:
    """One Redis topology a bench measures: its name in the report, where reads and writes go."""

    name: str
    read_url: str
    write_url: str


def parse_topologies(text: str) -> tuple[str, ...]:
    """`single,cluster` -> ("single", "cluster"); BenchError for an unknown or repeated name."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = sorted(set(names) - set(STARTED_TOPOLOGIES))
    if unknown or not names or len(set(names)) != len(names):
        raise BenchError(
            f"topologies are {', '.join(STARTED_TOPOLOGIES)}, each at most once; got {text!r}"
        )
    return names


def check_setups(topologies: Sequence[str], url: str, write_url: str | None) -> None:
    """BenchError (NotLoopback included) unless `url` and `write_url` are loopback Redis URLs
    the bench can read from and write to, and `topologies` are names it can set up."""
    if topologies:
        parse_topologies(",".join(topologies))
    read = require_loopback_redis(url)
    require_writable(write_url or url)
    if SINGLE in topologies and topology_name(read) != SINGLE:
        raise BenchError(
            f"the topology {SINGLE!r} is the one Redis server of the URL, but {masked(url)} names"
            f" a {topology_name(read)} topology"
        )


def start_cluster() -> ClusterSet:
    """A Redis Cluster of CLUSTER_MASTERS masters on free loopback ports; `cleanup()` it."""
    cluster = ClusterSet(masters=CLUSTER_MASTERS)
    try:
        cluster.start()  # stops what it started if it fails half-way
    except (OSError, RuntimeError, TimeoutError, subprocess.SubprocessError) as exc:
        raise BenchError(f"cannot start a Redis Cluster on loopback: {exc}") from exc
    return cluster


@contextmanager
def redis_setups(
    topologies: Sequence[str], url: str, write_url: str | None
) -> Iterator[list[RedisSetup]]:
    """What to measure: `url` as given when `topologies` is empty; else each named topology,
    in order: "single" is `url`, "cluster" a Redis Cluster started here and stopped on exit."""
    if not topologies:
        name = topology_name(Topology.from_url(url))
        yield [RedisSetup(name, url, write_url or url)]
        return
    with ExitStack() as stack:
        setups = []
        for name in topologies:
            if name == SINGLE:
                setups.append(RedisSetup(SINGLE, url, write_url or url))
            else:
                cluster = start_cluster()
                stack.callback(cluster.cleanup)
                setups.append(RedisSetup(CLUSTER, cluster.url, cluster.url))
        yield setups
