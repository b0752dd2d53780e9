from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from postal.posts.entries import NOT_FOUND, Entry, decode_entry, encode_entry
from postal.posts.models import Post
from postal.posts.representation import (
    decode_cursor,
    encode_cursor,
    etag,
    post_json,
    timestamp,
    version_of_etag,
)


def test_cursors_round_trip_and_reject_what_we_did_not_make() -> None:
    for post_id in (1, 42, 2**63 - 1):
        assert decode_cursor(encode_cursor(post_id)) == post_id
    for bad in ("", "zzz", "cDE=x", encode_cursor(5)[:-1] + "!", "MTI", "cC0x"):
        assert decode_cursor(bad) is None, bad


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
