"""What a client and Kubernetes see of Postal while its database is down: `/readyz`, and a write.

`OutageProbe` runs beside the load from the moment the database goes down to the moment it is
back, on a keep-alive connection of its own: every `PROBE_INTERVAL` it asks `/readyz`, as the
kubelet would (more often), and every `WRITE_EVERY`th time it also creates a post, as a client
would. It counts what came back, for the database-down fault's evidence:

- `/readyz` answers: ready (200) or not, and whether the document said `degraded:
  ["database"]`. While the cache serves, the pod must stay ready, saying the database is what is
  degraded (`postal.api.readiness`);
- writes: a clear 503 (a JSON error body and Retry-After, as the readers' replies are judged,
  `load.classify`), or anything else.

A request that fails outright (refused, reset, no answer within PROBE_TIMEOUT) is counted too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass

from postal_bench.faults.load import Outcome, classify
from postal_bench.faults.rig import POSTS_PATH, PostalChild, post_document
from postal_bench.loadgen import Connection, Reply

READYZ_PATH = "/readyz"
PROBE_INTERVAL = 0.1  # s between two probes
PROBE_TIMEOUT = 3.0  # s: the kubelet's timeout in the shipped manifests
WRITE_EVERY = 5  # probes: a write with every fifth
_FAILURES = (OSError, EOFError, asyncio.LimitOverrunError, ValueError, TimeoutError)


@dataclass(slots=True)
class OutageCounts:
    ready: int = 0  # /readyz answered 200
    unready: int = 0  # /readyz answered anything else
    database_degraded: int = 0  # ... with `degraded: ["database"]` in its document
    writes_unavailable: int = 0  # writes answered 503 with a JSON error and Retry-After
    writes_other: int = 0  # writes answered anything else
    failed: int = 0  # probes with no answer: refused, reset, timed out
    first_unexpected: str = ""  # the first answer that was not what the outage should give


class OutageProbe:
    """Asks Postal `/readyz` (and now and then a write) from `start()` to `stop()`."""

    def __init__(self, postal: PostalChild) -> None:
        self._postal = postal
        self._readyz = postal.path_target(READYZ_PATH).request()
        self._write = postal.write_request("POST", POSTS_PATH, post_document(0, 0))
        self.counts = OutageCounts()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> OutageCounts:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        return self.counts

    async def _run(self) -> None:
        connection: Connection | None = None
        probes = 0
        try:
            while True:
                probes += 1
                try:
                    if connection is None:
                        connection = await Connection.open(self._postal.target)
                    async with asyncio.timeout(PROBE_TIMEOUT):
                        self._note_ready(await connection.exchange(self._readyz))
                        if probes % WRITE_EVERY == 1:
                            self._note_write(await connection.exchange(self._write))
                except _FAILURES as exc:
                    self.counts.failed += 1
                    self._unexpected(f"{type(exc).__name__}: {exc}")
                    if connection is not None:
                        await connection.aclose()
                        connection = None
                if connection is not None and not connection.reusable:
                    await connection.aclose()
                    connection = None
                await asyncio.sleep(PROBE_INTERVAL)
        finally:
            if connection is not None:
                await connection.aclose()

    def _note_ready(self, reply: Reply) -> None:
        counts = self.counts
        if reply.status != 200:
            counts.unready += 1
            self._unexpected(f"{READYZ_PATH}: HTTP {reply.status}: {reply.body[:120]!r}")
        else:
            counts.ready += 1
        try:
            degraded = json.loads(reply.body).get("degraded")
        except (ValueError, AttributeError):
            degraded = None
        if degraded == ["database"]:
            counts.database_degraded += 1

    def _note_write(self, reply: Reply) -> None:
        outcome, _, detail = classify(reply, 0)
        if outcome is Outcome.UNAVAILABLE:
            self.counts.writes_unavailable += 1
        else:
            self.counts.writes_other += 1
            self._unexpected(f"POST {POSTS_PATH}: {detail or reply.status}")

    def _unexpected(self, what: str) -> None:
        self.counts.first_unexpected = self.counts.first_unexpected or what
