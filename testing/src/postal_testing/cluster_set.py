"""A Redis Cluster on free loopback ports (`ClusterSet`), made by `redis-cli --cluster create`, for
the tests and benchmarks that must watch slots move and masters fail over: a slot migrated whole
or held half-moved (so clients really meet ASK), a planned `CLUSTER FAILOVER`, a master killed,
a master added.

As the rigs of `postal_testing.topologies`: a context manager whose `start()` returns once every
node reports cluster_state:ok, and whose `cleanup()` stops every server it made.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from functools import partial

import redis

from postal_testing.redis_servers import RedisServer
from postal_testing.topologies import (
    REDIS_CLI,
    SETTLE_TIMEOUT,
    Address,
    Rig,
    ask,
    distinct_free_ports,
    poll,
)

# Cluster: a node counts as failing after 1 s without an answer.
NODE_TIMEOUT_MS = 1000
SLOTS = 16384
MIGRATE_BATCH = 100  # keys per MIGRATE when moving a slot without pauses
MIGRATE_TIMEOUT_MS = 5000


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


class ClusterSet(Rig):
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
        self._node_timeout_ms = node_timeout_ms
        count = masters * (1 + replicas_per_master)
        ports = distinct_free_ports(2 * count)
        # An explicit bus port: the default (port + 10000) can fall past 65535, or be taken.
        self._bus_ports = dict(zip(ports[:count], ports[count:], strict=True))
        self.nodes = [
            self._new_server(port, _cluster_node_args(bus_port, node_timeout_ms))
            for port, bus_port in self._bus_ports.items()
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

    def add_master(self) -> RedisServer:
        """A new master, joined to the cluster (CLUSTER MEET) and known to every node, serving no
        slot until one is migrated to it (`migrate_slot`)."""
        port, bus_port = distinct_free_ports(2)
        node = self._new_server(port, _cluster_node_args(bus_port, self._node_timeout_ms))
        node.start()
        self._bus_ports[port] = bus_port
        self.nodes.append(node)
        seed = self._first_running()
        ask(node.address, "CLUSTER", "MEET", seed.host, seed.port, self._bus_ports[seed.port])
        self._wait_settled(f"after adding port {port}")
        return node

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
        node, sees as many live replicas as there are running ones (gossip can lag `redis-cli
        --cluster create`: a master listed none of its replicas right after), and every
        running replica's link to its master is up."""
        running = [node for node in self.nodes if node.pid is not None]
        masters = sum(1 for node in running if ask(node.address, "ROLE")[0] == "master")
        live_replicas = len(running) - masters

        def settled(node: RedisServer) -> bool:
            lines = ask(node.address, "CLUSTER", "INFO").splitlines()
            info = dict(line.split(":", 1) for line in lines if ":" in line)
            if info["cluster_state"] != "ok" or int(info["cluster_slots_ok"]) != SLOTS:
                return False
            if int(info["cluster_known_nodes"]) != len(self.nodes):
                return False
            seen = [entry for entry in self.cluster_nodes(node) if entry.master_id is not None]
            if sum(1 for entry in seen if not entry.flags & {"fail", "fail?"}) < live_replicas:
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
            try:
                ask(source.address, "MIGRATE", to.host, to.port, "", 0, MIGRATE_TIMEOUT_MS,
                    "KEYS", *keys)  # fmt: skip
            except redis.ResponseError as exc:
                if "BUSYKEY" not in str(exc):
                    raise
                # A client wrote the key on the target meanwhile (ASK: it was missing here when
                # it wrote), so the target's copy is the newer one: this one is dropped.
                ask(source.address, "DEL", *keys)
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
