import pytest

from postal.cache import BEFORE, TUNED, PoolConfig, RedisEndpoint, mask_url


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:hunter2@redis:6379/0", "redis://:***@redis:6379/0"),
        ("redis://alice:hunter2@redis:6379/0", "redis://alice:***@redis:6379/0"),
        ("rediss://alice:hunter2@[::1]:6380/2", "rediss://alice:***@[::1]:6380/2"),
        ("redis://redis:6379/0", "redis://redis:6379/0"),
    ],
)
def test_mask_url_hides_only_the_password(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_an_endpoint_never_shows_its_password() -> None:
    endpoint = RedisEndpoint.from_url("redis://alice:hunter2@redis.test:6380/3")
    assert (endpoint.host, endpoint.port, endpoint.db) == ("redis.test", 6380, 3)
    assert (endpoint.username, endpoint.password) == ("alice", "hunter2")
    assert not endpoint.tls
    assert "hunter2" not in repr(endpoint)
    assert "hunter2" not in str(endpoint)
    assert str(endpoint) == "redis://alice:***@redis.test:6380/3"


def test_tls_comes_from_the_scheme_or_the_switch() -> None:
    assert RedisEndpoint.from_url("rediss://redis:6380/0").tls
    assert RedisEndpoint.from_url("redis://redis:6379/0", force_tls=True).tls


@pytest.mark.parametrize("url", ["http://redis:6379", "redis://", "unix:///tmp/redis.sock"])
def test_refuses_what_is_not_a_redis_tcp_url(url: str) -> None:
    with pytest.raises(ValueError, match="expected"):
        RedisEndpoint.from_url(url)


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"max_size": 0}, "pool size must be at least 1"),
        ({"min_idle": 30}, "min idle (30) must not exceed max idle (20)"),
        ({"max_idle": 60}, "max idle (60) must not exceed pool size (50)"),
        ({"pool_timeout": 0}, "pool_timeout must be positive"),
    ],
)
def test_pool_config_refuses_inconsistent_values(changes: dict[str, int], problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        PoolConfig(**changes)


def test_the_before_profile_is_the_seeds_before_column() -> None:
    pool = BEFORE.read_pool
    assert (pool.max_size, pool.min_idle, pool.max_idle) == (10, 0, 0)
    assert (pool.dial_timeout, pool.read_timeout, pool.write_timeout) == (3.0, 3.0, 3.0)
    assert BEFORE.timeouts.get is None
    assert BEFORE.dns_ttl == 0
    assert TUNED.timeouts.get == 0.1


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:hunter2@redis:99999/0", "redis://:***@redis:99999/0"),  # bad port
        ("redis://u:pa/ss@redis:6379/0", "redis://u:***@redis:6379/0"),  # unescaped /
        ("redis://u:pa#ss@redis:6379/0", "redis://u:***@redis:6379/0"),  # unescaped #
        ("redis://u:pa?s@s@redis:6379/0", "redis://u:***@redis:6379/0"),  # ? and @ inside
        ("not a url", "not a url"),
    ],
)
def test_mask_url_masks_malformed_urls_too(url: str, masked: str) -> None:
    assert mask_url(url) == masked


@pytest.mark.parametrize(
    "url", ["redis://:hunter2@redis:99999/0", "redis://u:hunter2/x@redis:6379/0"]
)
def test_an_unparseable_url_is_refused_without_quoting_it(url: str) -> None:
    with pytest.raises(ValueError, match=r"expected a URL such as") as caught:
        RedisEndpoint.from_url(url)
    assert "hunter2" not in str(caught.value)
