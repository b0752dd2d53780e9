"""Where posts live in the cache: one guarded key per post, one shared generation for all pages.

`post:{42}` and its generation `post:{42}:gen` share a Redis Cluster hash slot (the `{...}` hash
tag), as the stale-fill guard needs. List pages cannot be enumerated for deletion, so every page
carries the generation of `posts:list:{pages}:gen`, and a write bumps that one counter: every
page filled before the write stops matching and reads as a miss.
"""

from __future__ import annotations

from postal.cache import GuardedKey, guarded

LIST_GENERATION = "posts:list:{pages}:gen"


def post_key(post_id: int) -> GuardedKey:
    return guarded("post", str(post_id))


def page_key(limit: int, before_id: int | None) -> GuardedKey:
    start = "first" if before_id is None else str(before_id)
    return GuardedKey(f"posts:list:{{pages}}:{limit}:{start}", LIST_GENERATION)
