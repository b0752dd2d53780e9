"""The PNG `postal bench seed --plot` writes: request latency percentiles of both profiles.

One chart, log-scaled latency against the percentiles p50 ... p99.9: the requests of
GET /api/v1/posts/{id} (solid) and GET /api/v1/posts (dashed) as the load generator saw them,
and the cache GETs of the first load as Postal timed them (dotted, each estimate with a bar
spanning the histogram bucket it is known to lie in), each point the median over a profile's
runs. matplotlib
is optional (the `bench` extra); `require_matplotlib` tells the CLI before anything runs.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from postal_bench.seed.bench import SeedReport
from postal_bench.seed.report import (
    ITEM_PATH,
    LIST_PATH,
    PERCENTILES,
    PROFILES,
    Phase,
    ProfileRun,
)
from postal_bench.stats import median

INSTALL_HINT = "pip install 'postal[bench]' (or make install)"
COLOURS = {"before": "tab:red", "tuned": "tab:blue"}
FLOOR_MS = 0.05  # where a bucket starting at 0 is drawn from on the log scale


def require_matplotlib() -> None:
    """ImportError with the way to install it, unless matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError(f"--plot needs matplotlib: {INSTALL_HINT}") from None


def _medians(runs: list[ProfileRun], phase: Callable[[ProfileRun], Phase]) -> list[float | None]:
    return [median([phase(run).latency.get(q) for run in runs]) for q in PERCENTILES]


@dataclass(frozen=True, slots=True)
class BucketPoint:
    """One cache GET percentile: the estimate and the bucket it is known to lie in (seconds)."""

    position: int
    estimate: float
    lower: float
    upper: float


def _cache_get_points(runs: list[ProfileRun]) -> list[BucketPoint]:
    """The service's cache GET percentiles from its histogram: per percentile, the median
    run's estimate and, conservatively, the widest bucket bounds (a +Inf bound is left out)."""
    points = []
    for position, q in enumerate(PERCENTILES):
        quantiles = [run.items.cache.get_quantile(q / 100) for run in runs]
        known = [quantile for quantile in quantiles if quantile is not None]
        if not known or len(known) != len(quantiles):
            continue
        estimate = statistics.median(quantile.estimate for quantile in known)
        upper = statistics.median_high([quantile.upper for quantile in known])
        points.append(
            BucketPoint(
                position,
                estimate,
                lower=statistics.median_low([quantile.lower for quantile in known]),
                upper=estimate if math.isinf(upper) else upper,
            )
        )
    return points


def _plot_buckets(axes: Any, points: list[BucketPoint], colour: str, label: str) -> None:
    """Dotted estimates with bars spanning each one's bucket (its lower bound floored at
    FLOOR_MS, as 0 has no place on a log scale)."""
    if not points:
        return
    ms = [point.estimate * 1e3 for point in points]
    below = [max(point.estimate * 1e3 - max(point.lower * 1e3, FLOOR_MS), 0.0) for point in points]
    above = [point.upper * 1e3 - point.estimate * 1e3 for point in points]
    axes.errorbar(
        [point.position for point in points],
        ms,
        yerr=[below, above],
        fmt=":",
        marker="s",
        capsize=3,
        color=colour,
        alpha=0.8,
        label=label,
    )


def write_plot(report: SeedReport, path: Path) -> None:
    """Draw the chart into `path` (PNG), with matplotlib's non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot, ticker

    figure, axes = pyplot.subplots(figsize=(8, 5), dpi=120)
    positions = list(range(len(PERCENTILES)))
    for profile in PROFILES:
        runs = report.of(profile)
        label = f"{profile}: cache GET in Postal (bar: its histogram bucket)"
        _plot_buckets(axes, _cache_get_points(runs), COLOURS[profile], label)
        for name, values, style in (
            (ITEM_PATH, _medians(runs, lambda run: run.items), "-"),
            (LIST_PATH, _medians(runs, lambda run: run.listing), "--"),
        ):
            points = [(x, y * 1e3) for x, y in zip(positions, values, strict=True) if y]
            if points:
                xs, ys = zip(*points, strict=True)
                axes.plot(
                    xs, ys, style, marker="o", color=COLOURS[profile], label=f"{profile}: {name}"
                )
    options = report.options
    axes.set_yscale("log")
    axes.yaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    axes.set_xticks(positions, [f"p{q:g}" for q in PERCENTILES])
    axes.set_xlabel("percentile")
    axes.set_ylabel("latency (ms, log scale)")
    axes.set_title(
        f"postal bench seed: {options.requests:,} requests x {options.connections} connections,"
        f" hit rate {options.hit_rate:.0%}, medians of {options.runs} run(s)",
        fontsize=10,
    )
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    pyplot.close(figure)
