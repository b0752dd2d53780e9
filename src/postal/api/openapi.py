"""The OpenAPI schema, with the hand-written entries for the plain Starlette read routes.

FastAPI documents only its own routes; the hot reads are Starlette routes (see `routes/reads`),
so their paths are added here, next to the generated ones, once, when /openapi.json is first
asked for.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

_ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "field": {"type": "string"},
            },
            "required": ["code", "message"],
        }
    },
}
_ERROR = {"content": {"application/json": {"schema": _ERROR_SCHEMA}}}
_POST_SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "title": {"type": "string"},
        "body": {"type": "string"},
        "author": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "version": {"type": "integer"},
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
    },
}

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
                    "schema": {"type": "integer", "minimum": 1},
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
                "200": {
                    "description": "The post; the ETag header names its version",
                    "content": {"application/json": {"schema": _POST_SCHEMA}},
                },
                "304": {"description": "Not modified since the ETag in If-None-Match"},
                "404": {"description": "No such post", **_ERROR},
                "422": {"description": "post_id is not a valid id", **_ERROR},
                "503": {"description": "The database is unavailable (and so is the cache)"},
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
                "200": {
                    "description": "A page: items, and next_cursor (null on the last page)",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "items": {"type": "array", "items": _POST_SCHEMA},
                                    "next_cursor": {"type": ["string", "null"]},
                                },
                            }
                        }
                    },
                },
                "304": {"description": "The page is still the one If-None-Match names"},
                "422": {"description": "Bad limit, cursor, author or tag", **_ERROR},
                "503": {"description": "The database is unavailable (and so is the cache)"},
            },
        }
    },
}


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, routes=app.routes, description=app.description
            )
            for path, operations in READ_PATHS.items():
                schema["paths"].setdefault(path, {}).update(operations)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
