"""`GET /status` and `postal stats` against a real Postal (in-process, on a real socket), real
PostgreSQL and real Redis: the figures it prints are the traffic the test made."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import uvicorn
from typer.testing import CliRunner

from postal.cli import app as cli_app
from postal.embedded import free_loopback_port
from postal_testing.redis_servers import RedisServer
from tests.integration.api_support import AUTH, TOKEN, Api, running_api
from tests.integration.helpers import eventually
from tests.support.metrics_text import Scrape

SMALL_READ_POOL = {
    "READ_REDIS_POOL_SIZE": "7",
    "READ_REDIS_MIN_IDLE": "2",
    "READ_REDIS_MAX_IDLE": "5",
}
SCRUBBED = ("READ_REDIS_URL", "WRITE_REDIS_URL", "DATABASE_URL", "POSTAL_API_TOKEN")
REDIS_PASSWORD = "st4ts-redis-passw0rd"


def node_of(redis_url: str) -> str:
    """The `node` label of the Redis a `redis://host:port/0` URL names."""
    return redis_url.removeprefix("redis://").removesuffix("/0")


@asynccontextmanager
async def over_http(api: Api) -> AsyncIterator[str]:
    """The app (its lifespan run by `running_api`) on a real uvicorn socket: its base URL."""
    port = free_loopback_port()
    config = uvicorn.Config(
        api.app, host="127.0.0.1", port=port, lifespan="off", log_config=None, ws="none",
        access_log=False,
    )  # fmt: skip
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        await eventually(lambda: server.started, timeout=10)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def postal_stats(*args: str, token: str | None = TOKEN, **env: str) -> tuple[int, str, str]:
    """`postal stats ARGS` as a process (the loop keeps serving meanwhile): code, out, err.
    `token`: its POSTAL_API_TOKEN (/status needs it), as the service's environment has it."""
    environ = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    if token is not None:
        environ["POSTAL_API_TOKEN"] = token
    environ.update(env)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "postal.cli", "stats", *args,
        env=environ, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def read_until_stopped(api: Api, path: str, stop: asyncio.Event) -> int:
    """Cache hits while `postal stats` watches, a few hundred a second at most."""
    reads = 0
    while not stop.is_set():
        assert (await api.client.get(path)).status_code == 200
        reads += 1
        await asyncio.sleep(0.005)
    return reads


# -- /status -------------------------------------------------------------------------------------


async def test_status_reports_the_process_its_settings_and_its_cache(
    clean_database: str, redis_url: str, key_prefix: str
) -> None:
    scheme, _, rest = clean_database.partition("://")
    user, _, location = rest.partition("@")
    with_password = f"{scheme}://{user}:db-s3cret@{location}"  # trusted: the password is ignored
    async with running_api(with_password, redis_url, key_prefix, **SMALL_READ_POOL) as api:
        response = await api.client.get("/status", headers=AUTH)
        ready = (await api.client.get("/readyz")).json()
    assert response.status_code == 200
    status: dict[str, Any] = response.json()
    assert status["pid"] == os.getpid()
    assert status["uptime_seconds"] >= 0
    assert status["database"]["url"] == f"{scheme}://{user}:***@{location}"
    assert status["redis"]["read"]["url"] == redis_url
    assert status["redis"]["key_prefix"] == key_prefix
    read_pool = status["config"]["pools"]["read"]
    assert (read_pool["max_size"], read_pool["min_idle"], read_pool["max_idle"]) == (7, 2, 5)
    assert status["config"]["pools"]["write"]["max_size"] == 20
    assert status["config"]["deadlines"] == {"get": 0.1, "set": 0.2}
    assert status["cache"]["pools"]["read"]["max_size"] == 7
    assert status["cache"]["breaker"] == {"read": "closed", "write": "closed"}
    node = node_of(redis_url)
    nodes = {(each["role"], each["node"]): each for each in status["cache"]["nodes"]}
    assert set(nodes) == {("read", node), ("write", node)}  # one Redis for both roles
    assert nodes["read", node]["max_size"] == 7
    assert nodes["read", node]["breaker"] == "closed"
    assert nodes["read", node]["idle"] + nodes["read", node]["in_use"] >= 2  # min idle
    assert {"reads", "invalidations", "dns"} <= status["cache"].keys()
    assert status["cache"].keys() <= ready["cache"].keys()  # one report, shared with /readyz
    assert "db-s3cret" not in response.text
    assert TOKEN not in response.text


@pytest.mark.redis_server
async def test_status_masks_passwords_given_as_query_parameters(
    clean_database: str, key_prefix: str
) -> None:
    """redis-py and SQLAlchemy both log in with `?password=`: a working configuration, whose
    passwords must be masked as those in the user information are."""
    server = RedisServer(extra_args=["--requirepass", REDIS_PASSWORD])
    server.start()
    redis_url = f"redis://{server.host}:{server.port}/0?password={REDIS_PASSWORD}"
    database_password = "db-qu3ry-s3cret"
    database_url = f"{clean_database}?password={database_password}"  # trusted: ignored
    try:
        async with running_api(database_url, redis_url, key_prefix) as api:
            post = await api.create()
            assert (await api.client.get(f"/api/v1/posts/{post['id']}")).status_code == 200
            await api.settle()
            status = await api.client.get("/status", headers=AUTH)
            ready = await api.client.get("/readyz")
            fills = api.state.reads.stats()
    finally:
        server.cleanup()
    assert status.status_code == ready.status_code == 200
    assert status.json()["cache"]["connected"] is True  # the password in the query was used
    assert fills.fills_done == 1
    for response in (status, ready):
        assert REDIS_PASSWORD not in response.text
        assert database_password not in response.text
    assert status.json()["redis"]["read"]["url"].endswith("/0?password=***")
    assert status.json()["database"]["url"].endswith("?password=***")


# -- postal stats --------------------------------------------------------------------------------


async def test_stats_json_shows_the_traffic_made(
    clean_database: str, redis_url: str, key_prefix: str
) -> None:
    # A GET deadline no scheduling delay reaches: on a loaded machine the default 100 ms is, and
    # a GET that times out is a cache error, not the hit the figures below count on. The near
    # cache off: these figures are Redis's GETs, which hot reads from memory would not send.
    async with running_api(
        clean_database, redis_url, key_prefix, REDIS_GET_DEADLINE="30s",
        NEAR_CACHE_ENABLED="false", **SMALL_READ_POOL,
    ) as api:  # fmt: skip
        first, second = await api.create(), await api.create(title="Second")
        paths = [f"/api/v1/posts/{first['id']}", f"/api/v1/posts/{second['id']}"]
        for path in paths:  # two misses, then their fills
            assert (await api.client.get(path)).status_code == 200
        await api.settle()
        for path in paths * 3:  # six hits
            assert (await api.client.get(path)).status_code == 200
        async with over_http(api) as base:
            stop = asyncio.Event()
            reader = asyncio.create_task(read_until_stopped(api, paths[0], stop))
            try:
                code, out, err = await postal_stats(
                    "--url", base, "--json", "--interval", "500ms", "--pings", "20",
                    READ_REDIS_URL=redis_url,
                )  # fmt: skip
            finally:
                stop.set()
                watched = await reader
    assert code == 0, err
    assert watched > 0
    report = json.loads(out)
    summary = report["summary"]
    cache = summary["cache"]
    assert cache["hit_rate"] == 1.0  # only hits while it watched
    (read_get,) = [c for c in cache["commands"] if (c["role"], c["command"]) == ("read", "GET")]
    assert read_get["ops_per_second"] > 0
    assert read_get["basis"] == "interval"
    assert 0 < read_get["p50_ms"] <= read_get["p99_ms"]
    assert {outcome for outcome, count in read_get["outcomes"].items() if count} == {"hit"}
    # Since the start: 2 misses, then 6 hits and the hits made while it watched.
    hits = 6 + watched
    assert cache["hit_rate_since_start"] == pytest.approx(hits / (hits + 2), abs=0.05)
    pools = {pool["role"]: pool for pool in summary["pools"]}
    assert len(pools) == len(summary["pools"]) == 2  # one Redis: a node per role
    assert pools["read"]["node"] == pools["write"]["node"] == node_of(redis_url)
    assert pools["read"]["max"] == 7
    assert pools["write"]["max"] == 20
    assert pools["read"]["breaker"] == "closed"
    assert pools["read"]["in_use"] + pools["read"]["idle"] >= 2  # min idle kept warm
    assert summary["fills"]["total"]["done"] >= 2
    assert report["status"]["config"]["pools"]["read"]["max_idle"] == 5
    (redis,) = report["redis"]
    assert redis["error"] is None
    assert redis["roles"] == ["read", "write"]
    assert redis["connected_clients"] >= 1
    assert redis["maxclients"] > 0
    assert redis["latency"]["samples"] == 20
    assert 0 < redis["latency"]["min_ms"] <= redis["latency"]["max_ms"]


@pytest.mark.redis_server
async def test_stats_says_when_it_lacks_the_password_and_never_prints_it(
    clean_database: str, key_prefix: str
) -> None:
    server = RedisServer(extra_args=["--requirepass", REDIS_PASSWORD])
    server.start()
    url = f"redis://:{REDIS_PASSWORD}@{server.host}:{server.port}/0"
    bare = f"redis://{server.host}:{server.port}/0"
    try:
        async with running_api(clean_database, url, key_prefix) as api, over_http(api) as base:
            assert (await api.client.get("/api/v1/posts/1")).status_code == 404
            without = await postal_stats("--url", base, "--interval", "100ms", "--pings", "5")
            given = await postal_stats(
                "--url", base, "--interval", "100ms", "--pings", "5", "--redis-url", bare,
                "--json", REDISCLI_AUTH=REDIS_PASSWORD,
            )  # fmt: skip
            on_the_command_line = await postal_stats("--url", base, "--redis-url", url)
    finally:
        server.cleanup()
    code, out, err = on_the_command_line  # where every user of the machine can read it (`ps`)
    assert code == 2
    assert "carries a password" in err
    assert "REDISCLI_AUTH" in err
    code, out, err = without
    assert code == 0, err
    assert "its password is not known here" in out
    assert "READ_REDIS_URL or WRITE_REDIS_URL" in out
    assert "Cache operations" in out  # the rest is printed all the same
    code, out, err = given
    assert code == 0, err
    (redis,) = json.loads(out)["redis"]
    assert redis["error"] is None
    assert redis["url"] == f"redis://:***@{server.host}:{server.port}/0"
    assert redis["connected_clients"] >= 2  # Postal's pools and this probe
    for output in (*without, *given, *on_the_command_line):
        assert REDIS_PASSWORD not in str(output)


async def test_status_needs_the_token_and_stats_sends_it(
    clean_database: str, redis_url: str, key_prefix: str
) -> None:
    """/status names the database's host, user and name, the Redis servers, the key prefix and
    the pool settings: with a token set, an anonymous client gets a 401 that names none of it."""
    async with running_api(clean_database, redis_url, key_prefix) as api, over_http(api) as base:
        anonymous = await api.client.get("/status")
        wrong = await api.client.get("/status", headers={"Authorization": "Bearer " + "x" * 40})
        allowed = await api.client.get("/status", headers=AUTH)
        stats_with = await postal_stats("--url", base, "--interval", "100ms", "--no-redis")
        stats_without = await postal_stats(
            "--url", base, "--interval", "100ms", "--no-redis", token=None
        )
    for refused in (anonymous, wrong):
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "unauthorized"
        for named in (key_prefix, node_of(redis_url), clean_database.rpartition("/")[2]):
            assert named not in refused.text
    assert allowed.status_code == 200
    assert allowed.json()["redis"]["key_prefix"] == key_prefix
    assert stats_with[0] == 0, stats_with[2]
    code, _, err = stats_without
    assert code == 1
    assert "answered HTTP 401" in err


@pytest.mark.redis_server
async def test_two_read_servers_are_two_nodes_in_metrics_status_and_stats(
    clean_database: str, key_prefix: str
) -> None:
    """READ_REDIS_URL lists two servers and writes go to the first (no replication between
    them: only who is shown matters here). /metrics, /status and `postal stats` show each
    server's pool and breaker as a node of its own, the first as a node of both roles."""
    servers = [RedisServer(), RedisServer()]
    try:
        for server in servers:
            server.start()
        first, second = (node_of(server.url) for server in servers)
        read_url = ",".join(server.url for server in servers)
        async with running_api(
            clean_database, read_url, key_prefix,
            WRITE_REDIS_URL=servers[0].url, REDIS_GET_DEADLINE="30s",
            READ_REDIS_POOL_SIZE="7", READ_REDIS_MIN_IDLE="2", READ_REDIS_MAX_IDLE="5",
        ) as api:  # fmt: skip
            for post_id in range(1, 7):  # missing posts: each read asks the cache first
                assert (await api.client.get(f"/api/v1/posts/{post_id}")).status_code == 404
            metrics = Scrape.parse((await api.client.get("/metrics")).text)
            status = (await api.client.get("/status", headers=AUTH)).json()
            async with over_http(api) as base:
                as_json = await postal_stats(
                    "--url", base, "--json", "--interval", "100ms", "--no-redis"
                )
                # Wide enough for every column: the table is asserted on its rows.
                as_table = await postal_stats(
                    "--url", base, "--interval", "100ms", "--no-redis", COLUMNS="200"
                )
    finally:
        for server in servers:
            server.cleanup()

    ops = "postal_cache_operations_total"
    assert metrics.total(ops, role="read", command="GET") == 6  # by role only: no node label
    assert not any(series == ops and "node" in dict(labels) for series, labels in metrics.samples)
    for node in (first, second):
        assert metrics.value("postal_pool_max_connections", role="read", node=node) == 7
        assert metrics.value("postal_pool_connections", role="read", node=node, state="idle") >= 2
        assert metrics.value("postal_pool_wait_seconds_count", role="read", node=node) == 0
        assert metrics.value("postal_cache_breaker_state", role="read", node=node) == 0
    assert metrics.value("postal_pool_max_connections", role="write", node=first) == 20
    assert metrics.label_values("postal_pool_max_connections", "node") == {first, second}
    assert not any(
        ("node", second) in labels and ("role", "write") in labels for _, labels in metrics.samples
    )  # writes go to the first only

    by_node = {(each["role"], each["node"]): each for each in status["cache"]["nodes"]}
    assert set(by_node) == {("read", first), ("read", second), ("write", first)}
    assert {each["breaker"] for each in by_node.values()} == {"closed"}
    assert status["cache"]["pools"]["read"]["max_size"] == 2 * 7  # the role: its nodes summed

    code, out, err = as_json
    assert code == 0, err
    rows = [
        (pool["role"], pool["node"], pool["max"]) for pool in json.loads(out)["summary"]["pools"]
    ]
    assert rows == sorted([("read", first, 7), ("read", second, 7), ("write", first, 20)])
    code, out, err = as_table
    assert code == 0, err
    cells = [line.replace("│", " ").split() for line in out.splitlines()]
    table = [row for row in cells if len(row) > 1 and row[1] in (first, second)]
    assert sorted((row[0], row[1], row[4], row[-1]) for row in table) == sorted(
        [("read", first, "7", "closed"), ("read", second, "7", "closed"),
         ("write", first, "20", "closed")]
    )  # fmt: skip


def test_stats_exits_1_when_postal_does_not_answer() -> None:
    port = free_loopback_port()  # nothing listens there
    result = CliRunner().invoke(cli_app, ["stats", "--url", f"http://127.0.0.1:{port}"])
    assert result.exit_code == 1
    assert f"127.0.0.1:{port}" in result.output
    assert "does not answer" in result.output


def test_stats_refuses_a_bad_interval() -> None:
    result = CliRunner().invoke(cli_app, ["stats", "--interval", "100"])
    assert result.exit_code == 2
    assert "--interval" in result.output
