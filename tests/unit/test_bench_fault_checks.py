"""The fault matrix's checks on their own: what makes a read wrong, stale, failed or allowed,
and when a recovery counts. The matrix's zero counts mean something only if these find what
they look for."""

from __future__ import annotations

import json

import pytest

from postal.observability.metrics import CACHE_OPERATIONS, NEAR_CACHE_READS
from postal.stats.scrape import Scrape
from postal_bench.errors import BenchError
from postal_bench.faults.load import (
    Outcome,
    ReadLog,
    WriteLog,
    classify,
    count_stale,
    stale_reads,
)
from postal_bench.faults.report import (
    Marks,
    count_failed_writes,
    count_failures,
    during_fault,
    hit_ratio,
    log_excerpt,
    recovery_time,
    within_bound,
)
from postal_bench.faults.scenarios import FAULT_NAMES, faults_named
from postal_bench.loadgen import Reply


def _reply(status: int, body: object, headers: str = "") -> Reply:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    head = f"http/1.1 {status} x\r\n{headers}content-length: {len(raw)}\r\n\r\n".encode()
    return Reply(status, head, raw)


def test_a_reply_for_the_post_asked_is_ok_with_its_version() -> None:
    assert classify(_reply(200, {"id": 7, "version": 3}), 7) == (Outcome.OK, 3, "")


def test_another_posts_body_or_an_unreadable_one_is_wrong() -> None:
    assert classify(_reply(200, {"id": 8, "version": 3}), 7)[0] is Outcome.WRONG
    assert classify(_reply(200, b"<html>"), 7)[0] is Outcome.WRONG
    assert classify(_reply(200, {"id": 7}), 7)[0] is Outcome.WRONG


def test_only_a_503_with_a_json_error_and_retry_after_is_clear() -> None:
    error = {"error": {"code": "database_unavailable", "message": "retry shortly"}}
    assert classify(_reply(503, error, "retry-after: 1\r\n"), 7)[0] is Outcome.UNAVAILABLE
    assert classify(_reply(503, error), 7)[0] is Outcome.FAILED  # no Retry-After
    assert classify(_reply(503, b"busy", "retry-after: 1\r\n"), 7)[0] is Outcome.FAILED
    assert classify(_reply(500, error), 7)[0] is Outcome.FAILED


def _reads(*rows: tuple[float, int, Outcome, int]) -> ReadLog:
    log = ReadLog()
    for sent, post, outcome, version in rows:
        log.add(sent, 0.001, post, outcome, version, "detail")
    return log


def test_a_read_sent_after_a_write_returned_must_see_its_version() -> None:
    writes = WriteLog()
    writes.accept(post=1, version=2, returned=10.0)
    writes.accept(post=1, version=3, returned=20.0)
    reads = _reads(
        (9.0, 1, Outcome.OK, 1),  # before any write returned: version 1 is fine
        (10.5, 1, Outcome.OK, 2),  # after v2 returned: fine
        (20.5, 1, Outcome.OK, 2),  # after v3 returned: stale
        (20.6, 2, Outcome.OK, 1),  # another post, never written
        (20.7, 1, Outcome.FAILED, -1),  # not a read that returned content
    )
    stale, found = count_stale(reads, writes)
    assert stale == 1
    assert [(read.post, read.seen, read.expected, read.acknowledged) for read in found] == [
        (1, 2, 3, 20.0)
    ]


def test_a_read_sent_at_the_instant_a_write_returned_is_not_held_to_it() -> None:
    writes = WriteLog()
    writes.accept(post=1, version=2, returned=10.0)
    assert count_stale(_reads((10.0, 1, Outcome.OK, 1)), writes)[0] == 0


def test_a_stale_reads_age_runs_from_the_write_that_replaced_what_it_got() -> None:
    writes = WriteLog()
    writes.accept(post=1, version=2, returned=10.0)
    writes.accept(post=1, version=3, returned=11.0)
    writes.accept(post=1, version=4, returned=12.0)
    reads = _reads(
        (12.5, 1, Outcome.OK, 3),  # v3 replaced by v4 at 12.0: 0.5 s old
        (12.6, 1, Outcome.OK, 1),  # v1 replaced by v2 at 10.0: 2.6 s old
        (12.7, 1, Outcome.OK, 4),  # the newest: not stale
    )
    found = stale_reads(reads, writes)
    assert [(read.seen, read.expected, read.replaced) for read in found] == [
        (3, 4, 12.0),
        (1, 4, 10.0),
    ]
    assert [round(read.age, 6) for read in found] == [0.5, 2.6]


def test_a_bound_allows_only_stale_reads_younger_than_it() -> None:
    writes = WriteLog()
    writes.accept(post=1, version=2, returned=10.0)
    reads = _reads(
        (9.9, 2, Outcome.OK, 1),  # no write of post 2: never stale
        (10.5, 1, Outcome.OK, 1),  # 0.5 s old: within a 1.5 s bound
        (11.6, 1, Outcome.OK, 1),  # 1.6 s old: past it
    )
    young, old = stale_reads(reads, writes)
    assert within_bound(young, 1.5)
    assert not within_bound(old, 1.5)
    assert not within_bound(young, None)  # no bound: no stale read is allowed
    fault = Marks(started=0.0, began=10.2, ended=20.0, during_until=20.0, stopped=30.0)
    assert during_fault(young, 1.5, fault)
    later = Marks(started=0.0, began=10.6, ended=20.0, during_until=20.0, stopped=30.0)
    assert not during_fault(young, 1.5, later)  # sent before the fault began
    over = Marks(started=0.0, began=5.0, ended=8.0, during_until=8.0, stopped=30.0)
    assert not during_fault(young, 1.5, over)  # sent more than the bound after it ended
    whole_run = Marks(started=0.0, began=None, ended=None, during_until=None, stopped=30.0)
    assert not during_fault(young, 1.5, whole_run)


def test_clear_503s_are_allowed_only_while_the_database_is_down() -> None:
    reads = _reads(
        (1.0, 1, Outcome.UNAVAILABLE, -1),  # before the outage: a failure
        (5.0, 1, Outcome.UNAVAILABLE, -1),  # during it: allowed
        (5.0, 1, Outcome.HUNG, -1),  # during it, but hung: a failure
        (12.0, 1, Outcome.UNAVAILABLE, -1),  # after it: a failure
        (12.0, 1, Outcome.WRONG, -1),  # counted apart, as wrong
    )
    assert count_failures(reads, (4.0, 10.0)) == (3, 1, 1)
    assert count_failures(reads, None) == (4, 1, 0)


def test_writes_that_failed_while_the_database_was_down_are_not_counted() -> None:
    writes = WriteLog()
    writes.fail(sent=5.0, ended=5.1, detail="503")
    writes.fail(sent=11.0, ended=11.1, detail="503")
    assert count_failed_writes(writes, (4.0, 10.0)) == 1
    assert count_failed_writes(writes, None) == 2


def _scrape(at: float, hits: int, errors: int) -> Scrape:
    text = (
        f'{CACHE_OPERATIONS}{{role="read",command="GET",outcome="hit"}} {hits}\n'
        f'{CACHE_OPERATIONS}{{role="read",command="GET",outcome="circuit_open"}} {errors}\n'
    )
    return Scrape.parse(text, at)


def test_the_hit_ratio_counts_reads_answered_from_memory() -> None:
    def scrape(gets: int, hits: int, near_hits: int) -> Scrape:
        text = (
            f'{CACHE_OPERATIONS}{{role="read",command="GET",outcome="hit"}} {hits}\n'
            f'{CACHE_OPERATIONS}{{role="read",command="GET",outcome="miss"}} {gets - hits}\n'
            f'{NEAR_CACHE_READS}{{outcome="hit"}} {near_hits}\n'
            f'{NEAR_CACHE_READS}{{outcome="miss"}} {gets}\n'
        )
        return Scrape.parse(text, 0.0)

    # 100 GETs (the near cache's misses), 50 of them hits; 300 reads answered from memory.
    assert hit_ratio(scrape(0, 0, 0), scrape(100, 50, 300)) == 350 / 400
    assert hit_ratio(scrape(0, 0, 0), scrape(0, 0, 0)) is None


def test_recovery_is_the_first_window_with_hits_back_and_no_failed_read() -> None:
    scrapes = [
        _scrape(10.0, 100, 0),
        _scrape(10.1, 100, 50),  # hit ratio 0
        _scrape(10.2, 120, 80),  # 0.4 of the reads: below half of 0.9
        _scrape(10.3, 170, 80),  # 1.0, but a read sent in it failed
        _scrape(10.4, 220, 80),  # 1.0: recovered at its end
    ]
    reads = _reads((10.25, 1, Outcome.FAILED, -1))
    recovery = recovery_time(scrapes, reads, baseline=0.9, ended=10.0)
    assert recovery is not None
    assert round(recovery, 6) == 0.4
    assert recovery_time(scrapes[:4], reads, baseline=0.9, ended=10.0) is None
    assert recovery_time(scrapes, reads, baseline=None, ended=10.0) is None


def test_faults_are_chosen_by_name_in_the_matrix_order() -> None:
    assert [fault.name for fault in faults_named("slow, refused")] == ["refused", "slow"]
    assert [fault.name for fault in faults_named(None)] == list(FAULT_NAMES)
    assert len(FAULT_NAMES) == 12
    assert FAULT_NAMES[-2:] == ("near-tracking-killed", "near-partitioned")
    with pytest.raises(BenchError, match="unknown fault nope"):
        faults_named("refused,nope")


def _line(logger: str, message: str) -> str:
    return json.dumps({"level": "WARNING", "logger": logger, "message": message})


def test_a_log_excerpt_shows_each_loggers_first_line_before_the_many_of_one() -> None:
    reconnects = [_line("postal.cache.tracking", f"reconnect {i}") for i in range(30)]
    rare = _line("postal.cache.invalidation", "cache invalidation failed, will retry")
    lines = [*reconnects[:25], rare, "Traceback (most recent call last):", *reconnects[25:]]
    excerpt = log_excerpt(lines, 5)
    assert excerpt == [*reconnects[:3], rare, "Traceback (most recent call last):"]
    assert log_excerpt(lines[:2], 5) == lines[:2]
