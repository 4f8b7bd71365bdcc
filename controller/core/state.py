"""Pool state: instances, their health and capacity, and the slot assignment. No I/O.

:class:`Steering` is the single owner of "which instance serves which hash slot". Every
mutation validates its input first and raises :class:`SteeringError` without changing
anything; otherwise it recomputes the assignment with :func:`controller.core.slots.assign`
(fewest possible moves), bumps the pool epoch when a slot changed owner and returns a
:class:`PoolChange` listing the moved slots. Flow programming derives the switch tables
from this state, so the state is the one source of truth for the data plane.
"""

from __future__ import annotations

import copy
import ipaddress
import math
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum

from contract import values
from contract.topology import Topology
from contract.values import MAX_CAPACITY, is_name
from contract.values import short as _short
from controller.core import slots
from controller.core.hashing import FiveTuple, slot_of

__all__ = ["MAX_CAPACITY"]


class InstanceState(StrEnum):
    ACTIVE = "active"
    DRAINING = "draining"
    FAILED = "failed"
    DOWN = "down"  # known (e.g. listed in the topology) but not registered / not running


@dataclass
class InstanceInfo:
    name: str
    pool: str
    mac: str
    ip: str
    switch: str | None
    port: int | None
    capacity: float
    state: InstanceState
    last_heartbeat: float | None = None

    @property
    def located(self) -> bool:
        """Attached at a known switch port, so the network can deliver to it."""
        return self.switch is not None and self.port is not None


@dataclass
class PoolState:
    name: str
    kind: str
    n_slots: int
    basis: int
    instances: dict[str, InstanceInfo]
    assignment: list[str | None]
    epoch: int

    def active_capacities(self) -> dict[str, float]:
        """Instances that may own slots: ACTIVE and attached at a known port."""
        return {
            n: i.capacity
            for n, i in self.instances.items()
            if i.state is InstanceState.ACTIVE and i.located
        }

    def slot_counts(self) -> dict[str, int]:
        held = Counter(o for o in self.assignment if o is not None)
        return {n: held.get(n, 0) for n in self.instances}


@dataclass(frozen=True)
class PoolChange:
    pool: str
    epoch: int
    moved: tuple[tuple[int, str | None, str | None], ...] = field(default=())


class SteeringError(ValueError):
    """A request that cannot be applied (unknown pool or instance, invalid value)."""


def _ip_address(ip: str) -> str:
    return ip.split("/")[0]


class Steering:
    def __init__(self, topology: Topology, now: float = 0.0):
        self.topology = topology
        self.pools: dict[str, PoolState] = {}
        for pname, pool in topology.pools.items():
            start = InstanceState.ACTIVE if pool.membership == "static" else InstanceState.DOWN
            instances = {
                n: InstanceInfo(
                    name=n,
                    pool=pname,
                    mac=i.mac,
                    ip=i.ip_address,
                    switch=i.switch,
                    port=i.port,
                    capacity=float(i.capacity),
                    state=start,
                    last_heartbeat=None,
                )
                for n, i in pool.instances.items()
            }
            ps = PoolState(
                name=pname,
                kind=pool.kind,
                n_slots=pool.slots,
                basis=pool.basis,
                instances=instances,
                assignment=[None] * pool.slots,
                epoch=0,
            )
            ps.assignment = slots.assign(ps.n_slots, ps.active_capacities(), None)
            if any(ps.assignment):
                ps.epoch = 1
            self.pools[pname] = ps

    # -- queries ---------------------------------------------------------------------------

    def pool(self, name: str) -> PoolState:
        try:
            return self.pools[name]
        except KeyError:
            raise SteeringError(f"unknown pool {name!r}") from None

    def instance(self, pool: str, name: str) -> InstanceInfo:
        ps = self.pool(pool)
        try:
            return ps.instances[name]
        except KeyError:
            raise SteeringError(f"pool {pool!r} has no instance {name!r}") from None

    def lookup(self, pool: str, ft: FiveTuple) -> str | None:
        ps = self.pool(pool)
        return ps.assignment[slot_of(ft, ps.n_slots, ps.basis)]

    def instance_at(self, switch: str, port: int) -> tuple[str, str] | None:
        for pname, ps in self.pools.items():
            for iname, info in ps.instances.items():
                if info.switch == switch and info.port == port:
                    return pname, iname
        return None

    # -- mutations -------------------------------------------------------------------------

    def add_instance(self, info: InstanceInfo, now: float) -> PoolChange:
        ps = self.pool(info.pool)
        new = validated_info(info, self.topology)
        old = ps.instances.get(new.name)
        where = (new.switch, new.port)
        if new.located:
            other = self.instance_at(*where)  # type: ignore[arg-type]
            if other is not None and other != (new.pool, new.name):
                raise SteeringError(
                    f"port {new.switch}:{new.port} is already used by instance "
                    f"{other[1]!r} of pool {other[0]!r}"
                )
            if new.switch not in self.topology.switches:
                raise SteeringError(f"unknown switch {new.switch!r}")
            taken = fixed_ports(self.topology).get(where)
            if taken is not None and taken != new.name:
                raise SteeringError(f"port {new.switch}:{new.port} is used by {taken!r}")
        self._check_addresses(new, ps.instances)
        if new.last_heartbeat is None and old is not None:
            new.last_heartbeat = old.last_heartbeat
        instances = dict(ps.instances)
        instances[new.name] = new
        return self._commit(ps, instances)

    def remove_instance(self, pool: str, name: str, now: float) -> PoolChange:
        ps = self.pool(pool)
        self.instance(pool, name)
        instances = {n: i for n, i in ps.instances.items() if n != name}
        return self._commit(ps, instances)

    def set_state(
        self, pool: str, name: str, state: InstanceState, now: float, force: bool = False
    ) -> PoolChange:
        ps = self.pool(pool)
        info = self.instance(pool, name)
        try:
            state = InstanceState(state)
        except ValueError:
            valid = ", ".join(s.value for s in InstanceState)
            raise SteeringError(f"unknown state {state!r} (one of {valid})") from None
        if (
            state is InstanceState.DRAINING
            and not force
            and info.state is InstanceState.ACTIVE
            and set(ps.active_capacities()) == {name}
        ):
            raise SteeringError(
                f"{name!r} is the last active instance of pool {pool!r}: draining it would "
                "leave the pool without an instance (use force to drain anyway)"
            )
        instances = dict(ps.instances)
        instances[name] = copy.copy(info)
        instances[name].state = state
        return self._commit(ps, instances)

    def set_capacity(self, pool: str, name: str, capacity: float, now: float) -> PoolChange:
        ps = self.pool(pool)
        info = self.instance(pool, name)
        capacity = _check_capacity(capacity)
        instances = dict(ps.instances)
        instances[name] = copy.copy(info)
        instances[name].capacity = capacity
        return self._commit(ps, instances)

    def move_slots(self, pool: str, moves: list[tuple[int, str, str]]) -> PoolChange:
        """Give slots to other instances: ``(slot, from, to)`` each, all or none. A slot
        must still be held by ``from`` and ``to`` must be able to own slots (active and
        attached), so a move planned from older state is refused, not misapplied."""
        ps = self.pool(pool)
        eligible = ps.active_capacities()
        new = list(ps.assignment)
        for slot, old, to in moves:
            if isinstance(slot, bool) or not isinstance(slot, int) or not 0 <= slot < ps.n_slots:
                raise SteeringError(f"pool {pool!r}: no slot {_short(slot)}")
            if new[slot] != old:
                raise SteeringError(f"pool {pool!r}: slot {slot} is not held by {_short(old)}")
            if to not in eligible:
                raise SteeringError(f"pool {pool!r}: {_short(to)} cannot take slots now")
            new[slot] = to
        moved = tuple(
            (s, a, b) for s, (a, b) in enumerate(zip(ps.assignment, new, strict=True)) if a != b
        )
        ps.assignment = new
        if moved:
            ps.epoch += 1
        return PoolChange(pool=ps.name, epoch=ps.epoch, moved=moved)

    def heartbeat(self, pool: str, name: str, now: float) -> None:
        """Record a heartbeat (no slot moves)."""
        self.instance(pool, name).last_heartbeat = now

    def restore_pool(
        self,
        pool: str,
        instances: dict[str, InstanceInfo],
        assignment: list[str | None],
        epoch: int,
    ) -> None:
        ps = self.pool(pool)
        checked = {}
        for key, info in instances.items():
            if info.name != key or info.pool != pool:
                raise SteeringError(f"instance {key!r} is not named {key!r} in pool {pool!r}")
            checked[key] = validated_info(info, self.topology)
        fixed = fixed_ports(self.topology)
        used: dict[tuple[str | None, int | None], str] = {}
        for info in checked.values():
            self._check_addresses(info, checked)
            if not info.located:
                continue
            where = (info.switch, info.port)
            if where in fixed or where in used:
                taken = fixed.get(where) or used[where]  # type: ignore[arg-type]
                raise SteeringError(
                    f"instance {info.name!r}: port {info.switch}:{info.port} is used by {taken!r}"
                )
            used[where] = info.name
        if len(assignment) != ps.n_slots:
            raise SteeringError(
                f"pool {pool!r}: saved assignment has {len(assignment)} slots, "
                f"the topology says {ps.n_slots}"
            )
        unknown = {o for o in assignment if o is not None and o not in checked}
        if unknown:
            raise SteeringError(
                f"pool {pool!r}: saved assignment names unknown instances {sorted(unknown)}"
            )
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise SteeringError(f"pool {pool!r}: epoch must be a non-negative integer")
        ps.instances = checked
        ps.assignment = list(assignment)
        ps.epoch = epoch

    # -- internals -------------------------------------------------------------------------

    def check_instance(self, info: InstanceInfo) -> InstanceInfo:
        """``info`` checked on its own (values, switch, not a host's or link's port);
        raises SteeringError. Used for records read back from the store."""
        new = validated_info(info, self.topology)
        taken = fixed_ports(self.topology).get((new.switch, new.port))  # type: ignore[arg-type]
        if new.located and taken is not None:
            raise SteeringError(f"port {new.switch}:{new.port} is used by {taken!r}")
        return new

    def _check_addresses(self, new: InstanceInfo, instances: dict[str, InstanceInfo]) -> None:
        """An instance's MAC and address are its own (not another host's or instance's),
        and the address is not the network or broadcast address of a subnet in use."""
        others: list[tuple[str, str, str]] = [
            (f"host {n!r}", h.mac, h.ip_address) for n, h in self.topology.hosts.items()
        ]
        for pname, ps in self.pools.items():
            members = instances if pname == new.pool else ps.instances
            others += [
                (f"instance {n!r} of pool {pname!r}", i.mac, i.ip)
                for n, i in members.items()
                if (pname, n) != (new.pool, new.name)
            ]
        for what, mac, ip in others:
            if mac == new.mac:
                raise SteeringError(f"instance {new.name!r}: MAC {new.mac} is the MAC of {what}")
            if ip == new.ip:
                raise SteeringError(f"instance {new.name!r}: {new.ip} is the address of {what}")
        for att in self.topology.attachments().values():
            if values.is_network_or_broadcast_of(new.ip, att.ip):
                raise SteeringError(
                    f"instance {new.name!r}: {new.ip} is the network or broadcast address of "
                    f"{ipaddress.IPv4Interface(att.ip).network}"
                )

    def _commit(self, ps: PoolState, instances: dict[str, InstanceInfo]) -> PoolChange:
        """Recompute the assignment for new instance data; apply it atomically."""
        trial = PoolState(
            ps.name, ps.kind, ps.n_slots, ps.basis, instances, ps.assignment, ps.epoch
        )
        # An owner that is gone from the pool must not be kept by assign().
        previous = [o if o in instances else None for o in ps.assignment]
        eligible = trial.active_capacities()
        if eligible == ps.active_capacities() and all(o in eligible for o in previous):
            # Nothing that decides the shares changed (e.g. an instance registered again as
            # it was) and every slot has an owner: the slots stay where they are, also
            # where load moves put them.
            new = list(previous)
        else:
            try:
                new = slots.assign(ps.n_slots, eligible, previous)
            except ValueError as e:
                raise SteeringError(f"pool {ps.name!r}: {e}") from None
        moved = tuple(
            (s, old, nw)
            for s, (old, nw) in enumerate(zip(ps.assignment, new, strict=True))
            if old != nw
        )
        ps.instances = instances
        ps.assignment = new
        if moved:
            ps.epoch += 1
        return PoolChange(pool=ps.name, epoch=ps.epoch, moved=moved)


def _check_capacity(capacity: float) -> float:
    if isinstance(capacity, bool) or not isinstance(capacity, int | float):
        raise SteeringError(f"capacity must be a number, not {capacity!r}")
    if not math.isfinite(capacity) or capacity <= 0 or capacity > MAX_CAPACITY:
        raise SteeringError(f"capacity must be > 0 and <= {MAX_CAPACITY}, not {capacity!r}")
    return float(capacity)


def fixed_ports(topology: Topology) -> dict[tuple[str, int], str]:
    """Ports that the topology gives to hosts and links (instances may not take them)."""
    out: dict[tuple[str, int], str] = {}
    for hname, h in topology.hosts.items():
        out[(h.switch, h.port)] = hname
    for i, link in enumerate(topology.links):
        out[(link.a, link.a_port)] = f"links[{i}]"
        out[(link.b, link.b_port)] = f"links[{i}]"
    return out


def validated_info(info: InstanceInfo, topology: Topology) -> InstanceInfo:
    """A copy of ``info`` with every field checked by the shared value types, so
    that nothing the flow programming cannot encode ever enters the state."""
    if not is_name(info.name):
        raise SteeringError(f"invalid instance name {_short(info.name)}")
    try:
        mac = values.mac(info.mac)
    except ValueError as e:
        raise SteeringError(f"instance {info.name!r}: invalid MAC: {e}") from None
    try:
        ip = values.host_ipv4(_ip_address(info.ip) if isinstance(info.ip, str) else info.ip)
    except ValueError as e:
        raise SteeringError(f"instance {info.name!r}: invalid IPv4 address: {e}") from None
    if (info.switch is None) != (info.port is None):
        raise SteeringError(f"instance {info.name!r}: give both switch and port, or neither")
    if info.port is not None and (
        isinstance(info.port, bool)
        or not isinstance(info.port, int)
        or not 1 <= info.port <= values.MAX_PORT
    ):
        raise SteeringError(f"instance {info.name!r}: invalid port {_short(info.port)}")
    if info.switch is not None and info.switch not in topology.switches:
        raise SteeringError(f"unknown switch {_short(info.switch)}")
    try:
        state = InstanceState(info.state)
    except ValueError:
        raise SteeringError(f"instance {info.name!r}: unknown state {info.state!r}") from None
    if info.last_heartbeat is not None and (
        isinstance(info.last_heartbeat, bool)
        or not isinstance(info.last_heartbeat, int | float)
        or not math.isfinite(info.last_heartbeat)
    ):
        raise SteeringError(f"instance {info.name!r}: invalid last_heartbeat")
    out = copy.copy(info)
    out.mac = mac
    out.ip = ip
    out.state = state
    out.capacity = _check_capacity(info.capacity)
    return out
