"""Operational endpoints: liveness and readiness."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse

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
    pools = {role: asdict(stats) for role, stats in state.cache.stats().items()}
    cache: dict[str, Any] = {
        "connected": any(pool["idle"] + pool["in_use"] > 0 for pool in pools.values()),
        "breaker": {role: state.cache.breaker_state(role).name.lower() for role in pools},
        "pools": pools,
        # fills and invalidations: done, skipped, failed, pending (metrics come with /metrics)
        "reads": asdict(state.reads.stats()),
        "invalidations": asdict(state.invalidator.stats()),
    }
    database: dict[str, Any] = {"reachable": problem is None}
    if problem is not None:
        database["error"] = problem
    body = {"status": "ok" if problem is None else "unavailable", "database": database}
    return JSONResponse({**body, "cache": cache}, status_code=200 if problem is None else 503)
