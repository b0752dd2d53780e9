"""One field of an import row: the API's rules applied to CSV text, and why a row is refused. Pure.

Each reader takes the field as csv split it (None when it was already refused for a bad byte or a
NUL), appends a `RowError` per problem to the row's list, and returns the value the row gets: so
one pass reports every problem of a row, in one place, not just its first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Final

from postal.posts.models import MAX_ID, MAX_TAG_CHARS, MAX_TAGS, NUL, NUL_REFUSAL

TAG_SEPARATOR: Final = "|"
# A byte that was not UTF-8, as errors="surrogateescape" keeps it (a lone surrogate).
BAD_BYTE: Final = re.compile("[\udc80-\udcff]")

# What the API's `strip_whitespace` strips (pydantic's, Unicode White_Space): not str.strip(),
# which also strips U+001C..U+001F. tests/unit/test_csv_rows.py checks the two agree.
_WHITESPACE: Final = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_MAX_ID_DIGITS: Final = len(str(MAX_ID))
_SHOWN_CHARS: Final = 40  # of a bad value, in a message
# Of a whole message: each is built to stay far below it, and cut there whatever it holds, so a
# report of 100 errors stays a few tens of kilobytes whatever the file (one 2.9 MB field of `|`
# once made a 25 MB message by listing each empty tag).
MAX_MESSAGE_CHARS: Final = 300
_LISTED: Final = 5  # items a message names before it only counts the rest


class RowProblem(StrEnum):
    """Why a row (or the header) was refused: stable, machine-readable."""

    MISSING_FIELD = "missing_field"  # a required column empty in this row
    TOO_LONG = "too_long"  # a title, author, body or tag over its limit; or the whole record
    BAD_DATE = "bad_date"  # created_at not ISO 8601
    BAD_ID = "bad_id"  # id not a whole number from 1 to MAX_ID
    BAD_TAGS = "bad_tags"  # too many tags, or an empty one between separators
    UNKNOWN_ID = "unknown_id"  # no such post (set by the importer, which asks the database)
    DUPLICATE_ID = "duplicate_id"  # the id of an earlier row: reported on the later one
    WRONG_COLUMN_COUNT = "wrong_column_count"
    INVALID_UTF8 = "invalid_utf8"
    NUL_CHARACTER = "nul_character"  # U+0000, which PostgreSQL cannot store in text
    MALFORMED_ROW = "malformed_row"  # not CSV: a lone CR in the middle of an unquoted field
    UNTERMINATED_QUOTE = "unterminated_quote"  # the input ended inside a quoted field
    UNKNOWN_COLUMN = "unknown_column"  # header problems, reported on the header's line
    MISSING_COLUMN = "missing_column"
    DUPLICATE_COLUMN = "duplicate_column"
    TOO_MANY_COLUMNS = "too_many_columns"  # a header of more than MAX_COLUMNS names
    EMPTY_FILE = "empty_file"  # no header at all


@dataclass(frozen=True, slots=True)
class RowError:
    line: int  # 1-based physical line where the record starts (the header is line 1)
    column: str | None  # None when the whole row is to blame
    reason: RowProblem
    message: str  # at most MAX_MESSAGE_CHARS: cut, with "...", if longer

    def __post_init__(self) -> None:
        if len(self.message) > MAX_MESSAGE_CHARS:
            cut = self.message[: MAX_MESSAGE_CHARS - 3] + "..."
            object.__setattr__(self, "message", cut)  # frozen: set once, here

    def to_json(self) -> dict[str, object]:
        return {
            "line": self.line,
            "column": self.column,
            "reason": self.reason.value,
            "message": self.message,
        }


def shown(text: str) -> str:
    """A value as a message may quote it: bad bytes as U+FFFD, long values cut."""
    clean = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return clean if len(clean) <= _SHOWN_CHARS else clean[:_SHOWN_CHARS] + "..."


def screen(
    fields: list[str], index: dict[str, int], line: int, errors: list[RowError]
) -> list[str | None]:
    """The fields, the unreadable ones (a bad byte, a NUL) reported and replaced by None."""
    screened: list[str | None] = list(fields)
    for name, position in index.items():
        field = fields[position]
        if BAD_BYTE.search(field):
            message = f"{name} is not valid UTF-8 (byte {_bad_byte(field)})"
            errors.append(RowError(line, name, RowProblem.INVALID_UTF8, message))
        elif NUL in field:
            message = f"{name} {NUL_REFUSAL}"
            errors.append(RowError(line, name, RowProblem.NUL_CHARACTER, message))
        else:
            continue
        screened[position] = None
    return screened


def read_id(field: str | None, line: int, errors: list[RowError]) -> int | None:
    """An id from 1 to MAX_ID (leading zeros allowed); None for none (a new post) or a bad one."""
    if field is None:
        return None
    written = field.strip(_WHITESPACE)
    if not written:
        return None  # no id: a new post
    digits = written.lstrip("0")
    if not (written.isascii() and written.isdigit()) or len(digits) > _MAX_ID_DIGITS:
        post_id = 0
    else:
        post_id = int(written)
    if not 1 <= post_id <= MAX_ID:
        message = f"id {shown(written)!r} is not a whole number from 1 to {MAX_ID}"
        errors.append(RowError(line, "id", RowProblem.BAD_ID, message))
        return None
    return post_id


def read_text(field: str | None, name: str, limit: int, line: int, errors: list[RowError]) -> str:
    """A title or an author, as the API takes it: stripped, not empty, up to `limit`."""
    if field is None:
        return ""
    value = field.strip(_WHITESPACE)
    if not value:
        errors.append(RowError(line, name, RowProblem.MISSING_FIELD, f"{name} is empty"))
    elif len(value) > limit:
        message = f"{name} is {len(value)} characters, the limit is {limit}"
        errors.append(RowError(line, name, RowProblem.TOO_LONG, message))
    return value


def read_body(field: str | None, limit: int, line: int, errors: list[RowError]) -> str:
    """The body as the API takes it: kept as written (not stripped), not empty, up to `limit`
    bytes of UTF-8."""
    if field is None:
        return ""
    if not field:
        errors.append(RowError(line, "body", RowProblem.MISSING_FIELD, "body is empty"))
    elif 4 * len(field) > limit and (size := len(field.encode())) > limit:
        message = f"body is {size} bytes, the limit is {limit}"
        errors.append(RowError(line, "body", RowProblem.TOO_LONG, message))
    return field


def read_tags(field: str | None, line: int, errors: list[RowError]) -> tuple[str, ...]:
    """Tags separated by TAG_SEPARATOR, each stripped; none when the field is empty.

    More than MAX_TAGS is refused from a count of the separators, before the field is split:
    a field of a million separators is never made into a million strings.
    """
    if field is None:
        return ()
    written = field.strip(_WHITESPACE)
    if not written:
        return ()
    count = written.count(TAG_SEPARATOR) + 1
    if count > MAX_TAGS:
        message = f"{count} tags, the limit is {MAX_TAGS}"
        errors.append(RowError(line, "tags", RowProblem.BAD_TAGS, message))
        return ()
    tags = tuple(tag.strip(_WHITESPACE) for tag in written.split(TAG_SEPARATOR))
    if "" in tags:
        empty = [number for number, tag in enumerate(tags, 1) if not tag]
        which = "tag" if len(empty) == 1 else "tags"
        message = f"{which} {_listed(empty)} {'is' if len(empty) == 1 else 'are'} empty"
        message += f" (tags are separated by {TAG_SEPARATOR})"
        errors.append(RowError(line, "tags", RowProblem.BAD_TAGS, message))
    if max(map(len, tags)) > MAX_TAG_CHARS:
        sizes = [(n, len(tag)) for n, tag in enumerate(tags, 1) if len(tag) > MAX_TAG_CHARS]
        listed = ", ".join(f"tag {n} is {size} characters" for n, size in sizes[:_LISTED])
        more = f" and {len(sizes) - _LISTED} more" if len(sizes) > _LISTED else ""
        message = f"{listed}{more}, the limit is {MAX_TAG_CHARS}"
        errors.append(RowError(line, "tags", RowProblem.TOO_LONG, message))
    return tags


def _listed(numbers: list[int]) -> str:
    """`1, 2, 5`, or `1, 2, 3, 4, 5 and 7 more`: a message names a few and counts the rest."""
    shown = ", ".join(map(str, numbers[:_LISTED]))
    return shown if len(numbers) <= _LISTED else f"{shown} and {len(numbers) - _LISTED} more"


def read_created_at(field: str | None, line: int, errors: list[RowError]) -> datetime | None:
    """An ISO 8601 date and time, as an aware UTC datetime; None for none (now) or a bad one."""
    if field is None:
        return None
    written = field.strip(_WHITESPACE)
    if not written:
        return None  # now
    try:
        moment = datetime.fromisoformat(written)
        # Without an offset the time is taken as UTC, not as the server's local time.
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except (ValueError, OverflowError):
        message = f"created_at {shown(written)!r} is not an ISO 8601 date and time"
        message += " (such as 2024-05-01T12:00:00Z)"
        errors.append(RowError(line, "created_at", RowProblem.BAD_DATE, message))
        return None


def _bad_byte(field: str) -> str:
    found = BAD_BYTE.search(field)
    return f"0x{ord(found.group()) - 0xDC00:02X}" if found else "?"
