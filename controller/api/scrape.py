"""``/metrics``: the Prometheus text format, collected at scrape time (see ``metrics``)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from controller.api import metrics
from controller.api.context import Context

router = APIRouter()


@router.get("/metrics", response_class=Response)
def prometheus(ctx: Context) -> Response:
    return Response(metrics.render(ctx.registry), media_type=CONTENT_TYPE_LATEST)
