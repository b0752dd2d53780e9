"""`postal serve` as a user runs it: a real process, a real port, the embedded default."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from postal.embedded import free_loopback_port
from postal_testing.redis_servers import answers_ping
from tests.support.database import empty_database

SCRUBBED = ("DATABASE_URL", "READ_REDIS_URL", "WRITE_REDIS_URL", "POSTAL_API_TOKEN", "POSTAL_HOST")


def run_postal(
    cwd: Path, *args: str, env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    """`postal ARGS` to completion (for the commands that exit on their own), output captured."""
    command = [sys.executable, "-m", "postal.cli", *args]
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@dataclass
class Served:
    base: str
    process: subprocess.Popen[str]
    log: Path  # where the process prints
    output: str = ""  # everything the process printed, once it has exited
    returncode: int | None = None


@contextmanager
def serving(cwd: Path, *args: str, **env: str) -> Iterator[Served]:
    with serving_together(cwd, [args], **env) as (served,):
        yield served


@contextmanager
def serving_together(
    cwd: Path, commands: Sequence[Sequence[str]], **env: str
) -> Iterator[list[Served]]:
    """A `postal serve ARGS` for each of `commands`, started at once (their start-ups overlap),
    each ready (its /readyz answers 200) when this yields; all stopped (SIGTERM) at once. What
    each prints goes to a file (a pipe nobody reads while the test runs would fill, and stall
    the server), read into `Served.output` once it has exited."""
    environ = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    environ.update(env)
    servers: list[Served] = []
    try:
        for args in commands:
            port = free_loopback_port()
            command = [sys.executable, "-m", "postal.cli", "serve", "--port", str(port), *args]
            log = cwd / f"postal-serve-{port}.log"
            with log.open("w") as printed:
                process = subprocess.Popen(
                    command,
                    cwd=cwd,
                    env=environ,
                    stdout=printed,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            servers.append(Served(f"http://127.0.0.1:{port}", process, log))
        deadline = time.monotonic() + 30
        for served in servers:
            _wait_ready(served, deadline)
        yield servers
    finally:
        for served in servers:
            if served.process.poll() is None:
                served.process.send_signal(signal.SIGTERM)
        for served in servers:
            _stopped(served)


def _wait_ready(served: Served, deadline: float) -> None:
    while True:
        if served.process.poll() is not None:
            raise AssertionError("postal serve exited before it was ready")
        try:
            if httpx.get(f"{served.base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError("postal serve did not become ready in 30 s")
        time.sleep(0.1)


def _stopped(served: Served) -> None:
    process = served.process
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    served.returncode = process.returncode
    served.output = served.log.read_text()
    print(served.output)  # shown by pytest when the test fails


def test_the_embedded_default_serves_posts_and_cleans_up(tmp_path: Path) -> None:
    with serving(tmp_path) as served:
        base = served.base
        created = httpx.post(
            f"{base}/api/v1/posts", json={"title": "Hi", "body": "there", "author": "me"}
        )
        assert created.status_code == 201
        url = f"{base}{created.headers['location']}"
        assert httpx.get(url).json()["title"] == "Hi"
        ready = httpx.get(f"{base}/readyz").json()
        assert ready["cache"]["connected"] is True
        config = (tmp_path / "var" / "redis.conf").read_text()
        port = int(config.split("port ", 1)[1].split()[0])
        data = tmp_path / "var"
        assert oct(data.stat().st_mode & 0o777) == "0o700"  # the database and Redis's log
        files = {path.name: oct(path.stat().st_mode & 0o777) for path in data.iterdir()}
        assert {"redis.conf", "redis.log", "postal.db", "postal.db-wal"} <= set(files)
        assert set(files.values()) == {"0o600"}, files
        assert not answers_ping("127.0.0.1", port)  # it wants its password: NOAUTH
        assert answers_ping("127.0.0.1", port, noauth_ok=True)
    output = served.output
    assert served.returncode == 0, output
    assert "embedded" in output
    assert "sqlite+aiosqlite:///var/postal.db" in output
    assert "writes are open" in output
    assert (tmp_path / "var" / "postal.db").exists()
    embedded_port = next(
        int(line.rsplit(":", 1)[1].split("/")[0])
        for line in output.splitlines()
        if "Redis read:" in line
    )
    assert not answers_ping("127.0.0.1", embedded_port)  # stopped with Postal


@pytest.mark.parametrize(
    ("args", "env"),
    [(("--host", "0.0.0.0"), {}), ((), {"POSTAL_HOST": "0.0.0.0"}), (("--host", "::"), {})],
    ids=["--host", "POSTAL_HOST", "ipv6-any"],
)
def test_without_a_token_a_public_bind_exits_2(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str]
) -> None:
    """It used to bind 127.0.0.1 instead, with a warning: in a container, a pod that never
    answers its Service. Now it stops at once and says why, before starting anything."""
    environ = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    result = run_postal(tmp_path, "serve", *args, env={**environ, **env}, timeout=30)
    assert result.returncode == 2, result.stderr
    assert "needs POSTAL_API_TOKEN" in result.stderr
    assert "answers loopback clients only" in result.stderr
    assert not (tmp_path / "var").exists()  # nothing was started: no embedded Redis, no database


@pytest.mark.parametrize(
    "token",
    ["CHANGE-ME", "x", "change-me-change-me-change-me-change-me", " " + "ab" * 20],
    ids=["manifest-placeholder", "one-character", "long-placeholder", "two-characters"],
)
def test_a_weak_token_exits_2_without_echoing_it(tmp_path: Path, token: str) -> None:
    environ = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    result = run_postal(
        tmp_path, "serve", "--host", "0.0.0.0", env={**environ, "POSTAL_API_TOKEN": token},
        timeout=30,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "POSTAL_API_TOKEN" in result.stderr
    if len(token) > 1:
        assert token.strip() not in result.stderr + result.stdout


def test_a_bad_setting_exits_2_with_the_variable_named(tmp_path: Path) -> None:
    result = run_postal(
        tmp_path, "serve", env={**os.environ, "REDIS_GET_DEADLINE": "100"}, timeout=30
    )
    assert result.returncode == 2
    assert "REDIS_GET_DEADLINE" in result.stderr


@pytest.fixture
async def empty_database_url() -> AsyncIterator[str]:
    async with empty_database() as url:
        yield url


def test_an_unmigrated_postgresql_is_refused_until_postal_migrate(
    tmp_path: Path, empty_database_url: str, redis_url: str
) -> None:
    env = {**os.environ, "DATABASE_URL": empty_database_url, "READ_REDIS_URL": redis_url}
    refused = run_postal(tmp_path, "serve", env=env, timeout=60)
    assert refused.returncode == 1
    assert "postal migrate" in refused.stderr
    migrated = run_postal(tmp_path, "migrate", env=env, timeout=60)
    assert migrated.returncode == 0, migrated.stderr
    assert "latest migration" in migrated.stdout
    with serving(tmp_path, DATABASE_URL=empty_database_url, READ_REDIS_URL=redis_url) as served:
        assert httpx.get(f"{served.base}/readyz").json()["database"] == {"reachable": True}


def test_two_workers_serve_and_shut_down_cleanly(tmp_path: Path) -> None:
    with serving(tmp_path, "--workers", "2") as served:
        created = httpx.post(
            f"{served.base}/api/v1/posts", json={"title": "W", "body": "b", "author": "a"}
        )
        assert created.status_code == 201
        for _ in range(10):  # whichever worker answers, it reads what the other wrote
            read = httpx.get(f"{served.base}{created.headers['location']}")
            assert read.json()["title"] == "W"
    assert served.returncode == 0, served.output
    assert "with 2 worker(s)" in served.output


def test_web_concurrency_is_the_worker_count_when_workers_is_not_given(tmp_path: Path) -> None:
    with serving(tmp_path, WEB_CONCURRENCY="2") as served:
        # /status answers from whichever worker took the request: each says how many there are
        statuses = [httpx.get(f"{served.base}/status").json() for _ in range(6)]
    assert served.returncode == 0, served.output
    assert "with 2 worker(s)" in served.output
    assert {status["workers"] for status in statuses} == {2}


def test_a_database_without_a_redis_url_is_refused(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    env["DATABASE_URL"] = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
    result = run_postal(tmp_path, "serve", env=env, timeout=30)
    assert result.returncode == 2
    assert "READ_REDIS_URL" in result.stderr


def test_sigterm_lets_a_request_in_flight_finish(tmp_path: Path) -> None:
    body = b'{"title": "Slow", "body": "sent in two halves", "author": "me"}'
    with serving(tmp_path) as served:
        host, port = served.base.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=15) as client:
            head = (
                f"POST /api/v1/posts HTTP/1.1\r\nHost: {host}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            )
            client.sendall(head.encode() + body[:20])
            time.sleep(0.5)  # the request is in flight: its app task is reading the body
            served.process.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            client.sendall(body[20:])
            reply = client.recv(65536)
    assert reply.startswith(b"HTTP/1.1 201"), reply[:200]
    assert served.returncode == 0, served.output
