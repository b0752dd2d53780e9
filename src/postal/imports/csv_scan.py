"""Follow a CSV record that goes on past the bytes read so far, over raw bytes. Pure, no I/O.

Hand-written because nothing in the stdlib does this: `csv.reader` needs whole lines and, fed a
record that spans many chunks, would re-parse it from its start on every chunk (quadratic), and
would need all its bytes held even when the record is already known to be too long. `RecordScan`
applies csv's own rules (default dialect, non-strict: quotes, commas, CR and LF only) to the bytes
as they come, once each, to find where the record ends and how many lines it takes; `CsvRowReader`
then has csv parse it once, or reports it as too long without having kept it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

# Where the scan is in a record (plain ints: compared once per quote in the scanning loop).
_FIELD_START: Final = 0
_UNQUOTED: Final = 1  # also after a closing quote: csv keeps what follows it as it is
_QUOTED: Final = 2
_QUOTE_IN_QUOTED: Final = 3  # a quote inside quotes: the end of the field, or the first of ""
# After a CR outside quotes: the record ends with the line, whatever follows (csv: an error).
_TO_LINE_END: Final = 4

_UNQUOTED_STOP = re.compile(rb"[,\r\n]")


@dataclass(slots=True)
class RecordScan:
    """Follows a record that goes on past the bytes read so far, over raw bytes, by csv's own rules
    (default dialect, non-strict): where it ends and how many lines it takes. Linear, so a long
    record is never parsed again and again; past `max_record_bytes` its bytes are not even kept."""

    line: int  # where the record starts
    holding: bool = True  # its bytes are kept, to be parsed once it ends
    state: int = _FIELD_START
    newlines: int = 0

    @property
    def in_quotes(self) -> bool:
        """Inside a quoted field: at the end of the input, an unterminated quote."""
        return self.state == _QUOTED

    def advance(self, data: bytes) -> int:
        """Scan `data`; the index just after the record's final LF, or -1 if it goes on."""
        pos, size, state = 0, len(data), self.state
        while pos < size:
            if state == _QUOTED:
                quote = data.find(b'"', pos)
                self.newlines += data.count(b"\n", pos, size if quote < 0 else quote)
                if quote < 0:
                    break
                pos, state = quote + 1, _QUOTE_IN_QUOTED
            elif state == _TO_LINE_END:
                end = data.find(b"\n", pos)
                if end < 0:
                    break
                self.newlines += 1
                return end + 1
            elif state != _UNQUOTED and data[pos] == 0x22:  # '"' opens, or is doubled
                pos, state = pos + 1, _QUOTED
            else:
                stop = _UNQUOTED_STOP.search(data, pos)
                if stop is None:
                    state = _UNQUOTED
                    break
                pos = stop.end()
                if data[stop.start()] == 0x0A:
                    self.newlines += 1
                    return pos
                state = _FIELD_START if data[stop.start()] == 0x2C else _TO_LINE_END
        self.state = state
        return -1
