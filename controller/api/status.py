"""``/healthz``: whether this controller works, and its role among several controllers."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from controller.api.context import ApiContext, Context

router = APIRouter()


@router.get(
    "/healthz",
    responses={503: {"description": "unhealthy: the body's `problems` say why"}},
)
def healthz(ctx: Context) -> JSONResponse:
    """503 while the event loop does not turn, a connected switch is not in sync, or
    the pool state cannot be saved to Redis."""
    problems = list(ctx.app.health())
    if ctx.membership is not None:
        problems += ctx.membership.health()
    body = {
        "status": "ok" if not problems else "unhealthy",
        "problems": problems,
        **ctx.app.role_status(),
        "redis": redis_state(ctx),
        "switches": list(ctx.app.view().switches),
    }
    return JSONResponse(body, status_code=503 if problems else 200)


def redis_state(ctx: ApiContext) -> str:
    if ctx.store is None:
        return "off"
    return "up" if ctx.store.up else "down"
