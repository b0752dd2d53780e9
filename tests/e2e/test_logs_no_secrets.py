"""`postal serve`'s log, from a run that used every secret it may hold: none of them is in it.

The service runs as a process against a child redis-server that wants a password: the read role
has it, the write role has a wrong one (last month's: just as secret), the database URL carries a
password (the test server trusts, and ignores it), and writes need a token. The requests write
with a wrong and the right token, read misses, fail reads while Redis is stopped, and
every cache operation is logged as slow. Then the captured output is searched for each secret,
and checked to be the expected JSON lines, with request ids.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from postal_testing.redis_servers import RedisServer
from tests.e2e.test_serve import serving

pytestmark = pytest.mark.redis_server

REDIS_PASSWORD = "r3dis-Passw0rd-e2e"
WRONG_PASSWORD = "0ld-r3dis-Passw0rd"
API_TOKEN = "t0ken-for-the-e2e-log-test-0123456789"
DATABASE_PASSWORD = "dB4x9"  # shorter than 6: masked all the same
SECRETS = (REDIS_PASSWORD, WRONG_PASSWORD, API_TOKEN, DATABASE_PASSWORD)
TAGGED = "e2e-req-1"


@pytest.fixture
def password_redis() -> Iterator[RedisServer]:
    server = RedisServer(extra_args=["--requirepass", REDIS_PASSWORD])
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


def with_password(database_url: str) -> str:
    scheme, _, rest = database_url.partition("://")
    user, _, location = rest.partition("@")
    return f"{scheme}://{user}:{DATABASE_PASSWORD}@{location}"


def json_lines(output: str) -> list[dict[str, Any]]:
    """The log's lines (stdout's banner lines, plain text, are skipped)."""
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_the_log_holds_no_password_or_token_and_is_json_with_request_ids(
    tmp_path: Path, password_redis: RedisServer, database_url: str
) -> None:
    redis_host = f"{password_redis.host}:{password_redis.port}/0"
    env = {
        "DATABASE_URL": with_password(database_url),
        "READ_REDIS_URL": f"redis://:{REDIS_PASSWORD}@{redis_host}",
        "WRITE_REDIS_URL": f"redis://:{WRONG_PASSWORD}@{redis_host}",
        "POSTAL_API_TOKEN": API_TOKEN,
        "REDIS_SLOW_OP_THRESHOLD": "1us",  # every cache operation is a slow-log line
        "REDIS_BREAKER_COOLDOWN": "100ms",
        "POSTAL_LOG_LEVEL": "DEBUG",  # libraries' debug lines are searched too
    }
    with serving(tmp_path, **env) as served:
        base = served.base
        good = {"Authorization": f"Bearer {API_TOKEN}"}
        document = {"title": "Logs", "body": "no secrets", "author": "ops"}
        wrong = httpx.post(
            f"{base}/api/v1/posts", json=document, headers={"Authorization": "Bearer nope-nope"}
        )
        assert wrong.status_code == 401
        created = httpx.post(f"{base}/api/v1/posts", json=document, headers=good)
        assert created.status_code == 201  # committed; the invalidation (wrong password) failed
        # Its invalidation is pending, so reads of that post bypass the cache: read others.
        assert httpx.get(f"{base}{created.headers['location']}", headers=good).status_code == 200
        tagged = httpx.get(f"{base}/api/v1/posts/999999001", headers={"X-Request-ID": TAGGED})
        assert tagged.status_code == 404  # a miss, then a fill (refused: wrong password)
        assert tagged.headers["x-request-id"] == TAGGED
        generated = httpx.get(f"{base}/api/v1/posts/999999002")
        assert generated.status_code == 404
        generated_id = generated.headers["x-request-id"]
        assert generated_id != TAGGED
        status = httpx.get(f"{base}/status", headers=good)
        time.sleep(1.0)  # the slow log's budget (10 lines a second) refills
        password_redis.stop()  # reads now fail: connection errors, then the breaker
        for post_id in range(999999003, 999999008):
            assert httpx.get(f"{base}/api/v1/posts/{post_id}").status_code == 404  # database
        password_redis.start()
    output = served.output
    assert served.returncode == 0, output

    for secret in SECRETS:
        assert secret not in output
        assert secret not in status.text
    assert f"redis://:***@{redis_host}" in status.json()["redis"]["read"]["url"]
    assert "***" in status.json()["database"]["url"]

    lines = json_lines(output)
    for line in lines:
        assert {"time", "level", "logger", "message"} <= line.keys()
    loggers = {line["logger"] for line in lines}
    assert {"uvicorn.error", "postal.cache.slow", "postal.cache.pool"} <= loggers
    slow = [line for line in lines if line["message"] == "slow cache operation"]
    assert slow
    assert {"role", "command", "duration_ms", "outcome"} <= slow[0].keys()
    in_tagged = [line for line in lines if line.get("request_id") == TAGGED]
    assert in_tagged, "the tagged request's cache operations carry its id"
    assert any(line.get("request_id") == generated_id for line in lines)
    failures = [line for line in lines if line.get("outcome") == "connection_error"]
    assert failures, "reads while Redis was stopped were logged"
    assert any("***@" in line["message"] for line in lines)  # URLs were logged, masked
