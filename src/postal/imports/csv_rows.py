"""The bulk import's CSV format: bytes in, validated rows and line-numbered errors out. No I/O.

`CsvRowReader` is a push parser, so the importer can feed it whatever the HTTP body or the file
gives, in chunks of any size (a chunk may end mid-line, mid-quoted-field or mid-UTF-8 sequence),
and memory stays flat: only the record being read is held, never the file.

How records are found, fast and with the right line numbers:
- A chunk is cut after its last LF; the bytes after it wait for the next chunk. LF (0x0A) never
  occurs inside a UTF-8 sequence, so the complete lines decode on their own; bad bytes survive as
  lone surrogates (errors="surrogateescape") and are found field by field afterwards.
- The stdlib `csv` reader splits the lines into records (it is C), and its `line_num` says how many
  lines each record took: the line numbers follow multi-line quoted fields exactly. After the
  chunk's last line the reader gets one more, empty line: if a record swallows it, that record was
  still inside quotes and goes on in the next chunks.
- Such a record is followed by `RecordScan` (csv_scan.py), which applies csv's rules to the raw
  bytes as they come to find where it ends; csv then parses it once. Past `max_record_bytes` (an
  unterminated quote, say) its bytes are no longer kept: the scan finds its end, and the record is
  reported as too long.

Each field's rules (the API's own) and the refusal reasons are in csv_fields.py; the ids seen so
far, for duplicate_id, in id_set.py. This module is the public face: import from here.
"""

from __future__ import annotations

import csv
import operator
from dataclasses import dataclass
from datetime import datetime
from itertools import repeat
from typing import Final

from postal.imports.csv_fields import (
    BAD_BYTE,
    TAG_SEPARATOR,
    RowError,
    RowProblem,
    read_body,
    read_created_at,
    read_id,
    read_tags,
    read_text,
    screen,
    shown,
)
from postal.imports.csv_scan import RecordScan
from postal.imports.csv_width import lines_for_csv, needs_checking, wide_fields
from postal.imports.id_set import SeenIds
from postal.posts.models import (
    DEFAULT_MAX_BODY_BYTES,
    MAX_AUTHOR_CHARS,
    MAX_TITLE_CHARS,
    NUL,
    PostContent,
)

__all__ = [
    "COLUMNS",
    "DEFAULT_MAX_BODY_BYTES",
    "MAX_COLUMNS",
    "MAX_HEADER_BYTES",
    "RECORD_SLACK_BYTES",
    "REQUIRED_COLUMNS",
    "TAG_SEPARATOR",
    "CsvHeaderError",
    "CsvRowReader",
    "ImportRow",
    "RowError",
    "RowProblem",
]

COLUMNS: Final = ("id", "title", "body", "author", "tags", "created_at")
REQUIRED_COLUMNS: Final = ("title", "body", "author")
# The header row: a few column names, even with others to ignore. Refused past these, before
# anything else is done with it: a 2 MB header of a million unknown names once cost seconds of
# the event loop and half a gigabyte of errors.
MAX_HEADER_BYTES: Final = 64 * 1024
MAX_COLUMNS: Final = 1000
HEADER_ERRORS_LISTED: Final = 10  # header problems listed one by one; the rest are counted
# A record may be this much larger than twice the body limit (a body whose quotes are all doubled):
# room for the other columns. Anything larger is refused without being held in memory.
RECORD_SLACK_BYTES: Final = 1024 * 1024

_BOM: Final = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class ImportRow:
    line: int
    post_id: int | None  # set: a new version of that post; None: a new post
    content: PostContent
    created_at: datetime | None  # aware, UTC; None: now


class CsvHeaderError(ValueError):
    """The header is unusable, so nothing in the file can be imported."""

    def __init__(self, errors: list[RowError]) -> None:
        super().__init__("; ".join(f"line {e.line}: {e.message}" for e in errors))
        self.errors = errors


_Result = ImportRow | RowError


class CsvRowReader:
    """Push parser: feed it bytes as they arrive, in chunks of any size.

    `feed` and `close` return every record they complete, in file order: an `ImportRow`, or one
    `RowError` per problem of a bad row. A bad header raises `CsvHeaderError` (and again on every
    later call). `columns` is the header as written; names are matched without case or the
    whitespace around them.
    """

    def __init__(
        self,
        *,
        ignore_unknown_columns: bool = False,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_record_bytes: int | None = None,
        max_header_bytes: int = MAX_HEADER_BYTES,
    ) -> None:
        self.ignore_unknown_columns = ignore_unknown_columns
        self.max_body_bytes = max_body_bytes
        self.max_record_bytes = (
            2 * max_body_bytes + RECORD_SLACK_BYTES
            if max_record_bytes is None
            else max_record_bytes
        )
        self.max_header_bytes = min(max_header_bytes, self.max_record_bytes)
        # Process-wide, and only ever raised: records over max_record_bytes are refused anyway.
        csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
        self.rows_read = 0  # data records seen, good and bad
        self.bytes_read = 0
        self.columns: tuple[str, ...] | None = None
        self._index: dict[str, int] = {}  # known column -> its position
        self._width = 0
        self._pending: list[bytes] = []  # the unfinished record's bytes, from its start
        self._pending_size = 0
        self._line = 1  # the line the pending bytes start on
        self._at_start = True  # a BOM may come
        self._scan: RecordScan | None = None  # following a record that goes on past a line end
        self._seen_ids = SeenIds()
        self._failure: CsvHeaderError | None = None
        self._closed = False

    def feed(self, chunk: bytes) -> list[_Result]:
        self._check_usable()
        self.bytes_read += len(chunk)
        results: list[_Result] = []
        if self._scan is not None:
            end = self._scan.advance(chunk)
            if end < 0:
                self._keep(chunk, results)
                return results
            scan, self._scan = self._scan, None
            if not scan.holding:
                self._line = scan.line + scan.newlines
                self._oversized(scan.line, results, unterminated=False)
                chunk = chunk[end:]
        cut = chunk.rfind(b"\n") + 1
        if cut == 0:
            self._keep(chunk, results)
            return results
        head, self._pending, self._pending_size = self._pending, [], 0
        head.append(chunk[:cut] if cut < len(chunk) else chunk)
        self._parse(b"".join(head), results, at_end=False)
        if cut < len(chunk):
            self._keep_tail(chunk[cut:], results)
        return results

    def close(self) -> list[_Result]:
        """The end of the input: the last record needs no line end."""
        self._check_usable()
        self._closed = True
        results: list[_Result] = []
        scan, self._scan = self._scan, None
        if scan is not None and not scan.holding:
            unterminated = scan.in_quotes
            self._oversized(scan.line, results, unterminated=unterminated)
        elif self._pending:
            data = b"".join(self._pending)
            self._pending = []
            self._parse(data if data.endswith(b"\n") else data + b"\n", results, at_end=True)
        if self.columns is None:
            self._fail([RowError(1, None, RowProblem.EMPTY_FILE, "the file has no header row")])
        return results

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._closed:
            raise ValueError("the reader is closed")

    def _fail(self, errors: list[RowError]) -> None:
        self._failure = CsvHeaderError(errors)
        raise self._failure

    def _keep_tail(self, data: bytes, results: list[_Result]) -> None:
        """Keep the bytes after a chunk's last LF: the start of a record, or more of one."""
        if self._scan is not None:
            self._scan.advance(data)  # no LF in it: it cannot end the record
        self._keep(data, results)

    def _keep(self, data: bytes, results: list[_Result]) -> None:
        """Keep bytes of an unfinished record; past the limit, only follow it."""
        if self._scan is not None and not self._scan.holding:
            return
        self._pending.append(data)
        self._pending_size += len(data)
        limit = self._limit()
        if self._pending_size <= limit:
            return
        held = b"".join(self._pending)
        without_bom = len(held) - len(_BOM) if held.startswith(_BOM) else len(held)
        if self._at_start and without_bom <= limit:
            self._pending = [held]  # the BOM is not part of the record
            return
        self._pending, self._pending_size = [], 0
        if self._scan is None:  # one line, so far without an LF
            self._scan = RecordScan(self._line)
            self._scan.advance(self._without_bom(held))
        self._scan.holding = False
        if self.columns is None:  # the header: nothing to follow
            self._oversized(self._scan.line, results, unterminated=False)

    def _limit(self) -> int:
        """The most bytes the record being read may take: the header's limit, then a row's."""
        return self.max_header_bytes if self.columns is None else self.max_record_bytes

    def _oversized(self, line: int, results: list[_Result], *, unterminated: bool) -> None:
        if unterminated:
            message = "a quoted field starts here and is never closed"
            error = RowError(line, None, RowProblem.UNTERMINATED_QUOTE, message)
        elif self.columns is None:
            message = f"the header row is over {self.max_header_bytes} bytes"
            error = RowError(line, None, RowProblem.TOO_LONG, message)
        else:
            message = f"the record is over {self.max_record_bytes} bytes"
            error = RowError(line, None, RowProblem.TOO_LONG, message)
        if self.columns is None:
            self._fail([error])
        self.rows_read += 1
        results.append(error)

    def _without_bom(self, data: bytes) -> bytes:
        if self._at_start:
            self._at_start = False
            if data.startswith(_BOM):
                return data[len(_BOM) :]
        return data

    def _parse(self, data: bytes, results: list[_Result], *, at_end: bool) -> None:
        """Read the records of `data` (whole lines); follow an unfinished last one."""
        data = self._without_bom(data)
        try:
            text = data.decode()
            suspect = False
        except UnicodeDecodeError:
            text = data.decode("utf-8", "surrogateescape")
            suspect = True
        suspect = suspect or NUL in text
        lines = text.split("\n")  # the last is "": with its LF, the probe line
        last = len(lines) - 1
        checked = needs_checking(text)  # a record here may have far too many fields: csv_width
        if checked:
            reader = csv.reader(lines_for_csv(text, self._most_fields))
        else:
            reader = csv.reader(map(operator.add, lines, repeat("\n")))
        measure = len(data) > self._limit()  # else no record here can be over it
        done = 0  # lines taken by finished records
        unfinished = False
        while True:
            malformed = None
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                fields, malformed = [], exc
            end = reader.line_num
            if end > last:  # took the probe line: a blank line, or a record still inside quotes
                unfinished = bool(fields)
                break
            start, done = done, end
            if fields or malformed:
                line = self._line + start
                wide = wide_fields(fields) if checked else None
                if measure and self._size(lines, start, end) > self._limit():
                    self._oversized(line, results, unterminated=False)
                elif wide is not None:
                    self._too_wide(wide, line, results)
                elif malformed is not None:
                    self._malformed(line, malformed, results)
                elif self.columns is None:
                    self._read_header(fields, line)
                else:
                    self.rows_read += 1
                    self._check_row(fields, line, suspect, results)
        self._line += done
        if not unfinished:
            return
        if at_end:
            self._oversized(self._line, results, unterminated=True)
            return
        offset = len(data) - 1
        for _ in range(last - done):  # back over the unfinished record's lines
            offset = data.rfind(b"\n", 0, offset)
        self._scan = RecordScan(self._line)
        self._scan.advance(data[offset + 1 :])
        self._keep(data[offset + 1 :], results)

    def _most_fields(self) -> int:
        """The most fields the next record may have: the header's limit, then its width."""
        return MAX_COLUMNS if self.columns is None else self._width

    def _too_wide(self, fields: int, line: int, results: list[_Result]) -> None:
        """A record with more fields than it may have, counted without csv making them."""
        if self.columns is None:
            message = f"the header names {fields} columns, the limit is {MAX_COLUMNS}"
            self._fail([RowError(line, None, RowProblem.TOO_MANY_COLUMNS, message)])
        self.rows_read += 1
        message = f"{fields} fields; the header has {self._width}"
        results.append(RowError(line, None, RowProblem.WRONG_COLUMN_COUNT, message))

    @staticmethod
    def _size(lines: list[str], start: int, end: int) -> int:
        """A record's size in bytes, as read (LFs within it included)."""
        body = lines[start:end]
        return sum(len(part.encode("utf-8", "surrogateescape")) for part in body) + len(body) - 1

    def _malformed(self, line: int, exc: csv.Error, results: list[_Result]) -> None:
        if "new-line character" in str(exc):
            message = "a CR in the middle of an unquoted field: quote the field, end lines with LF"
        else:
            message = f"not valid CSV: {exc}"
        error = RowError(line, None, RowProblem.MALFORMED_ROW, message)
        if self.columns is None:
            self._fail([error])
        self.rows_read += 1
        results.append(error)

    def _read_header(self, fields: list[str], line: int) -> None:
        if len(fields) > MAX_COLUMNS:
            message = f"the header names {len(fields)} columns, the limit is {MAX_COLUMNS}"
            self._fail([RowError(line, None, RowProblem.TOO_MANY_COLUMNS, message)])
        errors: list[RowError] = []
        index: dict[str, int] = {}
        for position, written in enumerate(fields):
            name = written.strip().lower()
            if name in COLUMNS:
                if name in index:
                    message = f"column {name} appears twice (columns {index[name] + 1} and "
                    message += f"{position + 1})"
                    errors.append(RowError(line, name, RowProblem.DUPLICATE_COLUMN, message))
                index[name] = position
            elif self.ignore_unknown_columns:
                continue
            elif BAD_BYTE.search(written):
                message = f"column {position + 1}'s name is not valid UTF-8"
                errors.append(RowError(line, shown(written), RowProblem.INVALID_UTF8, message))
            else:
                expected = ", ".join(COLUMNS)
                message = f"unknown column {shown(written)!r} (column {position + 1}); "
                message += f"expected some of: {expected}"
                errors.append(RowError(line, shown(written), RowProblem.UNKNOWN_COLUMN, message))
        for name in REQUIRED_COLUMNS:
            if name not in index:
                message = f"the required column {name} is missing"
                errors.append(RowError(line, name, RowProblem.MISSING_COLUMN, message))
        if errors:
            self._fail(_capped(errors))
        self.columns = tuple(fields)
        self._index = index
        self._width = len(fields)

    def _check_row(
        self, fields: list[str], line: int, suspect: bool, results: list[_Result]
    ) -> None:
        """One data record: an ImportRow, or one RowError per problem."""
        index = self._index
        if len(fields) != self._width:
            message = f"{len(fields)} fields; the header has {self._width}"
            results.append(RowError(line, None, RowProblem.WRONG_COLUMN_COUNT, message))
            return
        errors: list[RowError] = []
        # This chunk has a bad byte or a NUL somewhere: report the fields that have one.
        checked: list[str | None] | list[str] = (
            screen(fields, index, line, errors) if suspect else fields
        )
        post_id = self._post_id(checked[index["id"]], line, errors) if "id" in index else None
        title = read_text(checked[index["title"]], "title", MAX_TITLE_CHARS, line, errors)
        body = read_body(checked[index["body"]], self.max_body_bytes, line, errors)
        author = read_text(checked[index["author"]], "author", MAX_AUTHOR_CHARS, line, errors)
        tags = read_tags(checked[index["tags"]], line, errors) if "tags" in index else ()
        created_at = (
            read_created_at(checked[index["created_at"]], line, errors)
            if "created_at" in index
            else None
        )
        if errors:
            errors.sort(key=lambda error: index.get(error.column or "", -1))  # in header order
            results.extend(errors)
        else:
            content = PostContent(title, body, author, tags)
            results.append(ImportRow(line, post_id, content, created_at))

    def _post_id(self, field: str | None, line: int, errors: list[RowError]) -> int | None:
        """The row's id, if any; a repeat of an earlier row's is reported (on the later row)."""
        post_id = read_id(field, line, errors)
        if post_id is None:
            return None
        first = self._seen_ids.first_line(post_id, line)
        if first is not None:
            message = f"id {post_id} is also on line {first}: one row per post"
            errors.append(RowError(line, "id", RowProblem.DUPLICATE_ID, message))
        return post_id


def _capped(errors: list[RowError]) -> list[RowError]:
    """At most HEADER_ERRORS_LISTED header problems, in column order; when some must be left
    out, a missing column comes first (the problem a user is least likely to spot alone), and
    the last one listed counts the rest."""
    if len(errors) <= HEADER_ERRORS_LISTED:
        return errors
    errors = sorted(errors, key=lambda error: error.reason != RowProblem.MISSING_COLUMN)
    listed = errors[: HEADER_ERRORS_LISTED - 1]
    first_unlisted = errors[len(listed)]
    message = f"and {len(errors) - len(listed)} more problems with the header, not listed"
    return [*listed, RowError(first_unlisted.line, None, first_unlisted.reason, message)]
