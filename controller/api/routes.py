"""REST API of the controller (FastAPI, served by uvicorn in a background thread).

Routes (JSON in and out; the OpenAPI description is at ``/openapi.json``)::

    GET    /healthz
    GET    /metrics                                         Prometheus text format
    GET    /api/v1/pools
    GET    /api/v1/pools/{pool}
    GET    /api/v1/pools/{pool}/assignment
    GET    /api/v1/pools/{pool}/lookup?src=&dst=&proto=&sport=&dport=
    GET    /api/v1/services                                 services and their chains of pools
    GET    /api/v1/services/{service}
    GET    /api/v1/services/{service}/lookup?src=&dst=&proto=&sport=&dport=   one answer per hop
    POST   /api/v1/pools/{pool}/instances                   add (or re-add) an instance
    DELETE /api/v1/pools/{pool}/instances/{name}            remove
    POST   /api/v1/pools/{pool}/instances/{name}/drain      drain (?force=true for the last)
    PUT    /api/v1/pools/{pool}/instances/{name}/capacity   {"capacity": 2}

Mutations go through ``app.apply`` and, with ``?wait=true`` (the default), answer once every
connected switch confirmed the change with a barrier reply; they report the epoch and the
slots moved. When a token is configured every mutation needs ``Authorization: Bearer
TOKEN``; the API refuses to listen on a non-loopback address without one.

One router per concern (``status``, ``scrape``, ``pools``, ``lookup``, ``instances``,
``diagnostics``); they share one ``ApiContext`` (``context``) over the controller's
services, typed by the protocols in ``deps``.
"""

from __future__ import annotations

from fastapi import FastAPI

from controller.api import diagnostics, instances, lookup, metrics, pools, scrape, status
from controller.api.context import ApiContext
from controller.api.deps import LeaderElection, MembershipService, PoolStore, SteeringHost
from controller.api.errors import install_error_handlers
from controller.api.guard import MAX_BODY_BYTES, RequestGuard
from controller.api.serve import ApiConfigError, ApiServer, check_listen

__all__ = ["MAX_BODY_BYTES", "ApiConfigError", "ApiServer", "check_listen", "create_api"]


def create_api(
    app: SteeringHost,
    membership: MembershipService | None = None,
    store: PoolStore | None = None,
    election: LeaderElection | None = None,
) -> FastAPI:
    """The FastAPI application over a running controller app."""
    token = app.options.api_token
    api = FastAPI(
        title="nfsteer",
        version="1",
        description="Pools, instances and hash-slot assignments of the steering controller.",
    )
    api.state.context = ApiContext(
        app=app,
        membership=membership,
        store=store,
        election=election,
        token=token,
        topology=app.view().topology,
        registry=metrics.make_registry(app, membership, store),
    )
    api.add_middleware(RequestGuard, token=token)
    install_error_handlers(api)
    for router in (status.router, scrape.router, pools.router, lookup.router):
        api.include_router(router)
    if diagnostics.hooks_enabled():
        api.include_router(diagnostics.router)
    api.include_router(instances.router)
    return api
