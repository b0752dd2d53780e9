"""The post ids an import has read so far, and the line each was first on. Pure, no I/O.

Hand-written because an import may carry millions of ids and the reader's memory must stay flat:
a dict of ints costs about 100 bytes an entry, this table 32 to 64 (two arrays of 64-bit ints,
16 bytes a slot, a quarter to half full), and nothing in the stdlib offers a compact int -> int map.
"""

from __future__ import annotations

from array import array
from typing import Final


class SeenIds:
    """Open addressing with linear probing over two arrays: ids and their first line."""

    _MULTIPLIER: Final = 0x9E3779B97F4A7C15  # Fibonacci hashing: spreads runs of ids evenly

    def __init__(self) -> None:
        self._bits = 10
        self._ids = array("q", bytes(8 << self._bits))  # 0 marks a free slot: ids start at 1
        self._lines = array("q", bytes(8 << self._bits))
        self.count = 0

    def first_line(self, post_id: int, line: int) -> int | None:
        """The line `post_id` was first seen on; None (and remembered on `line`) when new."""
        ids, mask = self._ids, (1 << self._bits) - 1
        slot = ((post_id * self._MULTIPLIER) & 0xFFFFFFFFFFFFFFFF) >> (64 - self._bits)
        while (found := ids[slot]) != 0:
            if found == post_id:
                return self._lines[slot]
            slot = (slot + 1) & mask
        ids[slot], self._lines[slot] = post_id, line
        self.count += 1
        if 2 * self.count > mask:
            self._grow()
        return None

    def _grow(self) -> None:
        ids, lines = self._ids, self._lines
        self._bits += 1
        self._ids = array("q", bytes(8 << self._bits))
        self._lines = array("q", bytes(8 << self._bits))
        self.count = 0
        for post_id, line in zip(ids, lines, strict=True):
            if post_id:
                self.first_line(post_id, line)
