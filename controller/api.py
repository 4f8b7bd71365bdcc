"""REST API of the controller (FastAPI, served by uvicorn in a background thread).

Routes (JSON in and out; the OpenAPI description is at ``/openapi.json``)::

    GET    /healthz
    GET    /metrics                                         Prometheus text format
    GET    /api/v1/pools
    GET    /api/v1/pools/{pool}
    GET    /api/v1/pools/{pool}/assignment
    GET    /api/v1/pools/{pool}/lookup?src=&dst=&proto=&sport=&dport=
    POST   /api/v1/pools/{pool}/instances                   add (or re-add) an instance
    DELETE /api/v1/pools/{pool}/instances/{name}            remove
    POST   /api/v1/pools/{pool}/instances/{name}/drain      drain (?force=true for the last)
    PUT    /api/v1/pools/{pool}/instances/{name}/capacity   {"capacity": 2}

Mutations go through ``app.apply`` and, with ``?wait=true`` (the default), answer once every
connected switch confirmed the change with a barrier reply; they report the epoch and the
slots moved. When a token is configured every mutation needs ``Authorization: Bearer
TOKEN``; the API refuses to listen on a non-loopback address without one.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Annotated, Any

import uvicorn
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field

from controller import metrics
from controller.hashing import FiveTuple, slot_of
from controller.state import InstanceInfo, InstanceState, PoolChange, Steering, SteeringError

log = logging.getLogger("nfsteer.api")

BARRIER_TIMEOUT_S = 5.0


class ApiConfigError(ValueError):
    """The API cannot be served as configured."""


def check_listen(host: str, token: str | None) -> None:
    """Refuse a non-loopback address without a token."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not token:
        raise ApiConfigError(
            f"the API would listen on {host}, which is not a loopback address: "
            "set an API token (--api-token) to protect changes"
        )


WaitQ = Annotated[bool, Query(description="answer after the switches' barrier replies")]
ForceQ = Annotated[bool, Query(description="drain even the last active instance")]


# --- request and response bodies ---------------------------------------------------------


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InstanceIn(Body):
    name: str = Field(description="instance name")
    switch: str | None = Field(None, description="switch name (default: from the topology)")
    port: int | None = Field(None, ge=1, description="switch port (default: from the topology)")
    mac: str | None = Field(None, description="MAC address (default: from the topology)")
    ip: str | None = Field(None, description="IPv4 address (default: from the topology)")
    capacity: float | None = Field(None, gt=0, description="relative capacity (default 1)")


class CapacityIn(Body):
    capacity: float = Field(gt=0)


class InstanceOut(BaseModel):
    name: str
    pool: str
    state: str
    capacity: float
    slots: int
    mac: str
    ip: str
    switch: str | None
    port: int | None
    last_heartbeat: float | None
    source: str
    traffic: dict[str, int] | None = None


class PoolOut(BaseModel):
    name: str
    kind: str
    membership: str
    n_slots: int
    epoch: int
    unserved_slots: int
    instances: dict[str, int]  # state -> count


class PoolDetail(PoolOut):
    members: list[InstanceOut]


class AssignmentOut(BaseModel):
    pool: str
    epoch: int
    n_slots: int
    slots: dict[str, int]
    assignment: list[str | None]


class LookupOut(BaseModel):
    pool: str
    instance: str | None
    slot: int
    epoch: int


class ChangeOut(BaseModel):
    pool: str
    epoch: int
    moved: int
    confirmed: bool | None = Field(
        description="every switch answered the barrier (null when not waited for)"
    )
    reason: str


# --- the application -------------------------------------------------------------------------


def create_api(
    app: Any, membership: Any = None, store: Any = None, election: Any = None
) -> FastAPI:
    """The FastAPI application over a running SteeringApp."""
    token: str | None = app.options.api_token
    registry = metrics.make_registry(app, membership, store)
    api = FastAPI(
        title="nfsteer",
        version="1",
        description="Pools, instances and hash-slot assignments of the steering controller.",
    )

    def authorize(authorization: Annotated[str | None, Header()] = None) -> None:
        if token is None:
            return
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(
                401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
            )

    def leader_only(request: Request) -> None:
        """Changes are made by the leader: a standby redirects them there (307, the same
        method and body), or answers 503 while no leader is known."""
        if app.leading():
            return
        target = election.leader_api() if election is not None else None
        if not target:
            raise HTTPException(503, "this controller is a standby and no leader is known")
        url = target.rstrip("/") + request.url.path
        if request.url.query:
            url += "?" + request.url.query
        raise HTTPException(
            307, f"this controller is a standby: the leader is at {target}",
            headers={"Location": url},
        )  # fmt: skip

    mutation = [Depends(authorize), Depends(leader_only)]

    @api.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for e in exc.errors():
            loc = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path"))
            parts.append(f"{loc}: {e.get('msg')}" if loc else str(e.get("msg")))
        return JSONResponse({"detail": "; ".join(parts) or "invalid request"}, status_code=422)

    @api.exception_handler(SteeringError)
    async def _refused(_request: Request, exc: SteeringError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    topology = app.steering.topology  # never changes

    def pool_or_404(pool: str):
        ps = app.view().pools.get(pool)
        if ps is None:
            raise HTTPException(404, f"unknown pool {pool!r}")
        return ps

    def instance_or_404(pool: str, name: str) -> InstanceInfo:
        info = pool_or_404(pool).instances.get(name)
        if info is None:
            raise HTTPException(404, f"pool {pool!r} has no instance {name!r}")
        return info

    def source_of(pool: str, name: str) -> str:
        if membership is None:
            return "api" if name not in topology.pools[pool].instances else "topology"
        return membership.sources.get((pool, name), "topology")

    def pool_out(ps) -> PoolOut:
        instances = dict(ps.instances)
        return PoolOut(
            name=ps.name,
            kind=ps.kind,
            membership=topology.pools[ps.name].membership,
            n_slots=ps.n_slots,
            epoch=ps.epoch,
            unserved_slots=list(ps.assignment).count(None),
            instances={
                st.value: sum(1 for i in instances.values() if i.state is st)
                for st in InstanceState
            },
        )

    def instance_out(info: InstanceInfo, counts: dict[str, int]) -> InstanceOut:
        traffic = None
        port_stats = getattr(app, "port_stats", None)
        if port_stats is not None and info.located:
            traffic = port_stats.get((info.switch, info.port))
        return InstanceOut(
            name=info.name,
            pool=info.pool,
            state=str(info.state),
            capacity=info.capacity,
            slots=counts.get(info.name, 0),
            mac=info.mac,
            ip=info.ip,
            switch=info.switch,
            port=info.port,
            last_heartbeat=info.last_heartbeat,
            source=source_of(info.pool, info.name),
            traffic=dict(traffic) if traffic else None,
        )

    def change(pool: str, mutation, reason: str, wait: bool) -> ChangeOut:
        result = app.apply(mutation, reason)
        changes: list[PoolChange] = result.changes
        confirmed = result.wait(BARRIER_TIMEOUT_S) if wait else None
        return ChangeOut(
            pool=pool,
            epoch=changes[-1].epoch if changes else app.view().pools[pool].epoch,
            moved=sum(len(x.moved) for x in changes),
            confirmed=confirmed,
            reason=reason,
        )

    # -- reads ----------------------------------------------------------------------------

    @api.get(
        "/healthz",
        responses={503: {"description": "unhealthy: the body's `problems` say why"}},
    )
    def healthz() -> JSONResponse:
        """503 while the event loop does not turn, a connected switch is not in sync, or
        the pool state cannot be saved to Redis."""
        problems = list(app.health())
        if membership is not None:
            problems += membership.health()
        body = {
            "status": "ok" if not problems else "unhealthy",
            "problems": problems,
            **app.role_status(),
            "redis": "off" if store is None else ("up" if store.up else "down"),
            "switches": list(app.view().switches),
        }
        return JSONResponse(body, status_code=503 if problems else 200)

    @api.get("/metrics", response_class=Response)
    def prometheus() -> Response:
        return Response(metrics.render(registry), media_type=CONTENT_TYPE_LATEST)

    @api.get("/api/v1/pools")
    def list_pools() -> list[PoolOut]:
        return [pool_out(ps) for _, ps in sorted(app.view().pools.items())]

    @api.get("/api/v1/pools/{pool}")
    def show_pool(pool: str) -> PoolDetail:
        ps = pool_or_404(pool)
        counts = ps.slot_counts()
        members = [instance_out(i, counts) for _, i in sorted(dict(ps.instances).items())]
        return PoolDetail(**pool_out(ps).model_dump(), members=members)

    @api.get("/api/v1/pools/{pool}/assignment")
    def assignment(pool: str) -> AssignmentOut:
        ps = pool_or_404(pool)
        owners = list(ps.assignment)
        counts: dict[str, int] = {}
        for o in owners:
            if o is not None:
                counts[o] = counts.get(o, 0) + 1
        return AssignmentOut(
            pool=pool, epoch=ps.epoch, n_slots=ps.n_slots, slots=counts, assignment=owners
        )

    @api.get("/api/v1/pools/{pool}/lookup")
    def lookup(
        pool: str,
        src: Annotated[str, Query()],
        dst: Annotated[str, Query()],
        proto: Annotated[str, Query()] = "tcp",
        sport: Annotated[str, Query()] = "0",
        dport: Annotated[str, Query()] = "0",
    ) -> LookupOut:
        ps = pool_or_404(pool)
        try:
            ft = FiveTuple.parse(src, dst, proto, sport, dport)
        except ValueError as e:
            raise HTTPException(400, str(e)) from None
        slot = slot_of(ft, ps.n_slots, ps.basis)
        owners, epoch = ps.assignment, ps.epoch
        return LookupOut(pool=pool, instance=owners[slot], slot=slot, epoch=epoch)

    if os.environ.get("NFSTEER_TEST_HOOKS") == "1":  # for the tests only: never in service

        @api.post("/debug/believe-leader", include_in_schema=False)
        def believe_leader(body: dict[str, int]) -> dict[str, Any]:
            """Make this controller believe it leads (term shifted by ``term_delta``)."""
            return app.call(lambda: app.believe_leader(int(body.get("term_delta", 0))))

    # -- mutations ------------------------------------------------------------------------

    @api.post("/api/v1/pools/{pool}/instances", dependencies=mutation)
    def add_instance(pool: str, body: InstanceIn, wait: WaitQ = True) -> ChangeOut:
        ps = pool_or_404(pool)
        listed = topology.pools[pool].instances.get(body.name)
        known = ps.instances.get(body.name)
        base: Any = listed or known
        if listed is not None:
            for field in ("switch", "port"):
                given, fixed = getattr(body, field), getattr(listed, field)
                if given is not None and given != fixed:
                    raise HTTPException(
                        409, f"{body.name} is listed in the topology at {field} {fixed}"
                    )
        switch = body.switch if body.switch is not None else getattr(base, "switch", None)
        port = body.port if body.port is not None else getattr(base, "port", None)
        mac = body.mac or getattr(base, "mac", None)
        ip = body.ip or (listed.ip_address if listed else getattr(known, "ip", None))
        missing = [
            f
            for f, v in (("switch", switch), ("port", port), ("mac", mac), ("ip", ip))
            if v is None
        ]
        if missing:
            raise HTTPException(
                422, f"{body.name} is not in the topology: give {', '.join(missing)}"
            )
        capacity = body.capacity or getattr(base, "capacity", None) or 1.0
        info = InstanceInfo(
            name=body.name,
            pool=pool,
            mac=mac,
            ip=ip,
            switch=switch,
            port=port,
            capacity=float(capacity),
            state=InstanceState.ACTIVE,
        )

        def add(s: Steering) -> PoolChange:
            out = s.add_instance(info, time.time())
            if membership is not None:  # from now on the API, not a registration, manages it
                membership.sources[(pool, body.name)] = "api"
            return out

        return change(pool, add, f"api: add {pool}/{body.name}", wait)

    @api.delete("/api/v1/pools/{pool}/instances/{name}", dependencies=mutation)
    def remove_instance(pool: str, name: str, wait: WaitQ = True) -> ChangeOut:
        instance_or_404(pool, name)
        out = change(
            pool,
            lambda s: s.remove_instance(pool, name, time.time()),
            f"api: remove {pool}/{name}",
            wait,
        )
        if membership is not None:
            membership.retire(pool, name)  # else its registration would bring it back
        return out

    @api.post("/api/v1/pools/{pool}/instances/{name}/drain", dependencies=mutation)
    def drain(
        pool: str,
        name: str,
        force: ForceQ = False,
        wait: WaitQ = True,
    ) -> ChangeOut:
        instance_or_404(pool, name)
        out = change(
            pool,
            lambda s: s.set_state(pool, name, InstanceState.DRAINING, time.time(), force=force),
            f"api: drain {pool}/{name}" + (" (forced)" if force else ""),
            wait,
        )
        if membership is not None:
            membership.retire(pool, name)  # tell a registered NF, per the contract's state
        return out

    @api.put("/api/v1/pools/{pool}/instances/{name}/capacity", dependencies=mutation)
    def capacity(pool: str, name: str, body: CapacityIn, wait: WaitQ = True) -> ChangeOut:
        instance_or_404(pool, name)
        return change(
            pool,
            lambda s: s.set_capacity(pool, name, body.capacity, time.time()),
            f"api: capacity of {pool}/{name} = {body.capacity:g}",
            wait,
        )

    return api


# --- serving -------------------------------------------------------------------------------


class ApiServer:
    """uvicorn in a daemon thread; ``start`` returns once it listens (or raises)."""

    def __init__(
        self,
        api: FastAPI,
        host: str,
        port: int,
        on_unexpected_exit: Callable[[str], None] | None = None,
    ):
        self.host = host
        self.port = port
        self.on_unexpected_exit = on_unexpected_exit
        config = uvicorn.Config(
            api,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            log_config=None,  # its records go to the handler the command set up
        )
        self.server = uvicorn.Server(config)
        self.thread: threading.Thread | None = None

    def start(self, timeout: float = 5.0) -> None:
        self.thread = threading.Thread(target=self._run, name="nfsteer-api", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise OSError(f"the API could not listen on {self.host}:{self.port}")
            time.sleep(0.01)
        sockets = [s for srv in self.server.servers for s in srv.sockets]
        if sockets:
            self.port = sockets[0].getsockname()[1]
        log.info("REST API on http://%s:%d", self.host, self.port)

    def _run(self) -> None:
        try:
            self.server.run()
        except SystemExit:  # uvicorn exits when it cannot bind
            pass
        except Exception as e:
            log.exception("REST API server failed")
            if self.server.started and self.on_unexpected_exit is not None:
                self.on_unexpected_exit(f"REST API server failed: {e}")
            return
        if self.server.started and not self.server.should_exit and self.on_unexpected_exit:
            self.on_unexpected_exit("REST API server stopped")

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=5)
