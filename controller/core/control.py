"""The control core: one state machine that takes every input of a controller and returns
what to do. Sans-I/O: no sockets, threads or clocks; the time of each input is an argument.

Its parts (one per concern, sharing a :class:`~controller.core.context.Context`):
:class:`~controller.core.switches.Switches` (connect, read back, ports),
:class:`~controller.core.programming.Programming` (changes, tables, barriers),
:class:`~controller.core.roles.Roles` (lease answers, OpenFlow roles, fencing) and
:class:`~controller.core.load_moves.LoadMoves` (slot counters, hot-slot moves). The adapter
(:mod:`controller.ofp.loop`) feeds :meth:`Core.handle` from one thread and carries out the
outputs; readers in other threads get :meth:`Core.view`, an immutable copy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from contract.topology import Topology
from controller.core import events as ev
from controller.core.context import Context, ControllerCounters, Switch
from controller.core.leadership import Lease
from controller.core.load_moves import LoadMoves
from controller.core.programming import Programming
from controller.core.roles import Roles
from controller.core.roster import Member, Roster
from controller.core.state import PoolState, Steering
from controller.core.switches import Switches
from controller.core.switchsync import Phase
from controller.core.topology import Routes

PORT_STATS_INTERVAL_S = 2.0


@dataclass(frozen=True)
class View:
    """What readers outside the loop see: copies made by the core, never changed."""

    topology: Topology
    pools: Mapping[str, PoolState]
    switches: tuple[str, ...]  # connected
    switch_ports: Mapping[str, Mapping[int, bool]]
    switch_problems: tuple[str, ...]  # why a connected switch is not in sync
    port_stats: Mapping[tuple[str, int], Mapping[str, int]]
    unconfirmed: int  # barriers sent and not yet answered, all switches
    registered: tuple[Member, ...]  # instances whose liveness comes from heartbeats
    lease: Lease | None  # a copy of what this controller knows of the lease
    published: float  # monotonic time of the input after which it was made


class Core:
    def __init__(self, topology: Topology, wall: float, heartbeat_ttl_s: float = 0.5):
        self.ctx = ctx = Context(topology, wall)
        self.roles = Roles(ctx, read_back=lambda sw: self.switches.read_back(sw))
        self.programming = Programming(ctx, self.roles.may_program)
        self.loads = LoadMoves(ctx, self.programming)
        self.switches = Switches(ctx, self.programming, self.roles, self.loads.switch_gone)
        self.roster = Roster(ctx, self.programming, heartbeat_ttl_s)
        self.programming.listeners += [self.loads.record, self.roster.saves.on_change]
        self._next_port_stats = 0.0

    # -- what the adapter and readers use ---------------------------------------------------

    @property
    def steering(self) -> Steering:
        return self.ctx.steering

    @property
    def counters(self) -> ControllerCounters:
        return self.ctx.counters

    @property
    def routes(self) -> Routes:
        return self.ctx.routes

    @property
    def lease(self) -> Lease | None:
        return self.ctx.lease

    def leading(self, now: float) -> bool:
        lease = self.ctx.lease
        return lease is None or lease.leading(now)

    def connections(self) -> dict[str, int]:
        """Connected switches: name -> conn."""
        return {name: sw.conn for name, sw in self.ctx.switches.items()}

    def switch_of(self, conn: int) -> str | None:
        sw = self.ctx.by_conn(conn)
        return None if sw is None else sw.name

    def expects_slot_counters(self, conn: int, xid: int) -> bool:
        """Is a flow-stats reply with this xid an answer to a slot-counter request (rather
        than part of a read-back)?"""
        sw = self.ctx.by_conn(conn)
        return sw is not None and self.loads.waits_for(sw, xid)

    def reading_back(self, conn: int) -> bool:
        sw = self.ctx.by_conn(conn)
        return sw is not None and sw.sync.phase is Phase.READING

    # -- inputs -----------------------------------------------------------------------------

    def handle(self, event: ev.Input, now: float, wall: float) -> list[ev.Output]:
        """Take one input; returns the outputs, in the order they are to be carried out."""
        ctx = self.ctx
        ctx.now, ctx.wall = now, wall
        ctx.outputs = []
        self._dispatch(event)
        outputs = list(ctx.outputs)
        ctx.outputs = []
        return outputs

    def _dispatch(self, event: ev.Input) -> None:
        match event:
            case ev.SwitchConnected():
                self.switches.connected(event)
            case ev.Change():
                self.programming.apply(event)
            case ev.Tick():
                self._tick()
            case ev.LeaseConfigured():
                self.ctx.lease = Lease(event.controller_id, event.lease_s)
                self.ctx.changed = True
            case ev.LeaseGranted():
                self.roles.granted(event)
            case ev.LeaseRefused():
                self.roles.refused(event)
            case ev.LeaseUnknown():
                self.roles.unknown()
            case ev.Fenced():
                self.roles.step_down(event.reason)
                if self.ctx.lease is not None:
                    self.ctx.lease.raise_floor(event.term)
            case ev.ClaimSwitches():
                self.roles.assert_roles()
            case ev.BelieveLeader():
                self.roles.believe(event.term_delta)
            case ev.PoolsRead():
                self.roster.pools_read(event)
            case ev.RegistrationRead():
                self.roster.registration_read(event)
            case ev.HeartbeatsRead():
                self.roster.heartbeats_read(event)
            case ev.HeartbeatLost():
                self.roster.heartbeat_lost(event)
            case ev.ScanRead():
                self.roster.scan_read(event)
            case ev.LivenessRestart():
                self.roster.liveness.restart(self.ctx.now, grace=event.grace)
            case ev.SaveAll():
                self.roster.saves.save_all()
            case ev.StoredEpochs():
                self.roster.stored_epochs(event)
            case ev.PoolSaved():
                self.roster.pool_saved(event)
            case ev.StoreEmptied():
                self.roster.store_emptied(event)
            case ev.Retire():
                self.roster.retire(event)
            case _:
                sw = self.ctx.by_conn(event.conn)
                if sw is not None:
                    self._from_switch(sw, event)
                elif isinstance(event, ev.BarrierReply):
                    self.programming.barrier_reply(None, event)

    def _from_switch(self, sw: Switch, event: ev.Input) -> None:
        match event:
            case ev.SwitchGone():
                self.switches.forget(sw)
            case ev.ReadBackPart():
                self.switches.read_back_part(sw, event)
            case ev.SlotCounters():
                self.loads.reply(sw, event)
            case ev.PortStatus():
                self.switches.port_status(sw, event)
            case ev.PortStats():
                for port, stats in event.stats.items():
                    self.ctx.port_stats[(sw.name, port)] = dict(stats)
            case ev.BarrierReply():
                if self.programming.barrier_reply(sw, event):
                    self.switches.check_synced(sw)
            case ev.ErrorReply():
                self._error(sw, event)
            case ev.RoleReply():
                self.roles.role_reply(sw, event)
            case ev.RoleStatus():
                self.roles.role_status(sw, event)

    def _error(self, sw: Switch, event: ev.ErrorReply) -> None:
        self.ctx.counters.switch_errors += 1
        if event.fenced is not None:
            self.roles.fenced_error(sw, event.fenced)
        if self.loads.waits_for(sw, event.xid):
            self.loads.unable(sw, f"error type={event.type} code={event.code}")

    def _tick(self) -> None:
        ctx = self.ctx
        if ctx.now >= self._next_port_stats:
            self._next_port_stats = ctx.now + PORT_STATS_INTERVAL_S
            for sw in list(ctx.switches.values()):
                if sw.sync.phase is Phase.PROGRAMMED:
                    ctx.send(sw, [ev.ReadPortStats()])
        self.loads.read()
        self.roster.tick()
        ctx.changed = True  # switch problems age with time

    # -- readers ----------------------------------------------------------------------------

    def take_changed(self) -> bool:
        """Did something readers see change since the last call?"""
        changed, self.ctx.changed = self.ctx.changed, False
        return changed

    def mark_changed(self) -> None:
        self.ctx.changed = True

    def view(self, now: float) -> View:
        ctx = self.ctx
        pools = {
            name: PoolState(
                ps.name,
                ps.kind,
                ps.n_slots,
                ps.basis,
                {n: dataclasses.replace(i) for n, i in ps.instances.items()},
                list(ps.assignment),
                ps.epoch,
            )
            for name, ps in ctx.steering.pools.items()
        }
        problems = [sw.sync.problem(now) for sw in ctx.switches.values()]
        return View(
            topology=ctx.topology,
            pools=pools,
            switches=tuple(sorted(ctx.switches)),
            switch_ports={n: dict(s.sync.ports) for n, s in ctx.switches.items()},
            switch_problems=tuple(p for p in problems if p),
            port_stats={k: dict(v) for k, v in ctx.port_stats.items()},
            unconfirmed=sum(len(sw.sync.barriers) for sw in ctx.switches.values()),
            registered=self.roster.registered(),
            lease=None if ctx.lease is None else dataclasses.replace(ctx.lease),
            published=now,
        )


def role_status(view: View, now: float) -> dict[str, Any]:
    """Role, term and leader, and switches not connected, for /healthz and `nfsteer status`."""
    missing = sorted(set(view.topology.switches) - set(view.switches))
    warnings = [
        f"switch {n} is not connected to this controller (is its address in the switch's "
        "controller list?)"
        for n in missing
    ]
    lease = view.lease
    if lease is None:
        return {"role": "single", "term": None, "leader": None, "warnings": warnings}
    return {
        "role": "leader" if lease.leading(now) else "standby",
        "id": lease.controller_id,
        "term": lease.term,
        "leader": lease.holder,
        "warnings": warnings,
    }
