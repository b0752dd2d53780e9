from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from postal.posts.cursors import CURSOR_CHARS, POSTS, Cursors, versions_kind
from postal.posts.entries import NOT_FOUND, Entry, decode_entry, encode_entry
from postal.posts.models import Post
from postal.posts.representation import (
    etag,
    items_within,
    page_from_items,
    page_json,
    post_json,
    timestamp,
    version_of_etag,
)

KEY = b"k" * 32


def test_cursors_round_trip_and_reject_what_we_did_not_make() -> None:
    cursors = Cursors(KEY)
    for post_id in (1, 42, 2**63 - 1):
        cursor = cursors.encode(POSTS, post_id)
        assert len(cursor) == CURSOR_CHARS
        assert cursors.decode(POSTS, cursor) == post_id
    made = cursors.encode(POSTS, 5)
    flipped = made[:10] + ("B" if made[10] == "A" else "A") + made[11:]
    old_style = "cDU"  # `p5` in base64: what an earlier release gave out, and anyone could make
    for bad in ("", "zzz", old_style, made[:-1], made + "A", flipped, "+" * 32, "é" * 32):
        assert cursors.decode(POSTS, bad) is None, bad
    assert cursors.decode(versions_kind(1), made) is None  # another list's
    assert Cursors(b"j" * 32).decode(POSTS, made) is None  # another deployment's
    assert cursors.decode(POSTS, cursors.encode(POSTS, 0)) is None  # out of range
    assert "kkkk" not in repr(cursors)


def test_a_short_cursor_key_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        Cursors(b"short")


def test_a_page_from_items_is_the_page_encoded_whole() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    posts = [Post(n, "T\x01", "b\u00e9", "a", ("t",), 1, now, now) for n in (3, 2)]
    assert page_json(posts, "c") == page_from_items([post_json(p) for p in posts], "c")
    assert page_json([], None) == b'{"items":[],"next_cursor":null}'


def test_items_within_keeps_the_first_and_stops_at_the_budget() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    posts = [Post(n, "T", "x" * 100, "a", (), 1, now, now) for n in range(5, 0, -1)]
    one = len(post_json(posts[0]))
    assert len(items_within(posts, 1)) == 1  # always the first
    assert len(items_within(posts, 10**6)) == 5
    cursor = "c" * CURSOR_CHARS
    for budget in range(200, 5 * one + 100, 37):
        items = items_within(posts, budget)
        more_fit = len(items) < 5 and len(page_from_items([*items, b"x" * one], cursor)) <= budget
        assert not more_fit
        assert len(items) == 1 or len(page_from_items(items, cursor)) <= budget


def test_etags_name_versions() -> None:
    assert etag(3) == '"v3"'
    assert version_of_etag('"v3"') == 3
    assert version_of_etag(' "v12" ') == 12
    for other in ('W/"v3"', '"3"', "v3", '"v"', '"vx"', "*", '"v99999999999"'):
        assert version_of_etag(other) is None, other


def test_timestamps_are_utc_with_z() -> None:
    moment = datetime(2026, 11, 28, 18, 0, tzinfo=timezone(timedelta(hours=2)))
    assert timestamp(moment) == "2026-11-28T16:00:00.000000Z"


def test_post_json_keeps_unicode_and_field_order() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    post = Post(7, "Tïtle", "body", "ada", ("a", "b"), 2, now, now)
    assert post_json(post).startswith('{"id":7,"title":"Tïtle"'.encode())


@pytest.mark.parametrize(
    "entry", [Entry(200, '"v3"', b'{"id":1}'), Entry(200, None, b"[]"), NOT_FOUND]
)
def test_entries_round_trip(entry: Entry) -> None:
    assert decode_entry(encode_entry(entry)) == entry


def test_a_body_with_newlines_survives_framing() -> None:
    entry = Entry(200, '"v1"', b'{"body":"a\nb"}\n')
    assert decode_entry(encode_entry(entry)).body == entry.body


@pytest.mark.parametrize("junk", [b"", b"hello", b"500 x\n{}", b"200"])
def test_anything_else_is_not_an_entry(junk: bytes) -> None:
    with pytest.raises(ValueError, match="not a cache entry"):
        decode_entry(junk)
