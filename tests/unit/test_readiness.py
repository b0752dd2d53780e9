"""`/readyz`'s decision, over every combination of what its checks can find."""

import pytest

from postal.api.readiness import NOT_READY, READY, Checks, decide

DOWN = "ConnectionRefusedError"


@pytest.mark.parametrize(
    ("checks", "without_database", "expected"),
    [
        (Checks(None, None, near_live=False), True, (READY, "ok", [])),
        (Checks(None, None, near_live=True), True, (READY, "ok", [])),
        # the cache down: reads go to the database; ready, degraded
        (Checks(None, DOWN, near_live=False), True, (READY, "degraded", ["cache"])),
        (Checks(None, DOWN, near_live=False), False, (READY, "degraded", ["cache"])),
        # the database down: ready while the cache serves, from Redis or from memory
        (Checks(DOWN, None, near_live=False), True, (READY, "degraded", ["database"])),
        (Checks(DOWN, DOWN, near_live=True), True, (READY, "degraded", ["database"])),
        # both down: nothing to serve
        (
            Checks(DOWN, DOWN, near_live=False),
            True,
            (NOT_READY, "unavailable", ["database", "cache"]),
        ),
        # the strict rule: the database required
        (Checks(DOWN, None, near_live=True), False, (NOT_READY, "unavailable", ["database"])),
    ],
)
def test_ready_while_something_can_be_served(
    checks: Checks, without_database: bool, expected: tuple[int, str, list[str]]
) -> None:
    assert decide(checks, without_database=without_database) == expected
