"""What the read path keeps in the cache for one post or one list page.

An entry is the response a reader gets: its status (200, or 404 for a negative entry), its ETag
and its body, framed as `b"200 \\"v3\\"\\n" + body` so that a hit is one `partition` away from
the bytes it sends. The body is the final JSON (see `representation`), never parsed on a hit.
"""

from __future__ import annotations

from dataclasses import dataclass

_NOT_FOUND = b"404 -\n"


@dataclass(frozen=True, slots=True)
class Entry:
    status: int  # 200 or 404
    etag: str | None  # None for negative entries (and pages cached before pages had one)
    body: bytes  # empty for a negative entry

    @property
    def found(self) -> bool:
        return self.status == 200


NOT_FOUND = Entry(404, None, b"")


def encode_entry(entry: Entry) -> bytes:
    if not entry.found:
        return _NOT_FOUND
    return b"200 %s\n%s" % ((entry.etag or "-").encode(), entry.body)


def decode_entry(payload: bytes) -> Entry:
    """The entry `encode_entry` made; raises ValueError on anything else."""
    header, newline, body = payload.partition(b"\n")
    status, _, tag = header.partition(b" ")
    if not newline or status not in (b"200", b"404"):
        raise ValueError("not a cache entry")
    if status == b"404":
        return NOT_FOUND
    return Entry(200, None if tag == b"-" else tag.decode(), body)
