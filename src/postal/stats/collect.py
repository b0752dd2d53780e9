"""Asking a running Postal and its Redis servers: the I/O of `postal stats`.

Each report is two scrapes of `/metrics` (with `/status`) an interval apart; the Redis probes run
during the interval, so a report takes about one interval. `--watch` keeps the last scrape as the
next report's first, so every refresh is one scrape and one interval.

HTTP is the standard library's `urllib`, in a thread: two GETs a second do not call for a client
library in the service's dependencies.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from postal.cache import NO_TLS, TlsConfig
from postal.stats.redis_probe import DEFAULT_PINGS, RedisReport, probe_redis, redis_targets
from postal.stats.scrape import Scrape, ScrapeError
from postal.stats.summary import Summary, summarize

HTTP_TIMEOUT = 5.0  # seconds for each GET to Postal


class PostalUnreachable(Exception):
    """Postal did not answer, or not with its /metrics and /status; str() is one line."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    scrape: Scrape
    status: dict[str, Any]


@dataclass(frozen=True, slots=True)
class StatsReport:
    url: str
    time: str  # when the second scrape was taken, ISO 8601 UTC
    status: dict[str, Any]  # /status as Postal sent it
    summary: Summary
    redis: list[RedisReport]


def _get(url: str, token: str | None) -> tuple[str, float]:
    """The body of a GET (with the bearer token, when there is one), and the monotonic time it
    arrived."""
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
            body = response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            hint = "a wrong POSTAL_API_TOKEN" if token else "no POSTAL_API_TOKEN set here"
            raise PostalUnreachable(f"{url} answered HTTP 401: {hint}") from None
        raise PostalUnreachable(f"{url} answered HTTP {exc.code}") from None
    except urllib.error.URLError as exc:
        raise PostalUnreachable(f"{url} does not answer: {exc.reason}") from None
    except (OSError, ValueError) as exc:  # timeouts, resets, a malformed URL
        raise PostalUnreachable(f"{url} does not answer: {exc or type(exc).__name__}") from None
    return body, time.monotonic()


async def snapshot(base_url: str, token: str | None = None) -> Snapshot:
    base = base_url.rstrip("/")
    (metrics, at), (status_text, _) = await asyncio.gather(
        asyncio.to_thread(_get, f"{base}/metrics", token),
        asyncio.to_thread(_get, f"{base}/status", token),
    )
    try:
        scrape = Scrape.parse(metrics, at)
    except ScrapeError as exc:
        raise PostalUnreachable(f"{base}/metrics: {exc}") from None
    try:
        status = json.loads(status_text)
    except ValueError:
        status = None
    if not isinstance(status, dict):
        raise PostalUnreachable(f"{base}/status did not answer a JSON object") from None
    return Snapshot(scrape, status)


class StatsSession:
    """Reports on one Postal, each over `interval` seconds since the previous scrape."""

    def __init__(
        self,
        url: str,
        interval: float,
        *,
        token: str | None = None,
        redis_urls: Sequence[str] = (),
        tls: TlsConfig = NO_TLS,
        pings: int = DEFAULT_PINGS,
        probe: bool = True,
    ) -> None:
        self.url = url.rstrip("/")
        self.interval = interval
        self._token = token
        self._redis_urls = list(redis_urls)
        self._tls = tls
        self._pings = pings
        self._probe = probe
        self._previous: Snapshot | None = None

    async def report(self) -> StatsReport:
        """The next report; the first call takes two scrapes, the following ones one."""
        if self._previous is None:
            self._previous = await snapshot(self.url, self._token)
        previous = self._previous
        started = time.monotonic()
        redis = asyncio.ensure_future(self._probe_redis(previous.status))
        try:
            await asyncio.sleep(max(self.interval - (started - previous.scrape.at), 0.0))
            current = await snapshot(self.url, self._token)
            reports = await redis
        finally:
            redis.cancel()
        self._previous = current
        return StatsReport(
            url=self.url,
            time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            status=current.status,
            summary=summarize(previous.scrape, current.scrape),
            redis=reports,
        )

    async def _probe_redis(self, status: dict[str, Any]) -> list[RedisReport]:
        if not self._probe:
            return []
        redis = status.get("redis")
        if not isinstance(redis, dict):
            redis = {}
        service_urls = {
            role: str(redis[role]["url"])
            for role in ("read", "write")
            if isinstance(redis.get(role), dict) and "url" in redis[role]
        }
        targets = redis_targets(service_urls, self._redis_urls)
        return list(
            await asyncio.gather(
                *(probe_redis(target, tls=self._tls, pings=self._pings) for target in targets)
            )
        )
