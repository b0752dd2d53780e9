"""How `postal bench import`'s report is shown: its tables and target lines (rich)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from rich.console import Console
from rich.table import Table

from postal_bench.imports.report import (
    CACHE_SPEEDUP_TARGET,
    ROWS_PER_S_TARGET,
    RSS_RATIO_TARGET,
    TIMING_SLICE,
    ImportBenchReport,
)
from postal_bench.stats import median, ratio, show_count, show_ratio

MIB = 2**20

Say = Callable[[str], None]


def show_seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f}"


def show_mib(value: float | None) -> str:
    return "-" if value is None else f"{value / MIB:,.1f}"


def verdict(met: bool | None) -> str:
    return "not measured" if met is None else ("met" if met else "NOT met")


def _table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
    table = Table(title=title)
    for index, column in enumerate(columns):
        table.add_column(column, justify="left" if index == 0 else "right", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    return table


def render_report(report: ImportBenchReport, console: Console) -> None:
    """The imports table, the cache step's, the RSS check's if run, and the target lines."""

    def say(text: str) -> None:
        console.print(text, markup=False, highlight=False)

    csv = report.csv
    runs = len(report.methods[0].runs)
    kind = "scratch, dropped since" if report.scratch_database else "emptied since"
    title = (
        f"postal bench import: {csv.rows:,} rows ({csv.size / 1e6:,.1f} MB,"
        f" {csv.row_bytes:,.0f} B/row) into PostgreSQL, {runs} run(s)"
    )
    rows = [
        (
            summary.name,
            show_count(summary.rows_per_s),
            show_seconds(summary.seconds),
            show_mib(summary.peak_rss),
            show_mib(summary.rss_before),
            show_seconds(summary.cache_seconds),
            show_ratio(ratio(summary.rows_per_s, ROWS_PER_S_TARGET)),
        )
        for summary in report.methods
    ]
    columns = (
        "method", "rows/s", "wall s", "peak RSS MiB", "RSS before MiB", "cache step s",
        f"vs {ROWS_PER_S_TARGET / 1000:g}k rows/s",
    )  # fmt: skip
    console.print(_table(title, columns, rows))
    say(
        "medians of runs; each import a fresh child process into emptied tables (ids from 1);"
        "\nwall s: PostImporter.run, parse + write + commit + cache step; peak RSS: the child's"
        " ru_maxrss, start-up included;\nRSS before: its resident set when the import began\n"
        f"database {report.database} ({kind})\n{report.cpus or '?'} CPUs shared with"
        " PostgreSQL, Redis and anything else running: compare ratios from one run, not absolute"
        " figures"
    )
    every_run = [run for summary in report.methods for run in summary.runs]
    pending = sum(run.cache_pending for run in [*every_run, *filter(None, [report.rss_run])])
    if pending:
        say(
            f"note: in {pending} import(s) Redis missed the cache step's deadline: the step was"
            " left pending (the importer's invalidator retries it), and its time is short"
        )
    method_ratio = report.method_ratio()
    if method_ratio is not None:
        first, second = report.methods[0].name, report.methods[1].name
        say(
            f"{first} vs {second}: {show_ratio(method_ratio)} the rows/s (median of per-run ratios)"
        )
    _render_cache(report, say, console)
    _render_rss(report, say, console)
    targets = report.targets()
    rows_target = targets["rows_per_s"]
    say(
        f"target: >= {ROWS_PER_S_TARGET:,.0f} rows/s into PostgreSQL:"
        f" {show_count(report.fastest.rows_per_s)} ({report.fastest.name}):"
        f" {verdict(_met(rows_target))}"
    )
    say(
        f"target: pipelined cache step >= {CACHE_SPEEDUP_TARGET:.0f}x faster than one round trip"
        f" per key: {show_ratio(report.cache_speedup)}: {verdict(_met(targets['cache_speedup']))}"
    )
    rss_note = "" if report.rss_run is not None else " (run with --rss-check)"
    say(
        f"target: peak RSS of the large file <= {RSS_RATIO_TARGET}x the small one's:"
        f" {show_ratio(report.rss_ratio)}: {verdict(_met(targets['rss_ratio']))}{rss_note}"
    )


def _met(target: Mapping[str, object]) -> bool | None:
    met = target["met"]
    return None if met is None else bool(met)


def _render_cache(report: ImportBenchReport, say: Say, console: Console) -> None:
    if not report.cache:
        return
    keys = report.cache[0].keys
    batch = report.cache[0].batch
    one = median([comparison.one_per_key for comparison in report.cache])
    piped = median([comparison.pipelined for comparison in report.cache])
    in_import = report.methods[0].cache_seconds
    pipelines = report.methods[0].runs[0].cache_pipelines

    def keys_per_s(seconds: float | None) -> str:
        return show_count(None if not seconds else keys / seconds)

    rows = [
        ("one key per round trip", show_count(keys), show_seconds(one), keys_per_s(one), "1.00x"),
        (
            f"pipelined, {batch:,} keys per round trip",
            show_count(-(-keys // batch)),
            show_seconds(piped),
            keys_per_s(piped),
            show_ratio(report.cache_speedup),
        ),
        (
            "in the import (pipelined, + list generation)",
            show_count(pipelines),
            show_seconds(in_import),
            keys_per_s(in_import),
            show_ratio(ratio(one, in_import)),
        ),
    ]
    title = (
        f"cache step: invalidating the {keys:,} imported posts' keys"
        f" ({report.methods[0].name} runs)"
    )
    columns = ("how", "round trips", "seconds", "keys/s", "vs one per key")
    console.print(_table(title, columns, rows))
    say(
        f"after each run's import, on its keys, both ways interleaved slice by slice"
        f" ({TIMING_SLICE:,} keys);"
        " each key: INCR of its\ngeneration, PEXPIRE, DEL; medians of runs, the speed-up the median"
        " of per-run ratios"
    )


def _render_rss(report: ImportBenchReport, say: Say, console: Console) -> None:
    if report.rss_run is None or report.rss_csv is None:
        return
    small, large = report.methods[0], report.rss_run
    rows = [
        (
            f"{report.csv.rows:,} rows ({report.csv.size / 1e6:,.0f} MB)",
            show_mib(small.peak_rss),
            show_mib(small.rss_before),
            show_mib(small.rss_growth),
            show_count(small.rows_per_s),
            f"median of {len(small.runs)}",
        ),
        (
            f"{report.rss_csv.rows:,} rows ({report.rss_csv.size / 1e6:,.0f} MB)",
            show_mib(float(large.peak_rss)),
            show_mib(float(large.rss_before)),
            show_mib(float(large.peak_rss - large.rss_before)),
            show_count(large.rows_per_s),
            "one run",
        ),
    ]
    title = f"memory: peak RSS of one import process ({large.method})"
    columns = ("file", "peak RSS MiB", "RSS before MiB", "growth MiB", "rows/s", "runs")
    console.print(_table(title, columns, rows))
    say(
        f"large vs small: {show_ratio(report.rss_ratio)} the peak RSS,"
        f" {show_ratio(report.rss_growth_ratio)} the growth (peak minus RSS before the import)"
    )
