"""POSTAL_API_TOKEN must be a real token when set, and the embedded Redis is only for the embedded
default (no database and no Redis given)."""

from __future__ import annotations

import pytest

from postal.settings import SettingsError, load_settings

TOKEN = "4f1c9a7e2b6d8035e1a94c7fb20d6e38"  # 32 characters, as `openssl rand -hex 16` makes


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "is empty"),
        ("   ", "is empty"),
        ("x", "is 1 characters long: expected at least 32"),
        (TOKEN[:31], "is 31 characters long: expected at least 32"),
        ("CHANGE-ME", "is 9 characters long"),  # the manifest's placeholder, as shipped
        ("CHANGE-ME-" + TOKEN, "is a placeholder"),
        ("change_me_" + TOKEN, "is a placeholder"),
        ("your-token-here-" + TOKEN, "is a placeholder"),
        ("a" * 40, "fewer than 8 different characters"),
        ("abab" * 10, "fewer than 8 different characters"),
    ],
    ids=[
        "empty", "spaces", "one-character", "31-characters", "change-me", "change-me-long",
        "change_me", "your-token-here", "one-character-repeated", "two-characters-repeated",
    ],
)  # fmt: skip
def test_a_weak_token_is_refused_without_echoing_it(value: str, reason: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"POSTAL_API_TOKEN": value})
    message = str(caught.value)
    assert "POSTAL_API_TOKEN" in message
    assert reason in message
    assert repr(value) not in message  # not even as '' or '   '
    if len(value.strip()) > 1:  # a single letter is in any sentence
        assert value not in message


def test_a_token_loads_and_is_returned() -> None:
    settings = load_settings({"POSTAL_API_TOKEN": TOKEN})
    assert settings.api_token == TOKEN
    assert not settings.loopback_only


@pytest.mark.parametrize("spelling", [f" {TOKEN}", f"{TOKEN}\n", f"\t{TOKEN}  \r\n"])
def test_surrounding_whitespace_is_no_part_of_the_token(spelling: str) -> None:
    """A newline left by `echo token > file`, a space pasted in: no client could ever send it,
    so every write would be refused."""
    assert load_settings({"POSTAL_API_TOKEN": spelling}).api_token == TOKEN


def test_metrics_behind_the_token_needs_a_token() -> None:
    with pytest.raises(SettingsError, match="POSTAL_METRICS_ACCESS=token needs POSTAL_API_TOKEN"):
        load_settings({"POSTAL_METRICS_ACCESS": "token"})
    settings = load_settings({"POSTAL_METRICS_ACCESS": " Token ", "POSTAL_API_TOKEN": TOKEN})
    assert settings.postal_metrics_access == "token"


@pytest.mark.parametrize(
    ("environ", "enabled"),
    [
        ({}, True),  # loopback-only: a developer's machine
        ({"POSTAL_API_TOKEN": TOKEN}, False),  # reachable by others: off unless asked for
        ({"POSTAL_API_TOKEN": TOKEN, "POSTAL_DOCS": "on"}, True),
        ({"POSTAL_DOCS": "OFF"}, False),
    ],
    ids=["auto-loopback", "auto-token", "on", "off"],
)
def test_the_openapi_pages_default_to_loopback_only_mode(
    environ: dict[str, str], enabled: bool
) -> None:
    assert load_settings(environ).docs_enabled is enabled


def test_no_token_leaves_writes_open() -> None:
    assert load_settings({}).api_token is None


@pytest.mark.parametrize(
    ("environ", "embedded"),
    [
        ({}, True),
        ({"DATABASE_URL": "postgresql+asyncpg://u:p@127.0.0.1/db"}, False),
        ({"READ_REDIS_URL": "redis://127.0.0.1:6379/0"}, False),
        ({"WRITE_REDIS_URL": "redis://127.0.0.1:6379/0"}, False),
        (
            {
                "DATABASE_URL": "postgresql+asyncpg://u:p@127.0.0.1/db",
                "READ_REDIS_URL": "redis://127.0.0.1:6379/0",
            },
            False,
        ),
    ],
    ids=["nothing", "database-only", "read-redis-only", "write-redis-only", "database-and-redis"],
)
def test_embedded_redis_only_for_the_embedded_default(
    environ: dict[str, str], embedded: bool
) -> None:
    assert load_settings(environ).embedded_redis is embedded
