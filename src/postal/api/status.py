"""What `/readyz` and `/status` report about this process: its cache, its configuration.

`/readyz` answers a probe: is the database reachable, and how is the cache. `/status` answers an
operator (and `postal stats`): which version, since when, against which servers, with which pool
sizes and deadlines, and the same cache report. Both read the objects `create_app` put on
`app.state`; neither changes anything.

No secret is ever part of either: URLs are masked (`mask_url`), the API token is not mentioned.
Durations are in seconds; `null` means "no limit".

Everything here is per process: with `postal serve --workers N`, each answer comes from the worker
that took the request (`pid` says which); `/metrics` is the one that sums the workers.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from typing import Any

from postal import __version__
from postal.cache import BreakerState, Node, mask_url


def cache_report(state: Any) -> dict[str, Any]:
    """Pools (now) per role, summed over its nodes, and per node with its breaker; breakers per
    role (the most available node's); the read-through's and the invalidator's counters."""
    cache = state.cache
    pools = {role: asdict(stats) for role, stats in cache.stats().items()}
    return {
        "connected": any(pool["idle"] + pool["in_use"] > 0 for pool in pools.values()),
        "breaker": {role: cache.breaker_state(role).name.lower() for role in pools},
        "pools": pools,
        "nodes": [node_report(node) for node in cache.nodes()],
        "reads": asdict(state.reads.stats()),
        "near": None if state.near is None else asdict(state.near.stats()),
        "invalidations": asdict(state.invalidator.stats()),
        "dns": asdict(state.cache.dns.stats()),
    }


def node_report(node: Node) -> dict[str, Any]:
    """One server of a role: its pool's stats (role and node included) and its breaker's state
    ("closed" when the profile has no breaker, as the role's state has it)."""
    breaker = BreakerState.CLOSED if node.breaker is None else node.breaker.state
    return {**asdict(node.pool.stats()), "breaker": breaker.name.lower()}


def workers() -> int | None:
    """`postal serve --workers N` exports N as WEB_CONCURRENCY (uvicorn's and gunicorn's name
    for it) to its workers; None when started some other way and not told."""
    value = os.environ.get("WEB_CONCURRENCY", "")
    return int(value) if value.isdigit() else None


def status_report(state: Any) -> dict[str, Any]:
    settings = state.settings
    profile = state.cache.profile
    started: float | None = getattr(state, "started_at", None)
    return {
        "version": __version__,
        "pid": os.getpid(),
        "uptime_seconds": None if started is None else round(time.time() - started, 3),
        "workers": workers(),
        "database": {"url": mask_url(settings.database)},
        "redis": {
            "read": {"url": mask_url(settings.read_url)},
            "write": {"url": mask_url(settings.write_url)},
            "key_prefix": settings.redis_key_prefix,
            "tls": settings.enable_redis_tls_mode,
        },
        "config": {
            "pools": {
                "read": asdict(profile.read_pool),
                "write": asdict(profile.write_pool),
            },
            "deadlines": asdict(profile.timeouts),
            "breaker": None if profile.breaker is None else asdict(profile.breaker),
            "dns_ttl": profile.dns_ttl,
            "slow_threshold": profile.slow_threshold,
        },
        "cache": cache_report(state),
    }
