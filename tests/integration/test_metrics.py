"""/metrics over the in-process app, on real PostgreSQL and Redis: each metric moves when it must.

Every test builds its own app, so its collectors start at zero and the counts are exact.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace

import pytest

from postal.cache import Invalidator, PoolTimeout, PoolWaitEvent, ReadThrough
from postal.observability.cache_metrics import instrument_cache
from postal.observability.metrics import CONTENT_TYPE, METRIC_NAMES, SERIES_NAMES, PostalMetrics
from postal_testing.cluster_set import ClusterSet
from postal_testing.proxy import FaultProxy
from postal_testing.redis_servers import free_port
from tests.integration.api_support import AUTH, Api, running_api
from tests.integration.helpers import eventually, make_client, small_profile
from tests.support.metrics_text import Scrape

OPS = "postal_cache_operations_total"
HTTP_COUNT = "postal_http_request_duration_seconds_count"
POST_ROUTE = "/api/v1/posts/{post_id}"


def node_names(api: Api, role: str) -> set[str]:
    """The `node` labels of the role's servers: one, or a cluster's masters."""
    return {node.name for node in api.state.cache.nodes(role)}


def labelled_nodes(metrics: Scrape, name: str, role: str) -> set[str]:
    return {
        dict(labels)["node"]
        for series, labels in metrics.samples
        if series == name and ("role", role) in labels
    }


async def scrape(api: Api) -> Scrape:
    response = await api.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE
    return Scrape.parse(response.text)


async def test_a_miss_then_a_hit_fill_and_invalidation_are_counted(api: Api) -> None:
    post = await api.create()
    url = f"/api/v1/posts/{post['id']}"
    assert (await api.client.get(url)).status_code == 200  # miss, then a background fill
    await api.settle()
    assert (await api.client.get(url)).status_code == 200  # hit
    metrics = await scrape(api)

    read_get = {"role": "read", "command": "GET"}
    assert metrics.value(OPS, **read_get, outcome="miss") == 1
    assert metrics.value(OPS, **read_get, outcome="hit") == 1
    assert metrics.value(OPS, **read_get, outcome="connection_error") == 0  # there from the start
    assert metrics.value("postal_cache_operation_seconds_count", **read_get) == 2
    assert metrics.value("postal_cache_fills_total", outcome="done") == 1
    assert metrics.value("postal_cache_invalidations_total", outcome="done") == 1  # the create

    # Both reads under the route's template, whichever lane answered; never the raw path.
    assert metrics.value(HTTP_COUNT, method="GET", route=POST_ROUTE, status="200") == 2
    assert metrics.value(HTTP_COUNT, method="POST", route="/api/v1/posts", status="201") == 1
    assert metrics.label_values(HTTP_COUNT, "route") == {"/api/v1/posts", POST_ROUTE}

    # The pools and breakers by node: the one Redis, or each master of the cluster.
    reads, writes = node_names(api, "read"), node_names(api, "write")
    for name in ("postal_pool_max_connections", "postal_cache_breaker_state"):
        assert labelled_nodes(metrics, name, "read") == reads, name
        assert labelled_nodes(metrics, name, "write") == writes, name
    for node in reads:
        assert metrics.value("postal_pool_max_connections", role="read", node=node) == 50
        assert metrics.value("postal_pool_connections", role="read", node=node, state="in_use") == 0
        assert metrics.value("postal_pool_timeouts_total", role="read", node=node) == 0
        assert metrics.value("postal_cache_breaker_state", role="read", node=node) == 0
    for node in writes:
        assert metrics.value("postal_pool_max_connections", role="write", node=node) == 20
    assert metrics.total("postal_pool_connections", role="read", state="idle") >= 1
    assert metrics.total("postal_pool_connections_opened_total", role="read") >= 10  # min idle

    updated = await api.client.put(
        url, json={"title": "Two", "body": "B2", "author": "ada"}, headers=AUTH
    )
    assert updated.status_code == 200
    after = await scrape(api)
    assert after.value("postal_cache_invalidations_total", outcome="done") == 2
    assert after.value(HTTP_COUNT, method="GET", route="/metrics", status="200") == 1


async def test_only_known_metric_names_and_no_unbounded_labels(api: Api) -> None:
    for post_id in range(1, 21):  # 20 ids that do not exist: one series
        assert (await api.client.get(f"/api/v1/posts/{post_id}")).status_code == 404
    for path in ("/wp-admin/setup.php", "/.env", "/api/v1/posts/1/x", "/api/v2/posts/7"):
        assert (await api.client.get(path)).status_code == 404
    assert (await api.client.get("/api/v1/posts/abc")).status_code == 422  # the Starlette route
    assert (await api.client.request("PROPFIND", "/healthz")).status_code in (401, 405)
    metrics = await scrape(api)

    assert metrics.value(HTTP_COUNT, method="GET", route=POST_ROUTE, status="404") == 20
    assert metrics.value(HTTP_COUNT, method="GET", route=POST_ROUTE, status="422") == 1
    assert metrics.value(HTTP_COUNT, method="GET", route="unmatched", status="404") == 4
    assert metrics.label_values(HTTP_COUNT, "method") == {"GET", "other"}
    # PROPFIND: refused by the write guard (no token), under the route its path names
    assert metrics.label_values(HTTP_COUNT, "route") == {POST_ROUTE, "/healthz", "unmatched"}
    names = {name for name, _labels in metrics.samples}
    postal_names = {name for name in names if name.startswith("postal_")}
    created = {name for name in postal_names if name.endswith("_created")}  # in-process only
    assert postal_names - created <= SERIES_NAMES
    assert {name.removesuffix("_total") for name in METRIC_NAMES} <= {
        re.sub(r"_(total|bucket|sum|count)$", "", name) for name in postal_names
    }  # every metric is exposed from the start


async def test_an_unreachable_redis_counts_connection_errors_and_opens_the_breaker(
    database_url: str, clean_database: None, key_prefix: str
) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    async with running_api(  # the breaker opens after 3 failures, and stays open
        database_url, closed, key_prefix,
        REDIS_BREAKER_WINDOW="0", REDIS_BREAKER_FAILURES="3", REDIS_BREAKER_COOLDOWN="60s",
    ) as api:  # fmt: skip
        for post_id in range(1, 9):  # missing posts: each read tries the cache first
            assert (await api.client.get(f"/api/v1/posts/{post_id}")).status_code == 404
        created = await api.client.post(
            "/api/v1/posts", json={"title": "T", "body": "B", "author": "a"}, headers=AUTH
        )
        assert created.status_code == 201  # the write succeeds; its invalidation does not
        metrics = await scrape(api)
        (node,) = node_names(api, "read")
    read_get = {"role": "read", "command": "GET"}
    assert metrics.value(OPS, **read_get, outcome="connection_error") == 3  # then it opened
    assert metrics.value(OPS, **read_get, outcome="circuit_open") == 5
    # timed: the 3 attempts only; refusals did no I/O and must not pull the percentiles down
    assert metrics.value("postal_cache_operation_seconds_count", **read_get) == 3
    assert node == closed.removeprefix("redis://").removesuffix("/0")
    assert metrics.value("postal_cache_breaker_state", role="read", node=node) == 2
    assert metrics.value("postal_cache_invalidations_total", outcome="failed") == 1
    assert metrics.value(OPS, **read_get, outcome="hit") == 0


async def test_a_black_holed_redis_counts_timeouts(
    database_url: str, clean_database: None, redis_url: str, key_prefix: str
) -> None:
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    async with (
        FaultProxy(port) as proxy,
        running_api(database_url, proxy.url, key_prefix, READ_REDIS_MIN_IDLE="1") as api,
    ):
        await proxy.black_hole()
        for post_id in (1, 2, 3):  # each waits out the 100 ms GET deadline, then the database
            assert (await api.client.get(f"/api/v1/posts/{post_id}")).status_code == 404
        metrics = await scrape(api)
        (node,) = node_names(api, "read")
        await proxy.pass_through()  # let the app close its connections quickly
    assert metrics.value(OPS, role="read", command="GET", outcome="timeout") == 3
    # below the threshold
    assert metrics.value("postal_cache_breaker_state", role="read", node=node) == 0


async def test_dns_lookups_are_counted_for_a_redis_by_name(
    database_url: str, clean_database: None, redis_url: str, key_prefix: str
) -> None:
    by_name = redis_url.replace("127.0.0.1", "localhost")
    assert "localhost" in by_name
    async with running_api(database_url, by_name, key_prefix) as api:
        metrics = await scrape(api)
        dns = api.state.cache.dns.stats()
    # Both pools' first dials (15 by default) share one lookup: the rest are cache hits.
    assert metrics.value("postal_dns_lookups_total", outcome="resolved") == dns.resolved >= 1
    assert metrics.value("postal_dns_lookups_total", outcome="cached") == dns.cached >= 1
    assert metrics.value("postal_dns_lookups_total", outcome="failed") == 0


async def test_pool_waits_are_observed_when_readers_queue(
    database_url: str, clean_database: None, redis_url: str, key_prefix: str
) -> None:
    async with running_api(
        database_url, redis_url, key_prefix,
        READ_REDIS_POOL_SIZE="1", READ_REDIS_MIN_IDLE="1", READ_REDIS_MAX_IDLE="1",
        READ_REDIS_AUTOPIPELINE="false",  # reads through the pool, whose waits are the point
    ) as api:  # fmt: skip
        post = await api.create()
        url = f"/api/v1/posts/{post['id']}"
        await api.client.get(url)
        await api.settle()
        replies = await asyncio.gather(*(api.client.get(url) for _ in range(30)))
        assert {reply.status_code for reply in replies} == {200}
        metrics = await scrape(api)
        waits = api.state.cache.pool("read").stats().waits
        (node,) = node_names(api, "read")
    assert metrics.value("postal_pool_max_connections", role="read", node=node) == 1
    assert waits > 0  # 30 readers on one connection: most queued
    assert metrics.value("postal_pool_wait_seconds_count", role="read", node=node) == waits
    assert metrics.value("postal_pool_wait_seconds_sum", role="read", node=node) > 0


async def test_a_clusters_nodes_get_their_series_as_the_client_learns_them(
    redis_cluster: ClusterSet, key_prefix: str
) -> None:
    """Instrumented before it starts, a cluster client knows no node yet, so no pool series; once
    it has read the slot table, each master has its own, and the checkouts that queued on a
    node's one-connection pool are observed under that node."""
    # Reads through the pool (the read pipeline takes no pooled connection).
    profile = replace(small_profile(max_size=1, min_idle=1, max_idle=1), read_pipeline=None)
    cache = make_client(redis_cluster.url, key_prefix, profile)
    metrics = PostalMetrics()
    instrument_cache(metrics, cache, ReadThrough(cache), Invalidator(cache, give_up_after=1.0))
    before = Scrape.parse(metrics.render().decode())
    async with cache:
        readers = [cache.get("one-key", timeout=5.0) for _ in range(20)]
        assert await asyncio.gather(*readers) == [None] * 20  # on one node's single connection
        after = Scrape.parse(metrics.render().decode())
        waits = {node.name: node.pool.stats().waits for node in cache.nodes("read")}
    assert before.label_values("postal_pool_max_connections", "node") == set()
    masters = {f"{server.host}:{server.port}" for server in redis_cluster.masters()}
    assert set(waits) == masters
    for role in ("read", "write"):
        assert labelled_nodes(after, "postal_pool_max_connections", role) == masters, role
        assert labelled_nodes(after, "postal_cache_breaker_state", role) == masters, role
    assert sum(waits.values()) > 0  # 20 readers on one connection: most queued
    count = "postal_pool_wait_seconds_count"
    for node, queued in waits.items():
        assert after.total(count, role="read", node=node) == queued, node


async def test_no_secret_reaches_the_metrics(
    database_url: str, clean_database: None, key_prefix: str
) -> None:
    password = "pa55-metrics-secret"
    url = f"redis://:{password}@127.0.0.1:{free_port()}/0"
    async with running_api(database_url, url, key_prefix) as api:
        assert (await api.client.get("/api/v1/posts/1")).status_code == 404
        text = (await api.client.get("/metrics")).text
    assert "postal_cache_operations_total" in text
    assert password not in text
    assert AUTH["Authorization"].split()[1] not in text
    assert "redis://" not in text


async def test_the_pool_reports_each_queued_checkout_served_or_not(
    redis_url: str, key_prefix: str
) -> None:
    # Reads through the pool (the read pipeline takes no pooled connection).
    profile = replace(small_profile(max_size=1, min_idle=1, max_idle=1), read_pipeline=None)
    events: list[PoolWaitEvent] = []
    async with make_client(redis_url, key_prefix, profile) as cache:
        pool = cache.pool("read")
        pool.subscribe_waits(events.append)
        assert (await cache.get("k")) is None  # the idle connection: no wait
        held = await pool.get_connection()
        with pytest.raises(PoolTimeout):
            await cache.get("k", timeout=0.05)  # queued, then its deadline passed
        reader = asyncio.create_task(cache.get("k", timeout=5.0))
        await eventually(lambda: pool.stats().waiting == 1)
        await pool.release(held)
        assert await reader is None  # queued, then served the released connection
        waits = pool.stats().waits
    node = redis_url.removeprefix("redis://").removesuffix("/0")
    assert [(event.role, event.node, event.served) for event in events] == [
        ("read", node, False),
        ("read", node, True),
    ]
    assert len(events) == waits
    assert all(event.waited > 0 for event in events)


async def test_requests_the_write_guard_refuses_keep_their_route_template(api: Api) -> None:
    """A 401 or a 413 is answered before the router runs: still labelled with the route the
    request was for (the import's own limit included), and scanners still fold into one."""
    document = {"title": "T", "body": "B", "author": "a"}
    assert (await api.client.post("/api/v1/posts", json=document)).status_code == 401
    assert (await api.client.put("/api/v1/posts/7", json=document)).status_code == 401
    oversized = {**AUTH, "content-type": "text/csv", "content-length": str(2**40)}
    refused = await api.client.post("/api/v1/posts/import", content=b"id\n", headers=oversized)
    assert refused.status_code == 413
    for path in ("/wp-login.php", "/api/v1/posts/7/x", "/cgi-bin/x"):
        assert (await api.client.post(path, content=b"x")).status_code == 401
    metrics = await scrape(api)

    assert metrics.value(HTTP_COUNT, method="POST", route="/api/v1/posts", status="401") == 1
    assert metrics.value(HTTP_COUNT, method="PUT", route=POST_ROUTE, status="401") == 1
    assert metrics.value(HTTP_COUNT, method="POST", route="/api/v1/posts/import", status="413") == 1
    assert metrics.value(HTTP_COUNT, method="POST", route="unmatched", status="401") == 3
    assert metrics.label_values(HTTP_COUNT, "route") == {
        "/api/v1/posts", POST_ROUTE, "/api/v1/posts/import", "unmatched",
    }  # fmt: skip
