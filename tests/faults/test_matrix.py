"""The fault matrix under load: the twelve faults of `postal bench faults`, run by the same code.

Each test starts real servers for its fault (child redis-servers, proxies, a scripted DNS, a
Postal server process on the session's PostgreSQL database, and for the near cache's faults a
second one the writer writes through), runs 100 readers and one writer over HTTP through short
phases (1 s warm-up, 1.5 s before, 3 s during, 3 s after), and asserts counts, never timings:
no failed read while the database is up (with it down, only clear 503s), no stale read (cut
off from Redis, none past the documented bound), no wrong reply, no failed write, and, from
Postal's /metrics or the Redis servers, that the fault really happened and that the cache
served reads again after it.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from postal.cache.transport.tracking import DEAD_AFTER
from postal_bench.faults import FAULTS, Fault, FaultOptions, FaultResult, run_faults
from postal_bench.faults.fault import Shape
from postal_bench.load import no_progress

pytestmark = pytest.mark.redis_server

PHASES = {"before": 1.5, "during": 3.0, "after": 3.0}  # seconds


def _refused(row: FaultResult) -> None:
    assert row.evidence["connection_error"] + row.evidence["circuit_open"] > 0


def _black_holed(row: FaultResult) -> None:
    # The breaker: most reads skipped Redis rather than each paying the GET deadline.
    assert row.evidence["circuit_open"] > row.evidence["timeout"]


def _slow(row: FaultResult) -> None:
    assert row.evidence["timeout"] > 0
    assert row.evidence["circuit_open"] > row.evidence["timeout"]


def _restarted(row: FaultResult) -> None:
    assert row.evidence["restarted"] == 1  # the server's run id changed
    assert row.evidence["misses_after"] > 0  # its data was lost, so reads missed and refilled


def _replica_killed(row: FaultResult) -> None:
    # With the replica dead, reads failed over to the database: errors, then breaker refusals.
    assert row.evidence["cache_failed"] + row.evidence["circuit_open"] > 0


def _pool_exhausted(row: FaultResult) -> None:
    assert row.evidence["read_pool_size"] == 1
    assert row.evidence["queued_checkouts"] > 0
    assert row.evidence["hits"] > 0  # the one connection still served reads


def _dns_failing(row: FaultResult) -> None:
    assert row.evidence["lookups_failed_or_stale"] > 0


def _dns_moved(row: FaultResult) -> None:
    # Postal re-resolved after its connections to the old address failed, and uses the new one.
    assert row.evidence["postal_clients_on_new"] >= 1
    assert row.evidence["hits_on_new"] > 0


def _tls_unverified(row: FaultResult) -> None:
    assert row.evidence["hits"] == 0
    assert row.evidence["cache_failed"] > 0


def _database_down(row: FaultResult) -> None:
    assert row.evidence["writes_failed_during"] > 0
    assert row.evidence["hits_during"] > 0  # cached posts were still served
    assert row.evidence["evicted"] > 0
    assert row.unavailable > 0  # the evicted ones got clear 503s (failed == 0 says nothing else)
    # The pod stayed ready, saying what is degraded; writes got clear 503s with Retry-After.
    assert row.evidence["ready_during"] > 0
    assert row.evidence["unready_during"] == 0
    assert row.evidence["readyz_degraded_database"] == row.evidence["ready_during"]
    assert row.evidence["writes_503_retry_after"] > 0
    assert row.evidence["writes_other_answers"] == 0


def _near_tracking_killed(row: FaultResult) -> None:
    assert row.evidence["killed"] > 0  # CLIENT KILL found connections named postal-tracking
    assert row.evidence["flushes_during"] > 0  # the readers' Postal saw its tracking go
    assert row.evidence["writes_during"] > 0  # the other Postal kept writing meanwhile
    assert row.evidence["near_hits_after"] > 0  # tracking came back, and the near cache with it
    assert row.stale_bound is None  # no stale read allowed at all


def _near_partitioned(row: FaultResult) -> None:
    assert row.evidence["writes_during"] > 0  # the other Postal kept writing
    assert row.evidence["flushes_during"] > 0  # the heartbeat went unanswered: flushed
    assert row.evidence["redis_failed_during"] > 0  # this Postal could not reach Redis
    assert row.stale_bound == DEAD_AFTER  # stale reads within 1.5 s of the write are counted apart


EVIDENCE: dict[str, Callable[[FaultResult], None]] = {
    "refused": _refused,
    "black-holed": _black_holed,
    "slow": _slow,
    "restarted": _restarted,
    "replica-killed": _replica_killed,
    "pool-exhausted": _pool_exhausted,
    "dns-failing": _dns_failing,
    "dns-moved": _dns_moved,
    "tls-unverified": _tls_unverified,
    "database-down": _database_down,
    "near-tracking-killed": _near_tracking_killed,
    "near-partitioned": _near_partitioned,
}


def test_every_fault_has_its_evidence_check() -> None:
    assert set(EVIDENCE) == {fault.name for fault in FAULTS}


@pytest.mark.parametrize("fault", FAULTS, ids=[fault.name for fault in FAULTS])
async def test_fault_under_load(fault: type[Fault], clean_database: str) -> None:
    options = FaultOptions(faults=(fault,), database_url=clean_database, **PHASES)
    report = await run_faults(options, no_progress)
    (row,) = report.rows
    details = f"{row.examples}; Postal's log: {row.postal_log}; the writer's: {row.writer_log}"

    assert row.reads > 0
    assert row.failed == 0, details
    assert row.hung == 0, details
    if fault.stale_bound is None:
        assert row.stale == 0, details
    assert row.stale_past_bound == 0, details  # without a bound: every stale read
    assert row.wrong == 0, details
    assert row.writes_failed == 0, details
    if not fault.database:
        assert row.unavailable == 0
    EVIDENCE[fault.name](row)
    assert row.missing is None  # the command's own reading of the evidence agrees
    assert not row.problems(), details  # recovered too, where the fault ends
    if fault.shape is not Shape.WHOLE_RUN:
        assert row.evidence["hits_after"] > 0  # the cache served reads again after the fault
