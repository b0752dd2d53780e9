"""The two entrances of `GET /api/v1/posts/{id}` give the same bytes: the fast lane in front of
FastAPI's stack (`api/fast_reads.py`), and the Starlette route behind it (`routes/reads.py`).

Real PostgreSQL and real Redis, as in test_posts_api.py. The route is reached by taking the
fast lane out of the app's middleware stack for a while: the rest of the stack (request ids,
metrics, FastAPI's own layers) is the one every other request goes through.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from fastapi import FastAPI

from postal.api.fast_reads import FastReads
from tests.integration.api_support import Api

REQUEST_ID = "same-id-for-both"  # echoed by both, so their headers can be compared whole


@contextmanager
def without_the_fast_lane(app: FastAPI) -> Iterator[None]:
    lane = app.middleware_stack  # built by the app's first request
    assert isinstance(lane, FastReads)
    app.middleware_stack = lane.app
    try:
        yield
    finally:
        app.middleware_stack = lane


Request = tuple[str, list[tuple[str, str]]]  # path, headers


async def get_each(api: Api, requests: list[Request]) -> list[httpx.Response]:
    responses = []
    for path, headers in requests:
        with_id = [("X-Request-ID", REQUEST_ID), *headers]
        responses.append(await api.client.get(path, headers=with_id))
    return responses


def answer(response: httpx.Response) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    return response.status_code, response.headers.raw, response.content


async def test_the_fast_lane_and_the_route_answer_with_the_same_bytes(api: Api) -> None:
    post = await api.create(title="Grüße", body="both ways")
    url = f"/api/v1/posts/{post['id']}"
    missing = "/api/v1/posts/424242"
    assert (await api.client.get(url)).status_code == 200
    assert (await api.client.get(missing)).status_code == 404
    await api.settle()  # both answered from the cache from here on
    requests: list[Request] = [
        (url, []),
        (url, [("If-None-Match", '"v1"')]),
        (url, [("If-None-Match", 'W/"v1"')]),
        (url, [("If-None-Match", '"v0", "v1"')]),
        (url, [("If-None-Match", "*")]),
        (url, [("If-None-Match", '"v0"')]),
        (url, [("If-None-Match", '"v0"'), ("If-None-Match", '"v1"')]),
        (missing, []),
        (missing, [("If-None-Match", "*")]),
    ]
    by_lane = await get_each(api, requests)
    with without_the_fast_lane(api.app):
        by_route = await get_each(api, requests)
    statuses = [response.status_code for response in by_lane]
    assert statuses == [200, 304, 304, 304, 304, 200, 304, 404, 404]
    for request, lane, route in zip(requests, by_lane, by_route, strict=True):
        assert answer(lane) == answer(route), request
