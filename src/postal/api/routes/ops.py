"""Operational endpoints: liveness and readiness."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive and serving."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> dict[str, Any]:
    """Ready to serve. The cache's state is reported, not required: reads survive without it."""
    cache = request.app.state.cache
    pools = {role: asdict(stats) for role, stats in cache.stats().items()}
    cache_up = any(stats["idle"] + stats["in_use"] > 0 for stats in pools.values())
    return {"status": "ok", "cache": {"connected": cache_up, "pools": pools}}
