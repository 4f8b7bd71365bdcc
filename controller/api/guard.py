"""Checks in front of the routes: body size and bearer token (ASGI middleware), and the
dependencies every change declares (token in OpenAPI, leader only)."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from controller.api.context import Context

MAX_BODY_BYTES = 64 * 1024  # a request body is a few hundred bytes
MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
BEARER = HTTPBearer(auto_error=False, description="needed for changes when a token is set")


class RequestGuard:
    """ASGI middleware in front of the routes: refuses a body above ``MAX_BODY_BYTES``
    (413, without reading more of it) and checks the bearer token of a change before its
    body is parsed (401 comes before any 422)."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", ())}
        if scope["method"] in MUTATING_METHODS and not _token_ok(
            headers.get(b"authorization"), self.token
        ):
            await _answer(
                send, 401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"}
            )
            return
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            await _answer(send, 413, f"request body larger than {MAX_BODY_BYTES} bytes")
            return
        # Bodies are small: read one in full (up to the limit) before the routes see it.
        body = b""
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > MAX_BODY_BYTES:
                await _answer(send, 413, f"request body larger than {MAX_BODY_BYTES} bytes")
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def _token_ok(header: bytes | None, token: str | None) -> bool:
    if token is None:
        return True
    scheme, _, given = (header or b"").partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(given, token.encode())


async def _answer(
    send: Send, status: int, detail: str, headers: dict[str, str] | None = None
) -> None:
    body = JSONResponse({"detail": detail}).body
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def authorize(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
    ctx: Context,
) -> None:
    # RequestGuard already refused a wrong token; this declares the scheme in OpenAPI.
    given = f"Bearer {credentials.credentials}".encode() if credentials else None
    if not _token_ok(given, ctx.token):
        raise HTTPException(
            401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
        )


def leader_only(request: Request, ctx: Context) -> None:
    """Changes are made by the leader: a standby redirects them there (307, the same
    method and body), or answers 503 while no leader is known."""
    if ctx.app.leading():
        return
    target = ctx.election.leader_api() if ctx.election is not None else None
    if not target:
        raise HTTPException(503, "this controller is a standby and no leader is known")
    url = target.rstrip("/") + request.url.path
    if request.url.query:
        url += "?" + request.url.query
    raise HTTPException(
        307, f"this controller is a standby: the leader is at {target}",
        headers={"Location": url},
    )  # fmt: skip


# Every change: the token first (401), then the role (307 or 503).
CHANGE_CHECKS = [Depends(authorize), Depends(leader_only)]
