"""Page cursors a client cannot forge: a position, and a MAC over it with the deployment's key.

A list page is cached under its cursor's position. When any well-formed cursor was accepted,
anyone could make up positions, each a new cache key (measured: ten requests took Redis from
1 MB to 242 MB). Signed, a cursor is one this deployment gave out: the positions that can be
asked for are the ids some page ended at, bounded by the data, not by the client.

A cursor is 32 URL-safe base64 characters: the position (8 bytes, big-endian) and the first 16
bytes of HMAC-SHA256 over a kind (`posts`, `posts?author=ada`, `versions:42`: a cursor of one
list is no cursor of another, a filter's list included) and the position. The key is the
deployment's, shared by every worker and pod: see `storage/deployment_keys.py`. Cursors carry
nothing secret; they are opaque so that clients pass them back as they are.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import Final
from urllib.parse import urlencode

from postal.posts.models import MAX_ID, ListFilter

KEY_BYTES: Final = 32  # what the deployment's key is made of
MIN_KEY_BYTES: Final = 16
MAC_BYTES: Final = 16  # 128 bits: guessing one is out of reach, and the cursor stays short
POSITION_BYTES: Final = 8
CURSOR_CHARS: Final = 32  # base64 of the 24 bytes, unpadded
POSTS: Final = "posts"


def list_kind(matching: ListFilter) -> str:
    """The kind of a cursor through the list with this filter: `posts` for the whole list (so
    cursors given out before filters existed still work), `posts?author=...&tag=...` otherwise.
    Percent-encoded: no author can spell the separator before the tag, so two filters never
    share a kind, and a cursor of one filter's pages is no cursor of another's."""
    if matching.is_empty:
        return POSTS
    fields = [("author", matching.author), ("tag", matching.tag)]
    return f"{POSTS}?{urlencode([(name, value) for name, value in fields if value is not None])}"


def versions_kind(post_id: int) -> str:
    """The kind of a cursor through one post's versions."""
    return f"versions:{post_id}"


class Cursors:
    """Makes and checks the cursors of one deployment, with its key."""

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"a cursor key needs at least {MIN_KEY_BYTES} bytes, got {len(key)}")
        self._key = key

    def __repr__(self) -> str:
        return "<Cursors key=***>"

    def encode(self, kind: str, position: int) -> str:
        raw = position.to_bytes(POSITION_BYTES, "big")
        return base64.urlsafe_b64encode(raw + self._mac(kind, raw)).decode("ascii").rstrip("=")

    def decode(self, kind: str, cursor: str) -> int | None:
        """The position of a cursor this deployment made for `kind`; None for anything else."""
        if len(cursor) != CURSOR_CHARS or not cursor.isascii():
            return None
        try:
            data = base64.b64decode(cursor, altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            return None
        raw, mac = data[:POSITION_BYTES], data[POSITION_BYTES:]
        if len(mac) != MAC_BYTES or not hmac.compare_digest(mac, self._mac(kind, raw)):
            return None
        position = int.from_bytes(raw, "big")
        return position if 1 <= position <= MAX_ID else None

    def _mac(self, kind: str, raw: bytes) -> bytes:
        message = kind.encode() + b"\0" + raw
        return hmac.new(self._key, message, hashlib.sha256).digest()[:MAC_BYTES]
