import logging

import pytest

from postal.cache import CacheEvent, Outcome
from postal.observability.logging import SlowOperationLog, key_prefix, record_fields


def event(duration: float, key: str | None = "post:{42}") -> CacheEvent:
    return CacheEvent(
        role="read", command="GET", key=key, duration=duration, outcome=Outcome.HIT, in_use=3,
        idle=7,
    )  # fmt: skip


def test_logs_one_structured_line_per_slow_operation(caplog: pytest.LogCaptureFixture) -> None:
    log = SlowOperationLog(threshold=0.010)
    with caplog.at_level(logging.WARNING, logger="postal.cache.slow"):
        log(event(0.0099))
        log(event(0.025))
    assert len(caplog.records) == 1
    record = caplog.records[0]
    assert record.getMessage() == "slow cache operation"
    assert record_fields(record) == {  # fields of their own: keys in JSON, key=value in text
        "role": "read",
        "command": "GET",
        "key_prefix": "post",
        "duration_ms": 25.0,
        "outcome": "hit",
        "pool_in_use": 3,
        "pool_idle": 7,
    }


def test_names_the_kind_of_key_not_the_key() -> None:
    assert key_prefix("post:{42}") == "post"
    assert key_prefix("session:abc:def") == "session"
    assert key_prefix(None) == "-"
    assert key_prefix("greeting") == "-"


def test_at_most_the_rate_is_logged_and_the_next_line_counts_what_was_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    log = SlowOperationLog(threshold=0.010, max_lines_per_second=2, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="postal.cache.slow"):
        for _ in range(50):  # a saturated second: every operation is slow
            log(event(0.050))
        assert len(caplog.records) == 2
        assert log.suppressed == 48
        now[0] += 0.5  # half a second later, one more line's worth
        log(event(0.050))
    assert len(caplog.records) == 3
    assert record_fields(caplog.records[-1])["suppressed"] == 48
    assert "suppressed" not in record_fields(caplog.records[0])
    assert log.suppressed == 0
