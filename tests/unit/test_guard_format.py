"""Guarded key names, TTL jitter, the stamped value format and the invalidation commands (pure)."""

from __future__ import annotations

import pytest

from postal.cache import GENERATION_TTL, CacheError, Guarded, GuardedKey, guarded, jittered
from postal.cache.policy.guard import invalidation_commands, read_guarded, stamp


def test_a_key_and_its_generation_share_a_hash_tag() -> None:
    key = guarded("post", "42")
    assert key == GuardedKey("post:{42}", "post:{42}:gen")
    page = guarded("list", "all", variant="page=2")
    assert page == GuardedKey("list:{all}:page=2", "list:{all}:gen")


@pytest.mark.parametrize(
    ("namespace", "ident", "variant"),
    [("post", "", None), ("po{st", "42", None), ("post", "4}2", None), ("l", "a", "gen")],
)
def test_refuses_names_that_would_split_a_key_from_its_generation(
    namespace: str, ident: str, variant: str | None
) -> None:
    with pytest.raises(ValueError, match=r"ident|braces|generation"):
        guarded(namespace, ident, variant=variant)


def test_jitter_stretches_a_ttl_by_up_to_its_fraction_never_shortens_it() -> None:
    assert jittered(300.0, 0.1, rng=lambda: 0.0) == 300.0
    assert jittered(300.0, 0.1, rng=lambda: 0.5) == pytest.approx(315.0)
    assert jittered(300.0, 0.1, rng=lambda: 0.999999) < 330.0
    assert jittered(300.0, 0.0) == 300.0
    assert all(300.0 <= jittered(300.0, 0.1) < 330.0 for _ in range(1000))
    with pytest.raises(ValueError, match="negative"):
        jittered(300.0, -0.1)


def test_a_value_stamped_with_the_current_generation_is_a_hit() -> None:
    assert stamp(7, b'{"id": 1}') == b'7\n{"id": 1}'
    assert read_guarded(stamp(7, b"body\nwith newline"), b"7") == Guarded(b"body\nwith newline", 7)
    assert read_guarded(stamp(0, b""), None) == Guarded(b"", 0)  # absent counter: generation 0


@pytest.mark.parametrize(
    ("value", "generation", "current"),
    [
        (None, None, 0),  # nothing stored
        (None, b"3", 3),
        (b"2\nold", b"3", 3),  # stored before the last invalidation
        (b"1\nold", None, 0),  # counter gone (expired): no old stamp can match
        (b"no stamp at all", b"0", 0),
    ],
)
def test_anything_else_is_a_miss_that_reports_the_current_generation(
    value: bytes | None, generation: bytes | None, current: int
) -> None:
    assert read_guarded(value, generation) == Guarded(None, current)


def test_a_counter_that_is_not_an_integer_is_an_error() -> None:
    with pytest.raises(CacheError, match="not an integer"):
        read_guarded(b"0\nx", b"garbage")


def test_invalidation_bumps_keeps_alive_and_deletes_in_that_order() -> None:
    ttl_ms = round(GENERATION_TTL * 1000)
    commands = invalidation_commands(
        [guarded("post", "1")], ["list:{all}:gen"], lambda key: "p:" + key
    )
    start = commands[0][2]  # where a counter the bump creates starts: random, far from 0
    assert isinstance(start, int)
    assert start > 1_000_000
    assert commands == [
        ("SET", "p:post:{1}:gen", start, "NX"),
        ("INCR", "p:post:{1}:gen"),
        ("PEXPIRE", "p:post:{1}:gen", ttl_ms),
        ("DEL", "p:post:{1}"),
        ("SET", "p:list:{all}:gen", start, "NX"),
        ("INCR", "p:list:{all}:gen"),
        ("PEXPIRE", "p:list:{all}:gen", ttl_ms),
    ]
    assert invalidation_commands([], [], str) == []
