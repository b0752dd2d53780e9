"""Pure code for the benchmarks: percentiles, medians of runs, ratios, the report's rows, and
reading redis-benchmark's output. No I/O here; the runners measure and this module decides.

Latencies are float seconds here and milliseconds only when shown. Every ratio is taken against
the reference measured in the same run and then the median of those per-run ratios is reported,
so that drift between runs (a noisy neighbour, CPU frequency) cancels out instead of adding up.
"""

from __future__ import annotations

import csv
import math
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

MS = 1e3  # milliseconds per second, for display

COLUMNS = (
    "profile",
    "ops/s",
    "p50 ms",
    "p99 ms",
    "p99.9 ms",
    "max ms",
    "errors",
    "ops/s vs ref",
    "p99 vs ref",
)

OPS_TARGET = 1.0  # tuned must do at least the reference's operations per second
P99_TARGET = 1.1  # ...with a p99 no more than 10% above the reference's


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank `q`th percentile (0 <= q <= 100) of `values`, which need not be sorted.

    Nearest rank means the result is always one of the measured values: the smallest value with at
    least q% of all values at or below it. p100 is the maximum; p0 is taken as the minimum.
    """
    return percentile_of_sorted(sorted(values), q)


def percentiles(values: Sequence[float], qs: Sequence[float]) -> list[float]:
    """Several percentiles of `values` with one sort."""
    ordered = sorted(values)
    return [percentile_of_sorted(ordered, q) for q in qs]


def percentile_of_sorted(ordered: Sequence[float], q: float) -> float:
    if not ordered:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    rank = math.ceil(q / 100 * len(ordered))
    return ordered[max(rank, 1) - 1]


def median(values: Sequence[float | None]) -> float | None:
    """The median of the runs' values; None if there are none or any run has no value."""
    if not values or any(value is None for value in values):
        return None
    return float(statistics.median(value for value in values if value is not None))


def ratio(value: float | None, reference: float | None) -> float | None:
    """`value / reference`, or None when either is unknown or the reference is zero."""
    if value is None or reference is None or reference == 0:
        return None
    return value / reference


@dataclass(frozen=True, slots=True)
class RunResult:
    """One measured run of one profile. Latencies in seconds; None: not measured."""

    ops: int  # operations that succeeded
    errors: int  # operations that raised
    elapsed: float  # seconds, from the first request to the last reply
    p50: float | None
    p99: float | None
    p999: float | None
    first_error: str | None = None
    details: Mapping[str, object] = field(default_factory=dict)  # e.g. the pool's counters
    worst: float | None = None  # the longest operation: where an unfair pool's starvation shows

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.elapsed if self.elapsed > 0 else 0.0


def summarize_run(
    latencies: Sequence[float],
    *,
    errors: int,
    elapsed: float,
    first_error: str | None = None,
    details: Mapping[str, object] | None = None,
) -> RunResult:
    """A run from its per-operation latencies (failed operations included) and error count."""
    details = dict(details or {})
    if not latencies:
        return RunResult(0, errors, elapsed, None, None, None, first_error, details)
    p50, p99, p999 = percentiles(latencies, (50, 99, 99.9))
    ops = max(0, len(latencies) - errors)
    return RunResult(ops, errors, elapsed, p50, p99, p999, first_error, details, max(latencies))


@dataclass(frozen=True, slots=True)
class ProfileSummary:
    """A profile's runs reduced to medians, with its ratios to the reference's runs."""

    name: str
    runs: list[RunResult]
    ops_per_s: float | None
    p50: float | None
    p99: float | None
    p999: float | None
    errors: int  # summed over the runs
    ops_ratio: float | None  # median over runs of ops/s / the reference's ops/s (higher is better)
    p99_ratio: float | None  # median over runs of p99 / the reference's p99 (lower is better)
    note: str | None = None  # why it was not measured, or a caveat
    worst: float | None = None  # median over runs of each run's longest operation
    topology: str = ""  # the Redis it ran on (single, cluster...); the reference ran there too


def summarize_profile(
    name: str,
    runs: Sequence[RunResult],
    reference: Sequence[RunResult],
    *,
    note: str | None = None,
    topology: str = "",
) -> ProfileSummary:
    """Medians of `runs`; ratios paired run by run with `reference` (same length, same order)."""
    if len(runs) != len(reference) and runs:
        raise ValueError(f"{name}: {len(runs)} runs but the reference has {len(reference)}")
    pairs = list(zip(runs, reference, strict=False))  # no runs: no pairs
    ops_ratios = [ratio(run.ops_per_s, ref.ops_per_s) for run, ref in pairs]
    p99_ratios = [ratio(run.p99, ref.p99) for run, ref in pairs]
    return ProfileSummary(
        name=name,
        runs=list(runs),
        ops_per_s=median([run.ops_per_s for run in runs]),
        p50=median([run.p50 for run in runs]),
        p99=median([run.p99 for run in runs]),
        p999=median([run.p999 for run in runs]),
        errors=sum(run.errors for run in runs),
        ops_ratio=median(ops_ratios),
        p99_ratio=median(p99_ratios),
        note=note,
        worst=median([run.worst for run in runs]),
        topology=topology,
    )


# Shared with `bench.http_stats`: how both benchmarks print and store figures.


def show_count(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def show_ms(value: float | None) -> str:
    return "-" if value is None else f"{value * MS:.2f}"


def show_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def table_rows(summaries: Sequence[ProfileSummary]) -> list[tuple[str, ...]]:
    """One row of text per profile, in `COLUMNS` order."""
    rows = []
    for summary in summaries:
        if not summary.runs:
            rows.append((summary.name, *("-" for _ in COLUMNS[1:])))
            continue
        rows.append(
            (
                summary.name,
                show_count(summary.ops_per_s),
                show_ms(summary.p50),
                show_ms(summary.p99),
                show_ms(summary.p999),
                show_ms(summary.worst),
                str(summary.errors),
                show_ratio(summary.ops_ratio),
                show_ratio(summary.p99_ratio),
            )
        )
    return rows


# -- topologies side by side: the same profiles on one Redis and on a cluster ------------------

# Two-line headers: with a topology column and the ratios to the first topology, the table must
# still fit a 120-column terminal.
TOPOLOGY_COLUMNS = (
    "profile",
    "topology",
    "ops/s",
    "p50\nms",
    "p99\nms",
    "p99.9\nms",
    "max\nms",
    "errors",
    "ops/s\nvs ref",
    "p99\nvs ref",
    "ops/s vs\n{baseline}",
    "p99 vs\n{baseline}",
)


@dataclass(frozen=True, slots=True)
class Versus:
    """A profile on one topology next to the same profile on the first (the baseline): median
    per-run ratios, the runs paired as they were interleaved."""

    name: str
    topology: str
    baseline: str
    ops_ratio: float | None  # higher is better
    p99_ratio: float | None  # lower is better


def versus(summary: ProfileSummary, baseline: ProfileSummary) -> Versus:
    pairs = list(zip(summary.runs, baseline.runs, strict=False))
    if len(summary.runs) != len(baseline.runs):
        pairs = []  # one of them did not run (a floor that failed): no ratio
    return Versus(
        name=summary.name,
        topology=summary.topology,
        baseline=baseline.topology,
        ops_ratio=median([ratio(run.ops_per_s, base.ops_per_s) for run, base in pairs]),
        p99_ratio=median([ratio(run.p99, base.p99) for run, base in pairs]),
    )


def by_profile(summaries: Sequence[ProfileSummary]) -> list[list[ProfileSummary]]:
    """The summaries grouped by profile (in the order profiles first appear), each group in the
    order of the topologies: the first of each group is the baseline the others compare with."""
    groups: dict[str, list[ProfileSummary]] = {}
    for summary in summaries:
        groups.setdefault(summary.name, []).append(summary)
    return list(groups.values())


def topology_rows(summaries: Sequence[ProfileSummary]) -> list[list[tuple[str, ...]]]:
    """Rows in `TOPOLOGY_COLUMNS` order, one group per profile, one row per topology; the
    profile's name on its first row only, the ratios to the baseline on the others."""
    groups = []
    for group in by_profile(summaries):
        baseline, rows = group[0], []
        for position, summary in enumerate(group):
            [row] = table_rows([summary])
            name = summary.name if position == 0 else ""
            against = ("", "")
            if position > 0:
                compared = versus(summary, baseline)
                against = (show_ratio(compared.ops_ratio), show_ratio(compared.p99_ratio))
            rows.append((name, summary.topology, *row[1:], *against))
        groups.append(rows)
    return groups


def versus_json(summaries: Sequence[ProfileSummary]) -> list[dict[str, object]]:
    """Every profile on every topology but the first, against the first."""
    found: list[dict[str, object]] = []
    for baseline, *others in by_profile(summaries):
        for summary in others:
            compared = versus(summary, baseline)
            found.append(
                {
                    "profile": compared.name,
                    "topology": compared.topology,
                    "baseline": compared.baseline,
                    "ops_vs_baseline": compared.ops_ratio,
                    "p99_vs_baseline": compared.p99_ratio,
                }
            )
    return found


def target_met(tuned: ProfileSummary) -> bool:
    return (
        tuned.ops_ratio is not None
        and tuned.p99_ratio is not None
        and tuned.ops_ratio >= OPS_TARGET
        and tuned.p99_ratio <= P99_TARGET
    )


def target_line(tuned: ProfileSummary) -> str:
    return (
        f"tuned vs reference: {show_ratio(tuned.ops_ratio)} ops/s (target >= {OPS_TARGET:.1f}x),"
        f" p99 {show_ratio(tuned.p99_ratio)} (target <= {P99_TARGET:.1f}x)"
    )


def ms_or_none(value: float | None) -> float | None:
    return None if value is None else round(value * MS, 4)


def run_json(run: RunResult) -> dict[str, object]:
    return {
        "ops": run.ops,
        "errors": run.errors,
        "elapsed_s": round(run.elapsed, 4),
        "ops_per_s": round(run.ops_per_s, 1),
        "p50_ms": ms_or_none(run.p50),
        "p99_ms": ms_or_none(run.p99),
        "p999_ms": ms_or_none(run.p999),
        "max_ms": ms_or_none(run.worst),
        "first_error": run.first_error,
        "details": dict(run.details),
    }


def summary_json(summary: ProfileSummary, description: str) -> dict[str, object]:
    """A profile as JSON: the medians shown in the table, the ratios, and every run."""
    ops_per_s = summary.ops_per_s
    return {
        "name": summary.name,
        "topology": summary.topology or None,
        "description": description,
        "ops_per_s": None if ops_per_s is None else round(ops_per_s, 1),
        "p50_ms": ms_or_none(summary.p50),
        "p99_ms": ms_or_none(summary.p99),
        "p999_ms": ms_or_none(summary.p999),
        "max_ms": ms_or_none(summary.worst),
        "errors": summary.errors,
        "ops_vs_ref": summary.ops_ratio,
        "p99_vs_ref": summary.p99_ratio,
        "note": summary.note,
        "runs": [run_json(run) for run in summary.runs],
    }


def target_json(tuned: ProfileSummary) -> dict[str, object]:
    return {
        "ops_vs_ref": tuned.ops_ratio,
        "ops_target": OPS_TARGET,
        "p99_vs_ref": tuned.p99_ratio,
        "p99_target": P99_TARGET,
        "met": target_met(tuned),
        "line": target_line(tuned),
    }


_QUIET_LINE = re.compile(r"([\d.]+) requests per second(?:, p50=([\d.]+) msec)?")


def parse_redis_benchmark(output: str) -> tuple[float, float | None, float | None]:
    """Requests/s, p50 and p99 in seconds (None when not reported) from redis-benchmark's output.

    Understands `--csv` with a header (Redis 6.2+: test, rps, ..., p50_latency_ms, p99_latency_ms),
    the older header-less `--csv` ("GET","81234.56") and `-q` ("GET: 81234.56 requests per second,
    p50=0.487 msec"). Raises ValueError when none of them is found.
    """
    lines = [line for line in output.replace("\r", "\n").splitlines() if line.strip()]
    rows = list(csv.reader(lines))
    header = next((row for row in rows if row[:2] == ["test", "rps"]), None)
    if header is not None and rows[-1] is not header:
        record = dict(zip(header, rows[-1], strict=False))
        return (
            float(record["rps"]),
            _seconds(record.get("p50_latency_ms")),
            _seconds(record.get("p99_latency_ms")),
        )
    if rows and len(rows[-1]) == 2 and _is_number(rows[-1][1]):
        return float(rows[-1][1]), None, None
    found = _QUIET_LINE.findall(output)
    if found:
        rps, p50 = found[-1]
        return float(rps), _seconds(p50 or None), None
    raise ValueError("no requests per second found in redis-benchmark's output")


def _seconds(milliseconds: str | None) -> float | None:
    return None if milliseconds is None else float(milliseconds) / MS


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
