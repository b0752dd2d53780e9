import traceback

import pytest

from postal.cache import CacheTimeouts, EarlyRefreshConfig
from postal.cache.transport.config import READ_POOL, WRITE_POOL
from postal.cli.serve_limits import HttpLimits
from postal.settings import SettingsError, load_settings


def test_defaults_are_the_seeds() -> None:
    settings = load_settings({})
    profile = settings.cache_profile()
    assert profile.read_pool == READ_POOL
    assert profile.write_pool == WRITE_POOL
    assert (READ_POOL.max_size, READ_POOL.min_idle, READ_POOL.max_idle) == (50, 10, 20)
    assert (WRITE_POOL.max_size, WRITE_POOL.min_idle, WRITE_POOL.max_idle) == (20, 5, 10)
    assert READ_POOL.idle_time == 300.0
    assert READ_POOL.max_lifetime == 1800.0
    assert READ_POOL.pool_timeout == 4.0
    assert (READ_POOL.dial_timeout, READ_POOL.read_timeout, READ_POOL.write_timeout) == (2, 2, 2)
    assert profile.timeouts == CacheTimeouts(get=0.1, set=0.2)
    assert profile.dns_ttl == 30.0
    assert profile.slow_threshold == 0.01
    assert settings.read_url == settings.write_url == "redis://127.0.0.1:6379/0"


def test_one_url_defaults_to_the_other() -> None:
    only_write = load_settings({"WRITE_REDIS_URL": "redis://primary:6379/0"})
    assert only_write.read_url == only_write.write_url == "redis://primary:6379/0"
    only_read = load_settings({"READ_REDIS_URL": "redis://replica:6379/0"})
    assert only_read.write_url == "redis://replica:6379/0"
    both = load_settings(
        {"READ_REDIS_URL": "redis://replica:6379/0", "WRITE_REDIS_URL": "redis://primary:6379/1"}
    )
    assert (both.read_url, both.write_url) == ("redis://replica:6379/0", "redis://primary:6379/1")


def test_durations_take_go_units_per_role() -> None:
    settings = load_settings(
        {
            "READ_REDIS_POOL_TIMEOUT": "250ms",
            "WRITE_REDIS_IDLE_TIME": "1m30s",
            "REDIS_GET_DEADLINE": "50ms",
            "REDIS_DNS_TTL": "0",
        }
    )
    profile = settings.cache_profile()
    assert profile.read_pool.pool_timeout == pytest.approx(0.25)
    assert profile.write_pool.idle_time == pytest.approx(90.0)
    assert profile.write_pool.pool_timeout == 4.0
    assert profile.timeouts.get == pytest.approx(0.05)
    assert profile.dns_ttl == 0.0


def test_zero_disables_deadlines_idle_time_and_lifetime() -> None:
    profile = load_settings(
        {"REDIS_GET_DEADLINE": "0", "READ_REDIS_IDLE_TIME": "0", "READ_REDIS_MAX_LIFETIME": "0"}
    ).cache_profile()
    assert profile.timeouts.get is None
    assert profile.read_pool.idle_time is None
    assert profile.read_pool.max_lifetime is None


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("READ_REDIS_POOL_TIMEOUT", "100", "READ_REDIS_POOL_TIMEOUT='100': expected a duration"),
        ("REDIS_GET_DEADLINE", "fast", "REDIS_GET_DEADLINE='fast': expected a duration"),
        ("WRITE_REDIS_POOL_SIZE", "lots", "WRITE_REDIS_POOL_SIZE='lots': expected a whole number"),
        ("READ_REDIS_MIN_IDLE", "-1", "READ_REDIS_MIN_IDLE='-1': expected a whole number"),
        ("ENABLE_REDIS_TLS_MODE", "maybe", "ENABLE_REDIS_TLS_MODE='maybe': expected true or false"),
        (
            "READ_REDIS_URL",
            "http://x",
            "READ_REDIS_URL='http://x': expected a redis:// or rediss://",
        ),
        ("READ_REDIS_MIN_IDLE", "30", "READ_REDIS_MIN_IDLE=30, READ_REDIS_MAX_IDLE=20"),
        ("WRITE_REDIS_POOL_SIZE", "0", "WRITE_REDIS_POOL_SIZE=0: expected a whole number >= 1"),
    ],
)
def test_a_bad_value_is_one_line_naming_variable_value_and_expectation(
    variable: str, value: str, expected: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({variable: value})
    message = str(caught.value)
    assert message.startswith(expected)
    assert "\n" not in message


def test_a_bad_url_never_shows_its_password() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"WRITE_REDIS_URL": "http://user:hunter2@redis:6379"})
    assert "hunter2" not in str(caught.value)
    assert "user:***@redis" in str(caught.value)


def test_repr_never_shows_a_password() -> None:
    settings = load_settings(
        {
            "READ_REDIS_URL": "redis://:hunter2@replica:6379/0",
            "WRITE_REDIS_URL": "redis://alice:s3cret@primary:6379/0",
        }
    )
    for text in (repr(settings), str(settings)):
        assert "hunter2" not in text
        assert "s3cret" not in text
        assert "redis://:***@replica:6379/0" in text
        assert "redis://alice:***@primary:6379/0" in text
    assert settings.read_url == "redis://:hunter2@replica:6379/0"  # the value itself is intact


@pytest.mark.parametrize(
    "url",
    [
        "redis://:hunter2@redis:99999/0",
        "redis://u:hun/ter2@redis:6379/0",
        "redis://u:hunter2@redis:6379/x",
    ],
)
def test_a_malformed_url_with_a_password_never_shows_it(url: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"READ_REDIS_URL": url})
    error = caught.value
    text = "".join(traceback.format_exception(error))
    assert "hunter2" not in text
    assert "ter2" not in text
    assert str(error).startswith("READ_REDIS_URL='redis://")
    assert "***@redis" in str(error)


def test_reads_from_a_replica_need_a_set_deadline_that_holds_a_wait() -> None:
    replica = {
        "READ_REDIS_URL": "redis://replica:6379/0",
        "WRITE_REDIS_URL": "redis://primary:6379/0",
    }
    with pytest.raises(SettingsError, match="REDIS_SET_DEADLINE=100ms is too short"):
        load_settings({**replica, "REDIS_SET_DEADLINE": "100ms"})
    # Fine: the default deadline; no waits; one server for both roles; no deadline at all.
    assert load_settings(replica).cache_profile().wait_for_replicas
    load_settings({**replica, "REDIS_SET_DEADLINE": "100ms", "REDIS_WAIT_FOR_REPLICAS": "false"})
    load_settings({"WRITE_REDIS_URL": "redis://primary:6379/0", "REDIS_SET_DEADLINE": "100ms"})
    load_settings({**replica, "REDIS_SET_DEADLINE": "0"})


def test_the_in_flight_bound_is_a_whole_number_of_at_least_one() -> None:
    assert load_settings({}).postal_max_in_flight == 256
    assert load_settings({"POSTAL_MAX_IN_FLIGHT": "1"}).postal_max_in_flight == 1
    for value in ("0", "-1", "many"):
        with pytest.raises(SettingsError) as caught:
            load_settings({"POSTAL_MAX_IN_FLIGHT": value})
        expected = f"POSTAL_MAX_IN_FLIGHT={value!r}: expected a whole number >= 1"
        assert str(caught.value) == expected


def test_early_refresh_is_on_by_default_and_each_knob_is_read() -> None:
    assert load_settings({}).early_refresh() == EarlyRefreshConfig(
        beta=1.0, min_delta=0.1, max_in_flight=4
    )
    settings = load_settings(
        {
            "CACHE_EARLY_REFRESH_BETA": "2.5",
            "CACHE_EARLY_REFRESH_MIN_DELTA": "250ms",
            "CACHE_EARLY_REFRESH_MAX_IN_FLIGHT": "8",
        }
    )
    assert settings.early_refresh() == EarlyRefreshConfig(beta=2.5, min_delta=0.25, max_in_flight=8)
    assert load_settings({"CACHE_EARLY_REFRESH_MIN_DELTA": "0"}).early_refresh() is not None
    assert load_settings({"CACHE_EARLY_REFRESH": "false"}).early_refresh() is None


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("CACHE_EARLY_REFRESH_BETA", "high", "BETA='high': expected a number such as 1.0"),
        ("CACHE_EARLY_REFRESH_BETA", "0", "BETA=0: expected a number above 0 and at most 100"),
        ("CACHE_EARLY_REFRESH_BETA", "101", "BETA=101: expected a number above 0 and at most"),
        ("CACHE_EARLY_REFRESH_BETA", "nan", "BETA=nan: expected a number above 0"),
        ("CACHE_EARLY_REFRESH_MIN_DELTA", "2m", "MIN_DELTA: expected a duration of at most 60s"),
        ("CACHE_EARLY_REFRESH_MIN_DELTA", "100", "MIN_DELTA='100': expected a duration"),
        ("CACHE_EARLY_REFRESH_MAX_IN_FLIGHT", "0", "IN_FLIGHT='0': expected a whole number >= 1"),
        ("CACHE_EARLY_REFRESH", "sometimes", "CACHE_EARLY_REFRESH='sometimes': expected true"),
    ],
)
def test_early_refresh_knobs_out_of_bounds_stop_start_up(
    variable: str, value: str, expected: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({variable: value})
    assert expected in str(caught.value)


def test_the_http_limits_have_their_defaults_and_refuse_nonsense() -> None:
    limits = HttpLimits.from_settings(load_settings({}))
    assert limits == HttpLimits(
        max_header_bytes=65_536,
        max_headers=100,
        header_timeout=10.0,
        body_timeout=10.0,
        body_min_rate=1024,
        keep_alive_timeout=5.0,
        max_connections=1000,
    )
    assert limits.body_window_bytes == 10_240
    assert (
        HttpLimits.from_settings(
            load_settings({"POSTAL_HTTP_BODY_MIN_RATE": "0", "POSTAL_HTTP_BODY_TIMEOUT": "30s"})
        ).body_window_bytes
        == 1
    )  # a rate of 0: the window is an idle timeout
    bad = {
        "POSTAL_HTTP_MAX_HEADER_BYTES": ("0", "expected a whole number >= 1"),
        "POSTAL_HTTP_MAX_HEADERS": ("0", "expected a whole number >= 1"),
        "POSTAL_HTTP_MAX_CONNECTIONS": ("-5", "expected a whole number >= 1"),
        "POSTAL_HTTP_BODY_MIN_RATE": ("fast", "expected a whole number >= 0"),
    }
    for name, (value, expected) in bad.items():
        with pytest.raises(SettingsError) as caught:
            load_settings({name: value})
        assert str(caught.value) == f"{name}={value!r}: {expected}"
    for name in ("HEADER_TIMEOUT", "BODY_TIMEOUT", "KEEP_ALIVE_TIMEOUT"):
        with pytest.raises(SettingsError) as caught:
            load_settings({f"POSTAL_HTTP_{name}": "0"})
        assert str(caught.value) == f"POSTAL_HTTP_{name}: expected a duration above 0"


def test_the_turn_budget_defaults_to_one_ms_and_refuses_nonsense() -> None:
    assert load_settings({}).postal_turn_budget == 0.001
    assert load_settings({"POSTAL_TURN_BUDGET": "0"}).postal_turn_budget == 0  # off
    assert load_settings({"POSTAL_TURN_BUDGET": "500us"}).postal_turn_budget == 0.0005
    for bad in ("2s", "-1ms", "soon"):
        with pytest.raises(SettingsError) as caught:
            load_settings({"POSTAL_TURN_BUDGET": bad})
        assert "POSTAL_TURN_BUDGET" in str(caught.value)
