"""Real Redis topologies on free loopback ports, for the tests and benchmarks that must watch a
failover, a read replica or a slot move happen rather than take them on trust: a primary with
replicas (`ReplicaSet`), a primary watched by Sentinels (`SentinelSet`), and, in
`postal_testing.cluster_set`, a Redis Cluster (`ClusterSet`).

Each rig is a context manager. `start()` returns once the topology has settled (replicas synced,
every Sentinel agreeing on the primary and knowing its peers, every cluster node reporting
cluster_state:ok); `cleanup()` stops every server the rig made, and runs by itself when a step of
`start()` fails half-way. The servers are `RedisServer`s, so a test can kill or restart any one.

Each question goes over a short-lived redis-py connection of its own, without retries: the rigs
poll a few times a second at most, and a fresh connection says plainly which server answered.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Self, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from postal_testing.redis_servers import RedisServer, free_port

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


def distinct_free_ports(count: int) -> list[int]:
    """`count` free ports, no two alike (two free_port() calls may return the same one)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


class Rig:
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


class ReplicaSet(Rig):
    """A primary and `replicas` replicas of it, all synced once `start()` returns."""

    def __init__(self, replicas: int = 2) -> None:
        if replicas < 1:
            raise ValueError(f"a ReplicaSet needs at least one replica, not {replicas}")
        super().__init__()
        primary_port, *replica_ports = distinct_free_ports(1 + replicas)
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


class SentinelSet(Rig):
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
        ports = distinct_free_ports(1 + replicas + sentinels)
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
