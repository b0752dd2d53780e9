"""The JSON the service sends, as pydantic models, for the OpenAPI document only.

No route builds its answer from these: posts, pages and versions are encoded once in
`posts/representation.py` and sent as cached bytes, and errors by `api/errors.py`. Routes name
these models in `responses=` (and `api/openapi.py` in the hand-written read paths), so the
document describes those bytes without FastAPI re-serialising anything. `extra="forbid"` makes
each schema closed (`additionalProperties: false`): a field the service sends and the document
lacks is found by the schemathesis test (`tests/e2e/test_openapi_conformance.py`), as is a
documented field the service does not send.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from postal.cache import (
    BreakerConfig,
    CacheTimeouts,
    InvalidatorStats,
    NearCacheStats,
    PoolConfig,
    PoolStats,
    ReadThroughStats,
)
from postal.imports.csv_fields import RowProblem
from postal.posts.models import MAX_ID

Id = Field(ge=1, le=MAX_ID)
VersionNumber = Field(ge=1)


class Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- Posts, pages, versions (`posts/representation.py`) --------------------------------------------


class PostOut(Closed):
    """A post at its current version (`ETag: "v<version>"`)."""

    id: int = Id
    title: str
    body: str
    author: str
    tags: list[str]
    version: int = VersionNumber
    created_at: datetime = Field(description="UTC, to the microsecond, with a `Z`")
    updated_at: datetime


class PostPage(Closed):
    """A page of posts, newest first."""

    items: list[PostOut]
    next_cursor: str | None = Field(description="The next page's `cursor`; null on the last page")


class VersionOut(Closed):
    """One version of a post, its body included."""

    post_id: int = Id
    version: int = VersionNumber
    title: str
    body: str
    author: str
    tags: list[str]
    created_at: datetime


class VersionSummary(Closed):
    """One version of a post in a list, without its body."""

    post_id: int = Id
    version: int = VersionNumber
    title: str
    author: str
    tags: list[str]
    created_at: datetime


class VersionPage(Closed):
    """A page of a post's versions, oldest first."""

    post_id: int = Id
    items: list[VersionSummary]
    next_cursor: str | None = Field(description="The next page's `cursor`; null on the last page")


# -- Errors (`api/errors.py`, and the middlewares' prepared refusals) ------------------------------


class ErrorDetail(Closed):
    code: str = Field(description="Stable and machine-readable: `invalid_id`, `too_long`, ...")
    message: str = Field(description="For people: what was wrong, and what to do")
    # Sent only when one input is to blame; never null.
    field: str | SkipJsonSchema[None] = Field(
        default=None, description="The input to blame: `title`, `tags.1`, `post_id`, `limit`"
    )


class ErrorBody(Closed):
    """Every error answer: 4xx and 5xx alike."""

    error: ErrorDetail


# -- The CSV import (`imports/importer.py`) --------------------------------------------------------


class RowError(Closed):
    line: int = Field(ge=1, description="1-based line of the file (the header is line 1)")
    column: str | None
    reason: RowProblem
    message: str


class ImportCacheStep(Closed):
    """The cache step after the commit; `pending`: Redis did not take it all, and the service
    retries in the background."""

    keys: int
    pipelines: int
    seconds: float
    warmed: int
    pending: bool


class ImportReport(Closed):
    committed: bool
    rows_read: int
    created: int
    updated: int
    invalid: int = Field(description="Every invalid row, reported or not")
    errors: list[RowError]
    errors_truncated: bool = Field(description="Whether some invalid rows are not in `errors`")
    seconds: float
    cache: ImportCacheStep | None = Field(description="null when nothing was committed")


class ImportRefusal(Closed):
    """Nothing was written: the error, and the report saying which rows were bad."""

    error: ErrorDetail
    report: ImportReport


# -- Operations (`routes/ops.py`, `api/readiness.py`, `api/status.py`) -----------------------------


class Health(Closed):
    status: Literal["ok"]


class CacheReport(Closed):
    """The cache's pools, breakers and counters: the cache's own stats dataclasses, as
    `api/status.py` sends them (`dataclasses.asdict`)."""

    connected: bool
    breaker: dict[str, Literal["closed", "open", "half_open"]]
    pools: dict[str, PoolStats] = Field(description="Per role, summed over its nodes")
    nodes: list[dict[str, Any]] = Field(description="Each node's pool stats, and its `breaker`")
    reads: ReadThroughStats
    near: NearCacheStats | None = Field(description="null without a near cache")
    invalidations: InvalidatorStats
    dns: dict[str, Any]


class ReadinessCache(CacheReport):
    serves: bool = Field(description="Whether this process could answer a read from the cache")
    answers: bool = Field(description="Whether Redis answers a PING")
    error: str | SkipJsonSchema[None] = None


class DatabaseCheck(Closed):
    reachable: bool
    error: str | SkipJsonSchema[None] = None


class Readiness(Closed):
    """What `/readyz` says, 200 and 503 alike; `database` and `cache` are absent while the
    process is `starting`."""

    status: Literal["ok", "degraded", "unavailable", "starting"]
    degraded: list[Literal["database", "cache"]]
    message: str
    database: DatabaseCheck | SkipJsonSchema[None] = None
    cache: ReadinessCache | SkipJsonSchema[None] = None


class Url(Closed):
    url: str = Field(description="Masked: no password")


class RedisUrls(Closed):
    read: Url
    write: Url
    key_prefix: str
    tls: bool


class StatusConfig(Closed):
    pools: dict[str, PoolConfig]
    deadlines: CacheTimeouts
    breaker: BreakerConfig | None
    dns_ttl: float | None
    slow_threshold: float | None


class Status(Closed):
    """This process at a glance (`postal stats` reads it)."""

    version: str
    pid: int
    uptime_seconds: float | None
    workers: int | None
    database: Url
    redis: RedisUrls
    config: StatusConfig
    cache: CacheReport
