"""The options of `postal bench seed`, checked, and the Redis URL Postal is given.

Defaults are the seed's conditions: 10,000 posts, `ab -n 10000 -c 100`, a 90% hit rate, 1 ms of
network latency each way and 20 ms per DNS lookup. `--quick` shrinks the sizes (QUICK_*) and
runs once. Every target is on this machine: a non-loopback Redis or database is refused.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from urllib.parse import urlsplit, urlunsplit

from postal.cache import mask_url
from postal_bench.errors import BenchError
from postal_bench.imports.database import check_database_url
from postal_bench.loopback import require_loopback
from postal_bench.redis_topologies import require_loopback_redis
from postal_testing.resolver import BENCH_HOST

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
HOT_SHARE = 0.1  # the hot set: this share of the posts (the lowest ids)
BODY_CHARS = 1024  # characters in each post's body
QUICK_REQUESTS = 2_000
QUICK_POSTS = 2_000
MAX_REQUESTS = 1_000_000  # bounds on what a run may ask for: a benchmark, not a load test
MAX_POSTS = 1_000_000
MAX_CONNECTIONS = 1_000
MAX_RUNS = 20
MAX_DELAY = 1.0  # s, for --latency and --dns-delay


@dataclass(frozen=True, slots=True)
class SeedBenchOptions:
    latency: float = 0.001  # s added by the proxy, each direction
    dns_delay: float = 0.020  # s per lookup of the Redis host name
    requests: int = 10_000  # per load (each endpoint)
    connections: int = 100
    hit_rate: float = 0.9
    posts: int = 10_000
    runs: int = 3  # per profile; medians are shown
    redis_url: str = DEFAULT_REDIS_URL
    database_url: str | None = None  # None: a scratch database on 127.0.0.1:5432, dropped after
    seed: int = 0  # of the request schedule
    quick: bool = False  # recorded only: the sizes above are already the quick ones

    @property
    def hot_posts(self) -> int:
        return max(1, round(self.posts * HOT_SHARE))

    @property
    def misses(self) -> int:
        return round(self.requests * (1 - self.hit_rate))

    def check(self) -> None:
        require_loopback(self.redis_url, schemes=("redis",))
        require_loopback_redis(self.redis_url)  # and every host, if it is a list of servers
        if self.database_url is not None:
            check_database_url(self.database_url)
        for name, value in (("--latency", self.latency), ("--dns-delay", self.dns_delay)):
            if not 0 <= value <= MAX_DELAY:
                raise BenchError(f"{name} must be between 0s and {MAX_DELAY:g}s")
        for name, value, most in (
            ("--requests", self.requests, MAX_REQUESTS),
            ("--connections", self.connections, MAX_CONNECTIONS),
            ("--posts", self.posts, MAX_POSTS),
            ("--runs", self.runs, MAX_RUNS),
        ):
            if not 1 <= value <= most:
                raise BenchError(f"{name} must be between 1 and {most:,}")
        if not 0 <= self.hit_rate <= 1:
            raise BenchError(f"--hit-rate must be between 0 and 1, got {self.hit_rate:g}")
        cold = self.posts - self.hot_posts
        if self.misses > cold:
            raise BenchError(
                f"--posts {self.posts:,} is too few: {self.requests:,} requests at a hit rate of"
                f" {self.hit_rate:g} need {self.misses:,} posts never asked for before, and only"
                f" {cold:,} are outside the hot set of {self.hot_posts:,}"
            )

    def to_json(self) -> dict[str, object]:
        return asdict(self) | {
            "redis_url": mask_url(self.redis_url),
            "database_url": self.database_url and mask_url(self.database_url),
            "hot_posts": self.hot_posts,
            "misses": self.misses,
            "body_chars": BODY_CHARS,
        }


def with_address(redis_url: str, host: str, port: int) -> str:
    """`redis_url` with its host and port replaced, credentials and database kept."""
    parts = urlsplit(redis_url)
    userinfo, _, _ = parts.netloc.rpartition("@")
    netloc = f"{userinfo}@" if userinfo else ""
    return urlunsplit(parts._replace(netloc=f"{netloc}{host}:{port}"))


def through_proxy(redis_url: str, port: int) -> str:
    """What Postal is given: the bench's host name (scripted DNS) and the proxy's port."""
    return with_address(redis_url, BENCH_HOST, port)
