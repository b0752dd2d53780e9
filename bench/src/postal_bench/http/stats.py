"""Pure code for `postal bench http`: reading wrk's output, reducing runs to medians and ratios,
the table's rows and the JSON. No I/O; the runner measures, this decides (the targets are
checked in `http.targets`).

A run of a target has two halves: a closed loop (its rate is the req/s shown, and the server's
CPU per request is taken over it) and an open loop at a fixed rate (its p50, p99 and max are the
latencies shown). As in `stats`, every ratio is taken between targets measured in the same run
and the median of those per-run ratios is reported.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from postal_bench.stats import (
    RunResult,
    median,
    ms_or_none,
    ratio,
    run_json,
    show_count,
    show_ms,
    show_ratio,
)

# Postal with the near cache on (its default) and off (NEAR_CACHE_ENABLED=false).
FLOOR, PEER, POSTAL, POSTAL_NEAR_OFF = "floor", "peer", "postal", "postal-near-off"
ORDER = (FLOOR, PEER, POSTAL, POSTAL_NEAR_OFF)
POSTALS = (POSTAL, POSTAL_NEAR_OFF)
US = 1e6  # microseconds per second, for display

# Two-line headers, so that the table fits 120 columns.
COLUMNS = (
    "target",
    "req/s",
    "p50\nms",
    "p99\nms",
    "max\nms",
    "errors",
    "CPU\nµs/req",
    "req/s\nvs peer",
    "req/s\nvs floor",
    "p99\nvs peer",
    "p99\nvs floor",
)


@dataclass(frozen=True, slots=True)
class HttpRun:
    """One run of one target: `closed` gives the rate, `open` the latencies."""

    closed: RunResult
    open: RunResult
    log_lines: int = 0  # lines the server wrote during the run (warnings and errors)
    first_log_line: str | None = None
    # CPU seconds (user + system) of the server process and its workers over the closed loop,
    # warm-up excluded; None where /proc cannot say.
    server_cpu: float | None = None

    @property
    def rps(self) -> float:
        return self.closed.ops_per_s

    @property
    def cpu_per_request(self) -> float | None:
        """Server CPU seconds per request the closed loop got a 2xx for."""
        if self.server_cpu is None or self.closed.ops <= 0:
            return None
        return self.server_cpu / self.closed.ops


@dataclass(frozen=True, slots=True)
class TargetSummary:
    name: str
    runs: list[HttpRun]
    rps: float | None
    p50: float | None
    p99: float | None
    p999: float | None
    worst: float | None
    errors: int  # both loops, summed over the runs
    rps_vs_peer: float | None
    rps_vs_floor: float | None
    p99_vs_peer: float | None
    p99_vs_floor: float | None
    note: str | None = None
    topology: str = ""  # the Redis behind it (single, cluster...); "" for the floor: none
    cpu_per_request: float | None = None  # server CPU seconds a request, median of runs
    # The closed loop's p99 (100 connections back to back: mostly queueing) against the
    # floor's, median of per-run ratios; the p99 columns are the open loop's.
    closed_p99_vs_floor: float | None = None


def _paired(runs: Sequence[HttpRun], reference: Sequence[HttpRun] | None) -> list[HttpRun]:
    """`reference`'s runs when it has one per run of `runs`, else none (no ratio)."""
    if not reference or len(reference) != len(runs):
        return []
    return list(reference)


def summarize_target(
    name: str,
    runs: Sequence[HttpRun],
    by_name: Mapping[str, Sequence[HttpRun]],
    note: str | None = None,
    topology: str = "",
) -> TargetSummary:
    """Medians of `runs`, and median per-run ratios to the peer's and the floor's runs."""
    log_lines = sum(run.log_lines for run in runs)
    if log_lines:
        first = next(run.first_log_line for run in runs if run.first_log_line)
        logged = f"the server logged {log_lines:,} line(s) while measured, first: {first}"
        note = f"{note}; {logged}" if note else logged
    peer = _paired(runs, by_name.get(PEER))
    floor = _paired(runs, by_name.get(FLOOR))

    def ratios(reference: Sequence[HttpRun], p99: bool, closed: bool = False) -> float | None:
        if not reference:
            return None
        pairs = zip(runs, reference, strict=True)
        if closed:
            return median([ratio(run.closed.p99, ref.closed.p99) for run, ref in pairs])
        if p99:
            return median([ratio(run.open.p99, ref.open.p99) for run, ref in pairs])
        return median([ratio(run.rps, ref.rps) for run, ref in pairs])

    return TargetSummary(
        name=name,
        runs=list(runs),
        rps=median([run.rps for run in runs]),
        p50=median([run.open.p50 for run in runs]),
        p99=median([run.open.p99 for run in runs]),
        p999=median([run.open.p999 for run in runs]),
        worst=median([run.open.worst for run in runs]),
        errors=sum(run.closed.errors + run.open.errors for run in runs),
        rps_vs_peer=ratios(peer, p99=False),
        rps_vs_floor=ratios(floor, p99=False),
        p99_vs_peer=ratios(peer, p99=True),
        p99_vs_floor=ratios(floor, p99=True),
        note=note,
        topology="" if name == FLOOR else topology,
        cpu_per_request=median([run.cpu_per_request for run in runs]),
        closed_p99_vs_floor=ratios(floor, p99=True, closed=True),
    )


def summarize(
    results: Mapping[str, Sequence[HttpRun]],
    notes: Mapping[str, str] | None = None,
    topology: str = "",
) -> list[TargetSummary]:
    """Every measured target, in `ORDER`; the peer and the Postals on `topology`."""
    notes = notes or {}
    return [
        summarize_target(name, results[name], results, notes.get(name), topology)
        for name in ORDER
        if name in results
    ]


def show_us(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * US:,.0f}"


def table_rows(summaries: Sequence[TargetSummary]) -> list[tuple[str, ...]]:
    """One row of text per target, in `COLUMNS` order."""
    return [
        (
            summary.name,
            show_count(summary.rps),
            show_ms(summary.p50),
            show_ms(summary.p99),
            show_ms(summary.worst),
            str(summary.errors),
            show_us(summary.cpu_per_request),
            show_ratio(summary.rps_vs_peer),
            show_ratio(summary.rps_vs_floor),
            show_ratio(summary.p99_vs_peer),
            show_ratio(summary.p99_vs_floor),
        )
        for summary in summaries
    ]


# -- topologies side by side: the peer and Postal on one Redis and on a cluster ----------------

TOPOLOGY_COLUMNS = (
    "target",
    "topology",
    "req/s",
    "p50\nms",
    "p99\nms",
    "max\nms",
    "errors",
    "CPU\nµs/req",
    "req/s\nvs peer",
    "req/s\nvs floor",
    "p99\nvs peer",
    "p99\nvs floor",
    "req/s vs\n{baseline}",
    "p99 vs\n{baseline}",
)


@dataclass(frozen=True, slots=True)
class Versus:
    """A target on one topology next to the same target on the first (the baseline): median
    per-run ratios of the closed loop's req/s and the open loop's p99, runs paired in order."""

    name: str
    topology: str
    baseline: str
    rps_ratio: float | None
    p99_ratio: float | None


def versus(summary: TargetSummary, baseline: TargetSummary) -> Versus:
    pairs = list(zip(summary.runs, baseline.runs, strict=True))
    return Versus(
        name=summary.name,
        topology=summary.topology,
        baseline=baseline.topology,
        rps_ratio=median([ratio(run.rps, base.rps) for run, base in pairs]),
        p99_ratio=median([ratio(run.open.p99, base.open.p99) for run, base in pairs]),
    )


def by_target(summaries: Sequence[TargetSummary]) -> list[list[TargetSummary]]:
    """The summaries grouped by target, each group in the order of the topologies."""
    groups: dict[str, list[TargetSummary]] = {}
    for summary in summaries:
        groups.setdefault(summary.name, []).append(summary)
    return list(groups.values())


def topology_rows(summaries: Sequence[TargetSummary]) -> list[list[tuple[str, ...]]]:
    """Rows in `TOPOLOGY_COLUMNS` order, one group per target, one row per topology (the floor,
    which has no Redis, one row); the ratios to the baseline on every row but a group's first."""
    groups = []
    for group in by_target(summaries):
        baseline, rows = group[0], []
        for position, summary in enumerate(group):
            [row] = table_rows([summary])
            against = ("", "")
            if position > 0:
                compared = versus(summary, baseline)
                against = (show_ratio(compared.rps_ratio), show_ratio(compared.p99_ratio))
            name = summary.name if position == 0 else ""
            rows.append((name, summary.topology or "-", *row[1:], *against))
        groups.append(rows)
    return groups


def versus_json(summaries: Sequence[TargetSummary]) -> list[dict[str, object]]:
    """Every target on every topology but the first, against the first."""
    found: list[dict[str, object]] = []
    for baseline, *others in by_target(summaries):
        for summary in others:
            compared = versus(summary, baseline)
            found.append(
                {
                    "target": compared.name,
                    "topology": compared.topology,
                    "baseline": compared.baseline,
                    "req_per_s_vs_baseline": compared.rps_ratio,
                    "p99_vs_baseline": compared.p99_ratio,
                }
            )
    return found


def runs_line(summary: TargetSummary) -> str | None:
    """Each run's req/s and p99, when there are several: a median hides one bad run, this not."""
    if len(summary.runs) < 2:
        return None
    rates = " / ".join(show_count(run.rps) for run in summary.runs)
    p99s = " / ".join(show_ms(run.open.p99) for run in summary.runs)
    return f"runs: req/s {rates}; p99 ms {p99s}"


def summary_json(summary: TargetSummary, description: str) -> dict[str, object]:
    """A target as JSON: the medians shown in the table, the ratios, and every run's two loops."""
    return {
        "name": summary.name,
        "topology": summary.topology or None,
        "description": description,
        "req_per_s": None if summary.rps is None else round(summary.rps, 1),
        "p50_ms": ms_or_none(summary.p50),
        "p99_ms": ms_or_none(summary.p99),
        "p999_ms": ms_or_none(summary.p999),
        "max_ms": ms_or_none(summary.worst),
        "errors": summary.errors,
        "server_cpu_us_per_request": (
            None if summary.cpu_per_request is None else round(summary.cpu_per_request * US, 1)
        ),
        "req_per_s_vs_peer": summary.rps_vs_peer,
        "req_per_s_vs_floor": summary.rps_vs_floor,
        "p99_vs_peer": summary.p99_vs_peer,
        "p99_vs_floor": summary.p99_vs_floor,
        "closed_p99_vs_floor": summary.closed_p99_vs_floor,
        "note": summary.note,
        "runs": [
            {
                "closed": run_json(run.closed),
                "open": run_json(run.open),
                "server_cpu_s": None if run.server_cpu is None else round(run.server_cpu, 3),
                "server_log_lines": run.log_lines,
                "first_server_log_line": run.first_log_line,
            }
            for run in summary.runs
        ],
    }


# -- wrk ---------------------------------------------------------------------------------------

_WRK_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_WRK_TIME = r"([\d.]+)(us|ms|s|m|h)"
_WRK_TOTAL = re.compile(rf"(\d+) requests in {_WRK_TIME}")
_WRK_PERCENTILE = re.compile(rf"^\s*(50|99)(?:\.0+)?%\s+{_WRK_TIME}\s*$", re.MULTILINE)
_WRK_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s*(\d+)")
_WRK_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def _wrk_seconds(number: str, unit: str) -> float:
    return float(number) * _WRK_UNITS[unit]


def parse_wrk(output: str) -> RunResult:
    """A closed-loop run from `wrk --latency`'s output; ValueError if it has no totals.

    Errors are the non-2xx/3xx replies plus the socket errors (connect, read, write, timeout);
    p50 and p99 come from the "Latency Distribution" block (timed from each send: closed loop).
    """
    total = _WRK_TOTAL.search(output)
    if total is None:
        raise ValueError("no 'N requests in T' line in wrk's output")
    requests = int(total.group(1))
    elapsed = _wrk_seconds(total.group(2), total.group(3))
    latency = {
        match.group(1): _wrk_seconds(match.group(2), match.group(3))
        for match in _WRK_PERCENTILE.finditer(output)
    }
    non_2xx_match = _WRK_NON_2XX.search(output)
    non_2xx = int(non_2xx_match.group(1)) if non_2xx_match else 0  # counted in `requests`
    socket = _WRK_SOCKET.search(output)
    failed = sum(int(count) for count in socket.groups()) if socket else 0  # not in `requests`
    errors = non_2xx + failed
    first_error = None
    if non_2xx:
        first_error = f"{non_2xx} non-2xx/3xx replies"
    elif socket is not None and failed:
        first_error = f"wrk: {socket.group(0)}"
    return RunResult(
        ops=max(0, requests - non_2xx),
        errors=errors,
        elapsed=elapsed,
        p50=latency.get("50"),
        p99=latency.get("99"),
        p999=None,
        first_error=first_error,
        details={"tool": "wrk", "requests": requests},
    )
