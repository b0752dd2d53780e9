"""The import's CSV reader: records, line numbers, every refusal reason, any chunking. Pure."""

from __future__ import annotations

import random
import tracemalloc
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from postal.api.schemas import PostIn
from postal.imports.csv_rows import (
    CsvHeaderError,
    CsvRowReader,
    ImportRow,
    RowError,
    RowProblem,
)
from postal.posts.models import (
    MAX_AUTHOR_CHARS,
    MAX_ID,
    MAX_TAG_CHARS,
    MAX_TAGS,
    MAX_TITLE_CHARS,
    PostContent,
)

Result = ImportRow | RowError
HEADER = b"id,title,body,author,tags,created_at\n"


def read(data: bytes, chunk_size: int | None = None, **options: Any) -> list[Result]:
    reader = CsvRowReader(**options)
    size = chunk_size or max(len(data), 1)
    results: list[Result] = []
    for offset in range(0, len(data), size):
        results += reader.feed(data[offset : offset + size])
    return results + reader.close()


def read_split(data: bytes, split: int, **options: Any) -> list[Result]:
    reader = CsvRowReader(**options)
    return reader.feed(data[:split]) + reader.feed(data[split:]) + reader.close()


def errors_of(results: list[Result]) -> list[tuple[int, str | None, RowProblem]]:
    return [(r.line, r.column, r.reason) for r in results if isinstance(r, RowError)]


def messages_of(results: list[Result]) -> list[str]:
    return [r.message for r in results if isinstance(r, RowError)]


def rows_of(results: list[Result]) -> list[ImportRow]:
    return [r for r in results if isinstance(r, ImportRow)]


def one_row(data: bytes, **options: Any) -> ImportRow:
    (row,) = read(data, **options)
    assert isinstance(row, ImportRow), row
    return row


def only_error(data: bytes, **options: Any) -> RowError:
    results = read(data, **options)
    assert len(results) == 1, results
    assert isinstance(results[0], RowError), results
    return results[0]


def header_errors(data: bytes, **options: Any) -> list[tuple[int, str | None, RowProblem]]:
    with pytest.raises(CsvHeaderError) as raised:
        read(data, **options)
    return [(e.line, e.column, e.reason) for e in raised.value.errors]


# --- good input -------------------------------------------------------------------------------


def test_every_column_is_read_into_a_row() -> None:
    data = HEADER + b'7,Hello,"The body, with a comma",ada,news|tech,2024-05-01T12:30:00+02:00\n'
    (row,) = read(data)
    assert row == ImportRow(
        line=2,
        post_id=7,
        content=PostContent("Hello", "The body, with a comma", "ada", ("news", "tech")),
        created_at=datetime(2024, 5, 1, 10, 30, tzinfo=UTC),
    )


def test_optional_columns_may_be_absent_or_empty() -> None:
    assert read(b"title,body,author\nT,B,A\n") == [
        ImportRow(2, None, PostContent("T", "B", "A"), None)
    ]
    row = one_row(HEADER + b",T,B,A,,\n")
    assert (row.post_id, row.content.tags, row.created_at) == (None, (), None)


def test_column_names_are_matched_without_case_or_surrounding_spaces() -> None:
    row = one_row(b" Title ,BODY,\tAuthor\nT,B,A\n")
    assert row.content == PostContent("T", "B", "A")


def test_columns_may_come_in_any_order() -> None:
    row = one_row(b"author,tags,body,title\nA,x,B,T\n")
    assert row.content == PostContent("T", "B", "A", ("x",))


def test_title_author_and_tags_are_stripped_and_the_body_is_kept_as_written() -> None:
    row = one_row('title,body,author,tags\n"  T ",  B  , A\u3000, a | b \n'.encode())
    assert row.content == PostContent("T", "  B  ", "A", ("a", "b"))


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("2024-05-01T12:00:00Z", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01T12:00:00", datetime(2024, 5, 1, 12, tzinfo=UTC)),  # naive: taken as UTC
        ("2024-05-01 12:00:00.250-01:00", datetime(2024, 5, 1, 13, 0, 0, 250000, tzinfo=UTC)),
        ("2024-05-01", datetime(2024, 5, 1, tzinfo=UTC)),
        (" 2024-05-01T12:00Z ", datetime(2024, 5, 1, 12, tzinfo=UTC)),
    ],
)
def test_created_at_takes_iso_8601_and_is_utc(written: str, expected: datetime) -> None:
    (row,) = read(b"title,body,author,created_at\nT,B,A," + written.encode() + b"\n")
    assert isinstance(row, ImportRow)
    assert row.created_at == expected
    assert row.created_at is not None
    assert row.created_at.tzinfo is UTC


def test_a_bom_is_skipped() -> None:
    assert read(b"\xef\xbb\xbf" + HEADER + b",T,B,A,,\n") == read(HEADER + b",T,B,A,,\n")


def test_crlf_and_lf_give_the_same_rows() -> None:
    lf = HEADER + b',T,"B\n2",A,x,\n\n,T2,B2,A2,,\n'
    assert read(lf.replace(b"\n", b"\r\n")) == [
        ImportRow(2, None, PostContent("T", "B\r\n2", "A", ("x",)), None),  # quoted CR kept
        ImportRow(5, None, PostContent("T2", "B2", "A2"), None),
    ]
    assert [r.line for r in rows_of(read(lf))] == [2, 5]


def test_quoted_fields_hold_commas_quotes_and_newlines_with_the_lines_counted() -> None:
    data = (
        HEADER
        + b',"T, with a comma","He said ""hi""\nand\nleft",A,,\n'  # lines 2-4
        + b"\n"  # line 5, blank
        + b',T2,"""quoted""",A,,\n'  # line 6
        + b',T3,"a\r\n\r\nb",A,,\n'  # lines 7-9
        + b",T4,B,A,,\n"  # line 10
    )
    rows = rows_of(read(data))
    assert [(r.line, r.content.title, r.content.body) for r in rows] == [
        (2, "T, with a comma", 'He said "hi"\nand\nleft'),
        (6, "T2", '"quoted"'),
        (7, "T3", "a\r\n\r\nb"),
        (10, "T4", "B"),
    ]


def test_blank_lines_are_skipped_and_counted_even_before_the_header() -> None:
    results = read(b"\n\r\n" + b"title,body,author\n\n\nT,B,A\n\n")
    assert [r.line for r in rows_of(results)] == [6]


def test_the_last_record_needs_no_line_end() -> None:
    assert read(HEADER + b",T,B,A,,") == read(HEADER + b",T,B,A,,\n")
    assert read(HEADER + b',T,"B\nB",A,,') == read(HEADER + b',T,"B\nB",A,,\n')


def test_a_character_split_between_chunks_is_read_whole() -> None:
    data = "title,body,author\nTé,B€,A😀\n".encode()
    for split in range(len(data) + 1):
        assert read_split(data, split) == [ImportRow(2, None, PostContent("Té", "B€", "A😀"), None)]


def test_counters_and_columns() -> None:
    reader = CsvRowReader()
    data = b"Title,body,author\nT,B,A\n,,\n\n"
    columns_at_first = reader.columns
    reader.feed(data)
    reader.close()
    assert (columns_at_first, reader.columns) == (None, ("Title", "body", "author"))
    assert reader.rows_read == 2
    assert reader.bytes_read == len(data)


def test_a_closed_reader_refuses_more_input() -> None:
    reader = CsvRowReader()
    reader.feed(b"title,body,author\n")
    reader.close()
    with pytest.raises(ValueError, match="closed"):
        reader.feed(b"T,B,A\n")


def test_row_error_as_json() -> None:
    error = RowError(3, "title", RowProblem.TOO_LONG, "title is 201 characters")
    assert error.to_json() == {
        "line": 3,
        "column": "title",
        "reason": "too_long",
        "message": "title is 201 characters",
    }


# --- bad rows ---------------------------------------------------------------------------------


def row_error(
    row: str, header: str = "id,title,body,author,tags,created_at", **options: Any
) -> RowError:
    return only_error(f"{header}\n{row}\n".encode(), **options)


@pytest.mark.parametrize(
    ("row", "column", "reason"),
    [
        (",,B,A,,", "title", RowProblem.MISSING_FIELD),
        (", \t ,B,A,,", "title", RowProblem.MISSING_FIELD),
        (",T,,A,,", "body", RowProblem.MISSING_FIELD),
        (",T,B,,,", "author", RowProblem.MISSING_FIELD),
        ("," + "t" * (MAX_TITLE_CHARS + 1) + ",B,A,,", "title", RowProblem.TOO_LONG),
        (",T,B," + "a" * (MAX_AUTHOR_CHARS + 1) + ",,", "author", RowProblem.TOO_LONG),
        (",T,B,A,x|" + "g" * (MAX_TAG_CHARS + 1) + ",", "tags", RowProblem.TOO_LONG),
        (",T,B,A," + "|".join(["g"] * (MAX_TAGS + 1)) + ",", "tags", RowProblem.BAD_TAGS),
        (",T,B,A,a||b,", "tags", RowProblem.BAD_TAGS),
        (",T,B,A,a|,", "tags", RowProblem.BAD_TAGS),
        (",T,B,A,a| |b,", "tags", RowProblem.BAD_TAGS),
        (",T,B,A,,yesterday", "created_at", RowProblem.BAD_DATE),
        (",T,B,A,,2024-02-30", "created_at", RowProblem.BAD_DATE),
        (",T,B,A,,0001-01-01T00:00:00+01:00", "created_at", RowProblem.BAD_DATE),  # before year 1
        ("0,T,B,A,,", "id", RowProblem.BAD_ID),
        ("-3,T,B,A,,", "id", RowProblem.BAD_ID),
        ("+3,T,B,A,,", "id", RowProblem.BAD_ID),
        ("3.0,T,B,A,,", "id", RowProblem.BAD_ID),
        ("abc,T,B,A,,", "id", RowProblem.BAD_ID),
        ("\u0663,T,B,A,,", "id", RowProblem.BAD_ID),  # an Arabic-Indic 3: int() takes it, we don't
        (f"{MAX_ID + 1},T,B,A,,", "id", RowProblem.BAD_ID),
        ("9" * 5000 + ",T,B,A,,", "id", RowProblem.BAD_ID),
        (",T,B,A,", None, RowProblem.WRONG_COLUMN_COUNT),
        (",T,B,A,,,", None, RowProblem.WRONG_COLUMN_COUNT),
        (",T,B\x00,A,,", "body", RowProblem.NUL_CHARACTER),
        (",T,B,A,x\x00y,", "tags", RowProblem.NUL_CHARACTER),
        (',T,B,A,,\n"unclosed,T,B,A,,', None, RowProblem.UNTERMINATED_QUOTE),
        (",T,B\rB,A,,", None, RowProblem.MALFORMED_ROW),  # a bare CR outside quotes
    ],
)
def test_each_problem_is_reported_with_its_column(
    row: str, column: str | None, reason: RowProblem
) -> None:
    results = read(f"id,title,body,author,tags,created_at\n{row}\n".encode())
    errors = [r for r in results if isinstance(r, RowError)]
    assert len(errors) == 1, results
    assert (errors[0].line, errors[0].column, errors[0].reason) == (
        3 if reason is RowProblem.UNTERMINATED_QUOTE else 2,
        column,
        reason,
    )
    assert errors[0].message


def test_limits_are_inclusive() -> None:
    title, author = "t" * MAX_TITLE_CHARS, "a" * MAX_AUTHOR_CHARS
    tags = "|".join(["g" * MAX_TAG_CHARS] * MAX_TAGS)
    (row,) = read(f"id,title,body,author,tags\n{MAX_ID},{title},B,{author},{tags}\n".encode())
    assert isinstance(row, ImportRow)
    assert row.post_id == MAX_ID
    assert len(row.content.tags) == MAX_TAGS


def test_the_body_limit_counts_utf8_bytes() -> None:
    at_limit = "title,body,author\nT," + "é" * 5 + ",A\n"  # 10 bytes
    assert isinstance(read(at_limit.encode(), max_body_bytes=10)[0], ImportRow)
    over = read(at_limit.replace("é" * 5, "é" * 5 + "x").encode(), max_body_bytes=10)
    assert errors_of(over) == [(2, "body", RowProblem.TOO_LONG)]
    assert messages_of(over) == ["body is 11 bytes, the limit is 10"]


def test_messages_say_what_is_wrong() -> None:
    title = "t" * 231
    assert row_error(f",{title},B,A,,").message == "title is 231 characters, the limit is 200"
    assert row_error(",T,B,A").message == "4 fields; the header has 6"
    assert "2024-13-01" in row_error(",T,B,A,,2024-13-01").message


def test_every_problem_of_a_row_is_reported() -> None:
    results = read(b"id,title,body,author,tags,created_at\nx,,,A,a||b,never\n")
    assert errors_of(results) == [
        (2, "id", RowProblem.BAD_ID),
        (2, "title", RowProblem.MISSING_FIELD),
        (2, "body", RowProblem.MISSING_FIELD),
        (2, "tags", RowProblem.BAD_TAGS),
        (2, "created_at", RowProblem.BAD_DATE),
    ]


def test_invalid_utf8_is_reported_for_its_column_and_the_rows_after_it_are_read() -> None:
    data = (
        b"title,body,author\n"
        b"T1,B1,A1\n"
        b'T2,"bad \xff\n byte",A2\n'  # lines 3-4
        b"T3\xc3,B3\xe2\x82,A3\n"  # truncated sequences in two fields
        b"T\xc3\xa9,B5,A5\n"
    )
    results = read(data)
    assert errors_of(results) == [
        (3, "body", RowProblem.INVALID_UTF8),
        (5, "title", RowProblem.INVALID_UTF8),
        (5, "body", RowProblem.INVALID_UTF8),
    ]
    assert [(r.line, r.content.title) for r in rows_of(results)] == [(2, "T1"), (6, "Té")]
    assert messages_of(results)[0] == "body is not valid UTF-8 (byte 0xFF)"


def test_a_bad_field_is_reported_once_with_the_other_problems_of_its_row() -> None:
    results = read(b"title,body,author\n\xff,,A\n")
    assert errors_of(results) == [
        (2, "title", RowProblem.INVALID_UTF8),
        (2, "body", RowProblem.MISSING_FIELD),
    ]


def test_duplicate_ids_are_reported_on_the_later_line_naming_the_first() -> None:
    data = b"id,title,body,author\n5,T,B,A\n6,T,B,A\n005,T,B,A\n\n5,,B,A\n"
    results = read(data)
    assert errors_of(results) == [
        (4, "id", RowProblem.DUPLICATE_ID),
        (6, "id", RowProblem.DUPLICATE_ID),
        (6, "title", RowProblem.MISSING_FIELD),
    ]
    assert messages_of(results)[:2] == [
        "id 5 is also on line 2: one row per post",
        "id 5 is also on line 2: one row per post",
    ]


def test_duplicates_are_found_among_many_ids() -> None:
    # Multiples of a large power of two, and huge ids: ids a weak hash would pile on one slot.
    ids = [n << 40 for n in range(1, 3000)] + [MAX_ID - n for n in range(3000)]
    rows = "".join(f"{post_id},T,B,A\n" for post_id in ids + ids[::7])
    results = read(("id,title,body,author\n" + rows).encode(), chunk_size=4096)
    duplicates = [r for r in results if isinstance(r, RowError)]
    assert len(rows_of(results)) == len(ids)
    assert [e.line for e in duplicates] == list(range(len(ids) + 2, len(ids) + 2 + len(ids[::7])))
    assert all(e.reason is RowProblem.DUPLICATE_ID for e in duplicates)
    assert (
        duplicates[-1].message
        == f"id {ids[::7][-1]} is also on line {ids.index(ids[::7][-1]) + 2}: one row per post"
    )


def test_a_malformed_row_does_not_stop_the_next_ones() -> None:
    results = read(b"title,body,author\nT,B\rX,A\nT2,B2,A2\n")
    assert errors_of(results) == [(2, None, RowProblem.MALFORMED_ROW)]
    assert [r.line for r in rows_of(results)] == [3]


def test_an_unterminated_quote_takes_the_rest_of_the_file() -> None:
    results = read(b'title,body,author\nT,"open,A\nT2,B2,A2\nT3,B3,A3\n')
    assert errors_of(results) == [(2, None, RowProblem.UNTERMINATED_QUOTE)]
    assert rows_of(results) == []


# --- the header -------------------------------------------------------------------------------


def test_an_unknown_column_is_refused_with_every_other_header_problem() -> None:
    assert header_errors(b"title,Body,colour,body,extra\nT,B,red,B,x\n") == [
        (1, "colour", RowProblem.UNKNOWN_COLUMN),
        (1, "body", RowProblem.DUPLICATE_COLUMN),
        (1, "extra", RowProblem.UNKNOWN_COLUMN),
        (1, "author", RowProblem.MISSING_COLUMN),
    ]


def test_unknown_columns_can_be_ignored_with_whatever_they_hold() -> None:
    data = b"colour,title,body,author,\xff\nred,T,B,A,\xfe\x00\n"
    assert read(data, ignore_unknown_columns=True) == [
        ImportRow(2, None, PostContent("T", "B", "A"), None)
    ]


def test_ignoring_unknown_columns_still_refuses_missing_and_duplicate_ones() -> None:
    assert header_errors(b"title,title,body\n", ignore_unknown_columns=True) == [
        (1, "title", RowProblem.DUPLICATE_COLUMN),
        (1, "author", RowProblem.MISSING_COLUMN),
    ]


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        (b"title,body,author,\xff\n", RowProblem.INVALID_UTF8),
        (b'title,body,"author\n', RowProblem.UNTERMINATED_QUOTE),
        (b"title,body,author\rx\n", RowProblem.MALFORMED_ROW),
        (b"title,body,author,colour\n", RowProblem.UNKNOWN_COLUMN),
        (b"title,body\n", RowProblem.MISSING_COLUMN),
    ],
)
def test_a_bad_header_stops_the_import(header: bytes, problem: RowProblem) -> None:
    assert [reason for _, _, reason in header_errors(header + b"T,B,A\n")] == [problem]


@pytest.mark.parametrize("data", [b"", b"\xef\xbb\xbf", b"\n\r\n\n"])
def test_a_file_without_a_header_is_empty(data: bytes) -> None:
    assert header_errors(data) == [(1, None, RowProblem.EMPTY_FILE)]


def test_the_header_error_is_raised_by_the_call_that_completes_the_header_and_again_after() -> None:
    reader = CsvRowReader()
    assert reader.feed(b"title,bo") == []
    with pytest.raises(CsvHeaderError) as raised:
        reader.feed(b"dy,colour\nT,B,red\n")
    assert "unknown column 'colour'" in str(raised.value)
    with pytest.raises(CsvHeaderError):
        reader.feed(b"T,B,A\n")
    with pytest.raises(CsvHeaderError):
        reader.close()


# --- chunking ---------------------------------------------------------------------------------

TRICKY = (
    "\ufeffID, Title ,body,author,tags,created_at\r\n"
    '1,"Quoted, title","multi\r\nline ""body""\n",ada,a|b,2024-05-01T12:00:00Z\r\n'
    "\r\n"
    ",é title,body €,bob,,\r\n"
).encode() + (
    b",bad \xe2\x82 utf8,B,A,,\n"
    b"1,T,B\x00,A,x||y,never\n"
    b",T,B\rB,A,,\n"
    b",T,B,A\n"
    b'"",,"\n\n",,,\n'
    b",last,B,A,,2024-05-01"  # no line end
)


def test_the_tricky_file_reads_as_expected() -> None:
    results = read(TRICKY)
    assert [r.line for r in rows_of(results)] == [2, 6, 14]
    assert errors_of(results) == [
        (7, "title", RowProblem.INVALID_UTF8),
        (8, "id", RowProblem.DUPLICATE_ID),
        (8, "body", RowProblem.NUL_CHARACTER),
        (8, "tags", RowProblem.BAD_TAGS),
        (8, "created_at", RowProblem.BAD_DATE),
        (9, None, RowProblem.MALFORMED_ROW),
        (10, None, RowProblem.WRONG_COLUMN_COUNT),
        (11, "title", RowProblem.MISSING_FIELD),
        (11, "author", RowProblem.MISSING_FIELD),
    ]


def test_any_split_gives_the_one_chunk_result() -> None:
    whole = read(TRICKY)
    for split in range(len(TRICKY) + 1):
        assert read_split(TRICKY, split) == whole, split
    assert read(TRICKY, chunk_size=1) == whole
    assert read(TRICKY, chunk_size=7) == whole


# --- records over the size limit ----------------------------------------------------------------


def test_an_oversized_record_is_refused_and_the_next_ones_are_read() -> None:
    # Over the limit before its "" (from there, the record is followed, not kept): 3 lines.
    long_quoted = b'T,"' + b"x" * 100 + b'\n"",\n' + b"y" * 20 + b'",A\n'
    long_line = b"T," + b"z" * 200 + b",A\n"
    data = b"title,body,author\n" + long_quoted + b"T,B,A\n" + long_line + b"T,B,A"
    whole = read(data, max_record_bytes=100)
    assert errors_of(whole) == [(2, None, RowProblem.TOO_LONG), (6, None, RowProblem.TOO_LONG)]
    assert [r.line for r in rows_of(whole)] == [5, 7]
    for split in range(len(data) + 1):
        assert read_split(data, split, max_record_bytes=100) == whole, split
    assert read(data, chunk_size=3, max_record_bytes=100) == whole


def test_an_oversized_header_stops_the_import() -> None:
    assert header_errors(b"title,body,author," + b"x" * 200, max_record_bytes=100) == [
        (1, None, RowProblem.TOO_LONG)
    ]


def test_an_unterminated_quote_is_followed_without_holding_the_rest_of_the_file() -> None:
    reader = CsvRowReader(max_record_bytes=10_000)
    assert reader.feed(b'title,body,author\nT,B,A\nT,"never closed') != []
    filler = b'words, words, and "" quoted words\r\n' * 200  # 7 kB
    fed = 0
    tracemalloc.start()
    try:
        while fed < 5_000_000:
            assert reader.feed(filler) == []
            fed += len(filler)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < fed / 20
    assert errors_of(reader.close()) == [(3, None, RowProblem.UNTERMINATED_QUOTE)]


# --- the same rules as the API ----------------------------------------------------------------


def api_accepts(title: str, author: str, tags: list[str]) -> PostContent | None:
    try:
        return PostIn(title=title, body="B", author=author, tags=tags).content()
    except ValidationError:
        return None


def csv_accepts(title: str, author: str, tags: list[str]) -> PostContent | None:
    cells = [title, "B", author, "|".join(tags)]
    quoted = ",".join('"' + cell.replace('"', '""') + '"' for cell in cells)
    (result,) = read(f"title,body,author,tags\n{quoted}\n".encode())
    return result.content if isinstance(result, ImportRow) else None


ODD_SPACES = ["\t", "\x0b", "\x0c", "\x1c", "\x1f", "\x85", "\xa0", "\u2007", "\u200b", "\u3000"]


@pytest.mark.parametrize(
    ("title", "author", "tags"),
    [
        *[(f"{space}T{space}", "A", ["x"]) for space in ODD_SPACES],
        *[("T", space, ["x"]) for space in ODD_SPACES],
        *[("T", "A", ["x", space]) for space in ODD_SPACES],
        ("t" * MAX_TITLE_CHARS + "  ", "A", []),
        ("t" * (MAX_TITLE_CHARS + 1), "A", []),
        ("T", " " + "a" * MAX_AUTHOR_CHARS, []),
        ("T", "a" * (MAX_AUTHOR_CHARS + 1), []),
        ("T", "A", ["g" * MAX_TAG_CHARS, " " + "h" * MAX_TAG_CHARS + " "]),
        ("T", "A", ["g" * (MAX_TAG_CHARS + 1)]),
        ("T", "A", ["g"] * MAX_TAGS),
        ("T", "A", ["g"] * (MAX_TAGS + 1)),
        ("T\u0301\U0001f600", "A\x07", ["x\ny"]),
    ],
)
def test_csv_takes_what_the_api_takes(title: str, author: str, tags: list[str]) -> None:
    assert csv_accepts(title, author, tags) == api_accepts(title, author, tags)


def test_random_input_reads_the_same_in_random_chunks() -> None:
    # Fixed seed: a cheap property check over quotes, CRs, bad bytes and tiny record limits.
    rng = random.Random(4)
    pieces = [b"a", b",", b'"', b'""', b"\r", b"\n", b"\r\n", b"\xff", b"\xc3\xa9", b"\x00", b"1"]
    weights = [12, 6, 3, 2, 1, 4, 2, 1, 1, 1, 3]
    for _ in range(300):
        data = b"id,title,body,author\n" + b"".join(rng.choices(pieces, weights, k=60))
        limit = rng.choice([10, 30, 1000])
        whole = outcome(data, [len(data)], limit)
        cuts = sorted(rng.sample(range(len(data) + 1), 4))
        sizes = [b - a for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        assert outcome(data, sizes, limit) == whole, (data, sizes, limit)


def outcome(data: bytes, sizes: list[int], limit: int) -> object:
    reader = CsvRowReader(max_record_bytes=limit)
    results: list[Result] = []
    offset = 0
    try:
        for size in sizes:
            results += reader.feed(data[offset : offset + size])
            offset += size
        return results + reader.close()
    except CsvHeaderError as error:
        return error.errors
