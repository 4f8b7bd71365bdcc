"""Which pool state is to be saved, and the instances' state transitions, said once each in
the log (with the reason of the change) and timing drains. Part of the membership core."""

from __future__ import annotations

import logging

from contract import keys
from controller.core import events as ev
from controller.core.context import Context
from controller.core.liveness import Member
from controller.core.snapshot import PoolSnapshot
from controller.core.state import InstanceState, PoolChange

log = logging.getLogger("nfsteer.membership")


class PoolSaves:
    def __init__(self, ctx: Context, sources: dict[Member, str]):
        self.ctx = ctx
        self.sources = sources  # how each instance joined, saved with its pool
        self.drain_grace_s = keys.DRAIN_GRACE_S
        self.drain_deadline: dict[Member, float] = {}
        self.states: dict[Member, InstanceState] = {}
        self._empty_pools: set[str] = set()
        self.remember_states()

    def on_change(self, changes: tuple[PoolChange, ...], reason: str) -> None:
        """Snapshot changed pools for saving; track state transitions (the leader only)."""
        if not self.ctx.leading():
            return
        for pool in sorted({c.pool for c in changes}):
            self.ctx.emit(ev.SavePool(self._snapshot(pool)))
            self._transitions(pool, reason)

    def save_all(self) -> None:
        for pool in self.ctx.steering.pools:
            self.ctx.emit(ev.SavePool(self._snapshot(pool)))

    def _snapshot(self, pool: str) -> PoolSnapshot:
        sources = {n: s for (p, n), s in self.sources.items() if p == pool}
        lease = self.ctx.lease
        term = 0 if lease is None else lease.term
        return PoolSnapshot.of(self.ctx.steering.pools[pool], sources, term)

    def _transitions(self, pool: str, reason: str) -> None:
        instances = self.ctx.steering.pools[pool].instances
        for name, info in instances.items():
            before = self.states.get((pool, name))
            if before is not info.state:
                log.info(
                    "%s/%s: %s -> %s (%s)", pool, name, before or "new", info.state, reason,
                    extra={"pool": pool, "instance": name, "state": info.state.value},
                )  # fmt: skip
                if info.state is InstanceState.DRAINING:
                    self.drain_deadline[(pool, name)] = self.ctx.now + self.drain_grace_s
                else:
                    self.drain_deadline.pop((pool, name), None)
            self.states[(pool, name)] = info.state
        for member in [m for m in self.states if m[0] == pool and m[1] not in instances]:
            log.info(
                "%s/%s: removed (%s)", pool, member[1], reason,
                extra={"pool": pool, "instance": member[1]},
            )  # fmt: skip
            del self.states[member]
            self.drain_deadline.pop(member, None)
        active = any(i.state is InstanceState.ACTIVE and i.located for i in instances.values())
        if not active and pool not in self._empty_pools:
            self._empty_pools.add(pool)
            log.warning(
                "pool %s has no active instance: its service traffic is dropped", pool,
                extra={"pool": pool},
            )  # fmt: skip
        elif active and pool in self._empty_pools:
            self._empty_pools.discard(pool)
            log.info("pool %s has an active instance: serving its traffic", pool)

    def remember_states(self) -> None:
        pools = self.ctx.steering.pools
        self.states = {(p, n): i.state for p, ps in pools.items() for n, i in ps.instances.items()}
        self._empty_pools = {
            p for p, ps in pools.items() if ps.instances and not ps.active_capacities()
        }
