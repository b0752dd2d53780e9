"""Load on the posts API while something happens to Redis: counts failed and stale reads.

Readers read posts in a loop; one writer updates them, and once each update has returned, every
read that *starts* afterwards must show that version or a later one (a stale read otherwise).
`during` runs alongside (kill a replica, fail the primary over, migrate a slot) and the load goes
on until it has finished and `settle` seconds more have passed. Counts, not timings, are asserted.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from tests.integration.api_support import AUTH, Api


@dataclass
class LoadReport:
    reads: int = 0
    failed_reads: list[str] = field(default_factory=list)  # status and body of each
    stale_reads: list[str] = field(default_factory=list)  # post, version seen, version expected
    writes: int = 0
    failed_writes: list[str] = field(default_factory=list)
    # (seconds since the load began, ok) of each write: when writes stopped and resumed
    write_times: list[tuple[float, bool]] = field(default_factory=list)

    def longest_write_gap(self) -> float:
        """The longest time between two successful writes (a failover's cost to writers)."""
        times = [at for at, ok in self.write_times if ok]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


async def create_posts(api: Api, count: int) -> list[int]:
    ids = []
    for number in range(count):
        created = await api.create(title=f"Post {number}", body=f"body {number} v1")
        ids.append(int(created["id"]))
    return ids


async def load_while(
    api: Api,
    post_ids: list[int],
    during: Callable[[], Awaitable[object]],
    *,
    readers: int = 8,
    settle: float = 1.0,
    write_pause: float = 0.01,
) -> LoadReport:
    """Read and write `post_ids` until `during()` is done, then `settle` seconds more."""
    report = LoadReport()
    acknowledged: dict[int, tuple[float, int]] = {}  # post -> (when the write returned, version)
    stop = asyncio.Event()
    began = time.monotonic()

    async def read_forever() -> None:
        while not stop.is_set():
            post = random.choice(post_ids)
            started = time.monotonic()
            expected = acknowledged.get(post)
            response = await api.client.get(f"/api/v1/posts/{post}")
            report.reads += 1
            if response.status_code != 200:
                report.failed_reads.append(f"{response.status_code} {response.text[:200]}")
                continue
            version = int(response.json()["version"])
            if expected is not None and expected[0] <= started and version < expected[1]:
                report.stale_reads.append(
                    f"post {post}: read v{version}, v{expected[1]} written,"
                    f" read at {started - began:.3f} s, written at {expected[0] - began:.3f} s"
                )
            # A read served without I/O (a load shared with others, just finished) returns
            # without suspending: yield, or readers in a tight loop starve the event loop.
            await asyncio.sleep(0)

    async def write_forever() -> None:
        while not stop.is_set():
            post = random.choice(post_ids)
            document = {"title": "t", "body": f"written at {time.monotonic()}", "author": "w"}
            response = await api.client.put(f"/api/v1/posts/{post}", json=document, headers=AUTH)
            report.writes += 1
            now = time.monotonic()
            ok = response.status_code == 200
            report.write_times.append((now - began, ok))
            if ok:
                acknowledged[post] = (now, int(response.json()["version"]))
            else:
                report.failed_writes.append(f"{response.status_code} {response.text[:200]}")
            await asyncio.sleep(write_pause)

    tasks = [asyncio.create_task(read_forever()) for _ in range(readers)]
    tasks.append(asyncio.create_task(write_forever()))
    try:
        await during()
        await asyncio.sleep(settle)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    return report
