"""A token holder's attacks on `POST /api/v1/posts/import`, against `postal serve` on PostgreSQL.

Each test reproduces one attack of issue 17 over raw sockets and asserts its bound with counts
and sizes, never timings: sessions idle in a transaction (pg_stat_activity), the 429s past the
concurrent imports, the 408 past the body's deadline, the size of a 422's errors, the header row
refused at its limit, and the server's peak memory.
"""

from __future__ import annotations

import json
import os
import select
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import asyncpg
import httpx
import pytest

from postal.imports.csv_fields import MAX_MESSAGE_CHARS
from postal.imports.csv_rows import MAX_COLUMNS, MAX_HEADER_BYTES
from tests.e2e.test_serve import Served, serving
from tests.support.database import HOST, PORT, USER, database_name

TOKEN = "import-limits-token-0123456789abcdefghij"
IMPORT = "/api/v1/posts/import"
HEADER = b"title,body,author\r\n"
WAIT = 30.0  # seconds: a bound on waiting for a state, never asserted as a timing


@pytest.fixture
def postgres_env(clean_database: str, redis_url: str, key_prefix: str) -> dict[str, str]:
    return {
        "DATABASE_URL": clean_database,
        "READ_REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": key_prefix,
        "POSTAL_API_TOKEN": TOKEN,
    }


def port_of(served: Served) -> int:
    return int(served.base.rsplit(":", 1)[1])


def upload(port: int, body: bytes, *, declared: int | None = None) -> socket.socket:
    """An import whose request declares `declared` bytes (default: `body`'s) and sends `body`."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    length = len(body) if declared is None else declared
    head = (
        f"POST {IMPORT} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: text/csv\r\nContent-Length: {length}\r\n\r\n"
    )
    connection.sendall(head.encode() + body)
    return connection


def response(connection: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """The status, headers (lower-cased names) and body of the one response on `connection`."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        assert chunk, f"closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = connection.recv(65536)
        assert chunk, "closed mid-response"
        body += chunk
    return int(status_line.split()[1]), headers, body


def answered(connections: list[socket.socket], count: int) -> list[socket.socket]:
    """Wait (bounded) until `count` of `connections` have bytes to read; those."""
    ready: set[socket.socket] = set()
    give_up = time.monotonic() + WAIT
    while len(ready) < count and time.monotonic() < give_up:
        readable, _, _ = select.select([c for c in connections if c not in ready], [], [], 0.5)
        ready.update(readable)
    return [connection for connection in connections if connection in ready]


async def sessions(database_url: str, state: str) -> int:
    """How many sessions on the test's database are in `state` (pg_stat_activity)."""
    count = await fetch_on_postgres(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND state = $2",
        database_name(database_url),
        state,
    )
    assert isinstance(count, int)
    return count


async def writer_idle_in_transaction(database_url: str) -> int | None:
    """Poll (bounded) until a session on the test's database sits idle in a transaction that has
    written (it holds a transaction id: an import between batches); its pid, or None."""
    give_up = time.monotonic() + WAIT
    while time.monotonic() < give_up:
        pid = await fetch_on_postgres(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1"
            " AND state = 'idle in transaction' AND backend_xid IS NOT NULL LIMIT 1",
            database_name(database_url),
        )
        if pid is not None:
            assert isinstance(pid, int)
            return pid
        time.sleep(0.1)  # noqa: ASYNC251 - the server is another process; nothing to await here
    return None


async def until_session_ended(pid: int) -> bool:
    """Poll (bounded) until the session `pid` is gone from pg_stat_activity; whether it went."""
    give_up = time.monotonic() + WAIT
    while time.monotonic() < give_up:
        if await fetch_on_postgres("SELECT 1 FROM pg_stat_activity WHERE pid = $1", pid) is None:
            return True
        time.sleep(0.1)  # noqa: ASYNC251 - the server is another process; nothing to await here
    return False


async def fetch_on_postgres(query: str, *args: object) -> object:
    """The first value of `query`'s first row (None: no row), asked on the `postgres` database."""
    connection = await asyncpg.connect(host=HOST, port=PORT, user=USER, database="postgres")
    try:
        return await connection.fetchval(query, *args)
    finally:
        await connection.close()


def rows(count: int, *, body: str = "a body") -> bytes:
    return b"".join(f"post {i},{body},ada\r\n".encode() for i in range(count))


def tree_peak_rss(pid: int) -> int:
    """The largest peak resident set (VmHWM, bytes) of `pid` and its descendants: the server,
    however it arranges its workers."""
    peak, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]) * 1024)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            pending += [int(child) for child in task.read_text().split()]
    return peak


@contextmanager
def closing_all(connections: list[socket.socket]) -> Iterator[list[socket.socket]]:
    with ExitStack() as stack:
        for connection in connections:
            stack.enter_context(connection)
        yield connections


async def test_uploads_that_send_only_the_header_hold_no_transaction_and_are_capped(
    tmp_path: Path, postgres_env: dict[str, str]
) -> None:
    # The server's own body timeout (POSTAL_HTTP_BODY_TIMEOUT) would end the stalled uploads
    # first: lengthened, so what is seen here is the import's own bounds.
    env = {**postgres_env, "POSTAL_HTTP_BODY_TIMEOUT": "5m"}
    with serving(tmp_path, **env) as served:
        port = port_of(served)
        attackers = [upload(port, HEADER, declared=1_000_000) for _ in range(10)]
        with closing_all(attackers):
            refused = answered(attackers, 8)
            assert len(refused) == 8  # the default POSTAL_MAX_CONCURRENT_IMPORTS is 2
            for connection in refused:
                status, headers, body = response(connection)
                assert status == 429
                assert headers["retry-after"] == "5"
                assert json.loads(body)["error"]["code"] == "too_many_imports"
            # The two running imports have read their header and wait for rows: no batch, so
            # no transaction (before: one session idle in transaction per upload).
            url = postgres_env["DATABASE_URL"]
            assert await sessions(url, "idle in transaction") == 0
            async with httpx.AsyncClient(base_url=served.base, timeout=WAIT) as client:
                assert (await client.get("/readyz")).status_code == 200
                created = await client.post(
                    "/api/v1/posts",
                    json={"title": "t", "body": "b", "author": "a"},
                    headers={"Authorization": f"Bearer {TOKEN}"},
                )
                assert created.status_code == 201
                assert (await client.get(created.headers["location"])).status_code == 200
            for waiting in attackers:
                if waiting not in refused:
                    waiting.close()  # the two clients go away: their slots come back
        statuses = []
        for _ in range(50):  # bounded: until the server has seen them go
            with upload(port, HEADER + rows(3)) as prompt:
                statuses.append(response(prompt)[0])
            if statuses[-1] != 429:
                break
            time.sleep(0.1)  # noqa: ASYNC251 - the server is another process
        assert statuses[-1] == 200


async def test_a_client_that_stalls_between_batches_loses_its_session(
    tmp_path: Path, postgres_env: dict[str, str]
) -> None:
    env = {
        **postgres_env,
        "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT": "1s",
        "POSTAL_HTTP_BODY_TIMEOUT": "5m",  # the server's own: not what this test is about
    }
    url = postgres_env["DATABASE_URL"]
    first, rest = HEADER + rows(1500), rows(500)  # one batch of 1,000 written, then a stall
    with serving(tmp_path, **env) as served:
        with upload(port_of(served), first, declared=len(first) + len(rest)) as attacker:
            # The import's session, its first batch written, waits on the client's next rows.
            # (Counting sessions idle in a transaction would not tell this from the moments
            # between the batch's own statements: a count of 1, then 0, may be those.)
            pid = await writer_idle_in_transaction(url)
            assert pid is not None
            # PostgreSQL ends it (before: it stayed until the client went away)
            assert await until_session_ended(pid)
            attacker.sendall(rest)  # the import's next batch finds its session gone
            status, _, body = response(attacker)
        assert status == 503
        assert json.loads(body)["error"]["code"] == "database_unavailable"
        async with httpx.AsyncClient(base_url=served.base, timeout=WAIT) as client:
            listed = (await client.get("/api/v1/posts")).json()
        assert listed["items"] == []  # rolled back


async def test_a_body_that_does_not_arrive_in_time_is_a_408(
    tmp_path: Path, postgres_env: dict[str, str]
) -> None:
    env = {**postgres_env, "POSTAL_IMPORT_BODY_TIMEOUT": "1s", "POSTAL_HTTP_BODY_TIMEOUT": "5m"}
    with serving(tmp_path, **env) as served:
        with upload(port_of(served), HEADER + rows(10), declared=1_000_000) as slow:
            status, headers, body = response(slow)
        assert status == 408
        assert json.loads(body)["error"]["code"] == "request_timeout"
        assert headers["connection"] == "close"
        # its slot was given back: an import that sends its body goes through
        with upload(port_of(served), HEADER + rows(3)) as prompt:
            assert response(prompt)[0] == 200


async def test_errors_stay_small_whatever_the_fields_hold(
    tmp_path: Path, postgres_env: dict[str, str]
) -> None:
    # Before: a 2.9 MB tags field of `|` made a 25 MB message; ten such rows a 250 MB 422 body
    # and an 867 MB peak. Now each is one short error, and the peak barely moves.
    field = b"|" * 2_900_000
    body = b"title,body,author,tags\r\n" + b"".join(b"t,b,a," + field + b"\r\n" for _ in range(10))
    with serving(tmp_path, **postgres_env) as served:
        before = tree_peak_rss(served.process.pid)
        with upload(port_of(served), body) as attacker:
            status, _, answer = response(attacker)
        grown = tree_peak_rss(served.process.pid) - before
    assert status == 422
    report = json.loads(answer)["report"]
    assert report["invalid"] == 10
    assert [error["reason"] for error in report["errors"]] == ["bad_tags"] * 10
    assert all(len(error["message"]) <= MAX_MESSAGE_CHARS for error in report["errors"])
    assert len(answer) < 10_000
    assert grown < 100 * 1024 * 1024, f"peak RSS grew {grown / 2**20:.0f} MiB"


async def test_a_row_of_a_million_fields_is_refused_without_a_million_strings(
    tmp_path: Path, postgres_env: dict[str, str]
) -> None:
    wide = b"ab," * 1_000_000 + b"ab\r\n"  # 3 MB: within a record's limit, a million fields
    body = HEADER + rows(2) + wide + rows(2)
    with serving(tmp_path, **postgres_env) as served:
        before = tree_peak_rss(served.process.pid)
        with upload(port_of(served), body) as attacker:
            status, _, answer = response(attacker)
        grown = tree_peak_rss(served.process.pid) - before
    assert status == 422
    errors = json.loads(answer)["report"]["errors"]
    assert [(e["line"], e["reason"]) for e in errors] == [(4, "wrong_column_count")]
    assert errors[0]["message"] == "1000001 fields; the header has 3"
    assert grown < 100 * 1024 * 1024, f"peak RSS grew {grown / 2**20:.0f} MiB"


async def test_an_oversized_header_row_is_refused_at_its_limit(
    tmp_path: Path, postgres_env: dict[str, str]
) -> None:
    # Before: 1,000,001 unknown columns (2 MB) blocked the loop for seconds, peaked at 588 MB.
    huge = b"a," * 1_000_000 + b"title,body,author\r\n"
    too_many = ",".join(f"c{i}" for i in range(MAX_COLUMNS + 1)).encode() + b"\r\n"
    unknown = b"title,body,author," + ",".join(f"c{i}" for i in range(500)).encode() + b"\r\n"
    with serving(tmp_path, **postgres_env) as served:
        before = tree_peak_rss(served.process.pid)
        answers = []
        for header in (huge, too_many, unknown):
            with upload(port_of(served), header + rows(1)) as attacker:
                answers.append(response(attacker))
        grown = tree_peak_rss(served.process.pid) - before
    statuses = [status for status, _, _ in answers]
    assert statuses == [422, 422, 422]
    reports = [json.loads(body)["report"] for _, _, body in answers]
    assert [(e["reason"], e["message"]) for e in reports[0]["errors"]] == [
        ("too_long", f"the header row is over {MAX_HEADER_BYTES} bytes")
    ]
    assert [e["reason"] for e in reports[1]["errors"]] == ["too_many_columns"]
    listed = reports[2]["errors"]
    assert len(listed) == 10
    assert listed[-1]["message"] == "and 491 more problems with the header, not listed"
    assert all(len(body) < 10_000 for _, _, body in answers)
    assert grown < 50 * 1024 * 1024, f"peak RSS grew {grown / 2**20:.0f} MiB"


def test_the_limits_are_settings_checked_at_start_up(tmp_path: Path) -> None:
    from tests.e2e.test_serve import run_postal

    env = {**os.environ, "POSTAL_MAX_CONCURRENT_IMPORTS": "10", "DATABASE_POOL_SIZE": "10"}
    refused = run_postal(tmp_path, "serve", env=env, timeout=60)
    assert refused.returncode == 2
    assert "POSTAL_MAX_CONCURRENT_IMPORTS=10, DATABASE_POOL_SIZE=10" in refused.stderr
