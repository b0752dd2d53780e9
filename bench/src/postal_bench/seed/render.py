"""How `postal bench seed`'s report is shown: the seed's table, how each row was measured, where
the CPU went, and the target line."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rich.console import Console
from rich.table import Table

from postal.cache import format_duration
from postal_bench.seed.bench import SeedReport
from postal_bench.seed.report import (
    COLUMNS,
    ITEM_PATH,
    PROFILES,
    Cpu,
    ProfileRun,
    show_ms,
    table_rows,
)
from postal_bench.stats import median


def cpu_line(runs: Sequence[ProfileRun], cpus: int | None) -> str:
    """Median shares of a core each process used during the GET /posts/{id} load, and what
    every other process (another job on the machine) used meanwhile."""

    def share(used: Callable[[Cpu], float | None]) -> str:
        shares = [
            None if (value := used(run.items.cpu)) is None else value / run.items.elapsed
            for run in runs
        ]
        value = median(shares)
        return "-" if value is None else f"{value:.0%}"

    return (
        f"server {share(lambda cpu: cpu.server)}, proxy {share(lambda cpu: cpu.proxy)},"
        f" load generator {share(lambda cpu: cpu.load)}, Redis {share(lambda cpu: cpu.redis)},"
        f" PostgreSQL {share(lambda cpu: cpu.postgres)}, anything else"
        f" {share(lambda cpu: cpu.others)} of one core"
        f" (the machine: {share(lambda cpu: cpu.machine)} of {cpus or '?'} cores)"
    )


def render_report(report: SeedReport, console: Console) -> None:
    def say(text: str) -> None:
        console.print(text, markup=False, highlight=False)

    options = report.options
    title = (
        f"postal bench seed: {options.posts:,} posts in PostgreSQL, {options.requests:,} requests"
        f" x {options.connections} connections per load, {options.runs} run(s) per profile"
    )
    table = Table(title=title)
    for index, column in enumerate(COLUMNS):
        table.add_column(column, justify="left" if index == 0 else "right", no_wrap=True)
    for row in table_rows(report.runs):
        table.add_row(*row)
    console.print(table)
    say(
        f"conditions: Redis behind a proxy adding {format_duration(options.latency)} each way,"
        f" reached by a name whose every lookup takes {format_duration(options.dns_delay)}"
        " (scripted resolver);\n"
        f"  a PING's round trip, measured: {show_ms(report.proxy_round_trip)} ms through the"
        f" proxy, {show_ms(report.direct_round_trip)} ms straight to Redis\n"
        f"  {ITEM_PATH}: {options.hit_rate:.0%} of requests to a pre-warmed hot set of"
        f" {options.hot_posts:,} posts, the rest to posts not asked for before in the run\n"
        "cache GET rows: Postal's postal_cache_operation_seconds (read GETs, pool wait included)"
        f" over the {ITEM_PATH} load;\n"
        "  avg exact (_sum/_count); p99 from the buckets: estimate (bucket it is known to lie in)\n"
        "request rows: the load generator, each request timed from its send, back to back on"
        " every connection;\n"
        "  connections (Postal's pools; the proxy's count as a cross-check), DNS lookups and errors"
        " over both loads\n"
        "medians of runs; 'tuned better by': median of the ratios of paired runs"
        f" (before then tuned), {report.cpus or '?'} CPUs shared by all processes"
    )
    for profile in PROFILES:
        runs = report.of(profile)
        say(f"  {profile}: CPU during the {ITEM_PATH} load: {cpu_line(runs, report.cpus)}")
        logged = sum(run.log_lines for run in runs)
        first_log = next((run.first_log_line for run in runs if run.first_log_line), None)
        if logged:
            say(f"    {logged:,} server log line(s) while measured; first: {first_log}")
        phases = [phase for run in runs for phase in (run.items, run.listing)]
        first_error = next((phase.first_error for phase in phases if phase.first_error), None)
        if first_error:
            say(f"    first error: {first_error}")
    for line in report.target.lines():
        say(line)
    say(f"wall time: {report.seconds:,.1f}s, start-up and clean-up included")
