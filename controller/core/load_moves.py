"""Load-aware slot moves in the control core: when to ask switches for their slot
counters, and what a completed reading changes (the policy: :mod:`controller.core.loadbalance`)."""

from __future__ import annotations

import logging

from controller.core import flows as fl
from controller.core import loadbalance as lb
from controller.core.context import Context, Switch
from controller.core.events import Change, ReadSlotCounters, SlotCounters
from controller.core.programming import Programming
from controller.core.state import PoolChange
from controller.core.switchsync import Phase

LOG = logging.getLogger("nfsteer.controller")


class LoadMoves:
    def __init__(self, ctx: Context, programming: Programming):
        self.ctx = ctx
        self.programming = programming
        self.watch = lb.LoadWatch.for_topology(ctx.topology, fl.pool_ids(ctx.topology))
        for pool, why in self.watch.off.items():
            LOG.warning("pool %s: %s: it stays in flows mode", pool, why)
        self.publish()

    def read(self) -> None:
        """Ask every programmed switch for its slot entries' counters, when a pool in load
        mode is due for a reading."""
        now = self.ctx.now
        pools = self.watch.due(now)
        if not pools:
            return
        self.watch.start_round(pools, now)
        for sw in list(self.ctx.switches.values()):
            if sw.sync.phase is Phase.PROGRAMMED:
                [xid] = self.ctx.send(sw, [ReadSlotCounters()])
                self.watch.asked(sw.name, xid)

    def waits_for(self, sw: Switch, xid: int) -> bool:
        return self.watch.waits_for(sw.name, xid)

    def reply(self, sw: Switch, ev: SlotCounters) -> None:
        done = self.watch.reply(sw.name, list(ev.entries), ev.more, self.ctx.now)
        for pool in done:
            self.balance(pool)
        if done:
            self.publish()

    def unable(self, sw: Switch, why: str) -> None:
        for pool in self.watch.switch_unable(sw.name, why):
            LOG.warning("pool %s: %s: it stays in flows mode", pool, self.watch.off[pool])
        self.publish()

    def switch_gone(self, switch: str) -> None:
        for pool in self.watch.switch_gone(switch):
            self.balance(pool)

    def balance(self, pool: str) -> None:
        """A fresh load reading of ``pool``: move hot slots if the policy says so (the
        leader only: a standby's readings only keep its view warm)."""
        if not self.ctx.leading():
            return
        ps = self.ctx.steering.pools[pool]
        caps = ps.active_capacities()
        moves = self.watch.decide(pool, ps.assignment, caps)
        if not moves:
            return
        before = lb.imbalance(self.watch.pools[pool].loads(ps.assignment, caps), caps)
        policy = self.watch.pools[pool].policy
        reason = (
            f"{lb.LOAD_REASON}: pool {pool}: imbalance {before:.2f} (threshold "
            f"{policy.threshold:g}, aim {policy.aim:.2f}): {len(moves)} hot "
            f"slot{'s' if len(moves) != 1 else ''} to less loaded instances"
        )
        number = self.programming.apply(Change(lambda s: s.move_slots(pool, moves), reason))
        error = self.programming.error_of(number)
        if isinstance(error, ValueError):  # planned from state that changed since
            LOG.warning("pool %s: load moves refused: %s", pool, error)
        elif error is not None:
            raise error

    def record(self, changes: tuple[PoolChange, ...], reason: str) -> None:
        self.watch.record(changes, reason, self.ctx.wall)
        self.publish()

    def publish(self) -> None:
        self.watch.publish(
            {
                name: (
                    ps.assignment,
                    {n: i.capacity for n, i in ps.instances.items()},
                    ps.active_capacities(),
                )
                for name, ps in self.ctx.steering.pools.items()
            }
        )
