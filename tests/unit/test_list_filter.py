"""A list's filter: its values' bounds, the cursor kind it signs for, its name in cache keys."""

from __future__ import annotations

import pytest

from postal.posts.cache_keys import filter_name, page_key
from postal.posts.cursors import POSTS, Cursors, list_kind
from postal.posts.models import NO_FILTER, InvalidFilter, ListFilter, filter_value

CURSORS = Cursors(b"k" * 32)


def test_the_whole_list_keeps_its_kind_and_key() -> None:
    """Cursors and cached pages from before filters existed stay good."""
    assert list_kind(NO_FILTER) == POSTS
    assert page_key(20, None).key == "posts:list:{pages}:20:first"


def test_no_two_filters_share_a_kind_whatever_their_values_spell() -> None:
    tricky = [
        ListFilter(author="a"),
        ListFilter(tag="a"),
        ListFilter(author="a", tag="b"),
        ListFilter(author="a&tag=b"),
        ListFilter(author="a&tag=b", tag="b"),
        ListFilter(author="a", tag="b&author=a"),
        ListFilter(author="a%26tag%3Db"),
        ListFilter(author="a b"),
        ListFilter(author="a+b"),
    ]
    kinds = [list_kind(matching) for matching in tricky]
    assert len(set(kinds)) == len(tricky), kinds
    names = [filter_name(matching) for matching in tricky]
    assert len(set(names)) == len(tricky)
    cursor = CURSORS.encode(kinds[2], 7)
    assert [CURSORS.decode(kind, cursor) for kind in kinds].count(7) == 1


def test_a_filtered_page_key_is_short_whatever_the_values() -> None:
    long = ListFilter(author="ü" * 100, tag="t" * 50)
    key = page_key(100, 2**63 - 1, long)
    assert key.key.startswith("posts:list:{pages}:f:")
    assert len(key.key) == len(page_key(100, 2**63 - 1, ListFilter(tag="x")).key)
    assert key.generation_key == page_key(20, None).generation_key  # one for every page


def test_filter_values_are_what_a_write_could_have_stored() -> None:
    assert filter_value("author", "  Ada Lovelace \t") == "Ada Lovelace"
    assert filter_value("tag", "ü" * 50) == "ü" * 50
    for field, raw, message in [
        ("author", "", "author must not be empty"),
        ("tag", " \n ", "tag must not be empty"),
        ("author", "a" * 101, "author is 101 characters; the limit is 100"),
        ("tag", "t" * 51, "tag is 51 characters; the limit is 50"),
        ("tag", "t" * 10_000, "tag is over 50 characters"),
        ("tag", "a\x00b", "tag contains a NUL character"),
    ]:
        with pytest.raises(InvalidFilter) as raised:
            filter_value(field, raw)
        assert raised.value.field == field
        assert raised.value.message.startswith(message)
