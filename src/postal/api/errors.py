"""The one place where errors become HTTP answers, all in one shape.

Every error a client sees is `{"error": {"code": ..., "message": ..., "field": ...}}` (`field`
only when one input is to blame), with a 4xx status for bad requests and 503 with Retry-After
when the database is unavailable. Unknown routes and methods answer in the same shape.

While the database is down, reads of what is cached are still answered (see `readiness`); what
needs the database gets `database_unavailable`, whose message says why this request needed it
(a write, or a read of what is not cached). In an outage that is every miss and every write, so
its log line is rate-limited: one a second at most, saying how many were left out.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import Match

from postal.observability.logging import LineBudget
from postal.posts.errors import (
    DatabaseUnavailable,
    InvalidCursor,
    PostNotFound,
    VersionConflict,
    VersionNotFound,
)
from postal.posts.representation import etag

logger = logging.getLogger("postal.api")

RETRY_AFTER_SECONDS = 1  # a database blip or failover usually clears within a second or two
JSON = "application/json"
# Why a request needed the database, in `database_unavailable`'s message.
WRITES_NEED_IT = "writes need it"
NOT_CACHED = "this read is not in the cache"
SAFE_METHODS = frozenset({"GET", "HEAD"})
# The process's outage log: one line a second, however many requests fail (per process).
_outage_lines = LineBudget(per_second=1.0)


class ApiError(Exception):
    """An error the API answers as it is: status, code, message, the field to blame."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers


class RequestTooLarge(HTTPException):
    """A request body over the limit. An HTTPException so that FastAPI's body reader re-raises it
    as it is instead of turning it into a 400."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than the limit of {limit} bytes")


def error_body(code: str, message: str, *, field: str | None = None) -> bytes:
    """The bytes of every error answer, encoded as Starlette's JSONResponse encodes them, for
    the callers that send bytes themselves (`api/read_answer.py`)."""
    error: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        error["field"] = field
    document = {"error": error}
    return json.dumps(document, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body = error_body(code, message, field=field)
    return Response(body, status_code=status, headers=headers, media_type=JSON)


def database_unavailable(exc: Exception, reason: str = WRITES_NEED_IT) -> Response:
    """503 with Retry-After, logged (rate-limited): what every route answers when the database
    is away. `reason` says why the request needed it (`WRITES_NEED_IT`, `NOT_CACHED`, or which
    post is not cached)."""
    left_out = _outage_lines.take()
    if left_out is not None:
        fields = {"suppressed": left_out} if left_out else None
        logger.warning("database unavailable: %s", exc, extra=fields)
    return error_response(
        503,
        "database_unavailable",
        f"the database is unavailable, and {reason}; retry shortly",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def not_cached(post_id: int) -> str:
    """`database_unavailable`'s reason for a read of one post."""
    return f"post {post_id} is not in the cache"


def internal_error() -> Response:
    """500 for an unexpected error, in the same shape; whoever caught the error logs it."""
    return error_response(500, "internal_error", "an unexpected error; it has been logged")


# pydantic's error types -> our codes; anything else is "invalid_value"
_CODES = {
    "extra_forbidden": "unknown_field",
    "missing": "missing_field",
    "string_too_short": "too_short",
    "string_too_long": "too_long",
    "too_short": "too_short",
    "too_long": "too_long",
    "greater_than_equal": "out_of_range",
    "less_than_equal": "out_of_range",
    "nul_character": "nul_character",  # the CSV import's reason for the same rule
}


def _validation_error(exc: RequestValidationError) -> Response:
    errors = exc.errors()
    if any(error["type"] == "json_invalid" for error in errors):
        return error_response(400, "malformed_json", "the request body is not valid JSON")
    first = errors[0]
    location = [str(part) for part in first["loc"]]
    source, path = (location[0], location[1:]) if location else ("body", [])
    field = ".".join(path) or None
    kind = first["type"]
    if source == "path" and path == ["post_id"]:
        return error_response(422, "invalid_id", ID_MESSAGE, field="post_id")
    if source == "body" and not path:
        return error_response(422, "invalid_type", "the request body must be a JSON object")
    if kind.endswith(("_type", "_parsing")):
        code = "invalid_type"
    else:
        code = _CODES.get(kind, "invalid_value")
    message = f"{field}: {first['msg']}" if field else str(first["msg"])
    return error_response(422, code, message, field=field)


ID_MESSAGE = "post_id must be a whole number from 1 to 9223372036854775807"


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route takes on this path. Starlette's 405 names only the methods of
    the first route that matched the path, and a post's path has two: the Starlette read
    (`routes/reads.py`) and FastAPI's PUT and DELETE (`routes/posts.py`). Each method is tried
    on every route through `matches`, the routes' public interface (FastAPI wraps included
    routers in a route of its own)."""
    routes = request.app.router.routes
    return [
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    ]


def install_error_handlers(app: FastAPI) -> None:
    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(
            exc.status, exc.code, exc.message, field=exc.field, headers=exc.headers
        )

    async def validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return _validation_error(exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        headers = dict(exc.headers or {})
        if exc.status_code == 404:
            message = f"no such route: {request.method} {request.url.path}"
            return error_response(404, "not_found", message, headers=headers)
        if exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
            headers["Allow"] = ", ".join(allowed_methods(request))
            return error_response(405, "method_not_allowed", message, headers=headers)
        if exc.status_code == 413:
            return error_response(413, "too_large", str(exc.detail), headers=headers)
        return error_response(exc.status_code, "http_error", str(exc.detail), headers=headers)

    async def not_found(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, PostNotFound | VersionNotFound)
        code = "post_not_found" if isinstance(exc, PostNotFound) else "version_not_found"
        return error_response(404, code, str(exc))

    async def conflict(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, VersionConflict)
        headers = {"ETag": etag(exc.current)}
        return error_response(412, "version_conflict", str(exc), headers=headers)

    async def bad_cursor(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, InvalidCursor)
        return error_response(422, "invalid_value", str(exc), field="cursor")

    async def database_down(request: Request, exc: Exception) -> Response:
        reason = NOT_CACHED if request.method in SAFE_METHODS else WRITES_NEED_IT
        return database_unavailable(exc, reason)

    async def unexpected(request: Request, exc: Exception) -> Response:
        # Starlette's ServerErrorMiddleware sends this, then re-raises for the server to log.
        return internal_error()

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(PostNotFound, not_found)
    app.add_exception_handler(VersionNotFound, not_found)
    app.add_exception_handler(VersionConflict, conflict)
    app.add_exception_handler(InvalidCursor, bad_cursor)
    app.add_exception_handler(DatabaseUnavailable, database_down)
    app.add_exception_handler(Exception, unexpected)  # the 500 in the same shape
