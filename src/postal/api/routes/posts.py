"""Writes and history: create, update, delete, versions, restore. Thin: parse, call, shape.

Writes honour If-Match (a strong ETag `"v3"`, or `*`): a writer that read version 3 cannot
overwrite version 4 without seeing it first; the mismatch is a 412 with the current ETag.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request
from starlette.responses import Response

from postal.api.documents import PostOut, VersionOut, VersionPage
from postal.api.errors import ApiError
from postal.api.openapi import errors, ok
from postal.api.read_answer import REVALIDATE
from postal.api.routes.reads import DEFAULT_PAGE, MAX_PAGE
from postal.api.schemas import PostIn
from postal.posts.models import Post
from postal.posts.representation import etag, post_json, version_json, version_of_etag
from postal.posts.service import PostService

router = APIRouter(prefix="/api/v1/posts", tags=["posts"])

PostId = Annotated[int, Path(ge=1, le=2**63 - 1, description="The post's id")]
VersionNumber = Annotated[int, Path(ge=1, le=2**31 - 1, description="A version number")]
IfMatch = Annotated[
    str | None,
    Header(description='The ETag you read (`"v3"`), or `*`: the write fails with 412 otherwise'),
]
JSON = "application/json"
REVALIDATE_HEADERS = {"Cache-Control": REVALIDATE}
# Each route's own error answers; api/openapi.py adds what the middlewares answer (401, 403,
# 413 before the body is read, 503 overloaded, 500).
_DATABASE_DOWN = {503: "The database is unavailable: `database_unavailable`"}
_CREATE = {
    400: "Malformed JSON: `malformed_json`",
    413: "The post's body is over POSTAL_MAX_BODY_BYTES: `too_large`",
    422: "Invalid input, `field` names it: `invalid_type`, `too_short`, `too_long`,"
    " `unknown_field`, `nul_character`, `missing_field`, `invalid_value`",
    **_DATABASE_DOWN,
}
_UPDATE = {
    **_CREATE,
    400: "Malformed JSON (`malformed_json`), or several ETags in If-Match (`invalid_value`)",
    422: f"{_CREATE[422]}; or a bad post_id: `invalid_id`",
}
# Delete and restore have no body.
_BY_ID = {
    400: "Several ETags in If-Match: `invalid_value`",
    422: "A bad post_id or version, `field` names it: `invalid_id`, `out_of_range`, `invalid_type`",
    **_DATABASE_DOWN,
}
_NOT_FOUND = {404: "No such post: `post_not_found`"}
_VERSION_NOT_FOUND = {404: "No such post (`post_not_found`) or version (`version_not_found`)"}
_CONFLICT = {412: "If-Match does not name the current version: `version_conflict`"}
_READ = {
    422: "A bad path or query parameter, `field` names it: `invalid_id`, `out_of_range`,"
    " `invalid_type`, `invalid_value`, `too_long`, `unknown_field`",
    **_DATABASE_DOWN,
}
_THE_POST = "The post, at its new version; the ETag header names it"


def _service(request: Request) -> PostService:
    service: PostService = request.app.state.posts
    return service


def _expected_version(if_match: str | None) -> int | None:
    """The version If-Match requires; None when any version will do (no header, or `*`)."""
    if if_match is None or if_match.strip() == "*":
        return None
    versions = {version_of_etag(tag) for tag in if_match.split(",")} - {None}
    if not versions:  # nothing we ever sent: it cannot match the current version
        raise ApiError(412, "version_conflict", f"If-Match {if_match} names no version of ours")
    if len(versions) > 1:
        message = "If-Match with several ETags is not supported: send the one you read"
        raise ApiError(400, "invalid_value", message, field="If-Match")
    return versions.pop()


def _checked(request: Request, post: PostIn) -> PostIn:
    limit: int = request.app.state.settings.postal_max_body_bytes
    size = len(post.body.encode())
    if size > limit:
        message = f"body is {size} bytes; the limit is {limit}"
        raise ApiError(413, "too_large", message, field="body")
    return post


def _post_response(post: Post, status: int = 200) -> Response:
    headers = {"ETag": etag(post.version)}
    if status == 201:
        headers["Location"] = f"/api/v1/posts/{post.id}"
    return Response(post_json(post), status_code=status, media_type=JSON, headers=headers)


@router.post(
    "",
    status_code=201,
    operation_id="create_post",
    responses={
        201: ok("The post, version 1; Location names it, ETag its version", PostOut, etag=True),
        **errors(_CREATE),
    },
    summary="Create a post (version 1)",
)
async def create_post(request: Request, post: PostIn) -> Response:
    created = await _service(request).create(_checked(request, post).content())
    return _post_response(created, 201)


@router.put(
    "/{post_id}",
    operation_id="update_post",
    responses={200: ok(_THE_POST, PostOut, etag=True), **errors(_UPDATE | _NOT_FOUND | _CONFLICT)},
    summary="Replace a post's content (a new version)",
)
async def update_post(
    request: Request, post_id: PostId, post: PostIn, if_match: IfMatch = None
) -> Response:
    expected = _expected_version(if_match)
    content = _checked(request, post).content()
    updated = await _service(request).update(post_id, content, expected=expected)
    return _post_response(updated)


@router.delete(
    "/{post_id}",
    status_code=204,
    operation_id="delete_post",
    responses=errors(_BY_ID | _NOT_FOUND | _CONFLICT),
    summary="Delete a post",
)
async def delete_post(request: Request, post_id: PostId, if_match: IfMatch = None) -> Response:
    await _service(request).delete(post_id, expected=_expected_version(if_match))
    return Response(status_code=204)


PageSize = Annotated[int, Query(ge=1, le=MAX_PAGE, description="Versions per page")]
Cursor = Annotated[
    str | None, Query(max_length=64, description="next_cursor from the previous page")
]


@router.get(
    "/{post_id}/versions",
    operation_id="list_versions",
    responses={200: ok("A page of versions", VersionPage), **errors(_READ | _NOT_FOUND)},
    summary="A post's versions, oldest first, a page at a time, without their bodies",
)
async def list_versions(
    request: Request, post_id: PostId, limit: PageSize = DEFAULT_PAGE, cursor: Cursor = None
) -> Response:
    _refuse_unknown_parameters(request)
    body = await _service(request).version_page(post_id, limit=limit, cursor=cursor)
    return Response(body, media_type=JSON, headers=REVALIDATE_HEADERS)


def _refuse_unknown_parameters(request: Request) -> None:
    """As the list of posts does: a misspelt `limit` or `cursor` must not pass unnoticed."""
    unknown = set(request.query_params) - {"limit", "cursor"}
    if unknown:
        name = sorted(unknown)[0]
        raise ApiError(422, "unknown_field", f"unknown query parameter: {name}", field=name)


@router.get(
    "/{post_id}/versions/{version}",
    operation_id="get_version",
    responses={200: ok("The version", VersionOut), **errors(_READ | _VERSION_NOT_FOUND)},
    summary="One version of a post, its body too",
)
async def get_version(request: Request, post_id: PostId, version: VersionNumber) -> Response:
    found = await _service(request).version(post_id, version)
    # A version never changes, but a delete takes it away: revalidated, as every read is.
    return Response(version_json(found), media_type=JSON, headers=REVALIDATE_HEADERS)


@router.post(
    "/{post_id}/versions/{version}/restore",
    operation_id="restore_version",
    responses={
        200: ok(_THE_POST, PostOut, etag=True),
        **errors(_BY_ID | _VERSION_NOT_FOUND | _CONFLICT),
    },
    summary="Make an old version current again, as a new version",
)
async def restore_version(
    request: Request, post_id: PostId, version: VersionNumber, if_match: IfMatch = None
) -> Response:
    expected = _expected_version(if_match)
    restored = await _service(request).restore(post_id, version, expected=expected)
    return _post_response(restored)
