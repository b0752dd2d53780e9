"""The options of `postal bench http`, checked: targets, loads and bounds, and where its load may
go (loopback only: a Redis and a database on this machine).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from postal_bench.errors import BenchError
from postal_bench.http.stats import ORDER
from postal_bench.loopback import require_loopback
from postal_bench.redis_topologies import check_setups

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
WARMUP = 0.5  # s of unmeasured load before each loop
MAX_CONNECTIONS = 1_000  # bounds on what a run may ask for: a benchmark, not a load test
MAX_RATE = 100_000.0  # req/s
MAX_DURATION = 600.0  # s per loop


@dataclass(frozen=True, slots=True)
class HttpBenchOptions:
    redis_url: str = DEFAULT_REDIS_URL
    database_url: str | None = None  # None: SQLite in a temporary directory
    targets: tuple[str, ...] = ORDER
    workers: int = 1  # uvicorn worker processes per server
    connections: int = 100  # closed loop
    rate: float = 1000.0  # open loop, requests per second
    duration: float = 3.0  # seconds per measured loop
    runs: int = 3  # medians are taken over these
    warmup: float = WARMUP
    value_size: int = 1024  # characters in the post's body (floor and peer: the served size)
    wrk: str | None = None  # path to wrk; None: the built-in closed loop
    write_url: str | None = None  # Postal's WRITE_REDIS_URL; None: `redis_url` (replicas need it)
    topologies: tuple[str, ...] = ()  # e.g. ("single", "cluster"); (): `redis_url` as given

    def check(self) -> None:
        check_setups(self.topologies, self.redis_url, self.write_url)
        if self.database_url is not None:
            check_database_url(self.database_url)
        unknown = sorted(set(self.targets) - set(ORDER))
        if unknown or not self.targets:
            raise BenchError(f"targets are {', '.join(ORDER)}; got {unknown or 'none'}")
        for name in ("workers", "connections", "runs", "value_size"):
            if getattr(self, name) < 1:
                raise BenchError(f"{name} must be at least 1")
        if not (0 < self.rate <= MAX_RATE and 0 < self.duration <= MAX_DURATION):
            raise BenchError(
                f"rate must be in (0, {MAX_RATE:,.0f}] req/s"
                f" and duration in (0, {MAX_DURATION:g}] s"
            )
        if self.connections > MAX_CONNECTIONS or self.warmup < 0:
            raise BenchError(f"at most {MAX_CONNECTIONS} connections; warm-up >= 0")


def check_database_url(url: str) -> None:
    """SQLite (a file here) or a PostgreSQL on loopback: the bench loads no other machine."""
    scheme = urlsplit(url).scheme
    if scheme.startswith("sqlite"):
        return
    if not scheme.startswith("postgresql"):
        raise BenchError(
            f"--database-url: expected sqlite+aiosqlite:// or postgresql+asyncpg://, got {scheme}://"
        )
    require_loopback(url, schemes=(scheme,))
