"""The faults of the matrix: each a set-up of the rig, `begin()` and `end()`, and the evidence
that it really happened (counts from Postal's /metrics or from the Redis servers, never
timings). Their shapes and base class are in `fault`; the ten here are the cache's, the near
cache's two (another Postal process writes) are in `near_faults`, and `FAULTS` has all twelve.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import redis.asyncio as redis

from postal.observability.metrics import (
    CACHE_OPERATIONS,
    DNS_LOOKUPS,
    POOL_MAX_CONNECTIONS,
    POOL_WAIT_SECONDS,
)
from postal_bench.errors import BenchError
from postal_bench.faults.fault import Evidence, Fault, Observed, Shape
from postal_bench.faults.near_faults import Partitioned, TrackingKilled
from postal_bench.faults.outage_probe import OutageProbe
from postal_bench.faults.rig import FaultRig, server_step
from postal_testing.certs import make_untrusted_pki
from postal_testing.proxy import FaultProxy
from postal_testing.redis_servers import RedisServer, free_port
from postal_testing.resolver import BENCH_HOST, DnsScript

SLOW_REPLY = 1.0  # s: the slow Redis answers this long after a request (half each way)
DIAL_WAIT = 5.0  # s: the longest wait for Postal to dial (its pools redial at once, in practice)
MOVED_FROM, MOVED_TO = "127.0.0.2", "127.0.0.3"  # the moving Redis's two addresses


def timeouts_and_refusals(observed: Observed) -> Evidence:
    """A Redis that does not answer in time: reads timed out, and reads the breaker refused."""
    during = observed.during
    return {
        "timeout": during.reads("timeout") + during.reads("pool_timeout"),
        "circuit_open": during.reads("circuit_open"),
        "hits_after": observed.after.reads("hit"),
    }


class ProxiedRedis(Fault):
    """Postal reaches one Redis through a FaultProxy, which the fault switches."""

    proxy: FaultProxy

    async def set_up(self, rig: FaultRig) -> None:
        server = await rig.redis()
        self.proxy = await rig.proxy(server.port)
        rig.use_redis(self.proxy.url)

    async def end(self) -> None:
        await self.proxy.pass_through()


class Refused(ProxiedRedis):
    name = "refused"
    summary = "Redis refuses connections (open ones closed)"

    async def begin(self) -> None:
        await self.proxy.refuse()

    async def evidence(self, observed: Observed) -> Evidence:
        during = observed.during
        return {
            "connection_error": during.reads("connection_error"),
            "circuit_open": during.reads("circuit_open"),
            "hits_after": observed.after.reads("hit"),
        }

    def missing(self, evidence: Evidence) -> str | None:
        if evidence["connection_error"] + evidence["circuit_open"] == 0:
            return "no cache read failed or was refused by the breaker while Redis refused"
        return None


class BlackHoled(ProxiedRedis):
    name = "black-holed"
    summary = "Redis black-holed: connections accepted, nothing answered"

    async def begin(self) -> None:
        await self.proxy.black_hole()

    async def evidence(self, observed: Observed) -> Evidence:
        return timeouts_and_refusals(observed)

    def missing(self, evidence: Evidence) -> str | None:
        # The breaker's promise: reads do not pay the GET deadline one after another.
        if evidence["circuit_open"] <= evidence["timeout"]:
            return (
                f"the breaker did not spare most reads the deadline: {evidence['circuit_open']:g}"
                f" refused by it, {evidence['timeout']:g} timed out"
            )
        return None


class Slow(ProxiedRedis):
    name = "slow"
    summary = f"Redis answers after {SLOW_REPLY:g} s"

    async def begin(self) -> None:
        await self.proxy.add_latency(SLOW_REPLY / 2)

    async def evidence(self, observed: Observed) -> Evidence:
        return timeouts_and_refusals(observed)

    def missing(self, evidence: Evidence) -> str | None:
        if evidence["timeout"] == 0:
            return "no cache read timed out while Redis was slow"
        if evidence["circuit_open"] <= evidence["timeout"]:
            return "the breaker did not spare most reads the deadline"
        return None


class Restarted(Fault):
    name = "restarted"
    summary = "Redis restarted mid-load (its data lost)"
    shape = Shape.INSTANT

    server: RedisServer

    async def set_up(self, rig: FaultRig) -> None:
        self.server = await rig.redis()
        rig.use_redis(self.server.url)
        self.run_ids = [await asyncio.to_thread(_run_id, self.server)]

    async def begin(self) -> None:
        await server_step(self.server.restart)
        self.run_ids.append(await asyncio.to_thread(_run_id, self.server))

    async def evidence(self, observed: Observed) -> Evidence:
        window = observed.after  # from the restart on: the empty server misses, then fills
        return {
            "restarted": float(len(set(self.run_ids)) == 2),
            "misses_after": window.reads("miss"),
            "hits_after": window.reads("hit"),
        }

    def missing(self, evidence: Evidence) -> str | None:
        if not evidence["restarted"]:
            return "the Redis server's run id did not change"
        if evidence["misses_after"] == 0:
            return "no read missed after the restart: the data was not lost?"
        return None


class ReplicaKilled(Fault):
    name = "replica-killed"
    summary = "reads on a replica; the replica SIGKILLed"

    async def set_up(self, rig: FaultRig) -> None:
        self.primary = await rig.redis()
        self.replica = await rig.redis()
        await asyncio.to_thread(self.replica.replicate, self.primary)
        rig.use_redis(self.replica.url, self.primary.url)

    async def begin(self) -> None:
        await asyncio.to_thread(self.replica.kill)

    async def end(self) -> None:
        await server_step(self.replica.start)
        await asyncio.to_thread(self.replica.replicate, self.primary)

    async def evidence(self, observed: Observed) -> Evidence:
        during = observed.during
        failed = sum(during.reads(kind) for kind in ("connection_error", "timeout", "error"))
        return {
            "cache_failed": failed,
            "circuit_open": during.reads("circuit_open"),
            "hits_after": observed.after.reads("hit"),
        }

    def missing(self, evidence: Evidence) -> str | None:
        if evidence["cache_failed"] + evidence["circuit_open"] == 0:
            return "no read failed over to the database while the replica was dead"
        if evidence["hits_after"] == 0:
            return "no read was served by the replica after it came back"
        return None


class PoolExhausted(Fault):
    name = "pool-exhausted"
    summary = "a read pool of 1 connection for all readers"
    shape = Shape.WHOLE_RUN

    async def set_up(self, rig: FaultRig) -> None:
        server = await rig.redis()
        rig.use_redis(server.url)
        # The settings require min idle <= max idle <= pool size. Reads take the pool, not
        # the read pipeline, whose one connection is not the point here.
        rig.environment.update(
            READ_REDIS_POOL_SIZE="1",
            READ_REDIS_MIN_IDLE="1",
            READ_REDIS_MAX_IDLE="1",
            READ_REDIS_AUTOPIPELINE="false",
        )

    async def evidence(self, observed: Observed) -> Evidence:
        during = observed.during
        return {
            "read_pool_size": during.gauge(POOL_MAX_CONNECTIONS, role="read"),
            "queued_checkouts": during.count(POOL_WAIT_SECONDS + "_count", role="read"),
            "hits": during.reads("hit"),
        }

    def missing(self, evidence: Evidence) -> str | None:
        if evidence["read_pool_size"] != 1:
            return f"the read pool holds {evidence['read_pool_size']:g} connections, not 1"
        if evidence["queued_checkouts"] == 0:
            return "no read queued for the one connection"
        return None


class DnsFailing(Fault):
    name = "dns-failing"
    summary = "the Redis host name stops resolving (connections reset)"

    async def set_up(self, rig: FaultRig) -> None:
        self.rig = rig
        server = await rig.redis()
        self.proxy = await rig.proxy(server.port)
        self.answer = DnsScript(hosts={BENCH_HOST: [self.proxy.host]})
        rig.script_dns(self.answer)
        rig.use_redis(f"redis://{BENCH_HOST}:{self.proxy.port}/0")

    async def begin(self) -> None:
        self.rig.script_dns(DnsScript(hosts=self.answer.hosts, failing=(BENCH_HOST,)))
        # End every open connection, and reset new ones until one dial has failed: a failed
        # dial makes Postal re-resolve the name (with lookups failing), and the dials after it
        # go through on the last good answer (stale-if-error), or do not.
        accepted = self.proxy.connections_accepted
        await self.proxy.reset()
        await _until(lambda: self.proxy.connections_accepted > accepted, DIAL_WAIT)
        await self.proxy.pass_through()

    async def end(self) -> None:
        self.rig.script_dns(self.answer)

    async def evidence(self, observed: Observed) -> Evidence:
        during = observed.during
        return {
            "lookups_failed_or_stale": during.count(DNS_LOOKUPS, outcome="stale")
            + during.count(DNS_LOOKUPS, outcome="failed"),
            "hits_after": observed.after.reads("hit"),
        }

    def missing(self, evidence: Evidence) -> str | None:
        if evidence["lookups_failed_or_stale"] == 0:
            return "Postal made no lookup while DNS was failing"
        return None


class DnsMoved(Fault):
    name = "dns-moved"
    summary = f"Redis moved: the name now gives {MOVED_TO}, the old server stopped"
    shape = Shape.INSTANT

    async def set_up(self, rig: FaultRig) -> None:
        self.rig = rig
        port = free_port(MOVED_FROM)
        self.old = await rig.redis(host=MOVED_FROM, port=port)
        self.new = await rig.redis(host=MOVED_TO, port=port)
        rig.script_dns(DnsScript(hosts={BENCH_HOST: [MOVED_FROM]}))
        rig.use_redis(f"redis://{BENCH_HOST}:{port}/0")

    async def begin(self) -> None:
        self.rig.script_dns(DnsScript(hosts={BENCH_HOST: [MOVED_TO]}))
        await asyncio.to_thread(self.old.stop)

    async def evidence(self, observed: Observed) -> Evidence:
        clients = _info_field(
            await asyncio.to_thread(self.new.info, b"clients"), "connected_clients"
        )
        stats = await asyncio.to_thread(self.new.info, b"stats")
        return {
            "postal_clients_on_new": clients - 1,  # less the connection asking
            "hits_on_new": _info_field(stats, "keyspace_hits"),
            "hits_after": observed.after.reads("hit"),
        }

    def missing(self, evidence: Evidence) -> str | None:
        if evidence["postal_clients_on_new"] < 1:
            return f"Postal is not connected to the Redis at {MOVED_TO}"
        if evidence["hits_on_new"] == 0:
            return f"no read hit the Redis at {MOVED_TO}"
        return None


class TlsUnverified(Fault):
    name = "tls-unverified"
    summary = "a TLS Redis whose certificate does not verify"
    shape = Shape.WHOLE_RUN

    async def set_up(self, rig: FaultRig) -> None:
        pki = await asyncio.to_thread(make_untrusted_pki, rig.work_dir / "pki")
        tls_port = free_port()
        # The plain port (the server's own) answers the readiness PING; Postal uses tls_port.
        await rig.redis(
            extra_args=[
                "--tls-port", str(tls_port),
                "--tls-cert-file", str(pki.server_cert),
                "--tls-key-file", str(pki.server_key),
                "--tls-ca-cert-file", str(pki.server_ca),
                "--tls-auth-clients", "no",
            ]
        )  # fmt: skip
        rig.use_redis(f"rediss://127.0.0.1:{tls_port}/0")
        rig.environment["REDIS_TLS_CA_FILE"] = str(pki.client_ca)

    async def evidence(self, observed: Observed) -> Evidence:
        during = observed.during  # both roles: every operation, reads and invalidations
        return {
            "hits": during.reads("hit"),
            "cache_failed": during.count(CACHE_OPERATIONS, outcome="connection_error")
            + during.count(CACHE_OPERATIONS, outcome="error"),
            "circuit_open": during.count(CACHE_OPERATIONS, outcome="circuit_open"),
        }

    def missing(self, evidence: Evidence) -> str | None:
        if evidence["hits"]:
            return f"{evidence['hits']:g} reads hit a Redis whose certificate does not verify"
        if evidence["cache_failed"] + evidence["circuit_open"] == 0:
            return "no cache read failed: did Postal talk to Redis at all?"
        return None


class DatabaseDown(Fault):
    """The database refuses connections. A quarter of the hot set's cache entries are evicted
    as it goes down, as a real cache's would be (TTLs, memory): reads of those need the
    database and must get a clear 503, the others are still served from the cache. Meanwhile
    `/readyz` must stay ready, saying the database is degraded, and writes must get a clear
    503 (`outage_probe`)."""

    name = "database-down"
    summary = "the database refuses connections (open ones closed; a quarter of entries cold)"
    database = True
    evicted = 0

    async def set_up(self, rig: FaultRig) -> None:
        server = await rig.redis()
        rig.use_redis(server.url)
        self.proxy = await rig.database_proxy()
        self.redis_url, self.key_prefix = server.url, rig.key_prefix
        self.rig = rig

    async def begin(self) -> None:
        client = redis.Redis.from_url(self.redis_url)
        try:
            # The posts' values only (post:{42}), not their generation counters.
            pattern = f"{self.key_prefix}post:{{*}}"
            keys = sorted([key async for key in client.scan_iter(match=pattern, count=1000)])
            cold = keys[::4]
            if cold:
                await client.delete(*cold)
            self.evicted = len(cold)
        finally:
            await client.aclose()
        await self.proxy.refuse()
        if self.rig.postal is None:
            raise BenchError("the database went down before Postal was started")
        self.probe = OutageProbe(self.rig.postal)
        self.probe.start()

    async def end(self) -> None:
        self.outage = await self.probe.stop()
        await self.proxy.pass_through()

    async def evidence(self, observed: Observed) -> Evidence:
        outage = self.outage
        return {
            "writes_failed_during": observed.failed_writes_during,
            "evicted": self.evicted,
            "hits_during": observed.during.reads("hit"),
            "hits_after": observed.after.reads("hit"),
            "ready_during": outage.ready,
            "unready_during": outage.unready + outage.failed,
            "readyz_degraded_database": outage.database_degraded,
            "writes_503_retry_after": outage.writes_unavailable,
            "writes_other_answers": outage.writes_other,
        }

    def missing(self, evidence: Evidence) -> str | None:
        if evidence["writes_failed_during"] == 0:
            return "no write failed while the database was down"
        if evidence["evicted"] == 0:
            return "no cache entry was evicted, so no read needed the database"
        if evidence["unready_during"] or not evidence["ready_during"]:
            return (
                f"/readyz was not ready {evidence['unready_during']:g} times while the cache"
                f" served (first: {self.outage.first_unexpected})"
            )
        if evidence["readyz_degraded_database"] != evidence["ready_during"]:
            return '/readyz did not always say degraded: ["database"]'
        if evidence["writes_other_answers"] or not evidence["writes_503_retry_after"]:
            return f"a write got no clear 503 with Retry-After ({self.outage.first_unexpected})"
        return None


FAULTS: tuple[type[Fault], ...] = (
    Refused, BlackHoled, Slow, Restarted, ReplicaKilled,
    PoolExhausted, DnsFailing, DnsMoved, TlsUnverified, DatabaseDown,
    TrackingKilled, Partitioned,
)  # fmt: skip
FAULT_NAMES: tuple[str, ...] = tuple(fault.name for fault in FAULTS)


def faults_named(names: str | None) -> list[type[Fault]]:
    """The faults in a comma-separated list (None or empty: all of them, in the matrix's order)."""
    if not names or not names.strip():
        return list(FAULTS)
    by_name = {fault.name: fault for fault in FAULTS}
    wanted = [name.strip() for name in names.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in by_name]
    if unknown:
        raise BenchError(
            f"unknown fault {', '.join(unknown)}: choose from {', '.join(FAULT_NAMES)}"
        )
    return [fault for fault in FAULTS if fault.name in wanted]


async def _until(condition: Callable[[], bool], limit: float) -> None:
    """Return once `condition()` holds, checking every 10 ms; BenchError after `limit` s."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + limit
    while not condition():
        if loop.time() > give_up:
            raise BenchError(f"the fault did not take effect within {limit:g}s")
        await asyncio.sleep(0.01)


def _info_field(info: bytes, name: str) -> float:
    for line in info.decode(errors="replace").splitlines():
        key, _, value = line.partition(":")
        if key == name:
            return float(value.strip())
    raise BenchError(f"INFO has no {name}")


def _run_id(server: RedisServer) -> str:
    for line in server.info(b"server").decode(errors="replace").splitlines():
        if line.startswith("run_id:"):
            return line.partition(":")[2].strip()
    raise BenchError("INFO server has no run_id")
