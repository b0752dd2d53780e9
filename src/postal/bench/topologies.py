"""Real Redis topologies on free loopback ports, for the tests and benchmarks that must watch a
failover, a read replica or a slot move happen rather than take them on trust: a primary with
replicas (`ReplicaSet`), a primary watched by Sentinels (`SentinelSet`), and a Redis Cluster
(`ClusterSet`).

Each rig is a context manager. `start()` returns once the topology has settled (replicas synced,
every Sentinel agreeing on the primary and knowing its peers, every cluster node reporting
cluster_state:ok); `cleanup()` stops every server the rig made, and runs by itself when a step of
`start()` fails half-way. The servers are `RedisServer`s, so a test can kill or restart any one.

Each question goes over a short-lived redis-py connection of its own, without retries: the rigs
poll a few times a second at most, and a fresh connection says plainly which server answered.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Self, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from postal.bench.redis_servers import RedisServer, free_port

REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
POLL_INTERVAL = 0.05  # seconds between two looks at a topology that is settling
SETTLE_TIMEOUT = 30.0  # seconds start() waits for a topology to settle
COMMAND_TIMEOUT = 2.0  # seconds: connect and reply timeout of each question to a server

# Sentinel: a primary silent for 0.5 s is down; a failover gets 5 s (and is retried after 10 s).
DOWN_AFTER_MS = 500
FAILOVER_TIMEOUT_MS = 5000
# SENTINEL DEBUG periods (Redis 7.0+), in ms, Sentinel's defaults in brackets; they shorten the
# waits between Sentinel's looks.
FAST_SENTINEL_TIMERS = {
    # [1000] PING to each instance, and the pace of reconnecting to a dead one. Above
    # down-after, the killed primary flapped back up (-sdown) a second after the kill here and
    # spoilt the election (the next try comes 2 x failover-timeout later). Not below 300: a
    # replica is fit for promotion only if its last INFO is younger than 5 ping periods, and
    # during a failover Sentinel sends INFO every 1000 ms whatever info-period says.
    "ping-period": 300,
    "ask-period": 100,  # [1000] asking the other Sentinels whether they see the primary down too
    "info-period": 500,  # [10000] INFO to each instance: roles, replicas, a restarted old primary
    "publish-period": 250,  # [2000] hello messages; a replica answering as primary waits 4 of them
    "tilt-period": 2000,  # [30000] no failovers while in TILT (after the timer ran 2 s late)
}

# Cluster: a node counts as failing after 1 s without an answer.
NODE_TIMEOUT_MS = 1000
SLOTS = 16384
MIGRATE_BATCH = 100  # keys per MIGRATE when moving a slot without pauses
MIGRATE_TIMEOUT_MS = 5000

Address = tuple[str, int]
T = TypeVar("T")


def ask(address: Address, *command: str | int | bytes, decode: bool = True) -> Any:
    """One command to the server at `address`, over a connection of its own, without retries.
    The reply comes in RESP3 types (maps as dicts), through redis-py's callback where it has one
    for the command's first word: INFO comes as a dict, SET as True; CLUSTER and SENTINEL
    subcommands come raw."""
    host, port = address
    client = redis.Redis(
        host=host,
        port=port,
        socket_timeout=COMMAND_TIMEOUT,
        socket_connect_timeout=COMMAND_TIMEOUT,
        retry=Retry(NoBackoff(), 0),
        decode_responses=decode,
        protocol=3,
    )
    try:
        return client.execute_command(*command)  # type: ignore[no-untyped-call]
    finally:
        client.close()


def poll(what: str, probe: Callable[[], T | None], timeout: float) -> T:
    """`probe()`'s first answer that is not None (or False); a server that does not answer (yet,
    or any more) counts as "not yet". TimeoutError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            answer = probe()
        except (redis.ConnectionError, redis.TimeoutError):
            answer = None
        if answer is not None and answer is not False:
            return answer
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(POLL_INTERVAL)


def _distinct_free_ports(count: int) -> list[int]:
    """`count` free ports, no two alike (two free_port() calls may return the same one)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


class _Topology:
    """What every rig shares: the servers it made, stopped and removed by `cleanup()`. The
    servers (each with its temporary directory) exist from construction, so a rig that is not
    used as a context manager needs its `cleanup()` even if it was never started."""

    def __init__(self) -> None:
        self._servers: list[RedisServer] = []

    def _new_server(
        self, port: int, extra_args: Sequence[str] = (), *, config: str | None = None
    ) -> RedisServer:
        server = RedisServer(port, extra_args, config=config)
        self._servers.append(server)
        return server

    def _server_at(self, address: Address) -> RedisServer:
        for server in self._servers:
            if server.address == address:
                return server
        raise LookupError(f"no server of this {type(self).__name__} at {address}")

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.cleanup()
            raise

    def _start(self) -> None:
        raise NotImplementedError

    def cleanup(self) -> None:
        for server in reversed(self._servers):
            server.cleanup()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()


def _replicate_all(primary: RedisServer, replicas: Sequence[RedisServer]) -> None:
    """Start `replicas` as replicas of `primary`; return once the primary has all of them online
    (replicate() alone returns as soon as the primary has any replica online)."""
    for replica in replicas:
        replica.start()
        replica.replicate(primary)
    poll(
        f"{len(replicas)} replicas online at the primary on port {primary.port}",
        lambda: primary.info(b"replication").count(b"state=online") == len(replicas),
        SETTLE_TIMEOUT,
    )


class ReplicaSet(_Topology):
    """A primary and `replicas` replicas of it, all synced once `start()` returns."""

    def __init__(self, replicas: int = 2) -> None:
        if replicas < 1:
            raise ValueError(f"a ReplicaSet needs at least one replica, not {replicas}")
        super().__init__()
        primary_port, *replica_ports = _distinct_free_ports(1 + replicas)
        self.primary = self._new_server(primary_port)
        self.replicas = [self._new_server(port) for port in replica_ports]

    @property
    def write_url(self) -> str:
        return self.primary.url

    @property
    def read_url(self) -> str:
        """The replicas' URLs joined by commas, as the read-URL setting takes them."""
        return ",".join(replica.url for replica in self.replicas)

    def _start(self) -> None:
        self.primary.start()
        _replicate_all(self.primary, self.replicas)


class SentinelSet(_Topology):
    """A primary, `replicas` replicas of it and `sentinels` Sentinels watching it as `service`
    with a majority quorum, set for failovers that take seconds on loopback.

    `servers` are the data servers as started, the primary first; which of them is the primary
    changes with each failover, so ask `master_address()`.
    """

    def __init__(
        self,
        sentinels: int = 3,
        replicas: int = 1,
        service: str = "postal",
        *,
        down_after_ms: int = DOWN_AFTER_MS,
        failover_timeout_ms: int = FAILOVER_TIMEOUT_MS,
    ) -> None:
        if sentinels < 1 or replicas < 1:
            raise ValueError("a SentinelSet needs at least one Sentinel and one replica")
        super().__init__()
        self.service = service
        ports = _distinct_free_ports(1 + replicas + sentinels)
        self.servers = [self._new_server(port) for port in ports[: 1 + replicas]]
        primary = self.servers[0]
        quorum = sentinels // 2 + 1
        config = "\n".join([
            f"sentinel monitor {service} {primary.host} {primary.port} {quorum}",
            f"sentinel down-after-milliseconds {service} {down_after_ms}",
            f"sentinel failover-timeout {service} {failover_timeout_ms}",
            f"sentinel parallel-syncs {service} 1",
            "",
        ])  # fmt: skip
        # Each Sentinel rewrites its own copy as it learns replicas, peers and failovers.
        self.sentinels = [
            self._new_server(port, ["--sentinel"], config=config) for port in ports[1 + replicas :]
        ]

    @property
    def url(self) -> str:
        hosts = ",".join(f"{host}:{port}" for host, port in self.sentinel_addresses)
        return f"redis+sentinel://{hosts}/{self.service}"

    @property
    def sentinel_addresses(self) -> list[Address]:
        return [sentinel.address for sentinel in self.sentinels]

    def _start(self) -> None:
        primary, *replicas = self.servers
        primary.start()
        _replicate_all(primary, replicas)
        for sentinel in self.sentinels:
            sentinel.start()
            for name, period_ms in FAST_SENTINEL_TIMERS.items():
                ask(sentinel.address, "SENTINEL", "DEBUG", name, period_ms)
        for sentinel in self.sentinels:
            poll(
                f"Sentinel on port {sentinel.port} knowing {primary.address}, "
                f"{len(replicas)} replicas and {len(self.sentinels) - 1} other Sentinels",
                partial(self._knows_everyone, sentinel, primary.address),
                SETTLE_TIMEOUT,
            )

    def _knows_everyone(self, sentinel: RedisServer, primary: Address) -> bool:
        fields = ask(sentinel.address, "SENTINEL", "MASTER", self.service)
        return (
            (fields["ip"], int(fields["port"])) == primary
            and fields["flags"] == "master"
            and int(fields["num-slaves"]) == len(self.servers) - 1
            and int(fields["num-other-sentinels"]) == len(self.sentinels) - 1
        )

    def reported_masters(self) -> list[Address | None]:
        """The primary's address as each Sentinel reports it (None: that one does not answer)."""
        views: list[Address | None] = []
        for sentinel in self.sentinels:
            try:
                host, port = ask(
                    sentinel.address, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service
                )
            except (redis.ConnectionError, redis.TimeoutError):
                views.append(None)
            else:
                views.append((host, int(port)))
        return views

    def master_address(self) -> Address:
        """The primary's address, as the first Sentinel that answers reports it."""
        for view in self.reported_masters():
            if view is not None:
                return view
        raise RuntimeError(f"no Sentinel of {self.url} answers")

    def server_at(self, address: Address) -> RedisServer:
        return self._server_at(address)

    def kill_primary(self) -> RedisServer:
        """SIGKILL the current primary; the killed server (restart it with `rejoin()`)."""
        primary = self.server_at(self.master_address())
        primary.kill()
        return primary

    def wait_for_failover(self, old: Address, timeout: float = 30.0) -> Address:
        """The new primary's address, once every Sentinel reports the same one in place of `old`
        and the server there answers as a primary."""

        def new_primary() -> Address | None:
            views = set(self.reported_masters())
            if len(views) != 1:
                return None
            (address,) = views
            if address is None or address == old:
                return None
            return address if ask(address, "ROLE")[0] == "master" else None

        try:
            return poll(f"a failover of {self.service} away from {old}", new_primary, timeout)
        except TimeoutError as exc:
            # Why it stalled (say, -failover-abort-no-good-slave) is only in Sentinel's log.
            tail = "\n".join(self.sentinels[0].log_text().splitlines()[-15:])
            raise TimeoutError(f"{exc}; the first Sentinel's log ends with:\n{tail}") from None

    def rejoin(self, server: RedisServer, timeout: float = 30.0) -> None:
        """Restart `server` (an old primary) and return once the Sentinels have made it a
        replica of the current primary and its link is up."""
        server.restart()

        def replicating() -> bool:
            primary_host, primary_port = self.master_address()
            info = ask(server.address, "INFO", "replication")
            return (
                info["role"] == "slave"
                and (info["master_host"], int(info["master_port"])) == (primary_host, primary_port)
                and info["master_link_status"] == "up"
            )

        poll(f"the server on port {server.port} replicating the primary", replicating, timeout)


@dataclass(frozen=True)
class ClusterNode:
    """One line of CLUSTER NODES: a node as the node asked sees it."""

    node_id: str
    address: Address
    flags: frozenset[str]
    master_id: str | None  # None for a master
    slot_ranges: tuple[tuple[int, int], ...]  # inclusive; slots being moved are not listed

    @classmethod
    def parse(cls, line: str) -> ClusterNode:
        node_id, address, flags, master_id, _ping, _pong, _epoch, _link, *slots = line.split()
        host, _, port = address.split("@")[0].rpartition(":")
        ranges = []
        for field in slots:
            if field.startswith("["):
                continue  # "[slot->-id]" / "[slot-<-id]": a migration under way, not ownership
            first, _, last = field.partition("-")
            ranges.append((int(first), int(last or first)))
        return cls(
            node_id=node_id,
            address=(host, int(port)),
            flags=frozenset(flags.split(",")),
            master_id=None if master_id == "-" else master_id,
            slot_ranges=tuple(ranges),
        )

    @property
    def is_live_master(self) -> bool:
        return "master" in self.flags and not self.flags & {"fail", "fail?"}

    def owns(self, slot: int) -> bool:
        return any(first <= slot <= last for first, last in self.slot_ranges)


def _cluster_node_args(bus_port: int, node_timeout_ms: int) -> list[str]:
    return [
        "--cluster-enabled", "yes",
        "--cluster-port", str(bus_port),
        "--cluster-config-file", "nodes.conf",  # relative: in the server's own --dir
        "--cluster-node-timeout", str(node_timeout_ms),
    ]  # fmt: skip


class ClusterSet(_Topology):
    """A Redis Cluster of `masters` masters with `replicas_per_master` replicas each, made by
    `redis-cli --cluster create`; `start()` returns once every node reports cluster_state:ok with
    all slots served and every replica synced."""

    def __init__(
        self,
        masters: int = 3,
        replicas_per_master: int = 0,
        *,
        node_timeout_ms: int = NODE_TIMEOUT_MS,
    ) -> None:
        if masters < 3:
            raise ValueError(f"redis-cli --cluster create needs 3 masters or more, not {masters}")
        if replicas_per_master < 0:
            raise ValueError(f"replicas_per_master cannot be negative: {replicas_per_master}")
        super().__init__()
        self._replicas_per_master = replicas_per_master
        count = masters * (1 + replicas_per_master)
        ports = _distinct_free_ports(2 * count)
        # An explicit bus port: the default (port + 10000) can fall past 65535, or be taken.
        self.nodes = [
            self._new_server(port, _cluster_node_args(bus_port, node_timeout_ms))
            for port, bus_port in zip(ports[:count], ports[count:], strict=True)
        ]
        self._replicas_of_killed: dict[Address, list[RedisServer]] = {}

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"{node.host}:{node.port}" for node in self.nodes)

    def _start(self) -> None:
        for node in self.nodes:
            node.start()
        addresses = [f"{node.host}:{node.port}" for node in self.nodes]
        replicas = str(self._replicas_per_master)
        create = [REDIS_CLI, "--cluster", "create", *addresses, "--cluster-replicas", replicas]
        done = subprocess.run(
            [*create, "--cluster-yes"], capture_output=True, text=True, timeout=SETTLE_TIMEOUT
        )
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{done.stdout}{done.stderr}")
        self._wait_settled("the new cluster")

    # -- what the cluster looks like -------------------------------------------------------------

    def cluster_nodes(self, node: RedisServer | None = None) -> list[ClusterNode]:
        """CLUSTER NODES as `node` (by default the first running node) sees the cluster."""
        viewer = node or self._first_running()
        return [
            ClusterNode.parse(line) for line in ask(viewer.address, "CLUSTER", "NODES").splitlines()
        ]

    def _first_running(self) -> RedisServer:
        for node in self.nodes:
            if node.pid is not None:
                return node
        raise RuntimeError("no node of this cluster is running")

    def masters(self) -> list[RedisServer]:
        """The masters that are not failing, as the first running node sees them, in the order
        of the slots they serve (masters serving none last)."""
        masters = [node for node in self.cluster_nodes() if node.is_live_master]
        masters.sort(key=lambda node: min(node.slot_ranges, default=(SLOTS, SLOTS)))
        return [self._server_at(node.address) for node in masters]

    def node_for_slot(self, slot: int) -> RedisServer:
        """The master serving `slot` (mid-migration: still the source)."""
        for node in self.cluster_nodes():
            if node.is_live_master and node.owns(slot):
                return self._server_at(node.address)
        raise LookupError(f"no live master serves slot {slot}")

    def node_id(self, node: RedisServer) -> str:
        return str(ask(node.address, "CLUSTER", "MYID"))

    def _wait_settled(self, what: str, *, timeout: float = SETTLE_TIMEOUT) -> None:
        """Until every running node reports cluster_state:ok with every slot served, knows every
        node, and every running replica's link to its master is up."""
        running = [node for node in self.nodes if node.pid is not None]

        def settled(node: RedisServer) -> bool:
            lines = ask(node.address, "CLUSTER", "INFO").splitlines()
            info = dict(line.split(":", 1) for line in lines if ":" in line)
            if info["cluster_state"] != "ok" or int(info["cluster_slots_ok"]) != SLOTS:
                return False
            if int(info["cluster_known_nodes"]) != len(self.nodes):
                return False
            replication = ask(node.address, "INFO", "replication")
            return bool(
                replication["role"] == "master" or replication["master_link_status"] == "up"
            )

        for node in running:
            poll(
                f"{what}: node on port {node.port} settled",
                partial(settled, node),
                timeout,
            )

    # -- moving a slot ---------------------------------------------------------------------------

    def migrate_slot(self, slot: int, to: RedisServer, *, pause_between_keys: float = 0.0) -> int:
        """Move `slot` to the master `to`, the way redis-cli reshards; the number of keys moved.
        `pause_between_keys` (seconds): move one key at a time, pausing after each, so that load
        running meanwhile meets the slot half-moved (and clients get ASK redirections)."""
        self.begin_migration(slot, to)
        moved = self.move_keys(slot, to, pause_between_keys=pause_between_keys)
        self.finish_migration(slot, to)
        return moved

    def begin_migration(self, slot: int, to: RedisServer) -> RedisServer:
        """Mark `slot` importing on `to` and migrating on its master; that master (the source).
        From here, a key of the slot missing on the source is answered with ASK to `to`."""
        source = self.node_for_slot(slot)
        if source is to:
            raise ValueError(f"slot {slot} is already served by the node on port {to.port}")
        ask(to.address, "CLUSTER", "SETSLOT", slot, "IMPORTING", self.node_id(source))
        ask(source.address, "CLUSTER", "SETSLOT", slot, "MIGRATING", self.node_id(to))
        return source

    def move_keys(
        self,
        slot: int,
        to: RedisServer,
        *,
        pause_between_keys: float = 0.0,
        limit: int | None = None,
    ) -> int:
        """MIGRATE the keys of `slot` from its master to `to` until none is left, or `limit` keys
        have moved (to hold the slot half-moved); how many moved."""
        source = self.node_for_slot(slot)
        batch = 1 if pause_between_keys > 0 else MIGRATE_BATCH
        moved = 0
        while limit is None or moved < limit:
            wanted = batch if limit is None else min(batch, limit - moved)
            keys = ask(source.address, "CLUSTER", "GETKEYSINSLOT", slot, wanted, decode=False)
            if not keys:
                break
            ask(
                source.address,
                "MIGRATE",
                to.host,
                to.port,
                "",
                0,
                MIGRATE_TIMEOUT_MS,
                "KEYS",
                *keys,
            )
            moved += len(keys)
            if pause_between_keys > 0:
                time.sleep(pause_between_keys)
        return moved

    def finish_migration(self, slot: int, to: RedisServer) -> None:
        """Give `slot` to `to` on every master, the destination first (so the source never
        redirects to a node that does not serve it yet), and wait until every node agrees."""
        source = self.node_for_slot(slot)
        others = [master for master in self.masters() if master not in (source, to)]
        to_id = self.node_id(to)
        for master in [to, source, *others]:
            ask(master.address, "CLUSTER", "SETSLOT", slot, "NODE", to_id)

        def everyone_agrees() -> bool:
            running = [node for node in self.nodes if node.pid is not None]
            return all(self._owner(slot, node) == to.address for node in running)

        poll(f"every node giving slot {slot} to port {to.port}", everyone_agrees, SETTLE_TIMEOUT)

    def _owner(self, slot: int, viewer: RedisServer) -> Address | None:
        owners = [node.address for node in self.cluster_nodes(viewer) if node.owns(slot)]
        return owners[0] if len(owners) == 1 else None

    # -- failovers -------------------------------------------------------------------------------

    def replicas_of(self, master: RedisServer) -> list[RedisServer]:
        master_id = self.node_id(master)
        nodes = self.cluster_nodes(master)
        return [self._server_at(node.address) for node in nodes if node.master_id == master_id]

    def fail_over(self, master: RedisServer, timeout: float = SETTLE_TIMEOUT) -> RedisServer:
        """A planned failover (CLUSTER FAILOVER on a replica of `master`); the new master, once
        it serves and the cluster has settled."""
        replicas = self.replicas_of(master)
        if not replicas:
            raise ValueError(f"the master on port {master.port} has no replica to fail over to")
        promoted = replicas[0]
        ask(promoted.address, "CLUSTER", "FAILOVER")
        self._wait_promoted(promoted, timeout)
        return promoted

    def kill_master(self, master: RedisServer) -> RedisServer:
        """SIGKILL `master` (an unplanned failover: see `wait_for_promotion`); the killed one."""
        self._replicas_of_killed[master.address] = self.replicas_of(master)
        master.kill()
        return master

    def wait_for_promotion(self, old: RedisServer, timeout: float = SETTLE_TIMEOUT) -> RedisServer:
        """The replica that took over from `old` (killed with `kill_master`), once it serves and
        the cluster has settled."""
        candidates = self._replicas_of_killed.pop(old.address, None)
        if candidates is None:
            raise ValueError(f"port {old.port} was not killed with kill_master()")
        if not candidates:
            raise ValueError(f"port {old.port} had no replica to promote")

        def promoted() -> RedisServer | None:
            masters = [node for node in candidates if ask(node.address, "ROLE")[0] == "master"]
            return masters[0] if masters else None

        new_master = poll(f"a replica of port {old.port} promoted", promoted, timeout)
        self._wait_promoted(new_master, timeout)
        return new_master

    def _wait_promoted(self, new_master: RedisServer, timeout: float) -> None:
        def everyone_agrees() -> bool:
            running = [node for node in self.nodes if node.pid is not None]
            return all(
                any(
                    entry.address == new_master.address and entry.is_live_master
                    for entry in self.cluster_nodes(node)
                )
                for node in running
            )

        poll(f"every node seeing port {new_master.port} as a master", everyone_agrees, timeout)
        self._wait_settled(f"after promoting port {new_master.port}", timeout=timeout)
