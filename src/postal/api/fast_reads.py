"""The hottest route, `GET /api/v1/posts/{id}`, answered before the framework sees the request.

A cache hit costs one Redis round trip; measured under `postal bench http`, passing the request
through FastAPI's middleware stack and router cost more than that round trip. This pure ASGI
middleware recognises the route by its path, asks the service for the cached entry, and sends
the stored bytes. Anything it does not fully own (an id that is not a plain number, any other
route or method) goes on to the app unchanged, where the Starlette route in `routes/reads.py`
answers in the same way and with the same errors.

`PostalApp` puts it outside the whole stack FastAPI builds (server errors, FastAPI's telemetry
and body-limit middlewares, ours), so it answers its own unexpected errors: a 500 in the same
shape, logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from postal.api.errors import database_unavailable, error_response
from postal.api.request_id import RequestIdMiddleware
from postal.api.routes.reads import etag_matches, post_id_or_none
from postal.api.routes.reads import routes as read_routes
from postal.posts.errors import DatabaseUnavailable
from postal.posts.service import PostService

logger = logging.getLogger("postal.api")

PREFIX = "/api/v1/posts/"
_JSON = (b"content-type", b"application/json")
# The route this lane stands in for, left in scope["route"] as Starlette's router does: the HTTP
# metrics label requests with its template.
ROUTE = next(route for route in read_routes if getattr(route, "name", None) == "get_post")


class FastReads:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            path: str = scope["path"]
            if path.startswith(PREFIX):
                post_id = post_id_or_none(path[len(PREFIX) :])
                if post_id is not None:
                    scope["route"] = ROUTE
                    await self._get_post(scope, receive, send, post_id)
                    return
        await self.app(scope, receive, send)

    async def _get_post(self, scope: Scope, receive: Receive, send: Send, post_id: int) -> None:
        service: PostService = scope["app"].state.posts
        try:
            entry = await service.read_post(post_id)
        except DatabaseUnavailable as exc:
            await database_unavailable(exc)(scope, receive, send)
            return
        except Exception:
            logger.exception("unhandled error on GET %s", scope["path"])
            failed = error_response(
                500, "internal_error", "an unexpected error; it has been logged"
            )
            await failed(scope, receive, send)
            return
        if not entry.found:
            missing = error_response(404, "post_not_found", f"post {post_id} does not exist")
            await missing(scope, receive, send)
            return
        assert entry.etag is not None
        etag = entry.etag.encode()
        for name, value in scope["headers"]:
            if name == b"if-none-match" and etag_matches(value.decode("latin-1"), entry.etag):
                headers = [(b"etag", etag)]
                await send({"type": "http.response.start", "status": 304, "headers": headers})
                await send({"type": "http.response.body", "body": b""})
                return
        body = entry.body
        headers = [_JSON, (b"content-length", b"%d" % len(body)), (b"etag", etag)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class PostalApp(FastAPI):
    """FastAPI, with `FastReads` in front of the middleware stack it builds, and request ids
    around both (outermost, so every log line of a request carries its id). `measure`, set by
    `create_app`, wraps `FastReads` too: the HTTP metrics time the fast lane as well."""

    measure: Callable[[ASGIApp], ASGIApp] | None = None

    def build_middleware_stack(self) -> ASGIApp:
        app: ASGIApp = FastReads(super().build_middleware_stack())
        if self.measure is not None:
            app = self.measure(app)
        return RequestIdMiddleware(app)
