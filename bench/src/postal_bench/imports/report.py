"""What `postal bench import` measured, reduced to medians and checked against the targets.

Pure code, no I/O: the runner (`bench.imports`) measures, this module decides, and
`bench.import_render` shows it.

As in the other benches, a claim is a ratio against something measured in the same run: the
pipelined cache step against one round trip per key on the same keys, the 1M-row file's peak RSS
against the 100k-row file's, one write method against the other.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from postal_bench.imports.csv_gen import GeneratedCsv
from postal_bench.stats import median, ratio

ROWS_PER_S_TARGET = 20_000.0  # into PostgreSQL, on this machine
CACHE_SPEEDUP_TARGET = 10.0  # pipelined cache step vs one round trip per key
RSS_RATIO_TARGET = 1.5  # peak RSS, 1M-row file vs 100k-row file
TIMING_SLICE = 10_000  # keys per slice of the cache step's comparison (see bench.imports)


@dataclass(frozen=True, slots=True)
class ImportRun:
    """One import of one file in a child process, checked against the database afterwards."""

    method: str  # what the importer used
    file_rows: int
    seconds: float  # PostImporter.run's wall time, cache step included
    peak_rss: int  # bytes, the child's ru_maxrss at the end
    rss_before: int  # bytes, the child's resident set just before the import began
    rows_read: int
    created: int
    invalid: int
    committed: bool
    cache_keys: int
    cache_pipelines: int
    cache_seconds: float
    cache_pending: bool
    posts: int  # rows in posts afterwards
    versions: int  # rows in post_versions afterwards
    first_error: str | None = None

    @property
    def rows_per_s(self) -> float:
        return self.rows_read / self.seconds if self.seconds > 0 else 0.0

    @property
    def problem(self) -> str | None:
        """Why this run does not count (the import refused or lost rows), or None."""
        if not self.committed or self.invalid:
            first = f": {self.first_error}" if self.first_error else ""
            return f"the import refused the generated file ({self.invalid:,} bad rows{first})"
        expected = self.file_rows
        if (self.rows_read, self.created, self.posts, self.versions) != (expected,) * 4:
            return (
                f"expected {expected:,} rows everywhere, got {self.rows_read:,} read,"
                f" {self.created:,} created, {self.posts:,} posts and {self.versions:,}"
                " versions in the database"
            )
        return None

    @classmethod
    def from_child(
        cls, result: Mapping[str, Any], file_rows: int, counts: tuple[int, int]
    ) -> ImportRun:
        report = result["report"]
        cache = report.get("cache") or {}
        errors = report.get("errors") or []
        first_error = None
        if errors:
            error = errors[0]
            first_error = f"line {error.get('line')}, {error.get('column')}: {error.get('message')}"
        return cls(
            method=str(result["method"]),
            file_rows=file_rows,
            seconds=float(result["seconds"]),
            peak_rss=int(result["peak_rss"]),
            rss_before=int(result["rss_before"]),
            rows_read=int(report["rows_read"]),
            created=int(report["created"]),
            invalid=int(report["invalid"]),
            committed=bool(report["committed"]),
            cache_keys=int(cache.get("keys", 0)),
            cache_pipelines=int(cache.get("pipelines", 0)),
            cache_seconds=float(cache.get("seconds", 0.0)),
            cache_pending=bool(cache.get("pending", False)),
            posts=counts[0],
            versions=counts[1],
            first_error=first_error,
        )

    def to_json(self) -> dict[str, object]:
        return {
            "method": self.method,
            "rows": self.rows_read,
            "seconds": round(self.seconds, 4),
            "rows_per_s": round(self.rows_per_s, 1),
            "peak_rss_bytes": self.peak_rss,
            "rss_before_import_bytes": self.rss_before,
            "created": self.created,
            "invalid": self.invalid,
            "committed": self.committed,
            "cache_step": {
                "keys": self.cache_keys,
                "pipelines": self.cache_pipelines,
                "seconds": round(self.cache_seconds, 4),
                "pending": self.cache_pending,
            },
            "rows_in_database": {"posts": self.posts, "post_versions": self.versions},
        }


@dataclass(frozen=True, slots=True)
class CacheComparison:
    """The same keys invalidated one per round trip, then `batch` per round trip."""

    keys: int
    batch: int
    one_per_key: float  # seconds
    pipelined: float  # seconds

    @property
    def speedup(self) -> float | None:
        return ratio(self.one_per_key, self.pipelined)

    def to_json(self) -> dict[str, object]:
        return {
            "keys": self.keys,
            "keys_per_pipeline": self.batch,
            "one_per_key_s": round(self.one_per_key, 4),
            "pipelined_s": round(self.pipelined, 4),
            "speedup": self.speedup,
        }


@dataclass(frozen=True, slots=True)
class MethodSummary:
    name: str  # as asked: copy or insert
    runs: list[ImportRun]

    @property
    def rows_per_s(self) -> float | None:
        return median([run.rows_per_s for run in self.runs])

    @property
    def seconds(self) -> float | None:
        return median([run.seconds for run in self.runs])

    @property
    def peak_rss(self) -> float | None:
        return median([float(run.peak_rss) for run in self.runs])

    @property
    def rss_before(self) -> float | None:
        return median([float(run.rss_before) for run in self.runs])

    @property
    def rss_growth(self) -> float | None:
        """Median over runs of peak RSS minus the RSS when the import began."""
        return median([float(run.peak_rss - run.rss_before) for run in self.runs])

    @property
    def cache_seconds(self) -> float | None:
        return median([run.cache_seconds for run in self.runs])

    def to_json(self) -> dict[str, object]:
        rows_per_s = self.rows_per_s
        return {
            "method": self.name,
            "rows_per_s": None if rows_per_s is None else round(rows_per_s, 1),
            "seconds": _rounded(self.seconds),
            "peak_rss_bytes": self.peak_rss,
            "cache_step_s": _rounded(self.cache_seconds),
            "runs": [run.to_json() for run in self.runs],
        }


@dataclass(frozen=True, slots=True)
class ImportBenchReport:
    settings: dict[str, object]  # the options, URLs masked
    started_at: str
    database: str  # its URL, password masked
    scratch_database: bool  # created for the bench and dropped since (else: emptied since)
    csv: GeneratedCsv
    methods: list[MethodSummary]
    cache: list[CacheComparison]  # one per run, on the first method's keys
    rss_csv: GeneratedCsv | None = None
    rss_run: ImportRun | None = None
    cpus: int | None = os.cpu_count()

    @property
    def fastest(self) -> MethodSummary:
        return max(self.methods, key=lambda summary: summary.rows_per_s or 0.0)

    @property
    def cache_speedup(self) -> float | None:
        return median([comparison.speedup for comparison in self.cache])

    @property
    def rss_ratio(self) -> float | None:
        if self.rss_run is None:
            return None
        return ratio(float(self.rss_run.peak_rss), self.methods[0].peak_rss)

    @property
    def rss_growth_ratio(self) -> float | None:
        """The same for what the import added to the process (start-up's share left out)."""
        if self.rss_run is None:
            return None
        growth = float(self.rss_run.peak_rss - self.rss_run.rss_before)
        return ratio(growth, self.methods[0].rss_growth)

    def method_ratio(self) -> float | None:
        """Median over runs of the first method's rows/s over the second's, run by run."""
        if len(self.methods) < 2:
            return None
        first, second = self.methods[0].runs, self.methods[1].runs
        pairs = zip(first, second, strict=False)
        return median([ratio(a.rows_per_s, b.rows_per_s) for a, b in pairs])

    def targets(self) -> dict[str, dict[str, object]]:
        rows_per_s = self.fastest.rows_per_s
        speedup = self.cache_speedup
        rss = self.rss_ratio
        return {
            "rows_per_s": {
                "value": rows_per_s,
                "method": self.fastest.name,
                "target": ROWS_PER_S_TARGET,
                "met": None if rows_per_s is None else rows_per_s >= ROWS_PER_S_TARGET,
            },
            "cache_speedup": {
                "value": speedup,
                "target": CACHE_SPEEDUP_TARGET,
                "met": None if speedup is None else speedup >= CACHE_SPEEDUP_TARGET,
            },
            "rss_ratio": {
                "value": rss,
                "target": RSS_RATIO_TARGET,
                "met": None if rss is None else rss <= RSS_RATIO_TARGET,
            },
        }

    def to_json(self) -> dict[str, object]:
        rss: dict[str, object] | None = None
        if self.rss_run is not None and self.rss_csv is not None:
            rss = {
                "file": _csv_json(self.rss_csv),
                "run": self.rss_run.to_json(),
                "compared_with_peak_rss_bytes": self.methods[0].peak_rss,
                "ratio": self.rss_ratio,
                "compared_with_growth_bytes": self.methods[0].rss_growth,
                "growth_ratio": self.rss_growth_ratio,
            }
        return {
            "benchmark": "import",
            "started_at": self.started_at,
            "settings": self.settings
            | {
                "database": self.database,
                "scratch_database": self.scratch_database,
                "cpus": self.cpus,
            },
            "file": _csv_json(self.csv),
            "methods": [summary.to_json() for summary in self.methods],
            "method_ratio": self.method_ratio(),
            "cache_step": {
                "runs": [comparison.to_json() for comparison in self.cache],
                "speedup": self.cache_speedup,
            },
            "rss_check": rss,
            "targets": self.targets(),
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _csv_json(csv: GeneratedCsv) -> dict[str, object]:
    return {
        "rows": csv.rows,
        "bytes": csv.size,
        "row_bytes": round(csv.row_bytes, 1),
        "seed": csv.seed,
    }
