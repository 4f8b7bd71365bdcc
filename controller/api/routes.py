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
"""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Annotated, Any

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contract.values import Capacity, HostIPv4, Mac, Name, SwitchPort, short
from controller.api import metrics
from controller.core.chain import hops_of
from controller.core.hashing import FiveTuple, slot_of
from controller.core.state import InstanceInfo, InstanceState, PoolChange, Steering, SteeringError

log = logging.getLogger("nfsteer.api")

BARRIER_TIMEOUT_S = 5.0
MAX_BODY_BYTES = 64 * 1024  # a request body is a few hundred bytes
MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


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
    model_config = ConfigDict(extra="forbid", strict=True)

    name: Name = Field(description="instance name")
    switch: Name | None = Field(None, description="switch name (default: from the topology)")
    port: SwitchPort | None = Field(None, description="switch port (default: from the topology)")
    mac: Mac | None = Field(None, description="unicast MAC address (default: from the topology)")
    ip: HostIPv4 | None = Field(None, description="IPv4 address (default: from the topology)")
    capacity: Capacity | None = Field(None, description="relative capacity (default 1)")


class CapacityIn(Body):
    model_config = ConfigDict(extra="forbid", strict=True)

    capacity: Capacity


class ErrorOut(BaseModel):
    """Every error answer: one line saying what was wrong."""

    detail: str


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    what = {
        400: "the change cannot be applied (nothing was changed)",
        401: "missing or wrong bearer token",
        404: "unknown pool or instance",
        409: "conflicts with the topology file",
        413: f"request body larger than {MAX_BODY_BYTES} bytes",
        422: "invalid request (the detail names the field)",
        307: "this controller is a standby: the change goes to the leader (Location)",
        503: "this controller is a standby and no leader is known",
    }
    return {c: {"model": ErrorOut, "description": what[c]} for c in codes}


READ_ERRORS = _errors(404, 422)
BEARER = HTTPBearer(auto_error=False, description="needed for changes when a token is set")
CHANGE_ERRORS = _errors(307, 400, 401, 404, 413, 422, 503)


class RequestGuard:
    """ASGI middleware in front of the routes: refuses a body above ``MAX_BODY_BYTES``
    (413, without reading more of it) and checks the bearer token of a change before its
    body is parsed (401 comes before any 422)."""

    def __init__(self, app: ASGIApp, token: str | None):
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


async def _answer(send: Send, status: int, detail: str, headers: dict[str, str] | None = None):
    body = JSONResponse({"detail": detail}).body
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


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
    load: float | None = Field(
        default=None, description="packets/s through its slots (pools in load mode)"
    )


class PoolOut(BaseModel):
    name: str
    kind: str
    membership: str
    n_slots: int
    epoch: int
    unserved_slots: int
    instances: dict[str, int]  # state -> count


class MoveOut(BaseModel):
    time: float
    epoch: int
    slots: int
    kind: str = Field(description="load, or membership (joins, failures, drains, capacity)")
    reason: str


class LoadOut(BaseModel):
    mode: str = Field(description="load: hot slots move to even out load; flows: they do not")
    why_flows: str | None = Field(description="why a pool configured for load stays in flows")
    imbalance: float | None = Field(
        description="max load per unit of capacity over the mean (null before a reading)"
    )
    instances: dict[str, float]  # packets/s
    moves: list[MoveOut]  # recent changes that moved slots, with their reason
    moves_total: dict[str, int]  # slots moved, by kind


class PoolDetail(PoolOut):
    members: list[InstanceOut]
    load: LoadOut | None = None


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


class ServiceOut(BaseModel):
    name: str
    chain: list[str] = Field(description="the pools the forward direction visits, in order")
    bidirectional: bool
    priority: int
    match: list[dict[str, Any]]


class HopOut(BaseModel):
    pool: str
    instance: str | None = Field(description="null: no owner, or the hop is after a NAT")
    slot: int | None
    epoch: int
    five_tuple: dict[str, Any] | None = Field(
        description="as this hop hashes it; null after a NAT (look up the translated one)"
    )


class ServiceLookupOut(BaseModel):
    service: str
    direction: str
    hops: list[HopOut]


class ChangeOut(BaseModel):
    pool: str
    epoch: int
    moved: int
    confirmed: bool | None = Field(
        description="every switch answered the barrier (null when not waited for)"
    )
    reason: str


_MOVE = ("epoch", "slots", "kind", "reason")


def _instance_load(report: Any, name: str) -> float | None:
    if report is None or report.mode != "load" or not report.readings:
        return None
    return report.loads.get(name)


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

    api.add_middleware(RequestGuard, token=token)

    def authorize(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
    ) -> None:
        # RequestGuard already refused a wrong token; this declares the scheme in OpenAPI.
        given = f"Bearer {credentials.credentials}".encode() if credentials else None
        if not _token_ok(given, token):
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
        for e in exc.errors()[:5]:
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

    def load_of(pool: str):
        watch = getattr(app, "loads", None)
        return watch.reports.get(pool) if watch is not None else None

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
            load=_instance_load(load_of(info.pool), info.name),
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

    @api.get("/api/v1/pools/{pool}", responses=READ_ERRORS)
    def show_pool(pool: str) -> PoolDetail:
        ps = pool_or_404(pool)
        counts = ps.slot_counts()
        members = [instance_out(i, counts) for _, i in sorted(dict(ps.instances).items())]
        report = load_of(pool)
        load = None
        if report is not None:
            load = LoadOut(
                mode=report.mode,
                why_flows=report.why_flows,
                imbalance=report.imbalance,
                instances=dict(report.loads),
                moves=[
                    MoveOut(time=m.when, **{k: getattr(m, k) for k in _MOVE}) for m in report.moves
                ],
                moves_total=dict(report.moves_total),
            )
        return PoolDetail(**pool_out(ps).model_dump(), members=members, load=load)

    @api.get("/api/v1/pools/{pool}/assignment", responses=READ_ERRORS)
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

    @api.get("/api/v1/pools/{pool}/lookup", responses=_errors(400, 404, 422))
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

    def service_or_404(service: str):
        svc = topology.services.get(service)
        if svc is None:
            raise HTTPException(404, f"unknown service {service!r}")
        return svc

    def service_out(name: str, svc) -> ServiceOut:
        return ServiceOut(
            name=name,
            chain=list(svc.hops),
            bidirectional=svc.bidirectional,
            priority=svc.priority,
            match=[m.model_dump(exclude_none=True) for m in svc.match],
        )

    @api.get("/api/v1/services")
    def list_services() -> list[ServiceOut]:
        return [service_out(n, s) for n, s in sorted(topology.services.items())]

    @api.get("/api/v1/services/{service}", responses=READ_ERRORS)
    def show_service(service: str) -> ServiceOut:
        return service_out(service, service_or_404(service))

    @api.get("/api/v1/services/{service}/lookup", responses=_errors(400, 404, 422))
    def service_lookup(
        service: str,
        src: Annotated[str, Query()],
        dst: Annotated[str, Query()],
        proto: Annotated[str, Query()] = "tcp",
        sport: Annotated[str, Query()] = "0",
        dport: Annotated[str, Query()] = "0",
    ) -> ServiceLookupOut:
        """One answer per hop of the service's chain, in the order this 5-tuple visits them."""
        svc = service_or_404(service)
        try:
            ft = FiveTuple.parse(src, dst, proto, sport, dport)
        except ValueError as e:
            raise HTTPException(400, str(e)) from None
        direction, hops = hops_of(topology, svc, ft)
        pools = app.view().pools
        out = []
        for hop in hops:
            ps = pools[hop.pool]
            if hop.five_tuple is None:
                out.append(
                    HopOut(pool=hop.pool, instance=None, slot=None, epoch=ps.epoch, five_tuple=None)
                )
                continue
            slot = slot_of(hop.five_tuple, ps.n_slots, ps.basis)
            out.append(
                HopOut(
                    pool=hop.pool,
                    instance=ps.assignment[slot],
                    slot=slot,
                    epoch=ps.epoch,
                    five_tuple=dataclasses.asdict(hop.five_tuple),
                )
            )
        return ServiceLookupOut(service=service, direction=direction, hops=out)

    if os.environ.get("NFSTEER_TEST_HOOKS") == "1":  # for the tests only: never in service

        @api.post("/debug/believe-leader", include_in_schema=False)
        def believe_leader(body: dict[str, int]) -> dict[str, Any]:
            """Make this controller believe it leads (term shifted by ``term_delta``)."""
            return app.call(lambda: app.believe_leader(int(body.get("term_delta", 0))))

    # -- mutations ------------------------------------------------------------------------

    @api.post(
        "/api/v1/pools/{pool}/instances",
        dependencies=mutation,
        responses=CHANGE_ERRORS | _errors(409),
    )
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
        capacity = body.capacity if body.capacity is not None else getattr(base, "capacity", 1.0)
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

    @api.delete(
        "/api/v1/pools/{pool}/instances/{name}",
        dependencies=mutation,
        responses=CHANGE_ERRORS,
    )
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

    @api.post(
        "/api/v1/pools/{pool}/instances/{name}/drain",
        dependencies=mutation,
        responses=CHANGE_ERRORS,
    )
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

    @api.put(
        "/api/v1/pools/{pool}/instances/{name}/capacity",
        dependencies=mutation,
        responses=CHANGE_ERRORS,
    )
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
