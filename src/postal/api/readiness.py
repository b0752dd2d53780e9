"""What `/readyz` answers: ready while this process can serve reads, and what is degraded.

Readiness decides whether the Service sends a pod any traffic at all. A pod is worth sending
traffic to while it can answer something useful:

| database | the cache serves | answer | `status`      | `degraded`              |
|----------|------------------|--------|---------------|-------------------------|
| answers  | yes              | 200    | `ok`          | `[]`                    |
| answers  | no               | 200    | `degraded`    | `["cache"]`             |
| down     | yes              | 200    | `degraded`    | `["database"]`          |
| down     | no               | 503    | `unavailable` | `["database", "cache"]` |
| (the app has not started, or has stopped) | | 503 | `starting` | |

**The cache serves** when this process could answer a read from it right now: the server reads
go to answers a PING within the GET deadline, through its circuit breaker (an open breaker sends
every read to the database, so it does not serve), or the near cache is live (its tracking
confirmed and its heartbeat recent: its entries are answered from memory, and coherent). It says
nothing of how much is cached: while the database is down, a read of a post that is not cached
gets 503 with Retry-After, as writes do (`errors.database_unavailable`).

**Why ready without the database.** When the database is down it is down for every pod: pods
that went unready would drop every read, cached ones included, which is what they could still
serve. The cost: a pod that alone lost the database (a partition of its own) keeps its share of
traffic and answers that share's writes and misses with 503, where unready it would have left
them to the other pods. `POSTAL_READY_WITHOUT_DATABASE=false` brings back the strict rule:
ready only while the database answers.

Both checks run at once, each bounded (the database by `timeout`, the PING by the GET
deadline), so the answer comes within `timeout`: inside the probe's own timeout.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from postal.api.status import cache_report
from postal.cache import CacheError
from postal.storage.health import database_reachable

READY, NOT_READY = 200, 503

MESSAGES = {
    (): "serving",
    ("cache",): "the cache does not answer: every read goes to the database",
    ("database",): (
        "the database is unavailable: cached reads are answered; writes and reads of what is"
        " not cached get 503 with Retry-After"
    ),
    ("database", "cache"): "neither the database nor the cache answers",
}


@dataclass(frozen=True, slots=True)
class Checks:
    """What the checks found: each problem in words (None: fine), and the near cache's state."""

    database: str | None
    redis: str | None
    near_live: bool

    @property
    def cache_serves(self) -> bool:
        return self.redis is None or self.near_live


def decide(checks: Checks, *, without_database: bool) -> tuple[int, str, list[str]]:
    """(HTTP status, `status`, what is degraded) for what the checks found; see the module.
    `without_database`: whether the cache alone keeps the pod ready."""
    degraded = [
        part
        for part, fine in (("database", checks.database is None), ("cache", checks.cache_serves))
        if not fine
    ]
    if not degraded:
        return READY, "ok", degraded
    if checks.database is None or (without_database and checks.cache_serves):
        return READY, "degraded", degraded
    return NOT_READY, "unavailable", degraded


async def redis_problem(cache: Any) -> str | None:
    """None when a PING on the read role answers (see `RedisClient.ping`); else why not."""
    try:
        await cache.ping()
    except CacheError as exc:
        return str(exc)
    return None


async def run_checks(state: Any, timeout: float) -> Checks:
    """Both checks at once; see the module."""
    database, redis = await asyncio.gather(
        database_reachable(state.engine, timeout), redis_problem(state.cache)
    )
    near = state.near
    return Checks(database, redis, near_live=near is not None and near.stats().live)


def started(state: Any) -> bool:
    """Whether the app's lifespan has built what the checks look at (and not torn it down)."""
    return getattr(state, "posts", None) is not None


async def readiness(state: Any, timeout: float) -> tuple[int, dict[str, Any]]:
    """`/readyz`'s status code and JSON document."""
    if not started(state):
        return NOT_READY, {"status": "starting", "degraded": [], "message": "not started"}
    checks = await run_checks(state, timeout)
    code, status, degraded = decide(
        checks, without_database=state.settings.postal_ready_without_database
    )
    message = MESSAGES[tuple(degraded)]
    if code == NOT_READY and degraded == ["database"]:
        message = "the database is unavailable (POSTAL_READY_WITHOUT_DATABASE=false)"
    database: dict[str, Any] = {"reachable": checks.database is None}
    if checks.database is not None:
        database["error"] = checks.database
    cache = {**cache_report(state), "serves": checks.cache_serves, "answers": checks.redis is None}
    if checks.redis is not None:
        cache["error"] = checks.redis
    document = {
        "status": status,
        "degraded": degraded,
        "message": message,
        "database": database,
        "cache": cache,
    }
    return code, document
