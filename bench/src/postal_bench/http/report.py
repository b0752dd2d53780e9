"""What `postal bench http` measured, and how it is shown: the report (its summaries, its target
checks, its JSON) and the table with its legend (rich).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from rich.console import Console
from rich.table import Table

from postal.cache import Topology, format_duration, mask_url
from postal_bench.http import stats as http_stats
from postal_bench.http import targets as http_targets
from postal_bench.http.apps import PEER_POOL_SIZE
from postal_bench.http.options import HttpBenchOptions
from postal_bench.http.stats import FLOOR, PEER, POSTAL, POSTAL_NEAR_OFF, TargetSummary
from postal_bench.output import print_grouped_table
from postal_bench.redis_topologies import (
    SINGLE,
    RedisSetup,
    masked,
    plain_description,
    topology_name,
)

DESCRIPTIONS = {
    FLOOR: "bare Starlette route answering constant bytes (the floor)",
    PEER: "Starlette + one redis.asyncio GET, BlockingConnectionPool(50) (the peer)",
    POSTAL: "postal serve, GET /api/v1/posts/{id}, cache hits, near cache on (from memory)",
    POSTAL_NEAR_OFF: "the same, NEAR_CACHE_ENABLED=false (each hit a Redis GET)",
}


@dataclass(frozen=True, slots=True)
class HttpBenchReport:
    options: HttpBenchOptions
    summaries: list[TargetSummary]  # floor, then the peer and the Postals topology by topology
    started_at: str
    closed_loop_tool: str  # "wrk" or "built-in"
    body_bytes: int  # the size of every target's response body
    servers: dict[str, str]  # target (and topology, when several) -> its URL (closed since)
    cpus: int | None
    key_prefixes: list[str]  # the Redis keys the peers and Postals read, deleted since
    setups: list[RedisSetup]  # the topologies measured (a started cluster is gone since)
    # Postal target (and topology, when several) -> reads its near cache answered in all the
    # runs (warm-ups included), from its /metrics; None when the scrape failed.
    near_hits: dict[str, int | None]

    @property
    def topologies(self) -> list[str]:
        return [setup.name for setup in self.setups]

    def summary(self, name: str, topology: str | None = None) -> TargetSummary:
        """The target `name` (on `topology`; by default the first it was measured on)."""
        return next(
            summary
            for summary in self.summaries
            if summary.name == name and topology in (None, summary.topology)
        )

    @property
    def check(self) -> http_targets.TargetCheck:
        """Postal's targets against the peer on the first topology."""
        return http_targets.check_targets(self.summaries, self.options.rate)

    @property
    def floor_checks(self) -> list[http_targets.FloorCheck]:
        """The near cache's targets against the floor, on and off, on the first topology."""
        return http_targets.check_floor_targets(self.summaries)

    def description(self, summary: TargetSummary) -> str:
        if summary.name != PEER:
            return DESCRIPTIONS[summary.name]
        setup = next(setup for setup in self.setups if setup.name == summary.topology)
        if topology_name(Topology.from_url(setup.read_url)) == SINGLE:
            return DESCRIPTIONS[PEER]
        how = plain_description(setup.read_url, PEER_POOL_SIZE)
        return f"Starlette + one GET per request by {how} (the peer)"

    def to_json(self) -> dict[str, object]:
        options = self.options
        settings = asdict(options) | {
            "redis_url": masked(options.redis_url),
            "write_url": options.write_url and masked(options.write_url),
            "database_url": options.database_url and mask_url(options.database_url),
            "closed_loop_tool": self.closed_loop_tool,
            "body_bytes": self.body_bytes,
            "servers": self.servers,
            "cpus": self.cpus,
            "key_prefixes": self.key_prefixes,
            "near_cache_hits": self.near_hits,
        }
        checks = [
            http_targets.check_targets(self.summaries, options.rate, topology).to_json()
            | {"topology": topology}
            for topology in self.topologies
        ]
        floor_checks = [
            check.to_json() | {"topology": topology}
            for topology in self.topologies
            for check in http_targets.check_floor_targets(self.summaries, topology)
        ]
        return {
            "benchmark": "http",
            "started_at": self.started_at,
            "settings": settings,
            "topologies": [
                {
                    "name": setup.name,
                    "read_url": masked(setup.read_url),
                    "write_url": masked(setup.write_url),
                }
                for setup in self.setups
            ],
            "targets": [
                http_stats.summary_json(summary, self.description(summary))
                for summary in self.summaries
            ],
            "target": self.check.to_json(),
            "checks": checks,
            "floor_targets": floor_checks,
            "versus": http_stats.versus_json(self.summaries),
        }


def render_report(report: HttpBenchReport, console: Console) -> None:
    """The table, what was measured how, one legend line per target, the target checks."""
    options = report.options

    def say(text: str) -> None:
        console.print(text, markup=False, highlight=False)

    several = len(report.setups) > 1
    where = f" on {' and '.join(report.topologies)}" if several else ""
    title = (
        f"postal bench http: GET of a {report.body_bytes:,} B post{where}, {options.workers}"
        f" uvicorn worker(s), {format_duration(options.duration)} x {options.runs} run(s)"
    )
    if several:
        baseline = report.topologies[0]
        columns = [c.format(baseline=baseline) for c in http_stats.TOPOLOGY_COLUMNS]
        print_grouped_table(console, title, columns, http_stats.topology_rows(report.summaries))
    else:
        table = Table(title=title)
        for column in http_stats.COLUMNS:
            table.add_column(
                column, justify="left" if column == "target" else "right", no_wrap=True
            )
        for row in http_stats.table_rows(report.summaries):
            table.add_row(*row)
        console.print(table)
    say(
        f"req/s: closed loop, {options.connections} connections back to back"
        f" ({report.closed_loop_tool})\n"
        f"p50/p99/max: open loop at {options.rate:,.0f} req/s, each request timed from its"
        " scheduled send (no coordinated omission)\n"
        "CPU µs/req: the server's CPU (user + system, its process and its workers', from /proc)"
        " over the closed loop, divided by the requests it answered\n"
        "medians of runs; errors (non-2xx, failed) summed over runs and loops;"
        " ratios: median of per-run ratios\n"
        f"client and server share this machine ({report.cpus or '?'} CPUs): the load generator"
        " takes CPU from the server;\ncompare ratios from one run, not absolute figures"
    )
    if several:
        say(
            f"vs peer, vs floor: within the topology (the floor, which has no Redis, against the"
            f" {report.topologies[0]} peer); vs {report.topologies[0]}: the same target on"
            f" {report.topologies[0]}, run by run (the runs alternate between topologies)"
        )
    for summary in report.summaries:
        on = f" on {summary.topology}" if several and summary.topology else ""
        note = f" ({summary.note})" if summary.note else ""
        say(f"  {summary.name}{on}: {report.description(summary)}{note}")
        each_run = http_stats.runs_line(summary)
        if each_run:
            say(f"    {each_run}")
        runs = [loop for run in summary.runs for loop in (run.closed, run.open)]
        first_error = next((loop.first_error for loop in runs if loop.first_error), None)
        if first_error:
            say(f"    first error: {first_error}")
    if several:
        for setup in report.setups:
            say(f"{setup.name}: {masked(setup.read_url)}")
    for topology in report.topologies if several else [None]:
        check = http_targets.check_targets(report.summaries, options.rate, topology)
        say(f"{topology}: {check.line()}" if topology else check.line())
        on = f" on {topology}" if topology else ""
        say(f"the near cache's targets against the floor{on}:")
        for floor_check in http_targets.check_floor_targets(report.summaries, topology):
            say(f"  {floor_check.line()}")
