"""Error answers: one JSON line ``{"detail": ...}`` for every refusal, documented per route."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from contract.values import short
from controller.api.guard import MAX_BODY_BYTES
from controller.core.state import SteeringError

WHAT = {
    400: "the change cannot be applied (nothing was changed)",
    401: "missing or wrong bearer token",
    404: "unknown pool or instance",
    409: "conflicts with the topology file",
    413: f"request body larger than {MAX_BODY_BYTES} bytes",
    422: "invalid request (the detail names the field)",
    307: "this controller is a standby: the change goes to the leader (Location)",
    503: "this controller is a standby and no leader is known",
}


class ErrorOut(BaseModel):
    """Every error answer: one line saying what was wrong."""

    detail: str


def documented(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` of a route that may answer these error codes."""
    return {c: {"model": ErrorOut, "description": WHAT[c]} for c in codes}


READ_ERRORS = documented(404, 422)
CHANGE_ERRORS = documented(307, 400, 401, 404, 413, 422, 503)


async def invalid_request(_request: Request, exc: Exception) -> JSONResponse:
    """422 with the failing fields named in one line (at most five, 500 characters)."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    parts = []
    for e in errors[:5]:
        loc = ".".join(
            short(p, 40) if not isinstance(p, str) or len(p) > 40 else p
            for p in e.get("loc", ())
            if p not in ("body", "query", "path")
        )
        msg = str(e.get("msg", "")).removeprefix("Value error, ")
        if e.get("type") == "extra_forbidden":
            msg = "unknown field"
        parts.append(f"{loc}: {msg}" if loc else msg)
    detail = "; ".join(parts)[:500] or "invalid request"
    return JSONResponse({"detail": detail}, status_code=422)


async def refused(_request: Request, exc: Exception) -> JSONResponse:
    """A change the steering state refused: 400, nothing was changed."""
    return JSONResponse({"detail": str(exc)}, status_code=400)


def install_error_handlers(api: FastAPI) -> None:
    api.add_exception_handler(RequestValidationError, invalid_request)
    api.add_exception_handler(SteeringError, refused)
