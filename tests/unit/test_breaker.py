"""The circuit breaker's state machine, on a fake clock."""

from __future__ import annotations

import pytest

from postal.cache import BEFORE, TUNED, BreakerChange, BreakerConfig, BreakerState, CircuitBreaker
from tests.support.clock import SetClock

THRESHOLD, COOLDOWN = 3, 1.0


@pytest.fixture
def clock() -> SetClock:
    return SetClock(100.0)


@pytest.fixture
def breaker(clock: SetClock) -> CircuitBreaker:
    return CircuitBreaker(THRESHOLD, COOLDOWN, clock, name="read")


def fail(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        assert breaker.allow()
        breaker.record_failure()


def test_closed_lets_everything_through_and_a_success_resets_the_count(
    breaker: CircuitBreaker,
) -> None:
    fail(breaker, THRESHOLD - 1)
    assert breaker.allow()
    breaker.record_success()
    fail(breaker, THRESHOLD - 1)  # not consecutive with the first ones: still closed
    assert breaker.state is BreakerState.CLOSED
    assert breaker.stats().consecutive_failures == THRESHOLD - 1


def test_threshold_consecutive_failures_open_it(breaker: CircuitBreaker) -> None:
    fail(breaker, THRESHOLD)
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()
    assert not breaker.allow()
    stats = breaker.stats()
    assert (stats.opened, stats.rejected) == (1, 2)


def test_after_the_cooldown_exactly_one_probe_goes_through(
    breaker: CircuitBreaker, clock: SetClock
) -> None:
    fail(breaker, THRESHOLD)
    clock.now += COOLDOWN - 0.001
    assert not breaker.allow()
    assert breaker.retry_in() == pytest.approx(0.001)
    clock.now += 0.001
    assert breaker.allow()  # the probe
    assert breaker.state is BreakerState.HALF_OPEN
    assert not breaker.allow()  # the probe is in flight: nobody else
    clock.now += 10 * COOLDOWN
    assert not breaker.allow()  # however long it takes


def test_a_successful_probe_closes_it(breaker: CircuitBreaker, clock: SetClock) -> None:
    fail(breaker, THRESHOLD)
    clock.now += COOLDOWN
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert all(breaker.allow() for _ in range(10))
    fail(breaker, THRESHOLD - 1)  # the count starts again from zero
    assert breaker.state is BreakerState.CLOSED


def test_a_failed_probe_opens_it_for_a_fresh_cooldown(
    breaker: CircuitBreaker, clock: SetClock
) -> None:
    fail(breaker, THRESHOLD)
    clock.now += COOLDOWN + 5.0
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert breaker.stats().opened == 2
    clock.now += COOLDOWN - 0.001  # counted from the failed probe, not from the first opening
    assert not breaker.allow()
    clock.now += 0.001
    assert breaker.allow()


def test_an_abandoned_probe_frees_the_slot_for_the_next_call(
    breaker: CircuitBreaker, clock: SetClock
) -> None:
    fail(breaker, THRESHOLD)
    clock.now += COOLDOWN
    assert breaker.allow()
    breaker.record_cancelled()  # the probing caller was cancelled: no verdict
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow()  # the next call probes instead
    assert not breaker.allow()


def test_late_results_while_open_change_nothing(breaker: CircuitBreaker, clock: SetClock) -> None:
    fail(breaker, THRESHOLD)
    breaker.record_success()  # an operation started before it opened, ending well
    breaker.record_failure()  # ...or badly: the cooldown is not extended
    assert breaker.state is BreakerState.OPEN
    clock.now += COOLDOWN
    assert breaker.allow()


def test_listeners_see_every_change(breaker: CircuitBreaker, clock: SetClock) -> None:
    changes: list[BreakerChange] = []
    breaker.subscribe(changes.append)
    fail(breaker, THRESHOLD)
    clock.now += COOLDOWN
    breaker.allow()
    breaker.record_success()
    assert [(change.old, change.new) for change in changes] == [
        (BreakerState.CLOSED, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.HALF_OPEN, BreakerState.CLOSED),
    ]
    assert {change.name for change in changes} == {"read"}
    assert changes[0].at == 100.0


@pytest.mark.parametrize(("threshold", "cooldown"), [(0, 1.0), (1, 0.0)])
def test_refuses_unusable_settings(threshold: int, cooldown: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        CircuitBreaker(threshold, cooldown)
    with pytest.raises(ValueError, match="must be"):
        BreakerConfig(failure_threshold=threshold, cooldown=cooldown)


def test_the_tuned_profile_has_a_breaker_and_the_before_profile_none() -> None:
    assert TUNED.breaker == BreakerConfig(failure_threshold=5, cooldown=1.0)
    assert BEFORE.breaker is None


def test_a_burst_of_failures_right_after_a_success_does_not_open_it(clock: SetClock) -> None:
    breaker = CircuitBreaker(THRESHOLD, COOLDOWN, clock, failure_window=0.25)
    breaker.record_success()
    clock.now += 0.01
    fail(breaker, THRESHOLD * 10)  # e.g. cold-pool dials expiring together on a busy process
    assert breaker.state is BreakerState.CLOSED
    clock.now += 0.25  # still nothing but failures, a window after the last success: Redis is down
    fail(breaker, 1)
    assert breaker.state is BreakerState.OPEN


def test_a_success_inside_the_window_starts_it_again(clock: SetClock) -> None:
    breaker = CircuitBreaker(THRESHOLD, COOLDOWN, clock, failure_window=0.25)
    clock.now += 0.2
    fail(breaker, THRESHOLD)
    breaker.record_success()
    clock.now += 0.2
    fail(breaker, THRESHOLD)
    assert breaker.state is BreakerState.CLOSED
    clock.now += 0.05
    fail(breaker, 1)
    assert breaker.state is BreakerState.OPEN
