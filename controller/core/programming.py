"""Changes to the pool state and how they reach the switches: compute what each switch's
table lacks, send only that (adds before deletes, barriers), and confirm a change once every
switch answered the barrier that follows it."""

from __future__ import annotations

import logging
from collections.abc import Callable

from controller.core import flows as fl
from controller.core.context import Context, Switch
from controller.core.events import Applied, BarrierReply, Change, Confirmed
from controller.core.state import PoolChange
from controller.core.switchsync import Phase

LOG = logging.getLogger("nfsteer.controller")


class Programming:
    def __init__(self, ctx: Context, may_program: Callable[[Switch], bool]):
        self.ctx = ctx
        self.may_program = may_program
        # told of every change, in the loop, right after it is made
        self.listeners: list[Callable[[tuple[PoolChange, ...], str], None]] = []
        self._next_change = 1
        # change -> (barriers it waits for: (conn, xid), when it was made)
        self._waiting: dict[int, tuple[set[tuple[int, int]], float]] = {}

    # -- changes ----------------------------------------------------------------------------

    def apply(self, change: Change) -> int:
        """Make a change and program every switch with the difference; returns its number.
        Its outcome is an :class:`Applied` output (with the mutation's error, if any)."""
        ctx = self.ctx
        number = self._next_change
        self._next_change += 1
        inputs = fl.table_inputs(ctx.steering)
        try:
            out = change.mutation(ctx.steering)
        except Exception as e:
            # A mutation that made several changes may have applied some of them
            # before failing: keep the switches in line with the state either way.
            self.program_all(None)
            ctx.changed = True
            ctx.emit(Applied(number, (), e, change.reason, ctx.now))
            return number
        changes = (out,) if isinstance(out, PoolChange) else tuple(out)
        moved = sum(len(c.moved) for c in changes)
        if moved:
            ctx.counters.rebalances += 1
            ctx.counters.slots_moved += moved
        self._waiting[number] = (set(), ctx.now)
        # No slot moved and no instance came, went or moved: the tables are the same.
        if moved or fl.table_inputs(ctx.steering) != inputs:
            self.program_all(number)
        if changes:
            ctx.changed = True
        summary = ", ".join(
            f"{c.pool}: {len(c.moved)} slots moved, epoch {c.epoch}" for c in changes
        )
        fields = {}
        if len(changes) == 1:
            c = changes[0]
            fields = {"pool": c.pool, "epoch": c.epoch, "moved": len(c.moved)}
        LOG.info("%s (%s)", change.reason, summary or "no change", extra=fields)
        ctx.emit(Applied(number, changes, None, change.reason, ctx.now))
        for listener in self.listeners:
            listener(changes, change.reason)
        self._settle(number)
        return number

    def apply_or_raise(self, change: Change) -> int:
        """:meth:`apply` for the core's own changes: a failed mutation is raised."""
        number = self.apply(change)
        error = self.error_of(number)
        if error is not None:
            raise error
        return number

    def error_of(self, number: int) -> Exception | None:
        """The error of change ``number`` among the outputs being collected."""
        for out in reversed(self.ctx.outputs):
            if isinstance(out, Applied) and out.change == number:
                return out.error
        return None

    # -- programming ------------------------------------------------------------------------

    def program_all(self, change: int | None) -> None:
        for sw in list(self.ctx.switches.values()):
            if sw.sync.phase is Phase.PROGRAMMED:
                self.program(sw, change)

    def program(self, sw: Switch, change: int | None) -> None:
        """Send ``sw`` what its table lacks (when this controller leads, as its MASTER)."""
        if not self.may_program(sw):
            return
        ctx = self.ctx
        steps = sw.sync.program(ctx.steering, ctx.routes)
        if not steps:
            return
        xids = ctx.send(sw, list(steps))
        last_barrier = None
        for step, xid in zip(steps, xids, strict=True):
            if isinstance(step, fl.Barrier):
                last_barrier = xid
                ctx.counters.barriers_sent += 1
                sw.sync.barrier_sent(xid, ctx.now)
            elif isinstance(step, fl.FlowAdd | fl.FlowDelete):
                ctx.counters.flow_mods_sent += 1
            elif not isinstance(step, fl.WipeAll):
                ctx.counters.group_mods_sent += 1
        if change is not None and last_barrier is not None and change in self._waiting:
            self._waiting[change][0].add((sw.conn, last_barrier))
        counts = fl.count_mods(steps)
        LOG.debug("%s: sent %d flow-mods, %d group-mods", sw.name, counts["flow"], counts["group"])

    # -- confirmations ----------------------------------------------------------------------

    def barrier_reply(self, sw: Switch | None, ev: BarrierReply) -> bool:
        """A barrier reply; True when it was one the core waits for."""
        ctx = self.ctx
        ours = False
        if sw is not None:
            sent_at = sw.sync.barrier_answered(ev.xid)
            if sent_at is not None:
                ours = True
                ctx.counters.barrier_latency.append(ctx.now - sent_at)
                ctx.changed = True
        for number, (pending, _) in list(self._waiting.items()):
            if (ev.conn, ev.xid) in pending:
                pending.discard((ev.conn, ev.xid))
                self._settle(number, answered=True)
        return ours

    def switch_gone(self, conn: int) -> None:
        """A switch's barriers will never be answered: changes stop waiting for them."""
        for number, (pending, _) in list(self._waiting.items()):
            if any(c == conn for c, _ in pending):
                pending.difference_update({p for p in pending if p[0] == conn})
                self._settle(number)

    def _settle(self, number: int, answered: bool = False) -> None:
        pending, started = self._waiting[number]
        if pending:
            return
        del self._waiting[number]
        at = self.ctx.now if answered else None
        if at is not None:
            self.ctx.counters.change_latency.append(at - started)
        self.ctx.emit(Confirmed(number, at))
