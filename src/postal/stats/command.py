"""Running `postal stats`: once, or `--watch` (refreshed in place until Ctrl-C), as tables or JSON.

Exit codes: 0 after a report (or when Ctrl-C ends a watch); 1 when Postal does not answer the
first time. Once a watch has shown a report, a Postal that stops answering (restarting, say) is
shown as such and asked again at the next refresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.live import Live
from rich.text import Text

from postal.cache import NO_TLS, TlsConfig
from postal.stats.collect import PostalUnreachable, StatsReport, StatsSession
from postal.stats.redis_probe import DEFAULT_PINGS
from postal.stats.render import render, report_json


@dataclass(frozen=True, slots=True)
class StatsOptions:
    url: str = "http://127.0.0.1:8000"
    token: str | None = None  # POSTAL_API_TOKEN, for /status (and /metrics when it needs it)
    interval: float = 1.0  # seconds between the two scrapes of a report
    watch: bool = False
    json: bool = False
    redis_urls: Sequence[str] = ()
    tls: TlsConfig = NO_TLS
    pings: int = DEFAULT_PINGS
    probe_redis: bool = True


def run_stats(options: StatsOptions, console: Console, errors: Console) -> int:
    """Print the report(s); the exit code."""
    session = StatsSession(
        options.url,
        options.interval,
        token=options.token,
        redis_urls=options.redis_urls,
        tls=options.tls,
        pings=options.pings,
        probe=options.probe_redis,
    )
    with asyncio.Runner() as runner:
        try:
            first = runner.run(session.report())
        except PostalUnreachable as exc:
            errors.print(f"postal: stats: {exc}", markup=False, highlight=False, soft_wrap=True)
            return 1
        except KeyboardInterrupt:
            return 0
        if not options.watch:
            if options.json:
                _print_json(console, report_json(first), indent=2)
            else:
                console.print(render(first))
            return 0
        with contextlib.suppress(KeyboardInterrupt):
            _watch(runner, session, options, console, first)
    return 0


def _print_json(console: Console, document: object, indent: int | None = None) -> None:
    text = json.dumps(document, indent=indent)
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _watch(
    runner: asyncio.Runner,
    session: StatsSession,
    options: StatsOptions,
    console: Console,
    first: StatsReport,
) -> None:
    """Until Ctrl-C: a JSON line per report, or the tables redrawn in place."""
    if options.json:
        _print_json(console, report_json(first))
        while True:
            try:
                _print_json(console, report_json(runner.run(session.report())))
            except PostalUnreachable as exc:
                _print_json(console, {"url": session.url, "error": str(exc)})
                runner.run(asyncio.sleep(options.interval))
    with Live(render(first), console=console, auto_refresh=False) as live:
        while True:
            try:
                live.update(render(runner.run(session.report())), refresh=True)
            except PostalUnreachable as exc:
                live.update(Text(f"postal: stats: {exc} (asking again)", style="red"), refresh=True)
                runner.run(asyncio.sleep(options.interval))
