"""The JSON a client receives for posts, versions and pages, encoded once.

The read path stores these bytes in the cache exactly as they are sent, so a cache hit returns
them without parsing or re-encoding anything. Keeping the encoding here, next to the rules,
means a hit and a miss can never answer with different bodies for the same version.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from postal.posts.models import MAX_ID, Post, PostVersion


def timestamp(moment: datetime) -> str:
    """ISO 8601 in UTC with a `Z`, to the microsecond: `2026-11-28T16:52:43.123456Z`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def post_fields(post: Post) -> dict[str, Any]:
    return {
        "id": post.id,
        "title": post.title,
        "body": post.body,
        "author": post.author,
        "tags": list(post.tags),
        "version": post.version,
        "created_at": timestamp(post.created_at),
        "updated_at": timestamp(post.updated_at),
    }


def version_fields(version: PostVersion) -> dict[str, Any]:
    return {
        "post_id": version.post_id,
        "version": version.version,
        "title": version.title,
        "body": version.body,
        "author": version.author,
        "tags": list(version.tags),
        "created_at": timestamp(version.created_at),
    }


def encode(document: object) -> bytes:
    """Compact UTF-8 JSON; non-ASCII text stays as it is (smaller than \\u escapes)."""
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


def post_json(post: Post) -> bytes:
    return encode(post_fields(post))


def page_json(posts: Sequence[Post], next_cursor: str | None) -> bytes:
    return encode({"items": [post_fields(post) for post in posts], "next_cursor": next_cursor})


def versions_json(post_id: int, versions: Sequence[PostVersion]) -> bytes:
    return encode({"post_id": post_id, "items": [version_fields(v) for v in versions]})


def version_json(version: PostVersion) -> bytes:
    return encode(version_fields(version))


# -- ETags and cursors ---------------------------------------------------------------------------


def etag(version: int) -> str:
    """The strong ETag of a post at `version`: `"v3"`. Ids are never reused, so this is unique."""
    return f'"v{version}"'


def version_of_etag(tag: str) -> int | None:
    """The version an ETag names, or None for anything that is not one of ours (weak included)."""
    tag = tag.strip()
    if not (tag.startswith('"v') and tag.endswith('"')):
        return None
    digits = tag[2:-1]
    return int(digits) if digits.isdigit() and len(digits) < 10 else None


def encode_cursor(before_id: int) -> str:
    """An opaque cursor for the next page: clients pass it back, they do not read it."""
    return base64.urlsafe_b64encode(f"p{before_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int | None:
    """The id a cursor stands for, or None if it is not a cursor this service made."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        text = base64.b64decode(padded, altchars=b"-_", validate=True).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    digits = text[1:]
    if not text.startswith("p") or not digits.isdigit() or len(digits) > 19:
        return None
    before_id = int(digits)
    return before_id if 1 <= before_id <= MAX_ID else None
