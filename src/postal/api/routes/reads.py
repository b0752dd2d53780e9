"""The hot read routes, as plain Starlette routes: no dependency chain, no response model.

A cache hit is answered with the cached bytes as they are: FastAPI's request handling (dependency
resolution, validation, response serialisation) would cost more than the Redis round trip itself.
They are documented in the OpenAPI schema by hand (`api/openapi.py`). Most requests for one post
never reach `get_post`: `api/fast_reads.py` answers them first, with the same `read_answer`.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from postal.api.errors import ID_MESSAGE, ApiError, database_unavailable, not_cached
from postal.api.read_answer import read_answer
from postal.posts.errors import DatabaseUnavailable
from postal.posts.models import MAX_ID
from postal.posts.service import PostService

DEFAULT_PAGE = 20
MAX_PAGE = 100
JSON = "application/json"


def post_id_or_none(text: str) -> int | None:
    """The id a path segment names, or None. Leading zeros are allowed, as FastAPI's int
    parameters on the write routes allow them. The length is checked before `int()`: a
    5,000-digit number is an error to Python, and costs time to convert."""
    if not (text.isascii() and text.isdigit()):
        return None
    digits = text.lstrip("0")
    if not digits or len(digits) > 19:
        return None
    post_id = int(digits)
    return post_id if 1 <= post_id <= MAX_ID else None


def parse_post_id(text: str) -> int:
    post_id = post_id_or_none(text)
    if post_id is None:
        raise ApiError(422, "invalid_id", ID_MESSAGE, field="post_id")
    return post_id


async def get_post(request: Request) -> Response:
    service: PostService = request.app.state.posts
    post_id = parse_post_id(request.path_params["post_id"])
    try:
        entry = await service.read_post(post_id)
    except DatabaseUnavailable as exc:  # said as the fast lane says it
        return database_unavailable(exc, not_cached(post_id))
    status, headers, body = read_answer(post_id, entry, request.scope["headers"])
    response = Response(body, status_code=status)
    response.raw_headers = headers  # as they are, so that both entrances send the same bytes
    return response


def page_size(text: str | None) -> int:
    """A page's `limit`: 1 to MAX_PAGE, DEFAULT_PAGE when absent; anything else is a 422."""
    if text is None:
        return DEFAULT_PAGE
    if not (text.isascii() and text.isdigit()) or len(text) > 3 or not 1 <= int(text) <= MAX_PAGE:
        message = f"limit must be a whole number from 1 to {MAX_PAGE}"
        raise ApiError(422, "invalid_value", message, field="limit")
    return int(text)


async def list_posts(request: Request) -> Response:
    service: PostService = request.app.state.posts
    query = request.query_params
    unknown = set(query) - {"limit", "cursor"}
    if unknown:
        name = sorted(unknown)[0]
        raise ApiError(422, "unknown_field", f"unknown query parameter: {name}", field=name)
    body = await service.read_page(limit=page_size(query.get("limit")), cursor=query.get("cursor"))
    return Response(body, media_type=JSON)


routes = [
    Route("/api/v1/posts/{post_id}", get_post, methods=["GET"], name="get_post"),
    Route("/api/v1/posts", list_posts, methods=["GET"], name="list_posts"),
]
