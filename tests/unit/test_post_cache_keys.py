"""The posts' cache keys (pure): a post's key is made once while it is read often, and the keys
kept so are bounded."""

from __future__ import annotations

from postal.cache import guarded
from postal.posts.cache_keys import POST_KEYS_KEPT, post_key


def test_a_post_key_kept_is_the_key_guarded_makes() -> None:
    first = post_key(42)
    assert first == guarded("post", "42")
    assert first.epoch_key == guarded("post", "42").epoch_key
    assert post_key(42) is first  # made once: the next read reuses it


def test_the_post_keys_kept_are_bounded() -> None:
    post_key.cache_clear()
    for post_id in range(1, 3 * POST_KEYS_KEPT):
        assert post_key(post_id).key == f"post:{{{post_id}}}"
    assert post_key.cache_info().currsize == POST_KEYS_KEPT
