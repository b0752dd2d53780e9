"""Logging set-up and the slow-operation log.

The slow-operation log subscribes to the cache layer's events (see `cache.events`): one structured
line per operation slower than the threshold, with role, command, key prefix, duration, outcome and
pool state. Keys are cut to their prefix (`post:{42}` -> `post`) so the log names the kind of data,
not the data.

It logs at most `max_lines_per_second` lines, each saying how many slow operations were left
out before it: when the process is saturated every operation is slow (its duration includes the
wait for the event loop), and a line per operation would spend the CPU the process lacks on
writing warnings.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

from postal.cache.events import CacheEvent

SLOW_LOGGER = "postal.cache.slow"


def configure_logging(level: str = "INFO") -> None:
    """One line per record on stderr: time, level, logger, message (structured fields inline)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def key_prefix(key: str | None) -> str:
    """The kind of key (`post:{42}` -> `post`); "-" for a key with no prefix: it is all data."""
    if not key or ":" not in key:
        return "-"
    return key.split(":", 1)[0]


class SlowOperationLog:
    """A cache listener that logs every operation at or above `threshold` seconds."""

    def __init__(
        self,
        threshold: float,
        logger: logging.Logger | None = None,
        *,
        max_lines_per_second: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self._logger = logger or logging.getLogger(SLOW_LOGGER)
        self._rate = max_lines_per_second
        self._clock = clock
        self._allowance = max_lines_per_second  # a token bucket holding one second's lines
        self._last = clock()
        self.suppressed = 0  # slow operations not logged since the last line

    def __call__(self, event: CacheEvent) -> None:
        if event.duration < self.threshold:
            return
        now = self._clock()
        self._allowance = min(self._rate, self._allowance + (now - self._last) * self._rate)
        self._last = now
        if self._allowance < 1:
            self.suppressed += 1
            return
        self._allowance -= 1
        fields = {
            "role": event.role,
            "command": event.command,
            "key_prefix": key_prefix(event.key),
            "duration_ms": round(event.duration * 1000, 3),
            "outcome": str(event.outcome),
            "pool_in_use": event.in_use,
            "pool_idle": event.idle,
        }
        if self.suppressed:
            fields["suppressed"] = self.suppressed  # left out since the previous line
            self.suppressed = 0
        text = " ".join(f"{name}={value}" for name, value in fields.items())
        self._logger.warning("slow cache operation %s", text, extra={"cache": fields})
