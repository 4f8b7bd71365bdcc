"""Heartbeats and registrations, read from the store, turned into what the pool state needs:
is an instance alive, and what instance does a registration ask for. Pure."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from contract.records import parse_registration_record
from controller.core.state import InstanceInfo, InstanceState, PoolChange, Steering

log = logging.getLogger("nfsteer.membership")

Member = tuple[str, str]  # (pool, instance name)
Mutation = Callable[[Steering], list[PoolChange]]


@dataclass
class Liveness:
    """Heartbeat bookkeeping. Pure: the time is an argument.

    A heartbeat counts as fresh when the key's value changed or its TTL was renewed since
    the last poll. An instance is dead when its key is gone (the NF's own TTL expired) or
    when nothing fresh was seen for ``ttl_s``. Right after start and after the store
    returns, a missing key is tolerated for one TTL (an emptied store has no heartbeat keys
    until the NFs' next beat).
    """

    ttl_s: float
    grace_until: float = 0.0
    seen: dict[Member, tuple[Any, int, float]] = field(default_factory=dict)

    def observe(self, member: Member, value: Any, pttl: int | None, now: float) -> bool:
        """Record one poll result; return whether the instance is alive."""
        if value is None:
            self.seen.pop(member, None)
            return now < self.grace_until
        pttl = -1 if pttl is None else int(pttl)
        prev = self.seen.get(member)
        if prev is None or prev[0] != value or pttl > prev[1]:
            self.seen[member] = (value, pttl, now)
            return True
        self.seen[member] = (value, pttl, prev[2])
        return now - prev[2] <= self.ttl_s

    def fresh(self, member: Member, now: float) -> None:
        """A registration message counts as a heartbeat."""
        value, pttl, _ = self.seen.get(member, ("register", -1, now))
        self.seen[member] = (value, pttl, now)

    def restart(self, now: float, grace: bool = True) -> None:
        """Start (or the store back): give every instance one TTL to show its heartbeat. A
        takeover gives none: the heartbeat keys lived on in the store, and one that expired
        while no controller led must be acted on at once."""
        self.grace_until = now + self.ttl_s if grace else now
        self.seen = {m: (v, p, now) for m, (v, p, _) in self.seen.items()}


def parse_registration(
    steering: Steering, pool: str, name: str, reg: Mapping[str, str]
) -> InstanceInfo:
    """The InstanceInfo a registration asks for. The attachment point comes from the
    topology (instance listed under its pool) or from an instance added through the API;
    raises ValueError when the instance cannot be placed or a field is invalid."""
    topo_pool = steering.topology.pools.get(pool)
    if topo_pool is None:
        raise ValueError(f"pool {pool!r} is not in the topology")
    record = parse_registration_record(dict(reg))  # the shared model: ValueError if bad
    if record.kind and record.kind != topo_pool.kind:
        raise ValueError(f"kind {record.kind!r} does not match pool kind {topo_pool.kind!r}")
    listed = topo_pool.instances.get(name)
    known = steering.pools[pool].instances.get(name)
    if listed is not None:
        switch, port, mac, ip = listed.switch, listed.port, listed.mac, listed.ip_address
        capacity = float(listed.capacity)
    elif known is not None and known.located:  # added through the API
        switch, port, mac, ip = known.switch, known.port, known.mac, known.ip
        capacity = known.capacity
    else:
        raise ValueError(
            "not listed under its pool in the topology (add it through the API with an "
            "explicit switch and port)"
        )
    if record.capacity is not None:
        capacity = record.capacity
    for what, mine, theirs in (("MAC", mac, record.mac), ("IP", ip, record.ip)):
        if theirs and theirs != mine.lower():
            log.warning(
                "%s/%s registers %s %s, the topology says %s: using the topology",
                pool, name, what, theirs, mine,
            )  # fmt: skip
    return InstanceInfo(
        name=name,
        pool=pool,
        mac=mac,
        ip=ip,
        switch=switch,
        port=port,
        capacity=capacity,
        state=InstanceState.ACTIVE,
    )


# --- mutations (each re-checks the state it is applied to) ------------------------------


def join(info: InstanceInfo, now: float) -> Mutation:
    def mutate(s: Steering) -> list[PoolChange]:
        cur = s.pools[info.pool].instances.get(info.name)
        if (
            cur is not None
            and cur.state is InstanceState.ACTIVE
            and (cur.switch, cur.port, cur.capacity) == (info.switch, info.port, info.capacity)
        ):
            return []
        info.last_heartbeat = now
        return [s.add_instance(info, now)]

    return mutate


def set_state(
    pool: str, name: str, state: InstanceState, now: float, only_from: tuple[InstanceState, ...]
) -> Mutation:
    def mutate(s: Steering) -> list[PoolChange]:
        cur = s.pools[pool].instances.get(name)
        if cur is None or cur.state not in only_from:
            return []
        # An NF that drains itself is not forced: while it is the last active instance it
        # keeps its traffic until it deregisters (or its grace period ends).
        return [s.set_state(pool, name, state, now, force=state is not InstanceState.DRAINING)]

    return mutate


def set_capacity(pool: str, name: str, capacity: float, now: float) -> Mutation:
    def mutate(s: Steering) -> list[PoolChange]:
        cur = s.pools[pool].instances.get(name)
        if cur is None or cur.capacity == capacity:
            return []
        return [s.set_capacity(pool, name, capacity, now)]

    return mutate


def remove(
    pool: str, name: str, now: float, only_from: tuple[InstanceState, ...] | None = None
) -> Mutation:
    def mutate(s: Steering) -> list[PoolChange]:
        cur = s.pools[pool].instances.get(name)
        if cur is None or (only_from is not None and cur.state not in only_from):
            return []
        return [s.remove_instance(pool, name, now)]

    return mutate


def bump_epoch(pool: str, epoch: int) -> Mutation:
    def mutate(s: Steering) -> list[PoolChange]:
        ps = s.pools[pool]
        ps.epoch = max(ps.epoch, epoch)  # no slot moves: nothing is sent to switches
        return [PoolChange(pool=pool, epoch=ps.epoch)]

    return mutate
