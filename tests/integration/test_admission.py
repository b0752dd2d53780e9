"""Admission control over the real app (`api/admission.py`), on real PostgreSQL and Redis.

The app is built with `POSTAL_MAX_IN_FLIGHT=2`, over a repository whose loads can be held: two
reads of uncached posts are held in the database load, so two requests are in flight, and what
comes next meets the bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from postal.api.fast_reads import FastReads
from tests.integration.api_support import AUTH, Api, GatedRepository, running_gated
from tests.integration.helpers import eventually
from tests.support.metrics_text import Scrape

LIMIT = 2
REFUSED = "postal_http_requests_refused_total"
HTTP_COUNT = "postal_http_request_duration_seconds_count"


@pytest.fixture
async def bounded(
    database_url: str, clean_database: None, redis_url: str, key_prefix: str
) -> AsyncIterator[tuple[Api, GatedRepository]]:
    env = {"POSTAL_MAX_IN_FLIGHT": str(LIMIT)}
    async with running_gated(database_url, redis_url, key_prefix, **env) as running:
        yield running


def outermost(api: Api) -> FastReads:
    lane = api.app.middleware_stack  # built by the app's first request
    assert isinstance(lane, FastReads)
    return lane


async def scrape(api: Api) -> Scrape:
    response = await api.client.get("/metrics")
    assert response.status_code == 200
    return Scrape.parse(response.text)


def assert_refused(response: httpx.Response) -> None:
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == "overloaded"
    assert response.json()["error"]["message"]
    assert response.headers["x-request-id"]


async def test_past_the_bound_requests_are_refused_at_once_and_probes_still_answer(
    bounded: tuple[Api, GatedRepository],
) -> None:
    api, repository = bounded
    cached = await api.create(title="cached")
    cached_url = f"/api/v1/posts/{cached['id']}"
    assert (await api.client.get(cached_url)).status_code == 200
    await api.settle()  # answered from the cache by the fast lane from here on
    slow = [await api.create(title=f"slow {n}") for n in range(LIMIT)]
    lane = outermost(api)
    assert (lane.max_in_flight, lane.in_flight) == (LIMIT, 0)

    # Two reads of uncached posts, held in their database loads: the bound is reached.
    repository.gate = True
    held = [asyncio.create_task(api.client.get(f"/api/v1/posts/{post['id']}")) for post in slow]
    await eventually(lambda: lane.in_flight == LIMIT)

    # A third request is refused at once, and counted.
    third = await api.client.get("/api/v1/posts", headers={"X-Request-ID": "third-one"})
    assert_refused(third)
    assert third.headers["x-request-id"] == "third-one"
    assert (await scrape(api)).value(REFUSED) == 1

    # The fast lane's cached read is refused the same way, before the cache is asked.
    hits_before = api.state.reads.stats().hits
    assert_refused(await api.client.get(cached_url))
    assert api.state.reads.stats().hits == hits_before

    # A write is refused without its body being read.
    chunks_read = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal chunks_read
        chunks_read += 1
        yield b'{"title": "never", "body": "read", "author": "ada"}'

    headers = {**AUTH, "Content-Type": "application/json"}
    assert_refused(await api.client.post("/api/v1/posts", content=body(), headers=headers))
    assert chunks_read == 0

    # Probes and the scrape are answered, and do not count against the bound.
    assert (await api.client.get("/healthz")).status_code == 200
    ready = await api.client.get("/readyz")
    assert ready.status_code == 200, ready.text
    overloaded = await scrape(api)
    assert overloaded.value(REFUSED) == 3
    assert overloaded.total(HTTP_COUNT, status="503") == 0  # refusals are not timed
    assert lane.in_flight == LIMIT

    # Released, the held requests complete, and a new request is admitted again.
    repository.release.set()
    responses = await asyncio.gather(*held)
    assert [response.status_code for response in responses] == [200] * LIMIT
    assert [response.json()["title"] for response in responses] == ["slow 0", "slow 1"]
    assert lane.in_flight == 0
    assert (await api.client.get(cached_url)).status_code == 200
    assert (await api.client.get("/api/v1/posts")).status_code == 200
    assert (await scrape(api)).value(REFUSED) == 3
