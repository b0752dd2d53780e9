"""`postal stats`' Redis half, the pure parts: which servers, INFO parsing, latency figures."""

from __future__ import annotations

import pytest

from postal.stats.redis_probe import (
    Latency,
    RedisTarget,
    parse_info,
    redis_targets,
    with_password,
)

SHOWN = "redis://:***@cache.internal:6379/0"


def test_a_masked_url_is_paired_with_the_local_url_naming_the_same_server() -> None:
    real = "redis://:s3cret@cache.internal:6379/0"
    targets = redis_targets({"read": SHOWN, "write": SHOWN}, [real])
    assert targets == [RedisTarget(("read", "write"), SHOWN, real)]


def test_roles_on_different_servers_are_probed_apart() -> None:
    replica = "redis://:r3plica@replica.internal:6379/0"
    primary = "redis://:pr1mary@cache.internal:6379/0"
    service = {"read": "redis://:***@replica.internal:6379/0", "write": SHOWN}
    targets = redis_targets(service, [primary, replica])
    assert [(target.roles, target.url) for target in targets] == [
        (("read",), replica),
        (("write",), primary),
    ]


def test_the_same_host_with_another_database_or_user_is_not_a_match() -> None:
    others = [
        "redis://:x1234567@cache.internal:6379/1",
        "redis://bob:x1234567@cache.internal:6379/0",
    ]
    (read, *rest) = redis_targets({"read": SHOWN}, others)
    assert read.url is None
    assert read.problem is not None
    assert "READ_REDIS_URL" in read.problem
    assert [target.roles for target in rest] == [("other",), ("other",)]  # still probed
    assert all("x1234567" not in target.shown for target in rest)


def test_a_url_without_a_password_needs_nothing_local() -> None:
    plain = "redis://127.0.0.1:6379/0"
    assert redis_targets({"read": plain, "write": plain}, []) == [
        RedisTarget(("read", "write"), plain, plain)
    ]


def test_a_masked_url_with_nothing_local_names_both_variables() -> None:
    (target,) = redis_targets({"read": SHOWN, "write": SHOWN}, [])
    assert target.url is None
    assert target.problem is not None
    assert "READ_REDIS_URL or WRITE_REDIS_URL" in target.problem


def test_info_lines_are_read_and_sections_skipped() -> None:
    text = (
        "# Clients\r\nconnected_clients:12\r\nmaxclients:10000\r\n\r\n"
        "# Stats\r\nrejected_connections:0\r\n"
    )
    assert parse_info(text) == {
        "connected_clients": "12",
        "maxclients": "10000",
        "rejected_connections": "0",
    }


def test_latency_figures_in_milliseconds() -> None:
    samples = [0.0001] * 98 + [0.002, 0.010]
    latency = Latency.of(samples)
    assert latency is not None
    assert (latency.samples, latency.min_ms, latency.max_ms) == (100, 0.1, 10.0)
    assert latency.p99_ms == 2.0  # nearest rank: the 99th of 100
    assert latency.avg_ms == pytest.approx((0.0098 + 0.012) * 10, abs=1e-3)
    assert Latency.of([]) is None


def test_replicas_and_cluster_seeds_are_probed_server_by_server() -> None:
    replicas = "redis://127.0.0.1:7001/0,redis://127.0.0.1:7002/0"
    targets = redis_targets({"read": replicas, "write": "redis://127.0.0.1:7001/0"}, [])
    assert [(t.roles, t.url) for t in targets] == [
        (("read", "write"), "redis://127.0.0.1:7001/0"),
        (("read",), "redis://127.0.0.1:7002/0"),
    ]
    cluster = "redis+cluster://:***@127.0.0.1:7001,127.0.0.1:7002"
    local = ["redis+cluster://:secret@127.0.0.1:7001,127.0.0.1:7002"]
    targets = redis_targets({"read": cluster, "write": cluster}, local)
    assert [(t.roles, t.url) for t in targets] == [
        (("read", "write"), "redis://:secret@127.0.0.1:7001/0"),
        (("read", "write"), "redis://:secret@127.0.0.1:7002/0"),
    ]
    assert all("secret" not in t.shown for t in targets)


def test_a_sentinel_url_is_reported_not_probed() -> None:
    sentinel = "redis+sentinel://127.0.0.1:26379/postal"
    (target,) = redis_targets({"read": sentinel}, [])
    assert target.url is None
    assert target.problem is not None
    assert "--redis-url" in target.problem


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://h:6379/0", "redis://:p%40ss@h:6379/0"),
        ("redis://alice@h:6379/0", "redis://alice:p%40ss@h:6379/0"),
        ("redis://:other@h:6379/0", "redis://:other@h:6379/0"),  # has one: left alone
        ("redis://a:1/0,redis://b:2/0", "redis://:p%40ss@a:1/0,redis://:p%40ss@b:2/0"),
    ],
)
def test_with_password_fills_in_redisclis_auth(url: str, expected: str) -> None:
    assert with_password(url, "p@ss") == expected
