"""Passwords and ACL users from the URL work, and are never shown.

Against child redis-servers: one with `requirepass`, one with an ACL user created over a direct
redis-py connection. Wherever Postal names an endpoint (repr of the client and its pools, error
messages, cache events, log records, settings) the URL must appear with its password as `***`.
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest
import redis
import redis.asyncio
import redis.exceptions

from postal.app import create_app
from postal.cache import CacheClient, CacheEvent, CacheUnavailable, Outcome
from postal.cache.transport.urls import MASK
from postal.settings import SettingsError, load_settings
from postal_testing.redis_servers import RedisServer
from tests.integration.helpers import ONE_CONNECTION

pytestmark = pytest.mark.redis_server

PASSWORD = "s3cret-pass"
WRONG_PASSWORD = "wr0ng-guess"  # possibly last month's password: just as secret
ALICE, ALICE_PASSWORD = "alice", "al1ce-pw"
SECRETS = (PASSWORD, WRONG_PASSWORD, ALICE_PASSWORD)


@pytest.fixture(scope="module")
def password_server() -> Iterator[RedisServer]:
    server = RedisServer(extra_args=["--requirepass", PASSWORD])
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="module")
def acl_server() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        server.start()
        admin = redis.Redis(host=server.host, port=server.port)
        try:
            admin.execute_command(  # type: ignore[no-untyped-call]
                "ACL", "SETUSER", ALICE, "on", f">{ALICE_PASSWORD}", "~*", "+@all"
            )
        finally:
            admin.close()
        yield server
    finally:
        server.cleanup()


def url_for(server: RedisServer, userinfo: str) -> str:
    return f"redis://{userinfo}@{server.host}:{server.port}/0"


@asynccontextmanager
async def started(url: str) -> AsyncIterator[CacheClient]:
    client = CacheClient.create(
        read_url=url, profile=ONE_CONNECTION, key_prefix="postal-auth-test:"
    )
    try:
        await client.start()
        yield client
    finally:
        await client.aclose()


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


def assert_masked(text: str) -> None:
    assert_no_secret(text)
    assert MASK in text


def assert_error_masked(error: BaseException) -> None:
    """The message, every exception it was raised from, and the printed traceback, hold no
    secret; the message names the server by address (host:port), never by URL."""
    assert_no_secret(str(error))
    assert re.search(r"\(127\.0\.0\.1:\d+\)", str(error)), str(error)
    cause: BaseException | None = error
    seen: set[int] = set()
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        assert_no_secret(str(cause))
        assert_no_secret(repr(cause))
        cause = cause.__cause__ or cause.__context__
    assert_no_secret("".join(traceback.format_exception(error)))


# -- requirepass ---------------------------------------------------------------------------------


async def test_password_in_url_round_trips(password_server: RedisServer) -> None:
    async with started(url_for(password_server, f":{PASSWORD}")) as client:
        await client.set("greeting", b"hello", ttl=30)
        assert await client.get("greeting") == b"hello"
        assert await client.delete("greeting") == 1
        assert client.stats()["read"].opened >= 1  # start() logged in while warming up


async def test_repr_of_client_and_pools_masks_password(password_server: RedisServer) -> None:
    url = url_for(password_server, f":{PASSWORD}")
    async with started(url) as client:
        expected = f"redis://:{MASK}@{password_server.host}:{password_server.port}/0"
        assert expected in repr(client)
        assert_masked(repr(client))
        for role in ("read", "write"):  # a pool shows its node by address only
            pool = repr(client.pool(role))
            assert_no_secret(pool)
            assert f"{role} {password_server.host}:{password_server.port}" in pool


async def test_wrong_password_is_unavailable_and_not_shown(password_server: RedisServer) -> None:
    events: list[CacheEvent] = []
    async with started(url_for(password_server, f":{WRONG_PASSWORD}")) as client:
        client.subscribe(events.append)
        with pytest.raises(CacheUnavailable) as get_failure:
            await client.get("greeting")
        with pytest.raises(CacheUnavailable) as set_failure:
            await client.set("greeting", b"never stored")
        assert_masked(repr(client))
    for failure in (get_failure, set_failure):
        assert_error_masked(failure.value)
        assert isinstance(failure.value.__cause__, redis.exceptions.AuthenticationError)
    assert [event.outcome for event in events] == [Outcome.CONNECTION_ERROR] * 2
    for event in events:
        assert event.error is not None
        assert_no_secret(event.error)
        assert_no_secret(repr(event))


async def test_missing_password_is_unavailable(password_server: RedisServer) -> None:
    async with started(f"redis://{password_server.host}:{password_server.port}/0") as client:
        with pytest.raises(CacheUnavailable) as failure:
            await client.get("greeting")
    assert_no_secret(str(failure.value))  # no password in the URL, so nothing to mask
    assert isinstance(failure.value.__cause__, redis.exceptions.AuthenticationError)


# -- ACL users -----------------------------------------------------------------------------------


async def test_acl_user_in_url_round_trips(acl_server: RedisServer) -> None:
    url = url_for(acl_server, f"{ALICE}:{ALICE_PASSWORD}")
    async with started(url) as client:
        await client.set("greeting", b"hello alice", ttl=30)
        assert await client.get("greeting") == b"hello alice"
        await client.delete("greeting")
        # The user name is not a secret and stays; the password does not.
        assert f"redis://{ALICE}:{MASK}@" in repr(client)
        assert_no_secret(repr(client.pool("read")))
        # The pooled connections really are logged in as alice, not as the default user.
        admin = redis.asyncio.Redis(host=acl_server.host, port=acl_server.port)
        try:
            clients = await admin.client_list()
        finally:
            await admin.aclose()
        assert ALICE in {entry["user"] for entry in clients}


async def test_acl_user_with_wrong_password(acl_server: RedisServer) -> None:
    async with started(url_for(acl_server, f"{ALICE}:{WRONG_PASSWORD}")) as client:
        with pytest.raises(CacheUnavailable) as failure:
            await client.get("greeting")
    assert_error_masked(failure.value)
    assert isinstance(failure.value.__cause__, redis.exceptions.AuthenticationError)


# -- logs ----------------------------------------------------------------------------------------


def _app_environment(url: str) -> dict[str, str]:
    return {
        "READ_REDIS_URL": url,
        "READ_REDIS_POOL_SIZE": "1",
        "READ_REDIS_MIN_IDLE": "1",
        "READ_REDIS_MAX_IDLE": "1",
        "WRITE_REDIS_POOL_SIZE": "1",
        "WRITE_REDIS_MIN_IDLE": "1",
        "WRITE_REDIS_MAX_IDLE": "1",
        "REDIS_GET_DEADLINE": "2s",
        "REDIS_SET_DEADLINE": "2s",
        "REDIS_SLOW_OP_THRESHOLD": "0",  # every operation goes to the slow log
    }


async def _run_app(url: str) -> list[CacheUnavailable]:
    """Start the app as uvicorn would (lifespan), do a few operations, stop; return failures."""
    app = create_app(load_settings(_app_environment(url)))
    failures: list[CacheUnavailable] = []
    async with app.router.lifespan_context(app):
        cache: CacheClient = app.state.cache

        async def set_greeting() -> None:
            await cache.set("greeting", b"hello", ttl=30)

        async def get_greeting() -> None:
            await cache.get("greeting")

        for operation in (set_greeting, get_greeting):
            try:
                await operation()
            except CacheUnavailable as exc:
                failures.append(exc)
                logging.getLogger("postal.test").exception("cache operation failed")
    return failures


async def test_logs_never_contain_the_password(
    password_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # the root: redis-py and asyncio records are checked too
    caplog.set_level(logging.DEBUG, logger="postal")

    failures = await _run_app(url_for(password_server, f":{WRONG_PASSWORD}"))
    assert len(failures) == 2
    succeeded = await _run_app(url_for(password_server, f":{PASSWORD}"))
    assert succeeded == []

    messages = [record.getMessage() for record in caplog.records]
    # Both runs were logged: the failed warm-up, the failed operations, the ready line, slow ops.
    assert any("cannot open connections" in message for message in messages)
    assert any("cache ready" in message for message in messages)
    assert sum("slow cache operation" in message for message in messages) == 4
    assert any(record.exc_info for record in caplog.records)
    for record in caplog.records:
        assert_no_secret(record.getMessage())
        assert_no_secret(repr(record.args))
        assert_no_secret(repr(vars(record)))
    assert_no_secret(caplog.text)  # formatted, tracebacks included
    assert MASK in caplog.text


# -- settings ------------------------------------------------------------------------------------


def test_settings_repr_masks_password() -> None:
    settings = load_settings(
        {
            "READ_REDIS_URL": f"redis://:{PASSWORD}@replica:6379/0",
            "WRITE_REDIS_URL": f"redis://{ALICE}:{ALICE_PASSWORD}@primary:6379/0",
        }
    )
    assert_no_secret(repr(settings))
    assert_no_secret(str(settings))


def test_settings_error_masks_password() -> None:
    with pytest.raises(SettingsError) as failure:
        load_settings({"READ_REDIS_URL": f"http://:{PASSWORD}@replica:6379/0"})
    assert_masked(str(failure.value))
    assert "READ_REDIS_URL" in str(failure.value)
