"""Test hooks, served only with ``NFSTEER_TEST_HOOKS=1`` (never in service) and left out
of the OpenAPI description."""

from __future__ import annotations

import os
from typing import Any

from fastapi import APIRouter

from controller.api.context import Context

router = APIRouter(include_in_schema=False)


def hooks_enabled() -> bool:
    return os.environ.get("NFSTEER_TEST_HOOKS") == "1"


@router.post("/debug/believe-leader")
def believe_leader(body: dict[str, int], ctx: Context) -> dict[str, Any]:
    """Make this controller believe it leads (term shifted by ``term_delta``)."""
    app = ctx.app
    return app.call(lambda: app.believe_leader(int(body.get("term_delta", 0))))
