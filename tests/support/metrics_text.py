"""Reading Prometheus text (what /metrics serves) in tests, with prometheus_client's own parser."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Scrape:
    """The samples of one scrape: (series name, labels) -> value."""

    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]

    @classmethod
    def parse(cls, text: str) -> Scrape:
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return cls(samples)

    def value(self, name: str, **labels: str) -> float:
        """The one series `name` with exactly these labels; KeyError if it is not there."""
        return self.samples[(name, frozenset(labels.items()))]

    def total(self, name: str, **labels: str) -> float:
        """The sum over every series `name` whose labels include these (0 if none)."""
        wanted = set(labels.items())
        return sum(
            value
            for (series, series_labels), value in self.samples.items()
            if series == name and wanted <= series_labels
        )

    def label_values(self, name: str, label: str) -> set[str]:
        return {
            dict(series_labels)[label]
            for (series, series_labels) in self.samples
            if series == name and label in dict(series_labels)
        }
