"""Changing a pool's instances: add, remove, drain, set capacity (through ``app.apply``).

Every change needs the token (when one is set) and the leader's role; with ``?wait=true``
(the default) it answers once every connected switch confirmed it with a barrier reply.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, HTTPException

from contract.topology import Instance
from controller.api.context import ApiContext, Context
from controller.api.errors import CHANGE_ERRORS, documented
from controller.api.guard import CHANGE_CHECKS
from controller.api.models import CapacityIn, ChangeOut, ForceQ, InstanceIn, WaitQ
from controller.core.state import InstanceInfo, InstanceState, PoolChange, Steering

router = APIRouter(dependencies=CHANGE_CHECKS, responses=CHANGE_ERRORS)


@router.post("/api/v1/pools/{pool}/instances", responses=documented(409))
def add_instance(pool: str, body: InstanceIn, ctx: Context, wait: WaitQ = True) -> ChangeOut:
    info = instance_to_add(ctx, pool, body)
    membership = ctx.membership

    def add(s: Steering) -> PoolChange:
        out = s.add_instance(info, time.time())
        if membership is not None:  # from now on the API, not a registration, manages it
            membership.sources[(pool, body.name)] = "api"
        return out

    return ctx.change(pool, add, f"api: add {pool}/{body.name}", wait)


@router.delete("/api/v1/pools/{pool}/instances/{name}")
def remove_instance(pool: str, name: str, ctx: Context, wait: WaitQ = True) -> ChangeOut:
    ctx.instance_or_404(pool, name)
    out = ctx.change(
        pool,
        lambda s: s.remove_instance(pool, name, time.time()),
        f"api: remove {pool}/{name}",
        wait,
    )
    if ctx.membership is not None:
        ctx.membership.retire(pool, name)  # else its registration would bring it back
    return out


@router.post("/api/v1/pools/{pool}/instances/{name}/drain")
def drain(
    pool: str, name: str, ctx: Context, force: ForceQ = False, wait: WaitQ = True
) -> ChangeOut:
    ctx.instance_or_404(pool, name)
    out = ctx.change(
        pool,
        lambda s: s.set_state(pool, name, InstanceState.DRAINING, time.time(), force=force),
        f"api: drain {pool}/{name}" + (" (forced)" if force else ""),
        wait,
    )
    if ctx.membership is not None:
        ctx.membership.retire(pool, name)  # tell a registered NF, per the contract's state
    return out


@router.put("/api/v1/pools/{pool}/instances/{name}/capacity")
def capacity(pool: str, name: str, body: CapacityIn, ctx: Context, wait: WaitQ = True) -> ChangeOut:
    ctx.instance_or_404(pool, name)
    return ctx.change(
        pool,
        lambda s: s.set_capacity(pool, name, body.capacity, time.time()),
        f"api: capacity of {pool}/{name} = {body.capacity:g}",
        wait,
    )


def instance_to_add(ctx: ApiContext, pool: str, body: InstanceIn) -> InstanceInfo:
    """The instance as given, completed from the topology's listing or the pool's current
    member of that name; 409 when it contradicts the listing, 422 when still incomplete."""
    known = ctx.pool_or_404(pool).instances.get(body.name)
    listed = ctx.topology.pools[pool].instances.get(body.name)
    if listed is not None:
        refuse_moving_listed(body, listed)
    base: Instance | InstanceInfo | None = listed or known
    switch = body.switch if body.switch is not None else getattr(base, "switch", None)
    port = body.port if body.port is not None else getattr(base, "port", None)
    mac = body.mac or getattr(base, "mac", None)
    ip = body.ip or (listed.ip_address if listed else getattr(known, "ip", None))
    if switch is None or port is None or mac is None or ip is None:
        given = {"switch": switch, "port": port, "mac": mac, "ip": ip}
        missing = ", ".join(f for f, v in given.items() if v is None)
        raise HTTPException(422, f"{body.name} is not in the topology: give {missing}")
    capacity = body.capacity if body.capacity is not None else getattr(base, "capacity", 1.0)
    return InstanceInfo(
        name=body.name,
        pool=pool,
        mac=mac,
        ip=ip,
        switch=switch,
        port=port,
        capacity=float(capacity),
        state=InstanceState.ACTIVE,
    )


def refuse_moving_listed(body: InstanceIn, listed: Instance) -> None:
    """An instance listed in the topology stays at its listed switch and port."""
    for field in ("switch", "port"):
        given, fixed = getattr(body, field), getattr(listed, field)
        if given is not None and given != fixed:
            raise HTTPException(409, f"{body.name} is listed in the topology at {field} {fixed}")
