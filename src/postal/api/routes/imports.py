"""`POST /api/v1/posts/import`: a CSV file of posts, streamed into the importer.

The body goes from `request.stream()` to `PostImporter.run` chunk by chunk, never held whole.
The bearer token and the size limit (`POSTAL_MAX_IMPORT_BYTES`, not the ordinary write limit)
are checked by `WriteGuard` before the body is read; the content type is checked here, before
the first chunk. A client that goes away mid-upload makes the stream raise `ClientDisconnect`
inside the import, which rolls its transaction back: nothing is written, nothing is answered.

Bounds, so that a token holder cannot hold the database with slow or idle uploads:
`ImportSlots` lets a worker run `POSTAL_MAX_CONCURRENT_IMPORTS` imports at once and refuses the
next at once (429, Retry-After), before its body is read; and the whole body must arrive within
`POSTAL_IMPORT_BODY_TIMEOUT` (408, rolled back). The import itself takes a database connection
only at its first batch (`storage.import_store`), and PostgreSQL ends a session left idle in a
transaction (`DATABASE_IDLE_IN_TRANSACTION_TIMEOUT`).

Answers: 200 with the report when the import committed (with `skip_invalid`, invalid rows may
have been skipped: the report lists them); 422 with the same report beside the usual error
object when nothing was written because of bad input; 409 when a concurrent import deadlocked
with this one and the database failed this one (nothing written); 408 when the body took too
long; 429 when this worker runs as many imports as it may; 503 when the database is
unavailable.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import APIRouter, Query, Request
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response

from postal.api import documents
from postal.api.errors import ApiError
from postal.api.openapi import errors, ok
from postal.imports.importer import ImportConflict, ImportOptions, ImportReport, PostImporter

logger = logging.getLogger("postal.api.imports")

PATH = "/api/v1/posts/import"
CLIENT_GONE = 499  # nginx's "client closed request": logged, never received by anyone
_CSV = "text/csv"
_UTF8 = frozenset({"utf-8", "utf8"})
# An import takes seconds to minutes: asking again at once would only be refused again.
BUSY_RETRY_AFTER = 5  # seconds

router = APIRouter(prefix="/api/v1/posts", tags=["posts"])

_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: ok("Imported: the report", documents.ImportReport),
    **errors(
        {
            408: "The body did not arrive within POSTAL_IMPORT_BODY_TIMEOUT: nothing was"
            " written: `request_timeout`",
            409: "Another import held some of the same posts (a deadlock the database broke):"
            " nothing was written; send it again: `import_conflict`",
            413: "The body is over POSTAL_MAX_IMPORT_BYTES: `too_large`",
            415: "The body is not text/csv (UTF-8): `unsupported_media_type`",
            429: "This worker runs POSTAL_MAX_CONCURRENT_IMPORTS imports already; retry after"
            " Retry-After seconds: `too_many_imports`",
            422: "A query parameter is not a boolean: `invalid_type`",
            503: "The database is unavailable: `database_unavailable`",
        }
    ),
}
_RESPONSES[429]["headers"] = {
    "Retry-After": {
        "description": "Seconds to wait before asking again",
        "schema": {"type": "integer"},
    }
}
# Bad rows are a 422 with the report beside the error (the error shape plus `report`).
_RESPONSES[422] = {
    "description": "Bad rows or header (`invalid_rows`): nothing was written, and the report says"
    " where; or a query parameter that is not a boolean (`invalid_type`, without a report)",
    "content": {
        "application/json": {
            "schema": {
                "anyOf": [
                    {"$ref": "#/components/schemas/ImportRefusal"},
                    {"$ref": "#/components/schemas/ErrorBody"},
                ]
            }
        }
    },
}
_OPENAPI_EXTRA = {
    "requestBody": {
        "required": True,
        "description": "A header row (title, body, author; optional id, tags, created_at),"
        " then one post per row. UTF-8, with or without a BOM; CRLF or LF.",
        "content": {_CSV: {"schema": {"type": "string"}}},
    }
}


class ImportSlots:
    """At most `limit` imports at once in this worker: the next is refused, never queued (a
    queued upload would hold its connection to the client, and its body, while it waited)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.limit = limit
        self.running = 0

    def __repr__(self) -> str:
        return f"<ImportSlots running={self.running} limit={self.limit}>"

    @contextmanager
    def taken(self) -> Iterator[None]:
        """A slot for the block; ApiError 429 with Retry-After when none is free."""
        if self.running >= self.limit:
            message = f"this worker is running {self.limit} import(s) already; retry later"
            headers = {"Retry-After": str(BUSY_RETRY_AFTER)}
            raise ApiError(429, "too_many_imports", message, headers=headers)
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1


class BodyTimeout(Exception):
    """The import's body did not arrive within its deadline."""


async def within(chunks: AsyncIterable[bytes], seconds: float) -> AsyncIterator[bytes]:
    """`chunks`, raising BodyTimeout once `seconds` have passed since the first was asked for.
    Raised inside the import, which then rolls back."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    iterator = aiter(chunks)
    while True:
        if loop.time() >= deadline:  # spent while the import worked on the last chunk
            raise BodyTimeout
        try:
            async with asyncio.timeout_at(deadline):
                chunk = await anext(iterator)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise BodyTimeout from None
        yield chunk


def _refuse_unless_csv(content_type: str | None) -> None:
    media_type, *parameters = (content_type or "").split(";")
    if media_type.strip().lower() != _CSV:
        shown = media_type.strip() or "none"
        raise ApiError(415, "unsupported_media_type", f"expected text/csv, got {shown}")
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        charset = value.strip().strip('"').lower()
        if name.strip().lower() == "charset" and charset not in _UTF8:
            raise ApiError(415, "unsupported_media_type", f"expected UTF-8, got {charset}")


def _refusal_message(report: ImportReport) -> str:
    if report.rows_read == 0 and report.errors:  # the header (or the file) is unusable
        return f"nothing was imported: {report.errors[0].message}"
    return f"nothing was imported: {report.invalid} invalid row(s); see report.errors"


@router.post(
    "/import",
    operation_id="import_posts",
    responses=_RESPONSES,
    summary="Import posts from a CSV file (streamed; all or nothing unless skip_invalid)",
    openapi_extra=_OPENAPI_EXTRA,
)
async def import_posts(
    request: Request,
    skip_invalid: bool = Query(False, description="Write the good rows, report the bad ones"),
    ignore_unknown_columns: bool = Query(False, description="Ignore columns Postal lacks"),
    warm: bool = Query(False, description="Fill the cache with the imported posts"),
) -> Response:
    _refuse_unless_csv(request.headers.get("content-type"))
    importer: PostImporter = request.app.state.importer
    slots: ImportSlots = request.app.state.import_slots
    seconds: float = request.app.state.settings.postal_import_body_timeout
    options = ImportOptions(
        skip_invalid=skip_invalid, ignore_unknown_columns=ignore_unknown_columns, warm=warm
    )
    try:
        with slots.taken():
            report = await importer.run(within(request.stream(), seconds), options)
    except BodyTimeout:  # rolled back; the rest of the body is not read
        message = f"the body did not arrive within {seconds:g}s; nothing was imported"
        headers = {"Connection": "close"}
        raise ApiError(408, "request_timeout", message, headers=headers) from None
    except ClientDisconnect:
        # Raised from the stream inside the import, which rolled back. No one is listening.
        logger.info("import abandoned: the client went away mid-upload; nothing was written")
        return Response(status_code=CLIENT_GONE)
    except ImportConflict as exc:  # rolled back; the same request may succeed once the other ends
        raise ApiError(409, "import_conflict", str(exc)) from None
    logger.info(
        "import: committed=%s rows=%d created=%d updated=%d invalid=%d seconds=%.2f",
        report.committed, report.rows_read, report.created, report.updated, report.invalid,
        report.seconds,
    )  # fmt: skip
    if report.committed:
        return JSONResponse(report.to_json())
    error = {"code": "invalid_rows", "message": _refusal_message(report)}
    return JSONResponse({"error": error, "report": report.to_json()}, status_code=422)
