"""`POST /api/v1/posts/import`: a CSV file of posts, streamed into the importer.

The body goes from `request.stream()` to `PostImporter.run` chunk by chunk, never held whole.
The bearer token and the size limit (`POSTAL_MAX_IMPORT_BYTES`, not the ordinary write limit)
are checked by `WriteGuard` before the body is read; the content type is checked here, before
the first chunk. A client that goes away mid-upload makes the stream raise `ClientDisconnect`
inside the import, which rolls its transaction back: nothing is written, nothing is answered.

Answers: 200 with the report when the import committed (with `skip_invalid`, invalid rows may
have been skipped: the report lists them); 422 with the same report beside the usual error
object when nothing was written because of bad input; 409 when a concurrent import deadlocked
with this one and the database failed this one (nothing written); 503 when the database is
unavailable.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Query, Request
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response

from postal.api.errors import ApiError
from postal.imports.importer import ImportConflict, ImportOptions, ImportReport, PostImporter

logger = logging.getLogger("postal.api.imports")

PATH = "/api/v1/posts/import"
CLIENT_GONE = 499  # nginx's "client closed request": logged, never received by anyone
_CSV = "text/csv"
_UTF8 = frozenset({"utf-8", "utf8"})

router = APIRouter(prefix="/api/v1/posts", tags=["posts"])

_ROW_ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "line": {"type": "integer", "description": "1-based line of the file (header: 1)"},
        "column": {"type": ["string", "null"]},
        "reason": {"type": "string", "description": "missing_field, too_long, bad_date, ..."},
        "message": {"type": "string"},
    },
}
_REPORT_SCHEMA = {
    "type": "object",
    "properties": {
        "committed": {"type": "boolean"},
        "rows_read": {"type": "integer"},
        "created": {"type": "integer"},
        "updated": {"type": "integer"},
        "invalid": {"type": "integer", "description": "all invalid rows, reported or not"},
        "errors": {"type": "array", "items": _ROW_ERROR_SCHEMA},
        "seconds": {"type": "number"},
        "cache": {
            "type": ["object", "null"],
            "description": "the cache step after the commit; pending: Redis did not take it"
            " all, the service retries in the background",
        },
    },
}
_ERROR_OBJECT = {
    "type": "object",
    "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
}
_ERROR_SCHEMA = {"type": "object", "properties": {"error": _ERROR_OBJECT}}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Imported: the report", **_json(_REPORT_SCHEMA)},
    401: {"description": "Missing or wrong bearer token", **_json(_ERROR_SCHEMA)},
    413: {"description": "The body is over POSTAL_MAX_IMPORT_BYTES", **_json(_ERROR_SCHEMA)},
    409: {
        "description": "Another import held some of the same posts (a deadlock the database"
        " broke): nothing was written; send it again",
        **_json(_ERROR_SCHEMA),
    },
    415: {"description": "The body is not text/csv (UTF-8)", **_json(_ERROR_SCHEMA)},
    422: {
        "description": "Bad rows or header: nothing was written; the report says where",
        **_json(
            {"type": "object", "properties": {"error": _ERROR_OBJECT, "report": _REPORT_SCHEMA}}
        ),
    },
    503: {"description": "The database is unavailable", **_json(_ERROR_SCHEMA)},
}
_OPENAPI_EXTRA = {
    "requestBody": {
        "required": True,
        "description": "A header row (title, body, author; optional id, tags, created_at),"
        " then one post per row. UTF-8, with or without a BOM; CRLF or LF.",
        "content": {_CSV: {"schema": {"type": "string"}}},
    }
}


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
    options = ImportOptions(
        skip_invalid=skip_invalid, ignore_unknown_columns=ignore_unknown_columns, warm=warm
    )
    try:
        report = await importer.run(request.stream(), options)
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
