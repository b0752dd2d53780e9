"""`postal import` as a user runs it: a real process, real PostgreSQL and Redis (or the embedded
default), its exit codes and printed report, and what an interruption leaves behind.

The interruption tests import a file big enough to take a few seconds, wait until the import's
transaction has written into `posts` (its lock is visible in pg_locks), then SIGKILL or SIGINT
the process: the posts and their versions must be as they were.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis

from postal.embedded import free_loopback_port
from postal.posts.cache_keys import LIST_GENERATION
from postal_testing.redis_servers import RedisServer
from tests.e2e.test_serve import SCRUBBED, run_postal, serving
from tests.integration.api_support import Api, running_api
from tests.support.database import HOST, PORT, USER, database_name, run_in_own_loop

COLUMNS = ("id", "title", "body", "author", "tags", "created_at")
BIG_FILE_ROWS = 60_000  # a few seconds of importing here: time to interrupt it in the middle
TIMEOUT = 60  # seconds any one `postal import` may take in these tests


def write_csv(path: Path, rows: Iterable[Mapping[str, object]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=list(COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    return path


def new_rows(count: int, prefix: str = "post") -> list[dict[str, object]]:
    return [
        {"title": f"{prefix} {i}", "body": f"the body of {prefix} {i} " * 4, "author": "ada"}
        for i in range(count)
    ]


def environment(**env: str) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    environ.update(env)
    return environ


def postgres_env(database_url: str, redis_url: str, key_prefix: str) -> dict[str, str]:
    return environment(
        DATABASE_URL=database_url, READ_REDIS_URL=redis_url, REDIS_KEY_PREFIX=key_prefix
    )


def import_posts(cwd: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = run_postal(cwd, "import", *args, env=env, timeout=TIMEOUT)
    print(result.stdout, result.stderr)  # shown by pytest when the test fails
    return result


async def _query(database_url: str, sql: str) -> int:
    connection = await asyncpg.connect(  # type: ignore[no-untyped-call]
        host=HOST, port=PORT, user=USER, database=database_name(database_url)
    )
    try:
        return int(await connection.fetchval(sql))
    finally:
        await connection.close()


def counts(database_url: str) -> tuple[int, int]:
    posts = run_in_own_loop(lambda: _query(database_url, "SELECT count(*) FROM posts"))
    versions = run_in_own_loop(lambda: _query(database_url, "SELECT count(*) FROM post_versions"))
    return posts, versions


WRITING_INTO_POSTS = (
    "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
    " WHERE c.relname = 'posts' AND l.mode = 'RowExclusiveLock' AND l.pid <> pg_backend_pid()"
    " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


def writing_into_posts(database_url: str) -> bool:
    """Whether another session holds a write lock on posts: an import's open transaction."""
    return bool(run_in_own_loop(lambda: _query(database_url, WRITING_INTO_POSTS)))


# -- PostgreSQL and Redis ------------------------------------------------------------------------


async def test_an_import_is_served_by_the_service_in_its_new_version(
    tmp_path: Path, database_url: str, clean_database: None, redis_url: str, key_prefix: str
) -> None:
    async with running_api(database_url, redis_url, key_prefix) as api:
        post = await api.create(title="before", body="old")
        url = f"/api/v1/posts/{post['id']}"
        await api.client.get(url)
        await api.settle()
        selects = len(api.post_selects)
        assert (await api.client.get(url)).json()["title"] == "before"  # from the cache
        assert len(api.post_selects) == selects
        update = {"id": post["id"], "title": "after", "body": "new", "author": "bo", "tags": "t"}
        path = write_csv(tmp_path / "posts.csv", [*new_rows(10), update])
        report_path = tmp_path / "report.json"
        env = postgres_env(database_url, redis_url, key_prefix)
        result = await asyncio.to_thread(
            import_posts, tmp_path, str(path), "--json", str(report_path), env=env
        )
        assert result.returncode == 0, result.stderr
        assert "created: 10" in result.stdout
        assert "updated: 1" in result.stdout
        assert "cache: 11 keys invalidated" in result.stdout
        report = json.loads(report_path.read_text())
        assert report["committed"] is True
        assert (report["created"], report["updated"], report["invalid"]) == (10, 1, 0)
        assert report["cache"]["pending"] is False
        read = (await api.client.get(url)).json()  # the other process invalidated our cache
        assert (read["title"], read["body"], read["tags"], read["version"]) == (
            "after", "new", ["t"], 2,
        )  # fmt: skip
        await check_all_readable(api, 11)


async def check_all_readable(api: Api, count: int) -> None:
    listed = (await api.client.get("/api/v1/posts?limit=100")).json()["items"]
    assert len(listed) == count
    for post in listed:
        assert (await api.client.get(f"/api/v1/posts/{post['id']}")).json() == post


def test_a_bad_file_exits_1_with_every_bad_row_and_writes_nothing(
    tmp_path: Path, database_url: str, clean_database: None, redis_url: str, key_prefix: str
) -> None:
    rows: list[dict[str, object]] = [
        *new_rows(2),
        {"title": "", "body": "b", "author": "a"},  # line 4
        {"title": "t", "body": "b", "author": "a", "created_at": "someday"},  # line 5
        {"id": "42", "title": "t", "body": "b", "author": "a"},  # line 6: no such post
    ]
    path = write_csv(tmp_path / "bad.csv", rows)
    report_path = tmp_path / "report.json"
    env = postgres_env(database_url, redis_url, key_prefix)
    result = import_posts(tmp_path, str(path), "--json", str(report_path), env=env)
    assert result.returncode == 1
    assert "nothing was imported" in result.stdout
    assert "line 4, column title: missing_field: title is empty" in result.stdout
    assert "line 5, column created_at: bad_date: " in result.stdout
    assert "line 6, column id: unknown_id: " in result.stdout
    assert "--skip-invalid" in result.stdout
    assert "rejected" in result.stderr
    report = json.loads(report_path.read_text())
    assert report["committed"] is False
    assert [(e["line"], e["reason"]) for e in report["errors"]] == [
        (4, "missing_field"), (5, "bad_date"), (6, "unknown_id"),
    ]  # fmt: skip
    assert counts(database_url) == (0, 0)

    skipped = import_posts(tmp_path, str(path), "--skip-invalid", env=env)
    assert skipped.returncode == 0, skipped.stderr
    assert "created: 2" in skipped.stdout
    assert "invalid: 3 (skipped: --skip-invalid)" in skipped.stdout
    assert counts(database_url) == (2, 2)


def test_usage_and_configuration_errors_exit_2(
    tmp_path: Path, database_url: str, redis_url: str, key_prefix: str
) -> None:
    path = write_csv(tmp_path / "posts.csv", new_rows(1))
    env = postgres_env(database_url, redis_url, key_prefix)
    before = counts(database_url)
    for args in [
        ("missing.csv",),
        (str(path), "--batch-size", "0"),
        (str(path), "--json", str(tmp_path / "no-such-dir" / "report.json")),
    ]:
        assert import_posts(tmp_path, *args, env=env).returncode == 2, args
    no_redis = environment(DATABASE_URL=database_url)
    refused = import_posts(tmp_path, str(path), env=no_redis)
    assert refused.returncode == 2
    assert "READ_REDIS_URL" in refused.stderr
    assert counts(database_url) == before


def test_an_unmigrated_or_unreachable_database_exits_1(
    tmp_path: Path, empty_database_url: str, redis_url: str, key_prefix: str
) -> None:
    path = write_csv(tmp_path / "posts.csv", new_rows(1))
    unmigrated = import_posts(
        tmp_path, str(path), env=postgres_env(empty_database_url, redis_url, key_prefix)
    )
    assert unmigrated.returncode == 1
    assert "postal migrate" in unmigrated.stderr
    nowhere = f"postgresql+asyncpg://postal:s3cret@127.0.0.1:{free_loopback_port()}/postal"
    down = import_posts(tmp_path, str(path), env=postgres_env(nowhere, redis_url, key_prefix))
    assert down.returncode == 1
    assert "unavailable" in down.stderr
    assert "s3cret" not in down.stderr + down.stdout


# -- a Redis that does not take the invalidation --------------------------------------------------


def test_a_redis_that_is_down_leaves_the_invalidation_pending_and_says_so(
    tmp_path: Path, database_url: str, clean_database: None, key_prefix: str
) -> None:
    nowhere = f"redis://127.0.0.1:{free_loopback_port()}/0"
    env = postgres_env(database_url, nowhere, key_prefix)
    path = write_csv(tmp_path / "posts.csv", new_rows(2))
    report_path = tmp_path / "report.json"
    args = (str(path), "--cache-wait", "0.5", "--json", str(report_path))
    result = import_posts(tmp_path, *args, env=env)
    assert result.returncode == 3, result.stderr  # committed, but the invalidation is pending
    assert "created: 2" in result.stdout
    assert "the cache invalidation is still pending" in result.stdout
    assert "POST_CACHE_TTL" in result.stdout
    assert json.loads(report_path.read_text())["cache"]["pending"] is True
    assert counts(database_url) == (2, 2)


@pytest.mark.redis_server
def test_a_pending_invalidation_lands_when_redis_comes_back(
    tmp_path: Path, database_url: str, clean_database: None, key_prefix: str
) -> None:
    server = RedisServer()  # its port, with nothing on it yet
    env = postgres_env(database_url, server.url, key_prefix)
    path = write_csv(tmp_path / "posts.csv", new_rows(2))
    output_path = tmp_path / "output.txt"
    command = [sys.executable, "-m", "postal.cli", "import", str(path), "--cache-wait", "60"]
    try:
        with output_path.open("w") as output:
            process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=output, stderr=output)
        deadline = time.monotonic() + TIMEOUT
        while "will retry" not in output_path.read_text():  # the invalidation failed
            assert process.poll() is None, output_path.read_text()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        server.start()
        returncode = process.wait(TIMEOUT)
        printed = output_path.read_text()
        print(printed)
        assert returncode == 0
        assert "the invalidation was pending; it landed after" in printed
        client = redis.Redis(host=server.host, port=server.port)
        try:
            assert client.get(f"{key_prefix}{LIST_GENERATION}") is not None  # bumped
        finally:
            client.close()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        server.cleanup()


# -- interrupted ---------------------------------------------------------------------------------


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_an_interrupted_import_leaves_the_database_as_it_was(
    tmp_path: Path,
    database_url: str,
    clean_database: None,
    redis_url: str,
    key_prefix: str,
    how: signal.Signals,
) -> None:
    env = postgres_env(database_url, redis_url, key_prefix)
    first = write_csv(tmp_path / "first.csv", new_rows(3, prefix="first"))
    assert import_posts(tmp_path, str(first), env=env).returncode == 0
    before = counts(database_url)
    assert before == (3, 3)
    update = {"id": 1, "title": "changed", "body": "b", "author": "a"}
    big = write_csv(tmp_path / "big.csv", [update, *new_rows(BIG_FILE_ROWS)])
    output_path = tmp_path / "output.txt"
    command = [sys.executable, "-m", "postal.cli", "import", str(big)]
    with output_path.open("w") as output:
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=output, stderr=output)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not writing_into_posts(database_url):  # rows are going in, uncommitted
            assert process.poll() is None, "the import ended before it could be interrupted"
            assert time.monotonic() < deadline, "the import never started writing"
            time.sleep(0.02)
        assert process.poll() is None, "the import ended before it could be interrupted"
        process.send_signal(how)
        returncode = process.wait(TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    printed = output_path.read_text()
    print(printed)
    if how == signal.SIGINT:
        assert returncode == 130
        assert "interrupted: nothing was imported" in printed
        assert "Traceback" not in printed
    else:
        assert returncode == -signal.SIGKILL
    deadline = time.monotonic() + TIMEOUT
    while writing_into_posts(database_url):  # the server notices the connection is gone
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert counts(database_url) == before
    title = run_in_own_loop(lambda: _fetch_title(database_url, 1))
    assert title == "first 0"


async def _fetch_title(database_url: str, post_id: int) -> str:
    connection = await asyncpg.connect(  # type: ignore[no-untyped-call]
        host=HOST, port=PORT, user=USER, database=database_name(database_url)
    )
    try:
        return str(await connection.fetchval("SELECT title FROM posts WHERE id = $1", post_id))
    finally:
        await connection.close()


# -- the embedded default ------------------------------------------------------------------------


def test_the_embedded_default_with_no_service_running(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "posts.csv", new_rows(3))
    result = import_posts(tmp_path, str(path), env=environment())
    assert result.returncode == 0, result.stderr
    assert "created: 3" in result.stdout
    assert "no postal serve running" in result.stderr
    assert "nothing to invalidate" in result.stdout
    assert (tmp_path / "var" / "postal.db").exists()


def test_the_embedded_default_invalidates_the_running_service(tmp_path: Path) -> None:
    with serving(tmp_path) as served:
        created = httpx.post(
            f"{served.base}/api/v1/posts", json={"title": "before", "body": "b", "author": "a"}
        )
        url = f"{served.base}{created.headers['location']}"
        for _ in range(3):  # cached by now
            assert httpx.get(url).json()["title"] == "before"
        update = {"id": created.json()["id"], "title": "after", "body": "b2", "author": "a"}
        path = write_csv(tmp_path / "posts.csv", [update])
        result = import_posts(tmp_path, str(path), env=environment())
        assert result.returncode == 0, result.stderr
        assert "the embedded Redis of the running postal serve" in result.stderr
        assert "cache: 1 keys invalidated" in result.stdout
        read = httpx.get(url).json()
        assert (read["title"], read["version"]) == ("after", 2)
        config = (tmp_path / "var" / "redis.conf").read_text()
        password = config.split("requirepass ", 1)[1].split()[0]
        assert password not in result.stdout + result.stderr
