"""The import benchmark's CSV generator: deterministic, realistic, and valid for the importer."""

import csv
from pathlib import Path

from postal.imports.csv_rows import CsvRowReader, ImportRow, RowError
from postal.posts.models import MAX_AUTHOR_CHARS, MAX_TAGS, MAX_TITLE_CHARS
from postal_bench.imports.csv_gen import HEADER, ROW_BYTES, generate_csv

ROWS = 3_000


def test_the_same_seed_writes_the_same_bytes_and_another_seed_other_bytes(tmp_path: Path) -> None:
    first = generate_csv(tmp_path / "a.csv", 500, seed=7)
    again = generate_csv(tmp_path / "b.csv", 500, seed=7)
    other = generate_csv(tmp_path / "c.csv", 500, seed=8)

    assert first.path.read_bytes() == again.path.read_bytes()
    assert first.path.read_bytes() != other.path.read_bytes()
    assert first.size == first.path.stat().st_size


def test_rows_are_realistic_quoted_where_needed_and_about_500_bytes(tmp_path: Path) -> None:
    generated = generate_csv(tmp_path / "posts.csv", ROWS, seed=1)
    with generated.path.open(encoding="utf-8", newline="") as file:
        records = list(csv.reader(file))

    assert tuple(records[0]) == HEADER
    rows = records[1:]
    assert len(rows) == generated.rows == ROWS
    assert 0.8 * ROW_BYTES <= generated.row_bytes <= 1.2 * ROW_BYTES
    titles, bodies, authors = [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]
    assert all(0 < len(title) <= MAX_TITLE_CHARS for title in titles)
    assert all(0 < len(author) <= MAX_AUTHOR_CHARS for author in authors)
    assert all(len(row[3].split("|")) <= MAX_TAGS for row in rows)
    # What makes a CSV parser work: commas, double quotes and newlines inside fields, non-ASCII.
    assert any("," in title for title in titles)
    assert any('"' in title for title in titles)
    assert any("\n" in body for body in bodies)
    assert any(not body.isascii() for body in bodies)
    assert generated.path.read_bytes().count(b"\r\n") > ROWS  # CRLF line ends


def test_every_generated_row_passes_the_importers_parser(tmp_path: Path) -> None:
    generated = generate_csv(tmp_path / "posts.csv", ROWS, seed=2)
    reader = CsvRowReader()
    results = []
    data = generated.path.read_bytes()
    for start in range(0, len(data), 4096):  # chunks that cut lines and quoted fields
        results.extend(reader.feed(data[start : start + 4096]))
    results.extend(reader.close())

    errors = [result for result in results if isinstance(result, RowError)]
    assert errors == []
    rows = [result for result in results if isinstance(result, ImportRow)]
    assert len(rows) == ROWS
    assert all(row.post_id is None and row.created_at is not None for row in rows)
