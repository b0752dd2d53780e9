"""One scrape of `/metrics`: the Prometheus text parsed into samples, and sums over them.

prometheus_client's own parser reads the text, so every form it writes (multiprocess output,
escaped label values, `+Inf`) is read back the same way. A scrape is just samples by series name
(`postal_cache_operation_seconds_bucket`, `..._count`, `postal_cache_operations_total`), each
with its labels; `postal stats` compares two of them taken an interval apart.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families


class ScrapeError(ValueError):
    """The text is not in the Prometheus text format."""


@dataclass(frozen=True, slots=True)
class Sample:
    labels: Mapping[str, str]
    value: float

    def matches(self, match: Mapping[str, str]) -> bool:
        return all(self.labels.get(name) == value for name, value in match.items())


@dataclass(frozen=True, slots=True)
class Scrape:
    """Samples by series name; `at` is when it was taken (seconds, a monotonic clock)."""

    at: float
    series: Mapping[str, tuple[Sample, ...]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str, at: float) -> Scrape:
        found: dict[str, list[Sample]] = {}
        try:
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    found.setdefault(sample.name, []).append(Sample(sample.labels, sample.value))
        except ValueError as exc:  # the parser's errors quote the offending line: keep it short
            raise ScrapeError(f"not the Prometheus text format ({str(exc)[:80]})") from None
        return cls(at, {name: tuple(samples) for name, samples in found.items()})

    def samples(self, name: str, **match: str) -> Iterator[Sample]:
        for sample in self.series.get(name, ()):
            if sample.matches(match):
                yield sample

    def total(self, name: str, **match: str) -> float:
        """The sum of the matching samples (0 when there are none)."""
        return math.fsum(sample.value for sample in self.samples(name, **match))

    def has(self, name: str) -> bool:
        return name in self.series

    def label_values(self, name: str, *labels: str, **match: str) -> list[tuple[str, ...]]:
        """The distinct combinations of `labels` among the matching samples, sorted."""
        combos = {
            tuple(sample.labels.get(label, "") for label in labels)
            for sample in self.samples(name, **match)
        }
        return sorted(combos)

    def buckets(self, histogram: str, **match: str) -> list[tuple[float, float]]:
        """A histogram's cumulative buckets as (upper bound, count), summed over the matching
        label sets (all workers, all statuses...), by increasing bound; +Inf last."""
        counts: dict[float, float] = {}
        for sample in self.samples(histogram + "_bucket", **match):
            bound = float(sample.labels["le"])
            counts[bound] = counts.get(bound, 0.0) + sample.value
        return sorted(counts.items())
