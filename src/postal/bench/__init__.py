"""Benchmarks: commands that print a table (and write JSON), not tests.

This package's own module holds what every load generator shares: the loopback guard (load goes to
this machine only), a closed-loop load driver that times each operation from the moment it is
requested, keys of its own under a unique prefix (written before, deleted after), plain redis-py
on whatever Redis topology a URL names, the Redis Cluster a bench starts to compare with one
server, a rich progress line, and the table and JSON output. `stats` is the pure arithmetic;
`cache` is `postal bench cache`. Nothing here runs at import time.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from postal.bench.stats import COLUMNS, ProfileSummary, table_rows
from postal.bench.topologies import ClusterSet
from postal.cache.urls import Kind, RedisEndpoint, Topology, mask_url

TICK = 0.1  # seconds between progress updates
KEY_TTL_MS = 3_600_000  # 1 h: a bench's keys expire even if its clean-up never runs
PLAIN_TIMEOUT = 10.0  # seconds: bounds the bench's own redis-py calls (writing, deleting keys)
REPLICATION_WAIT_MS = 5000  # how long writing the keys waits for the replicas to have them

logger = logging.getLogger("postal.bench")

Op = Callable[[int], Awaitable[object]]  # one operation on key number i
ProgressFn = Callable[[str, float, float], None]  # (what is running, elapsed s, planned s)


class BenchError(Exception):
    """The benchmark cannot run: bad options, a target that cannot be prepared, a failed tool."""


class NotLoopback(BenchError):
    """The URL points somewhere other than this machine; a load generator refuses it."""


def is_loopback_host(host: str) -> bool:
    """Whether `host` is this machine: `localhost`, or an address in 127.0.0.0/8 or ::1."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # another name: it may resolve anywhere
        return False


def require_loopback(url: str, schemes: Sequence[str] = ("redis", "rediss")) -> None:
    """Raise NotLoopback unless `url` has one of `schemes` and a loopback host."""
    refusal = (
        f"refusing to send load to {mask_url(url)}: benchmarks only target loopback"
        f" ({'/'.join(schemes)} URLs on 127.0.0.0/8, ::1 or localhost)"
    )
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        raise NotLoopback(refusal) from None
    if parts.scheme not in schemes or not host or not is_loopback_host(host):
        raise NotLoopback(refusal)


def no_progress(label: str, elapsed: float, planned: float) -> None:
    return None


@dataclass(slots=True)
class Tally:
    """What one run saw: every operation's latency (failed ones included) and the errors."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str | None = None


async def _worker(
    op: Op, index: int, count: int, measure_from: float, stop_at: float, tally: Tally
) -> None:
    perf = time.perf_counter
    while (began := perf()) < stop_at:
        error: str | None = None
        try:
            await op(index)
        except Exception as exc:  # count, don't crash: a failing profile is a result
            error = f"{type(exc).__name__}: {exc}"
        ended = perf()
        # Every operation that ends in the measured window counts, timed from its request, even
        # one requested during the warm-up: a caller starved by an unfair pool since the warm-up
        # must show, not vanish from the tail.
        if ended >= measure_from:
            tally.latencies.append(ended - began)
            if error is not None:
                tally.errors += 1
                tally.first_error = tally.first_error or error
        index = (index + 1) % count


async def run_load(
    op: Op,
    *,
    concurrency: int,
    keys: int,
    warmup: float,
    seconds: float,
    tally: Tally,
    tick: Callable[[float], None],
    on_measure: Callable[[], None] = lambda: None,
) -> float:
    """`concurrency` tasks call `op` back to back, each walking the `keys` from its own offset.

    The load runs without a break: `warmup` seconds, then `seconds` in which operations are
    started; every operation that ends after the warm-up is recorded in `tally`, timed from its
    request (those still in flight at the end are awaited). `on_measure` is
    called when recording starts; `tick` with the elapsed time, every TICK. Returns the recorded
    span: from the start of recording to the last reply.
    """
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    measure_from = started + warmup
    stop_at = measure_from + seconds
    if warmup > 0:
        recording = loop.call_later(warmup, on_measure)
    else:
        on_measure()
        recording = None
    workers = [
        asyncio.create_task(
            _worker(op, task * keys // concurrency, keys, measure_from, stop_at, tally)
        )
        for task in range(concurrency)
    ]
    everything = asyncio.gather(*workers)
    try:
        while not everything.done():
            await asyncio.wait([everything], timeout=TICK)
            tick(time.perf_counter() - started)
    except BaseException:
        everything.cancel()
        await asyncio.wait([everything])
        raise
    finally:
        if recording is not None:
            recording.cancel()  # a no-op once it has run
    everything.result()
    return time.perf_counter() - measure_from


async def run_tool(args: Sequence[str], limit: float, tick: Callable[[float], None]) -> str:
    """Run an external load tool, ticking while it runs; its stdout. Killed after `limit` s."""
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    output = asyncio.ensure_future(process.communicate())
    try:
        async with asyncio.timeout(limit):
            while not output.done():
                await asyncio.wait([output], timeout=TICK)
                tick(time.perf_counter() - started)
    except BaseException:
        process.kill()
        await asyncio.wait([output])
        raise
    stdout, stderr = output.result()
    if process.returncode != 0:
        tool = Path(args[0]).name
        raise BenchError(f"{tool} exited with {process.returncode}: {stderr.decode().strip()}")
    return stdout.decode(errors="replace")


# -- Redis topologies --------------------------------------------------------------------------
# A bench's Redis URL may name one server, replicas of one primary (comma-separated), a Sentinel
# service or a cluster (`cache.urls.Topology`). Postal's client takes each as it is; what a bench
# does with plain redis-py (writing and deleting its keys, the reference peers) takes each the way
# a redis-py user would: a pool per server, Sentinel's `master_for`, `RedisCluster`.

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
    return Sentinel(  # type: ignore[no-untyped-call]
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


@contextmanager
def rich_progress(console: Console) -> Iterator[ProgressFn]:
    """A one-line progress display (what runs, its bar, its elapsed time, the total elapsed)."""
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[step]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("starting", total=1.0, step="")

        def show(label: str, elapsed: float, planned: float) -> None:
            progress.update(
                task,
                description=label,
                completed=min(elapsed, planned),
                total=planned,
                step=f"{elapsed:4.1f}s/{planned:.1f}s",
            )

        yield show


def render_table(
    console: Console,
    title: str,
    summaries: Sequence[ProfileSummary],
    descriptions: dict[str, str],
    caption: str,
) -> None:
    """The summaries as a table in `COLUMNS` order, the caption, one legend line per profile."""
    table = Table(title=title)
    for column in COLUMNS:
        if column == "profile":
            table.add_column(column, no_wrap=True)
        else:
            table.add_column(column, justify="right", no_wrap=True)
    for row in table_rows(summaries):
        table.add_row(*row)
    console.print(table)
    console.print(caption, markup=False, highlight=False)
    for summary in summaries:
        note = f" ({summary.note})" if summary.note else ""
        line = f"  {summary.name}: {descriptions.get(summary.name, '')}{note}"
        console.print(line, markup=False, highlight=False)
        first_error = next((run.first_error for run in summary.runs if run.first_error), None)
        if first_error:
            console.print(f"    first error: {first_error}", markup=False, highlight=False)


def print_grouped_table(
    console: Console,
    title: str,
    columns: Sequence[str],
    groups: Sequence[Sequence[tuple[str, ...]]],
    *,
    left: int = 2,
) -> None:
    """A table whose rows come in groups, a line between two groups; the first `left` columns
    (names) aligned left, the figures right."""
    table = Table(title=title, collapse_padding=True)  # one space between columns: it is wide
    for position, column in enumerate(columns):
        table.add_column(column, justify="left" if position < left else "right", no_wrap=True)
    for position, rows in enumerate(groups):
        if position > 0:
            table.add_section()
        for row in rows:
            table.add_row(*row)
    console.print(table)


def write_json(path: Path, document: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


class Report(Protocol):
    def to_json(self) -> dict[str, object]: ...


R = TypeVar("R", bound=Report)


def bench_console() -> Console:
    """The console a benchmark prints to; piped output is not squeezed to a narrow width."""
    return Console(width=None if sys.stdout.isatty() else 120)


def publish(
    report: R, render: Callable[[R, Console], None], console: Console, json_path: Path | None
) -> None:
    """Print a benchmark's tables, and write its JSON when asked to."""
    render(report, console)
    if json_path is not None:
        write_json(json_path, report.to_json())
        console.print(f"JSON written to {json_path}", markup=False, highlight=False)
