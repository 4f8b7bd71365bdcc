"""Switches coming and going: a connection is read back before it is programmed, its ports
tell which instances and fabric links are up, and nothing of it is kept once it is gone.

"A port down means the instance failed" is decided here: an instance whose port goes down
is failed at once; an instance of a static pool whose port comes back is active again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from controller.core.context import Context, Switch
from controller.core.events import (
    Change,
    Disconnect,
    PortStatus,
    ReadBackPart,
    ReadFlows,
    ReadGroups,
    ReadPorts,
    SwitchConnected,
    SyncChanged,
)
from controller.core.programming import Programming
from controller.core.roles import Roles
from controller.core.state import InstanceState, PoolChange, Steering
from controller.core.switchsync import Phase, ReadBack, SwitchSync

LOG = logging.getLogger("nfsteer.controller")


class Switches:
    def __init__(
        self,
        ctx: Context,
        programming: Programming,
        roles: Roles,
        on_gone: Callable[[str], None],
    ):
        self.ctx = ctx
        self.programming = programming
        self.roles = roles
        self.on_gone = on_gone  # the switch's name: its pending load readings end

    def connected(self, ev: SwitchConnected) -> None:
        ctx = self.ctx
        name = ctx.topology.switch_by_dpid(ev.dpid)
        if name is None:
            LOG.warning("switch with dpid %#x is not in the topology: ignored", ev.dpid)
            return
        old = ctx.switches.get(name)
        if old is not None and old.conn != ev.conn and old.conn in ev.live:
            # The switch we manage is still connected: whoever this is, it does not
            # take it over (a dead connection ends on its own, and then this may connect).
            ctx.counters.switch_refused += 1
            LOG.warning(
                "switch %s (dpid %#x): refusing a second connection from %s; it stays "
                "managed over its connection from %s",
                name, ev.dpid, ev.address, old.address,
            )  # fmt: skip
            ctx.emit(Disconnect(ev.conn, "a second connection for a connected switch"))
            return
        if old is not None:
            self.forget(old)
        ctx.counters.switch_connects += 1
        ctx.emit(SyncChanged(name, False))
        sw = Switch(conn=ev.conn, sync=SwitchSync(name, ctx.now), address=ev.address)
        ctx.add_switch(sw)
        ctx.changed = True
        if ctx.lease is None:  # the only controller: the switch's default role will do
            LOG.info("switch %s (dpid %#x) connected from %s: reading its table", name,
                     ev.dpid, ev.address)  # fmt: skip
            self.read_back(sw)
            return
        LOG.info("switch %s (dpid %#x) connected from %s", name, ev.dpid, ev.address)
        self.roles.assert_role(sw)  # nothing else is sent before the switch confirms a role

    def read_back(self, sw: Switch) -> None:
        sw.sync = SwitchSync(sw.name, self.ctx.now)
        self.ctx.send(sw, [ReadPorts(), ReadFlows(), ReadGroups()])

    def read_back_part(self, sw: Switch, ev: ReadBackPart) -> None:
        if sw.sync.phase is not Phase.READING:
            return
        merge(sw.sync.readback, ev.data)
        if sw.sync.part_received(ev.part, ev.more):
            self.finish_sync(sw)

    def finish_sync(self, sw: Switch) -> None:
        ctx = self.ctx
        readback = sw.sync.readback
        n_flows, n_groups, doubtful = len(readback.flows), len(readback.groups), readback.doubtful
        sw.sync.finish_readback()
        ctx.recompute_routes()
        # Instance health first, so the first table already avoids dead instances.
        # An instance port the switch does not have is as good as down.
        ports = {
            i.port: sw.sync.ports.get(i.port, False)
            for ps in ctx.steering.pools.values()
            for i in ps.instances.values()
            if i.switch == sw.name and i.port is not None
        }
        if ctx.leading():
            self.port_changes(sw.name, ports, "at connect")
        c = ctx.counters
        before = c.flow_mods_sent + c.group_mods_sent
        self.programming.program_all(None)
        sw.sync.first_programming_done()
        sent = c.flow_mods_sent + c.group_mods_sent - before
        if doubtful:
            LOG.warning("switch %s: its table could not be fully parsed: wiped it", sw.name)
        LOG.info(
            "switch %s: table read back (%d flows, %d groups), %d changes sent",
            sw.name, n_flows, n_groups, sent,
        )  # fmt: skip
        ctx.changed = True
        self.check_synced(sw)

    def check_synced(self, sw: Switch) -> None:
        if sw.sync.synced and self.roles.may_program(sw):
            self.ctx.emit(SyncChanged(sw.name, True))
            self.roles.switch_done()

    # -- ports ------------------------------------------------------------------------------

    def port_status(self, sw: Switch, ev: PortStatus) -> None:
        ctx = self.ctx
        ctx.counters.port_events += 1
        was = sw.sync.ports.get(ev.port)
        sw.sync.ports[ev.port] = ev.up
        ctx.changed = True
        if was == ev.up or sw.sync.phase is not Phase.PROGRAMMED:
            return
        state = "up" if ev.up else "down"
        LOG.info("switch %s: port %d %s", sw.name, ev.port, state)
        if not ctx.leading():
            return  # the leader acts on it; our copy of the port state stays warm
        self.port_changes(sw.name, {ev.port: ev.up}, "port status")
        if ev.port in ctx.fabric[sw.name] and ctx.recompute_routes():
            LOG.info("switch %s: fabric port %d %s: rerouting", sw.name, ev.port, state)
            self.programming.program_all(None)

    def port_changes(self, switch: str, ports: dict[int, bool], why: str) -> None:
        """React to instance ports going down/up (static pools come back on their own)."""
        ctx = self.ctx
        for pname, ps in ctx.steering.pools.items():
            static = ctx.topology.pools[pname].membership == "static"
            for iname, info in list(ps.instances.items()):
                if info.switch != switch or info.port is None:
                    continue
                up = ports.get(info.port)
                if up is None:
                    continue
                where = f"instance {pname}/{iname}: port {switch}:{info.port}"
                if not up and info.state in (InstanceState.ACTIVE, InstanceState.DRAINING):
                    change = _set_state(pname, iname, InstanceState.FAILED, ctx.wall)
                    self.programming.apply_or_raise(Change(change, f"{where} down ({why})"))
                elif up and static and info.state is InstanceState.FAILED:
                    change = _set_state(pname, iname, InstanceState.ACTIVE, ctx.wall)
                    self.programming.apply_or_raise(Change(change, f"{where} up ({why})"))

    # -- going away -------------------------------------------------------------------------

    def forget(self, sw: Switch) -> None:
        """The switch's connection is gone (or dropped): nothing of it is kept."""
        ctx = self.ctx
        ctx.remove_switch(sw)
        ctx.emit(SyncChanged(sw.name, False))
        for key in [k for k in ctx.port_stats if k[0] == sw.name]:
            ctx.port_stats.pop(key, None)
        self.on_gone(sw.name)
        self.programming.switch_gone(sw.conn)
        ctx.changed = True


def merge(into: ReadBack, part: ReadBack) -> None:
    """Merge one parsed read-back reply into what was read so far."""
    into.ports.update(part.ports)
    into.flows.update(part.flows)
    into.raw_matches.update(part.raw_matches)
    into.groups.update(part.groups)
    into.doubtful = into.doubtful or part.doubtful


def _set_state(
    pool: str, name: str, state: InstanceState, wall: float
) -> Callable[[Steering], PoolChange]:
    return lambda s: s.set_state(pool, name, state, wall)
