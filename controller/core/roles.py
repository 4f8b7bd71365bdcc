"""Roles with several controllers: which OpenFlow role this controller asks each switch for,
what a lease answer, a role reply, a role-status or a fencing error means, and when a
takeover is complete. The term of the lease is the role's generation id, so a switch
refuses a stale leader."""

from __future__ import annotations

import logging
from collections.abc import Callable

from controller.core.context import Context, Switch
from controller.core.events import (
    LeaseGranted,
    LeaseRefused,
    NewTerm,
    Role,
    RoleReply,
    RoleRequest,
    RoleStatus,
)
from controller.core.switchsync import Phase

LOG = logging.getLogger("nfsteer.controller")
GENERATION_UNSET = 2**63  # a switch reports a generation id this high before any is set


class Roles:
    def __init__(self, ctx: Context, read_back: Callable[[Switch], None]):
        self.ctx = ctx
        self.read_back = read_back
        self.takeover_started: float | None = None

    def may_program(self, sw: Switch) -> bool:
        lease = self.ctx.lease
        if lease is None:
            return True
        return self.ctx.leading() and sw.role == (Role.MASTER, lease.term)

    def wanted(self) -> tuple[int, int] | None:
        lease = self.ctx.lease
        assert lease is not None
        if self.ctx.leading():
            return (Role.MASTER, lease.term)
        if lease.term > 0:
            return (Role.SLAVE, lease.term)
        return None  # no term known yet: wait, send nothing

    def assert_role(self, sw: Switch) -> None:
        want = self.wanted()
        if want is None or want in (sw.role, sw.role_asked):
            return
        sw.role_asked = want
        self.ctx.send(sw, [RoleRequest(*want)])

    def assert_roles(self) -> None:
        """Ask every switch for the role this controller should have now."""
        for sw in list(self.ctx.switches.values()):
            self.assert_role(sw)

    # -- the lease --------------------------------------------------------------------------

    def granted(self, ev: LeaseGranted) -> bool:
        """True when this makes us the leader of a new term: the caller then loads the pool
        state and claims the switches."""
        ctx = self.ctx
        assert ctx.lease is not None
        new = ctx.lease.granted(ev.term, ev.asked_at)
        if new:
            ctx.counters.takeovers += 1
            self.takeover_started = ctx.now
            LOG.warning("leading as term %d", ev.term)
            ctx.changed = True
            ctx.emit(NewTerm(ev.term))
        return new

    def refused(self, ev: LeaseRefused) -> None:
        ctx = self.ctx
        assert ctx.lease is not None
        if ctx.lease.refused(ev.term, ev.holder):
            LOG.warning("stepping down: %s holds the lease (term %d)", ev.holder, ev.term)
        ctx.changed = True
        self.assert_roles()

    def unknown(self) -> None:
        """The election could not reach the store."""
        lease = self.ctx.lease
        assert lease is not None
        if lease.leading_as_of_holder() and not self.ctx.leading():
            lease.lost()
            LOG.warning("stepping down: the lease could not be renewed in time")
            self.ctx.changed = True

    def step_down(self, reason: str) -> None:
        """Fenced (a switch or the store refused us as stale): stop acting at once."""
        lease = self.ctx.lease
        if lease is None or not lease.leading_as_of_holder():
            return
        self.ctx.counters.fenced += 1
        if lease.lost():
            LOG.warning("stepping down: %s", reason)
            self.ctx.changed = True

    def believe(self, term_delta: int) -> int:
        """A test hook (:class:`~controller.core.events.BelieveLeader`)."""
        lease = self.ctx.lease
        assert lease is not None
        term = lease.term + term_delta
        lease.granted(term, self.ctx.now)
        LOG.warning("test hook: believing to lead as term %d", term)
        self.assert_roles()
        return term

    # -- switches' answers ------------------------------------------------------------------

    def role_reply(self, sw: Switch, ev: RoleReply) -> None:
        lease = self.ctx.lease
        if lease is None:
            return
        sw.role = (ev.role, ev.generation)
        if lease.term < ev.generation < GENERATION_UNSET:
            lease.raise_floor(ev.generation)
        if sw.role_asked == sw.role or sw.role_asked is None:
            sw.role_asked = None
        if ev.role == Role.MASTER and self.may_program(sw):
            LOG.info("switch %s: MASTER (generation %d): reading its table", sw.name,
                     ev.generation)  # fmt: skip
            self.read_back(sw)
        elif ev.role == Role.SLAVE and sw.sync.phase is Phase.READING:
            self.read_back(sw)  # ports and table, kept warm for a takeover
        self.ctx.changed = True

    def role_status(self, sw: Switch, ev: RoleStatus) -> None:
        sw.role = (ev.role, ev.generation)
        if ev.role != Role.MASTER and self.ctx.leading():
            self.step_down(f"switch {sw.name} made another controller MASTER "
                           f"(generation {ev.generation})")  # fmt: skip

    def fenced_error(self, sw: Switch, why: str) -> None:
        """The switch refused us as stale."""
        sw.role = None
        self.step_down(f"switch {sw.name}: {why}")
        # Learn the switch's generation id: the next term must go above it.
        self.ctx.send(sw, [RoleRequest(Role.NOCHANGE, 0)])

    def switch_done(self) -> None:
        """A takeover is complete once every connected switch is MASTER and programmed."""
        if self.takeover_started is None:
            return
        switches = self.ctx.switches.values()
        if all(self.may_program(s) and s.sync.synced for s in switches):
            took = self.ctx.now - self.takeover_started
            self.ctx.counters.takeover_seconds.append(took)
            self.takeover_started = None
            LOG.info("takeover complete in %.0f ms", took * 1000)
