"""Logging set-up and the slow-operation log.

The slow-operation log subscribes to the cache layer's events (see `cache.events`): one structured
line per operation slower than the threshold, with role, command, key prefix, duration, outcome and
pool state. Keys are cut to their prefix (`post:{42}` -> `post`) so the log names the kind of data,
not the data.
"""

from __future__ import annotations

import logging
import sys

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

    def __init__(self, threshold: float, logger: logging.Logger | None = None) -> None:
        self.threshold = threshold
        self._logger = logger or logging.getLogger(SLOW_LOGGER)

    def __call__(self, event: CacheEvent) -> None:
        if event.duration < self.threshold:
            return
        fields = {
            "role": event.role,
            "command": event.command,
            "key_prefix": key_prefix(event.key),
            "duration_ms": round(event.duration * 1000, 3),
            "outcome": str(event.outcome),
            "pool_in_use": event.in_use,
            "pool_idle": event.idle,
        }
        text = " ".join(f"{name}={value}" for name, value in fields.items())
        self._logger.warning("slow cache operation %s", text, extra={"cache": fields})
