"""Postal's settings, read from the environment once, in `load_settings()`, never at import.

Every variable, its default and its unit is listed in docs/configuration.md. A bad value stops
start-up with one line per bad variable naming it, the value given (a URL with its password
masked) and what was expected; `SettingsError` carries those lines.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from postal.cache import (
    EXPECTED_DURATION,
    BreakerConfig,
    CacheTimeouts,
    EarlyRefreshConfig,
    Kind,
    PipelineConfig,
    PoolConfig,
    Profile,
    TlsConfig,
    Topology,
    mask_url,
    parse_duration,
)
from postal.posts.models import DEFAULT_MAX_BODY_BYTES
from postal.tokens import token_problems

# With invalidations waiting for replicas, the SET deadline must hold a WAIT of at least a few
# milliseconds plus one Redis cron tick (100 ms) plus the reply (`cache.transport.replicas`).
MIN_WAITING_SET_DEADLINE = 0.150  # seconds
# Bounds on the early refresh's knobs, as on every input. beta * delta is about how long before
# its expiry a hot entry gets refreshed; these allow far more than any TTL here (minutes).
MAX_EARLY_REFRESH_BETA = 100.0
MAX_EARLY_REFRESH_MIN_DELTA = 60.0  # seconds
MAX_TURN_BUDGET = 1.0  # seconds (`api/turn_budget.py`)


class SettingsError(Exception):
    """The environment holds values Postal cannot start with; str() is one line per problem."""


def _duration(value: Any) -> Any:
    if isinstance(value, str):
        return parse_duration(value)
    return value


def _count(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip()
        if not text.isdigit():
            raise ValueError("expected a whole number >= 0")
        return int(text)
    return value


def _positive_count(value: Any) -> Any:
    """A whole number >= 1: `_count`, with the floor named in its one-line error."""
    try:
        value = _count(value)
    except ValueError:
        raise ValueError("expected a whole number >= 1") from None
    if isinstance(value, int) and value < 1:
        raise ValueError("expected a whole number >= 1")
    return value


def _stripped(value: Any) -> Any:
    """Surrounding whitespace (a newline from `echo > file`, a space pasted in) is no part of a
    token: left in, no client could ever match it."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, SecretStr):
        return SecretStr(value.get_secret_value().strip())
    return value


def _number(value: Any) -> Any:
    """A plain number (1.0, 2, 0.5), with the expectation named in its one-line error (pydantic's
    own says "duration", meant for the Duration fields)."""
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            raise ValueError("expected a number such as 1.0") from None
    return value


def _redis_url(value: Any) -> Any:
    if isinstance(value, str):
        Topology.from_url(value)  # raises ValueError with what is expected
    return value


Duration = Annotated[float, BeforeValidator(_duration)]
Count = Annotated[int, BeforeValidator(_count)]
PositiveCount = Annotated[int, BeforeValidator(_positive_count)]
Number = Annotated[float, BeforeValidator(_number)]
RedisUrl = Annotated[str, BeforeValidator(_redis_url)]
Access = Annotated[
    Literal["open", "token", "off"], BeforeValidator(lambda v: str(v).strip().lower())
]

_EXPECTED_BY_ERROR = {
    "bool_parsing": "expected true or false",
    "bool_type": "expected true or false",
    "int_parsing": "expected a whole number",
    "float_parsing": EXPECTED_DURATION,
}


class Settings(BaseSettings):
    """All of Postal's configuration. Field names are the environment variables, lower-cased."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    # HTTP server
    postal_host: str = "127.0.0.1"
    postal_port: Count = 8000
    postal_log_level: str = "INFO"
    # JSON lines when stderr is not a terminal (auto), or forced: auto, json or text
    postal_log_format: Annotated[
        Literal["auto", "json", "text"], BeforeValidator(lambda v: str(v).strip().lower())
    ] = "auto"
    # Writes (and /status) need `Authorization: Bearer <token>` when set; unset, the app answers
    # loopback clients only (`api/loopback.py`). At least 32 characters, surrounding whitespace
    # stripped, placeholders refused (`tokens.py`).
    postal_api_token: Annotated[SecretStr | None, BeforeValidator(_stripped)] = None
    # Who may read /metrics: open (anyone who reaches the port; Prometheus's annotation-based
    # scrape sends no credentials), token (the bearer token, as writes), or off (404).
    postal_metrics_access: Access = "open"
    # The OpenAPI pages (/docs, /redoc, /openapi.json): auto (on in loopback-only mode, off once a
    # token is set, i.e. once others can reach the service), on, or off.
    postal_docs: Annotated[
        Literal["auto", "on", "off"], BeforeValidator(lambda v: str(v).strip().lower())
    ] = "auto"
    # A list page holds posts while its JSON stays within this many bytes (always at least one
    # post); a page over it (one post larger than it) is answered but never cached. 1 MiB.
    postal_max_page_bytes: PositiveCount = 1_048_576
    # A post's body, in UTF-8 bytes; more is a 413 (1_000_000)
    postal_max_body_bytes: Count = DEFAULT_MAX_BODY_BYTES
    # A CSV import's whole request body (streamed, never held whole); more is a 413. 1 GiB.
    postal_max_import_bytes: Count = 1_073_741_824
    # CSV imports one worker runs at once; one more is refused at once with 429 and
    # Retry-After, before its body is read. Each holds a pooled database connection from its
    # first batch to its end, so the pool must keep room for everything else (checked below).
    postal_max_concurrent_imports: PositiveCount = 2
    # An import's whole body must have arrived within this (then 408, nothing written): a client
    # that trickles its file must not hold a transaction and a connection for as long as it
    # likes. 10 minutes is POSTAL_MAX_IMPORT_BYTES (1 GiB) at 1.8 MB/s.
    postal_import_body_timeout: Duration = 600.0
    # HTTP requests one worker has in flight (health probes and /metrics aside); one more gets a
    # fast 503 (`api/admission.py`). 256 is five times the read pool (50), so that a normal burst is
    # never refused: the benchmarks drive 100 keep-alive connections per worker (at most 100 in
    # flight) and their open-loop generator opens at most 256. And it is where waiting stops
    # paying: at the 2,500-10,000 cached reads/s one worker answers in `postal bench http`, the
    # 256th request queues 25-100 ms behind the others (Little's law), longer as load grows, when
    # a refusal that the balancer retries on another pod costs a millisecond.
    postal_max_in_flight: PositiveCount = 256
    # How long a turn of a worker's event loop may spend starting new HTTP requests; the rest
    # wait in line and start in later turns, after the replies that came in meanwhile
    # (`api/turn_budget.py`). 0: no budget. 1 ms is never reached below saturation; under
    # `postal bench seed`'s load it kept 99.5% of the cache GETs within 10 ms, and under
    # `postal bench http` hits kept 0.93x the bare route's req/s (docs/operations.md).
    postal_turn_budget: Duration = 0.001
    # What a client may hold of a worker (`cli/serve_protocol.py`, docs/operations.md#http-limits).
    # The request line and headers, in bytes: past it 431. 64 KiB is 8x what browsers and
    # proxies send at most (8 KiB is nginx's and Node's default buffer) and what Kestrel allows.
    postal_http_max_header_bytes: PositiveCount = 65_536
    # Header fields in one request: past it 431 (Kestrel's and Apache's default).
    postal_http_max_headers: PositiveCount = 100
    # From a request's first byte to the end of its headers; past it 408 and the connection closes.
    postal_http_header_timeout: Duration = 10.0
    # While a body is awaited, each window this long must bring at least
    # POSTAL_HTTP_BODY_MIN_RATE x its length in bytes (and at least one byte); else 408 and close.
    postal_http_body_timeout: Duration = 10.0
    postal_http_body_min_rate: Count = 1024  # bytes a second
    # An open connection with no request on it (a new one too) is closed after this long.
    postal_http_keep_alive_timeout: Duration = 5.0
    # Open connections per worker; one more is answered 503 at once and closed.
    postal_http_max_connections: PositiveCount = 1000
    # Move what start-up built into the garbage collector's permanent generation (`runtime.py`):
    # measured, it took a saturated worker's p99 from 68 ms to 17 ms. Off only to compare.
    postal_gc_freeze: bool = True
    # One JSON line per HTTP request (`api/access_log.py`), with its request id. Off: nothing on
    # the hot path; on, about as much CPU as a cached read itself (measured: docs/operations.md).
    postal_access_log: bool = False
    # OpenTelemetry spans for requests, cache operations and SQL statements, set up from the
    # OTEL_* environment (`observability/tracing.py`; needs postal[tracing]). Off: no tracer
    # provider, nothing on the hot path but one test (measured: docs/operations.md).
    postal_tracing: bool = False
    # `/readyz` stays ready while the database is down if the cache serves reads (`api/readiness`);
    # false: ready only while the database answers.
    postal_ready_without_database: bool = True
    # `postal serve`'s worker processes when --workers is not given: the name uvicorn, gunicorn
    # and Heroku-style platforms use. Unset: 1.
    web_concurrency: PositiveCount | None = None

    # Database: PostgreSQL in production; unset, the embedded SQLite file below
    database_url: str | None = None
    database_pool_size: Count = 10
    database_timeout: Duration = 5.0  # connect and statement timeout; then 503 with Retry-After
    # PostgreSQL ends a session left idle inside a transaction this long
    # (idle_in_transaction_session_timeout): an import waiting for a client that stopped sending
    # between two batches, or any transaction a bug left open. 0: never.
    database_idle_in_transaction_timeout: Duration = 30.0
    postal_data_dir: str = "var"  # the embedded default's SQLite file and Redis live here

    # Read-through cache
    post_cache_ttl: Duration = 300.0
    list_cache_ttl: Duration = 30.0
    not_found_cache_ttl: Duration = 5.0
    cache_ttl_jitter: float = 0.1  # each TTL is stretched by up to this fraction, at random
    cache_max_pending_fills: Count = 1000
    # Keys whose invalidation Redis did not take, remembered one by one per process to be
    # retried; past this (an import while Redis is down), one coarse invalidation of the whole
    # cache is retried instead (`cache/policy/invalidation.py`): memory stays bounded.
    cache_max_pending_invalidations: Count = 10_000
    # The near cache (`cache/policy/near.py`): entries in each worker's memory, dropped when
    # Redis says their keys changed. Its TTL stays below the Redis TTLs', so an entry Redis let
    # expire without deleting it yet (no invalidation sent) does not outlive it by much.
    near_cache_enabled: bool = True
    near_cache_max_bytes: PositiveCount = 64 * 1024 * 1024
    near_cache_ttl: Duration = 10.0
    # Early refresh (`cache/policy/refresh.py`): a hit whose Redis entry nears its expiry may
    # reload it in the background (XFetch), so that no reader of a hot key waits on the database
    # when its TTL ends. BETA: more refreshes earlier. MIN_DELTA: the floor under the measured
    # load time, which sets how close to the expiry refreshes begin. MAX_IN_FLIGHT: refreshes
    # running at once per worker, each holding a database connection; past it, dropped.
    cache_early_refresh: bool = True
    cache_early_refresh_beta: Number = 1.0
    cache_early_refresh_min_delta: Duration = 0.100
    cache_early_refresh_max_in_flight: PositiveCount = 4
    redis_breaker_failures: Count = 5  # consecutive failures that open the breaker
    redis_breaker_window: Duration = 0.250  # ... with no success for at least this long
    redis_breaker_cooldown: Duration = 1.0  # open this long, then one probe

    # Redis endpoints: one may default to the other
    read_redis_url: RedisUrl | None = None
    write_redis_url: RedisUrl | None = None
    enable_redis_tls_mode: bool = False
    redis_tls_ca_file: str | None = None
    redis_tls_cert_file: str | None = None
    redis_tls_key_file: str | None = None
    redis_key_prefix: str = "postal:"

    # Read pool
    read_redis_pool_size: Count = 50
    read_redis_min_idle: Count = 10
    read_redis_max_idle: Count = 20
    read_redis_max_idle_grace: Duration = 1.0
    read_redis_idle_time: Duration = 300.0
    read_redis_max_lifetime: Duration = 1800.0
    read_redis_pool_timeout: Duration = 4.0
    read_redis_dial_timeout: Duration = 2.0
    read_redis_read_timeout: Duration = 2.0
    read_redis_write_timeout: Duration = 2.0
    # Automatic pipelining of reads (`cache/transport/autopipeline.py`): concurrent GETs and
    # MGETs to a node share one connection, batched per event-loop turn when dense. MAX_IN_FLIGHT:
    # commands unanswered on it, past which reads use the pool; STALE_HEAD: a connection whose
    # oldest command waited this long takes no more until it is answered.
    read_redis_autopipeline: bool = True
    read_redis_pipeline_max_in_flight: PositiveCount = 128
    read_redis_pipeline_stale_head: Duration = 0.020

    # Write pool
    write_redis_pool_size: Count = 20
    write_redis_min_idle: Count = 5
    write_redis_max_idle: Count = 10
    write_redis_max_idle_grace: Duration = 1.0
    write_redis_idle_time: Duration = 300.0
    write_redis_max_lifetime: Duration = 1800.0
    write_redis_pool_timeout: Duration = 4.0
    write_redis_dial_timeout: Duration = 2.0
    write_redis_read_timeout: Duration = 2.0
    write_redis_write_timeout: Duration = 2.0

    # Per-operation deadlines, DNS, slow log
    redis_get_deadline: Duration = 0.100
    redis_set_deadline: Duration = 0.200
    redis_dns_ttl: Duration = 30.0
    redis_slow_op_threshold: Duration = 0.010
    # When READ_REDIS_URL names another server than WRITE_REDIS_URL (a replica), each
    # invalidation waits, within the SET deadline, for every replica to apply it.
    redis_wait_for_replicas: bool = True

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """Settings are logged at start-up and shown in errors: never with a Redis password."""
        for name, value in super().__repr_args__():
            if isinstance(value, str) and "://" in value:
                value = mask_url(value)
            yield name, value

    @model_validator(mode="after")
    def _check_pools(self) -> Settings:
        problems = []
        for role in ("read", "write"):
            size = getattr(self, f"{role}_redis_pool_size")
            min_idle = getattr(self, f"{role}_redis_min_idle")
            max_idle = getattr(self, f"{role}_redis_max_idle")
            prefix = f"{role.upper()}_REDIS"
            if size < 1:
                problems.append(f"{prefix}_POOL_SIZE={size}: expected a whole number >= 1")
            elif not min_idle <= max_idle <= size:
                problems.append(
                    f"{prefix}_MIN_IDLE={min_idle}, {prefix}_MAX_IDLE={max_idle},"
                    f" {prefix}_POOL_SIZE={size}: expected min idle <= max idle <= pool size"
                )
            for knob in ("pool_timeout", "dial_timeout", "read_timeout", "write_timeout"):
                if getattr(self, f"{role}_redis_{knob}") <= 0:
                    problems.append(f"{prefix}_{knob.upper()}: expected a duration above 0")
        if self.postal_api_token is not None:
            problems += token_problems(self.postal_api_token.get_secret_value())
        if self.postal_metrics_access == "token" and self.postal_api_token is None:
            problems.append(
                "POSTAL_METRICS_ACCESS=token needs POSTAL_API_TOKEN: set one, or choose open or off"
            )
        if self.read_redis_pipeline_stale_head <= 0:
            problems.append("READ_REDIS_PIPELINE_STALE_HEAD: expected a duration above 0")
        if self.redis_breaker_failures < 1:
            problems.append("REDIS_BREAKER_FAILURES=0: expected a whole number >= 1")
        if self.redis_breaker_cooldown <= 0:
            problems.append("REDIS_BREAKER_COOLDOWN: expected a duration above 0")
        if self.database_timeout <= 0:
            problems.append("DATABASE_TIMEOUT: expected a duration above 0")
        if not 0 <= self.postal_turn_budget <= MAX_TURN_BUDGET:
            problems.append(
                f"POSTAL_TURN_BUDGET: expected a duration from 0 (off) to {MAX_TURN_BUDGET:g}s"
            )
        if self.database_pool_size < 1:
            problems.append("DATABASE_POOL_SIZE=0: expected a whole number >= 1")
        if not 0 < self.cache_early_refresh_beta <= MAX_EARLY_REFRESH_BETA:
            problems.append(
                f"CACHE_EARLY_REFRESH_BETA={self.cache_early_refresh_beta:g}: expected a number"
                f" above 0 and at most {MAX_EARLY_REFRESH_BETA:g}"
            )
        if not 0 <= self.cache_early_refresh_min_delta <= MAX_EARLY_REFRESH_MIN_DELTA:
            problems.append(
                "CACHE_EARLY_REFRESH_MIN_DELTA: expected a duration of at most"
                f" {MAX_EARLY_REFRESH_MIN_DELTA:g}s"
            )
        for knob in ("header_timeout", "body_timeout", "keep_alive_timeout"):
            if getattr(self, f"postal_http_{knob}") <= 0:
                problems.append(f"POSTAL_HTTP_{knob.upper()}: expected a duration above 0")
        if self.postal_max_import_bytes < 1:
            problems.append("POSTAL_MAX_IMPORT_BYTES=0: expected a whole number >= 1")
        if self.postal_max_concurrent_imports >= self.database_pool_size:
            problems.append(
                f"POSTAL_MAX_CONCURRENT_IMPORTS={self.postal_max_concurrent_imports},"
                f" DATABASE_POOL_SIZE={self.database_pool_size}: expected fewer imports than"
                " pooled connections (each import holds one), so that reads and writes keep one"
            )
        if self.postal_import_body_timeout <= 0:
            problems.append("POSTAL_IMPORT_BODY_TIMEOUT: expected a duration above 0")
        problems += self._write_url_problems()
        if "{" in self.redis_key_prefix or "}" in self.redis_key_prefix:
            problems.append(
                f"REDIS_KEY_PREFIX={self.redis_key_prefix!r}: braces are reserved for the hash"
                " tags that keep a value and its generation in one cluster slot"
            )
        if self._waits_for_replicas() and 0 < self.redis_set_deadline < MIN_WAITING_SET_DEADLINE:
            problems.append(
                f"REDIS_SET_DEADLINE={self.redis_set_deadline * 1000:g}ms is too short to wait"
                " for the replicas READ_REDIS_URL reads from (Redis may end a WAIT up to 100 ms"
                f" late): expected at least {MIN_WAITING_SET_DEADLINE * 1000:g}ms, or"
                " REDIS_WAIT_FOR_REPLICAS=false"
            )
        if problems:
            raise ValueError(" | ".join(problems))
        return self

    def _write_url_problems(self) -> list[str]:
        """Writes go to one primary: not to a list of replicas, nor to Sentinel's replicas."""
        try:
            write = Topology.from_url(self.write_url)
        except ValueError:
            return []  # the URL's own check reports it
        if write.kind is Kind.SERVER and len(write.endpoints) > 1:
            if self.write_redis_url is None:
                return [
                    "READ_REDIS_URL names several servers (replicas): set WRITE_REDIS_URL to"
                    " their primary's URL"
                ]
            return ["WRITE_REDIS_URL names several servers: expected the primary's URL only"]
        if write.replicas and self.write_redis_url is None:
            return [
                "READ_REDIS_URL reads Sentinel's replicas (role=replica): set WRITE_REDIS_URL to"
                " the same URL without it, for the primary"
            ]
        if write.replicas:
            return ["WRITE_REDIS_URL asks for replicas (role=replica): writes go to the primary"]
        return []

    def _waits_for_replicas(self) -> bool:
        """Whether invalidations will WAIT: reads from replicas, or a Sentinel primary (which a
        failover replaces by a replica). As `CacheClient.create` decides."""
        if not self.redis_wait_for_replicas:
            return False
        try:
            read, write = Topology.from_url(self.read_url), Topology.from_url(self.write_url)
        except ValueError:
            return False  # the URL's own check reports it
        if write.kind in (Kind.CLUSTER, Kind.SENTINEL):
            return True  # each primary (master) waits for its replicas, for a failover's sake
        return not read.same_servers(write)

    # -- what the rest of Postal is built from -------------------------------------------------

    @property
    def embedded_redis(self) -> bool:
        """The embedded default (no database, no Redis given): `postal serve` starts a private
        Redis. Never with a real database: each instance would invalidate only its own Redis,
        and the others would serve what it overwrote."""
        no_redis = self.read_redis_url is None and self.write_redis_url is None
        return no_redis and self.database_url is None

    @property
    def database(self) -> str:
        """The database URL; unset, an SQLite file in the data directory."""
        return self.database_url or f"sqlite+aiosqlite:///{self.postal_data_dir}/postal.db"

    @property
    def api_token(self) -> str | None:
        return None if self.postal_api_token is None else self.postal_api_token.get_secret_value()

    @property
    def loopback_only(self) -> bool:
        """No token: the app answers loopback clients only, and `postal serve` binds loopback."""
        return self.postal_api_token is None

    @property
    def docs_enabled(self) -> bool:
        """The OpenAPI pages: `auto` shows them only in loopback-only mode."""
        if self.postal_docs == "auto":
            return self.loopback_only
        return self.postal_docs == "on"

    @property
    def read_url(self) -> str:
        return self.read_redis_url or self.write_redis_url or "redis://127.0.0.1:6379/0"

    @property
    def write_url(self) -> str:
        return self.write_redis_url or self.read_url

    def tls(self) -> TlsConfig:
        return TlsConfig(
            enabled=self.enable_redis_tls_mode,
            ca_file=self.redis_tls_ca_file,
            cert_file=self.redis_tls_cert_file,
            key_file=self.redis_tls_key_file,
        )

    def pool_config(self, role: str) -> PoolConfig:
        def knob(name: str) -> Any:
            return getattr(self, f"{role}_redis_{name}")

        return PoolConfig(
            max_size=knob("pool_size"),
            min_idle=knob("min_idle"),
            max_idle=knob("max_idle"),
            max_idle_grace=knob("max_idle_grace"),
            idle_time=knob("idle_time") or None,  # 0: never close for idleness
            max_lifetime=knob("max_lifetime") or None,
            pool_timeout=knob("pool_timeout"),
            dial_timeout=knob("dial_timeout"),
            read_timeout=knob("read_timeout"),
            write_timeout=knob("write_timeout"),
        )

    def early_refresh(self) -> EarlyRefreshConfig | None:
        """The early refresh's configuration, or None when it is turned off."""
        if not self.cache_early_refresh:
            return None
        return EarlyRefreshConfig(
            beta=self.cache_early_refresh_beta,
            min_delta=self.cache_early_refresh_min_delta,
            max_in_flight=self.cache_early_refresh_max_in_flight,
        )

    def read_pipeline(self) -> PipelineConfig | None:
        """The read role's automatic pipelining, or None when it is turned off."""
        if not self.read_redis_autopipeline:
            return None
        return PipelineConfig(
            max_in_flight=self.read_redis_pipeline_max_in_flight,
            stale_head=self.read_redis_pipeline_stale_head,
        )

    def cache_profile(self) -> Profile:
        return Profile(
            read_pool=self.pool_config("read"),
            write_pool=self.pool_config("write"),
            timeouts=CacheTimeouts(
                get=self.redis_get_deadline or None, set=self.redis_set_deadline or None
            ),
            dns_ttl=self.redis_dns_ttl,
            slow_threshold=self.redis_slow_op_threshold,
            wait_for_replicas=self.redis_wait_for_replicas,
            read_pipeline=self.read_pipeline(),
            breaker=BreakerConfig(
                failure_threshold=self.redis_breaker_failures,
                failure_window=self.redis_breaker_window,
                cooldown=self.redis_breaker_cooldown,
            ),
        )


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read the settings from `environ` (default: the process environment)."""
    try:
        if environ is None:
            return Settings()
        lowered = {name.lower(): value for name, value in environ.items()}
        known = {name: lowered[name] for name in Settings.model_fields if name in lowered}
        return Settings.model_validate(known)
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        if not error["loc"]:  # a check across variables: its message names them already
            lines.append(str(error["msg"]).removeprefix("Value error, "))
            continue
        name = str(error["loc"][0]).upper()
        value = error.get("input")
        shown = mask_url(value) if isinstance(value, str) and "://" in value else value
        expected = _EXPECTED_BY_ERROR.get(error["type"]) or str(error["msg"]).removeprefix(
            "Value error, "
        )
        lines.append(f"{name}={shown!r}: {expected}")
    return "\n".join(lines)
