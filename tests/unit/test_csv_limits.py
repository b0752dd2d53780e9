"""The CSV import's bounds on what a hostile file can cost: fields per record (csv_width), the
header row, the tags field, the size of each error message, and the pieces the parser is fed."""

from __future__ import annotations

import csv
import io
import random
from collections.abc import Iterator

import pytest

from postal.imports import csv_width
from postal.imports.csv_fields import MAX_MESSAGE_CHARS, RowError, RowProblem, read_tags
from postal.imports.csv_rows import (
    HEADER_ERRORS_LISTED,
    MAX_COLUMNS,
    CsvHeaderError,
    CsvRowReader,
)
from postal.imports.csv_width import (
    MAX_UNCHECKED_FIELDS,
    lines_for_csv,
    needs_checking,
    wide_fields,
)
from postal.imports.importer import FEED_BYTES, ImportOptions, PostImporter
from postal.posts.service import CacheTtls
from tests.support.fakes import FakeImportStore, FakePostRepository, InMemoryCache

# -- csv_width: the same records as csv, the wide ones replaced ------------------------------------

TOKENS = ("a", "bc", '"', '""', ",", ",", "\n", "\r\n", 'x"y', " ")


def random_text(rng: random.Random) -> str:
    text = "".join(rng.choice(TOKENS) for _ in range(rng.randint(1, 40)))
    return text if text.endswith("\n") else text + "\n"


def read(lines: Iterator[str]) -> list[tuple[int, list[str] | str]]:
    """What csv makes of `lines`: (line_num after, fields or the error) per record."""
    reader = csv.reader(lines)
    records: list[tuple[int, list[str] | str]] = []
    while True:
        try:
            fields: list[str] | str = next(reader)
        except StopIteration:
            return records
        except csv.Error as exc:
            fields = f"error: {exc}"
        records.append((reader.line_num, fields))


def plain_lines(text: str) -> Iterator[str]:
    return (line + "\n" for line in text.split("\n"))  # as CsvRowReader feeds csv: with the probe


def test_with_no_limit_csv_reads_exactly_what_it_reads_without_the_check() -> None:
    rng = random.Random(17)
    for _ in range(3000):
        text = random_text(rng)
        assert list(lines_for_csv(text, lambda: 10**9)) == list(plain_lines(text)), repr(text)


def test_a_record_over_the_limit_is_one_placeholder_naming_its_fields_on_the_same_lines() -> None:
    rng = random.Random(42)
    replaced = 0
    for _ in range(3000):
        text = random_text(rng)
        limit = rng.randint(1, 4)
        expected = read(plain_lines(text))
        got = read(lines_for_csv(text, lambda: limit))  # noqa: B023 - called here, in the loop
        assert [end for end, _ in got] == [end for end, _ in expected], repr(text)
        for (end, real), (_, seen) in zip(expected, got, strict=True):
            if end > text.count("\n"):
                continue  # unfinished (it took the probe line): its count may be high
            if isinstance(seen, list) and (count := wide_fields(seen)) is not None:
                replaced += 1
                assert isinstance(real, list), repr(text)
                assert count == len(real) > limit, repr(text)
            else:
                assert seen == real, repr(text)
    assert replaced > 100  # the property was exercised


def test_a_finished_multi_line_record_over_the_limit_is_counted_exactly() -> None:
    text = 'a,"b\nc",d,e\nf\n'
    expected = read(plain_lines(text))
    got = read(lines_for_csv(text, lambda: 3))
    assert [end for end, _ in got] == [end for end, _ in expected] == [2, 3, 4]
    assert wide_fields(got[0][1]) == 4  # type: ignore[arg-type]
    assert got[1][1] == ["f"]


def test_an_unfinished_record_over_the_limit_stays_unfinished_for_csv() -> None:
    text = 'a,b,c,"open\nstill,open\n'
    got = read(lines_for_csv(text, lambda: 2))
    assert got[-1][0] == 3  # the probe line taken: the reader follows it from its raw bytes


def test_only_a_text_with_very_many_commas_is_checked() -> None:
    assert not needs_checking("," * MAX_UNCHECKED_FIELDS)
    assert not needs_checking("a" * (2 * MAX_UNCHECKED_FIELDS))
    assert needs_checking("," * (MAX_UNCHECKED_FIELDS + 1))


def test_a_row_of_a_million_fields_is_a_wrong_column_count_at_its_line() -> None:
    reader = CsvRowReader()
    data = b"title,body,author\nt,b,a\n" + b"ab," * 1_000_000 + b"ab\nt2,b2,a2\n"
    results = []
    for start in range(0, len(data), FEED_BYTES):
        results += reader.feed(data[start : start + FEED_BYTES])
    results += reader.close()
    errors = [result for result in results if isinstance(result, RowError)]
    assert [(e.line, e.reason, e.message) for e in errors] == [
        (3, RowProblem.WRONG_COLUMN_COUNT, "1000001 fields; the header has 3")
    ]
    assert len(results) == 3
    assert reader.rows_read == 3


def test_a_long_quoted_body_full_of_commas_is_still_one_field() -> None:
    body = "x," * 200_000
    reader = CsvRowReader()
    data = f'title,body,author\nt,"{body}",a\n'.encode()
    results = reader.feed(data) + reader.close()
    assert [type(result).__name__ for result in results] == ["ImportRow"]
    assert results[0].content.body == body  # type: ignore[union-attr]


# -- the header ------------------------------------------------------------------------------------


def header_problems(data: bytes, **options: object) -> list[RowError]:
    reader = CsvRowReader(**options)  # type: ignore[arg-type]
    try:
        for start in range(0, len(data), 4096):
            reader.feed(data[start : start + 4096])
        reader.close()
    except CsvHeaderError as refused:
        return refused.errors
    raise AssertionError("the header was accepted")


def test_a_header_over_its_byte_limit_is_refused_before_it_ends() -> None:
    reader = CsvRowReader(max_header_bytes=1000)
    reader.feed(b"a," * 400)  # 800 bytes, no line end yet: kept
    with pytest.raises(CsvHeaderError) as refused:
        reader.feed(b"a," * 200)  # past 1000: refused now, not at the line's end
    assert [(e.reason, e.message) for e in refused.value.errors] == [
        (RowProblem.TOO_LONG, "the header row is over 1000 bytes")
    ]


def test_a_header_of_too_many_columns_is_one_error() -> None:
    header = ",".join(["x"] * (MAX_COLUMNS + 1)).encode() + b"\n"
    errors = header_problems(header, ignore_unknown_columns=True)
    assert [e.reason for e in errors] == [RowProblem.TOO_MANY_COLUMNS]


def test_header_problems_are_listed_up_to_a_cap_missing_columns_first() -> None:
    header = ",".join(f"c{i}" for i in range(40)).encode() + b",title,body\n"
    errors = header_problems(header)
    assert len(errors) == HEADER_ERRORS_LISTED
    assert (errors[0].column, errors[0].reason) == ("author", RowProblem.MISSING_COLUMN)
    assert errors[-1].message == "and 32 more problems with the header, not listed"
    few = header_problems(b"title,body,c1,c2\n")
    assert [e.reason for e in few] == [RowProblem.UNKNOWN_COLUMN] * 2 + [RowProblem.MISSING_COLUMN]


# -- fields and messages ---------------------------------------------------------------------------


def test_more_than_twenty_tags_are_counted_not_split() -> None:
    errors: list[RowError] = []
    assert read_tags("|" * 2_900_000, 7, errors) == ()
    assert [(e.reason, e.message) for e in errors] == [
        (RowProblem.BAD_TAGS, "2900001 tags, the limit is 20")
    ]


def test_empty_and_long_tags_are_named_up_to_five() -> None:
    errors: list[RowError] = []
    read_tags("|".join(["", "a", "", "", "", "", "", "b" * 60, "c" * 51]), 1, errors)
    assert [e.message for e in errors] == [
        "tags 1, 3, 4, 5, 6 and 1 more are empty (tags are separated by |)",
        "tag 8 is 60 characters, tag 9 is 51 characters, the limit is 50",
    ]


def test_every_message_is_cut_at_its_limit() -> None:
    error = RowError(1, "title", RowProblem.TOO_LONG, "x" * 10_000)
    assert len(error.message) == MAX_MESSAGE_CHARS
    assert error.message.endswith("...")
    short = RowError(1, None, RowProblem.TOO_LONG, "fine")
    assert short.message == "fine"


# -- the pieces the parser is fed -----------------------------------------------------------------


async def test_a_huge_chunk_is_fed_to_the_parser_in_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    fed: list[int] = []
    feed = CsvRowReader.feed

    def recording(self: CsvRowReader, chunk: bytes) -> list[object]:
        fed.append(len(chunk))
        return feed(self, chunk)  # type: ignore[return-value]

    monkeypatch.setattr(CsvRowReader, "feed", recording)
    cache = InMemoryCache()
    store = FakeImportStore(FakePostRepository())
    importer = PostImporter(store, cache, cache, ttls=CacheTtls(60, 30, 5), max_body_bytes=1000)
    data = b"title,body,author\n" + b"t,b,a\n" * 50_000  # 300 kB in one chunk

    async def one_chunk() -> Iterator[bytes]:  # type: ignore[misc]
        yield data

    report = await importer.run(one_chunk(), ImportOptions())
    assert report.created == 50_000
    assert max(fed) == FEED_BYTES
    assert sum(fed) == len(data)


def test_the_reader_answers_the_same_with_every_text_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = random.Random(7)
    cells = ("t", "a,b", 'say "hi"', "two\nlines", "", " ", "x|y", "2024-05-01", "\r\n")
    files = []
    for _ in range(300):
        out = io.StringIO()
        writer = csv.writer(out, lineterminator=rng.choice(("\n", "\r\n")))
        writer.writerow(["title", "body", "author", "tags"])
        for _ in range(rng.randint(0, 6)):
            writer.writerow([rng.choice(cells) for _ in range(rng.choice((3, 4, 4, 4, 6)))])
        text = out.getvalue()
        if rng.random() < 0.2:
            text += '"unterminated,' + rng.choice(cells)
        files.append(text.encode())

    def results(data: bytes) -> list[object]:
        reader = CsvRowReader()
        parsed: list[object] = []
        for start in range(0, len(data), 7):
            parsed += reader.feed(data[start : start + 7])
        return parsed + reader.close()

    plain = [results(data) for data in files]
    monkeypatch.setattr(csv_width, "MAX_UNCHECKED_FIELDS", 0)  # every text goes through it
    assert [results(data) for data in files] == plain
