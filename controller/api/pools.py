"""Reading pools: their instances, load and slot assignment (from the published view)."""

from __future__ import annotations

from fastapi import APIRouter

from controller.api.context import ApiContext, Context
from controller.api.errors import READ_ERRORS
from controller.api.models import (
    AssignmentOut,
    InstanceOut,
    LoadOut,
    MoveOut,
    PoolDetail,
    PoolOut,
)
from controller.core.loadbalance import PoolReport
from controller.core.state import InstanceInfo, InstanceState, PoolState

router = APIRouter()


@router.get("/api/v1/pools")
def list_pools(ctx: Context) -> list[PoolOut]:
    return [pool_out(ctx, ps) for _, ps in sorted(ctx.app.view().pools.items())]


@router.get("/api/v1/pools/{pool}", responses=READ_ERRORS)
def show_pool(pool: str, ctx: Context) -> PoolDetail:
    ps = ctx.pool_or_404(pool)
    counts = ps.slot_counts()
    members = [instance_out(ctx, i, counts) for _, i in sorted(dict(ps.instances).items())]
    report = ctx.load_of(pool)
    load = load_out(report) if report is not None else None
    return PoolDetail(**pool_out(ctx, ps).model_dump(), members=members, load=load)


@router.get("/api/v1/pools/{pool}/assignment", responses=READ_ERRORS)
def assignment(pool: str, ctx: Context) -> AssignmentOut:
    ps = ctx.pool_or_404(pool)
    owners = list(ps.assignment)
    counts: dict[str, int] = {}
    for o in owners:
        if o is not None:
            counts[o] = counts.get(o, 0) + 1
    return AssignmentOut(
        pool=pool, epoch=ps.epoch, n_slots=ps.n_slots, slots=counts, assignment=owners
    )


def pool_out(ctx: ApiContext, ps: PoolState) -> PoolOut:
    instances = dict(ps.instances)
    return PoolOut(
        name=ps.name,
        kind=ps.kind,
        membership=ctx.topology.pools[ps.name].membership,
        n_slots=ps.n_slots,
        epoch=ps.epoch,
        unserved_slots=list(ps.assignment).count(None),
        instances={
            st.value: sum(1 for i in instances.values() if i.state is st) for st in InstanceState
        },
    )


def instance_out(ctx: ApiContext, info: InstanceInfo, counts: dict[str, int]) -> InstanceOut:
    traffic = None
    if info.switch is not None and info.port is not None:  # located
        traffic = ctx.app.port_stats.get((info.switch, info.port))
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
        source=ctx.source_of(info.pool, info.name),
        traffic=dict(traffic) if traffic else None,
        load=instance_load(ctx.load_of(info.pool), info.name),
    )


def load_out(report: PoolReport) -> LoadOut:
    return LoadOut(
        mode=report.mode,
        why_flows=report.why_flows,
        imbalance=report.imbalance,
        instances=dict(report.loads),
        moves=[
            MoveOut(time=m.when, epoch=m.epoch, slots=m.slots, kind=m.kind, reason=m.reason)
            for m in report.moves
        ],
        moves_total=dict(report.moves_total),
    )


def instance_load(report: PoolReport | None, name: str) -> float | None:
    """Packets/s through the instance's slots; None unless its pool is in load mode and
    has been read."""
    if report is None or report.mode != "load" or not report.readings:
        return None
    return report.loads.get(name)
