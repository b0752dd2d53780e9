"""The hot read routes, as plain Starlette routes: no dependency chain, no response model.

A cache hit is answered with the cached bytes as they are: FastAPI's request handling (dependency
resolution, validation, response serialisation) would cost more than the Redis round trip itself.
They are documented in the OpenAPI schema by hand (`api/openapi.py`). Most requests for one post
never reach `get_post`: `api/fast_reads.py` answers them first, with the same `read_answer`.
"""

from __future__ import annotations

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from postal.api.errors import ID_MESSAGE, ApiError, database_unavailable, not_cached
from postal.api.read_answer import REVALIDATE, etag_matches, read_answer
from postal.posts.errors import DatabaseUnavailable
from postal.posts.models import (
    FILTER_FIELDS,
    MAX_ID,
    InvalidFilter,
    ListFilter,
    filter_value,
)
from postal.posts.service import PostService

DEFAULT_PAGE = 20
MAX_PAGE = 100
JSON = "application/json"
LIST_PARAMETERS = {"limit", "cursor", *FILTER_FIELDS}


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


def list_filter(query: QueryParams) -> ListFilter:
    """The filter `?author=` and `?tag=` ask for; each at most once, bounded as `filter_value`
    says (422 otherwise). Absent: no condition."""
    values: dict[str, str] = {}
    for field in FILTER_FIELDS:
        given = query.getlist(field)
        if len(given) > 1:
            raise ApiError(422, "invalid_value", f"{field} may be given once", field=field)
        if given:
            try:
                values[field] = filter_value(field, given[0])
            except InvalidFilter as error:
                raise ApiError(422, "invalid_value", error.message, field=field) from None
    return ListFilter(**values)


async def list_posts(request: Request) -> Response:
    service: PostService = request.app.state.posts
    query = request.query_params
    unknown = set(query) - LIST_PARAMETERS
    if unknown:
        name = sorted(unknown)[0]
        raise ApiError(422, "unknown_field", f"unknown query parameter: {name}", field=name)
    entry = await service.read_page(
        limit=page_size(query.get("limit")), cursor=query.get("cursor"), matching=list_filter(query)
    )
    assert entry.etag is not None  # pages always have one
    headers = {"ETag": entry.etag, "Cache-Control": REVALIDATE}
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None and etag_matches(if_none_match, entry.etag):
        return Response(status_code=304, headers=headers)
    return Response(entry.body, media_type=JSON, headers=headers)


routes = [
    Route("/api/v1/posts/{post_id}", get_post, methods=["GET"], name="get_post"),
    Route("/api/v1/posts", list_posts, methods=["GET"], name="list_posts"),
]
