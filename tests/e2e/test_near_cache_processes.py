"""Chase reads across processes with the near cache on: two `postal serve` processes and the two
workers of a `postal serve --workers 2`, on one PostgreSQL database, and on one Redis, then with
reads from a replica, then on a Redis Cluster of three masters. After each of 1,000 updates
through one of the four, every read through each of the other three returns the new version
(so between separate processes, and between two workers of one); and reads really are served
from each one's memory in between.

Each of the four is reached over one keep-alive connection of its own (`Pinned`). A worker
serves every request of a connection it accepted, so the two workers are told apart by the pid
`/status` reports on the connection, which is then used for nothing else; a connection that
closes fails the test rather than being opened again (it could reach the other worker).

Each update is followed, on each reader, by three reads: a miss (the write deleted the entry;
the database answers, the fill follows), then mostly a Redis hit, which the near cache stores,
and a hit from memory. So when the next write lands, a reader mostly holds the old version in
memory: the read after it is fresh only if the invalidation was applied first. "Mostly": a
reply is not stored when any invalidation came in while it was read, and the reader's own fill
lands (and is pushed) whenever it lands; so the test counts the entries stored, and asks of the
hits from memory only that there were many.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from redis.crc import key_slot

from postal_testing.cluster_set import ClusterSet
from postal_testing.topologies import ReplicaSet
from tests.e2e.test_serve import serving_together

UPDATES = 1000
READS_AFTER_EACH_WRITE = 3
WORKERS = 2
WORKERS_READY_WITHIN = 30.0  # seconds for every worker of a --workers server to answer


class Pinned:
    """One keep-alive HTTP connection, and so one process: a worker serves each connection it
    accepted until the connection closes. Every request goes over this socket, or fails."""

    def __init__(self, base: str) -> None:
        host, port = base.removeprefix("http://").rsplit(":", 1)
        self._connection = http.client.HTTPConnection(host, int(port), timeout=10)
        self._connection.connect()
        self._socket = self._connection.sock
        self.pid: int = self.json("GET", "/status")["pid"]

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> bytes:
        headers = {} if body is None else {"content-type": "application/json"}
        payload = None if body is None else json.dumps(body)
        self._connection.request(method, path, body=payload, headers=headers)
        response = self._connection.getresponse()
        data = response.read()
        # http.client would open a new connection on the next request, maybe to another worker.
        assert self._connection.sock is self._socket, f"the connection to pid {self.pid} closed"
        assert response.status in (200, 201), (method, path, response.status, data[:200])
        return data

    def json(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return json.loads(self.request(method, path, body))

    def close(self) -> None:
        self._connection.close()


def one_per_worker(base: str, workers: int) -> list[Pinned]:
    """A pinned connection to each of the server's `workers` workers: connections are opened
    until each worker has answered on one (a worker accepts only once it has started, and the
    kernel hands each connection to either of those that have)."""
    by_pid: dict[int, Pinned] = {}
    deadline = time.monotonic() + WORKERS_READY_WITHIN
    while len(by_pid) < workers:
        if time.monotonic() > deadline:
            for pinned in by_pid.values():
                pinned.close()
            raise AssertionError(f"{len(by_pid)} of {workers} workers answered")
        pinned = Pinned(base)
        if pinned.pid in by_pid:
            pinned.close()
            time.sleep(0.05)
        else:
            by_pid[pinned.pid] = pinned
    return list(by_pid.values())


@dataclass
class Redis:
    """What the servers are told (`environ`); how many Redis servers hold posts' keys, and
    which one holds a post's."""

    name: str
    environ: dict[str, str]
    servers: int = 1
    owner: Callable[[int], str] = field(default=lambda post: "the only one")


@pytest.fixture(params=["one Redis", "a replica", "a cluster"])
def redis_topology(request: pytest.FixtureRequest, redis_url: str) -> Iterator[Redis]:
    if request.param == "one Redis":
        yield Redis(request.param, {"READ_REDIS_URL": redis_url})
    elif request.param == "a replica":
        with ReplicaSet(replicas=1) as replicas:
            # Each invalidation waits for the replica (WAIT) within the SET deadline: one long
            # enough on a busy machine, since this test is about reads, not that deadline.
            environ = {
                "READ_REDIS_URL": replicas.read_url,
                "WRITE_REDIS_URL": replicas.write_url,
                "REDIS_SET_DEADLINE": "2s",
            }
            yield Redis(request.param, environ)
    else:
        cluster: ClusterSet = request.getfixturevalue("redis_cluster")

        def owner(post: int) -> str:
            return str(cluster.node_for_slot(key_slot(str(post).encode())).port)  # {post} tag

        yield Redis(request.param, {"READ_REDIS_URL": cluster.url}, len(cluster.masters()), owner)


def posts_on_every_server(writer: Pinned, redis: Redis) -> list[int]:
    """A post (its id) on each server that holds posts' keys: the one, or each cluster master."""
    posts: dict[str, int] = {}
    for _ in range(60):
        content = {"title": "v1", "body": "b", "author": "a"}
        post = writer.json("POST", "/api/v1/posts", content)["id"]
        posts.setdefault(redis.owner(post), post)
        if len(posts) == redis.servers:
            return list(posts.values())
    raise AssertionError(f"{redis.name}: no post landed on some server in 60 tries")


def test_every_read_after_a_write_through_another_process_or_worker_is_fresh(
    tmp_path: Path, database_url: str, key_prefix: str, redis_topology: Redis
) -> None:
    environ = {
        "DATABASE_URL": database_url,
        "REDIS_KEY_PREFIX": key_prefix,
        "POSTAL_LOG_LEVEL": "WARNING",
        "NEAR_CACHE_ENABLED": "true",
        # The pinned connections wait while the rest are pinned (the second worker may still
        # be starting): a closed one would end the test, and keep-alive is not what it is about.
        "POSTAL_HTTP_KEEP_ALIVE_TIMEOUT": "5m",
        **redis_topology.environ,
    }
    commands = [[], [], ["--workers", str(WORKERS)]]
    with (
        serving_together(tmp_path, commands, **environ) as (one, other, workers),
        ExitStack() as stack,
    ):
        peers = [Pinned(one.base), Pinned(other.base)]
        stack.callback(lambda: [peer.close() for peer in peers])
        peers += one_per_worker(workers.base, WORKERS)
        assert len({peer.pid for peer in peers}) == len(peers)  # four processes
        posts = posts_on_every_server(peers[0], redis_topology)
        versions = dict.fromkeys(posts, 1)
        for update in range(UPDATES):
            post = posts[update % len(posts)]  # on a cluster, each master in turn
            writer = peers[update % len(peers)]
            versions[post] += 1
            title = f"v{versions[post]}"
            content = {"title": title, "body": "b", "author": "a"}
            writer.request("PUT", f"/api/v1/posts/{post}", content)
            for reader in peers:
                if reader is writer:
                    continue
                for _ in range(READS_AFTER_EACH_WRITE):
                    got = reader.json("GET", f"/api/v1/posts/{post}")
                    assert (got["version"], got["title"]) == (versions[post], title), (
                        f"{redis_topology.name}: update {update}, pid {reader.pid} read stale"
                    )
        reports = {peer.pid: peer.json("GET", "/status") for peer in peers}
    for pid, report in reports.items():
        assert report["pid"] == pid  # each connection stayed with its process
        near = report["cache"]["near"]
        assert near["live"] is True, (redis_topology.name, pid, near)
        assert near["invalidations"] >= UPDATES, (redis_topology.name, pid, near)
        # A reader of three updates in four held the new version in memory after most of them
        # (748 of 750 seen on a busy machine), and memory answered many reads (161 at the
        # fewest seen there: its own fill's push often lands while a read is in flight).
        assert near["stores"] >= UPDATES // 2, (redis_topology.name, pid, near)
        assert near["hits"] >= UPDATES // 20, (redis_topology.name, pid, near)
