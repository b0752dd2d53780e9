"""Operational endpoints: liveness, readiness, the status report and the Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from postal.api.status import cache_report, status_report
from postal.observability.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from postal.storage.health import database_reachable

router = APIRouter(tags=["operations"])

READY_CHECK_TIMEOUT = 2.0  # seconds; a probe must answer well within Kubernetes' 1 s default x3


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive and serving."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Ready when the database answers. The cache's state is reported, not required: reads
    survive without it."""
    state = request.app.state
    problem = await database_reachable(state.engine, READY_CHECK_TIMEOUT)
    cache = cache_report(state)
    database: dict[str, Any] = {"reachable": problem is None}
    if problem is not None:
        database["error"] = problem
    body = {"status": "ok" if problem is None else "unavailable", "database": database}
    return JSONResponse({**body, "cache": cache}, status_code=200 if problem is None else 503)


@router.get("/status")
async def status(request: Request) -> dict[str, Any]:
    """This process at a glance, for operators and `postal stats`: version, uptime, masked
    URLs, pool settings and deadlines, pool, breaker, read-through and invalidator state."""
    return status_report(request.app.state)


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> Response:
    """Prometheus metrics in the text format: this process's, or every worker's under `postal
    serve --workers N`. No authentication (it holds no secret): expose it inside the cluster."""
    return Response(request.app.state.metrics.render(), media_type=METRICS_CONTENT_TYPE)
