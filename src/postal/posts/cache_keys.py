"""Where posts live in the cache: one guarded key per post, one shared generation for all pages.

`post:{42}` and its generation `post:{42}:gen` share a Redis Cluster hash slot (the `{...}` hash
tag), as the stale-fill guard needs. List pages cannot be enumerated for deletion, so every page
carries the generation of `posts:list:{pages}:gen`, and a write bumps that one counter: every
page filled before the write stops matching and reads as a miss. A filtered page's key names its
filter by a fixed-length digest of its cursor kind (`filter_name`), so a key stays short whatever
the values' length or alphabet; under the same generation, so a write
to any post makes every filtered page a miss too: the page that showed it, and the page it now
belongs on.
"""

from __future__ import annotations

import base64
import functools
import hashlib

from postal.cache import GuardedKey, guarded
from postal.posts.cursors import list_kind
from postal.posts.models import NO_FILTER, ListFilter

LIST_GENERATION = "posts:list:{pages}:gen"
# The posts whose keys are kept made: building one (`guarded`: checks, three strings, the
# slot's CRC) took 1.4 µs of every read, a kept one 0.1 µs. About 2.5 MB at most.
POST_KEYS_KEPT = 8192


@functools.lru_cache(maxsize=POST_KEYS_KEPT)
def post_key(post_id: int) -> GuardedKey:
    return guarded("post", str(post_id))


def page_key(limit: int, before_id: int | None, matching: ListFilter = NO_FILTER) -> GuardedKey:
    start = "first" if before_id is None else str(before_id)
    if matching.is_empty:
        return GuardedKey(f"posts:list:{{pages}}:{limit}:{start}", LIST_GENERATION)
    name = filter_name(matching)
    return GuardedKey(f"posts:list:{{pages}}:f:{name}:{limit}:{start}", LIST_GENERATION)


def filter_name(matching: ListFilter) -> str:
    """22 URL-safe characters naming a filter (128 bits of SHA-256 over its cursor kind)."""
    digest = hashlib.sha256(list_kind(matching).encode()).digest()[:16]
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")
