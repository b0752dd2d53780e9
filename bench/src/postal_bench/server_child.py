"""Postal as the benchmarks and fault tests start it: the real app, with two things injected.

`postal serve` builds the app from its settings alone. A benchmark also needs to choose the cache
profile (the seed's "before", which settings cannot express: it has no circuit breaker) and to
put a scripted DNS under the cache (`postal_testing.resolver`), without adding either to the
settings operators see. So the benchmarks run uvicorn on `app_from_environment` below, which
reads two variables of its own besides the usual settings:

- `POSTAL_BENCH_PROFILE`: `tuned` (the settings' own pools, deadlines and breaker; the default)
  or `before` (`postal.cache.transport.config.BEFORE`);
- `POSTAL_BENCH_DNS_SCRIPT`: the path of a `DnsScript` file; unset, the system resolver.

Everything else (the server and its HTTP limits, the database, the metrics, the shutdown) is
`postal serve`'s.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI

from postal.cache import BEFORE, Profile
from postal_bench.http.servers import postal_server_command

PROFILE_VARIABLE = "POSTAL_BENCH_PROFILE"
DNS_SCRIPT_VARIABLE = "POSTAL_BENCH_DNS_SCRIPT"
FACTORY = "postal_bench.server_child:app_from_environment"


def server_command(port: int, workers: int = 1) -> list[str]:
    """The command that serves this module's app on 127.0.0.1:`port`."""
    return postal_server_command(FACTORY, port, workers)


def profile_named(name: str) -> Profile | None:
    """The profile a benchmark asked for; None: the settings' own."""
    if name == "before":
        return BEFORE
    if name == "tuned":
        return None
    raise ValueError(f"{PROFILE_VARIABLE} must be 'tuned' or 'before', not {name!r}")


def app_from_environment() -> FastAPI:
    from postal.app import create_app
    from postal.observability.logging import configure_from_settings
    from postal.settings import load_settings
    from postal_testing.resolver import ScriptedResolver

    settings = load_settings()
    configure_from_settings(settings)
    script = os.environ.get(DNS_SCRIPT_VARIABLE)
    return create_app(
        settings,
        profile=profile_named(os.environ.get(PROFILE_VARIABLE, "tuned")),
        resolver=ScriptedResolver(Path(script)) if script else None,
    )
