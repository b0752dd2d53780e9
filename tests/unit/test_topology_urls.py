"""What each kind of Redis URL names (`cache.urls.Topology`), and the settings that refuse a
topology writes cannot use."""

from __future__ import annotations

import pytest

from postal.cache import Kind, Topology
from postal.settings import SettingsError, load_settings


def test_a_comma_separated_list_is_several_servers() -> None:
    topology = Topology.from_url("redis://a:6380/0, redis://:s3cret@b:6381/0")
    assert topology.kind is Kind.SERVER
    assert [(e.host, e.port) for e in topology.endpoints] == [("a", 6380), ("b", 6381)]
    assert topology.endpoints[1].password == "s3cret"
    assert "s3cret" not in str(topology)


def test_a_sentinel_url_names_its_sentinels_service_and_role() -> None:
    url = "redis+sentinel://app:s3cret@s1:26379,s2:26380/orders?role=replica"
    topology = Topology.from_url(url)
    assert topology.kind is Kind.SENTINEL
    assert [(e.host, e.port) for e in topology.endpoints] == [("s1", 26379), ("s2", 26380)]
    assert topology.service == "orders"
    assert topology.replicas
    assert {e.username for e in topology.endpoints} == {"app"}  # for the data servers
    assert str(topology) == "redis+sentinel://app:***@s1:26379,s2:26380/orders?role=replica"


def test_a_cluster_url_names_its_seed_nodes() -> None:
    topology = Topology.from_url("redis+cluster://n1:7000,n2:7001", force_tls=True)
    assert topology.kind is Kind.CLUSTER
    assert [(e.host, e.port, e.tls) for e in topology.endpoints] == [
        ("n1", 7000, True),
        ("n2", 7001, True),
    ]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis+sentinel://s1:26379", "Sentinel service name"),
        ("redis+sentinel://s1:26379/x?role=leader", "unexpected query parameter"),
        ("redis+cluster://n1:7000/3", "no path"),
        ("redis+cluster://n1:7000,,n2:7001", "host:port pairs"),
        ("redis+cluster://n1:port", "'n1:port': expected host:port"),
        ("redis://a:1/0,,redis://b:2/0", "nothing empty between"),
        ("memcached://a:1", "redis:// or rediss://"),
    ],
)
def test_a_malformed_url_says_what_is_expected(url: str, expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        Topology.from_url(url)


def test_reads_see_writes_only_on_the_same_single_server_or_primary() -> None:
    primary = Topology.from_url("redis://p:6379/0")
    assert primary.same_servers(Topology.from_url("redis://p:6379/0"))
    assert not Topology.from_url("redis://r1:6379/0,redis://r2:6379/0").same_servers(primary)
    sentinel = Topology.from_url("redis+sentinel://s:26379/x")
    assert sentinel.same_servers(sentinel)
    assert not Topology.from_url("redis+sentinel://s:26379/x?role=replica").same_servers(sentinel)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"READ_REDIS_URL": "redis://r1:1/0,redis://r2:2/0"}, "set WRITE_REDIS_URL"),
        (
            {"READ_REDIS_URL": "redis://r1:1/0", "WRITE_REDIS_URL": "redis://a:1/0,redis://b:2/0"},
            "WRITE_REDIS_URL names several servers",
        ),
        ({"READ_REDIS_URL": "redis+sentinel://s:1/x?role=replica"}, "without it"),
        ({"REDIS_KEY_PREFIX": "app{1}:"}, "braces are reserved"),
    ],
)
def test_settings_refuse_what_writes_cannot_use(environ: dict[str, str], expected: str) -> None:
    with pytest.raises(SettingsError, match=expected):
        load_settings(environ)


def test_replica_reads_sentinel_and_cluster_wait_for_replicas() -> None:
    replicas = {
        "READ_REDIS_URL": "redis://r1:1/0,redis://r2:2/0",
        "WRITE_REDIS_URL": "redis://p:1/0",
    }
    too_short = {"REDIS_SET_DEADLINE": "100ms"}
    with pytest.raises(SettingsError, match="too short to wait"):
        load_settings({**replicas, **too_short})
    with pytest.raises(SettingsError, match="too short to wait"):
        load_settings({"READ_REDIS_URL": "redis+sentinel://s:1/x", **too_short})
    with pytest.raises(SettingsError, match="too short to wait"):
        load_settings({"READ_REDIS_URL": "redis+cluster://n:1", **too_short})
    one_redis = load_settings({"READ_REDIS_URL": "redis://p:1/0", **too_short})
    assert one_redis.redis_set_deadline == 0.1  # nothing to wait for: accepted
