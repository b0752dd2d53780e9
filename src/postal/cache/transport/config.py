"""Value objects for the cache layer's tunables, with the seed's defaults written down in units.

Durations are float seconds. `None` means "no limit" (never expire, no deadline); it is never
spelled as 0 or -1, so "unset" and "disabled" cannot be confused.
"""

from __future__ import annotations

from dataclasses import dataclass

SECOND = 1.0
MILLISECOND = 1e-3
MINUTE = 60.0


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """One role's connection pool. Defaults are the read role's; see WRITE_POOL below."""

    max_size: int = 50  # hard cap on open connections, per process
    min_idle: int = 10  # kept open and warm from start-up on by the maintainer
    max_idle: int = 20  # idle connections above this are closed once idle for max_idle_grace
    # Above max idle, a returned connection is closed once it has stayed idle this long (0: at
    # once, on return, as go-redis does). A short grace stops bursts from churning connections:
    # measured with 100 requests in flight on a pool of 50, closing at once opened 759
    # connections in 6 s, 571 of them to replace ones just closed for max idle.
    max_idle_grace: float = 1 * SECOND
    idle_time: float | None = 5 * MINUTE  # an idle connection older than this is closed
    max_lifetime: float | None = 30 * MINUTE  # closed when returned or found idle past this
    lifetime_jitter: float = 0.1  # each connection's lifetime is shortened by up to 10%
    pool_timeout: float = 4 * SECOND  # longest wait for a free connection
    dial_timeout: float = 2 * SECOND  # DNS + TCP (+ TLS) connect
    read_timeout: float = 2 * SECOND  # socket read, handshake replies included
    write_timeout: float = 2 * SECOND  # socket write
    maintenance_interval: float = 1 * SECOND  # how often the reaper and refiller run

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))

    def problems(self) -> list[str]:
        """Every inconsistency, as text; empty when the configuration is usable."""
        found = []
        if self.max_size < 1:
            found.append(f"pool size must be at least 1, got {self.max_size}")
        if self.min_idle < 0 or self.max_idle < 0:
            found.append("min idle and max idle must not be negative")
        if self.min_idle > self.max_idle:
            found.append(f"min idle ({self.min_idle}) must not exceed max idle ({self.max_idle})")
        if self.max_idle > self.max_size:
            found.append(f"max idle ({self.max_idle}) must not exceed pool size ({self.max_size})")
        if not 0 <= self.lifetime_jitter < 1:
            found.append("lifetime jitter must be in [0, 1)")
        for name in ("pool_timeout", "dial_timeout", "read_timeout", "write_timeout"):
            if getattr(self, name) <= 0:
                found.append(f"{name} must be positive")
        if self.max_idle_grace < 0:
            found.append("max_idle_grace must not be negative")
        if self.maintenance_interval <= 0:
            found.append("maintenance_interval must be positive")
        return found


READ_POOL = PoolConfig()
WRITE_POOL = PoolConfig(max_size=20, min_idle=5, max_idle=10)


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    """Automatic pipelining of the read role's GET and MGET (`autopipeline`): one connection per
    node that concurrent reads share, written once per turn of the event loop."""

    # Commands sent and not yet answered on the connection; a read finding it full goes to the
    # pool instead. Bounds the queue a slow reply can hold up, and the buffers.
    max_in_flight: int = 128
    # A connection whose oldest unanswered command has waited this long takes no new ones (they
    # go to the pool) rather than queue behind it: a slow reply holds up only what was sent
    # before it was seen to be slow. Past the read role's read timeout, the connection is closed.
    stale_head: float = 20 * MILLISECOND

    def __post_init__(self) -> None:
        if self.max_in_flight < 1:
            raise ValueError(
                f"pipeline in-flight limit must be at least 1, got {self.max_in_flight}"
            )
        if self.stale_head <= 0:
            raise ValueError(f"pipeline stale head must be positive, got {self.stale_head}")


@dataclass(frozen=True, slots=True)
class CacheTimeouts:
    """Per-operation deadlines: they bound the whole operation, pool wait included."""

    get: float | None = 100 * MILLISECOND  # GET and MGET, on the read role
    set: float | None = 200 * MILLISECOND  # SET, DEL and pipelines, on the write role


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """The circuit breaker each role puts around its operations (see `breaker`).

    After `failure_threshold` consecutive failures (timeouts, pool timeouts, refused or reset
    connections) spanning at least `failure_window` without a single success, the role fails
    fast with `CircuitOpen` for `cooldown` seconds, then lets one probe through: its success
    closes the breaker, its failure opens it for another cooldown.

    The window is what tells a Redis that is down from a burst: when 50 requests arrive at once
    on a cold pool, the dials that miss their deadline all fail together, a few milliseconds
    after operations on the warm connections succeeded. Redis being down means nothing but
    failures for a while.
    """

    failure_threshold: int = 5  # consecutive failures that open the breaker
    failure_window: float = 250 * MILLISECOND  # ... with no success for at least this long
    cooldown: float = 1 * SECOND  # open this long before one probe is let through

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError(f"failure threshold must be at least 1, got {self.failure_threshold}")
        if self.cooldown <= 0:
            raise ValueError(f"breaker cooldown must be positive, got {self.cooldown}")


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """TLS for Redis; certificate verification is on unless a test says otherwise."""

    enabled: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


@dataclass(frozen=True, slots=True)
class Profile:
    """Everything the cache layer needs besides the URLs: both pools, deadlines, DNS, logging."""

    read_pool: PoolConfig = READ_POOL
    write_pool: PoolConfig = WRITE_POOL
    timeouts: CacheTimeouts = CacheTimeouts()
    dns_ttl: float = 30 * SECOND  # 0: no DNS cache, every dial resolves
    slow_threshold: float = 10 * MILLISECOND
    breaker: BreakerConfig | None = BreakerConfig()  # None: no breaker, every call tries Redis
    # When reads go to another server than writes (a replica), each invalidation waits, within
    # the SET deadline, for every replica to apply it (`replicas`).
    wait_for_replicas: bool = True
    # Reads (GET, MGET) share a pipelined connection per node (`autopipeline`); None: each
    # read checks a connection out of the read pool.
    read_pipeline: PipelineConfig | None = PipelineConfig()


TUNED = Profile()
NO_TLS = TlsConfig()

# The seed's "before" column, kept as a named profile for the benchmarks: at most 10 connections,
# none kept idle (max idle 0, so every operation dials, resolves and handshakes anew), no DNS cache,
# no per-operation deadline, 3 s socket timeouts, and no circuit breaker (the incident had none).
_BEFORE_POOL = PoolConfig(
    max_size=10,
    min_idle=0,
    max_idle=0,
    max_idle_grace=0.0,
    pool_timeout=3 * SECOND,
    dial_timeout=3 * SECOND,
    read_timeout=3 * SECOND,
    write_timeout=3 * SECOND,
)
BEFORE = Profile(
    read_pool=_BEFORE_POOL,
    write_pool=_BEFORE_POOL,
    timeouts=CacheTimeouts(get=None, set=None),
    dns_ttl=0.0,
    breaker=None,
    read_pipeline=None,
)
