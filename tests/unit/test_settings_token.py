"""POSTAL_API_TOKEN must be a real token when set, and the embedded Redis is only for the embedded
default (no database and no Redis given)."""

from __future__ import annotations

import pytest

from postal.settings import SettingsError, load_settings


@pytest.mark.parametrize("value", ["", "   "], ids=["empty", "spaces"])
def test_a_blank_token_is_refused_without_echoing_it(value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"POSTAL_API_TOKEN": value})
    message = str(caught.value)
    assert "POSTAL_API_TOKEN" in message
    assert repr(value) not in message  # not even as '' or '   '
    if value:
        assert value not in message


def test_a_token_loads_and_is_returned() -> None:
    settings = load_settings({"POSTAL_API_TOKEN": "s3cret-token-0123456789"})
    assert settings.api_token == "s3cret-token-0123456789"


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
