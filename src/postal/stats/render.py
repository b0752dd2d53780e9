"""`postal stats` output: rich tables for a person, one JSON document for a program."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from postal.stats.collect import StatsReport
from postal.stats.redis_probe import RedisReport
from postal.stats.summary import Basis, Counts, Summary

HTTP_ROUTES_SHOWN = 8  # the busiest; --json has them all
SINCE_START_MARK = "*"


def report_json(report: StatsReport) -> dict[str, Any]:
    return {
        "url": report.url,
        "time": report.time,
        "status": report.status,
        "summary": asdict(report.summary),
        "redis": [asdict(redis) for redis in report.redis],
    }


def _ms(value: float | None, basis: Basis | None = "interval") -> str:
    if value is None:
        return "-"
    mark = SINCE_START_MARK if basis == "since_start" else ""
    return f"{value:.2f}{mark}" if value < 100 else f"{value:.0f}{mark}"


def _rate(value: float) -> str:
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _uptime(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s"


def render(report: StatsReport) -> RenderableType:
    summary = report.summary
    status = report.status
    workers = status.get("workers")
    header = Text.assemble(
        ("Postal ", "bold"),
        (str(status.get("version", "?")), "bold"),
        f" at {report.url} · pid {status.get('pid', '?')}",
        f" · up {_uptime(status.get('uptime_seconds'))}",
        f" · {workers} worker(s)" if workers else "",
        f" · over {summary.seconds:g}s · {report.time}",
    )
    cache = summary.cache
    since = cache.hit_rate_since_start
    overview = Text.assemble(
        ("hit rate ", "bold"),
        (_percent(cache.hit_rate), "bold green" if (cache.hit_rate or 0) >= 0.8 else "bold"),
        f" ({_percent(since)} since start)" if since is not None else "",
        f" · {_percent(cache.near_share)} from memory" if cache.near_share is not None else "",
        f" · {_rate(cache.ops_per_second)} cache ops/s",
        f" · errors {_percent(cache.error_rate)}",
    )
    parts: list[RenderableType] = [header, overview, _commands(summary), _pools(summary, status)]
    parts.append(_outcomes(summary))
    if summary.http:
        parts.append(_http(summary))
    if report.redis:
        parts.append(_redis(report.redis))
    parts.append(
        Text(
            f"ms; {SINCE_START_MARK}: no such traffic in the interval, percentile since start",
            style="dim",
        )
    )
    return Group(*parts)


def _commands(summary: Summary) -> Table:
    table = Table(title="Cache operations", title_justify="left")
    for column in ("role", "command", "ops/s", "p50", "p99", "errors/s"):
        table.add_column(column, justify="left" if column in ("role", "command") else "right")
    table.add_column("outcomes in the interval")
    for stats in summary.cache.commands:
        outcomes = ", ".join(
            f"{outcome} {count:,.0f}" for outcome, count in sorted(stats.outcomes.items()) if count
        )
        table.add_row(
            stats.role,
            stats.command,
            _rate(stats.ops_per_second),
            _ms(stats.p50_ms, stats.basis),
            _ms(stats.p99_ms, stats.basis),
            _rate(stats.errors_per_second),
            outcomes or "-",
        )
    return table


def _pools(summary: Summary, status: dict[str, Any]) -> Table:
    config = status.get("config", {}).get("pools", {}) if isinstance(status, dict) else {}
    table = Table(title="Pools, one per node (summed over workers)", title_justify="left")
    for column in (
        "role", "node", "in use", "idle", "max", "min/max idle", "waits/s", "wait p99",
        "timeouts", "opened", "closed", "breaker",
    ):  # fmt: skip
        left = column in ("role", "node", "closed")
        # The node is what tells the rows of a role apart: other columns wrap before it does.
        table.add_column(column, justify="left" if left else "right", no_wrap=column == "node")
    for pool in summary.pools:
        role_config = config.get(pool.role, {}) if isinstance(config, dict) else {}
        idle_config = (
            f"{role_config.get('min_idle', '?')}/{role_config.get('max_idle', '?')}"
            if role_config
            else "-"
        )
        closed = ", ".join(
            f"{reason} {count:,.0f}" for reason, count in sorted(pool.closed_total.items()) if count
        )
        breaker = pool.breaker or "-"
        table.add_row(
            pool.role,
            pool.node or "-",
            _count(pool.in_use),
            _count(pool.idle),
            _count(pool.max),
            idle_config,
            _rate(pool.waits_per_second),
            _ms(pool.wait_p99_ms, pool.wait_basis),
            f"{pool.timeouts:,.0f} ({pool.timeouts_total:,.0f})",
            f"{pool.opened:,.0f} ({pool.opened_total:,.0f})",
            closed or "-",
            Text(breaker, style="bold red" if breaker != "closed" else "green"),
        )
    table.caption = (
        "timeouts, opened: in the interval (since start); min/max idle: the role's, per node"
    )
    return table


def _outcomes(summary: Summary) -> Table:
    table = Table(title="Fills, invalidations, DNS", title_justify="left")
    table.add_column("")
    table.add_column("in the interval (since start)")
    rows: list[tuple[str, Counts]] = [
        ("fills", summary.fills),
        ("invalidations", summary.invalidations),
        ("dns lookups", summary.dns),
    ]
    for name, counts in rows:
        text = ", ".join(
            f"{outcome} {counts.interval.get(outcome, 0):,.0f} ({total:,.0f})"
            for outcome, total in sorted(counts.total.items())
        )
        table.add_row(name, text or "-")
    return table


def _http(summary: Summary) -> Table:
    table = Table(title="HTTP (busiest routes)", title_justify="left")
    for column in ("method", "route", "req/s", "5xx/s", "p50", "p99"):
        table.add_column(column, justify="left" if column in ("method", "route") else "right")
    for route in summary.http[:HTTP_ROUTES_SHOWN]:
        table.add_row(
            route.method,
            route.route,
            _rate(route.requests_per_second),
            _rate(route.server_errors_per_second),
            _ms(route.p50_ms, route.basis),
            _ms(route.p99_ms, route.basis),
        )
    return table


def _redis(reports: list[RedisReport]) -> RenderableType:
    problems: list[Text] = []
    table = Table(title="Redis (INFO clients, PING latency)", title_justify="left")
    for column in (
        "roles", "server", "version", "clients", "blocked", "maxclients", "rejected",
        "min", "avg", "p99", "max",
    ):  # fmt: skip
        table.add_column(column, justify="left" if column in ("roles", "server") else "right")
    for redis in reports:
        roles = "+".join(redis.roles)
        if redis.error is not None:
            table.add_row(roles, redis.url, Text("error", style="red"), *["-" for _ in range(8)])
            problems.append(Text(f"{roles} {redis.url}: {redis.error}", style="red"))
            continue
        latency = redis.latency
        table.add_row(
            roles,
            redis.url,
            redis.version or "?",
            _count(redis.connected_clients),
            _count(redis.blocked_clients),
            _count(redis.maxclients),
            _count(redis.rejected_connections),
            *(
                ("-",) * 4
                if latency is None
                else (
                    _ms(latency.min_ms),
                    _ms(latency.avg_ms),
                    _ms(latency.p99_ms),
                    _ms(latency.max_ms),
                )
            ),
        )
    table.caption = "clients include this probe's connection; latency in ms over sequential PINGs"
    return Group(table, *problems)
