"""CSV files of posts for `postal bench import`: realistic rows, the same bytes for the same seed.

An import's speed depends on what it parses, so the rows look like an export of a real blog:
titles of a few words (some with commas or double quotes, so the writer must quote and escape
them), an author, zero to four `|`-separated tags, a body of a few sentences (some in
paragraphs, i.e. newlines inside a quoted field; a few non-ASCII words), and an ISO 8601
`created_at`. Rows average about 500 bytes (`ROW_BYTES`), lines end in CRLF (Excel's dialect).

Speed matters at a million rows: sentences are drawn up front into a pool, and each row picks a
handful of them, so a row costs a few random draws rather than one per word.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

HEADER: Final = ("title", "body", "author", "tags", "created_at")
ROW_BYTES: Final = 500  # the average row aimed at, in bytes, line end included
CHUNK_ROWS: Final = 10_000  # rows written (and progress reported) at a time
SENTENCE_POOL: Final = 4_096  # distinct sentences the bodies are made of
PARAGRAPH_SHARE: Final = 0.1  # bodies whose sentences are split into paragraphs (newlines)
COMMA_TITLE_SHARE: Final = 0.15  # titles with a comma in them
QUOTED_TITLE_SHARE: Final = 0.03  # titles with a "quoted" word (escaped as "" in the file)
EPOCH: Final = datetime(2019, 1, 1, tzinfo=UTC)  # created_at spreads over the 5 years after it
SPAN_SECONDS: Final = 5 * 365 * 24 * 3600

WORDS: Final = (
    "cache", "redis", "latency", "pool", "connection", "deadline", "replica", "primary",
    "request", "response", "service", "database", "index", "query", "table", "schema",
    "version", "release", "deploy", "cluster", "shard", "queue", "worker", "thread", "socket",
    "timeout", "retry", "backoff", "breaker", "metric", "trace", "log", "alert", "dashboard",
    "budget", "error", "failure", "outage", "incident", "review", "design", "pattern", "model",
    "module", "package", "library", "framework", "runtime", "memory", "disk", "network",
    "packet", "header", "payload", "stream", "batch", "import", "export", "backup", "restore",
    "snapshot", "migration", "rollback", "feature", "flag", "experiment", "team", "customer",
    "product", "roadmap", "sprint", "estimate", "deadline", "meeting", "notes", "summary",
    "the", "a", "of", "to", "and", "in", "for", "with", "on", "at", "from", "by", "about",
    "over", "under", "after", "before", "during", "without", "between", "through", "every",
    "each", "some", "many", "few", "most", "new", "old", "fast", "slow", "small", "large",
    "quiet", "busy", "stale", "fresh", "warm", "cold", "hot", "safe", "careful", "simple",
    "clear", "honest", "measured", "noisy", "steady", "flat", "sharp", "we", "they", "it",
    "measure", "read", "write", "serve", "fill", "evict", "expire", "bump", "drop", "keep",
    "open", "close", "wait", "send", "receive", "parse", "validate", "commit", "lock", "scan",
    "count", "compare", "explain", "improve", "break", "fix", "ship", "learn", "plan", "test",
    "café", "naïve", "Zürich", "São", "Paulo", "Kraków", "東京", "über", "façade", "déjà",
)  # fmt: skip
FIRST_NAMES: Final = (
    "Ada", "Alan", "Barbara", "Brian", "Chidi", "Dana", "Edsger", "Frances", "Grace", "Hedy",
    "Ines", "Jun", "Karen", "Linus", "Margaret", "Niklaus", "Olga", "Priya", "Radia", "Sofia",
    "Tim", "Ursula", "Valérie", "Wei", "Xavier", "Yuki", "Zoë", "José", "Søren", "Łukasz",
)  # fmt: skip
LAST_NAMES: Final = (
    "Lovelace", "Turing", "Liskov", "Kernighan", "Okafor", "Scott", "Dijkstra", "Allen",
    "Hopper", "Lamarr", "Moreno", "Tanaka", "Spärck Jones", "Torvalds", "Hamilton", "Wirth",
    "Petrova", "Raman", "Perlman", "Costa", "Berners-Lee", "Franklin", "Dupont", "Zhang",
    "Leroy", "Sato", "Müller", "García", "Kierkegaard", "Nowak",
)  # fmt: skip
TAGS: Final = (
    "redis", "postgres", "python", "performance", "caching", "ops", "sre", "incident",
    "design", "testing", "release-notes", "howto", "architecture", "databases", "networking",
    "security", "observability", "culture", "hiring", "kubernetes",
)  # fmt: skip

Progress = Callable[[int, int], None]  # (rows written, rows planned)


@dataclass(frozen=True, slots=True)
class GeneratedCsv:
    path: Path
    rows: int  # data rows, the header not counted
    size: int  # bytes in the file
    seed: int

    @property
    def row_bytes(self) -> float:
        """The average row's size in bytes (the header's share spread over the rows)."""
        return self.size / self.rows if self.rows else 0.0


class _Rows:
    """Draws rows from one seeded generator; the pools are drawn first, from the same one."""

    def __init__(self, seed: int) -> None:
        self._random = random.Random(seed)
        self._sentences = [self._sentence() for _ in range(SENTENCE_POOL)]

    def _words(self, low: int, high: int) -> list[str]:
        return self._random.choices(WORDS, k=self._random.randint(low, high))

    def _sentence(self) -> str:
        words = self._words(6, 16)
        if self._random.random() < 0.4:  # a clause after a comma: commas inside the field
            words[len(words) // 2] += ","
        text = " ".join(words)
        return text[0].upper() + text[1:] + self._random.choice(".?!")

    def title(self) -> str:
        rng = self._random
        words = self._words(3, 9)
        if rng.random() < QUOTED_TITLE_SHARE:
            words[0] = f'"{words[0]}"'
        text = " ".join(words)
        if rng.random() < COMMA_TITLE_SHARE:
            text += ", " + " ".join(self._words(1, 3))
        return text[0].upper() + text[1:]

    def body(self) -> str:
        rng = self._random
        sentences = rng.choices(self._sentences, k=rng.randint(3, 8))
        if rng.random() < PARAGRAPH_SHARE:
            middle = len(sentences) // 2
            return " ".join(sentences[:middle]) + "\n\n" + " ".join(sentences[middle:])
        return " ".join(sentences)

    def author(self) -> str:
        return f"{self._random.choice(FIRST_NAMES)} {self._random.choice(LAST_NAMES)}"

    def tags(self) -> str:
        count = self._random.randint(0, 4)
        return "|".join(self._random.sample(TAGS, count))

    def created_at(self) -> str:
        offset = timedelta(seconds=self._random.randrange(SPAN_SECONDS))
        return (EPOCH + offset).isoformat()

    def row(self) -> tuple[str, str, str, str, str]:
        return self.title(), self.body(), self.author(), self.tags(), self.created_at()


def generate_csv(
    path: Path, rows: int, *, seed: int = 0, progress: Progress | None = None
) -> GeneratedCsv:
    """Write a header and `rows` posts to `path` (replacing it); the same `seed`, the same bytes."""
    if rows < 0:
        raise ValueError(f"rows must be >= 0, got {rows}")
    source = _Rows(seed)
    written = 0
    with path.open("w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file)  # Excel's dialect: CRLF, fields quoted only when needed
        writer.writerow(HEADER)
        while written < rows:
            count = min(CHUNK_ROWS, rows - written)
            writer.writerows(source.row() for _ in range(count))
            written += count
            if progress is not None:
                progress(written, rows)
    return GeneratedCsv(path, rows, path.stat().st_size, seed)
