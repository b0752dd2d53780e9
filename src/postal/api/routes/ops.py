"""Operational endpoints: liveness, readiness, the status report and the Prometheus metrics.

`/status` names the database and Redis servers, the key prefix and the pool settings: with a
token set it needs the token (`WriteGuard`'s guarded reads). `/metrics` is a router of its own,
left out when POSTAL_METRICS_ACCESS is off.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from postal.api.documents import Health, Readiness, Status
from postal.api.openapi import ok
from postal.api.readiness import readiness
from postal.api.status import status_report
from postal.observability.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE

router = APIRouter(tags=["operations"])
metrics_router = APIRouter(tags=["operations"])
STATUS_PATH = "/status"
METRICS_PATH = "/metrics"

READY_CHECK_TIMEOUT = 2.0  # seconds; a probe must answer well within Kubernetes' 1 s default x3


@router.get("/healthz", operation_id="get_health", responses={200: ok("Alive", Health)})
async def healthz() -> dict[str, str]:
    """The process is alive and serving."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    operation_id="get_readiness",
    responses={
        200: ok("Ready: `ok`, or `degraded` saying what is", Readiness),
        503: ok("Not ready: `unavailable` or `starting`", Readiness),
    },
)
async def readyz(request: Request) -> JSONResponse:
    """Ready while this process can serve reads: with the database, or without it from the
    cache (see `api/readiness.py`); what is degraded is said in the document."""
    status_code, document = await readiness(request.app.state, READY_CHECK_TIMEOUT)
    return JSONResponse(document, status_code=status_code)


@router.get(STATUS_PATH, operation_id="get_status", responses={200: ok("The report", Status)})
async def status(request: Request) -> dict[str, Any]:
    """This process at a glance, for operators and `postal stats`: version, uptime, masked
    URLs, pool settings and deadlines, pool, breaker, read-through and invalidator state.
    Needs the bearer token when one is set."""
    return status_report(request.app.state)


@metrics_router.get(
    METRICS_PATH,
    operation_id="get_metrics",
    response_class=PlainTextResponse,
    responses={200: {"description": "The metrics, in Prometheus' text format"}},
)
async def metrics(request: Request) -> Response:
    """Prometheus metrics in the text format: this process's, or every worker's under `postal
    serve --workers N`. Open by default (it holds no secret, and Prometheus scrapes it without
    credentials): keep it inside the cluster; POSTAL_METRICS_ACCESS=token puts it behind the
    token."""
    return Response(request.app.state.metrics.render(), media_type=METRICS_CONTENT_TYPE)
