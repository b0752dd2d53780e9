"""A clock for unit tests: it reads what the test set (`now`), and moves only when the test moves
it. Passed wherever the code under test takes a `clock` or `monotonic` callable."""

from __future__ import annotations


class SetClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
