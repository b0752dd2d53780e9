"""Guarded key names, TTL jitter, the stamped value format and the invalidation commands (pure)."""

from __future__ import annotations

import pytest

from postal.cache import (
    GENERATION_TTL,
    CacheError,
    Guarded,
    GuardedFill,
    GuardedKey,
    guarded,
    jittered,
)
from postal.cache.policy.guard import (
    counter_and_epoch,
    fill_many_arguments,
    generation_of,
    invalidation_commands,
    read_guarded,
    stamp,
)
from postal.cache.policy.keys import SLOTS, all_epoch_keys, epoch_key, hash_slot


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


def test_a_value_stamped_with_the_current_generation_is_a_hit_and_says_when_it_expires() -> None:
    assert stamp(7, b'{"id": 1}', 1_700_000_000_123) == b'7 1700000000123\n{"id": 1}'
    found = read_guarded(stamp(7, b"body\nwith newline", 1_700_000_000_123), b"7")
    assert found == Guarded(b"body\nwith newline", 7, expires_at=1_700_000_000.123)
    assert read_guarded(stamp(0, b"", 5), None) == Guarded(b"", 0, 0.005)  # absent counter: 0


def test_a_value_stamped_without_an_expiry_still_reads_as_a_hit() -> None:
    """The format written before the expiry was stamped (a rolling upgrade's older workers)."""
    assert stamp(7, b'{"id": 1}') == b'7\n{"id": 1}'
    assert read_guarded(b'7\n{"id": 1}', b"7") == Guarded(b'{"id": 1}', 7, expires_at=None)
    assert read_guarded(stamp(0, b""), None) == Guarded(b"", 0)


@pytest.mark.parametrize(
    ("value", "generation", "current"),
    [
        (None, None, 0),  # nothing stored
        (None, b"3", 3),
        (b"2\nold", b"3", 3),  # stored before the last invalidation
        (b"1\nold", None, 0),  # counter gone (expired): no old stamp can match
        (b"no stamp at all", b"0", 0),
        (b"2 1700000000000\nold", b"3", 3),  # the same, with an expiry
        (b"3 soon\nx", b"3", 3),  # an expiry that is not one
        (b"3 \nx", b"3", 3),
        (b"3 1700000000000", b"3", 3),  # no separator before the payload
    ],
)
def test_anything_else_is_a_miss_that_reports_the_current_generation(
    value: bytes | None, generation: bytes | None, current: int
) -> None:
    assert read_guarded(value, generation) == Guarded(None, current)


def test_a_batch_fill_stamps_each_value_with_its_own_expiry() -> None:
    fills = [
        GuardedFill(guarded("post", "1"), 4, b"a", ttl=60.0),
        GuardedFill(guarded("post", "2"), 0, b"b", ttl=0.0001),  # rounded up to 1 ms
    ]
    names, arguments = fill_many_arguments(fills, lambda key: "p:" + key, 1_700_000_000_000)
    epochs = [f"p:{epoch_key('post:{1}')}", f"p:{epoch_key('post:{2}')}"]
    assert names == [
        "p:post:{1}",
        "p:post:{1}:gen",
        epochs[0],
        "p:post:{2}",
        "p:post:{2}:gen",
        epochs[1],
    ]
    assert arguments == [4, 0, b"4 1700000060000\na", 60_000, 0, 0, b"0 1700000000001\nb", 1]


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
        ("SET", f"p:{epoch_key('post:{1}')}", 0, "NX", "PX", ttl_ms),  # there, never touched
        ("SET", "p:list:{all}:gen", start, "NX"),
        ("INCR", "p:list:{all}:gen"),
        ("PEXPIRE", "p:list:{all}:gen", ttl_ms),
    ]
    assert invalidation_commands([], [], str) == []


# -- the slots' epochs: the coarse invalidation ----------------------------------------------------


def test_each_slot_has_one_epoch_in_that_slot() -> None:
    epochs = all_epoch_keys()
    assert len(set(epochs)) == SLOTS
    assert [hash_slot(key) for key in epochs] == list(range(SLOTS))
    for ident in ("42", "pages", "all", "9223372036854775807"):
        key = guarded("post", ident)
        assert hash_slot(key.epoch_key) == hash_slot(key.key) == hash_slot(key.generation_key)
        assert key.epoch_key == epoch_key(key.key)
    assert GuardedKey("posts:list:{pages}:20:first", "posts:list:{pages}:gen").epoch_key == (
        epoch_key("x{pages}")
    )


def test_slots_are_redis_clusters_own() -> None:
    from redis.crc import key_slot  # the reference: redis-py's own CRC16

    for key in ("post:{42}", "postal:post:{42}:gen", "no tag", "{}", "a{}b{c}", "{x"):
        assert hash_slot(key) == key_slot(key.encode())


def test_the_epoch_namespace_is_reserved() -> None:
    with pytest.raises(ValueError, match="epoch"):
        guarded("epoch", "1")


def test_a_generation_is_the_counter_while_the_epoch_is_zero() -> None:
    assert generation_of(7, 0) == 7
    assert counter_and_epoch(generation_of(7, 3)) == (7, 3)
    assert generation_of(2**63 - 1, 0) < generation_of(0, 1)  # never overlap
    assert read_guarded(stamp(7, b"x"), b"7", b"0") == Guarded(b"x", 7)  # an epoch at 0 is none


def test_a_value_stamped_before_its_slot_epoch_moved_is_a_miss() -> None:
    old = stamp(generation_of(7, 0), b"x")
    assert read_guarded(old, b"7", b"1") == Guarded(None, generation_of(7, 1))
    new = stamp(generation_of(7, 1), b"y")
    assert read_guarded(new, b"7", b"1") == Guarded(b"y", generation_of(7, 1))
    with pytest.raises(CacheError, match="not an integer"):
        read_guarded(new, b"7", b"garbage")
