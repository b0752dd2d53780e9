"""Go-style durations ("100ms", "2s", "5m", "1m30s") to seconds and back.

Operators copy these values from go-redis configurations and runbooks, so the syntax is Go's
`time.ParseDuration`: a sequence of decimal numbers, each with a unit (ns, us/µs, ms, s, m, h).
A bare "0" is accepted, as in Go; any other bare number is refused, because "100" could mean
100 ms or 100 s and guessing wrong is how a 3 s timeout hides in a config file.
"""

from __future__ import annotations

import re

_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")

EXPECTED = "a duration such as 100ms, 2s, 5m or 1m30s"


def parse_duration(text: str) -> float:
    """Return the duration in seconds; raise ValueError naming what was expected."""
    value = text.strip()
    if value == "0":
        return 0.0
    position = 0
    total = 0.0
    while position < len(value):
        match = _PART.match(value, position)
        if match is None:
            raise ValueError(f"expected {EXPECTED}")
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if position == 0:
        raise ValueError(f"expected {EXPECTED}")
    return total


def format_duration(seconds: float) -> str:
    """The shortest readable form: 0.1 -> "100ms", 300 -> "5m", 1.5 -> "1.5s"."""
    if seconds == 0:
        return "0s"
    if seconds < 1e-3:
        return f"{seconds * 1e6:g}us"
    if seconds < 1:
        return f"{seconds * 1e3:g}ms"
    if seconds < 60 or seconds % 60:
        return f"{seconds:g}s"
    if seconds % 3600:
        return f"{seconds / 60:g}m"
    return f"{seconds / 3600:g}h"
