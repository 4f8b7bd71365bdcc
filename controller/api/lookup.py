"""Where a flow goes: the owner of its hash slot in a pool, the services (chains of pools)
and the owner at every hop of a service's chain."""

from __future__ import annotations

import dataclasses
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from contract.topology import Service
from controller.api.context import ApiContext, Context
from controller.api.errors import READ_ERRORS, documented
from controller.api.models import HopOut, LookupOut, ServiceLookupOut, ServiceOut
from controller.core.chain import Hop, hops_of
from controller.core.hashing import FiveTuple, slot_of
from controller.core.state import PoolState

router = APIRouter()
LOOKUP_ERRORS = documented(400, 404, 422)


@router.get("/api/v1/pools/{pool}/lookup", responses=LOOKUP_ERRORS)
def lookup(
    pool: str,
    src: Annotated[str, Query()],
    dst: Annotated[str, Query()],
    ctx: Context,
    proto: Annotated[str, Query()] = "tcp",
    sport: Annotated[str, Query()] = "0",
    dport: Annotated[str, Query()] = "0",
) -> LookupOut:
    ps = ctx.pool_or_404(pool)
    ft = five_tuple(src, dst, proto, sport, dport)
    slot = slot_of(ft, ps.n_slots, ps.basis)
    return LookupOut(pool=pool, instance=ps.assignment[slot], slot=slot, epoch=ps.epoch)


@router.get("/api/v1/services")
def list_services(ctx: Context) -> list[ServiceOut]:
    return [service_out(n, s) for n, s in sorted(ctx.topology.services.items())]


@router.get("/api/v1/services/{service}", responses=READ_ERRORS)
def show_service(service: str, ctx: Context) -> ServiceOut:
    return service_out(service, service_or_404(ctx, service))


@router.get("/api/v1/services/{service}/lookup", responses=LOOKUP_ERRORS)
def service_lookup(
    service: str,
    src: Annotated[str, Query()],
    dst: Annotated[str, Query()],
    ctx: Context,
    proto: Annotated[str, Query()] = "tcp",
    sport: Annotated[str, Query()] = "0",
    dport: Annotated[str, Query()] = "0",
) -> ServiceLookupOut:
    """One answer per hop of the service's chain, in the order this 5-tuple visits them."""
    svc = service_or_404(ctx, service)
    ft = five_tuple(src, dst, proto, sport, dport)
    direction, hops = hops_of(ctx.topology, svc, ft)
    pools = ctx.app.view().pools
    out = [hop_out(hop, pools[hop.pool]) for hop in hops]
    return ServiceLookupOut(service=service, direction=direction, hops=out)


def five_tuple(src: str, dst: str, proto: str, sport: str, dport: str) -> FiveTuple:
    try:
        return FiveTuple.parse(src, dst, proto, sport, dport)
    except ValueError as e:
        raise HTTPException(400, str(e)) from None


def hop_out(hop: Hop, ps: PoolState) -> HopOut:
    if hop.five_tuple is None:  # after a NAT: the translated 5-tuple is not known here
        return HopOut(pool=hop.pool, instance=None, slot=None, epoch=ps.epoch, five_tuple=None)
    slot = slot_of(hop.five_tuple, ps.n_slots, ps.basis)
    return HopOut(
        pool=hop.pool,
        instance=ps.assignment[slot],
        slot=slot,
        epoch=ps.epoch,
        five_tuple=dataclasses.asdict(hop.five_tuple),
    )


def service_or_404(ctx: ApiContext, service: str) -> Service:
    svc = ctx.topology.services.get(service)
    if svc is None:
        raise HTTPException(404, f"unknown service {service!r}")
    return svc


def service_out(name: str, svc: Service) -> ServiceOut:
    return ServiceOut(
        name=name,
        chain=list(svc.hops),
        bidirectional=svc.bidirectional,
        priority=svc.priority,
        match=[m.model_dump(exclude_none=True) for m in svc.match],
    )
