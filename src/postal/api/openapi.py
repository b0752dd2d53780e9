"""The OpenAPI document: the hand-written read paths, what the middlewares answer, the token.

FastAPI documents only its own routes; the hot reads are Starlette routes (see `routes/reads`),
so their paths are added here, next to the generated ones, once, when /openapi.json is first
asked for. Every answer is described by a model of `api/documents.py`, the error shape included;
the answers no route gives itself (401, 403 `loopback_only`, 413, 503 `overloaded`, 500) are
added to every operation they can reach, here, from the same settings the middlewares use, and
so is the bearer requirement: Swagger UI's Authorize button then sends the token with writes.
`tests/e2e/test_openapi_conformance.py` holds the document to what the service sends.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from postal.api.admission import UNCOUNTED_PATHS
from postal.api.documents import ErrorBody, ImportRefusal, PostOut, PostPage
from postal.posts.models import MAX_ID

# The bearer token, as `WriteGuard` (api/guards.py) checks it.
SECURITY_SCHEME = "bearer"
_SECURITY_SCHEMES = {
    SECURITY_SCHEME: {
        "type": "http",
        "scheme": "bearer",
        "description": "POSTAL_API_TOKEN: every write needs it, and `GET /status`"
        " (`/metrics` too with POSTAL_METRICS_ACCESS=token)",
    }
}
_READ_METHODS = frozenset({"get", "head", "options"})
_ETAG = {"ETag": {"description": 'The version it is at: `"v3"`', "schema": {"type": "string"}}}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again",
        "required": True,
        "schema": {"type": "integer"},
    }
}
# What the middlewares answer on their own, before a route runs: added to each operation by
# `_middleware_answers`, so that no route has to repeat them.
LOOPBACK_ONLY = "POSTAL_API_TOKEN is unset and the client is not on this machine: `loopback_only`"
UNAUTHORIZED = "Missing or wrong `Authorization: Bearer <token>`: `unauthorized`"
TOO_LARGE = "The request body is over the limit: `too_large`"
OVERLOADED = "This worker has too many requests in flight: `overloaded`"
INTERNAL = "An unexpected error, logged by the server: `internal_error`"


def _schema_ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def json_answer(description: str, model: type[BaseModel], **extra: Any) -> dict[str, Any]:
    """A response object for a hand-written path (or a post-processed one)."""
    return {
        "description": description,
        "content": {"application/json": {"schema": _schema_ref(model)}},
        **extra,
    }


def errors(described: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route's own error answers, each in the error shape: status ->
    description (say the codes). A 503 carries Retry-After."""
    answers: dict[int | str, dict[str, Any]] = {}
    for status, description in described.items():
        answer: dict[str, Any] = {"description": description, "model": ErrorBody}
        if status == 503:
            answer["headers"] = _RETRY_AFTER
        answers[status] = answer
    return answers


def ok(description: str, model: type[BaseModel], *, etag: bool = False) -> dict[str, Any]:
    """A `responses=` entry for a route's success answer: documentation only, the route still
    sends its own bytes."""
    answer: dict[str, Any] = {"description": description, "model": model}
    if etag:
        answer["headers"] = {"ETag": {**_ETAG["ETag"], "required": True}}
    return answer


_POST_ID_ERRORS = {
    "404": json_answer("No such post: `post_not_found`", ErrorBody),
    "422": json_answer("post_id is not a valid id: `invalid_id`", ErrorBody),
}
_DATABASE_DOWN = json_answer(
    "The database is unavailable and the answer is not cached: `database_unavailable`",
    ErrorBody,
    headers=_RETRY_AFTER,
)
READ_PATHS: dict[str, dict[str, Any]] = {
    "/api/v1/posts/{post_id}": {
        "get": {
            "tags": ["posts"],
            "summary": "Read a post (served from the cache when it can be)",
            "operationId": "get_post",
            "parameters": [
                {
                    "name": "post_id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
                },
                {
                    "name": "If-None-Match",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string"},
                    "description": 'An ETag you hold (`"v3"`): 304 if it is still current',
                },
            ],
            "responses": {
                "200": json_answer(
                    "The post; the ETag header names its version",
                    PostOut,
                    headers={"ETag": {**_ETAG["ETag"], "required": True}},
                ),
                "304": {
                    "description": "Not modified since the ETag in If-None-Match",
                    "headers": _ETAG,
                },
                **_POST_ID_ERRORS,
                "503": _DATABASE_DOWN,
            },
        }
    },
    "/api/v1/posts": {
        "get": {
            "tags": ["posts"],
            "summary": "List posts, newest first, a page at a time (keyset pagination)",
            "operationId": "list_posts",
            "parameters": [
                {
                    "name": "limit",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
                },
                {
                    "name": "cursor",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string"},
                    "description": "next_cursor from the previous page (of the same filter)",
                },
                {
                    "name": "author",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string", "minLength": 1, "maxLength": 100},
                    "description": "Only this author's posts (exact, case-sensitive)",
                },
                {
                    "name": "tag",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string", "minLength": 1, "maxLength": 50},
                    "description": "Only posts with this tag (exact, case-sensitive)",
                },
                {
                    "name": "If-None-Match",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string"},
                    "description": "A page's ETag: 304 when the page is still the same",
                },
            ],
            "responses": {
                "200": json_answer(
                    "A page: items, and next_cursor (null on the last page)", PostPage
                ),
                "304": {"description": "The page is still the one If-None-Match names"},
                "422": json_answer(
                    "Bad limit, cursor, author or tag, or an unknown parameter: `invalid_value`,"
                    " `unknown_field`",
                    ErrorBody,
                ),
                "503": _DATABASE_DOWN,
            },
        }
    },
}


# The models the hand-written paths name, and the import's 422 (an anyOf FastAPI cannot make).
DOCUMENTED_MODELS: tuple[type[BaseModel], ...] = (PostOut, PostPage, ErrorBody, ImportRefusal)


def _middleware_answers(
    path: str, method: str, operation: dict[str, Any], *, token_set: bool, guarded: frozenset[str]
) -> None:
    """Add to `operation` what the middlewares may answer for it (api/guards.py,
    api/loopback.py, api/admission.py) and the 500 of `errors.install_error_handlers`, with the
    security requirement where WriteGuard asks for the token."""
    responses: dict[str, Any] = operation.setdefault("responses", {})

    def add(status: int, description: str, **extra: Any) -> None:
        known = responses.get(str(status))
        if known is None:
            responses[str(status)] = json_answer(description, ErrorBody, **extra)
        elif description not in known["description"]:
            known["description"] = f"{known['description']}; or: {description}"

    write = method not in _READ_METHODS
    if token_set and (write or path in guarded):
        operation["security"] = [{SECURITY_SCHEME: []}]
        add(401, UNAUTHORIZED, headers={"WWW-Authenticate": {"schema": {"type": "string"}}})
    if not token_set:
        add(403, LOOPBACK_ONLY)
    if write:
        add(413, TOO_LARGE)
    add(500, INTERNAL)
    if path not in UNCOUNTED_PATHS:
        add(503, OVERLOADED, headers=_RETRY_AFTER)


def install_openapi(app: FastAPI, *, token_set: bool, guarded_reads: frozenset[str]) -> None:
    """`token_set` and `guarded_reads` as WriteGuard has them: they decide which operations
    carry the bearer requirement (and a 401), or, with no token, the 403 of loopback-only mode."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, routes=app.routes, description=app.description
            )
            for path, operations in READ_PATHS.items():
                schema["paths"].setdefault(path, {}).update(copy.deepcopy(operations))
            components = schema.setdefault("components", {})
            _, definitions = models_json_schema(
                [(model, "serialization") for model in DOCUMENTED_MODELS],
                ref_template="#/components/schemas/{model}",
            )
            schemas = components.setdefault("schemas", {})
            for name, definition in definitions["$defs"].items():
                schemas.setdefault(name, definition)
            components["securitySchemes"] = _SECURITY_SCHEMES
            for path, operations in schema["paths"].items():
                for method, operation in operations.items():
                    _middleware_answers(
                        path, method, operation, token_set=token_set, guarded=guarded_reads
                    )
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
