"""What a benchmark raises when it cannot run, and the failures its commands report.

A benchmark also drives the test rigs (`postal_testing`: child servers, proxies, certificates),
which raise `RigError`; a command reports both the same way, as one line and exit code 2.
"""

from __future__ import annotations

from postal_testing import RigError


class BenchError(Exception):
    """The benchmark cannot run: bad options, a target that cannot be prepared, a failed tool."""


class NotLoopback(BenchError):
    """The URL points somewhere other than this machine; a load generator refuses it."""


# What a bench command catches and prints as one line (exit code 2), rather than a traceback.
FAILURES = (BenchError, RigError)
