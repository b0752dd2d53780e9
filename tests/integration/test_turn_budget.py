"""The loop-turn budget (`api/turn_budget.py`) over the real app, on real PostgreSQL and Redis:
with a budget too small for more than one request a turn, a burst of reads is put off turn by
turn and every read is still answered; with the budget off, none is put off."""

from __future__ import annotations

import asyncio

from tests.integration.api_support import Api, running_api
from tests.support.metrics_text import Scrape

DEFERRED = "postal_http_requests_deferred_total"
BURST = 40


async def deferred(api: Api) -> float:
    response = await api.client.get("/metrics")
    assert response.status_code == 200
    return Scrape.parse(response.text).total(DEFERRED)


async def burst(api: Api) -> set[bytes]:
    """BURST reads of one cached post at once (one loop turn starts them all); their bodies."""
    post = await api.create(title="burst")
    url = f"/api/v1/posts/{post['id']}"
    assert (await api.client.get(url)).status_code == 200
    await api.settle()
    responses = await asyncio.gather(*(api.client.get(url) for _ in range(BURST)))
    assert {response.status_code for response in responses} == {200}
    return {response.content for response in responses}


async def test_a_burst_past_the_budget_is_put_off_and_all_of_it_answered(
    database_url: str, clean_database: None, redis_url: str, key_prefix: str
) -> None:
    env = {"POSTAL_TURN_BUDGET": "1us"}  # about one request's start a turn
    async with running_api(database_url, redis_url, key_prefix, **env) as api:
        before = await deferred(api)
        bodies = await burst(api)
        assert len(bodies) == 1  # the same post, whole, to every reader
        put_off = await deferred(api) - before
        assert put_off >= BURST // 2  # most of the burst waited a turn or more


async def test_with_the_budget_off_nothing_is_put_off(
    database_url: str, clean_database: None, redis_url: str, key_prefix: str
) -> None:
    async with running_api(database_url, redis_url, key_prefix, POSTAL_TURN_BUDGET="0") as api:
        await burst(api)
        assert await deferred(api) == 0


async def test_requests_put_off_count_against_admission(
    database_url: str, clean_database: None, redis_url: str, key_prefix: str
) -> None:
    # Put off, a request is in flight: with room for 5, a burst of 40 past a tiny budget has
    # the rest refused at once rather than queued without bound.
    env = {"POSTAL_TURN_BUDGET": "1us", "POSTAL_MAX_IN_FLIGHT": "5"}
    async with running_api(database_url, redis_url, key_prefix, **env) as api:
        post = await api.create(title="bounded")
        url = f"/api/v1/posts/{post['id']}"
        assert (await api.client.get(url)).status_code == 200
        await api.settle()
        responses = await asyncio.gather(*(api.client.get(url) for _ in range(BURST)))
        statuses = [response.status_code for response in responses]
        assert set(statuses) == {200, 503}
        assert statuses.count(200) >= 5
        assert all(
            response.json()["error"]["code"] == "overloaded"
            for response in responses
            if response.status_code == 503
        )
