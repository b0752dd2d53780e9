"""Records with far too many fields, kept from csv before it makes each field a string. Pure.

csv builds a record's fields as a list of new strings: 3 MB of `ab,ab,ab,...` is a million of
them, about 60 MB for one record the import then refuses anyway (it has more fields than the
header). `CsvRowReader` bounds a record's bytes; this bounds what csv makes of them. When the text
it is about to read holds more than `MAX_UNCHECKED_FIELDS` commas (only a long record can), its
lines go to csv through `lines_for_csv`, which counts each record's fields first, with regular
expressions (C, no string per field), and gives csv, for a record over the limit, a placeholder
of as many lines that csv reads as one field: `wide_fields` then tells the reader how many the
record had.

Hand-written because csv has no limit on fields per record. The two expressions follow csv's own
rules (default dialect, non-strict, as `RecordScan` does): a quote opens a quoted field only at a
field's start, `""` inside it is a quote, and what follows its closing quote up to the next comma
belongs to the same field.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Final

# A text with fewer commas than this goes to csv as it is: no record in it can make a list of
# more strings than this (about 6 MB at worst).
MAX_UNCHECKED_FIELDS: Final = 100_000

# Starts a placeholder: a lone surrogate that decoding never yields (errors="surrogateescape"
# makes U+DC80..U+DCFF only), so no record of a file can begin with it.
_WIDE: Final = "\udfff"

# A whole record, ending with its LF: quoted fields (opened at a field's start, closed, with any
# text after the closing quote), runs of plain characters, commas, and quotes inside a plain
# field. A quoted field that does not close makes the match fail: the record goes on past this
# text (csv would read it as unfinished). Possessive, so nothing is tried twice.
_RECORD: Final = re.compile(r'(?:(?<![^,\n])"(?:[^"]++|"")*+"|[^\n",]++|,|(?<=[^,\n])")*+\n')
# A quoted field, from its opening to its closing quote: removed, its commas are not separators.
_QUOTED: Final = re.compile(r'(?<![^,\n])"(?:[^"]++|"")*+"')


def needs_checking(text: str) -> bool:
    """Whether csv could make more than MAX_UNCHECKED_FIELDS strings of one record of `text`."""
    return len(text) > MAX_UNCHECKED_FIELDS and text.count(",") > MAX_UNCHECKED_FIELDS


def lines_for_csv(text: str, most_fields: Callable[[], int]) -> Iterator[str]:
    """The lines of `text` (whole lines: it ends with an LF) as csv reads them, each with its LF,
    then the empty probe line `CsvRowReader` adds; a record of more than `most_fields()` fields
    (asked anew for each record: the header changes it) replaced by a placeholder of as many
    lines. An unfinished last record (an open quote) with more commas than that is replaced by an
    unfinished placeholder: the reader follows the real one from its raw bytes."""
    position, size = 0, len(text)
    while position < size:
        match = _RECORD.match(text, position)
        record = text[position:] if match is None else match.group()
        position += len(record)
        fields = _QUOTED.sub("", record).count(",") + 1  # unfinished: counted high, never low
        lines = record.split("\n")[:-1]
        if fields <= most_fields():
            for line in lines:
                yield line + "\n"
        else:
            yield from _placeholder(fields, len(lines), finished=match is not None)
    yield "\n"


def wide_fields(fields: list[str]) -> int | None:
    """How many fields the record had, when csv read a placeholder; None for a real record."""
    if not fields or not fields[0].startswith(_WIDE):
        return None
    return int(fields[0][1:].partition("\n")[0])


def _placeholder(fields: int, lines: int, *, finished: bool) -> Iterator[str]:
    """`lines` lines that csv reads as one field naming `fields`: a quoted field across them,
    left open when the record it stands for is unfinished."""
    if lines == 1 and finished:
        yield f"{_WIDE}{fields}\n"
        return
    yield f'"{_WIDE}{fields}\n'
    for _ in range(lines - 2):
        yield "\n"
    if lines > 1:
        yield '"\n' if finished else "\n"
