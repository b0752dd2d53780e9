"""The JSON a client receives for posts, versions and pages, encoded once.

The read path stores these bytes in the cache exactly as they are sent, so a cache hit returns
them without parsing or re-encoding anything. Keeping the encoding here, next to the rules,
means a hit and a miss can never answer with different bodies for the same version.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

from postal.posts.cursors import CURSOR_CHARS
from postal.posts.models import Post, PostVersion, VersionSummary


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


def summary_fields(summary: VersionSummary) -> dict[str, Any]:
    return {
        "post_id": summary.post_id,
        "version": summary.version,
        "title": summary.title,
        "author": summary.author,
        "tags": list(summary.tags),
        "created_at": timestamp(summary.created_at),
    }


def page_json(posts: Sequence[Post], next_cursor: str | None) -> bytes:
    return page_from_items([post_json(post) for post in posts], next_cursor)


def page_from_items(items: Sequence[bytes], next_cursor: str | None) -> bytes:
    """A page of posts from each post's JSON: the bytes `encode` makes of the whole page."""
    return b'{"items":[%s],"next_cursor":%s}' % (b",".join(items), encode(next_cursor))


# A page's bytes besides its items and the commas between them, at most (with a cursor).
PAGE_FRAME_BYTES: Final = len(page_from_items([], "c" * CURSOR_CHARS))


def items_within(posts: Sequence[Post], max_bytes: int) -> list[bytes]:
    """The JSON of as many of `posts` (in page order) as a page of at most `max_bytes` holds,
    and always of the first (one post larger than a page is still shown). Each is encoded only
    once the ones before it fit, so no more than a page and one post are ever held encoded."""
    items: list[bytes] = []
    size = PAGE_FRAME_BYTES
    for post in posts:
        item = post_json(post)
        size += len(item) + (1 if items else 0)
        if items and size > max_bytes:
            break
        items.append(item)
    return items


def versions_page_json(
    post_id: int, versions: Sequence[VersionSummary], next_cursor: str | None
) -> bytes:
    return encode(
        {
            "post_id": post_id,
            "items": [summary_fields(v) for v in versions],
            "next_cursor": next_cursor,
        }
    )


def version_json(version: PostVersion) -> bytes:
    return encode(version_fields(version))


# -- ETags -----------------------------------------------------------------------------------------


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


def page_etag(body: bytes) -> str:
    """The strong ETag of a list page: a digest of its bytes, `"p..."` (never a version's `"v3"`,
    so If-Match cannot mistake it). Equal bytes, equal tag, whichever process built them."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(body).digest()[:16]).rstrip(b"=")
    return f'"p{digest.decode("ascii")}"'
